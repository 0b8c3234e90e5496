//! [`ResponseFuture`]: drives the inner call and counts its result.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use mesh_core::BoxError;
use mesh_core::Outcome;
use mesh_core::classify::Classify;
use mesh_core::eos::{AtResponse, Record, TrackOutcome};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::error::BreakerOpen;
use crate::state::{ProbePermit, Shared};

/// Under which state a call was let through.
#[derive(Debug)]
pub(crate) enum Admission {
    /// A closed-like state, identified by the state word at admission.
    Closed(u64),
    /// A half-open probe (boxed: rare, and it keeps every call's recorder,
    /// which travels in the response, small).
    Probe(Box<ProbePermit>),
}

/// Classifies on completion; dropped unfinished, it counts as nothing (and a
/// probe's permit is given back).
enum Tracker<C> {
    /// Nothing left to count (rejected, or already counted).
    Done,
    /// Counts through `recorder` what `classifier` makes of the result.
    Armed {
        classifier: C,
        recorder: BreakerRecorder,
    },
}

/// What a breaker call records its outcome with: at once, or (with
/// [`AtEndOfStream`](mesh_core::eos::AtEndOfStream)) when the response
/// body ends. Dropped without recording, it counts as nothing (and a
/// probe's permit is given back).
pub struct BreakerRecorder(Recorder);

enum Recorder {
    /// A success would change nothing: only a failure is counted.
    Lite { shared: Arc<Shared>, word: u64 },
    /// Every result counts.
    Full {
        shared: Arc<Shared>,
        admission: Admission,
        start: Option<Instant>,
    },
}

impl fmt::Debug for BreakerRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.0 {
            Recorder::Lite { .. } => "lite",
            Recorder::Full { .. } => "full",
        };
        f.debug_tuple("BreakerRecorder").field(&kind).finish()
    }
}

impl Record for BreakerRecorder {
    #[inline(always)]
    fn record(self, outcome: Outcome) {
        match self.0 {
            // The steady state, kept small and in place: only a failure
            // leaves this function.
            Recorder::Lite { shared, word } => {
                if outcome.is_failure() {
                    shared.on_closed_result(word, outcome, None);
                }
            }
            Recorder::Full {
                shared,
                admission,
                start,
            } => record_full(&shared, admission, start, outcome),
        }
    }
}

/// Counts the outcome of a call that holds its breaker. Out of line: the
/// steady state is `Lite`, and `record` stays small enough to inline.
#[inline(never)]
fn record_full(shared: &Shared, admission: Admission, start: Option<Instant>, outcome: Outcome) {
    match admission {
        Admission::Closed(word) => shared.on_closed_result(word, outcome, start),
        Admission::Probe(permit) => shared.on_probe_result(*permit, outcome, start),
    }
}

pin_project! {
    /// The future of a [`CircuitBreaker`](crate::CircuitBreaker) call.
    pub struct ResponseFuture<F, C, M = AtResponse> {
        #[pin]
        kind: Kind<F>,
        tracker: Tracker<C>,
        mode: M,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Rejected { error: BreakerOpen },
    }
}

impl<F, C, M> ResponseFuture<F, C, M> {
    #[inline]
    pub(crate) fn new(
        future: F,
        classifier: C,
        shared: Arc<Shared>,
        admission: Admission,
        start: Option<Instant>,
        mode: M,
    ) -> Self {
        Self {
            kind: Kind::Called { future },
            tracker: Tracker::Armed {
                classifier,
                recorder: BreakerRecorder(Recorder::Full {
                    shared,
                    admission,
                    start,
                }),
            },
            mode,
        }
    }

    #[inline]
    pub(crate) fn lite(future: F, classifier: C, shared: Arc<Shared>, word: u64, mode: M) -> Self {
        Self {
            kind: Kind::Called { future },
            tracker: Tracker::Armed {
                classifier,
                recorder: BreakerRecorder(Recorder::Lite { shared, word }),
            },
            mode,
        }
    }

    /// A call let through without counting (see `OpenBehavior::Report`).
    pub(crate) fn uncounted(future: F, mode: M) -> Self {
        Self {
            kind: Kind::Called { future },
            tracker: Tracker::Done,
            mode,
        }
    }

    pub(crate) fn rejected(error: BreakerOpen, mode: M) -> Self {
        Self {
            kind: Kind::Rejected { error },
            tracker: Tracker::Done,
            mode,
        }
    }
}

impl<F, C, M, T, E> Future for ResponseFuture<F, C, M>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
    M: TrackOutcome<T, C>,
{
    type Output = Result<M::Output<BreakerRecorder>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Rejected { error } => Poll::Ready(Err(Box::new(*error))),
            KindProj::Called { future } => {
                let result = ready!(future.poll(cx));
                // Taken by value: each arm then drops only what its variant
                // holds, with no call to the whole enum's drop glue.
                match std::mem::replace(this.tracker, Tracker::Done) {
                    Tracker::Armed {
                        classifier,
                        recorder,
                    } => {
                        let outcome = classifier.classify(&result);
                        Poll::Ready(match result {
                            Ok(response) => {
                                Ok(this.mode.track(&classifier, response, outcome, recorder))
                            }
                            Err(e) => {
                                recorder.record(outcome);
                                Err(e.into())
                            }
                        })
                    }
                    Tracker::Done => Poll::Ready(match result {
                        Ok(response) => Ok(this.mode.untracked(response)),
                        Err(e) => Err(e.into()),
                    }),
                }
            }
        }
    }
}

impl<F, C, M> fmt::Debug for ResponseFuture<F, C, M> {
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
