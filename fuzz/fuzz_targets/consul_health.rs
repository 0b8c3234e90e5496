//! `GET /v1/health/service/:name` bodies: whatever Consul (or anything
//! listening at its address) sends back.
//!
//! Contract: `parse_health` never panics; every endpoint it returns is usable
//! (port above 0); it rejects every body that is not JSON; it accepts
//! everything the typed model (`Vec<HealthEntry>`) accepts and agrees with
//! `HealthEntry::to_endpoint` for the routable entries; reading
//! against a previous snapshot (`parse_health_update`) gives the same
//! endpoints; and its endpoints survive a round trip through Consul's JSON
//! shape.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::Endpoint;
use mesh_discovery::EndpointSet;
use mesh_discovery::consul::{AddressChoice, HealthEntry, parse_health, parse_health_update};
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

    // Endpoint for endpoint what the typed model says.
    if let Ok(entries) = serde_json::from_slice::<Vec<HealthEntry<'_>>>(body) {
        let endpoints = parsed.expect("typed model accepted the body, parse_health did not");
        let typed: Vec<Endpoint> = entries
            .iter()
            .filter(|e| e.is_routable())
            .filter_map(|e| e.to_endpoint(AddressChoice::Default).ok())
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
