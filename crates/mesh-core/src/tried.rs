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
//! # The first attempt, without allocating
//!
//! Most requests succeed on their first attempt, and putting a record in a
//! request's extensions costs four allocations (the record, and the extension
//! map it lives in). So retry may send the first attempt *without* one and
//! call the inner service inside [`TriedEndpoints::scope`] instead: a router
//! records its pick with [`TriedEndpoints::record_attempt`], which writes into
//! the request's record when there is one and otherwise into the innermost
//! scope open on this thread (one thread-local write). Retry builds the record
//! only when it retries, starting from the endpoint the scope caught.
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

use std::cell::Cell;
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

// ===== attempt scopes =====

/// The innermost attempt scope open on this thread.
#[derive(Clone, Copy)]
enum Scope {
    Closed,
    Open,
    Picked(u64),
}

thread_local! {
    static SCOPE: Cell<Scope> = const { Cell::new(Scope::Closed) };
}

/// Restores the enclosing scope, also when the scoped closure panics.
struct Restore(Scope);

impl Drop for Restore {
    #[inline]
    fn drop(&mut self) {
        SCOPE.with(|s| s.set(self.0));
    }
}

impl TriedEndpoints {
    /// What a router calls when it sends an attempt to `key`: records it in
    /// `tried` (the request's record) when there is one, else in the
    /// innermost [`scope`](Self::scope) open on this thread, unless that scope
    /// already caught a pick. Outside any scope and without a record it does
    /// nothing. Never allocates.
    #[inline]
    pub fn record_attempt(tried: Option<&TriedEndpoints>, key: &EndpointKey) {
        Self::record_attempt_id(tried, key.id());
    }

    /// [`record_attempt`](Self::record_attempt) by the key's
    /// [`id`](EndpointKey::id).
    #[inline]
    pub fn record_attempt_id(tried: Option<&TriedEndpoints>, id: u64) {
        match tried {
            Some(tried) => tried.record_id(id),
            None => SCOPE.with(|s| {
                if let Scope::Open = s.get() {
                    s.set(Scope::Picked(id));
                }
            }),
        }
    }

    /// Runs `f` in an attempt scope: the first pick a router reports with
    /// [`record_attempt`](Self::record_attempt) for a request without a
    /// record, while `f` runs on this thread, is stored in `first`. When
    /// `first` is already set the scope catches nothing more, so the same
    /// `first` can be passed to the scope around the call and around each
    /// poll of the attempt's future (a router may pick while polled).
    ///
    /// Scopes nest: the innermost catches. Costs two thread-local accesses.
    ///
    /// ```
    /// use mesh_core::{EndpointKey, TriedEndpoints};
    ///
    /// let key = EndpointKey::new("node-1/users-1");
    /// let mut first = None;
    /// // Retry calls the inner service in a scope; the router, finding no
    /// // record in the request, reports its pick to the scope.
    /// TriedEndpoints::scope(&mut first, || TriedEndpoints::record_attempt(None, &key));
    /// assert_eq!(first, Some(key.id()));
    ///
    /// // Only when it retries does retry build the record, for the retries.
    /// let tried = TriedEndpoints::new();
    /// tried.record_id(first.unwrap());
    /// assert!(tried.contains(&key));
    /// ```
    #[inline]
    pub fn scope<R>(first: &mut Option<u64>, f: impl FnOnce() -> R) -> R {
        let inner = match *first {
            Some(id) => Scope::Picked(id),
            None => Scope::Open,
        };
        let restore = Restore(SCOPE.with(|s| s.replace(inner)));
        let out = f();
        if let Scope::Picked(id) = SCOPE.with(Cell::get) {
            *first = Some(id);
        }
        drop(restore);
        out
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
    fn scopes_catch_the_first_pick_and_nest() {
        let (a, b, c) = (
            EndpointKey::new("a"),
            EndpointKey::new("b"),
            EndpointKey::new("c"),
        );
        // Outside any scope, without a record: nothing happens.
        TriedEndpoints::record_attempt(None, &a);
        let mut outer = None;
        let mut inner = None;
        TriedEndpoints::scope(&mut outer, || {
            TriedEndpoints::scope(&mut inner, || {
                TriedEndpoints::record_attempt(None, &b);
                // A later pick in the same scope does not replace the first.
                TriedEndpoints::record_attempt(None, &c);
            });
            TriedEndpoints::record_attempt(None, &a);
        });
        assert_eq!(inner, Some(b.id()));
        assert_eq!(outer, Some(a.id()));
        // A request with a record records there, not in the scope.
        let tried = TriedEndpoints::new();
        let mut caught = None;
        TriedEndpoints::scope(&mut caught, || {
            TriedEndpoints::record_attempt(Some(&tried), &c)
        });
        assert_eq!(caught, None);
        assert!(tried.contains(&c));
        // A scope whose `first` is set catches nothing more.
        let mut set = Some(a.id());
        TriedEndpoints::scope(&mut set, || TriedEndpoints::record_attempt(None, &b));
        assert_eq!(set, Some(a.id()));
    }

    #[test]
    fn a_panic_closes_the_scope() {
        let mut first = None;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            TriedEndpoints::scope(&mut first, || panic!("inner service panicked"))
        }));
        assert!(r.is_err());
        TriedEndpoints::record_attempt(None, &EndpointKey::new("a"));
        assert!(SCOPE.with(|s| matches!(s.get(), Scope::Closed)));
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
