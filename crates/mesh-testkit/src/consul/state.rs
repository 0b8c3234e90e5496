//! The catalog the fake Consul keeps: nodes, instances, their checks, and the
//! indexes (one global, one per service).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::filter::Filter;
use super::{Health, Instance};

/// The agent's own node: where services registered over HTTP live.
pub(crate) const AGENT_NODE: &str = "fake-node";
pub(crate) const AGENT_NODE_ADDRESS: &str = "127.0.0.1";
pub(crate) const DATACENTER: &str = "dc1";
/// Consul raises `DeregisterCriticalServiceAfter` to this.
pub(crate) const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);
/// How often Consul's agent reaps critical services.
pub(crate) const REAP_INTERVAL: Duration = Duration::from_secs(30);
pub(crate) const NODE_MAINTENANCE: &str = "_node_maintenance";
pub(crate) const SERF_HEALTH: &str = "serfHealth";

pub(crate) fn service_maintenance_id(service_id: &str) -> String {
    format!("_service_maintenance:{service_id}")
}

/// What runs a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckKind {
    /// Reported by the instance (`/v1/agent/check/pass|warn|fail|update`).
    Ttl(Duration),
    /// Probed by the fake: `GET`/`Method` on an `http://` URL.
    Http {
        url: String,
        method: String,
        header: Vec<(String, String)>,
    },
    /// Probed by the fake: a TCP connection.
    Tcp(String),
    /// Probed by the fake as a TCP connection to `host:port` (the fake does
    /// not speak the gRPC health protocol).
    Grpc(String),
    /// Set by the test ([`FakeConsul::set_health`](super::FakeConsul::set_health)).
    Manual,
    /// A maintenance-mode check (always critical).
    Maintenance,
    /// The node's `serfHealth`.
    Serf,
}

impl CheckKind {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            CheckKind::Ttl(_) => "ttl",
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp(_) => "tcp",
            CheckKind::Grpc(_) => "grpc",
            CheckKind::Manual | CheckKind::Maintenance | CheckKind::Serf => "",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CheckState {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) status: Health,
    pub(crate) output: String,
    pub(crate) notes: String,
    pub(crate) kind: CheckKind,
    pub(crate) interval: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    /// Already raised to [`MIN_DEREGISTER_AFTER`].
    pub(crate) deregister_after: Option<Duration>,
    /// When the check last turned critical (for the reaper).
    pub(crate) critical_since: Option<Instant>,
    pub(crate) success_before_passing: u32,
    pub(crate) failures_before_critical: u32,
    pub(crate) successes: u32,
    pub(crate) failures: u32,
    /// Bumped on every report and re-registration, so a stale TTL timer or
    /// prober does nothing.
    pub(crate) generation: u64,
}

impl CheckState {
    pub(crate) fn new(id: String, name: String, kind: CheckKind, status: Health) -> Self {
        Self {
            id,
            name,
            status,
            output: String::new(),
            notes: String::new(),
            kind,
            interval: None,
            timeout: None,
            deregister_after: None,
            critical_since: (status == Health::Critical).then(Instant::now),
            success_before_passing: 0,
            failures_before_critical: 0,
            successes: 0,
            failures: 0,
            generation: 0,
        }
    }

    /// Sets the status; returns true when it changed.
    pub(crate) fn set(&mut self, status: Health, output: String) -> bool {
        let changed = self.status != status;
        if changed {
            self.critical_since = (status == Health::Critical).then(Instant::now);
        }
        self.status = status;
        self.output = output;
        changed
    }

    /// A probe result, through `SuccessBeforePassing` / `FailuresBeforeCritical`
    /// as Consul's status handler applies them. Returns true when the status
    /// changed.
    pub(crate) fn probed(&mut self, status: Health, output: String) -> bool {
        // Consul counts warning as a success here.
        if status == Health::Critical {
            self.failures += 1;
            self.successes = 0;
            if self.failures < self.failures_before_critical {
                self.output = output;
                return false;
            }
        } else {
            self.successes += 1;
            self.failures = 0;
            if self.successes < self.success_before_passing {
                self.output = output;
                return false;
            }
        }
        self.set(status, output)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct InstanceState {
    pub(crate) spec: Instance,
    pub(crate) checks: Vec<CheckState>,
}

#[derive(Debug, Clone)]
pub(crate) struct NodeState {
    pub(crate) address: String,
    /// `serfHealth` first, then `_node_maintenance` when enabled.
    pub(crate) checks: Vec<CheckState>,
}

impl NodeState {
    pub(crate) fn new(node: &str, address: &str) -> Self {
        let mut serf = CheckState::new(
            SERF_HEALTH.to_owned(),
            "Serf Health Status".to_owned(),
            CheckKind::Serf,
            Health::Passing,
        );
        serf.output = "Agent alive and reachable".to_owned();
        let _ = node;
        Self {
            address: address.to_owned(),
            checks: vec![serf],
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) index: u64,
    /// The index of the last write to each service (Consul's per-service
    /// index, which blocking health queries follow).
    pub(crate) service_index: BTreeMap<String, u64>,
    /// Services changed by the write in progress.
    pub(crate) touched: Vec<String>,
    /// Keyed by (node, service id).
    pub(crate) instances: BTreeMap<(String, String), InstanceState>,
    pub(crate) nodes: BTreeMap<String, NodeState>,
}

/// How an anonymous or full read sees the catalog.
pub(crate) struct HealthRead<'a> {
    pub(crate) service: &'a str,
    pub(crate) passing: bool,
    pub(crate) tags: &'a [String],
    pub(crate) filter: Option<&'a Filter>,
    /// `/v1/health/connect/:service`: Connect-native instances of the
    /// service and the proxies whose destination it is.
    pub(crate) connect: bool,
}

impl State {
    /// Marks `service` changed by the write in progress.
    pub(crate) fn touch(&mut self, service: &str) {
        if !self.touched.iter().any(|s| s == service) {
            self.touched.push(service.to_owned());
        }
    }

    /// Marks every service on `node` changed.
    pub(crate) fn touch_node(&mut self, node: &str) {
        let services: Vec<String> = self
            .instances
            .values()
            .filter(|i| i.spec.node == node)
            .map(|i| i.spec.service.clone())
            .collect();
        for s in services {
            self.touch(&s);
        }
    }

    /// Ends a write: raises the global index once and the index of every
    /// touched service to it. Returns the new index and the touched services,
    /// or `None` when nothing
    /// changed.
    pub(crate) fn commit(&mut self) -> Option<(u64, Vec<String>)> {
        if self.touched.is_empty() {
            return None;
        }
        self.index += 1;
        let touched = std::mem::take(&mut self.touched);
        for s in &touched {
            self.service_index.insert(s.clone(), self.index);
        }
        Some((self.index, touched))
    }

    /// The `X-Consul-Index` of a health read of `service`: its own index, or
    /// the global one for a service never seen.
    pub(crate) fn index_of(&self, service: &str) -> u64 {
        self.service_index
            .get(service)
            .copied()
            .unwrap_or(self.index)
    }

    pub(crate) fn ensure_node(&mut self, node: &str, address: &str) {
        self.nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeState::new(node, address));
    }

    pub(crate) fn insert(&mut self, inst: InstanceState) {
        self.ensure_node(&inst.spec.node, &inst.spec.node_address);
        self.touch(&inst.spec.service.clone());
        self.instances
            .insert((inst.spec.node.clone(), inst.spec.id.clone()), inst);
    }

    pub(crate) fn remove(&mut self, node: &str, id: &str) -> bool {
        match self.instances.remove(&(node.to_owned(), id.to_owned())) {
            Some(inst) => {
                self.touch(&inst.spec.service);
                true
            }
            None => false,
        }
    }

    /// A check of the agent's node, service or node level.
    pub(crate) fn find_check_mut(&mut self, check_id: &str) -> Option<(&mut CheckState, String)> {
        for inst in self.instances.values_mut() {
            if inst.spec.node != AGENT_NODE {
                continue;
            }
            if let Some(c) = inst.checks.iter_mut().find(|c| c.id == check_id) {
                return Some((c, inst.spec.service.clone()));
            }
        }
        None
    }

    /// Every check an entry of `inst` lists: its node's, then its own.
    pub(crate) fn checks_of<'a>(
        &'a self,
        inst: &'a InstanceState,
    ) -> impl Iterator<Item = &'a CheckState> {
        self.nodes
            .get(&inst.spec.node)
            .into_iter()
            .flat_map(|n| n.checks.iter())
            .chain(inst.checks.iter())
    }

    /// The worst status among `inst`'s node and service checks.
    pub(crate) fn aggregate(&self, inst: &InstanceState) -> Health {
        let mut worst = Health::Passing;
        for c in self.checks_of(inst) {
            match c.status {
                Health::Critical => return Health::Critical,
                Health::Warning => worst = Health::Warning,
                Health::Passing => {}
            }
        }
        worst
    }

    /// The entries of `/v1/health/service/:name`.
    pub(crate) fn health(&self, read: &HealthRead<'_>) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for inst in self.instances.values() {
            let s = &inst.spec;
            let wanted = if read.connect {
                (s.service == read.service && s.connect_native)
                    || (s.kind == "connect-proxy"
                        && s.proxy
                            .as_ref()
                            .and_then(|p| p.get("DestinationServiceName"))
                            .and_then(serde_json::Value::as_str)
                            == Some(read.service))
            } else {
                s.service == read.service
            };
            if !wanted || !read.tags.iter().all(|t| s.tags.contains(t)) {
                continue;
            }
            if read.passing && self.aggregate(inst) != Health::Passing {
                continue;
            }
            let entry = super::json::entry(self, inst);
            if read.filter.is_some_and(|f| !f.matches(&entry)) {
                continue;
            }
            out.push(entry);
        }
        out
    }

    /// The checks of `/v1/health/state/:state` (`None`: `any`), node checks
    /// and service checks, ordered by node then check ID as Consul's
    /// `checks` table is.
    pub(crate) fn checks_in(&self, state: Option<Health>) -> Vec<serde_json::Value> {
        let mut out: Vec<(&str, &str, serde_json::Value)> = Vec::new();
        for (node, n) in &self.nodes {
            for c in n
                .checks
                .iter()
                .filter(|c| state.is_none_or(|s| c.status == s))
            {
                out.push((node, &c.id, super::json::check_json(c, node, None)));
            }
        }
        for inst in self.instances.values() {
            for c in inst
                .checks
                .iter()
                .filter(|c| state.is_none_or(|s| c.status == s))
            {
                out.push((
                    &inst.spec.node,
                    &c.id,
                    super::json::check_json(c, &inst.spec.node, Some(&inst.spec)),
                ));
            }
        }
        out.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        out.into_iter().map(|(_, _, v)| v).collect()
    }

    /// Removes instances whose check with `DeregisterCriticalServiceAfter`
    /// has been critical at least that long (one pass of Consul's reaper).
    pub(crate) fn reap(&mut self, now: Instant) -> Vec<String> {
        let doomed: Vec<(String, String)> = self
            .instances
            .iter()
            .filter(|(_, inst)| {
                inst.checks
                    .iter()
                    .any(|c| match (c.deregister_after, c.critical_since) {
                        (Some(after), Some(since)) => {
                            c.status == Health::Critical && now.duration_since(since) >= after
                        }
                        _ => false,
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut ids = Vec::new();
        for (node, id) in doomed {
            if self.remove(&node, &id) {
                ids.push(id);
            }
        }
        ids
    }
}

/// Go's `time.ParseDuration` for what Consul clients send: `10s`, `1m30s`,
/// `1500ms`, `0.5s`, `2h`.
pub(crate) fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0.0_f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(
            parse_go_duration("1500ms"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn probes_count_successes_and_failures_before_flipping() {
        let mut c = CheckState::new(
            "c".into(),
            "c".into(),
            CheckKind::Tcp("x".into()),
            Health::Critical,
        );
        c.success_before_passing = 2;
        assert!(!c.probed(Health::Passing, String::new()));
        assert!(c.probed(Health::Passing, String::new()));
        assert_eq!(c.status, Health::Passing);
        c.failures_before_critical = 2;
        assert!(!c.probed(Health::Critical, String::new()));
        assert!(c.probed(Health::Critical, String::new()));
        assert!(c.critical_since.is_some());
    }
}
