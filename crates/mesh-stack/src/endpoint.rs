//! [`EndpointLayer`]: what every endpoint of a service gets.

use std::fmt;
use std::time::Duration;

use mesh_breaker::{CircuitBreaker, CircuitBreakerLayer};
use tower_layer::Layer;

use crate::timeout::AttemptTimeout;

/// The per-endpoint stack of a mesh service: a circuit breaker in readiness
/// mode (an open endpoint is routed around), over a per-attempt timeout
/// ([`AttemptTimeout`], which reuses its timers from one attempt to the next).
///
/// The discovery router applies it to each endpoint when the endpoint
/// appears, inside the endpoint's availability scope, so each endpoint has
/// its own breaker and the balancer sees its state. A timed-out attempt is a
/// failure for the breaker.
///
/// `C` is the breaker's classifier, cloned into each call's future: keep it
/// small (a zero-sized `DefaultHttpClassifier`, or an `Arc`).
pub struct EndpointLayer<C> {
    breaker: CircuitBreakerLayer<C>,
    attempt_timeout: Duration,
}

impl<C> EndpointLayer<C> {
    /// A breaker built by `breaker` over a timeout of `attempt_timeout`.
    pub fn new(breaker: CircuitBreakerLayer<C>, attempt_timeout: Duration) -> Self {
        Self {
            breaker,
            attempt_timeout,
        }
    }

    /// The per-attempt timeout.
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }
}

impl<C: Clone> Clone for EndpointLayer<C> {
    fn clone(&self) -> Self {
        Self {
            breaker: self.breaker.clone(),
            attempt_timeout: self.attempt_timeout,
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for EndpointLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointLayer")
            .field("breaker", &self.breaker)
            .field("attempt_timeout", &self.attempt_timeout)
            .finish()
    }
}

impl<S, C: Clone> Layer<S> for EndpointLayer<C> {
    type Service = CircuitBreaker<AttemptTimeout<S>, C>;

    fn layer(&self, inner: S) -> Self::Service {
        self.breaker
            .layer(AttemptTimeout::new(inner, self.attempt_timeout))
    }
}
