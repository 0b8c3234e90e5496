//! A generated tonic client (gRPC health) through the mesh stack, with gRPC
//! status classification.
//!
//! ```sh
//! cargo run -p examples --example tonic_client
//! ```
//!
//! Two gRPC servers on 127.0.0.1; `tonic_health`'s generated `HealthClient`
//! accepts the stack as its transport. An `UNAVAILABLE` status counts as a
//! failure for the endpoint's breaker and is retried on idempotent methods.

use std::time::Duration;

use mesh_stack::core::{BoxError, Endpoint};
use mesh_stack::{Mesh, MeshConfig, ServiceConfig};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut endpoints = Vec::new();
    for i in 1..=2 {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("users", ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        endpoints.push(Endpoint::new(format!("health-{i}"), addr.into()));
    }

    let mut service = ServiceConfig::with_static(endpoints);
    service.attempt_timeout = Duration::from_millis(500);
    // gRPC retries only methods marked idempotent; Check is.
    service.retry.idempotent_grpc_methods = vec!["/grpc.health.v1.Health/Check".into()];
    let mesh = Mesh::new(MeshConfig::new().service("health", service))?;

    // HTTP/2 with TCP_NODELAY to each endpoint; the stack buffers tonic's
    // streaming bodies so that they can be sent again, and mesh errors reach
    // the caller as tonic statuses (`Unavailable`, `DeadlineExceeded`).
    let mut health =
        HealthClient::with_origin(mesh.grpc_channel("health")?, "http://health".parse()?);

    for i in 0..4 {
        let resp = health
            .check(HealthCheckRequest {
                service: "users".into(),
            })
            .await?;
        println!("check {i}: status {:?}", resp.into_inner().status());
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .expect_err("unknown service");
    println!(
        "unknown service: {:?} (not a failure: not retried, breaker untouched)",
        unknown.code()
    );

    // A service whose only endpoint refuses connections: `Unavailable`, as
    // tonic's own `Channel` would say.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    let mut down = ServiceConfig::with_static([Endpoint::from_address(closed.into())]);
    down.retry.max_retries = 0;
    let mesh = Mesh::new(MeshConfig::new().service("down", down))?;
    let mut down = HealthClient::with_origin(mesh.grpc_channel("down")?, "http://down".parse()?);
    let status = down
        .check(HealthCheckRequest::default())
        .await
        .expect_err("nobody listens");
    println!("endpoint down: {:?}: {}", status.code(), status.message());
    Ok(())
}
