//! The endpoints a logical request has already tried.
//!
//! Retry inserts a [`TriedEndpoints`] into the request's extensions before the
//! first attempt; the router records each endpoint it sends an attempt to; the
//! balancer avoids those endpoints on the next attempt while any other is
//! available. Every attempt's request is a clone of the original, and clones of
//! a `TriedEndpoints` share one record, so what the router writes on attempt 1
//! is what the balancer reads on attempt 2.
//!
//! The record is a fixed ring of endpoint-key hashes in atomics: recording and
//! checking take no lock and never allocate. It remembers the last
//! [`TriedEndpoints::CAPACITY`] endpoints, more than any sane retry count.
//!
//! The record travels *in the request*, so it survives whatever sits
//! between retry and router: a `tower::buffer::Buffer`, a spawned task, a
//! hop to another thread. Nothing is kept in thread-locals.
//!
//! # The first attempt, without allocating
//!
//! Most requests succeed on their first attempt, and a record in a
//! request's extensions costs four allocations. So retry sends the first
//! attempt without one, and the router reports where it went *with the
//! result* instead, only when the result is a failure: a [`TriedEndpoint`]
//! in the response's extensions ([`ReportEndpoint`]), or an
//! [`AttemptError`] around the error. Retry builds the record for its
//! retries from that report.
//!
//! # Example
//!
//! ```
//! use mesh_core::{EndpointKey, TriedEndpoints};
//!
//! let tried = TriedEndpoints::new();
//! let mut request = http::Request::new(());
//! request.extensions_mut().insert(tried.clone());
//!
//! // The router, on attempt 1:
//! let a = EndpointKey::new("node-1/users-1");
//! request.extensions().get::<TriedEndpoints>().unwrap().record(&a);
//!
//! // The balancer, on attempt 2:
//! assert!(tried.contains(&a));
//! assert!(!tried.contains(&EndpointKey::new("node-2/users-2")));
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::endpoint::EndpointKey;

/// The endpoints already tried by one logical request. Clones share the record.
#[derive(Clone, Default)]
pub struct TriedEndpoints {
    inner: Arc<Ring>,
}

#[derive(Default)]
struct Ring {
    ids: [AtomicU64; TriedEndpoints::CAPACITY],
    recorded: AtomicUsize,
}

impl TriedEndpoints {
    /// How many endpoints are remembered; older ones are forgotten first.
    pub const CAPACITY: usize = 8;

    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that an attempt went to `key`.
    #[inline]
    pub fn record(&self, key: &EndpointKey) {
        self.record_id(key.id());
    }

    /// Records an attempt by the key's [`id`](EndpointKey::id).
    #[inline]
    pub fn record_id(&self, id: u64) {
        let slot = self.inner.recorded.fetch_add(1, Ordering::AcqRel) % Self::CAPACITY;
        self.inner.ids[slot].store(id, Ordering::Release);
    }

    /// Whether an attempt went to `key`.
    #[inline]
    pub fn contains(&self, key: &EndpointKey) -> bool {
        self.contains_id(key.id())
    }

    /// Whether an attempt went to the key with this [`id`](EndpointKey::id).
    #[inline]
    pub fn contains_id(&self, id: u64) -> bool {
        let n = self.len().min(Self::CAPACITY);
        self.inner.ids[..n]
            .iter()
            .any(|slot| slot.load(Ordering::Acquire) == id)
    }

    /// How many attempts were recorded (the record keeps the last
    /// [`CAPACITY`](Self::CAPACITY)).
    #[inline]
    pub fn len(&self) -> usize {
        self.inner.recorded.load(Ordering::Acquire)
    }

    /// True when no attempt was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for TriedEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.len().min(Self::CAPACITY);
        f.debug_struct("TriedEndpoints")
            .field("recorded", &self.len())
            .field(
                "ids",
                &self.inner.ids[..n]
                    .iter()
                    .map(|s| s.load(Ordering::Relaxed))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_capacity_keys() {
        let t = TriedEndpoints::new();
        assert!(t.is_empty());
        let keys: Vec<_> = (0..10).map(|i| EndpointKey::new(format!("k{i}"))).collect();
        for k in &keys {
            t.record(k);
        }
        assert_eq!(t.len(), 10);
        assert!(!t.contains(&keys[0]) && !t.contains(&keys[1]));
        assert!(keys[2..].iter().all(|k| t.contains(k)));
    }

    #[test]
    fn clones_share_and_threads_agree() {
        let t = TriedEndpoints::new();
        std::thread::scope(|s| {
            for i in 0..4 {
                let t = t.clone();
                s.spawn(move || t.record(&EndpointKey::new(format!("t{i}"))));
            }
        });
        assert_eq!(t.len(), 4);
        assert!((0..4).all(|i| t.contains(&EndpointKey::new(format!("t{i}")))));
    }
}

// ===== reporting the endpoint back =====

/// The endpoint an attempt went to, as the router reports it back with a
/// response or an error when the request carried no [`TriedEndpoints`]
/// record (the first attempt of a request: retry puts a record only in its
/// retries, so a request that succeeds at once allocates nothing).
///
/// On a failed or retryable response the router puts it in the response's
/// extensions ([`ReportEndpoint`]); an error comes back wrapped in an
/// [`AttemptError`]. Both travel with the result, so they survive a
/// `Buffer` or a spawned task between retry and router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TriedEndpoint(pub u64);

/// A response that can carry the [`TriedEndpoint`] its attempt went to.
pub trait ReportEndpoint {
    /// Records that this response came from the endpoint with key id `id`.
    fn report_endpoint(&mut self, id: u64);
    /// The endpoint the router reported, if any (removing the report).
    fn take_reported_endpoint(&mut self) -> Option<u64>;
}

impl<B> ReportEndpoint for http::Response<B> {
    fn report_endpoint(&mut self, id: u64) {
        self.extensions_mut().insert(TriedEndpoint(id));
    }

    #[inline]
    fn take_reported_endpoint(&mut self) -> Option<u64> {
        if self.extensions().is_empty() {
            return None;
        }
        self.extensions_mut().remove::<TriedEndpoint>().map(|t| t.0)
    }
}

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
impl ReportEndpoint for reqwest::Response {
    fn report_endpoint(&mut self, id: u64) {
        self.extensions_mut().insert(TriedEndpoint(id));
    }

    fn take_reported_endpoint(&mut self) -> Option<u64> {
        self.extensions_mut().remove::<TriedEndpoint>().map(|t| t.0)
    }
}

/// An attempt's error, with the endpoint the attempt went to: what the
/// router returns for a request without a [`TriedEndpoints`] record. Its
/// `Display` is the error's own; the error is its
/// [`source`](std::error::Error::source). Retry takes it apart
/// ([`AttemptError::split`]) and returns the error itself to its caller.
pub struct AttemptError {
    endpoint: u64,
    error: crate::BoxError,
}

impl AttemptError {
    /// `error`, from an attempt on the endpoint with key id `endpoint`.
    pub fn new(endpoint: u64, error: crate::BoxError) -> Self {
        Self { endpoint, error }
    }

    /// The endpoint's key id.
    pub fn endpoint_id(&self) -> u64 {
        self.endpoint
    }

    /// The endpoint `error` reports, if it is an [`AttemptError`], and the
    /// error itself.
    pub fn split(error: crate::BoxError) -> (Option<u64>, crate::BoxError) {
        match error.downcast::<AttemptError>() {
            Ok(attempt) => (Some(attempt.endpoint), attempt.error),
            Err(error) => (None, error),
        }
    }
}

impl fmt::Debug for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, f)
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for AttemptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.error)
    }
}
