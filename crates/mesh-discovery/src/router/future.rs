//! The router's response futures.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
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
        guard: Option<LoadGuard>,
        classifier: C,
        #[pin]
        state: State<T, R, T::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<T, R, F> {
        // The stack was not ready when the request was dispatched. Boxed:
        // the rare path, and unboxed the stack and the request would make
        // every call's future (moved several times on its way to the
        // executor) hundreds of bytes larger.
        NotReady { waiting: Box<NotReady<T, R>> },
        Called { #[pin] future: F },
        // The stack refused before sending (its `poll_ready` failed).
        Refused { error: Option<BoxError> },
    }
}

/// A request waiting for its stack to become ready.
pub(crate) struct NotReady<T, R> {
    service: T,
    request: Option<R>,
    ready_timeout: Duration,
    // Created only if the stack stays not ready after the first poll: no
    // timer on the fast path.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<T, R, C> Dispatch<T, R, C>
where
    T: Service<R>,
    T::Error: Into<BoxError>,
{
    /// Starts the attempt at once when the stack is ready (the usual case),
    /// so the request goes straight to the stack and only its response
    /// future is kept: readiness is asked with a no-op waker, and a stack
    /// that is not ready is asked again, with the caller's waker, when the
    /// future is polled (`poll_ready` may be called any number of times).
    #[inline]
    pub(crate) fn start(
        mut service: T,
        request: R,
        guard: LoadGuard,
        classifier: C,
        ready_timeout: Duration,
    ) -> Self {
        let mut cx = Context::from_waker(Waker::noop());
        let (guard, state) = match service.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => (
                Some(guard),
                State::Called {
                    future: service.call(request),
                },
            ),
            // Not the server's doing: no outcome to record.
            Poll::Ready(Err(e)) => (
                None,
                State::Refused {
                    error: Some(e.into()),
                },
            ),
            Poll::Pending => (
                Some(guard),
                State::NotReady {
                    waiting: Box::new(NotReady {
                        service,
                        request: Some(request),
                        ready_timeout,
                        sleep: None,
                    }),
                },
            ),
        };
        Self {
            guard,
            classifier,
            state,
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

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    if let Some(guard) = this.guard.take() {
                        guard.record(this.classifier.classify(&result));
                    }
                    return Poll::Ready(result.map_err(Into::into));
                }
                StateProj::NotReady { waiting } => match waiting.service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let Some(request) = waiting.request.take() else {
                            return Poll::Ready(
                                Err("router future polled after completion".into()),
                            );
                        };
                        let future = waiting.service.call(request);
                        this.state.set(State::Called { future });
                    }
                    Poll::Ready(Err(e)) => {
                        // The stack refused before sending: not the server's doing.
                        this.guard.take();
                        return Poll::Ready(Err(e.into()));
                    }
                    Poll::Pending => {
                        let timeout = waiting.ready_timeout;
                        let sleep = waiting
                            .sleep
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
                StateProj::Refused { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| "router future polled after completion".into())));
                }
            }
        }
    }
}
