//! Extreme values for every field of a service's config, through
//! `Mesh::new`: a value outside its documented range is refused with the
//! field's full path and the range; a config that is accepted makes calls
//! (against an in-process inner client, under tokio's paused clock) that
//! never panic and each end within a bound computed from the config.
//!
//! The documented ranges are written out again here ([`expected_errors`]):
//! the test checks the validators against the docs, not against themselves.

use std::collections::BTreeSet;
use std::time::Duration;

use http::{Request, Response};
use mesh_core::Endpoint;
use mesh_core::config::FieldError;
use mesh_stack::breaker::{WindowConfig, WindowKind};
use mesh_stack::{Mesh, MeshConfig, MeshError, ServiceConfig, Strategy as Balance};
use proptest::prelude::*;
use tower::ServiceExt;

// ===== values =====

const NS: Duration = Duration::from_nanos(1);
const US: Duration = Duration::from_micros(1);
const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
/// The issue's example: `"500000000000years"`.
const YEARS: Duration = Duration::from_secs(500_000_000_000 * 31_557_600);
const MIB: u64 = 1024 * 1024;

/// Every range edge of every duration field, a step either side, and worse.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        4 => prop::sample::select(vec![
            Duration::ZERO,
            NS,
            US,
            MS - NS,
            MS,
            10 * MS,
            SEC,
            MIN,
            5 * MIN - NS,
            5 * MIN,
            5 * MIN + NS,
            10 * MIN,
            10 * MIN + NS,
            HOUR,
            HOUR + NS,
            DAY,
            DAY + NS,
            YEARS,
            Duration::MAX,
        ]),
        1 => (0u64..=600_000).prop_map(Duration::from_millis),
        1 => any::<u64>().prop_map(Duration::from_secs),
    ]
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => prop::sample::select(vec![
            0,
            1,
            2,
            3,
            100,
            101,
            255,
            1024,
            1025,
            1_000_000,
            1_000_001,
            1 << 20,
            (1 << 20) + 1,
            64 * MIB,
            64 * MIB + 1,
            u64::from(u32::MAX),
            u64::MAX,
        ]),
        1 => any::<u32>().prop_map(u64::from),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => prop::sample::select(vec![
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            0.0,
            1e-9,
            0.5,
            1.0,
            2.0,
            100.0,
            100.000_001,
            1000.0,
            1000.5,
            1e300,
        ]),
        1 => any::<f64>(),
    ]
}

fn u32_of(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn u8_of(n: u64) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

/// The window every generated service starts from: a time window with a
/// slow-call policy, so that their fields can be set.
fn window(s: &mut ServiceConfig) -> &mut WindowConfig {
    s.breaker
        .window
        .get_or_insert_with(|| WindowConfig::time(10, SEC, 5, 0.5).with_slow_calls(SEC, 0.5))
}

fn set_buckets(s: &mut ServiceConfig, n: Option<u32>, width: Option<Duration>) {
    let w = window(s);
    if let WindowKind::Time {
        buckets,
        bucket_width,
    } = &mut w.kind
    {
        *buckets = n.unwrap_or(*buckets);
        *bucket_width = width.unwrap_or(*bucket_width);
    }
}

/// One field set to a generated value.
#[derive(Debug, Clone)]
enum Knob {
    ReadyTimeout(Duration),
    AttemptTimeout(Duration),
    MaxRetries(u64),
    BackoffBase(Duration),
    BackoffCap(Duration),
    BackoffMultiplier(f64),
    BudgetTtl(Duration),
    BudgetMinPerSecond(u64),
    BudgetRatio(f64),
    MaxPushback(Duration),
    Deadline(Option<Duration>),
    RetryAttemptTimeout(Option<Duration>),
    MinAttemptTime(Duration),
    MaxReplayBody(u64),
    ConsecutiveFailures(Option<u64>),
    RecoveryTimeout(Duration),
    MaxOpenTime(Duration),
    OpenBackoffMultiplier(f64),
    HalfOpenMaxCalls(u64),
    ProbeTimeout(Duration),
    WindowBuckets(u64),
    WindowBucketWidth(Duration),
    WindowMinimumCalls(u64),
    SlowCallThreshold(Duration),
    MaxEjectionPercent(u64),
    SlowStartWindow(Duration),
    SlowStartMinWeight(u64),
    EwmaDecay(Duration),
    DefaultRtt(Duration),
    FailurePenalty(Duration),
    Strategy(Balance),
}

impl Knob {
    fn apply(&self, s: &mut ServiceConfig) {
        match *self {
            Knob::ReadyTimeout(d) => s.ready_timeout = d,
            Knob::AttemptTimeout(d) => s.attempt_timeout = d,
            Knob::MaxRetries(n) => s.retry.max_retries = u32_of(n),
            Knob::BackoffBase(d) => s.retry.backoff.base = d,
            Knob::BackoffCap(d) => s.retry.backoff.cap = d,
            Knob::BackoffMultiplier(f) => s.retry.backoff.multiplier = f,
            Knob::BudgetTtl(d) => s.retry.budget.ttl = d,
            Knob::BudgetMinPerSecond(n) => s.retry.budget.min_retries_per_second = u32_of(n),
            Knob::BudgetRatio(f) => s.retry.budget.retry_ratio = f,
            Knob::MaxPushback(d) => s.retry.max_pushback = d,
            Knob::Deadline(d) => s.retry.deadline = d,
            Knob::RetryAttemptTimeout(d) => s.retry.attempt_timeout = d,
            Knob::MinAttemptTime(d) => s.retry.min_attempt_time = d,
            Knob::MaxReplayBody(n) => {
                s.retry.max_replay_body = usize::try_from(n).unwrap_or(usize::MAX);
            }
            Knob::ConsecutiveFailures(n) => s.breaker.consecutive_failures = n.map(u32_of),
            Knob::RecoveryTimeout(d) => s.breaker.recovery_timeout = d,
            Knob::MaxOpenTime(d) => s.breaker.max_open_time = d,
            Knob::OpenBackoffMultiplier(f) => s.breaker.open_backoff_multiplier = f,
            Knob::HalfOpenMaxCalls(n) => s.breaker.half_open_max_calls = u32_of(n),
            Knob::ProbeTimeout(d) => s.breaker.probe_timeout = d,
            Knob::WindowBuckets(n) => set_buckets(s, Some(u32_of(n)), None),
            Knob::WindowBucketWidth(d) => set_buckets(s, None, Some(d)),
            Knob::WindowMinimumCalls(n) => window(s).minimum_calls = u32_of(n),
            Knob::SlowCallThreshold(d) => {
                if let Some(slow) = &mut window(s).slow_call {
                    slow.threshold = d;
                }
            }
            Knob::MaxEjectionPercent(n) => s.balance.max_ejection_percent = u8_of(n),
            Knob::SlowStartWindow(d) => s.balance.slow_start_window = d,
            Knob::SlowStartMinWeight(n) => s.balance.slow_start_min_weight_percent = u8_of(n),
            Knob::EwmaDecay(d) => s.balance.ewma_decay = d,
            Knob::DefaultRtt(d) => s.balance.default_rtt = d,
            Knob::FailurePenalty(d) => s.balance.failure_penalty = d,
            Knob::Strategy(b) => s.balance.strategy = b,
        }
    }
}

/// Any field, set to any extreme value.
fn knob() -> impl Strategy<Value = Knob> {
    let d = duration;
    prop_oneof![
        d().prop_map(Knob::ReadyTimeout),
        d().prop_map(Knob::AttemptTimeout),
        count().prop_map(Knob::MaxRetries),
        d().prop_map(Knob::BackoffBase),
        d().prop_map(Knob::BackoffCap),
        float().prop_map(Knob::BackoffMultiplier),
        d().prop_map(Knob::BudgetTtl),
        count().prop_map(Knob::BudgetMinPerSecond),
        float().prop_map(Knob::BudgetRatio),
        d().prop_map(Knob::MaxPushback),
        proptest::option::of(d()).prop_map(Knob::Deadline),
        proptest::option::of(d()).prop_map(Knob::RetryAttemptTimeout),
        d().prop_map(Knob::MinAttemptTime),
        count().prop_map(Knob::MaxReplayBody),
        proptest::option::of(count()).prop_map(Knob::ConsecutiveFailures),
        d().prop_map(Knob::RecoveryTimeout),
        d().prop_map(Knob::MaxOpenTime),
        float().prop_map(Knob::OpenBackoffMultiplier),
        count().prop_map(Knob::HalfOpenMaxCalls),
        d().prop_map(Knob::ProbeTimeout),
        count().prop_map(Knob::WindowBuckets),
        d().prop_map(Knob::WindowBucketWidth),
        count().prop_map(Knob::WindowMinimumCalls),
        d().prop_map(Knob::SlowCallThreshold),
        count().prop_map(Knob::MaxEjectionPercent),
        d().prop_map(Knob::SlowStartWindow),
        count().prop_map(Knob::SlowStartMinWeight),
        d().prop_map(Knob::EwmaDecay),
        d().prop_map(Knob::DefaultRtt),
        d().prop_map(Knob::FailurePenalty),
        strategy().prop_map(Knob::Strategy),
    ]
}

fn strategy() -> impl Strategy<Value = Balance> {
    prop::sample::select(vec![
        Balance::P2cPeakEwma,
        Balance::LeastOutstanding,
        Balance::RoundRobin,
        Balance::WeightedRoundRobin,
        Balance::Random,
    ])
}

/// Every timing field at one edge of its range or the other: the slowest
/// and fastest configs the validator accepts.
fn edges() -> impl Strategy<Value = Vec<Knob>> {
    let either = |a: Duration, b: Duration| prop::sample::select(vec![a, b]);
    (
        (
            either(MS, 5 * MIN).prop_map(Knob::ReadyTimeout),
            either(MS, HOUR).prop_map(Knob::AttemptTimeout),
            prop::sample::select(vec![0u64, 1, 100]).prop_map(Knob::MaxRetries),
            either(NS, HOUR).prop_map(Knob::BackoffBase),
            prop::sample::select(vec![1.0, 100.0]).prop_map(Knob::BackoffMultiplier),
            either(SEC, HOUR).prop_map(Knob::BudgetTtl),
            prop::sample::select(vec![0u64, 1_000_000]).prop_map(Knob::BudgetMinPerSecond),
            prop::sample::select(vec![0.0, 1000.0]).prop_map(Knob::BudgetRatio),
            either(Duration::ZERO, 5 * MIN - NS).prop_map(Knob::MaxPushback),
            prop::sample::select(vec![None, Some(MS), Some(DAY)]).prop_map(Knob::Deadline),
        ),
        (
            prop::sample::select(vec![None, Some(MS), Some(HOUR)])
                .prop_map(Knob::RetryAttemptTimeout),
            prop::sample::select(vec![Some(1u64), Some(1_000_000), None])
                .prop_map(Knob::ConsecutiveFailures),
            either(MS, DAY).prop_map(Knob::RecoveryTimeout),
            prop::sample::select(vec![1.0, 100.0]).prop_map(Knob::OpenBackoffMultiplier),
            prop::sample::select(vec![1u64, 1024]).prop_map(Knob::HalfOpenMaxCalls),
            either(MS, HOUR).prop_map(Knob::ProbeTimeout),
            prop::sample::select(vec![1u64, 1024]).prop_map(Knob::WindowBuckets),
            either(MS, HOUR).prop_map(Knob::WindowBucketWidth),
            prop::sample::select(vec![1u64, 1 << 20]).prop_map(Knob::WindowMinimumCalls),
            either(NS, HOUR).prop_map(Knob::SlowCallThreshold),
        ),
        (
            prop::sample::select(vec![0u64, 100]).prop_map(Knob::MaxEjectionPercent),
            either(Duration::ZERO, HOUR).prop_map(Knob::SlowStartWindow),
            prop::sample::select(vec![1u64, 100]).prop_map(Knob::SlowStartMinWeight),
            either(MS, 10 * MIN).prop_map(Knob::EwmaDecay),
            either(US, MIN).prop_map(Knob::DefaultRtt),
            either(Duration::ZERO, 5 * MIN).prop_map(Knob::FailurePenalty),
            strategy().prop_map(Knob::Strategy),
        ),
    )
        .prop_map(|(a, b, c)| {
            let mut v = vec![a.0, a.1, a.2, a.3, a.4, a.5, a.6, a.7, a.8, a.9];
            v.extend([b.0, b.1, b.2, b.3, b.4, b.5, b.6, b.7, b.8, b.9]);
            v.extend([c.0, c.1, c.2, c.3, c.4, c.5, c.6]);
            v
        })
        .prop_flat_map(move |v| {
            // The fields whose range depends on another: cap from base up,
            // max_open_time from recovery_timeout up, min_attempt_time below
            // the deadline.
            let base = v.iter().find_map(|k| match k {
                Knob::BackoffBase(d) => Some(*d),
                _ => None,
            });
            let recovery = v.iter().find_map(|k| match k {
                Knob::RecoveryTimeout(d) => Some(*d),
                _ => None,
            });
            let deadline = v.iter().find_map(|k| match k {
                Knob::Deadline(d) => Some(*d),
                _ => None,
            });
            let (base, recovery) = (base.unwrap_or(SEC), recovery.unwrap_or(MIN));
            let min_attempt = match deadline.flatten() {
                Some(d) => vec![Duration::ZERO, (d - NS).min(HOUR)],
                None => vec![Duration::ZERO, HOUR],
            };
            (
                Just(v),
                either(base, HOUR).prop_map(Knob::BackoffCap),
                either(recovery, DAY).prop_map(Knob::MaxOpenTime),
                prop::sample::select(min_attempt).prop_map(Knob::MinAttemptTime),
            )
                .prop_map(|(mut v, cap, open, min)| {
                    v.extend([cap, open, min]);
                    v
                })
        })
}

// ===== the documented ranges =====

fn within(d: Duration, lo: Duration, hi: Duration) -> bool {
    lo <= d && d <= hi
}

/// The paths (within the service) `validate` must name for `s`, each with
/// the range words its error must contain.
fn expected_errors(s: &ServiceConfig) -> Vec<(&'static str, &'static str)> {
    let mut e = Vec::new();
    let mut bad = |ok: bool, path: &'static str, range: &'static str| {
        if !ok {
            e.push((path, range));
        }
    };
    bad(
        within(s.ready_timeout, MS, 5 * MIN),
        "ready_timeout",
        "1ms..=5min",
    );
    bad(
        within(s.attempt_timeout, MS, HOUR),
        "attempt_timeout",
        "1ms..=1h",
    );

    let r = &s.retry;
    bad(r.max_retries <= 100, "retry.max_retries", "at most 100");
    let b = &r.backoff;
    let base_ok = within(b.base, NS, HOUR);
    bad(base_ok, "retry.backoff.base", "1ns..=1h");
    if base_ok && b.cap < b.base {
        bad(false, "retry.backoff.cap", "at least base");
    } else {
        bad(b.cap <= HOUR, "retry.backoff.cap", "0s..=1h");
    }
    bad(
        b.multiplier.is_finite() && (1.0..=100.0).contains(&b.multiplier),
        "retry.backoff.multiplier",
        "1..=100",
    );
    bad(
        within(r.budget.ttl, SEC, HOUR),
        "retry.budget.ttl",
        "between 1s and 1h",
    );
    bad(
        r.budget.min_retries_per_second <= 1_000_000,
        "retry.budget.min_retries_per_second",
        "at most 1000000",
    );
    bad(
        r.budget.retry_ratio.is_finite() && (0.0..=1000.0).contains(&r.budget.retry_ratio),
        "retry.budget.retry_ratio",
        "between 0 and 1000",
    );
    // At most 1 h for the retry layer, below 5 min in a mesh.
    if r.max_pushback > HOUR {
        bad(false, "retry.max_pushback", "0s..=1h");
    } else {
        bad(r.max_pushback < 5 * MIN, "retry.max_pushback", "below 5min");
    }
    let deadline_ok = r.deadline.is_none_or(|d| within(d, MS, DAY));
    bad(deadline_ok, "retry.deadline", "1ms..=24h");
    bad(
        r.attempt_timeout.is_none_or(|d| within(d, MS, HOUR)),
        "retry.attempt_timeout",
        "1ms..=1h",
    );
    if r.min_attempt_time > HOUR {
        bad(false, "retry.min_attempt_time", "0s..=1h");
    } else if let Some(d) = r.deadline
        && deadline_ok
    {
        bad(
            r.min_attempt_time < d,
            "retry.min_attempt_time",
            "shorter than the deadline",
        );
    }
    bad(
        r.max_replay_body <= 64 * 1024 * 1024,
        "retry.max_replay_body",
        "at most 64 MiB",
    );

    let k = &s.breaker;
    match k.consecutive_failures {
        Some(n) => bad(
            (1..=1_000_000).contains(&n),
            "breaker.consecutive_failures",
            "1..=1000000",
        ),
        None => bad(
            k.window.is_some(),
            "breaker.consecutive_failures",
            "must be set",
        ),
    }
    if let Some(w) = &k.window {
        if let WindowKind::Time {
            buckets,
            bucket_width,
        } = w.kind
        {
            bad(
                (1..=1024).contains(&buckets),
                "breaker.window.kind.buckets",
                "1..=1024",
            );
            bad(
                within(bucket_width, MS, HOUR),
                "breaker.window.kind.bucket_width",
                "1ms..=1h",
            );
            bad(
                (1..=1 << 20).contains(&w.minimum_calls),
                "breaker.window.minimum_calls",
                "1..=1048576",
            );
        }
        if let Some(slow) = &w.slow_call {
            bad(
                within(slow.threshold, NS, HOUR),
                "breaker.window.slow_call.threshold",
                "1ns..=1h",
            );
        }
    }
    let recovery_ok = within(k.recovery_timeout, MS, DAY);
    bad(recovery_ok, "breaker.recovery_timeout", "1ms..=24h");
    if !recovery_ok || k.max_open_time > DAY {
        bad(
            within(k.max_open_time, MS, DAY),
            "breaker.max_open_time",
            "1ms..=24h",
        );
    } else {
        bad(
            k.max_open_time >= k.recovery_timeout,
            "breaker.max_open_time",
            "at least recovery_timeout",
        );
    }
    bad(
        k.open_backoff_multiplier.is_finite() && (1.0..=100.0).contains(&k.open_backoff_multiplier),
        "breaker.open_backoff_multiplier",
        "1..=100",
    );
    bad(
        (1..=1024).contains(&k.half_open_max_calls),
        "breaker.half_open_max_calls",
        "1..=1024",
    );
    bad(
        within(k.probe_timeout, MS, HOUR),
        "breaker.probe_timeout",
        "1ms..=1h",
    );

    let l = &s.balance;
    bad(
        l.max_ejection_percent <= 100,
        "balance.max_ejection_percent",
        "0..=100",
    );
    bad(
        l.slow_start_window <= HOUR,
        "balance.slow_start_window",
        "at most 1h",
    );
    bad(
        (1..=100).contains(&l.slow_start_min_weight_percent),
        "balance.slow_start_min_weight_percent",
        "1..=100",
    );
    bad(
        within(l.ewma_decay, MS, 10 * MIN),
        "balance.ewma_decay",
        "1ms..=10min",
    );
    bad(
        within(l.default_rtt, US, MIN),
        "balance.default_rtt",
        "1µs..=1min",
    );
    bad(
        l.failure_penalty <= 5 * MIN,
        "balance.failure_penalty",
        "at most 5min",
    );
    e
}

// ===== calls =====

/// What the inner client does with every attempt.
#[derive(Debug, Clone)]
enum Backend {
    Ok,
    /// A 503 with this `Retry-After`.
    Busy(&'static str),
    Refused,
    Hang,
    Slow(Duration),
}

fn backend() -> impl Strategy<Value = Backend> {
    prop_oneof![
        Just(Backend::Ok),
        prop::sample::select(vec!["0", "1", "299", "3600", "99999999999999999999999"])
            .prop_map(Backend::Busy),
        Just(Backend::Refused),
        Just(Backend::Hang),
        duration().prop_map(Backend::Slow),
    ]
}

fn service(knobs: &[Knob]) -> ServiceConfig {
    let mut s = ServiceConfig::with_static([
        Endpoint::from_address("127.0.0.1:1".parse().unwrap()),
        Endpoint::from_address("127.0.0.1:2".parse().unwrap()).with_weight(u32::MAX),
    ]);
    window(&mut s);
    for k in knobs {
        k.apply(&mut s);
    }
    s
}

/// The longest a call may take: every attempt waits for an endpoint and
/// runs to its time limit, every retry waits the longest delay; the
/// deadline, if any, cuts that short. One second of slack.
fn bound(s: &ServiceConfig) -> Duration {
    let r = &s.retry;
    let attempts = r.max_retries + 1;
    let attempt = s
        .ready_timeout
        .saturating_add(s.attempt_timeout)
        .min(r.attempt_timeout.unwrap_or(Duration::MAX));
    let delay = r.backoff.cap.max(r.max_pushback);
    let total = attempt
        .checked_mul(attempts)
        .and_then(|t| t.checked_add(delay.checked_mul(r.max_retries)?))
        .unwrap_or(Duration::MAX);
    total
        .min(r.deadline.unwrap_or(Duration::MAX))
        .saturating_add(SEC)
}

/// Builds the mesh (it must accept `s`) and makes three calls, each of
/// which must end within [`bound`].
fn calls_end(s: ServiceConfig, backend: Backend) -> Result<(), TestCaseError> {
    let limit = bound(&s);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let mesh = Mesh::new(MeshConfig::new().service("users", s))
            .map_err(|e| TestCaseError::fail(format!("refused a valid config: {e}")))?;
        let inner = tower::service_fn(move |_req: Request<String>| {
            let backend = backend.clone();
            async move {
                match backend {
                    Backend::Ok => {}
                    Backend::Busy(after) => {
                        return Ok(Response::builder()
                            .status(503)
                            .header("retry-after", after)
                            .body(String::new())
                            .unwrap());
                    }
                    Backend::Refused => {
                        return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
                    }
                    Backend::Hang => std::future::pending::<()>().await,
                    Backend::Slow(d) => tokio::time::sleep(d).await,
                }
                Ok(Response::new("ok".to_owned()))
            }
        });
        let users = mesh.http_client("users", inner).unwrap();
        for i in 0..3 {
            let req = Request::get("http://users/x").body(String::new()).unwrap();
            let start = tokio::time::Instant::now();
            let ended = tokio::time::timeout(limit, users.clone().oneshot(req)).await;
            prop_assert!(
                ended.is_ok(),
                "call {} did not end within {:?} (started {:?} ago)",
                i,
                limit,
                start.elapsed()
            );
        }
        Ok(())
    })
}

/// Checks `Mesh::new` against the documented ranges; for an accepted
/// config, makes calls.
fn check(knobs: &[Knob], backend: Backend) -> Result<(), TestCaseError> {
    let s = service(knobs);
    let expected = expected_errors(&s);
    if expected.is_empty() {
        return calls_end(s, backend);
    }
    let err = match Mesh::new(MeshConfig::new().service("users", s)) {
        Ok(_) => {
            return Err(TestCaseError::fail(format!(
                "accepted a config with {expected:?} out of range"
            )));
        }
        Err(MeshError::Invalid(e)) => e,
        Err(e) => return Err(TestCaseError::fail(format!("not an InvalidConfig: {e}"))),
    };
    let got: BTreeSet<String> = err.errors().iter().map(|f| f.path().to_owned()).collect();
    let want: BTreeSet<String> = expected
        .iter()
        .map(|(p, _)| format!("services.users.{p}"))
        .collect();
    prop_assert_eq!(got, want, "{}", err);
    for (path, range) in &expected {
        let path = format!("services.users.{path}");
        let reason = err
            .errors()
            .iter()
            .find(|f| f.path() == path)
            .map(FieldError::reason)
            .unwrap_or_default();
        prop_assert!(
            reason.contains(range),
            "`{}`: {:?} does not say the range {:?}",
            path,
            reason,
            range
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn extreme_values_are_refused_with_path_and_range_or_calls_end(
        knobs in proptest::collection::vec(knob(), 1..4),
        backend in backend(),
    ) {
        check(&knobs, backend)?;
    }

    #[test]
    fn the_slowest_and_fastest_accepted_configs_make_calls_that_end(
        knobs in edges(),
        backend in backend(),
    ) {
        let s = service(&knobs);
        let expected = expected_errors(&s);
        prop_assert!(expected.is_empty(), "edges out of range: {:?}", expected);
        calls_end(s, backend)?;
    }
}

#[test]
fn the_issues_examples_are_refused_by_path_and_range() {
    let mut s = service(&[]);
    s.retry.deadline = Some(YEARS);
    s.retry.backoff.base = YEARS;
    s.retry.backoff.cap = YEARS;
    s.breaker.recovery_timeout = YEARS;
    s.breaker.max_open_time = YEARS;
    s.breaker.probe_timeout = YEARS;
    let Err(MeshError::Invalid(err)) = Mesh::new(MeshConfig::new().service("users", s)) else {
        panic!("accepted")
    };
    let text = err.to_string();
    for want in [
        "`services.users.retry.deadline` must be within 1ms..=24h",
        "`services.users.retry.backoff.base` must be within 1ns..=1h",
        "`services.users.retry.backoff.cap` must be within 0s..=1h",
        "`services.users.breaker.recovery_timeout` must be within 1ms..=24h",
        "`services.users.breaker.max_open_time` must be within 1ms..=24h",
        "`services.users.breaker.probe_timeout` must be within 1ms..=1h",
    ] {
        assert!(text.contains(want), "{want} not in {text}");
    }
}
