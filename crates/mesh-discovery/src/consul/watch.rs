//! The blocking-query watch behind [`ConsulDiscovery`].
//!
//! One task per watched service runs this loop:
//!
//! 1. take a token from a token bucket: by default a burst of 2, then one
//!    query per 15 s, Consul's own guidance for blocking-query loops
//!    ("Implementation Details" of its blocking-query docs). An idle service
//!    costs one held query per `wait`; under churn (an instance flapping) the
//!    watch re-reads the whole answer at most about four times a minute
//!    instead of on every flap, and spurious wake-ups or a server that
//!    ignores `index` cannot make it spin. Lower
//!    [`min_interval`](WatchConfig::min_interval) for faster reaction at the
//!    servers' expense;
//! 2. `GET /v1/health/service/:name?passing&index=<last>&wait=<wait>` (no
//!    `index` on the first call and after an error: index 0 does not block);
//! 3. with [`Consistency::Stale`](super::Consistency::Stale) and a
//!    [`max_staleness`](WatchConfig::max_staleness): an answer from a server
//!    that knows no leader or last heard from it longer ago than that is
//!    asked again of the leader at once (as consul-template's `max_stale`);
//! 4. on an answer: an index lower than the last one resets to 0 (snapshot
//!    restore), an index of 0 is treated as 1 (never block on 0); a missing
//!    `X-Consul-Index`, an unparsable body, or an empty answer that Consul
//!    says it filtered by ACLs (`X-Consul-Results-Filtered-By-ACLs`: the
//!    token may not read the service) is an error; otherwise the endpoints of
//!    the routable instances (passing or warning, see
//!    [`parse_health`](super::parse_health)) are parsed against the set
//!    published last (unchanged instances keep their
//!    [`Endpoint`](mesh_core::Endpoint)) and published, and the
//!    [`Publisher`] drops them if their content did not change;
//! 5. on an error: keep the endpoints (fail static), record the error in the
//!    source's health, reset the index, and sleep a capped, jittered backoff.
//!
//! # Many watches, one agent
//!
//! Every watch over one [`ConsulClient`] (a `Mesh` has one) shares its
//! connection budget ([`ConsulConfig::max_connections`](super::ConsulConfig::max_connections),
//! default 64): Consul's agent refuses a client IP past
//! `limits.http_max_conns_per_client` (200 by default), and a watch refused
//! there would serve its last endpoints, silently stale. A request holds one
//! of the budget's permits while in flight, blocking queries one of the
//! permits set aside for them as well (53 of 64), so non-blocking calls
//! (first reads, registration, TTL updates) always find a connection, and a
//! startup of 1,000 watches opens at most the budget's connections at once.
//!
//! Up to that many watches each hold their own blocking query: a change
//! reaches its watch within one round trip. Past it the watches take turns
//! (the permits are handed out first come, first served), each blocking
//! query held at most [`shared_wait`](super::ConsulConfig::shared_wait)
//! (default 1 s). A change that lands while its watch waits for a turn is
//! answered at once on that turn (its index is behind), so nothing is lost;
//! on its own that would delay it by up to one rotation, about `watches /
//! blocking permits × shared_wait` (≈ 19 s at 1,000 watches with the
//! defaults, 10 s median measured).
//!
//! So while the watches take turns, the client also runs a **change feed**
//! (one per [`ConsulClient`], holding two of the blocking permits): a
//! blocking query on `/v1/health/state/critical` and one on
//! `/v1/health/state/warning`. Consul wakes each when a check in or leaving
//! that state is written, and answers with the checks in that state; the
//! feed diffs each answer with the last by (node, check ID, status,
//! service) and *kicks* the watches of every service whose checks appeared,
//! left or changed (a node check, such as `serfHealth` or node
//! maintenance, kicks them all). A kicked watch still waiting for its turn
//! drops out of the queue and reads its service at once without blocking
//! (no blocking permit needed), then goes back to taking turns; a kicked
//! watch that is holding its query gets its answer anyway (the service's
//! index moved) and its next read costs a round trip but no parse. A
//! change then reaches its idle client in one feed answer plus one read
//! instead of up to a rotation (`BENCHMARKS.md` has the figures at 1,000
//! services × 100 instances). The token bucket still applies: a second
//! change to one service within `min_interval` waits for its token.
//!
//! Why those queries: every status change has `critical` or `warning` on
//! one side, and both are served from the checks table's status index, so
//! the servers' work and the answer are the size of the unhealthy checks
//! (≈ 300 bytes with one instance down). `/v1/health/state/any` sends every
//! check of the datacenter on each change (29.5 MB at 100,000 checks);
//! `any` with `filter=Status != "passing"` is small on the wire but makes
//! the servers filter every check at each wake-up, per client;
//! `/v1/catalog/services` blocks on registrations only and says which
//! services exist, not which changed.
//!
//! What the feed cannot see is left to the turns (at most one rotation
//! late): an instance registered passing (no check, or checks registered
//! passing) or deregistered while passing, tag, address, weight or
//! metadata changes that move no check, watches of Connect endpoints
//! (`/v1/health/connect`: the proxies' checks carry the proxy's name) and
//! of another datacenter, and a change the feed missed while it was
//! failing (it keeps its last list and diffs the next answer with it, so
//! only changes undone meanwhile are missed). Checks register critical by
//! default, so a new instance usually shows up in the feed.
//! Lowering `shared_wait` still trades that staleness for queries to the
//! agent (`watches / shared_wait` per second at most, each answered from
//! the agent without parsing here).
//!
//! An answer whose index and body are those of the last parsed answer (a
//! turn that ran out its wait) is not parsed, and a turn that ran out its
//! wait costs no token of the bucket.

use std::time::Duration;

use mesh_core::backoff::Backoff;
use mesh_core::config::InvalidConfig;
use tokio::time::Instant;

use super::client::{Consistency, ConsulClient, HealthAnswer, HealthQuery};
use super::feed::KickGuard;
use super::health::parse_health_report;
use super::model::AddressChoice;
use crate::error::{DiscoveryError, ErrorKind};
pub use crate::source::EmptyPolicy;
use crate::source::{Discovery, EndpointSet, Publisher};

/// How a [`ConsulDiscovery`] watch behaves.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct WatchConfig {
    /// What to ask for.
    pub query: HealthQuery,
    /// How long Consul may hold each blocking query (`wait`). 1 s to 10 min;
    /// default 5 min (Consul's own default).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub wait: Duration,
    /// The token bucket's refill period: at most one query per period once the
    /// burst is spent. 1 ms to 60 s; default 15 s (Consul's guidance).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub min_interval: Duration,
    /// The token bucket's size: how many queries may go back to back. 1 to
    /// 100; default 2 (Consul's guidance).
    pub burst: u32,
    /// Which address of each instance to route to (the service's own by
    /// default, or a tagged address such as `wan_ipv4`).
    pub address: AddressChoice,
    /// With [`Consistency::Stale`]: the most a stale answer may lag behind
    /// the leader (`X-Consul-LastContact`) before it is asked of the leader
    /// instead. `None` (default): any stale answer is used. 1 ms to 10 min.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde::option"))]
    pub max_staleness: Option<Duration>,
    /// The delay between attempts after an error. Default 500 ms, ×2, capped
    /// at 60 s, full jitter.
    pub backoff: Backoff,
    /// What to do with an empty healthy set.
    pub empty: EmptyPolicy,
    /// Added to `wait + wait/16` to form the HTTP timeout of a blocking query.
    /// 0 to 60 s; default 5 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub timeout_margin: Duration,
}

/// The default refill period of the watch's token bucket.
pub(crate) const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(15);
/// The default size of the watch's token bucket.
pub(crate) const DEFAULT_BURST: u32 = 2;

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            query: HealthQuery::default(),
            wait: Duration::from_secs(300),
            min_interval: DEFAULT_MIN_INTERVAL,
            burst: DEFAULT_BURST,
            address: AddressChoice::Default,
            max_staleness: None,
            backoff: Backoff::new(Duration::from_millis(500), 2.0, Duration::from_secs(60)),
            empty: EmptyPolicy::KeepLast,
            timeout_margin: super::client::BLOCKING_MARGIN,
        }
    }
}

impl WatchConfig {
    /// Watches healthy instances of `service` with the defaults.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            query: HealthQuery::new(service),
            ..Self::default()
        }
    }

    /// Checks every field; errors name each bad one and the allowed range.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        if let Err(e) = self.query.validate() {
            errors.push("query", e.to_string());
        }
        let mut range = |name: &str, v: Duration, lo: Duration, hi: Duration| {
            if v < lo || v > hi {
                errors.push(
                    name,
                    format!("must be between {lo:?} and {hi:?}, got {v:?}"),
                );
            }
        };
        range(
            "wait",
            self.wait,
            Duration::from_secs(1),
            Duration::from_secs(600),
        );
        range(
            "min_interval",
            self.min_interval,
            Duration::from_millis(1),
            Duration::from_secs(60),
        );
        range(
            "timeout_margin",
            self.timeout_margin,
            Duration::ZERO,
            Duration::from_secs(60),
        );
        if let Some(m) = self.max_staleness {
            range(
                "max_staleness",
                m,
                Duration::from_millis(1),
                Duration::from_secs(600),
            );
        }
        if !(1..=100).contains(&self.burst) {
            errors.push(
                "burst",
                format!("must be between 1 and 100, got {}", self.burst),
            );
        }
        errors.merge_nested("backoff", self.backoff.validate());
        errors.into_result()
    }
}

/// Live discovery of a service's healthy instances through Consul blocking
/// queries. See the [crate docs](crate) for why it works the way it does.
#[derive(Debug)]
pub struct ConsulDiscovery(());

impl ConsulDiscovery {
    /// Validates `config` and starts watching on the current tokio runtime
    /// (call it from within one). The watch stops when every [`Discovery`]
    /// handle and receiver taken from it is dropped.
    pub fn spawn(client: ConsulClient, config: WatchConfig) -> Result<Discovery, InvalidConfig> {
        config.validate()?;
        let (publisher, discovery) = Publisher::new(
            format!("consul:{}", config.query.service),
            EndpointSet::empty(),
        );
        // Counted now, not when the task first runs: watches started in a
        // loop all count before the first one blocks.
        let counted = client.watch_guard();
        super::feed::ensure_running(&client);
        tokio::spawn(run(client, config, publisher, counted));
        Ok(discovery)
    }
}

/// A token bucket: `burst` tokens, one more every `period`.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    tokens: f64,
    burst: f64,
    period: Duration,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(burst: u32, period: Duration) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            period,
            last: Instant::now(),
        }
    }

    pub(crate) async fn acquire(&mut self) {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() / self.period.as_secs_f64();
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens < 1.0 {
            let wait = self.period.mul_f64(1.0 - self.tokens);
            tokio::time::sleep(wait).await;
            self.tokens = 1.0;
            self.last = Instant::now();
        }
        self.tokens -= 1.0;
    }
}

async fn run(
    client: ConsulClient,
    config: WatchConfig,
    publisher: Publisher,
    _counted: super::client::WatchGuard,
) {
    let mut index: u64 = 0;
    let mut backoff = config.backoff.session();
    let mut bucket = TokenBucket::new(config.burst, config.min_interval);
    let leader_query = HealthQuery {
        consistency: Consistency::Default,
        ..config.query.clone()
    };
    // A query held for (about) its whole wait that saw no change costs no
    // token: taking turns on a shared client must not eat the bucket.
    let mut free_turn = false;
    let mut last_digest: Option<u64> = None;
    // The change feed reads the agent's own datacenter and names services
    // by their checks: a Connect watch (proxies carry their own name) or
    // one of another datacenter is left to its turns.
    let kick = (config.query.datacenter.is_none() && !config.query.connect)
        .then(|| KickGuard::new(&client, &config.query.service));
    tracing::debug!(source = %publisher.name(), "consul watch started");
    loop {
        if !free_turn {
            bucket.acquire().await;
        }
        let wait = (index > 0).then_some(config.wait);
        let asked = Instant::now();
        let answer = tokio::select! {
            () = publisher.closed() => break,
            a = query(&client, &config, &leader_query, index, wait, kick.as_ref().map(KickGuard::notify)) => a,
        };
        let kicked = answer.as_ref().is_ok_and(|(_, k)| *k);
        let answer = answer.map(|(a, _)| a);
        // Same index and the same bytes as the answer parsed last: nothing
        // changed (Consul's blocking-query rules), so nothing is parsed and
        // an idle service costs its watch a hash of the body. (The bytes
        // are compared too so a body mangled on the way is still noticed.)
        let digest = answer.as_ref().ok().map(|a| body_digest(&a.body));
        if let Ok(a) = &answer
            && index > 0
            && a.index == Some(index)
            && digest == last_digest
        {
            // A kick the answer shows was already seen costs no token either.
            free_turn = kicked || asked.elapsed() >= config.wait.min(client.shared_wait()) / 2;
            backoff.reset();
            publisher.record_success();
            continue;
        }
        free_turn = false;
        last_digest = None;
        let parsed = answer.and_then(|a| {
            let new_index = a
                .index
                .ok_or_else(|| DiscoveryError::invalid_response("answer has no X-Consul-Index"))?;
            // Unchanged instances come back as the endpoints already
            // published: no allocation, and a pointer compare in `publish`.
            let (endpoints, report) =
                parse_health_report(&a.body, Some(&publisher.current()), config.address)?;
            publisher.record_parsed();
            if a.filtered_by_acls {
                if endpoints.is_empty() && report.unhealthy == 0 && report.skipped == 0 {
                    return Err(DiscoveryError::new(
                        ErrorKind::Denied,
                        format!(
                            "Consul filtered every instance of {:?} out by ACLs: the token may not read it (service:read, node:read)",
                            config.query.service
                        ),
                    ));
                }
                tracing::warn!(source = %publisher.name(), "Consul filtered some instances out by ACLs");
            }
            if report.unhealthy > 0 {
                tracing::debug!(source = %publisher.name(), unhealthy = report.unhealthy, "left out critical or maintenance instances");
            }
            Ok((new_index, endpoints, report))
        });
        match parsed {
            Ok((new_index, endpoints, report)) => {
                backoff.reset();
                if new_index < index {
                    tracing::info!(source = %publisher.name(), old = index, new = new_index, "consul index went backwards; resetting");
                    index = 0;
                } else {
                    index = new_index.max(1);
                }
                if let Some(e) = report.first_skip {
                    tracing::warn!(source = %publisher.name(), skipped = report.skipped, first = %e, "skipped instances with unusable addresses");
                }
                if endpoints.is_empty()
                    && config.empty == EmptyPolicy::KeepLast
                    && !publisher.current().is_empty()
                {
                    tracing::warn!(source = %publisher.name(), kept = publisher.current().len(), "no healthy instance; keeping the last known endpoints");
                    publisher.record_empty_ignored();
                } else {
                    publisher.publish(endpoints);
                }
                publisher.record_success();
                last_digest = digest;
            }
            Err(e) => {
                index = 0;
                let delay = backoff.next_delay();
                tracing::debug!(source = %publisher.name(), retry_in = ?delay, "consul watch backing off");
                publisher.record_failure(e);
                tokio::select! {
                    () = publisher.closed() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tracing::debug!(source = %publisher.name(), "consul watch stopped: nobody listens");
}

/// A digest of an answer's body, to tell an unchanged answer without
/// parsing it.
fn body_digest(body: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut h);
    h.finish()
}

/// One query; a stale answer older than `max_staleness` (or from a server
/// without a leader) is asked again of the leader.
async fn query(
    client: &ConsulClient,
    config: &WatchConfig,
    leader_query: &HealthQuery,
    index: u64,
    wait: Option<Duration>,
    kick: Option<&tokio::sync::Notify>,
) -> Result<(HealthAnswer, bool), DiscoveryError> {
    let (a, kicked) = client
        .health_service_kickable(&config.query, index, wait, config.timeout_margin, kick)
        .await?;
    let Some(max) = config.max_staleness else {
        return Ok((a, kicked));
    };
    if config.query.consistency != Consistency::Stale {
        return Ok((a, kicked));
    }
    let too_old = a.last_contact.is_some_and(|c| c > max);
    if !too_old && a.known_leader != Some(false) {
        return Ok((a, kicked));
    }
    tracing::debug!(service = %config.query.service, last_contact = ?a.last_contact, known_leader = ?a.known_leader, "stale answer too old; asking the leader");
    client
        .health_service_with_margin(leader_query, 0, None, config.timeout_margin)
        .await
        .map(|a| (a, kicked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_every_bad_field() {
        let mut c = WatchConfig::new("bad name");
        c.wait = Duration::from_secs(3600);
        c.burst = 0;
        c.backoff.base = Duration::ZERO;
        let e = c.validate().unwrap_err();
        let paths: Vec<_> = e.errors().iter().map(|f| f.path().to_owned()).collect();
        assert_eq!(paths, ["query", "wait", "burst", "backoff.base"], "{e}");
        WatchConfig::new("web").validate().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_bucket_is_consuls_burst_2_then_one_per_15s() {
        let c = WatchConfig::default();
        let mut b = TokenBucket::new(c.burst, c.min_interval);
        let start = Instant::now();
        b.acquire().await;
        b.acquire().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        b.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        for _ in 0..3 {
            b.acquire().await;
        }
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(60),
            "four a minute under churn"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_paces() {
        let mut b = TokenBucket::new(3, Duration::from_millis(100));
        let start = Instant::now();
        for _ in 0..3 {
            b.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        for _ in 0..10 {
            b.acquire().await;
        }
        let el = start.elapsed();
        assert!(
            el >= Duration::from_millis(999) && el <= Duration::from_millis(1010),
            "{el:?}"
        );
    }
}
