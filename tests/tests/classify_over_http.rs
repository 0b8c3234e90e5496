//! mesh-core's classifiers over real HTTP on 127.0.0.1: what a hyper client
//! really returns (responses, refused connections, dropped connections) is
//! classified as the layers expect.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::classify::{Classify, HttpClassifier};
use mesh_core::pushback::Pushback;
use mesh_core::{BoxError, Outcome};
use mesh_testkit::{Backend, Behavior, Reply};

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(url: &str) -> Result<http::Response<hyper::body::Incoming>, BoxError> {
    let req = http::Request::get(url).body(Full::new(Bytes::new()))?;
    // A tower client stack hands errors around as BoxError.
    client().request(req).await.map_err(BoxError::from)
}

#[tokio::test]
async fn statuses_and_pushback_from_a_real_server() {
    let server = Backend::start().await.unwrap();
    let c = HttpClassifier::default();
    let url = server.url("/");

    assert_eq!(c.classify(&get(&url).await), Outcome::Success);
    server.set_behavior(Behavior::status(404));
    assert_eq!(c.classify(&get(&url).await), Outcome::Ignored);
    server.set_behavior(Behavior::status(500));
    let boom = c.classify(&get(&url).await);
    assert!(boom.is_failure() && !boom.is_retryable());
    server.set_behavior(Reply::status(503).header("retry-after", "3").into());
    let busy = c.classify(&get(&url).await);
    assert!(busy.is_retryable());
    assert_eq!(
        busy.pushback(),
        Some(Pushback::After(Duration::from_secs(3)))
    );
    server.set_behavior(
        Reply::status(429)
            .header("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")
            .into(),
    );
    let limited = c.classify(&get(&url).await);
    assert!(limited.is_retryable());
    // A date in the past means "retry now".
    assert_eq!(limited.pushback(), Some(Pushback::After(Duration::ZERO)));

    // Every request reached the server exactly once.
    assert_eq!(server.hits(), 5);
}

#[tokio::test]
async fn refused_connection_is_a_retryable_failure() {
    let server = Backend::start().await.unwrap();
    server.shutdown();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let result = get(&server.url("/")).await;
    assert!(result.is_err(), "nothing listens on {}", server.addr());
    assert!(HttpClassifier::default().classify(&result).is_retryable());
}

#[tokio::test]
async fn connection_dropped_mid_request_is_a_retryable_failure() {
    // A server that reads the request and hangs up without answering.
    let server = Backend::builder()
        .behavior(Behavior::Drop)
        .start()
        .await
        .unwrap();
    let result = get(&server.url("/")).await;
    let err = result.as_ref().unwrap_err();
    let outcome = HttpClassifier::default().classify(&result);
    assert!(outcome.is_retryable(), "{err:?} classified as {outcome:?}");
    assert_eq!(server.hits(), 1);
}
