//! The fake's JSON: health entries in the shape Consul 1.16 sends, and
//! registration bodies read as Consul's agent reads them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Map, Value, json};

use super::state::{
    CheckKind, CheckState, DATACENTER, InstanceState, MIN_DEREGISTER_AFTER, State,
    parse_go_duration,
};
use super::{Health, Instance};

/// One entry of `/v1/health/service/:name`, with the fields a Consul 1.16
/// agent sends (`Kind`, `Proxy`, `Connect`, `PeerName`, raft indexes, ...).
pub(crate) fn entry(state: &State, inst: &InstanceState) -> Value {
    let s = &inst.spec;
    let checks: Vec<Value> = state
        .nodes
        .get(&s.node)
        .into_iter()
        .flat_map(|n| n.checks.iter())
        .map(|c| check_json(c, &s.node, None))
        .chain(inst.checks.iter().map(|c| check_json(c, &s.node, Some(s))))
        .collect();
    let node_address = state
        .nodes
        .get(&s.node)
        .map_or(s.node_address.as_str(), |n| n.address.as_str());
    let mut node_tagged = Map::new();
    node_tagged.insert("lan".into(), json!(node_address));
    node_tagged.insert(ip_key("lan", node_address), json!(node_address));
    node_tagged.insert("wan".into(), json!(node_address));
    node_tagged.insert(ip_key("wan", node_address), json!(node_address));
    let mut service = json!({
        "Kind": s.kind,
        "ID": s.id,
        "Service": s.service,
        "Tags": s.tags,
        "Address": s.address,
        "Meta": s.meta,
        "Port": s.port,
        "Weights": { "Passing": s.weights.0, "Warning": s.weights.1 },
        "EnableTagOverride": s.enable_tag_override,
        "Proxy": s.proxy.clone().unwrap_or_else(|| json!({"Mode": "", "MeshGateway": {}, "Expose": {}})),
        "Connect": if s.connect_native { json!({"Native": true}) } else { json!({}) },
        "PeerName": "",
        "CreateIndex": 10,
        "ModifyIndex": state.index_of(&s.service),
    });
    let tagged = service_tagged_addresses(s);
    if !tagged.is_empty()
        && let Some(obj) = service.as_object_mut()
    {
        obj.insert("TaggedAddresses".into(), Value::Object(tagged));
    }
    json!({
        "Node": {
            "ID": format!("{:08x}-0000-0000-0000-{:012x}", fnv(&s.node) >> 32, fnv(&s.node) & 0xffff_ffff_ffff),
            "Node": s.node,
            "Address": node_address,
            "Datacenter": DATACENTER,
            "TaggedAddresses": node_tagged,
            "Meta": { "consul-network-segment": "", "consul-version": "1.16.1" },
            "PeerName": "",
            "CreateIndex": 5,
            "ModifyIndex": 5,
        },
        "Service": service,
        "Checks": checks,
    })
}

fn ip_key(prefix: &str, addr: &str) -> String {
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("{prefix}_ipv6"),
        _ => format!("{prefix}_ipv4"),
    }
}

/// The registration's tagged addresses plus the `lan_ipv4`/`wan_ipv4` (or
/// `_ipv6`) pair Consul's agent adds for an explicit IP service address.
fn service_tagged_addresses(s: &Instance) -> Map<String, Value> {
    let mut out = Map::new();
    if let Ok(ip) = s.address.parse::<IpAddr>() {
        let suffix = if ip.is_ipv6() { "ipv6" } else { "ipv4" };
        for net in ["lan", "wan"] {
            out.insert(
                format!("{net}_{suffix}"),
                json!({ "Address": s.address, "Port": s.port }),
            );
        }
    }
    for (k, (a, p)) in &s.tagged_addresses {
        out.insert(k.clone(), json!({ "Address": a, "Port": p }));
    }
    out
}

/// One check as Consul sends it (in a health entry's `Checks`, and in
/// `/v1/health/state/:state`).
pub(crate) fn check_json(c: &CheckState, node: &str, service: Option<&Instance>) -> Value {
    let dur = |d: Option<std::time::Duration>| {
        d.map_or_else(String::new, |d| format!("{}ms", d.as_millis()))
    };
    json!({
        "Node": node,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status.as_str(),
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": service.map_or("", |s| s.id.as_str()),
        "ServiceName": service.map_or("", |s| s.service.as_str()),
        "ServiceTags": service.map_or(&[][..], |s| &s.tags[..]),
        "Type": c.kind.type_name(),
        "Interval": dur(c.interval),
        "Timeout": dur(c.timeout),
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": 10,
        "ModifyIndex": 10,
    })
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A registration body, read as Consul's agent does (`Name` required, `ID`
/// defaults to it, `Weights.Passing` at least 1, one check kind each,
/// `Interval` required for probed checks, `DeregisterCriticalServiceAfter`
/// raised to one minute).
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
    let weights = match v.get("Weights").filter(|w| !w.is_null()) {
        None => (1, 1),
        Some(w) => {
            let get = |k| {
                w.get(k)
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0)
            };
            if get("Passing") < 1 {
                return Err("Passing must be greater than 0".into());
            }
            (get("Passing"), get("Warning"))
        }
    };
    let mut spec = Instance::new(
        name,
        id,
        v.get("Address").and_then(Value::as_str).unwrap_or(""),
        port,
    )
    .tags(strings("Tags"))
    .weights(weights.0, weights.1);
    spec.meta = meta;
    spec.kind = v
        .get("Kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    spec.proxy = v.get("Proxy").filter(|p| p.is_object()).cloned();
    spec.connect_native = v
        .get("Connect")
        .and_then(|c| c.get("Native"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    spec.enable_tag_override = v
        .get("EnableTagOverride")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let Some(t) = v.get("TaggedAddresses").and_then(Value::as_object) {
        for (k, a) in t {
            let addr = a.get("Address").and_then(Value::as_str).unwrap_or("");
            let p = a.get("Port").and_then(Value::as_u64).unwrap_or(0);
            let p =
                u16::try_from(p).map_err(|_| format!("Invalid port in tagged address {k:?}"))?;
            spec.tagged_addresses
                .insert(k.clone(), (addr.to_owned(), p));
        }
    }

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
        checks.push(parse_check(c, default_id, existing)?);
    }
    // Maintenance mode survives a re-registration, as in Consul.
    if let Some(e) = existing {
        checks.extend(
            e.checks
                .iter()
                .filter(|c| c.kind == CheckKind::Maintenance)
                .cloned(),
        );
    }
    Ok(InstanceState { spec, checks })
}

fn parse_check(
    c: &Value,
    default_id: String,
    existing: Option<&InstanceState>,
) -> Result<CheckState, String> {
    let text = |k: &str| c.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    let duration = |k: &str| -> Result<Option<std::time::Duration>, String> {
        match text(k) {
            None => Ok(None),
            Some(t) => parse_go_duration(t)
                .map(Some)
                .ok_or_else(|| format!("Invalid {k} {t:?}")),
        }
    };
    let check_id = text("CheckID")
        .or_else(|| text("ID"))
        .map_or(default_id, str::to_owned);
    let interval = duration("Interval")?;
    let kind = if let Some(ttl) = duration("TTL")? {
        CheckKind::Ttl(ttl)
    } else if let Some(url) = text("HTTP") {
        let header = c
            .get("Header")
            .and_then(Value::as_object)
            .map(|h| {
                h.iter()
                    .flat_map(|(k, vs)| {
                        vs.as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(move |v| (k.clone(), v.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        CheckKind::Http {
            url: url.to_owned(),
            method: text("Method").unwrap_or("GET").to_owned(),
            header,
        }
    } else if let Some(addr) = text("TCP") {
        CheckKind::Tcp(addr.to_owned())
    } else if let Some(target) = text("GRPC") {
        CheckKind::Grpc(target.to_owned())
    } else {
        return Err("Invalid check: TTL, HTTP, TCP or GRPC must be set".into());
    };
    if !matches!(kind, CheckKind::Ttl(_)) && interval.is_none_or(|i| i.is_zero()) {
        return Err(format!("Invalid check {check_id:?}: Interval is required"));
    }
    let initial = match text("Status") {
        Some(s) => Health::parse(s).ok_or_else(|| format!("Invalid Status {s:?}"))?,
        // Every check starts critical: TTL checks until their first report,
        // probed checks until their first run.
        None => Health::Critical,
    };
    let count = |k: &str| {
        c.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0)
    };
    let name = text("Name").unwrap_or(&check_id).to_owned();
    let mut check = CheckState::new(check_id, name, kind, initial);
    check.interval = interval;
    check.timeout = duration("Timeout")?;
    check.notes = text("Notes").unwrap_or("").to_owned();
    check.deregister_after =
        duration("DeregisterCriticalServiceAfter")?.map(|d| d.max(MIN_DEREGISTER_AFTER));
    check.success_before_passing = count("SuccessBeforePassing");
    check.failures_before_critical = count("FailuresBeforeCritical");
    // Re-registering keeps a known check's current status.
    if let Some(prior) = existing.and_then(|e| e.checks.iter().find(|p| p.id == check.id)) {
        check.status = prior.status;
        check.output.clone_from(&prior.output);
        check.critical_since = prior.critical_since;
        check.generation = prior.generation + 1;
    }
    Ok(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_follow_consul_defaults() {
        let r = parse_registration(
            br#"{"Name":"web","Port":80,"Tags":null,"Check":{"TTL":"10s"},"Checks":[{"CheckID":"h","HTTP":"http://x","Interval":"1s","DeregisterCriticalServiceAfter":"10s"}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(r.spec.id, "web");
        assert_eq!(r.checks[0].id, "service:web");
        assert_eq!(r.checks[0].status, Health::Critical);
        assert_eq!(r.checks[1].id, "h");
        assert_eq!(
            r.checks[1].status,
            Health::Critical,
            "HTTP checks start critical until their first run"
        );
        assert_eq!(r.checks[1].deregister_after, Some(MIN_DEREGISTER_AFTER));
        assert!(parse_registration(br#"{"Port":80}"#, None).is_err());
        assert!(parse_registration(br#"{"Name":"w","Check":{"HTTP":"http://x"}}"#, None).is_err());
        assert!(
            parse_registration(br#"{"Name":"w","Weights":{"Passing":0,"Warning":1}}"#, None)
                .unwrap_err()
                .contains("Passing")
        );
        assert!(parse_registration(b"nope", None).is_err());
    }
}
