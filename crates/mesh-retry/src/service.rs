//! [`RetryService`].

use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::BoxError;
use mesh_core::classify::Classify;
use tower_service::Service;

use crate::body::TryCloneBody;
use crate::future::ResponseFuture;
use crate::policy::{RetryPolicy, clone_request};

/// Retries failed attempts of a request, safely and within budget. Built by
/// [`RetryLayer`](crate::RetryLayer).
///
/// Errors are `BoxError`s: the inner service's own, a per-attempt timeout
/// (tower's `Elapsed`), [`BudgetExhausted`](crate::BudgetExhausted) or
/// [`DeadlineExceeded`](crate::DeadlineExceeded).
#[derive(Debug, Clone)]
pub struct RetryService<S, C> {
    inner: S,
    policy: RetryPolicy<C>,
}

impl<S, C> RetryService<S, C> {
    /// Wraps `inner`, deciding with `policy`.
    pub const fn new(inner: S, policy: RetryPolicy<C>) -> Self {
        Self { inner, policy }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy<C> {
        &self.policy
    }
}

impl<S, C, B, ResB> Service<Request<B>> for RetryService<S, C>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: TryCloneBody,
    C: Classify<Response<ResB>, BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let mut policy = self.policy.clone();
        policy.begin();
        let copy = if policy.config().max_retries > 0 && policy.is_retryable_request(&req) {
            let copy = clone_request(&req);
            if copy.is_some() {
                policy.track(&mut req);
            }
            copy
        } else {
            None
        };
        // Call the service that was made ready; keep a clone for retries.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let future = ready.call(req);
        ResponseFuture::new(future, ready, copy, policy)
    }
}
