//! Every transition and timing rule, on a paused clock.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Response;
use mesh_core::{Availability, AvailabilityState, BoxError};
use tokio::time::advance;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};

use crate::*;

/// A scriptable inner service: status, optional `Retry-After`, optional delay.
#[derive(Clone, Default)]
struct Mock {
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    retry_after: Arc<Mutex<Option<&'static str>>>,
    delay: Arc<Mutex<Duration>>,
}

type Inner = BoxCloneService<(), Response<()>, BoxError>;

impl Mock {
    fn new() -> Self {
        let m = Self::default();
        m.status.store(200, Ordering::SeqCst);
        m
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn service(&self) -> Inner {
        let m = self.clone();
        BoxCloneService::new(tower::service_fn(move |()| {
            m.hits.fetch_add(1, Ordering::SeqCst);
            let status = m.status.load(Ordering::SeqCst);
            let retry_after = *m.retry_after.lock().unwrap();
            let delay = *m.delay.lock().unwrap();
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let mut r = Response::builder().status(status);
                if let Some(v) = retry_after {
                    r = r.header("retry-after", v);
                }
                Ok::<_, BoxError>(r.body(()).unwrap())
            }
        }))
    }
}

type Breaker = CircuitBreaker<Inner>;

fn breaker(config: BreakerConfig) -> (Breaker, Mock) {
    let mock = Mock::new();
    let layer = CircuitBreakerLayer::new(config).unwrap();
    (layer.layer(mock.service()), mock)
}

async fn call(svc: &mut Breaker) -> Result<u16, BoxError> {
    let r = svc.ready().await?.call(()).await?;
    Ok(r.status().as_u16())
}

fn open_error(r: Result<u16, BoxError>) -> BreakerOpen {
    *r.unwrap_err().downcast_ref::<BreakerOpen>().unwrap()
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn no_backoff() -> BreakerConfig {
    BreakerConfig {
        max_open_time: secs(60),
        ..BreakerConfig::default()
    }
}

/// Opens the breaker with `n` failures.
async fn trip(svc: &mut Breaker, mock: &Mock, n: usize) {
    mock.set(500);
    for _ in 0..n {
        assert_eq!(call(svc).await.unwrap(), 500);
    }
    assert_eq!(svc.handle().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn seed_example_threshold_two() {
    let (mut svc, mock) = breaker(BreakerConfig {
        consecutive_failures: Some(2),
        ..BreakerConfig::default()
    });
    mock.set(503);
    assert_eq!(call(&mut svc).await.unwrap(), 503);
    assert_eq!(svc.handle().state(), CircuitState::Closed);
    assert_eq!(call(&mut svc).await.unwrap(), 503);
    assert_eq!(svc.handle().state(), CircuitState::Open);
    let open = open_error(call(&mut svc).await);
    assert_eq!(open.state(), CircuitState::Open);
    assert_eq!(open.remaining(), Some(secs(60)));
    assert_eq!(mock.hits(), 2, "the third call must not reach the service");
}

#[tokio::test(start_paused = true)]
async fn success_resets_and_client_errors_are_ignored() {
    let (mut svc, mock) = breaker(BreakerConfig {
        consecutive_failures: Some(3),
        ..BreakerConfig::default()
    });
    for status in [500, 500, 200, 500, 404, 400, 500] {
        mock.set(status);
        call(&mut svc).await.unwrap();
        assert_eq!(svc.handle().state(), CircuitState::Closed, "after {status}");
    }
    mock.set(502);
    call(&mut svc).await.unwrap();
    assert_eq!(svc.handle().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_caps_probes_then_closes() {
    let (mut svc, mock) = breaker(no_backoff());
    trip(&mut svc, &mock, 5).await;
    advance(secs(59)).await;
    assert!(open_error(call(&mut svc).await).remaining().unwrap() <= secs(1));
    advance(secs(1)).await;

    mock.set(200);
    mock.delay(secs(1));
    let mut probes = Vec::new();
    for _ in 0..3 {
        probes.push(svc.ready().await.unwrap().call(()));
    }
    assert_eq!(svc.handle().state(), CircuitState::HalfOpen);
    assert_eq!(svc.availability().state(), AvailabilityState::Unavailable);
    let refused = open_error(call(&mut svc).await);
    assert_eq!(refused.state(), CircuitState::HalfOpen);
    assert_eq!(mock.hits(), 5 + 3);

    let mut done = 0;
    for p in probes {
        assert_eq!(p.await.unwrap().status(), 200);
        done += 1;
        let want = if done < 3 {
            CircuitState::HalfOpen
        } else {
            CircuitState::Closed
        };
        assert_eq!(svc.handle().state(), want);
    }
    assert_eq!(svc.availability().state(), AvailabilityState::Available);
    mock.delay(Duration::ZERO);
    assert_eq!(call(&mut svc).await.unwrap(), 200);
}

#[tokio::test(start_paused = true)]
async fn probe_failure_reopens_with_backoff() {
    let (mut svc, mock) = breaker(BreakerConfig {
        max_open_time: secs(300),
        ..BreakerConfig::default()
    });
    trip(&mut svc, &mock, 5).await;
    let mut previous_max = secs(60);
    for round in 0..6 {
        advance(svc.handle().remaining_open_time().unwrap()).await;
        // The probe fails: open again, for recovery + jittered growth.
        assert_eq!(call(&mut svc).await.unwrap(), 500);
        let open = svc.handle().remaining_open_time().unwrap();
        assert!(
            open >= secs(60) && open <= secs(300),
            "round {round}: {open:?}"
        );
        previous_max = previous_max.max(open);
    }
    assert!(previous_max > secs(60), "open time never grew");
    // Closing resets the backoff: the next trip opens for exactly recovery.
    advance(svc.handle().remaining_open_time().unwrap()).await;
    mock.set(200);
    for _ in 0..3 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(svc.handle().state(), CircuitState::Closed);
    trip(&mut svc, &mock, 5).await;
    assert_eq!(svc.handle().remaining_open_time(), Some(secs(60)));
}

#[tokio::test(start_paused = true)]
async fn pushback_longer_than_the_open_time_extends_it() {
    let (mut svc, mock) = breaker(BreakerConfig {
        consecutive_failures: Some(1),
        ..BreakerConfig::default()
    });
    *mock.retry_after.lock().unwrap() = Some("120");
    trip(&mut svc, &mock, 1).await;
    assert_eq!(svc.handle().remaining_open_time(), Some(secs(120)));
    advance(secs(61)).await;
    assert_eq!(open_error(call(&mut svc).await).remaining(), Some(secs(59)));

    // Shorter pushback does not shorten it.
    let (mut svc, mock) = breaker(BreakerConfig {
        consecutive_failures: Some(1),
        ..no_backoff()
    });
    *mock.retry_after.lock().unwrap() = Some("5");
    trip(&mut svc, &mock, 1).await;
    assert_eq!(svc.handle().remaining_open_time(), Some(secs(60)));
}

#[tokio::test(start_paused = true)]
async fn pushback_beyond_max_open_time_opens_only_that_long() {
    // A server asking for an hour (the classifier reads up to 5 min) keeps
    // the breaker open max_open_time, not a minute more.
    let (mut svc, mock) = breaker(BreakerConfig {
        consecutive_failures: Some(1),
        recovery_timeout: secs(10),
        max_open_time: secs(100),
        ..BreakerConfig::default()
    });
    *mock.retry_after.lock().unwrap() = Some("3600");
    trip(&mut svc, &mock, 1).await;
    assert_eq!(svc.handle().remaining_open_time(), Some(secs(100)));
    let until = svc.availability().unavailable_until().unwrap();
    assert_eq!(until - tokio::time::Instant::now(), secs(100));

    // The same for pushback that arrives while open: a late failure's
    // pushback extends the open period to max_open_time from now, no more.
    let (mut svc, mock) = breaker(BreakerConfig {
        consecutive_failures: Some(1),
        recovery_timeout: secs(10),
        max_open_time: secs(100),
        ..BreakerConfig::default()
    });
    mock.set(503);
    mock.delay(secs(1));
    *mock.retry_after.lock().unwrap() = Some("3600");
    let late = tokio::spawn(svc.ready().await.unwrap().call(()));
    tokio::task::yield_now().await;
    mock.delay(Duration::ZERO);
    *mock.retry_after.lock().unwrap() = None;
    trip(&mut svc, &mock, 1).await;
    assert_eq!(svc.handle().remaining_open_time(), Some(secs(10)));
    advance(secs(1)).await;
    late.await.unwrap().unwrap();
    assert_eq!(svc.handle().remaining_open_time(), Some(secs(100)));
}

#[tokio::test(start_paused = true)]
async fn a_hung_probe_gives_its_permit_back() {
    let (mut svc, mock) = breaker(BreakerConfig {
        half_open_max_calls: 1,
        probe_timeout: secs(10),
        ..no_backoff()
    });
    trip(&mut svc, &mock, 5).await;
    advance(secs(60)).await;
    mock.set(200);
    mock.delay(secs(3600));
    let hung = svc.ready().await.unwrap().call(());
    assert_eq!(
        open_error(call(&mut svc).await).state(),
        CircuitState::HalfOpen
    );
    advance(secs(10)).await;
    mock.delay(Duration::ZERO);
    // The permit expired: the next probe goes through and closes the breaker.
    assert_eq!(call(&mut svc).await.unwrap(), 200);
    assert_eq!(svc.handle().state(), CircuitState::Closed);
    // The hung probe's late result no longer counts.
    drop(hung);
    assert_eq!(svc.handle().state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_counts_as_nothing() {
    let (mut svc, mock) = breaker(BreakerConfig {
        consecutive_failures: Some(1),
        half_open_max_calls: 1,
        ..no_backoff()
    });
    mock.set(500);
    let dropped = svc.ready().await.unwrap().call(());
    drop(dropped);
    assert_eq!(svc.handle().state(), CircuitState::Closed);
    trip(&mut svc, &mock, 1).await;
    advance(secs(60)).await;
    // A dropped probe frees its permit at once.
    let probe = svc.ready().await.unwrap().call(());
    assert_eq!(svc.availability().state(), AvailabilityState::Unavailable);
    drop(probe);
    assert_eq!(svc.availability().state(), AvailabilityState::Probing);
    mock.set(200);
    assert_eq!(call(&mut svc).await.unwrap(), 200);
    assert_eq!(svc.handle().state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_late_closed_call_cannot_vote_in_half_open() {
    let (mut svc, mock) = breaker(BreakerConfig {
        consecutive_failures: Some(1),
        half_open_max_calls: 1,
        ..no_backoff()
    });
    mock.delay(secs(100));
    let slow_success = tokio::spawn(svc.ready().await.unwrap().call(()));
    tokio::task::yield_now().await;
    mock.delay(Duration::ZERO);
    trip(&mut svc, &mock, 1).await;
    advance(secs(60)).await;
    mock.delay(secs(100));
    let probe = svc.ready().await.unwrap().call(());
    assert_eq!(svc.handle().state(), CircuitState::HalfOpen);
    // The call admitted while closed finishes with a success: not a probe.
    advance(secs(50)).await;
    slow_success.await.unwrap().unwrap();
    assert_eq!(svc.handle().state(), CircuitState::HalfOpen);
    drop(probe);
}

#[tokio::test(start_paused = true)]
async fn not_ready_mode_waits_and_wakes() {
    let (mut svc, mock) = breaker(BreakerConfig {
        open_behavior: OpenBehavior::NotReady,
        half_open_max_calls: 1,
        ..no_backoff()
    });
    trip(&mut svc, &mock, 5).await;
    let mut probe_svc = svc.clone();
    let mut ready = tokio_test::task::spawn(async move {
        probe_svc.ready().await.unwrap();
        probe_svc
    });
    assert!(ready.poll().is_pending());
    advance(secs(30)).await;
    assert!(!ready.is_woken());
    assert!(ready.poll().is_pending());
    advance(secs(30)).await;
    assert!(
        ready.is_woken(),
        "the end of the open period must wake the task"
    );
    let std::task::Poll::Ready(mut probe_svc) = ready.poll() else {
        panic!("ready after the open period");
    };
    // probe_svc holds the only permit: others are not ready now...
    assert_eq!(svc.handle().state(), CircuitState::HalfOpen);
    let mut other = svc.clone();
    let mut waiting = tokio_test::task::spawn(async move {
        other.ready().await.unwrap();
    });
    assert!(waiting.poll().is_pending());
    // ...until the probe fails and reopens the breaker: still not ready.
    assert_eq!(probe_svc.call(()).await.unwrap().status(), 500);
    assert_eq!(svc.handle().state(), CircuitState::Open);
    assert!(waiting.is_woken());
    assert!(waiting.poll().is_pending());
    // A manual reset wakes it too.
    svc.handle().reset();
    assert!(waiting.is_woken());
    assert!(waiting.poll().is_ready());
}

#[tokio::test(start_paused = true)]
async fn availability_follows_the_state() {
    let mock = Mock::new();
    let layer = CircuitBreakerLayer::new(BreakerConfig {
        half_open_max_calls: 2,
        ..no_backoff()
    })
    .unwrap();
    let mut svc = layer.layer(mock.service());
    let signal = svc.availability().clone();
    assert_eq!(signal.state(), AvailabilityState::Available);
    trip(&mut svc, &mock, 5).await;
    assert_eq!(signal.state(), AvailabilityState::Unavailable);
    advance(secs(60)).await;
    mock.set(200);
    mock.delay(secs(1));
    let first = svc.ready().await.unwrap().call(());
    assert_eq!(signal.state(), AvailabilityState::Probing);
    let second = svc.ready().await.unwrap().call(());
    assert_eq!(signal.state(), AvailabilityState::Unavailable);
    first.await.unwrap();
    assert_eq!(signal.state(), AvailabilityState::Probing);
    second.await.unwrap();
    assert_eq!(signal.state(), AvailabilityState::Available);
    // Each breaker a layer builds has its own signal.
    let other = layer.layer(mock.service());
    assert!(!other.availability().ptr_eq(&signal));
}

/// Built for a router's endpoint target, a breaker feeds the target's health
/// signal, is named after it, never refuses, and ejects for the base time
/// times the consecutive trips.
#[tokio::test(start_paused = true)]
async fn a_breaker_built_for_a_target_reports_and_never_refuses() {
    use mesh_core::target::{NewEndpoint, Target};

    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let mock = Mock::new();
    let layer = CircuitBreakerLayer::new(BreakerConfig {
        recovery_timeout: secs(10),
        max_open_time: secs(25),
        half_open_max_calls: 1,
        ..BreakerConfig::default()
    })
    .unwrap()
    .on_event(move |e| log.lock().unwrap().push(format!("{e:?}")));
    let health = Availability::new();
    let target = Target::new(
        "users",
        mesh_core::Endpoint::new("users-1", "10.0.0.1:80".parse().unwrap()),
        health.clone(),
    );
    let mut svc = layer.new_endpoint(&target, mock.service());
    assert!(svc.availability().ptr_eq(&health));
    assert_eq!(svc.handle().name(), Some("users/users-1"));

    let mut opened_for = Vec::new();
    for round in 0..3 {
        trip(&mut svc, &mock, 5).await;
        assert_eq!(svc.handle().state(), CircuitState::Open, "round {round}");
        assert!(!health.is_available());
        opened_for.push(health.unavailable_until().unwrap() - tokio::time::Instant::now());
        // Open, and still every call goes through (the balancer decides).
        let before = mock.hits();
        for _ in 0..3 {
            call(&mut svc).await.unwrap();
        }
        assert_eq!(mock.hits(), before + 3, "nothing refused");
        assert_eq!(
            svc.handle().state(),
            CircuitState::Open,
            "bypass calls not counted"
        );
        // The ejection ends; the next call is the probe, which fails again.
        advance(*opened_for.last().unwrap()).await;
        assert!(health.is_available());
    }
    let ms = |d: Duration| (d.as_millis() as f64 / 1000.0).round() as u64;
    assert_eq!(
        opened_for.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        [10, 20, 25],
        "base x consecutive trips, capped"
    );
    assert!(
        !events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("Rejected")),
        "a reporting breaker never rejects"
    );
}

#[tokio::test(start_paused = true)]
async fn count_window_trips_on_rate_and_slides() {
    let (mut svc, mock) = breaker(BreakerConfig {
        consecutive_failures: None,
        window: Some(WindowConfig::count(10, 5, 0.5)),
        ..no_backoff()
    });
    // Four failures out of four: below minimum_calls.
    mock.set(500);
    for _ in 0..4 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(svc.handle().state(), CircuitState::Closed);
    // Ten successes push them all out of the window...
    mock.set(200);
    for _ in 0..10 {
        call(&mut svc).await.unwrap();
    }
    // ...so four more failures are 4/10, not 8/14.
    mock.set(500);
    for _ in 0..4 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(svc.handle().state(), CircuitState::Closed);
    call(&mut svc).await.unwrap();
    assert_eq!(svc.handle().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_trips_and_forgets() {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let seen = reasons.clone();
    let mock = Mock::new();
    let mut svc = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: None,
        window: Some(WindowConfig::time(10, secs(1), 4, 0.5)),
        ..no_backoff()
    })
    .unwrap()
    .on_event(move |e| {
        if let BreakerEvent::Transition { reason, .. } = e {
            seen.lock().unwrap().push(reason.to_string());
        }
    })
    .layer(mock.service());
    mock.set(500);
    for _ in 0..3 {
        call(&mut svc).await.unwrap();
    }
    // Ten seconds later those failures have left the window.
    advance(secs(10)).await;
    mock.set(200);
    call(&mut svc).await.unwrap();
    call(&mut svc).await.unwrap();
    mock.set(500);
    call(&mut svc).await.unwrap();
    assert_eq!(svc.handle().state(), CircuitState::Closed);
    call(&mut svc).await.unwrap();
    assert_eq!(svc.handle().state(), CircuitState::Open);
    assert_eq!(
        reasons.lock().unwrap().as_slice(),
        ["failure rate 0.50 ≥ 0.50 over 4 calls"]
    );
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_the_breaker() {
    let slow = Arc::new(AtomicUsize::new(0));
    let seen = slow.clone();
    let mock = Mock::new();
    let mut svc = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: None,
        window: Some(WindowConfig {
            kind: WindowKind::Count { size: 4 },
            minimum_calls: 4,
            failure_rate: None,
            slow_call: Some(SlowCallConfig {
                threshold: Duration::from_millis(500),
                rate: 0.75,
            }),
        }),
        ..no_backoff()
    })
    .unwrap()
    .on_event(move |e| {
        if matches!(e, BreakerEvent::SlowCall { .. }) {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    })
    .layer(mock.service());
    call(&mut svc).await.unwrap();
    mock.delay(secs(1));
    for _ in 0..3 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(slow.load(Ordering::SeqCst), 3);
    assert_eq!(svc.handle().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn manual_control() {
    let (mut svc, mock) = breaker(BreakerConfig {
        consecutive_failures: Some(1),
        ..no_backoff()
    });
    let handle = svc.handle();
    handle.force_open();
    assert_eq!(
        open_error(call(&mut svc).await).state(),
        CircuitState::ForcedOpen
    );
    assert!(!handle.availability().is_available());
    advance(secs(3600)).await;
    assert!(call(&mut svc).await.is_err(), "forced open has no end");

    handle.force_closed();
    mock.set(500);
    for _ in 0..5 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(handle.state(), CircuitState::ForcedClosed);

    handle.disable();
    for _ in 0..5 {
        call(&mut svc).await.unwrap();
    }
    assert_eq!(handle.state(), CircuitState::Disabled);
    assert!(handle.availability().is_available());

    handle.reset();
    assert_eq!(handle.state(), CircuitState::Closed);
    call(&mut svc).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(mock.hits(), 11);
    assert!(format!("{handle:?}").contains("Open"));
}

#[tokio::test(start_paused = true)]
async fn events_report_transitions_and_rejections() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let mock = Mock::new();
    let mut svc = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: Some(2),
        half_open_max_calls: 1,
        ..no_backoff()
    })
    .unwrap()
    .name("users")
    .on_event(move |e| seen.lock().unwrap().push(*e))
    .layer(mock.service());
    trip(&mut svc, &mock, 2).await;
    let _ = call(&mut svc).await;
    advance(secs(60)).await;
    mock.set(200);
    call(&mut svc).await.unwrap();
    let events = events.lock().unwrap();
    use CircuitState::*;
    assert_eq!(
        events.as_slice(),
        [
            BreakerEvent::Transition {
                from: Closed,
                to: Open,
                reason: TransitionReason::ConsecutiveFailures {
                    count: 2,
                    threshold: 2
                }
            },
            BreakerEvent::Rejected { state: Open },
            BreakerEvent::Transition {
                from: Open,
                to: HalfOpen,
                reason: TransitionReason::OpenPeriodElapsed
            },
            BreakerEvent::Transition {
                from: HalfOpen,
                to: Closed,
                reason: TransitionReason::ProbesSucceeded { count: 1 }
            },
        ]
    );
}

#[test]
fn invalid_config_is_an_error_not_a_panic() {
    let err = CircuitBreakerLayer::new(BreakerConfig {
        half_open_max_calls: 0,
        ..BreakerConfig::default()
    })
    .unwrap_err();
    assert_eq!(err.errors()[0].path(), "half_open_max_calls");
    let layer = CircuitBreakerLayer::default();
    assert_eq!(layer.config(), &BreakerConfig::default());
    assert!(format!("{layer:?}").contains("CircuitBreakerLayer"));
}

#[tokio::test(start_paused = true)]
async fn a_late_failure_after_the_breaker_is_gone_is_harmless() {
    let (mut svc, mock) = breaker(BreakerConfig {
        consecutive_failures: Some(1),
        ..no_backoff()
    });
    mock.set(500);
    let late = svc.ready().await.unwrap().call(());
    let handle = svc.handle();
    drop(svc);
    assert_eq!(late.await.unwrap().status(), 500);
    // The handle kept the breaker alive: the failure counted.
    assert_eq!(handle.state(), CircuitState::Open);

    let (mut svc, mock) = breaker(BreakerConfig::default());
    mock.set(500);
    let late = svc.ready().await.unwrap().call(());
    drop(svc);
    assert_eq!(late.await.unwrap().status(), 500);
}

#[tokio::test(start_paused = true)]
async fn late_pushback_while_open_extends_the_published_deadline() {
    let (mut svc, mock) = breaker(BreakerConfig {
        consecutive_failures: Some(1),
        ..BreakerConfig::default()
    });
    mock.set(503);
    mock.delay(secs(1));
    *mock.retry_after.lock().unwrap() = Some("300");
    let late = tokio::spawn(svc.ready().await.unwrap().call(()));
    tokio::task::yield_now().await;
    mock.delay(Duration::ZERO);
    *mock.retry_after.lock().unwrap() = None;
    trip(&mut svc, &mock, 1).await;
    assert_eq!(svc.handle().remaining_open_time(), Some(secs(60)));
    advance(secs(1)).await;
    late.await.unwrap().unwrap();
    assert_eq!(svc.handle().remaining_open_time(), Some(secs(300)));
    let until = svc.availability().unavailable_until().unwrap();
    assert_eq!(until - tokio::time::Instant::now(), secs(300));
}

#[tokio::test(start_paused = true)]
async fn a_closure_classifies_any_service() {
    use mesh_core::Outcome;
    use mesh_core::classify::classify_fn;
    // A non-HTTP service: 0 means "not found" (says nothing about the
    // server), an error means the server is in trouble.
    let inner = tower::service_fn(|n: u32| async move {
        if n == u32::MAX {
            Err(std::io::Error::other("overloaded"))
        } else {
            Ok(n)
        }
    });
    let classifier = classify_fn(|r: &Result<u32, std::io::Error>| match r {
        Ok(0) => Outcome::Ignored,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::retryable(),
    });
    let mut svc = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: Some(2),
        ..BreakerConfig::default()
    })
    .unwrap()
    .with_classifier(classifier)
    .layer(inner);
    assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), 7);
    svc.ready().await.unwrap().call(u32::MAX).await.unwrap_err();
    svc.ready().await.unwrap().call(0).await.unwrap();
    assert_eq!(svc.handle().state(), CircuitState::Closed);
    svc.ready().await.unwrap().call(u32::MAX).await.unwrap_err();
    assert_eq!(svc.handle().state(), CircuitState::Open);
    let e = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(e.downcast_ref::<BreakerOpen>().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_refusal_is_decided_again_at_the_next_poll() {
    let (mut svc, mock) = breaker(no_backoff());
    trip(&mut svc, &mock, 5).await;
    // Ready now means "the call will be refused"...
    svc.ready().await.unwrap();
    advance(secs(60)).await;
    // ...but polled again after the open period, it admits a probe.
    mock.set(200);
    let r = svc.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(mock.hits(), 6);
}
