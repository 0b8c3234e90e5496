//! A stream of accepted mTLS connections for tonic (feature `tonic`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::acceptor::{MtlsAcceptor, MtlsStream};
use crate::identity::CallerIdentity;

/// tonic puts this into every request's extensions: the caller's identity.
impl<IO> tonic::transport::server::Connected for MtlsStream<IO> {
    type ConnectInfo = CallerIdentity;

    fn connect_info(&self) -> CallerIdentity {
        self.identity().clone()
    }
}

impl MtlsAcceptor {
    /// Accepts connections on `listener` and yields those whose mTLS
    /// handshake succeeded, for tonic's `Server::serve_with_incoming`. Every
    /// request then carries the caller's [`CallerIdentity`] in its extensions.
    ///
    /// Handshakes run concurrently on their own tasks, so a slow client never
    /// holds up the others; rejected ones are logged and dropped. Dropping the
    /// stream stops accepting.
    ///
    /// ```no_run
    /// # async fn run<S>(config: mesh_auth::tls::MtlsServerConfig, svc: S)
    /// # where
    /// #     S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
    /// #         + Clone + Send + 'static,
    /// #     S::Future: Send,
    /// #     S::Error: Into<mesh_core::BoxError> + Send + 'static,
    /// # {
    /// use mesh_auth::tls::MtlsAcceptor;
    ///
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await.unwrap();
    /// tonic::transport::Server::builder()
    ///     .serve_with_incoming(svc, MtlsAcceptor::new(&config).incoming(listener)) // e.g. your tonic Routes
    ///     .await
    ///     .unwrap();
    /// # }
    /// ```
    pub fn incoming(self, listener: TcpListener) -> MtlsIncoming {
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                // At the handshake cap, connections wait in the listener's backlog.
                let slot = self.slot().await;
                let tcp = match listener.accept().await {
                    Ok((tcp, _)) => tcp,
                    Err(err) => {
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (self.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept_in_slot(tcp, slot).await {
                        let _ = tx.send(stream).await;
                    }
                });
            }
        });
        MtlsIncoming { rx, task }
    }
}

/// The stream [`MtlsAcceptor::incoming`] returns.
#[derive(Debug)]
pub struct MtlsIncoming {
    rx: mpsc::Receiver<MtlsStream<TcpStream>>,
    task: JoinHandle<()>,
}

impl Stream for MtlsIncoming {
    type Item = Result<MtlsStream<TcpStream>, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|s| s.map(Ok))
    }
}

impl Drop for MtlsIncoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}
