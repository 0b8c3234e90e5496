//! The shared vocabulary of mesh.
//!
//! mesh is a service mesh inside the client process: a family of `tower`
//! layers (breaker, retry, balance, discovery, auth) that each do one job and
//! meet through the types in this crate instead of importing each other.
//!
//! - [`Outcome`] and [`Classify`](classify::Classify): what one call's result
//!   says about the server (success, failure, or nothing), whether another
//!   attempt is worth it, and what the server pushed back. Implemented for HTTP
//!   ([`HttpClassifier`](classify::HttpClassifier)), gRPC
//!   ([`GrpcClassifier`](classify::GrpcClassifier)) and closures.
//! - [`Backoff`](backoff::Backoff): exponential backoff with full or
//!   decorrelated jitter, fresh randomness for every session.
//! - [`Pushback`](pushback::Pushback): `Retry-After` and
//!   `grpc-retry-pushback-ms`, parsed defensively and clamped.
//! - [`eos`]: when a layer that records outcomes learns them: at the
//!   response, or at the end of its body (body errors, gRPC trailers).
//! - [`CallDeadline`]: a logical call's deadline, for the layers below retry.
//! - [`Endpoint`]: one instance of a service, cheap to clone.
//! - [`Target`] and [`NewEndpoint`]: what a router builds each endpoint's
//!   stack from (the endpoint, its health signal, the service name), in
//!   linkerd's `NewService<Target>` shape.
//! - [`Availability`]: an endpoint's health signal, which its breaker
//!   publishes and its balancer reads.
//! - [`TriedEndpoints`]: the endpoints a logical request already tried,
//!   carried in the request, written by the router, read by the balancer on a
//!   retry.
//! - [`Clock`](clock::Clock): `tokio::time::Instant` as nanoseconds, for
//!   statistics kept in atomics.
//! - [`InvalidConfig`](config::InvalidConfig): config errors that name each bad
//!   field by its path.
//!
//! # Example
//!
//! Classify a response and decide how long to wait before the next attempt:
//!
//! ```
//! use std::time::Duration;
//! use mesh_core::backoff::Backoff;
//! use mesh_core::classify::{Classify, HttpClassifier};
//! use mesh_core::BoxError;
//!
//! let classifier = HttpClassifier::default();
//! let backoff = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(5));
//! let mut session = backoff.session();
//!
//! let response: Result<_, BoxError> = Ok(http::Response::builder()
//!     .status(503)
//!     .header("retry-after", "1")
//!     .body(())
//!     .unwrap());
//!
//! let outcome = classifier.classify(&response);
//! if outcome.is_retryable() {
//!     // The server's pushback wins when it asks for longer than the backoff.
//!     let backoff_delay = session.next_delay();
//!     let delay = outcome
//!         .pushback()
//!         .and_then(|p| p.delay())
//!         .map_or(backoff_delay, |p| p.max(backoff_delay));
//!     assert!(delay >= Duration::from_secs(1));
//! }
//! ```
//!
//! # Features
//!
//! - `serde`: `Serialize`/`Deserialize` for the config types, durations in
//!   humantime form (`"250ms"`, `"30s"`).
//! - `reqwest`: [`HttpClassifier`](classify::HttpClassifier) classifies
//!   `reqwest::Response` and looks inside `reqwest::Error`.
//! - `hyper`: [`is_transient_error`](classify::is_transient_error) and
//!   [`is_unsent_error`](classify::is_unsent_error) recognise `hyper::Error`
//!   and hyper-util's client errors (connect failures, requests handed back
//!   unsent, connections closed early).
//! - `h2`: [`is_unsent_error`](classify::is_unsent_error) recognises HTTP/2
//!   streams the server refused unprocessed (`GOAWAY`, `REFUSED_STREAM`).
//!
//! No feature is on by default: with none, this crate compiles no HTTP client
//! or server (its dependencies are `http`, `http-body`, `tower`'s timeout,
//! `tokio`'s timers, `tracing` and a few small crates). mesh-stack turns on
//! `hyper`, `h2` and, with its own `reqwest` feature, `reqwest`.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod availability;
pub mod backoff;
pub mod classify;
pub mod clock;
pub mod config;
pub mod deadline;
pub mod endpoint;
pub mod eos;
pub mod log_limit;
mod outcome;
pub mod pushback;
pub mod stripe;
pub mod target;
mod tried;

pub use availability::{Availability, AvailabilityState};
pub use deadline::CallDeadline;
pub use endpoint::{Address, Endpoint, EndpointKey};
pub use outcome::{Failure, Outcome};
pub use target::{NewEndpoint, Target};
pub use tried::{AttemptError, ReportEndpoint, TriedEndpoint, TriedEndpoints};

/// The error type tower middleware passes around: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
