//! The attacks of issue 19, each against real rustls handshakes on 127.0.0.1
//! (certificates by rcgen) or a real HTTP exchange, each one that got
//! through before the fix. The row number of the table is in each
//! test's comment.
#![cfg(all(feature = "hyper", feature = "reqwest"))]

mod common;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::{Ca, Leaf, ORDERS, USERS, Validity, temp_dir, write_atomic};
use mesh_auth::apikey::{ApiKeyAuthLayer, ApiKeyHeader, ApiKeyLayer, ApiKeySet};
use mesh_auth::authz::{AuthorizationPolicy, AuthorizeLayer, Rule};
use mesh_auth::tls::{
    ClientTlsConfig, MtlsAcceptor, MtlsClientConfig, MtlsServerConfig, PemSource, ServerTlsConfig,
    serve,
};
use mesh_auth::{CallerIdentity, Secret, TlsError, TlsErrorKind};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower::{ServiceBuilder, ServiceExt, service_fn};

// ===== helpers =====

fn users_leaf(ca: &Ca) -> Leaf {
    ca.leaf(&[USERS, "localhost", "127.0.0.1"], Validity::Now)
}

fn server_config(ca: &Ca) -> MtlsServerConfig {
    let leaf = users_leaf(ca);
    ServerTlsConfig::new(ca.source(), leaf.cert(), leaf.key())
        .build()
        .unwrap()
}

fn client_config(ca: &Ca, leaf: &Leaf) -> MtlsClientConfig {
    ClientTlsConfig::new(ca.source())
        .with_client_cert(leaf.cert(), leaf.key())
        .build()
        .unwrap()
}

/// Accepts `n` connections; each reports what the server saw.
async fn server(
    config: &MtlsServerConfig,
    n: usize,
) -> (
    SocketAddr,
    JoinHandle<Vec<Result<CallerIdentity, TlsError>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = MtlsAcceptor::new(config).with_handshake_timeout(Duration::from_secs(5));
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..n {
            let (tcp, _) = listener.accept().await.unwrap();
            match acceptor.accept(tcp).await {
                Ok(mut stream) => {
                    stream.write_all(b"ok").await.unwrap();
                    stream.flush().await.unwrap();
                    seen.push(Ok(stream.identity().clone()));
                    let _ = stream.read(&mut [0u8; 1]).await;
                }
                Err(err) => seen.push(Err(err)),
            }
        }
        seen
    });
    (addr, task)
}

/// Connects (resuming a cached session when the config has one) and reads
/// the server's greeting.
async fn connect(config: &MtlsClientConfig, addr: SocketAddr) -> Result<(), TlsError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = config
        .connector()
        .connect(name, tcp)
        .await
        .map_err(|e| TlsError::from_io(&e))?;
    let mut buf = [0u8; 2];
    tls.read_exact(&mut buf)
        .await
        .map_err(|e| TlsError::from_io(&e))?;
    let _ = tls.shutdown().await;
    Ok(())
}

fn kinds(seen: &[Result<CallerIdentity, TlsError>]) -> Vec<Result<String, TlsErrorKind>> {
    seen.iter()
        .map(|r| match r {
            Ok(id) => Ok(id.to_string()),
            Err(e) => Err(e.kind()),
        })
        .collect()
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Captures events at `level` and above on this thread while the guard lives.
    fn install(&self, level: tracing::Level) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }
}

// ===== row 1: resumed sessions outliving the client certificate =====

#[tokio::test]
async fn a_resumed_session_does_not_outlive_the_client_certificate() {
    let ca = Ca::new("mesh CA");
    let (addr, task) = server(&server_config(&ca), 3).await;
    let client = client_config(&ca, &ca.leaf(&[ORDERS], Validity::ForSeconds(1)));
    connect(&client, addr).await.unwrap();
    // Certificate validity is wall-clock time, which tokio cannot pause:
    // wait for the certificate to expire for real.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The client resumes its cached session: no certificate is exchanged.
    let _ = connect(&client, addr).await;
    let _ = connect(&client, addr).await;
    let seen = kinds(&task.await.unwrap());
    assert_eq!(
        seen,
        [
            Ok(ORDERS.to_owned()),
            Err(TlsErrorKind::Expired),
            Err(TlsErrorKind::Expired)
        ]
    );
}

// ===== row 2: one CA minting another trust domain's identities =====

#[tokio::test]
async fn each_trust_domain_is_checked_against_its_own_bundle() {
    let ours = Ca::new("test.mesh CA");
    let partner = Ca::new("partner.example CA");
    let users = users_leaf(&ours);
    // The attack's setup: both CAs in one file; with bundles per domain,
    // that file only serves certificates without a URI SAN.
    let config = ServerTlsConfig::new(
        PemSource::pem(format!("{}{}", ours.pem(), partner.pem())),
        users.cert(),
        users.key(),
    )
    .with_trust_bundle("test.mesh", ours.source())
    .with_trust_bundle("partner.example", partner.source())
    .build()
    .unwrap();
    let (addr, task) = server(&config, 4).await;
    let forged = partner.leaf(&["spiffe://test.mesh/admin"], Validity::Now);
    let _ = connect(&client_config(&ours, &forged), addr).await;
    let partner_own = partner.leaf(&["spiffe://partner.example/billing"], Validity::Now);
    connect(&client_config(&ours, &partner_own), addr)
        .await
        .unwrap();
    connect(
        &client_config(&ours, &ours.leaf(&[ORDERS], Validity::Now)),
        addr,
    )
    .await
    .unwrap();
    let stranger = ours.leaf(&["spiffe://elsewhere.example/x"], Validity::Now);
    let _ = connect(&client_config(&ours, &stranger), addr).await;
    assert_eq!(
        kinds(&task.await.unwrap()),
        [
            Err(TlsErrorKind::UnknownCa),
            Ok("spiffe://partner.example/billing".to_owned()),
            Ok(ORDERS.to_owned()),
            Err(TlsErrorKind::UnknownCa),
        ]
    );
}

#[test]
fn trust_bundles_must_be_named_by_trust_domain() {
    let ca = Ca::new("mesh CA");
    let users = users_leaf(&ca);
    let err = ServerTlsConfig::new(ca.source(), users.cert(), users.key())
        .with_trust_bundle("Test.Mesh", ca.source())
        .validate()
        .unwrap_err();
    assert_eq!(err.errors()[0].path(), "trust_bundles.Test.Mesh");
}

// ===== row 5: ambiguous or malformed URI SANs =====

#[tokio::test]
async fn certificates_with_ambiguous_or_malformed_uri_sans_are_refused() {
    let ca = Ca::new("mesh CA");
    let (addr, task) = server(&server_config(&ca), 3).await;
    for sans in [
        &[ORDERS, "spiffe://test.mesh/admin"][..],
        &["https://test.mesh/orders"][..],
        &["spiffe://test.mesh/a/../admin"][..],
    ] {
        let _ = connect(&client_config(&ca, &ca.leaf(sans, Validity::Now)), addr).await;
    }
    assert_eq!(
        kinds(&task.await.unwrap()),
        vec![Err(TlsErrorKind::InvalidIdentity); 3]
    );
}

// ===== row 6: revoked client certificates =====

#[tokio::test]
async fn a_crl_in_the_ca_file_revokes_and_reloads_with_it() {
    let ca = Ca::new("mesh CA");
    let dir = temp_dir("crl");
    let ca_file = dir.join("ca.pem");
    write_atomic(&ca_file, &ca.pem());
    let users = users_leaf(&ca);
    let config = ServerTlsConfig::new(PemSource::file(&ca_file), users.cert(), users.key())
        .with_reload_interval(Duration::ZERO)
        .build()
        .unwrap();
    let (addr, task) = server(&config, 4).await;
    let revoked = client_config(
        &ca,
        &ca.leaf_with_serial(&[ORDERS], Validity::Now, Some(42)),
    );
    let fresh = client_config(
        &ca,
        &ca.leaf_with_serial(&["spiffe://test.mesh/billing"], Validity::Now, Some(43)),
    );
    connect(&revoked, addr).await.unwrap();
    write_atomic(&ca_file, &format!("{}{}", ca.pem(), ca.crl(&[42])));
    let _ = connect(&revoked, addr).await;
    let _ = connect(&revoked, addr).await;
    connect(&fresh, addr).await.unwrap();
    assert_eq!(
        kinds(&task.await.unwrap()),
        [
            Ok(ORDERS.to_owned()),
            Err(TlsErrorKind::Revoked),
            Err(TlsErrorKind::Revoked),
            Ok("spiffe://test.mesh/billing".to_owned()),
        ]
    );
}

// ===== row 7: credentials carried along a redirect =====

/// A plain-HTTP server counting requests and remembering their `x-api-key`.
async fn collector() -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = Router::new().fallback(move |headers: http::HeaderMap| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(
                headers
                    .get("x-api-key")
                    .map(|v| v.to_str().unwrap().to_owned()),
            );
            "collected"
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// A server answering every request with a redirect to `to`.
fn redirect_to(to: String) -> Router {
    Router::new().fallback(move || {
        let to = to.clone();
        async move { (http::StatusCode::FOUND, [(http::header::LOCATION, to)]) }
    })
}

#[tokio::test]
async fn an_api_key_client_does_not_follow_a_redirect_to_another_host() {
    let (elsewhere, seen) = collector().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = redirect_to(format!("http://{elsewhere}/steal"));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let reqwest = mesh_auth::apikey::reqwest_builder().build().unwrap();
    let inner = service_fn(move |req: http::Request<String>| {
        let reqwest = reqwest.clone();
        async move {
            let req = reqwest::Request::try_from(req)?;
            reqwest.execute(req).await.map(|r| r.status())
        }
    });
    let key = Secret::from("sk-live-0123456789abcdef");
    let client = ServiceBuilder::new()
        .layer(ApiKeyLayer::new(ApiKeyHeader::default(), &key).unwrap())
        .service(inner);
    let status = client
        .oneshot(
            http::Request::get(format!("http://{addr}/x"))
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(status, http::StatusCode::FOUND);
    assert!(
        seen.lock().unwrap().is_empty(),
        "the key reached the other host"
    );
}

#[tokio::test]
async fn an_mtls_reqwest_client_does_not_follow_redirects() {
    let ca = Ca::new("mesh CA");
    let config = server_config(&ca);
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    let app = Router::new().fallback(move || {
        h.fetch_add(1, Ordering::SeqCst);
        async { "followed" }
    });
    tokio::spawn(serve(other, MtlsAcceptor::new(&config), app));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = redirect_to(format!("https://{other_addr}/elsewhere"));
    tokio::spawn(serve(listener, MtlsAcceptor::new(&config), app));

    let client = client_config(&ca, &ca.leaf(&[ORDERS], Validity::Now))
        .reqwest_builder()
        .build()
        .unwrap();
    let res = client
        .get(format!("https://{addr}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::FOUND);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

// ===== rows 10 and 11: the key header after the check, short and repeated keys =====

#[tokio::test]
async fn the_key_header_is_gone_once_checked_and_repeated_headers_are_refused() {
    const KEY: &str = "sk-live-0123456789abcdef";
    let keys = ApiKeySet::new().with_key("orders", &Secret::from(KEY));
    let server = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(ApiKeyHeader::default(), keys))
        .service(service_fn(|req: http::Request<()>| async move {
            Ok::<_, Infallible>(http::Response::new(format!("{:?}", req.headers())))
        }));
    let req = http::Request::get("/x")
        .header("x-api-key", KEY)
        .header("x-other", "kept")
        .body(())
        .unwrap();
    let res = server.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(!res.body().contains(KEY), "{}", res.body());
    assert!(!res.body().contains("x-api-key"), "{}", res.body());
    assert!(res.body().contains("kept"));

    // Two copies, the valid one first: which one counts would depend on
    // who reads it.
    let req = http::Request::get("/x")
        .header("x-api-key", KEY)
        .header("x-api-key", "sk-attacker-chosen-value")
        .body(())
        .unwrap();
    assert_eq!(server.clone().oneshot(req).await.unwrap().status(), 401);

    // A one-character key: refused by the client, never accepted by a server.
    assert!(ApiKeyLayer::new(ApiKeyHeader::default(), &Secret::from("k")).is_err());
    let weak = ServiceBuilder::new()
        .layer(ApiKeyAuthLayer::new(
            ApiKeyHeader::default(),
            ApiKeySet::new().with_key("weak", &Secret::from("k")),
        ))
        .service(service_fn(|_req: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        }));
    let req = http::Request::get("/x")
        .header("x-api-key", "k")
        .body(())
        .unwrap();
    assert_eq!(weak.oneshot(req).await.unwrap().status(), 401);
}

// ===== row 12: insecure settings are logged =====

#[test]
fn insecure_settings_are_warned_about() {
    let captured = Captured::default();
    let _guard = captured.install(tracing::Level::WARN);
    let mut policy = AuthorizationPolicy::deny_by_default(vec![Rule::allow("apikey:orders")]);
    policy.default = mesh_auth::authz::Decision::Allow;
    policy.compile().unwrap();
    let ours = Ca::new("ours");
    let partner = Ca::new("partner");
    let users = users_leaf(&ours);
    ServerTlsConfig::new(
        PemSource::pem(format!("{}{}", ours.pem(), partner.pem())),
        users.cert(),
        users.key(),
    )
    .build()
    .unwrap();
    let text = captured.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("default: allow"), "{text}");
    assert!(text.contains("no trust_bundles"), "{text}");
}

// ===== row 13: many slow handshakes =====

#[tokio::test]
async fn handshakes_in_progress_are_capped() {
    let ca = Ca::new("mesh CA");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = MtlsAcceptor::new(&server_config(&ca))
        .with_max_concurrent_handshakes(1)
        .with_handshake_timeout(Duration::from_secs(30));
    tokio::spawn(serve(
        listener,
        acceptor,
        Router::new().route("/", get(|| async { "hi" })),
    ));
    // A client that connects and never says hello holds the only slot.
    let silent = TcpStream::connect(addr).await.unwrap();
    let client = client_config(&ca, &ca.leaf(&[ORDERS], Validity::Now))
        .reqwest_builder()
        .build()
        .unwrap();
    let url = format!("https://{addr}/");
    let waited = tokio::time::timeout(Duration::from_millis(500), client.get(&url).send()).await;
    assert!(waited.is_err(), "a handshake ran past the cap");
    drop(silent); // its handshake fails at once, and frees the slot
    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.text().await.unwrap(), "hi");
}

// ===== audit events =====

#[tokio::test(flavor = "current_thread")]
async fn each_decision_is_an_audit_event_denials_at_info() {
    let captured = Captured::default();
    let _guard = captured.install(tracing::Level::INFO);
    let ca = Ca::new("mesh CA");
    let leaf = ca.leaf(&[ORDERS], Validity::Now);
    let identity = CallerIdentity::from_certificate(&leaf.der).unwrap();
    let fingerprint = identity.certificate_fingerprint().unwrap().to_owned();
    let policy = AuthorizationPolicy::deny_by_default(vec![
        Rule::allow(ORDERS).methods(["GET"]).paths(["/users"]),
    ])
    .compile()
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(policy))
        .service(service_fn(|_req: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        }));
    let call = |method: http::Method, path: &'static str| {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        req.extensions_mut().insert(identity.clone());
        svc.clone().oneshot(req)
    };
    assert_eq!(
        call(http::Method::GET, "/users/1?token=abc")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        call(http::Method::DELETE, "/users/1")
            .await
            .unwrap()
            .status(),
        403
    );
    let text = captured.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "allows are DEBUG, denials INFO: {text}");
    let line = lines[0];
    for part in [
        " INFO ",
        "mesh_auth::audit",
        "decision=\"deny\"",
        "reason=\"default\"",
        "identity=\"spiffe://test.mesh/orders\"",
        "kind=\"spiffe\"",
        "trust_domain=\"test.mesh\"",
        &format!("cert_sha256=\"{fingerprint}\""),
        "method=DELETE",
        "path=\"/users/1\"",
    ] {
        assert!(line.contains(part), "{part} missing from {line}");
    }
    drop(_guard);

    let captured = Captured::default();
    let _guard = captured.install(tracing::Level::DEBUG);
    call(http::Method::GET, "/users/1?token=abc").await.unwrap();
    let text = captured.text();
    assert!(
        text.contains("decision=\"allow\"") && text.contains("rule=0"),
        "{text}"
    );
    assert!(
        !text.contains("token=abc"),
        "the query string is never logged"
    );
}
