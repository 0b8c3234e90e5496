//! The breaker's configuration: when it trips, how long it stays open, how it
//! probes, and how it says "open".

use std::time::Duration;

use mesh_core::config::InvalidConfig;

/// The largest count window, in calls (its bitsets take `size / 4` bytes).
pub const MAX_WINDOW_CALLS: u32 = 1 << 20;
/// The largest number of time buckets.
pub const MAX_WINDOW_BUCKETS: u32 = 1024;
/// The largest number of half-open probes in flight.
pub const MAX_HALF_OPEN_CALLS: u32 = 1024;
/// The largest `consecutive_failures`.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 1_000_000;
/// The longest open period (`recovery_timeout`, `max_open_time`): one day.
pub const MAX_OPEN_TIME: Duration = Duration::from_secs(86_400);
/// The largest `open_backoff_multiplier`.
pub const MAX_OPEN_BACKOFF_MULTIPLIER: f64 = 100.0;

const MILLI: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

/// Everything a [`CircuitBreakerLayer`](crate::CircuitBreakerLayer) needs.
///
/// The defaults are the seed's: trip after 5 consecutive failures, stay open
/// 60 s, admit 3 probes when half-open. Check a config read from a file with
/// [`validate`](Self::validate).
///
/// ```
/// use std::time::Duration;
/// use mesh_breaker::{BreakerConfig, WindowConfig, WindowKind};
///
/// let config = BreakerConfig {
///     consecutive_failures: Some(5),
///     window: Some(WindowConfig {
///         kind: WindowKind::Time { buckets: 10, bucket_width: Duration::from_secs(1) },
///         minimum_calls: 20,
///         failure_rate: Some(0.5),
///         slow_call: None,
///     }),
///     ..BreakerConfig::default()
/// };
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BreakerConfig {
    /// Trip after this many failures in a row (`None`: no consecutive policy).
    /// 1..=1000000; default 5.
    pub consecutive_failures: Option<u32>,
    /// Trip on the failure rate or slow-call rate over a sliding window
    /// (`None`: no rate policies). Default `None`.
    pub window: Option<WindowConfig>,
    /// How long the breaker stays open after its first trip. 1ms..=24h;
    /// default 60 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub recovery_timeout: Duration,
    /// The longest open period: repeated trips (a probe fails, the breaker
    /// reopens) back off exponentially with jitter up to this, and a
    /// server's pushback (`Retry-After`) keeps the breaker open longer than
    /// its period only up to this. Equal to `recovery_timeout` turns the
    /// backoff off. `recovery_timeout`..=24h; default 10 min.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_open_time: Duration,
    /// How fast repeated open periods grow. 1..=100; default 2.
    pub open_backoff_multiplier: f64,
    /// Probes admitted at once when half-open, and successes needed to close.
    /// Default 3.
    pub half_open_max_calls: u32,
    /// A probe that has not finished after this long gives its permit back, so
    /// a hung probe cannot wedge the breaker half-open. 1ms..=1h; default 30 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub probe_timeout: Duration,
    /// How an open breaker refuses calls. Default [`OpenBehavior::FailFast`].
    pub open_behavior: OpenBehavior,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: Some(5),
            window: None,
            recovery_timeout: Duration::from_secs(60),
            max_open_time: Duration::from_secs(600),
            open_backoff_multiplier: 2.0,
            half_open_max_calls: 3,
            probe_timeout: Duration::from_secs(30),
            open_behavior: OpenBehavior::FailFast,
        }
    }
}

/// How an open breaker refuses calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum OpenBehavior {
    /// `poll_ready` is ready and the call fails at once with
    /// [`BreakerOpen`](crate::BreakerOpen), carrying the remaining open time.
    #[default]
    FailFast,
    /// `poll_ready` is `Pending` while the breaker is open (or half-open with
    /// every probe permit taken) and wakes the task when that may change, so a
    /// balancer routes around the endpoint.
    NotReady,
    /// The breaker never refuses: it counts, trips, and publishes its state
    /// to its health signal ([`Availability`](mesh_core::Availability)); the
    /// signal's reader decides who gets traffic. What a breaker built for a
    /// router's endpoint does (see
    /// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer)'s
    /// `NewEndpoint` implementation): the balancer ejects the endpoint within
    /// its ejection cap, and past the cap (panic mode) sends to it anyway.
    /// Calls let through while open are not counted; after the open period
    /// the first calls are half-open probes as usual. Each open period is
    /// `recovery_timeout` times the number of consecutive trips, capped at
    /// `max_open_time` (Envoy's ejection time), instead of the jittered
    /// backoff of the other behaviours.
    Report,
}

/// A sliding window and the rates that trip the breaker over it.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct WindowConfig {
    /// The last N calls, or the last N time buckets.
    pub kind: WindowKind,
    /// No rate trips the breaker before the window holds this many calls.
    /// 1..=1048576 (and at most the size of a count window).
    pub minimum_calls: u32,
    /// Trip when failures / calls reaches this, in (0, 1].
    pub failure_rate: Option<f64>,
    /// Trip when slow calls / calls reaches a rate.
    pub slow_call: Option<SlowCallConfig>,
}

impl WindowConfig {
    /// A failure-rate policy over the last `calls` calls.
    pub const fn count(calls: u32, minimum_calls: u32, failure_rate: f64) -> Self {
        Self {
            kind: WindowKind::Count { size: calls },
            minimum_calls,
            failure_rate: Some(failure_rate),
            slow_call: None,
        }
    }

    /// A failure-rate policy over `buckets` buckets of `bucket_width` each.
    pub const fn time(
        buckets: u32,
        bucket_width: Duration,
        minimum_calls: u32,
        failure_rate: f64,
    ) -> Self {
        Self {
            kind: WindowKind::Time {
                buckets,
                bucket_width,
            },
            minimum_calls,
            failure_rate: Some(failure_rate),
            slow_call: None,
        }
    }

    /// The same window with a slow-call policy.
    #[must_use]
    pub const fn with_slow_calls(mut self, threshold: Duration, rate: f64) -> Self {
        self.slow_call = Some(SlowCallConfig { threshold, rate });
        self
    }
}

/// The shape of a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "type", rename_all = "snake_case"))]
pub enum WindowKind {
    /// The last `size` calls. Every call slides it by one.
    Count {
        /// Calls in the window, 1 to [`MAX_WINDOW_CALLS`].
        size: u32,
    },
    /// The last `buckets` × `bucket_width` of time, sliding one bucket at a time.
    ///
    /// The window reads `tokio::time::Instant`: under tokio's paused clock it
    /// follows `tokio::time::advance`.
    Time {
        /// Buckets in the ring, 1 to [`MAX_WINDOW_BUCKETS`].
        buckets: u32,
        /// The time each bucket covers, 1ms..=1h.
        #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
        bucket_width: Duration,
    },
}

/// Calls slower than `threshold` are slow; their share of the window trips the
/// breaker at `rate`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct SlowCallConfig {
    /// A call that takes at least this long is slow, 1ns..=1h.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub threshold: Duration,
    /// Trip when slow calls / calls reaches this, in (0, 1].
    pub rate: f64,
}

fn check_rate(errors: &mut InvalidConfig, path: &str, rate: f64) {
    if !(rate > 0.0 && rate <= 1.0) {
        errors.push(path.to_owned(), format!("must be in (0, 1], got {rate}"));
    }
}

impl BreakerConfig {
    /// Checks every field and names each bad one with its allowed range.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        match self.consecutive_failures {
            Some(n) => {
                errors.check_count(
                    "consecutive_failures",
                    u64::from(n),
                    1..=u64::from(MAX_CONSECUTIVE_FAILURES),
                );
            }
            None if self.window.is_none() => errors.push(
                "consecutive_failures",
                "must be set when `window` is not: the breaker needs a trip policy",
            ),
            _ => {}
        }
        if let Some(w) = &self.window {
            errors.merge_nested("window", w.validate());
        }
        let recovery_ok = errors.check_duration(
            "recovery_timeout",
            self.recovery_timeout,
            MILLI..=MAX_OPEN_TIME,
        );
        if !recovery_ok || self.max_open_time > MAX_OPEN_TIME {
            errors.check_duration("max_open_time", self.max_open_time, MILLI..=MAX_OPEN_TIME);
        } else if self.max_open_time < self.recovery_timeout {
            errors.push(
                "max_open_time",
                format!(
                    "must be at least recovery_timeout ({:?}), got {:?}",
                    self.recovery_timeout, self.max_open_time
                ),
            );
        }
        if !(self.open_backoff_multiplier.is_finite()
            && (1.0..=MAX_OPEN_BACKOFF_MULTIPLIER).contains(&self.open_backoff_multiplier))
        {
            errors.push(
                "open_backoff_multiplier",
                format!(
                    "must be within 1..={MAX_OPEN_BACKOFF_MULTIPLIER}, got {}",
                    self.open_backoff_multiplier
                ),
            );
        }
        if !(1..=MAX_HALF_OPEN_CALLS).contains(&self.half_open_max_calls) {
            errors.push(
                "half_open_max_calls",
                format!(
                    "must be in 1..={MAX_HALF_OPEN_CALLS}, got {}",
                    self.half_open_max_calls
                ),
            );
        }
        errors.check_duration("probe_timeout", self.probe_timeout, MILLI..=HOUR);
        errors.into_result()
    }
}

impl WindowConfig {
    /// Checks every field of the window.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        match self.kind {
            WindowKind::Count { size } => {
                if !(1..=MAX_WINDOW_CALLS).contains(&size) {
                    errors.push(
                        "kind.size",
                        format!("must be in 1..={MAX_WINDOW_CALLS}, got {size}"),
                    );
                } else if self.minimum_calls > size {
                    errors.push(
                        "minimum_calls",
                        format!(
                            "must be at most the window size ({size}), got {}",
                            self.minimum_calls
                        ),
                    );
                }
            }
            WindowKind::Time {
                buckets,
                bucket_width,
            } => {
                if !(1..=MAX_WINDOW_BUCKETS).contains(&buckets) {
                    errors.push(
                        "kind.buckets",
                        format!("must be in 1..={MAX_WINDOW_BUCKETS}, got {buckets}"),
                    );
                }
                errors.check_duration("kind.bucket_width", bucket_width, MILLI..=HOUR);
                errors.check_count(
                    "minimum_calls",
                    u64::from(self.minimum_calls),
                    1..=u64::from(MAX_WINDOW_CALLS),
                );
            }
        }
        if self.minimum_calls == 0 && matches!(self.kind, WindowKind::Count { .. }) {
            errors.push("minimum_calls", "must be at least 1 (got 0)");
        }
        if let Some(rate) = self.failure_rate {
            check_rate(&mut errors, "failure_rate", rate);
        }
        if let Some(slow) = &self.slow_call {
            errors.check_duration(
                "slow_call.threshold",
                slow.threshold,
                Duration::from_nanos(1)..=HOUR,
            );
            check_rate(&mut errors, "slow_call.rate", slow.rate);
        }
        if self.failure_rate.is_none() && self.slow_call.is_none() {
            errors.push(
                "failure_rate",
                "must be set when `slow_call` is not: a window needs a rate to trip on",
            );
        }
        errors.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(c: &BreakerConfig) -> Vec<String> {
        c.validate()
            .unwrap_err()
            .errors()
            .iter()
            .map(|e| e.path().to_owned())
            .collect()
    }

    #[test]
    fn defaults_are_the_seeds() {
        let c = BreakerConfig::default();
        c.validate().unwrap();
        assert_eq!(c.consecutive_failures, Some(5));
        assert_eq!(c.recovery_timeout, Duration::from_secs(60));
        assert_eq!(c.half_open_max_calls, 3);
    }

    #[test]
    fn names_every_bad_field() {
        let c = BreakerConfig {
            consecutive_failures: Some(0),
            window: Some(WindowConfig {
                kind: WindowKind::Count { size: 0 },
                minimum_calls: 0,
                failure_rate: Some(1.5),
                slow_call: Some(SlowCallConfig {
                    threshold: Duration::ZERO,
                    rate: f64::NAN,
                }),
            }),
            recovery_timeout: Duration::ZERO,
            max_open_time: Duration::ZERO,
            open_backoff_multiplier: 0.5,
            half_open_max_calls: 0,
            probe_timeout: Duration::ZERO,
            open_behavior: OpenBehavior::NotReady,
        };
        assert_eq!(
            paths(&c),
            [
                "consecutive_failures",
                "window.kind.size",
                "window.minimum_calls",
                "window.failure_rate",
                "window.slow_call.threshold",
                "window.slow_call.rate",
                "recovery_timeout",
                "max_open_time",
                "open_backoff_multiplier",
                "half_open_max_calls",
                "probe_timeout",
            ]
        );
        let msg = c.validate().unwrap_err().to_string();
        assert!(
            msg.contains("`window.failure_rate` must be in (0, 1], got 1.5"),
            "{msg}"
        );
    }

    #[test]
    fn needs_a_policy_and_sane_windows() {
        let none = BreakerConfig {
            consecutive_failures: None,
            ..BreakerConfig::default()
        };
        assert_eq!(paths(&none), ["consecutive_failures"]);
        let c = BreakerConfig {
            window: Some(WindowConfig {
                kind: WindowKind::Time {
                    buckets: 0,
                    bucket_width: Duration::ZERO,
                },
                minimum_calls: 1,
                failure_rate: None,
                slow_call: None,
            }),
            max_open_time: Duration::from_secs(1),
            ..BreakerConfig::default()
        };
        assert_eq!(
            paths(&c),
            [
                "window.kind.buckets",
                "window.kind.bucket_width",
                "window.failure_rate",
                "max_open_time"
            ]
        );
        let c = BreakerConfig {
            window: Some(WindowConfig::count(10, 11, 0.5)),
            ..BreakerConfig::default()
        };
        assert_eq!(paths(&c), ["window.minimum_calls"]);
    }

    #[test]
    fn durations_and_counts_have_upper_bounds_named_in_the_error() {
        let years = Duration::from_secs(500_000_000_000 * 31_557_600);
        let c = BreakerConfig {
            consecutive_failures: Some(u32::MAX),
            window: Some(WindowConfig {
                kind: WindowKind::Time {
                    buckets: 10,
                    bucket_width: years,
                },
                minimum_calls: u32::MAX,
                failure_rate: Some(0.5),
                slow_call: Some(SlowCallConfig {
                    threshold: years,
                    rate: 0.5,
                }),
            }),
            recovery_timeout: years,
            max_open_time: Duration::MAX,
            open_backoff_multiplier: 1e300,
            half_open_max_calls: 3,
            probe_timeout: years,
            open_behavior: OpenBehavior::NotReady,
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
                ("consecutive_failures", "must be within 1..=1000000"),
                ("window.kind.bucket_width", "must be within 1ms..=1h"),
                ("window.minimum_calls", "must be within 1..=1048576"),
                ("window.slow_call.threshold", "must be within 1ns..=1h"),
                ("recovery_timeout", "must be within 1ms..=24h"),
                ("max_open_time", "must be within 1ms..=24h"),
                ("open_backoff_multiplier", "must be within 1..=100"),
                ("probe_timeout", "must be within 1ms..=1h"),
            ]
        );
        // The upper edges are allowed.
        BreakerConfig {
            consecutive_failures: Some(MAX_CONSECUTIVE_FAILURES),
            recovery_timeout: MAX_OPEN_TIME,
            max_open_time: MAX_OPEN_TIME,
            open_backoff_multiplier: MAX_OPEN_BACKOFF_MULTIPLIER,
            probe_timeout: HOUR,
            window: Some(WindowConfig::time(10, HOUR, MAX_WINDOW_CALLS, 0.5)),
            ..BreakerConfig::default()
        }
        .validate()
        .unwrap();
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_uses_humantime() {
        let c: BreakerConfig = serde_json::from_str(
            r#"{
                "consecutive_failures": null,
                "recovery_timeout": "30s",
                "probe_timeout": "5s",
                "open_behavior": "not_ready",
                "window": {
                    "kind": {"type": "time", "buckets": 10, "bucket_width": "1s"},
                    "minimum_calls": 20,
                    "failure_rate": 0.5,
                    "slow_call": {"threshold": "250ms", "rate": 0.8}
                }
            }"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.recovery_timeout, Duration::from_secs(30));
        assert_eq!(c.open_behavior, OpenBehavior::NotReady);
        let w = c.window.as_ref().unwrap();
        assert_eq!(
            w.kind,
            WindowKind::Time {
                buckets: 10,
                bucket_width: Duration::from_secs(1)
            }
        );
        assert_eq!(w.slow_call.unwrap().threshold, Duration::from_millis(250));
        let back: BreakerConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(serde_json::from_str::<BreakerConfig>(r#"{"recovery":"1s"}"#).is_err());
    }
}
