//! Spans per logical call and per attempt (feature `spans`).
//!
//! Each logical call of a ready-made stack runs in an INFO span `mesh.call`
//! (fields `service`, `method`, and `outcome` when it ends: one of
//! [`OutcomeClass`](crate::OutcomeClass)'s labels), and each attempt in an
//! INFO span `mesh.attempt` inside it (fields `service`, `endpoint`, the
//! endpoint's address, and `attempt`, 1 for the first), to the response
//! headers. `tracing-opentelemetry` turns them into OpenTelemetry spans;
//! filter them out with `mesh_stack=warn`.
//!
//! A feature, not always on: even disabled (no subscriber), the span
//! handles ride in every call's future through each layer above them,
//! which measured +221 instructions per call (`stack_16`, +5.7 %).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mesh_core::TriedEndpoints;
use mesh_core::target::Target;

/// Runs each attempt through one endpoint in an INFO span `mesh.attempt`
/// (fields `service`, `endpoint`, its address, and `attempt`, 1 for the
/// first attempt of a call, from the call's [`TriedEndpoints`] record),
/// to the response headers. A disabled handle when nothing listens.
#[derive(Clone)]
pub struct AttemptSpan<S> {
    inner: S,
    // One pointer: the endpoint stack is cloned into every call's future.
    fields: Arc<SpanFields>,
}

struct SpanFields {
    service: Arc<str>,
    endpoint: Box<str>,
}

impl<S> AttemptSpan<S> {
    /// Spans for the attempts through `inner`, the stack of `target`'s
    /// endpoint.
    pub fn new(inner: S, target: &Target) -> Self {
        Self {
            inner,
            fields: Arc::new(SpanFields {
                service: Arc::clone(target.service_arc()),
                endpoint: target.endpoint().address().to_string().into(),
            }),
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for AttemptSpan<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptSpan")
            .field("inner", &self.inner)
            .field("endpoint", &self.fields.endpoint)
            .finish_non_exhaustive()
    }
}

impl<S, B> tower::Service<http::Request<B>> for AttemptSpan<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = InSpan<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let span = tracing::info_span!(
            "mesh.attempt",
            service = &*self.fields.service,
            endpoint = &*self.fields.endpoint,
            attempt = tracing::field::Empty,
        );
        if span.is_disabled() {
            return InSpan {
                inner: self.inner.call(req),
                span: None,
            };
        }
        {
            // The router recorded this attempt's pick in the call's record
            // before calling; a first attempt goes out without a record.
            let attempt = req
                .extensions()
                .get::<TriedEndpoints>()
                .map_or(1, |tried| tried.len().max(1));
            span.record("attempt", attempt);
        }
        InSpan {
            inner: span.in_scope(|| self.inner.call(req)),
            span: Some(Box::new(span)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of an [`AttemptSpan`]: polled inside its span.
    pub struct InSpan<F> {
        #[pin]
        inner: F,
        // Boxed, and only when a subscriber listens: the future stays one
        // word larger, not a `Span` larger, through every layer above.
        span: Option<Box<tracing::Span>>,
    }
}

impl<F: Future> Future for InSpan<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.as_ref().map(|span| span.enter());
        this.inner.poll(cx)
    }
}

impl<F> fmt::Debug for InSpan<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InSpan(..)")
    }
}
