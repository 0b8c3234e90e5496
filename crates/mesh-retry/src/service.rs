//! [`RetryService`].

use std::task::{Context, Poll};

use http::{Request, Response};
use mesh_core::classify::Classify;
use mesh_core::{BoxError, CallDeadline};
use tower_service::Service;

use crate::body::TryCloneBody;
use crate::copy::RequestCopy;
use crate::future::ResponseFuture;
use crate::policy::RetryPolicy;

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
        if let Some(deadline) = policy.deadline() {
            // For the layers below: a per-attempt timeout there bounds the
            // attempt, and its response body, by the deadline too.
            req.extensions_mut().insert(CallDeadline(deadline));
        }
        // A request that may not be retried is still copied for requeues
        // (sent again only if it provably never reached a server).
        policy.may_retry = policy.config().max_retries > 0 && policy.is_retryable_request(&req);
        let copy = if policy.may_retry || policy.config().max_requeues > 0 {
            RequestCopy::of(&req)
        } else {
            None
        };
        policy.pending_record = copy.is_some() && policy.needs_record(&req);
        // The first attempt goes through the service made ready.
        let future = self.inner.call(req);
        // Retries go through a clone, which the future makes ready before
        // each retry; none when the request cannot be retried.
        let service = copy.is_some().then(|| self.inner.clone());
        ResponseFuture::new(future, service, copy, policy)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use mesh_core::TriedEndpoints;
    use mesh_core::backoff::{Backoff, Jitter};
    use tower::{ServiceBuilder, ServiceExt};

    use super::*;
    use crate::{RetryConfig, RetryLayer};

    type Req = Request<Full<Bytes>>;

    fn config() -> RetryConfig {
        RetryConfig {
            backoff: Backoff::new(Duration::from_millis(1), 2.0, Duration::from_millis(5))
                .with_jitter(Jitter::None),
            ..RetryConfig::default()
        }
    }

    /// Like the discovery router behind a `Buffer` or a spawned task: picks
    /// an endpoint (the attempt number) only when its future is polled, on
    /// whatever task polls it, and answers 503 then 200.
    fn picks_when_polled(
        log: Arc<Mutex<Vec<Option<TriedEndpoints>>>>,
    ) -> impl Service<Req, Response = Response<()>, Error = BoxError, Future: Send> + Clone {
        tower::service_fn(move |req: Req| {
            let log = log.clone();
            async move {
                tokio::task::yield_now().await;
                let tried = req.extensions().get::<TriedEndpoints>().cloned();
                let mut log = log.lock().unwrap();
                let attempt = log.len() as u64 + 1;
                let report = tried.is_none();
                if let Some(tried) = &tried {
                    tried.record_id(attempt);
                }
                log.push(tried);
                let status = if attempt == 1 { 503 } else { 200 };
                let mut response = Response::builder().status(status).body(()).unwrap();
                if report && status != 200 {
                    // What the router does for a request without a record.
                    mesh_core::ReportEndpoint::report_endpoint(&mut response, attempt);
                }
                Ok::<_, BoxError>(response)
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_pick_made_while_polled_reaches_the_retry() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut svc = ServiceBuilder::new()
            .layer(RetryLayer::new(config()).unwrap())
            .service(picks_when_polled(log.clone()));
        let req = Request::get("http://svc/x").body(Full::default()).unwrap();
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(
            res.extensions().get::<mesh_core::TriedEndpoint>().is_none(),
            "the report never reaches the caller"
        );
        let log = log.lock().unwrap();
        assert!(
            log[0].is_none(),
            "no record allocated for the first attempt"
        );
        let tried = log[1].as_ref().expect("the retry carries a record");
        assert!(tried.contains_id(1) && tried.contains_id(2));
        assert_eq!(tried.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn without_tracking_no_attempt_carries_a_record() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let config = RetryConfig {
            track_tried_endpoints: false,
            ..config()
        };
        let mut svc = ServiceBuilder::new()
            .layer(RetryLayer::new(config).unwrap())
            .service(picks_when_polled(log.clone()));
        let req = Request::get("http://svc/x").body(Full::default()).unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2);
        assert!(log.iter().all(Option::is_none));
    }
}
