//! [`HedgeLayer`]: a second attempt of a slow idempotent request.
//!
//! # Why
//!
//! A retry waits for a failure. Tail latency is rarely a failure: one
//! request in a hundred lands on a server that is paused for garbage
//! collection or a slow disk, and it waits. Hedging sends a *second* copy of
//! an idempotent request when the first has not answered after a delay (set
//! near the latency's 95th percentile, say), takes whichever succeeds first
//! and drops the other. The cost is extra load, so every hedge is paid from
//! the same [`RetryBudget`](crate::RetryBudget) as retries: in an overload, when
//! everything is slow, hedging stops by itself.
//!
//! Only requests the policy considers safe to repeat are hedged (the same
//! idempotency rules as retries), and only when their body can be cloned.
//! The hedge carries the attempt header (`x-mesh-attempt: 2`).
//!
//! The layer makes no deposits: put it inside a [`RetryLayer`](crate::RetryLayer)
//! built from the same policy (so they share one budget), which deposits once
//! per logical request.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mesh_retry::{HedgeLayer, RetryConfig, RetryLayer, RetryPolicy};
//! use tower::ServiceBuilder;
//!
//! let policy = RetryPolicy::new(RetryConfig::default()).unwrap();
//! let _builder = ServiceBuilder::new()
//!     .layer(RetryLayer::from_policy(policy.clone()))
//!     .layer(HedgeLayer::new(Duration::from_millis(50), policy));
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use mesh_core::BoxError;
use mesh_core::classify::Classify;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::TryCloneBody;
use crate::copy::clone_request;
use crate::policy::RetryPolicy;

/// Sends a second attempt of an idempotent request that has not answered
/// after `delay`, paid from the policy's budget. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct HedgeLayer<C> {
    delay: Duration,
    policy: RetryPolicy<C>,
}

impl<C> HedgeLayer<C> {
    /// Hedges after `delay`, with `policy`'s idempotency rules, classifier,
    /// attempt header and budget. Any `delay` is safe: one beyond about 30
    /// years (tokio's "far future") never hedges, and none panics.
    pub const fn new(delay: Duration, policy: RetryPolicy<C>) -> Self {
        Self { delay, policy }
    }
}

impl<S, C> Layer<S> for HedgeLayer<C> {
    type Service = Hedge<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge {
            inner,
            delay: self.delay,
            policy: self.policy.clone(),
        }
    }
}

/// The service of [`HedgeLayer`].
#[derive(Debug, Clone)]
pub struct Hedge<S, C> {
    inner: S,
    delay: Duration,
    policy: RetryPolicy<C>,
}

impl<S, C> Hedge<S, C> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, B, ResB> Service<Request<B>> for Hedge<S, C>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: TryCloneBody,
    C: Classify<Response<ResB>, BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = HedgeFuture<S, B, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let copy = if self.policy.is_retryable_request(&req) {
            clone_request(&req)
        } else {
            None
        };
        // The primary goes through the service made ready, which stays this
        // handle's; the hedge through a clone that the future makes ready.
        let primary = self.inner.call(req);
        let (timer, service) = match copy {
            Some(_) => (
                Some(Box::pin(tokio::time::sleep(self.delay))),
                Some(self.inner.clone()),
            ),
            None => (None, None),
        };
        HedgeFuture {
            primary: Some(primary),
            hedge: None,
            timer,
            service,
            request: copy,
            policy: self.policy.clone(),
            failed: None,
        }
    }
}

pin_project! {
    /// The response of a [`Hedge`] service: the first success of the
    /// original attempt and the hedge, or the last failure.
    pub struct HedgeFuture<S, B, C>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        primary: Option<S::Future>,
        #[pin]
        hedge: Option<S::Future>,
        timer: Option<Pin<Box<Sleep>>>,
        service: Option<S>,
        request: Option<Request<B>>,
        policy: RetryPolicy<C>,
        // The first attempt to fail, kept while the other one runs.
        failed: Option<Result<S::Response, BoxError>>,
    }
}

impl<S, B, C> std::fmt::Debug for HedgeFuture<S, B, C>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeFuture")
            .field("primary_running", &self.primary.is_some())
            .field("hedged", &self.hedge.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, B, C, ResB> Future for HedgeFuture<S, B, C>
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
            if let Some(f) = this.primary.as_mut().as_pin_mut()
                && let Poll::Ready(r) = f.poll(cx)
            {
                this.primary.set(None);
                let r = r.map_err(|e| mesh_core::AttemptError::split(e.into()).1);
                if this.hedge.is_none() || this.failed.is_some() || succeeded(this.policy, &r) {
                    // Not hedged yet (and now never), the hedge failed already,
                    // or a success: this is the answer; any hedge is dropped.
                    return Poll::Ready(r);
                }
                *this.failed = Some(r);
                // Fall through: wait for the hedge.
            }
            if let Some(f) = this.hedge.as_mut().as_pin_mut()
                && let Poll::Ready(r) = f.poll(cx)
            {
                this.hedge.set(None);
                let r = r.map_err(|e| mesh_core::AttemptError::split(e.into()).1);
                if this.primary.is_none() || succeeded(this.policy, &r) {
                    return Poll::Ready(r);
                }
                *this.failed = Some(r);
                continue;
            }
            if this.primary.is_none() && this.hedge.is_none() {
                // Both ended without an answer being returned: cannot happen,
                // but answer with what failed rather than hang.
                return Poll::Ready(
                    this.failed
                        .take()
                        .unwrap_or_else(|| Err("mesh-retry: hedge lost both attempts".into())),
                );
            }
            // Time to hedge?
            let Some(timer) = this.timer.as_mut() else {
                return Poll::Pending;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let Some(service) = this.service.as_mut() else {
                *this.timer = None;
                return Poll::Pending;
            };
            match service.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    // The hedge is optional: carry on with the original.
                    *this.timer = None;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(())) => {}
            }
            *this.timer = None;
            let Some(mut req) = this.request.take() else {
                return Poll::Pending;
            };
            if !this.policy.budget().withdraw() {
                tracing::debug!(reason = "budget_exhausted", "not hedging");
                return Poll::Pending;
            }
            if let Some(name) = this.policy.attempt_header() {
                req.headers_mut()
                    .insert(name.clone(), HeaderValue::from_static("2"));
            }
            tracing::debug!(attempt = 2, reason = "hedge", "hedging request");
            let f = service.call(req);
            this.hedge.set(Some(f));
        }
    }
}

fn succeeded<C, ResB>(policy: &RetryPolicy<C>, r: &Result<Response<ResB>, BoxError>) -> bool
where
    C: Classify<Response<ResB>, BoxError>,
{
    !policy.classifier().classify(r).is_failure()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BudgetConfig, RetryConfig};
    use bytes::Bytes;
    use http_body_util::Full;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;
    use tower::ServiceExt;

    type Req = Request<Full<Bytes>>;

    /// The first call takes `first`, later ones `rest`; answers `status`.
    fn backend(
        first: Duration,
        rest: Duration,
        status: u16,
    ) -> (
        impl Service<Req, Response = Response<()>, Error = BoxError> + Clone,
        Arc<AtomicUsize>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let n = calls.clone();
        let svc = tower::service_fn(move |req: Req| {
            let i = n.fetch_add(1, Ordering::SeqCst);
            let hedge = req.headers().get("x-mesh-attempt").cloned();
            async move {
                tokio::time::sleep(if i == 0 { first } else { rest }).await;
                let mut r = Response::builder().status(status);
                if let Some(h) = hedge {
                    r = r.header("x-was-attempt", h);
                }
                Ok::<_, BoxError>(r.body(()).unwrap())
            }
        });
        (svc, calls)
    }

    fn policy(min_retries_per_second: u32) -> RetryPolicy {
        RetryPolicy::new(RetryConfig {
            budget: BudgetConfig {
                min_retries_per_second,
                retry_ratio: 0.0,
                ..BudgetConfig::default()
            },
            ..RetryConfig::default()
        })
        .unwrap()
    }

    fn req(method: http::Method) -> Req {
        Request::builder()
            .method(method)
            .uri("http://svc/")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_is_hedged_and_the_first_success_wins() {
        let (inner, calls) = backend(Duration::from_secs(5), Duration::from_millis(20), 200);
        let p = policy(1);
        let mut svc = HedgeLayer::new(Duration::from_millis(100), p.clone()).layer(inner);
        let start = Instant::now();
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(req(http::Method::GET))
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(120));
        assert_eq!(res.headers()["x-was-attempt"], "2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(p.budget().remaining(), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn fast_requests_post_and_an_empty_budget_are_not_hedged() {
        let (inner, calls) = backend(Duration::from_millis(10), Duration::ZERO, 200);
        let mut svc = HedgeLayer::new(Duration::from_millis(100), policy(1)).layer(inner);
        svc.ready()
            .await
            .unwrap()
            .call(req(http::Method::GET))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let (inner, calls) = backend(Duration::from_secs(1), Duration::ZERO, 200);
        let mut svc = HedgeLayer::new(Duration::from_millis(100), policy(1)).layer(inner);
        svc.ready()
            .await
            .unwrap()
            .call(req(http::Method::POST))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let (inner, calls) = backend(Duration::from_secs(1), Duration::ZERO, 200);
        let mut svc = HedgeLayer::new(Duration::from_millis(100), policy(0)).layer(inner);
        let start = Instant::now();
        svc.ready()
            .await
            .unwrap()
            .call(req(http::Method::GET))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_hedge_waits_for_the_original() {
        // Both answer 503: the hedge (at 100 + 20 ms) fails first, so the
        // original's answer (at 1 s) is returned.
        let (inner, calls) = backend(Duration::from_secs(1), Duration::from_millis(20), 503);
        let mut svc = HedgeLayer::new(Duration::from_millis(100), policy(1)).layer(inner);
        let start = Instant::now();
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(req(http::Method::GET))
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
        assert!(!res.headers().contains_key("x-was-attempt"));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn any_delay_is_safe() {
        let (inner, calls) = backend(Duration::from_secs(3600), Duration::ZERO, 200);
        let mut svc = HedgeLayer::new(Duration::MAX, policy(1)).layer(inner);
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(req(http::Method::GET))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
