//! [`CircuitBreaker`]: the service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mesh_core::classify::{Classify, DefaultHttpClassifier};
use mesh_core::{Availability, BoxError};
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::OpenBehavior;
use crate::error::BreakerOpen;
use crate::future::{Admission, ResponseFuture};
use crate::handle::CircuitBreakerHandle;
use crate::state::{Admit, ProbePermit, Shared, state_of};

/// What one clone's `poll_ready` decided, for its next `call`.
#[derive(Debug)]
enum Ready {
    Probe(ProbePermit),
    Rejected(BreakerOpen),
}

/// The per-clone part: futures that need the breaker keep it alive, so their
/// reference count is only touched by the thread driving this clone, never
/// shared across cores.
#[derive(Debug)]
pub(crate) struct Local {
    pub(crate) shared: Arc<Shared>,
}

/// A circuit breaker around `S`. Build it with
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// Clones share one breaker, and cloning never allocates. A clone's futures
/// first use the handle of the breaker it was cloned from; a clone that
/// makes a second call gets a small handle of its own (one allocation), so
/// long-lived clones on different cores never contend on a reference count,
/// while a router that clones an endpoint's stack for every call pays no
/// allocation per call.
pub struct CircuitBreaker<S, C = DefaultHttpClassifier> {
    inner: S,
    /// The breaker itself, one pointer away (`local.shared` is two).
    shared: Arc<Shared>,
    local: Arc<Local>,
    /// Whose handle `local` is.
    handle: LocalHandle,
    classifier: C,
    ready: Option<Ready>,
    wait: Option<Wait>,
}

/// Whether a clone's futures use a handle of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalHandle {
    /// Made for this clone.
    Own,
    /// Its parent's, shared until this clone's second call.
    Parent { called: bool },
}

/// What a [`OpenBehavior::NotReady`] breaker waits on while refusing: a
/// transition (notified) or the moment the answer may change (a timer).
struct Wait {
    notified: Pin<Box<OwnedNotified>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>, classifier: C) -> Self {
        Self {
            inner,
            local: Arc::new(Local {
                shared: Arc::clone(&shared),
            }),
            handle: LocalHandle::Own,
            shared,
            classifier,
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

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        // A clone starts without this clone's readiness (like tower's own
        // middleware): a probe permit is never duplicated.
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            local: Arc::clone(&self.local),
            handle: LocalHandle::Parent { called: false },
            classifier: self.classifier.clone(),
            ready: None,
            wait: None,
        }
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

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
                    shared.id(),
                    word,
                );
            }
        }
        self.call_slow(request)
    }
}

impl<S, C> CircuitBreaker<S, C> {
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
                Some(Ready::Probe(_)) => return self.inner.poll_ready(cx).map_err(Into::into),
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

    /// A clone shares its parent's handle for its first tracked call and
    /// makes its own at the second: a clone made per call never allocates,
    /// a long-lived one stops sharing a reference count with other cores.
    #[cold]
    fn take_own_handle_on_second_call(&mut self) {
        match self.handle {
            LocalHandle::Own => {}
            LocalHandle::Parent { called: false } => {
                self.handle = LocalHandle::Parent { called: true };
            }
            LocalHandle::Parent { called: true } => {
                self.local = Arc::new(Local {
                    shared: Arc::clone(&self.shared),
                });
                self.handle = LocalHandle::Own;
            }
        }
    }

    /// A call that needs the breaker: a probe, a refusal, or a result that
    /// would change the counters.
    fn call_slow<Req>(&mut self, request: Req) -> ResponseFuture<S::Future, C>
    where
        S: Service<Req>,
        C: Clone,
    {
        let shared = &self.shared;
        let admission = match self.ready.take() {
            Some(Ready::Rejected(error)) => return ResponseFuture::rejected(error),
            Some(Ready::Probe(permit)) => Admission::Probe(permit),
            None => {
                let word = shared.word();
                if state_of(word).admits_all() {
                    Admission::Closed(word)
                } else {
                    // The state changed since poll_ready said yes.
                    match shared.admit() {
                        Admit::Closed { word } => Admission::Closed(word),
                        Admit::Probe(permit) => Admission::Probe(permit),
                        Admit::Rejected(error) => return ResponseFuture::rejected(error),
                    }
                }
            }
        };
        shared.on_admitted();
        let start = shared.needs_start().then(Instant::now);
        if self.handle != LocalHandle::Own {
            self.take_own_handle_on_second_call();
        }
        ResponseFuture::new(
            self.inner.call(request),
            self.classifier.clone(),
            Arc::clone(&self.local),
            admission,
            start,
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

#[cfg(test)]
mod tests {
    use http::Response;
    use tower::{Layer, Service, ServiceExt};

    use super::*;
    use crate::{BreakerConfig, CircuitBreakerLayer, CircuitState};

    /// Failures, so every call is tracked (a steady-state success is not).
    fn failing_breaker() -> CircuitBreaker<
        impl Service<(), Response = Response<()>, Error = BoxError, Future: Send> + Clone,
    > {
        let inner = tower::service_fn(|()| async {
            Ok::<_, BoxError>(Response::builder().status(500).body(()).unwrap())
        });
        CircuitBreakerLayer::new(BreakerConfig {
            consecutive_failures: Some(5),
            ..BreakerConfig::default()
        })
        .unwrap()
        .layer(inner)
    }

    #[tokio::test]
    async fn a_clone_per_call_shares_its_parents_handle_and_the_breaker() {
        let parent = failing_breaker();
        for _ in 0..4 {
            let mut clone = parent.clone();
            clone.ready().await.unwrap().call(()).await.unwrap();
            assert!(Arc::ptr_eq(&clone.local, &parent.local), "no allocation");
        }
        assert_eq!(parent.handle().state(), CircuitState::Closed);
        let mut clone = parent.clone();
        clone.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(parent.handle().state(), CircuitState::Open, "5 failures");
    }

    #[tokio::test]
    async fn a_long_lived_clone_takes_its_own_handle_at_its_second_tracked_call() {
        let parent = failing_breaker();
        let mut clone = parent.clone();
        clone.ready().await.unwrap().call(()).await.unwrap();
        assert!(Arc::ptr_eq(&clone.local, &parent.local));
        // The first call may take the steady-state path, which needs no
        // handle: two more are tracked for sure.
        for _ in 0..2 {
            clone.ready().await.unwrap().call(()).await.unwrap();
        }
        assert!(!Arc::ptr_eq(&clone.local, &parent.local));
        assert!(
            Arc::ptr_eq(&clone.local.shared, &parent.shared),
            "one breaker"
        );
        assert_eq!(clone.handle, LocalHandle::Own);
    }
}
