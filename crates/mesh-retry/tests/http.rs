//! End to end over real HTTP on 127.0.0.1: hyper-util's client behind
//! `RetryLayer`, against `mesh_testkit` backends, checked by what the *server*
//! received.

use std::convert::Infallible;
use std::error::Error as _;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body::Frame;
use http_body_util::{Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_core::TriedEndpoints;
use mesh_core::backoff::{Backoff, Jitter};
use mesh_retry::{
    BudgetConfig, BudgetExhausted, DeadlineExceeded, ReplayBody, ReplayBodyLayer, RetryConfig,
    RetryLayer,
};
use mesh_testkit::backend::{Backend, Behavior, Reply};
use tower::{Service, ServiceBuilder, ServiceExt};

fn fast_config() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        backoff: Backoff::new(Duration::from_millis(1), 2.0, Duration::from_millis(5))
            .with_jitter(Jitter::None),
        ..RetryConfig::default()
    }
}

fn client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

fn full(method: Method, url: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn fails_first_k_then_succeeds_with_attempt_headers() {
    let backend = Backend::builder()
        .behavior(Behavior::fail_first(2, 503))
        .start()
        .await
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(fast_config()).unwrap())
        .service(client::<Full<Bytes>>());
    let req = full(Method::GET, &backend.url("/users/1"), "");
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(backend.hits(), 3);
    let attempts: Vec<_> = backend
        .requests()
        .iter()
        .map(|r| {
            r.headers
                .get("x-mesh-attempt")
                .map(|v| v.to_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(attempts, [None, Some("2".into()), Some("3".into())]);
}

#[tokio::test]
async fn gives_up_after_max_retries_with_the_last_response() {
    let backend = Backend::builder()
        .behavior(Behavior::status(502))
        .start()
        .await
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(fast_config()).unwrap())
        .service(client::<Full<Bytes>>());
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(full(Method::GET, &backend.url("/"), ""))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(backend.hits(), 4);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let backend = Backend::builder()
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
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(fast_config()).unwrap())
        .service(client::<Full<Bytes>>());
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(full(Method::GET, &backend.url("/"), ""))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 2);
    // The backoff alone would have waited 1 ms; the server asked for 1 s.
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_millis(950), "{gap:?}");
}

#[tokio::test]
async fn post_is_never_duplicated_unless_keyed() {
    let backend = Backend::builder()
        .behavior(Behavior::status(503))
        .start()
        .await
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(fast_config()).unwrap())
        .service(client::<Full<Bytes>>());

    let res = svc
        .ready()
        .await
        .unwrap()
        .call(full(Method::POST, &backend.url("/orders"), "order"))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(backend.hits_with_method(&Method::POST), 1);

    let res = svc
        .ready()
        .await
        .unwrap()
        .call(full(Method::PATCH, &backend.url("/orders/1"), "x"))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(backend.hits_with_method(&Method::PATCH), 1);

    svc.ready()
        .await
        .unwrap()
        .call(full(Method::GET, &backend.url("/orders"), ""))
        .await
        .unwrap();
    assert_eq!(backend.hits_with_method(&Method::GET), 4);

    let mut keyed = full(Method::POST, &backend.url("/orders"), "order");
    keyed
        .headers_mut()
        .insert("idempotency-key", "4f1c".parse().unwrap());
    svc.ready().await.unwrap().call(keyed).await.unwrap();
    assert_eq!(backend.hits_with_method(&Method::POST), 1 + 4);
    let keyed_bodies: Vec<_> = backend
        .requests()
        .into_iter()
        .filter(|r| r.headers.contains_key("idempotency-key"))
        .map(|r| r.body)
        .collect();
    assert_eq!(keyed_bodies, vec![Bytes::from_static(b"order"); 4]);
}

type Chunks =
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn streaming(chunks: usize, size: usize) -> (Chunks, Bytes) {
    let frames: Vec<_> = (0..chunks)
        .map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + (i % 26) as u8; size]))))
        .collect();
    let whole: Vec<u8> = (0..chunks)
        .flat_map(|i| std::iter::repeat_n(b'a' + (i % 26) as u8, size))
        .collect();
    (
        StreamBody::new(futures_util::stream::iter(frames)),
        whole.into(),
    )
}

#[tokio::test]
async fn streaming_body_under_the_cap_is_replayed() {
    let backend = Backend::builder()
        .behavior(Behavior::fail_first(1, 503))
        .start()
        .await
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(ReplayBodyLayer::new(64 * 1024))
        .layer(RetryLayer::new(fast_config()).unwrap())
        .service(client::<ReplayBody<Chunks>>());
    let (body, whole) = streaming(16, 1024); // 16 KiB
    let req = Request::put(backend.url("/blobs/1")).body(body).unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body, whole);
    assert_eq!(reqs[1].body, whole);
}

#[tokio::test]
async fn streaming_body_over_the_cap_is_sent_once() {
    let backend = Backend::builder()
        .behavior(Behavior::fail_first(1, 503))
        .start()
        .await
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(ReplayBodyLayer::new(64 * 1024))
        .layer(RetryLayer::new(fast_config()).unwrap())
        .service(client::<ReplayBody<Chunks>>());
    let (body, whole) = streaming(80, 1024); // 80 KiB
    let req = Request::put(backend.url("/blobs/2")).body(body).unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 503);
    let reqs = backend.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body, whole);
}

#[tokio::test]
async fn total_outage_extra_load_stays_within_the_budget() {
    let backend = Backend::builder()
        .behavior(Behavior::status(503))
        .start()
        .await
        .unwrap();
    let config = RetryConfig {
        budget: BudgetConfig {
            ttl: Duration::from_secs(10),
            min_retries_per_second: 1,
            retry_ratio: 0.2,
        },
        ..fast_config()
    };
    let layer = RetryLayer::new(config).unwrap();
    // Two services from one layer (and clones of them) share one budget.
    let a = layer.layer_service(client::<Full<Bytes>>());
    let b = layer.layer_service(client::<Full<Bytes>>());
    let requests = 200u64;
    let mut tasks = Vec::new();
    for i in 0..requests {
        let mut svc = if i % 2 == 0 { a.clone() } else { b.clone() };
        let url = backend.url("/");
        tasks.push(tokio::spawn(async move {
            svc.ready()
                .await
                .unwrap()
                .call(full(Method::GET, &url, ""))
                .await
                .unwrap()
                .status()
        }));
        if i % 20 == 19 {
            for t in tasks.drain(..) {
                assert_eq!(t.await.unwrap(), 503);
            }
        }
    }
    // Without a budget: 200 · 4 = 800 hits. With it: 10 + 20 % of 200 retries.
    let hits = backend.hits();
    let allowed_retries = 10 + requests / 5;
    assert!(hits <= requests + allowed_retries, "{hits} hits");
    assert!(
        hits >= requests + allowed_retries - 2,
        "budget unused: {hits} hits"
    );
}

trait LayerExt<S> {
    fn layer_service(
        &self,
        s: S,
    ) -> mesh_retry::RetryService<S, mesh_core::classify::DefaultHttpClassifier>;
}

impl<S> LayerExt<S> for RetryLayer {
    fn layer_service(
        &self,
        s: S,
    ) -> mesh_retry::RetryService<S, mesh_core::classify::DefaultHttpClassifier> {
        tower::Layer::layer(self, s)
    }
}

#[tokio::test]
async fn refused_connections_are_retried_then_budget_exhausted() {
    let backend = Backend::start().await.unwrap();
    let url = backend.url("/");
    backend.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let config = RetryConfig {
        budget: BudgetConfig {
            ttl: Duration::from_secs(10),
            min_retries_per_second: 0,
            retry_ratio: 0.0,
        },
        ..fast_config()
    };
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(config).unwrap())
        .service(client::<Full<Bytes>>());
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(full(Method::GET, &url, ""))
        .await
        .unwrap_err();
    let exhausted = err
        .downcast_ref::<BudgetExhausted>()
        .expect("BudgetExhausted");
    assert!(exhausted.source().is_some(), "keeps the connect error");
}

#[tokio::test]
async fn attempt_timeout_retries_a_hung_attempt() {
    let backend = Backend::builder()
        .behavior(Behavior::Sequence(
            vec![Behavior::Hang, Behavior::Healthy].into(),
        ))
        .start()
        .await
        .unwrap();
    let config = RetryConfig {
        attempt_timeout: Some(Duration::from_millis(200)),
        deadline: Some(Duration::from_secs(5)),
        ..fast_config()
    };
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(config).unwrap())
        .service(client::<Full<Bytes>>());
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(full(Method::GET, &backend.url("/"), ""))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(backend.hits(), 2);
}

#[tokio::test]
async fn deadline_cuts_a_hung_request() {
    let backend = Backend::builder()
        .behavior(Behavior::Hang)
        .start()
        .await
        .unwrap();
    let config = RetryConfig {
        deadline: Some(Duration::from_millis(300)),
        ..fast_config()
    };
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(config).unwrap())
        .service(client::<Full<Bytes>>());
    let start = std::time::Instant::now();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(full(Method::GET, &backend.url("/"), ""))
        .await
        .unwrap_err();
    assert!(err.is::<DeadlineExceeded>(), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(backend.hits(), 1);
}

/// What each attempt carried as its tried-endpoints record, in order.
type SeenRecords = std::sync::Arc<std::sync::Mutex<Vec<Option<TriedEndpoints>>>>;

/// Stands in for the discovery router over the real client: records an
/// endpoint per attempt (ids 1, 2, ...) into the request's record when it
/// has one, and logs the record each attempt carried.
fn recording_router() -> (
    impl Service<
        Request<Full<Bytes>>,
        Response = http::Response<hyper::body::Incoming>,
        Error = hyper_util::client::legacy::Error,
        Future: Send,
    > + Clone,
    SeenRecords,
) {
    let seen = SeenRecords::default();
    let log = seen.clone();
    let inner = client::<Full<Bytes>>();
    let router = tower::service_fn(move |req: Request<Full<Bytes>>| {
        let tried = req.extensions().get::<TriedEndpoints>().cloned();
        let mut log = log.lock().unwrap();
        if let Some(tried) = &tried {
            tried.record_id(log.len() as u64 + 1);
        }
        log.push(tried);
        inner.clone().call(req)
    });
    (router, seen)
}

#[tokio::test]
async fn every_attempt_shares_one_tried_endpoints_record() {
    let backend = Backend::builder()
        .behavior(Behavior::fail_first(2, 503))
        .start()
        .await
        .unwrap();
    let (router, seen) = recording_router();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(fast_config()).unwrap())
        .service(router);
    svc.ready()
        .await
        .unwrap()
        .call(full(Method::GET, &backend.url("/"), ""))
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    // The first attempt carries no record (nothing allocated for requests
    // that succeed at once; a router reports where it went with a failed
    // result, which this stand-in does not); the retries share one.
    assert!(seen[0].is_none());
    let (second, third) = (seen[1].as_ref().unwrap(), seen[2].as_ref().unwrap());
    assert_eq!(third.len(), 2);
    assert!((2..=3).all(|id| second.contains_id(id)));
    assert_eq!(backend.hits(), 3);
}

#[tokio::test]
async fn a_record_the_caller_put_in_the_request_is_shared_by_every_attempt() {
    let backend = Backend::builder()
        .behavior(Behavior::fail_first(1, 503))
        .start()
        .await
        .unwrap();
    let (router, seen) = recording_router();
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(fast_config()).unwrap())
        .service(router);
    let mine = TriedEndpoints::new();
    let mut req = full(Method::GET, &backend.url("/"), "");
    req.extensions_mut().insert(mine.clone());
    svc.ready().await.unwrap().call(req).await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(Option::is_some));
    assert_eq!(mine.len(), 2);
    assert!(mine.contains_id(1) && mine.contains_id(2));
}
