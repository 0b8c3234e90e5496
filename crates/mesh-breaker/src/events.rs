//! What a breaker tells the outside world: transitions (with why), rejected
//! calls and slow calls.
//!
//! Every transition is a `tracing` event (target `mesh_breaker`) whose message
//! says why, e.g. `failure rate 0.62 ≥ 0.50 over 100 calls`. For programmatic
//! use, register a listener with
//! [`CircuitBreakerLayer::on_event`](crate::CircuitBreakerLayer::on_event):
//! events are plain `Copy` values, built only when a listener is registered,
//! so a breaker nobody listens to pays nothing for them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::state::CircuitState;

/// Something a breaker did.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum BreakerEvent {
    /// The breaker changed state.
    Transition {
        /// The state it left.
        from: CircuitState,
        /// The state it entered.
        to: CircuitState,
        /// Why.
        reason: TransitionReason,
    },
    /// A call was refused without being sent.
    Rejected {
        /// The state that refused it.
        state: CircuitState,
    },
    /// A call took at least the slow-call threshold.
    SlowCall {
        /// How long it took.
        elapsed: Duration,
        /// The threshold it passed.
        threshold: Duration,
    },
    /// A probe did not finish within the probe timeout; its permit was given
    /// back so another probe can run.
    ProbeTimedOut,
}

/// Why a breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum TransitionReason {
    /// `count` failures in a row reached the threshold.
    ConsecutiveFailures {
        /// Failures in a row.
        count: u32,
        /// The configured threshold.
        threshold: u32,
    },
    /// The failure rate over the window reached the threshold.
    FailureRate {
        /// failures / calls.
        rate: f64,
        /// The configured threshold.
        threshold: f64,
        /// Calls in the window.
        calls: u32,
    },
    /// The slow-call rate over the window reached the threshold.
    SlowCallRate {
        /// slow calls / calls.
        rate: f64,
        /// The configured threshold.
        threshold: f64,
        /// Calls in the window.
        calls: u32,
    },
    /// The open period ended: probes may go through.
    OpenPeriodElapsed,
    /// A half-open probe failed (or was slow).
    ProbeFailed,
    /// Enough half-open probes succeeded.
    ProbesSucceeded {
        /// Successful probes.
        count: u32,
    },
    /// A manual [`CircuitBreakerHandle`](crate::CircuitBreakerHandle) call.
    Manual,
}

impl fmt::Display for TransitionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ConsecutiveFailures { count, threshold } => {
                write!(f, "{count} consecutive failures ≥ {threshold}")
            }
            Self::FailureRate {
                rate,
                threshold,
                calls,
            } => write!(
                f,
                "failure rate {rate:.2} ≥ {threshold:.2} over {calls} calls"
            ),
            Self::SlowCallRate {
                rate,
                threshold,
                calls,
            } => write!(
                f,
                "slow-call rate {rate:.2} ≥ {threshold:.2} over {calls} calls"
            ),
            Self::OpenPeriodElapsed => f.write_str("open period elapsed"),
            Self::ProbeFailed => f.write_str("a half-open probe failed"),
            Self::ProbesSucceeded { count } => write!(f, "{count} half-open probes succeeded"),
            Self::Manual => f.write_str("manual control"),
        }
    }
}

/// A registered event listener.
#[derive(Clone)]
pub(crate) struct Listener(pub(crate) Arc<dyn Fn(&BreakerEvent) + Send + Sync>);

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Listener(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_say_why() {
        let r = TransitionReason::FailureRate {
            rate: 0.625,
            threshold: 0.5,
            calls: 100,
        };
        assert_eq!(r.to_string(), "failure rate 0.62 ≥ 0.50 over 100 calls");
        let r = TransitionReason::ConsecutiveFailures {
            count: 5,
            threshold: 5,
        };
        assert_eq!(r.to_string(), "5 consecutive failures ≥ 5");
    }
}
