//! A `/v1/health/service/:service` body to endpoints: which instances get
//! traffic, at which address and weight.
//!
//! # Which instances are endpoints
//!
//! Consul DNS serves an instance while its checks (its node's included) are
//! passing or warning, and so do we, whether or not the watch asked for
//! `?passing`:
//!
//! - every check passing: an endpoint weighted `Weights.Passing`;
//! - some check warning: an endpoint weighted `Weights.Warning`;
//! - some check critical (the service's own, a maintenance check
//!   `_service_maintenance:<id>` / `_node_maintenance`, or a dead node's
//!   `serfHealth`): not an endpoint.
//!
//! # Cost
//!
//! The body is read once by serde_json into the typed, borrowing
//! [`HealthEntry`](super::HealthEntry) model: strings are borrowed from the
//! body, and the fields discovery does not use (about 90 % of a real
//! answer) are skipped without being stored. With the previous snapshot at
//! hand ([`parse_health_update`]), an instance that did not change comes back
//! as the *same* [`Endpoint`] (a reference-count increment, no allocation),
//! so publishing and diffing it costs a pointer comparison; new endpoints
//! share tags and metadata with their neighbours when equal.
//!
//! This replaced a hand-written, validating JSON reader (~1,800 lines) that
//! was about six times faster: in one run of
//! `cargo bench -p mesh-bench --bench discovery` on the shared 2-core
//! machine under heavy load, parse + snapshot + diff of 10,000 instances took
//! 106 to 119 ms here against 17 to 21 ms for the reader, with a
//! `serde_json::Value` parse of the same body at 484 ms (139 ms when the
//! machine is quiet). Measured again with the machine idle (load average
//! 0.5, nothing else running): parse + snapshot + diff 45.7 ms, update +
//! snapshot + diff 41.8 ms (the `Value` baseline 190 ms in the same run),
//! within the 50 ms budget a watch has at the few updates a minute its rate
//! limit allows; one model that the tests, the fuzz target and users share
//! wins over the faster second parser.

use std::cmp::Ordering;
use std::fmt;

use mesh_core::{Endpoint, EndpointKey};

use super::model::{AddressChoice, HealthEntry};
use crate::error::{DiscoveryError, ErrorKind};
use crate::source::EndpointSet;

/// A health answer that is not the JSON Consul sends: what was wrong and
/// where.
///
/// The source of a [`DiscoveryError`] of kind [`Decode`](ErrorKind::Decode);
/// find it with `downcast_ref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidJson {
    line: usize,
    column: usize,
    reason: String,
}

impl InvalidJson {
    fn from_serde(e: &serde_json::Error) -> Self {
        let full = e.to_string();
        // serde_json appends " at line L column C"; keep the reason alone.
        let reason = match full.rfind(" at line ") {
            Some(at) if e.line() > 0 => full[..at].to_owned(),
            _ => full,
        };
        Self {
            line: e.line(),
            column: e.column(),
            reason,
        }
    }

    /// The line (from 1) where reading stopped.
    pub fn line(&self) -> usize {
        self.line
    }

    /// The column (from 1) where reading stopped.
    pub fn column(&self) -> usize {
        self.column
    }

    /// What was wrong (``missing field `Node` ``, `trailing characters`, ...).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for InvalidJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.reason, self.line, self.column
        )
    }
}

impl std::error::Error for InvalidJson {}

/// What a parse left out, for the watch's logs.
#[derive(Debug, Default)]
pub(crate) struct ParseReport {
    /// Instances with an unusable address.
    pub(crate) skipped: usize,
    pub(crate) first_skip: Option<DiscoveryError>,
    /// Instances listed but not routable (critical, maintenance, dead node).
    pub(crate) unhealthy: usize,
}

/// Parses a `/v1/health/service/:service` body into the endpoints of its
/// routable instances.
///
/// Consul DNS serves an instance while its checks (its node's included) are
/// passing or warning, and so does this, whether or not the query asked for
/// `?passing`:
///
/// - every check passing: an endpoint weighted `Weights.Passing`;
/// - some check warning: an endpoint weighted `Weights.Warning`;
/// - some check critical (the service's own, a maintenance check
///   `_service_maintenance:<id>` / `_node_maintenance`, or a dead node's
///   `serfHealth`): not an endpoint.
///
/// An instance with an unusable address (empty, port 0, not a host name) is
/// skipped rather than failing the whole answer; a body that is not the
/// expected JSON is an [`ErrorKind::Decode`] error whose source is an
/// [`InvalidJson`] naming what was wrong and where.
///
/// # Example
///
/// ```
/// use mesh_discovery::consul::parse_health;
///
/// let body = br#"[{"Node": {"Node": "n1", "Address": "10.0.0.1"},
///                  "Service": {"ID": "web-1", "Service": "web", "Address": "", "Port": 8080},
///                  "Checks": [{"CheckID": "serfHealth", "Status": "passing"}]},
///                 {"Node": {"Node": "n2", "Address": "10.0.0.2"},
///                  "Service": {"ID": "web-1", "Service": "web", "Port": 8080},
///                  "Checks": [{"CheckID": "serfHealth", "Status": "critical"}]}]"#;
/// let endpoints = parse_health(body)?;
/// assert_eq!(endpoints.len(), 1, "n2 is dead");
/// assert_eq!(endpoints[0].key().as_str(), "n1/web-1");
/// assert_eq!(endpoints[0].address().to_string(), "10.0.0.1:8080");
///
/// let err = parse_health(br#"[{"Node": {"Node": "n1"}"#).unwrap_err();
/// assert_eq!(err.kind(), mesh_discovery::ErrorKind::Decode);
/// # Ok::<(), mesh_discovery::DiscoveryError>(())
/// ```
pub fn parse_health(body: &[u8]) -> Result<Vec<Endpoint>, DiscoveryError> {
    parse_health_report(body, None, AddressChoice::Default).map(|(e, _)| e)
}

/// Like [`parse_health`], but an instance equal to one in `previous` (same
/// key, address, weight, tags and metadata) comes back as that very
/// [`Endpoint`], so [`EndpointSet::diff`] and the publisher's "did anything
/// change" test see it unchanged by pointer, and nothing is allocated for it.
///
/// This is what [`ConsulDiscovery`](super::ConsulDiscovery) calls with the set
/// it published last.
///
/// # Example
///
/// ```
/// use mesh_discovery::EndpointSet;
/// use mesh_discovery::consul::{parse_health, parse_health_update};
///
/// let body = br#"[{"Node": {"Node": "n1", "Address": "10.0.0.1"},
///                  "Service": {"ID": "web-1", "Service": "web", "Port": 8080}}]"#;
/// let previous = EndpointSet::new(parse_health(body)?);
/// let again = parse_health_update(body, &previous)?;
/// assert!(again[0].ptr_eq(&previous.endpoints()[0]));
/// # Ok::<(), mesh_discovery::DiscoveryError>(())
/// ```
pub fn parse_health_update(
    body: &[u8],
    previous: &EndpointSet,
) -> Result<Vec<Endpoint>, DiscoveryError> {
    parse_health_report(body, Some(previous), AddressChoice::Default).map(|(e, _)| e)
}

/// [`parse_health_update`] (or [`parse_health`] without `previous`) with the
/// address each endpoint gets chosen by `choice` (a tagged address such as
/// `wan_ipv4` instead of the service's own).
///
/// ```
/// use mesh_discovery::consul::{AddressChoice, parse_health_with};
///
/// let body = br#"[{"Node": {"Node": "n1", "Address": "10.0.0.1"},
///                  "Service": {"ID": "web-1", "Port": 8080, "Address": "10.0.0.1",
///                              "TaggedAddresses": {"wan_ipv4": {"Address": "203.0.113.7", "Port": 443}}}}]"#;
/// let endpoints = parse_health_with(body, None, AddressChoice::WanIpv4)?;
/// assert_eq!(endpoints[0].address().to_string(), "203.0.113.7:443");
/// # Ok::<(), mesh_discovery::DiscoveryError>(())
/// ```
pub fn parse_health_with(
    body: &[u8],
    previous: Option<&EndpointSet>,
    choice: AddressChoice,
) -> Result<Vec<Endpoint>, DiscoveryError> {
    parse_health_report(body, previous, choice).map(|(e, _)| e)
}

pub(crate) fn parse_health_report(
    body: &[u8],
    previous: Option<&EndpointSet>,
    choice: AddressChoice,
) -> Result<(Vec<Endpoint>, ParseReport), DiscoveryError> {
    let entries: Vec<HealthEntry<'_>> = serde_json::from_slice(body).map_err(|e| {
        DiscoveryError::new(ErrorKind::Decode, "health response is not valid JSON")
            .with_source(InvalidJson::from_serde(&e))
    })?;
    let previous = previous.map_or(&[][..], EndpointSet::endpoints);
    let mut out: Vec<Endpoint> = Vec::with_capacity(entries.len());
    let mut report = ParseReport::default();
    let mut cursor = 0;
    let mut key = String::new();
    for entry in &entries {
        if !entry.is_routable() {
            report.unhealthy += 1;
            continue;
        }
        let address = match entry.address(choice) {
            Ok(a) => a,
            Err(e) => {
                report.skipped += 1;
                report.first_skip.get_or_insert(e);
                continue;
            }
        };
        let (node, id) = (&*entry.node.node, &*entry.service.id);
        let weight = entry.weight();
        let prev = find_previous(previous, &mut cursor, node, id);
        if let Some(p) = prev
            && p.address() == &address
            && p.weight() == weight
            && same_tags(entry, p)
            && same_meta(entry, p)
        {
            out.push(p.clone());
            continue;
        }
        key.clear();
        key.push_str(node);
        key.push('/');
        key.push_str(id);
        let endpoint = Endpoint::new(EndpointKey::new(key.as_str()), address).with_weight(weight);
        // Instances of one service mostly carry the same tags and metadata:
        // share them with this key's previous endpoint or, failing that, the
        // one built just before, instead of allocating a copy per instance.
        let template = prev.or(out.last());
        let endpoint = match template {
            Some(t) if same_tags(entry, t) => endpoint.with_tags_of(t),
            _ => endpoint.with_tags(entry.service.tags.iter().map(|t| String::from(&**t))),
        };
        let endpoint = match template {
            Some(t) if same_meta(entry, t) => endpoint.with_metadata_of(t),
            _ if entry.service.meta.is_empty() => endpoint,
            _ => endpoint.with_metadata(
                entry
                    .service
                    .meta
                    .iter()
                    .map(|(k, v)| (String::from(&**k), String::from(&**v))),
            ),
        };
        out.push(endpoint);
    }
    Ok((out, report))
}

fn same_tags(entry: &HealthEntry<'_>, ep: &Endpoint) -> bool {
    let tags = &entry.service.tags;
    ep.tags().len() == tags.len() && ep.tags().iter().zip(tags).all(|(a, b)| a == b)
}

fn same_meta(entry: &HealthEntry<'_>, ep: &Endpoint) -> bool {
    let meta = &entry.service.meta;
    // Both maps are sorted and unique.
    ep.metadata().len() == meta.len()
        && ep
            .metadata()
            .iter()
            .zip(meta)
            .all(|((k, v), (bk, bv))| k == bk && v == bv)
}

/// Compares an endpoint key with `node/id` without building it.
fn cmp_key(key: &str, node: &str, id: &str) -> Ordering {
    let (key, node) = (key.as_bytes(), node.as_bytes());
    let head = &key[..key.len().min(node.len())];
    match head.cmp(node) {
        Ordering::Equal if key.len() == node.len() => Ordering::Less,
        Ordering::Equal => key[node.len()]
            .cmp(&b'/')
            .then_with(|| key[node.len() + 1..].cmp(id.as_bytes())),
        other => other,
    }
}

/// The endpoint of `previous` keyed `node/id`: first where the last one was
/// found (Consul sends entries in a stable order), else by binary search.
fn find_previous<'p>(
    previous: &'p [Endpoint],
    cursor: &mut usize,
    node: &str,
    id: &str,
) -> Option<&'p Endpoint> {
    if let Some(ep) = previous.get(*cursor)
        && cmp_key(ep.key().as_str(), node, id) == Ordering::Equal
    {
        *cursor += 1;
        return Some(ep);
    }
    let at = previous
        .binary_search_by(|ep| cmp_key(ep.key().as_str(), node, id))
        .ok()?;
    *cursor = at + 1;
    Some(&previous[at])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_consul_health_entries_leniently() {
        let body = br#"[
          {"Node":{"ID":"x","Node":"n1","Address":"10.0.0.1","Datacenter":"dc1","TaggedAddresses":null,"Meta":null},
           "Service":{"ID":"web-1","Service":"web","Tags":null,"Address":"","Meta":null,"Port":8080,
                      "TaggedAddresses":{"lan":{"address":"10.0.0.1","port":8080}},"Weights":{"Passing":3,"Warning":1}},
           "Checks":[{"CheckID":"serfHealth","Status":"passing","ServiceID":""}]},
          {"Node":{"Node":"n2","Address":"10.0.0.2"},
           "Service":{"ID":"web-1","Service":"web","Tags":["v2"],"Address":"web.internal","Meta":{"zone":"a"},"Port":9090,
                      "TaggedAddresses":{"lan":{"Address":"10.0.0.2","Port":9090}}},
           "Checks":[{"CheckID":"c","Status":"warning","ServiceID":"web-1"}]}
        ]"#;
        let eps = parse_health(body).unwrap();
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].key().as_str(), "n1/web-1");
        assert_eq!(
            eps[0].address().to_string(),
            "10.0.0.1:8080",
            "node address fallback"
        );
        assert_eq!(eps[0].weight(), 3);
        assert!(eps[0].tags().is_empty() && eps[0].metadata().is_empty());
        assert_eq!(
            eps[1].key().as_str(),
            "n2/web-1",
            "same ID on another node is another endpoint"
        );
        assert_eq!(eps[1].address().to_string(), "web.internal:9090");
        assert_eq!(eps[1].weight(), 1, "warning weight");
        assert_eq!(eps[1].tags(), ["v2"]);
    }

    fn entry(node: &str, checks: &[(&str, &str)]) -> serde_json::Value {
        let checks: Vec<_> = checks
            .iter()
            .map(|(id, status)| serde_json::json!({"CheckID": id, "Status": status}))
            .collect();
        serde_json::json!({
            "Node": {"Node": node, "Address": "10.0.0.1"},
            "Service": {"ID": "web", "Service": "web", "Port": 80, "Weights": {"Passing": 10, "Warning": 2}},
            "Checks": checks,
        })
    }

    #[test]
    fn critical_maintenance_and_dead_nodes_are_not_endpoints() {
        let body = serde_json::to_vec(&[
            entry(
                "ok",
                &[("serfHealth", "passing"), ("service:web", "passing")],
            ),
            entry(
                "warn",
                &[("serfHealth", "passing"), ("service:web", "warning")],
            ),
            entry(
                "crit",
                &[("serfHealth", "passing"), ("service:web", "critical")],
            ),
            entry(
                "dead",
                &[("serfHealth", "critical"), ("service:web", "passing")],
            ),
            entry(
                "maint",
                &[
                    ("serfHealth", "passing"),
                    ("_service_maintenance:web", "critical"),
                ],
            ),
            entry(
                "nmaint",
                &[("serfHealth", "passing"), ("_node_maintenance", "critical")],
            ),
            entry("odd", &[("service:web", "maintenance")]),
            entry("none", &[]),
        ])
        .unwrap();
        let (eps, report) = parse_health_report(&body, None, AddressChoice::Default).unwrap();
        let got: Vec<(&str, u32)> = eps.iter().map(|e| (e.key().as_str(), e.weight())).collect();
        assert_eq!(got, [("ok/web", 10), ("warn/web", 2), ("none/web", 10)]);
        assert_eq!(report.unhealthy, 5);
    }

    #[test]
    fn tagged_addresses_are_chosen_with_fallbacks() {
        let body = br#"[{"Node":{"Node":"n","Address":"10.0.0.1","TaggedAddresses":{"wan":"198.51.100.1","lan_ipv6":"fd00::1"}},
            "Service":{"ID":"a","Port":80,"Address":"",
                       "TaggedAddresses":{"wan_ipv4":{"Address":"203.0.113.7","Port":443},"lan":{"Address":"10.0.0.8","Port":0}}}},
            {"Node":{"Node":"n","Address":"10.0.0.1","TaggedAddresses":{"wan":"198.51.100.1"}},
            "Service":{"ID":"b","Port":80,"Address":"10.0.0.9"}}]"#;
        for (choice, want_a, want_b) in [
            (AddressChoice::Default, "10.0.0.1:80", "10.0.0.9:80"),
            (AddressChoice::WanIpv4, "203.0.113.7:443", "10.0.0.9:80"),
            (AddressChoice::Lan, "10.0.0.8:80", "10.0.0.9:80"),
            // The node's tagged address only when the service has no address.
            (AddressChoice::Wan, "198.51.100.1:80", "10.0.0.9:80"),
            (AddressChoice::LanIpv6, "[fd00::1]:80", "10.0.0.9:80"),
            (AddressChoice::WanIpv6, "10.0.0.1:80", "10.0.0.9:80"),
        ] {
            let eps = parse_health_with(body, None, choice).unwrap();
            assert_eq!(eps[0].address().to_string(), want_a, "{choice:?}");
            assert_eq!(eps[1].address().to_string(), want_b, "{choice:?}");
        }
    }

    #[test]
    fn bad_instances_are_skipped_and_garbage_is_an_error() {
        let body = br#"[{"Node":{"Node":"n","Address":""},"Service":{"ID":"a","Service":"s","Port":1}},
                        {"Node":{"Node":"n","Address":"10.0.0.1"},"Service":{"ID":"b","Service":"s","Port":0}},
                        {"Node":{"Node":"n","Address":"10.0.0.1"},"Service":{"ID":"c","Service":"s","Port":2}}]"#;
        let (eps, report) = parse_health_report(body, None, AddressChoice::Default).unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(report.skipped, 2);
        let not_utf8 = b"[{\"Node\":{\"Node\":\"n\xff\"}}]";
        for garbage in [&b"<html>"[..], b"{}", b"[{\"Node\":1}]", b"", not_utf8] {
            let e = parse_health(garbage).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Decode);
        }
    }

    #[test]
    fn keys_compare_like_the_joined_string() {
        for (key, node, id) in [
            ("n1/a", "n1", "a"),
            ("n1/a", "n1", "b"),
            ("n1/b", "n1", "a"),
            ("n1", "n1", "a"),
            ("n10/a", "n1", "a"),
            ("n1/a", "n10", "a"),
            ("n1-a", "n1", "a"),
            ("", "", ""),
            ("/", "", ""),
            ("a/b/c", "a/b", "c"),
            ("a/b/c", "a", "b/c"),
        ] {
            let joined = format!("{node}/{id}");
            assert_eq!(
                cmp_key(key, node, id),
                key.cmp(joined.as_str()),
                "{key} vs {joined}"
            );
        }
    }

    fn body(entries: &[(&str, &str, u16, &str)]) -> Vec<u8> {
        let entries: Vec<_> = entries
            .iter()
            .map(|(node, id, port, status)| {
                serde_json::json!({
                    "Node": {"Node": node, "Address": "10.0.0.1", "Meta": {"x": [1, {"y": null}]}},
                    "Service": {"ID": id, "Service": "web", "Port": port,
                                "Tags": ["a", "b"], "Meta": {"k": "v", "z": "w"},
                                "Weights": {"Passing": 5, "Warning": 2}},
                    "Checks": [{"Status": status, "Output": "long output\n\twith escapes \u{e9}"}],
                })
            })
            .collect();
        serde_json::to_vec(&entries).unwrap()
    }

    #[test]
    fn update_reuses_unchanged_endpoints_and_rebuilds_changed_ones() {
        let before = body(&[
            ("n1", "a", 80, "passing"),
            ("n1", "b", 80, "passing"),
            ("n2", "a", 80, "passing"),
        ]);
        let previous = EndpointSet::new(parse_health(&before).unwrap());
        let after = body(&[
            ("n2", "a", 80, "warning"), // weight changes, out of order
            ("n1", "a", 80, "passing"),
            ("n1", "b", 81, "passing"), // port changes
            ("n3", "a", 80, "passing"), // new
        ]);
        let fresh = parse_health(&after).unwrap();
        let updated = parse_health_update(&after, &previous).unwrap();
        assert_eq!(fresh, updated, "same content either way");
        let reused: Vec<bool> = updated
            .iter()
            .map(|e| previous.iter().any(|p| p.ptr_eq(e)))
            .collect();
        assert_eq!(reused, [false, true, false, false]);
        assert_eq!(updated[0].weight(), 2);
        assert_eq!(updated[1].metadata().len(), 2);
        let set = EndpointSet::new(updated);
        assert_eq!(previous.diff(&set).len(), 3);
    }

    #[test]
    fn wrong_shapes_are_decode_errors_that_say_what() {
        for (body, why) in [
            (&br#"{"Node":{}}"#[..], "expected a sequence"),
            (br#"[{"Service":{"ID":"a"}}]"#, "missing field `Node`"),
            (br#"[{"Node":{"Node":"n"}}]"#, "missing field `Service`"),
            (
                br#"[{"Node":{"Address":"x"},"Service":{"ID":"a"}}]"#,
                "missing field `Node`",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"Port":1}}]"#,
                "missing field `ID`",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a","Port":"80"}}]"#,
                "invalid type: string",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a","Port":70000}}]"#,
                "invalid value",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a","Port":1,"Port":2}}]"#,
                "duplicate field `Port`",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a","Tags":[1]}}]"#,
                "invalid type: integer",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a","Weights":{"Passing":1}}}]"#,
                "missing field `Warning`",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a"},"Checks":[{"Status":null}]}]"#,
                "invalid type: null",
            ),
            (
                br#"[{"Node":{"Node":"n","Meta":{"a":tru}},"Service":{"ID":"a"}}]"#,
                "expected ident",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a"}}] x"#,
                "trailing characters",
            ),
            (
                br#"[{"Node":{"Node":"n"},"Service":{"ID":"a"}}"#,
                "EOF while parsing",
            ),
        ] {
            let err = parse_health(body).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Decode);
            let json = std::error::Error::source(&err)
                .and_then(|s| s.downcast_ref::<InvalidJson>())
                .expect("an InvalidJson source");
            assert!(
                json.reason().contains(why),
                "{}: {json}",
                String::from_utf8_lossy(body)
            );
            assert!(json.line() >= 1, "{json}");
        }
    }
}
