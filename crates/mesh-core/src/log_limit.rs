//! [`LogLimit`]: at most a few log lines per second for one kind of event,
//! so that a storm (every call giving up, every endpoint tripping) cannot
//! flood the log.
//!
//! ```
//! use mesh_core::log_limit::LogLimit;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limit = LogLimit::new(2);
//! assert_eq!(limit.check(), Some(0));
//! assert_eq!(limit.check(), Some(0));
//! assert_eq!(limit.check(), None); // third in the same second: suppressed
//! tokio::time::pause();
//! tokio::time::advance(std::time::Duration::from_secs(1)).await;
//! assert_eq!(limit.check(), Some(1)); // logs, saying one line was suppressed
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::clock::Clock;

const SECOND_NS: u64 = 1_000_000_000;

/// Lets through at most `per_second` events a second; the others are
/// counted, and the next event let through reports how many were
/// suppressed. Lock-free; reads the clock only when called (call it only
/// where a line would be logged).
pub struct LogLimit {
    clock: Clock,
    per_second: u32,
    second: AtomicU64,
    count: AtomicU32,
    suppressed: AtomicU64,
}

impl LogLimit {
    /// A limit of `per_second` lines a second (at least 1).
    pub fn new(per_second: u32) -> Self {
        Self {
            clock: Clock::new(),
            per_second: per_second.max(1),
            second: AtomicU64::new(0),
            count: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)` if this event may be logged (with the number of
    /// events suppressed since the last one logged), `None` if it must not.
    pub fn check(&self) -> Option<u64> {
        let now = self.clock.elapsed_nanos() / SECOND_NS;
        let second = self.second.load(Ordering::Relaxed);
        if now != second
            && self
                .second
                .compare_exchange(second, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl Default for LogLimit {
    /// Ten lines a second.
    fn default() -> Self {
        Self::new(10)
    }
}

impl fmt::Debug for LogLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogLimit")
            .field("per_second", &self.per_second)
            .field("suppressed", &self.suppressed.load(Ordering::Relaxed))
            .finish()
    }
}
