//! Shared helpers for mesh's end-to-end scenarios: real HTTP servers on
//! 127.0.0.1 that count what they receive.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A handler: request in, response out.
pub type Handler =
    Arc<dyn Fn(&http::Request<Incoming>) -> http::Response<Full<Bytes>> + Send + Sync>;

/// A running HTTP/1 and HTTP/2 server on 127.0.0.1 that counts its requests.
#[derive(Debug, Clone)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl TestServer {
    /// Starts a server on a random loopback port answering with `handler`.
    pub async fn start(handler: Handler) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = handler.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let resp = handler(&req);
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, hits })
    }

    /// How many requests reached the server.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A loopback address on which nothing listens (bound, then released).
pub async fn closed_port() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    listener.local_addr()
}
