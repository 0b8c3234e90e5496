//! [`ResponseFuture`]: drives the inner call and counts its result.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mesh_core::BoxError;
use mesh_core::classify::Classify;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::error::BreakerOpen;
use crate::state::{ProbePermit, Shared};

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
enum Tracker<C> {
    /// Nothing left to count (rejected, or already counted).
    Done,
    /// A success would change nothing: only a failure is counted.
    Lite {
        classifier: C,
        shared: Arc<Shared>,
        word: u64,
    },
    /// Every result counts.
    Full {
        classifier: C,
        shared: Arc<Shared>,
        admission: Admission,
        start: Option<Instant>,
    },
}

pin_project! {
    /// The future of a [`CircuitBreaker`](crate::CircuitBreaker) call.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        tracker: Tracker<C>,
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
        classifier: C,
        shared: Arc<Shared>,
        admission: Admission,
        start: Option<Instant>,
    ) -> Self {
        Self {
            kind: Kind::Called { future },
            tracker: Tracker::Full {
                classifier,
                shared,
                admission,
                start,
            },
        }
    }

    #[inline]
    pub(crate) fn lite(future: F, classifier: C, shared: Arc<Shared>, word: u64) -> Self {
        Self {
            kind: Kind::Called { future },
            tracker: Tracker::Lite {
                classifier,
                shared,
                word,
            },
        }
    }

    /// A call let through without counting (see `OpenBehavior::Report`).
    pub(crate) fn uncounted(future: F) -> Self {
        Self {
            kind: Kind::Called { future },
            tracker: Tracker::Done,
        }
    }

    pub(crate) fn rejected(error: BreakerOpen) -> Self {
        Self {
            kind: Kind::Rejected { error },
            tracker: Tracker::Done,
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
                let poll = future.poll(cx);
                if let Poll::Ready(result) = &poll {
                    this.tracker.finish(result);
                }
                poll.map_err(Into::into)
            }
        }
    }
}

// ===== impl Tracker =====

impl<C> Tracker<C> {
    /// Counts `result` (once: the tracker is `Done` afterwards).
    #[inline]
    fn finish<T, E>(&mut self, result: &Result<T, E>)
    where
        C: Classify<T, E>,
    {
        // Taken by value: each arm then drops only what its variant holds,
        // with no call to the whole enum's drop glue.
        match std::mem::replace(self, Tracker::Done) {
            Tracker::Done => {}
            // The steady state, kept small and in place: classify, and only a
            // failure leaves this function.
            Tracker::Lite {
                classifier,
                shared,
                word,
            } => {
                let outcome = classifier.classify(result);
                if outcome.is_failure() {
                    shared.on_closed_result(word, outcome, None);
                }
            }
            Tracker::Full {
                classifier,
                shared,
                admission,
                start,
            } => finish_full(&classifier, &shared, admission, start, result),
        }
    }
}

/// Counts the result of a call that holds its breaker.
fn finish_full<C, T, E>(
    classifier: &C,
    shared: &Shared,
    admission: Admission,
    start: Option<Instant>,
    result: &Result<T, E>,
) where
    C: Classify<T, E>,
{
    let outcome = classifier.classify(result);
    match admission {
        Admission::Closed(word) => shared.on_closed_result(word, outcome, start),
        Admission::Probe(permit) => shared.on_probe_result(permit, outcome, start),
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
