//! The fake Consul's HTTP side.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::time::Instant;

use super::filter::Filter;
use super::json::parse_registration;
use super::state::{AGENT_NODE, CheckKind, DATACENTER, HealthRead, parse_go_duration};
use super::{Fault, Health, Leader, Shared};

pub(crate) type Resp = Response<Full<Bytes>>;

/// Closing the connection without an answer.
#[derive(Debug)]
pub(crate) struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fake consul dropped the connection on purpose")
    }
}

impl std::error::Error for DropConnection {}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "fake consul: accept failed");
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        serve(stream, shared.clone());
    }
}

#[cfg(unix)]
pub(crate) async fn accept_unix_loop(listener: tokio::net::UnixListener, shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "fake consul: accept failed");
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        serve(stream, shared.clone());
    }
}

fn serve<S>(stream: S, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let mut stop = shared.shutdown.subscribe();
    let gauge = shared.connection();
    tokio::spawn(async move {
        let _gauge = gauge;
        let svc_shared = shared.clone();
        let svc = service_fn(move |req| handle(svc_shared.clone(), req));
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        tokio::select! {
            _ = conn => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    });
}

pub(crate) fn reply(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

struct Gauge<'a>(&'a AtomicU64);

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Applies the faults that replace an answer. `Ok(None)`: answer normally.
pub(crate) async fn connection_fault(shared: &Shared) -> Result<Option<Resp>, DropConnection> {
    let fault = *shared.fault_tx.borrow();
    match fault {
        Fault::Hang => {
            let mut rx = shared.fault_tx.subscribe();
            let _ = rx.wait_for(|f| *f != Fault::Hang).await;
            Err(DropConnection)
        }
        Fault::DropConnection => Err(DropConnection),
        Fault::NoLeader => Ok(Some(reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No cluster leader",
        ))),
        _ => Ok(None),
    }
}

/// Who a request is, for the fake's ACLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// ACLs off, or the right token.
    Allowed,
    /// No token: the anonymous token, which may do nothing.
    Anonymous,
    /// A token the servers do not know.
    Unknown,
}

async fn handle(shared: Arc<Shared>, req: http::Request<Incoming>) -> Result<Resp, DropConnection> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if req.uri().path().starts_with("/v1/health/") {
        shared.health_requests.fetch_add(1, Ordering::SeqCst);
        let mut q = shared
            .health_queries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if q.len() == 100 {
            q.pop_front();
        }
        q.push_back(percent_decode(req.uri().query().unwrap_or("")));
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    if let Some(resp) = connection_fault(&shared).await? {
        return Ok(resp);
    }
    let token = parts
        .headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            parts
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned)
        })
        .filter(|t| !t.is_empty());
    let caller = {
        let required = shared
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (required.as_ref(), token) {
            (None, _) => Caller::Allowed,
            (Some(_), None) => Caller::Anonymous,
            (Some(r), Some(t)) if *r == t => Caller::Allowed,
            (Some(_), Some(_)) => Caller::Unknown,
        }
    };
    if caller == Caller::Unknown {
        return Ok(reply(StatusCode::FORBIDDEN, "ACL not found"));
    }
    let path = parts.uri.path().to_owned();
    let query = parse_query(parts.uri.query().unwrap_or(""));
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let method = parts.method;
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());

    match (&method, &segs[..]) {
        (&Method::GET, ["v1", "health", "service", name]) => {
            return health(&shared, name, &query, caller == Caller::Allowed, false).await;
        }
        (&Method::GET, ["v1", "health", "connect", name]) => {
            return health(&shared, name, &query, caller == Caller::Allowed, true).await;
        }
        (&Method::GET, ["v1", "health", "state", state]) => {
            return health_state(&shared, state, &query, caller == Caller::Allowed).await;
        }
        (_, ["v1", "agent", "connect", ..] | ["v1", "connect", ..]) => {
            if caller != Caller::Allowed {
                return Ok(denied("service:write"));
            }
            return super::connect_http::handle(&shared, &method, &segs, &query, &body).await;
        }
        (&Method::GET, ["v1", "agent", "health", "service", "id", id]) => {
            return Ok(if caller == Caller::Allowed {
                agent_health(&shared, id)
            } else {
                denied("service:read")
            });
        }
        (&Method::GET, _) => return Ok(reply(StatusCode::NOT_FOUND, "404 page not found")),
        (&Method::PUT, _) => {}
        _ => return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
    }
    if caller == Caller::Anonymous {
        return Ok(denied("service:write"));
    }
    Ok(match segs[..] {
        ["v1", "agent", "service", "register"] => register(&shared, &body),
        ["v1", "agent", "service", "deregister", id] => {
            let mut found = false;
            shared.write(|s| found = s.remove(AGENT_NODE, id));
            if found {
                reply(StatusCode::OK, "")
            } else {
                unknown_service(id)
            }
        }
        ["v1", "agent", "service", "maintenance", id] => {
            let Some(enable) = get("enable") else {
                return Ok(reply(StatusCode::BAD_REQUEST, "Missing value for enable"));
            };
            let Ok(enable) = enable.parse::<bool>() else {
                return Ok(reply(StatusCode::BAD_REQUEST, "Invalid value for enable"));
            };
            let reason = get("reason").unwrap_or_default();
            let mut found = false;
            shared.write(|s| found = s.service_maintenance(id, enable.then_some(reason.as_str())));
            if found {
                reply(StatusCode::OK, "")
            } else {
                unknown_service(id)
            }
        }
        ["v1", "agent", "maintenance"] => {
            let Some(Ok(enable)) = get("enable").map(|e| e.parse::<bool>()) else {
                return Ok(reply(StatusCode::BAD_REQUEST, "Missing value for enable"));
            };
            let reason = get("reason").unwrap_or_default();
            shared.write(|s| s.node_maintenance(enable.then_some(reason.as_str())));
            reply(StatusCode::OK, "")
        }
        [
            "v1",
            "agent",
            "check",
            verb @ ("pass" | "warn" | "fail"),
            id,
        ] => {
            let status = match verb {
                "pass" => Health::Passing,
                "warn" => Health::Warning,
                _ => Health::Critical,
            };
            update_check(&shared, id, status, get("note").unwrap_or_default())
        }
        ["v1", "agent", "check", "update", id] => {
            let v: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return Ok(reply(
                        StatusCode::BAD_REQUEST,
                        format!("Request decode failed: {e}"),
                    ));
                }
            };
            let Some(status) = v
                .get("Status")
                .and_then(|s| s.as_str())
                .and_then(Health::parse)
            else {
                return Ok(reply(StatusCode::BAD_REQUEST, "Invalid check status"));
            };
            let output = v
                .get("Output")
                .and_then(|s| s.as_str())
                .unwrap_or("")
                .to_owned();
            update_check(&shared, id, status, output)
        }
        _ => reply(StatusCode::NOT_FOUND, "404 page not found"),
    })
}

fn denied(permission: &str) -> Resp {
    reply(
        StatusCode::FORBIDDEN,
        format!(
            "Permission denied: token with AccessorID '00000000-0000-0000-0000-000000000002' lacks permission '{permission}'"
        ),
    )
}

fn unknown_service(id: &str) -> Resp {
    reply(
        StatusCode::NOT_FOUND,
        format!(
            "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
        ),
    )
}

fn register(shared: &Arc<Shared>, body: &[u8]) -> Resp {
    let mut started = Vec::new();
    let mut error = None;
    shared.write(|s| {
        let probe = match parse_registration(body, None) {
            Ok(p) => p,
            Err(e) => {
                error = Some(e);
                return;
            }
        };
        let key = (AGENT_NODE.to_owned(), probe.spec.id.clone());
        let inst = match parse_registration(body, s.instances.get(&key)) {
            Ok(i) => i,
            Err(e) => {
                error = Some(e);
                return;
            }
        };
        for c in &inst.checks {
            started.push((c.id.clone(), c.kind.clone(), c.generation));
        }
        s.insert(inst);
    });
    if let Some(e) = error {
        return reply(StatusCode::BAD_REQUEST, e);
    }
    for (id, kind, generation) in started {
        match kind {
            CheckKind::Ttl(ttl) => shared.arm_ttl(id, ttl, generation),
            CheckKind::Http { .. } | CheckKind::Tcp(_) | CheckKind::Grpc(_) => {
                shared.start_probe(id, generation);
            }
            CheckKind::Manual | CheckKind::Maintenance | CheckKind::Serf => {}
        }
    }
    reply(StatusCode::OK, "")
}

fn update_check(shared: &Arc<Shared>, id: &str, status: Health, output: String) -> Resp {
    let mut found = None;
    shared.write(|s| {
        let Some((c, service)) = s.find_check_mut(id) else {
            return;
        };
        let CheckKind::Ttl(ttl) = c.kind else {
            found = Some(Err(()));
            return;
        };
        c.generation += 1;
        let changed = c.set(status, output);
        found = Some(Ok((ttl, c.generation)));
        if changed {
            s.touch(&service);
        }
    });
    match found {
        None => reply(
            StatusCode::NOT_FOUND,
            format!(
                "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
            ),
        ),
        Some(Err(())) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("CheckID {id:?} does not have associated TTL"),
        ),
        Some(Ok((ttl, generation))) => {
            shared.arm_ttl(id.to_owned(), ttl, generation);
            reply(StatusCode::OK, "")
        }
    }
}

/// `GET /v1/agent/health/service/id/:id`: 200 passing, 429 warning, 503
/// critical, 404 unknown, with the aggregated status.
fn agent_health(shared: &Shared, id: &str) -> Resp {
    let s = shared.lock();
    let Some(inst) = s.instances.get(&(AGENT_NODE.to_owned(), id.to_owned())) else {
        return reply(StatusCode::NOT_FOUND, format!("ServiceId {id} not found"));
    };
    let status = s.aggregate(inst);
    let entry = super::json::entry(&s, inst);
    let body = serde_json::json!({
        "AggregatedStatus": status.as_str(),
        "Service": entry["Service"],
        "Checks": entry["Checks"],
    });
    let code = match status {
        Health::Passing => StatusCode::OK,
        Health::Warning => StatusCode::TOO_MANY_REQUESTS,
        Health::Critical => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut r = reply(code, body.to_string());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn health(
    shared: &Arc<Shared>,
    name: &str,
    query: &[(String, String)],
    authorized: bool,
    connect: bool,
) -> Result<Resp, DropConnection> {
    shared.in_flight_health.fetch_add(1, Ordering::SeqCst);
    let _gauge = Gauge(&shared.in_flight_health);
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let flag = |k: &str| get(k).is_some_and(|v| v != "false" && v != "0");
    if get("dc").is_some_and(|dc| dc != DATACENTER) {
        return Ok(reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No path to datacenter",
        ));
    }
    let stale = flag("stale");
    if flag("consistent") && (stale || flag("cached")) {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            "Cannot specify ?stale or ?cached with ?consistent, conflicting semantics.",
        ));
    }
    let leader = shared.leader();
    if !leader.known && !stale {
        return Ok(reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No cluster leader",
        ));
    }
    let passing = flag("passing");
    let tags: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.clone())
        .collect();
    let filter = match get("filter").map(Filter::parse) {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => return Ok(reply(StatusCode::BAD_REQUEST, e)),
    };
    let index: u64 = match get("index").map(str::parse) {
        None => 0,
        Some(Ok(i)) => i,
        Some(Err(_)) => {
            return Ok(reply(StatusCode::BAD_REQUEST, "Invalid index"));
        }
    };
    let wait = match get("wait") {
        None => Duration::from_secs(300),
        Some(w) => match parse_go_duration(w) {
            Some(w) => w.min(Duration::from_secs(600)),
            None => return Ok(reply(StatusCode::BAD_REQUEST, "Invalid wait time")),
        },
    };
    if index > 0 && *shared.fault_tx.borrow() != Fault::SpuriousWakeups {
        let jitter = wait.mul_f64(fastrand::f64() / 16.0);
        let deadline = Instant::now() + wait + jitter;
        // Woken by writes to this service only, as Consul does.
        let mut idx = shared.subscribe_service(name);
        let mut fault = shared.fault_tx.subscribe();
        let mut woken = false;
        loop {
            idx.borrow_and_update();
            // Held until this service's index passes the one asked about.
            let current = {
                let s = shared.lock();
                if connect { s.index } else { s.index_of(name) }
            };
            if current > index {
                if woken {
                    shared.count_wakeup();
                }
                break;
            }
            tokio::select! {
                _ = idx.changed() => woken = true,
                () = tokio::time::sleep_until(deadline) => break,
                _ = fault.changed() => {
                    if *fault.borrow_and_update() != Fault::None {
                        break;
                    }
                }
            }
        }
        // A fault set while the query was held applies to its answer.
        if let Some(resp) = connection_fault(shared).await? {
            return Ok(resp);
        }
    }
    let (entries, current) = {
        let s = shared.lock();
        let entries = s.health(&HealthRead {
            service: name,
            passing,
            tags: &tags,
            filter: filter.as_ref(),
            connect,
        });
        // A Connect read spans the service and its proxies: it follows the
        // global index (a wake-up promises no change, as with Consul).
        (entries, if connect { s.index } else { s.index_of(name) })
    };
    // Consul filters what a token may not read instead of refusing.
    let filtered = !authorized && !entries.is_empty();
    let entries = if authorized { entries } else { Vec::new() };
    let body = serde_json::to_vec(&entries).unwrap_or_else(|_| b"[]".to_vec());
    Ok(health_answer(
        shared, body, current, filtered, stale, leader,
    ))
}

/// `GET /v1/health/state/:state` (`any`, `passing`, `warning`,
/// `critical`): every check in that state, node checks included, as
/// Consul's `ChecksInState` answers. `X-Consul-Index` is the checks table's
/// index (here the global one: every write of the fake touches checks). A
/// blocking query returns at once when that index is past `index`;
/// otherwise it is held until a check *in or leaving* that state changes
/// (Consul watches the state's part of the checks table; `any` watches all
/// of it), or the wait runs out. `filter` applies to each check after the
/// query, so it changes the answer, not what wakes it.
async fn health_state(
    shared: &Arc<Shared>,
    state: &str,
    query: &[(String, String)],
    authorized: bool,
) -> Result<Resp, DropConnection> {
    shared.state_requests.fetch_add(1, Ordering::SeqCst);
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    let flag = |k: &str| get(k).is_some_and(|v| v != "false" && v != "0");
    let wanted = match state {
        "any" => None,
        s => match Health::parse(s) {
            Some(h) => Some(h),
            None => return Ok(reply(StatusCode::BAD_REQUEST, "Invalid check state")),
        },
    };
    if get("dc").is_some_and(|dc| dc != DATACENTER) {
        return Ok(reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No path to datacenter",
        ));
    }
    let stale = flag("stale");
    let leader = shared.leader();
    if !leader.known && !stale {
        return Ok(reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No cluster leader",
        ));
    }
    let filter = match get("filter").map(Filter::parse_for_checks) {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => return Ok(reply(StatusCode::BAD_REQUEST, e)),
    };
    let index: u64 = match get("index").map(str::parse) {
        None => 0,
        Some(Ok(i)) => i,
        Some(Err(_)) => return Ok(reply(StatusCode::BAD_REQUEST, "Invalid index")),
    };
    let wait = match get("wait") {
        None => Duration::from_secs(300),
        Some(w) => match parse_go_duration(w) {
            Some(w) => w.min(Duration::from_secs(600)),
            None => return Ok(reply(StatusCode::BAD_REQUEST, "Invalid wait time")),
        },
    };
    let mut writes = shared.index_tx.subscribe();
    let (mut checks, mut current) = {
        let s = shared.lock();
        (s.checks_in(wanted), s.index)
    };
    if index > 0 && current <= index && *shared.fault_tx.borrow() != Fault::SpuriousWakeups {
        let jitter = wait.mul_f64(fastrand::f64() / 16.0);
        let deadline = Instant::now() + wait + jitter;
        let mut fault = shared.fault_tx.subscribe();
        // `writes` was subscribed before the snapshot was taken, and
        // `changed` marks what it saw: no write between the snapshot and a
        // wait goes unnoticed.
        loop {
            tokio::select! {
                _ = writes.changed() => {
                    let s = shared.lock();
                    current = s.index;
                    // `any` watches the whole table; a state its own part.
                    if wanted.is_none() {
                        checks = s.checks_in(None);
                        break;
                    }
                    let now = s.checks_in(wanted);
                    if now != checks {
                        checks = now;
                        break;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    let s = shared.lock();
                    current = s.index;
                    checks = s.checks_in(wanted);
                    break;
                }
                _ = fault.changed() => {
                    if *fault.borrow_and_update() != Fault::None {
                        break;
                    }
                }
            }
        }
        if let Some(resp) = connection_fault(shared).await? {
            return Ok(resp);
        }
    }
    if let Some(f) = &filter {
        checks.retain(|c| f.matches(c));
    }
    let filtered = !authorized && !checks.is_empty();
    if !authorized {
        checks.clear();
    }
    let body = serde_json::to_vec(&checks).unwrap_or_else(|_| b"[]".to_vec());
    Ok(health_answer(
        shared, body, current, filtered, stale, leader,
    ))
}

/// A health answer as Consul sends it: the JSON `body`, its index, the ACL
/// filter and leader headers, and the fault in effect (a garbage body, a
/// missing or zero index).
fn health_answer(
    shared: &Shared,
    body: Vec<u8>,
    current: u64,
    filtered: bool,
    stale: bool,
    leader: Leader,
) -> Resp {
    let fault = *shared.fault_tx.borrow();
    let mut resp = reply(StatusCode::OK, body);
    if fault == Fault::GarbageBody {
        *resp.body_mut() = Full::new(Bytes::from_static(b"<html>502 Bad Gateway</html>"));
    }
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    match fault {
        Fault::MissingIndex => {}
        Fault::IndexZero => {
            h.insert("x-consul-index", http::HeaderValue::from_static("0"));
        }
        _ => {
            h.insert("x-consul-index", http::HeaderValue::from(current));
        }
    }
    if filtered {
        h.insert(
            "x-consul-results-filtered-by-acls",
            http::HeaderValue::from_static("true"),
        );
    }
    let (known, contact) = if stale {
        (leader.known, leader.last_contact)
    } else {
        (true, Duration::ZERO)
    };
    h.insert(
        "x-consul-knownleader",
        http::HeaderValue::from_static(if known { "true" } else { "false" }),
    );
    h.insert(
        "x-consul-lastcontact",
        http::HeaderValue::from(u64::try_from(contact.as_millis()).unwrap_or(u64::MAX)),
    );
    resp
}

pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
