//! The ready-made mesh client stack.
//!
//! # Why
//!
//! Each mesh crate does one thing: `mesh-retry` retries, `mesh-breaker`
//! ejects failing endpoints, `mesh-balance` chooses, `mesh-discovery` finds
//! endpoints and routes to them. A program calling a service wants all of
//! them, in the right order, configured from one file, without learning five
//! crates first. This crate is that: a [`MeshConfig`] (serde, TOML/YAML/JSON,
//! humantime durations, a `validate()` that names every bad field by its
//! full path), a [`Mesh`] that turns it into one `Clone` client [`Service`]
//! per logical service over the HTTP client you already use, and a
//! [`ServiceBuilderExt`] for those who compose tower layers by hand.
//!
//! # The request path
//!
//! Outermost first:
//!
//! ```text
//! retry (budget, backoff + jitter, Retry-After, deadline)
//!   -> discovery router (p2c peak-EWMA over live endpoints)
//!      -> per endpoint: breaker (reports) -> attempt timeout -> rewrite
//!         -> inner client (hyper-util, reqwest, tonic's HTTP/2)
//! ```
//!
//! A retry goes to another endpoint than the one that just failed; a service
//! with no endpoint fails with `NoReadyEndpoint` after `ready_timeout`.
//!
//! # Who decides what
//!
//! Each endpoint's breaker, built from the endpoint's target, **counts and
//! trips**: it publishes its state into the endpoint's health signal and
//! never refuses a call. The **balancer decides who gets traffic**: it
//! ejects tripped endpoints and success-rate outliers (gray failures), never
//! more than `balance.max_ejection_percent` (50 %) and never the last
//! endpoint; past the cap the ejected ones take traffic again (panic mode),
//! so an outage of every endpoint lasts as long as the backends are down,
//! not a breaker's open period. An ejection lasts `breaker.recovery_timeout`
//! times the endpoint's consecutive ejections, capped at
//! `breaker.max_open_time`.
//!
//! # Limits over the whole response, outcomes at its end
//!
//! `attempt_timeout` and `retry.deadline` bound the response *body* as well
//! as the headers: a body still running when one fires yields
//! [`AttemptTimedOut`] or [`DeadlineExceeded`].
//! The breaker and the balancer record a response that looks successful when
//! its body ends ([`mesh_core::eos`]): a broken or timed-out body, or gRPC
//! trailers with an error status, are the endpoint's failure, and the
//! balancer's latency is the time to the end of the body, what the caller
//! waited. A service whose responses stream for long sets `streaming = true`:
//! its limits end at the headers. Retries are decided at the headers: a
//! response already returned is never sent again.
//!
//! # Example
//!
//! ```
//! use mesh_stack::{Mesh, MeshConfig, ServiceConfig};
//! use mesh_stack::core::Endpoint;
//! use tower::{Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), mesh_stack::core::BoxError> {
//! let config = MeshConfig::new().service(
//!     "users",
//!     ServiceConfig::with_static([Endpoint::from_address("127.0.0.1:8081".parse()?)]),
//! );
//! let mesh = Mesh::new(config)?;
//!
//! // Any Service<http::Request<B>> is an inner client: hyper-util's legacy
//! // client, reqwest (`reqwest_client`), tonic's HTTP/2 (`grpc_client`).
//! let inner = tower::service_fn(|req: http::Request<String>| async move {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(req.uri().to_string()))
//! });
//! let mut users = mesh.http_client("users", inner)?;
//! let response = users
//!     .ready()
//!     .await?
//!     .call(http::Request::get("http://users/profile/7").body(String::new())?)
//!     .await?;
//! // The body is read through the stack: its time limit and the outcome
//! // the breaker and balancer record run until it ends.
//! let body = http_body_util::BodyExt::collect(response.into_body()).await?;
//! assert_eq!(body.to_bytes(), "http://127.0.0.1:8081/profile/7");
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `serde` (default): `MeshConfig` Serialize/Deserialize.
//! - `toml`, `yaml`, `json`: parsers for the config formats.
//! - `hyper`: [`Mesh::hyper_client`] and [`inner`]: hyper-util's client built
//!   with `TCP_NODELAY` and a bounded idle pool, over [`connector`]'s
//!   `MeshConnector` (mTLS with `[tls]`, each endpoint's identity checked).
//! - `tonic` (implies `hyper`): [`Mesh::grpc_channel`] for generated tonic
//!   clients, and [`GrpcStatusLayer`]: mesh errors become the `tonic::Status`
//!   tonic would use (`Unavailable`, `DeadlineExceeded`).
//! - `reqwest`: [`Mesh::reqwest_client`].
//! - `reqwest-middleware` (implies `reqwest`): [`Mesh::reqwest_middleware`],
//!   the mesh as a `reqwest_middleware::Middleware`.
//! - `metrics`: the layers' counters and gauges through the `metrics` facade
//!   (labelled by service, endpoint address, outcome and state; never
//!   request data), and each service's golden metrics: requests and
//!   attempts by outcome and status class, their latency, calls in flight
//!   ([`observe`]). See the README's "Metrics and admin" section.
//! - `spans`: an INFO span per logical call and per attempt (`spans`
//!   module), for `tracing` subscribers and `tracing-opentelemetry`.
//!
//! [`Service`]: tower_service::Service

pub mod admin;
pub mod builder;
pub mod config;
#[cfg(feature = "hyper")]
pub mod connector;
pub mod endpoint;
#[cfg(feature = "tonic")]
pub mod grpc;
#[cfg(feature = "hyper")]
pub mod inner;
pub mod mesh;
#[cfg(feature = "reqwest-middleware")]
pub mod middleware;
pub mod observe;
#[cfg(feature = "reqwest")]
pub mod reqwest;
pub mod security;
#[cfg(feature = "spans")]
pub mod spans;
pub mod timeout;

pub use builder::ServiceBuilderExt;
pub use config::{ConfigError, ConsulSourceConfig, DiscoveryConfig, MeshConfig, ServiceConfig};
pub use endpoint::EndpointLayer;
pub use mesh::{
    GrpcMeshService, Mesh, MeshBuilder, MeshError, MeshLayer, MeshService, is_unsent_error,
};
pub use observe::{Observe, OutcomeClass};
pub use security::{
    CredentialsLayer, MeshTlsConfig, ServerAuthorize, ServerSecurityConfig, ServerSecurityLayer,
    ServiceApiKeyConfig,
};
pub use timeout::{AttemptTimedOut, AttemptTimeout, TimedBody};

#[cfg(feature = "tonic")]
pub use grpc::{GrpcChannel, GrpcStatus, GrpcStatusLayer};
#[cfg(feature = "reqwest-middleware")]
pub use middleware::MeshMiddleware;

// The layers and their configs, so that `mesh-stack` alone is enough.
pub use mesh_balance::{BalanceConfig, Strategy};
pub use mesh_breaker::{
    BreakerConfig, BreakerOpen, CircuitBreakerLayer, CircuitState, OpenBehavior, WindowConfig,
};
pub use mesh_discovery::router::{DiscoveryLayer, EndpointNotReady, NoReadyEndpoint, RouterConfig};
pub use mesh_retry::{
    BudgetExhausted, DeadlineExceeded, ReplayBodyLayer, RetryConfig, RetryLayer, RetryPolicy,
    RetryStats,
};

/// `mesh-auth`: mTLS, API keys and authorization.
pub use mesh_auth as auth;
/// `mesh-balance`: endpoint choice strategies.
pub use mesh_balance as balance;
/// `mesh-breaker`: the circuit breaker.
pub use mesh_breaker as breaker;
/// `mesh-core`: classifiers, backoff, endpoints, config errors.
pub use mesh_core as core;
/// `mesh-discovery`: sources (static, Consul, channel) and the router.
pub use mesh_discovery as discovery;
/// `mesh-retry`: retries, budgets, hedging.
pub use mesh_retry as retry;

// The workspace README's Rust examples, compiled as doctests (`cargo test -p
// mesh-stack --all-features --doc`): this crate's dependencies cover them.
// Only under `doctest`, so the packaged crate never reads the file.
#[cfg(all(
    doctest,
    feature = "toml",
    feature = "tonic",
    feature = "reqwest-middleware",
    feature = "admin",
    feature = "dns"
))]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
