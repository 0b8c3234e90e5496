//! A circuit breaker for `tower` services.
//!
//! # Why a breaker
//!
//! When a server is down or drowning, every call sent to it waits for a
//! timeout, holds a connection and a task, and adds to the load that is
//! drowning it. A circuit breaker notices that an endpoint is failing and
//! stops sending to it for a while (*open*), so callers fail in nanoseconds
//! instead of seconds and the server gets room to recover. After the open
//! period it lets a few probe calls through (*half-open*); if they succeed it
//! closes, if one fails it opens again, for longer each time.
//!
//! # Why the window slides
//!
//! "Trip at a 50 % failure rate" needs a denominator: 50 % *of what*? A
//! window that only empties on a state change (as tower-resilience's count
//! window does) remembers a burst of failures from an hour ago and trips on
//! the next few; one that stores every call (its time window) costs memory
//! in proportion to traffic. Here the count window is the last N calls
//! exactly, kept as two bitsets with running counters, and the time window is
//! a ring of time buckets: O(1) per call, O(buckets) memory, and an old burst
//! leaves the window as soon as N newer calls (or the window's time) have
//! passed. The consecutive-failures policy (the seed's: 5 in a row) needs no
//! window at all. Policies combine: the breaker trips when any of them says so.
//! A slow-call policy treats calls over a latency threshold as a warning sign
//! too: a server at 30 s per call is as unavailable as one that fails.
//!
//! # Why probes are capped
//!
//! The moment a breaker half-opens is the moment every waiting caller rushes
//! in; if they all go through, the recovering server is hit by exactly the
//! wave that knocked it over (failsafe-rs, Polly and tower-resilience have all
//! had such stampede bugs). Here half-open admits at most
//! `half_open_max_calls` probes in flight across every clone of the service,
//! enforced with compare-exchange on permit slots. And because a probe can
//! hang forever, each permit expires after `probe_timeout`: a stuck probe
//! cannot wedge the breaker half-open (resilience4j and Polly both shipped
//! that bug).
//!
//! # Three ways to say "open"
//!
//! - [`OpenBehavior::FailFast`] (default): the call fails at once with a typed
//!   [`BreakerOpen`] error carrying the remaining open time.
//! - [`OpenBehavior::NotReady`]: `poll_ready` stays `Pending` until the open
//!   period ends (it wakes the task then, no background task involved).
//! - [`OpenBehavior::Report`]: the breaker never refuses; it counts, trips
//!   and publishes. What a breaker built for a router's endpoint does.
//!
//! Either way the breaker publishes its state through mesh-core's
//! [`Availability`], one atomic word.
//!
//! # Who decides what
//!
//! A standalone breaker (built with [`Layer::layer`](tower_layer::Layer::layer))
//! decides alone: it refuses calls while open. Inside the discovery router
//! the breaker is built per endpoint from the endpoint's
//! [`Target`] (through the layer's
//! [`NewEndpoint`](mesh_core::NewEndpoint) implementation): it **counts and
//! trips**, publishing into the target's health signal, and the **balancer
//! decides who gets traffic**: it skips tripped endpoints within its
//! ejection cap (`max_ejection_percent`, never the last endpoint) and, past
//! the cap, keeps sending to them (panic mode, as Envoy does) rather than
//! failing every call locally. An ejection lasts `recovery_timeout` times
//! the number of consecutive trips, capped at `max_open_time`.
//!
//! # Cost
//!
//! A call in the closed state takes no lock, allocates nothing, builds no
//! event unless a listener is registered, and with the consecutive or
//! count-window policies does not even write shared memory when it succeeds:
//! clones on different cores scale. Its future holds one reference to the
//! breaker (an atomic increment and decrement). A time window has to count
//! every call: it reads the clock once per call, finds the bucket without a
//! division, and counts into one of several stripes of buckets, so cores do
//! not fight over one counter.
//!
//! Open-time backoff uses mesh-core's [`Backoff`](mesh_core::backoff::Backoff)
//! (exponential, full jitter, capped at `max_open_time`), and server pushback
//! (`Retry-After`) longer than the open time extends it, up to
//! `max_open_time`.
//!
//! Every timing rule (windows, open periods, probe timeouts) follows
//! `tokio::time::Instant`, so tests drive the breaker with
//! `tokio::time::pause` and `advance`.
//!
//! # Example
//!
//! The seed's example: with a threshold of 2, two failures open the breaker
//! and the third call is refused without reaching the service.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use mesh_breaker::{BreakerConfig, BreakerOpen, CircuitBreakerLayer, CircuitState};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let hits = Arc::new(AtomicUsize::new(0));
//! let counter = hits.clone();
//! let backend = tower::service_fn(move |_req: http::Request<()>| {
//!     counter.fetch_add(1, Ordering::SeqCst);
//!     async { Ok::<_, std::io::Error>(http::Response::builder().status(503).body(()).unwrap()) }
//! });
//!
//! let config = BreakerConfig { consecutive_failures: Some(2), ..BreakerConfig::default() };
//! let mut client = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(config).unwrap())
//!     .service(backend);
//! let breaker = client.handle();
//!
//! for _ in 0..2 {
//!     let response = client.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//!     assert_eq!(response.status(), 503);
//! }
//! assert_eq!(breaker.state(), CircuitState::Open);
//!
//! let error = client.ready().await.unwrap().call(http::Request::new(())).await.unwrap_err();
//! let open = error.downcast_ref::<BreakerOpen>().unwrap();
//! assert!(open.remaining().unwrap().as_secs() > 50);
//! assert_eq!(hits.load(Ordering::SeqCst), 2);
//! assert!(!client.availability().is_available());
//! # }
//! ```
//!
//! # Features
//!
//! - `serde`: `Serialize`/`Deserialize` for [`BreakerConfig`], durations in
//!   humantime form (`"30s"`).
//! - `metrics`: counters and one state gauge per state through the
//!   `metrics` facade, labelled by `service` and, inside a router, by the
//!   endpoint's address (see the `metrics` module docs for names and labels).

#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
mod events;
mod future;
mod handle;
mod layer;
#[cfg(feature = "metrics")]
pub mod metrics;
mod service;
mod state;
#[cfg(test)]
mod tests;
mod window;

pub use config::{
    BreakerConfig, MAX_CONSECUTIVE_FAILURES, MAX_HALF_OPEN_CALLS, MAX_OPEN_BACKOFF_MULTIPLIER,
    MAX_OPEN_TIME, MAX_WINDOW_BUCKETS, MAX_WINDOW_CALLS, OpenBehavior, SlowCallConfig,
    WindowConfig, WindowKind,
};
pub use error::BreakerOpen;
pub use events::{BreakerEvent, TransitionReason};
pub use future::{BreakerRecorder, ResponseFuture};
pub use handle::{CircuitBreakerHandle, WeakBreakerHandle};
pub use layer::CircuitBreakerLayer;
pub use service::CircuitBreaker;
pub use state::CircuitState;

// The mesh-core vocabulary this crate's API speaks, so a breaker alone needs
// no direct mesh-core dependency (for a non-HTTP service: `classify_fn`).
pub use mesh_core::classify::{
    Classify, ClassifyFn, DefaultHttpClassifier, GrpcClassifier, HttpClassifier, classify_fn,
};
pub use mesh_core::config::InvalidConfig;
pub use mesh_core::eos::{AtEndOfStream, AtResponse};
pub use mesh_core::{Availability, AvailabilityState, BoxError, Outcome, Target};
