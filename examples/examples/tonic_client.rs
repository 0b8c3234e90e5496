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

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_stack::core::{BoxError, Endpoint};
use mesh_stack::retry::ReplayBody;
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

    // HTTP/2 to each endpoint; the stack buffers tonic's streaming bodies so
    // that they can be sent again.
    let h2: Client<HttpConnector, ReplayBody<tonic::body::Body>> =
        Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let mut health =
        HealthClient::with_origin(mesh.grpc_client("health", h2)?, "http://health".parse()?);

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
    Ok(())
}
