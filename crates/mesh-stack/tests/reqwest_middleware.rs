//! `Mesh::reqwest_middleware` in a `reqwest_middleware::ClientWithMiddleware`
//! against real HTTP backends on 127.0.0.1: reqwest's builder API with the
//! mesh's discovery, retry and errors underneath.

#![cfg(feature = "reqwest-middleware")]

use std::time::Duration;

use mesh_stack::core::Endpoint;
use mesh_stack::core::backoff::Backoff;
use mesh_stack::discovery::ChannelSource;
use mesh_stack::middleware::MeshCallError;
use mesh_stack::{Mesh, MeshConfig, NoReadyEndpoint, ServiceConfig};
use mesh_testkit::{Backend, Behavior, Reply};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};

fn users(backends: &[&Backend]) -> ServiceConfig {
    let mut service = ServiceConfig::with_static(
        backends
            .iter()
            .map(|b| Endpoint::from_address(b.addr().into())),
    );
    // Retries without the default 1 s backoff.
    service.retry.backoff = Backoff::new(Duration::from_millis(1), 2.0, Duration::from_millis(5));
    service
}

fn client(mesh: &Mesh) -> ClientWithMiddleware {
    // This workspace builds reqwest's rustls without a default crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let reqwest = reqwest::Client::new();
    ClientBuilder::new(reqwest.clone())
        .with(mesh.reqwest_middleware(&reqwest).unwrap())
        .build()
}

fn json_reply(body: &str) -> Behavior {
    Reply::status(200)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .into()
}

#[tokio::test]
async fn reqwest_builder_calls_are_routed_and_retried() {
    let backend = Backend::builder()
        .behavior(Behavior::Sequence(
            vec![Behavior::status(503), json_reply(r#"{"id":7}"#)].into(),
        ))
        .start()
        .await
        .unwrap();
    let mesh = Mesh::new(MeshConfig::new().service("users", users(&[&backend]))).unwrap();
    let client = client(&mesh);

    let response = client
        .get("http://users/profile/7")
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    assert_eq!(response.url().as_str(), "http://users/profile/7");
    let profile: serde_json::Value = response.json().await.unwrap();
    assert_eq!(profile["id"], 7);
    assert_eq!(backend.hits(), 2, "the 503 was retried");
    assert_eq!(backend.requests()[1].uri.path(), "/profile/7");
}

#[tokio::test]
async fn bodies_are_sent_again_on_retry() {
    let backend = Backend::builder()
        .behavior(Behavior::fail_first(1, 503))
        .start()
        .await
        .unwrap();
    let mesh = Mesh::new(MeshConfig::new().service("users", users(&[&backend]))).unwrap();
    let response = client(&mesh)
        .put("http://users/profile/7")
        .json(&serde_json::json!({ "name": "ada" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let requests = backend.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!(&r.body[..], br#"{"name":"ada"}"#);
        assert_eq!(r.headers["content-type"], "application/json");
    }
}

#[tokio::test]
async fn other_hosts_go_to_the_next_middleware() {
    let backend = Backend::builder().start().await.unwrap();
    let other = Backend::builder().name("other").start().await.unwrap();
    let mesh = Mesh::new(MeshConfig::new().service("users", users(&[&backend]))).unwrap();
    let text = client(&mesh)
        .get(other.url("/x"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "other");
    assert_eq!((other.hits(), backend.hits()), (1, 0));
}

#[tokio::test]
async fn mesh_errors_are_middleware_errors_with_the_cause() {
    let (_source, discovery) = ChannelSource::new("users");
    let backend = Backend::builder().start().await.unwrap();
    let mut config = users(&[&backend]);
    config.ready_timeout = Duration::from_millis(20);
    let mesh = Mesh::builder(MeshConfig::new().service("users", config))
        .discovery("users", discovery)
        .build()
        .unwrap();
    let err = client(&mesh)
        .get("http://users/profile/7")
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("expected a middleware error, got {err:?}");
    };
    let mesh_err = err.downcast_ref::<MeshCallError>().unwrap();
    assert!(mesh_err.get_ref().is::<NoReadyEndpoint>(), "{mesh_err}");
}

#[tokio::test]
async fn a_request_timeout_bounds_the_whole_call() {
    let backend = Backend::builder()
        .behavior(Behavior::Hang)
        .start()
        .await
        .unwrap();
    let mesh = Mesh::new(MeshConfig::new().service("users", users(&[&backend]))).unwrap();
    let start = tokio::time::Instant::now();
    let err = client(&mesh)
        .get("http://users/slow")
        .timeout(Duration::from_millis(100))
        .send()
        .await
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1), "{err:?}");
    assert!(err.is_middleware(), "{err:?}");
}
