//! The router service: one logical service in, one endpoint's stack out.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_balance::{Balancer, LoadGuard};
use mesh_core::classify::Classify;
use mesh_core::endpoint::IdHasher;
use mesh_core::eos::{AtResponse, TrackOutcome};
use mesh_core::target::{NewEndpoint, Target};
use mesh_core::{Availability, BoxError, Endpoint, ReportEndpoint, TriedEndpoints};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, DropGuard};
use tower_service::Service;

use super::error::NoReadyEndpoint;
use super::future::{Dispatch, ResponseFuture};
use super::rewrite::{EndpointTarget, HostHeader, Rewrite, RewriteTarget};
use crate::EndpointSet;

/// Routes each request to a live endpoint of one logical service.
///
/// Built by [`DiscoveryLayer`](super::DiscoveryLayer). Cloning is cheap (one
/// atomic increment): clones share the endpoint table, the balancer and every
/// endpoint's stack.
///
/// `poll_ready` applies the source's newest endpoint set and is ready when a
/// call can be routed now: the set has an endpoint with a weight above zero
/// (the balancer never ejects the last one, see the [module docs](super)).
/// With none, it waits, woken by the source's next update, at most the
/// router's `ready_timeout`, and then fails with [`NoReadyEndpoint`].
pub struct DiscoveryService<S, N, C, M = AtResponse>
where
    N: NewEndpoint<Rewrite<S>>,
{
    shared: Arc<Shared<S, N, C, M>>,
    /// While `poll_ready` waits for an endpoint to appear.
    wait: Option<Pin<Box<Wait>>>,
}

/// See [`Shared::next_update`].
type NextUpdate = Pin<Box<dyn Future<Output = bool> + Send + Sync>>;

/// What a `poll_ready` with no routable endpoint waits on: the source's next
/// update, within the bounded wait.
struct Wait {
    /// `None` once the source is gone (only the bound is left).
    changed: Option<NextUpdate>,
    sleep: Pin<Box<Sleep>>,
    since: Instant,
}

impl<S, N, C, M> Clone for DiscoveryService<S, N, C, M>
where
    N: NewEndpoint<Rewrite<S>>,
{
    /// One atomic increment.
    #[inline]
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            wait: None,
        }
    }
}

impl<S, N, C, M> fmt::Debug for DiscoveryService<S, N, C, M>
where
    N: NewEndpoint<Rewrite<S>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoveryService")
            .field("service", &self.shared.name)
            .field("endpoints", &self.shared.table.load().stacks.len())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared<S, N, C, M>
where
    N: NewEndpoint<Rewrite<S>>,
{
    pub(crate) name: Arc<str>,
    inner: S,
    new_endpoint: N,
    pub(crate) classifier: C,
    pub(crate) mode: M,
    pub(crate) balancer: Balancer,
    table: ArcSwap<Table<N::Service>>,
    /// Whether the applied set has an endpoint a pick may choose.
    routable: AtomicBool,
    /// The source's sets.
    updates: Mutex<watch::Receiver<EndpointSet>>,
    /// The version of the last endpoint set applied; serialises rebuilds.
    applied: Mutex<Option<u64>>,
    pub(crate) ready_timeout: Duration,
    host: HostHeader,
    /// Whether a background updater runs (see
    /// [`DiscoveryService::apply_updates_in_background`]).
    updater: AtomicBool,
    /// Cancelled when the last clone goes: stops the background updater,
    /// which would otherwise keep the source's receiver (and the source)
    /// alive until its next update.
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
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
    /// The endpoint's health signal, as given to its stack in its target.
    availability: Availability,
    service: T,
}

// ===== impl DiscoveryService =====

impl<S, N, C, M> DiscoveryService<S, N, C, M>
where
    N: NewEndpoint<Rewrite<S>>,
    N::Service: Clone,
    S: Clone,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: Arc<str>,
        inner: S,
        new_endpoint: N,
        classifier: C,
        mode: M,
        balancer: Balancer,
        mut updates: watch::Receiver<EndpointSet>,
        ready_timeout: Duration,
        host: HostHeader,
    ) -> Self {
        let initial = updates.borrow_and_update().clone();
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            name,
            inner,
            new_endpoint,
            classifier,
            mode,
            balancer,
            table: ArcSwap::from_pointee(Table::empty()),
            routable: AtomicBool::new(false),
            updates: Mutex::new(updates),
            applied: Mutex::new(None),
            ready_timeout,
            host,
            updater: AtomicBool::new(false),
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        });
        shared.apply(&initial);
        Self { shared, wait: None }
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

    /// Whether `self` and `other` are clones of one router (one balancer,
    /// one set of endpoint stacks).
    pub fn shares_state_with(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Whether a background task applies the source's updates (see
    /// [`apply_updates_in_background`](Self::apply_updates_in_background)).
    pub fn applies_updates_in_background(&self) -> bool {
        self.shared.updater.load(Ordering::Relaxed)
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
}

impl<S, N, C, M> DiscoveryService<S, N, C, M>
where
    N: NewEndpoint<Rewrite<S>> + Send + Sync + 'static,
    N::Service: Clone + Send + Sync + 'static,
    S: Clone + Send + Sync + 'static,
    C: Send + Sync + 'static,
    M: Send + Sync + 'static,
{
    /// Applies the source's updates as they are published, on a task of the
    /// current tokio runtime, instead of on the next `poll_ready` only: an
    /// idle client never holds a stale set, and the first request after a
    /// change does not pay for building the new stacks. `poll_ready` still
    /// looks (one `try_lock` and a version compare), so nothing changes for
    /// a caller, and whoever looks first applies.
    ///
    /// One task per router (its clones share it), started once; it ends
    /// when the last clone is dropped or the source is gone. Returns
    /// `false` (and `poll_ready` alone applies updates) outside a tokio
    /// runtime.
    pub fn apply_updates_in_background(&self) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if self.shared.updater.swap(true, Ordering::AcqRel) {
            return true;
        }
        let shared = Arc::downgrade(&self.shared);
        let stop = self.shared.stop.clone();
        let mut updates = self.shared.receiver();
        runtime.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    changed = updates.changed() => if changed.is_err() { break },
                }
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                shared.refresh_now();
            }
        });
        true
    }
}

impl<S, N, C, M> Shared<S, N, C, M>
where
    N: NewEndpoint<Rewrite<S>>,
    N::Service: Clone,
    S: Clone,
{
    /// A receiver of the source's sets, as current as the shared one.
    fn receiver(&self) -> watch::Receiver<EndpointSet> {
        self.updates
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Resolves when the source publishes its next set (`true`), or when the
    /// source is gone (`false`).
    fn next_update(&self) -> NextUpdate {
        let mut updates = self.receiver();
        Box::pin(async move { updates.changed().await.is_ok() })
    }

    /// Applies the source's newest set if it changed since the last look.
    /// If another caller holds the receiver, it is looking already: this one
    /// goes on with the applied set, as it would have a moment earlier.
    #[inline]
    fn refresh(&self) {
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

    /// Applies the source's newest set, waiting for whoever is looking.
    fn refresh_now(&self) {
        let mut updates = self.updates.lock().unwrap_or_else(PoisonError::into_inner);
        if updates.has_changed().unwrap_or(false) {
            let set = updates.borrow_and_update().clone();
            drop(updates);
            self.apply(&set);
        }
    }

    /// Makes `set` the routed set: the balancer learns it, endpoints that stay
    /// keep their stack, new or changed ones get a new stack built from their
    /// [`Target`] (so their breaker feeds the health signal the balancer
    /// reads), removed ones are dropped. Serialised; a set older than the
    /// applied one is ignored.
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
        let mut built: HashMap<u64, EndpointStack<N::Service>, BuildHasherDefault<IdHasher>> =
            HashMap::with_capacity_and_hasher(targets.len(), Default::default());
        for rewrite_target in targets {
            let ep = rewrite_target.endpoint();
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
                    let target =
                        Target::new(Arc::clone(&self.name), ep.clone(), availability.clone());
                    let rewrite =
                        Rewrite::new(Arc::clone(&rewrite_target), self.host, self.inner.clone());
                    let service = self.new_endpoint.new_endpoint(&target, rewrite);
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
        let routable = stacks.iter().any(|s| s.endpoint.weight() > 0);
        self.table.store(Arc::new(Table { stacks, index }));
        self.routable.store(routable, Ordering::Release);
        *applied = Some(set.version());
    }

    /// Chooses an endpoint for one attempt and returns its load guard and a
    /// clone of its stack. The balancer alone decides: it skips ejected
    /// endpoints within its ejection cap and, past the cap (panic mode),
    /// sends to them too, so this never second-guesses a pick.
    #[inline]
    fn pick(&self, tried: Option<&TriedEndpoints>) -> Option<(LoadGuard, N::Service)> {
        let guard = self.balancer.pick(tried)?;
        let table = self.table.load();
        match table.get(guard.slot(), guard.key_id()) {
            Some(stack) => {
                let service = stack.service.clone();
                Some(self.record(tried, guard, service))
            }
            None => {
                drop(table);
                self.pick_during_update(tried)
            }
        }
    }

    /// The balancer chose an endpoint whose stack is not in the table yet:
    /// an update is being applied (the balancer learns the set before the
    /// stacks are built). Waits for it to finish (it is synchronous and
    /// short: building stacks) and picks again.
    #[cold]
    #[inline(never)]
    fn pick_during_update(
        &self,
        tried: Option<&TriedEndpoints>,
    ) -> Option<(LoadGuard, N::Service)> {
        for _ in 0..3 {
            drop(self.applied.lock().unwrap_or_else(PoisonError::into_inner));
            let guard = self.balancer.pick(tried)?;
            let table = self.table.load();
            if let Some(stack) = table.get(guard.slot(), guard.key_id()) {
                let service = stack.service.clone();
                return Some(self.record(tried, guard, service));
            }
        }
        None
    }

    #[inline]
    fn record(
        &self,
        tried: Option<&TriedEndpoints>,
        guard: LoadGuard,
        service: N::Service,
    ) -> (LoadGuard, N::Service) {
        if let Some(tried) = tried {
            tried.record_id(guard.key_id());
        }
        (guard, service)
    }

    pub(crate) fn no_ready_endpoint(&self, waited: Duration) -> NoReadyEndpoint {
        let table = self.table.load();
        let unavailable = table
            .stacks
            .iter()
            .filter(|s| !s.availability.is_available())
            .count();
        NoReadyEndpoint {
            service: Arc::clone(&self.name),
            known: table.stacks.len(),
            unavailable,
            waited,
        }
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

impl<S, N, C, M, R> Service<R> for DiscoveryService<S, N, C, M>
where
    S: Clone + Send + Sync + 'static,
    N: NewEndpoint<Rewrite<S>> + Send + Sync + 'static,
    N::Service: Service<R> + Clone + Send + Sync + 'static,
    <N::Service as Service<R>>::Error: Into<BoxError>,
    <N::Service as Service<R>>::Future: Send + 'static,
    <N::Service as Service<R>>::Response: ReportEndpoint + Send + 'static,
    C: Classify<<N::Service as Service<R>>::Response, <N::Service as Service<R>>::Error>
        + Clone
        + Send
        + Sync
        + 'static,
    M: TrackOutcome<<N::Service as Service<R>>::Response, C> + Clone + Send + Sync + 'static,
    R: RewriteTarget + Send + 'static,
{
    type Response = M::Output<LoadGuard>;
    type Error = BoxError;
    type Future = ResponseFuture<N::Service, R, C, M>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            let shared = &*self.shared;
            shared.refresh();
            if shared.routable.load(Ordering::Acquire) {
                self.wait = None;
                return Poll::Ready(Ok(()));
            }
            let wait = self.wait.get_or_insert_with(|| {
                Box::pin(Wait {
                    changed: Some(shared.next_update()),
                    sleep: Box::pin(tokio::time::sleep(shared.ready_timeout)),
                    since: Instant::now(),
                })
            });
            if let Some(changed) = wait.changed.as_mut()
                && let Poll::Ready(open) = changed.as_mut().poll(cx)
            {
                if open {
                    // A new set: look again (and wait on the next one).
                    wait.changed = Some(shared.next_update());
                    continue;
                }
                tracing::warn!(service = %shared.name, "router: the discovery source is gone; keeping the last set");
                wait.changed = None;
            }
            if wait.sleep.as_mut().poll(cx).is_ready() {
                let waited = wait.since.elapsed();
                self.wait = None;
                let error = shared.no_ready_endpoint(waited);
                tracing::warn!(service = %shared.name, %error, "router: no ready endpoint");
                return Poll::Ready(Err(error.into()));
            }
            return Poll::Pending;
        }
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        let shared = &*self.shared;
        let tried = request.tried_endpoints();
        let report = tried.is_none();
        match shared.pick(tried) {
            Some((guard, service)) => ResponseFuture::dispatch(Dispatch::new(
                service,
                request,
                guard,
                shared.classifier.clone(),
                shared.mode.clone(),
                shared.ready_timeout,
                report,
            )),
            // `poll_ready` said yes, and the set emptied since.
            None => ResponseFuture::failed(shared.no_ready_endpoint(Duration::ZERO).into()),
        }
    }
}
