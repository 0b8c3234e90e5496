//! Retry configuration, checked by [`RetryConfig::validate`].

use std::time::Duration;

use mesh_core::backoff::Backoff;
use mesh_core::config::InvalidConfig;

/// The default name of the header that tells a server which attempt it sees.
pub const DEFAULT_ATTEMPT_HEADER: &str = "x-mesh-attempt";

/// The default largest request body buffered for replay: 64 KiB.
pub const DEFAULT_MAX_REPLAY_BODY: usize = 64 * 1024;

const MILLI: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// How many retries the budget allows, relative to traffic. See
/// [`RetryBudget`](crate::RetryBudget).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BudgetConfig {
    /// How long deposits and withdrawals count. 1 s to 1 h; default 10 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub ttl: Duration,
    /// Retries always allowed per second of `ttl`, whatever the traffic.
    /// At most 1 000 000; default 10.
    pub min_retries_per_second: u32,
    /// Retries allowed per request, on top of the floor. 0 to 1000, in
    /// steps of 0.0001; default 0.2 (20 %).
    pub retry_ratio: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            min_retries_per_second: 10,
            retry_ratio: 0.2,
        }
    }
}

impl BudgetConfig {
    /// Checks every field against its allowed range.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        if self.ttl < Duration::from_secs(1) || self.ttl > Duration::from_secs(3600) {
            errors.push(
                "ttl",
                format!("must be between 1s and 1h, got {:?}", self.ttl),
            );
        }
        if self.min_retries_per_second > 1_000_000 {
            errors.push(
                "min_retries_per_second",
                format!(
                    "must be at most 1000000, got {}",
                    self.min_retries_per_second
                ),
            );
        }
        if !(self.retry_ratio.is_finite() && (0.0..=1000.0).contains(&self.retry_ratio)) {
            errors.push(
                "retry_ratio",
                format!("must be between 0 and 1000, got {}", self.retry_ratio),
            );
        }
        errors.into_result()
    }
}

/// Everything [`RetryLayer`](crate::RetryLayer) and
/// [`RetryPolicy`](crate::RetryPolicy) need to know.
///
/// The defaults are the seed plan's (3 retries, 1 s base delay doubling up to
/// 30 s with full jitter) made safe: idempotent requests only, a 20 % budget,
/// pushback honoured, 64 KiB of body replay.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct RetryConfig {
    /// Retries after the first attempt. At most 100; default 3.
    pub max_retries: u32,
    /// Requeues of one request: attempts sent again at once, to another
    /// endpoint, because the last one provably never reached a server
    /// (connection refused, a request handed back unsent, a stream the
    /// server refused unprocessed, mesh's own "no ready endpoint"). Any
    /// method, `POST` and gRPC included; no backoff; paid from the budget
    /// like retries and counted apart from them (they do not use up
    /// `max_retries`). Once they are used up, such a failure ends the call
    /// with its error at once (give-up reason
    /// [`GiveUp::MaxRequeues`](crate::GiveUp::MaxRequeues)): it is never
    /// retried after a backoff. 0 turns requeueing off: such failures are
    /// then treated like any other (an idempotent request is retried after
    /// its backoff). At most 100; default 3.
    pub max_requeues: u32,
    /// Delay between attempts; drawn afresh for each request.
    pub backoff: Backoff,
    /// The budget shared by every clone of the layer's service.
    pub budget: BudgetConfig,
    /// The longest server pushback (`Retry-After`, `grpc-retry-pushback-ms`)
    /// a retry waits for; the delay is the longer of the backoff and the
    /// pushback. A server asking for longer is saying "not now": no retry is
    /// made and the caller gets that response at once (give-up reason
    /// [`GiveUp::Pushback`](crate::GiveUp::Pushback)). 0s..=1h; default 30 s.
    ///
    /// Pushback reaches the policy already clamped by the classifier's
    /// [`PushbackParser`](mesh_core::pushback::PushbackParser) (to
    /// [`DEFAULT_MAX_PUSHBACK`](mesh_core::pushback::DEFAULT_MAX_PUSHBACK),
    /// 5 min, in the default classifiers): keep `max_pushback` below that
    /// maximum, or a longer pushback looks like the maximum and is waited for.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_pushback: Duration,
    /// The whole logical request, all attempts and delays included, must end
    /// within this. `None` (the default): no overall deadline. 1ms..=24h.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub deadline: Option<Duration>,
    /// Each attempt must end within this, or it fails with a (retryable)
    /// timeout. `None` (the default): no per-attempt timeout. 1ms..=1h.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub attempt_timeout: Option<Duration>,
    /// A retry starts only if at least this much time is left before the
    /// deadline after its delay. 0s..=1h and shorter than the deadline;
    /// default 10 ms.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub min_attempt_time: Duration,
    /// Also retry `POST` and `PATCH` requests without an `Idempotency-Key`.
    /// Default `false`: only do this if the server deduplicates.
    pub retry_non_idempotent: bool,
    /// gRPC methods safe to repeat, as paths: `/pkg.Service/Method`, or
    /// `/pkg.Service/*` for a whole service. gRPC calls are `POST`s and are
    /// otherwise never retried.
    pub idempotent_grpc_methods: Vec<String>,
    /// The request header that carries the attempt number (2 for the first
    /// retry). Default [`DEFAULT_ATTEMPT_HEADER`]; empty for none.
    pub attempt_header: String,
    /// Whether retries carry a [`TriedEndpoints`](mesh_core::TriedEndpoints)
    /// record of the endpoints already tried, so a discovery router sends a
    /// retry elsewhere. The record is put in every retryable request's
    /// extensions before its first attempt (it travels with the request,
    /// through a `Buffer` or a spawned task); a record the caller put there is
    /// used instead. Default `true`.
    pub track_tried_endpoints: bool,
    /// The largest request body buffered for replay by
    /// [`ReplayBody`](crate::ReplayBody); a larger body is sent once and not
    /// retried. At most 64 MiB; default [`DEFAULT_MAX_REPLAY_BODY`].
    pub max_replay_body: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 3,
            max_requeues: 3,
            backoff: Backoff::default(),
            budget: BudgetConfig::default(),
            max_pushback: Duration::from_secs(30),
            deadline: None,
            attempt_timeout: None,
            min_attempt_time: Duration::from_millis(10),
            retry_non_idempotent: false,
            idempotent_grpc_methods: Vec::new(),
            attempt_header: DEFAULT_ATTEMPT_HEADER.to_owned(),
            track_tried_endpoints: true,
            max_replay_body: DEFAULT_MAX_REPLAY_BODY,
        }
    }
}

impl RetryConfig {
    /// Checks every field and nested config, naming each bad one.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        if self.max_retries > 100 {
            errors.push(
                "max_retries",
                format!("must be at most 100, got {}", self.max_retries),
            );
        }
        if self.max_requeues > 100 {
            errors.push(
                "max_requeues",
                format!("must be at most 100, got {}", self.max_requeues),
            );
        }
        errors.merge_nested("backoff", self.backoff.validate());
        errors.merge_nested("budget", self.budget.validate());
        errors.check_duration("max_pushback", self.max_pushback, Duration::ZERO..=HOUR);
        let deadline_ok = match self.deadline {
            Some(d) => errors.check_duration("deadline", d, MILLI..=DAY),
            None => true,
        };
        if let Some(d) = self.attempt_timeout {
            errors.check_duration("attempt_timeout", d, MILLI..=HOUR);
        }
        let min_ok = errors.check_duration(
            "min_attempt_time",
            self.min_attempt_time,
            Duration::ZERO..=HOUR,
        );
        if let Some(d) = self.deadline
            && deadline_ok
            && min_ok
            && self.min_attempt_time >= d
        {
            errors.push(
                "min_attempt_time",
                format!(
                    "must be shorter than the deadline ({d:?}), got {:?}",
                    self.min_attempt_time
                ),
            );
        }
        for (i, m) in self.idempotent_grpc_methods.iter().enumerate() {
            if !m.starts_with('/') || m.len() < 2 {
                errors.push(
                    format!("idempotent_grpc_methods[{i}]"),
                    format!(
                        "must be a path like `/pkg.Service/Method` or `/pkg.Service/*`, got {m:?}"
                    ),
                );
            }
        }
        if !self.attempt_header.is_empty()
            && http::HeaderName::from_bytes(self.attempt_header.as_bytes()).is_err()
        {
            errors.push(
                "attempt_header",
                format!(
                    "must be a valid HTTP header name, got {:?}",
                    self.attempt_header
                ),
            );
        }
        if self.max_replay_body > 64 * 1024 * 1024 {
            errors.push(
                "max_replay_body",
                format!("must be at most 64 MiB, got {}", self.max_replay_body),
            );
        }
        errors.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RetryConfig::default().validate().unwrap();
    }

    #[test]
    fn every_bad_field_is_named() {
        let c = RetryConfig {
            max_retries: 1000,
            max_requeues: 101,
            backoff: Backoff::new(Duration::ZERO, 2.0, Duration::from_secs(1)),
            budget: BudgetConfig {
                ttl: Duration::ZERO,
                min_retries_per_second: 10,
                retry_ratio: f64::NAN,
            },
            max_pushback: Duration::from_secs(7200),
            deadline: Some(Duration::from_millis(5)),
            attempt_timeout: Some(Duration::ZERO),
            idempotent_grpc_methods: vec!["nope".into()],
            attempt_header: "bad header".into(),
            max_replay_body: usize::MAX,
            ..RetryConfig::default()
        };
        let err = c.validate().unwrap_err();
        let paths: Vec<_> = err.errors().iter().map(|e| e.path().to_owned()).collect();
        assert_eq!(
            paths,
            [
                "max_retries",
                "max_requeues",
                "backoff.base",
                "budget.ttl",
                "budget.retry_ratio",
                "max_pushback",
                "attempt_timeout",
                "min_attempt_time",
                "idempotent_grpc_methods[0]",
                "attempt_header",
                "max_replay_body",
            ]
        );
    }

    #[test]
    fn durations_of_years_are_refused_with_the_allowed_range() {
        let years = Duration::from_secs(500_000_000_000 * 31_557_600);
        let c = RetryConfig {
            backoff: Backoff::new(years, 2.0, years),
            max_pushback: years,
            deadline: Some(years),
            attempt_timeout: Some(Duration::MAX),
            min_attempt_time: years,
            ..RetryConfig::default()
        };
        let err = c.validate().unwrap_err();
        let got: Vec<_> = err
            .errors()
            .iter()
            .map(|e| (e.path(), e.reason().split(", got").next().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("backoff.base", "must be within 1ns..=1h"),
                ("backoff.cap", "must be within 0s..=1h"),
                ("max_pushback", "must be within 0s..=1h"),
                ("deadline", "must be within 1ms..=24h"),
                ("attempt_timeout", "must be within 1ms..=1h"),
                ("min_attempt_time", "must be within 0s..=1h"),
            ]
        );
        // The upper edges are allowed.
        RetryConfig {
            max_pushback: HOUR,
            deadline: Some(DAY),
            attempt_timeout: Some(HOUR),
            min_attempt_time: HOUR,
            ..RetryConfig::default()
        }
        .validate()
        .unwrap();
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_uses_humantime_and_rejects_unknown_fields() {
        let c: RetryConfig = serde_json::from_str(
            r#"{"max_retries":2,"deadline":"2s","backoff":{"base":"50ms","cap":"1s"},
                "budget":{"retry_ratio":0.1},"idempotent_grpc_methods":["/a.B/*"]}"#,
        )
        .unwrap();
        assert_eq!(c.max_retries, 2);
        assert_eq!(c.deadline, Some(Duration::from_secs(2)));
        assert_eq!(c.backoff.base, Duration::from_millis(50));
        assert_eq!(c.budget.retry_ratio, 0.1);
        assert_eq!(c.budget.ttl, Duration::from_secs(10));
        c.validate().unwrap();
        let back: RetryConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<RetryConfig>(r#"{"max_retry":1}"#).is_err());
    }
}
