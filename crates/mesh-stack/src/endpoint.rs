//! [`EndpointLayer`]: what every endpoint of a service gets.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mesh_breaker::{CircuitBreaker, CircuitBreakerHandle, CircuitBreakerLayer, WeakBreakerHandle};
use mesh_core::EndpointKey;
use mesh_core::eos::AtEndOfStream;
use mesh_core::target::{NewEndpoint, Target};

use crate::timeout::AttemptTimeout;

/// The per-endpoint stack of a mesh service: a circuit breaker over a
/// per-attempt timeout ([`AttemptTimeout`], which reuses its timers from one
/// attempt to the next and covers the response body). The breaker records
/// an HTTP response's outcome when its body ends
/// ([`mesh_core::eos::AtEndOfStream`]): a body cut short by the timeout or
/// a broken connection, or gRPC trailers with an error status, count as the
/// endpoint's failure.
///
/// The discovery router builds it for each endpoint from the endpoint's
/// [`Target`] when the endpoint appears (it is a [`NewEndpoint`]): each
/// endpoint gets its own breaker, named `service/endpoint`, which counts
/// the endpoint's outcomes, trips, and publishes into the endpoint's health
/// signal. The breaker never refuses a call itself: the balancer decides who
/// gets traffic, ejecting tripped endpoints within its ejection cap (panic
/// mode past it). A timed-out attempt is a failure for the breaker.
///
/// With the feature `spans`, each attempt runs in an INFO span
/// `mesh.attempt` (`service`, `endpoint` address, `attempt` number; see
/// [`observe`](crate::observe#spans)).
///
/// `C` is the breaker's classifier, cloned into each call's future: keep it
/// small (a zero-sized `DefaultHttpClassifier`, or an `Arc`).
pub struct EndpointLayer<C> {
    breaker: CircuitBreakerLayer<C, AtEndOfStream>,
    attempt_timeout: Duration,
    streaming: bool,
    breakers: BreakerRegistry,
}

/// The breakers of one service's endpoints, by endpoint key, held weakly:
/// what the admin snapshot reads. A breaker dropped with its endpoint
/// leaves the registry at the next insert or read.
#[derive(Clone, Default)]
pub(crate) struct BreakerRegistry(Arc<Mutex<HashMap<EndpointKey, WeakBreakerHandle>>>);

impl BreakerRegistry {
    fn insert(&self, key: EndpointKey, handle: &CircuitBreakerHandle) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, h| !h.is_dropped());
        map.insert(key, handle.downgrade());
    }

    /// The live breaker of `key`.
    pub(crate) fn get(&self, key: &EndpointKey) -> Option<CircuitBreakerHandle> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, h| !h.is_dropped());
        map.get(key).and_then(WeakBreakerHandle::upgrade)
    }
}

impl<C> EndpointLayer<C> {
    /// A breaker built by `breaker` over a timeout of `attempt_timeout`
    /// that covers the response body. The breaker counts an HTTP response
    /// when its body ends ([`CircuitBreakerLayer::at_end_of_stream`]).
    pub fn new<M>(breaker: CircuitBreakerLayer<C, M>, attempt_timeout: Duration) -> Self {
        Self {
            breaker: breaker.at_end_of_stream(),
            attempt_timeout,
            streaming: false,
            breakers: BreakerRegistry::default(),
        }
    }

    /// Registers every breaker this layer builds in `breakers`.
    pub(crate) fn registry(mut self, breakers: BreakerRegistry) -> Self {
        self.breakers = breakers;
        self
    }

    /// With `streaming`, the attempt timeout ends at the response headers
    /// (see [`AttemptTimeout::streaming`]).
    #[must_use]
    pub fn streaming(mut self, streaming: bool) -> Self {
        self.streaming = streaming;
        self
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
            streaming: self.streaming,
            breakers: self.breakers.clone(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for EndpointLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointLayer")
            .field("breaker", &self.breaker)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("streaming", &self.streaming)
            .finish()
    }
}

impl<S, C: Clone> NewEndpoint<S> for EndpointLayer<C> {
    #[cfg(feature = "spans")]
    type Service = CircuitBreaker<crate::spans::AttemptSpan<AttemptTimeout<S>>, C, AtEndOfStream>;
    #[cfg(not(feature = "spans"))]
    type Service = CircuitBreaker<AttemptTimeout<S>, C, AtEndOfStream>;

    fn new_endpoint(&self, target: &Target, inner: S) -> Self::Service {
        let timeout = AttemptTimeout::new(inner, self.attempt_timeout).streaming(self.streaming);
        #[cfg(feature = "spans")]
        let timeout = crate::spans::AttemptSpan::new(timeout, target);
        let breaker = self.breaker.new_endpoint(target, timeout);
        self.breakers
            .insert(target.endpoint().key().clone(), &breaker.handle());
        breaker
    }
}
