//! Circuit breaker per-call overhead in the closed state (issue 3), against a
//! bare service and the peer breakers, in one run and one harness.
//!
//! The harness, identical for every contender: `poll_ready` then `call` on an
//! always-ready `tower::service_fn` whose future is `std::future::ready`,
//! polled once with a no-op waker. failsafe and recloser are not tower
//! services; thin adapters forward `poll_ready` and wrap the inner future with
//! the peer's own future wrapper (what a user would write).
//!
//! `contention/*` runs the same loop on one and on two OS threads, each with
//! its own clone of one shared breaker: two-thread throughput over
//! one-thread throughput (`2 * t(1 thread) / t(2 threads)`, each time being
//! the slowest thread's wall time per call) is the scaling figure (2.0 is
//! perfect). Read it next to `bare`'s own figure in the same run: on a busy
//! machine the second core is not free, and `bare` shows how much of it was.
//!
//! `contention_on_cpu/*` is the same loop timed differently, to tell the two
//! causes of poor scaling apart: each thread's wall time *minus the time it
//! sat runnable, waiting for a CPU another process had* (Linux's per-thread
//! `run_delay`, `/proc/thread-self/schedstat`). Sharing a breaker can only
//! cost a thread time while it runs (cache lines bouncing between cores,
//! spinning) or sleeps on a lock, and both still count; what no longer counts
//! is another program (a compiler on this shared 2-core machine) taking one of
//! the two cores. On an idle machine the two groups agree; when they
//! disagree, `contention` measured the machine and `contention_on_cpu` the
//! breaker. Linux only; the group is skipped where the file is missing.
//!
//! The time window reads the coarse monotonic clock
//! (`mesh_core::clock::Clock::coarse`, about 7 ns) where its buckets allow;
//! `reference_*` time one read of each clock for comparison.
//!
//! Run with
//! `cargo bench -p mesh-bench --bench breaker -- --warm-up-time 1 --measurement-time 3`.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::Response;
use mesh_breaker::{BreakerConfig, CircuitBreakerLayer, WindowConfig};
use tower::{Layer, Service};

type Bare = tower::util::ServiceFn<fn(()) -> Ready<Result<Response<()>, Infallible>>>;

fn bare() -> Bare {
    tower::service_fn(|()| ready(Ok(Response::new(()))))
}

/// One ready + call + poll, the unit every contender is measured on. A
/// contender that is momentarily `Pending` (tower-resilience's future waits
/// on an async mutex when another thread holds it) is polled again at once.
#[inline(always)]
fn drive<S: Service<(), Response = Response<()>>>(svc: &mut S, cx: &mut Context<'_>) {
    loop {
        match svc.poll_ready(cx) {
            Poll::Ready(Ok(())) => break,
            Poll::Ready(Err(_)) => panic!("breaker refused a call"),
            Poll::Pending => std::hint::spin_loop(),
        }
    }
    let mut future = pin!(svc.call(()));
    loop {
        match future.as_mut().poll(cx) {
            Poll::Ready(Ok(response)) => {
                black_box(response);
                return;
            }
            Poll::Ready(Err(_)) => panic!("call failed"),
            Poll::Pending => std::hint::spin_loop(),
        }
    }
}

// ===== peer adapters =====

/// failsafe's futures breaker as a tower service.
#[derive(Clone)]
struct Failsafe<S, B> {
    inner: S,
    breaker: B,
}

impl<S, B> Service<()> for Failsafe<S, B>
where
    S: Service<()>,
    B: failsafe::futures::CircuitBreaker,
{
    type Response = S::Response;
    type Error = failsafe::Error<S::Error>;
    type Future = failsafe::futures::ResponseFuture<
        S::Future,
        B::FailurePolicy,
        B::Instrument,
        failsafe::Any,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(failsafe::Error::Inner)
    }

    fn call(&mut self, req: ()) -> Self::Future {
        self.breaker.call(self.inner.call(req))
    }
}

/// recloser's async breaker as a tower service.
#[derive(Clone)]
struct Recloser<S> {
    inner: S,
    breaker: recloser::AsyncRecloser,
}

impl<S: Service<()>> Service<()> for Recloser<S> {
    type Response = S::Response;
    type Error = recloser::Error<S::Error>;
    type Future = recloser::RecloserFuture<S::Future, recloser::AnyError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(recloser::Error::Inner)
    }

    fn call(&mut self, req: ()) -> Self::Future {
        self.breaker.call(self.inner.call(req))
    }
}

// ===== contenders =====

fn mesh(config: BreakerConfig) -> impl Service<(), Response = Response<()>> + Clone + Send {
    CircuitBreakerLayer::new(config).unwrap().layer(bare())
}

fn mesh_consecutive() -> impl Service<(), Response = Response<()>> + Clone + Send {
    mesh(BreakerConfig::default())
}

fn mesh_count_window() -> impl Service<(), Response = Response<()>> + Clone + Send {
    mesh(BreakerConfig {
        consecutive_failures: None,
        window: Some(WindowConfig::count(100, 10, 0.5)),
        ..BreakerConfig::default()
    })
}

fn mesh_time_window() -> impl Service<(), Response = Response<()>> + Clone + Send {
    mesh(BreakerConfig {
        consecutive_failures: None,
        window: Some(WindowConfig::time(10, Duration::from_secs(1), 10, 0.5)),
        ..BreakerConfig::default()
    })
}

fn tower_resilience() -> impl Service<(), Response = Response<()>> + Clone + Send {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .unwrap()
        .layer(bare())
}

fn failsafe() -> impl Service<(), Response = Response<()>> + Clone + Send {
    Failsafe {
        inner: bare(),
        breaker: failsafe::Config::new().build(),
    }
}

fn recloser() -> impl Service<(), Response = Response<()>> + Clone + Send {
    Recloser {
        inner: bare(),
        breaker: recloser::AsyncRecloser::from(recloser::Recloser::default()),
    }
}

// ===== benches =====

fn closed(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker_closed");
    let mut cx = Context::from_waker(Waker::noop());
    fn run<S: Service<(), Response = Response<()>>>(
        g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        cx: &mut Context<'_>,
        name: &str,
        mut svc: S,
    ) {
        g.bench_function(name, |b| b.iter(|| drive(&mut svc, cx)));
    }
    run(&mut g, &mut cx, "bare", bare());
    run(&mut g, &mut cx, "mesh_consecutive", mesh_consecutive());
    run(&mut g, &mut cx, "mesh_count_window", mesh_count_window());
    run(&mut g, &mut cx, "mesh_time_window", mesh_time_window());
    run(&mut g, &mut cx, "tower_resilience", tower_resilience());
    run(&mut g, &mut cx, "failsafe", failsafe());
    run(&mut g, &mut cx, "recloser", recloser());
    // References: one precise clock read, which a time window used to pay
    // per call, and one read of the coarse clock it reads now.
    g.bench_function("reference_clock_read", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()));
    });
    let coarse = mesh_core::clock::Clock::coarse();
    g.bench_function("reference_coarse_clock_read", |b| {
        b.iter(|| black_box(black_box(&coarse).elapsed_nanos()));
    });
    g.finish();
}

/// How a contention run charges time to a thread.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clocking {
    /// Wall time.
    Wall,
    /// Wall time minus the time the thread waited in the run queue.
    OnCpu,
}

/// Nanoseconds this thread has spent runnable but waiting for a CPU (the
/// second field of `/proc/thread-self/schedstat`; exact when read by the
/// running thread itself, as it is updated each time the thread gets a CPU).
fn run_delay_nanos() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `iters` calls on each of `threads` threads (each with its own clone
/// of `svc`, all sharing one breaker) and returns the slowest thread's time.
fn on_threads<S>(svc: &S, threads: usize, iters: u64, clocking: Clocking) -> Duration
where
    S: Service<(), Response = Response<()>> + Clone + Send,
{
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let mut svc = svc.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut cx = Context::from_waker(Waker::noop());
                    barrier.wait();
                    let waited = (clocking == Clocking::OnCpu)
                        .then(run_delay_nanos)
                        .flatten();
                    let start = Instant::now();
                    for _ in 0..iters {
                        drive(&mut svc, &mut cx);
                    }
                    let wall = start.elapsed();
                    match (waited, run_delay_nanos()) {
                        (Some(before), Some(after)) if clocking == Clocking::OnCpu => {
                            wall.saturating_sub(Duration::from_nanos(after.saturating_sub(before)))
                        }
                        _ => wall,
                    }
                })
            })
            .collect();
        barrier.wait();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .max()
            .unwrap_or_default()
    })
}

fn contention(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker_contention");
    run_contention(&mut g, Clocking::Wall, true);
    g.finish();
    if run_delay_nanos().is_some() {
        let mut g = c.benchmark_group("breaker_contention_on_cpu");
        // The question is whether our breaker contends; the peers' figures
        // above already answer it for them.
        run_contention(&mut g, Clocking::OnCpu, false);
        g.finish();
    }
}

fn run_contention(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    clocking: Clocking,
    peers: bool,
) {
    fn run<S>(
        g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        svc: &S,
        clocking: Clocking,
    ) where
        S: Service<(), Response = Response<()>> + Clone + Send,
    {
        for threads in [1, 2] {
            g.bench_function(format!("{name}/{threads}_threads"), |b| {
                b.iter_custom(|iters| on_threads(svc, threads, iters, clocking));
            });
        }
    }
    run(g, "bare", &bare(), clocking);
    run(g, "mesh_consecutive", &mesh_consecutive(), clocking);
    run(g, "mesh_count_window", &mesh_count_window(), clocking);
    run(g, "mesh_time_window", &mesh_time_window(), clocking);
    if peers {
        run(g, "tower_resilience", &tower_resilience(), clocking);
        run(g, "failsafe", &failsafe(), clocking);
        run(g, "recloser", &recloser(), clocking);
    }
}

criterion_group!(benches, closed, contention);
criterion_main!(benches);
