//! [`AdminSnapshot`]: every service and endpoint of a [`Mesh`](crate::Mesh),
//! its state and the reason for it, in-process (Envoy's `/clusters`).
//!
//! [`Mesh::admin`](crate::Mesh::admin) takes the snapshot: for each service
//! of the config, its discovery source's health (endpoints known, time since
//! the last good answer, fail-static in effect) and, for each stack built for
//! it, every endpoint's availability, breaker state, time until
//! re-admission, weight, requests in flight, latency estimate and recent
//! success rate. With the
//! `serde` feature it serializes (field names below are the JSON's);
//! [`AdminSnapshot::to_json`] (feature `json` or `admin`) renders it, and
//! the `admin` feature serves it as an axum `Router`
//! (`router`).
//!
//! Taking a snapshot locks nothing a call takes: it reads the balancers'
//! atomics and the discovery watches.

use std::time::Duration;

use mesh_balance::Balancer;
use mesh_core::AvailabilityState;
use tokio::time::Instant;

use crate::endpoint::BreakerRegistry;

/// Every service of a mesh, as [`Mesh::admin`](crate::Mesh::admin) saw them.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct AdminSnapshot {
    /// The services of the config, by name.
    pub services: Vec<ServiceSnapshot>,
}

/// One service.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct ServiceSnapshot {
    /// The service's name in the config.
    pub name: String,
    /// Its discovery source; `None` until its first stack was built (sources
    /// start lazily).
    pub discovery: Option<DiscoverySnapshot>,
    /// Whether more endpoints are unavailable than the ejection cap allows
    /// (panic mode: unavailable endpoints keep taking traffic).
    pub panic_mode: bool,
    /// Every endpoint of the service's stacks (one entry per endpoint and
    /// stack: a service used over two client kinds lists each endpoint twice).
    pub endpoints: Vec<EndpointSnapshot>,
}

/// The health of one service's discovery source.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct DiscoverySnapshot {
    /// Endpoints in the source's current set.
    pub endpoints: usize,
    /// The set's version (bumped on every change).
    pub version: u64,
    /// Milliseconds since the source's last good answer; `None` if it never
    /// answered (staleness).
    pub last_success_ms_ago: Option<u64>,
    /// Failures since the last good answer.
    pub consecutive_failures: u32,
    /// The last error, if the source is failing.
    pub last_error: Option<String>,
    /// True while the source fails and the last known endpoints are kept
    /// (fail static).
    pub fail_static: bool,
}

/// One endpoint of one service.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct EndpointSnapshot {
    /// The endpoint's discovery key (a Consul service id, or its address).
    pub key: String,
    /// Its address, `host:port`.
    pub address: String,
    /// `available`, `probing` (half-open: a few probes go through) or
    /// `ejected`.
    pub state: &'static str,
    /// Why it is in that state, in words.
    pub reason: String,
    /// Its breaker's state (`closed`, `open`, `half_open`, ...), when a
    /// breaker was built for it.
    pub breaker: Option<&'static str>,
    /// Milliseconds until it may take traffic again, while ejected.
    pub readmit_in_ms: Option<u64>,
    /// Its current weight.
    pub weight: u32,
    /// Requests in flight to it.
    pub in_flight: u32,
    /// The balancer's peak-EWMA latency estimate, in milliseconds.
    pub ewma_latency_ms: f64,
    /// Whether a pick may choose it now (not ejected, weight above zero).
    pub eligible: bool,
    /// Its success rate over the outlier detector's last interval (1 s by
    /// default) that had calls; `None` before one or with outlier detection
    /// off.
    pub recent_success_rate: Option<f64>,
}

/// What [`Mesh::admin`](crate::Mesh::admin) reads for one stack.
#[derive(Clone, Debug)]
pub(crate) struct StackView {
    pub(crate) balancer: Balancer,
    pub(crate) breakers: BreakerRegistry,
}

impl std::fmt::Debug for BreakerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BreakerRegistry(..)")
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn discovery(d: &mesh_discovery::Discovery, now: Instant) -> DiscoverySnapshot {
    let health = d.health();
    let set = d.current();
    let failing = health.consecutive_failures() > 0;
    DiscoverySnapshot {
        endpoints: set.len(),
        version: set.version(),
        last_success_ms_ago: health
            .last_success()
            .map(|t| millis(now.saturating_duration_since(t))),
        consecutive_failures: health.consecutive_failures(),
        last_error: failing
            .then(|| health.last_error().map(ToString::to_string))
            .flatten(),
        fail_static: failing && !set.is_empty(),
    }
}

pub(crate) fn endpoints(view: &StackView, now: Instant, out: &mut Vec<EndpointSnapshot>) -> bool {
    let balancer = &view.balancer;
    for endpoint in balancer.endpoints() {
        let key = endpoint.key();
        let Some(stats) = balancer.endpoint_stats(key) else {
            continue; // removed since `endpoints()`
        };
        let availability = balancer.availability(key);
        let breaker = view.breakers.get(key);
        let state = availability
            .as_ref()
            .map_or(AvailabilityState::Available, mesh_core::Availability::state);
        let until = availability
            .as_ref()
            .and_then(mesh_core::Availability::unavailable_until)
            .filter(|&t| t > now);
        let breaker_state = breaker.as_ref().map(|b| b.state().as_str());
        let (state_str, reason) = match state {
            AvailabilityState::Available if stats.weight == 0 => {
                ("available", "weight 0: takes no traffic".to_owned())
            }
            AvailabilityState::Available => ("available", "healthy".to_owned()),
            AvailabilityState::Probing => (
                "probing",
                "half-open: a probe decides whether it is re-admitted".to_owned(),
            ),
            AvailabilityState::Unavailable => (
                "ejected",
                match breaker_state {
                    Some(s @ ("open" | "forced_open" | "half_open")) => {
                        format!("breaker {s}: recent failures tripped it")
                    }
                    _ => "ejected by the balancer's outlier detection (success rate)".to_owned(),
                },
            ),
        };
        out.push(EndpointSnapshot {
            key: key.to_string(),
            address: endpoint.address().to_string(),
            state: state_str,
            reason,
            breaker: breaker_state,
            readmit_in_ms: until.map(|t| millis(t - now)),
            weight: stats.weight,
            in_flight: stats.in_flight,
            ewma_latency_ms: stats.latency_estimate.as_secs_f64() * 1e3,
            eligible: stats.eligible,
            recent_success_rate: stats.recent_success_rate,
        });
    }
    balancer.stats().panic
}

impl AdminSnapshot {
    /// The snapshot as pretty-printed JSON.
    #[cfg(any(feature = "json", feature = "admin"))]
    pub fn to_json(&self) -> String {
        // Plain data (strings, numbers, options): serializing cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The service `name`, if the config has it.
    pub fn service(&self, name: &str) -> Option<&ServiceSnapshot> {
        self.services.iter().find(|s| s.name == name)
    }
}

impl ServiceSnapshot {
    /// The endpoint at `address` (`host:port`), if the service has it.
    pub fn endpoint(&self, address: &str) -> Option<&EndpointSnapshot> {
        self.endpoints.iter().find(|e| e.address == address)
    }
}

/// How often a [`Mesh`](crate::Mesh) copies its endpoints' in-flight
/// count, weight and latency estimate into gauges (feature `metrics`):
/// sampled from the snapshot, so calls pay nothing for them.
#[cfg(feature = "metrics")]
pub const ENDPOINT_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// The (service, endpoint address) pairs whose gauges are set.
#[cfg(feature = "metrics")]
pub(crate) type GaugedEndpoints = std::collections::HashSet<(String, String)>;

/// Sets `mesh_endpoint_in_flight`, `mesh_endpoint_weight` and
/// `mesh_endpoint_latency_seconds` `{service, endpoint}` from `snapshot`
/// (in flight summed over a service's stacks), and zeroes those of the
/// endpoints in `before` that are gone. Returns the pairs set now.
#[cfg(feature = "metrics")]
pub(crate) fn record_endpoint_gauges(
    snapshot: &AdminSnapshot,
    before: &GaugedEndpoints,
) -> GaugedEndpoints {
    let mut now: std::collections::HashMap<(String, String), (u64, u32, f64)> =
        std::collections::HashMap::new();
    for service in &snapshot.services {
        for e in &service.endpoints {
            let entry = now
                .entry((service.name.clone(), e.address.clone()))
                .or_default();
            entry.0 += u64::from(e.in_flight);
            entry.1 = entry.1.max(e.weight);
            entry.2 = entry.2.max(e.ewma_latency_ms);
        }
    }
    let set = |(service, endpoint): &(String, String), (in_flight, weight, ms): (u64, u32, f64)| {
        let labels = [("service", service.clone()), ("endpoint", endpoint.clone())];
        metrics::gauge!("mesh_endpoint_in_flight", &labels).set(in_flight as f64);
        metrics::gauge!("mesh_endpoint_weight", &labels).set(f64::from(weight));
        metrics::gauge!("mesh_endpoint_latency_seconds", &labels).set(ms / 1000.0);
    };
    for (key, values) in &now {
        set(key, *values);
    }
    for gone in before.iter().filter(|key| !now.contains_key(*key)) {
        set(gone, (0, 0, 0.0));
    }
    now.into_keys().collect()
}

/// An axum `Router` serving the mesh's [`AdminSnapshot`] as JSON at
/// `GET /admin` (feature `admin`). Serve it on a loopback or otherwise
/// private address: it lists every endpoint of every service.
///
/// ```no_run
/// # async fn run(mesh: mesh_stack::Mesh) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9901").await?;
/// axum::serve(listener, mesh_stack::admin::router(mesh)).await
/// # }
/// ```
#[cfg(feature = "admin")]
pub fn router(mesh: crate::Mesh) -> axum::Router {
    axum::Router::new().route(
        "/admin",
        axum::routing::get(move || {
            let json = mesh.admin().to_json();
            async move { ([(http::header::CONTENT_TYPE, "application/json")], json) }
        }),
    )
}
