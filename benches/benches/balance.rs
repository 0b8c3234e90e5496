//! mesh-balance's hot path: choosing an endpoint and recording the outcome.
//!
//! Compared in the same run with tower's power-of-two-choices balancer
//! (`tower::balance::p2c::Balance<ServiceList<PendingRequests<_>>>` over 16
//! always-ready services, driven by `poll_ready` + `call` + one poll of the
//! response), and with the cost of one clock read (`tokio::time::Instant::now`),
//! since a timed p2c pick + record reads the clock twice.
//!
//! `mesh_p2c_peak_ewma_picker` is the same pick through a `Picker` (the
//! handle the discovery router uses), which caches the endpoint set instead
//! of paying an `ArcSwap` load per pick.
//!
//! Targets (issue 5): p2c pick + record <= 40 ns at 16 endpoints; at 10,000
//! endpoints no more than 1.5x the cost at 16.
//!
//! Run with
//! `cargo bench -p mesh-bench --bench balance -- --warm-up-time 1 --measurement-time 3`.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use mesh_balance::{BalanceConfig, Balancer, Strategy};
use mesh_core::{Endpoint, EndpointKey, Outcome, TriedEndpoints};
use tower::Service;
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PendingRequests};

const SIZES: [usize; 3] = [16, 1_000, 10_000];

fn balancer(strategy: Strategy, n: usize, weighted: bool) -> Balancer {
    let b = Balancer::new(BalanceConfig {
        strategy,
        ..BalanceConfig::default()
    })
    .unwrap();
    b.update((0..n).map(|i| {
        let addr = format!("10.0.{}.{}:8080", i / 250, i % 250 + 1);
        let weight = if weighted { (i % 5) as u32 + 1 } else { 1 };
        Endpoint::new(format!("ep-{i}"), addr.parse().unwrap()).with_weight(weight)
    }));
    b
}

fn clock(c: &mut Criterion) {
    let mut g = c.benchmark_group("balance_clock");
    g.bench_function("tokio_instant_now", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()));
    });
    g.finish();
}

fn p2c(c: &mut Criterion) {
    let mut g = c.benchmark_group("balance_p2c_pick_record");
    for n in SIZES {
        let bal = balancer(Strategy::P2cPeakEwma, n, false);
        g.bench_with_input(BenchmarkId::new("mesh_p2c_peak_ewma", n), &n, |b, _| {
            b.iter(|| {
                let guard = bal.pick(black_box(None)).unwrap();
                guard.record(Outcome::Success);
            });
        });
        // The handle the router uses: a cached view of the set.
        let mut picker = bal.picker();
        g.bench_with_input(
            BenchmarkId::new("mesh_p2c_peak_ewma_picker", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let guard = picker.pick(black_box(None)).unwrap();
                    guard.record(Outcome::Success);
                });
            },
        );
    }
    // A retry: the avoid set holds the endpoint of the first attempt.
    let bal = balancer(Strategy::P2cPeakEwma, 16, false);
    let tried = TriedEndpoints::new();
    tried.record(&EndpointKey::new("ep-3"));
    g.bench_function(BenchmarkId::new("mesh_p2c_peak_ewma_avoid_one", 16), |b| {
        b.iter(|| {
            let guard = bal.pick(black_box(Some(&tried))).unwrap();
            guard.record(Outcome::Success);
        });
    });

    // tower's p2c over PendingRequests, 16 always-ready services.
    let services: Vec<_> = (0..16)
        .map(|_| {
            PendingRequests::new(
                tower::service_fn(|req: u64| std::future::ready(Ok::<u64, Infallible>(req))),
                CompleteOnResponse::default(),
            )
        })
        .collect();
    let mut tower_p2c = Balance::new(ServiceList::new(services));
    let mut cx = Context::from_waker(Waker::noop());
    g.bench_function(BenchmarkId::new("tower_p2c_pending_requests", 16), |b| {
        b.iter(|| {
            assert!(matches!(tower_p2c.poll_ready(&mut cx), Poll::Ready(Ok(()))));
            let fut = pin!(tower_p2c.call(black_box(1)));
            black_box(fut.poll(&mut cx))
        });
    });
    g.finish();
}

fn latency_blind(c: &mut Criterion) {
    for (group, strategy, weighted) in [
        (
            "balance_least_outstanding_pick_record",
            Strategy::LeastOutstanding,
            false,
        ),
        (
            "balance_round_robin_pick_record",
            Strategy::RoundRobin,
            false,
        ),
        (
            "balance_smooth_wrr_pick_record",
            Strategy::WeightedRoundRobin,
            true,
        ),
        (
            "balance_weighted_random_pick_record",
            Strategy::Random,
            true,
        ),
    ] {
        let mut g = c.benchmark_group(group);
        for n in [16, 10_000] {
            let bal = balancer(strategy, n, weighted);
            g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    let guard = bal.pick(black_box(None)).unwrap();
                    guard.record(Outcome::Success);
                });
            });
        }
        g.finish();
    }
}

criterion_group!(benches, clock, p2c, latency_blind);
criterion_main!(benches);
