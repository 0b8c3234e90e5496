//! `[connect]` end to end on 127.0.0.1: two meshes get their certificates
//! from the (fake) Consul agent, find each other through
//! `/v1/health/connect/`, call over mTLS, and are allowed or denied by an
//! intention changed at run time.
#![cfg(all(feature = "toml", feature = "reqwest"))]

use std::time::Duration;

use axum::routing::get;
use axum::{Extension, Router};
use mesh_stack::auth::CallerIdentity;
use mesh_stack::auth::tls::{MtlsAcceptor, serve};
use mesh_stack::{Mesh, MeshConfig, MeshError};
use mesh_testkit::consul::{FakeConsul, Instance};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tower::ServiceExt;

const LIMIT: Duration = Duration::from_secs(10);

fn users_app() -> Router {
    Router::new().route(
        "/users/{id}",
        get(|Extension(who): Extension<CallerIdentity>| async move { who.to_string() }),
    )
}

async fn call<B: http_body::Body<Error: std::fmt::Debug>>(
    svc: &(
         impl tower::Service<
        http::Request<String>,
        Response = http::Response<B>,
        Error = mesh_stack::core::BoxError,
    > + Clone
     ),
    uri: &str,
) -> (u16, String) {
    let req = http::Request::get(uri).body(String::new()).unwrap();
    let res = timeout(LIMIT, svc.clone().oneshot(req))
        .await
        .unwrap()
        .unwrap();
    let status = res.status().as_u16();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn file(consul: &FakeConsul, me: &str, rest: &str) -> MeshConfig {
    MeshConfig::from_toml_str(&format!(
        "[consul]\naddress = {:?}\n\n[connect]\nservice = {me:?}\n{rest}",
        consul.url()
    ))
    .unwrap()
}

#[tokio::test]
async fn connect_in_the_file_gives_both_sides_agent_identities_and_intentions() {
    let consul = FakeConsul::start().await.unwrap();
    consul.set_intention("orders", "users", true);

    // users serves: the agent's certificate, intentions as authorization.
    let users = Mesh::builder(file(&consul, "users", ""))
        .start()
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = users.server_tls().unwrap().unwrap();
    let app = users_app().layer(users.server_layer().unwrap());
    tokio::spawn(serve(listener, MtlsAcceptor::new(&tls), app));
    consul.add_instance(Instance::new("users", "users-1", "127.0.0.1", port).connect_native());
    // Not Connect-capable: never called.
    consul.add_instance(Instance::new("users", "users-plain", "127.0.0.1", 1));

    // orders calls users through the ready-made stack.
    let orders = Mesh::builder(file(
        &consul,
        "orders",
        "\n[services.users.discovery]\nkind = \"consul\"\n",
    ))
    .start()
    .await
    .unwrap();
    let client = orders.secure_reqwest_client("users").unwrap();
    for _ in 0..5 {
        assert_eq!(
            call(&client, "https://users/users/7").await,
            (200, consul.connect_service_uri("orders"))
        );
    }

    // The intention goes: the next call after one blocking round is denied.
    let identity = users.connect_identity().unwrap();
    let before = identity.status().intention_updates;
    consul.delete_intention("orders", "users");
    timeout(LIMIT, identity.wait_for(|s| s.intention_updates > before))
        .await
        .unwrap();
    assert_eq!(call(&client, "https://users/users/7").await.0, 403);

    // And comes back.
    consul.set_intention("orders", "users", true);
    timeout(
        LIMIT,
        identity.wait_for(|s| s.intention_updates > before + 1),
    )
    .await
    .unwrap();
    assert_eq!(call(&client, "https://users/users/7").await.0, 200);
}

#[test]
fn connect_excludes_tls_and_policy_rules_and_needs_start() {
    let text = r#"
[connect]
service = "orders"
burst = 0

[tls]
ca = { pem = "x" }
cert = { pem = "y" }
key = { pem = "z" }

[server.authorization]
rules = [ { identity = "spiffe://example.org/gateway" } ]
"#;
    let err = MeshConfig::from_toml_str(text).unwrap_err().to_string();
    for path in ["connect.burst", "`tls`", "server.authorization.rules"] {
        assert!(err.contains(path), "{path} in {err}");
    }
    let ok = MeshConfig::from_toml_str("[connect]\nservice = \"orders\"\n").unwrap();
    let connect = ok.connect.as_ref().unwrap();
    assert_eq!(connect.wait, Duration::from_secs(300));
    let err = Mesh::new(ok).unwrap_err();
    assert!(
        matches!(&err, MeshError::Invalid(e) if e.to_string().contains("start")),
        "{err}"
    );
}
