//! Property tests for the Consul health-response parser: whatever the body,
//! `parse_health` never panics and fails only with a typed `Decode` error;
//! well-formed answers give exactly their usable, routable instances
//! (critical ones left out, warning ones at `Weights.Warning`), endpoint for
//! endpoint as `HealthEntry::to_endpoint` builds them; a body that is not
//! JSON is always rejected; and reading against a previous snapshot
//! (`parse_health_update`) gives the same endpoints as a cold read, reusing the
//! unchanged ones. The cargo-fuzz target
//! `fuzz/fuzz_targets/consul_health.rs` explores the same contract further.

use mesh_core::Endpoint;
use mesh_discovery::consul::{AddressChoice, HealthEntry, parse_health, parse_health_update};
use mesh_discovery::{EndpointSet, ErrorKind};
use proptest::prelude::*;
use serde_json::{Value, json};

/// One instance as Consul could describe it, usable or not.
#[derive(Debug, Clone)]
struct Instance {
    node: String,
    node_address: String,
    id: String,
    address: String,
    port: u16,
    tags: Option<Vec<String>>,
    weights: Option<(u32, u32)>,
    warning: bool,
    critical: bool,
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<std::net::Ipv6Addr>().prop_map(|ip| ip.to_string()),
        "[a-zA-Z][a-zA-Z0-9-]{0,10}(\\.[a-z0-9]{1,8}){0,3}",
        // Not a host name: must be skipped, not fail the answer.
        ".{0,20}",
    ]
}

fn instance() -> impl Strategy<Value = Instance> {
    (
        "[a-z0-9/-]{1,12}",
        host(),
        "[a-z0-9/-]{1,12}",
        host(),
        prop_oneof![Just(0u16), 1u16..],
        proptest::option::of(proptest::collection::vec("[a-z0-9]{0,6}", 0..3)),
        proptest::option::of((0u32..100, 0u32..100)),
        any::<bool>(),
        proptest::bool::weighted(0.2),
    )
        .prop_map(
            |(node, node_address, id, address, port, tags, weights, warning, critical)| Instance {
                node,
                node_address,
                id,
                address,
                port,
                tags,
                weights,
                warning,
                critical,
            },
        )
}

fn to_json(instances: &[Instance]) -> Value {
    Value::Array(
        instances
            .iter()
            .map(|i| {
                let mut service = json!({
                    "ID": i.id, "Service": "web", "Address": i.address, "Port": i.port,
                    "Tags": i.tags, "Meta": null,
                });
                if let Some((passing, warning)) = i.weights {
                    service["Weights"] = json!({ "Passing": passing, "Warning": warning });
                }
                let status = if i.critical {
                    "critical"
                } else if i.warning {
                    "warning"
                } else {
                    "passing"
                };
                json!({
                    "Node": { "Node": i.node, "Address": i.node_address, "Datacenter": "dc1" },
                    "Service": service,
                    "Checks": [{ "CheckID": "c", "Status": status, "ServiceID": i.id }],
                })
            })
            .collect(),
    )
}

/// True when every struct of the typed model is a JSON object, not serde's
/// array-of-fields form (which Consul never sends and `parse_health` rejects).
fn object_form(body: &Value) -> bool {
    let object = |v: Option<&Value>| v.is_none_or(Value::is_object);
    let Some(entries) = body.as_array() else {
        return true;
    };
    entries.iter().all(|e| {
        let Some(e) = e.as_object() else {
            return false;
        };
        let service = e.get("Service");
        object(e.get("Node"))
            && object(service)
            && service
                .and_then(|s| s.get("Weights"))
                .is_none_or(|w| w.is_object() || w.is_null())
            && service
                .and_then(|s| s.get("TaggedAddresses"))
                .and_then(Value::as_object)
                .is_none_or(|t| t.values().all(Value::is_object))
            && e.get("Checks")
                .and_then(Value::as_array)
                .is_none_or(|c| c.iter().all(Value::is_object))
    })
}

/// Instances drawn from small pools, so consecutive entries repeat one
/// another's tags, metadata, weights, ports and skipped members in part, as
/// the instances of one service do: endpoints built with tags and metadata
/// shared from their neighbours must still equal the typed model's.
fn repeating_instance() -> impl Strategy<Value = (Instance, usize, usize)> {
    let tags = prop_oneof![
        Just(None),
        Just(Some(vec![])),
        Just(Some(vec!["a".to_owned()])),
        Just(Some(vec!["a".to_owned(), "b".to_owned()])),
    ];
    (
        prop_oneof![Just("n1"), Just("n2")],
        prop_oneof![Just("10.0.0.1"), Just(""), Just("10.0.0.10")],
        "[a-c]{1,2}",
        prop_oneof![Just(""), Just("10.0.0.2"), Just("web.internal")],
        prop_oneof![Just(0u16), Just(80), Just(8080), Just(8)],
        tags,
        proptest::option::of(prop_oneof![Just((1u32, 1u32)), Just((2, 1)), Just((2, 10))]),
        any::<bool>(),
        0usize..3,
        0usize..3,
    )
        .prop_map(
            |(node, node_address, id, address, port, tags, weights, warning, meta, extra)| {
                let instance = Instance {
                    node: node.to_owned(),
                    node_address: node_address.to_owned(),
                    id,
                    address: address.to_owned(),
                    port,
                    tags,
                    weights,
                    warning,
                    critical: false,
                };
                (instance, meta, extra)
            },
        )
}

/// [`to_json`] with metadata and extra members from small pools.
fn to_repeating_json(instances: &[(Instance, usize, usize)]) -> Value {
    let mut body = to_json(
        &instances
            .iter()
            .map(|(i, ..)| i.clone())
            .collect::<Vec<_>>(),
    );
    for (entry, (_, meta, extra)) in body.as_array_mut().unwrap().iter_mut().zip(instances) {
        entry["Service"]["Meta"] =
            [json!(null), json!({"k": "v"}), json!({"k": "v", "z": "w"})][*meta].clone();
        entry["Service"]["EnableTagOverride"] = json!(*extra == 1);
        entry["Node"]["Datacenter"] = json!(["dc1", "dc2", "dc10"][*extra]);
        entry["Checks"][0]["Notes"] = json!(["", "x", "x\ty"][*extra]);
        if *extra == 2 {
            entry["Checks"]
                .as_array_mut()
                .unwrap()
                .push(json!({"CheckID": "d", "Status": "passing"}));
        }
    }
    body
}

fn usable(i: &Instance) -> bool {
    let host = if i.address.is_empty() {
        &i.node_address
    } else {
        &i.address
    };
    !i.critical && i.port != 0 && mesh_core::Address::host(host, i.port).is_ok()
}

/// What the typed model says the endpoints are.
fn typed_endpoints(entries: &[HealthEntry<'_>]) -> Vec<Endpoint> {
    entries
        .iter()
        .filter(|e| e.is_routable())
        .filter_map(|e| e.to_endpoint(AddressChoice::Default).ok())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_bytes_never_panic_and_errors_are_decode_errors(
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        if let Err(e) = parse_health(&body) {
            prop_assert_eq!(e.kind(), ErrorKind::Decode);
        }
    }

    #[test]
    fn well_formed_answers_give_exactly_their_usable_instances(
        instances in proptest::collection::vec(instance(), 0..8),
    ) {
        let body = serde_json::to_vec(&to_json(&instances)).unwrap();
        let endpoints = parse_health(&body).unwrap();
        let want: Vec<&Instance> = instances.iter().filter(|i| usable(i)).collect();
        prop_assert_eq!(endpoints.len(), want.len());
        for (e, i) in endpoints.iter().zip(&want) {
            prop_assert_eq!(e.key().as_str(), format!("{}/{}", i.node, i.id));
            prop_assert_eq!(e.address().port(), i.port);
            let (passing, warning) = i.weights.unwrap_or((1, 1));
            prop_assert_eq!(e.weight(), if i.warning { warning } else { passing });
            let tags = i.tags.clone().unwrap_or_default();
            prop_assert_eq!(e.tags(), tags.as_slice());
        }
        // The typed model reads the same answer the same way.
        let typed: Vec<HealthEntry<'_>> = serde_json::from_slice(&body).unwrap();
        prop_assert_eq!(typed_endpoints(&typed), endpoints);
    }

    #[test]
    fn repeating_answers_read_like_the_typed_model(
        instances in proptest::collection::vec(repeating_instance(), 0..12),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
    ) {
        let mut body = serde_json::to_vec(&to_repeating_json(&instances)).unwrap();
        if edits.is_empty() {
            let endpoints = parse_health(&body).unwrap();
            let usable = instances.iter().filter(|(i, ..)| usable(i)).count();
            prop_assert_eq!(endpoints.len(), usable);
        }
        for (at, byte) in edits {
            if !body.is_empty() {
                let at = at.index(body.len());
                body[at] = byte;
            }
        }
        let parsed = parse_health(&body);
        if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            prop_assert!(parsed.is_err(), "not JSON, yet parsed");
        }
        if let Ok(typed) = serde_json::from_slice::<Vec<HealthEntry<'_>>>(&body)
            && serde_json::from_slice::<Value>(&body).is_ok_and(|v| object_form(&v))
        {
            let typed = typed_endpoints(&typed);
            prop_assert_eq!(parsed.as_ref().ok(), Some(&typed));
            // And against a snapshot of itself.
            let previous = EndpointSet::new(typed.iter().cloned());
            prop_assert_eq!(parse_health_update(&body, &previous).ok(), Some(typed));
        }
    }

    #[test]
    fn mutated_answers_never_panic(
        instances in proptest::collection::vec(instance(), 1..4),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut body = serde_json::to_vec(&to_json(&instances)).unwrap();
        for (at, byte) in edits {
            let at = at.index(body.len());
            body[at] = byte;
        }
        for body in [&body[..], &body[..cut.index(body.len())]] {
            let parsed = parse_health(body);
            match &parsed {
                Ok(endpoints) => prop_assert!(endpoints.iter().all(|e| e.address().port() != 0)),
                Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Decode),
            }
            if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
                prop_assert!(parsed.is_err(), "not JSON, yet parsed");
            }
            // Still an answer Consul could send: both readers agree.
            if let Ok(typed) = serde_json::from_slice::<Vec<HealthEntry<'_>>>(body)
                && serde_json::from_slice::<Value>(body).is_ok_and(|v| object_form(&v))
            {
                prop_assert_eq!(parsed.ok(), Some(typed_endpoints(&typed)));
            }
        }
    }

    #[test]
    fn updates_read_the_same_endpoints_and_reuse_unchanged_ones(
        before in proptest::collection::vec(instance(), 0..8),
        after in proptest::collection::vec(instance(), 0..8),
        keep in any::<prop::sample::Index>(),
    ) {
        // `after` shares a prefix of `before`'s instances, unchanged.
        let kept = keep.index(before.len() + 1);
        let after: Vec<Instance> = before[..kept].iter().cloned().chain(after).collect();
        let old = parse_health(&serde_json::to_vec(&to_json(&before)).unwrap()).unwrap();
        let previous = EndpointSet::new(old);
        let body = serde_json::to_vec(&to_json(&after)).unwrap();
        let cold = parse_health(&body).unwrap();
        let warm = parse_health_update(&body, &previous).unwrap();
        prop_assert_eq!(&warm, &cold);
        for e in &warm {
            if let Some(p) = previous.get(e.key()) && p == e {
                prop_assert!(p.ptr_eq(e), "an unchanged endpoint is reused: {:?}", e);
            }
        }
    }
}
