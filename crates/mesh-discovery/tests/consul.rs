//! End-to-end: the Consul watch and registration against the fake Consul over
//! real HTTP on 127.0.0.1, asserting on what the fake received.

use std::time::Duration;

use mesh_core::backoff::Backoff;
use mesh_discovery::consul::{
    CheckDefinition, CheckStatus, ConsulClient, ConsulConfig, ConsulDiscovery, Registration,
    ServiceRegistration, WatchConfig,
};
use mesh_discovery::{Discovery, EmptyPolicy, EndpointSet, ErrorKind};
use mesh_testkit::consul::{FakeConsul, Fault, Health, Instance};
use tokio::time::{Instant, timeout};

fn client(consul: &FakeConsul) -> ConsulClient {
    let mut c = ConsulConfig::new(consul.url());
    c.request_timeout = Duration::from_secs(1);
    ConsulClient::new(&c).unwrap()
}

fn config(service: &str) -> WatchConfig {
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

async fn until_health(
    d: &Discovery,
    what: &str,
    mut f: impl FnMut(&mesh_discovery::SourceHealth) -> bool,
) {
    let mut rx = d.subscribe_health();
    if timeout(Duration::from_secs(10), rx.wait_for(|h| f(h)))
        .await
        .is_err()
    {
        panic!("timed out waiting for {what}: {:?}", d.health());
    }
}

fn three(consul: &FakeConsul) {
    consul.add_instances((1..=3).map(|i| {
        Instance::new("users", &format!("users-{i}"), "127.0.0.1", 9000 + i)
            .tags(["v1"])
            .meta("zone", "a")
    }));
}

#[tokio::test]
async fn register_discover_deregister() {
    let consul = FakeConsul::start().await.unwrap();
    let client = client(&consul);
    let users = ConsulDiscovery::spawn(client.clone(), config("users")).unwrap();

    let reg = ServiceRegistration::new("users", 8080)
        .id("users-a")
        .address("127.0.0.1")
        .tags(["v2"])
        .meta("version", "2.1")
        .weights(3, 1)
        .check(CheckDefinition::ttl("users-a-ttl", Duration::from_secs(2)));
    let registration = Registration::register(client.clone(), reg).await.unwrap();

    // The TTL check starts critical; the heartbeat makes it pass.
    let set = until(&users, "the registered instance", |s| s.len() == 1).await;
    let ep = &set.endpoints()[0];
    assert_eq!(ep.key().as_str(), "fake-node/users-a");
    assert_eq!(ep.address().to_string(), "127.0.0.1:8080");
    assert_eq!(ep.weight(), 3);
    assert_eq!(ep.tags(), ["v2"]);
    assert_eq!(ep.metadata()["version"], "2.1");
    assert_eq!(consul.check_status("users-a-ttl"), Some(Health::Passing));

    // Draining: report critical, and watchers drop the instance.
    registration.set_status(CheckStatus::Critical, "draining");
    until(&users, "the drained instance to go", EndpointSet::is_empty).await;

    registration.deregister().await.unwrap();
    assert!(consul.instance_ids("users").is_empty());
    assert!(users.health().is_healthy());
}

#[tokio::test]
async fn registration_heartbeats_keep_a_ttl_check_alive_and_re_register() {
    let consul = FakeConsul::start().await.unwrap();
    let client = client(&consul);
    let reg = ServiceRegistration::new("api", 1234)
        .id("api-1")
        .check(CheckDefinition::ttl(
            "api-1-ttl",
            Duration::from_millis(600),
        ));
    let registration = Registration::register(client, reg).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        consul.healthy_ids("api"),
        ["api-1"],
        "heartbeats beat the TTL"
    );

    // The agent forgets us (restart): the next heartbeat registers again.
    consul.remove_instance("api-1");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(consul.healthy_ids("api"), ["api-1"]);

    // Dropping the handle deregisters, best effort.
    drop(registration);
    let start = Instant::now();
    while !consul.instance_ids("api").is_empty() {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_flips_and_the_empty_policy() {
    let consul = FakeConsul::start().await.unwrap();
    three(&consul);
    let mut keep = config("users");
    keep.empty = EmptyPolicy::KeepLast;
    let kept = ConsulDiscovery::spawn(client(&consul), keep).unwrap();
    let published = ConsulDiscovery::spawn(client(&consul), config("users")).unwrap();
    until(&kept, "3", |s| s.len() == 3).await;
    until(&published, "3", |s| s.len() == 3).await;

    consul.set_health("users-2", Health::Critical);
    until(&kept, "2", |s| s.len() == 2).await;
    consul.set_health("users-2", Health::Passing);
    until(&kept, "3 again", |s| s.len() == 3).await;

    for i in 1..=3 {
        consul.set_health(&format!("users-{i}"), Health::Warning);
    }
    until(&published, "empty", EndpointSet::is_empty).await;
    until_health(&kept, "an ignored empty set", |h| {
        h.empty_sets_ignored() > 0
    })
    .await;
    assert_eq!(kept.current().len(), 3, "KeepLast keeps the last known set");
    consul.set_health("users-1", Health::Passing);
    until(&kept, "1", |s| s.len() == 1).await;
}

#[tokio::test]
async fn ttl_expiry_removes_the_instance() {
    let consul = FakeConsul::start().await.unwrap();
    let client = client(&consul);
    let users = ConsulDiscovery::spawn(client.clone(), config("ttl")).unwrap();
    // Registered with the plain client: nobody heartbeats.
    client
        .register(
            &ServiceRegistration::new("ttl", 80).id("ttl-1").check(
                CheckDefinition::ttl("ttl-1-check", Duration::from_millis(500))
                    .initial_status("passing"),
            ),
        )
        .await
        .unwrap();
    until(&users, "1", |s| s.len() == 1).await;
    until(&users, "TTL expiry", EndpointSet::is_empty).await;
    assert_eq!(consul.check_status("ttl-1-check"), Some(Health::Critical));
}

/// The shape of every fault test: discover 3, break Consul, see failures while
/// the 3 are kept, change the catalog, heal, see the change.
async fn fault_kept_then_recovered(fault: Fault) {
    let consul = FakeConsul::start().await.unwrap();
    three(&consul);
    let users = ConsulDiscovery::spawn(client(&consul), config("users")).unwrap();
    let before = until(&users, "3", |s| s.len() == 3).await;

    consul.set_fault(fault);
    until_health(&users, "failures", |h| h.consecutive_failures() >= 2).await;
    let during = users.current();
    assert_eq!(
        during.version(),
        before.version(),
        "{fault:?}: endpoints kept"
    );
    assert!(during.same_endpoints(&before));

    consul.remove_instance("users-3");
    consul.clear_fault();
    let after = until(&users, "recovery", |s| s.len() == 2).await;
    assert_eq!(after.version(), before.version() + 1);
    until_health(&users, "healthy", mesh_discovery::SourceHealth::is_healthy).await;
    assert!(users.health().last_error().is_some());
}

#[tokio::test]
async fn fault_no_leader() {
    fault_kept_then_recovered(Fault::NoLeader).await;
}

#[tokio::test]
async fn fault_dropped_connections() {
    fault_kept_then_recovered(Fault::DropConnection).await;
}

#[tokio::test]
async fn fault_garbage_bodies() {
    fault_kept_then_recovered(Fault::GarbageBody).await;
}

#[tokio::test]
async fn fault_missing_index() {
    fault_kept_then_recovered(Fault::MissingIndex).await;
}

#[tokio::test]
async fn fault_hangs() {
    fault_kept_then_recovered(Fault::Hang).await;
    // A hang is a timeout, not a connection error.
}

#[tokio::test]
async fn fault_connection_refused() {
    let consul = FakeConsul::start().await.unwrap();
    three(&consul);
    let users = ConsulDiscovery::spawn(client(&consul), config("users")).unwrap();
    until(&users, "3", |s| s.len() == 3).await;
    consul.shutdown();
    until_health(&users, "failures", |h| h.consecutive_failures() >= 2).await;
    assert_eq!(users.current().len(), 3);
    let kind = users.health().last_error().unwrap().kind();
    assert!(matches!(kind, ErrorKind::Connect), "{kind:?}");
}

#[tokio::test]
async fn fault_index_zero_and_spurious_wakeups_are_rate_limited() {
    for fault in [Fault::IndexZero, Fault::SpuriousWakeups] {
        let consul = FakeConsul::start().await.unwrap();
        three(&consul);
        let mut c = config("users");
        c.min_interval = Duration::from_millis(100);
        c.burst = 3;
        let users = ConsulDiscovery::spawn(client(&consul), c).unwrap();
        let before = until(&users, "3", |s| s.len() == 3).await;
        tokio::time::sleep(Duration::from_millis(100)).await;

        consul.set_fault(fault);
        consul.reset_counts();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = consul.health_request_count();
        // Without the bucket this would be thousands; with it: the burst plus
        // one per 100 ms.
        assert!((3..=3 + 11).contains(&n), "{fault:?}: {n} requests in 1 s");
        assert!(
            users.current().same_endpoints(&before),
            "{fault:?}: endpoints kept"
        );
        assert_eq!(
            users.current().version(),
            before.version(),
            "{fault:?}: no republish"
        );

        consul.clear_fault();
        consul.remove_instance("users-1");
        until(&users, "recovery", |s| s.len() == 2).await;
        // Back to blocking: an idle second costs at most ~2 requests.
        tokio::time::sleep(Duration::from_millis(200)).await;
        consul.reset_counts();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            consul.health_request_count() <= 2,
            "{fault:?}: {}",
            consul.health_request_count()
        );
    }
}

#[tokio::test]
async fn fault_index_reset_resets_and_keeps_following() {
    let consul = FakeConsul::start().await.unwrap();
    three(&consul);
    let users = ConsulDiscovery::spawn(client(&consul), config("users")).unwrap();
    until(&users, "3", |s| s.len() == 3).await;
    for _ in 0..50 {
        consul.add_instance(Instance::new("other", "o", "127.0.0.1", 1));
        consul.remove_instance("o");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(consul.index() > 100);

    // A snapshot restore: the index goes back to 2. The held query sees the
    // lower index when its wait runs out; the watch resets and keeps following.
    consul.reset_index(2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    consul.remove_instance("users-2");
    let start = Instant::now();
    until(&users, "the change after the reset", |s| s.len() == 2).await;
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "{:?}",
        start.elapsed()
    );
    assert!(users.health().is_healthy());
}

#[tokio::test]
async fn an_idle_watch_blocks_instead_of_polling() {
    let consul = FakeConsul::start().await.unwrap();
    three(&consul);
    let mut c = config("users");
    c.wait = Duration::from_secs(2);
    let users = ConsulDiscovery::spawn(client(&consul), c).unwrap();
    until(&users, "3", |s| s.len() == 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    consul.reset_counts();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // One answer per wait (2 s + up to 1/16 jitter): at most 2 in 3 s, and
    // one query is being held right now.
    let n = consul.health_request_count();
    assert!(n <= 2, "{n} requests while idle");
    assert_eq!(consul.blocked_health_requests(), 1);
    assert_eq!(
        users.current().version(),
        1,
        "wake-ups without change publish nothing"
    );
}

#[tokio::test]
async fn ten_thousand_instances() {
    let consul = FakeConsul::start().await.unwrap();
    consul.add_instances((0..10_000u32).map(|i| {
        Instance::new("big", &format!("big-{i}"), "", 8080).node(
            &format!("node-{}", i / 10),
            &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
        )
    }));
    let mut c = config("big");
    c.wait = Duration::from_secs(5);
    // Debug builds need a while to write and read 10,000 entries.
    let mut cc = ConsulConfig::new(consul.url());
    cc.request_timeout = Duration::from_secs(30);
    c.timeout_margin = Duration::from_secs(30);
    let big = ConsulDiscovery::spawn(ConsulClient::new(&cc).unwrap(), c).unwrap();
    let start = Instant::now();
    let set = until(&big, "10,000", |s| s.len() == 10_000).await;
    eprintln!("10,000 instances discovered in {:?}", start.elapsed());
    assert!(set.get(&"node-0/big-5".into()).is_some());
    consul.set_health("big-5", Health::Critical);
    let set = until(&big, "9,999", |s| s.len() == 9_999).await;
    assert_eq!(set.version(), 2);
    assert!(set.get(&"node-0/big-5".into()).is_none());
}

#[tokio::test]
async fn tags_and_tokens() {
    let consul = FakeConsul::start().await.unwrap();
    consul.require_token(Some("s3cr3t"));
    three(&consul);
    consul.add_instance(Instance::new("users", "users-v2", "127.0.0.1", 9100).tags(["v2"]));

    let mut cfg = ConsulConfig::new(consul.url()).with_token("s3cr3t");
    cfg.request_timeout = Duration::from_secs(1);
    let with_token = ConsulClient::new(&cfg).unwrap();
    let mut c = config("users");
    c.query = c.query.tag("v2");
    let v2 = ConsulDiscovery::spawn(with_token.clone(), c).unwrap();
    let set = until(&v2, "v2", |s| s.len() == 1).await;
    assert_eq!(set.endpoints()[0].key().as_str(), "fake-node/users-v2");

    // Without the token: writes are refused, reads are filtered to nothing.
    let err = client(&consul)
        .register(&ServiceRegistration::new("x", 1))
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(403));
    assert!(!err.to_string().contains("s3cr3t"));
    with_token
        .register(&ServiceRegistration::new("x", 1))
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_input_gives_typed_errors() {
    let consul = FakeConsul::start().await.unwrap();
    let client = client(&consul);
    let e = ConsulDiscovery::spawn(client.clone(), WatchConfig::new("no spaces")).unwrap_err();
    assert_eq!(e.errors()[0].path(), "query");

    for reg in [
        ServiceRegistration::new("", 80),
        ServiceRegistration::new("web", 0),
        ServiceRegistration::new("web", 80).address("300.1.1.1.1:x"),
        ServiceRegistration::new("web", 80).id("../etc"),
    ] {
        let err = client.register(&reg).await.unwrap_err();
        let source = std::error::Error::source(&err).unwrap();
        assert!(
            source
                .downcast_ref::<mesh_discovery::InvalidName>()
                .is_some(),
            "{err}"
        );
    }
    assert_eq!(consul.request_count(), 0, "nothing bad was sent");
    assert!(client.deregister("a/b").await.is_err());
    assert!(ConsulClient::new(&ConsulConfig::new("http://host:99999")).is_err());
}

/// The core scenario against a real agent.
#[tokio::test]
#[ignore = "needs a Consul agent: set CONSUL_HTTP_ADDR and run with --ignored"]
async fn real_agent_register_discover_deregister() {
    let client = ConsulClient::from_env().expect("CONSUL_HTTP_ADDR and friends");
    let name = format!("mesh-test-{}", std::process::id());
    let mut c = WatchConfig::new(&name);
    c.wait = Duration::from_secs(2);
    c.empty = EmptyPolicy::Publish;
    let d = ConsulDiscovery::spawn(client.clone(), c).unwrap();
    let reg = ServiceRegistration::new(&name, 8080)
        .id(format!("{name}-1"))
        .address("127.0.0.1")
        .check(CheckDefinition::ttl(
            format!("{name}-1-ttl"),
            Duration::from_secs(10),
        ));
    let registration = Registration::register(client, reg).await.unwrap();
    let set = timeout(Duration::from_secs(30), d.wait_for(|s| s.len() == 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(set.endpoints()[0].address().to_string(), "127.0.0.1:8080");
    registration.deregister().await.unwrap();
    timeout(Duration::from_secs(30), d.wait_for(EndpointSet::is_empty))
        .await
        .unwrap()
        .unwrap();
}

/// Sixteen watches over five blocking turns of 5 s (a rotation ≈ 16 s): the
/// change feed brings each change to its watch at once, a node check to
/// every watch, and stops with the watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_brings_a_change_ahead_of_the_turns() {
    let consul = FakeConsul::start().await.unwrap();
    let services: Vec<String> = (0..16).map(|s| format!("svc-{s}")).collect();
    consul.add_instances(services.iter().flat_map(|s| {
        (0..2).map(move |i| Instance::new(s, &format!("{s}-{i}"), "127.0.0.1", 9000 + i))
    }));
    let mut c = ConsulConfig::new(consul.url());
    c.max_connections = 8;
    c.shared_wait = Duration::from_secs(5);
    let client = ConsulClient::new(&c).unwrap();
    assert_eq!(client.blocking_connections(), 7, "2 of them for the feed");
    let watches: Vec<Discovery> = services
        .iter()
        .map(|s| {
            let mut w = config(s);
            w.wait = Duration::from_secs(60);
            ConsulDiscovery::spawn(client.clone(), w).unwrap()
        })
        .collect();
    for w in &watches {
        until(w, "both instances", |s| s.len() == 2).await;
    }
    assert!(
        client.change_feed_running(),
        "16 watches > 7 blocking turns"
    );
    // Let every watch queue for its turn and the feed block.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let parsed: Vec<u64> = watches
        .iter()
        .map(|w| w.health().answers_parsed())
        .collect();

    for (n, s) in [5, 2].into_iter().enumerate() {
        let started = Instant::now();
        consul.set_health(&format!("svc-{s}-1"), Health::Critical);
        until(&watches[s], "the change", |set| set.len() == 1).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "change {n} seen in {:?}, a rotation is ≈ 16 s",
            started.elapsed()
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reparsed: Vec<usize> = (0..16)
        .filter(|&s| watches[s].health().answers_parsed() != parsed[s])
        .collect();
    assert_eq!(reparsed, [2, 5], "the changed services only");
    // The budget bounds requests in flight. A connection reaches hyper's
    // pool from a task of its own a moment after its answer was read; on a
    // starved CI machine a request let through in that moment opens another
    // socket, so the sockets may pass the budget by a couple, briefly.
    let (budget, opened) = (
        client.max_connections(),
        usize::try_from(consul.max_open_connections()).unwrap(),
    );
    assert!(
        opened <= budget + 2,
        "{opened} sockets open at once, budget {budget}"
    );

    // A new instance registers critical (as Consul's checks start), then
    // passes: the feed sees its check come, then leave the critical list.
    consul.add_instance(
        Instance::new("svc-9", "svc-9-new", "127.0.0.1", 9100).health(Health::Critical),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    consul.set_health("svc-9-new", Health::Passing);
    until(&watches[9], "the new instance", |set| set.len() == 3).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "new instance seen in {:?}",
        started.elapsed()
    );

    // A dead node: every watch refreshes (its instances all go).
    let started = Instant::now();
    consul.set_node_health("fake-node", Health::Critical);
    for w in &watches {
        until(w, "the node's instances gone", EndpointSet::is_empty).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // The feed ends with the watches.
    drop(watches);
    timeout(Duration::from_secs(10), async {
        while client.change_feed_running() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the change feed stops when its watches do");
}

/// A few watches each hold their own blocking query: no feed. (Nor with
/// fewer than 4 blocking permits: the feed would leave the watches too few.)
#[tokio::test]
async fn no_change_feed_while_every_watch_has_a_turn() {
    let consul = FakeConsul::start().await.unwrap();
    three(&consul);
    let client = client(&consul);
    let d = ConsulDiscovery::spawn(client.clone(), config("users")).unwrap();
    until(&d, "three", |s| s.len() == 3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!client.change_feed_running());

    // Four watches over a budget of 4 (3 blocking permits): they take
    // turns, but the feed's two queries would leave them one.
    let mut c = ConsulConfig::new(consul.url());
    c.max_connections = 4;
    let small = ConsulClient::new(&c).unwrap();
    let watches: Vec<Discovery> = (0..4)
        .map(|_| ConsulDiscovery::spawn(small.clone(), config("users")).unwrap())
        .collect();
    for w in &watches {
        until(w, "three", |s| s.len() == 3).await;
    }
    assert!(!small.change_feed_running());
    assert_eq!(consul.state_requests(), 0);
}

#[tokio::test]
async fn health_state_reads_checks_by_state() {
    let consul = FakeConsul::start().await.unwrap();
    consul.add_instances([
        Instance::new("a", "a1", "127.0.0.1", 1),
        Instance::new("b", "b1", "127.0.0.1", 2).health(Health::Warning),
    ]);
    let client = client(&consul);
    let a = client
        .health_state("any", Some(r#"Status != "passing""#), 0, None)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["ServiceName"], "b");
    assert_eq!(a.index, Some(consul.index()));
    let e = client
        .health_state("sick", None, 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Other);
}

/// A server that answers blocking queries at once must not make the change
/// feed spin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_is_rate_limited() {
    let consul = FakeConsul::start().await.unwrap();
    consul.add_instances((0..16).map(|s| {
        Instance::new(
            &format!("svc-{s}"),
            &format!("svc-{s}-0"),
            "127.0.0.1",
            9000,
        )
    }));
    let mut c = ConsulConfig::new(consul.url());
    c.max_connections = 8;
    let client = ConsulClient::new(&c).unwrap();
    let watches: Vec<Discovery> = (0..16)
        .map(|s| ConsulDiscovery::spawn(client.clone(), config(&format!("svc-{s}"))).unwrap())
        .collect();
    for w in &watches {
        until(w, "its instance", |s| s.len() == 1).await;
    }
    assert!(client.change_feed_running());
    consul.set_fault(Fault::SpuriousWakeups);
    consul.reset_counts();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = consul.state_requests();
    // Two queries, each a burst of 10 then 10 a second.
    assert!(n <= 2 * (10 + 12), "{n} state requests in 1 s");
    consul.clear_fault();
}
