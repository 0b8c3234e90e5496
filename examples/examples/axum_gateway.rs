//! An axum gateway that registers itself with Consul and calls a downstream
//! service through the mesh stack in its handler.
//!
//! ```sh
//! cargo run -p examples --example axum_gateway
//! ```
//!
//! Without `CONSUL_HTTP_ADDR` an in-process fake Consul is used. Two
//! downstream `users` instances (one failing) register themselves; the
//! gateway discovers them through Consul, serves `GET /users/{id}` on
//! 127.0.0.1, calls itself a few times, deregisters and exits.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_stack::core::BoxError;
use mesh_stack::discovery::consul::{
    CheckDefinition, ConsulClient, ConsulConfig, Registration, ServiceRegistration,
};
use mesh_stack::inner::{self, HyperClient};
use mesh_stack::{ConsulSourceConfig, Mesh, MeshConfig, MeshService, ServiceConfig};
use mesh_testkit::{Backend, Behavior, FakeConsul};
use tokio::net::TcpListener;
use tower::ServiceExt;

type Users = MeshService<HyperClient<Empty<Bytes>>>;

/// `GET /users/{id}`: asks the `users` service through the mesh.
async fn user(State(users): State<Users>, Path(id): Path<u32>) -> (StatusCode, String) {
    let req = match http::Request::get(format!("http://users/users/{id}")).body(Empty::new()) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()),
    };
    match users.oneshot(req).await {
        Ok(resp) => {
            let status = resp.status();
            match resp.into_body().collect().await {
                Ok(body) => (
                    StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
                    format!(
                        "user {id} served by {}",
                        String::from_utf8_lossy(&body.to_bytes())
                    ),
                ),
                Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
            }
        }
        // NoReadyEndpoint, BudgetExhausted, DeadlineExceeded, ...: typed errors.
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn register(
    client: &ConsulClient,
    name: &str,
    id: &str,
    port: u16,
) -> Result<Registration, BoxError> {
    Ok(Registration::register(
        client.clone(),
        ServiceRegistration::new(name, port)
            .id(id)
            .address("127.0.0.1")
            .check(
                CheckDefinition::ttl(format!("{id}-ttl"), Duration::from_secs(10))
                    .deregister_after(Duration::from_secs(60)),
            ),
    )
    .await?)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let _fake;
    let consul = if std::env::var_os("CONSUL_HTTP_ADDR").is_some() {
        ConsulClient::from_env()?
    } else {
        let fake = FakeConsul::start().await?;
        println!(
            "CONSUL_HTTP_ADDR is unset: using an in-process fake Consul at {}",
            fake.url()
        );
        let client = ConsulClient::new(&ConsulConfig::new(fake.url()))?;
        _fake = fake;
        client
    };

    // The downstream service: two instances, one failing.
    let users_1 = Backend::builder().name("users-1").start().await?;
    let users_2 = Backend::builder()
        .name("users-2")
        .behavior(Behavior::status(503))
        .start()
        .await?;
    let mut registrations = vec![
        register(
            &consul,
            "mesh-example-users",
            "mesh-example-users-1",
            users_1.addr().port(),
        )
        .await?,
        register(
            &consul,
            "mesh-example-users",
            "mesh-example-users-2",
            users_2.addr().port(),
        )
        .await?,
    ];

    // The gateway's client for `users`, discovered through Consul.
    let config = MeshConfig::new().service(
        "users",
        ServiceConfig::with_consul(ConsulSourceConfig {
            service: Some("mesh-example-users".into()),
            wait: Duration::from_secs(5),
            ..ConsulSourceConfig::default()
        }),
    );
    let mesh = Mesh::builder(config)
        .consul_client(consul.clone())
        .build()?;
    // hyper-util's client with TCP_NODELAY and a bounded idle pool.
    let users = mesh.hyper_client("users")?;

    // The gateway itself, registered too.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/users/{id}", get(user))
        .with_state(users);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });
    registrations.push(
        register(
            &consul,
            "mesh-example-gateway",
            "mesh-example-gateway-1",
            addr.port(),
        )
        .await?,
    );
    println!("gateway on http://{addr}, registered as mesh-example-gateway");

    // Wait until Consul's answer reached the mesh, then call the gateway.
    let discovery = mesh.discovery("users")?;
    let start = tokio::time::Instant::now();
    while discovery.current().len() < 2 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let plain: HyperClient<Empty<Bytes>> = inner::http_client();
    for id in 1..=5 {
        let resp = plain
            .get(format!("http://{addr}/users/{id}").parse()?)
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        println!(
            "GET /users/{id} -> {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    println!(
        "downstream received: users-1 {}, users-2 (failing) {}",
        users_1.hits(),
        users_2.hits()
    );

    // Graceful shutdown: deregister first, then stop serving.
    for r in registrations {
        r.deregister().await?;
    }
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}
