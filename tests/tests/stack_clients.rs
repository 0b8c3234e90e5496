//! The ready-made stacks of `mesh-stack` end to end over real HTTP and gRPC
//! on 127.0.0.1: hyper-util's legacy client, reqwest and a generated tonic
//! client, each through `Mesh`, with what the servers received checked.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_stack::core::{BoxError, Endpoint};
use mesh_stack::retry::ReplayBody;
use mesh_stack::{Mesh, MeshConfig, NoReadyEndpoint, ServiceConfig, Strategy};
use mesh_testkit::{Backend, Behavior};
use tower::{Service, ServiceExt};

fn service(backends: &[&Backend]) -> ServiceConfig {
    let mut s = ServiceConfig::with_static(
        backends
            .iter()
            .map(|b| Endpoint::new(b.name().to_owned(), b.addr().into())),
    );
    s.breaker.consecutive_failures = Some(2);
    s.breaker.recovery_timeout = Duration::from_secs(30);
    s.attempt_timeout = Duration::from_millis(300);
    // Deterministic: the first or second call meets each endpoint.
    s.balance.strategy = Strategy::RoundRobin;
    s
}

#[tokio::test]
async fn hyper_stack_retries_elsewhere_and_ejects_the_failing_endpoint() {
    let good = Backend::builder().name("good").start().await.unwrap();
    let bad = Backend::builder()
        .name("bad")
        .behavior(Behavior::status(503))
        .start()
        .await
        .unwrap();
    let mesh = Mesh::new(MeshConfig::new().service("users", service(&[&good, &bad]))).unwrap();
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let users = mesh.http_client("users", client).unwrap();

    for _ in 0..40 {
        let mut svc = users.clone();
        let req = http::Request::get("http://users/x")
            .body(Empty::new())
            .unwrap();
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "good");
    }
    // The balancer avoids it after its first failure and two failures would
    // open its breaker: it gets at most two attempts, each retried on `good`.
    assert!((1..=2).contains(&bad.hits()), "bad got {}", bad.hits());
    assert_eq!(
        good.hits(),
        40,
        "every call ended on `good` (each failed attempt was retried)"
    );
}

#[tokio::test]
async fn hyper_stack_slow_endpoint_times_out_and_the_call_still_succeeds() {
    let good = Backend::builder().name("good").start().await.unwrap();
    let slow = Backend::builder()
        .name("slow")
        .behavior(Behavior::slow(Duration::from_secs(5)))
        .start()
        .await
        .unwrap();
    let mesh = Mesh::new(MeshConfig::new().service("users", service(&[&good, &slow]))).unwrap();
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut users = mesh.http_client("users", client).unwrap();
    for _ in 0..10 {
        let req = http::Request::get("http://users/x")
            .body(Empty::new())
            .unwrap();
        let resp = users.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert!(slow.hits() <= 2, "slow got {} attempts", slow.hits());
    assert!(good.hits() >= 10);
}

/// The balancer never ejects the last endpoint: a lone endpoint whose
/// breaker is open still takes calls, which end with the server's answer,
/// not a locally made error.
#[tokio::test]
async fn a_lone_endpoint_with_an_open_breaker_still_takes_calls() {
    let bad = Backend::builder()
        .name("bad")
        .behavior(Behavior::status(503))
        .start()
        .await
        .unwrap();
    let mut config = service(&[&bad]);
    config.retry.max_retries = 0;
    config.breaker.consecutive_failures = Some(2);
    let mesh = Mesh::new(MeshConfig::new().service("users", config)).unwrap();
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut users = mesh.http_client("users", client).unwrap();
    for _ in 0..4 {
        let req = http::Request::get("http://users/x")
            .body(Empty::new())
            .unwrap();
        let resp = users.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(resp.status(), 503);
    }
    assert_eq!(
        bad.hits(),
        4,
        "the open breaker's endpoint kept its traffic"
    );
}

/// With no endpoint at all, `poll_ready` waits at most `ready_timeout` for
/// the source and then fails with a typed error.
#[tokio::test]
async fn no_endpoint_fails_within_the_ready_timeout_with_a_typed_error() {
    let (_source, discovery) = mesh_stack::discovery::ChannelSource::new("users");
    let mut config =
        ServiceConfig::with_static([Endpoint::from_address("127.0.0.1:9".parse().unwrap())]);
    config.ready_timeout = Duration::from_millis(100);
    let mesh = Mesh::builder(MeshConfig::new().service("users", config))
        .discovery("users", discovery)
        .build()
        .unwrap();
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let users = mesh.http_client("users", client).unwrap();
    let req = http::Request::get("http://users/x")
        .body(Empty::new())
        .unwrap();
    let start = std::time::Instant::now();
    let err: BoxError = users.oneshot(req).await.unwrap_err();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_secs(1),
        "{waited:?}"
    );
    let err = err
        .downcast_ref::<NoReadyEndpoint>()
        .expect("NoReadyEndpoint");
    assert_eq!(err.known(), 0);
}

#[tokio::test]
async fn unknown_service_is_an_error_naming_the_known_ones() {
    let mesh = Mesh::new(MeshConfig::new()).unwrap();
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let err = mesh.http_client("users", client).unwrap_err();
    assert!(err.to_string().contains("users"), "{err}");
}

#[tokio::test]
async fn reqwest_stack_routes_and_retries() {
    let good = Backend::builder().name("good").start().await.unwrap();
    let bad = Backend::builder()
        .name("bad")
        .behavior(Behavior::status(503))
        .start()
        .await
        .unwrap();
    let mesh = Mesh::new(MeshConfig::new().service("users", service(&[&good, &bad]))).unwrap();
    // The workspace builds reqwest with rustls and no default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let users = mesh
        .reqwest_client("users", reqwest::Client::new())
        .unwrap();
    for _ in 0..20 {
        let mut svc = users.clone();
        let req = http::Request::get("http://users/x")
            .body(Bytes::new())
            .unwrap();
        let resp = ServiceExt::<http::Request<Bytes>>::ready(&mut svc)
            .await
            .unwrap()
            .call(req)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "good");
    }
    assert!((1..=2).contains(&bad.hits()), "bad got {}", bad.hits());
    assert_eq!(
        good.hits(),
        20,
        "every call ended on `good` (each failed attempt was retried)"
    );
}

#[tokio::test]
async fn tonic_client_through_the_grpc_stack() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let mut endpoints = Vec::new();
    for i in 0..2 {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("users", tonic_health::ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        endpoints.push(Endpoint::new(format!("grpc-{i}"), addr.into()));
    }
    let mesh =
        Mesh::new(MeshConfig::new().service("health", ServiceConfig::with_static(endpoints)))
            .unwrap();
    let h2: Client<HttpConnector, ReplayBody<tonic::body::Body>> =
        Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let mut health = HealthClient::with_origin(
        mesh.grpc_client("health", h2).unwrap(),
        "http://health".parse().unwrap(),
    );
    for _ in 0..6 {
        let resp = health
            .check(HealthCheckRequest {
                service: "users".into(),
            })
            .await
            .unwrap();
        assert_eq!(resp.into_inner().status, 1, "SERVING");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}
