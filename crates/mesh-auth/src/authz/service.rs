use std::task::{Context, Poll};

use http::StatusCode;
use tower_service::Service;

use super::policy::{CompiledPolicy, Decision};
use crate::future::ResponseFuture;
use crate::identity::CallerIdentity;

/// The service of [`AuthorizeLayer`](super::AuthorizeLayer).
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    policy: CompiledPolicy,
}

impl<S> Authorize<S> {
    /// Wraps `inner`, enforcing `policy`.
    pub const fn new(inner: S, policy: CompiledPolicy) -> Self {
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

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Authorize<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let identity = req.extensions().get::<CallerIdentity>();
        let decision = self.policy.decide(identity, req.method(), req.uri().path());
        let who = identity.map_or("anonymous", CallerIdentity::as_str);
        #[cfg(feature = "metrics")]
        metrics::counter!("mesh_auth_authorization_total", "decision" => decision.as_str())
            .increment(1);
        match decision {
            Decision::Allow => {
                tracing::debug!(identity = who, method = %req.method(), "request allowed");
                ResponseFuture::inner(self.inner.call(req))
            }
            Decision::Deny => {
                tracing::info!(identity = who, method = %req.method(), "request denied");
                ResponseFuture::reject(req.headers(), StatusCode::FORBIDDEN, "7", &[])
            }
        }
    }
}
