//! The ready-made stack's per-call overhead (issue 8): `Mesh::http_client`
//! (retry, discovery router with p2c over 16 endpoints, per-endpoint breaker
//! and attempt timeout) against a bare service, tower's own
//! `Retry` + `Timeout` (no routing, no breaker), and a tower user's balanced
//! equivalent `Buffer<Balance<PeakEwma>>` with `Retry` on top, in one run.
//! Every variant runs the same harness: build a request, `ready().await`,
//! `call(..).await`, on a current-thread runtime.
//!
//! Run with `cargo bench -p mesh-bench --bench stack`.

use std::future::Ready;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_stack::{Mesh, MeshConfig, ServiceConfig};
use tower::ServiceBuilder;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma};

mod common;

use common::{Inner, Req, Resp, endpoints, run};

/// A tower retry policy that never retries (the calls all succeed).
#[derive(Clone, Copy)]
struct NoRetry;

impl<E> tower::retry::Policy<Req, Resp, E> for NoRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, _: &mut Result<Resp, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        let mut r = http::Request::new(());
        *r.uri_mut() = req.uri().clone();
        Some(r)
    }
}

fn stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("stack/call");

    g.bench_function("bare", |b| {
        let mut svc = Inner;
        b.iter_custom(|iters| run(&rt, &mut svc, iters));
    });

    g.bench_function("tower_retry_timeout", |b| {
        let mut svc = ServiceBuilder::new()
            .retry(NoRetry)
            .timeout(Duration::from_secs(2))
            .service(Inner);
        b.iter_custom(|iters| run(&rt, &mut svc, iters));
    });

    g.bench_function("tower_retry_buffer_balance_16", |b| {
        let mut svc = rt.block_on(async {
            let list = ServiceList::new(
                (0..16)
                    .map(|_| {
                        PeakEwma::new(
                            ServiceBuilder::new()
                                .timeout(Duration::from_secs(2))
                                .service(Inner),
                            Duration::from_millis(10),
                            10e6,
                            CompleteOnResponse::default(),
                        )
                    })
                    .collect::<Vec<_>>(),
            );
            ServiceBuilder::new()
                .retry(NoRetry)
                .service(Buffer::new(Balance::new(list), 1024))
        });
        b.iter_custom(|iters| run(&rt, &mut svc, iters));
    });

    g.bench_function("mesh_stack_16", |b| {
        let mesh = Mesh::new(
            MeshConfig::new().service("users", ServiceConfig::with_static(endpoints(16))),
        )
        .unwrap();
        let mut svc = rt.block_on(async { mesh.http_client("users", Inner).unwrap() });
        b.iter_custom(|iters| run(&rt, &mut svc, iters));
    });

    g.finish();
}

criterion_group!(benches, stack);
criterion_main!(benches);
