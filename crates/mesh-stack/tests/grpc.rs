//! `Mesh::grpc_channel` with a generated tonic client against real gRPC
//! servers on 127.0.0.1: fast unary calls (`TCP_NODELAY`) and the statuses
//! tonic callers see when the mesh fails a call.

#![cfg(feature = "tonic")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_stack::core::Endpoint;
use mesh_stack::core::backoff::Backoff;
use mesh_stack::discovery::ChannelSource;
use mesh_stack::{GrpcChannel, Mesh, MeshConfig, ServiceConfig};
use tonic::Code;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const CHECK: &str = "/grpc.health.v1.Health/Check";

/// A tonic health server on 127.0.0.1 reporting `users` as serving.
async fn health_server() -> SocketAddr {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("users", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn client(mesh: &Mesh) -> HealthClient<GrpcChannel> {
    HealthClient::with_origin(
        mesh.grpc_channel("health").unwrap(),
        "http://health".parse().unwrap(),
    )
}

fn check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: "users".into(),
    }
}

fn service(addrs: impl IntoIterator<Item = SocketAddr>) -> ServiceConfig {
    let mut service =
        ServiceConfig::with_static(addrs.into_iter().map(|a| Endpoint::from_address(a.into())));
    service.retry.idempotent_grpc_methods = vec![CHECK.into()];
    service
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_do_not_wait_on_nagle() {
    let addr = health_server().await;
    let mesh = Mesh::new(MeshConfig::new().service("health", service([addr]))).unwrap();
    let mut health = client(&mesh);
    // The first call connects.
    health.check(check()).await.unwrap();

    let calls = 20;
    let start = Instant::now();
    for _ in 0..calls {
        let resp = health.check(check()).await.unwrap();
        assert_eq!(resp.into_inner().status(), ServingStatus::Serving.into());
    }
    let mean = start.elapsed() / calls;
    // With TCP_NODELAY off, every call waits ~40 ms for a delayed ACK; with
    // it on, a call takes ~1-2 ms on loopback (more on a busy machine).
    assert!(
        mean < Duration::from_millis(20),
        "mean unary call {mean:?}: Nagle stall?"
    );
}

#[tokio::test]
async fn no_ready_endpoint_is_unavailable() {
    let (_source, discovery) = ChannelSource::new("health");
    // The config's endpoint is replaced by the empty channel source.
    let mut config = service(["127.0.0.1:9".parse().unwrap()]);
    config.ready_timeout = Duration::from_millis(50);
    let mesh = Mesh::builder(MeshConfig::new().service("health", config))
        .discovery("health", discovery)
        .build()
        .unwrap();
    let status = client(&mesh).check(check()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no ready endpoint"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    // A port nobody listens on any more.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let mut config = service([addr]);
    // Retried (Check is idempotent) without the default 1 s backoff.
    config.retry.backoff = Backoff::new(Duration::from_millis(1), 2.0, Duration::from_millis(5));
    let mesh = Mesh::new(MeshConfig::new().service("health", config)).unwrap();
    let status = client(&mesh).check(check()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("onnect"),
        "the reason is in the message: {}",
        status.message()
    );
}

#[tokio::test]
async fn the_deadline_is_deadline_exceeded() {
    // Accepts connections and never answers, not even the HTTP/2 handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let mut config = service([addr]);
    config.retry.deadline = Some(Duration::from_millis(200));
    let mesh = Mesh::new(MeshConfig::new().service("health", config)).unwrap();
    let status = client(&mesh).check(check()).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("deadline"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn statuses_from_the_server_are_unchanged() {
    let addr = health_server().await;
    let mesh = Mesh::new(MeshConfig::new().service("health", service([addr]))).unwrap();
    let status = client(&mesh)
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}
