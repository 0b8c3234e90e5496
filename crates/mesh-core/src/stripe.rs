//! Which stripe of a striped counter the calling thread writes to.
//!
//! Counters written on every call (a retry budget's deposits, a time
//! window's buckets) are split into stripes so that threads on different
//! cores do not bounce one cache line between them. The stripe is chosen
//! from the thread's [`ThreadId`](std::thread::ThreadId), hashed: no
//! thread-local state of our own, nothing to initialise, and the same
//! thread always lands on the same stripe. Two threads may share a stripe;
//! the counters that use this tolerate that (see each one's docs).
//!
//! ```
//! let a = mesh_core::stripe::current_thread_stripe();
//! assert_eq!(a, mesh_core::stripe::current_thread_stripe());
//! ```

use std::hash::{Hash, Hasher};

use crate::endpoint::IdHasher;

/// A well-mixed number for the calling thread, stable for its life: take it
/// modulo (or masked to) the number of stripes.
#[inline]
pub fn current_thread_stripe() -> usize {
    let mut h = IdHasher::default();
    std::thread::current().id().hash(&mut h);
    // Fibonacci hashing: thread ids are small consecutive integers.
    (h.finish().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_spread_over_stripes() {
        let stripes: std::collections::HashSet<usize> = (0..8)
            .map(|_| std::thread::spawn(|| current_thread_stripe() & 7))
            .map(|t| t.join().unwrap())
            .collect();
        assert!(stripes.len() >= 4, "{stripes:?}");
    }
}
