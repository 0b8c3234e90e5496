//! A cheap clock for statistics that only need to know roughly when.
//!
//! # Why a second clock
//!
//! Reading a precise monotonic clock (`std::time::Instant::now`, which is
//! what `tokio::time::Instant::now` is outside tests) costs 30-45 ns on a
//! virtual machine: more than everything else a circuit breaker does for a
//! call. But a breaker's time window only asks *which second* a call fell in.
//! Linux keeps a coarse copy of the monotonic clock, updated at every kernel
//! tick (`CLOCK_MONOTONIC_COARSE`, 1 to 10 ms resolution, usually 4 ms): it is
//! read from shared memory in about 7 ns, and its error (it lags by less than
//! one tick) is far below the width of any sensible bucket.
//!
//! [`Clock`] is that choice, made once when a structure is built:
//!
//! - [`Clock::coarse`] reads `CLOCK_MONOTONIC_COARSE` on Linux (through
//!   `rustix`, no `unsafe` here) and `std::time::Instant` elsewhere.
//! - [`Clock::precise`] reads `tokio::time::Instant`: exact, and it follows
//!   tokio's test clock.
//! - [`Clock::for_granularity`] picks for you: coarse when its resolution is
//!   small next to the time steps you care about, precise otherwise, and
//!   precise whenever tokio's clock is paused.
//! - [`Clock::for_latency`] times single calls (a balancer's latency
//!   estimate reads the clock when a call starts and when it ends): the CPU's
//!   invariant time-stamp counter, through [`quanta`], where there is one
//!   (about half the cost of `Instant::now` on a virtual machine: no vDSO
//!   call, no paravirtual clock arithmetic), precise otherwise, and precise
//!   whenever tokio's clock is paused.
//!
//! # Paused time in tests
//!
//! `tokio::time::pause` and `advance` move only `tokio::time::Instant`; an OS
//! clock keeps running in real time and ignores them. A test that advances
//! time to slide a window therefore needs the precise clock, and production
//! wants the coarse one. [`Clock::for_granularity`] tells them apart when it is
//! called: if tokio's clock is paused at that moment (a
//! `#[tokio::test(start_paused = true)]`, or after `tokio::time::pause()`), it
//! returns the precise clock, which follows `advance`. A paused clock is easy
//! to recognise: it does not move between two reads, while a running one
//! moves by at least a nanosecond. The test costs a few clock reads, once per
//! clock built. Build the structure *after* pausing the clock: one built
//! before keeps the coarse clock and sees real time only.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mesh_core::clock::Clock;
//!
//! // One-second buckets: a few milliseconds of error do not matter.
//! let clock = Clock::for_granularity(Duration::from_secs(1));
//! let bucket = clock.elapsed_nanos() / 1_000_000_000;
//! assert_eq!(bucket, 0);
//! # #[cfg(target_os = "linux")]
//! assert!(clock.is_coarse());
//! ```
//!
//! Under tokio's paused clock the same call follows `advance`:
//!
//! ```
//! use std::time::Duration;
//! use mesh_core::clock::Clock;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! tokio::time::pause();
//! let clock = Clock::for_granularity(Duration::from_secs(1));
//! assert!(!clock.is_coarse());
//! tokio::time::advance(Duration::from_secs(3)).await;
//! assert_eq!(clock.elapsed_nanos(), 3_000_000_000);
//! # }
//! ```

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// How many times a coarse clock's resolution a time step must be for
/// [`Clock::for_granularity`] to choose it: 20 keeps its error under 5 % of a
/// step (a 4 ms tick is fine for steps of 80 ms and more).
const COARSE_STEPS: u32 = 20;

/// A monotonic clock chosen once, read as nanoseconds since it was made.
///
/// `Copy` and two words: keep one beside the data it timestamps. See the
/// [module docs](self) for when each source is chosen.
#[derive(Clone, Copy)]
pub struct Clock {
    source: Source,
}

#[derive(Clone, Copy)]
enum Source {
    /// The coarse OS clock, in nanoseconds since an arbitrary point.
    Coarse { origin: u64 },
    /// tokio's clock: precise, follows `pause` and `advance`.
    Precise { origin: Instant },
    /// The CPU's counter through [`quanta`] (see [`counter`]), in raw ticks.
    Counter {
        clock: &'static quanta::Clock,
        origin: u64,
    },
}

impl Clock {
    /// The coarse clock: `CLOCK_MONOTONIC_COARSE` on Linux (about 7 ns a
    /// read, [`resolution`](Self::resolution) of one kernel tick), and
    /// `std::time::Instant` elsewhere. Ignores tokio's paused clock.
    pub fn coarse() -> Self {
        Self {
            source: Source::Coarse {
                origin: sys::coarse_nanos(),
            },
        }
    }

    /// The precise clock: `tokio::time::Instant`, which follows
    /// `tokio::time::pause` and `advance` in tests.
    pub fn precise() -> Self {
        Self {
            source: Source::Precise {
                origin: Instant::now(),
            },
        }
    }

    /// The cheapest clock good enough for time steps of `granularity` (a
    /// time bucket's width, say): [`coarse`](Self::coarse) when its resolution
    /// is at most 1/20 of `granularity` and tokio's clock is not paused,
    /// [`precise`](Self::precise) otherwise.
    pub fn for_granularity(granularity: Duration) -> Self {
        let fine_enough = sys::coarse_resolution()
            .checked_mul(COARSE_STEPS)
            .is_some_and(|d| d <= granularity);
        if fine_enough && !tokio_clock_is_paused() {
            Self::coarse()
        } else {
            Self::precise()
        }
    }

    /// The cheapest clock precise enough to time single calls (a few
    /// microseconds and up): the CPU's invariant time-stamp counter (through
    /// [`quanta`], calibrated against the OS clock once per process: the
    /// first call spins about a millisecond, up to 200 ms on a very noisy
    /// machine) when the CPU has one and tokio's clock is not paused;
    /// [`precise`](Self::precise) otherwise. Make it where a pause is
    /// harmless (building a client), not on a request path.
    ///
    /// Nanoseconds, 1 ns resolution, monotonic; it ignores a tokio clock
    /// paused *after* it was made (build it after pausing).
    pub fn for_latency() -> Self {
        match counter() {
            Some(clock) if !tokio_clock_is_paused() => Self {
                source: Source::Counter {
                    clock,
                    origin: clock.raw(),
                },
            },
            _ => Self::precise(),
        }
    }

    /// True for the coarse OS clock, false for tokio's.
    pub fn is_coarse(&self) -> bool {
        matches!(self.source, Source::Coarse { .. })
    }

    /// The smallest step this clock moves by (1 ns for the precise clock).
    pub fn resolution(&self) -> Duration {
        match self.source {
            Source::Coarse { .. } => sys::coarse_resolution(),
            Source::Precise { .. } | Source::Counter { .. } => Duration::from_nanos(1),
        }
    }

    /// Nanoseconds since this clock was made. Never goes back; saturates
    /// after 584 years.
    #[inline]
    pub fn elapsed_nanos(&self) -> u64 {
        match self.source {
            Source::Coarse { origin } => sys::coarse_nanos().saturating_sub(origin),
            Source::Precise { origin } => {
                let d = Instant::now().saturating_duration_since(origin);
                // No 128-bit arithmetic (`as_nanos`) on a per-call path.
                d.as_secs()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(u64::from(d.subsec_nanos()))
            }
            // Zero when the counter reads below `origin` (another core's
            // counter a few ticks behind): never goes back.
            Source::Counter { clock, origin } => clock.delta_as_nanos(origin, clock.raw()),
        }
    }
}

/// The process's time-stamp-counter clock, calibrated at first use; `None`
/// where the CPU has no invariant counter (quanta would fall back to the OS
/// clock, which [`Clock::precise`] already is).
static COUNTER: OnceLock<Option<quanta::Clock>> = OnceLock::new();

fn counter() -> Option<&'static quanta::Clock> {
    COUNTER
        .get_or_init(|| {
            let clock = quanta::Clock::new();
            // Calibrated against the OS clock: if it is the OS clock itself
            // (no usable counter), its raw reading is nanoseconds already
            // and scaling is the identity.
            let probe = clock.raw();
            let scaled = clock.delta_as_nanos(0, probe);
            (scaled != probe).then_some(clock)
        })
        .as_ref()
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clock")
            .field("coarse", &self.is_coarse())
            .field("resolution", &self.resolution())
            .finish()
    }
}

/// Whether tokio's clock is paused here: a running clock moves between two
/// reads, a paused one (without `advance`) never does. A clock too coarse to
/// move between reads counts as paused, which only costs speed: the caller
/// then uses the precise clock.
fn tokio_clock_is_paused() -> bool {
    let first = Instant::now();
    (0..3).all(|_| Instant::now() == first)
}

#[cfg(target_os = "linux")]
mod sys {
    use std::sync::OnceLock;
    use std::time::Duration;

    use rustix::time::{ClockId, clock_getres, clock_gettime};

    #[inline]
    pub(super) fn coarse_nanos() -> u64 {
        let t = clock_gettime(ClockId::MonotonicCoarse);
        // Both fields are non-negative for a monotonic clock.
        (t.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(t.tv_nsec as u64)
    }

    pub(super) fn coarse_resolution() -> Duration {
        static RESOLUTION: OnceLock<Duration> = OnceLock::new();
        *RESOLUTION.get_or_init(|| {
            let t = clock_getres(ClockId::MonotonicCoarse);
            Duration::new(
                t.tv_sec.max(0) as u64,
                t.tv_nsec.clamp(0, 999_999_999) as u32,
            )
            .max(Duration::from_nanos(1))
        })
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    //! No coarse clock here: the "coarse" clock is `std::time::Instant`, which
    //! is never paused by tokio.

    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    #[inline]
    pub(super) fn coarse_nanos() -> u64 {
        static ANCHOR: OnceLock<Instant> = OnceLock::new();
        let d = ANCHOR.get_or_init(Instant::now).elapsed();
        d.as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()))
    }

    pub(super) fn coarse_resolution() -> Duration {
        Duration::from_nanos(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_moves_forward_in_real_time() {
        let clock = Clock::coarse();
        let first = clock.elapsed_nanos();
        let res = clock.resolution();
        assert!(res >= Duration::from_nanos(1) && res <= Duration::from_millis(100));
        std::thread::sleep(res * 3 + Duration::from_millis(2));
        let later = clock.elapsed_nanos();
        assert!(later > first, "{first} -> {later}");
        // Lags real time by less than a tick, never runs ahead of it.
        let elapsed = Duration::from_nanos(later);
        assert!(elapsed >= res * 2, "{elapsed:?} with resolution {res:?}");
        assert!(elapsed < Duration::from_secs(5));
    }

    #[test]
    fn coarse_is_chosen_only_for_wide_enough_steps() {
        let res = sys::coarse_resolution();
        assert!(Clock::for_granularity(res * 20).is_coarse() || cfg!(not(target_os = "linux")));
        if res > Duration::from_nanos(1) {
            assert!(!Clock::for_granularity(res * 19).is_coarse());
        }
        assert!(!Clock::for_granularity(Duration::ZERO).is_coarse());
        assert!(!Clock::for_granularity(Duration::from_nanos(1)).is_coarse());
        assert!(!Clock::precise().is_coarse() && Clock::coarse().is_coarse());
        assert_eq!(Clock::precise().resolution(), Duration::from_nanos(1));
        let debug = format!("{:?}", Clock::coarse());
        assert!(debug.contains("coarse: true"), "{debug}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_tokio_clock_gets_the_precise_clock() {
        assert!(tokio_clock_is_paused());
        let clock = Clock::for_granularity(Duration::from_secs(1));
        assert!(!clock.is_coarse());
        assert_eq!(clock.elapsed_nanos(), 0);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.elapsed_nanos(), 1_500_000_000);
        // The coarse clock ignores the paused clock.
        let coarse = Clock::coarse();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(coarse.elapsed_nanos() < 60_000_000_000);
    }

    #[tokio::test]
    async fn a_running_tokio_clock_is_not_paused() {
        assert!(!tokio_clock_is_paused());
        assert!(
            Clock::for_granularity(Duration::from_secs(1)).is_coarse()
                || cfg!(not(target_os = "linux"))
        );
    }

    #[test]
    fn the_latency_clock_agrees_with_the_os_clock() {
        let clock = Clock::for_latency();
        assert!(!clock.is_coarse());
        assert_eq!(clock.resolution(), Duration::from_nanos(1));
        let start = std::time::Instant::now();
        let a = clock.elapsed_nanos();
        std::thread::sleep(Duration::from_millis(20));
        let b = clock.elapsed_nanos();
        let real = start.elapsed();
        let measured = Duration::from_nanos(b - a);
        // Within 1 % plus scheduling noise of the OS clock's own reading.
        assert!(measured >= Duration::from_millis(20), "{measured:?}");
        assert!(measured <= real + real / 100, "{measured:?} vs {real:?}");
        // Never goes back.
        let mut last = clock.elapsed_nanos();
        for _ in 0..1_000 {
            let now = clock.elapsed_nanos();
            assert!(now >= last, "{last} -> {now}");
            last = now;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_latency_clock_follows_a_paused_tokio_clock() {
        let clock = Clock::for_latency();
        assert!(matches!(clock.source, Source::Precise { .. }));
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(clock.elapsed_nanos(), 250_000_000);
    }

    #[test]
    fn outside_a_runtime_the_clock_is_not_paused() {
        assert!(!tokio_clock_is_paused());
        let clock = Clock::precise();
        let a = clock.elapsed_nanos();
        std::thread::sleep(Duration::from_millis(1));
        assert!(clock.elapsed_nanos() > a);
    }
}
