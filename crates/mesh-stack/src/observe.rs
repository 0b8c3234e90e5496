//! Golden metrics of each service (feature `metrics`): logical calls and
//! attempts by outcome class and status class, their latency, and the
//! calls in flight.
//!
//! The ready-made stack wraps its retry layer in an [`Observe`] (one per
//! logical call) and counts each attempt with the retry layer's
//! [`on_attempt`](mesh_retry::RetryLayer::on_attempt) hook (no layer, no
//! clock read of its own), so a call retried twice counts one request and
//! three attempts:
//!
//! ```text
//! Observe(call) -> retry (counts attempts) -> router -> endpoint stacks
//! ```
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `mesh_requests_total` | counter | `service`, `outcome`, `status_class` |
//! | `mesh_request_duration_seconds` | histogram | `service` |
//! | `mesh_requests_in_flight` | gauge | `service` |
//! | `mesh_attempts_total` | counter | `service`, `outcome`, `status_class` |
//! | `mesh_attempt_duration_seconds` | histogram | `service` (recorded by the balancer) |
//!
//! `outcome` is one of `success` (a response below 500), `failure` (a 5xx
//! response or an error), `timeout` (the attempt timeout or the deadline),
//! `rejected_open` (an open breaker refused it), `no_endpoint` (no endpoint
//! could take it) and `budget_exhausted` (a retry was needed and the budget
//! refused it); `status_class` is `1xx` .. `5xx`, or `none` when no
//! response came. Only the ten combinations that can happen are series:
//! cardinality is services × 10 per counter. Call durations run from the
//! call to the response headers (a streamed body is not waited for), in
//! seconds. Attempt durations are recorded by the balancer (mesh-balance),
//! which reads the clock for its latency estimate anyway: to the end of the
//! response body, and only under the default strategy, p2c peak-EWMA (the
//! others never read the clock).
//!
//! Handles are registered when the stack is built, with the recorder in
//! effect then, and each call costs a few increments on them. Without the
//! `metrics` feature the wrappers record no metrics.
//!
//! # Spans
//!
//! With the feature `spans`, each logical call runs in an INFO span
//! `mesh.call` (fields `service`, `method`, and `outcome` when it ends, one
//! of the classes above), and each attempt in an INFO span `mesh.attempt`
//! inside it (fields `service`, `endpoint`, the endpoint's address, and
//! `attempt`, 1 for the first). Both cover the call to its response
//! headers. With no subscriber, or one that filters them out
//! (`mesh_stack=warn`), a span is a disabled handle: no allocation, no
//! field formatted. `tracing-opentelemetry` turns them into OpenTelemetry
//! spans. See the `spans` module (feature `spans`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::sync::Arc;

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

/// Which golden metrics a set of handles records: per logical call (an
/// [`Observe`]) or per attempt (the retry layer's hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Call,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
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
    /// Calls only: attempts are timed by the balancer, which reads the
    /// clock for its latency estimate anyway (two clock reads per attempt
    /// saved).
    timing: Option<Timing>,
}

#[cfg(feature = "metrics")]
struct Timing {
    duration: metrics::Histogram,
    in_flight: metrics::Gauge,
}

#[cfg(feature = "metrics")]
impl Handles {
    fn new(service: &str, level: Level) -> Self {
        let total = match level {
            Level::Call => "mesh_requests_total",
            Level::Attempt => "mesh_attempts_total",
        };
        let s = || service.to_owned();
        Self {
            total: SERIES.map(|(outcome, class)| {
                metrics::counter!(total, "service" => s(), "outcome" => outcome.as_str(), "status_class" => class)
            }),
            timing: (level == Level::Call).then(|| Timing {
                duration: metrics::histogram!("mesh_request_duration_seconds", "service" => s()),
                in_flight: metrics::gauge!("mesh_requests_in_flight", "service" => s()),
            }),
        }
    }

    fn record_response(&self, status: u16, start: Option<tokio::time::Instant>) {
        let i = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.total[i].increment(1);
        self.time(start);
    }

    fn time(&self, start: Option<tokio::time::Instant>) {
        if let (Some(t), Some(start)) = (&self.timing, start) {
            t.duration.record(start.elapsed().as_secs_f64());
        }
    }

    fn record_error(&self, class: OutcomeClass, start: Option<tokio::time::Instant>) {
        let i = match class {
            OutcomeClass::Success | OutcomeClass::Failure => 5,
            OutcomeClass::Timeout => 6,
            OutcomeClass::RejectedOpen => 7,
            OutcomeClass::NoEndpoint => 8,
            OutcomeClass::BudgetExhausted => 9,
        };
        self.total[i].increment(1);
        self.time(start);
    }
}

/// Records the golden metrics of the calls (or attempts) through `S`.
/// Built by the ready-made stacks; `Clone` (one `Arc`), errors passed
/// through untouched. See the [module docs](self).
pub struct Observe<S> {
    inner: S,
    #[cfg(feature = "spans")]
    service: Arc<str>,
    #[cfg(feature = "metrics")]
    handles: Arc<Handles>,
}

impl<S> Observe<S> {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(inner: S, service: &Arc<str>, level: Level) -> Self {
        Self {
            inner,
            #[cfg(feature = "spans")]
            service: Arc::clone(service),
            #[cfg(feature = "metrics")]
            handles: Arc::new(Handles::new(service, level)),
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

impl<R, C> Observe<mesh_retry::RetryService<R, C>> {
    /// The router under the retry layer (what `RetryService::get_ref`
    /// returned before the stack recorded golden metrics).
    pub fn get_ref(&self) -> &R {
        self.inner.get_ref()
    }

    /// The retry layer's policy (its budget and counts).
    pub fn policy(&self) -> &mesh_retry::RetryPolicy<C> {
        self.inner.policy()
    }
}

/// The hook that counts a service's attempts (`mesh_attempts_total`), for
/// [`mesh_retry::RetryLayer::on_attempt`]; `None` without the `metrics`
/// feature.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn attempt_hook(service: &str) -> Option<mesh_retry::AttemptHook> {
    #[cfg(feature = "metrics")]
    {
        let handles = Handles::new(service, Level::Attempt);
        Some(Arc::new(move |result| match result {
            Ok(status) => handles.record_response(status.as_u16(), None),
            Err(e) => handles.record_error(OutcomeClass::of_error(e), None),
        }))
    }
    #[cfg(not(feature = "metrics"))]
    None
}

impl<S: Clone> Clone for Observe<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            #[cfg(feature = "spans")]
            service: Arc::clone(&self.service),
            #[cfg(feature = "metrics")]
            handles: Arc::clone(&self.handles),
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

impl<S, ReqBody, B> Service<http::Request<ReqBody>> for Observe<S>
where
    S: Service<http::Request<ReqBody>, Response = Response<B>>,
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
    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        #[cfg(feature = "spans")]
        let span = tracing::info_span!(
            "mesh.call",
            service = &*self.service,
            method = %req.method(),
            outcome = tracing::field::Empty,
        );
        #[cfg(feature = "metrics")]
        let start = self.handles.timing.as_ref().map(|t| {
            t.in_flight.increment(1.0);
            tokio::time::Instant::now()
        });
        #[cfg(feature = "spans")]
        let (inner, span) = if span.is_disabled() {
            (self.inner.call(req), None)
        } else {
            (span.in_scope(|| self.inner.call(req)), Some(Box::new(span)))
        };
        #[cfg(not(feature = "spans"))]
        let (inner, span) = (self.inner.call(req), ());
        ObserveFuture {
            inner,
            span,
            #[cfg(feature = "metrics")]
            record: Some(Record {
                handles: Arc::clone(&self.handles),
                start,
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
    handles: Arc<Handles>,
    start: Option<tokio::time::Instant>,
}

#[cfg(feature = "metrics")]
impl Drop for Record {
    fn drop(&mut self) {
        if let Some(t) = &self.handles.timing {
            t.in_flight.decrement(1.0);
        }
    }
}

/// The call's span: boxed, and only when a subscriber listens, so the
/// future is one word larger, not a `Span` larger (feature `spans`).
#[cfg(feature = "spans")]
type CallSpan = Option<Box<tracing::Span>>;
#[cfg(not(feature = "spans"))]
type CallSpan = ();

pin_project! {
    /// The future of an [`Observe`]: the inner future, then the record.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        span: CallSpan,
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
        #[cfg(feature = "spans")]
        let result = {
            let _entered = this.span.as_ref().map(|span| span.enter());
            ready!(this.inner.poll(cx)).map_err(Into::into)
        };
        #[cfg(not(feature = "spans"))]
        let result = {
            let _ = this.span;
            ready!(this.inner.poll(cx)).map_err(Into::into)
        };
        #[cfg(feature = "spans")]
        if let Some(span) = this.span.take() {
            let outcome = match &result {
                Ok(response) if response.status().is_server_error() => OutcomeClass::Failure,
                Ok(_) => OutcomeClass::Success,
                Err(e) => OutcomeClass::of_error(&**e),
            };
            span.record("outcome", outcome.as_str());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = this.record;
        #[cfg(feature = "metrics")]
        if let Some(record) = this.record.take() {
            match &result {
                Ok(response) => record
                    .handles
                    .record_response(response.status().as_u16(), record.start),
                Err(e) => record
                    .handles
                    .record_error(OutcomeClass::of_error(&**e), record.start),
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
