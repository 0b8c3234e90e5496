//! Per-endpoint load and health accounting, shared by every snapshot that
//! holds the endpoint and by every guard of a request in flight to it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use mesh_core::clock::Clock;
use mesh_core::{Availability, Endpoint};

use crate::config::BalanceConfig;
use crate::outlier::Detector;
use crate::snapshot::Slot;

/// Successful calls an endpoint's first estimate is the median of.
pub(crate) const WARMUP: usize = 3;

/// `admitted_at` when the endpoint is not ramping up.
pub(crate) const NOT_RAMPING: u64 = u64::MAX;

#[inline]
pub(crate) fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What every endpoint's accounting needs from the config, copied into each
/// state so a guard never touches the balancer's shared (and contended) `Arc`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub(crate) clock: Clock,
    /// `1 / ewma_decay` in 1/ns: a multiplication per use instead of a division.
    pub(crate) inv_tau_ns: f64,
    pub(crate) penalty_ns: f64,
    pub(crate) default_rtt_ns: f64,
    pub(crate) slow_start_ns: u64,
    pub(crate) slow_start_floor: f64,
}

impl Params {
    pub(crate) fn new(config: &BalanceConfig, clock: Clock) -> Self {
        Self {
            clock,
            inv_tau_ns: 1.0 / duration_ns(config.ewma_decay).max(1) as f64,
            penalty_ns: duration_ns(config.failure_penalty) as f64,
            default_rtt_ns: duration_ns(config.default_rtt) as f64,
            slow_start_ns: duration_ns(config.slow_start_window),
            slow_start_floor: f64::from(config.slow_start_min_weight_percent) / 100.0,
        }
    }
}

/// One endpoint's accounting. Lives as long as the endpoint stays in the set
/// or a request to it is in flight.
///
/// `repr(C)` keeps what a pick reads in the first cache line of the `Arc`
/// allocation (after its two counts), so a candidate costs one line plus the
/// availability byte even when 10,000 endpoints do not fit in cache.
#[repr(C)]
pub(crate) struct EndpointState {
    /// Peak-EWMA latency estimate in nanoseconds, as `f64` bits.
    rtt_bits: AtomicU64,
    /// When `rtt_bits` was last updated (ns since the epoch).
    rtt_stamp: AtomicU64,
    /// When slow start began (ns since the epoch), or [`NOT_RAMPING`].
    pub(crate) admitted_at: AtomicU64,
    /// Until when the server asked for no traffic (ns since the epoch), 0 if never.
    pushback_until: AtomicU64,
    pub(crate) availability: Availability,
    /// Whether [`WARMUP`] calls to this endpoint succeeded yet: until then
    /// `rtt_bits` holds an estimate made from its measured peers (see
    /// [`cold_estimate`]).
    measured: AtomicBool,
    /// How many snapshot slots hold this state: every other strong reference
    /// is a [`LoadGuard`](crate::LoadGuard)'s, i.e. a request in flight (the
    /// trick tower's `PendingRequests` uses; a count that cannot be lost).
    pub(crate) snapshot_refs: AtomicU32,
    pub(crate) id: u64,
    pub(crate) endpoint: Endpoint,
    pub(crate) params: Params,
    /// The first successful samples (ns, as `f64` bits), while warming up.
    warmup: [AtomicU64; WARMUP],
    warm_count: AtomicU32,
    /// Calls and failures recorded since the outlier detector last looked.
    calls: AtomicU64,
    failures: AtomicU64,
    /// Consecutive success-rate ejections (their length grows with it).
    pub(crate) outlier_ejections: AtomicU32,
    /// The success rate of the last outlier interval with calls, in
    /// thousandths; `NO_RATE` before one.
    pub(crate) recent_success: AtomicU32,
    pub(crate) detector: Arc<Detector>,
    #[cfg(feature = "metrics")]
    pub(crate) picks: metrics::Counter,
    /// The service's attempt latency (one series per service): recorded
    /// with the clock read the latency estimate takes anyway.
    #[cfg(feature = "metrics")]
    pub(crate) attempt_seconds: metrics::Histogram,
}

/// `recent_success` before any interval with calls.
const NO_RATE: u32 = u32::MAX;

/// Requests in flight to this endpoint: strong references no snapshot holds.
#[inline]
pub(crate) fn in_flight(state: &Arc<EndpointState>) -> u32 {
    let strong = u32::try_from(Arc::strong_count(state)).unwrap_or(u32::MAX);
    strong.saturating_sub(state.snapshot_refs.load(Ordering::Acquire))
}

impl EndpointState {
    /// A fresh endpoint whose latency estimate starts at `seed_rtt_ns` (its
    /// measured peers' median, see [`cold_estimate`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        endpoint: Endpoint,
        params: Params,
        seed_rtt_ns: f64,
        now_ns: u64,
        ramp: bool,
        detector: Arc<Detector>,
        #[cfg_attr(not(feature = "metrics"), allow(unused_variables))] service: &str,
    ) -> Self {
        Self {
            id: endpoint.key().id(),
            #[cfg(feature = "metrics")]
            picks: metrics::counter!(
                "mesh_balance_picks_total",
                "service" => service.to_owned(),
                // The address, never the discovery id: a redeploy that keeps
                // addresses adds no series.
                "endpoint" => endpoint.address().to_string()
            ),
            #[cfg(feature = "metrics")]
            attempt_seconds: metrics::histogram!(
                "mesh_attempt_duration_seconds",
                "service" => service.to_owned()
            ),
            endpoint,
            availability: Availability::new(),
            snapshot_refs: AtomicU32::new(0),
            measured: AtomicBool::new(false),
            warmup: std::array::from_fn(|_| AtomicU64::new(0)),
            warm_count: AtomicU32::new(0),
            rtt_bits: AtomicU64::new(seed_rtt_ns.to_bits()),
            rtt_stamp: AtomicU64::new(now_ns),
            admitted_at: AtomicU64::new(if ramp && params.slow_start_ns > 0 {
                now_ns
            } else {
                NOT_RAMPING
            }),
            pushback_until: AtomicU64::new(0),
            params,
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            outlier_ejections: AtomicU32::new(0),
            recent_success: AtomicU32::new(NO_RATE),
            detector,
        }
    }

    /// Counts one call for the outlier detector; returns the calls counted
    /// before it.
    #[inline]
    pub(crate) fn count(&self, failed: bool) -> u64 {
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.calls.fetch_add(1, Ordering::Relaxed)
    }

    /// The calls and failures counted since the last take, resetting both.
    pub(crate) fn take_counts(&self) -> (u64, u64) {
        let calls = self.calls.swap(0, Ordering::Relaxed);
        let failures = self.failures.swap(0, Ordering::Relaxed);
        let failures = failures.min(calls);
        if let Some(failed) = failures.saturating_mul(1000).checked_div(calls) {
            // At most 1000: failures <= calls.
            let permille = 1000u32.saturating_sub(u32::try_from(failed).unwrap_or(1000));
            self.recent_success.store(permille, Ordering::Relaxed);
        }
        (calls, failures)
    }

    /// The success rate of the last outlier interval that had calls.
    pub(crate) fn recent_success_rate(&self) -> Option<f64> {
        match self.recent_success.load(Ordering::Relaxed) {
            NO_RATE => None,
            permille => Some(f64::from(permille) / 1000.0),
        }
    }

    /// The latency estimate as a pick sees it at `now_ns`: an idle endpoint's
    /// estimate fades towards zero so it gets tried again. One with requests
    /// in flight does not fade: a hung endpoint must not look fast.
    #[inline]
    pub(crate) fn rtt_view(&self, now_ns: u64, in_flight: u32) -> f64 {
        let rtt = f64::from_bits(self.rtt_bits.load(Ordering::Relaxed));
        if in_flight > 0 {
            return rtt;
        }
        let elapsed = now_ns.saturating_sub(self.rtt_stamp.load(Ordering::Relaxed));
        rtt * decay(elapsed as f64 * self.params.inv_tau_ns)
    }

    /// [`rtt_view`](Self::rtt_view), and when nothing is in flight, when
    /// the estimate was last updated.
    #[inline]
    pub(crate) fn rtt_view_idle(&self, now_ns: u64, in_flight: u32) -> (f64, Option<u64>) {
        let rtt = f64::from_bits(self.rtt_bits.load(Ordering::Relaxed));
        if in_flight > 0 {
            return (rtt, None);
        }
        let stamp = self.rtt_stamp.load(Ordering::Relaxed);
        let elapsed = now_ns.saturating_sub(stamp);
        (
            rtt * decay(elapsed as f64 * self.params.inv_tau_ns),
            Some(stamp),
        )
    }

    /// Whether the server ever pushed back and the penalty was not yet seen
    /// to expire (no clock read needed).
    #[inline]
    pub(crate) fn may_be_pushed_back(&self) -> bool {
        self.pushback_until.load(Ordering::Relaxed) != 0
    }

    /// Whether the server's pushback still asks for no traffic at `now_ns`.
    #[inline]
    pub(crate) fn pushed_back(&self, now_ns: u64) -> bool {
        let until = self.pushback_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if now_ns >= until {
            // Expired: later picks skip the clock.
            let _ = self.pushback_until.compare_exchange(
                until,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            return false;
        }
        true
    }

    /// Whether the endpoint might be in slow start (no clock read needed).
    #[inline]
    pub(crate) fn maybe_ramping(&self) -> bool {
        self.admitted_at.load(Ordering::Relaxed) != NOT_RAMPING
    }

    /// The slow-start factor in `floor..=1` at `now_ns`.
    #[inline]
    pub(crate) fn ramp_factor(&self, now_ns: u64) -> f64 {
        let admitted = self.admitted_at.load(Ordering::Relaxed);
        if admitted == NOT_RAMPING {
            return 1.0;
        }
        let elapsed = now_ns.saturating_sub(admitted);
        if elapsed >= self.params.slow_start_ns {
            // Done ramping: later picks skip the arithmetic.
            let _ = self.admitted_at.compare_exchange(
                admitted,
                NOT_RAMPING,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            return 1.0;
        }
        (elapsed as f64 / self.params.slow_start_ns as f64).max(self.params.slow_start_floor)
    }

    /// Starts slow start again (the endpoint was re-admitted after ejection).
    pub(crate) fn restart_ramp(&self, now_ns: u64) {
        if self.params.slow_start_ns > 0 {
            self.admitted_at.store(now_ns, Ordering::Relaxed);
        }
    }

    /// Folds one completed call into the latency estimate.
    ///
    /// Successes are "peak" samples: a slower one replaces the estimate at
    /// once (half way when the call was `alone`, with no other request in
    /// flight to the endpoint: the next slow one confirms it), a faster one
    /// is blended in. Failures are blended in at
    /// `max(latency, failure_penalty)`: one failure among many successes barely
    /// moves the estimate, an endpoint that keeps failing fast soon looks slow.
    ///
    /// A plain load and store, not a compare-and-swap loop: two completions
    /// to the same endpoint racing within a few nanoseconds may keep only
    /// one of the two samples. The estimate is a statistic over many calls
    /// and loses nothing measurable, while every call saves an atomic
    /// read-modify-write (~10 ns here). The in-flight count, which must
    /// never be lost, is not kept here (see [`in_flight`]).
    ///
    /// The median of an endpoint's first [`WARMUP`] successful samples
    /// replaces the estimate its peers gave it (those are measurements, the
    /// seed was a guess; the median, because the first call on a new
    /// connection pays for its setup, several times a warm call); returns
    /// `true` then, so the caller can refresh the estimates of the endpoints
    /// still cold. A failure before that is blended into the guess as above.
    #[inline]
    pub(crate) fn observe(&self, latency_ns: u64, now_ns: u64, failed: bool, alone: bool) -> bool {
        let sample = if failed {
            (latency_ns as f64).max(self.params.penalty_ns)
        } else {
            latency_ns as f64
        };
        if !failed && !self.measured.load(Ordering::Relaxed) {
            return self.first_sample(sample, now_ns);
        }
        let rtt = f64::from_bits(self.rtt_bits.load(Ordering::Relaxed));
        let next = if !failed && sample > rtt {
            if alone {
                // Nothing else was in flight: no queue made it slow, and one
                // slow response at low concurrency is as likely noise as a
                // slowing server. Half way there; a second one confirms.
                (rtt + sample) * 0.5
            } else {
                sample
            }
        } else {
            let elapsed = now_ns.saturating_sub(self.rtt_stamp.load(Ordering::Relaxed));
            let d = decay(elapsed as f64 * self.params.inv_tau_ns);
            rtt * d + sample * (1.0 - d)
        };
        self.rtt_bits.store(next.to_bits(), Ordering::Relaxed);
        self.rtt_stamp.store(now_ns, Ordering::Relaxed);
        false
    }

    #[cold]
    #[inline(never)]
    fn first_sample(&self, sample: f64, now_ns: u64) -> bool {
        let k = self.warm_count.fetch_add(1, Ordering::AcqRel) as usize;
        if k >= WARMUP {
            // Raced with the call that completed the warm-up.
            return false;
        }
        self.warmup[k].store(sample.to_bits(), Ordering::Release);
        // Measured just now (for the idle comparison), still estimated by
        // its peers.
        self.rtt_stamp.store(now_ns, Ordering::Relaxed);
        if k + 1 < WARMUP {
            return false;
        }
        let mut samples: [f64; WARMUP] =
            std::array::from_fn(|i| f64::from_bits(self.warmup[i].load(Ordering::Acquire)));
        samples.sort_unstable_by(f64::total_cmp);
        self.rtt_bits
            .store(samples[WARMUP / 2].to_bits(), Ordering::Relaxed);
        !self.measured.swap(true, Ordering::AcqRel)
    }

    /// Whether a call to this endpoint completed yet.
    #[inline]
    pub(crate) fn is_measured(&self) -> bool {
        self.measured.load(Ordering::Acquire)
    }

    /// Gives a cold endpoint its peers' estimate (it fades when idle like
    /// any estimate, from when it was last called, or from `now_ns` if it
    /// never was). A no-op once measured.
    pub(crate) fn seed(&self, rtt_ns: f64, now_ns: u64) {
        if self.is_measured() {
            return;
        }
        self.rtt_bits.store(rtt_ns.to_bits(), Ordering::Relaxed);
        if self.warm_count.load(Ordering::Relaxed) == 0 {
            self.rtt_stamp.store(now_ns, Ordering::Relaxed);
        }
    }

    /// Records the server's "come back after `delay`".
    pub(crate) fn push_back(&self, now_ns: u64, delay: Duration) {
        let until = now_ns.saturating_add(duration_ns(delay));
        self.pushback_until.fetch_max(until, Ordering::Relaxed);
        tracing::debug!(
            endpoint = %self.endpoint.key(),
            delay = ?delay,
            "balance: endpoint pushed back, penalised until then"
        );
    }

    /// The current latency estimate (for stats and tests).
    pub(crate) fn rtt_estimate(&self) -> Duration {
        Duration::from_nanos(f64::from_bits(self.rtt_bits.load(Ordering::Relaxed)) as u64)
    }
}

/// The latency estimate for an endpoint no call has measured yet: the
/// median of its measured peers' current estimates (as a pick sees them at
/// `now_ns`), or `default_rtt` when none is measured.
///
/// Why the median: a fixed guess (Linkerd's and Finagle's `default_rtt`,
/// 30 ms here) makes the first endpoint measured on a fast network win every
/// comparison against the cold ones until their guess decays, seconds later:
/// a replica that joins stays cold, its connections are never warmed, and
/// every failure lands on the busy one. The peers' estimate says "as fast
/// as a typical replica": a cold endpoint then takes its fair share from
/// the start, and its first response replaces the guess. The median rather
/// than the mean, because one failing peer (recorded at the 1 s failure
/// penalty) would lift a mean far above every healthy replica; rather than
/// the lowest (Finagle gives a new node cost 0), because a replica that is
/// cold *and* slow should not win every comparison until it answers.
///
/// O(n) with one allocation: run when an update adds endpoints and when the
/// number of measured endpoints doubles (so O(n log n) over a set's
/// warm-up), never per pick.
pub(crate) fn cold_estimate(slots: &[Slot], now_ns: u64, default_rtt_ns: f64) -> f64 {
    let mut measured: Vec<f64> = slots
        .iter()
        .filter(|s| s.weight > 0 && s.state.is_measured())
        .map(|s| s.state.rtt_view(now_ns, in_flight(&s.state)))
        .filter(|rtt| rtt.is_finite())
        .collect();
    if measured.is_empty() {
        return default_rtt_ns;
    }
    let mid = measured.len() / 2;
    let (_, median, _) = measured.select_nth_unstable_by(mid, f64::total_cmp);
    *median
}

/// Seeds every cold endpoint of `slots` with [`cold_estimate`].
pub(crate) fn seed_cold(slots: &[Slot], now_ns: u64, default_rtt_ns: f64) {
    if slots.iter().all(|s| s.state.is_measured()) {
        return;
    }
    let rtt = cold_estimate(slots, now_ns, default_rtt_ns);
    for slot in slots {
        slot.state.seed(rtt, now_ns);
    }
}

/// `e^-x`, cheap where it does not matter: most picks and records come within
/// a tiny fraction of the decay time of the last update.
#[inline]
fn decay(x: f64) -> f64 {
    if x < 1e-3 {
        1.0 - x
    } else if x > 40.0 {
        0.0
    } else {
        (-x).exp()
    }
}

impl fmt::Debug for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointState")
            .field("key", self.endpoint.key())
            .field("availability", &self.availability)
            .field("rtt", &self.rtt_estimate())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(config: &BalanceConfig) -> EndpointState {
        let clock = Clock::new();
        let params = Params::new(config, clock);
        let snapshot = Arc::new(arc_swap::ArcSwap::from_pointee(
            crate::snapshot::Snapshot::build(Vec::new(), config.strategy, 50),
        ));
        let detector = Arc::new(Detector::new(
            &config.outlier,
            clock,
            "svc".into(),
            &snapshot,
        ));
        EndpointState::new(
            Endpoint::new("a", "127.0.0.1:1".parse().unwrap()),
            params,
            params.default_rtt_ns,
            0,
            false,
            detector,
            "svc",
        )
    }

    #[test]
    fn peak_jumps_up_and_blends_down() {
        let s = state(&BalanceConfig::default());
        assert_eq!(s.rtt_estimate(), Duration::from_millis(30));
        // Warming up: the median of the first samples (a cold connection's
        // first call does not count as the peak).
        s.observe(500_000_000, 1_000, false, false);
        s.observe(100_000_000, 1_000, false, false);
        assert_eq!(s.rtt_estimate(), Duration::from_millis(30));
        assert!(s.observe(20_000_000, 1_000, false, false), "warmed up");
        assert_eq!(s.rtt_estimate(), Duration::from_millis(100));
        // One decay time later a fast sample moves the estimate ~63% of the way.
        s.observe(0, 10_000_001_000, false, false);
        let ms = s.rtt_estimate().as_secs_f64() * 1e3;
        assert!((36.0..38.0).contains(&ms), "{ms}");
    }

    #[test]
    fn fast_failures_are_penalised_but_one_failure_is_not_a_peak() {
        let s = state(&BalanceConfig::default());
        s.observe(1_000, 1_000_000, true, false);
        // 1ms after the last update: the 1s penalty weighs ~1e-4.
        let est = s.rtt_estimate();
        assert!(
            est > Duration::from_millis(30) && est < Duration::from_millis(31),
            "{est:?}"
        );
        // Failing for a whole decay time drives it most of the way to the penalty.
        s.observe(1_000, 10_001_000_000, true, false);
        assert!(s.rtt_estimate() > Duration::from_millis(600));
    }

    #[test]
    fn idle_estimate_fades_unless_requests_are_in_flight() {
        let s = state(&BalanceConfig::default());
        let later = 20_000_000_000; // two decay times
        assert!(s.rtt_view(later, 0) < 30e6 * 0.14);
        assert_eq!(s.rtt_view(later, 1), 30e6);
    }

    #[test]
    fn decay_is_close_to_exp() {
        for x in [0.0, 1e-6, 5e-4, 1e-3, 0.5, 1.0, 10.0, 39.0, 41.0, 1e9] {
            assert!((decay(x) - (-x).exp()).abs() < 1e-6, "{x}");
        }
    }
}
