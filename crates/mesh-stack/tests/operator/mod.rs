//! The scenario of `metrics.rs` and `logs.rs`: three replicas of `users`,
//! round robin, `c` always answering 503.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_stack::balance::Strategy;
use mesh_stack::core::Endpoint;
use mesh_stack::core::backoff::{Backoff, Jitter};
use mesh_stack::discovery::ChannelSource;
use mesh_stack::{Mesh, MeshConfig, MeshService, ServiceConfig};
use mesh_testkit::Backend;
use mesh_testkit::backend::Behavior;
use tower::ServiceExt;

pub(crate) type Users = MeshService<mesh_stack::inner::HyperClient<Empty<Bytes>>>;

pub(crate) struct Scenario {
    pub(crate) a: Backend,
    pub(crate) b: Backend,
    pub(crate) c: Backend,
    pub(crate) source: ChannelSource,
    pub(crate) mesh: Mesh,
    pub(crate) users: Users,
}

pub(crate) fn ep(addr: SocketAddr) -> Endpoint {
    Endpoint::from_address(addr.into())
}

pub(crate) async fn start() -> Scenario {
    let a = Backend::builder().name("a").start().await.unwrap();
    let b = Backend::builder().name("b").start().await.unwrap();
    let c = Backend::builder()
        .name("c")
        .behavior(Behavior::status(503))
        .start()
        .await
        .unwrap();
    let (source, discovery) = ChannelSource::new("users");
    source.set([ep(a.addr()), ep(b.addr()), ep(c.addr())]);
    let mut service = ServiceConfig::with_static([ep(a.addr())]);
    service.balance.strategy = Strategy::RoundRobin;
    service.breaker.consecutive_failures = Some(3);
    service.breaker.recovery_timeout = Duration::from_secs(60);
    service.retry.max_retries = 2;
    service.retry.backoff = Backoff::new(Duration::from_millis(1), 1.0, Duration::from_millis(1))
        .with_jitter(Jitter::None);
    service.retry.budget.min_retries_per_second = 1000;
    let mesh = Mesh::builder(MeshConfig::new().service("users", service))
        .discovery("users", discovery)
        .build()
        .unwrap();
    let users = mesh
        .http_client("users", mesh_stack::inner::http_client())
        .unwrap();
    Scenario {
        a,
        b,
        c,
        source,
        mesh,
        users,
    }
}

/// One GET, its body read to the end (the breaker counts at end of stream).
pub(crate) async fn get(users: &Users) -> Result<u16, String> {
    let req = http::Request::get("http://users/profile")
        .body(Empty::new())
        .unwrap();
    let resp = users
        .clone()
        .oneshot(req)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

/// Calls until `c` is ejected (a few rounds of round robin); every call
/// succeeds, retried on a healthy replica when it landed on `c`.
pub(crate) async fn eject_c(s: &Scenario) -> usize {
    let c = s.c.addr().to_string();
    for n in 1..=60 {
        assert_eq!(get(&s.users).await, Ok(200), "call {n}");
        let snap = s.mesh.admin();
        if snap.service("users").unwrap().endpoint(&c).unwrap().state == "ejected" {
            return n;
        }
    }
    panic!("c was never ejected: {:#?}", s.mesh.admin());
}
