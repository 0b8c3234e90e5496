//! `metrics` counters and gauges (feature `metrics`).
//!
//! Handles are registered once, when the breaker is built, with the recorder
//! in effect at that time; a call then costs one increment. Labels are
//! bounded: `service` (the breaker's
//! [`name`](crate::CircuitBreakerLayer::name), or the service of the router
//! that built it), and for a breaker a router built for one endpoint,
//! `endpoint`: the endpoint's **address** (`10.0.0.1:8080`), never its
//! discovery id, so a redeploy that keeps addresses adds no series.
//!
//! - `mesh_breaker_calls_total{service, endpoint, outcome}`: calls let
//!   through (`admitted`), refused (`rejected`), and among those let through
//!   the ones that failed (`failure`) or were slow (`slow`). Successes are
//!   admitted minus failures, ignored and abandoned calls: counting them one
//!   by one would cost every successful call a trip to shared memory.
//! - `mesh_breaker_transitions_total{service, endpoint, to}`: state changes.
//! - `mesh_breaker_state{service, endpoint, state}`: one series per state
//!   (resilience4j style), `1` for the current state and `0` for the others.
//!   Each breaker counts itself in (the series add up, so breakers sharing
//!   labels, such as an endpoint's old breaker still finishing calls and its
//!   replacement, never overwrite each other) and counts itself out when
//!   dropped: a removed endpoint's series all read `0`, and an exporter with
//!   an idle timeout (Prometheus: `PrometheusBuilder::idle_timeout`) then
//!   drops them.
//! - `mesh_breaker_ejections_total{service, endpoint}`: trips to open (the
//!   endpoint was ejected); `mesh_breaker_readmissions_total{service,
//!   endpoint}`: returns to closed after an open period.
//!
//! Cardinality: services × live endpoints × 6 states for the state gauge,
//! services × live endpoints × 4 outcomes for calls.

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
    state: [Gauge; 6],
    ejections: Counter,
    readmissions: Counter,
}

impl Metrics {
    pub(crate) fn new(service: Option<&str>, endpoint: Option<&str>) -> Self {
        let mut labels = vec![metrics::Label::new(
            "service",
            service.unwrap_or("unnamed").to_owned(),
        )];
        if let Some(endpoint) = endpoint {
            labels.push(metrics::Label::new("endpoint", endpoint.to_owned()));
        }
        let with = |k: &'static str, v: &'static str| {
            let mut l = labels.clone();
            l.push(metrics::Label::new(k, v));
            l
        };
        let calls = |outcome: &'static str| {
            metrics::counter!("mesh_breaker_calls_total", with("outcome", outcome))
        };
        let state =
            STATES.map(|s| metrics::gauge!("mesh_breaker_state", with("state", s.as_str())));
        // Counted in, not set: breakers that share labels (an endpoint's
        // old breaker, still finishing calls, and its replacement; or
        // standalone breakers given one name) add up.
        state[CircuitState::Closed as usize].increment(1.0);
        Self {
            admitted: calls("admitted"),
            failure: calls("failure"),
            slow: calls("slow"),
            rejected: calls("rejected"),
            transitions: STATES.map(|s| {
                metrics::counter!("mesh_breaker_transitions_total", with("to", s.as_str()))
            }),
            state,
            ejections: metrics::counter!("mesh_breaker_ejections_total", labels.clone()),
            readmissions: metrics::counter!("mesh_breaker_readmissions_total", labels),
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

    pub(crate) fn transition(&self, from: CircuitState, to: CircuitState) {
        self.transitions[to as usize].increment(1);
        self.state[from as usize].decrement(1.0);
        self.state[to as usize].increment(1.0);
        match (from, to) {
            (CircuitState::Closed | CircuitState::HalfOpen, CircuitState::Open) => {
                self.ejections.increment(1);
            }
            (CircuitState::HalfOpen | CircuitState::Open, CircuitState::Closed) => {
                self.readmissions.increment(1);
            }
            _ => {}
        }
    }
}

impl Metrics {
    /// The breaker, last in `state`, is dropped (its endpoint left the
    /// set): it counts out of the state series.
    pub(crate) fn dropped(&self, state: CircuitState) {
        self.state[state as usize].decrement(1.0);
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}
