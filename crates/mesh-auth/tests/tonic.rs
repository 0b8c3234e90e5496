//! tonic's server over mTLS: the caller's identity reaches the service.
#![cfg(all(feature = "tonic", feature = "hyper"))]

mod common;

use std::convert::Infallible;

use bytes::Bytes;
use common::{Ca, ORDERS, USERS, Validity};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mesh_auth::CallerIdentity;
use mesh_auth::tls::{ClientTlsConfig, MtlsAcceptor, ServerTlsConfig};

#[tokio::test]
async fn tonic_server_sees_the_callers_identity() {
    let ca = Ca::new("mesh CA");
    let leaf = ca.leaf(&[USERS, "localhost"], Validity::Now);
    let server = ServerTlsConfig::new(ca.source(), leaf.cert(), leaf.key())
        .build()
        .unwrap();
    // A hand-written gRPC endpoint: answers OK and echoes the caller.
    let svc = tower::service_fn(|req: http::Request<tonic::body::Body>| async move {
        let caller = req
            .extensions()
            .get::<CallerIdentity>()
            .map(ToString::to_string)
            .unwrap_or_default();
        let res = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0")
            .header("x-caller", caller)
            .body(Empty::<Bytes>::new())
            .unwrap();
        Ok::<_, Infallible>(res)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let incoming = MtlsAcceptor::new(&server).incoming(listener);
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(svc, incoming));

    let client_leaf = ca.leaf(&[ORDERS], Validity::Now);
    let tls = ClientTlsConfig::new(ca.source())
        .with_client_cert(client_leaf.cert(), client_leaf.key())
        .with_server_identity(USERS)
        .build()
        .unwrap();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(tls.https_connector());
    let req = http::Request::post(format!("https://localhost:{port}/test.Users/Get"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Empty::new())
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "0");
    assert_eq!(res.headers()["x-caller"], ORDERS);
}

#[tokio::test]
async fn grpc_callers_get_grpc_statuses_not_http_ones() {
    use mesh_auth::authz::{AuthorizationPolicy, AuthorizeLayer, Rule};
    use tower::{Layer, ServiceExt};

    let policy = AuthorizationPolicy::deny_by_default(vec![Rule::allow(USERS)])
        .compile()
        .unwrap();
    let svc =
        AuthorizeLayer::new(policy).layer(tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(String::new()))
        }));
    let grpc = http::Request::post("/test.Users/Get")
        .header("content-type", "application/grpc+proto")
        .body(())
        .unwrap();
    let res = svc.clone().oneshot(grpc).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "7"); // PERMISSION_DENIED
    let plain = http::Request::get("/users").body(()).unwrap();
    assert_eq!(svc.oneshot(plain).await.unwrap().status(), 403);
}

#[tokio::test]
async fn a_tonic_server_layered_for_mtls_or_api_keys_authorizes_grpc_calls() {
    use mesh_auth::apikey::{ApiKeyAuthLayer, ApiKeyHeader, ApiKeySet};
    use mesh_auth::authz::{AuthorizationPolicy, AuthorizeLayer, Rule};

    // What mesh-stack's `Mesh::server_layer` builds: mTLS callers pass the
    // key check, then the policy decides.
    let ca = Ca::new("mesh CA");
    let leaf = ca.leaf(&[USERS, "localhost"], Validity::Now);
    let server = ServerTlsConfig::new(ca.source(), leaf.cert(), leaf.key())
        .build()
        .unwrap();
    let policy =
        AuthorizationPolicy::deny_by_default(vec![Rule::allow(ORDERS).paths(["/test.Users/"])])
            .compile()
            .unwrap();
    let svc = tower::service_fn(|_req: http::Request<tonic::body::Body>| async move {
        let res = http::Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "0")
            .body(Empty::<Bytes>::new())
            .unwrap();
        Ok::<_, Infallible>(res)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let incoming = MtlsAcceptor::new(&server).incoming(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(
                ApiKeyAuthLayer::new(ApiKeyHeader::default(), ApiKeySet::new())
                    .accept_mtls_callers(),
            )
            .layer(AuthorizeLayer::new(policy))
            .serve_with_incoming(svc, incoming),
    );

    let client_leaf = ca.leaf(&[ORDERS], Validity::Now);
    let tls = ClientTlsConfig::new(ca.source())
        .with_client_cert(client_leaf.cert(), client_leaf.key())
        .with_server_identity(USERS)
        .build()
        .unwrap();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(tls.https_connector());
    let call = |path: &str| {
        http::Request::post(format!("https://localhost:{port}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Empty::new())
            .unwrap()
    };
    let res = client.request(call("/test.Users/Get")).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "0");
    let res = client.request(call("/test.Admin/Drop")).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "7"); // PERMISSION_DENIED
    let res = client
        .request(call("/test.Users/../test.Admin/Drop"))
        .await
        .unwrap();
    assert_eq!(res.headers()["grpc-status"], "7");
}
