//! [`CircuitBreakerHandle`]: manual control and a cheap state read.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use mesh_core::Availability;

use crate::state::{CircuitState, Shared};

/// Controls one breaker from outside the call path (an admin endpoint, a
/// deploy script, a test). Cheap to clone; every clone controls the same
/// breaker as every clone of its service. Get one with
/// [`CircuitBreaker::handle`](crate::CircuitBreaker::handle).
///
/// Manual states stay until [`reset`](Self::reset).
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    shared: Arc<Shared>,
}

impl CircuitBreakerHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The current state: one atomic load.
    pub fn state(&self) -> CircuitState {
        self.shared.state()
    }

    /// How long the breaker stays open, when it is [`CircuitState::Open`].
    pub fn remaining_open_time(&self) -> Option<Duration> {
        self.shared.remaining_open()
    }

    /// The availability signal this breaker publishes.
    pub fn availability(&self) -> &Availability {
        self.shared.availability()
    }

    /// The breaker's name in logs and metrics: the layer's
    /// [`name`](crate::CircuitBreakerLayer::name), or `service/endpoint`
    /// for a breaker a router built for an endpoint.
    pub fn name(&self) -> Option<&str> {
        self.shared.name()
    }

    /// The address of the endpoint this breaker counts for, when a router
    /// built it for one endpoint (what its logs and metrics call it).
    pub fn endpoint(&self) -> Option<&str> {
        self.shared.endpoint()
    }

    /// A handle that does not keep the breaker alive: for a registry of
    /// breakers (an admin page) that must not outlive their endpoints.
    pub fn downgrade(&self) -> WeakBreakerHandle {
        WeakBreakerHandle {
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Refuses every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.shared.force(CircuitState::ForcedOpen);
    }

    /// Lets every call through, counting nothing, until [`reset`](Self::reset).
    pub fn force_closed(&self) {
        self.shared.force(CircuitState::ForcedClosed);
    }

    /// Lets every call through and keeps counting (for metrics and events),
    /// but never trips, until [`reset`](Self::reset).
    pub fn disable(&self) {
        self.shared.force(CircuitState::Disabled);
    }

    /// Back to closed with empty counters and no open-time backoff.
    pub fn reset(&self) {
        self.shared.force(CircuitState::Closed);
    }
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("state", &self.state())
            .finish()
    }
}

/// A [`CircuitBreakerHandle`] that does not keep its breaker alive
/// ([`CircuitBreakerHandle::downgrade`]).
#[derive(Clone)]
pub struct WeakBreakerHandle {
    shared: Weak<Shared>,
}

impl WeakBreakerHandle {
    /// The handle, while the breaker lives.
    pub fn upgrade(&self) -> Option<CircuitBreakerHandle> {
        self.shared.upgrade().map(CircuitBreakerHandle::new)
    }

    /// Whether the breaker was dropped.
    pub fn is_dropped(&self) -> bool {
        self.shared.strong_count() == 0
    }
}

impl fmt::Debug for WeakBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakBreakerHandle")
            .field("dropped", &self.is_dropped())
            .finish()
    }
}
