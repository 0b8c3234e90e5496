//! The discovery router's per-call overhead (issue 7): p2c over 16 and 10,000
//! endpoints against a bare service, tower's `Balance` called directly, and
//! `Buffer<Balance<PeakEwma>>` (what a tower user needs for a `Clone`
//! balanced service), in one run. Every variant runs the same harness: build a
//! request, `ready().await`, `call(..).await`, on a current-thread runtime.
//!
//! `mesh_p2c_peak_ewma_16_fresh_clone` sends every request through a new
//! clone of the router, as callers that clone the client per request do:
//! what the router costs a handle on its first call.
//!
//! Run with `cargo bench -p mesh-bench --bench router`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_balance::BalanceConfig;
use mesh_discovery::StaticSource;
use mesh_discovery::router::DiscoveryLayer;
use tower::Layer;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma};

mod common;

use common::{Inner, endpoints, run};

fn router(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("router");

    g.bench_function("bare", |b| {
        let mut svc = Inner;
        b.iter_custom(|iters| run(&rt, &mut svc, iters));
    });

    for n in [16, 1_000, 10_000] {
        let discovery = StaticSource::new(endpoints(n)).discovery();
        let layer = rt.block_on(async {
            DiscoveryLayer::builder(discovery)
                .balance(BalanceConfig::default())
                .build()
                .unwrap()
        });
        let mut svc = rt.block_on(async { layer.layer(Inner) });
        g.bench_function(format!("mesh_p2c_peak_ewma_{n}"), |b| {
            b.iter_custom(|iters| run(&rt, &mut svc, iters));
        });
    }

    // Every request through a fresh clone (a caller cloning per request).
    {
        let discovery = StaticSource::new(endpoints(16)).discovery();
        let layer = rt.block_on(async {
            DiscoveryLayer::builder(discovery)
                .balance(BalanceConfig::default())
                .build()
                .unwrap()
        });
        let mut svc = CloneEach(rt.block_on(async { layer.layer(Inner) }));
        g.bench_function("mesh_p2c_peak_ewma_16_fresh_clone", |b| {
            b.iter_custom(|iters| run(&rt, &mut svc, iters));
        });
    }

    // The same router with a strategy that reads no clock: how much of the
    // cost is p2c's latency accounting.
    {
        let discovery = StaticSource::new(endpoints(16)).discovery();
        let layer = rt.block_on(async {
            DiscoveryLayer::builder(discovery)
                .balance(BalanceConfig {
                    strategy: mesh_balance::Strategy::RoundRobin,
                    ..BalanceConfig::default()
                })
                .build()
                .unwrap()
        });
        let mut svc = rt.block_on(async { layer.layer(Inner) });
        g.bench_function("mesh_round_robin_16", |b| {
            b.iter_custom(|iters| run(&rt, &mut svc, iters));
        });
    }

    let peak_ewma = |n: usize| {
        ServiceList::new((0..n).map(|_| {
            PeakEwma::new(
                Inner,
                Duration::from_millis(30),
                Duration::from_secs(10).as_nanos() as f64,
                CompleteOnResponse::default(),
            )
        }))
    };
    g.bench_function("tower_balance_peak_ewma_16_direct", |b| {
        let mut svc = Balance::new(peak_ewma(16));
        b.iter_custom(|iters| run(&rt, &mut svc, iters));
    });
    g.bench_function("tower_buffer_balance_peak_ewma_16", |b| {
        let mut svc = rt.block_on(async { Buffer::new(Balance::new(peak_ewma(16)), 1024) });
        b.iter_custom(|iters| run(&rt, &mut svc, iters));
    });
    g.finish();
}

/// Calls a new clone of `S` for every request and drops it with the
/// response future, as `tower::retry::Retry` and mesh's retry layer do.
struct CloneEach<S>(S);

impl<S, R> tower::Service<R> for CloneEach<S>
where
    S: tower::Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        let clone = self.0.clone();
        std::mem::replace(&mut self.0, clone).call(request)
    }
}

criterion_group!(benches, router);
criterion_main!(benches);
