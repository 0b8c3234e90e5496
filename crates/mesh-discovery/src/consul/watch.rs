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
//! answered at once on that turn (its index is behind), so nothing is lost,
//! only delayed: by up to one rotation, about `watches / blocking permits ×
//! shared_wait` (≈ 19 s at 1,000 watches with the defaults; 10 s median
//! measured, `BENCHMARKS.md`). Lowering `shared_wait`
//! trades that staleness for queries to the agent (`watches / shared_wait`
//! per second at most, each answered from the agent without parsing here).
//! A single blocking query on a "what changed" endpoint with non-blocking
//! refreshes of the changed services would make the delay one round trip;
//! Consul's HTTP API has no cheap per-service change feed, though
//! (`/v1/catalog/services` lists names without saying which changed,
//! `/v1/health/state/any` returns every check of the datacenter on each
//! change), so this crate takes turns instead.
//!
//! An answer whose index and body are those of the last parsed answer (a
//! turn that ran out its wait) is not parsed, and a turn that ran out its
//! wait costs no token of the bucket.

use std::time::Duration;

use mesh_core::backoff::Backoff;
use mesh_core::config::InvalidConfig;
use tokio::time::Instant;

use super::client::{Consistency, ConsulClient, HealthAnswer, HealthQuery};
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
    tracing::debug!(source = %publisher.name(), "consul watch started");
    loop {
        if !free_turn {
            bucket.acquire().await;
        }
        let wait = (index > 0).then_some(config.wait);
        let asked = Instant::now();
        let answer = tokio::select! {
            () = publisher.closed() => break,
            a = query(&client, &config, &leader_query, index, wait) => a,
        };
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
            free_turn = asked.elapsed() >= config.wait.min(client.shared_wait()) / 2;
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
) -> Result<HealthAnswer, DiscoveryError> {
    let a = client
        .health_service_with_margin(&config.query, index, wait, config.timeout_margin)
        .await?;
    let Some(max) = config.max_staleness else {
        return Ok(a);
    };
    if config.query.consistency != Consistency::Stale {
        return Ok(a);
    }
    let too_old = a.last_contact.is_some_and(|c| c > max);
    if !too_old && a.known_leader != Some(false) {
        return Ok(a);
    }
    tracing::debug!(service = %config.query.service, last_contact = ?a.last_contact, known_leader = ?a.known_leader, "stale answer too old; asking the leader");
    client
        .health_service_with_margin(leader_query, 0, None, config.timeout_margin)
        .await
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
