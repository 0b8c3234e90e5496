//! Real-answer shapes (see `tests/fixtures/consul/README.md`): parsed by the
//! one model, directly and through a watch over loopback HTTP.

use std::time::Duration;

use mesh_discovery::consul::{
    AddressChoice, CheckStatus, ConsulClient, ConsulConfig, ConsulDiscovery, HealthEntry,
    WatchConfig, parse_health, parse_health_with,
};
use mesh_testkit::backend::{Backend, Behavior, Reply};
use tokio::time::timeout;

const WEB: &str = include_str!("fixtures/consul/consul-1.16-health-service-web.json");
const NOMAD: &str = include_str!("fixtures/consul/nomad-connect-proxy-health.json");

#[test]
fn a_consul_1_16_answer_parses_with_consul_dns_semantics() {
    let entries: Vec<HealthEntry<'_>> = serde_json::from_str(WEB).unwrap();
    let statuses: Vec<CheckStatus> = entries.iter().map(HealthEntry::status).collect();
    assert_eq!(
        statuses,
        [
            CheckStatus::Passing,
            CheckStatus::Warning,
            CheckStatus::Critical, // maintenance
            CheckStatus::Critical, // dead node
        ]
    );
    let eps = parse_health(WEB.as_bytes()).unwrap();
    let got: Vec<(String, String, u32)> = eps
        .iter()
        .map(|e| {
            (
                e.key().as_str().to_owned(),
                e.address().to_string(),
                e.weight(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("ip-10-0-1-17/web-7f9c".into(), "10.0.1.17:8080".into(), 10),
            ("ip-10-0-2-31/web-7f9c".into(), "10.0.2.31:8080".into(), 1),
        ]
    );
    assert_eq!(eps[0].tags(), ["v2", "primary"]);
    assert_eq!(eps[0].metadata()["zone"], "eu-west-1a");
    assert!(eps[1].metadata().is_empty(), "null Meta");

    let wan = parse_health_with(WEB.as_bytes(), None, AddressChoice::WanIpv4).unwrap();
    assert_eq!(wan[0].address().to_string(), "198.51.100.17:18080");
    assert_eq!(
        wan[1].address().to_string(),
        "10.0.2.31:8080",
        "no service address: the node's wan_ipv4"
    );
}

#[test]
fn a_nomad_connect_sidecar_parses() {
    let entries: Vec<HealthEntry<'_>> = serde_json::from_str(NOMAD).unwrap();
    assert_eq!(entries[0].service.kind, "connect-proxy");
    assert_eq!(entries[0].checks.len(), 3);
    let eps = parse_health(NOMAD.as_bytes()).unwrap();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].address().to_string(), "10.0.2.15:27218");
    assert_eq!(eps[0].metadata()["external-source"], "nomad");
    assert!(
        eps[0]
            .key()
            .as_str()
            .starts_with("nomad-client-1/_nomad-task-")
    );
}

#[tokio::test]
async fn a_watch_reads_the_real_shape_over_http() {
    let agent = Backend::builder()
        .behavior(Behavior::Respond(
            Reply::status(200)
                .header("X-Consul-Index", "4510")
                .header("X-Consul-KnownLeader", "true")
                .header("X-Consul-LastContact", "0")
                .header("Content-Type", "application/json")
                .body(WEB),
        ))
        .start()
        .await
        .unwrap();
    let client = ConsulClient::new(&ConsulConfig::new(format!("http://{}", agent.addr()))).unwrap();
    let mut config = WatchConfig::new("web");
    config.query.passing_only = false;
    let web = ConsulDiscovery::spawn(client, config).unwrap();
    let set = timeout(Duration::from_secs(10), web.wait_for(|s| !s.is_empty()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(set.len(), 2, "maintenance and dead-node instances left out");
}
