//! This service's Connect identity: its leaf certificate and the CA roots,
//! kept current by blocking queries, and the mTLS configs built on them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use mesh_auth::TlsError;
use mesh_auth::authz::Decision;
use mesh_auth::tls::{
    ClientTlsConfig, IdentitySet, MtlsClientConfig, MtlsServerConfig, PemCell, PemSource,
    ServerTlsConfig,
};
use mesh_core::backoff::Backoff;
use mesh_core::config::InvalidConfig;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::model::{CaRoots, Intention, LeafCert};
use super::spiffe::ServiceId;
use crate::consul::ConsulClient;
use crate::consul::watch::TokenBucket;
use crate::error::{DiscoveryError, ErrorKind, check_name};

/// `[connect]`: which service this program is, and how it follows the agent.
///
/// With the `serde` feature:
///
/// ```toml
/// service = "orders"
/// wait = "5m"
/// default = "deny"
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
#[non_exhaustive]
pub struct ConnectConfig {
    /// The service this program is: its leaf is
    /// `/v1/agent/connect/ca/leaf/<service>` and the intentions that apply
    /// to its callers are those with it as destination.
    pub service: String,
    /// How long a blocking query waits (1 s to 10 min). Default 5 min.
    #[cfg_attr(
        feature = "serde",
        serde(with = "humantime_serde", default = "default_wait")
    )]
    pub wait: Duration,
    /// The rate limit of each watch loop: one query per `min_interval`
    /// after a burst of `burst` (0 to 1 min). Default 1 s: Connect changes
    /// (a revoked intention, a rotated root) should apply at once.
    #[cfg_attr(
        feature = "serde",
        serde(with = "humantime_serde", default = "default_min_interval")
    )]
    pub min_interval: Duration,
    /// The burst of the rate limit (at least 1). Default 4.
    #[cfg_attr(feature = "serde", serde(default = "default_burst"))]
    pub burst: u32,
    /// What happens to a caller no intention matches: Consul's answer is
    /// the ACL default policy (`allow` when ACLs are off). Default `deny`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub default: Decision,
    /// The backoff between failed queries (the last certificate, roots and
    /// intentions stay in use meanwhile).
    #[cfg_attr(feature = "serde", serde(skip, default = "default_backoff"))]
    pub backoff: Backoff,
}

fn default_wait() -> Duration {
    Duration::from_secs(300)
}
fn default_min_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_burst() -> u32 {
    4
}
fn default_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(250), 2.0, Duration::from_secs(30))
}

impl ConnectConfig {
    /// The Connect identity of `service`, with the defaults.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            wait: default_wait(),
            min_interval: default_min_interval(),
            burst: default_burst(),
            default: Decision::Deny,
            backoff: default_backoff(),
        }
    }

    /// Sets the blocking-query wait.
    #[must_use]
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Sets the decision for callers no intention matches.
    #[must_use]
    pub fn with_default(mut self, default: Decision) -> Self {
        self.default = default;
        self
    }

    /// Checks every field; the error names each bad one.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        if let Err(e) = check_name("service", &self.service) {
            errors.push("service", e.to_string());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.wait) {
            errors.push("wait", format!("must be 1s to 10m (got {:?})", self.wait));
        }
        if self.min_interval > Duration::from_secs(60) {
            errors.push(
                "min_interval",
                format!("must be at most 1m (got {:?})", self.min_interval),
            );
        }
        if self.burst == 0 {
            errors.push("burst", "must be at least 1");
        }
        errors.merge_nested("backoff", self.backoff.validate());
        errors.into_result()
    }
}

/// What this service's Connect identity looks like now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectStatus {
    /// This service's SPIFFE ID, from its leaf.
    pub service_uri: String,
    /// The cluster's trust domain, from the roots.
    pub trust_domain: String,
    /// The leaf's serial number.
    pub leaf_serial: String,
    /// When the leaf expires (RFC 3339, as the agent said).
    pub leaf_valid_before: String,
    /// The active root's ID.
    pub active_root_id: String,
    /// How many roots are trusted.
    pub roots: usize,
    /// How many leaves and root sets were installed since the start
    /// (the first ones included).
    pub leaf_updates: u64,
    /// See `leaf_updates`.
    pub root_updates: u64,
    /// How many intention sets were installed since the start.
    pub intention_updates: u64,
    /// The last error of a watch, until its next success.
    pub last_error: Option<String>,
}

/// The state the watch tasks keep and the handles read.
pub(crate) struct Shared {
    client: ConsulClient,
    pub(crate) config: ConnectConfig,
    /// The leaf chain and its key, in one cell so they swap together.
    leaf: PemCell,
    /// Every trusted root.
    roots: PemCell,
    leaf_seen: Mutex<Option<LeafCert>>,
    roots_seen: Mutex<Option<CaRoots>>,
    /// The local service identity (trust domain and datacenter).
    pub(crate) local: ArcSwap<ServiceId>,
    /// The intentions with this service as destination, highest
    /// precedence first.
    pub(crate) intentions: ArcSwap<Vec<Arc<Intention>>>,
    /// The identity set of each (service, datacenter) a client config was
    /// built for, shared by those configs and re-pointed when the trust
    /// domain changes. Bounded by the services called.
    sets: Mutex<HashMap<(String, Option<String>), IdentitySet>>,
    status: watch::Sender<ConnectStatus>,
}

impl Shared {
    /// The trust domain the roots name.
    pub(crate) fn trust_domain(&self) -> String {
        self.local.load().trust_domain.clone()
    }
}

/// This service's identity in Consul Connect, kept current by the agent.
///
/// [`start`](Self::start) reads the leaf certificate
/// (`/v1/agent/connect/ca/leaf/:service`), the CA roots
/// (`/v1/agent/connect/ca/roots`) and the intentions with this service as
/// destination (`/v1/connect/intentions/match`), then follows each with
/// blocking queries. A new leaf (renewal, or a CA rotation) or a new root
/// set rotates every TLS config built here *in place*, at its next
/// handshake; connections already open keep their session. On errors the
/// last certificate, roots and intentions stay in use (fail static) while
/// the watch backs off and starts again from index 0.
///
/// Cheap to clone; the watches stop when every clone is dropped (configs
/// built here then keep their last material).
#[derive(Clone)]
pub struct ConnectIdentity {
    shared: Arc<Shared>,
    _stop: Arc<DropGuard>,
}

impl std::fmt::Debug for ConnectIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectIdentity")
            .field("service", &self.shared.config.service)
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug)]
enum Watched {
    Leaf,
    Roots,
    Intentions,
}

impl Watched {
    fn as_str(self) -> &'static str {
        match self {
            Watched::Leaf => "leaf",
            Watched::Roots => "roots",
            Watched::Intentions => "intentions",
        }
    }
}

impl ConnectIdentity {
    /// Reads the leaf, the roots and the intentions once (failing if the
    /// agent cannot give them: there is no identity without them), then
    /// keeps them current in background tasks on the current tokio runtime.
    pub async fn start(
        client: ConsulClient,
        config: ConnectConfig,
    ) -> Result<Self, DiscoveryError> {
        config.validate().map_err(|e| {
            DiscoveryError::new(ErrorKind::Other, "invalid Connect config").with_source(e)
        })?;
        let shared = Arc::new(Shared {
            client,
            config,
            leaf: PemCell::new(""),
            roots: PemCell::new(""),
            leaf_seen: Mutex::new(None),
            roots_seen: Mutex::new(None),
            local: ArcSwap::from_pointee(ServiceId::new("", "default", "", "")),
            intentions: ArcSwap::from_pointee(Vec::new()),
            sets: Mutex::new(HashMap::new()),
            status: watch::channel(ConnectStatus::default()).0,
        });
        let mut indexes = [0; 3];
        for (i, what) in [Watched::Roots, Watched::Leaf, Watched::Intentions]
            .into_iter()
            .enumerate()
        {
            let (index, body) = shared.fetch(what, 0).await?;
            shared.apply(what, &body)?;
            indexes[i] = index.unwrap_or(0);
        }
        let stop = CancellationToken::new();
        for (i, what) in [Watched::Roots, Watched::Leaf, Watched::Intentions]
            .into_iter()
            .enumerate()
        {
            tokio::spawn(watch_loop(shared.clone(), what, indexes[i], stop.clone()));
        }
        tracing::info!(
            service = %shared.config.service,
            uri = %shared.status.borrow().service_uri,
            "Connect identity ready"
        );
        Ok(Self {
            shared,
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The service this identity is.
    pub fn service(&self) -> &str {
        &self.shared.config.service
    }

    /// This service's SPIFFE ID (from its current leaf).
    pub fn service_id(&self) -> ServiceId {
        (**self.shared.local.load()).clone()
    }

    /// The state of the identity now.
    pub fn status(&self) -> ConnectStatus {
        self.shared.status.borrow().clone()
    }

    /// Waits until `f` holds for the status (for tests and readiness probes).
    pub async fn wait_for(&self, mut f: impl FnMut(&ConnectStatus) -> bool) -> ConnectStatus {
        let mut rx = self.shared.status.subscribe();
        let status = rx.wait_for(|s| f(s)).await;
        match status {
            Ok(s) => s.clone(),
            // The sender lives in `shared`, which `self` keeps alive.
            Err(_) => self.status(),
        }
    }

    /// The current leaf chain and key as one PEM document (a cell that
    /// follows the agent).
    pub fn leaf_pem(&self) -> PemSource {
        PemSource::Cell(self.shared.leaf.clone())
    }

    /// The current CA roots as one PEM bundle (a cell that follows the agent).
    pub fn roots_pem(&self) -> PemSource {
        PemSource::Cell(self.shared.roots.clone())
    }

    /// The mTLS server config: presents the agent's leaf, requires a
    /// client certificate chaining to the Connect roots *of this trust
    /// domain* (a certificate of another trust domain is refused in the
    /// handshake), and rotates with them. Authorize callers with
    /// [`IntentionsLayer`](super::IntentionsLayer).
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new(self.roots_pem(), self.leaf_pem(), self.leaf_pem())
            .with_trust_bundle(self.shared.trust_domain(), self.roots_pem())
    }

    /// [`server_config`](Self::server_config), built.
    pub fn server_tls(&self) -> Result<MtlsServerConfig, TlsError> {
        self.server_config().build()
    }

    /// The mTLS client config for calls to the Connect service `service`
    /// in this datacenter: presents the leaf, trusts the Connect roots,
    /// and requires the server to prove
    /// `spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>` (checked
    /// instead of the host name: discovery hands out IPs). The expected
    /// identity follows the trust domain of the roots.
    pub fn client_config(&self, service: &str) -> ClientTlsConfig {
        self.client_config_in(service, None)
    }

    /// [`client_config`](Self::client_config) for a service in another
    /// datacenter (`Some(dc)`), as `/v1/health/connect/:service?dc=` finds it.
    pub fn client_config_in(&self, service: &str, datacenter: Option<&str>) -> ClientTlsConfig {
        let set = self
            .shared
            .sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((service.to_owned(), datacenter.map(str::to_owned)))
            .or_insert_with(|| IdentitySet::new([self.expected(service, datacenter)]))
            .clone();
        ClientTlsConfig::new(self.roots_pem())
            .with_client_cert(self.leaf_pem(), self.leaf_pem())
            .with_server_identity_set(set)
            .without_hostname_verification()
    }

    /// [`client_config`](Self::client_config), built.
    pub fn client_tls(&self, service: &str) -> Result<MtlsClientConfig, TlsError> {
        self.client_config(service).build()
    }

    fn expected(&self, service: &str, datacenter: Option<&str>) -> String {
        self.shared.expected(service, datacenter)
    }
}

/// How close to its expiry a leaf must be, while the agent cannot be
/// reached, for the failing watch to say so loudly.
const EXPIRY_WARNING: Duration = Duration::from_secs(15 * 60);

impl Shared {
    /// Fail static keeps the last leaf, which expires: say when it does, so
    /// an operator sees it coming (an expired leaf fails every handshake).
    fn warn_if_leaf_expires(&self) {
        let valid_before = self.status.borrow().leaf_valid_before.clone();
        let Ok(expiry) = humantime::parse_rfc3339_weak(&valid_before) else {
            return;
        };
        match expiry.duration_since(std::time::SystemTime::now()) {
            Err(_) => tracing::error!(
                service = %self.config.service,
                valid_before = %valid_before,
                "the Connect leaf certificate has expired and the agent cannot renew it: \
                 handshakes fail until it can"
            ),
            Ok(left) if left < EXPIRY_WARNING => tracing::warn!(
                service = %self.config.service,
                valid_before = %valid_before,
                "the Connect leaf certificate expires soon and the agent cannot renew it"
            ),
            Ok(_) => {}
        }
    }

    fn expected(&self, service: &str, datacenter: Option<&str>) -> String {
        let local = self.local.load();
        let mut id = (**local).clone();
        id.service = service.to_owned();
        if let Some(dc) = datacenter {
            dc.clone_into(&mut id.datacenter);
        }
        id.to_string()
    }

    async fn fetch(
        &self,
        what: Watched,
        index: u64,
    ) -> Result<(Option<u64>, bytes::Bytes), DiscoveryError> {
        let wait = (index > 0).then_some(self.config.wait);
        let service = self.config.service.as_str();
        match what {
            Watched::Leaf => {
                self.client
                    .get_blocking(
                        &["v1", "agent", "connect", "ca", "leaf", service],
                        &[],
                        index,
                        wait,
                    )
                    .await
            }
            Watched::Roots => {
                self.client
                    .get_blocking(&["v1", "agent", "connect", "ca", "roots"], &[], index, wait)
                    .await
            }
            Watched::Intentions => {
                self.client
                    .get_blocking(
                        &["v1", "connect", "intentions", "match"],
                        &[("by", "destination"), ("name", service)],
                        index,
                        wait,
                    )
                    .await
            }
        }
    }

    /// Installs an answer; an answer that does not make sense is an error
    /// and changes nothing.
    fn apply(&self, what: Watched, body: &[u8]) -> Result<(), DiscoveryError> {
        let bad = |why: String| DiscoveryError::invalid_response(why);
        match what {
            Watched::Leaf => {
                let leaf: LeafCert =
                    serde_json::from_slice(body).map_err(|e| bad(format!("Connect leaf: {e}")))?;
                let mut seen = self
                    .leaf_seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if seen.as_ref() == Some(&leaf) {
                    return Ok(());
                }
                let pem = format!(
                    "{}\n{}\n",
                    leaf.cert_pem.trim_end(),
                    leaf.private_key_pem.trim_end()
                );
                let source = PemSource::pem(pem.clone());
                let certs = source
                    .load_certificates()
                    .map_err(|e| bad(format!("Connect leaf: {e}")))?;
                source
                    .load_private_key()
                    .map_err(|e| bad(format!("Connect leaf key: {e}")))?;
                let uri = mesh_auth::CallerIdentity::from_certificate(&certs[0])
                    .map_err(|e| bad(format!("Connect leaf: {e}")))?;
                let id = ServiceId::parse(uri.as_str()).ok_or_else(|| {
                    bad(format!(
                        "Connect leaf carries {uri}, not a service SPIFFE ID"
                    ))
                })?;
                let mut local = (**self.local.load()).clone();
                local.partition = id.partition;
                local.namespace = id.namespace;
                local.datacenter = id.datacenter;
                local.service = id.service;
                if local.trust_domain.is_empty() {
                    local.trust_domain = id.trust_domain;
                }
                self.local.store(Arc::new(local));
                self.leaf.set(pem);
                tracing::info!(
                    service = %leaf.service,
                    serial = %leaf.serial_number,
                    valid_before = %leaf.valid_before,
                    "Connect leaf certificate installed"
                );
                self.status.send_modify(|s| {
                    s.service_uri = uri.as_str().to_owned();
                    s.leaf_serial.clone_from(&leaf.serial_number);
                    s.leaf_valid_before.clone_from(&leaf.valid_before);
                    s.leaf_updates += 1;
                });
                *seen = Some(leaf);
            }
            Watched::Roots => {
                let roots: CaRoots =
                    serde_json::from_slice(body).map_err(|e| bad(format!("Connect roots: {e}")))?;
                if roots.roots.is_empty() {
                    return Err(bad("Connect roots: the agent lists no root".to_owned()));
                }
                if mesh_auth::parse_spiffe_id(&format!("spiffe://{}", roots.trust_domain)).is_err()
                {
                    return Err(bad(format!(
                        "Connect roots: {:?} is not a trust domain",
                        roots.trust_domain
                    )));
                }
                let mut seen = self
                    .roots_seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if seen.as_ref() == Some(&roots) {
                    return Ok(());
                }
                let bundle = roots.bundle_pem();
                PemSource::pem(bundle.clone())
                    .load_certificates()
                    .map_err(|e| bad(format!("Connect roots: {e}")))?;
                let old = self.trust_domain();
                if old != roots.trust_domain {
                    let mut local = (**self.local.load()).clone();
                    local.trust_domain.clone_from(&roots.trust_domain);
                    self.local.store(Arc::new(local));
                    for ((service, dc), set) in self
                        .sets
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .iter()
                    {
                        set.set([self.expected(service, dc.as_deref())]);
                    }
                    if !old.is_empty() {
                        tracing::warn!(old = %old, new = %roots.trust_domain, "Connect trust domain changed");
                    }
                }
                self.roots.set(bundle);
                tracing::info!(
                    active = %roots.active_root_id,
                    roots = roots.roots.len(),
                    "Connect CA roots installed"
                );
                self.status.send_modify(|s| {
                    s.trust_domain.clone_from(&roots.trust_domain);
                    s.active_root_id.clone_from(&roots.active_root_id);
                    s.roots = roots.roots.len();
                    s.root_updates += 1;
                });
                *seen = Some(roots);
            }
            Watched::Intentions => {
                let mut by_name: HashMap<String, Vec<Intention>> = serde_json::from_slice(body)
                    .map_err(|e| bad(format!("Connect intentions: {e}")))?;
                let mut list = by_name.remove(&self.config.service).unwrap_or_default();
                // Consul sorts them already; a stable sort keeps its order
                // among equal precedences.
                list.sort_by_key(|i| std::cmp::Reverse(i.precedence));
                let list: Vec<Arc<Intention>> = list.into_iter().map(Arc::new).collect();
                if **self.intentions.load() == list {
                    return Ok(());
                }
                tracing::info!(
                    destination = %self.config.service,
                    intentions = list.len(),
                    "Connect intentions installed"
                );
                self.intentions.store(Arc::new(list));
                self.status.send_modify(|s| s.intention_updates += 1);
            }
        }
        Ok(())
    }
}

/// One watch: a blocking query after the other, rate-limited, fail static.
async fn watch_loop(shared: Arc<Shared>, what: Watched, mut index: u64, stop: CancellationToken) {
    let mut backoff = shared.config.backoff.session();
    let mut bucket = TokenBucket::new(shared.config.burst, shared.config.min_interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = bucket.acquire() => {}
        }
        let answer = tokio::select! {
            () = stop.cancelled() => break,
            a = shared.fetch(what, index) => a,
        };
        let result = answer.and_then(|(new_index, body)| {
            let new_index = new_index
                .ok_or_else(|| DiscoveryError::invalid_response("answer has no X-Consul-Index"))?;
            shared.apply(what, &body)?;
            Ok(new_index)
        });
        match result {
            Ok(new_index) => {
                backoff.reset();
                if shared.status.borrow().last_error.is_some() {
                    shared.status.send_modify(|s| s.last_error = None);
                }
                index = if new_index < index {
                    0
                } else {
                    new_index.max(1)
                };
            }
            Err(e) => {
                index = 0;
                let delay = backoff.next_delay();
                tracing::warn!(
                    watch = what.as_str(),
                    error = %e,
                    retry_in = ?delay,
                    "Connect watch failed; keeping the last known material"
                );
                shared
                    .status
                    .send_modify(|s| s.last_error = Some(format!("{}: {e}", what.as_str())));
                shared.warn_if_leaf_expires();
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::debug!(watch = what.as_str(), "Connect watch stopped");
}
