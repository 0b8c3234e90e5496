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

use super::state::{DATACENTER, parse_go_duration, parse_registration};
use super::{Fault, Health, Shared};

type Resp = Response<Full<Bytes>>;

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
        let shared = shared.clone();
        let mut stop = shared.shutdown.subscribe();
        tokio::spawn(async move {
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
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Resp {
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
async fn connection_fault(shared: &Shared) -> Result<Option<Resp>, DropConnection> {
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

async fn handle(shared: Arc<Shared>, req: http::Request<Incoming>) -> Result<Resp, DropConnection> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    if req.uri().path().starts_with("/v1/health/") {
        shared.health_requests.fetch_add(1, Ordering::SeqCst);
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
        });
    let authorized = {
        let required = shared
            .token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        required.as_ref().is_none_or(|t| token.as_ref() == Some(t))
    };
    let path = parts.uri.path().to_owned();
    let query = parse_query(parts.uri.query().unwrap_or(""));
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = parts.method;

    if let (&Method::GET, ["v1", "health", "service", name]) = (&method, &segs[..]) {
        let name = percent_decode(name);
        return health(&shared, &name, &query, authorized).await;
    }
    if method != Method::PUT {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
    }
    if !authorized {
        return Ok(reply(
            StatusCode::FORBIDDEN,
            "Permission denied: ACL not found",
        ));
    }
    match segs[..] {
        ["v1", "agent", "service", "register"] => Ok(register(&shared, &body)),
        ["v1", "agent", "service", "deregister", id] => {
            let id = percent_decode(id);
            shared.write(|s| {
                s.instances
                    .remove(&(super::AGENT_NODE.to_owned(), id.clone()))
                    .is_some()
            });
            Ok(reply(StatusCode::OK, ""))
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
            let note = query
                .iter()
                .find(|(k, _)| k == "note")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            Ok(update_check(&shared, &percent_decode(id), status, note))
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
            Ok(update_check(&shared, &percent_decode(id), status, output))
        }
        _ => Ok(reply(StatusCode::NOT_FOUND, "404 page not found")),
    }
}

fn register(shared: &Arc<Shared>, body: &[u8]) -> Resp {
    let mut armed = Vec::new();
    let mut error = None;
    shared.write(|s| {
        let probe = match parse_registration(body, None) {
            Ok(p) => p,
            Err(e) => {
                error = Some(e);
                return false;
            }
        };
        let key = (super::AGENT_NODE.to_owned(), probe.spec.id.clone());
        let inst = match parse_registration(body, s.instances.get(&key)) {
            Ok(i) => i,
            Err(e) => {
                error = Some(e);
                return false;
            }
        };
        for c in &inst.checks {
            if let Some(ttl) = c.ttl {
                armed.push((c.id.clone(), ttl, c.generation));
            }
        }
        s.instances.insert(key, inst);
        true
    });
    if let Some(e) = error {
        return reply(StatusCode::BAD_REQUEST, e);
    }
    for (id, ttl, generation) in armed {
        shared.arm_ttl(id, ttl, generation);
    }
    reply(StatusCode::OK, "")
}

fn update_check(shared: &Arc<Shared>, id: &str, status: Health, output: String) -> Resp {
    let mut found = None;
    shared.write(|s| {
        let Some((inst, i)) = s.find_check_mut(id) else {
            return false;
        };
        let c = &mut inst.checks[i];
        c.generation += 1;
        let changed = c.status != status;
        c.status = status;
        c.output = output;
        found = Some((c.ttl, c.deregister_after, c.generation, c.status));
        changed
    });
    match found {
        None => reply(StatusCode::NOT_FOUND, format!("Unknown check ID {id:?}")),
        Some((ttl, deregister_after, generation, status)) => {
            if let Some(ttl) = ttl {
                shared.arm_ttl(id.to_owned(), ttl, generation);
            }
            if let (Some(after), Health::Critical) = (deregister_after, status) {
                shared.arm_reaper(id.to_owned(), after, generation);
            }
            reply(StatusCode::OK, "")
        }
    }
}

async fn health(
    shared: &Arc<Shared>,
    name: &str,
    query: &[(String, String)],
    authorized: bool,
) -> Result<Resp, DropConnection> {
    shared.in_flight_health.fetch_add(1, Ordering::SeqCst);
    let _gauge = Gauge(&shared.in_flight_health);
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.as_str());
    if get("dc").is_some_and(|dc| dc != DATACENTER) {
        return Ok(reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No path to datacenter",
        ));
    }
    let passing = get("passing").is_some_and(|v| v != "false" && v != "0");
    let tags: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.clone())
        .collect();
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
        let mut idx = shared.index_tx.subscribe();
        let mut fault = shared.fault_tx.subscribe();
        loop {
            if *idx.borrow_and_update() > index {
                break;
            }
            tokio::select! {
                _ = idx.changed() => {}
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
    let (body, current) = {
        let s = shared.lock();
        let body = if authorized {
            s.health(name, passing, &tags)
        } else {
            b"[]".to_vec()
        };
        (body, s.index)
    };
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
    h.insert(
        "x-consul-knownleader",
        http::HeaderValue::from_static("true"),
    );
    h.insert("x-consul-lastcontact", http::HeaderValue::from_static("0"));
    Ok(resp)
}

fn parse_query(q: &str) -> Vec<(String, String)> {
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
