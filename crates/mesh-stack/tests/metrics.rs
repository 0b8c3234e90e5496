//! The operator's view over real loopback backends: metric names, labels and
//! values (through a local `DebuggingRecorder`), the series of a removed
//! endpoint and the admin snapshot. (The log lines: `tests/logs.rs`.)
//!
//! Scenario: three replicas of `users`, round robin, `c` always answering
//! 503. Calls that land on `c` are retried on another replica; after three
//! failures `c`'s breaker trips and the balancer ejects it. Then every
//! replica fails, and calls give up.
//!
//! Each test runs on a current-thread runtime with a thread-local recorder
//! (and subscriber): the stack's tasks run on the test's thread, so nothing
//! fights over a global recorder.

#![cfg(all(feature = "metrics", feature = "hyper", feature = "admin"))]

use std::time::Duration;

use mesh_testkit::backend::Behavior;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

mod operator;
use operator::{eject_c, ep, get, start};

/// One series read back: its name, its labels and its value.
type Series = (String, Vec<(String, String)>, DebugValue);

/// The value of the series `name` whose labels include `labels`.
fn value<'a>(snap: &'a [Series], name: &str, labels: &[(&str, &str)]) -> Option<&'a DebugValue> {
    snap.iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
}

fn counter(snap: &[Series], name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(snap, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}{labels:?}: {other:?}"),
    }
}

/// Sum of every series of `name` whose labels include `labels`.
fn counter_sum(snap: &[Series], name: &str, labels: &[(&str, &str)]) -> u64 {
    snap.iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| match v {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum()
}

fn gauge(snap: &[Series], name: &str, labels: &[(&str, &str)]) -> f64 {
    match value(snap, name, labels) {
        Some(DebugValue::Gauge(g)) => g.into_inner(),
        other => panic!("{name}{labels:?}: {other:?}"),
    }
}

fn read(snapshotter: &Snapshotter) -> Vec<Series> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, value)
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn golden_and_per_endpoint_metrics_after_an_ejection_retries_and_a_give_up() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let s = start().await;
    let calls = eject_c(&s).await as u64;
    let (a, b, c) = (
        s.a.addr().to_string(),
        s.b.addr().to_string(),
        s.c.addr().to_string(),
    );
    let users = [("service", "users")];
    let snap = read(&snapshotter);

    // Golden metrics: every call succeeded; c's failures were attempts.
    assert_eq!(
        counter(
            &snap,
            "mesh_requests_total",
            &[
                ("service", "users"),
                ("outcome", "success"),
                ("status_class", "2xx")
            ]
        ),
        calls
    );
    assert_eq!(
        counter_sum(&snap, "mesh_requests_total", &[("outcome", "failure")]),
        0
    );
    assert_eq!(
        counter(
            &snap,
            "mesh_attempts_total",
            &[
                ("service", "users"),
                ("outcome", "failure"),
                ("status_class", "5xx")
            ]
        ),
        s.c.hits()
    );
    assert_eq!(
        counter(
            &snap,
            "mesh_attempts_total",
            &[
                ("service", "users"),
                ("outcome", "success"),
                ("status_class", "2xx")
            ]
        ),
        calls
    );
    assert_eq!(gauge(&snap, "mesh_requests_in_flight", &users), 0.0);
    match value(&snap, "mesh_request_duration_seconds", &users) {
        Some(DebugValue::Histogram(v)) => assert_eq!(v.len() as u64, calls),
        other => panic!("call latency: {other:?}"),
    }
    // (`mesh_attempt_duration_seconds` is the balancer's, under p2c only:
    // this scenario balances round robin, for a deterministic ejection.)

    // Retries by service and reason: one per failed attempt on c.
    assert_eq!(counter(&snap, "mesh_retry_requests_total", &users), calls);
    assert_eq!(
        counter(
            &snap,
            "mesh_retry_retries_total",
            &[("service", "users"), ("reason", "status")]
        ),
        s.c.hits()
    );
    assert_eq!(counter_sum(&snap, "mesh_retry_give_ups_total", &users), 0);

    // Breaker state per endpoint, labelled by address: c open, a and b closed.
    assert_eq!(s.c.hits(), 3, "three consecutive failures trip c's breaker");
    let state = |addr: &str, st: &str| {
        gauge(
            &snap,
            "mesh_breaker_state",
            &[("service", "users"), ("endpoint", addr), ("state", st)],
        )
    };
    assert_eq!((state(&c, "open"), state(&c, "closed")), (1.0, 0.0));
    assert_eq!((state(&a, "open"), state(&a, "closed")), (0.0, 1.0));
    assert_eq!((state(&b, "open"), state(&b, "closed")), (0.0, 1.0));
    assert_eq!(
        counter(
            &snap,
            "mesh_breaker_ejections_total",
            &[("service", "users"), ("endpoint", c.as_str())]
        ),
        1
    );
    assert_eq!(
        counter(
            &snap,
            "mesh_breaker_calls_total",
            &[("endpoint", c.as_str()), ("outcome", "failure")]
        ),
        3
    );
    // Balancer picks are keyed by address too.
    assert!(
        counter(
            &snap,
            "mesh_balance_picks_total",
            &[("service", "users"), ("endpoint", a.as_str())]
        ) > 0
    );
    let unlabelled: Vec<_> = snap
        .iter()
        // (discovery's series name their source: `channel:users`)
        .filter(|(n, _, _)| n.starts_with("mesh_") && !n.starts_with("mesh_discovery_"))
        .filter(|(_, l, _)| !l.iter().any(|(k, v)| k == "service" && v == "users"))
        .map(|(n, l, _)| format!("{n}{l:?}"))
        .collect();
    assert!(
        unlabelled.is_empty(),
        "series without their service: {unlabelled:?}"
    );

    // Every replica fails now: calls give up after their retries.
    for backend in [&s.a, &s.b, &s.c] {
        backend.set_behavior(Behavior::status(503));
    }
    for _ in 0..3 {
        assert_eq!(get(&s.users).await, Ok(503));
    }
    let snap = read(&snapshotter);
    assert_eq!(
        counter(
            &snap,
            "mesh_requests_total",
            &[
                ("service", "users"),
                ("outcome", "failure"),
                ("status_class", "5xx")
            ]
        ),
        3
    );
    assert_eq!(counter_sum(&snap, "mesh_retry_give_ups_total", &users), 3);
    assert_eq!(
        counter(
            &snap,
            "mesh_retry_give_ups_total",
            &[("service", "users"), ("reason", "max_retries")]
        ),
        3
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_removed_endpoint_leaves_its_series_at_zero_and_the_admin_page() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let s = start().await;
    eject_c(&s).await;
    let c = s.c.addr().to_string();

    // The admin snapshot says which endpoint is out, why, and for how long.
    let snap = s.mesh.admin();
    let users = snap.service("users").unwrap();
    let discovery = users.discovery.as_ref().unwrap();
    assert_eq!(discovery.endpoints, 3);
    assert!(!discovery.fail_static);
    assert!(discovery.last_success_ms_ago.is_some());
    assert_eq!(users.endpoints.len(), 3);
    let out = users.endpoint(&c).unwrap();
    assert_eq!(
        (out.state, out.breaker, out.eligible),
        ("ejected", Some("open"), false)
    );
    assert!(out.reason.contains("breaker open"), "{}", out.reason);
    assert!(
        out.readmit_in_ms
            .is_some_and(|ms| ms > 1_000 && ms <= 60_000),
        "{out:?}"
    );
    let up = users.endpoint(&s.a.addr().to_string()).unwrap();
    assert_eq!(
        (up.state, up.breaker, up.eligible),
        ("available", Some("closed"), true)
    );
    let json = snap.to_json();
    assert!(json.contains(&format!("\"address\": \"{c}\"")), "{json}");
    assert!(json.contains("\"breaker\": \"open\""), "{json}");

    // c leaves the set: its breaker goes, and so do its state series.
    s.source.set([ep(s.a.addr()), ep(s.b.addr())]);
    tokio::time::timeout(Duration::from_secs(5), async {
        while s.users.get_ref().endpoints().len() != 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    let metrics = read(&snapshotter);
    for st in [
        "closed",
        "open",
        "half_open",
        "forced_open",
        "forced_closed",
        "disabled",
    ] {
        assert_eq!(
            gauge(
                &metrics,
                "mesh_breaker_state",
                &[("endpoint", c.as_str()), ("state", st)]
            ),
            0.0,
            "{st}"
        );
    }
    let users = s.mesh.admin();
    let users = users.service("users").unwrap();
    assert_eq!(users.endpoints.len(), 2);
    assert!(users.endpoint(&c).is_none());
}

/// Discovery health as metrics: a good answer sets the last-success
/// timestamp (staleness is `time() - it`) and clears fail static; a failure
/// sets fail static while the last set keeps serving.
#[tokio::test(flavor = "current_thread")]
async fn discovery_staleness_and_fail_static_are_gauges() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let s = start().await;
    let source = [("source", "channel:users")];
    let metrics = read(&snapshotter);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = gauge(
        &metrics,
        "mesh_discovery_last_success_timestamp_seconds",
        &source,
    );
    assert!(
        (now - 60.0..=now + 1.0).contains(&last),
        "{last} vs now {now}"
    );
    assert_eq!(gauge(&metrics, "mesh_discovery_fail_static", &source), 0.0);

    s.source.fail("the registry is down");
    let metrics = read(&snapshotter);
    assert_eq!(gauge(&metrics, "mesh_discovery_fail_static", &source), 1.0);
    assert_eq!(
        counter(&metrics, "mesh_discovery_errors_total", &source),
        1,
        "one failure"
    );
    assert_eq!(get(&s.users).await, Ok(200), "the last set serves");

    s.source
        .set([ep(s.a.addr()), ep(s.b.addr()), ep(s.c.addr())]);
    let metrics = read(&snapshotter);
    assert_eq!(gauge(&metrics, "mesh_discovery_fail_static", &source), 0.0);
}

/// Every endpoint's in-flight count, weight and latency estimate are
/// sampled into gauges once a second (nothing per call), and an endpoint
/// that leaves the set has its gauges zeroed.
#[tokio::test(flavor = "current_thread")]
async fn endpoint_gauges_are_sampled_and_zeroed_when_an_endpoint_goes() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let s = start().await;
    assert_eq!(get(&s.users).await, Ok(200));
    let (a, c) = (s.a.addr().to_string(), s.c.addr().to_string());
    // A snapshot takes the values it reads (the next sample sets them
    // again): one snapshot per check.
    let endpoint_gauge = |metrics: &[Series], name: &str, endpoint: &str| match value(
        metrics,
        name,
        &[("service", "users"), ("endpoint", endpoint)],
    ) {
        Some(DebugValue::Gauge(g)) => Some(g.into_inner()),
        _ => None,
    };
    let sampled = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let metrics = read(&snapshotter);
            let weight = |e: &str| endpoint_gauge(&metrics, "mesh_endpoint_weight", e);
            if weight(&a) == Some(1.0) && weight(&c) == Some(1.0) {
                return metrics;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no endpoint gauges within 5 s");
    // The first sample may land while the call above is in flight.
    assert!(
        endpoint_gauge(&sampled, "mesh_endpoint_in_flight", &a).is_some_and(|n| n <= 1.0),
        "{sampled:?}"
    );
    assert!(
        endpoint_gauge(&sampled, "mesh_endpoint_latency_seconds", &a).is_some_and(|s| s > 0.0),
        "{sampled:?}"
    );

    s.source.set([ep(s.a.addr()), ep(s.b.addr())]);
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let metrics = read(&snapshotter);
            let weight = |e: &str| endpoint_gauge(&metrics, "mesh_endpoint_weight", e);
            if weight(&c) == Some(0.0) && weight(&a) == Some(1.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("c's gauges are not zeroed within 5 s");
}
