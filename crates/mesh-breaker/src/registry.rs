//! Finds a breaker from a call that holds no reference to it.
//!
//! A call admitted while a success would change nothing (closed, no failure
//! in a row, a count window full of successes) carries only its breaker's id,
//! not an `Arc`: bumping and dropping a reference count is an atomic
//! read-modify-write pair, the largest cost of a closed-state call. If such a
//! call fails after all, which is the rare case, it looks its breaker up here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, PoisonError, RwLock, Weak};

use crate::state::Shared;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static BREAKERS: LazyLock<RwLock<HashMap<u64, Weak<Shared>>>> = LazyLock::new(Default::default);

/// A fresh breaker id.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn register(id: u64, shared: &Arc<Shared>) {
    BREAKERS
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, Arc::downgrade(shared));
}

/// Called when the breaker is dropped.
pub(crate) fn unregister(id: u64) {
    BREAKERS
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
}

/// The breaker with `id`, if it still exists.
pub(crate) fn find(id: u64) -> Option<Arc<Shared>> {
    // The guard is released before upgrading: dropping the last `Arc` (which
    // unregisters, taking the write lock) must never happen under it.
    let weak = BREAKERS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&id)
        .cloned();
    weak.and_then(|w| w.upgrade())
}
