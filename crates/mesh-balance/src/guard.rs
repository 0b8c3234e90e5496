//! The guard a pick returns: one request in flight to one endpoint.

use std::fmt;
use std::sync::Arc;

use mesh_core::pushback::Pushback;
use mesh_core::{Availability, Endpoint, EndpointKey, Outcome};

use crate::state::{EndpointState, in_flight};

/// `LoadGuard::started_ns` of a strategy that does not time requests.
const NOT_TIMED: u64 = u64::MAX;

/// One request in flight to the endpoint a [`Balancer`](crate::Balancer)
/// chose.
///
/// While the guard lives, the request counts in the endpoint's load. Call
/// [`record`](Self::record) with the call's [`Outcome`] when the response
/// completes; dropping the guard without recording (the caller gave up, the
/// future was dropped) counts the call as neither success nor failure.
///
/// Holds one reference-counted pointer to the endpoint's accounting, and that
/// reference *is* the in-flight count (as in tower's `PendingRequests`), so a
/// count can never be lost. Recording takes no lock and allocates nothing.
#[must_use = "dropping the guard ends the request's load accounting at once"]
pub struct LoadGuard {
    state: Arc<EndpointState>,
    /// When the request started (ns since the balancer's epoch), or
    /// [`NOT_TIMED`] if this strategy does not use latency (a sentinel, not
    /// an `Option`: the guard travels in every response body).
    started_ns: u64,
    /// Where the endpoint sits in the set it was picked from.
    slot: usize,
}

impl LoadGuard {
    /// Counts one more request in flight to `state`.
    #[inline]
    pub(crate) fn new(state: &Arc<EndpointState>, started_ns: Option<u64>, slot: usize) -> Self {
        let started_ns = started_ns.map_or(NOT_TIMED, |ns| ns.min(NOT_TIMED - 1));
        #[cfg(feature = "metrics")]
        state.picks.increment(1);
        Self {
            state: Arc::clone(state),
            started_ns,
            slot,
        }
    }

    /// The chosen endpoint, as it was when it joined the set (a later update
    /// may have changed its weight; the balancer uses the current one).
    pub fn endpoint(&self) -> &Endpoint {
        &self.state.endpoint
    }

    /// The chosen endpoint's key (record it in
    /// [`TriedEndpoints`](mesh_core::TriedEndpoints) before sending).
    pub fn key(&self) -> &EndpointKey {
        self.state.endpoint.key()
    }

    /// The chosen endpoint's key id ([`EndpointKey::id`]), read from the
    /// accounting the pick already touched: cheaper than `key().id()`,
    /// which reads the endpoint's own allocation (a cache miss in large sets).
    #[inline]
    pub fn key_id(&self) -> u64 {
        self.state.id
    }

    /// The chosen endpoint's position in the set it was picked from: its
    /// index in [`Balancer::endpoints`](crate::Balancer::endpoints) as long
    /// as no update replaced that set. A caller that keeps per-endpoint data
    /// in the same order finds it without a lookup (check the key id: the
    /// set may have changed since).
    #[inline]
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The chosen endpoint's availability signal (the one its breaker
    /// publishes into).
    pub fn availability(&self) -> &Availability {
        &self.state.availability
    }

    /// Requests in flight to this endpoint now, this one included.
    pub fn in_flight(&self) -> u32 {
        in_flight(&self.state)
    }

    /// Records how the call went and ends its load accounting.
    ///
    /// - [`Outcome::Success`] and [`Outcome::Ignored`]: the latency is a
    ///   normal sample (a 404 is served as fast as a 200).
    /// - [`Outcome::Failure`]: the latency is recorded as at least the
    ///   configured `failure_penalty`, so failing fast does not look fast;
    ///   pushback with a delay (`Retry-After`) also penalises the endpoint
    ///   until that delay has passed.
    ///
    /// Successes and failures also count towards the endpoint's success
    /// rate, which the outlier detector compares with its peers' once per
    /// interval (see [`OutlierConfig`](crate::OutlierConfig)); the call that
    /// finishes after an interval ended runs the comparison.
    #[inline]
    pub fn record(self, outcome: Outcome) {
        let state = &*self.state;
        let failed = outcome.is_failure();
        let counted = match outcome {
            Outcome::Ignored => None,
            _ => Some(state.count(failed)),
        };
        let pushback = outcome.pushback().and_then(Pushback::delay);
        let now = match (self.started_ns != NOT_TIMED).then_some(self.started_ns) {
            Some(started) => {
                let now = state.params.clock.elapsed_nanos();
                #[cfg(feature = "metrics")]
                state
                    .attempt_seconds
                    .record(now.saturating_sub(started) as f64 * 1e-9);
                let alone = in_flight(&self.state) <= 1;
                if state.observe(now.saturating_sub(started), now, failed, alone) {
                    state
                        .detector
                        .first_sample(now, state.params.default_rtt_ns);
                }
                Some(now)
            }
            // Latency-blind strategy: the clock is read for pushback, and
            // every 64th call for the outlier detector.
            None if pushback.is_some() || counted.is_some_and(|n| n % 64 == 0) => {
                Some(state.params.clock.elapsed_nanos())
            }
            None => None,
        };
        let Some(now) = now else { return };
        if let Some(delay) = pushback {
            state.push_back(now, delay);
        }
        if state.detector.due(now) {
            state.detector.run(now);
        }
    }
}

/// A balancer records through its guard at the end of a response body when
/// the router tracks outcomes at end of stream ([`mesh_core::eos`]).
impl mesh_core::eos::Record for LoadGuard {
    #[inline]
    fn record(self, outcome: Outcome) {
        LoadGuard::record(self, outcome);
    }
}

impl fmt::Debug for LoadGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadGuard")
            .field("endpoint", self.state.endpoint.key())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}
