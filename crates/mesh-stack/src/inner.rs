//! The inner HTTP clients the ready-made stacks build for you: hyper-util's
//! client with `TCP_NODELAY` on and a bounded idle pool.
//!
//! # Why
//!
//! hyper-util's `Client::builder(..).build_http()` leaves `TCP_NODELAY` off.
//! A unary gRPC call (or any request written in more than one small segment)
//! then meets Nagle's algorithm on the client and delayed ACKs on the server:
//! the second segment waits for an ACK the server holds back for up to
//! ~40 ms. Measured on loopback, a tonic unary call took ~45 ms instead of
//! ~1.5 ms. tonic's own `Channel` and reqwest turn `TCP_NODELAY` on; the
//! clients here do the same, so [`Mesh::hyper_client`](crate::Mesh::hyper_client)
//! and [`Mesh::grpc_channel`](crate::Mesh::grpc_channel) are as fast as the
//! clients they replace.
//!
//! The idle pool is bounded as well: hyper-util keeps any number of idle
//! connections per host for 90 s by default. [`POOL_MAX_IDLE_PER_HOST`]
//! bounds memory and file descriptors across a large fleet, and
//! [`POOL_IDLE_TIMEOUT`] closes an idle connection before the usual server
//! and load-balancer idle timeouts (60 s and more) do, so a request is rarely
//! written to a connection the server is closing at that moment.
//!
//! The clients come behind one `Arc` ([`SharedClient`]): a router keeps a
//! copy of its inner client in every endpoint's stack and clones the stack
//! for each call, so a by-value hyper client (about 300 bytes, a handful of
//! reference counts) would cost that much per endpoint and per call; shared,
//! it is one pointer and one atomic increment.
//!
//! With `[tls]` (or `[connect]`) in the config, the clients
//! [`Mesh::hyper_client`](crate::Mesh::hyper_client) and
//! [`Mesh::grpc_channel`](crate::Mesh::grpc_channel) build connect with mTLS
//! ([`MeshConnector`](crate::connector::MeshConnector)) and send the
//! service's `[services.x.api_key]` ([`SharedClient::with_api_key`]).
//!
//! Bring your own client to [`Mesh::http_client`](crate::Mesh::http_client)
//! or [`Mesh::grpc_client`](crate::Mesh::grpc_client) for anything else
//! (proxies, other timeouts); start from [`connector`] to keep
//! `TCP_NODELAY`. Such a client presents no credentials of the mesh's: give
//! it the TLS config of [`Mesh::client_tls`](crate::Mesh::client_tls) and
//! wrap it in [`Mesh::credentials_layer`](crate::Mesh::credentials_layer).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use mesh_stack::inner;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let http1: inner::HyperClient<Full<Bytes>> = inner::http_client();
//! let h2: inner::HyperClient<Full<Bytes>> = inner::http2_client();
//! # let _ = (http1, h2);
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mesh_auth::apikey::ApiKeyLayer;

/// hyper-util's legacy client over [`MeshConnector`] (plain TCP, or mTLS
/// when the mesh has `[tls]`), shared through one `Arc`, as the ready-made
/// stacks use it.
///
/// [`MeshConnector`]: crate::connector::MeshConnector
pub type HyperClient<B> = SharedClient<crate::connector::MeshConnector, B>;

/// hyper-util's legacy client behind one `Arc`: cloning it (what a router
/// does for every endpoint's stack, and for each call) is one atomic
/// increment instead of a copy of the whole client.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use mesh_stack::inner::SharedClient;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
///     .build_http::<Empty<Bytes>>();
/// let shared = SharedClient::new(client);
/// # let _ = shared;
/// # }
/// ```
pub struct SharedClient<C, B> {
    shared: Arc<Shared<C, B>>,
}

struct Shared<C, B> {
    client: Client<C, B>,
    api_key: Option<ApiKeyLayer>,
}

impl<C, B> SharedClient<C, B> {
    /// Shares `client`.
    pub fn new(client: Client<C, B>) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                api_key: None,
            }),
        }
    }

    /// Shares `client`, which sends `key` with every request made through
    /// the `Service` impl (what the mesh's stacks call; the client's own
    /// methods reached through `Deref` send no key).
    pub fn with_api_key(client: Client<C, B>, key: Option<ApiKeyLayer>) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                api_key: key,
            }),
        }
    }

    /// The client.
    pub fn get_ref(&self) -> &Client<C, B> {
        &self.shared.client
    }
}

/// The client's own methods (`get`, `request`) work through the handle.
impl<C, B> std::ops::Deref for SharedClient<C, B> {
    type Target = Client<C, B>;

    fn deref(&self) -> &Client<C, B> {
        &self.shared.client
    }
}

impl<C, B> From<Client<C, B>> for SharedClient<C, B> {
    fn from(client: Client<C, B>) -> Self {
        Self::new(client)
    }
}

impl<C, B> Clone for SharedClient<C, B> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C, B> fmt::Debug for SharedClient<C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedClient")
            .field("api_key", &self.shared.api_key)
            .finish_non_exhaustive()
    }
}

impl<C, B> tower_service::Service<http::Request<B>> for SharedClient<C, B>
where
    C: Connect + Clone + Send + Sync + 'static,
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = <Client<C, B> as tower_service::Service<http::Request<B>>>::Response;
    type Error = hyper_util::client::legacy::Error;
    type Future = ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(key) = &self.shared.api_key {
            key.insert_into(req.headers_mut());
        }
        self.shared.client.request(req)
    }
}

/// How long an idle pooled connection is kept: shorter than common server
/// and load-balancer idle timeouts (60 s and more).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// At most this many idle connections are kept per endpoint (hyper-util's
/// default is unbounded). Connections in use are not limited.
pub const POOL_MAX_IDLE_PER_HOST: usize = 64;

/// A plain TCP connector with `TCP_NODELAY` on: the base of the clients
/// here, and of yours if you build your own (`Client::builder(..).build(connector())`).
///
/// ```
/// let connector = mesh_stack::inner::connector();
/// # let _ = connector;
/// ```
pub fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// An HTTP/1.1 client (HTTP/2 when a request asks for it) with
/// `TCP_NODELAY` and a bounded idle pool; what
/// [`Mesh::hyper_client`](crate::Mesh::hyper_client) uses.
pub fn http_client<B>() -> HyperClient<B>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    http_client_with(crate::connector::MeshConnector::plain(), None)
}

/// [`http_client`] over `connector`, sending `api_key` with every request.
pub fn http_client_with<B>(
    connector: crate::connector::MeshConnector,
    api_key: Option<ApiKeyLayer>,
) -> HyperClient<B>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    SharedClient::with_api_key(
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .build(connector),
        api_key,
    )
}

/// An HTTP/2-only client (prior knowledge, one multiplexed connection per
/// endpoint) with `TCP_NODELAY`; what gRPC needs and what
/// [`Mesh::grpc_channel`](crate::Mesh::grpc_channel) uses.
pub fn http2_client<B>() -> HyperClient<B>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    http2_client_with(crate::connector::MeshConnector::plain(), None)
}

/// [`http2_client`] over `connector`, sending `api_key` with every request.
pub fn http2_client_with<B>(
    connector: crate::connector::MeshConnector,
    api_key: Option<ApiKeyLayer>,
) -> HyperClient<B>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    SharedClient::with_api_key(
        Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .build(connector),
        api_key,
    )
}
