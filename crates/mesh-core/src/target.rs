//! Endpoint targets: what a router builds each endpoint's stack from.
//!
//! # Why a target
//!
//! A router builds one stack per endpoint (a breaker, a timeout, the inner
//! client pointed at the endpoint's address). Some layers of that stack need
//! to know *which* endpoint they serve: a breaker must feed that endpoint's
//! health signal (so the balancer can eject it) and must say in its logs and
//! metrics which endpoint tripped. A plain [`tower_layer::Layer`] cannot
//! learn that: `Layer::layer(inner)` sees only the inner service.
//!
//! linkerd2-proxy's answer is `NewService<Target>`: a synchronous,
//! infallible constructor of a per-target service, where the target is a
//! plain value carrying everything the stack may need. This module is that
//! shape: the router builds a [`Target`] for every endpoint it learns (the
//! [`Endpoint`], its [`Availability`] health signal, the service name) and
//! calls [`NewEndpoint::new_endpoint`] with it. Nothing is read from ambient
//! state: no thread-local, no global registry. What reaches a stack is what
//! its target says.
//!
//! Any plain layer still works: [`LayerEndpoint`] adapts a `Layer` (which
//! ignores the target), and [`endpoint_fn`] turns a closure into a
//! [`NewEndpoint`], so target-aware and plain layers compose in one place.
//!
//! # Example
//!
//! ```
//! use mesh_core::target::{NewEndpoint, Target, endpoint_fn};
//! use mesh_core::{Availability, AvailabilityState, Endpoint};
//!
//! // A constructor that names each endpoint's stack after its target.
//! let new_stack = endpoint_fn(|target: &Target, inner: &'static str| {
//!     format!("{} -> {}", target.name(), inner)
//! });
//!
//! let endpoint = Endpoint::new("users-1", "10.0.0.1:8080".parse()?);
//! let health = Availability::new();
//! let target = Target::new("users", endpoint, health.clone());
//! assert_eq!(new_stack.new_endpoint(&target, "client"), "users/users-1 -> client");
//!
//! // What the stack publishes into the target's signal, the router reads.
//! target.health().set(AvailabilityState::Unavailable);
//! assert!(!health.is_available());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use crate::availability::Availability;
use crate::endpoint::Endpoint;

/// One endpoint of one service, as a router hands it to the constructor of
/// the endpoint's stack. Cheap to clone (three reference-counted pointers).
#[derive(Clone)]
pub struct Target {
    service: Arc<str>,
    endpoint: Endpoint,
    health: Availability,
    name: Arc<str>,
}

impl Target {
    /// The target for `endpoint` of `service`, whose stack publishes into
    /// `health`.
    pub fn new(service: impl Into<Arc<str>>, endpoint: Endpoint, health: Availability) -> Self {
        let service = service.into();
        let name = Arc::from(format!("{service}/{}", endpoint.key()));
        Self {
            service,
            endpoint,
            health,
            name,
        }
    }

    /// The logical service the endpoint belongs to (`users`).
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The service name, shared.
    pub fn service_arc(&self) -> &Arc<str> {
        &self.service
    }

    /// The endpoint: key, address, tags, metadata, weight.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The endpoint's health signal: what its breaker publishes and its
    /// balancer reads.
    pub fn health(&self) -> &Availability {
        &self.health
    }

    /// `service/endpoint-key`: the name a per-endpoint layer uses in logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name, shared.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("service", &self.service)
            .field("endpoint", self.endpoint.key())
            .field("address", &self.endpoint.address())
            .field("health", &self.health)
            .finish()
    }
}

/// Builds one endpoint's stack over `inner` from its [`Target`]: linkerd's
/// `NewService<Target>`, synchronous and infallible.
///
/// Implemented by target-aware layers (mesh-breaker's `CircuitBreakerLayer`
/// feeds the target's health signal), by [`LayerEndpoint`] for any plain
/// layer, and by [`EndpointFn`] for closures.
pub trait NewEndpoint<S> {
    /// The endpoint's stack.
    type Service;

    /// Builds the stack of `target`'s endpoint over `inner`.
    fn new_endpoint(&self, target: &Target, inner: S) -> Self::Service;
}

/// A plain [`Layer`] as a [`NewEndpoint`]: applies the layer, ignoring the
/// target.
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerEndpoint<L>(pub L);

impl<S, L: Layer<S>> NewEndpoint<S> for LayerEndpoint<L> {
    type Service = L::Service;

    #[inline]
    fn new_endpoint(&self, _target: &Target, inner: S) -> Self::Service {
        self.0.layer(inner)
    }
}

/// A closure as a [`NewEndpoint`]; see [`endpoint_fn`].
#[derive(Clone, Copy)]
pub struct EndpointFn<F>(F);

/// Makes a [`NewEndpoint`] of `f(target, inner)`: the place to compose
/// target-aware layers with plain ones.
pub fn endpoint_fn<F>(f: F) -> EndpointFn<F> {
    EndpointFn(f)
}

impl<S, F, T> NewEndpoint<S> for EndpointFn<F>
where
    F: Fn(&Target, S) -> T,
{
    type Service = T;

    #[inline]
    fn new_endpoint(&self, target: &Target, inner: S) -> T {
        (self.0)(target, inner)
    }
}

impl<F> fmt::Debug for EndpointFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EndpointFn")
    }
}
