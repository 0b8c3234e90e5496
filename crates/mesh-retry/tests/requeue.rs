//! Requeues: a request that provably never reached a server is sent again
//! at once, whatever its method, paid from the budget and counted apart from
//! retries; one the server may have seen is not (for a `POST`), and never
//! without a backoff.
//!
//! Time is paused: a requeue that waited would show as time passed.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use mesh_core::backoff::{Backoff, Jitter};
use mesh_core::{BoxError, TriedEndpoints};
use mesh_retry::{
    BudgetConfig, BudgetExhausted, ReplayBody, RetryConfig, RetryLayer, RetryStats, TryCloneBody,
};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

fn config() -> RetryConfig {
    RetryConfig {
        // A retry after a backoff would show as a second of paused time.
        backoff: Backoff::new(Duration::from_secs(1), 2.0, Duration::from_secs(4))
            .with_jitter(Jitter::None),
        ..RetryConfig::default()
    }
}

/// What each attempt saw: its attempt header and whether it carried a
/// tried-endpoints record (and how many endpoints were in it).
type Log = Arc<Mutex<Vec<(Option<String>, Option<usize>)>>>;

/// A service whose first `fail` attempts fail with `kind`, recording each
/// attempt (and, as the router does, the endpoint in the record).
fn failing<B: Send + 'static>(
    fail: usize,
    kind: io::ErrorKind,
    log: Log,
) -> impl Service<Request<B>, Response = Response<()>, Error = BoxError, Future: Send> + Clone {
    tower::service_fn(move |req: Request<B>| {
        let mut log = log.lock().unwrap();
        let tried = req.extensions().get::<TriedEndpoints>().cloned();
        if let Some(t) = &tried {
            t.record_id(log.len() as u64 + 1);
        }
        log.push((
            req.headers()
                .get("x-mesh-attempt")
                .map(|v| v.to_str().unwrap().to_owned()),
            tried.map(|t| t.len()),
        ));
        let n = log.len();
        async move {
            if n <= fail {
                Err::<Response<()>, BoxError>(Box::new(io::Error::from(kind)))
            } else {
                Ok(Response::new(()))
            }
        }
    })
}

fn post() -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri("http://users/orders")
        .body(Full::new(Bytes::from_static(b"order")))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_refused_post_is_requeued_at_once_and_counted_apart() {
    let log = Log::default();
    let layer = RetryLayer::new(config()).unwrap();
    let mut svc = ServiceBuilder::new().layer(layer.clone()).service(failing(
        1,
        io::ErrorKind::ConnectionRefused,
        log.clone(),
    ));
    let start = Instant::now();
    let res = svc.ready().await.unwrap().call(post()).await;
    assert!(res.is_ok(), "{res:?}");
    assert_eq!(start.elapsed(), Duration::ZERO, "no backoff for a requeue");
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 2);
    // The requeue says which attempt it is and carries the record, so a
    // router sends it elsewhere.
    assert_eq!(log[1].0.as_deref(), Some("2"));
    assert!(log[1].1.is_some());
    let stats = layer.policy().stats();
    assert_eq!((stats.retries, stats.requeues), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_post_reset_after_it_may_have_been_sent_is_not_requeued() {
    for kind in [
        io::ErrorKind::ConnectionReset,
        io::ErrorKind::BrokenPipe,
        io::ErrorKind::UnexpectedEof,
    ] {
        let log = Log::default();
        let layer = RetryLayer::new(config()).unwrap();
        let mut svc =
            ServiceBuilder::new()
                .layer(layer.clone())
                .service(failing(1, kind, log.clone()));
        let err = svc.ready().await.unwrap().call(post()).await.unwrap_err();
        assert_eq!(err.downcast_ref::<io::Error>().unwrap().kind(), kind);
        assert_eq!(log.lock().unwrap().len(), 1, "{kind:?}");
        assert_eq!(layer.policy().stats(), RetryStats::default());
    }
}

#[tokio::test(start_paused = true)]
async fn a_get_that_never_reaches_a_server_is_requeued_not_retried_with_backoff() {
    let log = Log::default();
    let layer = RetryLayer::new(config()).unwrap();
    let mut svc = ServiceBuilder::new().layer(layer.clone()).service(failing(
        usize::MAX,
        io::ErrorKind::ConnectionRefused,
        log.clone(),
    ));
    let start = Instant::now();
    let req = Request::get("http://users/x")
        .body(Full::<Bytes>::default())
        .unwrap();
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    // Every replica refused: the caller learns at once, with the last error.
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        err.downcast_ref::<io::Error>().unwrap().kind(),
        io::ErrorKind::ConnectionRefused
    );
    assert_eq!(
        log.lock().unwrap().len(),
        4,
        "the first attempt and 3 requeues"
    );
    assert_eq!(layer.policy().stats().requeues, 3);
    assert_eq!(layer.policy().stats().retries, 0);
}

#[tokio::test(start_paused = true)]
async fn requeues_are_paid_from_the_budget() {
    let log = Log::default();
    let layer = RetryLayer::new(RetryConfig {
        budget: BudgetConfig {
            min_retries_per_second: 0,
            retry_ratio: 0.0,
            ..BudgetConfig::default()
        },
        ..config()
    })
    .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(failing(
        1,
        io::ErrorKind::ConnectionRefused,
        log.clone(),
    ));
    let err = svc.ready().await.unwrap().call(post()).await.unwrap_err();
    let budget = err.downcast_ref::<BudgetExhausted>().expect("typed");
    assert!(std::error::Error::source(budget).is_some());
    assert_eq!(log.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn max_requeues_zero_turns_requeueing_off() {
    let log = Log::default();
    let layer = RetryLayer::new(RetryConfig {
        max_requeues: 0,
        ..config()
    })
    .unwrap();
    let mut svc = ServiceBuilder::new().layer(layer).service(failing(
        1,
        io::ErrorKind::ConnectionRefused,
        log.clone(),
    ));
    assert!(svc.ready().await.unwrap().call(post()).await.is_err());
    assert_eq!(log.lock().unwrap().len(), 1);
    // A GET is still retried, after its backoff.
    let log = Log::default();
    let mut svc = ServiceBuilder::new()
        .layer(
            RetryLayer::new(RetryConfig {
                max_requeues: 0,
                ..config()
            })
            .unwrap(),
        )
        .service(failing(1, io::ErrorKind::ConnectionRefused, log.clone()));
    let start = Instant::now();
    let req = Request::get("http://users/x")
        .body(Full::<Bytes>::default())
        .unwrap();
    svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_never_read_is_requeued_whole_even_past_the_replay_cap() {
    // The first attempt was refused before it read a byte: nothing was
    // streamed, so the requeue sends all of it, even though it is larger
    // than the replay cap.
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let attempts = Arc::new(Mutex::new(0));
    let inner = tower::service_fn(move |req: Request<ReplayBody<_>>| {
        let seen = seen.clone();
        let attempts = attempts.clone();
        async move {
            let n = {
                let mut a = attempts.lock().unwrap();
                *a += 1;
                *a
            };
            if n == 1 {
                return Err::<Response<()>, BoxError>(Box::new(io::Error::from(
                    io::ErrorKind::ConnectionRefused,
                )));
            }
            let body = req.into_body().collect().await?.to_bytes();
            seen.lock().unwrap().push(body);
            Ok(Response::new(()))
        }
    });
    let chunks = futures_util::stream::iter(vec![
        Ok::<_, io::Error>(Frame::data(Bytes::from_static(b"hello "))),
        Ok(Frame::data(Bytes::from_static(b"world"))),
    ]);
    let body = ReplayBody::new(StreamBody::new(chunks), 4);
    assert!(body.try_clone_body().is_some());
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(config()).unwrap())
        .service(inner);
    let req = Request::post("http://users/x").body(body).unwrap();
    svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(bodies.lock().unwrap().as_slice(), ["hello world"]);
}
