//! Time limits that cover the response body, and outcomes at end of stream,
//! over real loopback HTTP and gRPC with the ready-made stack:
//!
//! - a backend that sends its headers at once and then drips its body is
//!   cut at the attempt timeout (or the call's deadline), the body yields a
//!   typed error, and the endpoint is counted as failing (ejected, with a
//!   breaker that trips at the first failure);
//! - a tonic server that streams messages and then fails with `UNAVAILABLE`
//!   in its trailers is counted as failing too;
//! - with `streaming = true` the same dripping body is read to its end.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_stack::core::{BoxError, Endpoint};
use mesh_stack::retry::{DeadlineExceeded, ReplayBody};
use mesh_stack::{AttemptTimedOut, Mesh, MeshConfig, ServiceConfig};
use tokio_stream::StreamExt;
use tower::ServiceExt;

/// An HTTP/1 server on 127.0.0.1 whose responses have their headers at
/// once and then `len` body bytes, one every `every`.
async fn dripping_server(len: usize, every: Duration) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let drip = tokio_stream::iter(0..len).then(move |_| async move {
                        tokio::time::sleep(every).await;
                        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"x")))
                    });
                    Ok::<_, Infallible>(hyper::Response::new(StreamBody::new(drip)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// An HTTP/1 server on 127.0.0.1 that answers `200` at once, while kept.
async fn healthy_server() -> mesh_testkit::Backend {
    mesh_testkit::Backend::start().await.unwrap()
}

fn one_trip(mut service: ServiceConfig) -> ServiceConfig {
    // The first failure trips an endpoint's breaker, so one counted failure
    // is visible as an ejection.
    service.breaker.consecutive_failures = Some(1);
    service.retry.max_retries = 0;
    service
}

type Body = Empty<Bytes>;

fn hyper_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Whether the balancer may pick `key` now.
fn eligible<C>(layer: &mesh_stack::MeshLayer<C>, key: &str) -> bool {
    let key = mesh_stack::core::EndpointKey::from(key);
    layer
        .router()
        .balancer()
        .endpoint_stats(&key)
        .expect("known endpoint")
        .eligible
}

#[tokio::test]
async fn a_dripping_body_is_cut_at_the_attempt_timeout_and_counts_as_a_failure() {
    let slow = dripping_server(100, Duration::from_millis(50)).await;
    let healthy = healthy_server().await;
    let mut service = one_trip(ServiceConfig::with_static([
        Endpoint::new("slow", slow.into()),
        Endpoint::new("healthy", healthy.addr().into()),
    ]));
    service.attempt_timeout = Duration::from_millis(300);
    service.retry.deadline = Some(Duration::from_secs(1));
    let mesh = Mesh::new(MeshConfig::new().service("drip", service)).unwrap();
    let layer = mesh
        .layer("drip", mesh_stack::core::classify::DefaultHttpClassifier)
        .unwrap();
    let client = tower::Layer::layer(&layer, hyper_client());

    // Call until one lands on the slow endpoint (p2c picks at random).
    let mut cut = None;
    for _ in 0..40 {
        let started = Instant::now();
        let response = client
            .clone()
            .oneshot(
                http::Request::get("http://drip/")
                    .body(Body::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        match response.into_body().collect().await {
            Ok(body) => assert!(!body.to_bytes().is_empty()),
            Err(e) => {
                cut = Some((e, started.elapsed()));
                break;
            }
        }
    }
    let (error, took) = cut.expect("a call reached the dripping endpoint");
    let timed_out = error
        .downcast_ref::<AttemptTimedOut>()
        .unwrap_or_else(|| panic!("AttemptTimedOut, got {error}"));
    assert!(timed_out.in_body(), "{error}");
    assert!(
        took < Duration::from_secs(3),
        "the body (5 s at full length) was cut at the limit: {took:?}"
    );
    // The breaker counted the failure (it trips at the first) and the
    // balancer ejected the endpoint.
    assert!(
        !eligible(&layer, "slow"),
        "the dripping endpoint is ejected"
    );
    assert!(eligible(&layer, "healthy"));
}

#[tokio::test]
async fn a_dripping_body_is_cut_at_the_call_deadline_with_deadline_exceeded() {
    let slow = dripping_server(100, Duration::from_millis(50)).await;
    let mut service = one_trip(ServiceConfig::with_static([Endpoint::new(
        "slow",
        slow.into(),
    )]));
    service.attempt_timeout = Duration::from_secs(30);
    service.retry.deadline = Some(Duration::from_millis(400));
    let mesh = Mesh::new(MeshConfig::new().service("drip", service)).unwrap();
    let client = mesh.http_client("drip", hyper_client()).unwrap();
    let started = Instant::now();
    let response = client
        .oneshot(
            http::Request::get("http://drip/")
                .body(Body::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let error: BoxError = response.into_body().collect().await.unwrap_err();
    assert!(
        error.is::<DeadlineExceeded>(),
        "DeadlineExceeded, got {error}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_streaming_service_reads_a_long_body_to_its_end() {
    let slow = dripping_server(12, Duration::from_millis(50)).await;
    let mut service = ServiceConfig::with_static([Endpoint::new("slow", slow.into())]);
    service.attempt_timeout = Duration::from_millis(200);
    service.streaming = true;
    let mesh = Mesh::new(MeshConfig::new().service("drip", service)).unwrap();
    let client = mesh.http_client("drip", hyper_client()).unwrap();
    let response = client
        .oneshot(
            http::Request::get("http://drip/")
                .body(Body::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body.len(),
        12,
        "600 ms of body past a 200 ms attempt timeout"
    );
}

// ===== gRPC: a stream that fails in its trailers =====

mod grpc {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::health_server::{Health, HealthServer};
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

    use super::*;

    /// A health service whose `Watch` sends two messages and then fails
    /// with `UNAVAILABLE` (in the trailers, after the messages), and whose
    /// `Check` answers `SERVING`.
    struct StreamsThenFails;

    type WatchStream = Pin<
        Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, tonic::Status>> + Send>,
    >;

    #[tonic::async_trait]
    impl Health for StreamsThenFails {
        async fn check(
            &self,
            _: tonic::Request<HealthCheckRequest>,
        ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
            Ok(tonic::Response::new(HealthCheckResponse { status: 1 }))
        }

        type WatchStream = WatchStream;

        async fn watch(
            &self,
            _: tonic::Request<HealthCheckRequest>,
        ) -> Result<tonic::Response<WatchStream>, tonic::Status> {
            let messages = tokio_stream::iter(vec![
                Ok(HealthCheckResponse { status: 1 }),
                Ok(HealthCheckResponse { status: 2 }),
                Err(tonic::Status::unavailable("going away")),
            ]);
            Ok(tonic::Response::new(Box::pin(messages)))
        }
    }

    async fn server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(HealthServer::new(StreamsThenFails))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    #[tokio::test]
    async fn a_stream_that_fails_in_its_trailers_counts_as_the_endpoints_failure() {
        let (a, b) = (server().await, server().await);
        let service = one_trip(ServiceConfig::with_static([
            Endpoint::new("a", a.into()),
            Endpoint::new("b", b.into()),
        ]));
        let mesh = Mesh::new(MeshConfig::new().service("health", service)).unwrap();
        let layer = mesh
            .layer(
                "health",
                mesh_stack::core::classify::GrpcClassifier::default(),
            )
            .unwrap();
        let h2: Client<HttpConnector, ReplayBody<tonic::body::Body>> =
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http();
        let stack = mesh_stack::retry::ReplayBodyLayer::new(64 * 1024)
            .layer(tower::Layer::layer(&layer, h2));
        let mut health = HealthClient::with_origin(stack, "http://health".parse().unwrap());

        // Unary calls succeed and eject nobody.
        for _ in 0..4 {
            let ok = health.check(HealthCheckRequest::default()).await.unwrap();
            assert_eq!(ok.into_inner().status, 1);
        }
        assert!(eligible(&layer, "a") && eligible(&layer, "b"));

        // One watch: two messages, then UNAVAILABLE in the trailers.
        let mut stream = health
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().status, 1);
        assert_eq!(stream.message().await.unwrap().unwrap().status, 2);
        let status = stream.message().await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        drop(stream);

        // The endpoint that served it was counted as failing: its breaker
        // tripped and the balancer ejected it.
        let ejected = [eligible(&layer, "a"), eligible(&layer, "b")]
            .iter()
            .filter(|e| !**e)
            .count();
        assert_eq!(ejected, 1, "the failed stream's endpoint is ejected");
    }

    use tower::Layer as _;
}
