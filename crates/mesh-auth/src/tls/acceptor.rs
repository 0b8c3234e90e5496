//! Accepting mTLS connections and learning who is on the other end.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

use super::server::MtlsServerConfig;
use crate::error::{TlsError, TlsErrorKind};
use crate::identity::CallerIdentity;

/// Performs server handshakes that require a client certificate, and returns
/// the stream with the caller's verified [`CallerIdentity`].
///
/// Use it in any accept loop (hyper, axum, tonic), or let
/// `tls::serve` run the loop for you (feature `hyper`).
#[derive(Clone)]
pub struct MtlsAcceptor {
    tls: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for MtlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsAcceptor")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl MtlsAcceptor {
    /// An acceptor using `config`, with a 10 s handshake timeout.
    pub fn new(config: &MtlsServerConfig) -> Self {
        Self {
            tls: tokio_rustls::TlsAcceptor::from(config.rustls_config()),
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// Sets how long a client may take to finish its handshake.
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Runs the handshake on `io`. Every rejection is a typed [`TlsError`]
    /// and a `warn` event naming its kind.
    pub async fn accept<IO>(&self, io: IO) -> Result<MtlsStream<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let result = match tokio::time::timeout(self.handshake_timeout, self.tls.accept(io)).await {
            Ok(Ok(stream)) => identify(stream),
            Ok(Err(err)) => Err(TlsError::from_io(&err)),
            Err(_) => Err(TlsError::new(
                TlsErrorKind::Handshake,
                "client did not finish the handshake in time",
            )),
        };
        match &result {
            Ok(s) => tracing::debug!(identity = %s.identity, "mTLS client accepted"),
            Err(err) => {
                tracing::warn!(kind = %err.kind(), error = %err, "mTLS handshake rejected");
                #[cfg(feature = "metrics")]
                metrics::counter!("mesh_auth_tls_rejected_total", "side" => "server", "kind" => err.kind().as_str())
                    .increment(1);
            }
        }
        result
    }
}

fn identify<IO>(stream: TlsStream<IO>) -> Result<MtlsStream<IO>, TlsError> {
    let identity = match stream.get_ref().1.peer_certificates() {
        Some([leaf, ..]) => CallerIdentity::from_certificate(leaf)?,
        // Unreachable with our verifier (client certs are mandatory); kept typed.
        _ => {
            return Err(TlsError::new(
                TlsErrorKind::MissingClientCertificate,
                "client presented no certificate",
            ));
        }
    };
    Ok(MtlsStream { stream, identity })
}

/// A server-side TLS stream with the client's verified identity.
#[derive(Debug)]
pub struct MtlsStream<IO> {
    stream: TlsStream<IO>,
    identity: CallerIdentity,
}

impl<IO> MtlsStream<IO> {
    /// The client's verified identity.
    pub fn identity(&self) -> &CallerIdentity {
        &self.identity
    }

    /// The TLS stream.
    pub fn get_ref(&self) -> &TlsStream<IO> {
        &self.stream
    }

    /// The TLS stream and the identity.
    pub fn into_parts(self) -> (TlsStream<IO>, CallerIdentity) {
        (self.stream, self.identity)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for MtlsStream<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MtlsStream<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
