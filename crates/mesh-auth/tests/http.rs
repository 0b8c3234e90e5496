//! End to end over real HTTP on 127.0.0.1: axum servers behind the mTLS serve
//! loop and the API-key layer, called by hyper-util and reqwest clients.
#![cfg(all(feature = "hyper", feature = "reqwest"))]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::routing::{self, post};
use axum::{Extension, Router};
use bytes::Bytes;
use common::{Ca, ORDERS, USERS, Validity};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_auth::apikey::{ApiKeyAuthLayer, ApiKeyHeader, ApiKeyLayer, ApiKeySet};
use mesh_auth::authz::{AuthorizationPolicy, AuthorizeLayer, Rule};
use mesh_auth::tls::{ClientTlsConfig, MtlsAcceptor, ServerTlsConfig, serve};
use mesh_auth::{CallerIdentity, Secret, SecretSource, TlsError, TlsErrorKind};
use tower::{Service, ServiceBuilder, ServiceExt};

/// The users service: says who called, counts what it served.
fn users_app(hits: Arc<AtomicUsize>) -> Router {
    let (h1, h2) = (hits.clone(), hits);
    Router::new()
        .route(
            "/users/{id}",
            routing::get(
                move |Extension(who): Extension<CallerIdentity>| async move {
                    h1.fetch_add(1, Ordering::SeqCst);
                    who.to_string()
                },
            ),
        )
        .route(
            "/users",
            post(move || async move {
                h2.fetch_add(1, Ordering::SeqCst);
                "created"
            }),
        )
}

fn orders_may_read_users() -> AuthorizeLayer {
    AuthorizeLayer::new(
        AuthorizationPolicy::deny_by_default(vec![
            Rule::allow(ORDERS).methods(["GET"]).paths(["/users"]),
        ])
        .compile()
        .unwrap(),
    )
}

fn get(url: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(url).body(Empty::new()).unwrap()
}

struct MtlsUsers {
    ca: Ca,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn start_mtls_users() -> MtlsUsers {
    let ca = Ca::new("mesh CA");
    let leaf = ca.leaf(&[USERS, "localhost", "127.0.0.1"], Validity::Now);
    let config = ServerTlsConfig::new(ca.source(), leaf.cert(), leaf.key())
        .build()
        .unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let app = users_app(hits.clone()).layer(orders_may_read_users());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, MtlsAcceptor::new(&config), app));
    MtlsUsers { ca, addr, hits }
}

fn client_tls(ca: &Ca, san: &str) -> ClientTlsConfig {
    let leaf = ca.leaf(&[san], Validity::Now);
    ClientTlsConfig::new(ca.source())
        .with_client_cert(leaf.cert(), leaf.key())
        .with_server_identity(USERS)
}

#[tokio::test]
async fn hyper_client_over_mtls_is_identified_and_authorized() {
    let users = start_mtls_users().await;
    let tls = client_tls(&users.ca, ORDERS).build().unwrap();
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(tls.https_connector());

    let url = format!("https://localhost:{}/users/7", users.addr.port());
    let res = client.request(get(&url)).await.unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, ORDERS);

    // Authenticated, but the policy lets orders only read.
    let req = http::Request::post(format!("https://127.0.0.1:{}/users", users.addr.port()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 403);
    assert_eq!(
        users.hits.load(Ordering::SeqCst),
        1,
        "the denied call never reached the handler"
    );
}

#[tokio::test]
async fn unexpected_caller_is_denied_and_bad_clients_never_connect() {
    let users = start_mtls_users().await;
    let url = format!("https://localhost:{}/users/7", users.addr.port());

    // A valid certificate for a service the policy does not know.
    let stranger = client_tls(&users.ca, "spiffe://test.mesh/stranger")
        .build()
        .unwrap();
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(stranger.https_connector());
    assert_eq!(client.request(get(&url)).await.unwrap().status(), 403);

    // No client certificate: the handshake fails, no request is served. The
    // server's alert usually reaches the client first, but the request was
    // already in flight, so a reset can overtake it: then there is no kind.
    let anonymous = ClientTlsConfig::new(users.ca.source()).build().unwrap();
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(anonymous.https_connector());
    let err = client.request(get(&url)).await.unwrap_err();
    if let Some(tls) = TlsError::find(&err) {
        assert_eq!(tls.kind(), TlsErrorKind::MissingClientCertificate);
    }

    // Expecting another service: the client refuses the server.
    let leaf = users.ca.leaf(&[ORDERS], Validity::Now);
    let wrong = ClientTlsConfig::new(users.ca.source())
        .with_client_cert(leaf.cert(), leaf.key())
        .with_server_identity("spiffe://test.mesh/payments")
        .build()
        .unwrap();
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(wrong.https_connector());
    let err = client.request(get(&url)).await.unwrap_err();
    assert_eq!(
        TlsError::find(&err).unwrap().kind(),
        TlsErrorKind::WrongIdentity
    );

    assert_eq!(users.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn reqwest_client_over_mtls() {
    let users = start_mtls_users().await;
    let tls = client_tls(&users.ca, ORDERS).build().unwrap();
    let client = tls.reqwest_builder().build().unwrap();
    let url = format!("https://localhost:{}/users/1", users.addr.port());
    let res = client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), ORDERS);
    assert_eq!(users.hits.load(Ordering::SeqCst), 1);

    let rogue = Ca::new("rogue");
    let bad = client_tls(&rogue, ORDERS).build().unwrap();
    let err = bad
        .reqwest_builder()
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        TlsError::find(&err).unwrap().kind(),
        TlsErrorKind::UnknownCa
    );
    assert_eq!(users.hits.load(Ordering::SeqCst), 1);
}

// ===== API keys =====

async fn start_key_users(layer: ApiKeyAuthLayer) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let policy = AuthorizeLayer::new(
        AuthorizationPolicy::deny_by_default(vec![Rule::allow("apikey:orders").paths(["/users"])])
            .compile()
            .unwrap(),
    );
    // Outermost first: authenticate, then authorize.
    let app = users_app(hits.clone()).layer(policy).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

async fn get_with_key(addr: SocketAddr, header: ApiKeyHeader, key: Option<&str>) -> (u16, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://{addr}/users/1").parse().unwrap();
    let req = http::Request::get(uri).body(Empty::new()).unwrap();
    let res = match key {
        Some(k) => {
            let layer = ApiKeyLayer::new(header, &Secret::from(k)).unwrap();
            ServiceBuilder::new()
                .layer(layer)
                .service(client)
                .oneshot(req)
                .await
                .unwrap()
        }
        None => client.request(req).await.unwrap(),
    };
    let status = res.status().as_u16();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn api_keys_identify_callers_and_reject_the_rest_with_401() {
    let keys = ApiKeySet::new()
        .with_key("orders", &"sk-orders-0123456789abcdef".into())
        .with_key("reports", &"sk-reports-0123456789abcdef".into());
    let (addr, hits) = start_key_users(ApiKeyAuthLayer::new(ApiKeyHeader::default(), keys)).await;
    let h = ApiKeyHeader::default;

    assert_eq!(
        get_with_key(addr, h(), Some("sk-orders-0123456789abcdef")).await,
        (200, Bytes::from("orders"))
    );
    let (status, body) = get_with_key(addr, h(), None).await;
    assert_eq!((status, body.len()), (401, 0), "no detail for the caller");
    let (status, body) = get_with_key(addr, h(), Some("sk-guess-0123456789abcdef")).await;
    assert_eq!((status, body.len()), (401, 0));
    // Known key, but the policy does not allow this caller: 403.
    assert_eq!(
        get_with_key(addr, h(), Some("sk-reports-0123456789abcdef"))
            .await
            .0,
        403
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn api_keys_rotate_with_both_keys_valid_during_the_switch() {
    let old = Secret::from("sk-old-0123456789abcdef");
    let new = Secret::from("sk-new-0123456789abcdef");
    let layer = ApiKeyAuthLayer::new(
        ApiKeyHeader::Bearer,
        ApiKeySet::new().with_key("orders", &old),
    );
    let (addr, hits) = start_key_users(layer.clone()).await;
    let b = || ApiKeyHeader::Bearer;

    assert_eq!(
        get_with_key(addr, b(), Some("sk-old-0123456789abcdef"))
            .await
            .0,
        200
    );
    assert_eq!(
        get_with_key(addr, b(), Some("sk-new-0123456789abcdef"))
            .await
            .0,
        401
    );
    // Step 1: both keys valid while clients roll over.
    layer.replace_keys(
        ApiKeySet::new()
            .with_key("orders", &old)
            .with_key("orders", &new),
    );
    assert_eq!(
        get_with_key(addr, b(), Some("sk-old-0123456789abcdef"))
            .await
            .0,
        200
    );
    assert_eq!(
        get_with_key(addr, b(), Some("sk-new-0123456789abcdef"))
            .await
            .0,
        200
    );
    // Step 2: the old key is retired.
    layer.replace_keys(ApiKeySet::new().with_key("orders", &new));
    assert_eq!(
        get_with_key(addr, b(), Some("sk-old-0123456789abcdef"))
            .await
            .0,
        401
    );
    assert_eq!(
        get_with_key(addr, b(), Some("sk-new-0123456789abcdef"))
            .await
            .0,
        200
    );
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn client_layer_sends_the_key_the_backend_receives() {
    let backend = mesh_testkit::Backend::start().await.unwrap();
    let dir = common::temp_dir("apikey-file");
    let path = dir.join("key");
    std::fs::write(&path, "sk-from-file-0123456789abcdef\n").unwrap();
    let layer = ApiKeyLayer::from_source(ApiKeyHeader::Bearer, &SecretSource::File(path)).unwrap();
    let mut client = ServiceBuilder::new()
        .layer(layer)
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    for _ in 0..2 {
        let req = http::Request::get(backend.url("/x"))
            .body(Empty::new())
            .unwrap();
        client.ready().await.unwrap().call(req).await.unwrap();
    }
    let received = backend.requests();
    assert_eq!(received.len(), 2);
    for r in received {
        assert_eq!(
            r.headers["authorization"],
            "Bearer sk-from-file-0123456789abcdef"
        );
    }
}
