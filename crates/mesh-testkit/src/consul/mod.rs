//! A fake Consul agent: the HTTP API subset service discovery uses, faithfully,
//! with fault injection.
//!
//! [`FakeConsul`] is a real HTTP server on 127.0.0.1 (random port) that speaks
//! enough of Consul's API for a program to register itself and discover
//! others, so you can test *your* Consul-aware service without a Consul
//! cluster, and make Consul misbehave on demand:
//!
//! | Endpoint | Behaviour |
//! |---|---|
//! | `PUT /v1/agent/service/register` | `Name`, `ID`, `Tags`, `Address`, `Port`, `Meta`, `Weights`, `Check`/`Checks` (`CheckID` defaults to `service:<id>`, or `service:<id>:<n>` in `Checks`) |
//! | `PUT /v1/agent/service/deregister/:id` | removes the instance and its checks (idempotent) |
//! | `PUT /v1/agent/check/pass\|warn\|fail/:check_id?note=` | TTL reports; 404 for an unknown check |
//! | `PUT /v1/agent/check/update/:check_id` | `{"Status", "Output"}` |
//! | `GET /v1/health/service/:name` | `passing`, `tag` (repeatable, all must match), `index` + `wait` blocking; `dc` other than `dc1` answers 500 "No path to datacenter" |
//!
//! What it models:
//!
//! - **One global index**, raised by every write that changes something
//!   (registration, deregistration, a check *status* change, a TTL expiry).
//!   Every answer carries it in `X-Consul-Index`. Like Consul, a wake-up does
//!   not promise a change for the service asked about.
//! - **Real blocking**: `?index=N&wait=D` with N > 0 holds the request until the
//!   index passes N, or until D (at most 10 min) plus up to D/16 of jitter has
//!   passed. `index=0` does not block.
//! - **TTL checks** start critical unless `Status` says otherwise, and turn
//!   critical when no report arrives within their TTL;
//!   `DeregisterCriticalServiceAfter` removes an instance whose check stayed
//!   critical that long. The fake does not probe HTTP/TCP/gRPC targets: those
//!   checks report passing unless the registration's `Status` or a test says
//!   otherwise ([`FakeConsul::set_health`]).
//! - **ACLs**, optionally ([`FakeConsul::require_token`]): agent writes without
//!   the token get 403, health reads get an empty list (Consul filters).
//! - Every instance also carries the node's `serfHealth` check, passing.
//!
//! Not modelled: `filter`, `near`, namespaces and partitions (accepted and
//! ignored), the catalog and KV APIs, other datacenters.
//!
//! # Fault injection
//!
//! [`FakeConsul::set_fault`] makes every following request misbehave (see
//! [`Fault`]) until [`FakeConsul::clear_fault`]; [`FakeConsul::reset_index`]
//! moves the index backwards, as a snapshot restore does.
//!
//! # Example
//!
//! ```
//! use mesh_testkit::consul::{FakeConsul, Fault, Health, Instance};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let consul = FakeConsul::start().await?;
//! // Point your program at it: CONSUL_HTTP_ADDR=consul.url()
//! consul.add_instance(Instance::new("users", "users-1", "10.0.0.1", 8080));
//! consul.add_instance(Instance::new("users", "users-2", "10.0.0.2", 8080).tags(["canary"]));
//! consul.set_health("users-2", Health::Critical);
//! assert_eq!(consul.healthy_ids("users"), ["users-1"]);
//!
//! consul.set_fault(Fault::NoLeader); // every request now gets 500 "No cluster leader"
//! consul.clear_fault();
//! # Ok(())
//! # }
//! ```

mod server;
mod state;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use state::{AGENT_NODE, AGENT_NODE_ADDRESS, CheckState, InstanceState, State};

/// A check's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// `passing`.
    Passing,
    /// `warning`: excluded by `?passing`.
    Warning,
    /// `critical`: excluded by `?passing`.
    Critical,
}

impl Health {
    /// Consul's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "passing" => Some(Health::Passing),
            "warning" => Some(Health::Warning),
            "critical" => Some(Health::Critical),
            _ => None,
        }
    }
}

/// A misbehaviour the fake applies until cleared. `NoLeader`, `Hang` and
/// `DropConnection` hit every request (a query held when the fault is set
/// gets it too); the others change health answers only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fault {
    /// Behave.
    #[default]
    None,
    /// 500 with the body `No cluster leader`.
    NoLeader,
    /// Accept the request and never answer (until the fault is cleared, when
    /// the connection is closed).
    Hang,
    /// Close the connection without an answer.
    DropConnection,
    /// 200 with a correct `X-Consul-Index` and a body that is not JSON.
    GarbageBody,
    /// A correct answer without the `X-Consul-Index` header.
    MissingIndex,
    /// A correct answer with `X-Consul-Index: 0`.
    IndexZero,
    /// Blocking queries return at once with an unchanged index and body, as
    /// after a write that changed nothing (a client that does not rate-limit
    /// spins).
    SpuriousWakeups,
}

/// A service instance, as added directly by a test with
/// [`FakeConsul::add_instance`] (or registered over HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The service name.
    pub service: String,
    /// The instance ID (unique per node).
    pub id: String,
    /// The service address; empty means the node's.
    pub address: String,
    /// The port.
    pub port: u16,
    /// The node (default `fake-node`, the agent's own).
    pub node: String,
    /// The node's address (default 127.0.0.1).
    pub node_address: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub meta: BTreeMap<String, String>,
    /// `Weights.Passing` and `Weights.Warning` (default 1 and 1).
    pub weights: (u32, u32),
    /// The status of the instance's check (default passing).
    pub health: Health,
}

impl Instance {
    /// An instance of `service` with ID `id` at `address:port`, on the agent's
    /// node, passing.
    pub fn new(service: &str, id: &str, address: &str, port: u16) -> Self {
        Self {
            service: service.to_owned(),
            id: id.to_owned(),
            address: address.to_owned(),
            port,
            node: AGENT_NODE.to_owned(),
            node_address: AGENT_NODE_ADDRESS.to_owned(),
            tags: Vec::new(),
            meta: BTreeMap::new(),
            weights: (1, 1),
            health: Health::Passing,
        }
    }

    /// On another node.
    #[must_use]
    pub fn node(mut self, node: &str, node_address: &str) -> Self {
        node.clone_into(&mut self.node);
        node_address.clone_into(&mut self.node_address);
        self
    }

    /// With these tags.
    #[must_use]
    pub fn tags<I: IntoIterator<Item = T>, T: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// With one more metadata entry.
    #[must_use]
    pub fn meta(mut self, key: &str, value: &str) -> Self {
        self.meta.insert(key.to_owned(), value.to_owned());
        self
    }

    /// With these weights.
    #[must_use]
    pub fn weights(mut self, passing: u32, warning: u32) -> Self {
        self.weights = (passing, warning);
        self
    }

    /// With this initial check status.
    #[must_use]
    pub fn health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }
}

/// A running fake Consul agent. Cloning shares it; it stops on
/// [`shutdown`](Self::shutdown) or when the runtime ends.
#[derive(Clone)]
pub struct FakeConsul {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    addr: SocketAddr,
    state: Mutex<State>,
    index_tx: watch::Sender<u64>,
    fault_tx: watch::Sender<Fault>,
    token: Mutex<Option<String>>,
    requests: AtomicU64,
    health_requests: AtomicU64,
    in_flight_health: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl fmt::Debug for FakeConsul {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeConsul")
            .field("addr", &self.shared.addr)
            .field("index", &self.index())
            .field("fault", &*self.shared.fault_tx.borrow())
            .finish()
    }
}

impl FakeConsul {
    /// Starts a fake agent on a random 127.0.0.1 port, on the current tokio
    /// runtime.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().expect("a valid address")).await
    }

    /// Starts a fake agent on `addr` (use port 0 for a random port).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = State {
            index: 1,
            ..State::default()
        };
        let shared = Arc::new(Shared {
            addr,
            state: Mutex::new(state),
            index_tx: watch::channel(1).0,
            fault_tx: watch::channel(Fault::None).0,
            token: Mutex::new(None),
            requests: AtomicU64::new(0),
            health_requests: AtomicU64::new(0),
            in_flight_health: AtomicU64::new(0),
            shutdown: watch::channel(false).0,
        });
        tokio::spawn(server::accept_loop(listener, shared.clone()));
        Ok(Self { shared })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:port`, a value for `CONSUL_HTTP_ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The current index.
    pub fn index(&self) -> u64 {
        self.shared.lock().index
    }

    /// Adds (or replaces) an instance with one check, `service:<id>`, in the
    /// instance's [`health`](Instance::health). Raises the index.
    pub fn add_instance(&self, instance: Instance) {
        self.add_instances([instance]);
    }

    /// Adds many instances with a single index raise (one write).
    pub fn add_instances(&self, instances: impl IntoIterator<Item = Instance>) {
        self.shared.write(|s| {
            for inst in instances {
                let check = CheckState {
                    id: format!("service:{}", inst.id),
                    name: format!("Service '{}' check", inst.service),
                    status: inst.health,
                    output: String::new(),
                    ttl: None,
                    deregister_after: None,
                    generation: 0,
                };
                s.instances.insert(
                    (inst.node.clone(), inst.id.clone()),
                    InstanceState {
                        spec: inst,
                        checks: vec![check],
                    },
                );
            }
            true
        });
    }

    /// Removes every instance with this ID (on any node). Returns how many.
    pub fn remove_instance(&self, id: &str) -> usize {
        let mut n = 0;
        self.shared.write(|s| {
            let before = s.instances.len();
            s.instances.retain(|(_, i), _| i != id);
            n = before - s.instances.len();
            n > 0
        });
        n
    }

    /// Sets every check of every instance with this ID to `health`. Returns
    /// false when there is no such instance.
    pub fn set_health(&self, id: &str, health: Health) -> bool {
        let mut found = false;
        self.shared.write(|s| {
            let mut changed = false;
            for inst in s.instances.values_mut().filter(|i| i.spec.id == id) {
                found = true;
                for c in &mut inst.checks {
                    changed |= c.status != health;
                    c.status = health;
                    c.generation += 1;
                }
            }
            changed
        });
        found
    }

    /// The status of a check on the agent's node.
    pub fn check_status(&self, check_id: &str) -> Option<Health> {
        let mut s = self.shared.lock();
        s.find_check_mut(check_id)
            .map(|(inst, i)| inst.checks[i].status)
    }

    /// IDs of every instance of `service`, healthy or not, sorted.
    pub fn instance_ids(&self, service: &str) -> Vec<String> {
        self.ids(service, false)
    }

    /// IDs of the instances of `service` whose checks all pass, sorted.
    pub fn healthy_ids(&self, service: &str) -> Vec<String> {
        self.ids(service, true)
    }

    fn ids(&self, service: &str, passing: bool) -> Vec<String> {
        let s = self.shared.lock();
        let mut ids: Vec<String> = s
            .instances
            .values()
            .filter(|i| i.spec.service == service)
            .filter(|i| !passing || i.checks.iter().all(|c| c.status == Health::Passing))
            .map(|i| i.spec.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The registered instance with this ID on the agent's node.
    pub fn instance(&self, id: &str) -> Option<Instance> {
        let s = self.shared.lock();
        s.instances
            .get(&(AGENT_NODE.to_owned(), id.to_owned()))
            .map(|i| i.spec.clone())
    }

    /// Moves the index back to `index` (at least 1), as a snapshot restore
    /// does. Blocked queries with a higher index keep waiting until their
    /// `wait` runs out and then see the lower index.
    pub fn reset_index(&self, index: u64) {
        let index = index.max(1);
        self.shared.lock().index = index;
        self.shared.index_tx.send_replace(index);
    }

    /// Makes every following request misbehave; see [`Fault`].
    pub fn set_fault(&self, fault: Fault) {
        tracing::debug!(?fault, "fake consul: fault set");
        self.shared.fault_tx.send_replace(fault);
    }

    /// Back to normal behaviour.
    pub fn clear_fault(&self) {
        self.set_fault(Fault::None);
    }

    /// Requires `X-Consul-Token` (or `Authorization: Bearer`) to equal `token`;
    /// `None` turns ACLs off.
    pub fn require_token(&self, token: Option<&str>) {
        *self
            .shared
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = token.map(str::to_owned);
    }

    /// Requests received so far, of any kind.
    pub fn request_count(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// `/v1/health/service/...` requests received so far.
    pub fn health_request_count(&self) -> u64 {
        self.shared.health_requests.load(Ordering::SeqCst)
    }

    /// Health requests being held right now (blocking or hanging).
    pub fn blocked_health_requests(&self) -> u64 {
        self.shared.in_flight_health.load(Ordering::SeqCst)
    }

    /// Zeroes the request counters.
    pub fn reset_counts(&self) {
        self.shared.requests.store(0, Ordering::SeqCst);
        self.shared.health_requests.store(0, Ordering::SeqCst);
    }

    /// Stops accepting and closes every connection; the port then refuses
    /// connections.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs a write; raises the index and wakes blocked queries when `f` says
    /// something changed.
    fn write(&self, f: impl FnOnce(&mut State) -> bool) {
        let new = {
            let mut s = self.lock();
            if !f(&mut s) {
                return;
            }
            s.bump()
        };
        self.index_tx.send_replace(new);
    }

    /// Starts (or restarts) the TTL timer of a check.
    fn arm_ttl(self: &Arc<Self>, check_id: String, ttl: Duration, generation: u64) {
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let mut deregister_after = None;
            shared.write(|s| {
                let Some((inst, i)) = s.find_check_mut(&check_id) else {
                    return false;
                };
                let c = &mut inst.checks[i];
                if c.generation != generation || c.status == Health::Critical {
                    return false;
                }
                tracing::debug!(check = %check_id, "fake consul: TTL expired");
                c.status = Health::Critical;
                c.output = "TTL expired".to_owned();
                deregister_after = c.deregister_after;
                true
            });
            if let Some(after) = deregister_after {
                shared.arm_reaper(check_id, after, generation);
            }
        });
    }

    /// Removes the instance if the check is still critical after `after`.
    fn arm_reaper(self: &Arc<Self>, check_id: String, after: Duration, generation: u64) {
        let shared = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            shared.write(|s| {
                let Some((inst, i)) = s.find_check_mut(&check_id) else {
                    return false;
                };
                let c = &inst.checks[i];
                if c.generation != generation || c.status != Health::Critical {
                    return false;
                }
                let key = (inst.spec.node.clone(), inst.spec.id.clone());
                tracing::debug!(check = %check_id, "fake consul: deregistering a critical service");
                s.instances.remove(&key);
                true
            });
        });
    }
}

#[cfg(test)]
mod tests;
