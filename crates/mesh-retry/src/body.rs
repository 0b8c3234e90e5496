//! Request bodies that can be sent more than once.
//!
//! A retry sends the same request again, body included. Some bodies are
//! cheap to clone: `Full<Bytes>` shares its buffer, `Empty` and `()` have
//! nothing to share. [`TryCloneBody`] is implemented for those, so retrying
//! them costs no copy.
//!
//! A streaming body (hyper's `Incoming` in a proxy, a boxed body from tonic or
//! reqwest) can be read only once. [`ReplayBody`] wraps one and keeps the
//! chunks the first attempt reads (the `Bytes` themselves, not copies, when the
//! inner body yields `Bytes`), so a retry can send them again and then carry on
//! reading where the first attempt stopped. Nothing is buffered before the
//! first attempt streams, and at most a cap (64 KiB by default) is kept: a
//! larger body is sent once and not retried, with a debug event. This is the
//! design of linkerd2-proxy's `ReplayBody`, written afresh.
//!
//! The shared buffer is behind a `Mutex` taken once per body frame, never
//! across an await and never on the request path of a cloneable body.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, StreamBody};
//! use http_body::Frame;
//! use mesh_retry::{ReplayBody, TryCloneBody};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let chunks = futures_util::stream::iter(vec![
//!     Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"hello "))),
//!     Ok(Frame::data(Bytes::from_static(b"world"))),
//! ]);
//! let first = ReplayBody::new(StreamBody::new(chunks), 1024);
//! let retry = first.try_clone_body().unwrap();
//!
//! // The first attempt streams the body...
//! assert_eq!(first.collect().await.unwrap().to_bytes(), "hello world");
//! // ...and the retry replays it.
//! assert!(retry.can_replay());
//! assert_eq!(retry.collect().await.unwrap().to_bytes(), "hello world");
//! # }
//! ```

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Empty, Full};
use mesh_core::BoxError;

/// A request body that can be cloned for another attempt, or not.
pub trait TryCloneBody: Sized {
    /// A body that will send the same bytes again, or `None` when that is
    /// impossible (a replay buffer past its cap).
    fn try_clone_body(&self) -> Option<Self>;

    /// Checked before each retry: whether a clone taken before the first
    /// attempt can still send the whole body. `true` for bodies that are
    /// cloned, not buffered.
    fn can_replay(&self) -> bool {
        true
    }
}

impl<D: Buf + Clone> TryCloneBody for Full<D> {
    #[inline]
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> TryCloneBody for Empty<D> {
    #[inline]
    fn try_clone_body(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

macro_rules! clone_body {
    ($($t:ty),*) => {$(
        impl TryCloneBody for $t {
            #[inline]
            fn try_clone_body(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}
clone_body!((), String, Bytes, &'static str, &'static [u8]);

// ===== ReplayBody =====

/// A body buffered lazily, up to a cap, so it can be sent again. See the
/// [module docs](self).
pub struct ReplayBody<B> {
    shared: Arc<Shared<B>>,
    /// The inner body, while this copy is the one reading it.
    inner: Option<B>,
    /// How many buffered chunks this copy has already yielded.
    replayed: usize,
    replayed_bytes: usize,
    trailers_sent: bool,
}

struct Shared<B> {
    cap: usize,
    state: Mutex<State<B>>,
}

struct State<B> {
    /// The inner body when no copy is reading it.
    body: Option<B>,
    chunks: Vec<Bytes>,
    len: usize,
    /// More than `cap` bytes were read, or the inner body failed: no replay.
    capped: bool,
    /// The inner body has ended.
    ended: bool,
    trailers: Option<HeaderMap>,
}

impl<B> ReplayBody<B> {
    /// Wraps `body`, keeping up to `cap` bytes for replay.
    pub fn new(body: B, cap: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                cap,
                state: Mutex::new(State {
                    body: Some(body),
                    chunks: Vec::new(),
                    len: 0,
                    capped: false,
                    ended: false,
                    trailers: None,
                }),
            }),
            inner: None,
            replayed: 0,
            replayed_bytes: 0,
            trailers_sent: false,
        }
    }

    /// Whether the body grew past its cap (or failed) so it cannot be replayed.
    pub fn is_capped(&self) -> bool {
        self.lock().capped
    }

    fn lock(&self) -> MutexGuard<'_, State<B>> {
        lock(&self.shared)
    }
}

fn lock<B>(shared: &Shared<B>) -> MutexGuard<'_, State<B>> {
    // A panic while holding the lock leaves plain data behind: keep going.
    shared
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B> TryCloneBody for ReplayBody<B> {
    fn try_clone_body(&self) -> Option<Self> {
        if self.is_capped() {
            return None;
        }
        Some(Self {
            shared: self.shared.clone(),
            inner: None,
            replayed: 0,
            replayed_bytes: 0,
            trailers_sent: false,
        })
    }

    fn can_replay(&self) -> bool {
        !self.is_capped()
    }
}

/// A replay was asked for a body that another attempt is still reading.
#[derive(Debug, thiserror::Error)]
#[error("request body is still being read by another attempt")]
pub struct BodyInUse(());

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.inner.is_none() {
            let mut state = lock(&this.shared);
            if !state.capped && this.replayed < state.chunks.len() {
                let chunk = state.chunks[this.replayed].clone();
                this.replayed += 1;
                this.replayed_bytes += chunk.len();
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if state.ended {
                if !this.trailers_sent
                    && let Some(t) = &state.trailers
                {
                    this.trailers_sent = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
                }
                return Poll::Ready(None);
            }
            if state.capped && this.replayed > 0 {
                // Replayed a prefix that is no longer whole: cannot go on.
                return Poll::Ready(Some(Err(BodyInUse(()).into())));
            }
            match state.body.take() {
                Some(b) => this.inner = Some(b),
                None => return Poll::Ready(Some(Err(BodyInUse(()).into()))),
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        let mut state = lock(&this.shared);
        match frame {
            None => {
                state.ended = true;
                drop(state);
                this.inner = None;
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                state.capped = true;
                state.chunks = Vec::new();
                Poll::Ready(Some(Err(e.into())))
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let bytes = data.copy_to_bytes(data.remaining());
                    if !state.capped {
                        if state.len + bytes.len() > this.shared.cap {
                            tracing::debug!(
                                cap = this.shared.cap,
                                "request body is larger than the replay cap; it will not be retried"
                            );
                            state.capped = true;
                            state.chunks = Vec::new();
                        } else {
                            state.len += bytes.len();
                            state.chunks.push(bytes.clone());
                            this.replayed = state.chunks.len();
                            this.replayed_bytes = state.len;
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::data(bytes))))
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        state.trailers = Some(trailers.clone());
                        this.trailers_sent = true;
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    // Unknown frame kinds are passed over.
                    Err(_) => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                },
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        if let Some(inner) = &self.inner {
            return inner.is_end_stream();
        }
        let state = self.lock();
        let replayed_all = state.capped || self.replayed >= state.chunks.len();
        if state.ended {
            replayed_all && (self.trailers_sent || state.trailers.is_none())
        } else {
            replayed_all && state.body.as_ref().is_some_and(Body::is_end_stream)
        }
    }

    fn size_hint(&self) -> SizeHint {
        let state = self.lock();
        let buffered = if state.capped {
            0
        } else {
            (state.len - self.replayed_bytes.min(state.len)) as u64
        };
        let rest = match (&self.inner, &state.body) {
            (Some(b), _) | (None, Some(b)) => b.size_hint(),
            (None, None) if state.ended => SizeHint::with_exact(0),
            (None, None) => SizeHint::default(),
        };
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(buffered));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(buffered));
        }
        hint
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        // Hand the rest of the inner body to the next attempt.
        if let Some(body) = self.inner.take() {
            let mut state = self.lock();
            if state.body.is_none() {
                state.body = Some(body);
            }
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("ReplayBody")
            .field("cap", &self.shared.cap)
            .field("buffered", &state.len)
            .field("capped", &state.capped)
            .field("ended", &state.ended)
            .field("replayed", &self.replayed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Chunks = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
    >;

    fn stream(chunks: &[&'static str]) -> Chunks {
        let frames: Vec<_> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn replays_what_the_first_attempt_read() {
        let first = ReplayBody::new(stream(&["ab", "cd", "ef"]), 100);
        let second = first.try_clone_body().unwrap();
        let third = first.try_clone_body().unwrap();
        assert_eq!(first.collect().await.unwrap().to_bytes(), "abcdef");
        assert_eq!(second.size_hint().exact(), Some(6));
        assert_eq!(second.collect().await.unwrap().to_bytes(), "abcdef");
        assert!(third.can_replay());
        assert_eq!(third.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn a_retry_continues_a_partly_read_body() {
        let mut first = ReplayBody::new(stream(&["ab", "cd", "ef"]), 100);
        let second = first.try_clone_body().unwrap();
        let chunk = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(chunk, "ab");
        drop(first); // the server answered early
        assert_eq!(second.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn past_the_cap_it_streams_but_cannot_replay() {
        let first = ReplayBody::new(stream(&["abcd", "efgh", "ij"]), 6);
        let second = first.try_clone_body().unwrap();
        assert_eq!(first.collect().await.unwrap().to_bytes(), "abcdefghij");
        assert!(!second.can_replay());
        assert!(second.try_clone_body().is_none());
    }

    #[tokio::test]
    async fn trailers_are_replayed() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = vec![
            Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let first = ReplayBody::new(StreamBody::new(futures_util::stream::iter(frames)), 10);
        let second = first.try_clone_body().unwrap();
        let c = first.collect().await.unwrap();
        assert_eq!(c.trailers(), Some(&trailers));
        let c = second.collect().await.unwrap();
        assert_eq!(c.trailers(), Some(&trailers));
        assert_eq!(c.to_bytes(), "x");
    }

    #[tokio::test]
    async fn two_readers_at_once_is_an_error_not_a_hang() {
        let mut first = ReplayBody::new(stream(&["ab", "cd"]), 100);
        let mut second = first.try_clone_body().unwrap();
        first.frame().await.unwrap().unwrap();
        // Replays "ab", then finds the inner body still held by `first`.
        assert_eq!(
            second.frame().await.unwrap().unwrap().into_data().unwrap(),
            "ab"
        );
        let err = second.frame().await.unwrap().unwrap_err();
        assert!(err.is::<BodyInUse>());
    }

    #[test]
    fn cloneable_bodies_clone_without_copying() {
        let full = Full::new(Bytes::from_static(b"payload"));
        assert!(full.try_clone_body().is_some());
        assert!(Empty::<Bytes>::new().try_clone_body().is_some());
        assert!(().try_clone_body().is_some());
        assert!(String::from("x").try_clone_body().is_some());
    }
}
