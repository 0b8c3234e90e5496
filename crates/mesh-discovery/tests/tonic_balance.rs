//! A source feeding tonic's own balancer. `Channel::balance_channel` takes a
//! `Sender<tonic::transport::channel::Change<K, tonic::transport::Endpoint>>`
//! (tonic 0.14 has its own `Change` enum, not tower's), which a few lines fill
//! from any source's [`Changes`] stream. Two real gRPC servers on 127.0.0.1
//! count the calls they answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use mesh_core::{Endpoint, EndpointKey};
use mesh_discovery::{Changes, ChannelSource};
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::transport::Endpoint as TonicEndpoint;
use tonic::transport::channel::Change;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::discover::Change as TowerChange;

/// A gRPC health server on 127.0.0.1 that counts the calls it receives.
async fn grpc_server() -> (Endpoint, Arc<AtomicUsize>) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("users", tonic_health::ServingStatus::Serving)
        .await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let counted = InterceptedService::new(health, move |req| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(req)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(counted)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (Endpoint::from_address(addr.into()), calls)
}

/// Sends every change of the source to tonic's balancer, until the source
/// stops or the channel is dropped.
async fn feed_tonic(mut changes: Changes, tx: mpsc::Sender<Change<EndpointKey, TonicEndpoint>>) {
    while let Some(Ok(change)) = changes.next().await {
        let change = match change {
            TowerChange::Insert(key, ep) => {
                let endpoint = TonicEndpoint::from_shared(format!("http://{}", ep.address()))
                    .expect("an ip:port is a valid URI authority")
                    .connect_timeout(Duration::from_secs(2));
                Change::Insert(key, endpoint)
            }
            TowerChange::Remove(key) => Change::Remove(key),
        };
        if tx.send(change).await.is_err() {
            return;
        }
    }
}

async fn check(client: &mut HealthClient<Channel>, n: usize) {
    for _ in 0..n {
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            client.check(HealthCheckRequest {
                service: "users".into(),
            }),
        )
        .await
        .expect("the call finishes")
        .expect("the call succeeds");
        assert_eq!(resp.into_inner().status, 1, "SERVING");
    }
}

#[tokio::test]
async fn balance_channel_follows_the_source() {
    let (a, a_calls) = grpc_server().await;
    let (b, b_calls) = grpc_server().await;
    let (source, discovery) = ChannelSource::new("users");
    source.set([a.clone(), b.clone()]);

    let (channel, tx) = Channel::balance_channel(16);
    let forwarder = tokio::spawn(feed_tonic(discovery.changes(), tx));
    let mut client = HealthClient::new(channel);

    check(&mut client, 40).await;
    let (to_a, to_b) = (
        a_calls.load(Ordering::SeqCst),
        b_calls.load(Ordering::SeqCst),
    );
    assert_eq!(to_a + to_b, 40, "every call reached exactly one server");
    assert!(
        to_a > 0 && to_b > 0,
        "both servers used: a {to_a}, b {to_b}"
    );

    // Discovery drops a; the server itself keeps running, but gets nothing.
    assert!(source.remove(a.key()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a_before = a_calls.load(Ordering::SeqCst);
    let b_before = b_calls.load(Ordering::SeqCst);
    check(&mut client, 20).await;
    assert_eq!(
        a_calls.load(Ordering::SeqCst),
        a_before,
        "a removed endpoint gets no call"
    );
    assert_eq!(b_calls.load(Ordering::SeqCst), b_before + 20);

    // And back.
    assert!(source.insert(a));
    tokio::time::sleep(Duration::from_millis(200)).await;
    check(&mut client, 40).await;
    assert!(
        a_calls.load(Ordering::SeqCst) > a_before,
        "a re-added endpoint is used again"
    );

    // The forwarding task ends with the source.
    drop((source, discovery));
    tokio::time::timeout(Duration::from_secs(2), forwarder)
        .await
        .expect("the forwarder stops when the source is dropped")
        .unwrap();
}
