//! A small Consul HTTP client: the agent service and check API, and health
//! queries with blocking-query support.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use mesh_core::Address;
use mesh_core::config::InvalidConfig;
use reqwest::{Method, Url};
use tokio::sync::{Semaphore, SemaphorePermit};

use super::config::{ConsulConfig, ConsulToken, HttpAuth, Target};
use super::feed::Feed;
use super::model::{ServiceRegistration, go_duration};
use crate::error::{DiscoveryError, ErrorKind, InvalidName, check_name, check_text};

/// Which servers may answer a read, and how fresh the answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Consistency {
    /// Served by the leader (Consul's default).
    #[default]
    Default,
    /// Any server may answer (`?stale`): keeps working without a quorum.
    Stale,
    /// The leader confirms its leadership first (`?consistent`).
    Consistent,
    /// The local agent's cache (`?cached`).
    Cached,
}

/// What to ask `/v1/health/service/:service` for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct HealthQuery {
    /// The service name.
    pub service: String,
    /// Only instances whose checks all pass (`?passing`; default true).
    pub passing_only: bool,
    /// Only instances with all these tags, sent as part of the `filter`
    /// (`Service.Tags contains "v2"`; Consul deprecated `?tag=`).
    pub tags: Vec<String>,
    /// Another datacenter (`?dc=`).
    pub datacenter: Option<String>,
    /// A filter expression (`?filter=`, Consul's filter language, e.g.
    /// `Service.Meta.version == "2"`), combined with `tags` by `and`.
    pub filter: Option<String>,
    /// Sort by round-trip time from this node (`?near=`, e.g. `_agent`).
    pub near: Option<String>,
    /// Consistency mode.
    pub consistency: Consistency,
    /// Ask `/v1/health/connect/:service` instead of `/v1/health/service/`:
    /// the service's Connect-capable endpoints, Connect-native instances
    /// and the sidecar proxies in front of the others (default false).
    pub connect: bool,
}

impl HealthQuery {
    /// Healthy instances of `service`.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            passing_only: true,
            tags: Vec::new(),
            datacenter: None,
            filter: None,
            near: None,
            consistency: Consistency::Default,
            connect: false,
        }
    }

    /// Healthy Connect-capable endpoints of `service`
    /// (`/v1/health/connect/:service`): Connect-native instances and the
    /// sidecar proxies whose destination it is.
    pub fn connect(service: impl Into<String>) -> Self {
        Self {
            connect: true,
            ..Self::new(service)
        }
    }

    /// Adds a required tag.
    #[must_use]
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// The `filter` sent: one `Service.Tags contains "<tag>"` per tag and the
    /// user's filter, joined by `and`; `None` when there is neither.
    ///
    /// ```
    /// use mesh_discovery::consul::HealthQuery;
    ///
    /// let mut q = HealthQuery::new("web").tag("v2");
    /// q.filter = Some(r#"Service.Meta.zone == "a" or Service.Meta.zone == "b""#.into());
    /// assert_eq!(
    ///     q.filter_expression().unwrap(),
    ///     r#"Service.Tags contains "v2" and (Service.Meta.zone == "a" or Service.Meta.zone == "b")"#
    /// );
    /// ```
    pub fn filter_expression(&self) -> Option<String> {
        let mut parts: Vec<String> = self
            .tags
            .iter()
            .map(|t| format!("Service.Tags contains {}", quote(t)))
            .collect();
        if let Some(f) = self.filter.as_deref().filter(|f| !f.trim().is_empty()) {
            parts.push(if parts.is_empty() {
                f.to_owned()
            } else {
                format!("({f})")
            });
        }
        (!parts.is_empty()).then(|| parts.join(" and "))
    }

    /// Checks the service name and the query values before anything is sent.
    pub fn validate(&self) -> Result<(), InvalidName> {
        check_name("service name", &self.service)?;
        for t in &self.tags {
            check_text("tag", t)?;
        }
        if let Some(dc) = &self.datacenter {
            check_name("datacenter", dc)?;
        }
        if let Some(f) = &self.filter {
            check_text("filter", f)?;
        }
        if let Some(n) = &self.near {
            check_name("near", n)?;
        }
        Ok(())
    }
}

/// A filter-language string literal.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Default for HealthQuery {
    fn default() -> Self {
        Self::new("")
    }
}

/// One answer of a health query: the raw body, the blocking index and what
/// the servers said about their freshness and ACL filtering.
#[derive(Debug, Clone)]
pub struct HealthAnswer {
    /// The JSON body, for [`parse_health`](super::parse_health).
    pub body: Bytes,
    /// `X-Consul-Index`, when present and a number.
    pub index: Option<u64>,
    /// `X-Consul-KnownLeader`: whether the answering server knew a leader.
    /// `None` when absent (the streaming backend does not send it).
    pub known_leader: Option<bool>,
    /// `X-Consul-LastContact`: how long since the answering server heard
    /// from the leader (0 on the leader). `None` when absent.
    pub last_contact: Option<Duration>,
    /// `X-Consul-Results-Filtered-By-ACLs: true`: the token may not read
    /// some (maybe all) of the results, which Consul left out instead of
    /// refusing. An empty answer with this set is an ACL problem, not "no
    /// instances".
    pub filtered_by_acls: bool,
}

/// A Consul HTTP client. Cheap to clone (one `Arc`).
///
/// ```
/// use mesh_discovery::consul::{ConsulClient, ConsulConfig};
///
/// let client = ConsulClient::new(&ConsulConfig::new("http://127.0.0.1:8500").with_token("secret"))?;
/// assert!(!format!("{client:?}").contains("secret"));
/// # Ok::<(), mesh_core::config::InvalidConfig>(())
/// ```
#[derive(Clone)]
pub struct ConsulClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    token: Option<ConsulToken>,
    http_auth: Option<HttpAuth>,
    namespace: Option<String>,
    partition: Option<String>,
    request_timeout: Duration,
    budget: Budget,
    feed: Feed,
}

/// A [`ConsulClient`] that does not keep it alive (the change feed's task
/// holds one).
pub(crate) struct WeakClient(std::sync::Weak<Inner>);

impl WeakClient {
    pub(crate) fn upgrade(&self) -> Option<ConsulClient> {
        self.0.upgrade().map(|inner| ConsulClient { inner })
    }
}

/// The client's connection budget ([`ConsulConfig::max_connections`]): every
/// request in flight holds a permit of `all`, blocking queries one of
/// `blocking` as well (taken first), so at most `max` requests (and
/// connections) are in flight and blocking queries never take the last
/// `max - blocking` of them. tokio's semaphores are fair (first come, first
/// served), which is what makes watches take turns.
struct Budget {
    all: Semaphore,
    blocking: Semaphore,
    max: usize,
    /// The permits of `all`: `max` less a slack of `max / 16` for
    /// connections on their way back to the pool (hyper returns a
    /// connection to its pool from a task of its own, a moment after the
    /// response was read; a request let through in that moment would open
    /// another).
    all_max: usize,
    blocking_max: usize,
    /// Watches running over this client (see [`WatchGuard`]).
    watches: AtomicUsize,
    /// Watches announced by [`ConsulClient::expect_watches`].
    expected: AtomicUsize,
    shared_wait: Duration,
}

impl Budget {
    fn new(max: u32, shared_wait: Duration) -> Self {
        let max = usize::try_from(max).unwrap_or(usize::MAX).max(2);
        let all_max = max - max / 16;
        let reserve = (all_max / 8).max(1);
        Self {
            all: Semaphore::new(all_max),
            blocking: Semaphore::new(all_max - reserve),
            max,
            all_max,
            blocking_max: all_max - reserve,
            watches: AtomicUsize::new(0),
            expected: AtomicUsize::new(0),
            shared_wait,
        }
    }

    async fn any(&self) -> Result<SemaphorePermit<'_>, DiscoveryError> {
        self.all
            .acquire()
            .await
            .map_err(|_| DiscoveryError::new(ErrorKind::Other, "consul client closed"))
    }

    async fn blocking(&self) -> Result<SemaphorePermit<'_>, DiscoveryError> {
        self.blocking
            .acquire()
            .await
            .map_err(|_| DiscoveryError::new(ErrorKind::Other, "consul client closed"))
    }

    /// The `wait` a blocking query asking for `wait` gets: its own while
    /// every watch can hold a connection, `shared_wait` at most when they
    /// must take turns.
    fn wait(&self, wait: Duration) -> Duration {
        if self.shares_turns() {
            wait.min(self.shared_wait)
        } else {
            wait
        }
    }

    /// More watches (running or announced) than blocking permits.
    fn shares_turns(&self) -> bool {
        let watches = self
            .watches
            .load(Ordering::Relaxed)
            .max(self.expected.load(Ordering::Relaxed));
        watches > self.blocking_max
    }
}

/// Counts a running watch in its client's budget while it lives.
pub(crate) struct WatchGuard(ConsulClient);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.inner.budget.watches.fetch_sub(1, Ordering::Relaxed);
        if self.0.inner.feed.is_running() {
            self.0.inner.feed.recheck.notify_waiters();
        }
    }
}

impl fmt::Debug for ConsulClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulClient")
            .field("base", &self.inner.base.as_str())
            .field("token", &self.inner.token)
            .field("namespace", &self.inner.namespace)
            .finish()
    }
}

/// The margin a blocking query's HTTP timeout adds to `wait + wait/16`.
pub(crate) const BLOCKING_MARGIN: Duration = Duration::from_secs(5);

impl ConsulClient {
    /// A client for the agent `config` describes. Validates the config, reads
    /// the TLS files, and never connects (that happens on the first call).
    ///
    /// The agent's host name is resolved on each new connection, never
    /// pinned: an agent that moves (a DNS name over a pool, a restarted
    /// container) is found again. With a
    /// [`tls_server_name`](ConsulConfig::tls_server_name), connections go to
    /// the agent's address while the certificate is checked (and SNI sent)
    /// for that name.
    pub fn new(config: &ConsulConfig) -> Result<Self, InvalidConfig> {
        config.validate()?;
        let parsed = config.parse_address()?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            // Never more idle connections than the budget allows in flight.
            .pool_max_idle_per_host(config.max_connections as usize)
            // The token rides in `X-Consul-Token`, which reqwest keeps on a
            // redirect to another host: an agent (or anything in its place)
            // answering 307 would get it forwarded. Consul's HTTP API does
            // not redirect; a redirect is an error here.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mesh-discovery/", env!("CARGO_PKG_VERSION")));
        if parsed.https {
            builder = tls(builder, config)?;
        }
        let scheme = if parsed.https { "https" } else { "http" };
        let authority = match &parsed.target {
            #[cfg(unix)]
            Target::Unix(path) => {
                builder = builder.unix_socket(path.clone());
                // Any name will do: every connection goes to the socket.
                match config.server_name() {
                    Some(name) if parsed.https => name.to_owned(),
                    _ => "localhost".to_owned(),
                }
            }
            #[cfg(not(unix))]
            Target::Unix(_) => {
                return Err(InvalidConfig::field(
                    "address",
                    "unix:// sockets need a Unix platform",
                ));
            }
            Target::Tcp(address) => match config.server_name() {
                Some(name) if parsed.https => {
                    // Connect to the agent's address, resolved afresh for
                    // every connection, while TLS checks `name`.
                    builder = builder.dns_resolver(Arc::new(AgentResolver {
                        name: name.to_ascii_lowercase(),
                        agent: address.clone(),
                    }));
                    format!("{}:{}", url_host(name), address.port())
                }
                _ => address.to_string(),
            },
        };
        let base = Url::parse(&format!("{scheme}://{authority}{}/", parsed.prefix))
            .map_err(|e| InvalidConfig::field("address", format!("is not a valid URL: {e}")))?;
        #[cfg(feature = "consul-tls")]
        install_crypto_provider();
        let http = builder
            .build()
            .map_err(|e| InvalidConfig::field("address", format!("HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                token: config.token.clone(),
                http_auth: config.http_auth.clone(),
                namespace: config.namespace.clone(),
                partition: config.partition.clone(),
                request_timeout: config.request_timeout,
                budget: Budget::new(config.max_connections, config.shared_wait),
                feed: Feed::default(),
            }),
        })
    }

    /// The most requests (and so connections) this client has in flight to
    /// the agent at once ([`ConsulConfig::max_connections`]).
    pub fn max_connections(&self) -> usize {
        self.inner.budget.max
    }

    /// How many of them blocking queries may hold; the rest are kept for
    /// calls that do not block.
    pub fn blocking_connections(&self) -> usize {
        self.inner.budget.blocking_max
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.budget.all_max - self.inner.budget.all.available_permits()
    }

    /// Watches ([`ConsulDiscovery`](super::ConsulDiscovery)) running over
    /// this client (and its clones).
    pub fn watches(&self) -> usize {
        self.inner.budget.watches.load(Ordering::Relaxed)
    }

    /// Announces that `watches` watches will share this client, before
    /// they start: a watch that starts early then takes turns of
    /// `shared_wait` from its first blocking query, instead of holding a
    /// connection for its whole `wait` while the others queue (it would
    /// take turns from its next query on). `Mesh` announces its Consul
    /// services.
    pub fn expect_watches(&self, watches: usize) {
        self.inner.budget.expected.store(watches, Ordering::Relaxed);
        self.inner.feed.recheck.notify_waiters();
        super::feed::ensure_running(self);
    }

    /// Whether the change feed runs: two blocking queries, on
    /// `/v1/health/state/critical` and `/v1/health/state/warning`, that
    /// tell which services changed, so their watches refresh at once
    /// instead of on their turn. It runs while the watches take turns (more
    /// of them than [`blocking_connections`](Self::blocking_connections),
    /// which must be at least 4) and holds two of the blocking permits; see
    /// the [`ConsulDiscovery`](super::ConsulDiscovery) docs.
    pub fn change_feed_running(&self) -> bool {
        self.inner.feed.is_running()
    }

    /// Answers of the change feed diffed so far (its first one included).
    pub fn change_feed_answers(&self) -> u64 {
        self.inner.feed.answers()
    }

    /// Watches the change feed kicked so far (each does one non-blocking
    /// read of its service).
    pub fn watches_kicked(&self) -> u64 {
        self.inner.feed.kicked()
    }

    pub(crate) fn feed(&self) -> &Feed {
        &self.inner.feed
    }

    /// Whether the change feed should run: watches are running and take
    /// turns, and the feed's blocking queries leave them at least as many
    /// blocking permits as it holds.
    pub(crate) fn feed_wanted(&self) -> bool {
        self.inner.budget.watches.load(Ordering::Relaxed) > 0
            && self.inner.budget.blocking_max >= 2 * super::feed::FEED_STATES.len()
            && self.inner.budget.shares_turns()
    }

    pub(crate) fn downgrade(&self) -> WeakClient {
        WeakClient(Arc::downgrade(&self.inner))
    }

    /// Takes one blocking permit until [`return_blocking_slot`](Self::return_blocking_slot).
    pub(crate) async fn take_blocking_slot(&self) -> Result<(), DiscoveryError> {
        self.inner.budget.blocking().await?.forget();
        Ok(())
    }

    pub(crate) fn return_blocking_slot(&self) {
        self.inner.budget.blocking.add_permits(1);
    }

    pub(crate) fn shared_wait(&self) -> Duration {
        self.inner.budget.shared_wait
    }

    pub(crate) fn watch_guard(&self) -> WatchGuard {
        self.inner.budget.watches.fetch_add(1, Ordering::Relaxed);
        WatchGuard(self.clone())
    }

    /// A client configured from Consul's environment variables
    /// ([`ConsulConfig::from_env`]).
    pub fn from_env() -> Result<Self, InvalidConfig> {
        Self::new(&ConsulConfig::from_env()?)
    }

    /// The agent's base URL.
    pub fn base_url(&self) -> &str {
        self.inner.base.as_str()
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(ns) = &self.inner.namespace {
                q.append_pair("ns", ns);
            }
            if let Some(p) = &self.inner.partition {
                q.append_pair("partition", p);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        url
    }

    fn request(&self, method: Method, url: Url, timeout: Duration) -> reqwest::RequestBuilder {
        let mut rb = self.inner.http.request(method, url).timeout(timeout);
        if let Some(t) = &self.inner.token {
            rb = rb.header("X-Consul-Token", t.expose());
        }
        if let Some(a) = &self.inner.http_auth {
            rb = rb.basic_auth(a.user(), a.expose_password());
        }
        rb
    }

    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<(http::HeaderMap, Bytes), DiscoveryError> {
        let permit = self.inner.budget.any().await?;
        let resp = rb.send().await.map_err(DiscoveryError::from_reqwest)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(DiscoveryError::from_reqwest)?;
        // Let hyper's task put the connection back in the pool before the
        // next request may start (see `Budget::all_max`): a millisecond per
        // answer, against a connection opened for nothing.
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop(permit);
        if !status.is_success() {
            return Err(DiscoveryError::status(status.as_u16(), &body));
        }
        Ok((headers, body))
    }

    /// `PUT /v1/agent/service/register`, with the ID always sent (see
    /// [`ServiceRegistration::effective_id`]). The instance is not routable
    /// yet when this returns: its checks start critical. Use
    /// [`Registration::register`](super::Registration::register), which
    /// waits until it is.
    pub async fn register(&self, registration: &ServiceRegistration) -> Result<(), DiscoveryError> {
        registration.validate().map_err(|e| {
            DiscoveryError::new(ErrorKind::Other, "invalid registration").with_source(e)
        })?;
        let mut registration = registration.clone();
        registration.id = Some(registration.effective_id().into_owned());
        let body = serde_json::to_vec(&registration).map_err(|e| {
            DiscoveryError::new(ErrorKind::Other, "could not encode").with_source(e)
        })?;
        let url = self.url(&["v1", "agent", "service", "register"]);
        let rb = self
            .request(Method::PUT, url, self.inner.request_timeout)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send(rb).await.map(drop)
    }

    /// `PUT /v1/agent/service/deregister/:service_id`. Deregistering an
    /// unknown ID (Consul answers 404) succeeds: it is gone either way.
    pub async fn deregister(&self, service_id: &str) -> Result<(), DiscoveryError> {
        check_name("service ID", service_id).map_err(|e| {
            DiscoveryError::new(ErrorKind::Other, "invalid service ID").with_source(e)
        })?;
        let url = self.url(&["v1", "agent", "service", "deregister", service_id]);
        match self
            .send(self.request(Method::PUT, url, self.inner.request_timeout))
            .await
        {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other.map(drop),
        }
    }

    /// Puts a service instance on this agent in maintenance (`Some(reason)`)
    /// or takes it out (`None`): `PUT /v1/agent/service/maintenance/:id`.
    /// In maintenance, Consul adds a critical `_service_maintenance:<id>`
    /// check, so watchers drop the instance. Unknown IDs are
    /// [`ErrorKind::NotFound`] errors.
    pub async fn service_maintenance(
        &self,
        service_id: &str,
        reason: Option<&str>,
    ) -> Result<(), DiscoveryError> {
        check_name("service ID", service_id).map_err(|e| {
            DiscoveryError::new(ErrorKind::Other, "invalid service ID").with_source(e)
        })?;
        let url = self.url(&["v1", "agent", "service", "maintenance", service_id]);
        self.maintenance(url, reason).await
    }

    /// Puts this agent's whole node in maintenance (`Some(reason)`) or takes
    /// it out (`None`): `PUT /v1/agent/maintenance`. Every instance on the
    /// node gets a critical `_node_maintenance` check.
    pub async fn node_maintenance(&self, reason: Option<&str>) -> Result<(), DiscoveryError> {
        let url = self.url(&["v1", "agent", "maintenance"]);
        self.maintenance(url, reason).await
    }

    async fn maintenance(&self, mut url: Url, reason: Option<&str>) -> Result<(), DiscoveryError> {
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("enable", if reason.is_some() { "true" } else { "false" });
            if let Some(r) = reason.filter(|r| !r.is_empty()) {
                q.append_pair("reason", r);
            }
        }
        self.send(self.request(Method::PUT, url, self.inner.request_timeout))
            .await
            .map(drop)
    }

    /// The aggregated status of a service instance on this agent, its node's
    /// checks included: `GET /v1/agent/health/service/id/:service_id`
    /// (200 passing, 429 warning, 503 critical). An unknown instance is an
    /// [`ErrorKind::NotFound`] error.
    pub async fn agent_service_status(
        &self,
        service_id: &str,
    ) -> Result<CheckStatus, DiscoveryError> {
        check_name("service ID", service_id).map_err(|e| {
            DiscoveryError::new(ErrorKind::Other, "invalid service ID").with_source(e)
        })?;
        let url = self.url(&["v1", "agent", "health", "service", "id", service_id]);
        let _permit = self.inner.budget.any().await?;
        let resp = self
            .request(Method::GET, url, self.inner.request_timeout)
            .send()
            .await
            .map_err(DiscoveryError::from_reqwest)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(DiscoveryError::from_reqwest)?;
        match status {
            200 => Ok(CheckStatus::Passing),
            429 => Ok(CheckStatus::Warning),
            503 => Ok(CheckStatus::Critical),
            _ => Err(DiscoveryError::status(status, &body)),
        }
    }

    /// Sets a TTL check's status: `PUT /v1/agent/check/update/:check_id`.
    /// An unknown check is an [`ErrorKind::NotFound`] error (the agent lost
    /// the registration, e.g. after a restart).
    pub async fn update_check(
        &self,
        check_id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), DiscoveryError> {
        check_name("check ID", check_id).map_err(|e| {
            DiscoveryError::new(ErrorKind::Other, "invalid check ID").with_source(e)
        })?;
        let url = self.url(&["v1", "agent", "check", "update", check_id]);
        let body = serde_json::json!({ "Status": status.as_str(), "Output": output });
        let rb = self
            .request(Method::PUT, url, self.inner.request_timeout)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.send(rb).await.map(drop)
    }

    /// `GET /v1/health/service/:service`. With `index > 0` and a `wait`, this
    /// is a blocking query: Consul holds it until the index passes `index` or
    /// `wait` (plus up to `wait/16`) runs out. The HTTP timeout is
    /// `wait + wait/16 + margin`.
    pub async fn health_service(
        &self,
        query: &HealthQuery,
        index: u64,
        wait: Option<Duration>,
    ) -> Result<HealthAnswer, DiscoveryError> {
        self.health_service_with_margin(query, index, wait, BLOCKING_MARGIN)
            .await
    }

    pub(crate) async fn health_service_with_margin(
        &self,
        query: &HealthQuery,
        index: u64,
        wait: Option<Duration>,
        margin: Duration,
    ) -> Result<HealthAnswer, DiscoveryError> {
        self.health_service_kickable(query, index, wait, margin, None)
            .await
            .map(|(a, _)| a)
    }

    /// A health read; a blocking one that is still waiting for its turn
    /// when `kick` is notified becomes a non-blocking read at once (true in
    /// the result).
    pub(crate) async fn health_service_kickable(
        &self,
        query: &HealthQuery,
        index: u64,
        wait: Option<Duration>,
        margin: Duration,
        kick: Option<&tokio::sync::Notify>,
    ) -> Result<(HealthAnswer, bool), DiscoveryError> {
        query
            .validate()
            .map_err(|e| DiscoveryError::new(ErrorKind::Other, "invalid query").with_source(e))?;
        let endpoint = if query.connect { "connect" } else { "service" };
        let mut url = self.url(&["v1", "health", endpoint, &query.service]);
        let timeout;
        // A blocking query takes a blocking turn first; its `wait` is
        // decided once the turn is ours (turns may have become shared).
        let mut kicked = false;
        let (blocking, wait) = match wait {
            Some(w) if index > 0 => {
                let permit = match kick {
                    None => Some(self.inner.budget.blocking().await?),
                    Some(kick) => tokio::select! {
                        biased;
                        () = kick.notified() => None,
                        p = self.inner.budget.blocking() => Some(p?),
                    },
                };
                match permit {
                    Some(p) => (Some(p), Some(self.inner.budget.wait(w))),
                    None => {
                        kicked = true;
                        (None, None)
                    }
                }
            }
            _ => (None, None),
        };
        {
            let mut q = url.query_pairs_mut();
            if query.passing_only {
                q.append_key_only("passing");
            }
            if let Some(dc) = &query.datacenter {
                q.append_pair("dc", dc);
            }
            if let Some(f) = query.filter_expression() {
                q.append_pair("filter", &f);
            }
            if let Some(n) = &query.near {
                q.append_pair("near", n);
            }
            match query.consistency {
                Consistency::Default => {}
                Consistency::Stale => {
                    q.append_key_only("stale");
                }
                Consistency::Consistent => {
                    q.append_key_only("consistent");
                }
                Consistency::Cached => {
                    q.append_key_only("cached");
                }
            }
            match wait {
                Some(w) => {
                    q.append_pair("index", &index.to_string());
                    q.append_pair("wait", &go_duration(w));
                    timeout = w + w / 16 + margin;
                }
                None => timeout = self.inner.request_timeout,
            }
        }
        let (headers, body) = self.send(self.request(Method::GET, url, timeout)).await?;
        drop(blocking);
        Ok((answer(&headers, body), kicked))
    }
}

impl ConsulClient {
    /// `GET /v1/health/state/:state`: every check in `state` (`any`,
    /// `passing`, `warning` or `critical`), node checks included, with an
    /// optional `filter` on the checks' fields (`Status != "passing"`).
    /// With `index > 0` and a `wait`, a blocking query on the checks
    /// table's index (it takes one of the blocking permits while held).
    /// The body is a JSON array of checks (`Node`, `CheckID`, `Status`,
    /// `ServiceID`, `ServiceName`, ...).
    pub async fn health_state(
        &self,
        state: &str,
        filter: Option<&str>,
        index: u64,
        wait: Option<Duration>,
    ) -> Result<HealthAnswer, DiscoveryError> {
        let _blocking = match wait {
            Some(_) if index > 0 => Some(self.inner.budget.blocking().await?),
            _ => None,
        };
        self.health_state_held(state, filter, index, wait).await
    }

    /// [`health_state`](Self::health_state) for a caller that holds a
    /// blocking permit already (the change feed).
    pub(crate) async fn health_state_held(
        &self,
        state: &str,
        filter: Option<&str>,
        index: u64,
        wait: Option<Duration>,
    ) -> Result<HealthAnswer, DiscoveryError> {
        if !matches!(state, "any" | "passing" | "warning" | "critical") {
            return Err(DiscoveryError::new(
                ErrorKind::Other,
                format!("invalid check state {state:?}: any, passing, warning or critical"),
            ));
        }
        if let Some(f) = filter {
            check_text("filter", f).map_err(|e| {
                DiscoveryError::new(ErrorKind::Other, "invalid filter").with_source(e)
            })?;
        }
        let params: &[(&str, &str)] = match filter {
            Some(f) => &[("filter", f)],
            None => &[],
        };
        let (headers, body) = self
            .get_indexed(&["v1", "health", "state", state], params, index, wait)
            .await?;
        Ok(answer(&headers, body))
    }

    /// A GET of `segments` with `params`; with `index > 0` and a `wait`, a
    /// blocking query (its timeout past the wait by Consul's jitter, 1/16,
    /// and a margin). Returns the answer's headers and body.
    async fn get_indexed(
        &self,
        segments: &[&str],
        params: &[(&str, &str)],
        index: u64,
        wait: Option<Duration>,
    ) -> Result<(http::HeaderMap, Bytes), DiscoveryError> {
        let mut url = self.url(segments);
        let timeout;
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            match wait {
                Some(w) if index > 0 => {
                    q.append_pair("index", &index.to_string());
                    q.append_pair("wait", &go_duration(w));
                    timeout = w + w / 16 + BLOCKING_MARGIN;
                }
                _ => timeout = self.inner.request_timeout,
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.send(self.request(Method::GET, url, timeout)).await
    }
}

/// The parts of an answer a health read keeps.
fn answer(headers: &http::HeaderMap, body: Bytes) -> HealthAnswer {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    HealthAnswer {
        index: header("x-consul-index").and_then(|v| v.parse().ok()),
        known_leader: header("x-consul-knownleader").and_then(|v| v.parse().ok()),
        last_contact: header("x-consul-lastcontact")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis),
        filtered_by_acls: header("x-consul-results-filtered-by-acls") == Some("true"),
        body,
    }
}

#[cfg(feature = "connect")]
impl ConsulClient {
    /// A GET of `segments` with `params`; with `index > 0` and a `wait`, a
    /// blocking query. Returns the `X-Consul-Index` and the body.
    pub(crate) async fn get_blocking(
        &self,
        segments: &[&str],
        params: &[(&str, &str)],
        index: u64,
        wait: Option<Duration>,
    ) -> Result<(Option<u64>, Bytes), DiscoveryError> {
        let (headers, body) = self.get_indexed(segments, params, index, wait).await?;
        let index = headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        Ok((index, body))
    }
}

/// The status of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckStatus {
    /// Healthy.
    Passing,
    /// Degraded: excluded by `?passing`; without it, such instances get
    /// `Weights.Warning`.
    Warning,
    /// Unhealthy: excluded by `?passing`.
    Critical,
}

impl CheckStatus {
    /// Consul's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }
}

#[cfg(not(feature = "consul-tls"))]
fn tls(
    _: reqwest::ClientBuilder,
    _: &ConsulConfig,
) -> Result<reqwest::ClientBuilder, InvalidConfig> {
    Err(InvalidConfig::field(
        "address",
        "https to the agent needs mesh-discovery's `consul-tls` feature",
    ))
}

#[cfg(feature = "consul-tls")]
fn tls(
    mut builder: reqwest::ClientBuilder,
    config: &ConsulConfig,
) -> Result<reqwest::ClientBuilder, InvalidConfig> {
    builder = builder.tls_backend_rustls();
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            InvalidConfig::field(
                field,
                format!("file {} could not be read: {e}", path.display()),
            )
        })
    };
    let mut roots = Vec::new();
    if let Some(ca) = &config.ca_cert {
        let pem = read("ca_cert", ca)?;
        roots.extend(
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                InvalidConfig::field("ca_cert", format!("is not a PEM bundle: {e}"))
            })?,
        );
    }
    if let Some(dir) = &config.ca_path {
        // As the Go client's rootcerts.LoadCAPath: every file in the
        // directory is a PEM file of certificates.
        let entries = std::fs::read_dir(dir).map_err(|e| {
            InvalidConfig::field(
                "ca_path",
                format!("directory {} could not be read: {e}", dir.display()),
            )
        })?;
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            let pem = read("ca_path", &file)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    InvalidConfig::field(
                        "ca_path",
                        format!("file {} holds no PEM certificate", file.display()),
                    )
                })?;
            roots.extend(certs);
        }
    }
    if !roots.is_empty() {
        builder = builder.tls_certs_only(roots);
    }
    if let (Some(cert), Some(key)) = (&config.client_cert, &config.client_key) {
        let mut pem = read("client_cert", cert)?;
        pem.push(b'\n');
        pem.extend(read("client_key", key)?);
        let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
            InvalidConfig::field(
                "client_cert",
                format!("is not a PEM certificate and key: {e}"),
            )
        })?;
        builder = builder.identity(id);
    }
    if config.tls_skip_verify {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    Ok(builder)
}

/// Resolves the TLS server name to the agent's address, looked up again for
/// every new connection; other names resolve as usual.
struct AgentResolver {
    name: String,
    agent: Address,
}

impl reqwest::dns::Resolve for AgentResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let target = if name.as_str().eq_ignore_ascii_case(&self.name) {
            match &self.agent {
                Address::Socket(s) => {
                    let addr = *s;
                    return Box::pin(async move {
                        Ok(Box::new(std::iter::once(addr)) as reqwest::dns::Addrs)
                    });
                }
                Address::Host { host, port } => format!("{host}:{port}"),
            }
        } else {
            format!("{}:0", name.as_str())
        };
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(target).await?.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A host for a URL: IPv6 literals in brackets.
fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// reqwest is built without a bundled crypto provider (no aws-lc); use ring
/// unless the program installed one already.
#[cfg(feature = "consul-tls")]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_a_reserve_and_shares_turns_past_it() {
        let mut config = ConsulConfig::new("127.0.0.1:8500");
        config.max_connections = 16;
        config.shared_wait = Duration::from_millis(500);
        let client = ConsulClient::new(&config).unwrap();
        assert_eq!(client.max_connections(), 16);
        assert_eq!(
            client.blocking_connections(),
            14,
            "15 in flight, 1 kept for non-blocking calls"
        );
        let wait = Duration::from_secs(300);
        let guards: Vec<_> = (0..14).map(|_| client.watch_guard()).collect();
        assert_eq!(
            client.inner.budget.wait(wait),
            wait,
            "every watch has a turn"
        );
        let one_more = client.clone().watch_guard();
        assert_eq!(client.watches(), 15);
        assert_eq!(
            client.inner.budget.wait(wait),
            Duration::from_millis(500),
            "watches take turns"
        );
        drop((guards, one_more));
        assert_eq!(client.watches(), 0);

        config.max_connections = 1;
        let e = ConsulClient::new(&config).unwrap_err();
        assert_eq!(e.errors()[0].path(), "max_connections");
    }

    #[test]
    fn builds_urls_with_namespace_and_escapes() {
        let mut c = ConsulConfig::new("http://127.0.0.1:8500");
        c.namespace = Some("team-a".into());
        let client = ConsulClient::new(&c).unwrap();
        let u = client.url(&["v1", "health", "service", "web"]);
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:8500/v1/health/service/web?ns=team-a"
        );
        let client = ConsulClient::new(&ConsulConfig::new("localhost:8500")).unwrap();
        assert_eq!(client.base_url(), "http://localhost:8500/");
        assert_eq!(
            client.url(&["v1", "agent"]).as_str(),
            "http://localhost:8500/v1/agent"
        );
        let client = ConsulClient::new(&ConsulConfig::new("https://gw.example/consul")).unwrap();
        assert_eq!(
            client.url(&["v1", "health", "service", "a b"]).as_str(),
            "https://gw.example/consul/v1/health/service/a%20b"
        );
    }

    #[test]
    fn construction_never_resolves_the_agent() {
        // The old client resolved (blocking) and pinned the agent's address
        // here; a name that does not resolve yet must not fail the client.
        let mut c = ConsulConfig::new("https://agent.invalid:8501");
        c.tls_server_name = Some("server.dc1.consul:8501".into());
        let client = ConsulClient::new(&c).unwrap();
        assert_eq!(client.base_url(), "https://server.dc1.consul:8501/");
    }

    #[tokio::test]
    async fn the_agent_host_is_resolved_for_every_connection() {
        use reqwest::dns::Resolve;
        let r = AgentResolver {
            name: "server.dc1.consul".into(),
            agent: Address::host("localhost", 8501).unwrap(),
        };
        for _ in 0..2 {
            let name: reqwest::dns::Name = "server.dc1.consul".parse().unwrap();
            let addrs: Vec<_> = r.resolve(name).await.unwrap().collect();
            assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
            assert!(!addrs.is_empty());
        }
    }

    #[test]
    fn bad_config_is_rejected() {
        assert!(ConsulClient::new(&ConsulConfig::new("nope:nope")).is_err());
        let mut c = ConsulConfig::new("https://127.0.0.1:8501");
        c.ca_cert = Some("/nonexistent/ca.pem".into());
        let e = ConsulClient::new(&c).unwrap_err();
        assert_eq!(e.errors()[0].path(), "ca_cert");
    }

    #[test]
    fn queries_are_validated() {
        assert!(HealthQuery::new("web").tag("v1").validate().is_ok());
        assert_eq!(
            HealthQuery::new("w/eb").validate().unwrap_err().what(),
            "service name"
        );
        assert_eq!(
            HealthQuery::new("web")
                .tag("")
                .validate()
                .unwrap_err()
                .what(),
            "tag"
        );
    }
}
