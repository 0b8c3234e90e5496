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
//! | `PUT /v1/agent/service/register` | `Name`, `ID`, `Kind`, `Tags`, `Address`, `TaggedAddresses`, `Port`, `Meta`, `Weights` (`Passing` ≥ 1, else 400), `EnableTagOverride`, `Proxy`, `Check`/`Checks` (`CheckID` defaults to `service:<id>`, or `service:<id>:<n>` in `Checks`; `Interval` required for HTTP/TCP/gRPC) |
//! | `PUT /v1/agent/service/deregister/:id` | removes the instance and its checks; 404 for an unknown id |
//! | `PUT /v1/agent/service/maintenance/:id?enable=&reason=` | adds/removes the critical `_service_maintenance:<id>` check; 404 for an unknown id |
//! | `PUT /v1/agent/maintenance?enable=&reason=` | adds/removes the node's critical `_node_maintenance` check |
//! | `PUT /v1/agent/check/pass\|warn\|fail/:check_id?note=` | TTL reports; 404 for an unknown check |
//! | `PUT /v1/agent/check/update/:check_id` | `{"Status", "Output"}` |
//! | `GET /v1/agent/health/service/id/:id` | 200 / 429 / 503 for passing / warning / critical, 404 unknown |
//! | `GET /v1/health/service/:name` | `passing`, `tag` (repeatable, all must match), `filter` (the subset of Consul's filter language discovery uses: `==`, `!=`, `contains`, `in`, `is empty`, `and`, `or`, `not`), `stale`, `consistent`, `index` + `wait` blocking; `dc` other than `dc1` answers 500 "No path to datacenter" |
//! | `GET /v1/health/connect/:name` | as above, for Connect-native instances of `name` (`Connect.Native`) and `connect-proxy` instances whose `Proxy.DestinationServiceName` is `name`; follows the global index |
//! | `GET /v1/health/state/:state` | `any`, `passing`, `warning`, `critical` (else 400): every check in that state, node checks included, ordered by node and check ID; `filter` on the check's fields (`Status != "passing"`), `stale`, `dc`; `X-Consul-Index` is the checks table's (the global) index; `index` + `wait` returns at once when that index is past `index`, else holds until a check in or leaving the state changes (any check for `any`) |
//! | `GET /v1/agent/connect/ca/roots` | `ActiveRootID`, `TrustDomain` (`<cluster-id>.consul`), `Roots[]` (`ID`, `Name`, `RootCert`, `IntermediateCerts`, `Active`, ...); blocking |
//! | `GET /v1/agent/connect/ca/leaf/:service` | a leaf issued on first use (ECDSA P-256, URI SAN `spiffe://<trust-domain>/ns/default/dc/dc1/svc/<service>`, `CertPEM`, `PrivateKeyPEM`, `ValidAfter`, `ValidBefore`), renewed at 80 % of its TTL; blocking, a held query returns the renewed leaf |
//! | `GET /v1/connect/intentions/match?by=destination\|source&name=` | `{name: [intentions]}`, highest `Precedence` first (9 exact, 8 `*` source, 6 `*` destination, 5 both); blocking |
//! | `GET\|PUT\|DELETE /v1/connect/intentions/exact?source=&destination=` | one intention: `{"Action": "allow"\|"deny"}` or `{"Permissions": [...]}` (L7) |
//!
//! What it models:
//!
//! - **Indexes**: one global index, raised by every write that changes
//!   something, and one per service, set to the global index by each write
//!   that changes that service (its instances, their checks, their node's
//!   checks). A health read carries its service's index in `X-Consul-Index`
//!   and a blocking query waits on it, so writes to other services do not
//!   wake it. Like Consul, a wake-up does not promise a change in the body.
//! - **Real blocking**: `?index=N&wait=D` with N > 0 holds the request until
//!   the service's index passes N, or until D (at most 10 min) plus up to
//!   D/16 of jitter has passed. `index=0` does not block.
//! - **Checks start critical** unless the registration's `Status` says
//!   otherwise: TTL checks until their first report, HTTP/TCP/gRPC checks
//!   until their first run. The fake runs them for real, the first run after
//!   a random stagger within `Interval`, then every `Interval`: HTTP checks
//!   send `Method` (default `GET`) with `Header` to an `http://` URL (2xx
//!   passes, 429 warns, anything else fails); TCP checks connect; gRPC checks
//!   connect to `host:port` (the gRPC health protocol itself is not spoken).
//!   `SuccessBeforePassing` and `FailuresBeforeCritical` apply. TTL checks
//!   turn critical when no report arrives within their TTL.
//! - **The reaper**: every 30 s, as Consul's agent, instances whose check has
//!   been critical for its `DeregisterCriticalServiceAfter` (raised to one
//!   minute) are deregistered.
//! - **Nodes**: every entry lists its node's `serfHealth` check (and
//!   `_node_maintenance` in maintenance) before the service's own checks;
//!   [`FakeConsul::set_node_health`] makes a node dead.
//! - **Consul 1.16 answer shapes**: `Kind`, `Proxy`, `Connect`, `PeerName`,
//!   `TaggedAddresses` (with the `lan_ipv4`/`wan_ipv4` pair the agent adds),
//!   raft indexes, check `Type`/`Interval`/`Definition`.
//! - **ACLs**, optionally ([`FakeConsul::require_token`]): an unknown token
//!   gets 403 "ACL not found"; anonymous writes get 403; anonymous health
//!   reads get an empty list with `X-Consul-Results-Filtered-By-ACLs: true`.
//! - **Leadership** ([`FakeConsul::set_leader`]): `X-Consul-KnownLeader` and
//!   `X-Consul-LastContact` on stale reads; without a leader,
//!   default-consistency reads get 500 "No cluster leader".
//!
//! - **Connect** ([`FakeConsul::rotate_connect_ca`] and friends): a CA made
//!   with rcgen; a rotation adds a new active root cross-signed by the old
//!   one (leaves it signs carry the cross-signed certificate as an
//!   intermediate) and re-issues every leaf; the old root stays listed
//!   until [`FakeConsul::prune_connect_roots`].
//!
//! Not modelled: `near`, namespaces and partitions (accepted and ignored),
//! the catalog and KV APIs, other datacenters, HTTPS check targets.
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

mod checks;
mod connect;
mod connect_http;
mod filter;
mod json;
mod server;
mod state;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use state::{
    AGENT_NODE, AGENT_NODE_ADDRESS, CheckKind, CheckState, InstanceState, MIN_DEREGISTER_AFTER,
    NODE_MAINTENANCE, NodeState, SERF_HEALTH, State, service_maintenance_id,
};

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
    /// `DeregisterCriticalServiceAfter` of the instance's check (raised to
    /// one minute, as Consul does); `None` (default): never reaped.
    pub deregister_critical_after: Option<Duration>,
    /// `TaggedAddresses` given at registration: name to (address, port).
    /// The fake adds `lan_ipv4`/`wan_ipv4` (or `_ipv6`) for an IP
    /// `address`, as Consul's agent does.
    pub tagged_addresses: BTreeMap<String, (String, u16)>,
    /// `Kind`: empty for a typical service, `connect-proxy` for a sidecar.
    pub kind: String,
    /// `Proxy`, as registered (for `connect-proxy` instances).
    pub proxy: Option<serde_json::Value>,
    /// `EnableTagOverride`.
    pub enable_tag_override: bool,
    /// `Connect.Native`: the instance speaks Connect's mTLS itself, and
    /// `/v1/health/connect/:service` lists it.
    pub connect_native: bool,
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
            deregister_critical_after: None,
            tagged_addresses: BTreeMap::new(),
            kind: String::new(),
            proxy: None,
            enable_tag_override: false,
            connect_native: false,
        }
    }

    /// A Connect-native instance (`Connect.Native`), listed by
    /// `/v1/health/connect/:service`.
    #[must_use]
    pub fn connect_native(mut self) -> Self {
        self.connect_native = true;
        self
    }

    /// Reaped after its check stayed critical this long (at least one minute).
    #[must_use]
    pub fn deregister_critical_after(mut self, after: Duration) -> Self {
        self.deregister_critical_after = Some(after);
        self
    }

    /// With one more tagged address (`lan`, `wan`, `lan_ipv6`, ...).
    #[must_use]
    pub fn tagged_address(mut self, name: &str, address: &str, port: u16) -> Self {
        self.tagged_addresses
            .insert(name.to_owned(), (address.to_owned(), port));
        self
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
    /// One channel per service, woken by writes to that service only (as
    /// Consul wakes the blocking queries of the service a write touched).
    service_tx: Mutex<HashMap<String, watch::Sender<u64>>>,
    fault_tx: watch::Sender<Fault>,
    token: Mutex<Option<String>>,
    leader: Mutex<Leader>,
    /// The query strings of the last health requests, oldest first.
    health_queries: Mutex<std::collections::VecDeque<String>>,
    requests: AtomicU64,
    health_requests: AtomicU64,
    in_flight_health: AtomicU64,
    /// Blocked health queries woken because their service's index moved.
    health_wakeups: AtomicU64,
    /// Requests to `/v1/health/state/:state`.
    state_requests: AtomicU64,
    connections_opened: AtomicU64,
    open_connections: AtomicU64,
    max_open_connections: AtomicU64,
    shutdown: watch::Sender<bool>,
    /// The Connect CA, leaves and intentions.
    connect: Mutex<connect::ConnectState>,
    /// The Connect index, for blocking Connect reads.
    connect_tx: watch::Sender<u64>,
}

/// What the servers know of their leader, for `X-Consul-KnownLeader` and
/// `X-Consul-LastContact`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Leader {
    pub(crate) known: bool,
    /// How far behind the leader a stale read is.
    pub(crate) last_contact: Duration,
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
        let shared = Self::shared(addr);
        tokio::spawn(server::accept_loop(listener, shared.clone()));
        shared.start_reaper();
        Ok(Self { shared })
    }

    /// Starts a fake agent on a Unix socket at `path` (for
    /// `CONSUL_HTTP_ADDR=unix://<path>`); [`addr`](Self::addr) is then
    /// `127.0.0.1:0`.
    #[cfg(unix)]
    pub async fn start_unix(path: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        let listener = tokio::net::UnixListener::bind(path)?;
        let shared = Self::shared(SocketAddr::from(([127, 0, 0, 1], 0)));
        tokio::spawn(server::accept_unix_loop(listener, shared.clone()));
        shared.start_reaper();
        Ok(Self { shared })
    }

    fn shared(addr: SocketAddr) -> Arc<Shared> {
        let mut state = State {
            index: 1,
            ..State::default()
        };
        state.ensure_node(AGENT_NODE, AGENT_NODE_ADDRESS);
        Arc::new(Shared {
            addr,
            state: Mutex::new(state),
            index_tx: watch::channel(1).0,
            service_tx: Mutex::new(HashMap::new()),
            fault_tx: watch::channel(Fault::None).0,
            token: Mutex::new(None),
            leader: Mutex::new(Leader {
                known: true,
                last_contact: Duration::ZERO,
            }),
            health_queries: Mutex::new(std::collections::VecDeque::new()),
            requests: AtomicU64::new(0),
            health_requests: AtomicU64::new(0),
            in_flight_health: AtomicU64::new(0),
            health_wakeups: AtomicU64::new(0),
            state_requests: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            max_open_connections: AtomicU64::new(0),
            shutdown: watch::channel(false).0,
            connect: Mutex::new(connect::ConnectState::new()),
            connect_tx: watch::channel(1).0,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:port`, a value for `CONSUL_HTTP_ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The current global index.
    pub fn index(&self) -> u64 {
        self.shared.lock().index
    }

    /// The index of the last write to `service` (what its health reads
    /// carry in `X-Consul-Index`), or the global one for a service never
    /// seen.
    pub fn service_index(&self, service: &str) -> u64 {
        self.shared.lock().index_of(service)
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
                let mut check = CheckState::new(
                    format!("service:{}", inst.id),
                    format!("Service '{}' check", inst.service),
                    CheckKind::Manual,
                    inst.health,
                );
                check.deregister_after = inst
                    .deregister_critical_after
                    .map(|d| d.max(MIN_DEREGISTER_AFTER));
                s.insert(InstanceState {
                    spec: inst,
                    checks: vec![check],
                });
            }
        });
    }

    /// Removes every instance with this ID (on any node). Returns how many.
    pub fn remove_instance(&self, id: &str) -> usize {
        let mut n = 0;
        self.shared.write(|s| {
            let keys: Vec<_> = s
                .instances
                .keys()
                .filter(|(_, i)| i == id)
                .cloned()
                .collect();
            for (node, id) in keys {
                n += usize::from(s.remove(&node, &id));
            }
        });
        n
    }

    /// Sets every check of every instance with this ID to `health`
    /// (maintenance checks aside). Returns false when there is no such
    /// instance.
    pub fn set_health(&self, id: &str, health: Health) -> bool {
        let mut found = false;
        self.shared.write(|s| {
            let mut touched = Vec::new();
            for inst in s.instances.values_mut().filter(|i| i.spec.id == id) {
                found = true;
                for c in inst
                    .checks
                    .iter_mut()
                    .filter(|c| c.kind != CheckKind::Maintenance)
                {
                    c.generation += 1;
                    if c.set(health, String::new()) {
                        touched.push(inst.spec.service.clone());
                    }
                }
            }
            for t in touched {
                s.touch(&t);
            }
        });
        found
    }

    /// Sets a node's `serfHealth` check: `Critical` is a dead node (its
    /// instances stay listed without `?passing`). Adds the node if unknown.
    pub fn set_node_health(&self, node: &str, health: Health) {
        self.shared.write(|s| {
            s.ensure_node(node, AGENT_NODE_ADDRESS);
            let n = s.nodes.get_mut(node).expect("ensured");
            let changed = n
                .checks
                .iter_mut()
                .find(|c| c.id == SERF_HEALTH)
                .is_some_and(|c| c.set(health, String::new()));
            if changed {
                s.touch_node(node);
            }
        });
    }

    /// Puts the service instance `id` on the agent's node in maintenance
    /// (`Some(reason)`) or takes it out (`None`), as
    /// `PUT /v1/agent/service/maintenance/:id` does. False for an unknown id.
    pub fn set_service_maintenance(&self, id: &str, reason: Option<&str>) -> bool {
        let mut found = false;
        self.shared.write(|s| {
            found = s.service_maintenance(id, reason);
        });
        found
    }

    /// Puts the agent's node in maintenance (`Some(reason)`) or takes it out
    /// (`None`), as `PUT /v1/agent/maintenance` does.
    pub fn set_node_maintenance(&self, reason: Option<&str>) {
        self.shared.write(|s| s.node_maintenance(reason));
    }

    /// What servers report about their leader from now on. With
    /// `known = false`, default-consistency reads fail with 500
    /// "No cluster leader"; `?stale` reads are still served, with
    /// `X-Consul-KnownLeader: false`. `last_contact` is the
    /// `X-Consul-LastContact` of stale reads.
    pub fn set_leader(&self, known: bool, last_contact: Duration) {
        *self
            .shared
            .leader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Leader {
            known,
            last_contact,
        };
    }

    /// The status of a check on the agent's node.
    pub fn check_status(&self, check_id: &str) -> Option<Health> {
        let mut s = self.shared.lock();
        s.find_check_mut(check_id).map(|(c, _)| c.status)
    }

    /// IDs of every instance of `service`, healthy or not, sorted.
    pub fn instance_ids(&self, service: &str) -> Vec<String> {
        self.ids(service, false)
    }

    /// IDs of the instances of `service` whose checks (node checks included)
    /// all pass, sorted.
    pub fn healthy_ids(&self, service: &str) -> Vec<String> {
        self.ids(service, true)
    }

    fn ids(&self, service: &str, passing: bool) -> Vec<String> {
        let s = self.shared.lock();
        let mut ids: Vec<String> = s
            .instances
            .values()
            .filter(|i| i.spec.service == service)
            .filter(|i| !passing || s.aggregate(i) == Health::Passing)
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

    // ===== Connect: CA, leaves, intentions =====

    /// The Connect trust domain, `<cluster-id>.consul`.
    pub fn connect_trust_domain(&self) -> String {
        self.shared.connect_lock().trust_domain.clone()
    }

    /// The SPIFFE ID the fake's CA puts in `service`'s leaf:
    /// `spiffe://<trust-domain>/ns/default/dc/dc1/svc/<service>`.
    pub fn connect_service_uri(&self, service: &str) -> String {
        self.shared.connect_lock().service_uri(service)
    }

    /// Every Connect root certificate (active and not yet pruned), PEM.
    pub fn connect_roots_pem(&self) -> String {
        self.shared.connect_lock().roots_pem()
    }

    /// The current leaf of `service` (issued now if it has none yet): the
    /// certificate chain PEM (leaf first) and the private key PEM.
    pub fn connect_leaf(&self, service: &str) -> (String, String) {
        self.shared.connect_write(|c| {
            let leaf = c.leaf(service);
            let json = connect::ConnectState::leaf_json(leaf);
            let field = |k: &str| json[k].as_str().unwrap_or_default().to_owned();
            (field("CertPEM"), field("PrivateKeyPEM"))
        })
    }

    /// The lifetime of leaves issued from now on (default 72 h, Consul's
    /// `leaf_cert_ttl`). The agent renews a leaf after 80 % of it; a
    /// blocking leaf query returns the new one.
    pub fn set_connect_leaf_ttl(&self, ttl: Duration) {
        self.shared.connect_lock().leaf_ttl = ttl;
    }

    /// Issues a new leaf for `service` now, as the agent does when one is
    /// due for renewal; blocked leaf queries return it.
    pub fn rotate_connect_leaf(&self, service: &str) {
        self.shared.connect_write(|c| c.issue_leaf(service));
    }

    /// Rotates the Connect CA: a new active root, cross-signed by the old
    /// one (leaves it signs carry the cross-signed certificate as an
    /// intermediate), and new leaves for every service. The old root stays
    /// in the roots list until [`prune_connect_roots`](Self::prune_connect_roots).
    pub fn rotate_connect_ca(&self) {
        self.shared
            .connect_write(connect::ConnectState::rotate_roots);
    }

    /// Removes the inactive roots from the list, as Consul does once they
    /// expire.
    pub fn prune_connect_roots(&self) {
        self.shared
            .connect_write(connect::ConnectState::prune_roots);
    }

    /// Creates or replaces the L4 intention `source -> destination` with
    /// `allow` (`true`) or `deny`. `*` is a wildcard on either side.
    pub fn set_intention(&self, source: &str, destination: &str, allow: bool) {
        let action = if allow { "allow" } else { "deny" };
        self.shared.connect_write(|c| {
            c.upsert_intention(
                source,
                destination,
                Some(action.to_owned()),
                None,
                String::new(),
            );
        });
    }

    /// Creates or replaces the L7 intention `source -> destination` with
    /// these `Permissions` (Consul's JSON: `[{"Action": "allow", "HTTP":
    /// {"PathPrefix": "/v1", "Methods": ["GET"]}}]`).
    pub fn set_l7_intention(
        &self,
        source: &str,
        destination: &str,
        permissions: serde_json::Value,
    ) {
        self.shared.connect_write(|c| {
            c.upsert_intention(source, destination, None, Some(permissions), String::new());
        });
    }

    /// Deletes the intention `source -> destination`; whether there was one.
    pub fn delete_intention(&self, source: &str, destination: &str) -> bool {
        self.shared
            .connect_write(|c| c.delete_intention(source, destination))
    }

    /// Moves the index back to `index` (at least 1), as a snapshot restore
    /// does, per-service indexes included. Blocked queries with a higher
    /// index keep waiting until their `wait` runs out and then see the lower
    /// index.
    pub fn reset_index(&self, index: u64) {
        let index = index.max(1);
        {
            let mut s = self.shared.lock();
            s.index = index;
            for v in s.service_index.values_mut() {
                *v = (*v).min(index);
            }
        }
        self.shared.index_tx.send_replace(index);
        for tx in self.shared.services_tx().values() {
            tx.send_replace(index);
        }
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

    /// Turns ACLs on with one token that may do everything (`None` turns
    /// them off). Then, as in Consul: a request with another token gets 403
    /// "ACL not found"; one without a token is anonymous: its writes get 403
    /// "Permission denied", its health reads an empty list with
    /// `X-Consul-Results-Filtered-By-ACLs: true`.
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

    /// The decoded query strings (`passing&filter=...&index=7&wait=5m`) of
    /// the last 100 `/v1/health/service/...` requests, oldest first.
    pub fn health_queries(&self) -> Vec<String> {
        self.shared
            .health_queries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Health requests being held right now (blocking or hanging).
    pub fn blocked_health_requests(&self) -> u64 {
        self.shared.in_flight_health.load(Ordering::SeqCst)
    }

    /// Blocked health queries woken because a write touched their service
    /// (a write to one service wakes that service's watchers only).
    pub fn health_wakeups(&self) -> u64 {
        self.shared.health_wakeups.load(Ordering::SeqCst)
    }

    /// Requests to `/v1/health/state/:state` so far (since the last
    /// [`reset_counts`](Self::reset_counts)).
    pub fn state_requests(&self) -> u64 {
        self.shared.state_requests.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections_opened(&self) -> u64 {
        self.shared.connections_opened.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    /// The most connections that were open at once (since the start or the
    /// last [`reset_counts`](Self::reset_counts)).
    pub fn max_open_connections(&self) -> u64 {
        self.shared.max_open_connections.load(Ordering::SeqCst)
    }

    /// Zeroes the request counters (and the connection high-water mark, to
    /// the connections open now).
    pub fn reset_counts(&self) {
        self.shared.requests.store(0, Ordering::SeqCst);
        self.shared.health_requests.store(0, Ordering::SeqCst);
        self.shared.health_wakeups.store(0, Ordering::SeqCst);
        self.shared.state_requests.store(0, Ordering::SeqCst);
        self.shared.max_open_connections.store(
            self.shared.open_connections.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
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

    fn leader(&self) -> Leader {
        *self
            .leader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn connect_lock(&self) -> MutexGuard<'_, connect::ConnectState> {
        self.connect
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs a Connect write and wakes blocked Connect reads.
    pub(crate) fn connect_write<T>(&self, f: impl FnOnce(&mut connect::ConnectState) -> T) -> T {
        let (out, index) = {
            let mut c = self.connect_lock();
            let out = f(&mut c);
            (out, c.index)
        };
        self.connect_tx.send_replace(index);
        out
    }

    /// Runs a write; when it touched a service ([`State::touch`]), raises
    /// the global index and that service's, and wakes blocked queries.
    fn write(&self, f: impl FnOnce(&mut State)) {
        let new = {
            let mut s = self.lock();
            f(&mut s);
            s.commit()
        };
        if let Some((new, touched)) = new {
            self.index_tx.send_replace(new);
            let services = self.services_tx();
            for s in &touched {
                if let Some(tx) = services.get(s) {
                    tx.send_replace(new);
                }
            }
        }
    }

    fn services_tx(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.service_tx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A receiver woken by writes to `service` only.
    pub(crate) fn subscribe_service(&self, service: &str) -> watch::Receiver<u64> {
        self.services_tx()
            .entry(service.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Counts a connection while it is open.
    pub(crate) fn connection(self: &Arc<Self>) -> ConnectionGauge {
        self.connections_opened.fetch_add(1, Ordering::SeqCst);
        let open = self.open_connections.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_open_connections.fetch_max(open, Ordering::SeqCst);
        ConnectionGauge(Arc::clone(self))
    }

    pub(crate) fn count_wakeup(&self) {
        self.health_wakeups.fetch_add(1, Ordering::SeqCst);
    }
}

/// An open connection, counted until dropped.
pub(crate) struct ConnectionGauge(Arc<Shared>);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

impl State {
    /// Adds or removes `_service_maintenance:<id>` on the agent's node.
    pub(crate) fn service_maintenance(&mut self, id: &str, reason: Option<&str>) -> bool {
        let Some(inst) = self
            .instances
            .get_mut(&(AGENT_NODE.to_owned(), id.to_owned()))
        else {
            return false;
        };
        let check_id = service_maintenance_id(id);
        let had = inst.checks.iter().any(|c| c.id == check_id);
        inst.checks.retain(|c| c.id != check_id);
        if let Some(reason) = reason {
            inst.checks.push(maintenance_check(
                check_id,
                "Service Maintenance Mode",
                reason,
            ));
        }
        if had || reason.is_some() {
            let service = inst.spec.service.clone();
            self.touch(&service);
        }
        true
    }

    /// Adds or removes `_node_maintenance` on the agent's node.
    pub(crate) fn node_maintenance(&mut self, reason: Option<&str>) {
        let node = self
            .nodes
            .entry(AGENT_NODE.to_owned())
            .or_insert_with(|| NodeState::new(AGENT_NODE, AGENT_NODE_ADDRESS));
        let had = node.checks.iter().any(|c| c.id == NODE_MAINTENANCE);
        node.checks.retain(|c| c.id != NODE_MAINTENANCE);
        if let Some(reason) = reason {
            node.checks.push(maintenance_check(
                NODE_MAINTENANCE.to_owned(),
                "Node Maintenance Mode",
                reason,
            ));
        }
        if had || reason.is_some() {
            self.touch_node(AGENT_NODE);
        }
    }
}

fn maintenance_check(id: String, name: &str, reason: &str) -> CheckState {
    let mut c = CheckState::new(
        id,
        name.to_owned(),
        CheckKind::Maintenance,
        Health::Critical,
    );
    c.notes = if reason.is_empty() {
        "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."
            .to_owned()
    } else {
        reason.to_owned()
    };
    c
}

#[cfg(test)]
mod tests;
