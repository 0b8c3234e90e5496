//! The client environment as the Go client reads it, end to end over
//! loopback: Unix sockets, path prefixes, basic auth, `CONSUL_HTTP_SSL`,
//! `CONSUL_TLS_SERVER_NAME` with a port, `CONSUL_CAPATH`.

use std::collections::HashMap;
use std::time::Duration;

use mesh_discovery::consul::{
    ConsulClient, ConsulConfig, ConsulDiscovery, HealthQuery, Registration, ServiceRegistration,
    WatchConfig,
};
use mesh_testkit::backend::{Backend, Behavior, Reply};
use mesh_testkit::consul::{FakeConsul, Instance};
use tokio::time::timeout;

fn env(pairs: &[(&str, &str)]) -> ConsulConfig {
    let m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    ConsulConfig::from_lookup(|k| m.get(k).cloned()).unwrap()
}

#[cfg(unix)]
#[tokio::test]
async fn unix_sockets_register_and_watch() {
    let path = std::env::temp_dir().join(format!("mesh-consul-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let consul = FakeConsul::start_unix(&path).await.unwrap();
    consul.add_instance(Instance::new("users", "u1", "127.0.0.1", 9001));
    let config = env(&[("CONSUL_HTTP_ADDR", &format!("unix://{}", path.display()))]);
    let client = ConsulClient::new(&config).unwrap();
    let mut watch = WatchConfig::new("users");
    watch.wait = Duration::from_secs(1);
    let users = ConsulDiscovery::spawn(client.clone(), watch).unwrap();
    let set = timeout(Duration::from_secs(10), users.wait_for(|s| s.len() == 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(set.endpoints()[0].key().as_str(), "fake-node/u1");
    let r = Registration::register(client, ServiceRegistration::new("api", 8080))
        .await
        .unwrap();
    assert_eq!(consul.instance_ids("api"), ["api-8080"]);
    r.deregister().await.unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_path_prefix_and_basic_auth_reach_the_gateway() {
    let gw = Backend::builder()
        .behavior(Behavior::Respond(
            Reply::status(200)
                .header("X-Consul-Index", "7")
                .header("Content-Type", "application/json")
                .body("[]"),
        ))
        .start()
        .await
        .unwrap();
    let config = env(&[
        ("CONSUL_HTTP_ADDR", &format!("http://{}/consul/", gw.addr())),
        ("CONSUL_HTTP_AUTH", "ops:s3cr3t"),
        ("CONSUL_HTTP_TOKEN", "acl-token"),
    ]);
    let client = ConsulClient::new(&config).unwrap();
    assert!(!format!("{client:?} {config:?}").contains("s3cr3t"));
    let answer = client
        .health_service(&HealthQuery::new("web"), 0, None)
        .await
        .unwrap();
    assert_eq!(answer.index, Some(7));
    let req = &gw.requests()[0];
    assert_eq!(req.uri.path(), "/consul/v1/health/service/web");
    // base64("ops:s3cr3t")
    assert_eq!(req.headers["authorization"], "Basic b3BzOnMzY3IzdA==");
    assert_eq!(req.headers["x-consul-token"], "acl-token");
}

#[tokio::test]
async fn consul_http_ssl_upgrades_and_the_server_name_loses_its_port() {
    let c = env(&[
        ("CONSUL_HTTP_ADDR", "http://127.0.0.1:8501"),
        ("CONSUL_HTTP_SSL", "true"),
        ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul:8501"),
    ]);
    let client = ConsulClient::new(&c).unwrap();
    assert_eq!(client.base_url(), "https://server.dc1.consul:8501/");
    let c = env(&[
        ("CONSUL_HTTP_ADDR", "https://127.0.0.1:8501"),
        ("CONSUL_HTTP_SSL", "false"),
    ]);
    assert_eq!(
        ConsulClient::new(&c).unwrap().base_url(),
        "https://127.0.0.1:8501/",
        "never downgraded"
    );
}

#[test]
fn ca_path_trusts_every_pem_file_and_names_a_bad_one() {
    let dir = std::env::temp_dir().join(format!("mesh-consul-capath-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/consul/ca.pem"),
        dir.join("ca.pem"),
    )
    .unwrap();
    let c = env(&[
        ("CONSUL_HTTP_ADDR", "https://127.0.0.1:8501"),
        ("CONSUL_CAPATH", dir.to_str().unwrap()),
    ]);
    ConsulClient::new(&c).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a certificate").unwrap();
    let e = ConsulClient::new(&c).unwrap_err();
    assert_eq!(e.errors()[0].path(), "ca_path", "{e}");
    assert!(e.to_string().contains("notes.txt"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
