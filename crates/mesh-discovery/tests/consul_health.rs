//! The health watch against the faithful fake Consul over real loopback
//! HTTP: which instances become endpoints, the watch's query rate, and the
//! query details (filter, staleness, ACL filtering, tagged addresses).

use std::time::Duration;

use mesh_core::backoff::Backoff;
use mesh_discovery::consul::{
    AddressChoice, Consistency, ConsulClient, ConsulConfig, ConsulDiscovery, WatchConfig,
};
use mesh_discovery::{Discovery, EmptyPolicy, EndpointSet, ErrorKind};
use mesh_testkit::consul::{FakeConsul, Fault, Health, Instance};
use tokio::time::timeout;

fn client(consul: &FakeConsul) -> ConsulClient {
    let mut c = ConsulConfig::new(consul.url());
    c.request_timeout = Duration::from_secs(2);
    ConsulClient::new(&c).unwrap()
}

fn fast(service: &str) -> WatchConfig {
    let mut c = WatchConfig::new(service);
    c.wait = Duration::from_secs(1);
    c.timeout_margin = Duration::from_millis(300);
    c.min_interval = Duration::from_millis(20);
    c.backoff = Backoff::new(Duration::from_millis(20), 2.0, Duration::from_millis(200));
    c.empty = EmptyPolicy::Publish;
    c
}

async fn until(d: &Discovery, what: &str, f: impl FnMut(&EndpointSet) -> bool) -> EndpointSet {
    match timeout(Duration::from_secs(10), d.wait_for(f)).await {
        Ok(Some(s)) => s,
        _ => panic!(
            "timed out waiting for {what}: {:?} {:?}",
            d.current(),
            d.health()
        ),
    }
}

fn keys(set: &EndpointSet) -> Vec<(String, u32)> {
    set.iter()
        .map(|e| (e.key().as_str().to_owned(), e.weight()))
        .collect()
}

/// Without `?passing` Consul also lists critical, maintenance and dead-node
/// instances; only passing (full weight) and warning (`Weights.Warning`)
/// ones are endpoints, as in Consul DNS.
#[tokio::test]
async fn without_passing_only_passing_and_warning_instances_are_endpoints() {
    let consul = FakeConsul::start().await.unwrap();
    consul.add_instances([
        Instance::new("web", "ok", "127.0.0.1", 9001).weights(10, 3),
        Instance::new("web", "warn", "127.0.0.1", 9002)
            .weights(10, 3)
            .health(Health::Warning),
        Instance::new("web", "crit", "127.0.0.1", 9003).health(Health::Critical),
        Instance::new("web", "maint", "127.0.0.1", 9004),
        Instance::new("web", "dead", "127.0.0.1", 9005).node("dead-node", "127.0.0.1"),
    ]);
    assert!(consul.set_service_maintenance("maint", Some("deploy")));
    consul.set_node_health("dead-node", Health::Critical);
    assert_eq!(consul.instance_ids("web").len(), 5, "all listed");

    let mut config = fast("web");
    config.query.passing_only = false;
    let web = ConsulDiscovery::spawn(client(&consul), config).unwrap();
    let set = until(&web, "the first answer", |s| !s.is_empty()).await;
    assert_eq!(
        keys(&set),
        [("fake-node/ok".into(), 10), ("fake-node/warn".into(), 3)]
    );
    assert!(
        consul
            .health_queries()
            .iter()
            .all(|q| !q.contains("passing")),
        "{:?}",
        consul.health_queries()
    );

    // Maintenance ends, the node comes back: both are endpoints again.
    consul.set_service_maintenance("maint", None);
    consul.set_node_health("dead-node", Health::Passing);
    until(&web, "maint and dead back", |s| s.len() == 4).await;
    // The node's own maintenance drops every instance on it.
    consul.set_node_maintenance(Some("kernel upgrade"));
    let set = until(&web, "node maintenance", |s| s.len() == 1).await;
    assert_eq!(keys(&set), [("dead-node/dead".into(), 1)]);
}

/// Consul's guidance: a burst of 2, then about one query per 15 s. A server
/// that answers blocking queries at once (spurious wake-ups) gets two
/// queries, not a stream.
#[tokio::test]
async fn the_default_rate_is_a_burst_of_two_then_one_query_per_15s() {
    let defaults = WatchConfig::default();
    assert_eq!(
        (defaults.burst, defaults.min_interval),
        (2, Duration::from_secs(15))
    );
    let consul = FakeConsul::start().await.unwrap();
    consul.add_instance(Instance::new("web", "a", "127.0.0.1", 9001));
    consul.set_fault(Fault::SpuriousWakeups);
    let web = ConsulDiscovery::spawn(client(&consul), WatchConfig::new("web")).unwrap();
    until(&web, "the first answer", |s| s.len() == 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while consul.health_request_count() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no second query");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Under the old default (burst 5, then 10/s) this window saw ~8 more.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(consul.health_request_count(), 2);
}

/// Tags go out in `filter` (`Service.Tags contains "v2"`), combined with the
/// user's filter, never as the deprecated `tag`.
#[tokio::test]
async fn tags_are_sent_as_a_filter() {
    let consul = FakeConsul::start().await.unwrap();
    consul.add_instances([
        Instance::new("web", "v1", "127.0.0.1", 9001).tags(["v1"]),
        Instance::new("web", "v2a", "127.0.0.1", 9002)
            .tags(["v2"])
            .meta("zone", "a"),
        Instance::new("web", "v2b", "127.0.0.1", 9003)
            .tags(["v2"])
            .meta("zone", "b"),
    ]);
    let mut config = fast("web");
    config.query = config.query.tag("v2");
    config.query.filter = Some(r#"Service.Meta.zone == "b""#.into());
    let web = ConsulDiscovery::spawn(client(&consul), config).unwrap();
    let set = until(&web, "v2 in zone b", |s| !s.is_empty()).await;
    assert_eq!(keys(&set), [("fake-node/v2b".into(), 1)]);
    let q = &consul.health_queries()[0];
    assert!(
        q.contains(r#"filter=Service.Tags contains "v2" and (Service.Meta.zone == "b")"#),
        "{q}"
    );
    assert!(!q.contains("tag="), "{q}");
}

/// An empty answer that Consul filtered by ACLs is an error (the token may
/// not read the service), not "no instances": the last set is kept.
#[tokio::test]
async fn an_acl_filtered_empty_answer_is_an_error_and_keeps_the_last_set() {
    let consul = FakeConsul::start().await.unwrap();
    consul.add_instance(Instance::new("web", "a", "127.0.0.1", 9001));
    let web = ConsulDiscovery::spawn(client(&consul), fast("web")).unwrap();
    until(&web, "the instance", |s| s.len() == 1).await;

    // ACLs turn on; this client has no token, so it reads as anonymous.
    consul.require_token(Some("secret"));
    consul.add_instance(Instance::new("web", "b", "127.0.0.1", 9002)); // wake the watch
    let mut rx = web.subscribe_health();
    let health = timeout(
        Duration::from_secs(10),
        rx.wait_for(|h| {
            h.last_error()
                .is_some_and(|e| e.kind() == ErrorKind::Denied)
        }),
    )
    .await
    .expect("a Denied error")
    .unwrap()
    .clone();
    assert!(
        health.last_error().unwrap().to_string().contains("ACL"),
        "{health:?}"
    );
    assert_eq!(web.current().len(), 1, "fail static: the last set is kept");
}

/// With `Consistency::Stale` and a `max_staleness`, an answer from a server
/// that lags too far behind is asked again of the leader.
#[tokio::test]
async fn stale_answers_older_than_max_staleness_are_asked_of_the_leader() {
    let consul = FakeConsul::start().await.unwrap();
    consul.add_instance(Instance::new("web", "a", "127.0.0.1", 9001));
    consul.set_leader(true, Duration::from_secs(30));
    let mut config = fast("web");
    config.query.consistency = Consistency::Stale;
    config.max_staleness = Some(Duration::from_secs(5));
    let web = ConsulDiscovery::spawn(client(&consul), config.clone()).unwrap();
    until(&web, "the instance", |s| s.len() == 1).await;
    let queries = consul.health_queries();
    assert!(queries[0].contains("stale"), "{queries:?}");
    assert!(
        queries.get(1).is_some_and(|q| !q.contains("stale")),
        "asked the leader after a 30 s-old answer: {queries:?}"
    );

    // Fresh enough: no second read.
    let consul = FakeConsul::start().await.unwrap();
    consul.add_instance(Instance::new("web", "a", "127.0.0.1", 9001));
    consul.set_leader(true, Duration::from_secs(1));
    let web = ConsulDiscovery::spawn(client(&consul), config).unwrap();
    until(&web, "the instance", |s| s.len() == 1).await;
    assert!(consul.health_queries().iter().all(|q| q.contains("stale")));
}

/// `address` picks a tagged address; instances without it keep their own.
#[tokio::test]
async fn the_watch_routes_to_the_chosen_tagged_address() {
    let consul = FakeConsul::start().await.unwrap();
    consul.add_instances([
        Instance::new("web", "a", "10.0.0.1", 9001).tagged_address("wan", "127.0.0.1", 19001),
        Instance::new("web", "b", "127.0.0.2", 9002),
    ]);
    let mut config = fast("web");
    config.address = AddressChoice::Wan;
    let web = ConsulDiscovery::spawn(client(&consul), config).unwrap();
    let set = until(&web, "both", |s| s.len() == 2).await;
    let addrs: Vec<String> = set.iter().map(|e| e.address().to_string()).collect();
    assert_eq!(addrs, ["127.0.0.1:19001", "127.0.0.2:9002"]);
}
