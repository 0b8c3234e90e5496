//! The demo's engine: faulty backends, a discovery source, a mesh client, the
//! same load without the mesh, and the numbers.
//!
//! `cargo run --release -p examples --example demo` drives it with a live
//! table; `tests/tests/demo.rs` runs it headless and checks the summary.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use mesh_stack::core::BoxError;
use mesh_stack::discovery::consul::{
    CheckDefinition, ConsulClient, ConsulConfig, Registration, ServiceRegistration,
};
use mesh_stack::inner::{self, HyperClient};
use mesh_stack::{Mesh, MeshConfig};
use mesh_testkit::backend::{Backend, Behavior};
use mesh_testkit::consul::FakeConsul;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// The demo's mesh config, embedded: what a `mesh.toml` would hold.
pub const DEMO_CONFIG: &str = r#"
# The logical service `users`, found in Consul as `mesh-demo-users`.
[services.users]
discovery = { kind = "consul", service = "mesh-demo-users", wait = "5s" }
attempt_timeout = "250ms"   # one attempt on one endpoint
ready_timeout = "300ms"     # waiting for a live endpoint

[services.users.retry]
max_retries = 2
deadline = "1s"             # the whole call, retries included
backoff = { base = "5ms", cap = "50ms" }

[services.users.breaker]
consecutive_failures = 3
recovery_timeout = "1s"     # then one probe
max_open_time = "4s"
half_open_max_calls = 1
"#;

/// The demo's security sections, appended to [`DEMO_CONFIG`] (`{dir}` is
/// where the demo writes the certificates it makes at start): the demo
/// calls `accounts` over mTLS, proving `spiffe://demo.mesh/demo`, expecting
/// `spiffe://demo.mesh/accounts`, and sending an API key.
pub const DEMO_SECURITY_CONFIG: &str = r#"
[tls]
ca = { file = "{dir}/ca.pem" }
cert = { file = "{dir}/demo.crt" }
key = { file = "{dir}/demo.key" }

[tls.server_identities]
accounts = "spiffe://demo.mesh/accounts"

[services.accounts]
discovery = { kind = "static", endpoints = [{ address = "{accounts}" }] }
api_key = { key = { file = "{dir}/accounts.apikey" } }
"#;

/// The `accounts` service's own file: its certificate, and who may call it.
const ACCOUNTS_CONFIG: &str = r#"
[tls]
ca = { file = "{dir}/ca.pem" }
cert = { file = "{dir}/accounts.crt" }
key = { file = "{dir}/accounts.key" }

[server.authorization]
rules = [ { identity = "spiffe://demo.mesh/demo", methods = ["GET"], paths = ["/balance"] },
          { identity = "apikey:demo", methods = ["GET"], paths = ["/balance"] } ]

[server.api_keys]
keys = [ { identity = "demo", sha256 = "{key_sha256}" } ]
"#;

/// The time limit the caller puts on each call, with and without the mesh.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Which faults the backends inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// One backend answers every request with 503.
    pub failing: bool,
    /// One backend answers after 1.5 s, past the call timeout.
    pub slow: bool,
    /// One backend closes connections without answering, half of the time.
    pub flapping: bool,
}

impl Faults {
    /// Every fault.
    pub const ALL: Faults = Faults {
        failing: true,
        slow: true,
        flapping: true,
    };

    /// Parses `failing,slow,flapping`, `all` or `none`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut f = Faults {
            failing: false,
            slow: false,
            flapping: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => f = Faults::ALL,
                "none" => {}
                "failing" => f.failing = true,
                "slow" => f.slow = true,
                "flapping" => f.flapping = true,
                other => {
                    return Err(format!(
                        "unknown fault {other:?} (use failing, slow, flapping, all or none)"
                    ));
                }
            }
        }
        Ok(f)
    }
}

/// How the demo shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// A table redrawn in place (ANSI), for terminals.
    Live,
    /// One line per second, for logs and pipes.
    Lines,
    /// Nothing (tests).
    Quiet,
}

impl Display {
    /// `Live` on a terminal, `Lines` otherwise.
    pub fn auto() -> Self {
        if std::io::stdout().is_terminal() {
            Display::Live
        } else {
            Display::Lines
        }
    }
}

/// The demo's settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long each of the two runs (mesh, then no mesh) sends.
    pub duration: Duration,
    /// Requests per second.
    pub rate: u32,
    /// The injected faults.
    pub faults: Faults,
    /// How many healthy backends.
    pub healthy: usize,
    /// How progress is shown.
    pub display: Display,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(5),
            rate: 200,
            faults: Faults::ALL,
            healthy: 3,
            display: Display::Quiet,
        }
    }
}

/// What one run saw from the caller's side.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Calls made.
    pub sent: u64,
    /// Calls answered 2xx within the call timeout.
    pub succeeded: u64,
    /// Median latency of all calls.
    pub p50: Duration,
    /// 99th percentile latency of all calls.
    pub p99: Duration,
}

impl RunSummary {
    /// Succeeded / sent, 0 when nothing was sent.
    pub fn success_rate(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.succeeded as f64 / self.sent as f64
        }
    }
}

/// Both runs.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Through the mesh stack.
    pub mesh: RunSummary,
    /// Round robin over the same backends with a plain hyper client.
    pub no_mesh: RunSummary,
    /// Attempts each backend received in the mesh run, by backend name.
    pub mesh_attempts: BTreeMap<String, u64>,
    /// Retries the mesh sent (attempts after the first).
    pub mesh_retries: u64,
    /// What `accounts` answered the mesh's mTLS call (the identity it saw).
    pub secure_call: String,
}

impl DemoReport {
    /// The closing comparison, as printed by the demo.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nSummary ({} calls each, same backends, same faults)",
            self.mesh.sent
        );
        let _ = writeln!(
            s,
            "  {:<10} {:>9} {:>10} {:>10}",
            "", "success", "p50", "p99"
        );
        for (name, r) in [("mesh", &self.mesh), ("no mesh", &self.no_mesh)] {
            let _ = writeln!(
                s,
                "  {:<10} {:>8.2}% {:>10} {:>10}",
                name,
                r.success_rate() * 100.0,
                fmt_ms(r.p50),
                fmt_ms(r.p99)
            );
        }
        let _ = writeln!(
            s,
            "  mesh retries: {} ({:.1}% of calls)",
            self.mesh_retries,
            100.0 * self.mesh_retries as f64 / self.mesh.sent.max(1) as f64
        );
        let _ = writeln!(s, "  accounts over mTLS: {}", self.secure_call);
        s
    }
}

// ===== per-endpoint accounting =====

/// What one backend received from one run, counted at the client.
#[derive(Debug, Default)]
struct EndpointCounts {
    attempts: AtomicU64,
    successes: AtomicU64,
    retries: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

/// Counts by backend port.
type Recorder = Arc<BTreeMap<u16, (String, EndpointCounts)>>;

/// The inner client, counting each attempt by the port it goes to.
#[derive(Clone)]
struct Counting {
    client: HyperClient<Empty<Bytes>>,
    recorder: Recorder,
}

impl Service<http::Request<Empty<Bytes>>> for Counting {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.client.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<Empty<Bytes>>) -> Self::Future {
        let port = req.uri().port_u16().unwrap_or(80);
        let retry = req.headers().contains_key("x-mesh-attempt");
        let recorder = Arc::clone(&self.recorder);
        if let Some((_, c)) = recorder.get(&port) {
            c.attempts.fetch_add(1, Ordering::Relaxed);
            if retry {
                c.retries.fetch_add(1, Ordering::Relaxed);
            }
        }
        let future = self.client.call(req);
        // The demo's own bookkeeping boxes; the mesh stack above does not.
        Box::pin(async move {
            // Records the latency even when the attempt is cut short (the
            // timeout drops this future).
            let timer = AttemptTimer {
                recorder,
                port,
                start: Instant::now(),
            };
            let result = future.await;
            if matches!(&result, Ok(r) if r.status().is_success())
                && let Some((_, c)) = timer.recorder.get(&port)
            {
                c.successes.fetch_add(1, Ordering::Relaxed);
            }
            result.map_err(Into::into)
        })
    }
}

/// Records one attempt's latency when dropped.
struct AttemptTimer {
    recorder: Recorder,
    port: u16,
    start: Instant,
}

impl Drop for AttemptTimer {
    fn drop(&mut self) {
        if let Some((_, c)) = self.recorder.get(&self.port) {
            let us = u32::try_from(self.start.elapsed().as_micros()).unwrap_or(u32::MAX);
            c.latencies_us
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(us);
        }
    }
}

// ===== the demo =====

struct Backends {
    all: Vec<Backend>,
    flapping: Option<usize>,
}

/// A backend that keeps only its last few requests (the demo counts, and
/// does not need them all).
fn backend(name: impl Into<String>) -> mesh_testkit::backend::BackendBuilder {
    Backend::builder().name(name).record_limit(16)
}

async fn start_backends(opts: &DemoOptions) -> std::io::Result<Backends> {
    let mut all = Vec::new();
    for i in 1..=opts.healthy {
        all.push(backend(format!("healthy-{i}")).start().await?);
    }
    let mut b = Backends {
        all,
        flapping: None,
    };
    if opts.faults.failing {
        b.all.push(
            backend("failing-503")
                .behavior(Behavior::status(503))
                .start()
                .await?,
        );
    }
    if opts.faults.slow {
        b.all.push(
            backend("slow-1.5s")
                .behavior(Behavior::slow(Duration::from_millis(1500)))
                .start()
                .await?,
        );
    }
    if opts.faults.flapping {
        b.flapping = Some(b.all.len());
        b.all.push(backend("flapping").start().await?);
    }
    Ok(b)
}

/// The flapping backend: 700 ms up, 700 ms down (connections dropped),
/// starting up at the start of each run so both runs see the same pattern.
fn flap(backend: &Backend, run_start: Instant) {
    let up = (run_start.elapsed().as_millis() / 700).is_multiple_of(2);
    backend.set_behavior(if up {
        Behavior::Healthy
    } else {
        Behavior::Drop
    });
}

/// Runs the demo: the mesh run, then the no-mesh run, and returns both
/// summaries. Uses `CONSUL_HTTP_ADDR`'s agent when set, else an in-process
/// fake Consul.
pub async fn run(opts: DemoOptions) -> Result<DemoReport, BoxError> {
    let backends = start_backends(&opts).await?;
    let ports: Vec<u16> = backends.all.iter().map(|b| b.addr().port()).collect();

    // Discovery: each backend registers itself, as a real service would.
    let _fake;
    let consul = if std::env::var_os("CONSUL_HTTP_ADDR").is_some() {
        ConsulClient::from_env()?
    } else {
        let fake = FakeConsul::start().await?;
        let client = ConsulClient::new(&ConsulConfig::new(fake.url()))?;
        _fake = fake;
        client
    };
    let run_id = std::process::id();
    let mut registrations = Vec::new();
    for b in &backends.all {
        let id = format!("mesh-demo-{run_id}-{}", b.name());
        registrations.push(
            Registration::register(
                consul.clone(),
                ServiceRegistration::new("mesh-demo-users", b.addr().port())
                    .id(&id)
                    .address(b.addr().ip().to_string())
                    .check(
                        CheckDefinition::ttl(format!("{id}-ttl"), Duration::from_secs(30))
                            .deregister_after(Duration::from_secs(60)),
                    ),
            )
            .await?,
        );
    }

    // The security sections: certificates made now, `accounts` served over
    // mTLS behind its server layer.
    let pki = DemoPki::new()?;
    let accounts = start_accounts(&pki).await?;
    let security = DEMO_SECURITY_CONFIG
        .replace("{dir}", &pki.dir_str())
        .replace("{accounts}", &accounts.to_string());
    let config = MeshConfig::from_toml_str(&format!("{DEMO_CONFIG}{security}"))?;
    // The recorder first: the stacks register their metrics when built.
    let _ = prometheus();
    let mesh = Mesh::builder(config).consul_client(consul).build()?;
    let operator = serve_operator_view(&mesh).await?;
    if opts.display != Display::Quiet {
        println!("operator view: http://{operator}/metrics  http://{operator}/admin\n");
    }
    let secure_call = call_accounts(&mesh).await?;
    let discovery = mesh.discovery("users")?;
    let wait_start = Instant::now();
    while discovery.current().len() < ports.len() {
        if wait_start.elapsed() > Duration::from_secs(10) {
            return Err("the backends did not appear in Consul within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The same client (TCP_NODELAY, bounded idle pool) for both runs, so the
    // comparison is the mesh's alone.
    let hyper_client: HyperClient<Empty<Bytes>> = inner::http_client();

    // Run 1: through the mesh.
    let recorder = new_recorder(&backends);
    let users = mesh.http_client(
        "users",
        Counting {
            client: hyper_client.clone(),
            recorder: Arc::clone(&recorder),
        },
    )?;
    let view = MeshView { mesh: mesh.clone() };
    let mesh_summary = drive(
        &opts,
        &backends,
        &recorder,
        Some(&view),
        "mesh",
        move |_| {
            let mut svc = users.clone();
            async move {
                let req = http::Request::get("http://users/work").body(Empty::new())?;
                let resp = svc.ready().await?.call(req).await?;
                Ok(resp.status().is_success())
            }
        },
    )
    .await;
    let mesh_attempts = recorder
        .values()
        .map(|(n, c)| (n.clone(), c.attempts.load(Ordering::Relaxed)))
        .collect();
    let mesh_retries = recorder
        .values()
        .map(|(_, c)| c.retries.load(Ordering::Relaxed))
        .sum();

    // Run 2: the same load, round robin with a plain client.
    let recorder = new_recorder(&backends);
    let plain = Counting {
        client: hyper_client,
        recorder: Arc::clone(&recorder),
    };
    let next = Arc::new(AtomicUsize::new(0));
    let ports = Arc::new(ports);
    let no_mesh_summary = drive(&opts, &backends, &recorder, None, "no mesh", move |_| {
        let mut svc = plain.clone();
        let i = next.fetch_add(1, Ordering::Relaxed);
        let port = ports[i % ports.len()];
        async move {
            let req =
                http::Request::get(format!("http://127.0.0.1:{port}/work")).body(Empty::new())?;
            let resp = svc.ready().await?.call(req).await?;
            Ok(resp.status().is_success())
        }
    })
    .await;

    for r in registrations {
        let _ = r.deregister().await;
    }
    for b in &backends.all {
        b.shutdown();
    }
    Ok(DemoReport {
        mesh: mesh_summary,
        no_mesh: no_mesh_summary,
        mesh_attempts,
        mesh_retries,
        secure_call,
    })
}

// ===== security: mTLS, an API key and the server layer =====

/// The demo's API key for `accounts` (written to a file, as in production).
const ACCOUNTS_KEY: &str = "sk-demo-accounts-7c1e93b2d4a5";

/// A throwaway CA and the certificates of `demo` and `accounts`, in a
/// temporary directory removed on drop.
struct DemoPki {
    dir: std::path::PathBuf,
}

impl DemoPki {
    fn new() -> Result<Self, BoxError> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mesh-demo-pki-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let pki = Self { dir };
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        std::fs::write(pki.dir.join("ca.pem"), ca.pem())?;
        for name in ["demo", "accounts"] {
            let mut params = CertificateParams::default();
            let id = format!("spiffe://demo.mesh/{name}");
            params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &ca)?;
            std::fs::write(pki.dir.join(format!("{name}.crt")), cert.pem())?;
            std::fs::write(pki.dir.join(format!("{name}.key")), key.serialize_pem())?;
        }
        std::fs::write(pki.dir.join("accounts.apikey"), ACCOUNTS_KEY)?;
        Ok(pki)
    }

    fn dir_str(&self) -> String {
        self.dir.display().to_string()
    }
}

impl Drop for DemoPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Serves `accounts` on 127.0.0.1 over mTLS, behind the server layer of its
/// own config file; answers `/balance` with the caller's identity.
async fn start_accounts(pki: &DemoPki) -> Result<std::net::SocketAddr, BoxError> {
    use axum::Extension;
    use mesh_stack::auth::CallerIdentity;

    let hash = mesh_stack::auth::apikey::ApiKeySet::hash_hex(&ACCOUNTS_KEY.into());
    let file = ACCOUNTS_CONFIG
        .replace("{dir}", &pki.dir_str())
        .replace("{key_sha256}", &hash);
    let accounts = Mesh::new(MeshConfig::from_toml_str(&file)?)?;
    let tls = accounts.server_tls()?.ok_or("accounts has no [tls]")?;
    let app = axum::Router::new()
        .route(
            "/balance",
            axum::routing::get(|Extension(who): Extension<CallerIdentity>| async move {
                format!("balance 42 for {who}")
            }),
        )
        .layer(accounts.server_layer()?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = mesh_stack::auth::tls::MtlsAcceptor::new(&tls);
    tokio::spawn(mesh_stack::auth::tls::serve(listener, acceptor, app));
    Ok(addr)
}

/// One call to `accounts` through the ready-made client: mTLS and the API
/// key come from the config, nothing else is asked of the caller.
async fn call_accounts(mesh: &Mesh) -> Result<String, BoxError> {
    use http_body_util::BodyExt;

    let accounts = mesh.hyper_client::<Empty<Bytes>>("accounts")?;
    let req = http::Request::get("http://accounts/balance").body(Empty::new())?;
    let res = accounts.oneshot(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    Ok(format!("{status} {}", String::from_utf8_lossy(&body)))
}

fn new_recorder(backends: &Backends) -> Recorder {
    Arc::new(
        backends
            .all
            .iter()
            .map(|b| {
                (
                    b.addr().port(),
                    (b.name().to_owned(), EndpointCounts::default()),
                )
            })
            .collect(),
    )
}

/// Reads endpoint states from the mesh's admin snapshot: what `/admin`
/// serves.
struct MeshView {
    mesh: Mesh,
}

impl MeshView {
    /// Endpoint state by backend port.
    fn states(&self) -> BTreeMap<u16, &'static str> {
        let snapshot = self.mesh.admin();
        let Some(users) = snapshot.service("users") else {
            return BTreeMap::new();
        };
        users
            .endpoints
            .iter()
            .filter_map(|e| {
                let port = e.address.rsplit_once(':')?.1.parse().ok()?;
                Some((port, state_name(e.state)))
            })
            .collect()
    }
}

fn state_name(state: &str) -> &'static str {
    match state {
        "available" => "closed",
        "probing" => "half-open",
        "ejected" => "OPEN",
        _ => "?",
    }
}

/// The process's Prometheus recorder, installed at the first run (the
/// `metrics` facade has one global recorder; a second run in the same
/// process, as in the demo's tests, reuses it). `None` if another recorder
/// was installed first.
fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                // Series of endpoints gone for a minute leave the page.
                .idle_timeout(MetricKindMask::ALL, Some(Duration::from_secs(60)))
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// Serves `/metrics` (Prometheus text format) and `/admin` (the mesh's
/// admin snapshot, JSON) on 127.0.0.1 while the demo runs; returns the
/// address.
async fn serve_operator_view(mesh: &Mesh) -> Result<std::net::SocketAddr, BoxError> {
    let mut app = mesh_stack::admin::router(mesh.clone());
    if let Some(handle) = prometheus() {
        app = app.route(
            "/metrics",
            axum::routing::get(move || {
                handle.run_upkeep();
                let text = handle.render();
                async move { text }
            }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// Sends `opts.rate` calls per second for `opts.duration`, each under
/// [`CALL_TIMEOUT`], showing progress, and summarises them.
async fn drive<F, Fut>(
    opts: &DemoOptions,
    backends: &Backends,
    recorder: &Recorder,
    view: Option<&MeshView>,
    label: &str,
    mut call: F,
) -> RunSummary
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<bool, BoxError>> + Send + 'static,
{
    let start = Instant::now();
    let flapping = backends.flapping.map(|i| &backends.all[i]);
    if let Some(b) = flapping {
        flap(b, start);
    }
    let period = Duration::from_secs(1) / opts.rate.max(1);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let latencies = Arc::new(Mutex::new(Vec::<u32>::new()));
    let succeeded = Arc::new(AtomicU64::new(0));
    let mut sent = 0u64;
    let refresh = match opts.display {
        Display::Live => Duration::from_millis(250),
        _ => Duration::from_secs(1),
    };
    let mut next_draw = start + refresh;
    let mut drawn_lines = 0usize;
    // Draws the progress so far and returns how many calls succeeded.
    let redraw = |sent: u64, drawn_lines: &mut usize| {
        let ok = succeeded.load(Ordering::Relaxed);
        draw(
            opts.display,
            label,
            start.elapsed(),
            sent,
            ok,
            recorder,
            view,
            drawn_lines,
        );
        ok
    };
    while start.elapsed() < opts.duration {
        ticker.tick().await;
        if let Some(b) = flapping {
            flap(b, start);
        }
        let fut = call(sent);
        sent += 1;
        let (latencies, succeeded_) = (Arc::clone(&latencies), Arc::clone(&succeeded));
        tasks.spawn(async move {
            let t = Instant::now();
            let ok = matches!(tokio::time::timeout(CALL_TIMEOUT, fut).await, Ok(Ok(true)));
            let us = u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX);
            latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(us);
            if ok {
                succeeded_.fetch_add(1, Ordering::Relaxed);
            }
        });
        while tasks.try_join_next().is_some() {}
        if Instant::now() >= next_draw {
            next_draw += refresh;
            redraw(sent, &mut drawn_lines);
        }
    }
    while tasks.join_next().await.is_some() {}
    let ok = redraw(sent, &mut drawn_lines);
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap_or_else(PoisonError::into_inner));
    lat.sort_unstable();
    RunSummary {
        sent,
        succeeded: ok,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
    }
}

fn percentile(sorted_us: &[u32], q: f64) -> Duration {
    if sorted_us.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    Duration::from_micros(u64::from(sorted_us[i.min(sorted_us.len() - 1)]))
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

#[allow(clippy::too_many_arguments)]
fn draw(
    display: Display,
    label: &str,
    elapsed: Duration,
    sent: u64,
    ok: u64,
    recorder: &Recorder,
    view: Option<&MeshView>,
    drawn_lines: &mut usize,
) {
    let rate = if sent == 0 {
        0.0
    } else {
        100.0 * ok as f64 / sent as f64
    };
    match display {
        Display::Quiet => {}
        Display::Lines => {
            println!(
                "[{label}] t={:>4.1}s calls={sent} ok={rate:.2}%",
                elapsed.as_secs_f64()
            );
        }
        Display::Live => {
            let states = view.map(MeshView::states).unwrap_or_default();
            let mut out = String::new();
            let _ = writeln!(
                out,
                "\x1b[1m{label}\x1b[0m  t={:>4.1}s  calls={sent}  answered ok={rate:.2}%\x1b[K",
                elapsed.as_secs_f64()
            );
            let _ = writeln!(
                out,
                "  {:<12} {:>9} {:>9} {:>8} {:>10} {:>9} {:>9}\x1b[K",
                "endpoint", "attempts", "success", "retries", "breaker", "p50", "p99"
            );
            let mut rows: Vec<_> = recorder.iter().collect();
            rows.sort_by(|a, b| a.1.0.cmp(&b.1.0));
            for (port, (name, c)) in rows {
                let mut lat = c
                    .latencies_us
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                lat.sort_unstable();
                let attempts = c.attempts.load(Ordering::Relaxed);
                let successes = c.successes.load(Ordering::Relaxed);
                let state = states.get(port).copied().unwrap_or("-");
                let color = match state {
                    "OPEN" => "\x1b[31m",
                    "half-open" => "\x1b[33m",
                    "closed" => "\x1b[32m",
                    _ => "",
                };
                let _ = writeln!(
                    out,
                    "  {:<12} {:>9} {:>9} {:>8} {color}{:>10}\x1b[0m {:>9} {:>9}\x1b[K",
                    name,
                    attempts,
                    successes,
                    c.retries.load(Ordering::Relaxed),
                    state,
                    fmt_ms(percentile(&lat, 0.5)),
                    fmt_ms(percentile(&lat, 0.99)),
                );
            }
            let lines = out.lines().count();
            let mut stdout = std::io::stdout().lock();
            if *drawn_lines > 0 {
                let _ = write!(stdout, "\x1b[{}A", *drawn_lines);
            }
            let _ = write!(stdout, "{out}");
            let _ = stdout.flush();
            *drawn_lines = lines;
        }
    }
}
