//! [`CircuitBreaker`]: the service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mesh_core::classify::{Classify, DefaultHttpClassifier};
use mesh_core::eos::{AtResponse, TrackOutcome};
use mesh_core::{Availability, BoxError};
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::OpenBehavior;
use crate::error::BreakerOpen;
use crate::future::{Admission, BreakerRecorder, ResponseFuture};
use crate::handle::CircuitBreakerHandle;
use crate::state::{Admit, ProbePermit, Shared, state_of};

/// What one clone's `poll_ready` decided, for its next `call`.
#[derive(Debug)]
enum Ready {
    Probe(ProbePermit),
    Rejected(BreakerOpen),
    /// [`OpenBehavior::Report`]: open, but the caller (a balancer in panic
    /// mode) chose to send anyway; the call is not counted.
    Bypass,
}

/// A circuit breaker around `S`. Build it with
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// Clones share one breaker, and cloning never allocates. Each call's future
/// holds a reference to the breaker (one atomic increment and decrement).
pub struct CircuitBreaker<S, C = DefaultHttpClassifier, M = AtResponse> {
    inner: S,
    shared: Arc<Shared>,
    classifier: C,
    mode: M,
    ready: Option<Ready>,
    wait: Option<Wait>,
}

/// What a [`OpenBehavior::NotReady`] breaker waits on while refusing: a
/// transition (notified) or the moment the answer may change (a timer).
struct Wait {
    notified: Pin<Box<OwnedNotified>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S, C, M> CircuitBreaker<S, C, M> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>, classifier: C, mode: M) -> Self {
        Self {
            inner,
            shared,
            classifier,
            mode,
            ready: None,
            wait: None,
        }
    }

    /// A handle for manual control and state reads.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(Arc::clone(&self.shared))
    }

    /// The availability signal this breaker publishes: `Available` when
    /// closed, `Probing` when half-open with a free probe permit, and
    /// `Unavailable` otherwise.
    pub fn availability(&self) -> &Availability {
        self.shared.availability()
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone, M: Clone> Clone for CircuitBreaker<S, C, M> {
    fn clone(&self) -> Self {
        // A clone starts without this clone's readiness (like tower's own
        // middleware): a probe permit is never duplicated.
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            classifier: self.classifier.clone(),
            mode: self.mode.clone(),
            ready: None,
            wait: None,
        }
    }
}

impl<S, C, M, Req> Service<Req> for CircuitBreaker<S, C, M>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
    M: TrackOutcome<S::Response, C> + Clone,
{
    type Response = M::Output<BreakerRecorder>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The steady state, kept small enough to inline: closed, and nothing
        // decided by an earlier poll.
        if self.ready.is_none() && state_of(self.shared.word()).admits_all() {
            if self.wait.is_some() {
                self.wait = None;
            }
            return self.inner.poll_ready(cx).map_err(Into::into);
        }
        self.poll_ready_slow(cx)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        if self.ready.is_none() {
            let shared = &*self.shared;
            let word = shared.word();
            if shared.success_is_noop(word) {
                // The steady state: no reference to the breaker needed.
                shared.on_admitted();
                return ResponseFuture::lite(
                    self.inner.call(request),
                    self.classifier.clone(),
                    Arc::clone(&self.shared),
                    word,
                    self.mode.clone(),
                );
            }
        }
        self.call_slow(request)
    }
}

impl<S, C, M> CircuitBreaker<S, C, M> {
    /// Everything but the steady state: a probe, a refusal, waiting.
    fn poll_ready_slow<Req>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        if matches!(self.ready, Some(Ready::Rejected(_))) {
            // A refusal decided by an earlier poll may be stale: decide again.
            self.ready = None;
        }
        loop {
            match &self.ready {
                Some(Ready::Rejected(_)) => return Poll::Ready(Ok(())),
                Some(Ready::Probe(_) | Ready::Bypass) => {
                    return self.inner.poll_ready(cx).map_err(Into::into);
                }
                None => {}
            }
            let shared = &self.shared;
            if state_of(shared.word()).admits_all() {
                self.wait = None;
                return self.inner.poll_ready(cx).map_err(Into::into);
            }
            let not_ready = shared.behavior() == OpenBehavior::NotReady;
            if not_ready && self.wait.is_none() {
                // Listen before deciding, so a transition in between wakes us.
                let mut notified = Box::pin(Arc::clone(shared.notify()).notified_owned());
                notified.as_mut().enable();
                self.wait = Some(Wait {
                    notified,
                    sleep: None,
                });
            }
            match shared.admit() {
                Admit::Closed { .. } => {
                    self.wait = None;
                    return self.inner.poll_ready(cx).map_err(Into::into);
                }
                Admit::Probe(permit) => {
                    self.wait = None;
                    self.ready = Some(Ready::Probe(permit));
                }
                Admit::Bypass => {
                    self.wait = None;
                    self.ready = Some(Ready::Bypass);
                }
                Admit::Rejected(error) => {
                    if !not_ready {
                        self.ready = Some(Ready::Rejected(error));
                        return Poll::Ready(Ok(()));
                    }
                    let deadline = shared.next_change_at();
                    let Some(wait) = self.wait.as_mut() else {
                        continue;
                    };
                    if wait.poll(cx, deadline).is_pending() {
                        return Poll::Pending;
                    }
                    self.wait = None;
                }
            }
        }
    }

    /// A call that needs the breaker: a probe, a refusal, or a result that
    /// would change the counters.
    fn call_slow<Req>(&mut self, request: Req) -> ResponseFuture<S::Future, C, M>
    where
        S: Service<Req>,
        C: Clone,
        M: Clone,
    {
        let mode = self.mode.clone();
        let shared = &self.shared;
        let admission = match self.ready.take() {
            Some(Ready::Rejected(error)) => return ResponseFuture::rejected(error, mode),
            Some(Ready::Bypass) => {
                return ResponseFuture::uncounted(self.inner.call(request), mode);
            }
            Some(Ready::Probe(permit)) => Admission::Probe(Box::new(permit)),
            None => {
                let word = shared.word();
                if state_of(word).admits_all() {
                    Admission::Closed(word)
                } else {
                    // The state changed since poll_ready said yes.
                    match shared.admit() {
                        Admit::Closed { word } => Admission::Closed(word),
                        Admit::Probe(permit) => Admission::Probe(Box::new(permit)),
                        Admit::Bypass => {
                            return ResponseFuture::uncounted(self.inner.call(request), mode);
                        }
                        Admit::Rejected(error) => return ResponseFuture::rejected(error, mode),
                    }
                }
            }
        };
        shared.on_admitted();
        let start = shared.needs_start().then(Instant::now);
        ResponseFuture::new(
            self.inner.call(request),
            self.classifier.clone(),
            Arc::clone(shared),
            admission,
            start,
            mode,
        )
    }
}

impl Wait {
    fn poll(&mut self, cx: &mut Context<'_>, deadline: Option<Instant>) -> Poll<()> {
        if self.notified.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let Some(deadline) = deadline else {
            self.sleep = None;
            return Poll::Pending;
        };
        let sleep = match &mut self.sleep {
            Some(s) => {
                if s.deadline() != deadline {
                    s.as_mut().reset(deadline);
                }
                s
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        sleep.as_mut().poll(cx)
    }
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("state", &self.shared.state())
            .field("classifier", &self.classifier)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}
