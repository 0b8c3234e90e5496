//! The `tower::discover` adapter feeding tower's p2c balancer.

use std::convert::Infallible;
use std::time::Duration;

use mesh_core::Endpoint;
use mesh_discovery::ChannelSource;
use tower::balance::p2c::Balance;
use tower::load::Constant;
use tower::{Service, ServiceExt, service_fn};

#[tokio::test]
async fn changes_drive_a_p2c_balancer() {
    let (source, discovery) = ChannelSource::new("users");
    source.set([
        Endpoint::from_address("10.0.0.1:80".parse().unwrap()),
        Endpoint::from_address("10.0.0.2:80".parse().unwrap()),
    ]);
    // One service per endpoint; it answers with its endpoint's address.
    let discover = discovery.changes().map(|ep: &Endpoint| {
        let addr = ep.address().to_string();
        Constant::new(
            service_fn(move |()| {
                let addr = addr.clone();
                async move { Ok::<_, Infallible>(addr) }
            }),
            1,
        )
    });
    let mut balance = Balance::new(discover);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let addr = balance.ready().await.unwrap().call(()).await.unwrap();
        seen.insert(addr);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // Remove one endpoint: the balancer stops using it.
    source.remove(&"10.0.0.1:80".into());
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..20 {
        let addr = balance.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(addr, "10.0.0.2:80");
    }
}
