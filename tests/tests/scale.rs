//! Many services on one agent (issue 23), bounded for CI: 300 services × 20
//! instances watched through one `Mesh` and the fake Consul. Checks what the
//! agent saw (connections, wake-ups) and what the clients hold, with no
//! request sent: the connection budget holds, one change re-parses one
//! service, and an idle client sees the change (and its undoing) through
//! the change feed, well within one rotation of the watches' turns.

use std::convert::Infallible;
use std::time::Duration;

use mesh_stack::discovery::consul::{ConsulClient, ConsulConfig};
use mesh_stack::{ConsulSourceConfig, Mesh, MeshConfig, ServiceConfig};
use mesh_testkit::consul::{FakeConsul, Health, Instance};
use tower::service_fn;

const SERVICES: usize = 300;
const INSTANCES: usize = 20;
const MAX_CONNECTIONS: u32 = 32;
/// `consul.shared_wait`: how long each turn holds a blocking query.
const ROTATION_TURN: Duration = Duration::from_secs(3);
/// How soon the idle client must see a change: a tenth of a rotation.
const SEEN_WITHIN: Duration = Duration::from_millis(3000);

fn name(s: usize) -> String {
    format!("svc-{s}")
}

/// An inner client that is never called here (the test sends no request).
fn inner() -> impl tower::Service<
    http::Request<String>,
    Response = http::Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(|_: http::Request<String>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_services_share_a_bounded_consul_client() {
    let fake = FakeConsul::start().await.unwrap();
    fake.add_instances((0..SERVICES).flat_map(|s| {
        (0..INSTANCES).map(move |i| {
            let port = 10_000 + u16::try_from(i).unwrap();
            Instance::new(&name(s), &format!("{}-{i}", name(s)), "127.0.0.1", port)
        })
    }));

    let mut consul = ConsulConfig::new(fake.url());
    consul.max_connections = MAX_CONNECTIONS;
    // 300 watches over 25 blocking connections (the change feed holds 2 of
    // the 27) take turns of 3 s: one rotation is about 300 / 25 × 3 s ≈ 36 s.
    // Only the change feed can bring a change within the bound below.
    consul.shared_wait = ROTATION_TURN;
    let client = ConsulClient::new(&consul).unwrap();
    let mut config = MeshConfig {
        consul: Some(consul),
        ..MeshConfig::new()
    };
    for s in 0..SERVICES {
        config = config.service(
            name(s),
            ServiceConfig::with_consul(ConsulSourceConfig {
                wait: Duration::from_secs(30),
                // The change and its undoing follow each other closely: with
                // the default bucket (one read per 15 s after a burst of 2)
                // the second would wait for a token, not for the feed.
                min_interval: Duration::from_millis(200),
                ..ConsulSourceConfig::default()
            }),
        );
    }
    let mesh = Mesh::builder(config)
        .consul_client(client.clone())
        .build()
        .unwrap();
    let clients: Vec<_> = (0..SERVICES)
        .map(|s| mesh.http_client(&name(s), inner()).unwrap())
        .collect();

    // One stack per service: a second call shares the first one's state.
    let again = mesh.http_client(&name(0), inner()).unwrap();
    assert!(again.get_ref().shares_state_with(clients[0].get_ref()));

    // Every client learns its 20 endpoints without a request.
    tokio::time::timeout(Duration::from_secs(20), async {
        for c in &clients {
            while c.get_ref().endpoints().len() != INSTANCES {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
    .await
    .expect("every idle client gets its endpoints");
    assert!(
        fake.max_open_connections() <= u64::from(MAX_CONNECTIONS),
        "at most {MAX_CONNECTIONS} connections to the agent, saw {} ({} opened)",
        fake.max_open_connections(),
        fake.connections_opened()
    );

    // Let the watches settle into blocking turns, then change one service.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let parsed = |s: usize| mesh.discovery(&name(s)).unwrap().health().answers_parsed();
    let before: Vec<u64> = (0..SERVICES).map(parsed).collect();
    fake.reset_counts();
    // Among the last to queue for a turn: its first comes ≈ a rotation in.
    let changed = SERVICES - 10;
    assert!(fake.set_health(&format!("{}-3", name(changed)), Health::Critical));

    // The idle client of that service drops the instance, with no request,
    // long before that service's turn could come round.
    let started = std::time::Instant::now();
    tokio::time::timeout(SEEN_WITHIN, async {
        while clients[changed].get_ref().endpoints().len() != INSTANCES - 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "an idle client sees the change within {SEEN_WITHIN:?} (a rotation is ≈ 36 s); change feed running: {}, answers {}, watches kicked {}",
            client.change_feed_running(),
            client.change_feed_answers(),
            client.watches_kicked()
        )
    });
    let latency = started.elapsed();
    assert!(client.change_feed_running());
    // (The watch may have been holding its own turn and seen the change
    // first; the feed kicks it all the same.)
    tokio::time::timeout(SEEN_WITHIN, async {
        while client.watches_kicked() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the feed kicks the changed service's watch");

    // Give the other watches about half a rotation to show a spurious
    // re-parse.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let reparsed: Vec<usize> = (0..SERVICES).filter(|&s| parsed(s) != before[s]).collect();
    assert_eq!(reparsed, [changed], "one change re-parses its service only");
    assert_eq!(
        parsed(changed),
        before[changed] + 1,
        "and that service once (a kick the answer already showed is not parsed)"
    );
    assert!(
        fake.health_wakeups() <= 1,
        "a write wakes the watchers of its service only: {} woken",
        fake.health_wakeups()
    );
    for (s, c) in clients.iter().enumerate() {
        if s != changed {
            assert_eq!(c.get_ref().endpoints().len(), INSTANCES);
        }
    }
    assert!(
        fake.state_requests() <= 4,
        "the change feed asks again once per change (plus its turn running out): {}",
        fake.state_requests()
    );

    // The instance comes back: its check leaves the feed's list, and the
    // idle client routes to it again as fast.
    let kicked = client.watches_kicked();
    assert!(fake.set_health(&format!("{}-3", name(changed)), Health::Passing));
    let back = std::time::Instant::now();
    tokio::time::timeout(SEEN_WITHIN, async {
        while clients[changed].get_ref().endpoints().len() != INSTANCES {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("an idle client sees the instance come back");
    let back = back.elapsed();
    tokio::time::timeout(SEEN_WITHIN, async {
        while client.watches_kicked() == kicked {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the feed kicks the changed service's watch");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client.watches_kicked(),
        kicked + 1,
        "the feed kicks the watch of the changed service only"
    );
    assert!(
        fake.max_open_connections() <= u64::from(MAX_CONNECTIONS),
        "still within the budget: {}",
        fake.max_open_connections()
    );
    eprintln!(
        "scale: change seen by the idle client in {latency:?}, undone in {back:?}; {} connections opened in all",
        fake.connections_opened()
    );
}
