//! [`AttemptTimeout`]: the per-attempt time limit of every endpoint, with its
//! timers reused from one attempt to the next.
//!
//! # Why not `tower::timeout::Timeout`
//!
//! tower's `Timeout` creates a tokio `Sleep` for every call. Under load that
//! is most of what the mesh adds to a request after the layers' own logic:
//! the `Sleep` takes the runtime handle, its first poll locks the timer wheel
//! to insert the entry, and its drop (the response came back long before
//! the deadline) locks the wheel again to remove it. Callgrind counted about
//! 950 instructions per call for that on the `http_load` bench, a quarter of
//! the whole stack's cost there.
//!
//! tokio moves a timer that is still in the wheel to a *later* deadline with
//! one atomic store: the wheel finds the new deadline when the old one comes
//! and files the entry again. So an attempt that ends gives its timer back
//! to a small per-thread pool instead of dropping it, still armed, and the
//! next attempt on that thread takes it and pushes its deadline forward: no
//! lock, no wheel insertion, no allocation in steady state. A pooled timer
//! whose old deadline passes while it waits in the pool wakes the task that
//! used it last, once, for nothing (a poll that finds nothing to do); the
//! pool is small, so that is at most a few spurious polls per timeout period.
//!
//! Timers belong to the runtime that made them: the pool remembers that
//! runtime and starts afresh when the thread runs another one (tests that
//! build a runtime each, a program that starts a second runtime).
//!
//! The time limit runs from the attempt's first poll (the router polls it as
//! soon as it calls the endpoint) and a timed-out attempt fails with tower's
//! [`Elapsed`], which classifiers and callers already recognise.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use mesh_core::BoxError;
use pin_project_lite::pin_project;
use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};
use tower::timeout::error::Elapsed;
use tower_service::Service;

/// How many idle timers one thread keeps: about the attempts in flight on it.
const POOL_CAPACITY: usize = 256;

/// A thread's idle timers, all from the runtime `runtime`.
struct Pool {
    runtime: Option<Id>,
    timers: Vec<Pin<Box<Sleep>>>,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            runtime: None,
            timers: Vec::new(),
        })
    };
}

/// One attempt's timer: taken from this thread's pool (or made) when the
/// attempt starts, given back when the attempt ends.
struct AttemptTimer {
    sleep: Option<Pin<Box<Sleep>>>,
    runtime: Id,
}

impl AttemptTimer {
    /// A timer that fires at `deadline`, on the current runtime (panics
    /// outside one, like `tokio::time::sleep`).
    fn start(deadline: Instant) -> Self {
        let runtime = Handle::current().id();
        let pooled = POOL
            .try_with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.runtime != Some(runtime) {
                    // Another runtime's timers: let them go.
                    pool.timers.clear();
                    pool.runtime = Some(runtime);
                }
                pool.timers.pop()
            })
            .ok()
            .flatten();
        let sleep = match pooled {
            Some(mut sleep) => {
                // Later than the deadline it had: one atomic store while it is
                // still in the wheel.
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Self {
            sleep: Some(sleep),
            runtime,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl Drop for AttemptTimer {
    fn drop(&mut self) {
        let Some(sleep) = self.sleep.take() else {
            return;
        };
        // Back to this thread's pool if it holds this runtime's timers and
        // has room; otherwise the timer is dropped (and leaves the wheel).
        let _ = POOL.try_with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut()
                && pool.runtime == Some(self.runtime)
                && pool.timers.len() < POOL_CAPACITY
            {
                pool.timers.push(sleep);
            }
        });
    }
}

/// `now + timeout`, saturating about 30 years ahead (tokio's own "far
/// future") rather than panicking: [`AttemptTimeout::new`] takes any
/// `Duration`, and a validated config never gets near it.
fn deadline_after(timeout: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    let now = Instant::now();
    now.checked_add(timeout.min(FAR)).unwrap_or(now)
}

// ===== AttemptTimeout =====

/// Fails an attempt that takes longer than `timeout` with tower's
/// [`Elapsed`]. The innermost layer of each endpoint's stack, under its
/// breaker (a timed-out attempt counts as the endpoint's failure); see the
/// [module docs](self) for how it differs from `tower::timeout::Timeout`.
#[derive(Clone)]
pub struct AttemptTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> AttemptTimeout<S> {
    /// Limits each call of `inner` to `timeout`.
    pub const fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout }
    }

    /// The time limit of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
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

impl<S: fmt::Debug> fmt::Debug for AttemptTimeout<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptTimeout")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<S, R> Service<R> for AttemptTimeout<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = AttemptTimeoutFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        AttemptTimeoutFuture {
            inner: self.inner.call(request),
            timeout: self.timeout,
            timer: None,
        }
    }
}

pin_project! {
    /// The future of an [`AttemptTimeout`] call.
    pub struct AttemptTimeoutFuture<F> {
        #[pin]
        inner: F,
        timeout: Duration,
        // Taken when the attempt first has to wait: an attempt that is ready
        // at once needs no timer.
        timer: Option<AttemptTimer>,
    }
}

impl<F> fmt::Debug for AttemptTimeoutFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptTimeoutFuture")
            .field("timeout", &self.timeout)
            .field("armed", &self.timer.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for AttemptTimeoutFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            // Dropping the timer here gives it back to the pool now, not
            // when the caller drops this future.
            *this.timer = None;
            return Poll::Ready(result.map_err(Into::into));
        }
        let timeout = *this.timeout;
        let timer = this
            .timer
            .get_or_insert_with(|| AttemptTimer::start(deadline_after(timeout)));
        ready!(timer.poll(cx));
        *this.timer = None;
        Poll::Ready(Err(Box::new(Elapsed::new())))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tokio::sync::oneshot;
    use tower::ServiceExt;

    use super::*;

    fn pooled() -> usize {
        POOL.with(|p| p.borrow().timers.len())
    }

    /// A service whose calls answer when the test sends on their channel.
    fn answering(
        rx: oneshot::Receiver<u32>,
    ) -> impl Service<(), Response = u32, Error = Infallible, Future: Send> {
        let mut rx = Some(rx);
        tower::service_fn(move |()| {
            let rx = rx.take().expect("one call");
            async move { Ok::<_, Infallible>(rx.await.unwrap_or(0)) }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_longer_than_the_limit_fails_with_elapsed() {
        let (_tx, rx) = oneshot::channel();
        let svc = AttemptTimeout::new(answering(rx), Duration::from_millis(100));
        let start = Instant::now();
        let err = svc.oneshot(()).await.unwrap_err();
        assert!(err.downcast_ref::<Elapsed>().is_some(), "{err}");
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_timer_keeps_the_new_attempts_deadline() {
        let limit = Duration::from_millis(100);
        // Attempt 1 answers after 60 ms: its timer (deadline 100 ms) goes
        // back to the pool, still armed.
        let (tx, rx) = oneshot::channel();
        let first = tokio::spawn(AttemptTimeout::new(answering(rx), limit).oneshot(()));
        tokio::time::sleep(Duration::from_millis(60)).await;
        tx.send(7).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 7);
        assert_eq!(pooled(), 1);

        // Attempt 2 starts at 60 ms with the same timer: it must not fail at
        // the old deadline (100 ms) but at its own (160 ms).
        let (_tx, rx) = oneshot::channel();
        let start = Instant::now();
        let err = AttemptTimeout::new(answering(rx), limit)
            .oneshot(())
            .await
            .unwrap_err();
        assert!(err.downcast_ref::<Elapsed>().is_some());
        assert_eq!(start.elapsed(), limit);
        assert_eq!(pooled(), 1, "the timer went back after firing too");
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_ready_at_once_takes_no_timer() {
        let svc = AttemptTimeout::new(
            tower::service_fn(|()| async { Ok::<_, Infallible>(1) }),
            Duration::from_millis(100),
        );
        let before = pooled();
        assert_eq!(svc.oneshot(()).await.unwrap(), 1);
        assert_eq!(pooled(), before);
    }

    #[test]
    fn a_new_runtime_on_the_thread_does_not_reuse_the_old_ones_timers() {
        let limit = Duration::from_millis(20);
        for _ in 0..2 {
            // Each runtime leaves a timer in this thread's pool, then dies;
            // the next must make its own (an old runtime's timer would panic
            // when polled).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let (_tx, rx) = oneshot::channel();
                let err = AttemptTimeout::new(answering(rx), limit)
                    .oneshot(())
                    .await
                    .unwrap_err();
                assert!(err.downcast_ref::<Elapsed>().is_some());
            });
            assert_eq!(pooled(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn errors_of_the_inner_service_pass_through() {
        let svc = AttemptTimeout::new(
            tower::service_fn(|()| async { Err::<u32, _>(std::io::Error::other("boom")) }),
            Duration::from_millis(100),
        );
        let err = svc.oneshot(()).await.unwrap_err();
        assert!(err.downcast_ref::<std::io::Error>().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn any_duration_is_a_limit_never_a_panic() {
        let (tx, rx) = oneshot::channel();
        let call = tokio::spawn(AttemptTimeout::new(answering(rx), Duration::MAX).oneshot(()));
        tokio::time::sleep(Duration::from_secs(86_400 * 365)).await;
        tx.send(3).unwrap();
        assert_eq!(call.await.unwrap().unwrap(), 3);
    }
}
