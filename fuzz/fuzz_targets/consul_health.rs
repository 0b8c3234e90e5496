//! `GET /v1/health/service/:name` bodies: whatever Consul (or anything
//! listening at its address) sends back.
//!
//! Contract: `parse_health` never panics; every endpoint it returns is usable
//! (port above 0); it accepts everything the documented typed model
//! (`Vec<HealthEntry>`) accepts and agrees with it endpoint for endpoint; and
//! its endpoints survive a round trip through Consul's JSON shape.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::Endpoint;
use mesh_discovery::consul::{HealthEntry, parse_health};

fuzz_target!(|body: &[u8]| {
    let parsed = parse_health(body);
    if let Ok(endpoints) = &parsed {
        for e in endpoints {
            assert_ne!(e.address().port(), 0, "{e:?}");
            assert!(e.key().as_str().contains('/'), "{e:?}");
        }
        let again = parse_health(&to_consul_json(endpoints)).expect("re-serialized body parses");
        assert_eq!(&again, endpoints, "round trip through Consul's JSON");
    }

    // The hot-path parser reads a subset of the typed model's fields, so it
    // must accept whatever the typed model accepts and agree with it.
    if let Ok(entries) = serde_json::from_slice::<Vec<HealthEntry>>(body) {
        let endpoints = parsed.expect("typed model accepted the body, parse_health did not");
        let typed: Vec<Endpoint> = entries
            .iter()
            .filter_map(|e| e.to_endpoint().ok())
            .collect();
        assert_eq!(endpoints, typed);
    }
});

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
