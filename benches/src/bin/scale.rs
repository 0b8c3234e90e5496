//! Many services on one agent (issue 23): memory per endpoint and per
//! service, connections to Consul, and how long a health change takes to
//! reach an idle client, as a user scaling up would see them (one process,
//! `Mesh` with one `hyper_client` per service).
//!
//! ```text
//! cargo build --release -p mesh-bench --bin scale
//! target/release/scale static 1000 100   # RSS per static endpoint
//! target/release/scale consul 1000 100   # connections, RSS per service, change latency
//! target/release/scale consul 1000 100 128 250   # consul.max_connections, shared_wait in ms
//! ```
//!
//! RSS comes from `/proc/self/statm` (Linux), measured around building the
//! config, the `Mesh` and the stacks. The Consul case runs the fake agent in
//! a child process (this binary with `fake`), so its memory is not counted,
//! and makes health changes through the agent API
//! (`PUT /v1/agent/service/maintenance/:id`), as an operator would.
//!
//! It also reports what each candidate "what changed" query costs at that
//! size (bytes of one answer, the fake agent's round trip, and the time to
//! parse it into JSON values, with one instance in maintenance), and the CPU time this process spends
//! per change (`/proc/self/stat`, less the idle rate measured just before).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use mesh_discovery::consul::{ConsulClient, ConsulConfig};
use mesh_stack::core::Endpoint;
use mesh_stack::{ConsulSourceConfig, Mesh, MeshConfig, MeshService, ServiceConfig};
use mesh_testkit::FakeConsul;
use mesh_testkit::consul::Instance;

type Client = MeshService<mesh_stack::inner::HyperClient<Empty<Bytes>>>;

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "static".into());
    let services: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let endpoints: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100);
    let max_connections: Option<u32> = args.next().and_then(|s| s.parse().ok());
    let shared_wait: Option<u64> = args.next().and_then(|s| s.parse().ok());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    match mode.as_str() {
        "static" => rt.block_on(static_case(services, endpoints)),
        "consul" => rt.block_on(consul_case(
            services,
            endpoints,
            max_connections,
            shared_wait,
        )),
        "fake" => rt.block_on(fake(services, endpoints)),
        other => eprintln!("unknown mode {other:?}: static, consul"),
    }
}

/// CPU time (user + system) of this process so far.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th of them, in clock ticks (100 per second).
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Bytes and parse time of one answer of each candidate change feed.
async fn feed_candidates(operator: &ConsulClient, services: usize) {
    let candidates: [(&str, Option<&str>); 4] = [
        ("any", None),
        ("any", Some(r#"Status != "passing""#)),
        ("critical", None),
        ("warning", None),
    ];
    for (state, filter) in candidates {
        let asked = Instant::now();
        let a = operator
            .health_state(state, filter, 0, None)
            .await
            .expect("a health state answer");
        let round_trip = asked.elapsed();
        let t = Instant::now();
        let v: Vec<serde_json::Value> = serde_json::from_slice(&a.body).expect("a check list");
        let parse = t.elapsed();
        println!(
            "feed candidate /v1/health/state/{state}{}: {} checks, {} bytes, answered in {round_trip:.2?}, parsed in {parse:.2?}",
            filter.map_or(String::new(), |f| format!("?filter={f}")),
            v.len(),
            a.body.len(),
        );
    }
    // The fake does not serve /v1/catalog/services; its answer's size is
    // `{"name":[tags],...}`.
    let catalog: usize = 2 + (0..services).map(|s| name(s).len() + 6).sum::<usize>() - 1;
    println!(
        "feed candidate /v1/catalog/services: {catalog} bytes (computed: one name and its tags per service, no health)"
    );
}

/// Resident set size in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn name(s: usize) -> String {
    format!("svc-{s}")
}

fn address(s: usize, e: usize) -> std::net::SocketAddr {
    let [_, _, a, b] = u32::try_from(s).unwrap_or(0).to_be_bytes();
    let port = 10_000 + u16::try_from(e).unwrap_or(0);
    std::net::SocketAddr::from(([10, a, b, 1], port))
}

/// Builds `services` × `endpoints` static stacks; returns the RSS they
/// added and the time it took.
fn build_static(services: usize, endpoints: usize) -> (u64, Duration, Vec<Client>) {
    let before = rss();
    let started = Instant::now();
    let mut config = MeshConfig::new();
    for s in 0..services {
        config = config.service(
            name(s),
            ServiceConfig::with_static(
                (0..endpoints).map(|e| Endpoint::from_address(address(s, e).into())),
            ),
        );
    }
    let mesh = Mesh::new(config).expect("a valid config");
    let clients: Vec<Client> = (0..services)
        .map(|s| mesh.hyper_client(&name(s)).expect("a stack"))
        .collect();
    let took = started.elapsed();
    (rss().saturating_sub(before), took, clients)
}

async fn static_case(services: usize, endpoints: usize) {
    // One endpoint per service first: what a service costs on its own.
    let (one, _, small) = build_static(services, 1);
    let (all, took, clients) = build_static(services, endpoints);
    let per_service = one as f64 / services as f64;
    let per_endpoint = all.saturating_sub(one) as f64 / (services * (endpoints - 1).max(1)) as f64;
    println!(
        "static {services} x {endpoints}: {:.1} MiB RSS, built in {took:.2?}; \
         {per_endpoint:.0} B per endpoint, {per_service:.0} B per service (with 1 endpoint)",
        all as f64 / 1048576.0,
    );
    drop((small, clients));
}

/// The fake agent, in its own process: prints its URL, serves until stdin
/// closes, then prints what it counted.
async fn fake(services: usize, endpoints: usize) {
    let fake = FakeConsul::start().await.expect("a fake agent");
    fake.add_instances((0..services).flat_map(|s| {
        (0..endpoints).map(move |e| {
            let a = address(s, e);
            Instance::new(
                &name(s),
                &format!("{}-{e}", name(s)),
                &a.ip().to_string(),
                a.port(),
            )
        })
    }));
    println!("{}", fake.url());
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            line.clear();
        }
    })
    .await;
    println!(
        "connections: at most {} open at once, {} opened; {} blocked queries woken by a change",
        fake.max_open_connections(),
        fake.connections_opened(),
        fake.health_wakeups()
    );
}

async fn consul_case(
    services: usize,
    endpoints: usize,
    max_connections: Option<u32>,
    shared_wait_ms: Option<u64>,
) {
    let exe = std::env::current_exe().expect("this binary");
    let mut child = Command::new(exe)
        .args(["fake", &services.to_string(), &endpoints.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the fake agent starts");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut url = String::new();
    out.read_line(&mut url).expect("the fake's URL");
    let url = url.trim().to_owned();

    let mut consul = ConsulConfig::new(url.clone());
    if let Some(m) = max_connections {
        consul.max_connections = m;
    }
    if let Some(w) = shared_wait_ms {
        consul.shared_wait = Duration::from_millis(w);
    }
    let max = consul.max_connections;
    let shared_wait = consul.shared_wait;
    let before = rss();
    let started = Instant::now();
    let mut config = MeshConfig {
        consul: Some(consul.clone()),
        ..MeshConfig::new()
    };
    for s in 0..services {
        config = config.service(
            name(s),
            ServiceConfig::with_consul(ConsulSourceConfig::default()),
        );
    }
    let mesh_client = ConsulClient::new(&consul).expect("a client");
    let mesh = Mesh::builder(config)
        .consul_client(mesh_client.clone())
        .build()
        .expect("a valid config");
    let clients: Vec<Client> = (0..services)
        .map(|s| mesh.hyper_client(&name(s)).expect("a stack"))
        .collect();
    for c in &clients {
        while c.get_ref().endpoints().len() != endpoints {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let took = started.elapsed();
    let grown = rss().saturating_sub(before);
    println!(
        "consul {services} x {endpoints}: every idle client has its endpoints after {took:.2?}; \
         {:.1} MiB RSS, {:.0} B per service ({:.0} B per endpoint); budget {max} connections, shared_wait {shared_wait:?}",
        grown as f64 / 1048576.0,
        grown as f64 / services as f64,
        grown as f64 / (services * endpoints) as f64,
    );

    // Health changes made through the agent API; measured until the idle
    // client of the service routes without (then with) the instance.
    let operator = ConsulClient::new(&consul).expect("a client");
    let id = format!("{}-0", name(services / 2));
    operator
        .service_maintenance(&id, Some("bench"))
        .await
        .expect("maintenance");
    feed_candidates(&operator, services).await;
    operator
        .service_maintenance(&id, None)
        .await
        .expect("maintenance");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The idle cost: the watches' turns running out, the feed held.
    let (idle_cpu, idle_t) = (cpu(), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_rate = (cpu() - idle_cpu).as_secs_f64() / idle_t.elapsed().as_secs_f64();
    let (busy_cpu, busy_t) = (cpu(), Instant::now());
    let mut latencies = Vec::new();
    let mut rng = 0x2545_f491_u64;
    for _ in 0..12 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let s = usize::try_from(rng % services as u64).unwrap_or(0);
        // Instance 0 goes into maintenance; it comes back (unmeasured)
        // before the next change, which lands at a random moment of the
        // watches' rotation. (A second change to the same service right
        // after one was seen would wait a whole rotation.)
        let id = format!("{}-0", name(s));
        let t = Instant::now();
        operator
            .service_maintenance(&id, Some("bench"))
            .await
            .expect("maintenance");
        while clients[s].get_ref().endpoints().len() != endpoints - 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(t.elapsed());
        operator
            .service_maintenance(&id, None)
            .await
            .expect("maintenance");
        // Seen back before the next change (a change each way).
        while clients[s].get_ref().endpoints().len() != endpoints {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let busy = (cpu() - busy_cpu).as_secs_f64();
    let per_change =
        (busy - idle_rate * busy_t.elapsed().as_secs_f64()).max(0.0) / (2 * latencies.len()) as f64;
    latencies.sort();
    println!(
        "change latency over {} changes: median {:.1?}, max {:.1?} (without the change feed: one rotation ≈ {services} watches / {} blocking connections × {shared_wait:?})",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
        operator.blocking_connections() - 2,
    );
    println!(
        "CPU: {:.1} ms per change ({} changes, each way), idle {:.1}% of a core; change feed running: {}, {} answers, {} watches kicked",
        per_change * 1000.0,
        2 * latencies.len(),
        idle_rate * 100.0,
        mesh_client.change_feed_running(),
        mesh_client.change_feed_answers(),
        mesh_client.watches_kicked(),
    );

    drop(child.stdin.take());
    let mut line = String::new();
    while out.read_line(&mut line).is_ok_and(|n| n > 0) {
        print!("fake agent: {line}");
        line.clear();
    }
    let _ = std::io::stdout().flush();
    let _ = child.wait();
    drop(clients);
}
