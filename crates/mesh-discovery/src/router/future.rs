//! The router's response futures.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use mesh_balance::LoadGuard;
use mesh_core::classify::Classify;
use mesh_core::eos::{AtResponse, TrackOutcome};
use mesh_core::{AttemptError, BoxError, ReportEndpoint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::error::EndpointNotReady;

pin_project! {
    /// The future [`DiscoveryService`](super::DiscoveryService) returns: one
    /// attempt on the endpoint the balancer chose, or the error that no
    /// endpoint could be chosen.
    pub struct ResponseFuture<T, R, C, M = AtResponse>
    where
        T: Service<R>,
    {
        #[pin]
        kind: Kind<T, R, C, M>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<T, R, C, M>
    where
        T: Service<R>,
    {
        Dispatch { #[pin] dispatch: Dispatch<T, R, C, M> },
        Failed { error: Option<BoxError> },
    }
}

impl<T: Service<R>, R, C, M> ResponseFuture<T, R, C, M> {
    pub(crate) fn dispatch(dispatch: Dispatch<T, R, C, M>) -> Self {
        Self {
            kind: Kind::Dispatch { dispatch },
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        Self {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

impl<T: Service<R>, R, C, M> fmt::Debug for ResponseFuture<T, R, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<T, R, C, M> Future for ResponseFuture<T, R, C, M>
where
    T: Service<R>,
    T::Response: ReportEndpoint,
    T::Error: Into<BoxError>,
    C: Classify<T::Response, T::Error>,
    M: TrackOutcome<T::Response, C>,
{
    type Output = Result<M::Output<LoadGuard>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Dispatch { dispatch } => dispatch.poll(cx),
            KindProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "router future polled after completion".into()))),
        }
    }
}

pin_project! {
    /// One attempt on one endpoint: wait for its stack to be ready (bounded,
    /// with the caller's waker), call it, classify the result and record it
    /// in the endpoint's load accounting. Dropping it before the end counts
    /// as neither success nor failure.
    pub(crate) struct Dispatch<T, R, C, M>
    where
        T: Service<R>,
    {
        guard: Option<LoadGuard>,
        classifier: C,
        mode: M,
        // The request carried no tried-endpoints record: report the endpoint
        // back with a failed result (see `mesh_core::TriedEndpoint`).
        report: bool,
        #[pin]
        state: State<T, R, T::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<T, R, F> {
        // Not sent yet: the stack's readiness is asked when the future is
        // first polled, with the caller's waker.
        Pending {
            service: T,
            request: Option<R>,
            ready_timeout: Duration,
            // Made only if the stack is not ready at the first poll: no
            // timer on the fast path.
            sleep: Option<Pin<Box<Sleep>>>,
        },
        Called { #[pin] future: F },
    }
}

impl<T, R, C, M> Dispatch<T, R, C, M>
where
    T: Service<R>,
{
    #[inline]
    pub(crate) fn new(
        service: T,
        request: R,
        guard: LoadGuard,
        classifier: C,
        mode: M,
        ready_timeout: Duration,
        report: bool,
    ) -> Self {
        Self {
            guard: Some(guard),
            classifier,
            mode,
            report,
            state: State::Pending {
                service,
                request: Some(request),
                ready_timeout,
                sleep: None,
            },
        }
    }
}

impl<T, R, C, M> Future for Dispatch<T, R, C, M>
where
    T: Service<R>,
    T::Response: ReportEndpoint,
    T::Error: Into<BoxError>,
    C: Classify<T::Response, T::Error>,
    M: TrackOutcome<T::Response, C>,
{
    type Output = Result<M::Output<LoadGuard>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    let Some(guard) = this.guard.take() else {
                        return Poll::Ready(match result {
                            Ok(response) => Ok(this.mode.untracked(response)),
                            Err(e) => Err(e.into()),
                        });
                    };
                    let outcome = this.classifier.classify(&result);
                    let failed = outcome.is_failure() || outcome.is_retryable();
                    let result = if *this.report && failed {
                        report(result, guard.key_id())
                    } else {
                        result.map_err(Into::into)
                    };
                    // Recorded now, or (at end of stream) when the body ends:
                    // the request stays in flight until then.
                    return Poll::Ready(match result {
                        Ok(response) => {
                            Ok(this.mode.track(this.classifier, response, outcome, guard))
                        }
                        Err(e) => {
                            guard.record(outcome);
                            Err(e)
                        }
                    });
                }
                StateProj::Pending {
                    service,
                    request,
                    ready_timeout,
                    sleep,
                } => match service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let Some(request) = request.take() else {
                            return Poll::Ready(
                                Err("router future polled after completion".into()),
                            );
                        };
                        let future = service.call(request);
                        this.state.set(State::Called { future });
                    }
                    Poll::Ready(Err(e)) => {
                        // The stack refused before sending: not the server's
                        // doing, so nothing is recorded; the endpoint is
                        // reported, so that a requeue goes elsewhere.
                        let guard = this.guard.take();
                        return Poll::Ready(unsent(guard, *this.report, e.into()));
                    }
                    Poll::Pending => {
                        let timeout = *ready_timeout;
                        let sleep =
                            sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                        ready!(sleep.as_mut().poll(cx));
                        let guard = this.guard.take();
                        let endpoint = guard
                            .as_ref()
                            .map(|g| g.key().to_string())
                            .unwrap_or_default();
                        let error = EndpointNotReady {
                            endpoint,
                            waited: timeout,
                        };
                        return Poll::Ready(unsent(guard, *this.report, error.into()));
                    }
                },
            }
        }
    }
}

/// An error raised before the request was handed to the endpoint's stack:
/// the load guard ends without a record, and the endpoint is reported (for a
/// request without a tried-endpoints record) so that a requeue avoids it.
#[cold]
#[inline(never)]
fn unsent<Res>(guard: Option<LoadGuard>, report: bool, error: BoxError) -> Result<Res, BoxError> {
    match guard {
        Some(guard) if report => Err(Box::new(AttemptError::new(guard.key_id(), error))),
        _ => Err(error),
    }
}

/// A failed result of a request without a tried-endpoints record, with the
/// endpoint it went to: in the response's extensions, or around the error.
#[cold]
#[inline(never)]
fn report<Res: ReportEndpoint, E: Into<BoxError>>(
    result: Result<Res, E>,
    id: u64,
) -> Result<Res, BoxError> {
    match result {
        Ok(mut response) => {
            response.report_endpoint(id);
            Ok(response)
        }
        Err(e) => Err(Box::new(AttemptError::new(id, e.into()))),
    }
}
