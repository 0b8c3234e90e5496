//! The clock the mesh's statistics read: `tokio::time::Instant`, as
//! nanoseconds since a fixed origin.
//!
//! # Why one clock
//!
//! Breaker windows, balancer latency estimates, ejection deadlines and retry
//! deadlines all read [`tokio::time::Instant`]. Outside tests it is the OS's
//! monotonic clock (`std::time::Instant`); in tests paused with
//! `tokio::time::pause` it is tokio's test clock, which moves only with
//! `advance`, so timing logic is tested without sleeping. Library code never
//! guesses which of the two it runs under, and building a clock never spins
//! or blocks.
//!
//! Earlier versions picked a cheaper source per use (the kernel's coarse
//! clock for time windows, the CPU's time-stamp counter for latencies) and
//! sniffed whether tokio's clock was paused to choose. Measured end to end
//! in instructions per call (`BENCHMARKS.md`), neither trick was worth the
//! surprises (a counter calibrated by spinning, a window that ignored
//! `advance` when built before `pause`): one clock, read the same way
//! everywhere.
//!
//! [`Clock`] is `Copy` and one word: keep one beside the data it stamps and
//! store `u64` nanoseconds in atomics.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mesh_core::clock::Clock;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! tokio::time::pause();
//! let clock = Clock::new();
//! tokio::time::advance(Duration::from_secs(3)).await;
//! assert_eq!(clock.elapsed_nanos(), 3_000_000_000);
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// A monotonic clock read as nanoseconds since it was made:
/// `tokio::time::Instant`, so it follows `tokio::time::pause` and `advance`.
#[derive(Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// The instant this clock counts from.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// Nanoseconds since this clock was made. Never goes back; saturates
    /// after 584 years.
    #[inline]
    pub fn elapsed_nanos(&self) -> u64 {
        let d = Instant::now().saturating_duration_since(self.origin);
        // No 128-bit arithmetic (`as_nanos`) on a per-call path.
        d.as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()))
    }

    /// The instant `nanos` after the origin (saturating far in the future).
    pub fn instant_at(&self, nanos: u64) -> Instant {
        self.origin
            .checked_add(Duration::from_nanos(nanos))
            .unwrap_or_else(|| self.origin + Duration::from_secs(86_400 * 365 * 100))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clock")
            .field("elapsed_nanos", &self.elapsed_nanos())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_forward_in_real_time() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let clock = Clock::new();
            let a = clock.elapsed_nanos();
            std::thread::sleep(Duration::from_millis(2));
            let b = clock.elapsed_nanos();
            assert!(b >= a + 1_000_000, "{a} {b}");
        });
    }

    #[tokio::test(start_paused = true)]
    async fn follows_a_paused_tokio_clock() {
        let clock = Clock::new();
        assert_eq!(clock.elapsed_nanos(), 0);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.elapsed_nanos(), 1_500_000_000);
        assert_eq!(
            clock.instant_at(1_500_000_000),
            clock.origin() + Duration::from_millis(1500)
        );
    }
}
