//! Two axum services, `orders` and `users`, calling each other over mutual
//! TLS with SPIFFE identities, each allowing only the callers it expects.
//!
//! A throwaway CA and certificates are made at start (in a real mesh they come
//! from SPIRE or your PKI, as files that rotate). Then:
//!
//! 1. the gateway calls `orders`, which calls `users` for the customer;
//! 2. the gateway calls `users`, which calls `orders` for the history;
//! 3. `orders` tries something its policy forbids: 403;
//! 4. a client with a certificate from another CA never gets a connection.
//!
//! Run with `cargo run -p examples --example mtls_services`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_auth::authz::{AuthorizationPolicy, AuthorizeLayer, Rule};
use mesh_auth::tls::{ClientTlsConfig, MtlsAcceptor, PemSource, ServerTlsConfig, serve};
use mesh_auth::{CallerIdentity, TlsError};
use mesh_core::BoxError;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};

const ORDERS: &str = "spiffe://example.org/orders";
const USERS: &str = "spiffe://example.org/users";
const GATEWAY: &str = "spiffe://example.org/gateway";

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// What a service needs to call its peer: a client that presents our
/// certificate and accepts only the peer's identity, and where the peer is.
#[derive(Clone)]
struct Peer {
    client: HttpsClient,
    base: String,
}

impl Peer {
    async fn get(&self, path: &str) -> Result<(u16, String), BoxError> {
        let req = http::Request::get(format!("{}{path}", self.base)).body(Empty::new())?;
        // A per-call deadline, as the mesh stack's timeout layer would set.
        let res = tokio::time::timeout(Duration::from_secs(2), self.client.request(req)).await??;
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
        // Who may call orders: the gateway, and users reading order history.
        .layer(AuthorizeLayer::new(
            AuthorizationPolicy::deny_by_default(vec![
                Rule::allow(GATEWAY),
                Rule::allow(USERS)
                    .methods(["GET"])
                    .paths(["/orders/by-user"]),
            ])
            .compile()
            .expect("valid policy"),
        ))
}

fn users_app(orders: Peer) -> Router {
    Router::new()
        .route(
            "/users/{id}",
            get(|UrlPath(id): UrlPath<u32>| async move { format!("user {id}: Ada") }),
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
        // Who may call users: the gateway, and orders reading single users.
        .layer(AuthorizeLayer::new(
            AuthorizationPolicy::deny_by_default(vec![
                Rule::allow(GATEWAY),
                Rule::allow(ORDERS).methods(["GET"]).paths(["/users"]),
            ])
            .compile()
            .expect("valid policy"),
        ))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_target(false)
        .init();
    let pki = Pki::new("example.org CA")?;

    let orders_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let users_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let orders_addr = orders_listener.local_addr()?;
    let users_addr = users_listener.local_addr()?;

    // Each service: a server config for its own certificate, and a client
    // config that presents it and expects exactly the peer's identity.
    let orders_tls = pki.issue("orders", ORDERS)?;
    let users_tls = pki.issue("users", USERS)?;
    let orders_to_users = peer(&pki, &orders_tls, USERS, users_addr)?;
    let users_to_orders = peer(&pki, &users_tls, ORDERS, orders_addr)?;

    let orders_server = server(&pki, &orders_tls)?;
    let users_server = server(&pki, &users_tls)?;
    tokio::spawn(serve(
        orders_listener,
        MtlsAcceptor::new(&orders_server),
        orders_app(orders_to_users),
    ));
    tokio::spawn(serve(
        users_listener,
        MtlsAcceptor::new(&users_server),
        users_app(users_to_orders),
    ));

    let gateway_tls = pki.issue("gateway", GATEWAY)?;
    let to_orders = peer(&pki, &gateway_tls, ORDERS, orders_addr)?;
    let to_users = peer(&pki, &gateway_tls, USERS, users_addr)?;

    println!("== gateway -> orders -> users");
    println!("  {:?}", to_orders.get("/orders/42").await?);
    println!("\n== gateway -> users -> orders");
    println!("  {:?}", to_users.get("/users/7/history").await?);
    println!("\n== orders -> users /admin/users (not in users' policy)");
    println!("  {:?}", to_orders.get("/try-forbidden").await?);

    println!("\n== a client whose certificate comes from another CA");
    let rogue = Pki::new("rogue CA")?;
    let rogue_tls = rogue.issue("rogue", GATEWAY)?;
    let client = ClientTlsConfig::new(PemSource::file(&pki.ca_path))
        .with_client_cert(PemSource::file(&rogue_tls.0), PemSource::file(&rogue_tls.1))
        .with_server_identity(ORDERS)
        .build()?;
    let rogue_peer = Peer {
        client: Client::builder(TokioExecutor::new()).build(client.https_connector()),
        base: format!("https://localhost:{}", orders_addr.port()),
    };
    match rogue_peer.get("/orders/42").await {
        Ok(res) => println!("  unexpectedly served: {res:?}"),
        Err(e) => match TlsError::find(&*e) {
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

fn server(
    pki: &Pki,
    (cert, key): &(PathBuf, PathBuf),
) -> Result<mesh_auth::tls::MtlsServerConfig, BoxError> {
    Ok(ServerTlsConfig::new(
        PemSource::file(&pki.ca_path),
        PemSource::file(cert),
        PemSource::file(key),
    )
    .with_reload_interval(Duration::from_secs(30))
    .build()?)
}

fn peer(
    pki: &Pki,
    (cert, key): &(PathBuf, PathBuf),
    expect: &str,
    addr: SocketAddr,
) -> Result<Peer, BoxError> {
    let tls = ClientTlsConfig::new(PemSource::file(&pki.ca_path))
        .with_client_cert(PemSource::file(cert), PemSource::file(key))
        .with_server_identity(expect)
        .build()?;
    Ok(Peer {
        client: Client::builder(TokioExecutor::new()).build(tls.https_connector()),
        base: format!("https://localhost:{}", addr.port()),
    })
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
