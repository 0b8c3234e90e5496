//! gRPC over real HTTP/2 on 127.0.0.1: a backend answering trailers-only
//! `UNAVAILABLE` (as tonic does for `Status::unavailable`), classified by
//! `GrpcClassifier`, retried only for methods marked idempotent.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::backoff::{Backoff, Jitter};
use mesh_core::classify::GrpcClassifier;
use mesh_retry::{RetryConfig, RetryLayer};
use mesh_testkit::backend::{Backend, Behavior, Reply};
use tower::{Service, ServiceBuilder, ServiceExt};

fn unavailable() -> Reply {
    Reply::status(200)
        .header("content-type", "application/grpc")
        .header("grpc-status", "14")
        .header("grpc-message", "try%20again")
}

fn grpc_call(backend: &Backend, path: &str) -> Request<Full<Bytes>> {
    // An empty protobuf message in gRPC framing: no compression, length 0.
    Request::builder()
        .method(Method::POST)
        .uri(backend.url(path))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap()
}

#[tokio::test]
async fn unavailable_is_retried_only_for_idempotent_methods() {
    let backend = Backend::builder()
        .behavior(Behavior::Sequence(
            vec![
                unavailable().into(),
                unavailable().into(),
                Reply::status(200)
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "0")
                    .into(),
            ]
            .into(),
        ))
        .start()
        .await
        .unwrap();
    let config = RetryConfig {
        backoff: Backoff::new(Duration::from_millis(1), 2.0, Duration::from_millis(5))
            .with_jitter(Jitter::None),
        idempotent_grpc_methods: vec!["/grpc.health.v1.Health/*".into()],
        ..RetryConfig::default()
    };
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::with_classifier(config, GrpcClassifier::default()).unwrap())
        .service(h2);

    // Marked idempotent: UNAVAILABLE twice, then OK.
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(grpc_call(&backend, "/grpc.health.v1.Health/Check"))
        .await
        .unwrap();
    assert_eq!(res.headers()["grpc-status"], "0");
    assert_eq!(backend.hits(), 3);
    let reqs = backend.requests();
    assert!(reqs.iter().all(|r| r.body.as_ref() == [0, 0, 0, 0, 0]));
    assert_eq!(reqs[2].headers["x-mesh-attempt"], "3");

    // Not marked: one UNAVAILABLE reaches the caller, no retry.
    backend.reset_counts();
    backend.set_behavior(unavailable().into());
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(grpc_call(&backend, "/users.Users/Create"))
        .await
        .unwrap();
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn grpc_pushback_do_not_retry_stops() {
    let backend = Backend::builder()
        .behavior(unavailable().header("grpc-retry-pushback-ms", "-1").into())
        .start()
        .await
        .unwrap();
    let config = RetryConfig {
        idempotent_grpc_methods: vec!["/grpc.health.v1.Health/Check".into()],
        ..RetryConfig::default()
    };
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::with_classifier(config, GrpcClassifier::default()).unwrap())
        .service(h2);
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(grpc_call(&backend, "/grpc.health.v1.Health/Check"))
        .await
        .unwrap();
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(backend.hits(), 1);
}
