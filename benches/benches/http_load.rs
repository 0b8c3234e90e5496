//! HTTP load on 127.0.0.1: what the full default mesh stack costs a real
//! client, end to end, against the bare hyper-util client (issue 10).
//!
//! The criterion benches measure each layer in nanoseconds against an
//! in-memory service; this one asks the question a user asks: with real
//! sockets, a real HTTP/1 server and 32 requests in flight, how much
//! throughput and tail latency does the mesh take away? Targets: at least
//! 95 % of the bare client's throughput, at most 50 us added to p99.
//!
//! - Server: hyper's HTTP/1 server answering `200 OK` (2-byte body) on
//!   `--servers` loopback ports, on its own OS thread and tokio runtime
//!   (`--server-threads` workers). It counts what it received, so every
//!   round checks that the server saw each call the client counted (and the
//!   mesh's retries, if any, show as the difference).
//! - Client: a closed loop of `--concurrency` tasks on a second runtime
//!   (`--client-threads` workers), each sending a GET and reading the whole
//!   response, then the next, until the round's time is up. Latency goes into
//!   one HDR histogram per task (merged per round, 3 significant digits).
//! - Variants: `bare`, hyper-util's legacy `Client` (round robin over the
//!   servers' URLs, which costs nothing measurable) and `mesh`, the same
//!   client under `Mesh::http_client` with every default: retry, discovery
//!   router (p2c peak-EWMA over a static source naming the servers),
//!   per-endpoint breaker and attempt timeout. Each variant has its own
//!   connection pool, warmed up before the first round.
//! - Rounds alternate (bare, mesh, then mesh, bare, ...), so drifting machine
//!   load hits both alike; medians of the rounds are reported.
//! - Each round also reports the CPU time the whole process (client and
//!   server threads) spent per call, from `/proc/self/task/*/schedstat`. On a
//!   machine that other work shares, req/s follows everyone's load; the CPU
//!   a call costs moves much less, and bare/mesh of it is the throughput
//!   ratio a CPU-bound machine would see.
//!
//! Client and server share the machine's cores: on a 2-core machine each gets
//! about one, and the figures are a comparison, not a capacity figure.
//!
//! Run (about 35 s with the defaults):
//! `cargo bench -p mesh-bench --bench http_load`
//!
//! Flags (after `--`) or environment variables:
//! `--duration 3s` (`HTTP_LOAD_DURATION`, per round and variant),
//! `--rounds 5` (`HTTP_LOAD_ROUNDS`), `--warmup 1s` (`HTTP_LOAD_WARMUP`),
//! `--concurrency 32` (`HTTP_LOAD_CONCURRENCY`), `--servers 2`
//! (`HTTP_LOAD_SERVERS`), `--client-threads 1`, `--server-threads 1`
//! (`HTTP_LOAD_CLIENT_THREADS`, `HTTP_LOAD_SERVER_THREADS`),
//! `--variants bare,mesh` (`HTTP_LOAD_VARIANTS`; one variant alone is for
//! profiling it, e.g. under `perf stat`), and
//! `--json PATH` (`HTTP_LOAD_JSON`) to write the results as JSON (what
//! `bench-report` reads to write `BENCHMARKS.md`). Criterion's flags, which
//! `cargo bench -p mesh-bench -- ...` passes to every bench, are ignored; a
//! name filter that does not match `http_load` skips this bench.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::{BoxError, Endpoint};
use mesh_stack::{Mesh, MeshConfig, ServiceConfig};
use tower::{Service, ServiceExt};

type Body = Empty<Bytes>;
type HttpClient = Client<HttpConnector, Body>;

/// The service name the mesh routes (`http://load/`).
const SERVICE: &str = "load";
/// Latencies above this are clamped into the histogram's last bucket.
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// How long a round waits for its in-flight calls after its time is up.
const DRAIN: Duration = Duration::from_secs(10);

// ===== settings =====

#[derive(Debug, Clone)]
struct Settings {
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    concurrency: usize,
    servers: usize,
    client_threads: usize,
    server_threads: usize,
    json: Option<String>,
    /// The variants to run (both by default; one alone is for profiling).
    variants: Vec<Variant>,
    /// A bench-name filter given to every bench by `cargo bench -- NAME`.
    filter: Option<String>,
}

/// The flags this bench reads; every other flag is ignored with a warning.
const OWN_FLAGS: [&str; 9] = [
    "duration",
    "warmup",
    "rounds",
    "concurrency",
    "servers",
    "client-threads",
    "server-threads",
    "json",
    "variants",
];

/// Criterion's flags that take no value (the others' values are skipped too).
const CRITERION_SWITCHES: [&str; 9] = [
    "bench",
    "noplot",
    "quick",
    "verbose",
    "quiet",
    "list",
    "exact",
    "discard-baseline",
    "test",
];

impl Settings {
    fn from_env_and_args() -> Result<Self, String> {
        let env = |name: &str| std::env::var(name).ok();
        let mut s = Settings {
            duration: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            rounds: 5,
            concurrency: 32,
            servers: 2,
            client_threads: 1,
            server_threads: 1,
            json: env("HTTP_LOAD_JSON"),
            variants: vec![Variant::Bare, Variant::Mesh],
            filter: None,
        };
        let mut pairs: Vec<(String, String)> = [
            ("duration", "HTTP_LOAD_DURATION"),
            ("warmup", "HTTP_LOAD_WARMUP"),
            ("rounds", "HTTP_LOAD_ROUNDS"),
            ("concurrency", "HTTP_LOAD_CONCURRENCY"),
            ("servers", "HTTP_LOAD_SERVERS"),
            ("client-threads", "HTTP_LOAD_CLIENT_THREADS"),
            ("server-threads", "HTTP_LOAD_SERVER_THREADS"),
            ("variants", "HTTP_LOAD_VARIANTS"),
        ]
        .into_iter()
        .filter_map(|(flag, var)| env(var).map(|v| (flag.to_owned(), v)))
        .collect();
        let mut args = std::env::args().skip(1).peekable();
        while let Some(arg) = args.next() {
            // `cargo bench -- breaker` passes a name filter to every bench.
            let Some(flag) = arg.strip_prefix("--") else {
                s.filter = Some(arg);
                continue;
            };
            let (flag, value) = match flag.split_once('=') {
                Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
                None => (flag.to_owned(), None),
            };
            if !OWN_FLAGS.contains(&flag.as_str()) {
                // `cargo bench` passes `--bench`, and `cargo bench -- --warm-up-time 1`
                // criterion's flags, to every bench: skip them (and their value).
                let takes_value = !CRITERION_SWITCHES.contains(&flag.as_str());
                if value.is_none()
                    && takes_value
                    && args.peek().is_some_and(|a| !a.starts_with('-'))
                {
                    args.next();
                }
                if flag != "bench" {
                    eprintln!("http_load: ignoring --{flag} (not an http_load flag)");
                }
                continue;
            }
            let value = match value {
                Some(v) => v,
                None => args
                    .next()
                    .ok_or_else(|| format!("--{flag} needs a value"))?,
            };
            pairs.push((flag, value));
        }
        for (flag, value) in pairs {
            let bad = |e: String| format!("--{flag} {value}: {e}");
            match flag.as_str() {
                "duration" => s.duration = parse_duration(&value).map_err(bad)?,
                "warmup" => s.warmup = parse_duration(&value).map_err(bad)?,
                "rounds" => s.rounds = parse_count(&value, 1, 1_000).map_err(bad)?,
                "concurrency" => s.concurrency = parse_count(&value, 1, 10_000).map_err(bad)?,
                "servers" => s.servers = parse_count(&value, 1, 64).map_err(bad)?,
                "client-threads" => s.client_threads = parse_count(&value, 1, 256).map_err(bad)?,
                "server-threads" => s.server_threads = parse_count(&value, 1, 256).map_err(bad)?,
                "json" => s.json = Some(value),
                "variants" => s.variants = parse_variants(&value).map_err(bad)?,
                other => return Err(format!("unknown flag --{other}")),
            }
        }
        if s.duration.is_zero() {
            return Err("--duration must be above zero".into());
        }
        if s.json.is_some() && s.variants.len() < 2 {
            return Err("--json needs both variants".into());
        }
        Ok(s)
    }
}

/// `3`, `2.5s`, `500ms` or `1m`.
fn parse_duration(v: &str) -> Result<Duration, String> {
    let (number, unit) = match v.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| "not a duration".to_owned())?;
    let secs = match unit {
        "ms" => n / 1_000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?} (ms, s, m)")),
    };
    if !(0.0..=3_600.0).contains(&secs) {
        return Err("must be between 0 and 1h".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `bare,mesh` (the default), `bare` or `mesh`.
fn parse_variants(v: &str) -> Result<Vec<Variant>, String> {
    let mut out = Vec::new();
    for name in v.split(',').map(str::trim) {
        let variant = match name {
            "bare" => Variant::Bare,
            "mesh" => Variant::Mesh,
            _ => return Err(format!("unknown variant {name:?} (bare, mesh)")),
        };
        if !out.contains(&variant) {
            out.push(variant);
        }
    }
    if out.is_empty() {
        return Err("names no variant".into());
    }
    Ok(out)
}

fn parse_count(v: &str, min: usize, max: usize) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number in {min}..={max}")),
    }
}

// ===== server =====

/// The loopback servers, on their own thread and runtime. Stops when dropped.
struct Servers {
    addrs: Vec<SocketAddr>,
    hits: Arc<AtomicU64>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start(count: usize, threads: usize) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("load-server")
            .enable_all()
            .build()?;
        let listeners = rt.block_on(async {
            let mut out = Vec::with_capacity(count);
            for _ in 0..count {
                out.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
            }
            std::io::Result::Ok(out)
        })?;
        let addrs = listeners
            .iter()
            .map(tokio::net::TcpListener::local_addr)
            .collect::<std::io::Result<Vec<_>>>()?;
        let hits = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let thread = {
            let hits = hits.clone();
            std::thread::Builder::new()
                .name("load-server-main".into())
                .spawn(move || {
                    rt.block_on(async move {
                        for listener in listeners {
                            tokio::spawn(accept_loop(listener, hits.clone(), stopped.clone()));
                        }
                        let mut stopped = stopped;
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                    // Dropping the runtime cancels the connection tasks.
                    rt.shutdown_timeout(Duration::from_secs(1));
                })?
        };
        Ok(Servers {
            addrs,
            hits,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send_replace(true);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    hits: Arc<AtomicU64>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stopped.wait_for(|s| *s) => return,
        };
        let _ = stream.set_nodelay(true);
        let hits = hits.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                hits.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
                    Bytes::from_static(b"ok"),
                ))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

// ===== client =====

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Bare,
    Mesh,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Bare => "bare",
            Variant::Mesh => "mesh",
        }
    }
}

fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// What one worker saw.
struct WorkerResult {
    histogram: Histogram<u64>,
    ok: u64,
    errors: u64,
    finished: Instant,
}

/// Sends GETs to `uris[i % len]` one after the other until `end`.
async fn worker<S, B>(mut svc: S, uris: Arc<[Uri]>, start_at: usize, end: Instant) -> WorkerResult
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Error: Into<BoxError>>,
{
    let mut histogram = Histogram::<u64>::new_with_max(MAX_LATENCY_NS, 3).expect("valid bounds");
    let (mut ok, mut errors) = (0, 0);
    let mut i = start_at;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let mut req = Request::new(Body::new());
        *req.uri_mut() = uris[i % uris.len()].clone();
        i = i.wrapping_add(1);
        let result = async {
            let resp = svc
                .ready()
                .await
                .map_err(Into::into)?
                .call(req)
                .await
                .map_err(Into::into)?;
            let status = resp.status();
            resp.into_body().collect().await.map_err(Into::into)?;
            Ok::<_, BoxError>(status)
        }
        .await;
        let elapsed = now.elapsed().as_nanos().min(u128::from(MAX_LATENCY_NS)) as u64;
        match result {
            Ok(status) if status.is_success() => {
                ok += 1;
                histogram.saturating_record(elapsed);
            }
            _ => errors += 1,
        }
    }
    WorkerResult {
        histogram,
        ok,
        errors,
        finished: Instant::now(),
    }
}

/// The two clients under test, each with its own connection pool.
struct Contenders {
    bare: HttpClient,
    bare_uris: Arc<[Uri]>,
    mesh: mesh_stack::MeshService<HttpClient>,
    mesh_uris: Arc<[Uri]>,
    _mesh: Mesh,
}

impl Contenders {
    fn new(addrs: &[SocketAddr]) -> Result<Self, BoxError> {
        let bare_uris: Vec<Uri> = addrs
            .iter()
            .map(|a| format!("http://{a}/").parse())
            .collect::<Result<_, _>>()?;
        let endpoints = addrs.iter().map(|a| Endpoint::from_address((*a).into()));
        let mesh =
            Mesh::new(MeshConfig::new().service(SERVICE, ServiceConfig::with_static(endpoints)))?;
        let svc = mesh.http_client(SERVICE, http_client())?;
        Ok(Contenders {
            bare: http_client(),
            bare_uris: bare_uris.into(),
            mesh: svc,
            mesh_uris: vec![format!("http://{SERVICE}/").parse()?].into(),
            _mesh: mesh,
        })
    }
}

/// One round of one variant.
#[derive(Debug, Clone)]
struct Round {
    variant: Variant,
    round: usize,
    ok: u64,
    errors: u64,
    server_hits: u64,
    secs: f64,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    /// CPU time of the whole process (client and server) per call.
    cpu_us_per_call: f64,
}

async fn run_round(
    contenders: &Contenders,
    servers: &Servers,
    variant: Variant,
    round: usize,
    duration: Duration,
    concurrency: usize,
) -> Result<Round, BoxError> {
    let hits_before = servers.hits();
    let cpu_before = cpu_ns();
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..concurrency {
        match variant {
            Variant::Bare => {
                tasks.spawn(worker(
                    contenders.bare.clone(),
                    contenders.bare_uris.clone(),
                    i,
                    end,
                ));
            }
            Variant::Mesh => {
                tasks.spawn(worker(
                    contenders.mesh.clone(),
                    contenders.mesh_uris.clone(),
                    i,
                    end,
                ));
            }
        }
    }
    let mut histogram = Histogram::<u64>::new_with_max(MAX_LATENCY_NS, 3)?;
    let (mut ok, mut errors) = (0, 0);
    let mut finished = start;
    let drained = tokio::time::timeout(duration + DRAIN, async {
        while let Some(result) = tasks.join_next().await {
            let w = result?;
            histogram.add(&w.histogram)?;
            ok += w.ok;
            errors += w.errors;
            finished = finished.max(w.finished);
        }
        Ok::<_, BoxError>(())
    })
    .await;
    match drained {
        Ok(r) => r?,
        Err(_) => {
            tasks.abort_all();
            return Err(format!(
                "{} round {round}: calls still in flight {DRAIN:?} after the end",
                variant.name()
            )
            .into());
        }
    }
    let secs = (finished - start).as_secs_f64();
    let cpu_us_per_call = match (cpu_before, cpu_ns()) {
        (Some(before), Some(after)) if ok + errors > 0 => {
            after.saturating_sub(before) as f64 / 1_000.0 / (ok + errors) as f64
        }
        _ => f64::NAN,
    };
    let us = |ns: u64| ns as f64 / 1_000.0;
    Ok(Round {
        variant,
        round,
        ok,
        errors,
        server_hits: servers.hits() - hits_before,
        secs,
        rps: ok as f64 / secs,
        p50_us: us(histogram.value_at_quantile(0.5)),
        p99_us: us(histogram.value_at_quantile(0.99)),
        p999_us: us(histogram.value_at_quantile(0.999)),
        max_us: us(histogram.max()),
        cpu_us_per_call,
    })
}

/// The CPU time this process's threads have run so far, in nanoseconds
/// (Linux: the sum of `/proc/self/task/*/schedstat`; `None` elsewhere).
///
/// Throughput on a shared machine moves with everyone else's load; the CPU
/// each call costs does much less, so it is the steadier comparison.
fn cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let mut path = task.ok()?.path();
        path.push("schedstat");
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

// ===== report =====

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[derive(Debug, Clone, Copy)]
struct Summary {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    cpu_us_per_call: f64,
    ok: u64,
    errors: u64,
    retries: u64,
}

fn summarize(rounds: &[Round], variant: Variant) -> Summary {
    let mine: Vec<&Round> = rounds.iter().filter(|r| r.variant == variant).collect();
    let pick = |f: fn(&Round) -> f64| median(mine.iter().map(|r| f(r)).collect());
    Summary {
        rps: pick(|r| r.rps),
        p50_us: pick(|r| r.p50_us),
        p99_us: pick(|r| r.p99_us),
        p999_us: pick(|r| r.p999_us),
        cpu_us_per_call: pick(|r| r.cpu_us_per_call),
        ok: mine.iter().map(|r| r.ok).sum(),
        errors: mine.iter().map(|r| r.errors).sum(),
        retries: mine
            .iter()
            .map(|r| r.server_hits.saturating_sub(r.ok + r.errors))
            .sum(),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let settings = match Settings::from_env_and_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("http_load: {e}");
            std::process::exit(2);
        }
    };
    if let Some(filter) = &settings.filter
        && !"http_load".contains(filter.as_str())
    {
        println!("http_load: skipped (filter {filter:?})");
        return;
    }
    if let Err(e) = run(&settings) {
        eprintln!("http_load: {e}");
        std::process::exit(1);
    }
}

fn run(s: &Settings) -> Result<(), BoxError> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let load_start = loadavg();
    println!(
        "http_load: {} x {:?} rounds per variant (+{:?} warm-up), {} in flight, {} server(s) on 127.0.0.1",
        s.rounds, s.duration, s.warmup, s.concurrency, s.servers
    );
    println!(
        "  {cores} cores shared by client ({} runtime thread(s)) and server ({} thread(s)); load average {load_start}",
        s.client_threads, s.server_threads
    );
    if cores <= 2 {
        println!(
            "  note: client and server compete for the same {cores} core(s): compare the two variants, not the absolute figures"
        );
    }

    let servers = Servers::start(s.servers, s.server_threads)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(s.client_threads)
        .thread_name("load-client")
        .enable_all()
        .build()?;
    let rounds = rt.block_on(async {
        let contenders = Contenders::new(&servers.addrs)?;
        if !s.warmup.is_zero() {
            for &variant in &s.variants {
                let w =
                    run_round(&contenders, &servers, variant, 0, s.warmup, s.concurrency).await?;
                if w.ok == 0 {
                    return Err(format!(
                        "warm-up of {}: no call succeeded ({} errors)",
                        variant.name(),
                        w.errors
                    )
                    .into());
                }
            }
        }
        println!();
        println!(
            "  {:<7} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11} {:>8} {:>8}",
            "variant",
            "round",
            "calls",
            "req/s",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "cpu us/call",
            "errors",
            "retries"
        );
        let mut rounds = Vec::with_capacity(2 * s.rounds);
        for round in 1..=s.rounds {
            let mut order = s.variants.clone();
            if round % 2 == 0 {
                order.reverse();
            }
            for variant in order {
                let r = run_round(
                    &contenders,
                    &servers,
                    variant,
                    round,
                    s.duration,
                    s.concurrency,
                )
                .await?;
                println!(
                    "  {:<7} {:>5} {:>10} {:>10.0} {:>10.1} {:>10.1} {:>10.1} {:>11.2} {:>8} {:>8}",
                    variant.name(),
                    round,
                    r.ok,
                    r.rps,
                    r.p50_us,
                    r.p99_us,
                    r.p999_us,
                    r.cpu_us_per_call,
                    r.errors,
                    r.server_hits.saturating_sub(r.ok + r.errors)
                );
                rounds.push(r);
            }
        }
        Ok::<_, BoxError>(rounds)
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    drop(servers);
    let load_end = loadavg();

    let bare = summarize(&rounds, Variant::Bare);
    let mesh = summarize(&rounds, Variant::Mesh);
    let ratio = mesh.rps / bare.rps;
    let p99_delta = mesh.p99_us - bare.p99_us;
    let throughput_met = ratio >= 0.95;
    let p99_met = p99_delta <= 50.0;
    let yes_no = |b: bool| if b { "met" } else { "MISSED" };
    println!();
    println!("  medians of {} rounds:", s.rounds);
    println!(
        "  {:<7} {:>10} {:>10} {:>10} {:>10} {:>11}",
        "variant", "req/s", "p50 us", "p99 us", "p99.9 us", "cpu us/call"
    );
    for (variant, v) in [(Variant::Bare, bare), (Variant::Mesh, mesh)] {
        if s.variants.contains(&variant) {
            println!(
                "  {:<7} {:>10.0} {:>10.1} {:>10.1} {:>10.1} {:>11.2}",
                variant.name(),
                v.rps,
                v.p50_us,
                v.p99_us,
                v.p999_us,
                v.cpu_us_per_call
            );
        }
    }
    if s.variants.len() < 2 {
        // One variant alone (for a profiler): nothing to compare.
        return Ok(());
    }
    println!(
        "  mesh throughput {:.1} % of bare (target >= 95 %: {}); p99 {:+.1} us (target <= +50 us: {})",
        ratio * 100.0,
        yes_no(throughput_met),
        p99_delta,
        yes_no(p99_met)
    );
    // What the throughput ratio would be if the CPU were the only limit:
    // steadier than req/s when other work shares the machine.
    let cpu_ratio = bare.cpu_us_per_call / mesh.cpu_us_per_call;
    println!(
        "  CPU per call (client + server): bare {:.2} us, mesh {:.2} us (+{:.2} us); bare/mesh {:.1} %",
        bare.cpu_us_per_call,
        mesh.cpu_us_per_call,
        mesh.cpu_us_per_call - bare.cpu_us_per_call,
        cpu_ratio * 100.0
    );
    println!(
        "  errors: bare {}, mesh {}; mesh retries seen by the server: {}; load average at end {load_end}",
        bare.errors, mesh.errors, mesh.retries
    );

    if let Some(path) = &s.json {
        let round_json = |r: &Round| {
            serde_json::json!({
                "variant": r.variant.name(), "round": r.round, "ok": r.ok, "errors": r.errors,
                "server_hits": r.server_hits, "secs": r.secs, "rps": r.rps,
                "p50_us": r.p50_us, "p99_us": r.p99_us, "p999_us": r.p999_us, "max_us": r.max_us,
                "cpu_us_per_call": r.cpu_us_per_call,
            })
        };
        let summary_json = |v: Summary| {
            serde_json::json!({
                "rps": v.rps, "p50_us": v.p50_us, "p99_us": v.p99_us, "p999_us": v.p999_us,
                "cpu_us_per_call": v.cpu_us_per_call, "ok": v.ok, "errors": v.errors, "retries": v.retries,
            })
        };
        let doc = serde_json::json!({
            "settings": {
                "duration_secs": s.duration.as_secs_f64(), "warmup_secs": s.warmup.as_secs_f64(),
                "rounds": s.rounds, "concurrency": s.concurrency, "servers": s.servers,
                "client_threads": s.client_threads, "server_threads": s.server_threads,
                "cores": cores,
            },
            "load_average": { "start": load_start, "end": load_end },
            "rounds": rounds.iter().map(round_json).collect::<Vec<_>>(),
            "bare": summary_json(bare),
            "mesh": summary_json(mesh),
            "throughput_ratio": ratio,
            "p99_delta_us": p99_delta,
            "cpu_ratio": cpu_ratio,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        println!("  results written to {path}");
    }
    Ok(())
}
