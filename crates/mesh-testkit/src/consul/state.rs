//! The catalog the fake Consul keeps: instances, their checks, and the index.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Health, Instance};

/// The agent's own node: where services registered over HTTP live.
pub(crate) const AGENT_NODE: &str = "fake-node";
pub(crate) const AGENT_NODE_ADDRESS: &str = "127.0.0.1";
pub(crate) const DATACENTER: &str = "dc1";

#[derive(Debug, Clone)]
pub(crate) struct CheckState {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) status: Health,
    pub(crate) output: String,
    pub(crate) ttl: Option<Duration>,
    pub(crate) deregister_after: Option<Duration>,
    /// Bumped on every TTL report, so a stale expiry timer does nothing.
    pub(crate) generation: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct InstanceState {
    pub(crate) spec: Instance,
    pub(crate) checks: Vec<CheckState>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) index: u64,
    /// Keyed by (node, service id).
    pub(crate) instances: BTreeMap<(String, String), InstanceState>,
}

impl State {
    pub(crate) fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    pub(crate) fn find_check_mut(&mut self, check_id: &str) -> Option<(&mut InstanceState, usize)> {
        for inst in self.instances.values_mut() {
            if inst.spec.node != AGENT_NODE {
                continue;
            }
            if let Some(i) = inst.checks.iter().position(|c| c.id == check_id) {
                return Some((inst, i));
            }
        }
        None
    }

    /// The body of `/v1/health/service/:name`.
    pub(crate) fn health(&self, service: &str, passing: bool, tags: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for inst in self.instances.values() {
            let s = &inst.spec;
            if s.service != service || !tags.iter().all(|t| s.tags.contains(t)) {
                continue;
            }
            if passing && inst.checks.iter().any(|c| c.status != Health::Passing) {
                continue;
            }
            out.push(entry_json(inst));
        }
        serde_json::to_vec(&out).unwrap_or_else(|_| b"[]".to_vec())
    }
}

fn entry_json(inst: &InstanceState) -> Value {
    let s = &inst.spec;
    let mut checks = vec![json!({
        "Node": s.node, "CheckID": "serfHealth", "Name": "Serf Health Status",
        "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
        "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Type": "",
    })];
    for c in &inst.checks {
        checks.push(json!({
            "Node": s.node, "CheckID": c.id, "Name": c.name, "Status": c.status.as_str(),
            "Notes": "", "Output": c.output, "ServiceID": s.id, "ServiceName": s.service,
            "ServiceTags": s.tags, "Type": if c.ttl.is_some() { "ttl" } else { "" },
        }));
    }
    let svc_addr = if s.address.is_empty() {
        s.node_address.as_str()
    } else {
        s.address.as_str()
    };
    json!({
        "Node": {
            "ID": format!("00000000-0000-0000-0000-{:012x}", fnv(&s.node) & 0xffff_ffff_ffff),
            "Node": s.node, "Address": s.node_address, "Datacenter": DATACENTER,
            "TaggedAddresses": { "lan": s.node_address, "wan": s.node_address },
            "Meta": { "consul-network-segment": "" },
        },
        "Service": {
            "ID": s.id, "Service": s.service, "Tags": s.tags, "Address": s.address,
            "TaggedAddresses": {
                "lan_ipv4": { "Address": svc_addr, "Port": s.port },
                "wan_ipv4": { "Address": svc_addr, "Port": s.port },
            },
            "Meta": s.meta, "Port": s.port,
            "Weights": { "Passing": s.weights.0, "Warning": s.weights.1 },
            "EnableTagOverride": false, "Namespace": "default",
        },
        "Checks": checks,
    })
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A registration body, parsed leniently as Consul's agent does.
pub(crate) fn parse_registration(
    body: &[u8],
    existing: Option<&InstanceState>,
) -> Result<InstanceState, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("Request decode failed: {e}"))?;
    let name = v
        .get("Name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("Missing service name")?;
    let id = v
        .get("ID")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or(name);
    let port = v.get("Port").and_then(Value::as_u64).unwrap_or(0);
    let port = u16::try_from(port).map_err(|_| "Invalid Port".to_owned())?;
    let strings = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let meta: BTreeMap<String, String> = v
        .get("Meta")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let weights = v.get("Weights").map_or((1, 1), |w| {
        let get = |k| {
            w.get(k)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1)
        };
        (get("Passing"), get("Warning"))
    });
    let mut spec = Instance::new(
        name,
        id,
        v.get("Address").and_then(Value::as_str).unwrap_or(""),
        port,
    )
    .tags(strings("Tags"))
    .weights(weights.0, weights.1);
    spec.meta = meta;

    let mut defs: Vec<(String, &Value)> = Vec::new();
    if let Some(c) = v.get("Check").filter(|c| c.is_object()) {
        defs.push((format!("service:{id}"), c));
    }
    if let Some(cs) = v.get("Checks").and_then(Value::as_array) {
        for (i, c) in cs.iter().enumerate() {
            defs.push((format!("service:{id}:{}", i + 1), c));
        }
    }
    let mut checks = Vec::new();
    for (default_id, c) in defs {
        let check_id = c
            .get("CheckID")
            .or_else(|| c.get("ID"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map_or(default_id, str::to_owned);
        let ttl = match c.get("TTL").and_then(Value::as_str) {
            Some(t) => Some(parse_go_duration(t).ok_or_else(|| format!("Invalid TTL {t:?}"))?),
            None => None,
        };
        let kinds = [
            "HTTP",
            "TCP",
            "GRPC",
            "TTL",
            "Script",
            "Args",
            "AliasService",
            "H2PING",
            "UDP",
        ];
        if !kinds.iter().any(|k| c.get(*k).is_some()) {
            return Err("Invalid check: must have one of HTTP, TCP, GRPC or TTL".into());
        }
        if ttl.is_none()
            && c.get("Interval")
                .and_then(Value::as_str)
                .and_then(parse_go_duration)
                .is_none()
        {
            return Err(format!("Invalid check {check_id:?}: Interval is required"));
        }
        let deregister_after = c
            .get("DeregisterCriticalServiceAfter")
            .and_then(Value::as_str)
            .and_then(parse_go_duration);
        let initial = match c.get("Status").and_then(Value::as_str) {
            Some(s) => Health::parse(s).ok_or_else(|| format!("Invalid Status {s:?}"))?,
            // TTL checks start critical; the fake does not probe HTTP/TCP/gRPC
            // targets and reports them passing.
            None if ttl.is_some() => Health::Critical,
            None => Health::Passing,
        };
        // Re-registering keeps a known check's current status.
        let prior = existing.and_then(|e| e.checks.iter().find(|p| p.id == check_id));
        checks.push(CheckState {
            name: c
                .get("Name")
                .and_then(Value::as_str)
                .unwrap_or(&check_id)
                .to_owned(),
            status: prior.map_or(initial, |p| p.status),
            output: prior.map(|p| p.output.clone()).unwrap_or_default(),
            generation: prior.map_or(0, |p| p.generation + 1),
            id: check_id,
            ttl,
            deregister_after,
        });
    }
    Ok(InstanceState { spec, checks })
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
    fn registrations_follow_consul_defaults() {
        let r = parse_registration(
            br#"{"Name":"web","Port":80,"Tags":null,"Check":{"TTL":"10s"},"Checks":[{"CheckID":"h","HTTP":"http://x","Interval":"1s"}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(r.spec.id, "web");
        assert_eq!(r.checks[0].id, "service:web");
        assert_eq!(r.checks[0].status, Health::Critical);
        assert_eq!(r.checks[1].id, "h");
        assert_eq!(r.checks[1].status, Health::Passing);
        assert!(parse_registration(br#"{"Port":80}"#, None).is_err());
        assert!(parse_registration(br#"{"Name":"w","Check":{"HTTP":"http://x"}}"#, None).is_err());
        assert!(parse_registration(b"nope", None).is_err());
    }
}
