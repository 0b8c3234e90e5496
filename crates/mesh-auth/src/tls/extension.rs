//! Putting a connection's identity into each of its requests.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::identity::CallerIdentity;

/// Inserts a fixed [`CallerIdentity`] (the connection's) into every request.
///
/// An mTLS identity belongs to the connection; hyper serves each connection
/// with its own service, so wrap that service in this layer.
#[derive(Debug, Clone)]
pub struct AddIdentityLayer {
    identity: CallerIdentity,
}

impl AddIdentityLayer {
    /// A layer inserting `identity`.
    pub const fn new(identity: CallerIdentity) -> Self {
        Self { identity }
    }
}

impl<S> Layer<S> for AddIdentityLayer {
    type Service = AddIdentity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AddIdentity::new(inner, self.identity.clone())
    }
}

/// The service of [`AddIdentityLayer`].
#[derive(Debug, Clone)]
pub struct AddIdentity<S> {
    inner: S,
    identity: CallerIdentity,
}

impl<S> AddIdentity<S> {
    /// Wraps `inner`, inserting `identity` into every request.
    pub const fn new(inner: S, identity: CallerIdentity) -> Self {
        Self { inner, identity }
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

impl<S, B> Service<http::Request<B>> for AddIdentity<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.identity.clone());
        self.inner.call(req)
    }
}
