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
