//! Accepting mTLS connections and learning who is on the other end.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::HandshakeKind;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;

use super::server::MtlsServerConfig;
use crate::error::{TlsError, TlsErrorKind};
use crate::identity::CallerIdentity;

/// Performs server handshakes that require a client certificate, and returns
/// the stream with the caller's verified [`CallerIdentity`].
///
/// Use it in any accept loop (hyper, axum, tonic), or let
/// `tls::serve` run the loop for you (feature `hyper`).
///
/// Two things it adds to rustls:
///
/// - **Resumed sessions are checked again.** A resumed TLS session skips the
///   certificate exchange; the client's chain comes from the session ticket.
///   Without a second look, a client certificate that expired (or was
///   revoked, or whose CA was removed) after the full handshake would stay
///   accepted for as long as the client kept resuming, since every resumed
///   handshake issues new tickets carrying the old certificate. The acceptor
///   verifies the chain again, against the current trust material and the
///   current time, on every resumed connection (one chain verification,
///   what a full handshake costs anyway, without the key exchange).
/// - **Handshakes in progress are capped** ([`with_max_concurrent_handshakes`](Self::with_max_concurrent_handshakes),
///   default 256): past the cap, `accept` waits for a slot, and the accept
///   loops (`serve`, `incoming`) stop taking connections from the listener,
///   so many slow handshakes cannot pile up tasks and memory without bound.
#[derive(Clone)]
pub struct MtlsAcceptor {
    tls: tokio_rustls::TlsAcceptor,
    config: MtlsServerConfig,
    handshake_timeout: Duration,
    slots: Arc<Semaphore>,
    max_handshakes: usize,
}

/// The default cap on handshakes in progress at once, per acceptor.
pub const DEFAULT_MAX_CONCURRENT_HANDSHAKES: usize = 256;

impl std::fmt::Debug for MtlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsAcceptor")
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_concurrent_handshakes", &self.max_handshakes)
            .finish_non_exhaustive()
    }
}

impl MtlsAcceptor {
    /// An acceptor using `config`, with a 10 s handshake timeout and at most
    /// [`DEFAULT_MAX_CONCURRENT_HANDSHAKES`] handshakes at once.
    pub fn new(config: &MtlsServerConfig) -> Self {
        Self {
            tls: tokio_rustls::TlsAcceptor::from(config.rustls_config()),
            config: config.clone(),
            handshake_timeout: Duration::from_secs(10),
            slots: Arc::new(Semaphore::new(DEFAULT_MAX_CONCURRENT_HANDSHAKES)),
            max_handshakes: DEFAULT_MAX_CONCURRENT_HANDSHAKES,
        }
    }

    /// Sets how long a client may take to finish its handshake.
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets how many handshakes may be in progress at once (at least 1),
    /// shared by every clone of this acceptor.
    #[must_use]
    pub fn with_max_concurrent_handshakes(mut self, max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        self.slots = Arc::new(Semaphore::new(max));
        self.max_handshakes = max;
        self
    }

    /// Waits for a handshake slot (the accept loops take one before they
    /// take the next connection from the listener).
    pub(crate) async fn slot(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed.
        self.slots
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the handshake semaphore is never closed"))
    }

    /// Runs the handshake on `io`, once a handshake slot is free. Every
    /// rejection is a typed [`TlsError`] and a `warn` event naming its kind.
    pub async fn accept<IO>(&self, io: IO) -> Result<MtlsStream<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let slot = self.slot().await;
        self.accept_in_slot(io, slot).await
    }

    pub(crate) async fn accept_in_slot<IO>(
        &self,
        io: IO,
        slot: OwnedSemaphorePermit,
    ) -> Result<MtlsStream<IO>, TlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let result = match tokio::time::timeout(self.handshake_timeout, self.tls.accept(io)).await {
            Ok(Ok(stream)) => self.identify(stream),
            Ok(Err(err)) => Err(TlsError::from_io(&err)),
            Err(_) => Err(TlsError::new(
                TlsErrorKind::Handshake,
                "client did not finish the handshake in time",
            )),
        };
        drop(slot);
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

    fn identify<IO>(&self, stream: TlsStream<IO>) -> Result<MtlsStream<IO>, TlsError> {
        let conn = stream.get_ref().1;
        let Some(chain) = conn.peer_certificates().filter(|c| !c.is_empty()) else {
            // Unreachable with our verifier (client certs are mandatory); kept typed.
            return Err(TlsError::new(
                TlsErrorKind::MissingClientCertificate,
                "client presented no certificate",
            ));
        };
        if !matches!(
            conn.handshake_kind(),
            Some(HandshakeKind::Full | HandshakeKind::FullWithHelloRetryRequest)
        ) {
            // Resumed: the chain comes from a ticket, checked at some earlier
            // time against the trust material of then.
            self.config.verify_client_chain(chain)?;
        }
        let identity = CallerIdentity::from_certificate(&chain[0])?;
        Ok(MtlsStream { stream, identity })
    }
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
