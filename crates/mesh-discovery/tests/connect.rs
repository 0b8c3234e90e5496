//! Consul Connect end to end over real mTLS on 127.0.0.1: certificates and
//! intentions from the fake agent, rotations under load, revocation by
//! intention, and a certificate of another trust domain.
#![cfg(feature = "connect")]

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_auth::CallerIdentity;
use mesh_auth::tls::{ClientTlsConfig, MtlsAcceptor, MtlsClientConfig, serve};
use mesh_discovery::connect::{ConnectConfig, ConnectIdentity, ConnectStatus, IntentionsLayer};
use mesh_discovery::consul::{
    ConsulClient, ConsulConfig, ConsulDiscovery, HealthQuery, WatchConfig,
};
use mesh_testkit::consul::{FakeConsul, Instance};
use tokio::time::timeout;
use tower::ServiceBuilder;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

const LIMIT: Duration = Duration::from_secs(10);

fn consul_client(consul: &FakeConsul) -> ConsulClient {
    ConsulClient::new(&ConsulConfig::new(consul.url())).unwrap()
}

async fn identity(consul: &FakeConsul, service: &str) -> ConnectIdentity {
    ConnectIdentity::start(
        consul_client(consul),
        ConnectConfig::new(service).with_wait(Duration::from_secs(30)),
    )
    .await
    .unwrap()
}

/// The `api` service: answers with the caller's identity and certificate
/// fingerprint, behind the intentions; counts what it served.
struct Api {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
}

async fn start_api(identity: &ConnectIdentity) -> Api {
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let app = ServiceBuilder::new()
        .layer(IntentionsLayer::new(identity))
        .service(tower::service_fn(
            move |req: http::Request<hyper::body::Incoming>| {
                count.fetch_add(1, Ordering::SeqCst);
                let who = req.extensions().get::<CallerIdentity>().cloned();
                async move {
                    let who = who.map_or_else(String::new, |w| {
                        format!("{} {}", w, w.certificate_fingerprint().unwrap_or(""))
                    });
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(who))))
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = identity.server_tls().unwrap();
    tokio::spawn(serve(listener, MtlsAcceptor::new(&server), app));
    Api { addr, served }
}

/// A client that opens a new connection (a full handshake) per call.
fn client(tls: &MtlsClientConfig) -> HttpsClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(tls.https_connector())
}

async fn call(
    client: &HttpsClient,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let resp = timeout(LIMIT, client.request(req))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

async fn wait(identity: &ConnectIdentity, f: impl FnMut(&ConnectStatus) -> bool) -> ConnectStatus {
    timeout(LIMIT, identity.wait_for(f))
        .await
        .expect("the identity follows the agent")
}

#[tokio::test]
async fn a_call_succeeds_with_agent_issued_certificates_found_by_connect_discovery() {
    let consul = FakeConsul::start().await.unwrap();
    consul.set_intention("web", "api", true);
    let api_id = identity(&consul, "api").await;
    let api = start_api(&api_id).await;
    consul
        .add_instance(Instance::new("api", "api-1", "127.0.0.1", api.addr.port()).connect_native());
    // A plain instance is not a Connect endpoint.
    consul.add_instance(Instance::new("api", "api-legacy", "127.0.0.1", 1));

    let web = identity(&consul, "web").await;
    assert_eq!(web.status().service_uri, consul.connect_service_uri("web"));
    assert_eq!(web.status().trust_domain, consul.connect_trust_domain());
    let found = ConsulDiscovery::spawn(
        consul_client(&consul),
        WatchConfig {
            query: HealthQuery::connect("api"),
            ..WatchConfig::default()
        },
    )
    .unwrap();
    let set = timeout(LIMIT, found.wait_for(|s| !s.is_empty()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(set.len(), 1, "{set:?}");
    let endpoint = set.endpoints()[0].address().to_string();

    let client = client(&web.client_tls("api").unwrap());
    let (status, body) = call(&client, endpoint.parse().unwrap(), "GET", "/hello")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        body.starts_with(&consul.connect_service_uri("web")),
        "{body}"
    );
    assert_eq!(api.served.load(Ordering::SeqCst), 1);

    // The client checks the server's identity: `api`'s certificate does not
    // prove `billing`.
    let wrong = self::client(&web.client_tls("billing").unwrap());
    assert!(call(&wrong, api.addr, "GET", "/").await.is_err());
    assert_eq!(api.served.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn leaf_and_root_rotations_under_load_fail_no_call() {
    let consul = FakeConsul::start().await.unwrap();
    consul.set_intention("web", "api", true);
    let api_id = identity(&consul, "api").await;
    let api = start_api(&api_id).await;
    let web = identity(&consul, "web").await;
    let client = client(&web.client_tls("api").unwrap());

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, stop, failures, seen, ok) = (
            client.clone(),
            stop.clone(),
            failures.clone(),
            seen.clone(),
            ok.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match call(&client, api.addr, "GET", "/").await {
                    Ok((200, body)) => {
                        seen.lock().unwrap().insert(body);
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures.lock().unwrap().push(format!("{other:?}")),
                }
            }
        }));
    }
    let calls_after = |n: usize| {
        let ok = ok.clone();
        async move {
            let target = ok.load(Ordering::SeqCst) + n;
            timeout(LIMIT, async {
                while ok.load(Ordering::SeqCst) < target {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("calls keep succeeding");
        }
    };
    calls_after(20).await;

    // Leaf rotation of both sides.
    let (w, a) = (web.status(), api_id.status());
    consul.rotate_connect_leaf("web");
    consul.rotate_connect_leaf("api");
    wait(&web, |s| s.leaf_updates > w.leaf_updates).await;
    wait(&api_id, |s| s.leaf_updates > a.leaf_updates).await;
    calls_after(20).await;

    // CA rotation: a new root cross-signed by the old, new leaves from it.
    let (w, a) = (web.status(), api_id.status());
    consul.rotate_connect_ca();
    for (id, before) in [(&web, &w), (&api_id, &a)] {
        let s = wait(id, |s| {
            s.root_updates > before.root_updates && s.leaf_updates > before.leaf_updates
        })
        .await;
        assert_eq!(s.roots, 2);
        assert_ne!(s.active_root_id, before.active_root_id);
    }
    calls_after(20).await;

    // The old root goes away: only the new generation is trusted.
    consul.prune_connect_roots();
    for id in [&web, &api_id] {
        wait(id, |s| s.roots == 1).await;
    }
    calls_after(20).await;

    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed calls: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    // The server saw web's three certificates (initial, rotated, new CA).
    assert!(
        seen.lock().unwrap().len() >= 3,
        "{:?}",
        seen.lock().unwrap()
    );
    assert!(api.served.load(Ordering::SeqCst) >= 80);
}

#[tokio::test]
async fn deleting_an_allow_intention_denies_the_next_call_within_one_blocking_round() {
    let consul = FakeConsul::start().await.unwrap();
    consul.set_intention("web", "api", true);
    let api_id = identity(&consul, "api").await;
    let api = start_api(&api_id).await;
    let web = identity(&consul, "web").await;
    let client = client(&web.client_tls("api").unwrap());
    assert_eq!(call(&client, api.addr, "GET", "/").await.unwrap().0, 200);

    let before = api_id.status().intention_updates;
    consul.reset_counts();
    assert!(consul.delete_intention("web", "api"));
    // The blocked intentions query returns with the change: one round.
    wait(&api_id, |s| s.intention_updates == before + 1).await;
    assert_eq!(call(&client, api.addr, "GET", "/").await.unwrap().0, 403);
    assert_eq!(
        api.served.load(Ordering::SeqCst),
        1,
        "denied before the handler"
    );

    // L7: web may GET under /v1/ only.
    consul.set_l7_intention(
        "web",
        "api",
        serde_json::json!([{"Action": "allow", "HTTP": {"PathPrefix": "/v1/", "Methods": ["GET"]}}]),
    );
    wait(&api_id, |s| s.intention_updates == before + 2).await;
    assert_eq!(
        call(&client, api.addr, "GET", "/v1/orders")
            .await
            .unwrap()
            .0,
        200
    );
    assert_eq!(
        call(&client, api.addr, "POST", "/v1/orders")
            .await
            .unwrap()
            .0,
        403
    );
    assert_eq!(
        call(&client, api.addr, "GET", "/admin").await.unwrap().0,
        403
    );
}

#[tokio::test]
async fn a_certificate_from_another_trust_domain_is_rejected() {
    let consul = FakeConsul::start().await.unwrap();
    let other = FakeConsul::start().await.unwrap();
    consul.set_intention("*", "api", true);
    other.set_intention("*", "api", true);
    assert_ne!(consul.connect_trust_domain(), other.connect_trust_domain());
    let api_id = identity(&consul, "api").await;
    let api = start_api(&api_id).await;

    // `web` of the other cluster, trusting this cluster's roots so that only
    // the server's check can refuse it.
    let intruder = identity(&other, "web").await;
    let tls = ClientTlsConfig::new(api_id.roots_pem())
        .with_client_cert(intruder.leaf_pem(), intruder.leaf_pem())
        .with_server_identity(consul.connect_service_uri("api"))
        .without_hostname_verification()
        .build()
        .unwrap();
    let result = call(&client(&tls), api.addr, "GET", "/").await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(api.served.load(Ordering::SeqCst), 0);

    // And a client of this cluster refuses the other cluster's `api`.
    let other_api_id = identity(&other, "api").await;
    let other_api = start_api(&other_api_id).await;
    let web = identity(&consul, "web").await;
    let result = call(
        &client(&web.client_tls("api").unwrap()),
        other_api.addr,
        "GET",
        "/",
    )
    .await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(other_api.served.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_agent_going_away_keeps_the_last_identity() {
    let consul = FakeConsul::start().await.unwrap();
    consul.set_intention("web", "api", true);
    let api_id = identity(&consul, "api").await;
    let api = start_api(&api_id).await;
    let web = identity(&consul, "web").await;
    let client = client(&web.client_tls("api").unwrap());
    consul.set_fault(mesh_testkit::consul::Fault::NoLeader);
    consul.rotate_connect_leaf("api");
    let failing = wait(&api_id, |s| s.last_error.is_some()).await;
    // Fail static: the certificates, roots and intentions in use stay.
    assert_eq!(call(&client, api.addr, "GET", "/").await.unwrap().0, 200);
    // The agent comes back: the watch starts again from index 0 and picks
    // up the leaf it missed.
    consul.clear_fault();
    let back = wait(&api_id, |s| {
        s.last_error.is_none() && s.leaf_updates > failing.leaf_updates
    })
    .await;
    assert_ne!(back.leaf_serial, failing.leaf_serial);
    assert_eq!(call(&client, api.addr, "GET", "/").await.unwrap().0, 200);
}

/// Against a real agent with Connect on: leaf and roots.
#[tokio::test]
#[ignore = "needs a Consul agent with Connect enabled: set CONSUL_HTTP_ADDR and run with --ignored"]
async fn real_agent_leaf_and_roots() {
    let client = ConsulClient::from_env().expect("CONSUL_HTTP_ADDR and friends");
    let service = format!("mesh-connect-test-{}", std::process::id());
    let id = ConnectIdentity::start(client, ConnectConfig::new(&service))
        .await
        .expect("the agent issues a leaf and lists its roots");
    let status = id.status();
    assert!(status.trust_domain.ends_with(".consul"), "{status:?}");
    assert!(status.roots >= 1);
    let sid = id.service_id();
    assert_eq!(sid.service, service);
    assert_eq!(sid.trust_domain, status.trust_domain);
    id.server_tls()
        .expect("the agent's leaf and roots make a server config");
    id.client_tls(&service).expect("and a client config");
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_audit_event_names_the_decision_and_the_intention_and_no_key_is_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let consul = FakeConsul::start().await.unwrap();
    consul.set_intention("web", "api", false);
    let api_id = identity(&consul, "api").await;
    let api = start_api(&api_id).await;
    let web = identity(&consul, "web").await;
    tracing::info!(?web, leaf = ?web.leaf_pem(), "careless code logs the identity");
    let client = client(&web.client_tls("api").unwrap());
    assert_eq!(
        call(&client, api.addr, "GET", "/orders?secret=1")
            .await
            .unwrap()
            .0,
        403
    );

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let denial = text
        .lines()
        .find(|l| l.contains("request denied by Consul intentions"))
        .unwrap_or_else(|| panic!("no audit event in:\n{text}"));
    for field in [
        "decision=\"deny\"",
        "reason=\"intention\"",
        "intention_source=\"web\"",
        "precedence=9",
        "intention=\"",
        "method=GET",
        "path=\"/orders\"",
        "cert_sha256=",
    ] {
        assert!(denial.contains(field), "{field} missing in {denial}");
    }
    assert!(
        !text.contains("secret=1"),
        "the query string reached the logs"
    );
    assert!(
        !text.contains("PRIVATE KEY"),
        "a private key reached the logs"
    );
}

#[tokio::test]
async fn leaves_the_agent_renews_replace_expiring_ones_in_place() {
    let consul = FakeConsul::start().await.unwrap();
    // Short-lived leaves: the agent renews them at 80 % of their life.
    consul.set_connect_leaf_ttl(Duration::from_secs(2));
    consul.set_intention("web", "api", true);
    let api_id = identity(&consul, "api").await;
    let api = start_api(&api_id).await;
    let web = identity(&consul, "web").await;
    let client = client(&web.client_tls("api").unwrap());
    let first = call(&client, api.addr, "GET", "/").await.unwrap();
    assert_eq!(first.0, 200);
    // No manual rotation: the blocked leaf queries return renewed leaves.
    for id in [&web, &api_id] {
        wait(id, |s| s.leaf_updates >= 2).await;
    }
    // Past the first leaves' expiry, new connections still succeed.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = call(&client, api.addr, "GET", "/").await.unwrap();
    assert_eq!(later.0, 200);
    assert_ne!(later.1, first.1, "the caller's certificate was renewed");
}

#[tokio::test(flavor = "current_thread")]
async fn a_leaf_close_to_expiry_that_the_agent_cannot_renew_is_warned_about() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let consul = FakeConsul::start().await.unwrap();
    consul.set_connect_leaf_ttl(Duration::from_secs(600));
    let api = identity(&consul, "api").await;
    consul.set_fault(mesh_testkit::consul::Fault::NoLeader);
    wait(&api, |s| s.last_error.is_some()).await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("the Connect leaf certificate expires soon"),
        "{text}"
    );
}
