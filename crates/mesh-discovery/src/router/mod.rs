//! Routing each request to a live, healthy endpoint: [`DiscoveryLayer`].
//!
//! # Why a router, and why this shape
//!
//! A client that talks to an *address* fails when that instance fails. A
//! client that talks to a *service* needs three things on every request: the
//! current set of instances (a discovery source), a choice among the healthy
//! ones (a balancer), and a way to send the request there. tower has the
//! pieces, but its `Balance` is not `Clone`, so every tower user puts it
//! behind a `Buffer`: a task, a channel, and a hop through it for every
//! request. This router is `Clone` without a buffer: clones share one endpoint
//! table (an `ArcSwap` snapshot) and one [`Balancer`](mesh_balance::Balancer)
//! whose picks take no lock.
//!
//! - **Per-endpoint stacks.** When an endpoint appears, its stack is built
//!   once, linkerd-style: your per-endpoint layer (a breaker in readiness mode,
//!   a per-attempt timeout) over a [`Rewrite`] of the shared inner client. The
//!   stack is built inside the endpoint's
//!   [`Availability`](mesh_core::Availability) scope, so a breaker in it
//!   publishes "skip me" straight to the balancer, which then routes around
//!   the endpoint without polling it. Stacks are dropped when their endpoint
//!   leaves and rebuilt when its address, tags or metadata change.
//! - **Rewrite.** The request's scheme and authority become the endpoint's
//!   (`http::Request`, with no allocation), or its URL's host and port
//!   (`reqwest::Request`). The `Host` header is kept unless
//!   configured otherwise ([`HostHeader`]). Each endpoint's authority is built
//!   once, when the endpoint arrives.
//! - **Pick.** The balancer's strategy, honouring availability, weights, slow
//!   start and the [`TriedEndpoints`](mesh_core::TriedEndpoints) record that
//!   retry puts in the request (the router records each endpoint it sends an
//!   attempt to, so a retry goes elsewhere).
//! - **Bounded waits, or none.** With no endpoint to choose, a request waits
//!   for one at most `ready_timeout` (default 1 s), then fails with
//!   [`NoReadyEndpoint`], which says how many endpoints were known and how
//!   many were ejected. It waits only while waiting can help: when every
//!   known endpoint is unavailable past that wait (all breakers open, say),
//!   it fails at once, with no network hop. A chosen endpoint whose stack
//!   stays not-ready fails after the same bound ([`EndpointNotReady`]).
//!   Nothing hangs.
//! - **Churn.** The source's newest set is applied by the next request that
//!   sees it changed (one atomic load when nothing changed; no background
//!   task). After a removal is applied no new request goes to the endpoint;
//!   requests in flight complete.
//!
//! `poll_ready` is always ready: readiness belongs to each endpoint, and a
//! router that reported "not ready" because one endpoint was would stall the
//! healthy ones. `call` asks the chosen endpoint's stack whether it is ready
//! (with a no-op waker) and, when it is (the usual case), sends the request
//! at once, so the returned future holds only the stack's response future;
//! a stack that is not ready is asked again, with the caller's waker, when
//! the future is polled.
//!
//! # Cost per call
//!
//! Cloning the service is one atomic increment. A handle that keeps calling
//! caches its views of the balancer's set ([`Picker`](mesh_balance::Picker))
//! and of the stacks from its second call on, and checks them with one plain
//! atomic load each; a handle used for one call (a caller that clones the
//! client per request, or the clone a retry keeps) reads the shared state
//! instead, and never pays for caches it would drop at once. The stacks are kept in the
//! balancer's slot order, so the picked endpoint's stack is found at its
//! slot without a lookup. What remains: the p2c pick and the record of its
//! outcome (two reads of the CPU's time-stamp counter, see
//! [`Clock::for_latency`](mesh_core::clock::Clock::for_latency), and one
//! atomic increment and decrement), one clone of the endpoint's stack (an
//! atomic increment and decrement for [`Rewrite`]), and the URI rewrite. The
//! cost barely depends on the number of endpoints.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mesh_core::Endpoint;
//! use mesh_discovery::StaticSource;
//! use mesh_discovery::router::DiscoveryLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mesh_core::BoxError> {
//! let discovery = StaticSource::new([
//!     Endpoint::from_address("127.0.0.1:8081".parse()?),
//!     Endpoint::from_address("127.0.0.1:8082".parse()?),
//! ])
//! .discovery();
//!
//! // Any Service<http::Request<B>> is an inner client; this one echoes the URI.
//! let client = tower::service_fn(|req: http::Request<()>| async move {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(req.uri().to_string()))
//! });
//!
//! let mut users = ServiceBuilder::new()
//!     .layer(
//!         DiscoveryLayer::builder(discovery)
//!             .endpoint_layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(2)))
//!             .build()?,
//!     )
//!     .service(client);
//!
//! let req = http::Request::get("http://users/profile/7").body(())?;
//! let resp = users.ready().await?.call(req).await?;
//! assert!(resp.body().starts_with("http://127.0.0.1:808"));
//! assert!(resp.body().ends_with("/profile/7"));
//! # Ok(())
//! # }
//! ```

mod error;
mod future;
mod layer;
mod rewrite;
mod service;

pub use self::error::{EndpointNotReady, NoReadyEndpoint};
pub use self::future::ResponseFuture;
pub use self::layer::{DEFAULT_READY_TIMEOUT, DiscoveryLayer, DiscoveryLayerBuilder, RouterConfig};
pub use self::rewrite::{EndpointTarget, HostHeader, Rewrite, RewriteFuture, RewriteTarget};
pub use self::service::DiscoveryService;

#[cfg(test)]
mod tests;
