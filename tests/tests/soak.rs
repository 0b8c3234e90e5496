//! Soak: steady load through the default ready-made stack for a bounded time
//! (20 s; `MESH_SOAK_SECS=<seconds>` lengthens it), with backends that keep
//! failing and recovering, so breakers cycle and retries fire throughout.
//! Memory stays flat after warm-up and every task the stack and its
//! clients started ends once they are dropped.
//!
//! One test in its own binary: RSS is per process and the task count per
//! runtime, so nothing else may run beside it. `MESH_SOAK_TRACE=1` prints
//! RSS and the task count every second.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_stack::{Mesh, MeshConfig};
use mesh_testkit::{Backend, Behavior};
use tokio::runtime::Handle;
use tokio::time::Instant;

use support::{Users, hits, http_client};

/// Every call completes within this, or counts as hung.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// Default soak duration, in seconds.
const DEFAULT_SECS: u64 = 20;

/// Allowed RSS growth between the end of warm-up and the end of the run.
/// Everything the stack needs in steady state (connection pools, breaker and
/// balancer state, the backends' bounded request records, allocator arenas
/// of the worker threads) exists after warm-up, and the load keeps counters,
/// not per-call records; what is left is allocator noise (about 1 MiB over
/// a 40 s run on the development machine). The default run makes some
/// 10,000 calls after warm-up, so a leak of about 800 bytes per call (less
/// in a longer soak) exceeds this.
const RSS_GROWTH_LIMIT: u64 = 8 << 20;

/// Resident set size of this process, from `/proc/self/status` (Linux).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line");
    kb * 1024
}

fn soak_duration() -> Duration {
    let secs = std::env::var("MESH_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SECS);
    Duration::from_secs(secs.max(5))
}

/// What the soak's load saw. Kept as counters, not per call, so that the
/// test itself does not grow while it measures growth.
#[derive(Debug, Default)]
struct Totals {
    calls: AtomicU64,
    ok: AtomicU64,
    /// The longest call, in microseconds.
    max_latency_us: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

/// `concurrency` workers calling through `users` until stopped.
struct CountingLoad {
    stop: Arc<AtomicBool>,
    totals: Arc<Totals>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl CountingLoad {
    fn start(users: &Users, concurrency: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let totals = Arc::new(Totals::default());
        let workers = (0..concurrency as u64)
            .map(|w| {
                let (users, stop, totals) = (users.clone(), stop.clone(), totals.clone());
                tokio::spawn(async move {
                    let mut id = w << 40;
                    while !stop.load(Ordering::Relaxed) {
                        id += 1;
                        let started = Instant::now();
                        let req = support::request(http::Method::GET, id);
                        let result =
                            tokio::time::timeout(CALL_LIMIT, support::call(&users, req)).await;
                        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                        totals.max_latency_us.fetch_max(us, Ordering::Relaxed);
                        totals.calls.fetch_add(1, Ordering::Relaxed);
                        match result {
                            Ok(Ok(status)) if status.is_success() => {
                                totals.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                let mut first = totals.first_failure.lock().unwrap();
                                first.get_or_insert_with(|| format!("{other:?}"));
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            totals,
            workers,
        }
    }

    async fn stop(self) -> Arc<Totals> {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.expect("a load worker panicked");
        }
        self.totals
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_memory_stays_flat_and_no_task_leaks() {
    let duration = soak_duration();
    let warm_up = duration / 5;

    // Backends keep only their last 100 requests, so their records are full
    // (and stop growing) early in warm-up.
    let mut bs = Vec::new();
    for i in 0..5 {
        bs.push(
            Backend::builder()
                .name(format!("s{i}"))
                .behavior(Behavior::slow(Duration::from_millis(2)))
                .record_limit(100)
                .start()
                .await
                .unwrap(),
        );
    }
    bs[2].set_behavior(Behavior::slow(Duration::from_millis(20)));
    let tasks_before = Handle::current().metrics().num_alive_tasks();

    let mut service = support::static_service(&bs);
    // Shortened so breakers keep cycling (open, half-open, closed) while the
    // faulty backends flip every second, instead of staying open for the
    // default 60 s after the first fault.
    service.breaker.recovery_timeout = Duration::from_millis(500);
    service.breaker.max_open_time = Duration::from_secs(1);
    let mesh = Mesh::new(MeshConfig::new().service("users", service)).unwrap();
    let users = mesh.http_client("users", http_client()).unwrap();

    let start = Instant::now();
    let load = CountingLoad::start(&users, 8);
    let mut rss_after_warm_up = None;
    let mut tasks_after_warm_up = 0;
    let mut flip = false;
    while start.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        // s0 flips between 503 and healthy, s1 between dropping connections
        // and healthy.
        flip = !flip;
        let healthy = Behavior::slow(Duration::from_millis(2));
        bs[0].set_behavior(if flip {
            Behavior::status(503)
        } else {
            healthy.clone()
        });
        bs[1].set_behavior(if flip { Behavior::Drop } else { healthy });
        if std::env::var_os("MESH_SOAK_TRACE").is_some() {
            eprintln!(
                "t={:?} rss={} KiB tasks={}",
                start.elapsed(),
                rss_bytes() / 1024,
                Handle::current().metrics().num_alive_tasks()
            );
        }
        if rss_after_warm_up.is_none() && start.elapsed() >= warm_up {
            rss_after_warm_up = Some(rss_bytes());
            tasks_after_warm_up = Handle::current().metrics().num_alive_tasks();
        }
    }
    let rss_end = rss_bytes();
    let tasks_end = Handle::current().metrics().num_alive_tasks();
    let totals = load.stop().await;
    let rss_after_warm_up = rss_after_warm_up.expect("warm-up ended");

    let (total, ok) = (
        totals.calls.load(Ordering::Relaxed),
        totals.ok.load(Ordering::Relaxed),
    );
    let max_latency = Duration::from_micros(totals.max_latency_us.load(Ordering::Relaxed));
    let served: u64 = hits(&bs).iter().sum();
    eprintln!(
        "soak {duration:?}: {total} calls, {ok} ok, longest {max_latency:?}, {served} requests at servers {:?}; RSS after warm-up {} KiB, at the end {} KiB; tasks before {tasks_before}, after warm-up {tasks_after_warm_up}, at the end {tasks_end}",
        hits(&bs),
        rss_after_warm_up / 1024,
        rss_end / 1024,
    );
    assert!(total > 1_000, "the load ran: {total} calls");
    // Faults flip every second; retries and breakers absorb them.
    assert!(
        ok as f64 >= 0.99 * total as f64,
        "{} of {total} failed, the first with {:?}",
        total - ok,
        totals.first_failure.lock().unwrap()
    );
    assert!(served >= ok, "every success was served by a backend");
    assert!(max_latency < CALL_LIMIT, "a call hung");

    let growth = rss_end.saturating_sub(rss_after_warm_up);
    assert!(
        growth <= RSS_GROWTH_LIMIT,
        "RSS grew by {} KiB after warm-up (limit {} KiB)",
        growth / 1024,
        RSS_GROWTH_LIMIT / 1024
    );

    // Drop every client and the mesh: every task they started (connection
    // drivers, pool reapers, ...) ends, and the count returns to what it was
    // with only the backends running.
    drop(users);
    drop(mesh);
    let back = support::eventually(Duration::from_secs(10), || {
        Handle::current().metrics().num_alive_tasks() <= tasks_before
    })
    .await;
    let tasks_after = Handle::current().metrics().num_alive_tasks();
    assert!(
        back,
        "tasks leaked: {tasks_before} before, {tasks_after} after dropping the clients"
    );
}
