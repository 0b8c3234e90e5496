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

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use mesh_core::{BoxError, CallDeadline};
use mesh_retry::DeadlineExceeded;
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

/// An attempt ran past its per-attempt time limit (the service's
/// `attempt_timeout`), before its response headers or, in its response
/// body, before the body ended. Its source is tower's [`Elapsed`], so
/// classifiers that recognise timeouts recognise it.
#[derive(Debug)]
pub struct AttemptTimedOut {
    limit: Duration,
    in_body: bool,
    elapsed: Elapsed,
}

impl AttemptTimedOut {
    fn new(limit: Duration, in_body: bool) -> Self {
        Self {
            limit,
            in_body,
            elapsed: Elapsed::new(),
        }
    }

    /// The time limit that fired.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Whether it fired in the response body (the headers had arrived).
    pub fn in_body(&self) -> bool {
        self.in_body
    }
}

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let during = if self.in_body {
            "response body"
        } else {
            "response"
        };
        write!(
            f,
            "attempt timed out after {:?} waiting for the {during}",
            self.limit
        )
    }
}

impl std::error::Error for AttemptTimedOut {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.elapsed)
    }
}

/// Which limit an attempt's timer stands for.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// The per-attempt time limit, in ns (saturated: 584 years), to keep
    /// every future and body that carries it small.
    timeout_ns: u64,
    /// The logical call's deadline ([`CallDeadline`]), when the retry
    /// above set one.
    deadline: Option<Instant>,
}

impl Limits {
    /// When the attempt's timer fires, from now: the earlier limit.
    fn start(self) -> AttemptTimer {
        let own = deadline_after(Duration::from_nanos(self.timeout_ns));
        AttemptTimer::start(self.deadline.map_or(own, |d| d.min(own)))
    }

    /// The error of a timer that fired: the call's deadline if it has
    /// passed (the earlier limit, or both), else the attempt's own.
    fn error(self, in_body: bool) -> BoxError {
        let timed_out = AttemptTimedOut::new(Duration::from_nanos(self.timeout_ns), in_body);
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            Box::new(DeadlineExceeded::new(Some(Box::new(timed_out))))
        } else {
            Box::new(timed_out)
        }
    }
}

/// Fails an HTTP attempt that takes longer than `timeout`, or than the
/// logical call's deadline ([`CallDeadline`], set by the retry above), with
/// [`AttemptTimedOut`] or [`DeadlineExceeded`].
///
/// The limit covers the response body: a response whose headers arrive in
/// time gets a [`TimedBody`] that yields the error if the body has not
/// ended when the limit fires, so the breaker and balancer above (which
/// record at end of stream in the ready-made stack) count it as the
/// endpoint's failure. [`streaming`](Self::streaming) ends the limit at the
/// headers instead (long downloads, server streams).
///
/// The innermost layer of each endpoint's stack, under its breaker; see the
/// [module docs](self) for how it differs from `tower::timeout::Timeout`.
#[derive(Clone)]
pub struct AttemptTimeout<S> {
    inner: S,
    /// The time limit in ns (saturated: 584 years), as every attempt's
    /// future and body carry it.
    timeout_ns: u64,
    streaming: bool,
}

impl<S> AttemptTimeout<S> {
    /// Limits each call of `inner`, response body included, to `timeout`.
    pub const fn new(inner: S, timeout: Duration) -> Self {
        let ns = timeout.as_nanos();
        Self {
            inner,
            timeout_ns: if ns > u64::MAX as u128 {
                u64::MAX
            } else {
                ns as u64
            },
            streaming: false,
        }
    }

    /// With `streaming`, the limits end when the response headers arrive.
    #[must_use]
    pub const fn streaming(mut self, streaming: bool) -> Self {
        self.streaming = streaming;
        self
    }

    /// The time limit of one call.
    pub fn timeout(&self) -> Duration {
        Duration::from_nanos(self.timeout_ns)
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
            .field("timeout", &self.timeout())
            .field("streaming", &self.streaming)
            .finish()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AttemptTimeout<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body,
    S::Error: Into<BoxError>,
{
    type Response = Response<TimedBody<ResB>>;
    type Error = BoxError;
    type Future = AttemptTimeoutFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let limits = Limits {
            timeout_ns: self.timeout_ns,
            deadline: request.extensions().get::<CallDeadline>().map(|d| d.0),
        };
        AttemptTimeoutFuture {
            inner: self.inner.call(request),
            limits,
            streaming: self.streaming,
            timer: None,
        }
    }
}

pin_project! {
    /// The future of an [`AttemptTimeout`] call.
    pub struct AttemptTimeoutFuture<F> {
        #[pin]
        inner: F,
        limits: Limits,
        streaming: bool,
        // Taken when the attempt first has to wait: an attempt that is ready
        // at once needs no timer.
        timer: Option<AttemptTimer>,
    }
}

impl<F> fmt::Debug for AttemptTimeoutFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttemptTimeoutFuture")
            .field("timeout", &Duration::from_nanos(self.limits.timeout_ns))
            .field("armed", &self.timer.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for AttemptTimeoutFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    E: Into<BoxError>,
{
    type Output = Result<Response<TimedBody<B>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            let response = result.map_err(Into::into)?;
            // The timer (if the attempt had to wait) goes on into the body,
            // still armed; a body already at its end, or a streaming
            // service's, needs none: dropping it gives it back to the pool.
            let limit = if *this.streaming || response.body().is_end_stream() {
                *this.timer = None;
                None
            } else {
                Some(BodyLimit {
                    limits: *this.limits,
                    timer: this.timer.take(),
                })
            };
            return Poll::Ready(Ok(response.map(|inner| TimedBody { inner, limit })));
        }
        let limits = *this.limits;
        let timer = this.timer.get_or_insert_with(|| limits.start());
        ready!(timer.poll(cx));
        *this.timer = None;
        Poll::Ready(Err(limits.error(false)))
    }
}

/// The rest of an attempt's time limit, carried into its response body.
struct BodyLimit {
    limits: Limits,
    /// The attempt's timer, if it had to wait for the headers; made at the
    /// body's first wait otherwise.
    timer: Option<AttemptTimer>,
}

pin_project! {
    /// The response body of an [`AttemptTimeout`] attempt: yields
    /// [`AttemptTimedOut`] (or [`DeadlineExceeded`]) if the attempt's time
    /// limit fires before the body ends. Errors of the inner body are boxed.
    ///
    /// The limit is checked while the body waits for data: a body that
    /// always has data ready is never cut short.
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        limit: Option<BodyLimit>,
    }
}

impl<B> TimedBody<B> {
    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Unwraps the body (and drops its time limit).
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: fmt::Debug> fmt::Debug for TimedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimedBody")
            .field("inner", &self.inner)
            .field("limited", &self.limit.is_some())
            .finish()
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) {
            let end = match &frame {
                Some(Ok(frame)) => frame.is_trailers() || this.inner.is_end_stream(),
                _ => true,
            };
            if end {
                // Back to the pool now, not when the caller drops the body.
                *this.limit = None;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let Some(limit) = this.limit.as_mut() else {
            return Poll::Pending;
        };
        let limits = limit.limits;
        let timer = limit.timer.get_or_insert_with(|| limits.start());
        ready!(timer.poll(cx));
        *this.limit = None;
        Poll::Ready(Some(Err(limits.error(true))))
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::{mpsc, oneshot};
    use tower::ServiceExt;

    use super::*;

    fn pooled() -> usize {
        POOL.with(|p| p.borrow().timers.len())
    }

    fn request() -> Request<()> {
        Request::new(())
    }

    fn status(err: &BoxError) -> (bool, bool) {
        let timed_out = err.downcast_ref::<AttemptTimedOut>();
        (
            timed_out.is_some(),
            timed_out.is_some_and(AttemptTimedOut::in_body),
        )
    }

    /// A service whose calls answer (a body of the number sent) when the
    /// test sends on their channel.
    fn answering(
        rx: oneshot::Receiver<u32>,
    ) -> impl Service<Request<()>, Response = Response<String>, Error = Infallible, Future: Send>
    {
        let mut rx = Some(rx);
        tower::service_fn(move |_: Request<()>| {
            let rx = rx.take().expect("one call");
            async move { Ok::<_, Infallible>(Response::new(rx.await.unwrap_or(0).to_string())) }
        })
    }

    type Chunks =
        StreamBody<tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

    /// A service that answers at once with a body the test feeds.
    fn streaming_body(
        rx: mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
    ) -> impl Service<Request<()>, Response = Response<Chunks>, Error = Infallible> {
        let mut rx = Some(rx);
        tower::service_fn(move |_: Request<()>| {
            let rx = rx.take().expect("one call");
            std::future::ready(Ok::<_, Infallible>(Response::new(StreamBody::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_longer_than_the_limit_fails_with_attempt_timed_out() {
        let (_tx, rx) = oneshot::channel();
        let svc = AttemptTimeout::new(answering(rx), Duration::from_millis(100));
        let start = Instant::now();
        let err = svc.oneshot(request()).await.unwrap_err();
        assert_eq!(status(&err), (true, false), "{err}");
        let source = std::error::Error::source(&*err).unwrap();
        assert!(source.is::<Elapsed>(), "classifiers see a timeout");
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_at_the_limit() {
        let (tx, rx) = mpsc::channel(4);
        let svc = AttemptTimeout::new(streaming_body(rx), Duration::from_millis(100));
        let start = Instant::now();
        let mut body = svc.oneshot(request()).await.unwrap().into_body();
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(status(&err), (true, true), "{err}");
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn the_calls_deadline_when_earlier_fails_the_body_with_deadline_exceeded() {
        let (_tx, rx) = mpsc::channel(4);
        let svc = AttemptTimeout::new(streaming_body(rx), Duration::from_secs(10));
        let mut req = request();
        let start = Instant::now();
        req.extensions_mut()
            .insert(CallDeadline(start + Duration::from_millis(30)));
        let mut body = svc.oneshot(req).await.unwrap().into_body();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<DeadlineExceeded>(), "{err}");
        assert_eq!(start.elapsed(), Duration::from_millis(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_streaming_service_s_body_is_not_limited() {
        let (tx, rx) = mpsc::channel(4);
        let svc =
            AttemptTimeout::new(streaming_body(rx), Duration::from_millis(100)).streaming(true);
        let mut body = svc.oneshot(request()).await.unwrap().into_body();
        let feed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"late"))))
                .await
                .unwrap();
        });
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "late");
        feed.await.unwrap();
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_ends_in_time_gives_its_timer_back() {
        let (tx, rx) = mpsc::channel(4);
        let svc = AttemptTimeout::new(streaming_body(rx), Duration::from_millis(100));
        let before = pooled();
        let body = svc.oneshot(request()).await.unwrap().into_body();
        let feed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(Ok(Frame::data(Bytes::from_static(b"ok"))))
                .await
                .unwrap();
        });
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
        feed.await.unwrap();
        assert_eq!(pooled(), before + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_timer_keeps_the_new_attempts_deadline() {
        let limit = Duration::from_millis(100);
        // Attempt 1 answers after 60 ms: its timer (deadline 100 ms) goes
        // back to the pool, still armed (the body is whole).
        let (tx, rx) = oneshot::channel();
        let first = tokio::spawn(AttemptTimeout::new(answering(rx), limit).oneshot(request()));
        tokio::time::sleep(Duration::from_millis(60)).await;
        tx.send(7).unwrap();
        let body = first.await.unwrap().unwrap().into_body();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "7");
        assert_eq!(pooled(), 1);

        // Attempt 2 starts at 60 ms with the same timer: it must not fail at
        // the old deadline (100 ms) but at its own (160 ms).
        let (_tx, rx) = oneshot::channel();
        let start = Instant::now();
        let err = AttemptTimeout::new(answering(rx), limit)
            .oneshot(request())
            .await
            .unwrap_err();
        assert_eq!(status(&err), (true, false));
        assert_eq!(start.elapsed(), limit);
        assert_eq!(pooled(), 1, "the timer went back after firing too");
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_ready_at_once_takes_no_timer() {
        let svc = AttemptTimeout::new(
            tower::service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(String::from("1")))
            }),
            Duration::from_millis(100),
        );
        let before = pooled();
        let body = svc.oneshot(request()).await.unwrap().into_body();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "1");
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
                    .oneshot(request())
                    .await
                    .unwrap_err();
                assert_eq!(status(&err), (true, false));
            });
            assert_eq!(pooled(), 1);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn errors_of_the_inner_service_pass_through() {
        let svc = AttemptTimeout::new(
            tower::service_fn(|_: Request<()>| async {
                Err::<Response<String>, _>(std::io::Error::other("boom"))
            }),
            Duration::from_millis(100),
        );
        let err = svc.oneshot(request()).await.unwrap_err();
        assert!(err.downcast_ref::<std::io::Error>().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn any_duration_is_a_limit_never_a_panic() {
        let (tx, rx) = oneshot::channel();
        let call =
            tokio::spawn(AttemptTimeout::new(answering(rx), Duration::MAX).oneshot(request()));
        tokio::time::sleep(Duration::from_secs(86_400 * 365)).await;
        tx.send(3).unwrap();
        let body = call.await.unwrap().unwrap().into_body();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "3");
    }
}
