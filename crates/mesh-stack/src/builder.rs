//! [`ServiceBuilderExt`]: the mesh layers as `tower::ServiceBuilder` methods.
//!
//! tower-http adds one builder method per middleware; so does this trait,
//! for the mesh's. Call them in the order of the request path, outermost
//! first: `.retry(..)`, then `.discovery(..)` (whose per-endpoint layer holds
//! the breaker and the timeout), or `.circuit_breaker(..)` directly over a
//! single-address client. A retry outside the router sends each attempt to a
//! fresh endpoint; a breaker outside the router would count the whole
//! service as one endpoint, which is rarely what you want.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mesh_stack::{ServiceBuilderExt, RetryConfig, RetryLayer};
//! use mesh_stack::discovery::{StaticSource, router::DiscoveryLayer};
//! use mesh_stack::core::Endpoint;
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), mesh_stack::core::BoxError> {
//! let users = StaticSource::new([Endpoint::from_address("127.0.0.1:8081".parse()?)]).discovery();
//! let client = tower::service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(()))
//! });
//! let svc = ServiceBuilder::new()
//!     .retry(RetryLayer::new(RetryConfig::default())?)
//!     .discovery(DiscoveryLayer::new(users))
//!     .service(client);
//! # drop(svc);
//! # Ok(())
//! # }
//! ```

use mesh_breaker::CircuitBreakerLayer;
use mesh_discovery::router::DiscoveryLayer;
use mesh_retry::{HedgeLayer, ReplayBodyLayer, RetryLayer};
use tower::ServiceBuilder;
use tower_layer::Stack;

use crate::mesh::MeshLayer;

mod sealed {
    pub trait Sealed<T> {}
    impl<L> Sealed<L> for tower::ServiceBuilder<L> {}
}

/// Mesh methods on [`tower::ServiceBuilder`]. Sealed: implemented only for
/// `ServiceBuilder`. See the [module docs](self) for the order.
pub trait ServiceBuilderExt<L>: sealed::Sealed<L> + Sized {
    /// Budgeted retries of idempotent requests ([`RetryLayer`]). Outermost.
    fn retry<C>(self, layer: RetryLayer<C>) -> ServiceBuilder<Stack<RetryLayer<C>, L>>;

    /// A second attempt of a slow idempotent request ([`HedgeLayer`]).
    fn hedge<C>(self, layer: HedgeLayer<C>) -> ServiceBuilder<Stack<HedgeLayer<C>, L>>;

    /// Buffers streaming request bodies (up to `max_bytes`) so that
    /// [`retry`](Self::retry) can send them again. Put it first.
    fn replay_body(self, max_bytes: usize) -> ServiceBuilder<Stack<ReplayBodyLayer, L>>;

    /// Routes each request to a live endpoint of a service
    /// ([`DiscoveryLayer`]); inside retry.
    fn discovery<E, C, M>(
        self,
        layer: DiscoveryLayer<E, C, M>,
    ) -> ServiceBuilder<Stack<DiscoveryLayer<E, C, M>, L>>;

    /// A circuit breaker ([`CircuitBreakerLayer`]) around what follows: one
    /// address, or (as a `DiscoveryLayer` endpoint layer) one endpoint.
    fn circuit_breaker<C, M>(
        self,
        layer: CircuitBreakerLayer<C, M>,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer<C, M>, L>>;

    /// The whole ready-made stack of one service (retry, router, and per
    /// endpoint a breaker and a timeout), from [`Mesh::layer`](crate::Mesh::layer).
    fn mesh<C>(self, layer: MeshLayer<C>) -> ServiceBuilder<Stack<MeshLayer<C>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn retry<C>(self, layer: RetryLayer<C>) -> ServiceBuilder<Stack<RetryLayer<C>, L>> {
        self.layer(layer)
    }

    fn hedge<C>(self, layer: HedgeLayer<C>) -> ServiceBuilder<Stack<HedgeLayer<C>, L>> {
        self.layer(layer)
    }

    fn replay_body(self, max_bytes: usize) -> ServiceBuilder<Stack<ReplayBodyLayer, L>> {
        self.layer(ReplayBodyLayer::new(max_bytes))
    }

    fn discovery<E, C, M>(
        self,
        layer: DiscoveryLayer<E, C, M>,
    ) -> ServiceBuilder<Stack<DiscoveryLayer<E, C, M>, L>> {
        self.layer(layer)
    }

    fn circuit_breaker<C, M>(
        self,
        layer: CircuitBreakerLayer<C, M>,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer<C, M>, L>> {
        self.layer(layer)
    }

    fn mesh<C>(self, layer: MeshLayer<C>) -> ServiceBuilder<Stack<MeshLayer<C>, L>> {
        self.layer(layer)
    }
}
