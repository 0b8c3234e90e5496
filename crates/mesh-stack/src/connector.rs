//! [`MeshConnector`]: how the ready-made hyper and gRPC clients reach an
//! endpoint, over plain TCP or over mTLS with the `[tls]` section.
//!
//! # Why the scheme does not decide
//!
//! Requests through the mesh address a service by name (`http://users/..`)
//! and the router writes the picked endpoint's address into them. Whether
//! the connection is encrypted is a property of the *service* (does the mesh
//! have a certificate for it, which identity must it prove), not of the URL
//! a caller typed: a service that needs mTLS must never be reached in clear
//! because someone wrote `http://`. So a connector built for a service with
//! TLS ([`Mesh::hyper_client`](crate::Mesh::hyper_client) and
//! [`Mesh::grpc_channel`](crate::Mesh::grpc_channel) when `[tls]` or
//! `[connect]` is set) runs the mTLS handshake on every connection, whatever
//! the request's scheme (`http://` and `https://` both work), and a plain
//! one ([`MeshConnector::plain`]) never does (`https://` is refused, as
//! hyper-util's `HttpConnector` refuses it).
//!
//! # Which identity each endpoint proves
//!
//! The server's certificate must carry the identity `[tls.server_identities]`
//! names for the service, or, with `[tls] identity_metadata = "spiffe_id"`,
//! the identity that endpoint's discovery metadata carries (Consul's
//! `ServiceMeta`, or a static endpoint's `metadata`). The metadata is read
//! when a connection is opened, from the service's current endpoint set: an
//! endpoint without the key is refused ([`MissingServerIdentity`]) before a
//! TCP connection is made, and one proving another identity fails its
//! handshake with a [`TlsError`] of kind
//! [`WrongIdentity`](mesh_auth::TlsErrorKind::WrongIdentity) (find it in the
//! error chain with [`TlsError::find`]). Pooled connections were checked
//! when they were opened.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http::Uri;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use mesh_auth::TlsError;
use mesh_auth::tls::MtlsClientConfig;
use mesh_core::{Address, BoxError};
use mesh_discovery::Discovery;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tower_service::Service;

/// A connection of [`MeshConnector`]: plain TCP, or TLS over TCP.
pub type MeshStream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// At most this many identities found in metadata keep a client config each;
/// past it the cache starts over (metadata is not ours to bound).
const MAX_CACHED_IDENTITIES: usize = 1024;

/// The connector of the ready-made hyper clients: TCP with `TCP_NODELAY`,
/// and for a service with TLS the mTLS handshake, presenting `[tls]`'s
/// certificate and checking the endpoint's identity. See the
/// [module docs](self).
#[derive(Clone)]
pub struct MeshConnector {
    http: HttpConnector,
    tls: Option<Arc<TlsConnect>>,
}

impl MeshConnector {
    /// Plain TCP, as [`inner::connector`](crate::inner::connector).
    pub fn plain() -> Self {
        Self {
            http: crate::inner::connector(),
            tls: None,
        }
    }

    /// mTLS to every endpoint with `config` (its expected server identity,
    /// or its host-name check), whatever the request's scheme. `alpn`: the
    /// protocols to offer (`[b"h2"]` for gRPC, `[b"http/1.1"]` for HTTP/1.1;
    /// when the server picks `h2`, hyper-util's client speaks HTTP/2).
    pub fn tls(service: &str, config: &MtlsClientConfig, alpn: &[&[u8]]) -> Self {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = with_alpn(config, &alpn);
        Self::with_identities(service, Identities::Fixed(connector), alpn)
    }

    /// mTLS to every endpoint of `discovery`, each checked against the
    /// identity in its metadata under `key`; `config` builds the client
    /// config expecting an identity.
    pub(crate) fn tls_from_metadata(
        service: &str,
        discovery: Discovery,
        key: String,
        config: impl Fn(&str) -> Result<MtlsClientConfig, TlsError> + Send + Sync + 'static,
        alpn: &[&[u8]],
    ) -> Self {
        let alpn = alpn.iter().map(|p| p.to_vec()).collect();
        Self::with_identities(
            service,
            Identities::Metadata {
                discovery,
                key,
                config: Box::new(config),
                cache: Mutex::new(HashMap::new()),
            },
            alpn,
        )
    }

    fn with_identities(service: &str, identities: Identities, alpn: Vec<Vec<u8>>) -> Self {
        let mut http = crate::inner::connector();
        // The handshake makes it secure, not the URL: accept both schemes.
        http.enforce_http(false);
        Self {
            http,
            tls: Some(Arc::new(TlsConnect {
                service: service.into(),
                identities,
                alpn,
            })),
        }
    }

    /// Whether connections run the mTLS handshake.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

impl fmt::Debug for MeshConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.tls.as_deref().map(|t| &t.identities) {
            None => "plain",
            Some(Identities::Fixed(_)) => "mtls",
            Some(Identities::Metadata { .. }) => "mtls (identity from metadata)",
        };
        f.debug_struct("MeshConnector")
            .field("mode", &mode)
            .finish_non_exhaustive()
    }
}

fn with_alpn(config: &MtlsClientConfig, alpn: &[Vec<u8>]) -> TlsConnector {
    // The clone shares the verifier and the certificate resolver, so it
    // rotates with the files as the original does.
    let mut rustls = config.rustls_config().as_ref().clone();
    rustls.alpn_protocols = alpn.to_vec();
    TlsConnector::from(Arc::new(rustls))
}

struct TlsConnect {
    service: Arc<str>,
    identities: Identities,
    alpn: Vec<Vec<u8>>,
}

type BuildConfig = Box<dyn Fn(&str) -> Result<MtlsClientConfig, TlsError> + Send + Sync>;

enum Identities {
    /// One expectation for every endpoint.
    Fixed(TlsConnector),
    /// Each endpoint's own, from its metadata.
    Metadata {
        discovery: Discovery,
        key: String,
        config: BuildConfig,
        cache: Mutex<HashMap<String, TlsConnector>>,
    },
}

impl TlsConnect {
    /// The connector checking the identity the endpoint at `uri` must prove.
    fn connector_for(&self, uri: &Uri) -> Result<TlsConnector, BoxError> {
        let (discovery, key, config, cache) = match &self.identities {
            Identities::Fixed(c) => return Ok(c.clone()),
            Identities::Metadata {
                discovery,
                key,
                config,
                cache,
            } => (discovery, key, config, cache),
        };
        let missing = || MissingServerIdentity {
            service: self.service.clone(),
            endpoint: uri.authority().map(ToString::to_string).unwrap_or_default(),
            key: key.clone(),
        };
        let address = endpoint_address(uri).ok_or_else(missing)?;
        let endpoints = discovery.current();
        let identity = endpoints
            .iter()
            .find(|e| *e.address() == address)
            .and_then(|e| e.metadata().get(key.as_str()))
            .filter(|id| !id.trim().is_empty())
            .ok_or_else(missing)?;
        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.get(identity.as_str()) {
            return Ok(c.clone());
        }
        let connector = with_alpn(&config(identity)?, &self.alpn);
        if cache.len() >= MAX_CACHED_IDENTITIES {
            cache.clear();
        }
        cache.insert(identity.clone(), connector.clone());
        Ok(connector)
    }
}

/// The endpoint address a rewritten request's URI names.
fn endpoint_address(uri: &Uri) -> Option<Address> {
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    Address::host(host, port).ok()
}

/// The name the handshake is made for: the IP or host name dialled (checked
/// only when no identity is expected).
fn server_name(uri: &Uri) -> Result<ServerName<'static>, BoxError> {
    let host = uri
        .host()
        .ok_or_else(|| BoxError::from("the request's URI has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(ServerName::try_from(host.to_owned())?)
}

impl Service<Uri> for MeshConnector {
    type Response = MeshStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<MeshStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let Some(tls) = &self.tls else {
            let connecting = self.http.call(uri);
            return Box::pin(async move { Ok(MaybeHttpsStream::Http(connecting.await?)) });
        };
        // Which identity to expect is known before dialling: an endpoint
        // that cannot be checked is not connected to at all.
        let tls = tls
            .connector_for(&uri)
            .and_then(|c| Ok((c, server_name(&uri)?)));
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let (connector, name) = tls?;
            let tcp = connecting.await?;
            let stream = connector
                .connect(name, TokioIo::new(tcp))
                .await
                .map_err(|e| TlsError::from_io(&e))?;
            Ok(MaybeHttpsStream::Https(TokioIo::new(stream)))
        })
    }
}

/// An endpoint of a service whose identity comes from discovery metadata
/// (`[tls] identity_metadata`) carries no identity under that key: the
/// mesh does not connect to it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "endpoint {endpoint} of {service:?} carries no {key:?} metadata, so its identity cannot be \
     checked: not connecting"
)]
pub struct MissingServerIdentity {
    service: Arc<str>,
    endpoint: String,
    key: String,
}

impl MissingServerIdentity {
    /// The service.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The endpoint's address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_addresses_and_server_names_come_from_the_rewritten_uri() {
        let uri: Uri = "http://10.0.0.1:8080/x".parse().unwrap();
        assert_eq!(
            endpoint_address(&uri),
            Some("10.0.0.1:8080".parse().unwrap())
        );
        assert!(server_name(&uri).is_ok());
        let v6: Uri = "https://[::1]:9443/x".parse().unwrap();
        assert_eq!(endpoint_address(&v6), Some("[::1]:9443".parse().unwrap()));
        assert!(matches!(
            server_name(&v6).unwrap(),
            ServerName::IpAddress(_)
        ));
        let host: Uri = "http://users.internal/x".parse().unwrap();
        assert_eq!(
            endpoint_address(&host),
            Some(Address::host("users.internal", 80).unwrap())
        );
        // No host: an error, never a panic.
        let relative: Uri = "/x".parse().unwrap();
        assert_eq!(endpoint_address(&relative), None);
        assert!(server_name(&relative).is_err());
    }
}
