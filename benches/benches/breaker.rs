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
//! On a busy machine that figure measures the machine more than the
//! breaker: another program taking a core slows the two-thread run and not
//! the one-thread run, and the two threads may even share one core for
//! milliseconds, running in turn. `BREAKER_CLEAN_SCALING=1 cargo bench -p
//! mesh-bench --bench breaker` runs, instead of criterion, 2,000 short
//! alternating one- and two-thread rounds per contender (about 0.2 ms of
//! calls each, after a start line the threads pass only once all of them are
//! running) and keeps only the *clean* ones: no thread waited for a CPU for
//! 1 % of the round (Linux's per-thread run-queue wait,
//! `/proc/thread-self/schedstat`), and the threads' runs overlapped for at
//! least 95 % of it. In a clean two-thread round both threads really ran at
//! once on two cores, so its wall time includes everything sharing the
//! breaker costs; the peers' contention shows there as it does on an idle
//! machine. It prints the medians of the clean rounds and their scaling
//! (about two minutes). One bias, in the peers' favour: a contender that
//! yields its core when contended may queue for it on a busy machine, and
//! such rounds are dropped; the mesh breaker's call path neither yields nor
//! sleeps.
//!
//! The time window reads `tokio::time::Instant` (through
//! `mesh_core::clock::Clock`); `reference_clock_read` times one read for
//! comparison.
//!
//! Run with
//! `cargo bench -p mesh-bench --bench breaker -- --warm-up-time 1 --measurement-time 3`.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
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
    // Reference: one clock read, which a time window pays per call.
    let clock = mesh_core::clock::Clock::new();
    g.bench_function("reference_clock_read", |b| {
        b.iter(|| black_box(black_box(&clock).elapsed_nanos()));
    });
    g.finish();
}

/// Runs `iters` calls on each of `threads` threads (each with its own clone
/// of `svc`, all sharing one breaker) and returns the wall time.
fn on_threads<S>(svc: &S, threads: usize, iters: u64) -> Duration
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
                    let start = Instant::now();
                    for _ in 0..iters {
                        drive(&mut svc, &mut cx);
                    }
                    start.elapsed()
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
    fn run<S>(
        g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        svc: &S,
    ) where
        S: Service<(), Response = Response<()>> + Clone + Send,
    {
        for threads in [1, 2] {
            g.bench_function(format!("{name}/{threads}_threads"), |b| {
                b.iter_custom(|iters| on_threads(svc, threads, iters));
            });
        }
    }
    run(&mut g, "bare", &bare());
    run(&mut g, "mesh_consecutive", &mesh_consecutive());
    run(&mut g, "mesh_count_window", &mesh_count_window());
    run(&mut g, "mesh_time_window", &mesh_time_window());
    run(&mut g, "tower_resilience", &tower_resilience());
    run(&mut g, "failsafe", &failsafe());
    run(&mut g, "recloser", &recloser());
    g.finish();
}

criterion_group!(benches, closed, contention);

fn main() {
    if std::env::var_os("BREAKER_CLEAN_SCALING").is_some() {
        clean_scaling();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

// ===== clean-round scaling =====

/// Nanoseconds this thread has spent runnable but waiting for a CPU (the
/// second field of `/proc/thread-self/schedstat`; up to date whenever the
/// thread itself reads it, as it is updated each time the thread gets a CPU).
fn run_delay_nanos() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().nth(1)?.parse().ok()
}

/// One round: `calls` calls on each of `threads` threads, each with its own
/// clone. Returns the slowest thread's wall time per call and whether the
/// round was clean: no thread waited for a CPU for 1 % of the round, and the
/// threads' runs overlapped for at least 95 % of it (a thread woken late, or
/// queued behind the other on one core, would otherwise run alone).
fn round<S>(svc: &S, threads: usize, calls: u64) -> (f64, bool)
where
    S: Service<(), Response = Response<()>> + Clone + Send,
{
    // A spinning start line: a thread that is not on a CPU cannot pass it,
    // so every run starts with all threads running.
    let arrived = AtomicUsize::new(0);
    let results: Vec<(Instant, Instant, u64)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let mut svc = svc.clone();
                let arrived = &arrived;
                scope.spawn(move || {
                    let mut cx = Context::from_waker(Waker::noop());
                    for _ in 0..1_000 {
                        drive(&mut svc, &mut cx);
                    }
                    let waited = run_delay_nanos().unwrap_or(0);
                    arrived.fetch_add(1, Ordering::AcqRel);
                    while arrived.load(Ordering::Acquire) < threads {
                        std::hint::spin_loop();
                    }
                    let start = Instant::now();
                    for _ in 0..calls {
                        drive(&mut svc, &mut cx);
                    }
                    let end = Instant::now();
                    let waited = run_delay_nanos().unwrap_or(0).saturating_sub(waited);
                    (start, end, waited)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let wall = results
        .iter()
        .map(|r| r.1 - r.0)
        .max()
        .unwrap_or_default()
        .as_nanos() as f64;
    let first_end = results.iter().map(|r| r.1).min();
    let last_start = results.iter().map(|r| r.0).max();
    let overlap = match (first_end, last_start) {
        (Some(end), Some(start)) => end.saturating_duration_since(start).as_nanos() as f64,
        _ => 0.0,
    };
    let clean = overlap >= wall * 0.95 && results.iter().all(|r| (r.2 as f64) < wall * 0.01);
    (wall / calls as f64, clean)
}

fn clean_scaling() {
    if run_delay_nanos().is_none() {
        eprintln!("/proc/thread-self/schedstat is not readable here: no clean-round figures");
        return;
    }
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
    fn contender<S>(name: &str, svc: &S)
    where
        S: Service<(), Response = Response<()>> + Clone + Send,
    {
        // Rounds of about 0.2 ms of calls: short enough that some fall
        // between other programs' time slices on a busy machine, long
        // enough to dwarf the start line and the clock reads.
        let (per_call, _) = round(svc, 1, 10_000);
        let calls = ((2e5 / per_call) as u64).clamp(500, 1_000_000);
        let rounds = 2_000;
        let (mut one, mut two) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            for (threads, clean_times) in [(1, &mut one), (2, &mut two)] {
                let (t, clean) = round(svc, threads, calls);
                if clean {
                    clean_times.push(t);
                }
            }
        }
        let (clean1, clean2) = (one.len(), two.len());
        let (t1, t2) = (median(one), median(two));
        println!(
            "| `{name}` | {t1:.1} ns | {t2:.1} ns | {:.2}x | {clean1}/{rounds} | {clean2}/{rounds} |",
            2.0 * t1 / t2
        );
    }
    println!("Clean rounds only; median wall time per call (slowest thread):\n");
    println!(
        "| variant | 1 thread | 2 threads | 2 threads / 1 thread | clean 1-thread rounds | clean 2-thread rounds |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    contender("bare", &bare());
    contender("mesh_consecutive", &mesh_consecutive());
    contender("mesh_count_window", &mesh_count_window());
    contender("mesh_time_window", &mesh_time_window());
    contender("tower_resilience", &tower_resilience());
    contender("failsafe", &failsafe());
    contender("recloser", &recloser());
}
