//! A unary tonic call through the mesh (`Mesh::grpc_channel`: retry,
//! discovery router, per-endpoint breaker and attempt timeout over an HTTP/2
//! hyper-util client with `TCP_NODELAY`) against tonic's own `Channel`, to
//! the same gRPC health server on 127.0.0.1, in one run (issue 22).
//!
//! Without `TCP_NODELAY`, a unary call waits ~40 ms on Nagle's algorithm and
//! delayed ACKs; with it, the two variants should be within a few percent.
//!
//! Run with `cargo bench -p mesh-bench --bench grpc`.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_stack::core::Endpoint;
use mesh_stack::{Mesh, MeshConfig, ServiceConfig};
use tonic::transport::Channel;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Starts a gRPC health server on 127.0.0.1 and returns its address.
async fn health_server() -> std::net::SocketAddr {
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

/// Sends `iters` sequential unary calls and times them.
async fn calls<T>(client: &mut HealthClient<T>, iters: u64) -> Duration
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<mesh_stack::core::BoxError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<mesh_stack::core::BoxError> + Send,
{
    let start = Instant::now();
    for _ in 0..iters {
        let resp = client
            .check(HealthCheckRequest {
                service: "users".into(),
            })
            .await
            .unwrap();
        assert_eq!(resp.into_inner().status, 1, "SERVING");
    }
    start.elapsed()
}

fn unary(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(health_server());

    let mut g = c.benchmark_group("grpc/unary");

    g.bench_function("tonic_channel", |b| {
        let mut client = rt.block_on(async {
            let channel = Channel::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            HealthClient::new(channel)
        });
        b.iter_custom(|iters| rt.block_on(calls(&mut client, iters)));
    });

    g.bench_function("mesh_grpc_channel", |b| {
        let mut client = rt.block_on(async {
            let mut service = ServiceConfig::with_static([Endpoint::from_address(addr.into())]);
            service.retry.idempotent_grpc_methods = vec!["/grpc.health.v1.Health/Check".into()];
            let mesh = Mesh::new(MeshConfig::new().service("health", service)).unwrap();
            HealthClient::with_origin(
                mesh.grpc_channel("health").unwrap(),
                "http://health".parse().unwrap(),
            )
        });
        b.iter_custom(|iters| rt.block_on(calls(&mut client, iters)));
    });

    g.finish();
}

criterion_group!(benches, unary);
criterion_main!(benches);
