//! Two axum services, `orders` and `users`, calling each other over mutual
//! TLS with SPIFFE identities, each allowing only the callers it expects,
//! all of it from each program's mesh config file.
//!
//! A throwaway CA and certificates are made at start (in a real mesh they come
//! from SPIRE or your PKI, as files that rotate). Each program then reads one
//! TOML file: `[tls]` (its certificate, the CA, the identity each service it
//! calls must prove), `[services.*]` (where they are, and an API key for
//! those that want one) and `[server]` (who may call it). `Mesh::server_tls`
//! and `Mesh::server_layer` serve; `Mesh::hyper_client` calls, presenting
//! the certificate and the API key itself (requests still say
//! `http://users/...`: a service with `[tls]` is always reached over mTLS).
//! The gateway takes each endpoint's identity from its discovery metadata
//! (`[tls] identity_metadata = "spiffe_id"`), as it would from Consul's
//! `ServiceMeta`.
//!
//! 1. the gateway calls `orders`, which calls `users` for the customer;
//! 2. the gateway calls `users`, which calls `orders` for the history;
//! 3. `orders` tries something its policy forbids: 403;
//! 4. a reporting job without a certificate calls `users` with an API key;
//! 5. a client with a certificate from another CA never gets a connection.
//!
//! Run with `cargo run -p examples --example mtls_services`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use axum::{Extension, Router};
use http_body_util::BodyExt;
use mesh_auth::apikey::ApiKeySet;
use mesh_auth::tls::{ClientTlsConfig, MtlsAcceptor, PemSource, serve};
use mesh_auth::{CallerIdentity, Secret, TlsError};
use mesh_core::BoxError;
use mesh_stack::inner::HyperClient;
use mesh_stack::{Mesh, MeshConfig, MeshService};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use tower::ServiceExt;

const ORDERS: &str = "spiffe://example.org/orders";
const USERS: &str = "spiffe://example.org/users";
const GATEWAY: &str = "spiffe://example.org/gateway";
/// The reporting job's API key (in production: `key = { env = "..." }`).
const REPORTS_KEY: &str = "sk-reports-2f1c9a7e5b3d4c6a";

/// A client of one service through the mesh: mTLS with the service's
/// identity checked, its API key if it has one, retries; hyper follows no
/// redirects, so neither credential leaves for another host.
#[derive(Clone)]
struct Peer {
    client: MeshService<HyperClient<String>>,
    base: &'static str,
}

impl Peer {
    fn new(mesh: &Mesh, service: &'static str, base: &'static str) -> Result<Self, BoxError> {
        Ok(Self {
            client: mesh.hyper_client(service)?,
            base,
        })
    }

    async fn get(&self, path: &str) -> Result<(u16, String), BoxError> {
        let req = http::Request::get(format!("{}{path}", self.base)).body(String::new())?;
        let res = self.client.clone().oneshot(req).await?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn orders_app(users: Peer) -> Router {
    Router::new()
        .route(
            "/orders/{id}",
            get(
                |State(users): State<Peer>,
                 UrlPath(id): UrlPath<u32>,
                 Extension(caller): Extension<CallerIdentity>| async move {
                    let customer = match users.get("/users/7").await {
                        Ok((_, body)) => body,
                        Err(e) => format!("users unavailable: {e}"),
                    };
                    format!("order {id} for [{customer}] (asked by {caller})")
                },
            ),
        )
        .route(
            "/orders/by-user/{id}",
            get(|UrlPath(id): UrlPath<u32>| async move { format!("orders 41, 42 of user {id}") }),
        )
        .route(
            "/try-forbidden",
            get(|State(users): State<Peer>| async move {
                match users.get("/admin/users").await {
                    Ok((status, _)) => format!("users answered {status}"),
                    Err(e) => format!("failed: {e}"),
                }
            }),
        )
        .with_state(users)
}

fn users_app(orders: Peer) -> Router {
    Router::new()
        .route(
            "/users/{id}",
            get(
                |UrlPath(id): UrlPath<u32>, Extension(caller): Extension<CallerIdentity>| async move {
                    format!("user {id}: Ada (for {caller})")
                },
            ),
        )
        .route(
            "/users/{id}/history",
            get(
                |State(orders): State<Peer>, UrlPath(id): UrlPath<u32>| async move {
                    match orders.get(&format!("/orders/by-user/{id}")).await {
                        Ok((_, body)) => format!("history of user {id}: {body}"),
                        Err(e) => format!("orders unavailable: {e}"),
                    }
                },
            ),
        )
        .route("/admin/users", get(|| async { "all users" }))
        .with_state(orders)
}

/// Where a program learns the identity each service it calls must prove.
#[derive(Clone, Copy, PartialEq)]
enum Identities {
    /// `[tls.server_identities]`, one per service.
    InConfig,
    /// Each endpoint's `spiffe_id` metadata (Consul `ServiceMeta` in
    /// production; the static endpoints carry it here).
    FromMetadata,
}

/// One program's mesh config file: its certificate, the services it calls
/// (address and identity), and its own `[server]` policy.
fn mesh_file(
    pki: &Pki,
    (cert, key): &(PathBuf, PathBuf),
    calls: &[(&str, &str, SocketAddr)],
    identities: Identities,
    server: &str,
) -> String {
    let mut file = format!(
        "[tls]\nca = {{ file = {:?} }}\ncert = {{ file = {:?} }}\nkey = {{ file = {:?} }}\n",
        pki.ca_path.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
    );
    if identities == Identities::FromMetadata {
        file.push_str("identity_metadata = \"spiffe_id\"\n");
    } else {
        file.push_str("\n[tls.server_identities]\n");
        for (name, identity, _) in calls {
            file.push_str(&format!("{name} = {identity:?}\n"));
        }
    }
    for (name, identity, addr) in calls {
        let metadata = match identities {
            Identities::FromMetadata => format!(", metadata = {{ spiffe_id = {identity:?} }}"),
            Identities::InConfig => String::new(),
        };
        file.push_str(&format!(
            "\n[services.{name}]\ndiscovery = {{ kind = \"static\", endpoints = [{{ address = \"{addr}\"{metadata} }}] }}\n"
        ));
    }
    file.push_str(server);
    file
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_target(true)
        .init();
    let pki = Pki::new("example.org CA")?;

    let orders_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let users_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let orders_addr = orders_listener.local_addr()?;
    let users_addr = users_listener.local_addr()?;

    // Who may call orders: the gateway, and users reading order history.
    let orders_policy = format!(
        "\n[server.authorization]\nrules = [\n  {{ identity = {GATEWAY:?} }},\n  \
         {{ identity = {USERS:?}, methods = [\"GET\"], paths = [\"/orders/by-user\"] }},\n]\n"
    );
    // Who may call users: the gateway, orders reading single users, and the
    // reporting job (by API key) reading single users.
    let users_policy = format!(
        "\n[server.authorization]\nrules = [\n  {{ identity = {GATEWAY:?} }},\n  \
         {{ identity = {ORDERS:?}, methods = [\"GET\"], paths = [\"/users\"] }},\n  \
         {{ identity = \"apikey:reports\", methods = [\"GET\"], paths = [\"/users\"] }},\n]\n\n\
         [server.api_keys]\nkeys = [ {{ identity = \"reports\", sha256 = {:?} }} ]\n",
        ApiKeySet::hash_hex(&Secret::from(REPORTS_KEY))
    );
    let orders_mesh = Mesh::new(MeshConfig::from_toml_str(&mesh_file(
        &pki,
        &pki.issue("orders", ORDERS)?,
        &[("users", USERS, users_addr)],
        Identities::InConfig,
        &orders_policy,
    ))?)?;
    let users_mesh = Mesh::new(MeshConfig::from_toml_str(&mesh_file(
        &pki,
        &pki.issue("users", USERS)?,
        &[("orders", ORDERS, orders_addr)],
        Identities::InConfig,
        &users_policy,
    ))?)?;

    // Each server: [tls] for the handshake, [server] as one layer.
    let orders_tls = orders_mesh.server_tls()?.ok_or("orders has no [tls]")?;
    let users_tls = users_mesh.server_tls()?.ok_or("users has no [tls]")?;
    tokio::spawn(serve(
        orders_listener,
        MtlsAcceptor::new(&orders_tls),
        orders_app(Peer::new(&orders_mesh, "users", "http://users")?)
            .layer(orders_mesh.server_layer()?),
    ));
    // users also accepts API keys: a second, plain-HTTP listener for callers
    // without a certificate, behind the same layer.
    let keys_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let keys_addr = keys_listener.local_addr()?;
    let users_app = users_app(Peer::new(&users_mesh, "orders", "http://orders")?)
        .layer(users_mesh.server_layer()?);
    tokio::spawn(serve(
        users_listener,
        MtlsAcceptor::new(&users_tls),
        users_app.clone(),
    ));
    tokio::spawn(async move { axum::serve(keys_listener, users_app).await });

    let gateway_mesh = Mesh::new(MeshConfig::from_toml_str(&mesh_file(
        &pki,
        &pki.issue("gateway", GATEWAY)?,
        &[
            ("orders", ORDERS, orders_addr),
            ("users", USERS, users_addr),
        ],
        Identities::FromMetadata,
        "",
    ))?)?;
    let to_orders = Peer::new(&gateway_mesh, "orders", "http://orders")?;
    let to_users = Peer::new(&gateway_mesh, "users", "http://users")?;

    println!("== gateway -> orders -> users");
    println!("  {:?}", to_orders.get("/orders/42").await?);
    println!("\n== gateway -> users -> orders");
    println!("  {:?}", to_users.get("/users/7/history").await?);
    println!("\n== orders -> users /admin/users (not in users' policy)");
    println!("  {:?}", to_orders.get("/try-forbidden").await?);

    println!("\n== a reporting job with an API key, no certificate");
    let reports_mesh = Mesh::new(MeshConfig::from_toml_str(&format!(
        "[services.users]\ndiscovery = {{ kind = \"static\", endpoints = [{{ address = \"{keys_addr}\" }}] }}\n\
         api_key = {{ key = {{ value = {REPORTS_KEY:?} }} }}\n"
    ))?)?;
    let reports = Peer::new(&reports_mesh, "users", "http://users")?;
    println!("  {:?}", reports.get("/users/7").await?);
    println!(
        "  {:?} (not in its rule)",
        reports.get("/admin/users").await?
    );

    println!("\n== a client whose certificate comes from another CA");
    let rogue = Pki::new("rogue CA")?;
    let rogue_tls = rogue.issue("rogue", GATEWAY)?;
    let client = ClientTlsConfig::new(PemSource::file(&pki.ca_path))
        .with_client_cert(PemSource::file(&rogue_tls.0), PemSource::file(&rogue_tls.1))
        .with_server_identity(ORDERS)
        .build()?
        .reqwest_builder()
        .build()?;
    match client
        .get(format!(
            "https://localhost:{}/orders/42",
            orders_addr.port()
        ))
        .send()
        .await
    {
        Ok(res) => println!("  unexpectedly served: {}", res.status()),
        Err(e) => match TlsError::find(&e) {
            Some(tls) => println!("  refused: {} ({})", tls.kind(), tls),
            // TLS 1.3 clients send the request before the server has checked
            // their certificate; the server's reset can overtake its alert.
            None => println!("  refused (connection closed by the server): {e}"),
        },
    }
    tokio::time::sleep(Duration::from_millis(50)).await; // let the server log its side
    let _ = std::fs::remove_dir_all(&pki.dir);
    let _ = std::fs::remove_dir_all(&rogue.dir);
    Ok(())
}

/// A throwaway CA writing its files into a temporary directory.
struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    ca_path: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Result<Self, BoxError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("mesh-mtls-example-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, issuer.pem())?;
        Ok(Self {
            issuer,
            dir,
            ca_path,
        })
    }

    /// A certificate for `spiffe_id`, valid for `localhost`; returns (cert, key) paths.
    fn issue(&self, name: &str, spiffe_id: &str) -> Result<(PathBuf, PathBuf), BoxError> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::URI(spiffe_id.try_into()?),
            SanType::DnsName("localhost".try_into()?),
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let write = |file: &str, text: String| -> std::io::Result<PathBuf> {
            let path = Path::new(&self.dir).join(file);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        Ok((
            write(&format!("{name}.crt"), cert.pem())?,
            write(&format!("{name}.key"), key.serialize_pem())?,
        ))
    }
}
