//! mesh-retry's no-retry path: `poll_ready` + `call` + one poll of an
//! always-ready service, for a GET with a cloneable `Full<Bytes>` body that
//! succeeds. Compared in one run against the bare service, plain
//! `tower::retry::Retry` with a never-retry policy, and tower-resilience's
//! retry. Target (issue 4): ≤ 25 ns over bare, budget accounting included.
//! The `*_headers` variants send the same GET with four headers, whose copy
//! for a retry is the one cost that grows with the request.
//!
//! Run with `cargo bench -p mesh-bench --bench retry -- --warm-up-time 1 --measurement-time 3`.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, Uri};
use http_body_util::Full;
use mesh_retry::{RetryConfig, RetryLayer, RetryPolicy};
use tower::retry::Policy;
use tower::{Layer, Service};

type Req = Request<Full<Bytes>>;

/// Answers `200 OK` at once.
#[derive(Clone, Copy)]
struct AlwaysReady;

impl Service<Req> for AlwaysReady {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        drop(black_box(req));
        ready(Ok(Response::new(())))
    }
}

/// tower-resilience needs `Req: Clone`, which `http::Request` is not: this
/// wrapper clones the way a retry must (parts and body).
struct CloneReq(Req);

impl Clone for CloneReq {
    fn clone(&self) -> Self {
        let r = &self.0;
        let mut c = Request::new(r.body().clone());
        *c.method_mut() = r.method().clone();
        *c.uri_mut() = r.uri().clone();
        *c.headers_mut() = r.headers().clone();
        *c.extensions_mut() = r.extensions().clone();
        Self(c)
    }
}

#[derive(Clone, Copy)]
struct AlwaysReadyClone;

impl Service<CloneReq> for AlwaysReadyClone {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: CloneReq) -> Self::Future {
        drop(black_box(req));
        ready(Ok(Response::new(())))
    }
}

/// tower's `Retry` with a policy that never retries (and never clones).
#[derive(Clone, Copy)]
struct NeverRetry;

impl<Req, Res, E> Policy<Req, Res, E> for NeverRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, _: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, _: &Req) -> Option<Req> {
        None
    }
}

fn request(uri: &Uri) -> Req {
    let mut r = Request::new(Full::new(Bytes::from_static(b"{\"id\":42}")));
    *r.uri_mut() = uri.clone();
    r
}

/// The same GET with four headers (built afresh, as a client would).
fn request_with_headers(uri: &Uri) -> Req {
    use http::header::{ACCEPT, AUTHORIZATION, HeaderValue, USER_AGENT};
    let mut r = request(uri);
    let h = r.headers_mut();
    h.insert(ACCEPT, HeaderValue::from_static("application/json"));
    h.insert(USER_AGENT, HeaderValue::from_static("mesh-bench/0.1"));
    h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t0k3n"));
    h.insert("x-request-id", HeaderValue::from_static("7f3e2a"));
    r
}

/// One ready + call + poll, as a client would do it. Not inlined, so that
/// callgrind can count each variant's instructions per call.
#[inline(never)]
fn drive<S, R>(svc: &mut S, req: R, cx: &mut Context<'_>)
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    match svc.poll_ready(cx) {
        Poll::Ready(r) => r.unwrap(),
        Poll::Pending => panic!("not ready"),
    }
    let fut = pin!(svc.call(req));
    match fut.poll(cx) {
        Poll::Ready(r) => {
            black_box(r.unwrap());
        }
        Poll::Pending => panic!("not done"),
    }
}

fn no_retry_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("retry_no_retry_path");
    let uri = Uri::from_static("http://users.internal/users/42");
    let mut cx = Context::from_waker(Waker::noop());

    let mut bare = AlwaysReady;
    g.bench_function("bare", |b| {
        b.iter(|| drive(&mut bare, request(&uri), &mut cx));
    });

    let mut tower_never = tower::retry::Retry::new(NeverRetry, AlwaysReady);
    g.bench_function("tower_retry_never_policy", |b| {
        b.iter(|| drive(&mut tower_never, request(&uri), &mut cx));
    });

    let mut tower_mesh_policy = tower::retry::Retry::new(
        RetryPolicy::new(RetryConfig::default()).unwrap(),
        AlwaysReady,
    );
    g.bench_function("tower_retry_mesh_policy", |b| {
        b.iter(|| drive(&mut tower_mesh_policy, request(&uri), &mut cx));
    });

    let mut mesh = RetryLayer::new(RetryConfig::default())
        .unwrap()
        .layer(AlwaysReady);
    g.bench_function("mesh_retry_layer", |b| {
        b.iter(|| drive(&mut mesh, request(&uri), &mut cx));
    });

    let mut mesh_untracked = RetryLayer::new(RetryConfig {
        track_tried_endpoints: false,
        ..RetryConfig::default()
    })
    .unwrap()
    .layer(AlwaysReady);
    g.bench_function("mesh_retry_layer_untracked", |b| {
        b.iter(|| drive(&mut mesh_untracked, request(&uri), &mut cx));
    });

    let mut resilience =
        tower_resilience::retry::RetryLayer::<CloneReq, Response<()>, Infallible>::builder()
            .max_attempts(4)
            .build()
            .layer(AlwaysReadyClone);
    g.bench_function("tower_resilience_retry", |b| {
        b.iter(|| drive(&mut resilience, CloneReq(request(&uri)), &mut cx));
    });

    g.bench_function("bare_headers", |b| {
        b.iter(|| drive(&mut bare, request_with_headers(&uri), &mut cx));
    });
    g.bench_function("tower_retry_never_policy_headers", |b| {
        b.iter(|| drive(&mut tower_never, request_with_headers(&uri), &mut cx));
    });
    g.bench_function("mesh_retry_layer_headers", |b| {
        b.iter(|| drive(&mut mesh, request_with_headers(&uri), &mut cx));
    });
    g.bench_function("tower_resilience_retry_headers", |b| {
        b.iter(|| {
            drive(
                &mut resilience,
                CloneReq(request_with_headers(&uri)),
                &mut cx,
            )
        });
    });

    g.finish();
}

criterion_group!(benches, no_retry_path);
criterion_main!(benches, parts_group);

/// Where the time goes: the clock, a budget deposit, and building versus
/// cloning the request (the clone a retry needs is most of the overhead).
fn parts(c: &mut Criterion) {
    let mut g = c.benchmark_group("retry_parts");
    g.bench_function("instant_now", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    g.bench_function("std_instant_now", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    let budget = mesh_retry::RetryBudget::new(&mesh_retry::BudgetConfig::default());
    g.bench_function("budget_deposit", |b| b.iter(|| budget.deposit()));
    let uri = Uri::from_static("http://users.internal/users/42");
    g.bench_function("request_new", |b| b.iter(|| black_box(request(&uri))));
    let template = CloneReq(request(&uri));
    g.bench_function("request_clone", |b| b.iter(|| black_box(template.clone())));
    g.bench_function("uri_clone_drop", |b| {
        b.iter(|| drop(black_box(template.0.uri().clone())))
    });
    let arc = std::sync::Arc::new(0u64);
    g.bench_function("arc_clone_drop", |b| {
        b.iter(|| drop(black_box(arc.clone())))
    });
    let counter = std::sync::atomic::AtomicU64::new(0);
    g.bench_function("atomic_fetch_add", |b| {
        b.iter(|| black_box(&counter).fetch_add(1, std::sync::atomic::Ordering::AcqRel))
    });
    g.bench_function("atomic_load_store", |b| {
        b.iter(|| {
            let c = black_box(&counter);
            let v = c.load(std::sync::atomic::Ordering::Relaxed);
            c.store(v + 1, std::sync::atomic::Ordering::Relaxed);
        })
    });
    g.finish();
}
criterion_group!(parts_group, parts);
