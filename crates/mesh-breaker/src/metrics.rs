//! `metrics` counters and gauges (feature `metrics`).
//!
//! Handles are registered once, when the breaker is built, with the global
//! recorder installed at that time; a call then costs one increment. Labels
//! are bounded: the breaker's name (set with
//! [`CircuitBreakerLayer::name`](crate::CircuitBreakerLayer::name)), the
//! outcome and the state.
//!
//! - `mesh_breaker_calls_total{breaker, outcome}`: calls let through
//!   (`admitted`), refused (`rejected`), and among those let through the ones
//!   that failed (`failure`) or were slow (`slow`). Successes are admitted
//!   minus failures, ignored and abandoned calls: counting them one by one
//!   would cost every successful call a trip to shared memory.
//! - `mesh_breaker_transitions_total{breaker, to}`: state changes;
//! - `mesh_breaker_state{breaker}`: the state, as its number (0 closed,
//!   1 open, 2 half-open, 3 forced open, 4 forced closed, 5 disabled).

use metrics::{Counter, Gauge};

use crate::state::CircuitState;

const STATES: [CircuitState; 6] = [
    CircuitState::Closed,
    CircuitState::Open,
    CircuitState::HalfOpen,
    CircuitState::ForcedOpen,
    CircuitState::ForcedClosed,
    CircuitState::Disabled,
];

pub(crate) struct Metrics {
    pub(crate) admitted: Counter,
    failure: Counter,
    slow: Counter,
    pub(crate) rejected: Counter,
    transitions: [Counter; 6],
    state: Gauge,
}

impl Metrics {
    pub(crate) fn new(name: Option<&str>) -> Self {
        let breaker = name.unwrap_or("unnamed").to_owned();
        let calls = |outcome: &'static str| metrics::counter!("mesh_breaker_calls_total", "breaker" => breaker.clone(), "outcome" => outcome);
        let state = metrics::gauge!("mesh_breaker_state", "breaker" => breaker.clone());
        state.set(0.0);
        Self {
            admitted: calls("admitted"),
            failure: calls("failure"),
            slow: calls("slow"),
            rejected: calls("rejected"),
            transitions: STATES.map(|s| {
                metrics::counter!("mesh_breaker_transitions_total", "breaker" => breaker.clone(), "to" => s.as_str())
            }),
            state,
        }
    }

    pub(crate) fn record(&self, failure: bool, slow: bool) {
        if failure {
            self.failure.increment(1);
        }
        if slow {
            self.slow.increment(1);
        }
    }

    pub(crate) fn transition(&self, to: CircuitState) {
        self.transitions[to as usize].increment(1);
        self.state.set(f64::from(to as u8));
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}
