//! [`ResponseFuture`]: drives the inner call and counts its result.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use mesh_core::BoxError;
use mesh_core::classify::Classify;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::error::BreakerOpen;
use crate::service::Local;
use crate::state::ProbePermit;

/// Under which state a call was let through.
#[derive(Debug)]
pub(crate) enum Admission {
    /// A closed-like state, identified by the state word at admission.
    Closed(u64),
    /// A half-open probe.
    Probe(ProbePermit),
}

/// Classifies on completion; dropped unfinished, it counts as nothing (and a
/// probe's permit is given back).
struct Tracker<C> {
    local: Arc<Local<C>>,
    admission: Admission,
    start: Option<Instant>,
}

pin_project! {
    /// The future of a [`CircuitBreaker`](crate::CircuitBreaker) call.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        tracker: Option<Tracker<C>>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Rejected { error: BreakerOpen },
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline]
    pub(crate) fn new(
        future: F,
        local: Arc<Local<C>>,
        admission: Admission,
        start: Option<Instant>,
    ) -> Self {
        Self {
            kind: Kind::Called { future },
            tracker: Some(Tracker {
                local,
                admission,
                start,
            }),
        }
    }

    pub(crate) fn rejected(error: BreakerOpen) -> Self {
        Self {
            kind: Kind::Rejected { error },
            tracker: None,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Rejected { error } => Poll::Ready(Err(Box::new(*error))),
            KindProj::Called { future } => {
                let result = ready!(future.poll(cx));
                if let Some(t) = this.tracker.take() {
                    let outcome = t.local.classifier.classify(&result);
                    let shared = &t.local.shared;
                    match t.admission {
                        Admission::Closed(word) => shared.on_closed_result(word, outcome, t.start),
                        Admission::Probe(permit) => {
                            shared.on_probe_result(permit, outcome, t.start)
                        }
                    }
                }
                Poll::Ready(result.map_err(Into::into))
            }
        }
    }
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Called { .. } => "called",
            Kind::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}
