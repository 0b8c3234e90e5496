//! [`ReplayBodyLayer`]: makes streaming request bodies replayable.

use std::task::{Context, Poll};

use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ReplayBody;
use crate::config::DEFAULT_MAX_REPLAY_BODY;

/// Wraps each request body in a [`ReplayBody`] keeping up to `cap` bytes, so
/// that a [`RetryLayer`](crate::RetryLayer) inside it can retry requests whose
/// bodies stream (hyper's `Incoming`, tonic's and reqwest's boxed bodies).
///
/// Put it *outside* the retry layer:
///
/// ```
/// use mesh_retry::{ReplayBodyLayer, RetryConfig, RetryLayer};
/// use tower::ServiceBuilder;
///
/// let config = RetryConfig::default();
/// let _builder = ServiceBuilder::new()
///     .layer(ReplayBodyLayer::new(config.max_replay_body))
///     .layer(RetryLayer::new(config).unwrap());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ReplayBodyLayer {
    cap: usize,
}

impl ReplayBodyLayer {
    /// Keeps up to `cap` bytes of each body for replay.
    pub const fn new(cap: usize) -> Self {
        Self { cap }
    }
}

impl Default for ReplayBodyLayer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_REPLAY_BODY)
    }
}

impl<S> Layer<S> for ReplayBodyLayer {
    type Service = WithReplayBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithReplayBody {
            inner,
            cap: self.cap,
        }
    }
}

/// The service of [`ReplayBodyLayer`].
#[derive(Debug, Clone)]
pub struct WithReplayBody<S> {
    inner: S,
    cap: usize,
}

impl<S> WithReplayBody<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<Request<B>> for WithReplayBody<S>
where
    S: Service<Request<ReplayBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let cap = self.cap;
        self.inner.call(req.map(|b| ReplayBody::new(b, cap)))
    }
}
