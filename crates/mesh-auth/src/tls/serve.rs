//! An mTLS accept loop for hyper and axum services (feature `hyper`).

use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_service::Service;
use tracing::Instrument;

use super::acceptor::MtlsAcceptor;
use super::extension::AddIdentity;
use mesh_core::BoxError;

/// Serves `service` over mTLS on `listener`, HTTP/1.1 and HTTP/2, until the
/// returned future is dropped.
///
/// Each connection is handshaken on its own task; a rejected client is logged
/// (with the [`TlsErrorKind`](crate::TlsErrorKind)) and dropped, never a panic.
/// Every request carries the client's [`CallerIdentity`](crate::CallerIdentity)
/// in its extensions. An axum `Router` is such a service:
///
/// ```no_run
/// # async fn run(config: mesh_auth::tls::MtlsServerConfig) -> std::io::Result<()> {
/// use axum::{Extension, Router, routing::get};
/// use mesh_auth::CallerIdentity;
/// use mesh_auth::tls::{MtlsAcceptor, serve};
///
/// let app = Router::new().route(
///     "/whoami",
///     get(|Extension(id): Extension<CallerIdentity>| async move { id.to_string() }),
/// );
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
/// serve(listener, MtlsAcceptor::new(&config), app).await;
/// # Ok(()) }
/// ```
pub async fn serve<S, B>(listener: TcpListener, acceptor: MtlsAcceptor, service: S)
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    loop {
        // A handshake slot first: at the cap, connections wait in the
        // listener's backlog rather than as tasks here.
        let slot = acceptor.slot().await;
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, service) = (acceptor.clone(), service.clone());
        let span = tracing::debug_span!("mtls_connection", peer = %peer);
        tokio::spawn(
            async move {
                let Ok(stream) = acceptor.accept_in_slot(tcp, slot).await else {
                    return; // already logged with its kind
                };
                let identity = stream.identity().clone();
                let service = TowerToHyperService::new(AddIdentity::new(service, identity));
                if let Err(err) = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
}
