//! Captures everything mesh-auth logs (at TRACE) while keys are attached,
//! accepted, rejected and rotated, and proves no key ever reaches the output.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{Ca, ORDERS, USERS, Validity};
use mesh_auth::apikey::{ApiKeyAuthLayer, ApiKeyHeader, ApiKeyLayer, ApiKeySet};
use mesh_auth::authz::{AuthorizationPolicy, AuthorizeLayer, Rule};
use mesh_auth::tls::{ClientTlsConfig, MtlsAcceptor, PemSource, ServerTlsConfig};
use mesh_auth::{Secret, SecretSource};
use tower::{ServiceBuilder, ServiceExt, service_fn};

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
}

const KEY: &str = "sk-live-SUPERSECRET-1234";
const OTHER_KEY: &str = "sk-live-NEWSECRET-5678";
const GUESS: &str = "sk-guess-ATTACKER-0000";

#[tokio::test(flavor = "current_thread")]
async fn keys_never_reach_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let source = SecretSource::Value(KEY.into());
    let client_layer = ApiKeyLayer::from_source(ApiKeyHeader::Bearer, &source).unwrap();
    let keys = ApiKeySet::new().with_key("orders", &Secret::from(KEY));
    let server_layer = ApiKeyAuthLayer::new(ApiKeyHeader::Bearer, keys.clone());
    // Careless code that logs the config objects must not leak either.
    tracing::info!(?source, ?client_layer, ?server_layer, ?keys, "configured");

    let policy =
        AuthorizationPolicy::deny_by_default(vec![Rule::allow("apikey:orders").paths(["/ok"])])
            .compile()
            .unwrap();
    let server = ServiceBuilder::new()
        .layer(server_layer.clone())
        .layer(AuthorizeLayer::new(policy))
        .service(service_fn(|req: http::Request<()>| async move {
            tracing::info!(headers = ?req.headers(), "handler saw a request");
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        }));

    let call = |path: &'static str, key: Option<&'static str>| {
        let server = server.clone();
        async move {
            let req = http::Request::get(path).body(()).unwrap();
            let res = match key {
                Some(k) => {
                    let layer = ApiKeyLayer::new(ApiKeyHeader::Bearer, &Secret::from(k)).unwrap();
                    ServiceBuilder::new()
                        .layer(layer)
                        .service(server)
                        .oneshot(req)
                        .await
                }
                None => server.oneshot(req).await,
            };
            res.unwrap().status().as_u16()
        }
    };
    assert_eq!(call("/ok", Some(KEY)).await, 200);
    assert_eq!(call("/other", Some(KEY)).await, 403);
    assert_eq!(call("/ok", Some(GUESS)).await, 401);
    assert_eq!(call("/ok", None).await, 401);
    server_layer.replace_keys(
        ApiKeySet::new()
            .with_key("orders", &Secret::from(KEY))
            .with_key("orders", &Secret::from(OTHER_KEY)),
    );
    assert_eq!(call("/ok", Some(OTHER_KEY)).await, 200);

    // A TLS rejection is logged with its kind.
    let ca = Ca::new("mesh CA");
    let leaf = ca.leaf(&[USERS, "localhost"], Validity::Now);
    let config = ServerTlsConfig::new(ca.source(), leaf.cert(), leaf.key())
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = MtlsAcceptor::new(&config);
    let server_side = async {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.unwrap_err()
    };
    let rogue = Ca::new("rogue");
    let bad = rogue.leaf(&[ORDERS], Validity::Now);
    let client = ClientTlsConfig::new(ca.source())
        .with_client_cert(bad.cert(), bad.key())
        .build()
        .unwrap();
    let client_side = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        if let Ok(mut s) = client.connector().connect(name, tcp).await {
            use tokio::io::AsyncReadExt;
            let _ = s.read(&mut [0u8; 1]).await;
        }
    };
    let (err, ()) = tokio::join!(server_side, client_side);
    assert_eq!(err.kind(), mesh_auth::TlsErrorKind::UnknownCa);
    // A malformed key file is reported without echoing its content.
    let err = ServerTlsConfig::new(
        ca.source(),
        leaf.cert(),
        PemSource::pem(format!(
            "-----BEGIN PRIVATE KEY-----\n{KEY}\n-----END PRIVATE KEY-----\n"
        )),
    )
    .build()
    .unwrap_err();
    tracing::warn!(error = %err, "bad key file");

    let logs = captured.text();
    // The capture works: the events we expect are there...
    for expected in [
        "configured",
        "API key accepted",
        "API key rejected",
        "request denied",
        "API key set replaced",
        "mTLS handshake rejected",
        "kind=unknown_ca",
        "bad key file",
        "[redacted]",
    ] {
        assert!(logs.contains(expected), "missing `{expected}` in:\n{logs}");
    }
    // ...and no key, nor its hash, is.
    for secret in [
        KEY,
        OTHER_KEY,
        GUESS,
        "SUPERSECRET",
        "NEWSECRET",
        "ATTACKER",
    ] {
        assert!(!logs.contains(secret), "`{secret}` leaked into:\n{logs}");
    }
    let hash = ApiKeySet::hash_hex(&Secret::from(KEY));
    assert!(!logs.contains(&hash));
}
