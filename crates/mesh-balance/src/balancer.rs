//! The balancer: the endpoint set, its updates, and the picks.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::{ArcSwap, Cache};
use mesh_core::clock::Clock;
use mesh_core::config::InvalidConfig;
use mesh_core::{Availability, Endpoint, EndpointKey, TriedEndpoints};

use crate::config::{BalanceConfig, Strategy};
use crate::guard::LoadGuard;
use crate::outlier::Detector;
use crate::pick::Ctx;
use crate::snapshot::{Slot, Snapshot};
use crate::state::{EndpointState, Params, cold_estimate, in_flight};

/// Chooses an endpoint for each request and keeps every endpoint's load.
///
/// Cheap to clone (one `Arc`); clones share the set and the accounting.
/// [`update`](Self::update) replaces the set; [`pick`](Self::pick) chooses
/// without taking a lock or allocating. See the [crate docs](crate).
#[derive(Clone)]
pub struct Balancer {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) config: BalanceConfig,
    pub(crate) params: Params,
    pub(crate) service: Arc<str>,
    /// In its own `Arc` so a [`Picker`] can cache it (`arc_swap::Cache`).
    snapshot: Arc<ArcSwap<Snapshot>>,
    /// Serialises updates (never taken by a pick).
    update_lock: Mutex<()>,
    /// A non-empty set was seen: later newcomers ramp up.
    seeded: AtomicBool,
    /// Success-rate outlier detection, run by the calls themselves.
    detector: Arc<Detector>,
    #[cfg(feature = "metrics")]
    pub(crate) gauges: Gauges,
}

#[cfg(feature = "metrics")]
pub(crate) struct Gauges {
    pub(crate) endpoints: metrics::Gauge,
    pub(crate) ejected: metrics::Gauge,
    pub(crate) panic: metrics::Gauge,
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
    /// Its success rate over the outlier detector's last interval that had
    /// calls (`None` before one, or with outlier detection off).
    pub recent_success_rate: Option<f64>,
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
        let clock = Clock::new();
        let params = Params::new(&config, clock);
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(
            Vec::new(),
            config.strategy,
            config.max_ejection_percent,
        )));
        let detector = Arc::new(Detector::new(
            &config.outlier,
            clock,
            Arc::clone(&service),
            &snapshot,
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
                detector,
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
        let now = shared.params.clock.elapsed_nanos();
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
        // New endpoints start from their measured peers' estimate.
        let mut seed_rtt = None;
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
                    let seed = *seed_rtt.get_or_insert_with(|| {
                        cold_estimate(&old.slots, now, shared.params.default_rtt_ns)
                    });
                    Arc::new(EndpointState::new(
                        ep.clone(),
                        shared.params,
                        seed,
                        now,
                        ramp,
                        Arc::clone(&shared.detector),
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
    ///
    /// Loading the current set costs an `ArcSwap` load (two atomic
    /// read-modify-writes, ~20 ns on a VM); a caller that picks often from
    /// one place saves that with a [`Picker`].
    #[inline]
    pub fn pick(&self, avoid: Option<&TriedEndpoints>) -> Option<LoadGuard> {
        let snap = self.shared.snapshot.load();
        self.pick_in(&snap, avoid)
    }

    /// A handle that picks from a cached view of the set: see [`Picker`].
    pub fn picker(&self) -> Picker {
        Picker {
            balancer: self.clone(),
            snapshot: Cache::new(Arc::clone(&self.shared.snapshot)),
        }
    }

    #[inline]
    fn pick_in(&self, snap: &Snapshot, avoid: Option<&TriedEndpoints>) -> Option<LoadGuard> {
        if snap.active == 0 {
            return None;
        }
        let timed = self.shared.config.strategy == Strategy::P2cPeakEwma;
        let mut ctx = Ctx {
            snap,
            shared: &self.shared,
            now: timed.then(|| self.shared.params.clock.elapsed_nanos()),
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
            index,
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

    /// The endpoints in the set, in the order of [`LoadGuard::slot`]
    /// (allocates; not for the request path).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.shared
            .snapshot
            .load()
            .slots
            .iter()
            .map(|s| s.state.endpoint.clone())
            .collect()
    }

    /// The health signal of the endpoint with this key: hand it to the
    /// endpoint's stack (in its [`Target`](mesh_core::Target)) so its breaker
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
            recent_success_rate: slot.state.recent_success_rate(),
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

// ===== impl Picker =====

/// A [`Balancer`] handle for one caller that picks often: it caches the
/// current endpoint set and checks it is still current with one plain atomic
/// load per pick, instead of the `ArcSwap` load (two atomic
/// read-modify-writes) that [`Balancer::pick`] pays.
///
/// Picks see every update at once, exactly like [`Balancer::pick`]. The
/// price: an idle handle keeps the set it last saw alive (the memory of
/// endpoints removed since, not their load accounting, which stays exact)
/// until it picks again or is dropped. Give each long-lived caller (a
/// router's service clone, a worker) its own; clones start from the same
/// cache.
///
/// # Example
///
/// ```
/// use mesh_balance::Balancer;
/// use mesh_core::{Endpoint, Outcome};
///
/// let balancer = Balancer::default();
/// balancer.update([Endpoint::new("a", "10.0.0.1:80".parse()?)]);
/// let mut picker = balancer.picker();
/// let guard = picker.pick(None).expect("one endpoint");
/// guard.record(Outcome::Success);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Picker {
    balancer: Balancer,
    snapshot: Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>,
}

impl Picker {
    /// As [`Balancer::pick`], from the cached view of the set.
    #[inline]
    pub fn pick(&mut self, avoid: Option<&TriedEndpoints>) -> Option<LoadGuard> {
        let snap = self.snapshot.load();
        self.balancer.pick_in(snap, avoid)
    }

    /// The balancer this handle picks for.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }
}

impl fmt::Debug for Picker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Picker")
            .field("service", &self.balancer.shared.service)
            .finish_non_exhaustive()
    }
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
