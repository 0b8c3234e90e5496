//! The ready-made clients present the mesh's credentials themselves
//! (issue 19): `Mesh::hyper_client` and `Mesh::grpc_channel` connect with
//! mTLS when the config has `[tls]`, check each endpoint's identity (from
//! `[tls.server_identities]` or the endpoint's discovery metadata), and
//! send `[services.x.api_key]`; a redirect never carries the key away.
//! Real axum and tonic servers on 127.0.0.1, certificates from rcgen.

#![cfg(all(feature = "toml", feature = "tonic"))]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_stack::auth::tls::{MtlsAcceptor, serve};
use mesh_stack::auth::{CallerIdentity, TlsError, TlsErrorKind};
use mesh_stack::connector::MissingServerIdentity;
use mesh_stack::core::BoxError;
use mesh_stack::{Mesh, MeshConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceExt;

const ORDERS: &str = "spiffe://test.mesh/orders";
const USERS: &str = "spiffe://test.mesh/users";
const KEY: &str = "sk-reports-0123456789abcdef";

struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "mesh-stack-secure-clients-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let pki = Pki { dir, ca };
        pki.issue("users", USERS);
        pki.issue("orders", ORDERS);
        pki
    }

    /// Writes `<name>.crt` and `<name>.key` for this SPIFFE ID.
    fn issue(&self, name: &str, id: &str) {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    fn tls_section(&self, me: &str) -> String {
        let p = |f: &str| self.dir.join(f).display().to_string();
        format!(
            "[tls]\nca = {{ file = {:?} }}\ncert = {{ file = {:?} }}\nkey = {{ file = {:?} }}\n",
            p("ca.pem"),
            p(&format!("{me}.crt")),
            p(&format!("{me}.key"))
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const POLICY: &str = r#"
[server.authorization]
rules = [ { identity = "spiffe://test.mesh/orders", methods = ["GET"], paths = ["/users"] },
          { identity = "apikey:reports", methods = ["GET"], paths = ["/users"] } ]
"#;

/// The users service over mTLS, with `[tls]` and `[server]` from its own
/// file: answers with the caller's identity.
async fn mtls_users(pki: &Pki) -> SocketAddr {
    let file = format!("{}{POLICY}", pki.tls_section("users"));
    let users = Mesh::new(MeshConfig::from_toml_str(&file).unwrap()).unwrap();
    let app = Router::new()
        .route(
            "/users/{id}",
            get(|Extension(who): Extension<CallerIdentity>| async move { who.to_string() }),
        )
        .layer(users.server_layer().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = MtlsAcceptor::new(&users.server_tls().unwrap().unwrap());
    tokio::spawn(serve(listener, acceptor, app));
    addr
}

/// The orders service's file: `[tls]` as orders, users at `addr` with
/// `endpoint_extra` in its endpoint (metadata), and `extra` appended.
fn orders_file(pki: &Pki, addr: SocketAddr, tls_extra: &str, endpoint_extra: &str) -> String {
    format!(
        "{}{tls_extra}\n[services.users.discovery]\nkind = \"static\"\n\
         endpoints = [{{ address = \"{addr}\"{endpoint_extra} }}]\n",
        pki.tls_section("orders")
    )
}

async fn get_users(mesh: &Mesh, uri: &str) -> Result<(u16, String), BoxError> {
    let client = mesh.hyper_client::<Empty<Bytes>>("users")?;
    let res = client
        .oneshot(http::Request::get(uri).body(Empty::new())?)
        .await?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn tls_kind(err: &BoxError) -> Option<TlsErrorKind> {
    TlsError::find(&**err).map(|e| e.kind())
}

#[tokio::test]
async fn hyper_client_presents_the_certificate_of_tls_and_checks_the_server() {
    let pki = Pki::new("hyper");
    let addr = mtls_users(&pki).await;
    let file = orders_file(
        &pki,
        addr,
        &format!("[tls.server_identities]\nusers = {USERS:?}\n"),
        "",
    );
    let orders = Mesh::new(MeshConfig::from_toml_str(&file).unwrap()).unwrap();
    // `http://` names the service; the connection is mTLS all the same.
    assert_eq!(
        get_users(&orders, "http://users/users/7").await.unwrap(),
        (200, ORDERS.to_owned())
    );
    assert_eq!(
        get_users(&orders, "https://users/users/7").await.unwrap(),
        (200, ORDERS.to_owned())
    );
}

#[tokio::test]
async fn a_plain_client_of_the_same_type_is_never_what_hyper_client_returns() {
    let pki = Pki::new("cache");
    let addr = mtls_users(&pki).await;
    let file = orders_file(
        &pki,
        addr,
        &format!("[tls.server_identities]\nusers = {USERS:?}\n"),
        "",
    );
    let orders = Mesh::new(MeshConfig::from_toml_str(&file).unwrap()).unwrap();
    // A stack over the caller's own plain client, built first: the same type
    // as hyper_client's, but it must not be reused for it.
    let plain = orders
        .http_client("users", mesh_stack::inner::http_client::<Empty<Bytes>>())
        .unwrap();
    let req = http::Request::get("http://users/users/7")
        .body(Empty::new())
        .unwrap();
    assert!(plain.oneshot(req).await.is_err(), "an mTLS server");
    assert_eq!(
        get_users(&orders, "http://users/users/7").await.unwrap(),
        (200, ORDERS.to_owned())
    );
}

#[tokio::test]
async fn hyper_client_refuses_a_server_proving_another_identity() {
    let pki = Pki::new("wrong");
    let addr = mtls_users(&pki).await;
    let file = orders_file(
        &pki,
        addr,
        "[tls.server_identities]\nusers = \"spiffe://test.mesh/billing\"\n",
        "",
    );
    let orders = Mesh::new(MeshConfig::from_toml_str(&file).unwrap()).unwrap();
    let err = get_users(&orders, "http://users/users/7")
        .await
        .unwrap_err();
    assert_eq!(tls_kind(&err), Some(TlsErrorKind::WrongIdentity), "{err:?}");
}

#[tokio::test]
async fn each_endpoint_proves_the_identity_in_its_metadata() {
    let pki = Pki::new("meta");
    let addr = mtls_users(&pki).await;
    let meta = "identity_metadata = \"spiffe_id\"\n";

    // The identity the endpoint's metadata names: served.
    let file = orders_file(
        &pki,
        addr,
        meta,
        &format!(", metadata = {{ spiffe_id = {USERS:?} }}"),
    );
    let orders = Mesh::new(MeshConfig::from_toml_str(&file).unwrap()).unwrap();
    assert_eq!(
        get_users(&orders, "http://users/users/7").await.unwrap(),
        (200, ORDERS.to_owned())
    );

    // Metadata naming another identity: the handshake fails.
    let file = orders_file(
        &pki,
        addr,
        meta,
        ", metadata = { spiffe_id = \"spiffe://test.mesh/billing\" }",
    );
    let orders = Mesh::new(MeshConfig::from_toml_str(&file).unwrap()).unwrap();
    let err = get_users(&orders, "http://users/users/7")
        .await
        .unwrap_err();
    assert_eq!(tls_kind(&err), Some(TlsErrorKind::WrongIdentity), "{err:?}");

    // No identity in the metadata: not connected to at all.
    let file = orders_file(&pki, addr, meta, ", metadata = { zone = \"a\" }");
    let orders = Mesh::new(MeshConfig::from_toml_str(&file).unwrap()).unwrap();
    let err = get_users(&orders, "http://users/users/7")
        .await
        .unwrap_err();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&*err);
    let mut found = false;
    while let Some(e) = source {
        found |= e.is::<MissingServerIdentity>();
        source = e.source();
    }
    assert!(found, "{err:?}");

    // A `[tls.server_identities]` entry wins over the metadata.
    let file = orders_file(
        &pki,
        addr,
        &format!("{meta}[tls.server_identities]\nusers = {USERS:?}\n"),
        ", metadata = { spiffe_id = \"spiffe://test.mesh/billing\" }",
    );
    let orders = Mesh::new(MeshConfig::from_toml_str(&file).unwrap()).unwrap();
    assert_eq!(
        get_users(&orders, "http://users/users/7").await.unwrap().0,
        200
    );
}

#[tokio::test]
async fn the_identity_comes_from_consul_service_meta() {
    use mesh_testkit::consul::{FakeConsul, Instance};

    let pki = Pki::new("consul");
    let addr = mtls_users(&pki).await;
    let fake = FakeConsul::start().await.unwrap();
    fake.add_instance(
        Instance::new("users", "u1", "127.0.0.1", addr.port()).meta("spiffe_id", USERS),
    );
    fake.add_instance(
        Instance::new("users-claims-billing", "u2", "127.0.0.1", addr.port())
            .meta("spiffe_id", "spiffe://test.mesh/billing"),
    );
    let file = |consul_service: &str| {
        format!(
            "{}identity_metadata = \"spiffe_id\"\n\n[consul]\naddress = {:?}\n\n\
             [services.users]\ndiscovery = {{ kind = \"consul\", service = {consul_service:?}, wait = \"1s\" }}\n",
            pki.tls_section("orders"),
            fake.url()
        )
    };
    let orders = Mesh::new(MeshConfig::from_toml_str(&file("users")).unwrap()).unwrap();
    assert_eq!(
        get_users(&orders, "http://users/users/7").await.unwrap(),
        (200, ORDERS.to_owned())
    );
    let orders =
        Mesh::new(MeshConfig::from_toml_str(&file("users-claims-billing")).unwrap()).unwrap();
    let err = get_users(&orders, "http://users/users/7")
        .await
        .unwrap_err();
    assert_eq!(tls_kind(&err), Some(TlsErrorKind::WrongIdentity), "{err:?}");
}

#[tokio::test]
async fn grpc_channel_reaches_an_mtls_tonic_server() {
    let pki = Pki::new("grpc");
    let server_file = pki.tls_section("users");
    let server = Mesh::new(MeshConfig::from_toml_str(&server_file).unwrap()).unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("users", ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = MtlsAcceptor::new(&server.server_tls().unwrap().unwrap()).incoming(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming),
    );

    let check = || HealthCheckRequest {
        service: "users".into(),
    };
    let file = format!(
        "{}\n[tls.server_identities]\nhealth = {USERS:?}\n\n[services.health.discovery]\n\
         kind = \"static\"\nendpoints = [{{ address = \"{addr}\" }}]\n",
        pki.tls_section("orders")
    );
    let orders = Mesh::new(MeshConfig::from_toml_str(&file).unwrap()).unwrap();
    let mut health = HealthClient::with_origin(
        orders.grpc_channel("health").unwrap(),
        "http://health".parse().unwrap(),
    );
    let status = health.check(check()).await.unwrap().into_inner().status();
    assert_eq!(status, ServingStatus::Serving.into());

    // Another expected identity: refused, and the status says why.
    let wrong = file.replace(
        &format!("health = {USERS:?}"),
        "health = \"spiffe://test.mesh/billing\"",
    );
    let wrong = Mesh::new(MeshConfig::from_toml_str(&wrong).unwrap()).unwrap();
    let mut health = HealthClient::with_origin(
        wrong.grpc_channel("health").unwrap(),
        "http://health".parse().unwrap(),
    );
    let status = health.check(check()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let kind = TlsError::find(&status).map(|e| e.kind());
    assert_eq!(kind, Some(TlsErrorKind::WrongIdentity), "{status:?}");
}

#[tokio::test]
async fn grpc_channel_sends_the_api_key_of_its_file() {
    // A tonic server accepting the key through the server layer.
    let hash = mesh_stack::auth::apikey::ApiKeySet::hash_hex(&KEY.into());
    let server_file = format!(
        "[server.authorization]\nrules = [ {{ identity = \"apikey:reports\", paths = [\"/grpc.health.v1.Health\"] }} ]\n\n\
         [server.api_keys]\nkeys = [ {{ identity = \"reports\", sha256 = \"{hash}\" }} ]\n"
    );
    let server = Mesh::new(MeshConfig::from_toml_str(&server_file).unwrap()).unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("users", ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(server.server_layer().unwrap())
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let key = key_file("secure-clients-grpc-key");
    let service = format!(
        "[services.health]\ndiscovery = {{ kind = \"static\", endpoints = [{{ address = \"{addr}\" }}] }}\n"
    );
    let with_key = format!(
        "{service}api_key = {{ key = {{ file = {:?} }} }}\n",
        key.display().to_string()
    );
    let check = || HealthCheckRequest {
        service: "users".into(),
    };
    let channel = |file: &str| {
        let mesh = Mesh::new(MeshConfig::from_toml_str(file).unwrap()).unwrap();
        HealthClient::with_origin(
            mesh.grpc_channel("health").unwrap(),
            "http://health".parse().unwrap(),
        )
    };
    let status = channel(&with_key)
        .check(check())
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving.into());
    let denied = channel(&service).check(check()).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated, "{denied:?}");
    let _ = std::fs::remove_file(&key);
}

/// Requests an axum server saw: path and `x-api-key` header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

async fn recording_server(seen: Seen, app: Router) -> SocketAddr {
    let app = app.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let seen = seen.clone();
            async move {
                let key = req
                    .headers()
                    .get("x-api-key")
                    .map(|v| v.to_str().unwrap().to_owned());
                seen.lock()
                    .unwrap()
                    .push((req.uri().path().to_owned(), key));
                next.run(req).await
            }
        },
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn key_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("mesh-stack-{name}-{}", std::process::id()));
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    path
}

#[tokio::test]
async fn the_api_key_arrives_and_a_redirect_does_not_carry_it_away() {
    // Another host, which a redirect points at.
    let elsewhere: Seen = Seen::default();
    let other = recording_server(
        elsewhere.clone(),
        Router::new().route("/steal", get(|| async { "stolen" })),
    )
    .await;

    // The users service checks the key with `[server]`, and redirects.
    let hash = mesh_stack::auth::apikey::ApiKeySet::hash_hex(&KEY.into());
    let server_file = format!(
        "{POLICY}\n[server.api_keys]\nkeys = [ {{ identity = \"reports\", sha256 = \"{hash}\" }} ]\n"
    );
    let server = Mesh::new(MeshConfig::from_toml_str(&server_file).unwrap()).unwrap();
    let location = format!("http://{other}/steal");
    let app = Router::new()
        .route(
            "/users/{id}",
            get(|Extension(who): Extension<CallerIdentity>| async move { who.to_string() }),
        )
        .route(
            "/users/moved",
            get(move || {
                let location = location.clone();
                async move {
                    (
                        http::StatusCode::FOUND,
                        [(http::header::LOCATION, location)],
                    )
                }
            }),
        )
        .layer(server.server_layer().unwrap());
    let here: Seen = Seen::default();
    let addr = recording_server(here.clone(), app).await;

    let key = key_file("secure-clients-key");
    let file = format!(
        "[services.users]\ndiscovery = {{ kind = \"static\", endpoints = [{{ address = \"{addr}\" }}] }}\n\
         api_key = {{ key = {{ file = {:?} }} }}\n",
        key.display().to_string()
    );
    let client = Mesh::new(MeshConfig::from_toml_str(&file).unwrap()).unwrap();
    // The key arrives with no call but `hyper_client`.
    assert_eq!(
        get_users(&client, "http://users/users/7").await.unwrap(),
        (200, "reports".to_owned())
    );
    // A 302 comes back to the caller: never followed, the key stays here.
    let (status, _) = get_users(&client, "http://users/users/moved")
        .await
        .unwrap();
    assert_eq!(status, 302);
    assert_eq!(
        *here.lock().unwrap(),
        [
            ("/users/7".to_owned(), Some(KEY.to_owned())),
            ("/users/moved".to_owned(), Some(KEY.to_owned()))
        ]
    );
    assert!(elsewhere.lock().unwrap().is_empty());
    let _ = std::fs::remove_file(&key);
}

#[tokio::test]
async fn without_security_sections_the_clients_stay_plain() {
    let seen: Seen = Seen::default();
    let addr = recording_server(
        seen.clone(),
        Router::new().route("/users/{id}", get(|| async { "plain" })),
    )
    .await;
    let file = format!(
        "[services.users]\ndiscovery = {{ kind = \"static\", endpoints = [{{ address = \"{addr}\" }}] }}\n"
    );
    let mesh = Mesh::new(MeshConfig::from_toml_str(&file).unwrap()).unwrap();
    assert_eq!(
        get_users(&mesh, "http://users/users/1").await.unwrap(),
        (200, "plain".to_owned())
    );
    assert_eq!(*seen.lock().unwrap(), [("/users/1".to_owned(), None)]);
}
