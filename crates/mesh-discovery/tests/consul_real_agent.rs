//! Against a real Consul agent: registration (routable on return), the
//! health watch (warning weights, critical instances left out), maintenance
//! and ACL tokens. Ignored by default; run with a local agent:
//!
//! ```text
//! consul agent -dev &   # or any agent reachable from 127.0.0.1
//! CONSUL_HTTP_ADDR=127.0.0.1:8500 cargo test -p mesh-discovery --test consul_real_agent -- --ignored
//! # the ACL test also needs an agent with ACLs on and a management token:
//! CONSUL_HTTP_TOKEN=<token> cargo test -p mesh-discovery --test consul_real_agent -- --ignored acl
//! ```

use std::time::Duration;

use mesh_discovery::consul::{
    CheckDefinition, CheckStatus, ConsulClient, ConsulConfig, ConsulDiscovery, Registration,
    ServiceRegistration, WatchConfig,
};
use mesh_discovery::{Discovery, EmptyPolicy, EndpointSet, ErrorKind};
use mesh_testkit::backend::Backend;
use tokio::time::timeout;

fn client() -> ConsulClient {
    assert!(
        std::env::var_os("CONSUL_HTTP_ADDR").is_some(),
        "set CONSUL_HTTP_ADDR to run the real-agent tests"
    );
    ConsulClient::from_env().expect("CONSUL_HTTP_ADDR and friends")
}

fn name(what: &str) -> String {
    format!("mesh-test-{what}-{}", std::process::id())
}

fn watch(client: &ConsulClient, service: &str, passing_only: bool) -> Discovery {
    let mut c = WatchConfig::new(service);
    c.wait = Duration::from_secs(2);
    c.min_interval = Duration::from_millis(100);
    c.empty = EmptyPolicy::Publish;
    c.query.passing_only = passing_only;
    ConsulDiscovery::spawn(client.clone(), c).unwrap()
}

async fn until(d: &Discovery, f: impl FnMut(&EndpointSet) -> bool) -> EndpointSet {
    timeout(Duration::from_secs(30), d.wait_for(f))
        .await
        .expect("in time")
        .expect("watch alive")
}

#[tokio::test]
#[ignore = "needs a Consul agent: set CONSUL_HTTP_ADDR and run with --ignored"]
async fn real_agent_ttl_registration_is_routable_when_register_returns() {
    let client = client();
    let service = name("ttl");
    let reg = ServiceRegistration::new(&service, 8080)
        .address("127.0.0.1")
        .check(CheckDefinition::ttl(
            format!("{service}-ttl"),
            Duration::from_secs(10),
        ));
    let r = Registration::register(client.clone(), reg).await.unwrap();
    assert_eq!(
        client.agent_service_status(r.service_id()).await.unwrap(),
        CheckStatus::Passing
    );
    r.deregister().await.unwrap();
}

#[tokio::test]
#[ignore = "needs a Consul agent: set CONSUL_HTTP_ADDR and run with --ignored"]
async fn real_agent_http_registration_waits_for_the_first_check() {
    let client = client();
    let backend = Backend::start().await.unwrap();
    let service = name("http");
    let reg = ServiceRegistration::new(&service, backend.addr().port())
        .address("127.0.0.1")
        .check(CheckDefinition::http(
            format!("{service}-http"),
            backend.url("/health"),
            Duration::from_secs(1),
        ));
    let r = Registration::register(client.clone(), reg).await.unwrap();
    assert_eq!(
        client.agent_service_status(r.service_id()).await.unwrap(),
        CheckStatus::Passing
    );
    assert!(backend.hits() >= 1, "the agent ran the check");
    r.deregister().await.unwrap();
}

#[tokio::test]
#[ignore = "needs a Consul agent: set CONSUL_HTTP_ADDR and run with --ignored"]
async fn real_agent_watch_weights_warning_and_drops_critical_and_maintenance() {
    let client = client();
    let service = name("watch");
    let reg = ServiceRegistration::new(&service, 8080)
        .address("127.0.0.1")
        .weights(10, 2)
        .check(CheckDefinition::ttl(
            format!("{service}-ttl"),
            Duration::from_secs(30),
        ));
    let r = Registration::register(client.clone(), reg).await.unwrap();
    let d = watch(&client, &service, false);
    let set = until(&d, |s| s.len() == 1).await;
    assert_eq!(set.endpoints()[0].weight(), 10);

    r.set_status(CheckStatus::Warning, "degraded");
    until(&d, |s| s.len() == 1 && s.endpoints()[0].weight() == 2).await;
    r.set_status(CheckStatus::Critical, "down");
    until(&d, EndpointSet::is_empty).await;
    r.set_status(CheckStatus::Passing, "ok");
    until(&d, |s| s.len() == 1).await;

    r.set_maintenance(Some("mesh test")).await.unwrap();
    until(&d, EndpointSet::is_empty).await;
    r.set_maintenance(None).await.unwrap();
    until(&d, |s| s.len() == 1).await;
    r.deregister().await.unwrap();
    until(&d, EndpointSet::is_empty).await;
}

#[tokio::test]
#[ignore = "needs a Consul agent with ACLs: set CONSUL_HTTP_ADDR and CONSUL_HTTP_TOKEN, run with --ignored"]
async fn real_agent_acl_tokens() {
    let client = client();
    assert!(
        std::env::var_os("CONSUL_HTTP_TOKEN").is_some(),
        "set CONSUL_HTTP_TOKEN (a token that may write services) to run the ACL test"
    );
    let service = name("acl");
    let r = Registration::register(
        client.clone(),
        ServiceRegistration::new(&service, 8080).address("127.0.0.1"),
    )
    .await
    .unwrap();

    // An unknown token: 403 "ACL not found".
    let mut bogus = ConsulConfig::from_env().unwrap();
    bogus.token = Some(mesh_discovery::consul::ConsulToken::new(
        "00000000-0000-0000-0000-00000000dead",
    ));
    let e = ConsulClient::new(&bogus)
        .unwrap()
        .register(&ServiceRegistration::new(&service, 8081))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");

    // No token: anonymous reads are filtered, which the watch reports as an
    // ACL error (unless the anonymous policy may read services).
    let mut anonymous = ConsulConfig::from_env().unwrap();
    anonymous.token = None;
    let d = watch(&ConsulClient::new(&anonymous).unwrap(), &service, true);
    let mut rx = d.subscribe_health();
    let h = timeout(
        Duration::from_secs(30),
        rx.wait_for(|h| h.last_error().is_some() || h.last_success().is_some()),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    if d.current().is_empty() {
        assert_eq!(
            h.last_error().map(mesh_discovery::DiscoveryError::kind),
            Some(ErrorKind::Denied),
            "{h:?}"
        );
    }
    r.deregister().await.unwrap();
}
