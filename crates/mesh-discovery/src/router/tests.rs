use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_balance::{BalanceConfig, Strategy};
use mesh_core::target::{NewEndpoint, Target};
use mesh_core::{Availability, AvailabilityState, BoxError, Endpoint, TriedEndpoints};
use tower::{Layer, Service, ServiceExt, service_fn};

use super::*;
use crate::{ChannelSource, StaticSource};

type Echo = tower::util::ServiceFn<
    fn(http::Request<()>) -> std::future::Ready<Result<http::Response<String>, Infallible>>,
>;

/// An inner client that answers with the authority it was sent to.
fn echo() -> Echo {
    service_fn(|req: http::Request<()>| {
        std::future::ready(Ok(http::Response::new(
            req.uri()
                .authority()
                .map(ToString::to_string)
                .unwrap_or_default(),
        )))
    })
}

fn ep(addr: &str) -> Endpoint {
    Endpoint::from_address(addr.parse().unwrap())
}

fn round_robin() -> BalanceConfig {
    BalanceConfig {
        strategy: Strategy::RoundRobin,
        ..BalanceConfig::default()
    }
}

/// A round-robin router over a channel source that starts with `endpoints`,
/// sending to [`echo`].
fn round_robin_router(
    endpoints: impl IntoIterator<Item = Endpoint>,
) -> (
    ChannelSource,
    DiscoveryService<
        Echo,
        mesh_core::target::LayerEndpoint<tower::layer::util::Identity>,
        mesh_core::classify::DefaultHttpClassifier,
    >,
) {
    let (source, discovery) = ChannelSource::new("users");
    source.set(endpoints);
    let layer = DiscoveryLayer::builder(discovery)
        .balance(round_robin())
        .build()
        .unwrap();
    (source, layer.layer(echo()))
}

async fn send<S>(svc: &mut S) -> Result<String, BoxError>
where
    S: Service<http::Request<()>, Response = http::Response<String>, Error = BoxError>,
{
    let req = http::Request::get("http://users/x").body(()).unwrap();
    Ok(svc.ready().await?.call(req).await?.into_body())
}

#[tokio::test]
async fn spreads_requests_over_every_endpoint() {
    let discovery =
        StaticSource::new([ep("10.0.0.1:80"), ep("10.0.0.2:80"), ep("10.0.0.3:80")]).discovery();
    let layer = DiscoveryLayer::builder(discovery)
        .balance(round_robin())
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        *seen.entry(send(&mut svc).await.unwrap()).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|&n| n == 10), "{seen:?}");
}

#[tokio::test]
async fn removal_is_applied_before_the_next_request() {
    let (source, mut svc) = round_robin_router([ep("10.0.0.1:80"), ep("10.0.0.2:80")]);
    let mut clone = svc.clone();
    for _ in 0..4 {
        send(&mut svc).await.unwrap();
    }
    source.remove(ep("10.0.0.2:80").key());
    for _ in 0..20 {
        assert_eq!(send(&mut clone).await.unwrap(), "10.0.0.1:80");
        assert_eq!(send(&mut svc).await.unwrap(), "10.0.0.1:80");
    }
    assert_eq!(svc.endpoints().len(), 1);
}

/// A caller cloning per request: every request goes through a fresh clone,
/// which routes through the shared state (no caches of its own) and must see
/// every applied change as a long-lived handle does.
#[tokio::test]
async fn fresh_clones_route_through_churn() {
    let (source, svc) = round_robin_router([ep("10.0.0.1:80"), ep("10.0.0.2:80")]);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let mut once = svc.clone();
        seen.insert(send(&mut once).await.unwrap());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // Changes reach fresh clones through the shared receiver.
    source.remove(ep("10.0.0.2:80").key());
    for _ in 0..10 {
        assert_eq!(send(&mut svc.clone()).await.unwrap(), "10.0.0.1:80");
    }
    source.insert(ep("10.0.0.3:80"));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(send(&mut svc.clone()).await.unwrap());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // A clone that keeps calling sees later changes.
    let mut kept = svc.clone();
    send(&mut kept).await.unwrap();
    send(&mut kept).await.unwrap();
    source.remove(ep("10.0.0.1:80").key());
    for _ in 0..10 {
        assert_eq!(send(&mut kept).await.unwrap(), "10.0.0.3:80");
        assert_eq!(send(&mut svc.clone()).await.unwrap(), "10.0.0.3:80");
    }
    assert!(svc.table_matches_slots());
}

/// A long-lived handle sends through a rebuilt stack (same key, new
/// address) from the next request on.
#[tokio::test]
async fn a_rebuilt_stack_serves_a_long_lived_handles_next_request() {
    let key_a = |addr: &str| Endpoint::new("a", addr.parse().unwrap());
    let (source, mut svc) = round_robin_router([key_a("10.0.0.1:80"), ep("10.0.0.2:80")]);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(send(&mut svc).await.unwrap());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    source.set([key_a("10.0.0.9:80"), ep("10.0.0.2:80")]);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(send(&mut svc).await.unwrap());
    }
    let expected: std::collections::HashSet<String> =
        ["10.0.0.9:80".to_owned(), "10.0.0.2:80".to_owned()].into();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn stacks_follow_the_balancer_slots_through_churn() {
    let (source, discovery) = ChannelSource::new("users");
    let all: Vec<_> = (1..=12).map(|i| ep(&format!("10.0.0.{i}:80"))).collect();
    source.set(all.clone());
    let layer = DiscoveryLayer::builder(discovery).build().unwrap();
    let mut svc = layer.layer(echo());
    for round in 0..30usize {
        // Drop some, reorder the rest, then route.
        let mut set: Vec<_> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| (i + round) % 4 != 0)
            .map(|(_, e)| e.clone())
            .collect();
        let n = set.len();
        set.rotate_left(round % n);
        let expected: std::collections::HashSet<String> =
            set.iter().map(|e| e.address().to_string()).collect();
        source.set(set);
        for _ in 0..10 {
            let got = send(&mut svc).await.unwrap();
            assert!(expected.contains(&got), "round {round}: {got}");
        }
        assert!(svc.table_matches_slots(), "round {round}");
    }
}

#[tokio::test(start_paused = true)]
async fn no_endpoint_fails_fast_with_a_typed_error() {
    let (_source, discovery) = ChannelSource::new("users");
    let layer = DiscoveryLayer::builder(discovery)
        .ready_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let start = tokio::time::Instant::now();
    let err = send(&mut svc).await.unwrap_err();
    let waited = start.elapsed();
    let err = err
        .downcast_ref::<NoReadyEndpoint>()
        .expect("NoReadyEndpoint");
    assert_eq!((err.known(), err.unavailable()), (0, 0));
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(400),
        "{waited:?}"
    );
    assert!(err.to_string().contains("users"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_an_endpoint_to_appear() {
    let (source, discovery) = ChannelSource::new("users");
    let layer = DiscoveryLayer::new(discovery);
    let mut svc = layer.layer(echo());
    let pending = tokio::spawn(async move { send(&mut svc).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished());
    source.insert(ep("10.0.0.9:80"));
    assert_eq!(pending.await.unwrap().unwrap(), "10.0.0.9:80");
}

#[tokio::test]
async fn retries_avoid_the_endpoints_already_tried() {
    let discovery = StaticSource::new([ep("10.0.0.1:80"), ep("10.0.0.2:80")]).discovery();
    let mut svc = DiscoveryLayer::new(discovery).layer(echo());
    for _ in 0..20 {
        let tried = TriedEndpoints::new();
        let mut req = http::Request::get("http://users/").body(()).unwrap();
        req.extensions_mut().insert(tried.clone());
        let first = svc
            .ready()
            .await
            .unwrap()
            .call(req)
            .await
            .unwrap()
            .into_body();
        assert_eq!(tried.len(), 1, "the router records the endpoint it chose");
        let mut req = http::Request::get("http://users/").body(()).unwrap();
        req.extensions_mut().insert(tried.clone());
        let second = svc
            .ready()
            .await
            .unwrap()
            .call(req)
            .await
            .unwrap()
            .into_body();
        assert_ne!(first, second);
    }
}

/// A per-endpoint constructor that remembers the health signals its targets
/// carried and how many stacks it built.
#[derive(Clone, Default)]
struct Probe {
    built: Arc<AtomicUsize>,
    signals: Arc<Mutex<Vec<Availability>>>,
}

impl<S> NewEndpoint<S> for Probe {
    type Service = S;
    fn new_endpoint(&self, target: &Target, inner: S) -> S {
        self.built.fetch_add(1, Ordering::SeqCst);
        assert_eq!(
            target.name(),
            format!("{}/{}", target.service(), target.endpoint().key())
        );
        self.signals.lock().unwrap().push(target.health().clone());
        inner
    }
}

#[tokio::test]
async fn stacks_publish_availability_and_unavailable_endpoints_are_skipped() {
    let probe = Probe::default();
    let discovery = StaticSource::new([
        ep("10.0.0.1:80"),
        ep("10.0.0.2:80"),
        ep("10.0.0.3:80"),
        ep("10.0.0.4:80"),
    ])
    .discovery();
    let layer = DiscoveryLayer::builder(discovery)
        .balance(round_robin())
        .new_endpoint(probe.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    assert_eq!(probe.built.load(Ordering::SeqCst), 4);
    // What a breaker would do: publish "skip me" for 10.0.0.2.
    let key = ep("10.0.0.2:80").key().clone();
    let signal = layer.balancer().availability(&key).unwrap();
    assert!(
        probe
            .signals
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.ptr_eq(&signal))
    );
    signal.set(AvailabilityState::Unavailable);
    for _ in 0..40 {
        assert_ne!(send(&mut svc).await.unwrap(), "10.0.0.2:80");
    }
    signal.set(AvailabilityState::Available);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        seen.insert(send(&mut svc).await.unwrap());
    }
    assert!(seen.contains("10.0.0.2:80"));
}

#[tokio::test]
async fn stacks_are_rebuilt_only_when_the_route_changes() {
    let probe = Probe::default();
    let (source, discovery) = ChannelSource::new("users");
    source.set([ep("10.0.0.1:80")]);
    let layer = DiscoveryLayer::builder(discovery)
        .new_endpoint(probe.clone())
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    send(&mut svc).await.unwrap();
    assert_eq!(probe.built.load(Ordering::SeqCst), 1);
    // A weight change keeps the stack (and its breaker state).
    source.set([ep("10.0.0.1:80").with_weight(5)]);
    send(&mut svc).await.unwrap();
    assert_eq!(probe.built.load(Ordering::SeqCst), 1);
    // New metadata rebuilds it.
    source.set([ep("10.0.0.1:80")
        .with_weight(5)
        .with_metadata([("version", "2")])]);
    send(&mut svc).await.unwrap();
    assert_eq!(probe.built.load(Ordering::SeqCst), 2);
}

/// A stack that never becomes ready (an open breaker in readiness mode).
#[derive(Clone)]
struct NeverReady;

impl Service<http::Request<()>> for NeverReady {
    type Response = http::Response<String>;
    type Error = BoxError;
    type Future = std::future::Pending<Result<Self::Response, BoxError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Pending
    }
    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        std::future::pending()
    }
}

#[tokio::test(start_paused = true)]
async fn a_stack_that_stays_not_ready_fails_within_the_bound() {
    let discovery = StaticSource::new([ep("10.0.0.1:80")]).discovery();
    let layer = DiscoveryLayer::builder(discovery)
        .endpoint_layer(tower::layer::layer_fn(|_inner| NeverReady))
        .ready_timeout(Duration::from_millis(250))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let err = send(&mut svc).await.unwrap_err();
    // Reported with the endpoint it was meant for, so that a requeue (the
    // request never left) avoids it.
    let (endpoint, err) = mesh_core::AttemptError::split(err);
    assert_eq!(endpoint, Some(ep("10.0.0.1:80").key().id()));
    let err = err
        .downcast_ref::<EndpointNotReady>()
        .expect("EndpointNotReady");
    assert_eq!(err.endpoint(), "10.0.0.1:80");
    assert_eq!(err.waited(), Duration::from_millis(250));
    // The abandoned attempt left no load behind.
    assert_eq!(layer.balancer().stats().in_flight, 0);
}

#[test]
fn config_validation_names_the_fields() {
    let bad = RouterConfig {
        ready_timeout: Duration::ZERO,
        balance: BalanceConfig {
            max_ejection_percent: 200,
            ..BalanceConfig::default()
        },
        ..RouterConfig::default()
    };
    let err = bad.validate().unwrap_err();
    let paths: Vec<_> = err.errors().iter().map(|e| e.path().to_owned()).collect();
    assert!(paths.contains(&"ready_timeout".to_owned()), "{paths:?}");
    assert!(
        paths.contains(&"balance.max_ejection_percent".to_owned()),
        "{paths:?}"
    );
    RouterConfig::default().validate().unwrap();
}

/// `n` endpoints, round robin, the default 50 % ejection cap, with their
/// health signals.
type Plain = mesh_core::target::LayerEndpoint<tower::layer::util::Identity>;

fn router_with_signals(
    n: u8,
) -> (
    DiscoveryLayer<Plain>,
    DiscoveryService<Echo, Plain, mesh_core::classify::DefaultHttpClassifier>,
    Vec<Availability>,
) {
    let eps: Vec<_> = (1..=n).map(|i| ep(&format!("10.0.0.{i}:80"))).collect();
    let layer = DiscoveryLayer::builder(StaticSource::new(eps.clone()).discovery())
        .balance(round_robin())
        .ready_timeout(Duration::from_millis(250))
        .build()
        .unwrap();
    // The balancer learns the set when the first service is built.
    let svc = layer.layer(echo());
    let signals = eps
        .iter()
        .map(|e| layer.balancer().availability(e.key()).unwrap())
        .collect();
    (layer, svc, signals)
}

#[tokio::test(start_paused = true)]
async fn past_the_ejection_cap_ejected_endpoints_take_traffic() {
    // 3 of 4 unavailable, cap 2: two are ejected, the third keeps taking
    // traffic beside the healthy one (panic mode).
    let (layer, mut svc, signals) = router_with_signals(4);
    for s in &signals[1..] {
        s.set(AvailabilityState::Unavailable);
    }
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..40 {
        *seen.entry(send(&mut svc).await.unwrap()).or_default() += 1;
    }
    let stats = layer.balancer().stats();
    assert!(stats.panic, "the balancer is in panic mode");
    assert_eq!(stats.ejected, 2, "never more than the cap ejected");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.contains_key("10.0.0.1:80"), "{seen:?}");
    assert_eq!(stats.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn with_every_endpoint_ejected_calls_are_still_attempted() {
    let (layer, mut svc, signals) = router_with_signals(4);
    for s in &signals {
        s.set_unavailable_until(tokio::time::Instant::now() + Duration::from_secs(60));
    }
    let start = tokio::time::Instant::now();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(send(&mut svc).await.unwrap());
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "no call waited");
    let stats = layer.balancer().stats();
    assert_eq!((stats.ejected, stats.panic), (2, true));
    assert_eq!(seen.len(), 2, "the two over the cap serve: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn poll_ready_waits_for_the_source_and_is_woken_by_it() {
    let (source, discovery) = ChannelSource::new("users");
    let layer = DiscoveryLayer::builder(discovery)
        .ready_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = layer.layer(echo());
    let mut task = tokio_test::task::spawn(());
    assert!(
        task.enter(|cx, _| svc.poll_ready(cx)).is_pending(),
        "no endpoint: not ready"
    );
    assert!(!task.is_woken());
    source.insert(ep("10.0.0.7:80"));
    assert!(
        task.is_woken(),
        "the discovery update wakes the waiting caller"
    );
    assert!(matches!(
        task.enter(|cx, _| svc.poll_ready(cx)),
        Poll::Ready(Ok(()))
    ));
    assert_eq!(
        svc.call(http::Request::get("http://users/").body(()).unwrap())
            .await
            .unwrap()
            .into_body(),
        "10.0.0.7:80"
    );
}
