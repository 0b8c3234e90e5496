//! What the chaos and soak scenarios share: backends, the default mesh stack
//! over hyper-util's legacy client, a bounded load driver that records each
//! call's outcome and latency, and small statistics.
//!
//! Each test binary uses a subset of these helpers.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_stack::core::{BoxError, Endpoint};
use mesh_stack::{MeshService, ServiceConfig};
use mesh_testkit::{Backend, Behavior};
use tokio::time::Instant;
use tower::ServiceExt;

/// The inner client every scenario uses.
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The default ready-made stack over [`HttpClient`].
pub(crate) type Users = MeshService<HttpClient>;

/// The request header each request carries, so servers can tell requests
/// apart (duplicates, arrival after removal).
pub(crate) const REQUEST_ID: &str = "x-request-id";

pub(crate) fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The endpoint a mesh sees for `b` (keyed by the backend's name).
pub(crate) fn endpoint(b: &Backend) -> Endpoint {
    Endpoint::new(b.name().to_owned(), b.addr().into())
}

/// Starts `behaviors.len()` backends named `{prefix}{i}`.
pub(crate) async fn backends(prefix: &str, behaviors: &[Behavior]) -> Vec<Backend> {
    let mut v = Vec::with_capacity(behaviors.len());
    for (i, behavior) in behaviors.iter().enumerate() {
        v.push(
            Backend::builder()
                .name(format!("{prefix}{i}"))
                .behavior(behavior.clone())
                .start()
                .await
                .expect("a backend on 127.0.0.1"),
        );
    }
    v
}

/// The default service config over static `backends`.
pub(crate) fn static_service(backends: &[Backend]) -> ServiceConfig {
    ServiceConfig::with_static(backends.iter().map(endpoint))
}

pub(crate) fn hits(backends: &[Backend]) -> Vec<u64> {
    backends.iter().map(Backend::hits).collect()
}

/// One call through the stack: a request with a unique id header.
pub(crate) fn request(method: http::Method, id: u64) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri("http://users/work")
        .header(REQUEST_ID, id.to_string())
        .body(Full::new(Bytes::from_static(b"payload")))
        .expect("a valid request")
}

/// What one call ended with, and how long it took (body read included).
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) id: u64,
    pub(crate) result: Result<http::StatusCode, String>,
    pub(crate) latency: Duration,
    pub(crate) started: Instant,
}

impl Call {
    pub(crate) fn ok(&self) -> bool {
        matches!(self.result, Ok(s) if s.is_success())
    }
}

/// Sends one request and reads the whole answer.
pub(crate) async fn call(
    svc: &Users,
    req: http::Request<Full<Bytes>>,
) -> Result<http::StatusCode, BoxError> {
    let resp = svc.clone().oneshot(req).await?;
    let status = resp.status();
    resp.into_body().collect().await?;
    Ok(status)
}

/// Sends `total` requests (ids `first_id..first_id + total`) with
/// `concurrency` workers and returns every call, in id order. Each call is
/// bounded by `limit`: hitting it is recorded as an error ("hung").
pub(crate) async fn run_load(
    svc: &Users,
    method: &http::Method,
    first_id: u64,
    total: u64,
    concurrency: usize,
    limit: Duration,
) -> Vec<Call> {
    let next = Arc::new(AtomicU64::new(first_id));
    let end = first_id + total;
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let svc = svc.clone();
        let next = next.clone();
        let method = method.clone();
        workers.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            loop {
                let id = next.fetch_add(1, Ordering::SeqCst);
                if id >= end {
                    return calls;
                }
                calls.push(timed_call(&svc, method.clone(), id, limit).await);
            }
        }));
    }
    let mut calls = Vec::with_capacity(total as usize);
    for w in workers {
        calls.extend(w.await.expect("a load worker panicked"));
    }
    calls.sort_by_key(|c| c.id);
    calls
}

/// Load that runs until stopped, for scenarios that change the world while
/// it runs.
#[derive(Debug)]
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Vec<Call>>>,
}

impl Load {
    /// Starts `concurrency` workers sending `method` requests with ids from
    /// `first_id` on, each call bounded by `limit`.
    pub(crate) fn start(
        svc: &Users,
        method: &http::Method,
        first_id: u64,
        concurrency: usize,
        limit: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(first_id));
        let workers = (0..concurrency)
            .map(|_| {
                let svc = svc.clone();
                let next = next.clone();
                let method = method.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut calls = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let id = next.fetch_add(1, Ordering::SeqCst);
                        calls.push(timed_call(&svc, method.clone(), id, limit).await);
                    }
                    calls
                })
            })
            .collect();
        Self { stop, workers }
    }

    /// Stops the workers after their current call and returns every call,
    /// in id order.
    pub(crate) async fn stop(self) -> Vec<Call> {
        self.stop.store(true, Ordering::SeqCst);
        let mut calls = Vec::new();
        for w in self.workers {
            calls.extend(w.await.expect("a load worker panicked"));
        }
        calls.sort_by_key(|c| c.id);
        calls
    }
}

async fn timed_call(svc: &Users, method: http::Method, id: u64, limit: Duration) -> Call {
    let started = Instant::now();
    let result = match tokio::time::timeout(limit, call(svc, request(method, id))).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("hung: no answer within {limit:?}")),
    };
    Call {
        id,
        result,
        latency: started.elapsed(),
        started,
    }
}

/// The `q` quantile (0..=1) of the calls' latencies, nearest rank.
pub(crate) fn quantile(calls: &[Call], q: f64) -> Duration {
    let mut l: Vec<Duration> = calls.iter().map(|c| c.latency).collect();
    l.sort();
    if l.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * l.len() as f64).ceil() as usize).clamp(1, l.len());
    l[rank - 1]
}

/// The failed calls, for assertion messages (at most 5, with the count).
pub(crate) fn failures(calls: &[Call]) -> String {
    let failed: Vec<_> = calls.iter().filter(|c| !c.ok()).collect();
    let shown: Vec<_> = failed.iter().take(5).map(|c| &c.result).collect();
    format!("{} failed, e.g. {shown:?}", failed.len())
}

/// The id header of every request `b` received.
pub(crate) fn received_ids(b: &Backend) -> Vec<u64> {
    b.requests()
        .iter()
        .filter_map(|r| r.headers.get(REQUEST_ID)?.to_str().ok()?.parse().ok())
        .collect()
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether
/// it held.
pub(crate) async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until no backend of `backends` received anything for `quiet`
/// (at most `limit`); returns the settled counts, or `None` on timeout.
pub(crate) async fn settled(
    backends: &[Backend],
    quiet: Duration,
    limit: Duration,
) -> Option<Vec<u64>> {
    let deadline = Instant::now() + limit;
    let mut last = hits(backends);
    let mut since = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = hits(backends);
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Some(last);
        }
    }
    None
}
