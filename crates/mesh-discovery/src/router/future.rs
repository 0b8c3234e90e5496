//! The router's response futures.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use mesh_balance::LoadGuard;
use mesh_core::BoxError;
use mesh_core::classify::Classify;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::error::EndpointNotReady;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pin_project! {
    /// The future [`DiscoveryService`](super::DiscoveryService) returns.
    ///
    /// On the fast path it drives the chosen endpoint's stack directly, with no
    /// allocation; only a request that found no endpoint (and must wait for
    /// one) is boxed.
    pub struct ResponseFuture<T, R, C>
    where
        T: Service<R>,
    {
        #[pin]
        kind: Kind<T, R, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<T, R, C>
    where
        T: Service<R>,
    {
        Dispatch { #[pin] dispatch: Dispatch<T, R, C> },
        Waiting { future: BoxFuture<Result<T::Response, BoxError>> },
    }
}

impl<T: Service<R>, R, C> ResponseFuture<T, R, C> {
    pub(crate) fn dispatch(dispatch: Dispatch<T, R, C>) -> Self {
        Self {
            kind: Kind::Dispatch { dispatch },
        }
    }

    pub(crate) fn waiting(future: BoxFuture<Result<T::Response, BoxError>>) -> Self {
        Self {
            kind: Kind::Waiting { future },
        }
    }
}

impl<T: Service<R>, R, C> fmt::Debug for ResponseFuture<T, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<T, R, C> Future for ResponseFuture<T, R, C>
where
    T: Service<R>,
    T::Error: Into<BoxError>,
    C: Classify<T::Response, T::Error>,
{
    type Output = Result<T::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Dispatch { dispatch } => dispatch.poll(cx),
            KindProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

pin_project! {
    /// One attempt on one endpoint: wait for its stack to be ready (bounded),
    /// call it, classify the result and record it in the endpoint's load
    /// accounting. Dropping it before the end counts as neither success nor
    /// failure.
    pub(crate) struct Dispatch<T, R, C>
    where
        T: Service<R>,
    {
        service: T,
        request: Option<R>,
        guard: Option<LoadGuard>,
        classifier: C,
        ready_timeout: Duration,
        // Created only if the stack is not ready at once (a breaker in
        // readiness mode, a concurrency limit): no timer on the fast path.
        not_ready: Option<Pin<Box<Sleep>>>,
        #[pin]
        state: State<T::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Ready,
        Called { #[pin] future: F },
    }
}

impl<T: Service<R>, R, C> Dispatch<T, R, C> {
    pub(crate) fn new(
        service: T,
        request: R,
        guard: LoadGuard,
        classifier: C,
        ready_timeout: Duration,
    ) -> Self {
        Self {
            service,
            request: Some(request),
            guard: Some(guard),
            classifier,
            ready_timeout,
            not_ready: None,
            state: State::Ready,
        }
    }
}

impl<T, R, C> Future for Dispatch<T, R, C>
where
    T: Service<R>,
    T::Error: Into<BoxError>,
    C: Classify<T::Response, T::Error>,
{
    type Output = Result<T::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Ready => match this.service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let Some(request) = this.request.take() else {
                            return Poll::Ready(
                                Err("router future polled after completion".into()),
                            );
                        };
                        let future = this.service.call(request);
                        this.state.set(State::Called { future });
                    }
                    Poll::Ready(Err(e)) => {
                        // The stack refused before sending: not the server's doing.
                        this.guard.take();
                        return Poll::Ready(Err(e.into()));
                    }
                    Poll::Pending => {
                        let timeout = *this.ready_timeout;
                        let sleep = this
                            .not_ready
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                        ready!(sleep.as_mut().poll(cx));
                        let endpoint = this
                            .guard
                            .take()
                            .map(|g| g.key().to_string())
                            .unwrap_or_default();
                        return Poll::Ready(Err(EndpointNotReady {
                            endpoint,
                            waited: timeout,
                        }
                        .into()));
                    }
                },
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    if let Some(guard) = this.guard.take() {
                        guard.record(this.classifier.classify(&result));
                    }
                    return Poll::Ready(result.map_err(Into::into));
                }
            }
        }
    }
}
