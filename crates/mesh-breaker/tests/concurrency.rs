//! Many tasks on a multi-thread runtime hammer one half-open breaker: never
//! more than `half_open_max_calls` probes are in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Response;
use mesh_breaker::{BreakerConfig, BreakerOpen, CircuitBreakerLayer, CircuitState, OpenBehavior};
use mesh_core::BoxError;
use tower::{Layer, Service, ServiceExt};

const PROBES: u32 = 3;

#[derive(Default)]
struct Gauge {
    in_flight: AtomicUsize,
    max: AtomicUsize,
    hits: AtomicUsize,
}

struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn hammer(behavior: OpenBehavior) {
    let gauge = Arc::new(Gauge::default());
    let status = Arc::new(AtomicUsize::new(500));
    let g = gauge.clone();
    let s = status.clone();
    let inner = tower::service_fn(move |()| {
        let g = g.clone();
        let status = s.load(Ordering::SeqCst) as u16;
        async move {
            g.hits.fetch_add(1, Ordering::SeqCst);
            let now = g.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            g.max.fetch_max(now, Ordering::SeqCst);
            // A caller that gives up drops this future: still leaves the gauge.
            let _leave = InFlight(&g);
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            Ok::<_, BoxError>(Response::builder().status(status).body(()).unwrap())
        }
    });
    let breaker = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: Some(1),
        recovery_timeout: Duration::from_millis(5),
        max_open_time: Duration::from_millis(5),
        half_open_max_calls: PROBES,
        open_behavior: behavior,
        ..BreakerConfig::default()
    })
    .unwrap()
    .layer(inner);
    let handle = breaker.handle();

    // Trip it; then 404s (ignored) keep it half-open forever: every call that
    // reaches the service from now on is a probe.
    breaker.clone().oneshot(()).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    status.store(404, Ordering::SeqCst);
    gauge.hits.store(0, Ordering::SeqCst);
    gauge.max.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(10)).await;

    let refused = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..16 {
        let mut svc = breaker.clone();
        let refused = refused.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                let call = async {
                    let svc = svc.ready().await?;
                    svc.call(()).await
                };
                // Some callers give up early: their probes are dropped.
                let limit = if (t + i) % 7 == 0 { 0 } else { 1000 };
                match tokio::time::timeout(Duration::from_micros(limit), call).await {
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(e)) => {
                        assert!(e.downcast_ref::<BreakerOpen>().is_some(), "{e}");
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let max = gauge.max.load(Ordering::SeqCst);
    let hits = gauge.hits.load(Ordering::SeqCst);
    assert!(max <= PROBES as usize, "{max} probes in flight at once");
    assert!(hits > PROBES as usize, "probes must keep flowing ({hits})");
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    if behavior == OpenBehavior::FailFast {
        assert!(refused.load(Ordering::SeqCst) > 0);
    }
    assert_eq!(gauge.in_flight.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_fast_never_exceeds_the_probe_cap() {
    hammer(OpenBehavior::FailFast).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_ready_never_exceeds_the_probe_cap() {
    hammer(OpenBehavior::NotReady).await;
}
