//! The balancer: the endpoint set, its updates, and the picks.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_core::config::InvalidConfig;
use mesh_core::{Availability, Endpoint, EndpointKey, TriedEndpoints};

use crate::config::{BalanceConfig, Strategy};
use crate::guard::LoadGuard;
use crate::snapshot::{EJECTED, IN_SERVICE, OVER_CAP, Slot, Snapshot};
use crate::state::{Clock, EndpointState, Params, in_flight};

/// Random draws a pick tries before falling back to a scan.
const DRAWS: usize = 4;
/// Up to this many endpoints, least-outstanding compares them all.
const EXACT_LEAST_OUTSTANDING: usize = 8;

/// Chooses an endpoint for each request and keeps every endpoint's load.
///
/// Cheap to clone (one `Arc`); clones share the set and the accounting.
/// [`update`](Self::update) replaces the set; [`pick`](Self::pick) chooses
/// without taking a lock or allocating. See the [crate docs](crate).
#[derive(Clone)]
pub struct Balancer {
    shared: Arc<Shared>,
}

struct Shared {
    config: BalanceConfig,
    params: Params,
    service: Arc<str>,
    snapshot: ArcSwap<Snapshot>,
    /// Serialises updates (never taken by a pick).
    update_lock: Mutex<()>,
    /// A non-empty set was seen: later newcomers ramp up.
    seeded: AtomicBool,
    #[cfg(feature = "metrics")]
    gauges: Gauges,
}

#[cfg(feature = "metrics")]
struct Gauges {
    endpoints: metrics::Gauge,
    ejected: metrics::Gauge,
    panic: metrics::Gauge,
}

/// What an [`update`](Balancer::update) changed, so the caller can build
/// per-endpoint stacks for the new endpoints and drop the removed ones'.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetChanges {
    /// Endpoints that joined with fresh state (new keys, and keys whose
    /// address, tags or metadata changed).
    pub added: Vec<EndpointKey>,
    /// Endpoints whose state was dropped (gone, or replaced as above).
    pub removed: Vec<EndpointKey>,
}

/// A view of the whole balancer, for dashboards and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BalancerStats {
    /// Endpoints in the set.
    pub endpoints: usize,
    /// Endpoints with a weight above zero.
    pub active: usize,
    /// Endpoints skipped because their breaker marked them unavailable.
    pub ejected: usize,
    /// True when more endpoints are unavailable than the ejection cap
    /// allows, so some unavailable ones keep taking traffic.
    pub panic: bool,
    /// Requests in flight over all endpoints.
    pub in_flight: u64,
}

/// A view of one endpoint's accounting.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Requests in flight to it.
    pub in_flight: u32,
    /// Its peak-EWMA latency estimate (failures count as at least the
    /// configured penalty).
    pub latency_estimate: Duration,
    /// Its current weight.
    pub weight: u32,
    /// Whether a pick may choose it now: not ejected, weight above zero.
    pub eligible: bool,
}

// ===== impl Balancer =====

impl Balancer {
    /// A balancer with this config and an empty set.
    pub fn new(config: BalanceConfig) -> Result<Self, InvalidConfig> {
        Self::named("default", config)
    }

    /// A balancer for the service `service`: the name labels its tracing
    /// events and metrics.
    pub fn named(
        service: impl Into<Arc<str>>,
        config: BalanceConfig,
    ) -> Result<Self, InvalidConfig> {
        config.validate()?;
        let service: Arc<str> = service.into();
        let params = Params::new(&config, Clock::new());
        let snapshot = ArcSwap::from_pointee(Snapshot::build(
            Vec::new(),
            config.strategy,
            config.max_ejection_percent,
        ));
        Ok(Self {
            shared: Arc::new(Shared {
                #[cfg(feature = "metrics")]
                gauges: Gauges {
                    endpoints: metrics::gauge!("mesh_balance_endpoints", "service" => service.to_string()),
                    ejected: metrics::gauge!("mesh_balance_ejected_endpoints", "service" => service.to_string()),
                    panic: metrics::gauge!("mesh_balance_panic_mode", "service" => service.to_string()),
                },
                config,
                params,
                service,
                snapshot,
                update_lock: Mutex::new(()),
                seeded: AtomicBool::new(false),
            }),
        })
    }

    /// The config this balancer was built with.
    pub fn config(&self) -> &BalanceConfig {
        &self.shared.config
    }

    /// Replaces the endpoint set.
    ///
    /// Endpoints that stay (same key, address, tags and metadata) keep their
    /// accounting, with their new weight; new ones start fresh (and ramp up if
    /// slow start is on); removed ones are dropped once their last request
    /// completes. A repeated key keeps its last entry. Picks running meanwhile
    /// see either the old set or the new one, never a mix.
    pub fn update<I>(&self, endpoints: I) -> SetChanges
    where
        I: IntoIterator<Item = Endpoint>,
    {
        let shared = &*self.shared;
        let _serial = shared
            .update_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = shared.snapshot.load_full();
        let now = shared.params.clock.now_ns();
        let ramp = shared.seeded.load(Ordering::Relaxed);

        let mut order: Vec<Endpoint> = Vec::new();
        let mut position: HashMap<EndpointKey, usize> = HashMap::new();
        for ep in endpoints {
            match position.entry(ep.key().clone()) {
                Entry::Occupied(e) => order[*e.get()] = ep,
                Entry::Vacant(e) => {
                    e.insert(order.len());
                    order.push(ep);
                }
            }
        }

        let mut changes = SetChanges::default();
        let mut slots = Vec::with_capacity(order.len());
        for ep in order {
            let survivor = old
                .index
                .get(&ep.key().id())
                .map(|&i| &old.slots[i].state)
                .filter(|s| same_but_weight(&s.endpoint, &ep));
            let state = match survivor {
                Some(state) => Arc::clone(state),
                None => {
                    tracing::debug!(service = %shared.service, endpoint = %ep.key(), address = %ep.address(), "balance: endpoint added");
                    changes.added.push(ep.key().clone());
                    Arc::new(EndpointState::new(
                        ep.clone(),
                        shared.params,
                        now,
                        ramp,
                        &shared.service,
                    ))
                }
            };
            slots.push(Slot::new(state, ep.weight()));
        }
        let next = Snapshot::build(
            slots,
            shared.config.strategy,
            shared.config.max_ejection_percent,
        );
        for slot in &old.slots {
            let kept = next
                .index
                .get(&slot.state.id)
                .is_some_and(|&i| Arc::ptr_eq(&next.slots[i].state, &slot.state));
            if !kept {
                tracing::debug!(service = %shared.service, endpoint = %slot.state.endpoint.key(), "balance: endpoint removed");
                changes.removed.push(slot.state.endpoint.key().clone());
            }
        }
        if !next.slots.is_empty() {
            shared.seeded.store(true, Ordering::Relaxed);
        }
        tracing::info!(
            service = %shared.service,
            endpoints = next.slots.len(),
            active = next.active,
            added = changes.added.len(),
            removed = changes.removed.len(),
            "balance: endpoint set updated"
        );
        #[cfg(feature = "metrics")]
        {
            shared.gauges.endpoints.set(next.slots.len() as f64);
        }
        self.publish(&next);
        shared.snapshot.store(Arc::new(next));
        changes
    }

    /// Chooses an endpoint and counts a request in flight to it.
    ///
    /// Endpoints in `avoid` (the ones this logical request already tried)
    /// are skipped while any other can be chosen. Returns `None` only when
    /// the set has no endpoint with a weight above zero. Takes no lock and
    /// allocates nothing.
    #[inline]
    pub fn pick(&self, avoid: Option<&TriedEndpoints>) -> Option<LoadGuard> {
        let snap = self.shared.snapshot.load();
        if snap.active == 0 {
            return None;
        }
        let timed = self.shared.config.strategy == Strategy::P2cPeakEwma;
        let mut ctx = Ctx {
            snap: &snap,
            shared: &self.shared,
            now: timed.then(|| self.shared.params.clock.now_ns()),
        };
        let avoid = avoid.filter(|t| !t.is_empty());
        let index = match avoid {
            Some(_) => self
                .choose(&mut ctx, avoid)
                .or_else(|| self.choose(&mut ctx, None)),
            None => self.choose(&mut ctx, None),
        }?;
        Some(LoadGuard::new(
            &snap.slots[index].state,
            if timed { ctx.now } else { None },
        ))
    }

    /// The number of endpoints in the set.
    pub fn len(&self) -> usize {
        self.shared.snapshot.load().slots.len()
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The endpoints in the set (allocates; not for the request path).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.shared
            .snapshot
            .load()
            .slots
            .iter()
            .map(|s| s.state.endpoint.clone())
            .collect()
    }

    /// The availability signal of the endpoint with this key: build the
    /// endpoint's stack inside [`Availability::scope`] so its breaker
    /// publishes into it.
    pub fn availability(&self, key: &EndpointKey) -> Option<Availability> {
        let snap = self.shared.snapshot.load();
        find(&snap, key).map(|s| s.state.availability.clone())
    }

    /// The accounting of the endpoint with this key.
    pub fn endpoint_stats(&self, key: &EndpointKey) -> Option<EndpointStats> {
        let snap = self.shared.snapshot.load();
        let slot = find(&snap, key)?;
        let mut ctx = Ctx {
            snap: &snap,
            shared: &self.shared,
            now: None,
        };
        Some(EndpointStats {
            in_flight: in_flight(&slot.state),
            latency_estimate: slot.state.rtt_estimate(),
            weight: slot.weight,
            eligible: slot.weight > 0 && self.usable(&mut ctx, slot),
        })
    }

    /// Counts over the whole set. Observes every endpoint's availability as
    /// a pick would (so ejections and re-admissions are noticed even for
    /// endpoints no pick drew lately): O(n), not for the request path.
    pub fn stats(&self) -> BalancerStats {
        let snap = self.shared.snapshot.load();
        let mut ctx = Ctx {
            snap: &snap,
            shared: &self.shared,
            now: None,
        };
        let mut total_in_flight = 0u64;
        for slot in &snap.slots {
            if slot.weight > 0 {
                self.usable(&mut ctx, slot);
            }
            total_in_flight += u64::from(in_flight(&slot.state));
        }
        BalancerStats {
            endpoints: snap.slots.len(),
            active: snap.active,
            ejected: snap.ejected.load(Ordering::Relaxed) as usize,
            panic: snap.over_cap.load(Ordering::Relaxed) > 0,
            in_flight: total_in_flight,
        }
    }
}

fn find<'a>(snap: &'a Snapshot, key: &EndpointKey) -> Option<&'a Slot> {
    let &i = snap.index.get(&key.id())?;
    let slot = &snap.slots[i];
    (slot.state.endpoint.key() == key).then_some(slot)
}

fn same_but_weight(a: &Endpoint, b: &Endpoint) -> bool {
    a.ptr_eq(b)
        || (a.key() == b.key()
            && a.address() == b.address()
            && a.tags() == b.tags()
            && a.metadata() == b.metadata())
}

impl Default for Balancer {
    /// A balancer with the default config (p2c peak-EWMA).
    fn default() -> Self {
        Self::new(BalanceConfig::default()).expect("the default config is valid")
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("service", &self.shared.service)
            .field("strategy", &self.shared.config.strategy)
            .field("snapshot", &**self.shared.snapshot.load())
            .finish()
    }
}

// ===== picking =====

/// What one pick carries around: the snapshot and a clock read at most once.
struct Ctx<'a> {
    snap: &'a Snapshot,
    shared: &'a Shared,
    now: Option<u64>,
}

impl Ctx<'_> {
    #[inline]
    fn now(&mut self) -> u64 {
        let clock = self.shared.params.clock;
        *self.now.get_or_insert_with(|| clock.now_ns())
    }
}

impl Balancer {
    #[inline]
    fn choose(&self, ctx: &mut Ctx<'_>, avoid: Option<&TriedEndpoints>) -> Option<usize> {
        match self.shared.config.strategy {
            Strategy::P2cPeakEwma => self.p2c(ctx, avoid, Self::latency_cost),
            Strategy::LeastOutstanding if ctx.snap.slots.len() <= EXACT_LEAST_OUTSTANDING => {
                self.least_exact(ctx, avoid)
            }
            Strategy::LeastOutstanding => self.p2c(ctx, avoid, Self::outstanding_cost),
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
    fn usable(&self, ctx: &mut Ctx<'_>, slot: &Slot) -> bool {
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
    fn publish(&self, snap: &Snapshot) {
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
    #[inline]
    fn p2c(
        &self,
        ctx: &mut Ctx<'_>,
        avoid: Option<&TriedEndpoints>,
        cost: fn(&Self, &mut Ctx<'_>, usize) -> (bool, f64),
    ) -> Option<usize> {
        let a = self.draw_eligible(ctx, avoid, None)?;
        if ctx.snap.slots.len() == 1 {
            return Some(a);
        }
        let Some(b) = self.draw_eligible(ctx, avoid, Some(a)) else {
            return Some(a);
        };
        if cost(self, ctx, b) < cost(self, ctx, a) {
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

    /// `(pushed back, latency × (in-flight + 1) / effective weight)`.
    #[inline]
    fn latency_cost(&self, ctx: &mut Ctx<'_>, i: usize) -> (bool, f64) {
        let slot = &ctx.snap.slots[i];
        let in_flight = in_flight(&slot.state);
        let rtt = slot.state.rtt_view(ctx.now(), in_flight);
        let weight = f64::from(slot.weight) * self.ramp(ctx, i);
        (
            Self::pushed_back(ctx, i),
            rtt * f64::from(in_flight + 1) / weight,
        )
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
