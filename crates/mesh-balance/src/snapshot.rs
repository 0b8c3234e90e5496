//! One immutable view of the endpoint set, built when discovery changes it
//! and swapped in atomically. Everything a pick needs that depends only on
//! the set (weights, the weighted-random alias table, the smooth WRR
//! schedule, the ejection cap) is precomputed here, never per pick.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::config::Strategy;
use crate::state::EndpointState;

/// The longest smooth WRR schedule built; larger weight sums are scaled down.
pub(crate) const MAX_SCHEDULE: u64 = 1 << 16;

/// The endpoint takes traffic.
pub(crate) const IN_SERVICE: u8 = 0;
/// The endpoint's breaker said unavailable and the cap allowed ejecting it.
pub(crate) const EJECTED: u8 = 1;
/// The breaker said unavailable but the cap was reached: it keeps taking
/// traffic (panic mode).
pub(crate) const OVER_CAP: u8 = 2;

/// One endpoint in one snapshot.
pub(crate) struct Slot {
    pub(crate) state: Arc<EndpointState>,
    pub(crate) weight: u32,
    /// What this snapshot last saw of the endpoint's availability.
    pub(crate) ejection: AtomicU8,
}

pub(crate) struct Snapshot {
    pub(crate) slots: Box<[Slot]>,
    /// Key id -> slot index, for lookups off the hot path.
    pub(crate) index: HashMap<u64, usize>,
    /// Slots with a weight above zero.
    pub(crate) active: usize,
    pub(crate) eject_cap: u32,
    pub(crate) ejected: AtomicU32,
    pub(crate) over_cap: AtomicU32,
    /// Latest end of any endpoint's slow start (ns since the epoch); 0 when
    /// nobody is ramping, so latency-blind strategies skip the clock.
    pub(crate) ramp_until: AtomicU64,
    pub(crate) cursor: AtomicUsize,
    pub(crate) alias: Option<AliasTable>,
    pub(crate) schedule: Box<[u32]>,
}

impl Snapshot {
    pub(crate) fn build(slots: Vec<Slot>, strategy: Strategy, max_ejection_percent: u8) -> Self {
        let weights: Vec<u32> = slots.iter().map(|s| s.weight).collect();
        let active = weights.iter().filter(|&&w| w > 0).count();
        let first_active = weights.iter().copied().find(|&w| w > 0);
        let uniform_weights = weights.iter().all(|&w| w == 0 || Some(w) == first_active);
        let eject_cap = if active == 0 {
            0
        } else {
            let share = active * usize::from(max_ejection_percent) / 100;
            share.min(active - 1)
        };
        let alias =
            (strategy == Strategy::Random && !uniform_weights).then(|| AliasTable::new(&weights));
        let schedule = if strategy == Strategy::WeightedRoundRobin {
            smooth_schedule(&weights)
        } else {
            Box::default()
        };
        let mut ramp_until = 0;
        for s in &slots {
            let admitted = s.state.admitted_at.load(Ordering::Relaxed);
            if s.state.maybe_ramping() {
                ramp_until = u64::max(
                    ramp_until,
                    admitted.saturating_add(s.state.params.slow_start_ns),
                );
            }
        }
        let index = slots
            .iter()
            .enumerate()
            .map(|(i, s)| (s.state.id, i))
            .collect();
        let snapshot = Self {
            slots: slots.into_boxed_slice(),
            index,
            active,
            eject_cap: u32::try_from(eject_cap).unwrap_or(u32::MAX),
            ejected: AtomicU32::new(0),
            over_cap: AtomicU32::new(0),
            ramp_until: AtomicU64::new(ramp_until),
            cursor: AtomicUsize::new(0),
            alias,
            schedule,
        };
        // Start from what the breakers say now.
        for slot in snapshot.slots.iter().filter(|s| s.weight > 0) {
            if !slot.state.availability.is_available() {
                let to = if snapshot.reserve_ejection() {
                    EJECTED
                } else {
                    snapshot.over_cap.fetch_add(1, Ordering::Relaxed);
                    OVER_CAP
                };
                slot.ejection.store(to, Ordering::Relaxed);
            }
        }
        snapshot
    }

    /// Takes one of the cap's ejection slots, if one is free.
    pub(crate) fn reserve_ejection(&self) -> bool {
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.eject_cap).then_some(n + 1)
            })
            .is_ok()
    }
}

impl Slot {
    pub(crate) fn new(state: Arc<EndpointState>, weight: u32) -> Self {
        state.snapshot_refs.fetch_add(1, Ordering::AcqRel);
        Self {
            state,
            weight,
            ejection: AtomicU8::new(IN_SERVICE),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.snapshot_refs.fetch_sub(1, Ordering::AcqRel);
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("endpoints", &self.slots.len())
            .field("active", &self.active)
            .field("ejected", &self.ejected.load(Ordering::Relaxed))
            .field("over_cap", &self.over_cap.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

// ===== weighted random: Vose's alias method =====

/// Draws an index in proportion to its weight in O(1): two random numbers
/// and two array reads.
pub(crate) struct AliasTable {
    prob: Box<[f64]>,
    alias: Box<[u32]>,
}

impl AliasTable {
    pub(crate) fn new(weights: &[u32]) -> Self {
        let n = weights.len();
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let mut prob = vec![1.0; n];
        let mut alias: Vec<u32> = (0..n).map(|i| i as u32).collect();
        if n == 0 || total == 0.0 {
            return Self {
                prob: prob.into(),
                alias: alias.into(),
            };
        }
        let mut scaled: Vec<f64> = weights
            .iter()
            .map(|&w| f64::from(w) * n as f64 / total)
            .collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            prob[s] = scaled[s];
            alias[s] = l as u32;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Leftovers are 1.0 up to rounding; a zero-weight slot must never win
        // its own column.
        for i in small.into_iter().chain(large) {
            prob[i] = if weights[i] == 0 { 0.0 } else { 1.0 };
        }
        Self {
            prob: prob.into(),
            alias: alias.into(),
        }
    }

    #[inline]
    pub(crate) fn draw(&self, rng: &mut impl FnMut(usize) -> usize, coin: f64) -> usize {
        let i = rng(self.prob.len());
        if coin < self.prob[i] {
            i
        } else {
            self.alias[i] as usize
        }
    }
}

// ===== smooth weighted round robin: a precomputed interleaved schedule =====

/// The order in which a smooth WRR visits the endpoints over one cycle:
/// endpoint `i` appears `w_i` times, evenly spaced at `1/w_i` of the cycle
/// (earliest deadline first), so heavy endpoints are spread out instead of
/// bunched: weights 5,1,1 give `a b a a a c a`, whose longest run, even
/// across cycles, is 3 (nginx's smooth WRR gives `a a b a c a a`, 4 across
/// cycles). Weights are divided by their greatest
/// common divisor and scaled down if the cycle would pass [`MAX_SCHEDULE`].
fn smooth_schedule(weights: &[u32]) -> Box<[u32]> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
    if g == 0 {
        return Box::default();
    }
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x) / g).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        for x in &mut w {
            if *x > 0 {
                *x = (*x * MAX_SCHEDULE / total).max(1);
            }
        }
    }
    let total: u64 = w.iter().sum();

    /// Visit `k` of endpoint `i` is due at `(k + phase_i) / w_i` of the
    /// cycle. Phases are spread by the golden ratio so light endpoints with
    /// equal weights do not land next to each other.
    struct Visit {
        due: f64,
        k: u64,
        index: usize,
    }
    impl PartialEq for Visit {
        fn eq(&self, other: &Self) -> bool {
            self.cmp(other) == CmpOrdering::Equal
        }
    }
    impl Eq for Visit {}
    impl Ord for Visit {
        fn cmp(&self, other: &Self) -> CmpOrdering {
            // Reversed: BinaryHeap is a max-heap, we want the earliest.
            other
                .due
                .total_cmp(&self.due)
                .then_with(|| other.index.cmp(&self.index))
        }
    }
    impl PartialOrd for Visit {
        fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
            Some(self.cmp(other))
        }
    }
    let phase = |i: usize| ((i as f64 + 1.0) * 0.618_033_988_749_895).fract();
    let due = |i: usize, k: u64| (k as f64 + phase(i)) / w[i] as f64;

    let mut heap: BinaryHeap<Visit> = w
        .iter()
        .enumerate()
        .filter(|&(_, &x)| x > 0)
        .map(|(index, _)| Visit {
            due: due(index, 0),
            k: 0,
            index,
        })
        .collect();
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    while let Some(mut v) = heap.pop() {
        out.push(v.index as u32);
        v.k += 1;
        if v.k < w[v.index] {
            v.due = due(v.index, v.k);
            heap.push(v);
        }
    }
    out.into_boxed_slice()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn schedule_is_smooth() {
        let s = smooth_schedule(&[5, 1, 1]);
        assert_eq!(s.len(), 7);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 5);
        // The heavy endpoint never runs more than three in a row, even
        // across cycles.
        let twice: Vec<u32> = s.iter().chain(s.iter()).copied().collect();
        let runs = twice
            .windows(4)
            .filter(|w| w.iter().all(|&i| i == 0))
            .count();
        assert_eq!(runs, 0, "{s:?}");
        let mut rr = smooth_schedule(&[1, 1, 1]).to_vec();
        rr.sort_unstable();
        assert_eq!(rr, [0, 1, 2]);
        assert_eq!(smooth_schedule(&[2, 0, 4]).len(), 3);
        assert!(smooth_schedule(&[0, 0]).is_empty());
    }

    #[test]
    fn big_weights_are_scaled() {
        let s = smooth_schedule(&[u32::MAX, 1, u32::MAX / 2]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 3);
        assert!(s.contains(&1));
    }

    proptest! {
        #[test]
        fn schedule_counts_match_weights(w in proptest::collection::vec(0u32..20, 1..30)) {
            let s = smooth_schedule(&w);
            let g = w.iter().fold(0u64, |g, &x| gcd(g, u64::from(x)));
            for (i, &x) in w.iter().enumerate() {
                let n = s.iter().filter(|&&j| j as usize == i).count() as u64;
                prop_assert_eq!(n, u64::from(x).checked_div(g).unwrap_or(0));
            }
        }

        #[test]
        fn alias_never_draws_zero_weight(w in proptest::collection::vec(0u32..5, 1..20), seed: u64) {
            prop_assume!(w.iter().any(|&x| x > 0));
            let t = AliasTable::new(&w);
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..200 {
                let coin = rng.f64();
                let i = t.draw(&mut |n| rng.usize(..n), coin);
                prop_assert!(w[i] > 0);
            }
        }
    }
}
