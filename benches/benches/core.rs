//! mesh-core's hot-path costs: classifying a response and drawing a jittered
//! delay. Target (issue 2): each well under 50 ns.
//!
//! Run with `cargo bench -p mesh-bench --bench core`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_core::BoxError;
use mesh_core::backoff::{Backoff, Jitter};
use mesh_core::classify::{Classify, GrpcClassifier, HttpClassifier};

fn classify(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    let http = HttpClassifier::default();
    let grpc = GrpcClassifier::default();
    let ok: Result<http::Response<()>, BoxError> = Ok(http::Response::new(()));
    let busy: Result<http::Response<()>, BoxError> = Ok(http::Response::builder()
        .status(503)
        .header("retry-after", "2")
        .body(())
        .unwrap());
    let grpc_unavailable: Result<http::Response<()>, BoxError> = Ok(http::Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", "14")
        .body(())
        .unwrap());
    g.bench_function("baseline_is_success_status", |b| {
        b.iter(|| {
            black_box(
                black_box(&ok)
                    .as_ref()
                    .is_ok_and(|r| r.status().is_success()),
            )
        });
    });
    g.bench_function("http_200", |b| {
        b.iter(|| black_box(http.classify(black_box(&ok))))
    });
    g.bench_function("http_503_retry_after", |b| {
        b.iter(|| black_box(http.classify(black_box(&busy))));
    });
    g.bench_function("grpc_ok", |b| {
        b.iter(|| black_box(grpc.classify(black_box(&ok))))
    });
    g.bench_function("grpc_unavailable", |b| {
        b.iter(|| black_box(grpc.classify(black_box(&grpc_unavailable))));
    });
    g.finish();
}

fn backoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("backoff");
    let base = Backoff::new(Duration::from_millis(100), 2.0, Duration::from_secs(30));
    for jitter in [Jitter::None, Jitter::Full, Jitter::Decorrelated] {
        let mut session = base.with_jitter(jitter).session();
        g.bench_function(format!("next_delay_{jitter:?}").to_lowercase(), |b| {
            b.iter(|| {
                // Keep the attempt count in a realistic range.
                if session.attempts() > 8 {
                    session.reset();
                }
                black_box(session.next_delay())
            });
        });
    }
    let full = base.with_jitter(Jitter::Full);
    g.bench_function("new_session_and_first_delay", |b| {
        b.iter(|| black_box(black_box(&full).session().next_delay()));
    });
    g.finish();
}

criterion_group!(benches, classify, backoff);
criterion_main!(benches);
