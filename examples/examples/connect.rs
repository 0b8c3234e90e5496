//! Two Consul Connect-native services, no sidecar: `users` serves, `orders`
//! calls it. Both register with (a fake) Consul, get their certificates
//! from its Connect CA, find each other through `/v1/health/connect/`, call
//! over mTLS, and are allowed or denied by an intention changed at run time.
//!
//! ```text
//! cargo run -p examples --example connect
//! ```
//!
//! Everything runs in-process: the fake Consul agent from `mesh-testkit`
//! (its Connect CA, intentions and health API), two meshes configured with
//! `[connect]`, and a CA rotation while `orders` keeps calling.

use std::time::Duration;

use axum::routing::get;
use axum::{Extension, Router};
use mesh_discovery::consul::{ConsulClient, ConsulConfig, Registration, ServiceRegistration};
use mesh_stack::auth::CallerIdentity;
use mesh_stack::auth::tls::{MtlsAcceptor, serve};
use mesh_stack::{Mesh, MeshConfig};
use mesh_testkit::consul::FakeConsul;
use tokio::net::TcpListener;
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), mesh_stack::core::BoxError> {
    tracing_subscriber::fmt().with_target(false).init();
    let consul = FakeConsul::start().await?;
    println!(
        "fake Consul at {}, trust domain {}",
        consul.url(),
        consul.connect_trust_domain()
    );
    let file = |me: &str, rest: &str| {
        MeshConfig::from_toml_str(&format!(
            "[consul]\naddress = {:?}\n\n[connect]\nservice = {me:?}\n{rest}",
            consul.url()
        ))
    };

    // users: serves with the agent's certificate; intentions authorize.
    let users = Mesh::builder(file("users", "")?).start().await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = Router::new()
        .route(
            "/users/{id}",
            get(|Extension(who): Extension<CallerIdentity>| async move { format!("hello, {who}") }),
        )
        .layer(users.server_layer()?);
    let tls = users
        .server_tls()?
        .expect("[connect] gives a server config");
    tokio::spawn(serve(listener, MtlsAcceptor::new(&tls), app));
    let agent = ConsulClient::new(&ConsulConfig::new(consul.url()))?;
    let registration = Registration::register(
        agent,
        ServiceRegistration::new("users", port)
            .address("127.0.0.1")
            .connect_native(),
    )
    .await?;
    println!(
        "users serves on 127.0.0.1:{port} as {}",
        users
            .connect_identity()
            .map(|i| i.service_id().to_string())
            .unwrap_or_default()
    );

    // orders: calls users through the ready-made stack.
    let orders = Mesh::builder(file(
        "orders",
        "\n[services.users.discovery]\nkind = \"consul\"\n",
    )?)
    .start()
    .await?;
    let client = orders.secure_reqwest_client("users")?;
    let call = |label: &'static str| {
        let client = client.clone();
        async move {
            let req = http::Request::get("https://users/users/7").body(String::new())?;
            let res = client.oneshot(req).await?;
            let status = res.status();
            let body = http_body_util::BodyExt::collect(res.into_body())
                .await?
                .to_bytes();
            println!("{label:<28} -> {status} {}", String::from_utf8_lossy(&body));
            Ok::<_, mesh_stack::core::BoxError>(status.as_u16())
        }
    };

    let intentions = users.connect_identity().expect("[connect] is set").clone();
    let changed = |n: u64| {
        let intentions = intentions.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                intentions.wait_for(|s| s.intention_updates >= n),
            )
            .await
        }
    };
    let start = intentions.status().intention_updates;

    call("no intention (default deny)").await?;
    consul.set_intention("orders", "users", true);
    changed(start + 1).await?;
    call("orders -> users allowed").await?;

    consul.rotate_connect_ca();
    let rotated = orders.connect_identity().expect("[connect] is set").clone();
    tokio::time::timeout(Duration::from_secs(10), rotated.wait_for(|s| s.roots == 2)).await?;
    call("after a CA rotation").await?;

    consul.set_intention("orders", "users", false);
    changed(start + 2).await?;
    call("orders -> users denied").await?;

    registration.deregister().await?;
    Ok(())
}
