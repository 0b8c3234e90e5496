//! Timing of `RetryLayer` under tokio's paused clock: backoff delays, server
//! pushback and the overall deadline, with no real sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use mesh_core::BoxError;
use mesh_core::backoff::{Backoff, Jitter};
use mesh_retry::{DeadlineExceeded, RetryConfig, RetryLayer};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

type Req = Request<Full<Bytes>>;

/// A backend answering each call with the next `(status, retry-after)` and
/// recording when each call arrived.
fn scripted(
    script: Vec<(u16, Option<&'static str>)>,
) -> (
    impl Service<Req, Response = Response<()>, Error = BoxError, Future: Send> + Clone,
    Arc<std::sync::Mutex<Vec<Instant>>>,
) {
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = calls.clone();
    let n = Arc::new(AtomicUsize::new(0));
    let svc = tower::service_fn(move |_req: Req| {
        log.lock().unwrap().push(Instant::now());
        let i = n.fetch_add(1, Ordering::SeqCst);
        let (status, after) = script[i.min(script.len() - 1)];
        async move {
            let mut r = Response::builder().status(status);
            if let Some(a) = after {
                r = r.header("retry-after", a);
            }
            Ok::<_, BoxError>(r.body(()).unwrap())
        }
    });
    (svc, calls)
}

fn config() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        backoff: Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(10))
            .with_jitter(Jitter::None),
        ..RetryConfig::default()
    }
}

fn get() -> Req {
    Request::get("http://svc/x")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn gaps(calls: &[Instant]) -> Vec<Duration> {
    calls.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_are_waited_exactly() {
    let (inner, calls) = scripted(vec![(503, None), (503, None), (503, None), (200, None)]);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(config()).unwrap())
        .service(inner);
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        gaps(&calls.lock().unwrap()),
        [100, 200, 400].map(Duration::from_millis)
    );
}

#[tokio::test(start_paused = true)]
async fn pushback_stretches_the_delay() {
    let (inner, calls) = scripted(vec![(503, Some("3")), (429, Some("0")), (200, None)]);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(config()).unwrap())
        .service(inner);
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(res.status(), 200);
    // 3 s from Retry-After, then the backoff's 200 ms (a 0 s pushback does
    // not shorten it).
    assert_eq!(
        gaps(&calls.lock().unwrap()),
        [Duration::from_secs(3), Duration::from_millis(200)]
    );
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_that_cannot_finish_before_the_deadline() {
    let (inner, calls) = scripted(vec![(503, None), (503, Some("5")), (200, None)]);
    let mut svc = ServiceBuilder::new()
        .layer(
            RetryLayer::new(RetryConfig {
                deadline: Some(Duration::from_secs(2)),
                ..config()
            })
            .unwrap(),
        )
        .service(inner);
    let start = Instant::now();
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    // The second answer asks for 5 s with under 2 s left: give up at once,
    // with the server's own response.
    assert_eq!(res.status(), 503);
    assert_eq!(calls.lock().unwrap().len(), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_a_slow_attempt() {
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    let inner = tower::service_fn(move |_req: Req| {
        n.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, BoxError>(Response::new(()))
        }
    });
    let mut svc = ServiceBuilder::new()
        .layer(
            RetryLayer::new(RetryConfig {
                deadline: Some(Duration::from_secs(1)),
                attempt_timeout: Some(Duration::from_millis(300)),
                ..config()
            })
            .unwrap(),
        )
        .service(inner);
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call(get()).await.unwrap_err();
    assert!(err.is::<DeadlineExceeded>(), "{err}");
    // Attempts at 0 and 400 ms time out (300 ms each, then 100 and 200 ms
    // of backoff); the third starts at 900 ms, with enough time left, and is
    // cut by the deadline at 1 s.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

/// Everything the `tracing` events of a test write.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_pushback_beyond_max_pushback_is_not_waited_for() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // The server asks for a minute; the config waits at most 30 s (its
    // default): no retry, the 503 comes back at once.
    let (inner, calls) = scripted(vec![(503, Some("60")), (200, None)]);
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(config()).unwrap())
        .service(inner);
    let start = Instant::now();
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(calls.lock().unwrap().len(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);

    // The give-up event says why, with both values.
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let event = logs
        .lines()
        .find(|l| l.contains("not retrying"))
        .unwrap_or_else(|| panic!("no give-up event in {logs}"));
    for field in [
        "reason=\"pushback_beyond_max\"",
        "pushback_ms=60000",
        "max_pushback_ms=30000",
    ] {
        assert!(event.contains(field), "{field} not in {event}");
    }
}
