//! [`ResponseFuture`] of [`RetryService`](crate::RetryService).
//!
//! Hand-written rather than tower's `retry::future::ResponseFuture` because
//! the overall deadline and the per-attempt timeout must cut an attempt short,
//! which a `Policy` cannot do. The timers are created only when configured,
//! so the no-retry path never touches the timer wheel.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use mesh_core::BoxError;
use mesh_core::classify::Classify;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};
use tower_service::Service;

use crate::body::TryCloneBody;
use crate::copy::RequestCopy;
use crate::error::DeadlineExceeded;
use crate::policy::{Decision, GiveUp, RetryPolicy, instant_after};

pin_project! {
    /// The response of a [`RetryService`](crate::RetryService): the first
    /// attempt's, or a retry's.
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        // Boxed: created only when configured or on a retry, and two `Sleep`s
        // inline would triple the future's size, which costs the no-retry
        // path in moves. One box rather than two: one pointer to move, test
        // and drop.
        timers: Option<Pin<Box<Timers>>>,
        // The service retries go through: a clone of the caller's, made
        // ready before each retry; `None` when no retry is possible.
        service: Option<S>,
        // The copy for the next attempts; `None` when no retry is possible.
        request: Option<RequestCopy<B>>,
        policy: RetryPolicy<C>,
    }
}

pin_project! {
    /// The timers of one request.
    struct Timers {
        // The per-attempt timeout while an attempt runs, the backoff delay
        // between attempts.
        #[pin]
        timer: Option<Sleep>,
        // The overall deadline.
        #[pin]
        deadline: Option<Sleep>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        Waiting,
        Retrying,
    }
}

impl<S, B, C> std::fmt::Debug for ResponseFuture<S, B, C>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Waiting => "waiting",
            State::Retrying => "retrying",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("retries", &self.policy.retries())
            .finish_non_exhaustive()
    }
}

impl<S, B, C> ResponseFuture<S, B, C>
where
    S: Service<Request<B>>,
{
    #[inline]
    pub(crate) fn new(
        future: S::Future,
        service: Option<S>,
        request: Option<RequestCopy<B>>,
        policy: RetryPolicy<C>,
    ) -> Self {
        let config = policy.config();
        let timers = if config.attempt_timeout.is_none() && config.deadline.is_none() {
            None
        } else {
            Some(Box::pin(Timers {
                timer: config.attempt_timeout.map(tokio::time::sleep),
                deadline: policy.deadline().map(sleep_until),
            }))
        };
        Self {
            state: State::Called { future },
            timers,
            service,
            request,
            policy,
        }
    }
}

impl<S, B, C, ResB> Future for ResponseFuture<S, B, C>
where
    S: Service<Request<B>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    B: TryCloneBody,
    C: Classify<Response<ResB>, BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let polled = future.poll(cx);
                    let result = match polled {
                        Poll::Ready(r) => {
                            let mut result = r.map_err(Into::into);
                            this.policy.take_report(&mut result);
                            result
                        }
                        Poll::Pending => {
                            if deadline_passed(this.timers, cx) {
                                return Poll::Ready(Err(deadline_exceeded(this.policy)));
                            }
                            // Without an attempt timeout the timer is the
                            // last backoff delay, long past.
                            let timed_out = this.policy.config().attempt_timeout.is_some()
                                && timer_elapsed(this.timers, cx);
                            if !timed_out {
                                return Poll::Pending;
                            }
                            tracing::debug!(attempt = this.policy.attempts(), "attempt timed out");
                            Err(Box::new(tower::timeout::error::Elapsed::new()) as BoxError)
                        }
                    };
                    this.policy.report_attempt(&result);
                    let Some(req) = this.request.as_mut() else {
                        // No copy: not retryable, or the last allowed attempt.
                        this.policy.note_last_attempt(&result);
                        return Poll::Ready(result);
                    };
                    match this.policy.decide(req, &result) {
                        Decision::Retry(delay) if delay.is_zero() => {
                            // A requeue: no wait, no timer.
                            drop(result);
                            this.state.set(State::Retrying);
                        }
                        Decision::Retry(delay) => {
                            drop(result);
                            set_timer(this.timers, instant_after(Instant::now(), delay));
                            this.state.set(State::Waiting);
                        }
                        Decision::Stop(None) => return Poll::Ready(result),
                        Decision::Stop(why) => {
                            return Poll::Ready(RetryPolicy::<C>::finish(why, result));
                        }
                    }
                }
                StateProj::Waiting => {
                    // `decide` only waits when the wait ends before the deadline.
                    if let Some(t) = this.timers.as_mut()
                        && let Some(sleep) = t.as_mut().project().timer.as_pin_mut()
                    {
                        ready!(sleep.poll(cx));
                    }
                    this.state.set(State::Retrying);
                }
                StateProj::Retrying => {
                    // A retry is decided only with a stored copy, and a copy
                    // comes with a service; be safe anyway.
                    let Some(service) = this.service.as_mut() else {
                        return Poll::Ready(Err("mesh-retry: no service to retry with".into()));
                    };
                    if let Poll::Ready(r) = service.poll_ready(cx) {
                        r.map_err(Into::into)?;
                    } else {
                        if deadline_passed(this.timers, cx) {
                            return Poll::Ready(Err(deadline_exceeded(this.policy)));
                        }
                        return Poll::Pending;
                    }
                    // A retry is decided only with a stored copy; be safe anyway.
                    let Some(copy) = this.request.take() else {
                        return Poll::Ready(Err("mesh-retry: no request to retry".into()));
                    };
                    // Send a clone and keep the copy while another retry may
                    // follow; the last allowed attempt sends the copy itself.
                    let more = this.policy.more_attempts();
                    let req = match more.then(|| copy.to_request()).flatten() {
                        Some(req) => {
                            *this.request = Some(copy);
                            req
                        }
                        None => copy.into_request(),
                    };
                    if let Some(timeout) = this.policy.config().attempt_timeout {
                        set_timer(this.timers, instant_after(Instant::now(), timeout));
                    }
                    let future = service.call(req);
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

/// Whether the overall deadline, if any, has passed.
fn deadline_passed(timers: &mut Option<Pin<Box<Timers>>>, cx: &mut Context<'_>) -> bool {
    timers.as_mut().is_some_and(|t| {
        t.as_mut()
            .project()
            .deadline
            .as_pin_mut()
            .is_some_and(|d| d.poll(cx).is_ready())
    })
}

/// Whether the timer (attempt timeout or backoff delay), if any, has elapsed.
fn timer_elapsed(timers: &mut Option<Pin<Box<Timers>>>, cx: &mut Context<'_>) -> bool {
    timers.as_mut().is_some_and(|t| {
        t.as_mut()
            .project()
            .timer
            .as_pin_mut()
            .is_some_and(|s| s.poll(cx).is_ready())
    })
}

/// Sets the timer to `at`, creating the timers on the first retry of a
/// request that had none.
fn set_timer(timers: &mut Option<Pin<Box<Timers>>>, at: Instant) {
    match timers {
        Some(t) => {
            let mut timer = t.as_mut().project().timer;
            match timer.as_mut().as_pin_mut() {
                Some(sleep) => sleep.reset(at),
                None => timer.set(Some(sleep_until(at))),
            }
        }
        None => {
            *timers = Some(Box::pin(Timers {
                timer: Some(sleep_until(at)),
                deadline: None,
            }));
        }
    }
}

fn deadline_exceeded<C>(policy: &RetryPolicy<C>) -> BoxError {
    tracing::debug!(
        attempt = policy.attempts(),
        reason = GiveUp::Deadline.as_str(),
        "deadline passed during an attempt"
    );
    policy.count_give_up(GiveUp::Deadline);
    Box::new(DeadlineExceeded::new(None))
}
