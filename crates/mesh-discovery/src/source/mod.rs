//! The one output shape every source shares.
//!
//! A source (Consul, DNS, static config, a channel) learns which instances of a
//! service exist and publishes them as an [`EndpointSet`]: an immutable,
//! versioned snapshot behind one `Arc`, sorted by [`EndpointKey`]. Consumers get
//! a [`Discovery`] handle, which offers
//!
//! - the latest snapshot without waiting ([`Discovery::current`]), cheap to
//!   clone and safe to keep while the source moves on;
//! - a `tokio::sync::watch` receiver of snapshots ([`Discovery::subscribe`]),
//!   for a router that rebuilds its balancer when the set changes;
//! - the source's health ([`Discovery::health`]): last success, last error,
//!   consecutive failures. Errors go *here*, to `tracing` and to metrics, never
//!   into the snapshot channel: a balancer only ever sees endpoint sets;
//! - a [`tower::discover::Discover`] stream of `Change<EndpointKey, Endpoint>`
//!   ([`Discovery::changes`]), for tower's p2c balancer or tonic's
//!   `Channel::balance_channel` (see [`crate::discover`]).
//!
//! A snapshot is published only when its *content* changes: a source that
//! learns the same endpoints again (a Consul wake-up without a change, a DNS
//! re-resolution with the same answer) publishes nothing, so consumers never
//! rebuild for nothing.
//!
//! # Example
//!
//! ```
//! use mesh_core::Endpoint;
//! use mesh_discovery::StaticSource;
//!
//! let discovery = StaticSource::new([
//!     Endpoint::from_address("10.0.0.2:80".parse()?),
//!     Endpoint::from_address("10.0.0.1:80".parse()?),
//! ])
//! .discovery();
//! let set = discovery.current();
//! assert_eq!(set.len(), 2);
//! // Sorted by key.
//! assert_eq!(set.endpoints()[0].key().as_str(), "10.0.0.1:80");
//! assert!(discovery.health().is_healthy());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::Arc;

use mesh_core::{Endpoint, EndpointKey};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::discover::Changes;
use crate::error::DiscoveryError;

// ===== EndpointSet =====

/// An immutable snapshot of a service's endpoints, sorted by key, with a
/// version that grows by one each time the source publishes a different set.
///
/// Cloning is a reference-count increment.
#[derive(Clone)]
pub struct EndpointSet {
    inner: Arc<SetInner>,
}

struct SetInner {
    version: u64,
    endpoints: Vec<Endpoint>,
}

impl EndpointSet {
    /// The empty set at version 0: what a source shows before its first answer.
    pub fn empty() -> Self {
        Self::with_version(0, Vec::new())
    }

    /// A set of these endpoints at version 0. Sorts them by key; when two share
    /// a key, the later one wins.
    pub fn new(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        Self::with_version(0, normalize(endpoints.into_iter().collect()))
    }

    fn with_version(version: u64, endpoints: Vec<Endpoint>) -> Self {
        Self {
            inner: Arc::new(SetInner { version, endpoints }),
        }
    }

    /// How many times the source published a different set before this one (0
    /// for the initial set).
    pub fn version(&self) -> u64 {
        self.inner.version
    }

    /// The endpoints, sorted by key, keys unique.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.inner.endpoints
    }

    /// Iterates over the endpoints in key order.
    pub fn iter(&self) -> std::slice::Iter<'_, Endpoint> {
        self.inner.endpoints.iter()
    }

    /// The number of endpoints.
    pub fn len(&self) -> usize {
        self.inner.endpoints.len()
    }

    /// True when there is no endpoint.
    pub fn is_empty(&self) -> bool {
        self.inner.endpoints.is_empty()
    }

    /// The endpoint with this key (binary search).
    pub fn get(&self, key: &EndpointKey) -> Option<&Endpoint> {
        self.inner
            .endpoints
            .binary_search_by(|e| e.key().cmp(key))
            .ok()
            .map(|i| &self.inner.endpoints[i])
    }

    /// True when both sets hold equal endpoints, whatever their versions.
    pub fn same_endpoints(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
            || (self.len() == other.len()
                && self
                    .iter()
                    .zip(other.iter())
                    .all(|(a, b)| a.ptr_eq(b) || a == b))
    }

    /// What changed from `self` to `newer`, in key order: endpoints removed,
    /// and endpoints inserted or replaced (a changed endpoint appears as an
    /// [`SetChange::Upsert`] with its new value).
    ///
    /// One merge pass over two sorted lists: O(n) and no hashing.
    pub fn diff(&self, newer: &Self) -> Vec<SetChange> {
        let (old, new) = (self.endpoints(), newer.endpoints());
        let mut out = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            match (old.get(i), new.get(j)) {
                (Some(a), Some(b)) => match a.key().cmp(b.key()) {
                    std::cmp::Ordering::Less => {
                        out.push(SetChange::Remove(a.key().clone()));
                        i += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        out.push(SetChange::Upsert(b.clone()));
                        j += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        if !(a.ptr_eq(b) || a == b) {
                            out.push(SetChange::Upsert(b.clone()));
                        }
                        i += 1;
                        j += 1;
                    }
                },
                (Some(a), None) => {
                    out.push(SetChange::Remove(a.key().clone()));
                    i += 1;
                }
                (None, Some(b)) => {
                    out.push(SetChange::Upsert(b.clone()));
                    j += 1;
                }
                (None, None) => break,
            }
        }
        out
    }
}

/// Sorts by key and keeps the last endpoint given for each key.
fn normalize(mut endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    // A stable sort keeps input order among equal keys, so "last wins" holds.
    endpoints.sort_by(|a, b| a.key().cmp(b.key()));
    let mut out: Vec<Endpoint> = Vec::with_capacity(endpoints.len());
    for ep in endpoints {
        match out.last_mut() {
            Some(last) if last.key() == ep.key() => *last = ep,
            _ => out.push(ep),
        }
    }
    out
}

impl Default for EndpointSet {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for EndpointSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointSet")
            .field("version", &self.version())
            .field("endpoints", &self.inner.endpoints)
            .finish()
    }
}

impl<'a> IntoIterator for &'a EndpointSet {
    type Item = &'a Endpoint;
    type IntoIter = std::slice::Iter<'a, Endpoint>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// One difference between two [`EndpointSet`]s, from [`EndpointSet::diff`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetChange {
    /// A new endpoint, or a new value (address, weight, tags, metadata) for an
    /// existing key.
    Upsert(Endpoint),
    /// The endpoint with this key is gone.
    Remove(EndpointKey),
}

// ===== SourceHealth =====

/// How a source is doing: when it last succeeded, what went wrong last, and
/// how many attempts in a row have failed.
///
/// While a source fails, its [`EndpointSet`] stays at the last known good set
/// (fail static); this is where the failures show.
#[derive(Debug, Clone, Default)]
pub struct SourceHealth {
    last_success: Option<Instant>,
    last_error: Option<Arc<DiscoveryError>>,
    last_error_at: Option<Instant>,
    consecutive_failures: u32,
    empty_sets_ignored: u64,
    answers_parsed: u64,
}

impl SourceHealth {
    /// When the source last got a good answer.
    pub fn last_success(&self) -> Option<Instant> {
        self.last_success
    }

    /// The most recent error, kept after recovery for diagnosis.
    pub fn last_error(&self) -> Option<&DiscoveryError> {
        self.last_error.as_deref()
    }

    /// When the most recent error happened.
    pub fn last_error_at(&self) -> Option<Instant> {
        self.last_error_at
    }

    /// Failed attempts since the last success (0 when the last attempt worked).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// How many answers with no healthy endpoint were not published because
    /// of [`EmptyPolicy::KeepLast`].
    pub fn empty_sets_ignored(&self) -> u64 {
        self.empty_sets_ignored
    }

    /// How many answers the source parsed (a Consul watch parses only
    /// answers whose index moved: an unchanged service costs no parse).
    pub fn answers_parsed(&self) -> u64 {
        self.answers_parsed
    }

    /// True when the source has succeeded and its last attempt did not fail.
    pub fn is_healthy(&self) -> bool {
        self.last_success.is_some() && self.consecutive_failures == 0
    }
}

// ===== Discovery =====

/// A handle on a running source: its snapshots and its health. Cheap to clone.
///
/// A background source (Consul, DNS) stops when every handle on it, and every
/// receiver taken from it, is dropped.
#[derive(Clone)]
pub struct Discovery {
    name: Arc<str>,
    endpoints: watch::Receiver<EndpointSet>,
    health: watch::Receiver<SourceHealth>,
}

impl Discovery {
    /// What the source watches, for logs (`consul:users`, `dns:users.local`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The latest endpoint set.
    pub fn current(&self) -> EndpointSet {
        self.endpoints.borrow().clone()
    }

    /// A receiver of endpoint sets: `changed().await` wakes when the set's
    /// content changes.
    pub fn subscribe(&self) -> watch::Receiver<EndpointSet> {
        self.endpoints.clone()
    }

    /// The source's health right now.
    pub fn health(&self) -> SourceHealth {
        self.health.borrow().clone()
    }

    /// A receiver of health updates (every success and every failure).
    pub fn subscribe_health(&self) -> watch::Receiver<SourceHealth> {
        self.health.clone()
    }

    /// Waits until the endpoint set satisfies `f` and returns it; returns
    /// `None` if the source stopped first.
    pub async fn wait_for(&self, mut f: impl FnMut(&EndpointSet) -> bool) -> Option<EndpointSet> {
        let mut rx = self.endpoints.clone();
        rx.wait_for(|s| f(s)).await.ok().map(|s| s.clone())
    }

    /// The endpoint set as a stream of changes, which implements
    /// [`tower::discover::Discover`]. The first poll yields the current set as
    /// insertions.
    pub fn changes(&self) -> Changes {
        Changes::new(self.endpoints.clone())
    }
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.endpoints.borrow();
        f.debug_struct("Discovery")
            .field("name", &self.name)
            .field("version", &set.version())
            .field("endpoints", &set.len())
            .finish()
    }
}

// ===== Publisher (for sources) =====

/// The writing side of a [`Discovery`]: what a source uses to publish sets and
/// report its health. Public so programs can write their own sources.
pub struct Publisher {
    name: Arc<str>,
    endpoints: watch::Sender<EndpointSet>,
    health: watch::Sender<SourceHealth>,
}

impl Publisher {
    /// A publisher and the [`Discovery`] that reads it, starting from `initial`.
    pub fn new(name: impl Into<Arc<str>>, initial: EndpointSet) -> (Self, Discovery) {
        let name = name.into();
        let (endpoints, erx) = watch::channel(initial);
        let (health, hrx) = watch::channel(SourceHealth::default());
        let discovery = Discovery {
            name: name.clone(),
            endpoints: erx,
            health: hrx,
        };
        (
            Self {
                name,
                endpoints,
                health,
            },
            discovery,
        )
    }

    /// The source's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another [`Discovery`] on this publisher.
    pub fn discovery(&self) -> Discovery {
        Discovery {
            name: self.name.clone(),
            endpoints: self.endpoints.subscribe(),
            health: self.health.subscribe(),
        }
    }

    /// The set consumers see now.
    pub fn current(&self) -> EndpointSet {
        self.endpoints.borrow().clone()
    }

    /// Publishes `endpoints` if their content differs from the current set.
    /// Returns the set now current and whether it is new.
    pub fn publish(&self, endpoints: Vec<Endpoint>) -> (EndpointSet, bool) {
        let endpoints = normalize(endpoints);
        let current = self.current();
        let candidate = EndpointSet::with_version(current.version() + 1, endpoints);
        if candidate.same_endpoints(&current) {
            return (current, false);
        }
        let (mut added, mut removed, mut updated) = (0usize, 0usize, 0usize);
        for change in current.diff(&candidate) {
            match change {
                SetChange::Remove(key) => {
                    removed += 1;
                    tracing::debug!(source = %self.name, endpoint = %key, "endpoint removed");
                }
                SetChange::Upsert(ep) => {
                    if current.get(ep.key()).is_some() {
                        updated += 1;
                    } else {
                        added += 1;
                    }
                    tracing::debug!(source = %self.name, endpoint = %ep.key(), address = %ep.address(), "endpoint added or updated");
                }
            }
        }
        tracing::info!(
            source = %self.name,
            version = candidate.version(),
            endpoints = candidate.len(),
            added,
            removed,
            updated,
            "endpoint set changed"
        );
        #[cfg(feature = "metrics")]
        {
            metrics::gauge!("mesh_discovery_endpoints", "source" => self.name.to_string())
                .set(candidate.len() as f64);
            metrics::counter!("mesh_discovery_updates_total", "source" => self.name.to_string())
                .increment(1);
        }
        self.endpoints.send_replace(candidate.clone());
        (candidate, true)
    }

    /// Records a good answer.
    pub fn record_success(&self) {
        let now = Instant::now();
        self.health.send_modify(|h| {
            if h.consecutive_failures > 0 {
                tracing::info!(source = %self.name, after_failures = h.consecutive_failures, "discovery recovered");
            }
            h.last_success = Some(now);
            h.consecutive_failures = 0;
        });
        #[cfg(feature = "metrics")]
        {
            // A wall-clock timestamp: staleness is `time() - this` in PromQL.
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            metrics::gauge!("mesh_discovery_last_success_timestamp_seconds", "source" => self.name.to_string())
                .set(unix);
            metrics::gauge!("mesh_discovery_fail_static", "source" => self.name.to_string())
                .set(0.0);
        }
    }

    /// Records an answer parsed (see [`SourceHealth::answers_parsed`]).
    pub fn record_parsed(&self) {
        self.health.send_modify(|h| h.answers_parsed += 1);
    }

    /// Records an answer with no healthy endpoint that was not published.
    pub fn record_empty_ignored(&self) {
        self.health.send_modify(|h| h.empty_sets_ignored += 1);
    }

    /// Records a failure: the endpoint set is left alone (fail static).
    pub fn record_failure(&self, error: DiscoveryError) {
        let now = Instant::now();
        let kept = self.endpoints.borrow().len();
        self.health.send_modify(|h| {
            h.consecutive_failures = h.consecutive_failures.saturating_add(1);
            tracing::warn!(
                source = %self.name,
                error = %error,
                consecutive_failures = h.consecutive_failures,
                endpoints_kept = kept,
                "discovery failed; keeping the last known endpoints"
            );
            h.last_error = Some(Arc::new(error));
            h.last_error_at = Some(now);
        });
        #[cfg(feature = "metrics")]
        {
            metrics::counter!("mesh_discovery_errors_total", "source" => self.name.to_string())
                .increment(1);
            // 1 while the last known set is served in spite of failures.
            metrics::gauge!("mesh_discovery_fail_static", "source" => self.name.to_string())
                .set(1.0);
        }
    }

    /// Resolves when every [`Discovery`] and receiver on this publisher is
    /// dropped: the source can stop.
    pub async fn closed(&self) {
        self.endpoints.closed().await;
    }

    /// True when nobody listens any more.
    pub fn is_closed(&self) -> bool {
        self.endpoints.is_closed()
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("name", &self.name)
            .field("version", &self.endpoints.borrow().version())
            .finish()
    }
}

/// What a source does when its answer has no healthy endpoint while it still
/// knows some.
///
/// An empty healthy set is more often a failure of health checking (a check
/// endpoint that broke in a deploy, a Consul agent that lost its node) than a
/// real scale-to-zero; sending no traffic at all turns it into a full outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum EmptyPolicy {
    /// Keep the last non-empty set (the default), and count it in
    /// [`SourceHealth::empty_sets_ignored`](crate::SourceHealth::empty_sets_ignored).
    #[default]
    KeepLast,
    /// Publish the empty set: callers fail fast with "no endpoint".
    Publish,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(key: &str, port: u16) -> Endpoint {
        Endpoint::new(key, format!("10.0.0.1:{port}").parse().unwrap())
    }

    #[test]
    fn sets_are_sorted_and_deduplicated() {
        let set = EndpointSet::new([ep("b", 1), ep("a", 2), ep("b", 3)]);
        let keys: Vec<_> = set.iter().map(|e| e.key().as_str().to_owned()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(set.get(&"b".into()).unwrap().address().port(), 3);
        assert!(set.get(&"c".into()).is_none());
    }

    #[test]
    fn diff_finds_adds_removes_and_updates() {
        let old = EndpointSet::new([ep("a", 1), ep("b", 1), ep("c", 1)]);
        let new = EndpointSet::new([ep("b", 1), ep("c", 2), ep("d", 1)]);
        assert_eq!(
            old.diff(&new),
            vec![
                SetChange::Remove("a".into()),
                SetChange::Upsert(ep("c", 2)),
                SetChange::Upsert(ep("d", 1)),
            ]
        );
        assert!(old.diff(&old).is_empty());
        assert_eq!(EndpointSet::empty().diff(&old).len(), 3);
    }

    #[tokio::test]
    async fn publisher_dedupes_on_content_and_versions() {
        let (p, d) = Publisher::new("t", EndpointSet::empty());
        let mut rx = d.subscribe();
        assert!(p.publish(vec![ep("a", 1)]).1);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert!(
            !p.publish(vec![ep("a", 1)]).1,
            "same content publishes nothing"
        );
        assert!(!rx.has_changed().unwrap());
        assert_eq!(d.current().version(), 1);
        assert!(p.publish(vec![]).1);
        assert_eq!(d.current().version(), 2);
    }

    #[tokio::test]
    async fn health_tracks_failures() {
        let (p, d) = Publisher::new("t", EndpointSet::empty());
        assert!(!d.health().is_healthy());
        p.record_success();
        assert!(d.health().is_healthy());
        p.record_failure(DiscoveryError::invalid_response("x"));
        p.record_failure(DiscoveryError::invalid_response("y"));
        let h = d.health();
        assert_eq!(h.consecutive_failures(), 2);
        assert!(h.last_error().unwrap().to_string().contains('y'));
        p.record_success();
        assert!(d.health().is_healthy());
        assert!(d.health().last_error().is_some());
    }

    proptest::proptest! {
        #[test]
        fn applying_a_diff_gives_the_newer_set(
            a in proptest::collection::vec((0u8..20, 0u16..3), 0..20),
            b in proptest::collection::vec((0u8..20, 0u16..3), 0..20),
        ) {
            let mk = |v: &Vec<(u8, u16)>| EndpointSet::new(v.iter().map(|(k, p)| ep(&k.to_string(), *p)));
            let (old, new) = (mk(&a), mk(&b));
            let mut map: std::collections::BTreeMap<EndpointKey, Endpoint> =
                old.iter().map(|e| (e.key().clone(), e.clone())).collect();
            for c in old.diff(&new) {
                match c {
                    SetChange::Remove(k) => { map.remove(&k); }
                    SetChange::Upsert(e) => { map.insert(e.key().clone(), e); }
                }
            }
            let got: Vec<Endpoint> = map.into_values().collect();
            proptest::prop_assert_eq!(got, new.endpoints().to_vec());
        }
    }
}
