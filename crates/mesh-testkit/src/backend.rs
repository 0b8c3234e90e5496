//! HTTP backends whose behaviour can be switched while they run.
//!
//! Resilience code is only as good as the failures it was tested against, and
//! the failures that matter happen at the server: a 503 with `Retry-After`, a
//! server that hangs, one that resets the connection, one that is ten times
//! slower than its peers. A [`Backend`] is a real HTTP/1 and HTTP/2 server on
//! 127.0.0.1 that does any of these on demand, and records what it *received*,
//! so a test can assert on the server's side of the story: how many requests
//! arrived, whether a POST arrived twice, when the last request came.
//!
//! # Example
//!
//! ```
//! use mesh_testkit::backend::{Backend, Behavior};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let backend = Backend::builder().name("users-1").start().await?;
//! // Fail the next two requests with 503, then answer normally.
//! backend.set_behavior(Behavior::fail_first(2, 503));
//! // ... point a client at backend.url("/users") ...
//! assert_eq!(backend.hits(), 0);
//! backend.shutdown();
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// What a [`Backend`] does with each request.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// `200 OK`, with the backend's name as the body.
    Healthy,
    /// An answer with this status, headers and body.
    Respond(Reply),
    /// Waits, then behaves as the inner behaviour.
    Delay(Duration, Box<Behavior>),
    /// Reads the request and never answers; the client must give up.
    Hang,
    /// Reads the request and closes the connection without answering.
    Drop,
    /// Each request takes the next behaviour in turn; the last one repeats.
    Sequence(Arc<[Behavior]>),
    /// Each request, with probability `p` (0..=1), behaves as the inner
    /// behaviour, and otherwise as [`Behavior::Healthy`]: a gray failure, or
    /// a flaky network (`Sometimes(0.3, Box::new(Behavior::Drop))`).
    Sometimes(f64, Box<Behavior>),
}

impl Behavior {
    /// Answers with `status` and an empty body.
    pub fn status(status: u16) -> Self {
        Behavior::Respond(Reply::status(status))
    }

    /// Answers `200 OK` after `delay`.
    pub fn slow(delay: Duration) -> Self {
        Behavior::Delay(delay, Box::new(Behavior::Healthy))
    }

    /// With probability `p` behaves as `behavior`, else answers `200 OK`.
    pub fn sometimes(p: f64, behavior: Behavior) -> Self {
        Behavior::Sometimes(p, Box::new(behavior))
    }

    /// Fails the first `n` requests with `status`, then answers `200 OK`.
    pub fn fail_first(n: usize, status: u16) -> Self {
        let mut seq: Vec<_> = std::iter::repeat_n(Behavior::status(status), n).collect();
        seq.push(Behavior::Healthy);
        Behavior::Sequence(seq.into())
    }
}

/// A canned response.
#[derive(Debug, Clone)]
pub struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    /// A reply with `status` (an invalid code becomes 500) and no body.
    pub fn status(status: u16) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header. Invalid names or values are skipped with a warning.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(n), Ok(v)) => {
                self.headers.append(n, v);
            }
            _ => tracing::warn!(name, value, "testkit: skipping invalid reply header"),
        }
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
}

impl From<Reply> for Behavior {
    fn from(r: Reply) -> Self {
        Behavior::Respond(r)
    }
}

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// The method.
    pub method: Method,
    /// The request target as received.
    pub uri: Uri,
    /// The headers as received.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// When the request's head arrived.
    pub at: Instant,
}

/// Builds a [`Backend`].
#[derive(Debug, Clone)]
pub struct BackendBuilder {
    name: String,
    behavior: Behavior,
    addr: SocketAddr,
    record_limit: usize,
}

impl Default for BackendBuilder {
    fn default() -> Self {
        Self {
            name: "backend".into(),
            behavior: Behavior::Healthy,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            record_limit: 10_000,
        }
    }
}

impl BackendBuilder {
    /// The name, returned as the body of healthy answers (default `backend`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The initial behaviour (default [`Behavior::Healthy`]).
    #[must_use]
    pub fn behavior(mut self, behavior: Behavior) -> Self {
        self.behavior = behavior;
        self
    }

    /// The address to listen on (default `127.0.0.1:0`, a random port).
    #[must_use]
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// How many received requests are kept for [`Backend::requests`] (default
    /// 10,000; older ones are dropped, counters keep counting).
    #[must_use]
    pub fn record_limit(mut self, limit: usize) -> Self {
        self.record_limit = limit;
        self
    }

    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(self) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(self.addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown, _) = watch::channel(false);
        let (draining, _) = watch::channel(false);
        let (closing, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            name: self.name,
            addr,
            behavior: Mutex::new(self.behavior),
            sequence_pos: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            received: Mutex::new(Vec::new()),
            record_limit: self.record_limit,
            shutdown,
            draining,
            closing,
        });
        tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Backend { shared })
    }
}

/// A running HTTP/1 + HTTP/2 server on loopback with switchable behaviour.
/// Cloning shares the server; it stops on [`shutdown`](Self::shutdown) or
/// when the runtime ends.
#[derive(Clone)]
pub struct Backend {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    addr: SocketAddr,
    behavior: Mutex<Behavior>,
    sequence_pos: AtomicUsize,
    hits: AtomicU64,
    in_flight: AtomicU64,
    connections: AtomicU64,
    received: Mutex<Vec<ReceivedRequest>>,
    record_limit: usize,
    shutdown: watch::Sender<bool>,
    /// Asks the accept loop to stop.
    draining: watch::Sender<bool>,
    /// Set by the accept loop once its listener is gone: connections then
    /// shut down gracefully (in that order, so that a client told `GOAWAY`
    /// never reconnects into a listener about to close).
    closing: watch::Sender<bool>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.shared.name)
            .field("addr", &self.shared.addr)
            .field("hits", &self.hits())
            .finish()
    }
}

impl Backend {
    /// A builder with the defaults.
    pub fn builder() -> BackendBuilder {
        BackendBuilder::default()
    }

    /// Starts a healthy backend on a random loopback port.
    pub async fn start() -> std::io::Result<Backend> {
        Self::builder().start().await
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.shared.addr)
    }

    /// Switches the behaviour for requests that arrive from now on (a
    /// [`Behavior::Sequence`] starts again from its first step).
    pub fn set_behavior(&self, behavior: Behavior) {
        let mut b = self
            .shared
            .behavior
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *b = behavior;
        self.shared.sequence_pos.store(0, Ordering::SeqCst);
    }

    /// Requests received so far (all of them, whatever the answer).
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Requests received with `method`, among those still recorded.
    pub fn hits_with_method(&self, method: &Method) -> usize {
        self.with_received(|r| r.iter().filter(|q| q.method == method).count())
    }

    /// Requests being handled right now (hanging ones included).
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The recorded requests, oldest first.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.with_received(|r| r.clone())
    }

    /// When the most recent request arrived.
    pub fn last_request_at(&self) -> Option<Instant> {
        self.with_received(|r| r.last().map(|q| q.at))
    }

    /// Forgets recorded requests and zeroes the hit counter.
    pub fn reset_counts(&self) {
        self.with_received(Vec::clear);
        self.shared.hits.store(0, Ordering::SeqCst);
    }

    /// Stops accepting and closes every connection: the port then refuses
    /// connections, as a crashed server's would.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Stops as a server being stopped for a deploy does: stops accepting
    /// (its listener is dropped, so the port refuses connections) and closes
    /// each connection once the requests in flight on it are answered
    /// (hyper's graceful shutdown: an HTTP/1 connection closes after its
    /// current response, an HTTP/2 one sends `GOAWAY` and finishes its
    /// streams). [`shutdown`](Self::shutdown) still closes them at once.
    pub fn drain(&self) {
        self.shared.draining.send_replace(true);
    }

    fn with_received<R>(&self, f: impl FnOnce(&mut Vec<ReceivedRequest>) -> R) -> R {
        let mut guard = self
            .shared
            .received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    let mut drain = shared.draining.subscribe();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => Some(stream),
                Err(e) => {
                    tracing::debug!(error = %e, "testkit backend: accept failed");
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => return,
            _ = drain.wait_for(|s| *s) => None,
        };
        let Some(stream) = stream else {
            drop(listener);
            shared.closing.send_replace(true);
            return;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        let mut stop = shared.shutdown.subscribe();
        let mut drain = shared.closing.subscribe();
        tokio::spawn(async move {
            let svc_shared = shared.clone();
            let svc = service_fn(move |req| handle(svc_shared.clone(), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.wait_for(|s| *s) => return,
                _ = drain.wait_for(|s| *s) => {}
            }
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

/// Closing the connection without an answer: hyper drops a connection whose
/// service fails.
#[derive(Debug)]
struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("testkit backend dropped the connection on purpose")
    }
}

impl std::error::Error for DropConnection {}

struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, DropConnection> {
    let at = Instant::now();
    shared.hits.fetch_add(1, Ordering::SeqCst);
    shared.in_flight.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight(&shared.in_flight);
    let behavior = {
        let b = shared
            .behavior
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*b {
            Behavior::Sequence(steps) if !steps.is_empty() => {
                let i = shared.sequence_pos.fetch_add(1, Ordering::SeqCst);
                steps[i.min(steps.len() - 1)].clone()
            }
            other => other.clone(),
        }
    };
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    {
        let mut r = shared
            .received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if r.len() >= shared.record_limit {
            r.remove(0);
        }
        r.push(ReceivedRequest {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
            at,
        });
    }
    respond(&shared.name, behavior).await
}

async fn respond(
    name: &str,
    mut behavior: Behavior,
) -> Result<http::Response<Full<Bytes>>, DropConnection> {
    loop {
        match behavior {
            Behavior::Healthy => {
                return Ok(http::Response::new(Full::new(Bytes::from(name.to_owned()))));
            }
            Behavior::Respond(reply) => {
                let mut resp = http::Response::new(Full::new(reply.body));
                *resp.status_mut() = reply.status;
                *resp.headers_mut() = reply.headers;
                return Ok(resp);
            }
            Behavior::Delay(d, then) => {
                tokio::time::sleep(d).await;
                behavior = *then;
            }
            Behavior::Hang => {
                std::future::pending::<Infallible>().await;
            }
            Behavior::Drop => return Err(DropConnection),
            Behavior::Sometimes(p, inner) => {
                behavior = if fastrand::f64() < p {
                    *inner
                } else {
                    Behavior::Healthy
                };
            }
            // An empty sequence, or a sequence nested in a sequence: take its
            // first step.
            Behavior::Sequence(steps) => {
                behavior = steps.first().cloned().unwrap_or(Behavior::Healthy);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::legacy::Client;

    async fn get(
        b: &Backend,
        method: Method,
    ) -> Result<(StatusCode, HeaderMap, Bytes), hyper_util::client::legacy::Error> {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let req = http::Request::builder()
            .method(method)
            .uri(b.url("/x"))
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let resp = client.request(req).await?;
        let (parts, body) = resp.into_parts();
        Ok((
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        ))
    }

    #[tokio::test]
    async fn switches_behaviour_and_counts() {
        let b = Backend::builder().name("b1").start().await.unwrap();
        let (s, _, body) = get(&b, Method::GET).await.unwrap();
        assert_eq!((s, &body[..]), (StatusCode::OK, &b"b1"[..]));

        b.set_behavior(Reply::status(503).header("retry-after", "2").into());
        let (s, h, _) = get(&b, Method::POST).await.unwrap();
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h["retry-after"], "2");

        b.set_behavior(Behavior::fail_first(1, 500));
        assert_eq!(
            get(&b, Method::GET).await.unwrap().0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(get(&b, Method::GET).await.unwrap().0, StatusCode::OK);
        assert_eq!(get(&b, Method::GET).await.unwrap().0, StatusCode::OK);

        assert_eq!(b.hits(), 5);
        assert_eq!(b.hits_with_method(&Method::POST), 1);
        let reqs = b.requests();
        assert_eq!(reqs.len(), 5);
        assert_eq!(&reqs[1].body[..], b"payload");
        b.reset_counts();
        assert_eq!((b.hits(), b.requests().len()), (0, 0));
    }

    #[tokio::test]
    async fn drops_hangs_and_shuts_down() {
        let b = Backend::builder()
            .behavior(Behavior::Drop)
            .start()
            .await
            .unwrap();
        assert!(get(&b, Method::GET).await.is_err());
        assert_eq!(b.hits(), 1);

        b.set_behavior(Behavior::Hang);
        let hung = tokio::time::timeout(Duration::from_millis(200), get(&b, Method::GET)).await;
        assert!(hung.is_err(), "a hanging backend never answers");

        b.set_behavior(Behavior::slow(Duration::from_millis(50)));
        let start = Instant::now();
        assert_eq!(get(&b, Method::GET).await.unwrap().0, StatusCode::OK);
        assert!(start.elapsed() >= Duration::from_millis(50));

        b.shutdown();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = get(&b, Method::GET).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
    }

    #[tokio::test]
    async fn record_limit_keeps_the_newest() {
        let b = Backend::builder().record_limit(2).start().await.unwrap();
        for _ in 0..3 {
            get(&b, Method::GET).await.unwrap();
        }
        assert_eq!(b.hits(), 3);
        assert_eq!(b.requests().len(), 2);
        assert!(b.last_request_at().is_some());
    }
}
