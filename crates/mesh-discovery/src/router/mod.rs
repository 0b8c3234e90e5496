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
//! - **Per-endpoint stacks from targets.** When an endpoint appears, its
//!   stack is built once, linkerd-style, by a
//!   [`NewEndpoint`](mesh_core::NewEndpoint) from the endpoint's
//!   [`Target`](mesh_core::Target): the endpoint, its health signal (an
//!   [`Availability`](mesh_core::Availability) the balancer reads) and the
//!   service name. A breaker built this way (mesh-breaker's
//!   `CircuitBreakerLayer` is a `NewEndpoint`) feeds that signal and is
//!   named `service/endpoint`; nothing reaches a stack through ambient
//!   state. Plain layers (a timeout) go in with
//!   [`endpoint_layer`](DiscoveryLayerBuilder::endpoint_layer). Stacks are
//!   dropped when their endpoint leaves and rebuilt when its address, tags
//!   or metadata change.
//! - **Rewrite.** The request's scheme and authority become the endpoint's
//!   (`http::Request`, with no allocation), or its URL's host and port
//!   (`reqwest::Request`). The `Host` header is kept unless
//!   configured otherwise ([`HostHeader`]). Each endpoint's authority is built
//!   once, when the endpoint arrives.
//! - **Pick: the balancer alone decides.** Breakers count and trip; the
//!   [`Balancer`](mesh_balance::Balancer) decides who gets traffic. It skips
//!   ejected endpoints (tripped breakers, success-rate outliers) but never
//!   more than `max_ejection_percent` of them and never the last one; past
//!   that cap the ejected ones keep taking traffic (panic mode, Envoy's
//!   semantics), so an outage of every endpoint costs the time the backends
//!   are down, not a breaker's open period. The router sends where the
//!   balancer picked, honouring the
//!   [`TriedEndpoints`](mesh_core::TriedEndpoints) record that retry puts in
//!   the request (the router records each endpoint it sends an attempt to,
//!   so a retry goes elsewhere, even through a `Buffer` or a spawned task).
//! - **An honest `poll_ready`.** It applies the source's newest set and is
//!   ready when a call can be routed now: the set has an endpoint with a
//!   weight above zero (by the cap, one is always routable then). With none,
//!   it is `Pending`, woken by the source's next update, for at most
//!   `ready_timeout` (default 1 s), and then fails with [`NoReadyEndpoint`],
//!   which says how many endpoints were known and how many were ejected.
//!   Nothing polls on a timer.
//! - **Readiness of the chosen stack** is asked when the call's future is
//!   first polled, with the caller's waker; a stack that stays not ready
//!   fails after the same bound ([`EndpointNotReady`]).
//! - **Churn.** After a removal is applied no new request goes to the
//!   endpoint; requests in flight complete.
//!
//! # Cost per call
//!
//! Cloning the service is one atomic increment. A call costs two
//! `ArcSwap` loads (the balancer's set and the stacks, which are kept in
//! the balancer's slot order so the picked endpoint's stack is found at its
//! slot without a lookup), the p2c pick and the record of its outcome (two
//! reads of `tokio::time::Instant`, one atomic increment and decrement, two
//! relaxed counter increments for the outlier detector), one clone of the
//! endpoint's stack, and the URI rewrite. The cost barely depends on the
//! number of endpoints. `BENCHMARKS.md` has the instruction counts.
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
