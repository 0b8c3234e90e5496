//! End to end over real HTTP on 127.0.0.1: the server's hit count shows the
//! breaker really stops traffic, and lets it through again after recovery.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_breaker::{BreakerConfig, BreakerOpen, CircuitBreakerLayer, CircuitState};
use mesh_core::BoxError;
use mesh_testkit::{Backend, Behavior, Reply};
use tower::{Layer, Service, ServiceExt};

fn request(backend: &Backend) -> http::Request<Empty<Bytes>> {
    http::Request::get(backend.url("/users"))
        .body(Empty::new())
        .unwrap()
}

async fn status<S>(svc: &mut S, backend: &Backend) -> Result<u16, BoxError>
where
    S: Service<
            http::Request<Empty<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = BoxError,
        >,
{
    let response = svc.ready().await?.call(request(backend)).await?;
    Ok(response.status().as_u16())
}

#[tokio::test]
async fn failing_backend_trips_then_recovers() {
    let backend = Backend::builder().name("users").start().await.unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let recovery = Duration::from_millis(200);
    let mut svc = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: Some(3),
        recovery_timeout: recovery,
        max_open_time: recovery,
        half_open_max_calls: 2,
        ..BreakerConfig::default()
    })
    .unwrap()
    .layer(client);
    let handle = svc.handle();

    for _ in 0..3 {
        assert_eq!(status(&mut svc, &backend).await.unwrap(), 200);
    }
    backend.set_behavior(Reply::status(503).into());
    for _ in 0..3 {
        assert_eq!(status(&mut svc, &backend).await.unwrap(), 503);
    }
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(backend.hits(), 6);

    // Open: calls fail fast and never reach the server.
    for _ in 0..20 {
        let e = status(&mut svc, &backend).await.unwrap_err();
        assert!(e.downcast_ref::<BreakerOpen>().is_some(), "{e}");
    }
    assert_eq!(backend.hits(), 6, "an open breaker must not send");

    // The server recovers; after the open period two probes close the breaker.
    backend.set_behavior(Behavior::Healthy);
    tokio::time::sleep(recovery + Duration::from_millis(50)).await;
    for _ in 0..2 {
        assert_eq!(status(&mut svc, &backend).await.unwrap(), 200);
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    for _ in 0..5 {
        assert_eq!(status(&mut svc, &backend).await.unwrap(), 200);
    }
    assert_eq!(backend.hits(), 6 + 2 + 5);
}

#[tokio::test]
async fn connection_errors_count_as_failures() {
    let backend = Backend::builder().start().await.unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut svc = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: Some(2),
        ..BreakerConfig::default()
    })
    .unwrap()
    .layer(client);
    backend.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..2 {
        let e = status(&mut svc, &backend).await.unwrap_err();
        assert!(e.downcast_ref::<BreakerOpen>().is_none());
    }
    assert_eq!(svc.handle().state(), CircuitState::Open);
    let e = status(&mut svc, &backend).await.unwrap_err();
    assert!(e.downcast_ref::<BreakerOpen>().is_some());
}
