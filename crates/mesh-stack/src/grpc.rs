//! [`GrpcStatusLayer`]: mesh errors reach tonic callers as the `Status` tonic
//! itself would use.
//!
//! # Why
//!
//! A generated tonic client turns its transport's error into a `Status` with
//! `Status::from_error`, which looks for a `Status` (or one of tonic's own
//! transport errors) in the error's source chain and otherwise answers
//! `Unknown`. Behind the mesh, a refused connection, "no ready endpoint" or an
//! open breaker would all reach the caller as `Unknown: ...`, where tonic's
//! `Channel` says `Unavailable`, and code that retries or degrades on
//! `Unavailable` would silently stop working after switching to the mesh.
//!
//! [`GrpcStatus`] sits at the outer edge of the gRPC stack and turns the
//! errors the mesh knows into a boxed `tonic::Status` (kept as the status's
//! source), with the reason in the message:
//!
//! | error (anywhere in the source chain) | status |
//! |---|---|
//! | [`DeadlineExceeded`] (the retry deadline), an attempt timeout | `DeadlineExceeded` |
//! | [`NoReadyEndpoint`], [`EndpointNotReady`], [`BreakerOpen`] | `Unavailable` |
//! | a connection that could not be made (hyper-util's connect error, `ConnectionRefused`) | `Unavailable` |
//! | [`BudgetExhausted`] over none of the above | `Unavailable` |
//!
//! Anything else (a `Status`, an HTTP/2 reset, a hyper error) goes through
//! unchanged, for tonic to map as it always does.
//!
//! [`Mesh::grpc_channel`](crate::Mesh::grpc_channel) includes this layer;
//! wrap a stack from [`Mesh::grpc_client`](crate::Mesh::grpc_client) over
//! your own inner client with it.
//!
//! # Example
//!
//! ```
//! use mesh_stack::GrpcStatusLayer;
//! use mesh_stack::core::BoxError;
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let refused = tower::service_fn(|_: ()| async {
//!     Err::<(), BoxError>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into())
//! });
//! let err = GrpcStatusLayer::new().layer(refused).oneshot(()).await.unwrap_err();
//! let status = err.downcast_ref::<tonic::Status>().unwrap();
//! assert_eq!(status.code(), tonic::Code::Unavailable);
//! # }
//! ```

use std::error::Error;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use mesh_breaker::BreakerOpen;
use mesh_core::BoxError;
use mesh_discovery::router::{EndpointNotReady, NoReadyEndpoint};
use mesh_retry::{BudgetExhausted, DeadlineExceeded};
use pin_project_lite::pin_project;
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

use crate::inner::HyperClient;
use crate::mesh::GrpcMeshService;

/// The client [`Mesh::grpc_channel`](crate::Mesh::grpc_channel) builds: the
/// gRPC stack over an HTTP/2 hyper-util client with `TCP_NODELAY`, its
/// errors mapped to tonic statuses. Give it to a generated client:
/// `GreeterClient::with_origin(channel, "http://greeter".parse()?)`.
pub type GrpcChannel =
    GrpcStatus<GrpcMeshService<HyperClient<mesh_retry::ReplayBody<tonic::body::Body>>>>;

/// Wraps a service in [`GrpcStatus`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcStatusLayer {
    _priv: (),
}

impl GrpcStatusLayer {
    /// The layer.
    pub const fn new() -> Self {
        Self { _priv: () }
    }
}

impl<S> Layer<S> for GrpcStatusLayer {
    type Service = GrpcStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcStatus::new(inner)
    }
}

/// A service whose mesh errors become boxed `tonic::Status`es; see the
/// [module docs](self) for the mapping.
///
/// A readiness error (the router's `NoReadyEndpoint` after its bounded
/// wait) is held and returned by the next call: tonic's generated clients
/// turn any `poll_ready` error into `Unknown` ("Service was not ready"),
/// while an error from the call keeps the status given here.
#[derive(Debug)]
pub struct GrpcStatus<S> {
    inner: S,
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for GrpcStatus<S> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone())
    }
}

impl<S> GrpcStatus<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            not_ready: None,
        }
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
}

impl<S, R> Service<R> for GrpcStatus<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = GrpcStatusFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.not_ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => {
                self.not_ready = Some(into_status_error(e.into()));
                Poll::Ready(Ok(()))
            }
            other => other.map_err(Into::into),
        }
    }

    fn call(&mut self, req: R) -> Self::Future {
        match self.not_ready.take() {
            Some(error) => GrpcStatusFuture {
                kind: Kind::NotReady { error: Some(error) },
            },
            None => GrpcStatusFuture {
                kind: Kind::Called {
                    inner: self.inner.call(req),
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`GrpcStatus`].
    #[derive(Debug)]
    pub struct GrpcStatusFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Called { #[pin] inner: F },
        NotReady { error: Option<BoxError> },
    }
}

impl<F, T, E> Future for GrpcStatusFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { inner } => {
                let result = ready!(inner.poll(cx));
                Poll::Ready(result.map_err(|e| into_status_error(e.into())))
            }
            KindProj::NotReady { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "grpc status future polled after completion".into()))),
        }
    }
}

/// `error` as a boxed `tonic::Status` when the mesh knows what it means,
/// else unchanged.
fn into_status_error(error: BoxError) -> BoxError {
    match code_for(&*error) {
        Some(code) => {
            let mut status = Status::new(code, chain_message(&*error));
            status.set_source(Arc::from(error));
            Box::new(status)
        }
        None => error,
    }
}

/// The status code tonic would use for `error`, if the mesh knows better
/// than `Status::from_error`'s `Unknown`. The outermost known error wins: a
/// deadline that passed while the last attempt's connect failed is a deadline.
pub fn code_for(error: &(dyn Error + 'static)) -> Option<Code> {
    let mut budget_exhausted = false;
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<Status>() {
            // tonic finds it itself.
            return None;
        }
        if e.is::<DeadlineExceeded>()
            || e.is::<tower::timeout::error::Elapsed>()
            || e.is::<tokio::time::error::Elapsed>()
        {
            return Some(Code::DeadlineExceeded);
        }
        if e.is::<NoReadyEndpoint>() || e.is::<EndpointNotReady>() || e.is::<BreakerOpen>() {
            return Some(Code::Unavailable);
        }
        if e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
            || e.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::ConnectionRefused)
        {
            return Some(Code::Unavailable);
        }
        budget_exhausted |= e.is::<BudgetExhausted>();
        next = e.source();
    }
    budget_exhausted.then_some(Code::Unavailable)
}

/// "outer: inner: innermost", skipping a source whose text its parent
/// already ends with (thiserror's `#[error(transparent)]` and the like).
fn chain_message(error: &(dyn Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let text = e.to_string();
        if !message.ends_with(&text) {
            let _ = write!(message, ": {text}");
        }
        next = e.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    #[derive(Debug)]
    struct Wrap(&'static str, BoxError);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.1)
        }
    }

    fn mapped(error: BoxError) -> Status {
        let mapped = into_status_error(error);
        // What a generated tonic client does with its transport's error.
        Status::from_error(mapped)
    }

    #[test]
    fn a_refused_connection_is_unavailable_with_the_reason() {
        let refused: BoxError = Box::new(Wrap(
            "client error (Connect)",
            io::Error::from(io::ErrorKind::ConnectionRefused).into(),
        ));
        let status = mapped(refused);
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().starts_with("client error (Connect): "));
        assert!(
            status.source().is_some(),
            "the original error stays reachable"
        );
    }

    #[tokio::test]
    async fn an_open_breaker_is_unavailable() {
        use tower::ServiceExt;

        let ok = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, BoxError>(http::Response::new(()))
        });
        let breaker =
            mesh_breaker::CircuitBreakerLayer::new(mesh_breaker::BreakerConfig::default())
                .unwrap()
                .name("users")
                .layer(ok);
        breaker.handle().force_open();
        let err = GrpcStatusLayer::new()
            .layer(breaker)
            .oneshot(http::Request::new(()))
            .await
            .unwrap_err();
        let status = Status::from_error(err);
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }

    #[test]
    fn an_attempt_timeout_is_deadline_exceeded() {
        let status = mapped(Box::new(tower::timeout::error::Elapsed::new()));
        assert_eq!(status.code(), Code::DeadlineExceeded);
    }

    #[test]
    fn a_status_and_unknown_errors_go_through_unchanged() {
        let status = mapped(Box::new(Status::not_found("nope")));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "nope");
        let status = mapped(io::Error::other("odd").into());
        assert_eq!(status.code(), Code::Unknown);
    }

    #[test]
    fn messages_do_not_repeat_transparent_sources() {
        let inner: BoxError = io::Error::other("boom").into();
        let error = Wrap("boom", inner);
        assert_eq!(chain_message(&error), "boom");
    }
}
