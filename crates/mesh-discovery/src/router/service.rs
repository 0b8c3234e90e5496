//! The router service: one logical service in, one endpoint's stack out.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::{ArcSwap, Cache};
use mesh_balance::{Balancer, LoadGuard, Picker};
use mesh_core::classify::Classify;
use mesh_core::{Availability, BoxError, Endpoint, TriedEndpoints};
use tokio::sync::watch;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::error::NoReadyEndpoint;
use super::future::{Dispatch, ResponseFuture};
use super::rewrite::{EndpointTarget, HostHeader, Rewrite, RewriteTarget};
use crate::EndpointSet;

/// How often a request waiting for an endpoint looks again: breakers
/// re-admitting an endpoint do not notify the router.
const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Routes each request to a live endpoint of one logical service.
///
/// Built by [`DiscoveryLayer`](super::DiscoveryLayer). Cloning is cheap (one
/// atomic increment): clones share the endpoint table, the balancer and every
/// endpoint's stack. `poll_ready` is always ready; readiness is a property of
/// each endpoint, and the router only sends to one that is ready (see the
/// [module docs](super)).
pub struct DiscoveryService<S, L, C>
where
    L: Layer<Rewrite<S>>,
{
    shared: Arc<Shared<S, L, C>>,
    /// This handle's own views of the source, the balancer's set and the
    /// stacks, built at its second call: see [`Local`].
    local: Option<Local<L::Service>>,
    /// Whether this handle made a call without `local` yet.
    called: bool,
}

/// A handle's cached views: its own receiver of the source's sets, and
/// caches of the balancer's set and of the stacks, each checked with one
/// plain atomic load per call.
///
/// Building them (and dropping them) costs seven atomic read-modify-writes
/// each way, more than they save on one call. A clone starts without them and
/// its first call reads the shared state instead (two `ArcSwap` loads and an
/// uncontended `try_lock`); its second call builds them. A handle that makes
/// one call, like a clone made per request or the one a retry keeps, never
/// pays for them; one that keeps calling pays once.
struct Local<T> {
    updates: watch::Receiver<EndpointSet>,
    picker: Picker,
    table: TableCache<T>,
}

type TableCache<T> = Cache<Arc<ArcSwap<Table<T>>>, Arc<Table<T>>>;

impl<S, L, C> Clone for DiscoveryService<S, L, C>
where
    L: Layer<Rewrite<S>>,
{
    /// One atomic increment: the clone builds its caches at its second call.
    #[inline]
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            local: None,
            called: false,
        }
    }
}

impl<S, L, C> fmt::Debug for DiscoveryService<S, L, C>
where
    L: Layer<Rewrite<S>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoveryService")
            .field("service", &self.shared.name)
            .field("endpoints", &self.shared.table.load().stacks.len())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared<S, L, C>
where
    L: Layer<Rewrite<S>>,
{
    pub(crate) name: Arc<str>,
    inner: S,
    layer: L,
    pub(crate) classifier: C,
    pub(crate) balancer: Balancer,
    table: Arc<ArcSwap<Table<L::Service>>>,
    /// The source's sets, for handles without their own receiver.
    updates: Mutex<watch::Receiver<EndpointSet>>,
    /// The version of the last endpoint set applied; serialises rebuilds.
    applied: Mutex<Option<u64>>,
    pub(crate) ready_timeout: Duration,
    host: HostHeader,
}

/// Every endpoint's stack, in the order of the balancer's set it was built
/// with, so a pick finds its stack at the slot the balancer chose (one
/// cache line, no hashing) and falls back to the key-id index only when the
/// two sets are not the same (an update in progress).
pub(crate) struct Table<T> {
    stacks: Vec<EndpointStack<T>>,
    /// Key id -> position in `stacks`.
    index: HashMap<u64, usize, BuildHasherDefault<IdHasher>>,
}

impl<T> Table<T> {
    fn empty() -> Self {
        Self {
            stacks: Vec::new(),
            index: HashMap::default(),
        }
    }

    /// The stack of the endpoint the balancer chose at `slot`, `id` its key id.
    #[inline]
    fn get(&self, slot: usize, id: u64) -> Option<&EndpointStack<T>> {
        match self.stacks.get(slot) {
            Some(stack) if stack.id == id => Some(stack),
            _ => self.by_id(id),
        }
    }

    fn by_id(&self, id: u64) -> Option<&EndpointStack<T>> {
        self.index.get(&id).map(|&i| &self.stacks[i])
    }
}

struct EndpointStack<T> {
    id: u64,
    endpoint: Endpoint,
    availability: Availability,
    service: T,
}

/// Endpoint-key ids are already well-mixed 64-bit hashes: use them as is.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
}

// ===== impl DiscoveryService =====

impl<S, L, C> DiscoveryService<S, L, C>
where
    L: Layer<Rewrite<S>>,
    L::Service: Clone,
    S: Clone,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: Arc<str>,
        inner: S,
        layer: L,
        classifier: C,
        balancer: Balancer,
        mut updates: watch::Receiver<EndpointSet>,
        ready_timeout: Duration,
        host: HostHeader,
    ) -> Self {
        let initial = updates.borrow_and_update().clone();
        let shared = Arc::new(Shared {
            name,
            inner,
            layer,
            classifier,
            balancer,
            table: Arc::new(ArcSwap::from_pointee(Table::empty())),
            updates: Mutex::new(updates.clone()),
            applied: Mutex::new(None),
            ready_timeout,
            host,
        });
        shared.apply(&initial);
        let local = Local {
            picker: shared.balancer.picker(),
            table: Cache::new(Arc::clone(&shared.table)),
            updates,
        };
        Self {
            shared,
            local: Some(local),
            called: true,
        }
    }

    /// The balancer choosing among this service's endpoints (for stats).
    pub fn balancer(&self) -> &Balancer {
        &self.shared.balancer
    }

    /// The endpoints the router sends to now.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.shared
            .table
            .load()
            .stacks
            .iter()
            .map(|s| s.endpoint.clone())
            .collect()
    }

    /// Whether this handle has built its own caches (at its second call).
    #[cfg(test)]
    pub(crate) fn has_local_caches(&self) -> bool {
        self.local.is_some()
    }

    /// Whether every stack sits at its endpoint's slot in the balancer's set.
    #[cfg(test)]
    pub(crate) fn table_matches_slots(&self) -> bool {
        let table = self.shared.table.load();
        let endpoints = self.shared.balancer.endpoints();
        endpoints.len() == table.stacks.len()
            && endpoints
                .iter()
                .zip(&table.stacks)
                .all(|(ep, stack)| ep.key().id() == stack.id)
    }

    /// This handle's caches, built at its second call (see [`Local`]).
    #[inline]
    fn local<'a>(
        local: &'a mut Option<Local<L::Service>>,
        called: &mut bool,
        shared: &Shared<S, L, C>,
    ) -> Option<&'a mut Local<L::Service>> {
        if local.is_none() {
            if !*called {
                *called = true;
                return None;
            }
            *local = Some(shared.local());
        }
        local.as_mut()
    }
}

impl<T> Local<T> {
    /// Applies the source's latest set if it changed since this handle last
    /// looked: one atomic load when nothing changed.
    #[inline]
    fn refresh<S, L, C>(&mut self, shared: &Shared<S, L, C>)
    where
        L: Layer<Rewrite<S>, Service = T>,
        T: Clone,
        S: Clone,
    {
        if self.updates.has_changed().unwrap_or(false) {
            let set = self.updates.borrow_and_update().clone();
            shared.apply(&set);
        }
    }
}

impl<S, L, C> Shared<S, L, C>
where
    L: Layer<Rewrite<S>>,
    L::Service: Clone,
    S: Clone,
{
    /// Caches for a handle that keeps calling.
    #[cold]
    fn local(&self) -> Local<L::Service> {
        Local {
            updates: self.receiver(),
            picker: self.balancer.picker(),
            table: Cache::new(Arc::clone(&self.table)),
        }
    }

    /// A receiver of the source's sets, as current as the shared one.
    fn receiver(&self) -> watch::Receiver<EndpointSet> {
        self.updates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// [`Local::refresh`] for a handle without caches, through the shared
    /// receiver. If another call holds it, that call is looking already:
    /// this one routes with the applied set, as it would have a moment
    /// earlier.
    #[inline]
    fn refresh_shared(&self) {
        let mut updates = match self.updates.try_lock() {
            Ok(updates) => updates,
            Err(TryLockError::WouldBlock) => return,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
        };
        if updates.has_changed().unwrap_or(false) {
            let set = updates.borrow_and_update().clone();
            drop(updates);
            self.apply(&set);
        }
    }

    /// Makes `set` the routed set: the balancer learns it, endpoints that stay
    /// keep their stack, new or changed ones get a new stack built inside
    /// their availability scope (so their breaker publishes to the balancer),
    /// removed ones are dropped. Serialised; a set older than the applied one
    /// is ignored.
    pub(crate) fn apply(&self, set: &EndpointSet) {
        let mut applied = self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        if applied.is_some_and(|v| v >= set.version()) {
            return;
        }
        let mut targets = Vec::with_capacity(set.len());
        for ep in set {
            match EndpointTarget::new(ep.clone()) {
                Ok(t) => targets.push(Arc::new(t)),
                Err(error) => tracing::error!(
                    service = %self.name, endpoint = %ep.key(), address = %ep.address(), %error,
                    "router: endpoint address cannot be routed to; skipping it"
                ),
            }
        }
        self.balancer
            .update(targets.iter().map(|t| t.endpoint().clone()));

        let old = self.table.load_full();
        let mut built: HashMap<u64, EndpointStack<L::Service>, BuildHasherDefault<IdHasher>> =
            HashMap::with_capacity_and_hasher(targets.len(), Default::default());
        for target in targets {
            let ep = target.endpoint();
            let Some(availability) = self.balancer.availability(ep.key()) else {
                continue;
            };
            let id = ep.key().id();
            let kept = old
                .by_id(id)
                .filter(|s| s.availability.ptr_eq(&availability) && same_route(&s.endpoint, ep));
            let stack = match kept {
                Some(s) => EndpointStack {
                    id,
                    endpoint: ep.clone(),
                    availability,
                    service: s.service.clone(),
                },
                None => {
                    tracing::info!(
                        service = %self.name, endpoint = %ep.key(), address = %ep.address(),
                        "router: endpoint added"
                    );
                    let rewrite = Rewrite::new(Arc::clone(&target), self.host, self.inner.clone());
                    let service = availability.scope(|| self.layer.layer(rewrite));
                    EndpointStack {
                        id,
                        endpoint: ep.clone(),
                        availability,
                        service,
                    }
                }
            };
            built.insert(id, stack);
        }
        for old_stack in &old.stacks {
            let replaced = built
                .get(&old_stack.id)
                .is_some_and(|s| s.availability.ptr_eq(&old_stack.availability));
            if !replaced {
                tracing::info!(
                    service = %self.name, endpoint = %old_stack.endpoint.key(),
                    "router: endpoint removed; requests in flight complete, no new ones are sent"
                );
            }
        }
        // In the balancer's slot order (an update made meanwhile by someone
        // else only costs picks the fallback lookup by key id).
        let mut stacks = Vec::with_capacity(built.len());
        for ep in self.balancer.endpoints() {
            if let Some(stack) = built.remove(&ep.key().id()) {
                stacks.push(stack);
            }
        }
        stacks.extend(built.into_values());
        let index = stacks.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
        self.table.store(Arc::new(Table { stacks, index }));
        *applied = Some(set.version());
    }

    /// Chooses an endpoint for one attempt and returns its load guard and a
    /// clone of its stack. `picker` picks from the balancer's set (a cached
    /// [`Picker`] or [`Balancer::pick`]) and `table` is the caller's view of
    /// the stacks.
    #[inline]
    pub(crate) fn pick(
        &self,
        picker: &mut impl Pick,
        table: &Table<L::Service>,
        tried: Option<&TriedEndpoints>,
    ) -> Option<(LoadGuard, L::Service)> {
        let mut guard = picker.pick(tried)?;
        // An endpoint the balancer just learned may not have its stack yet
        // (a rebuild is in progress): the caller waits and looks again.
        let mut stack = table.get(guard.slot(), guard.key_id())?;
        if !stack.availability.is_available() {
            // `None`: every endpoint is unavailable; the caller's wait path
            // decides whether waiting can help.
            let (g, s) = self.pick_available(picker, table, tried, guard.key_id())?;
            guard = g;
            stack = s;
        }
        let service = stack.service.clone();
        // Into the request's record, or (a first attempt sent without one)
        // into the retry layer's attempt scope.
        TriedEndpoints::record_attempt_id(tried, guard.key_id());
        Some((guard, service))
    }

    /// The balancer chose an unavailable endpoint: its panic mode (more
    /// endpoints unavailable than the ejection cap) keeps such endpoints in
    /// play. Their stacks refuse requests (a breaker open in readiness mode),
    /// so sending there would cost the request `ready_timeout` and end in
    /// `EndpointNotReady` while other endpoints could serve it. Looks for an
    /// available endpoint instead, one the request has not tried if possible.
    /// `None` when every endpoint is unavailable: the caller then waits, if
    /// waiting can help (see [`Shared::may_become_ready`]).
    #[cold]
    #[inline(never)]
    fn pick_available<'t>(
        &self,
        picker: &mut impl Pick,
        table: &'t Table<L::Service>,
        tried: Option<&TriedEndpoints>,
        first: u64,
    ) -> Option<(LoadGuard, &'t EndpointStack<L::Service>)> {
        let avoid = TriedEndpoints::new();
        avoid.record_id(first);
        let mut already_tried = None;
        for _ in 0..table.stacks.len() {
            let guard = picker.pick(Some(&avoid))?;
            let id = guard.key_id();
            if avoid.contains_id(id) {
                // Every candidate has been looked at.
                break;
            }
            avoid.record_id(id);
            let Some(stack) = table.by_id(id) else {
                continue;
            };
            if !stack.availability.is_available() {
                continue;
            }
            if tried.is_some_and(|t| t.contains_id(id)) {
                already_tried.get_or_insert((guard, stack));
                continue;
            }
            return Some((guard, stack));
        }
        already_tried
    }

    /// Whether an endpoint may become ready before `deadline`: the set is
    /// empty (the source may publish one), or some endpoint is available, or
    /// one's published unavailability ends by then (an open breaker's open
    /// period) or may end any time (a half-open breaker waiting for its
    /// probes). When every known endpoint stays unavailable past the
    /// deadline, waiting cannot help and the request fails at once, with no
    /// network hop.
    fn may_become_ready(&self, deadline: Instant) -> bool {
        let table = self.table.load();
        table.stacks.is_empty()
            || table
                .stacks
                .iter()
                .any(|s| s.availability.may_be_available_by(deadline))
    }

    pub(crate) fn no_ready_endpoint(&self, waited: Duration) -> NoReadyEndpoint {
        // Counted from the signals themselves: the balancer's ejected count
        // stops at the ejection cap (panic mode).
        let table = self.table.load();
        let unavailable = table
            .stacks
            .iter()
            .filter(|s| !s.availability.is_available())
            .count();
        NoReadyEndpoint {
            service: Arc::clone(&self.name),
            known: self.balancer.stats().endpoints,
            unavailable,
            waited,
        }
    }
}

/// Where a pick comes from: a handle's cached [`Picker`], or the balancer
/// itself for a handle without one.
pub(crate) trait Pick {
    fn pick(&mut self, avoid: Option<&TriedEndpoints>) -> Option<LoadGuard>;
}

impl Pick for Picker {
    #[inline]
    fn pick(&mut self, avoid: Option<&TriedEndpoints>) -> Option<LoadGuard> {
        Picker::pick(self, avoid)
    }
}

impl Pick for &Balancer {
    #[inline]
    fn pick(&mut self, avoid: Option<&TriedEndpoints>) -> Option<LoadGuard> {
        Balancer::pick(self, avoid)
    }
}

/// Whether a new version of an endpoint can keep the old stack: everything
/// the stack may depend on is unchanged (a weight change is the balancer's
/// business only).
fn same_route(a: &Endpoint, b: &Endpoint) -> bool {
    a.ptr_eq(b)
        || (a.key() == b.key()
            && a.address() == b.address()
            && a.tags() == b.tags()
            && a.metadata() == b.metadata())
}

impl<S, L, C, R> Service<R> for DiscoveryService<S, L, C>
where
    S: Clone + Send + Sync + 'static,
    L: Layer<Rewrite<S>> + Send + Sync + 'static,
    L::Service: Service<R> + Clone + Send + Sync + 'static,
    <L::Service as Service<R>>::Error: Into<BoxError>,
    <L::Service as Service<R>>::Future: Send + 'static,
    <L::Service as Service<R>>::Response: Send + 'static,
    C: Classify<<L::Service as Service<R>>::Response, <L::Service as Service<R>>::Error>
        + Clone
        + Send
        + Sync
        + 'static,
    R: RewriteTarget + Send + 'static,
{
    type Response = <L::Service as Service<R>>::Response;
    type Error = BoxError;
    type Future = ResponseFuture<L::Service, R, C>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        let shared = &*self.shared;
        let tried = request.tried_endpoints();
        let picked = match Self::local(&mut self.local, &mut self.called, shared) {
            Some(local) => {
                local.refresh(shared);
                let table = local.table.load();
                shared.pick(&mut local.picker, table, tried)
            }
            None => {
                shared.refresh_shared();
                shared.pick(&mut &shared.balancer, &shared.table.load(), tried)
            }
        };
        match picked {
            Some((guard, service)) => ResponseFuture::dispatch(Dispatch::start(
                service,
                request,
                guard,
                self.shared.classifier.clone(),
                self.shared.ready_timeout,
            )),
            None => ResponseFuture::waiting(Box::pin(wait_then_dispatch(
                Arc::clone(&self.shared),
                request,
            ))),
        }
    }
}

/// The slow path: no endpoint could be chosen. Waits for the source to
/// publish one or for a breaker to re-admit one, at most `ready_timeout`.
async fn wait_then_dispatch<S, L, C, R>(
    shared: Arc<Shared<S, L, C>>,
    request: R,
) -> Result<<L::Service as Service<R>>::Response, BoxError>
where
    S: Clone,
    L: Layer<Rewrite<S>>,
    L::Service: Service<R> + Clone,
    <L::Service as Service<R>>::Error: Into<BoxError>,
    C: Classify<<L::Service as Service<R>>::Response, <L::Service as Service<R>>::Error> + Clone,
    R: RewriteTarget,
{
    let start = Instant::now();
    let deadline = start + shared.ready_timeout;
    let mut updates = shared.receiver();
    let mut picker = shared.balancer.picker();
    loop {
        // `changed()` below marks the value seen, so look at the latest set
        // itself (applying it again is a cheap no-op).
        let set = updates.borrow_and_update().clone();
        shared.apply(&set);
        let picked = shared.pick(&mut picker, &shared.table.load(), request.tried_endpoints());
        if let Some((guard, service)) = picked {
            let remaining = deadline.saturating_duration_since(Instant::now());
            return Dispatch::start(
                service,
                request,
                guard,
                shared.classifier.clone(),
                remaining.max(Duration::from_millis(1)),
            )
            .await;
        }
        let now = Instant::now();
        if now >= deadline {
            let error = shared.no_ready_endpoint(now - start);
            tracing::warn!(service = %shared.name, %error, "router: no ready endpoint");
            return Err(error.into());
        }
        if !shared.may_become_ready(deadline) {
            // Every endpoint is ejected for longer than the wait (say, all
            // breakers open): fail fast instead of holding the caller.
            let error = shared.no_ready_endpoint(now - start);
            tracing::debug!(service = %shared.name, %error, "router: every endpoint unavailable past the wait; failing fast");
            return Err(error.into());
        }
        let tick = deadline.min(now + WAIT_POLL_INTERVAL);
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    // The source is gone: keep the last set, look again later.
                    tokio::time::sleep_until(tick).await;
                }
            }
            () = tokio::time::sleep_until(tick) => {}
        }
    }
}
