use std::task::{Context, Poll};

use http::StatusCode;
use tower_service::Service;

use super::policy::{CompiledPolicy, Decision, Verdict};
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
        let path = req.uri().path();
        let verdict = self.policy.explain(identity, req.method(), path);
        audit(&verdict, identity, req.method(), path);
        #[cfg(feature = "metrics")]
        metrics::counter!("mesh_auth_authorization_total", "decision" => verdict.decision.as_str())
            .increment(1);
        match verdict.decision {
            Decision::Allow => ResponseFuture::inner(self.inner.call(req)),
            Decision::Deny => {
                ResponseFuture::reject(req.headers(), StatusCode::FORBIDDEN, "7", &[])
            }
        }
    }
}

/// The audit event of one decision, on the `mesh_auth::audit` target:
/// denials at INFO, allows at DEBUG (turn them on with
/// `RUST_LOG=mesh_auth::audit=debug`). The path is logged without its query
/// string; no header, key or body ever is.
fn audit(verdict: &Verdict, identity: Option<&CallerIdentity>, method: &http::Method, path: &str) {
    macro_rules! event {
        ($level:expr, $msg:literal) => {
            tracing::event!(
                target: "mesh_auth::audit",
                $level,
                decision = verdict.decision.as_str(),
                reason = verdict.reason,
                rule = verdict.rule,
                identity = identity.map_or("anonymous", CallerIdentity::as_str),
                kind = identity.map(|i| i.kind().as_str()),
                trust_domain = identity.and_then(CallerIdentity::trust_domain),
                cert_sha256 = identity.and_then(CallerIdentity::certificate_fingerprint),
                method = %method,
                path,
                $msg
            )
        };
    }
    match verdict.decision {
        Decision::Allow => event!(tracing::Level::DEBUG, "request allowed"),
        Decision::Deny => event!(tracing::Level::INFO, "request denied"),
    }
}
