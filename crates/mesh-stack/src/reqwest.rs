//! [`ReqwestService`]: a `reqwest::Client` as a `Service<http::Request<B>>`.
//!
//! The mesh's retry layer works on `http::Request`s (it clones them for
//! another attempt); `reqwest::Client` takes `reqwest::Request`s. This
//! adapter converts at the bottom of the stack, so the whole stack, retry
//! included, runs over reqwest's connection pool, TLS and proxies.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use mesh_core::BoxError;
use pin_project_lite::pin_project;
use tower_service::Service;

type Pending = <reqwest::Client as Service<reqwest::Request>>::Future;

/// A `reqwest::Client` that takes `http::Request<B>` (`B: Into<reqwest::Body>`)
/// and answers `http::Response<reqwest::Body>`.
#[derive(Debug, Clone)]
pub struct ReqwestService {
    client: reqwest::Client,
}

impl ReqwestService {
    /// Wraps `client`.
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }

    /// The client.
    pub fn get_ref(&self) -> &reqwest::Client {
        &self.client
    }
}

impl<B: Into<reqwest::Body>> Service<http::Request<B>> for ReqwestService {
    type Response = http::Response<reqwest::Body>;
    type Error = BoxError;
    type Future = ReqwestFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<reqwest::Request>::poll_ready(&mut self.client, cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match reqwest::Request::try_from(req) {
            Ok(req) => ReqwestFuture::Sent {
                future: self.client.call(req),
            },
            Err(e) => ReqwestFuture::Failed {
                error: Some(e.into()),
            },
        }
    }
}

pin_project! {
    /// The response future of [`ReqwestService`].
    #[project = ReqwestFutureProj]
    #[allow(missing_docs)]
    pub enum ReqwestFuture {
        Sent { #[pin] future: Pending },
        Failed { error: Option<BoxError> },
    }
}

impl std::fmt::Debug for ReqwestFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReqwestFuture").finish_non_exhaustive()
    }
}

impl Future for ReqwestFuture {
    type Output = Result<http::Response<reqwest::Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ReqwestFutureProj::Sent { future } => future
                .poll(cx)
                .map(|r| r.map(http::Response::from).map_err(Into::into)),
            ReqwestFutureProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "ReqwestFuture polled after completion".into()))),
        }
    }
}
