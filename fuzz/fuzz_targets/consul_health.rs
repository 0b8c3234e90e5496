//! `GET /v1/health/service/:name` bodies: whatever Consul (or anything
//! listening at its address) sends back.
//!
//! Contract: `parse_health` never panics; every endpoint it returns is usable
//! (port above 0); it rejects every body that is not JSON; it accepts
//! everything the documented typed model (`Vec<HealthEntry>`) accepts in
//! Consul's object form and agrees with it endpoint for endpoint; reading
//! against a previous snapshot (`parse_health_update`) gives the same
//! endpoints; and its endpoints survive a round trip through Consul's JSON
//! shape.
//!
//! "Object form": serde's derive also reads a struct from a JSON array of its
//! fields in declaration order (`{"Node": ["n1", "10.0.0.1"]}`), which
//! Consul never sends and `parse_health` does not accept.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::Endpoint;
use mesh_discovery::EndpointSet;
use mesh_discovery::consul::{HealthEntry, parse_health, parse_health_update};
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let parsed = parse_health(body);
    // serde_json's `Value` also rejects numbers beyond f64, which are valid
    // JSON (and skipped by `parse_health`).
    if let Err(e) = serde_json::from_slice::<Value>(body)
        && !e.to_string().contains("number out of range")
    {
        assert!(parsed.is_err(), "not JSON ({e}), yet parsed");
    }
    if let Ok(endpoints) = &parsed {
        for e in endpoints {
            assert_ne!(e.address().port(), 0, "{e:?}");
            assert!(e.key().as_str().contains('/'), "{e:?}");
        }
        let again = parse_health(&to_consul_json(endpoints)).expect("re-serialized body parses");
        assert_eq!(&again, endpoints, "round trip through Consul's JSON");
        // Against a snapshot of itself, and of its first half.
        let previous = EndpointSet::new(endpoints.iter().cloned());
        let update = parse_health_update(body, &previous).expect("parses again");
        assert_eq!(&update, endpoints, "reusing endpoints changes nothing");
        let half = EndpointSet::new(endpoints[..endpoints.len() / 2].iter().cloned());
        let update = parse_health_update(body, &half).expect("parses again");
        assert_eq!(&update, endpoints, "reusing endpoints changes nothing");
    }

    // The hot-path parser reads a subset of the typed model's fields, so it
    // must accept whatever the typed model accepts and agree with it.
    if let Ok(entries) = serde_json::from_slice::<Vec<HealthEntry>>(body)
        && serde_json::from_slice::<Value>(body).is_ok_and(|v| object_form(&v))
    {
        let endpoints = parsed.expect("typed model accepted the body, parse_health did not");
        let typed: Vec<Endpoint> = entries
            .iter()
            .filter_map(|e| e.to_endpoint().ok())
            .collect();
        assert_eq!(endpoints, typed);
    }
});

/// True when every struct of the typed model is a JSON object (or `null` where
/// the model allows it), not serde's array-of-fields form.
fn object_form(body: &Value) -> bool {
    let object = |v: Option<&Value>| v.is_none_or(Value::is_object);
    let object_or_null = |v: Option<&Value>| v.is_none_or(|v| v.is_object() || v.is_null());
    let Some(entries) = body.as_array() else {
        return true;
    };
    entries.iter().all(|e| {
        let Some(e) = e.as_object() else {
            return false;
        };
        let service = e.get("Service");
        let tagged = service.and_then(|s| s.get("TaggedAddresses"));
        object(e.get("Node"))
            && object(service)
            && object_or_null(service.and_then(|s| s.get("Weights")))
            && tagged
                .and_then(Value::as_object)
                .is_none_or(|t| t.values().all(Value::is_object))
            && e.get("Checks")
                .and_then(Value::as_array)
                .is_none_or(|c| c.iter().all(Value::is_object))
    })
}

/// The endpoints as a health body Consul could have sent.
fn to_consul_json(endpoints: &[Endpoint]) -> Vec<u8> {
    let entries: Vec<_> = endpoints
        .iter()
        .map(|e| {
            // Keys are `node/service-id`; the node never holds the first `/`.
            let (node, id) = e.key().as_str().split_once('/').expect("consul key");
            serde_json::json!({
                "Node": { "Node": node, "Address": "" },
                "Service": {
                    "ID": id,
                    "Service": "svc",
                    "Address": e.address().host_str().to_string(),
                    "Port": e.address().port(),
                    "Tags": e.tags(),
                    "Meta": e.metadata(),
                    "Weights": { "Passing": e.weight(), "Warning": e.weight() },
                },
                "Checks": [],
            })
        })
        .collect();
    serde_json::to_vec(&entries).expect("serializable")
}
