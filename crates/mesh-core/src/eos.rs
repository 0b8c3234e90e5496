//! Outcomes at end of stream: when a layer that records outcomes (a
//! breaker, a balancer) learns how a call went.
//!
//! A response's headers do not always tell how the call went. The body can
//! still fail (the connection breaks, a time limit fires mid-body), and a
//! gRPC server sends its `grpc-status` in the *trailers* of any response
//! that carries a message: a stream that sends three messages and then
//! `UNAVAILABLE` has headers that look like success. tower-http answers
//! this with `ClassifyEos`; this module is mesh's version of it.
//!
//! A recording layer is generic over *when* it records, a
//! [`TrackOutcome`] mode, like tower's `TrackCompletion`:
//!
//! - [`AtResponse`] (the layers' default): the outcome is recorded when the
//!   response (its headers, for HTTP) arrives. Works for any response type.
//! - [`AtEndOfStream`]: for `http::Response<B>`, a response whose headers
//!   say "so far, success" and whose body is not already finished is
//!   recorded when its body ends, through an [`EosBody`]: a body error is a
//!   failure, trailers are classified ([`ClassifyEos`]: `grpc-status` for
//!   [`GrpcClassifier`]), and the time to
//!   the end of the body is the call's latency. A response the headers
//!   already decide (a 503, a trailers-only gRPC error, an empty body) is
//!   recorded at once, as with `AtResponse`.
//!
//! A body dropped before its end (the caller stopped reading) records what
//! the headers said: the server did nothing wrong.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use mesh_core::classify::DefaultHttpClassifier;
//! use mesh_core::eos::{AtEndOfStream, Record, TrackOutcome};
//! use mesh_core::Outcome;
//! use std::sync::{Arc, Mutex};
//!
//! #[derive(Clone, Default)]
//! struct Log(Arc<Mutex<Vec<Outcome>>>);
//! impl Record for Log {
//!     fn record(self, outcome: Outcome) {
//!         self.0.lock().unwrap().push(outcome);
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let log = Log::default();
//! let response = http::Response::new(Full::new(Bytes::from_static(b"hello")));
//! let tracked = AtEndOfStream.track(&DefaultHttpClassifier, response, Outcome::Success, log.clone());
//! assert!(log.0.lock().unwrap().is_empty(), "not yet: the body has not ended");
//! let body = tracked.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "hello");
//! assert_eq!(*log.0.lock().unwrap(), [Outcome::Success]);
//! # }
//! ```

use std::error::Error;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::classify::{
    DefaultHttpClassifier, GrpcClassifier, GrpcCode, HttpClassifier, as_dyn_error,
};
use crate::outcome::Outcome;

/// Classifies how a response body ended, for a response whose headers
/// said "success so far".
pub trait ClassifyEos {
    /// The body ended, with `trailers` if it sent any.
    fn classify_eos(&self, trailers: Option<&HeaderMap>) -> Outcome;

    /// The body failed with `error` (a broken connection, a time limit).
    fn classify_body_error(&self, error: &(dyn Error + 'static)) -> Outcome {
        let _ = error;
        Outcome::fatal()
    }
}

impl<C: ClassifyEos + ?Sized> ClassifyEos for &C {
    fn classify_eos(&self, trailers: Option<&HeaderMap>) -> Outcome {
        (**self).classify_eos(trailers)
    }
    fn classify_body_error(&self, error: &(dyn Error + 'static)) -> Outcome {
        (**self).classify_body_error(error)
    }
}

impl<C: ClassifyEos + ?Sized> ClassifyEos for Arc<C> {
    fn classify_eos(&self, trailers: Option<&HeaderMap>) -> Outcome {
        (**self).classify_eos(trailers)
    }
    fn classify_body_error(&self, error: &(dyn Error + 'static)) -> Outcome {
        (**self).classify_body_error(error)
    }
}

/// HTTP: a body that ends is a success, whatever its trailers; a body error
/// is a failure (never retryable: the response was already returned).
impl ClassifyEos for HttpClassifier {
    fn classify_eos(&self, _trailers: Option<&HeaderMap>) -> Outcome {
        Outcome::Success
    }
}

impl ClassifyEos for DefaultHttpClassifier {
    fn classify_eos(&self, _trailers: Option<&HeaderMap>) -> Outcome {
        Outcome::Success
    }
}

/// gRPC: the `grpc-status` of the trailers. A body that ends without
/// trailers after headers without `grpc-status` broke the protocol:
/// `UNKNOWN`, as gRPC clients report it.
impl ClassifyEos for GrpcClassifier {
    fn classify_eos(&self, trailers: Option<&HeaderMap>) -> Outcome {
        match trailers {
            Some(trailers) => self.classify_trailers(trailers),
            None => self.classify_code(GrpcCode::Unknown, &HeaderMap::new()),
        }
    }
}

/// Receives the outcome of one call, once. Dropped without a call, it
/// records nothing.
pub trait Record {
    /// Records `outcome`.
    fn record(self, outcome: Outcome);
}

/// When a recording layer records a call's outcome: see the
/// [module docs](self).
pub trait TrackOutcome<Res, C> {
    /// The response the layer returns, holding `R` until it records.
    type Output<R: Record>;

    /// Records `outcome` (how `classifier` classified `response`) through
    /// `recorder`, now or when the response ends.
    fn track<R: Record>(
        &self,
        classifier: &C,
        response: Res,
        outcome: Outcome,
        recorder: R,
    ) -> Self::Output<R>;

    /// `response` of a call that records nothing (a breaker letting a call
    /// through uncounted), in the same type.
    fn untracked<R: Record>(&self, response: Res) -> Self::Output<R>;
}

/// Records when the response arrives (for HTTP, at its headers). The
/// default mode of every recording layer; works for any response type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AtResponse;

impl<Res, C> TrackOutcome<Res, C> for AtResponse {
    type Output<R: Record> = Res;

    #[inline]
    fn track<R: Record>(&self, _: &C, response: Res, outcome: Outcome, recorder: R) -> Res {
        recorder.record(outcome);
        response
    }

    #[inline]
    fn untracked<R: Record>(&self, response: Res) -> Res {
        response
    }
}

/// Records when an HTTP response's body ends (see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AtEndOfStream;

impl<B, C> TrackOutcome<http::Response<B>, C> for AtEndOfStream
where
    B: Body,
    C: ClassifyEos + Clone,
{
    type Output<R: Record> = http::Response<EosBody<B, C, R>>;

    #[inline(always)]
    fn track<R: Record>(
        &self,
        classifier: &C,
        response: http::Response<B>,
        outcome: Outcome,
        recorder: R,
    ) -> Self::Output<R> {
        let pending = if outcome == Outcome::Success && !response.body().is_end_stream() {
            Some(Pending {
                classifier: classifier.clone(),
                recorder: Some(recorder),
            })
        } else {
            recorder.record(outcome);
            None
        };
        response.map(|inner| EosBody { inner, pending })
    }

    #[inline]
    fn untracked<R: Record>(&self, response: http::Response<B>) -> Self::Output<R> {
        response.map(|inner| EosBody {
            inner,
            pending: None,
        })
    }
}

/// What an [`EosBody`] records with; on drop, what the headers said.
struct Pending<C, R: Record> {
    classifier: C,
    recorder: Option<R>,
}

impl<C, R: Record> Pending<C, R> {
    fn record(&mut self, outcome: Outcome) {
        if let Some(recorder) = self.recorder.take() {
            recorder.record(outcome);
        }
    }
}

impl<C, R: Record> Drop for Pending<C, R> {
    fn drop(&mut self) {
        // Dropped before the end: the caller stopped reading. The headers
        // said success, and the server did nothing wrong since.
        self.record(Outcome::Success);
    }
}

pin_project! {
    /// A response body that records its call's outcome when it ends: see
    /// the [module docs](self). Frames and errors pass through unchanged.
    pub struct EosBody<B, C, R: Record> {
        #[pin]
        inner: B,
        pending: Option<Pending<C, R>>,
    }
}

impl<B, C, R: Record> EosBody<B, C, R> {
    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Whether the outcome is still to be recorded.
    pub fn is_pending(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.recorder.is_some())
    }
}

impl<B: fmt::Debug, C, R: Record> fmt::Debug for EosBody<B, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EosBody")
            .field("inner", &self.inner)
            .field("pending", &self.is_pending())
            .finish()
    }
}

impl<B, C, R> Body for EosBody<B, C, R>
where
    B: Body,
    B::Error: 'static,
    C: ClassifyEos,
    R: Record,
{
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let result = ready!(this.inner.as_mut().poll_frame(cx));
        let Some(pending) = this.pending.as_mut() else {
            return Poll::Ready(result);
        };
        match &result {
            None => {
                let outcome = pending.classifier.classify_eos(None);
                pending.record(outcome);
            }
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let outcome = pending.classifier.classify_eos(Some(trailers));
                    pending.record(outcome);
                } else if this.inner.is_end_stream() {
                    // The last data frame of a body that knows its length:
                    // callers may stop polling here.
                    let outcome = pending.classifier.classify_eos(None);
                    pending.record(outcome);
                }
            }
            Some(Err(e)) => {
                let outcome = match as_dyn_error(e) {
                    Some(e) => pending.classifier.classify_body_error(e),
                    None => Outcome::fatal(),
                };
                pending.record(outcome);
            }
        }
        Poll::Ready(result)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};

    use super::*;

    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<Outcome>>>);

    impl Record for Log {
        fn record(self, outcome: Outcome) {
            self.0.lock().unwrap().push(outcome);
        }
    }

    impl Log {
        fn taken(&self) -> Vec<Outcome> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// A body that yields these frames (an `Err` is an `io::Error`), then ends.
    struct Scripted(std::collections::VecDeque<Result<Frame<Bytes>, std::io::Error>>);

    impl Body for Scripted {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn scripted(frames: Vec<Result<Frame<Bytes>, std::io::Error>>) -> http::Response<Scripted> {
        http::Response::new(Scripted(frames.into()))
    }

    fn trailers(status: &str) -> Frame<Bytes> {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", status.parse().unwrap());
        Frame::trailers(t)
    }

    fn data() -> Result<Frame<Bytes>, std::io::Error> {
        Ok(Frame::data(Bytes::from_static(b"m")))
    }

    #[tokio::test]
    async fn a_body_error_is_a_failure_recorded_when_it_happens() {
        let log = Log::default();
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let response = scripted(vec![data(), Err(reset)]);
        let tracked = AtEndOfStream.track(
            &DefaultHttpClassifier,
            response,
            Outcome::Success,
            log.clone(),
        );
        let mut body = tracked.into_body();
        assert!(body.frame().await.unwrap().is_ok());
        assert!(log.taken().is_empty(), "not at the first message");
        assert!(body.frame().await.unwrap().is_err());
        assert_eq!(log.taken(), [Outcome::fatal()]);
        drop(body);
        assert!(log.taken().is_empty(), "recorded once");
    }

    #[tokio::test]
    async fn grpc_trailers_decide_the_outcome_of_a_stream() {
        let grpc = GrpcClassifier::default();
        for (status, failed) in [("0", false), ("14", true), ("5", false)] {
            let log = Log::default();
            let response = scripted(vec![data(), data(), Ok(trailers(status))]);
            let body = AtEndOfStream
                .track(&grpc, response, Outcome::Success, log.clone())
                .into_body();
            let collected = body.collect().await.unwrap();
            assert!(collected.trailers().is_some());
            let outcome = log.taken();
            assert_eq!(outcome.len(), 1, "{status}");
            assert_eq!(
                outcome[0].is_failure(),
                failed,
                "grpc-status {status}: {outcome:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_grpc_stream_that_ends_without_trailers_is_unknown() {
        let log = Log::default();
        let response = scripted(vec![data()]);
        let body = AtEndOfStream
            .track(
                &GrpcClassifier::default(),
                response,
                Outcome::Success,
                log.clone(),
            )
            .into_body();
        body.collect().await.unwrap();
        assert!(log.taken()[0].is_failure(), "UNKNOWN is a failure");
    }

    #[tokio::test]
    async fn a_failure_at_the_headers_is_recorded_at_once() {
        let log = Log::default();
        let busy = http::Response::builder()
            .status(503)
            .body(Full::new(Bytes::from_static(b"busy")))
            .unwrap();
        let _kept = AtEndOfStream.track(
            &DefaultHttpClassifier,
            busy,
            Outcome::retryable(),
            log.clone(),
        );
        assert_eq!(log.taken(), [Outcome::retryable()]);
    }

    #[tokio::test]
    async fn an_empty_body_is_recorded_at_once() {
        let log = Log::default();
        let response = http::Response::new(Empty::<Bytes>::new());
        let tracked = AtEndOfStream.track(
            &DefaultHttpClassifier,
            response,
            Outcome::Success,
            log.clone(),
        );
        assert!(!tracked.body().is_pending());
        assert_eq!(log.taken(), [Outcome::Success]);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_records_what_the_headers_said() {
        let log = Log::default();
        let response = http::Response::new(Full::new(Bytes::from_static(b"unread")));
        let tracked = AtEndOfStream.track(
            &DefaultHttpClassifier,
            response,
            Outcome::Success,
            log.clone(),
        );
        assert!(log.taken().is_empty());
        drop(tracked);
        assert_eq!(log.taken(), [Outcome::Success]);
    }

    #[tokio::test]
    async fn at_response_records_at_once_and_returns_the_response_as_is() {
        let log = Log::default();
        let response: http::Response<Full<Bytes>> = AtResponse.track(
            &DefaultHttpClassifier,
            http::Response::new(Full::new(Bytes::from_static(b"x"))),
            Outcome::Success,
            log.clone(),
        );
        assert_eq!(log.taken(), [Outcome::Success]);
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "x"
        );
    }
}
