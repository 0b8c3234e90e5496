//! Golden metrics of each service (feature `metrics`): logical calls and
//! attempts by outcome class and status class, their latency, and the
//! calls in flight.
//!
//! The ready-made stack wraps its retry layer in an [`Observe`] (one per
//! logical call) and the router below it in another (one per attempt), so
//! a call retried twice counts one request and three attempts:
//!
//! ```text
//! Observe(call) -> retry -> Observe(attempt) -> router -> endpoint stacks
//! ```
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `mesh_requests_total` | counter | `service`, `outcome`, `status_class` |
//! | `mesh_request_duration_seconds` | histogram | `service` |
//! | `mesh_requests_in_flight` | gauge | `service` |
//! | `mesh_attempts_total` | counter | `service`, `outcome`, `status_class` |
//! | `mesh_attempt_duration_seconds` | histogram | `service` |
//!
//! `outcome` is one of `success` (a response below 500), `failure` (a 5xx
//! response or an error), `timeout` (the attempt timeout or the deadline),
//! `rejected_open` (an open breaker refused it), `no_endpoint` (no endpoint
//! could take it) and `budget_exhausted` (a retry was needed and the budget
//! refused it); `status_class` is `1xx` .. `5xx`, or `none` when no
//! response came. Only the ten combinations that can happen are series:
//! cardinality is services × 10 per counter. Durations run from the call to
//! the response headers (a streamed body is not waited for), in seconds.
//!
//! Handles are registered when the stack is built, with the recorder in
//! effect then, and each call costs a few increments on them. Without the
//! `metrics` feature the wrappers are empty and forward every call as is.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use mesh_core::BoxError;
use pin_project_lite::pin_project;
use tower_service::Service;

/// Outcome classes, the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutcomeClass {
    /// A response below 500.
    Success,
    /// A 5xx response, or an error of another kind.
    Failure,
    /// The attempt timeout or the call's deadline ran out.
    Timeout,
    /// An open breaker refused the call.
    RejectedOpen,
    /// No endpoint could take the call.
    NoEndpoint,
    /// A retry was needed and the retry budget refused it.
    BudgetExhausted,
}

impl OutcomeClass {
    /// The `outcome` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Timeout => "timeout",
            Self::RejectedOpen => "rejected_open",
            Self::NoEndpoint => "no_endpoint",
            Self::BudgetExhausted => "budget_exhausted",
        }
    }

    /// The class of an error that ended a call or an attempt: the first
    /// error of its source chain that the mesh knows.
    pub fn of_error(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut next = Some(error);
        while let Some(e) = next {
            if e.is::<mesh_retry::BudgetExhausted>() {
                return Self::BudgetExhausted;
            }
            if e.is::<mesh_retry::DeadlineExceeded>()
                || e.is::<crate::AttemptTimedOut>()
                || e.is::<tower::timeout::error::Elapsed>()
            {
                return Self::Timeout;
            }
            if e.is::<mesh_breaker::BreakerOpen>() {
                return Self::RejectedOpen;
            }
            if e.is::<mesh_discovery::router::NoReadyEndpoint>()
                || e.is::<mesh_discovery::router::EndpointNotReady>()
            {
                return Self::NoEndpoint;
            }
            next = e.source();
        }
        Self::Failure
    }
}

impl fmt::Display for OutcomeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which golden metrics an [`Observe`] records: per logical call or per
/// attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Call,
    Attempt,
}

/// The ten (outcome, status class) series that can happen.
#[cfg(feature = "metrics")]
const SERIES: [(OutcomeClass, &str); 10] = [
    (OutcomeClass::Success, "1xx"),
    (OutcomeClass::Success, "2xx"),
    (OutcomeClass::Success, "3xx"),
    (OutcomeClass::Success, "4xx"),
    (OutcomeClass::Failure, "5xx"),
    (OutcomeClass::Failure, "none"),
    (OutcomeClass::Timeout, "none"),
    (OutcomeClass::RejectedOpen, "none"),
    (OutcomeClass::NoEndpoint, "none"),
    (OutcomeClass::BudgetExhausted, "none"),
];

#[cfg(feature = "metrics")]
struct Handles {
    /// By index into [`SERIES`].
    total: [metrics::Counter; 10],
    duration: metrics::Histogram,
    in_flight: Option<metrics::Gauge>,
}

#[cfg(feature = "metrics")]
impl Handles {
    fn new(service: &str, level: Level) -> Self {
        let (total, duration) = match level {
            Level::Call => ("mesh_requests_total", "mesh_request_duration_seconds"),
            Level::Attempt => ("mesh_attempts_total", "mesh_attempt_duration_seconds"),
        };
        let s = || service.to_owned();
        Self {
            total: SERIES.map(|(outcome, class)| {
                metrics::counter!(total, "service" => s(), "outcome" => outcome.as_str(), "status_class" => class)
            }),
            duration: metrics::histogram!(duration, "service" => s()),
            in_flight: (level == Level::Call)
                .then(|| metrics::gauge!("mesh_requests_in_flight", "service" => s())),
        }
    }

    fn record_response(&self, status: u16, seconds: f64) {
        let i = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.total[i].increment(1);
        self.duration.record(seconds);
    }

    fn record_error(&self, class: OutcomeClass, seconds: f64) {
        let i = match class {
            OutcomeClass::Success | OutcomeClass::Failure => 5,
            OutcomeClass::Timeout => 6,
            OutcomeClass::RejectedOpen => 7,
            OutcomeClass::NoEndpoint => 8,
            OutcomeClass::BudgetExhausted => 9,
        };
        self.total[i].increment(1);
        self.duration.record(seconds);
    }
}

/// Records the golden metrics of the calls (or attempts) through `S`.
/// Built by the ready-made stacks; `Clone` (one `Arc`), errors passed
/// through untouched. See the [module docs](self).
pub struct Observe<S> {
    inner: S,
    #[cfg(feature = "metrics")]
    handles: std::sync::Arc<Handles>,
}

impl<S> Observe<S> {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(inner: S, service: &str, level: Level) -> Self {
        Self {
            inner,
            #[cfg(feature = "metrics")]
            handles: std::sync::Arc::new(Handles::new(service, level)),
        }
    }

    /// The wrapped service.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, by value.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<R, C> Observe<mesh_retry::RetryService<Observe<R>, C>> {
    /// The router under the retry layer (what `RetryService::get_ref`
    /// returned before the stack recorded golden metrics).
    pub fn get_ref(&self) -> &R {
        &self.inner.get_ref().inner
    }

    /// The retry layer's policy (its budget and counts).
    pub fn policy(&self) -> &mesh_retry::RetryPolicy<C> {
        self.inner.policy()
    }

    /// The retry service.
    pub fn retry(&self) -> &mesh_retry::RetryService<Observe<R>, C> {
        &self.inner
    }
}

impl<S: Clone> Clone for Observe<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            #[cfg(feature = "metrics")]
            handles: std::sync::Arc::clone(&self.handles),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Observe<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req, B> Service<Req> for Observe<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = ObserveFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        #[cfg(feature = "metrics")]
        if let Some(g) = &self.handles.in_flight {
            g.increment(1.0);
        }
        ObserveFuture {
            inner: self.inner.call(req),
            #[cfg(feature = "metrics")]
            record: Some(Record {
                handles: std::sync::Arc::clone(&self.handles),
                start: tokio::time::Instant::now(),
            }),
            #[cfg(not(feature = "metrics"))]
            record: None,
        }
    }
}

/// Without the `metrics` feature: nothing to record.
#[cfg(not(feature = "metrics"))]
struct Record;

/// What an [`ObserveFuture`] records when it ends (or is dropped).
#[cfg(feature = "metrics")]
struct Record {
    handles: std::sync::Arc<Handles>,
    start: tokio::time::Instant,
}

#[cfg(feature = "metrics")]
impl Drop for Record {
    fn drop(&mut self) {
        if let Some(g) = &self.handles.in_flight {
            g.decrement(1.0);
        }
    }
}

pin_project! {
    /// The future of an [`Observe`]: the inner future, then the record.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
    }
}

impl<F, B, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx)).map_err(Into::into);
        #[cfg(not(feature = "metrics"))]
        let _ = this.record;
        #[cfg(feature = "metrics")]
        if let Some(record) = this.record.take() {
            let seconds = record.start.elapsed().as_secs_f64();
            match &result {
                Ok(response) => record
                    .handles
                    .record_response(response.status().as_u16(), seconds),
                Err(e) => record
                    .handles
                    .record_error(OutcomeClass::of_error(&**e), seconds),
            }
        }
        Poll::Ready(result)
    }
}

impl<F> fmt::Debug for ObserveFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ObserveFuture(..)")
    }
}
