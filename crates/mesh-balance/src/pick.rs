//! The strategies: how one pick chooses a slot of the current snapshot.
//!
//! Every strategy draws or walks candidates, keeps the eligible ones (weight
//! above zero, not avoided, not ejected, ramp admitted) and falls back to a
//! scan from a random offset only when most of the set is ineligible.

use std::sync::atomic::Ordering;

use mesh_core::TriedEndpoints;

use crate::balancer::{Balancer, Shared};
use crate::config::Strategy;
use crate::snapshot::{EJECTED, IN_SERVICE, OVER_CAP, Slot, Snapshot};
use crate::state::in_flight;

/// How a p2c pick compares its two candidates: whether it prefers the
/// second.
type Prefer = fn(&Balancer, &mut Ctx<'_>, usize, usize) -> bool;

/// Between two endpoints with nothing in flight, latency estimates within
/// this factor of each other count as equal (see `prefer_latency`).
const IDLE_TIE: f64 = 2.0;

/// Random draws a pick tries before falling back to a scan.
const DRAWS: usize = 4;
/// Up to this many endpoints, least-outstanding compares them all.
const EXACT_LEAST_OUTSTANDING: usize = 8;

/// Maps a uniform 32-bit number onto `0..n` with a multiply and a shift
/// (Lemire's reduction; the bias is below `n / 2^32`, far below what any
/// balancing test can see).
#[inline]
fn reduce(x: u32, n: u32) -> usize {
    ((u64::from(x) * u64::from(n)) >> 32) as usize
}

/// What one pick carries around: the snapshot and a clock read at most once.
pub(crate) struct Ctx<'a> {
    pub(crate) snap: &'a Snapshot,
    pub(crate) shared: &'a Shared,
    pub(crate) now: Option<u64>,
}

impl Ctx<'_> {
    #[inline]
    fn now(&mut self) -> u64 {
        let clock = self.shared.params.clock;
        *self.now.get_or_insert_with(|| clock.elapsed_nanos())
    }
}

impl Balancer {
    #[inline]
    pub(crate) fn choose(
        &self,
        ctx: &mut Ctx<'_>,
        avoid: Option<&TriedEndpoints>,
    ) -> Option<usize> {
        match self.shared.config.strategy {
            Strategy::P2cPeakEwma => self.p2c(ctx, avoid, Self::prefer_latency),
            Strategy::LeastOutstanding if ctx.snap.slots.len() <= EXACT_LEAST_OUTSTANDING => {
                self.least_exact(ctx, avoid)
            }
            Strategy::LeastOutstanding => self.p2c(ctx, avoid, Self::prefer_outstanding),
            Strategy::RoundRobin => self.round_robin(ctx, avoid),
            Strategy::WeightedRoundRobin => self.weighted_round_robin(ctx, avoid),
            Strategy::Random => self.random(ctx, avoid),
        }
    }

    /// Whether slot `i` may be chosen: weight above zero, not avoided, not
    /// ejected.
    #[inline]
    fn eligible(&self, ctx: &mut Ctx<'_>, i: usize, avoid: Option<&TriedEndpoints>) -> bool {
        let slot = &ctx.snap.slots[i];
        slot.weight > 0
            && avoid.is_none_or(|t| !t.contains_id(slot.state.id))
            && self.usable(ctx, slot)
    }

    /// Reads the endpoint's availability and applies the ejection cap.
    #[inline]
    pub(crate) fn usable(&self, ctx: &mut Ctx<'_>, slot: &Slot) -> bool {
        let available = slot.state.availability.is_available();
        let seen = slot.ejection.load(Ordering::Acquire);
        match (available, seen) {
            (true, IN_SERVICE) => true,
            (false, EJECTED) => false,
            _ => self.transition(ctx, slot, available, seen),
        }
    }

    /// The breaker changed its mind since this snapshot last looked.
    #[cold]
    #[inline(never)]
    fn transition(&self, ctx: &mut Ctx<'_>, slot: &Slot, available: bool, seen: u8) -> bool {
        let snap = ctx.snap;
        let service = &*self.shared.service;
        let key = slot.state.endpoint.key();
        if available {
            if slot
                .ejection
                .compare_exchange(seen, IN_SERVICE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if seen == EJECTED {
                    snap.ejected.fetch_sub(1, Ordering::AcqRel);
                    let now = ctx.now();
                    slot.state.restart_ramp(now);
                    if slot.state.params.slow_start_ns > 0 {
                        snap.ramp_until.fetch_max(
                            now.saturating_add(slot.state.params.slow_start_ns),
                            Ordering::Relaxed,
                        );
                    }
                    tracing::info!(service, endpoint = %key, "balance: endpoint re-admitted");
                } else if snap.over_cap.fetch_sub(1, Ordering::AcqRel) == 1 {
                    tracing::info!(
                        service,
                        "balance: panic mode over, ejection cap respected again"
                    );
                }
                self.publish(snap);
            }
            return true;
        }
        if snap.reserve_ejection() {
            if slot
                .ejection
                .compare_exchange(seen, EJECTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if seen == OVER_CAP {
                    snap.over_cap.fetch_sub(1, Ordering::AcqRel);
                }
                tracing::warn!(service, endpoint = %key, "balance: endpoint ejected (unavailable)");
                self.publish(snap);
                return false;
            }
            // Another pick got there first: give the slot back.
            snap.ejected.fetch_sub(1, Ordering::AcqRel);
            return slot.ejection.load(Ordering::Acquire) != EJECTED;
        }
        if seen == IN_SERVICE
            && slot
                .ejection
                .compare_exchange(IN_SERVICE, OVER_CAP, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            if snap.over_cap.fetch_add(1, Ordering::AcqRel) == 0
                && self.shared.config.max_ejection_percent > 0
            {
                tracing::warn!(
                    service,
                    endpoint = %key,
                    cap = snap.eject_cap,
                    "balance: panic mode, ejection cap reached: unavailable endpoints keep taking traffic"
                );
            }
            self.publish(snap);
        }
        true
    }

    /// Publishes the ejection gauges (no-op without the `metrics` feature).
    #[cfg_attr(not(feature = "metrics"), allow(clippy::unused_self, unused_variables))]
    pub(crate) fn publish(&self, snap: &Snapshot) {
        #[cfg(feature = "metrics")]
        {
            let g = &self.shared.gauges;
            g.ejected
                .set(f64::from(snap.ejected.load(Ordering::Relaxed)));
            g.panic.set(if snap.over_cap.load(Ordering::Relaxed) > 0 {
                1.0
            } else {
                0.0
            });
        }
    }

    /// The slow-start factor of slot `i`, reading the clock only while some
    /// endpoint of the snapshot may be ramping.
    #[inline]
    fn ramp(&self, ctx: &mut Ctx<'_>, i: usize) -> f64 {
        let until = ctx.snap.ramp_until.load(Ordering::Relaxed);
        if until == 0 || !ctx.snap.slots[i].state.maybe_ramping() {
            return 1.0;
        }
        let now = ctx.now();
        if now >= until {
            let _ = ctx.snap.ramp_until.compare_exchange(
                until,
                0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            return 1.0;
        }
        ctx.snap.slots[i].state.ramp_factor(now)
    }

    /// Thins a ramping endpoint's share for the latency-blind strategies:
    /// accept it with probability equal to its slow-start factor.
    #[inline]
    fn ramp_admits(&self, ctx: &mut Ctx<'_>, i: usize) -> bool {
        let f = self.ramp(ctx, i);
        f >= 1.0 || fastrand::f64() < f
    }

    /// A random eligible slot other than `except`: a few random draws, then
    /// a scan from a random offset.
    #[inline]
    fn draw_eligible(
        &self,
        ctx: &mut Ctx<'_>,
        avoid: Option<&TriedEndpoints>,
        except: Option<usize>,
    ) -> Option<usize> {
        let n = ctx.snap.slots.len();
        for _ in 0..DRAWS {
            let i = fastrand::usize(..n);
            if Some(i) != except && self.eligible(ctx, i, avoid) {
                return Some(i);
            }
        }
        self.scan(ctx, avoid, except)
    }

    #[cold]
    fn scan(
        &self,
        ctx: &mut Ctx<'_>,
        avoid: Option<&TriedEndpoints>,
        except: Option<usize>,
    ) -> Option<usize> {
        let n = ctx.snap.slots.len();
        let start = fastrand::usize(..n);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| Some(i) != except && self.eligible(ctx, i, avoid))
    }

    /// Power of two choices: two distinct random eligible slots, the cheaper
    /// wins.
    ///
    /// Both candidates come from one 64-bit random number (its halves mapped
    /// onto the set by a multiply and a shift, the second onto the `n - 1`
    /// slots other than the first, so the pair is uniform and distinct); the
    /// rejection loops only run when a candidate is not eligible.
    #[inline]
    fn p2c(
        &self,
        ctx: &mut Ctx<'_>,
        avoid: Option<&TriedEndpoints>,
        prefer: Prefer,
    ) -> Option<usize> {
        let n = ctx.snap.slots.len();
        let Ok(n32) = u32::try_from(n) else {
            return self.p2c_drawn(ctx, avoid, prefer);
        };
        let r = fastrand::u64(..);
        let mut a = reduce(r as u32, n32);
        if !self.eligible(ctx, a, avoid) {
            a = self.draw_eligible(ctx, avoid, None)?;
        }
        if n == 1 {
            return Some(a);
        }
        let mut b = reduce((r >> 32) as u32, n32 - 1);
        if b >= a {
            b += 1;
        }
        if !self.eligible(ctx, b, avoid) {
            match self.draw_eligible(ctx, avoid, Some(a)) {
                Some(x) => b = x,
                None => return Some(a),
            }
        }
        if prefer(self, ctx, a, b) {
            Some(b)
        } else {
            Some(a)
        }
    }

    /// p2c for sets too large for [`reduce`] (more than `u32::MAX` slots).
    #[cold]
    fn p2c_drawn(
        &self,
        ctx: &mut Ctx<'_>,
        avoid: Option<&TriedEndpoints>,
        prefer: Prefer,
    ) -> Option<usize> {
        let a = self.draw_eligible(ctx, avoid, None)?;
        let Some(b) = self.draw_eligible(ctx, avoid, Some(a)) else {
            return Some(a);
        };
        if prefer(self, ctx, a, b) {
            Some(b)
        } else {
            Some(a)
        }
    }

    /// Whether the server's pushback still penalises slot `i`; reads the
    /// clock only if it ever pushed back.
    #[inline]
    fn pushed_back(ctx: &mut Ctx<'_>, i: usize) -> bool {
        let state = &ctx.snap.slots[i].state;
        state.may_be_pushed_back() && state.pushed_back(ctx.now())
    }

    /// `(pushed back, latency × (in-flight + 1) / effective weight, when it
    /// was last measured if nothing is in flight to it)`.
    ///
    /// The slow-start factor and the pushback deadline are looked at only
    /// when the snapshot has a ramping endpoint or this endpoint was ever
    /// pushed back: the common case is a few loads and three multiplications.
    #[inline]
    fn latency_cost(&self, ctx: &mut Ctx<'_>, i: usize) -> (bool, f64, Option<u64>) {
        let snap = ctx.snap;
        let slot = &snap.slots[i];
        let state = &*slot.state;
        let in_flight = in_flight(&slot.state);
        let now = ctx.now();
        let (rtt, idle_since) = state.rtt_view_idle(now, in_flight);
        let mut weight = f64::from(slot.weight);
        if snap.ramp_until.load(Ordering::Relaxed) != 0 {
            weight *= self.ramp(ctx, i);
        }
        let pushed_back = state.may_be_pushed_back() && state.pushed_back(now);
        (
            pushed_back,
            rtt * f64::from(in_flight + 1) / weight,
            idle_since,
        )
    }

    /// Whether p2c peak-EWMA prefers `b` to `a`: the one not pushed back,
    /// then the lower cost; but when neither has a request in flight and
    /// their costs are within [`IDLE_TIE`] of each other, the one measured
    /// longer ago.
    ///
    /// Why: with nothing in flight the cost is the latency estimate alone,
    /// and at low concurrency that is mostly noise. The estimate jumps to any
    /// slower response (the "peak") and comes down over `ewma_decay`
    /// (seconds), so between identical replicas the one that last met a
    /// slow response (a cold connection, a scheduling hiccup) would lose
    /// every comparison for seconds, and sequential callers would send
    /// nearly everything to the other: its connections warm, the idle one's
    /// cold, its estimate stale. Taking turns among replicas of similar
    /// latency keeps every estimate fresh; a replica more than
    /// [`IDLE_TIE`] times slower is still avoided, and under load (requests
    /// in flight) the plain comparison decides.
    #[inline]
    fn prefer_latency(&self, ctx: &mut Ctx<'_>, a: usize, b: usize) -> bool {
        let (pa, ca, ia) = self.latency_cost(ctx, a);
        let (pb, cb, ib) = self.latency_cost(ctx, b);
        if pa != pb {
            return pa;
        }
        if let (Some(ia), Some(ib)) = (ia, ib)
            && cb < ca * IDLE_TIE
            && ca < cb * IDLE_TIE
        {
            return ib < ia;
        }
        cb < ca
    }

    /// Whether least outstanding prefers `b` to `a`.
    #[inline]
    fn prefer_outstanding(&self, ctx: &mut Ctx<'_>, a: usize, b: usize) -> bool {
        self.outstanding_cost(ctx, b) < self.outstanding_cost(ctx, a)
    }

    /// `(pushed back, (in-flight + 1) / effective weight)`.
    #[inline]
    fn outstanding_cost(&self, ctx: &mut Ctx<'_>, i: usize) -> (bool, f64) {
        let slot = &ctx.snap.slots[i];
        let in_flight = in_flight(&slot.state);
        let weight = f64::from(slot.weight) * self.ramp(ctx, i);
        (Self::pushed_back(ctx, i), f64::from(in_flight + 1) / weight)
    }

    /// Least outstanding over every eligible slot, ties broken by a random
    /// starting point.
    fn least_exact(&self, ctx: &mut Ctx<'_>, avoid: Option<&TriedEndpoints>) -> Option<usize> {
        let n = ctx.snap.slots.len();
        let start = fastrand::usize(..n);
        let mut best: Option<(usize, (bool, f64))> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !self.eligible(ctx, i, avoid) {
                continue;
            }
            let c = self.outstanding_cost(ctx, i);
            if best.is_none_or(|(_, b)| c < b) {
                best = Some((i, c));
            }
        }
        best.map(|(i, _)| i)
    }

    fn round_robin(&self, ctx: &mut Ctx<'_>, avoid: Option<&TriedEndpoints>) -> Option<usize> {
        let n = ctx.snap.slots.len();
        let start = ctx.snap.cursor.fetch_add(1, Ordering::Relaxed);
        for k in 0..n.min(64) {
            let i = start.wrapping_add(k) % n;
            if self.eligible(ctx, i, avoid) && self.ramp_admits(ctx, i) {
                return Some(i);
            }
        }
        self.scan(ctx, avoid, None)
    }

    fn weighted_round_robin(
        &self,
        ctx: &mut Ctx<'_>,
        avoid: Option<&TriedEndpoints>,
    ) -> Option<usize> {
        let schedule = &ctx.snap.schedule;
        let len = schedule.len();
        if len == 0 {
            return None;
        }
        let start = ctx.snap.cursor.fetch_add(1, Ordering::Relaxed);
        for k in 0..len.min(64) {
            let i = schedule[start.wrapping_add(k) % len] as usize;
            if self.eligible(ctx, i, avoid) && self.ramp_admits(ctx, i) {
                return Some(i);
            }
        }
        self.scan(ctx, avoid, None)
    }

    fn random(&self, ctx: &mut Ctx<'_>, avoid: Option<&TriedEndpoints>) -> Option<usize> {
        let n = ctx.snap.slots.len();
        for _ in 0..DRAWS * 2 {
            let i = match &ctx.snap.alias {
                Some(table) => table.draw(&mut |n| fastrand::usize(..n), fastrand::f64()),
                None => fastrand::usize(..n),
            };
            if self.eligible(ctx, i, avoid) && self.ramp_admits(ctx, i) {
                return Some(i);
            }
        }
        self.scan(ctx, avoid, None)
    }
}

#[cfg(test)]
mod tests {
    use super::reduce;

    #[test]
    fn reduce_maps_onto_the_whole_range() {
        for n in [1u32, 2, 3, 16, 10_000, u32::MAX] {
            assert_eq!(reduce(0, n), 0);
            assert_eq!(reduce(u32::MAX, n), n as usize - 1);
            assert!(reduce(u32::MAX / 2, n) <= n as usize / 2);
        }
        // Uniform enough: 16 buckets over a stride of the 32-bit space.
        let mut hits = [0u32; 16];
        for k in 0..16_000u32 {
            hits[reduce(k.wrapping_mul(268_435), 16)] += 1;
        }
        assert!(hits.iter().all(|&h| (900..=1100).contains(&h)), "{hits:?}");
    }
}
