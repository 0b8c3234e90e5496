//! Safe, budgeted retries for HTTP and gRPC clients.
//!
//! # Why
//!
//! Retrying a failed call is the cheapest resilience there is, and the most
//! dangerous. Done naively it duplicates writes (a `POST` that timed out may
//! well have succeeded), multiplies the load on a service that is already
//! failing (every client retrying three times is four times the traffic),
//! ignores the server asking for time (`Retry-After`), and keeps going past
//! the point where the caller stopped caring. This crate retries only when it
//! is safe and useful:
//!
//! - **Only what the classifier marks retryable**: connection errors, 502,
//!   503, 504, 429, gRPC `UNAVAILABLE`, ... (`mesh_core::classify`).
//! - **Only idempotent requests** by default: `GET`, `HEAD`, `OPTIONS`, `PUT`,
//!   `DELETE`, `TRACE`, requests with an `Idempotency-Key` header, and gRPC
//!   methods marked idempotent in [`RetryConfig::idempotent_grpc_methods`].
//!   `POST` and `PATCH` only if [`RetryConfig::retry_non_idempotent`] is set.
//! - **Within a budget** shared by all clones ([`RetryBudget`]): at most 20 %
//!   of requests plus 10 per second, over 10 s; lock-free.
//! - **After a backoff** with jitter, fresh for each request, stretched by
//!   the server's pushback up to [`RetryConfig::max_pushback`]; a longer
//!   pushback ("not now") or a "do not retry" one stops at once, and the
//!   caller gets the server's response.
//! - **Before the deadline**: an optional overall deadline across attempts and
//!   a per-attempt timeout; no retry starts that cannot finish in time.
//! - **With the same body**: cloneable bodies are cloned without copying;
//!   streaming ones are buffered lazily up to a cap by [`ReplayBody`].
//!
//! # Requeues: failover that does not wait
//!
//! A failure that proves the request **never reached a server** is not a
//! retry's business: nobody processed it, so sending it again is safe for
//! any method, and nobody is overloaded by it, so there is nothing to back
//! off from. Such a request is *requeued* (Finagle's word): sent again at
//! once, to another endpoint (the tried-endpoints record steers the
//! router), `POST`s and gRPC calls included.
//!
//! - **Never sent** means, by default,
//!   [`is_unsent_error`](mesh_core::classify::is_unsent_error): a connection
//!   that could not be made (refused, or any hyper-util `Connect` error), a
//!   request hyper handed back unsent, an HTTP/2 stream the server refused
//!   unprocessed (`GOAWAY`, `REFUSED_STREAM`). mesh-stack adds the mesh's own
//!   refusals (no ready endpoint, an open breaker); set your own with
//!   [`RetryLayer::unsent_errors`]. A connection reset or closed after the
//!   request was written is **not** never-sent: the server may have acted on
//!   it, so it follows the retry rules above (a `POST` is not repeated).
//! - **Bounded** by [`RetryConfig::max_requeues`] (3 by default) per request
//!   and by the same budget as retries (each requeue withdraws a token): with
//!   every endpoint down, a call ends at once with the last connect error, or
//!   [`BudgetExhausted`] once the budget is spent; never after a backoff.
//! - **Counted apart**: [`RetryPolicy::stats`] (`requeues` beside
//!   `retries`), the `mesh_retry_requeues_total` counter, give-up reason
//!   [`GiveUp::MaxRequeues`]. Requeues do not use up `max_retries`.
//! - **Bodies**: the request is copied before its first attempt, whatever
//!   its method, when requeues are on. A cloneable body (`Full`, `Bytes`,
//!   `String`, ...) is shared, never copied. A streaming body must be a
//!   [`ReplayBody`]: one never read (a refused connect reads nothing) is
//!   requeued whole whatever its size; one that was partly streamed is
//!   replayed only up to `max_replay_body`, and past that the request is not
//!   requeued (give-up reason [`GiveUp::BodyNotReplayable`]). A body that can
//!   be neither cloned nor replayed is sent once.
//! - `max_requeues = 0` turns requeues off: never-sent failures are then
//!   treated like any other.
//!
//! Each retry or requeue carries an `x-mesh-attempt` header (2, 3, ...) and a shared
//! [`TriedEndpoints`](mesh_core::TriedEndpoints) record in its extensions,
//! which a discovery router fills and a balancer reads to send the retry to
//! another endpoint. The first attempt of a retryable request carries the
//! same record, so the router's first pick is in it: the record travels in
//! the request, and nothing is passed through thread-locals, so a `Buffer`
//! or a spawned task between retry and router loses nothing. A record the
//! caller put in the request is kept and shared by every attempt.
//!
//! The no-retry path (a retryable request that succeeds at once) takes no
//! lock; it allocates the tried-endpoints record and its slot in the
//! request's extensions (when tracking, the default) and nothing else. The
//! budget deposit is a plain load and store into the calling thread's
//! stripe of the budget (no atomic read-modify-write); the copy kept for a retry is not an `http::Request`
//! but its parts (`Bytes`-backed parts and bodies are shared, empty header
//! maps are neither built nor dropped), and it is made only when a retry is
//! possible (a retryable method, `max_retries > 0`). The first attempt cannot
//! go out without that copy: the inner service takes the request by value
//! and gives nothing back once it has tried to send it. What remains is the
//! copy, the shared policy's reference count (one increment, one
//! decrement) and the future's moves.
//!
//! # How
//!
//! [`RetryPolicy`] is a `tower::retry::Policy`, usable in plain
//! `tower::retry::Retry`. [`RetryLayer`] wraps the same policy in its own
//! service so that the deadline and per-attempt timeout can cut an attempt
//! short. When retries run out the last attempt's own response or error is
//! returned; [`BudgetExhausted`] and [`DeadlineExceeded`] replace an *error*
//! (keeping it as their `source`) when those were why retrying stopped.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use mesh_retry::{RetryConfig, RetryLayer};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let config = RetryConfig {
//!     max_retries: 2,
//!     deadline: Some(Duration::from_secs(5)),
//!     ..RetryConfig::default()
//! };
//! let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
//! let log = seen.clone();
//! let backend = tower::service_fn(move |req: http::Request<Full<Bytes>>| {
//!     let attempt = req.headers().get("x-mesh-attempt").cloned();
//!     let mut log = log.lock().unwrap();
//!     log.push(attempt);
//!     let status = if log.len() < 3 { 503 } else { 200 };
//!     async move { Ok::<_, std::io::Error>(http::Response::builder().status(status).body(()).unwrap()) }
//! });
//!
//! let mut client = ServiceBuilder::new()
//!     .layer(RetryLayer::new(config).unwrap())
//!     .service(backend);
//! let req = http::Request::get("http://users/42").body(Full::new(Bytes::new())).unwrap();
//! let res = client.ready().await.unwrap().call(req).await.unwrap();
//! assert_eq!(res.status(), 200);
//! // Two retries, each telling the server which attempt it is.
//! let seen = seen.lock().unwrap();
//! assert_eq!(seen.len(), 3);
//! assert_eq!(seen[0], None);
//! assert_eq!(seen[2].as_ref().unwrap(), "3");
//! # }
//! ```
//!
//! For streaming request bodies put a [`ReplayBodyLayer`] outside the retry
//! layer; for gRPC build the layer [`with_classifier`](RetryLayer::with_classifier)
//! `GrpcClassifier` and list the idempotent methods.
//!
//! # Features
//!
//! - `serde`: `Serialize`/`Deserialize` for [`RetryConfig`] (durations in
//!   humantime form).
//! - `metrics`: counters `mesh_retry_requests_total{service}`,
//!   `mesh_retry_retries_total{service, reason}`,
//!   `mesh_retry_requeues_total{service}`,
//!   `mesh_retry_budget_exhausted_total{service}`,
//!   `mesh_retry_give_ups_total{service, reason}`; `service` is the name
//!   given with [`RetryLayer::named`].
//!
//! [`HedgeLayer`] adds hedging: a second attempt of a slow idempotent request
//! after a fixed delay, first success wins, paid from the same budget.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod budget;
mod config;
mod copy;
mod error;
mod future;
pub mod hedge;
mod layer;
mod metrics;
mod policy;
mod replay;
mod service;

pub use body::{BodyInUse, ReplayBody, TryCloneBody};
pub use budget::RetryBudget;
pub use config::{BudgetConfig, DEFAULT_ATTEMPT_HEADER, DEFAULT_MAX_REPLAY_BODY, RetryConfig};
pub use error::{BudgetExhausted, DeadlineExceeded};
pub use future::ResponseFuture;
pub use hedge::{Hedge, HedgeFuture, HedgeLayer};
pub use layer::RetryLayer;
pub use policy::{AttemptHook, GiveUp, RetryPolicy, RetryStats, UnsentErrors};
pub use replay::{ReplayBodyLayer, WithReplayBody};
pub use service::RetryService;

// The mesh-core vocabulary this crate's API speaks, so a retry layer alone
// needs no direct mesh-core dependency.
pub use mesh_core::backoff::{Backoff, Jitter};
pub use mesh_core::classify::{
    Classify, ClassifyFn, DefaultHttpClassifier, GrpcClassifier, HttpClassifier, classify_fn,
};
pub use mesh_core::config::InvalidConfig;
pub use mesh_core::{BoxError, CallDeadline, Outcome};
