//! The discovery router over real HTTP on 127.0.0.1: testkit backends, the
//! hyper-util, reqwest and tonic clients, a per-endpoint breaker, and what the
//! servers actually received.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_balance::{BalanceConfig, Strategy};
use mesh_breaker::{BreakerConfig, CircuitBreakerLayer};
use mesh_core::{BoxError, Endpoint};
use mesh_discovery::router::{DiscoveryLayer, NoReadyEndpoint};
use mesh_discovery::{ChannelSource, StaticSource};
use mesh_testkit::{Backend, Behavior};
use tower::{Layer, Service, ServiceExt};

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn endpoint(b: &Backend) -> Endpoint {
    Endpoint::new(b.name(), b.addr().into())
}

async fn backends(n: usize) -> Vec<Backend> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            Backend::builder()
                .name(format!("b{i}"))
                .start()
                .await
                .unwrap(),
        );
    }
    v
}

async fn get<S>(svc: &mut S) -> Result<http::StatusCode, BoxError>
where
    S: Service<
            http::Request<Empty<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = BoxError,
        >,
{
    let req = http::Request::get("http://users/hello").body(Empty::new())?;
    let resp = svc.ready().await?.call(req).await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    Ok(status)
}

fn hits(backends: &[Backend]) -> Vec<u64> {
    backends.iter().map(Backend::hits).collect()
}

#[tokio::test]
async fn failing_endpoint_is_ejected_and_readmitted() {
    let bs = backends(3).await;
    let discovery = StaticSource::new(bs.iter().map(endpoint)).discovery();
    let breaker = CircuitBreakerLayer::new(BreakerConfig {
        consecutive_failures: Some(3),
        recovery_timeout: Duration::from_millis(300),
        max_open_time: Duration::from_millis(300),
        ..BreakerConfig::default()
    })
    .unwrap();
    // Built per endpoint from its target: each breaker feeds its endpoint's
    // health signal, and the balancer ejects.
    let layer = DiscoveryLayer::builder(discovery)
        .balance(BalanceConfig {
            strategy: Strategy::RoundRobin,
            ..BalanceConfig::default()
        })
        .new_endpoint(breaker)
        .build()
        .unwrap();
    let mut svc = layer.layer(client());

    for _ in 0..30 {
        assert_eq!(get(&mut svc).await.unwrap(), 200);
    }
    assert_eq!(
        hits(&bs),
        [10, 10, 10],
        "round robin over three healthy endpoints"
    );

    // b1 starts failing: after three failures its breaker opens and the
    // router stops sending to it; the others carry the load.
    bs[1].set_behavior(Behavior::status(503));
    let before = bs[1].hits();
    let mut failures = 0;
    for _ in 0..60 {
        if get(&mut svc).await.unwrap() != 200 {
            failures += 1;
        }
    }
    let reached_b1 = bs[1].hits() - before;
    assert!(
        reached_b1 <= 3,
        "b1 got {reached_b1} requests after it started failing"
    );
    assert_eq!(failures, reached_b1);
    assert_eq!(layer.balancer().stats().ejected, 1);

    // b1 recovers: after the open time a probe succeeds and traffic returns.
    bs[1].set_behavior(Behavior::Healthy);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = bs[1].hits();
    for _ in 0..60 {
        assert_eq!(get(&mut svc).await.unwrap(), 200);
    }
    assert!(bs[1].hits() - before >= 10, "b1 is back: {:?}", hits(&bs));
}

#[tokio::test]
async fn slow_endpoint_gets_less_traffic_under_p2c() {
    let bs = backends(3).await;
    bs[0].set_behavior(Behavior::slow(Duration::from_millis(40)));
    let discovery = StaticSource::new(bs.iter().map(endpoint)).discovery();
    let svc = DiscoveryLayer::new(discovery).layer(client());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                assert_eq!(get(&mut svc).await.unwrap(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let h = hits(&bs);
    let total: u64 = h.iter().sum();
    assert_eq!(total, 320);
    // Round robin would give the slow one a third (107); p2c far less.
    assert!(
        h[0] * 10 < total,
        "slow endpoint got {} of {total}: {h:?}",
        h[0]
    );
}

#[tokio::test]
async fn churn_under_load_never_reaches_a_removed_endpoint() {
    let bs = backends(8).await;
    let (source, discovery) = ChannelSource::new("users");
    source.set(bs[..4].iter().map(endpoint));
    let svc = DiscoveryLayer::new(discovery).layer(client());

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut svc = svc.clone();
        let stop = stop.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let status = tokio::time::timeout(Duration::from_secs(2), get(&mut svc))
                    .await
                    .expect("no request hangs")
                    .expect("churn never fails a request");
                assert_eq!(status, 200);
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

    // Every 150 ms, swap one endpoint out for another. Once a removal is
    // applied (and the requests in flight then have had time to finish), the
    // removed backend's counter must not move again while it stays out.
    let mut live: Vec<usize> = (0..4).collect();
    let mut spare: Vec<usize> = (4..8).collect();
    let mut frozen: HashMap<usize, u64> = HashMap::new();
    for round in 0..12 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let out = live.remove(round % live.len());
        let inn = spare.remove(0);
        frozen.remove(&inn);
        live.push(inn);
        spare.push(out);
        source.set(live.iter().map(|&i| endpoint(&bs[i])));
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (&i, &h) in &frozen {
            assert_eq!(bs[i].hits(), h, "b{i} received a request after its removal");
        }
        frozen.insert(out, bs[out].hits());
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    for (&i, &h) in &frozen {
        if !live.contains(&i) {
            assert_eq!(bs[i].hits(), h, "b{i} received a request after its removal");
        }
    }
    assert!(
        done.load(Ordering::SeqCst) > 100,
        "load ran: {}",
        done.load(Ordering::SeqCst)
    );
    // Endpoints added later received traffic.
    assert!(bs[4..].iter().all(|b| b.hits() > 0), "{:?}", hits(&bs));
}

#[tokio::test]
async fn no_endpoint_fails_fast_over_real_clients() {
    let (_source, discovery) = ChannelSource::new("users");
    let layer = DiscoveryLayer::builder(discovery)
        .ready_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut svc = layer.layer(client());
    let start = std::time::Instant::now();
    let err = get(&mut svc).await.unwrap_err();
    assert!(err.downcast_ref::<NoReadyEndpoint>().is_some(), "{err}");
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn reqwest_client_through_the_layer() {
    let bs = backends(2).await;
    let discovery = StaticSource::new(bs.iter().map(endpoint)).discovery();
    // The workspace builds reqwest's rustls without a default provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut svc = DiscoveryLayer::new(discovery).layer(reqwest::Client::new());
    for _ in 0..10 {
        let req = reqwest::Request::new(
            http::Method::GET,
            "http://users.internal/x".parse().unwrap(),
        );
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.text().await.unwrap();
        assert!(body == "b0" || body == "b1", "{body}");
    }
    assert_eq!(bs[0].hits() + bs[1].hits(), 10);
    // The logical name never reached the wire as an address.
    assert!(
        bs.iter()
            .flat_map(Backend::requests)
            .all(|r| r.uri.path() == "/x")
    );
}

#[tokio::test]
async fn tonic_client_through_the_layer() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    // Two real gRPC servers.
    let mut endpoints = Vec::new();
    for i in 0..2 {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("users", tonic_health::ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        endpoints.push(Endpoint::new(format!("grpc-{i}"), addr.into()));
    }
    let discovery = StaticSource::new(endpoints).discovery();
    let h2: Client<HttpConnector, tonic::body::Body> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let layer = DiscoveryLayer::builder(discovery)
        .classifier(mesh_core::classify::GrpcClassifier::default())
        .build()
        .unwrap();
    // A generated tonic client accepts the routed service as is.
    let mut health = HealthClient::new(layer.layer(h2));
    for _ in 0..6 {
        let resp = health
            .check(HealthCheckRequest {
                service: "users".into(),
            })
            .await
            .unwrap();
        assert_eq!(resp.into_inner().status, 1, "SERVING");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert_eq!(layer.balancer().stats().in_flight, 0);
}

#[tokio::test]
async fn routes_over_consul_and_follows_health_flips() {
    use mesh_discovery::consul::{ConsulClient, ConsulConfig, ConsulDiscovery, WatchConfig};
    use mesh_testkit::consul::{FakeConsul, Health, Instance};

    let consul = FakeConsul::start().await.unwrap();
    let bs = backends(3).await;
    consul.add_instances(
        bs.iter()
            .map(|b| Instance::new("users", b.name(), "127.0.0.1", b.addr().port())),
    );
    let mut client_config = ConsulConfig::new(consul.url());
    client_config.request_timeout = Duration::from_secs(2);
    let mut watch = WatchConfig::new("users");
    watch.wait = Duration::from_secs(1);
    watch.min_interval = Duration::from_millis(10);
    let discovery =
        ConsulDiscovery::spawn(ConsulClient::new(&client_config).unwrap(), watch).unwrap();
    let layer = DiscoveryLayer::builder(discovery.clone())
        .balance(BalanceConfig {
            strategy: Strategy::RoundRobin,
            ..BalanceConfig::default()
        })
        .ready_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = layer.layer(client());

    // The first request waits (boundedly) for Consul's first answer.
    for _ in 0..30 {
        assert_eq!(get(&mut svc).await.unwrap(), 200);
    }
    assert_eq!(hits(&bs), [10, 10, 10]);

    // Consul marks b2 critical: once the watch publishes it, b2 gets nothing.
    consul.set_health("b2", Health::Critical);
    tokio::time::timeout(Duration::from_secs(5), async {
        while discovery.current().len() != 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the watch publishes the health flip");
    let before = bs[2].hits();
    for _ in 0..30 {
        assert_eq!(get(&mut svc).await.unwrap(), 200);
    }
    assert_eq!(bs[2].hits(), before, "a critical instance receives nothing");

    // Passing again: it comes back.
    consul.set_health("b2", Health::Passing);
    tokio::time::timeout(Duration::from_secs(5), async {
        while discovery.current().len() != 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the watch publishes the recovery");
    for _ in 0..30 {
        assert_eq!(get(&mut svc).await.unwrap(), 200);
    }
    assert!(bs[2].hits() >= before + 10, "{:?}", hits(&bs));
}
