//! Mutual TLS between services, with SPIFFE-style identities.
//!
//! In a mesh every call crosses the network, often one nobody fully controls,
//! so both ends should prove who they are. Mutual TLS does that with
//! certificates: the server requires a client certificate from a CA it trusts
//! and learns the caller's identity from it (its `spiffe://trust-domain/...`
//! URI SAN, or its DNS SAN); the client checks that the server is the service
//! it meant to call, not merely *a* holder of a certificate for that host.
//!
//! Certificates in a mesh are short-lived, so both sides re-read their PEM
//! files when they change: at most once per `reload_interval`, a handshake
//! `stat`s the files and, if one changed, rebuilds the material behind an
//! `ArcSwap`. Connections already open keep their session; new ones use the
//! new certificate. No restart.
//!
//! - Server: [`ServerTlsConfig`] -> [`MtlsServerConfig`] -> [`MtlsAcceptor`]
//!   yields [`MtlsStream`]s with the caller's identity; [`AddIdentityLayer`]
//!   puts it into each request; `serve` (feature `hyper`) runs the whole
//!   accept loop for an axum or hyper service.
//! - Client: [`ClientTlsConfig`] -> [`MtlsClientConfig`], with
//!   `https_connector()` for hyper-util and tonic (feature `hyper`) and
//!   `reqwest_builder()` (feature `reqwest`).
//! - tonic: `MtlsAcceptor::incoming` (feature `tonic`) feeds
//!   `Server::serve_with_incoming`, with the identity in each request's
//!   extensions; tonic clients take `https_connector()` through
//!   `Endpoint::connect_with_connector`.
//!
//! Every rejection (unknown CA, expired or not-yet-valid certificate, wrong
//! identity, missing client certificate, malformed PEM) is a typed
//! [`TlsError`](crate::TlsError) and a `warn` event, never a panic.
//!
//! The crypto provider is rustls' `ring`, passed explicitly: mesh never
//! depends on a process-wide default provider.
//!
//! # Example
//!
//! ```no_run
//! use mesh_auth::tls::{ClientTlsConfig, PemSource, ServerTlsConfig, MtlsAcceptor};
//!
//! # fn main() -> Result<(), mesh_auth::TlsError> {
//! let server = ServerTlsConfig::new(
//!     PemSource::file("/etc/mesh/ca.pem"),
//!     PemSource::file("/etc/mesh/tls.crt"),
//!     PemSource::file("/etc/mesh/tls.key"),
//! )
//! .build()?;
//! let acceptor = MtlsAcceptor::new(&server);
//!
//! let client = ClientTlsConfig::new(PemSource::file("/etc/mesh/ca.pem"))
//!     .with_client_cert(
//!         PemSource::file("/etc/mesh/tls.crt"),
//!         PemSource::file("/etc/mesh/tls.key"),
//!     )
//!     .with_server_identity("spiffe://example.org/users")
//!     .build()?;
//! let connector = client.connector(); // or https_connector(), reqwest_builder()
//! # let _ = (acceptor, connector);
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

mod acceptor;
mod client;
#[cfg(any(feature = "hyper", feature = "reqwest"))]
mod connect;
mod extension;
#[cfg(feature = "tonic")]
mod incoming;
mod pem;
mod reload;
#[cfg(feature = "hyper")]
mod serve;
mod server;
mod sessions;

pub use acceptor::{DEFAULT_MAX_CONCURRENT_HANDSHAKES, MtlsAcceptor, MtlsStream};
pub use client::{ClientTlsConfig, IdentitySet, MtlsClientConfig};
pub use extension::{AddIdentity, AddIdentityLayer};
#[cfg(feature = "tonic")]
pub use incoming::MtlsIncoming;
pub use pem::{PemCell, PemSource};
#[cfg(feature = "hyper")]
pub use serve::serve;
pub use server::{MtlsServerConfig, ServerTlsConfig};

const MAX_RELOAD_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
