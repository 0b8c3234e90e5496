//! Server pushback through the ready-made stack over real HTTP on
//! 127.0.0.1: a server asking for longer than the retry config allows (or
//! than the deadline leaves) gets no retry, and the caller gets its
//! response at once.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_stack::core::Endpoint;
use mesh_stack::{Mesh, MeshConfig, ServiceConfig};
use mesh_testkit::{Backend, Behavior, Reply};
use tower::ServiceExt;

async fn backend(retry_after: &str) -> Backend {
    Backend::builder()
        .name("busy")
        .behavior(Behavior::Respond(
            Reply::status(503).header("retry-after", retry_after),
        ))
        .start()
        .await
        .unwrap()
}

/// One GET through the default stack; the status and how long it took.
async fn get(service: ServiceConfig) -> (u16, Duration) {
    let mesh = Mesh::new(MeshConfig::new().service("users", service)).unwrap();
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let users = mesh.http_client("users", client).unwrap();
    let req = http::Request::get("http://users/x")
        .body(Empty::new())
        .unwrap();
    let start = Instant::now();
    let resp = users.oneshot(req).await.unwrap();
    (resp.status().as_u16(), start.elapsed())
}

fn users(b: &Backend) -> ServiceConfig {
    ServiceConfig::with_static([Endpoint::new(b.name().to_owned(), b.addr().into())])
}

#[tokio::test]
async fn a_pushback_of_an_hour_ends_the_call_at_once_with_that_response() {
    let busy = backend("3600").await;
    // Every setting at its default: 3 retries, max_pushback 30 s.
    let (status, took) = get(users(&busy)).await;
    assert_eq!(status, 503);
    assert!(took < Duration::from_millis(900), "took {took:?}");
    assert_eq!(busy.hits(), 1, "no retry was sent");
}

#[tokio::test]
async fn a_pushback_past_the_deadline_ends_the_call_at_once() {
    let busy = backend("10").await;
    let mut service = users(&busy);
    service.retry.deadline = Some(Duration::from_secs(3));
    let (status, took) = get(service).await;
    assert_eq!(status, 503);
    assert!(took < Duration::from_millis(900), "took {took:?}");
    assert_eq!(busy.hits(), 1);
}

#[tokio::test]
async fn a_pushback_within_the_cap_is_waited_for() {
    // The control: a short pushback is honoured and the call retried.
    let busy = Backend::builder()
        .name("busy")
        .behavior(Behavior::Sequence(
            vec![
                Reply::status(503).header("retry-after", "1").into(),
                Behavior::Healthy,
            ]
            .into(),
        ))
        .start()
        .await
        .unwrap();
    let (status, took) = get(users(&busy)).await;
    assert_eq!(status, 200);
    assert!(took >= Duration::from_secs(1), "took {took:?}");
    assert_eq!(busy.hits(), 2);
}
