use tower_layer::Layer;

use super::policy::CompiledPolicy;
use super::service::Authorize;

/// Allows or denies each request by its caller's
/// [`CallerIdentity`](crate::CallerIdentity), method and path; a denied request
/// gets `403 Forbidden` with an empty body.
///
/// Put it inside the layer that authenticates (the mTLS serve loop or
/// [`ApiKeyAuthLayer`](crate::apikey::ApiKeyAuthLayer)), so the identity is
/// in the extensions when it runs.
#[derive(Debug, Clone)]
pub struct AuthorizeLayer {
    policy: CompiledPolicy,
}

impl AuthorizeLayer {
    /// A layer enforcing `policy`.
    pub const fn new(policy: CompiledPolicy) -> Self {
        Self { policy }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize::new(inner, self.policy.clone())
    }
}
