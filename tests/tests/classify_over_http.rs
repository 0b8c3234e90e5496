//! mesh-core's classifiers over real HTTP on 127.0.0.1: what a hyper client
//! really returns (responses, refused connections, dropped connections) is
//! classified as the layers expect.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_core::classify::{Classify, HttpClassifier};
use mesh_core::pushback::Pushback;
use mesh_core::{BoxError, Outcome};
use mesh_tests::{TestServer, closed_port};
use tokio::io::AsyncReadExt;

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
    let server = TestServer::start(Arc::new(|req| {
        let (status, retry_after) = match req.uri().path() {
            "/ok" => (200, None),
            "/missing" => (404, None),
            "/boom" => (500, None),
            "/busy" => (503, Some("3")),
            _ => (429, Some("Wed, 21 Oct 2015 07:28:00 GMT")),
        };
        let mut b = http::Response::builder().status(status);
        if let Some(v) = retry_after {
            b = b.header("retry-after", v);
        }
        b.body(Full::new(Bytes::from_static(b"x"))).unwrap()
    }))
    .await
    .unwrap();
    let c = HttpClassifier::default();

    assert_eq!(c.classify(&get(&server.url("/ok")).await), Outcome::Success);
    assert_eq!(
        c.classify(&get(&server.url("/missing")).await),
        Outcome::Ignored
    );
    let boom = c.classify(&get(&server.url("/boom")).await);
    assert!(boom.is_failure() && !boom.is_retryable());
    let busy = c.classify(&get(&server.url("/busy")).await);
    assert!(busy.is_retryable());
    assert_eq!(
        busy.pushback(),
        Some(Pushback::After(Duration::from_secs(3)))
    );
    let limited = c.classify(&get(&server.url("/limited")).await);
    assert!(limited.is_retryable());
    // A date in the past means "retry now".
    assert_eq!(limited.pushback(), Some(Pushback::After(Duration::ZERO)));

    // Every request reached the server exactly once.
    assert_eq!(server.hits(), 5);
}

#[tokio::test]
async fn refused_connection_is_a_retryable_failure() {
    let addr = closed_port().await.unwrap();
    let result = get(&format!("http://{addr}/")).await;
    assert!(result.is_err(), "nothing listens on {addr}");
    assert!(HttpClassifier::default().classify(&result).is_retryable());
}

#[tokio::test]
async fn connection_dropped_mid_request_is_a_retryable_failure() {
    // A server that reads the request and hangs up without answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        }
    });
    let result = get(&format!("http://{addr}/")).await;
    let err = result.as_ref().unwrap_err();
    let outcome = HttpClassifier::default().classify(&result);
    assert!(outcome.is_retryable(), "{err:?} classified as {outcome:?}");
}
