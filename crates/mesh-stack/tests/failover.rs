//! Failover that does not wait (Finagle's requeue), over real loopback: two
//! replicas, callers under load, one replica stopped mid-run. A request that
//! provably never reached a server (connection refused, a stream the server
//! refused by `GOAWAY`) is sent again at once to the other replica, `POST`s
//! and gRPC calls included, so no caller sees a failure while a replica is
//! up; with both down, calls end at once with a typed error.

#![cfg(feature = "tonic")]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh_stack::core::Endpoint;
use mesh_stack::core::backoff::{Backoff, Jitter};
use mesh_stack::{BudgetExhausted, GrpcChannel, Mesh, MeshConfig, MeshService, ServiceConfig};
use mesh_testkit::Backend;
use tokio::sync::oneshot;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceExt;

const CALLERS: usize = 8;
const CALLS_PER_CALLER: usize = 40;
/// The replica is stopped once this many calls completed.
const STOP_AFTER: usize = 80;

/// The service over `addrs`, with a backoff that would show: a retry after a
/// backoff takes at least a second, a requeue none.
fn service(addrs: impl IntoIterator<Item = SocketAddr>) -> ServiceConfig {
    let mut s =
        ServiceConfig::with_static(addrs.into_iter().map(|a| Endpoint::from_address(a.into())));
    s.retry.backoff =
        Backoff::new(Duration::from_secs(1), 2.0, Duration::from_secs(4)).with_jitter(Jitter::None);
    s
}

type Http = mesh_stack::inner::HyperClient<Full<Bytes>>;

/// HTTP/2 (one multiplexed connection per replica): a replica that stops
/// says `GOAWAY`, so the requests it will not process are known, and a new
/// connection to it is refused. (Over pooled HTTP/1, a request written onto
/// a connection the server is closing may have been read: it is not
/// provably unsent and is not requeued, and HTTP/1 has no `GOAWAY` to say
/// otherwise.)
fn http_client() -> Http {
    mesh_stack::inner::http2_client()
}

async fn post(users: &MeshService<Http>, body: String) -> Result<(), String> {
    let req = http::Request::post("http://users/orders")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = users
        .clone()
        .oneshot(req)
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_fail_over_without_a_caller_visible_failure_when_a_replica_stops() {
    let a = Backend::builder().name("a").start().await.unwrap();
    let b = Backend::builder().name("b").start().await.unwrap();
    let mesh =
        Mesh::new(MeshConfig::new().service("users", service([a.addr(), b.addr()]))).unwrap();
    let users = mesh.http_client("users", http_client()).unwrap();

    let done = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for c in 0..CALLERS {
        let users = users.clone();
        let done = done.clone();
        callers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..CALLS_PER_CALLER {
                if let Err(e) = post(&users, format!("order-{c}-{i}")).await {
                    failures.push(e);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }));
    }
    while done.load(Ordering::SeqCst) < STOP_AFTER {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    a.drain();
    let stopped_at = a.hits();
    let mut failures = Vec::new();
    for caller in callers {
        failures.extend(caller.await.unwrap());
    }
    assert!(failures.is_empty(), "caller-visible failures: {failures:?}");

    // What the servers received: every order exactly once, none at `a`
    // after it stopped (the refused ones went to `b`).
    let total = CALLERS * CALLS_PER_CALLER;
    assert!(a.hits() <= stopped_at + CALLERS as u64);
    assert_eq!((a.hits() + b.hits()) as usize, total);
    let orders: HashSet<Bytes> = a
        .requests()
        .into_iter()
        .chain(b.requests())
        .map(|r| r.body)
        .collect();
    assert_eq!(orders.len(), total, "no order sent twice");
    // Usually some calls met `a`'s refused connects and were requeued (how
    // many depends on when the balancer noticed); none was retried.
    let stats = users.policy().stats();
    eprintln!("{stats:?}");
    assert_eq!(stats.retries, 0, "POSTs are never retried: {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_down_calls_end_at_once_with_a_typed_error() {
    let a = Backend::builder().name("a").start().await.unwrap();
    let b = Backend::builder().name("b").start().await.unwrap();
    let mesh =
        Mesh::new(MeshConfig::new().service("users", service([a.addr(), b.addr()]))).unwrap();
    let users = mesh.http_client("users", http_client()).unwrap();
    post(&users, "warm".into()).await.unwrap();
    // Both crash: listeners and connections closed at once.
    a.shutdown();
    b.shutdown();
    // The call in flight when a connection breaks may have been read: wait
    // until the client has seen both connections close, so that every call
    // below meets refused connects only.
    for _ in 0..200 {
        if post(&users, "probe".into()).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    let calls = 40;
    let mut budget_exhausted = 0;
    let mut refused = 0;
    for i in 0..calls {
        for method in [http::Method::POST, http::Method::GET] {
            let req = http::Request::builder()
                .method(method.clone())
                .uri("http://users/orders")
                .body(Full::new(Bytes::from(format!("order-{i}"))))
                .unwrap();
            let start = Instant::now();
            let err = users.clone().oneshot(req).await.unwrap_err();
            // No backoff (a retry here would take at least a second).
            assert!(
                start.elapsed() < Duration::from_millis(900),
                "{method} took {:?}",
                start.elapsed()
            );
            if err.is::<BudgetExhausted>() {
                budget_exhausted += 1;
                continue;
            }
            let client = err
                .downcast_ref::<hyper_util::client::legacy::Error>()
                .unwrap_or_else(|| panic!("typed error, got {err:?}"));
            refused += usize::from(client.is_connect());
        }
    }
    assert!(refused > 0, "the connects were refused");
    let stats = users.policy().stats();
    assert_eq!(stats.retries, 0, "never-sent failures are not retried");
    // Bounded by the budget: its floor (10 a second for 10 s) and 20 % of
    // the calls; each call tries at most 1 + max_requeues times.
    assert!(
        stats.requeues <= 100 + 2 * calls as u64 / 5 + 1,
        "{stats:?}"
    );
    assert!(budget_exhausted > 0, "the budget ran out");
}

// ===== gRPC over tonic =====

/// A tonic health server on 127.0.0.1 until `stop` fires; then it stops as
/// tonic does (the listener goes, connections finish their calls after a
/// `GOAWAY`).
async fn health_server() -> (SocketAddr, oneshot::Sender<()>) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("users", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (addr, stop)
}

fn check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: "users".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_fail_over_without_a_caller_visible_failure_when_a_replica_stops() {
    let (a, stop_a) = health_server().await;
    let (b, stop_b) = health_server().await;
    // `Check` is not marked idempotent: only requeues may repeat it.
    let mesh = Mesh::new(MeshConfig::new().service("health", service([a, b]))).unwrap();
    let channel: GrpcChannel = mesh.grpc_channel("health").unwrap();
    let client = HealthClient::with_origin(channel.clone(), "http://health".parse().unwrap());

    let done = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let mut client = client.clone();
        let done = done.clone();
        callers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..CALLS_PER_CALLER {
                if let Err(status) = client.check(check()).await {
                    failures.push(status);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }));
    }
    while done.load(Ordering::SeqCst) < STOP_AFTER {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop_a.send(()).unwrap();
    let mut failures = Vec::new();
    for caller in callers {
        failures.extend(caller.await.unwrap());
    }
    assert!(failures.is_empty(), "caller-visible failures: {failures:?}");
    let stats = channel.get_ref().get_ref().policy().stats();
    assert_eq!(stats.retries, 0, "{stats:?}");

    // Both down: once the draining server's last streams are served, a call
    // ends at once, as tonic's own `Unavailable`.
    stop_b.send(()).unwrap();
    let mut client = client.clone();
    let mut failed = None;
    for _ in 0..200 {
        let start = Instant::now();
        if let Err(status) = client.check(check()).await {
            failed = Some((status, start.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, took) = failed.expect("the calls fail once both are down");
    assert!(took < Duration::from_millis(900), "{took:?}");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}
