//! Sliding windows of call outcomes, lock-free, O(1) per call.
//!
//! - [`CountWindow`]: the last N calls. Each slot's outcome is one bit in a
//!   failure bitset and one in a slow bitset; running counters follow every bit
//!   flip, so recording a call and reading the rates are O(1), and memory is
//!   N/4 bytes. When the window is full of plain successes, another success
//!   changes nothing and is not written at all: the common case is read-only.
//! - [`TimeWindow`]: a ring of time buckets, each with the bucket's epoch and
//!   its call, failure and slow counters. A call is counted in the bucket of
//!   the moment it is let through, and its failure (or slowness) in the bucket
//!   of the moment it ends (recycling a bucket first if it belongs to an older
//!   lap); reading sums the buckets still inside the window: O(buckets)
//!   memory, no matter how many calls arrive, and a success costs nothing
//!   when it ends.
//!
//! The counters are statistics, not a ledger: under concurrency a call that
//! lands in the instant a time bucket is recycled may be lost. That never
//! affects safety (how many probes are admitted), only the rate by one call.

use std::num::NonZeroUsize;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use mesh_core::clock::Clock;

use crate::config::{WindowConfig, WindowKind};

/// What a window holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Snapshot {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

/// Keeps a hot atomic on its own cache line so threads writing it do not
/// slow down threads reading its neighbours.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

/// A count or time window.
// One per breaker, inside its `Arc`: inline beats a pointer chase per call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn new(config: &WindowConfig) -> Self {
        match config.kind {
            WindowKind::Count { size } => Window::Count(CountWindow::new(size)),
            WindowKind::Time {
                buckets,
                bucket_width,
            } => Window::Time(TimeWindow::new(buckets, bucket_width)),
        }
    }

    /// Records one finished call. Returns the window's contents when the call
    /// was a failure or slow, the only calls that can push a rate up.
    #[inline]
    pub(crate) fn record(&self, failure: bool, slow: bool) -> Option<Snapshot> {
        match self {
            Window::Count(w) => w.record(failure, slow),
            Window::Time(w) => w.record(failure, slow),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }

    /// True when one more success would change nothing: a count window full
    /// of plain successes.
    #[inline]
    pub(crate) fn is_saturated(&self) -> bool {
        match self {
            Window::Count(w) => w.is_saturated(),
            // Calls are counted on admission: a success adds nothing later.
            Window::Time(_) => true,
        }
    }
}

// ===== impl CountWindow =====

/// The last `size` calls, as two bitsets and running counters.
#[derive(Debug)]
pub(crate) struct CountWindow {
    size: u64,
    next: Padded<AtomicU64>,
    calls: AtomicU32,
    // Signed so that a record racing a reset can never wrap; clamped on read.
    failures: AtomicI32,
    slow: AtomicI32,
    failure_bits: Box<[AtomicU64]>,
    slow_bits: Box<[AtomicU64]>,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        let size = size.max(1);
        let words = size.div_ceil(64) as usize;
        Self {
            size: u64::from(size),
            next: Padded(AtomicU64::new(0)),
            calls: AtomicU32::new(0),
            failures: AtomicI32::new(0),
            slow: AtomicI32::new(0),
            failure_bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            slow_bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    #[inline]
    fn is_saturated(&self) -> bool {
        self.failures.load(Relaxed) == 0
            && self.slow.load(Relaxed) == 0
            && u64::from(self.calls.load(Relaxed)) >= self.size
    }

    #[inline]
    fn record(&self, failure: bool, slow: bool) -> Option<Snapshot> {
        if !failure && !slow && self.is_saturated() {
            // Full of plain successes: every slot is alike, so writing one more
            // success anywhere changes nothing. No shared write on the hot path.
            return None;
        }
        let i = self.next.0.fetch_add(1, Relaxed) % self.size;
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        flip(&self.failure_bits[word], bit, failure, &self.failures);
        flip(&self.slow_bits[word], bit, slow, &self.slow);
        if u64::from(self.calls.load(Relaxed)) < self.size {
            self.calls.fetch_add(1, Relaxed);
        }
        (failure || slow).then(|| self.snapshot())
    }

    fn snapshot(&self) -> Snapshot {
        let calls = u64::from(self.calls.load(Relaxed)).min(self.size) as u32;
        let clamp = |c: &AtomicI32| (c.load(Relaxed).max(0) as u32).min(calls);
        Snapshot {
            calls,
            failures: clamp(&self.failures),
            slow: clamp(&self.slow),
        }
    }

    fn reset(&self) {
        for w in self.failure_bits.iter().chain(self.slow_bits.iter()) {
            w.store(0, Relaxed);
        }
        self.failures.store(0, Relaxed);
        self.slow.store(0, Relaxed);
        self.calls.store(0, Relaxed);
        self.next.0.store(0, Relaxed);
    }
}

/// Sets `bit` in `word` to `on`, adjusting `counter` by the change actually made.
#[inline]
fn flip(word: &AtomicU64, bit: u64, on: bool, counter: &AtomicI32) {
    let was = word.load(Relaxed) & bit != 0;
    if was == on {
        return;
    }
    let old = if on {
        word.fetch_or(bit, Relaxed)
    } else {
        word.fetch_and(!bit, Relaxed)
    };
    match (old & bit != 0, on) {
        (false, true) => {
            counter.fetch_add(1, Relaxed);
        }
        (true, false) => {
            counter.fetch_sub(1, Relaxed);
        }
        _ => {}
    }
}

// ===== impl TimeWindow =====

/// Bits of [`TimeWindow::head`] that hold the ring slot (`MAX_WINDOW_BUCKETS`
/// is 1024).
const SLOT_BITS: u32 = 10;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const _: () = assert!(crate::config::MAX_WINDOW_BUCKETS as u64 <= 1 << SLOT_BITS);

/// Spare buckets between two stripes' rings, so that no two stripes share a
/// cache line (nor an adjacent-line prefetch pair).
const STRIPE_GAP: usize = 128usize.div_ceil(size_of::<Bucket>());

/// The most stripes a window has: enough to keep the cores of a typical
/// client host apart, few enough that a failure's sum stays short.
const MAX_STRIPES: usize = 8;

#[derive(Debug, Default)]
struct Bucket {
    /// Which lap of the ring this bucket holds, plus one (0: never used).
    epoch: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

/// A ring of `len` time buckets of `width` nanoseconds each, once per stripe.
///
/// A time window counts every call when it is let through, so unlike the
/// other policies its steady state writes shared memory. Two things keep that
/// cheap:
///
/// - **No division per call.** The bucket of a moment is `now / width`, its
///   ring slot that modulo `len`: two 64-bit divisions, the dearest
///   instructions on the path. `head` caches the last bucket and slot; a call
///   in the same bucket checks `now - index * width < width` instead, and
///   only the first call of each bucket divides (and moves `head`).
/// - **One ring per stripe.** Each thread counts into the ring of its stripe
///   (a thread's stripe comes from its `ThreadId`), so two cores calling
///   one breaker do not bounce one cache line between them. Reading the
///   window sums every stripe: that happens only when a call fails or is
///   slow. Memory stays O(buckets): at most `MAX_STRIPES` rings.
/// - **One clock.** `tokio::time::Instant` (through mesh-core's `Clock`),
///   so `tokio::time::advance` slides the window in tests.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    /// What `now` is: nanoseconds since the window was built.
    clock: Clock,
    width: u64,
    len: u64,
    /// The last bucket a call fell in: `index << SLOT_BITS | slot`. Any value
    /// is a valid pair (or one that no moment matches), so racing writers
    /// cost at worst a division.
    head: Padded<AtomicU64>,
    /// `stripe_mask + 1` rings of `len` buckets, `stride` apart, the first
    /// `STRIPE_GAP` in (so no ring shares a line with another allocation).
    buckets: Box<[Bucket]>,
    stride: usize,
    stripe_mask: usize,
}

impl TimeWindow {
    pub(crate) fn new(buckets: u32, width: Duration) -> Self {
        Self::with_stripes(buckets, width, default_stripes())
    }

    /// A window with `stripes` rings (a power of two, at most `MAX_STRIPES`).
    fn with_stripes(buckets: u32, width: Duration, stripes: usize) -> Self {
        debug_assert!(stripes.is_power_of_two() && stripes <= MAX_STRIPES);
        let len = buckets.clamp(1, crate::config::MAX_WINDOW_BUCKETS) as usize;
        let stride = len + STRIPE_GAP;
        Self {
            clock: Clock::new(),
            width: (width.as_nanos().min(u128::from(u64::MAX)) as u64).max(1),
            len: len as u64,
            head: Padded(AtomicU64::new(0)),
            buckets: (0..STRIPE_GAP + stride * stripes)
                .map(|_| Bucket::default())
                .collect(),
            stride,
            stripe_mask: stripes - 1,
        }
    }

    /// The bucket index and ring slot of the moment `now_nanos`.
    #[inline]
    fn locate(&self, now_nanos: u64) -> (u64, usize) {
        let head = self.head.0.load(Relaxed);
        let index = head >> SLOT_BITS;
        // `index * width <= now` whenever `head` was computed from a moment
        // not after `now`; otherwise the subtraction wraps and misses.
        if now_nanos.wrapping_sub(index.wrapping_mul(self.width)) < self.width {
            return (index, (head & SLOT_MASK) as usize);
        }
        self.locate_slow(now_nanos)
    }

    #[cold]
    fn locate_slow(&self, now_nanos: u64) -> (u64, usize) {
        let index = now_nanos / self.width;
        let slot = index % self.len;
        if index < 1 << (64 - SLOT_BITS) {
            self.head.0.store(index << SLOT_BITS | slot, Relaxed);
        }
        (index, slot as usize)
    }

    /// Slot `slot` (below `len`) of this thread's ring: one bounds check.
    #[inline]
    fn slot_of_this_thread(&self, slot: usize) -> &Bucket {
        debug_assert!((slot as u64) < self.len);
        &self.buckets[STRIPE_GAP + (thread_stripe() & self.stripe_mask) * self.stride + slot]
    }

    /// The bucket `index` falls in (its ring slot is `slot`), recycled first
    /// if it holds an older lap; `None` if it already holds a newer one (a
    /// very late result).
    #[inline]
    fn bucket(&self, index: u64, slot: usize) -> Option<&Bucket> {
        let tag = index + 1;
        let bucket = self.slot_of_this_thread(slot);
        let epoch = bucket.epoch.load(Relaxed);
        if epoch != tag {
            if epoch > tag {
                return None;
            }
            if bucket
                .epoch
                .compare_exchange(epoch, tag, Relaxed, Relaxed)
                .is_ok()
            {
                bucket.calls.store(0, Relaxed);
                bucket.failures.store(0, Relaxed);
                bucket.slow.store(0, Relaxed);
            }
        }
        Some(bucket)
    }

    /// Counts a call when it is let through: its result then only needs
    /// recording if it is a failure or slow, so a success touches nothing.
    #[inline(always)]
    pub(crate) fn admit(&self) {
        self.admit_at(self.clock.elapsed_nanos());
    }

    /// [`admit`](Self::admit) at `now_nanos` on the window's clock.
    #[inline(always)]
    fn admit_at(&self, now_nanos: u64) {
        let (index, slot) = self.locate(now_nanos);
        if let Some(b) = self.bucket(index, slot) {
            b.calls.fetch_add(1, Relaxed);
        }
    }

    /// Records a finished call's failure or slowness (its call was counted by
    /// [`admit`](Self::admit)); a success reads not even the clock.
    #[inline]
    fn record(&self, failure: bool, slow: bool) -> Option<Snapshot> {
        if !failure && !slow {
            return None;
        }
        self.record_at(self.clock.elapsed_nanos(), failure, slow)
    }

    /// [`record`](Self::record) at `now_nanos` on the window's clock.
    fn record_at(&self, now_nanos: u64, failure: bool, slow: bool) -> Option<Snapshot> {
        if !failure && !slow {
            return None;
        }
        let (index, slot) = self.locate(now_nanos);
        let bucket = self.bucket(index, slot)?;
        if failure {
            bucket.failures.fetch_add(1, Relaxed);
        }
        if slow {
            bucket.slow.fetch_add(1, Relaxed);
        }
        Some(self.snapshot(index))
    }

    /// The sum, over every stripe, of the buckets inside the window that ends
    /// with bucket `index`.
    fn snapshot(&self, index: u64) -> Snapshot {
        let oldest = (index + 1).saturating_sub(self.len - 1);
        let mut s = Snapshot::default();
        for b in &self.buckets {
            let tag = b.epoch.load(Relaxed);
            if tag >= oldest && tag <= index + 1 && tag != 0 {
                s.calls = s.calls.saturating_add(b.calls.load(Relaxed));
                s.failures = s.failures.saturating_add(b.failures.load(Relaxed));
                s.slow = s.slow.saturating_add(b.slow.load(Relaxed));
            }
        }
        s.failures = s.failures.min(s.calls);
        s.slow = s.slow.min(s.calls);
        s
    }

    fn reset(&self) {
        for b in &self.buckets {
            b.epoch.store(0, Relaxed);
            b.calls.store(0, Relaxed);
            b.failures.store(0, Relaxed);
            b.slow.store(0, Relaxed);
        }
    }
}

/// Stripes per time window: the host's parallelism, rounded up to a power of
/// two (so a stripe is a mask, not a division), at most `MAX_STRIPES`.
fn default_stripes() -> usize {
    static STRIPES: OnceLock<usize> = OnceLock::new();
    *STRIPES.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            .min(MAX_STRIPES)
            .next_power_of_two()
    })
}

/// This thread's stripe number (its `ThreadId`, hashed).
#[inline]
fn thread_stripe() -> usize {
    mesh_core::stripe::current_thread_stripe() % MAX_STRIPES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_really_slides() {
        let w = CountWindow::new(4);
        assert_eq!(w.record(true, false).unwrap().failures, 1);
        for _ in 0..3 {
            assert!(w.record(false, false).is_none());
        }
        assert_eq!(
            w.snapshot(),
            Snapshot {
                calls: 4,
                failures: 1,
                slow: 0
            }
        );
        // The fifth call pushes the failure out: tower-resilience's window
        // would still hold it until the next state change.
        w.record(false, false);
        assert_eq!(w.snapshot().failures, 0);
        // Full of successes: more successes are not even written.
        let next = w.next.0.load(Relaxed);
        w.record(false, false);
        assert_eq!(w.next.0.load(Relaxed), next);
        let s = w.record(true, true).unwrap();
        assert_eq!((s.calls, s.failures, s.slow), (4, 1, 1));
        w.reset();
        assert_eq!(w.snapshot(), Snapshot::default());
    }

    proptest::proptest! {
        #[test]
        fn count_window_matches_a_naive_model(
            size in 1usize..200,
            calls in proptest::collection::vec((proptest::bool::ANY, proptest::bool::weighted(0.2)), 0..600),
        ) {
            let w = CountWindow::new(size as u32);
            let mut model = std::collections::VecDeque::new();
            for (f, s) in calls {
                w.record(f, s);
                model.push_back((f, s));
                if model.len() > size {
                    model.pop_front();
                }
                let snap = w.snapshot();
                proptest::prop_assert_eq!(snap.calls as usize, model.len());
                proptest::prop_assert_eq!(snap.failures as usize, model.iter().filter(|m| m.0).count());
                proptest::prop_assert_eq!(snap.slow as usize, model.iter().filter(|m| m.1).count());
            }
        }
    }

    #[test]
    fn time_window_forgets_old_buckets() {
        let sec = 1_000_000_000;
        let w = TimeWindow::new(3, Duration::from_secs(1));
        let call = |at: u64, failure: bool, slow: bool| {
            w.admit_at(at);
            w.record_at(at, failure, slow)
        };
        call(0, true, false);
        call(sec / 2, false, false);
        call(sec, false, true);
        let s = w.snapshot(2);
        assert_eq!((s.calls, s.failures, s.slow), (3, 1, 1));
        // At t = 3 s the bucket of t = 0 has left the window.
        assert!(call(3 * sec, false, false).is_none());
        let s = w.snapshot(3);
        assert_eq!((s.calls, s.failures, s.slow), (2, 0, 1));
        // Much later, everything is gone; memory never grew.
        assert_eq!(w.snapshot(100).calls, 0);
        assert_eq!(w.buckets.len(), STRIPE_GAP + w.stride * (w.stripe_mask + 1));
        assert!(w.buckets.len() <= STRIPE_GAP + (3 + STRIPE_GAP) * MAX_STRIPES);
        // A late result for a recycled bucket is dropped.
        call(100 * sec, false, false);
        assert!(w.record_at(97 * sec, true, false).is_none());
        w.reset();
        assert_eq!(w.snapshot(100), Snapshot::default());
    }

    proptest::proptest! {
        /// The cached bucket is only a shortcut: any order of moments, across
        /// bucket and lap boundaries and backwards, finds what dividing finds.
        #[test]
        fn locate_matches_division(
            buckets in 1u32..20,
            width in 1u64..5_000,
            nows in proptest::collection::vec(0u64..200_000, 1..200),
        ) {
            let w = TimeWindow::new(buckets, Duration::from_nanos(width));
            for now in nows {
                let index = now / width;
                proptest::prop_assert_eq!(w.locate(now), (index, (index % u64::from(buckets)) as usize));
            }
        }

        /// The time window against a naive list of every call and when it
        /// started and ended, with moving time.
        #[test]
        fn time_window_matches_a_naive_model(
            buckets in 1u32..8,
            calls in proptest::collection::vec(
                (0u64..1_500, 0u64..1_500, proptest::bool::ANY, proptest::bool::weighted(0.2)),
                0..150,
            ),
        ) {
            let width = 1_000;
            let w = TimeWindow::new(buckets, Duration::from_nanos(width));
            let mut now = 0;
            // (bucket admitted, bucket finished, failure, slow)
            let mut model: Vec<(u64, u64, bool, bool)> = Vec::new();
            for (step, duration, failure, slow) in calls {
                now += step;
                w.admit_at(now);
                let end = now + duration;
                let snap = w.record_at(end, failure, slow);
                model.push((now / width, end / width, failure, slow));
                now = end;
                let Some(snap) = snap else {
                    proptest::prop_assert!(!failure && !slow);
                    continue;
                };
                let last = now / width;
                let inside = |b: u64| b + u64::from(buckets) > last && b <= last;
                let calls = model.iter().filter(|m| inside(m.0)).count() as u32;
                let count = |f: fn(&(u64, u64, bool, bool)) -> bool| {
                    (model.iter().filter(|m| inside(m.1) && f(m)).count() as u32).min(calls)
                };
                proptest::prop_assert_eq!(snap.calls, calls);
                proptest::prop_assert_eq!(snap.failures, count(|m| m.2));
                proptest::prop_assert_eq!(snap.slow, count(|m| m.3));
            }
        }
    }

    /// Counting through the clock works for wide and narrow buckets alike.
    #[tokio::test]
    async fn the_window_counts_with_wide_and_narrow_buckets() {
        let w = TimeWindow::new(10, Duration::from_secs(1));
        let narrow = TimeWindow::new(10, Duration::from_micros(10));
        for w in [w, narrow] {
            for _ in 0..3 {
                w.admit();
            }
            assert!(w.record(false, false).is_none());
            let s = w.record(true, false).unwrap();
            assert!(s.failures == 1 && (1..=3).contains(&s.calls), "{s:?}");
        }
    }

    /// Under tokio's paused clock the window follows `advance`.
    #[tokio::test(start_paused = true)]
    async fn under_paused_time_the_window_slides_with_advance() {
        let w = TimeWindow::new(3, Duration::from_secs(1));
        w.admit();
        w.admit();
        assert_eq!(w.record(true, false).unwrap().calls, 2);
        tokio::time::advance(Duration::from_secs(3)).await;
        w.admit();
        let s = w.record(true, false).unwrap();
        assert_eq!((s.calls, s.failures), (1, 1));
    }

    /// Threads count into their own stripes; a snapshot sees them all.
    #[test]
    fn stripes_keep_threads_apart_and_add_up() {
        let w = TimeWindow::with_stripes(4, Duration::from_secs(1), MAX_STRIPES);
        std::thread::scope(|scope| {
            for _ in 0..MAX_STRIPES {
                scope.spawn(|| {
                    for _ in 0..1_000 {
                        w.admit_at(5);
                    }
                    w.record_at(5, true, false);
                });
            }
        });
        let used = w.buckets[STRIPE_GAP..]
            .chunks(w.stride)
            .filter(|ring| ring.iter().any(|b| b.calls.load(Relaxed) > 0))
            .count();
        assert!(used > 1, "every thread counted into one ring");
        let s = w.snapshot(0);
        let n = MAX_STRIPES as u32;
        assert_eq!((s.calls, s.failures, s.slow), (1_000 * n, n, 0));
        // A stripe's ring is private: the gap keeps rings off each other's
        // cache lines.
        assert!(STRIPE_GAP * size_of::<Bucket>() >= 128);
        w.reset();
        assert_eq!(w.snapshot(0), Snapshot::default());
    }
}
