//! Success-rate outlier detection: ejecting the endpoints that fail more than
//! their peers.
//!
//! # Why
//!
//! A breaker trips on *runs* of failures (five in a row) or on a rate over
//! its own endpoint's window. Neither sees a *gray failure*: an endpoint that
//! fails 30 % of its calls rarely fails five times in a row, and a fixed rate
//! threshold low enough to catch it would also trip every endpoint of a
//! service whose callers send bad requests. What gives the gray endpoint
//! away is the comparison with its peers: the others succeed, it does not.
//!
//! Envoy's outlier detection compares each host's success rate with the
//! cluster's (mean minus a multiple of the standard deviation). With a
//! handful of endpoints the deviation is dominated by the outliers
//! themselves (two endpoints at 70 % among four at 100 % lift it to 14
//! points, so Envoy's default factor of 1.9 ejects neither), so here the
//! reference is the **median** success rate, which outliers do not move,
//! and an endpoint is an outlier when it falls more than
//! [`success_rate_margin`](OutlierConfig::success_rate_margin) below it.
//!
//! # How
//!
//! Every recorded outcome counts into its endpoint's call and failure
//! counters (two relaxed atomic increments). Once per
//! [`interval`](OutlierConfig::interval) the first call to finish after the
//! interval ended runs the detector (no background task): it takes every
//! endpoint's counts (resetting them), and among the endpoints with at least
//! [`min_requests`](OutlierConfig::min_requests) calls, if there are at
//! least [`min_endpoints`](OutlierConfig::min_endpoints) of them, ejects the
//! outliers, worst first, while the balancer's ejection cap allows. An
//! ejection lasts [`base_ejection_time`](OutlierConfig::base_ejection_time)
//! times the number of consecutive ejections of that endpoint, capped at
//! [`max_ejection_time`](OutlierConfig::max_ejection_time) (Envoy's rule);
//! an interval in which the endpoint is no outlier resets the count.
//!
//! The ejection is written into the endpoint's health signal (the
//! [`Availability`](mesh_core::Availability) its breaker publishes into)
//! only when the signal reads available, so it never overrides the breaker.
//! The balancer treats both alike: within the cap an ejected endpoint gets
//! no traffic, past it (panic mode) it does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_core::clock::Clock;
use mesh_core::config::InvalidConfig;

use crate::snapshot::Snapshot;
use crate::state::{duration_ns, seed_cold};

/// Success-rate outlier detection settings (serde with the `serde` feature;
/// durations in humantime form).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct OutlierConfig {
    /// Whether the detector runs. Default true.
    pub enabled: bool,
    /// How often success rates are compared. 100ms..=10min, default 1s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub interval: Duration,
    /// Calls an endpoint needs within an interval for its rate to count.
    /// 1..=1,000,000, default 20.
    pub min_requests: u32,
    /// Endpoints with enough calls needed for a comparison. 2..=10,000,
    /// default 3.
    pub min_endpoints: u32,
    /// How far below the median success rate an endpoint must fall to be an
    /// outlier, as a fraction. In (0, 1], default 0.15 (15 points).
    pub success_rate_margin: f64,
    /// The first ejection's length; the n-th consecutive one lasts n times
    /// this. 1ms..=1h, default 10s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub base_ejection_time: Duration,
    /// The longest ejection. At least `base_ejection_time`, at most 1 day;
    /// default 300s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub max_ejection_time: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(1),
            min_requests: 20,
            min_endpoints: 3,
            success_rate_margin: 0.15,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(300),
        }
    }
}

impl OutlierConfig {
    /// Checks every field and names each bad one.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(600) {
            errors.push(
                "interval",
                format!("must be in 100ms..=10min (got {:?})", self.interval),
            );
        }
        if !(1..=1_000_000).contains(&self.min_requests) {
            errors.push(
                "min_requests",
                format!("must be in 1..=1000000 (got {})", self.min_requests),
            );
        }
        if !(2..=10_000).contains(&self.min_endpoints) {
            errors.push(
                "min_endpoints",
                format!("must be in 2..=10000 (got {})", self.min_endpoints),
            );
        }
        if !(self.success_rate_margin > 0.0 && self.success_rate_margin <= 1.0) {
            errors.push(
                "success_rate_margin",
                format!("must be in (0, 1] (got {})", self.success_rate_margin),
            );
        }
        if self.base_ejection_time < Duration::from_millis(1)
            || self.base_ejection_time > Duration::from_secs(3600)
        {
            errors.push(
                "base_ejection_time",
                format!("must be in 1ms..=1h (got {:?})", self.base_ejection_time),
            );
        }
        if self.max_ejection_time < self.base_ejection_time
            || self.max_ejection_time > Duration::from_secs(86_400)
        {
            errors.push(
                "max_ejection_time",
                format!(
                    "must be in base_ejection_time..=1day (got {:?})",
                    self.max_ejection_time
                ),
            );
        }
        errors.into_result()
    }
}

/// The detector of one balancer, shared by its endpoints' accounting so the
/// call that finishes after an interval ended can run it.
pub(crate) struct Detector {
    config: OutlierConfig,
    interval_ns: u64,
    /// When the next comparison is due (ns on the balancer's clock);
    /// `u64::MAX` when detection is off.
    next_ns: AtomicU64,
    clock: Clock,
    service: Arc<str>,
    /// The balancer's current set (weak: the set holds the accounting,
    /// which holds this).
    snapshot: Weak<ArcSwap<Snapshot>>,
    /// Endpoints measured for the first time since the balancer was built:
    /// the cold ones' estimates are refreshed each time this doubles. Kept
    /// here because the detector is the balancer-wide state every
    /// endpoint's accounting already reaches.
    first_samples: AtomicU64,
}

impl Detector {
    pub(crate) fn new(
        config: &OutlierConfig,
        clock: Clock,
        service: Arc<str>,
        snapshot: &Arc<ArcSwap<Snapshot>>,
    ) -> Self {
        let interval_ns = duration_ns(config.interval).max(1);
        Self {
            config: config.clone(),
            interval_ns,
            next_ns: AtomicU64::new(if config.enabled {
                interval_ns
            } else {
                u64::MAX
            }),
            clock,
            service,
            snapshot: Arc::downgrade(snapshot),
            first_samples: AtomicU64::new(0),
        }
    }

    /// An endpoint completed its first call: when the number of endpoints
    /// measured so far reaches a power of two, the cold ones get their
    /// measured peers' estimate again ([`seed_cold`]), so the work over a
    /// set's warm-up is O(n log n), never per pick.
    #[cold]
    #[inline(never)]
    pub(crate) fn first_sample(&self, now_ns: u64, default_rtt_ns: f64) {
        let n = self.first_samples.fetch_add(1, Ordering::Relaxed) + 1;
        if !n.is_power_of_two() {
            return;
        }
        if let Some(snapshot) = self.snapshot.upgrade() {
            seed_cold(&snapshot.load().slots, now_ns, default_rtt_ns);
        }
    }

    /// Whether a comparison is due at `now_ns`: one relaxed load.
    #[inline]
    pub(crate) fn due(&self, now_ns: u64) -> bool {
        now_ns >= self.next_ns.load(Ordering::Relaxed)
    }

    /// Runs the comparison, once per interval whoever calls.
    #[cold]
    #[inline(never)]
    pub(crate) fn run(&self, now_ns: u64) {
        let next = self.next_ns.load(Ordering::Relaxed);
        if now_ns < next
            || self
                .next_ns
                .compare_exchange(
                    next,
                    now_ns.saturating_add(self.interval_ns),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let Some(snapshot) = self.snapshot.upgrade() else {
            return;
        };
        let snap = snapshot.load();
        self.compare(&snap, now_ns);
    }

    fn compare(&self, snap: &Snapshot, now_ns: u64) {
        let c = &self.config;
        // (slot, success rate, calls) of every endpoint with enough calls.
        let mut rates: Vec<(usize, f64, u64)> = Vec::new();
        let mut ejected_now = 0u32;
        for (i, slot) in snap.slots.iter().enumerate() {
            let (calls, failures) = slot.state.take_counts();
            if slot.weight == 0 {
                continue;
            }
            if !slot.state.availability.is_available() {
                ejected_now += 1;
                continue;
            }
            if calls >= u64::from(c.min_requests) {
                let success = 1.0 - failures as f64 / calls as f64;
                rates.push((i, success, calls));
            }
        }
        if rates.len() < c.min_endpoints as usize {
            return;
        }
        let mut sorted: Vec<f64> = rates.iter().map(|r| r.1).collect();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
        let threshold = median - c.success_rate_margin;
        // Worst first, while the cap allows.
        rates.sort_by(|a, b| a.1.total_cmp(&b.1));
        for &(i, success, calls) in &rates {
            let state = &snap.slots[i].state;
            if success >= threshold {
                state.outlier_ejections.store(0, Ordering::Relaxed);
                continue;
            }
            if ejected_now >= snap.eject_cap {
                tracing::warn!(
                    service = %self.service,
                    endpoint = %state.endpoint.key(),
                    address = %state.endpoint.address(),
                    success_rate = success,
                    median,
                    calls,
                    cap = snap.eject_cap,
                    "balance: outlier not ejected: the ejection cap is reached"
                );
                continue;
            }
            let n = state
                .outlier_ejections
                .load(Ordering::Relaxed)
                .saturating_add(1);
            let eject_for = c
                .base_ejection_time
                .saturating_mul(n)
                .min(c.max_ejection_time);
            let until = self
                .clock
                .instant_at(now_ns.saturating_add(duration_ns(eject_for)));
            if state.availability.eject_until(until) {
                state.outlier_ejections.store(n, Ordering::Relaxed);
                ejected_now += 1;
                tracing::warn!(
                    service = %self.service,
                    endpoint = %state.endpoint.key(),
                    address = %state.endpoint.address(),
                    success_rate = success,
                    median,
                    margin = c.success_rate_margin,
                    calls,
                    ejection = n,
                    eject_for = ?eject_for,
                    "balance: endpoint ejected as a success-rate outlier"
                );
            }
        }
    }
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
