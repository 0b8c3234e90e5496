//! Registration against the faithful fake Consul over real loopback HTTP:
//! default IDs, validation, routable on return, maintenance.

use std::time::Duration;

use mesh_discovery::ErrorKind;
use mesh_discovery::consul::{
    CheckDefinition, ConsulClient, ConsulConfig, Registration, ServiceRegistration,
};
use mesh_testkit::consul::{FakeConsul, Health};
use tokio::net::TcpListener;
use tokio::time::Instant;

fn client(consul: &FakeConsul) -> ConsulClient {
    let mut c = ConsulConfig::new(consul.url());
    c.request_timeout = Duration::from_secs(2);
    ConsulClient::new(&c).unwrap()
}

/// Two instances of one service on one agent, registered without an ID, do
/// not overwrite each other.
#[tokio::test]
async fn default_ids_keep_two_instances_on_one_agent_apart() {
    let consul = FakeConsul::start().await.unwrap();
    let client = client(&consul);
    let a = Registration::register(client.clone(), ServiceRegistration::new("api", 8080))
        .await
        .unwrap();
    let b = Registration::register(
        client.clone(),
        ServiceRegistration::new("api", 8081).address("127.0.0.1"),
    )
    .await
    .unwrap();
    assert_eq!(
        (a.service_id(), b.service_id()),
        ("api-8080", "api-127.0.0.1-8081")
    );
    assert_eq!(
        consul.instance_ids("api"),
        ["api-127.0.0.1-8081", "api-8080"]
    );
    b.deregister().await.unwrap();
    assert_eq!(consul.instance_ids("api"), ["api-8080"]);
}

/// What Consul would reject or silently change is refused before sending.
#[tokio::test]
async fn invalid_registrations_never_reach_the_agent() {
    let consul = FakeConsul::start().await.unwrap();
    let client = client(&consul);
    for reg in [
        ServiceRegistration::new("api", 1).weights(0, 1),
        ServiceRegistration::new("api", 1).check(
            CheckDefinition::ttl("c", Duration::from_secs(5))
                .deregister_after(Duration::from_secs(10)),
        ),
    ] {
        let e = Registration::register(client.clone(), reg)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Other, "{e}");
    }
    assert_eq!(consul.request_count(), 0);
}

/// A TTL check gets its first pass before `register` returns: the instance
/// is passing at once, not after the first heartbeat.
#[tokio::test]
async fn a_ttl_registration_is_passing_when_register_returns() {
    let consul = FakeConsul::start().await.unwrap();
    let reg = ServiceRegistration::new("api", 8080)
        .check(CheckDefinition::ttl("api-ttl", Duration::from_secs(30)));
    let r = Registration::register(client(&consul), reg).await.unwrap();
    assert_eq!(consul.healthy_ids("api"), ["api-8080"]);
    assert_eq!(consul.check_status("api-ttl"), Some(Health::Passing));
    r.deregister().await.unwrap();
}

/// With a check Consul runs itself, `register` waits (bounded) until the
/// agent reports the instance passing.
#[tokio::test]
async fn a_probed_registration_returns_once_the_agent_reports_it_passing() {
    let consul = FakeConsul::start().await.unwrap();
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = target.local_addr().unwrap();
    let reg = ServiceRegistration::new("api", addr.port()).check(CheckDefinition::tcp(
        "api-tcp",
        addr.to_string(),
        Duration::from_millis(500),
    ));
    let r = Registration::register(client(&consul), reg).await.unwrap();
    assert_eq!(consul.check_status("api-tcp"), Some(Health::Passing));
    assert_eq!(consul.healthy_ids("api").len(), 1);
    drop(r);
    drop(target);
}

/// A check that never passes: `register_within` fails after its bound with a
/// Timeout error and leaves nothing registered.
#[tokio::test]
async fn a_registration_that_never_passes_times_out_and_is_removed() {
    let consul = FakeConsul::start().await.unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let reg = ServiceRegistration::new("api", addr.port()).check(CheckDefinition::tcp(
        "api-tcp",
        addr.to_string(),
        Duration::from_millis(100),
    ));
    let start = Instant::now();
    let e = Registration::register_within(client(&consul), reg, Duration::from_millis(600))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(e.to_string().contains("api-"), "{e}");
    assert!(consul.instance_ids("api").is_empty());
}

/// Maintenance drains an instance whatever its checks say.
#[tokio::test]
async fn maintenance_takes_an_instance_out_and_back() {
    let consul = FakeConsul::start().await.unwrap();
    let reg = ServiceRegistration::new("api", 8080)
        .check(CheckDefinition::ttl("api-ttl", Duration::from_secs(30)));
    let r = Registration::register(client(&consul), reg).await.unwrap();
    r.set_maintenance(Some("deploy")).await.unwrap();
    assert!(consul.healthy_ids("api").is_empty());
    r.set_maintenance(None).await.unwrap();
    assert_eq!(consul.healthy_ids("api"), ["api-8080"]);
    let e = client(&consul)
        .service_maintenance("nope", Some("x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}
