//! The client side of mTLS: present a certificate, and check the server's
//! identity, not only its host name.

use std::sync::Arc;
use std::time::Duration;

use mesh_core::config::InvalidConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::pem::PemSource;
use super::reload::Reloading;
use super::sessions::ClientSessions;
use super::{MAX_RELOAD_INTERVAL, default_reload_interval, provider};
use crate::error::{TlsError, TlsErrorKind, WrongIdentity};
use crate::identity::CallerIdentity;

/// Where the client's trusted CAs, certificate and key come from, and which
/// service it expects to reach.
///
/// With the `serde` feature:
///
/// ```json
/// { "ca": { "file": "/etc/mesh/ca.pem" },
///   "cert": { "file": "/etc/mesh/tls.crt" },
///   "key": { "file": "/etc/mesh/tls.key" },
///   "server_identity": "spiffe://example.org/users",
///   "verify_hostname": true,
///   "reload_interval": "30s" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[non_exhaustive]
pub struct ClientTlsConfig {
    /// The CA bundle the server's certificate must chain to.
    pub ca: PemSource,
    /// The client's certificate chain, leaf first (with `key`).
    #[cfg_attr(feature = "serde", serde(default))]
    pub cert: Option<PemSource>,
    /// The client's private key (with `cert`).
    #[cfg_attr(feature = "serde", serde(default))]
    pub key: Option<PemSource>,
    /// The identity the server's certificate must carry (its `spiffe://` URI
    /// SAN, or DNS SAN when it has no URI SAN). `None` checks only the chain
    /// and the host name.
    #[cfg_attr(feature = "serde", serde(default))]
    pub server_identity: Option<String>,
    /// Identities the server may carry, replaced at run time (by a
    /// discovery source that knows which identity each service proves,
    /// such as Consul Connect's). Checked like `server_identity`, and with
    /// it when both are set. Not part of a config file.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub server_identity_set: Option<IdentitySet>,
    /// Whether the certificate must also match the host name dialled.
    /// Turning it off requires `server_identity`: endpoints found by discovery
    /// are often bare IPs that no certificate names. Default true.
    #[cfg_attr(feature = "serde", serde(default = "yes"))]
    pub verify_hostname: bool,
    /// How often a handshake may check the files for changes (0 to 1 day).
    /// Default 10s.
    #[cfg_attr(
        feature = "serde",
        serde(with = "humantime_serde", default = "default_reload_interval")
    )]
    pub reload_interval: Duration,
}

#[cfg(feature = "serde")]
fn yes() -> bool {
    true
}

impl ClientTlsConfig {
    /// A config trusting the CAs in `ca`, presenting no client certificate.
    pub fn new(ca: PemSource) -> Self {
        Self {
            ca,
            cert: None,
            key: None,
            server_identity: None,
            server_identity_set: None,
            verify_hostname: true,
            reload_interval: default_reload_interval(),
        }
    }

    /// Presents this certificate chain and key to servers.
    #[must_use]
    pub fn with_client_cert(mut self, cert: PemSource, key: PemSource) -> Self {
        self.cert = Some(cert);
        self.key = Some(key);
        self
    }

    /// Requires the server to carry this identity (`spiffe://...` or a DNS name).
    #[must_use]
    pub fn with_server_identity(mut self, identity: impl Into<String>) -> Self {
        self.server_identity = Some(identity.into());
        self
    }

    /// Requires the server to carry one of the identities in `set`, as the
    /// set is when the handshake runs.
    #[must_use]
    pub fn with_server_identity_set(mut self, set: IdentitySet) -> Self {
        self.server_identity_set = Some(set);
        self
    }

    /// Checks the server's identity only, not the host name dialled (for
    /// endpoints addressed by IP). Requires a server identity.
    #[must_use]
    pub fn without_hostname_verification(mut self) -> Self {
        self.verify_hostname = false;
        self
    }

    /// Sets how often handshakes check the files for changes.
    #[must_use]
    pub fn with_reload_interval(mut self, interval: Duration) -> Self {
        self.reload_interval = interval;
        self
    }

    /// Checks every field; the error names each bad one.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        if self.cert.is_some() != self.key.is_some() {
            let missing = if self.cert.is_none() { "cert" } else { "key" };
            errors.push(missing, "must be set together with `cert`/`key`");
        }
        if matches!(&self.server_identity, Some(id) if id.trim().is_empty()) {
            errors.push("server_identity", "must not be empty when set");
        }
        if !self.verify_hostname
            && self.server_identity.is_none()
            && self.server_identity_set.is_none()
        {
            errors.push(
                "verify_hostname",
                "may only be false when `server_identity` is set",
            );
        }
        if self.reload_interval > MAX_RELOAD_INTERVAL {
            errors.push(
                "reload_interval",
                format!("must be at most 1 day (got {:?})", self.reload_interval),
            );
        }
        errors.into_result()
    }

    /// Loads the files and builds the rustls client config.
    pub fn build(&self) -> Result<MtlsClientConfig, TlsError> {
        self.validate()
            .map_err(|e| TlsError::new(TlsErrorKind::Config, e.to_string()))?;
        let provider = provider();
        let files = [Some(&self.ca), self.cert.as_ref(), self.key.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.path().map(ToOwned::to_owned))
            .collect();
        let cells = [Some(&self.ca), self.cert.as_ref(), self.key.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|s| s.cell().cloned())
            .collect();
        let (ca, pair, p) = (
            self.ca.clone(),
            self.cert.clone().zip(self.key.clone()),
            provider.clone(),
        );
        let sessions = Arc::new(ClientSessions::new());
        let forget = sessions.clone();
        let material = Arc::new(Reloading::new(
            "client",
            files,
            cells,
            self.reload_interval,
            Box::new(move || ClientMaterial::load(&ca, pair.as_ref(), &p)),
            // Resumed sessions skip the certificates: forget them on rotation.
            Box::new(move || forget.clear()),
        )?);
        let weak = Arc::downgrade(&material);
        sessions.set_check(Box::new(move || {
            if let Some(material) = weak.upgrade() {
                material.check();
            }
        }));
        let verifier = Arc::new(IdentityVerifier {
            material: material.clone(),
            expected: self.server_identity.as_deref().map(Arc::from),
            expected_set: self.server_identity_set.clone(),
            verify_hostname: self.verify_hostname,
            provider: provider.clone(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::new(TlsErrorKind::Config, e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(ReloadingClientCert {
                material: material.clone(),
            }));
        config.resumption = rustls::client::Resumption::store(sessions);
        Ok(MtlsClientConfig {
            rustls: Arc::new(config),
            material,
        })
    }
}

/// A set of server identities replaced at run time: the identities a
/// client accepts for one service, kept by whoever knows them (Consul
/// Connect's discovery, which learns the trust domain and datacenter).
///
/// Clones share the set; a handshake reads it as it is then (one `ArcSwap`
/// load). An empty set accepts no server.
///
/// ```
/// use mesh_auth::tls::IdentitySet;
///
/// let set = IdentitySet::new(["spiffe://td/ns/default/dc/dc1/svc/users"]);
/// assert!(set.contains("spiffe://td/ns/default/dc/dc1/svc/users"));
/// set.set(["spiffe://td2/ns/default/dc/dc1/svc/users"]);
/// assert!(!set.contains("spiffe://td/ns/default/dc/dc1/svc/users"));
/// ```
#[derive(Clone, Default)]
pub struct IdentitySet {
    ids: Arc<arc_swap::ArcSwap<Vec<Arc<str>>>>,
}

impl IdentitySet {
    /// A set holding `ids`.
    pub fn new<I: IntoIterator<Item = S>, S: Into<Arc<str>>>(ids: I) -> Self {
        let set = Self::default();
        set.set(ids);
        set
    }

    /// Replaces the identities.
    pub fn set<I: IntoIterator<Item = S>, S: Into<Arc<str>>>(&self, ids: I) {
        self.ids
            .store(Arc::new(ids.into_iter().map(Into::into).collect()));
    }

    /// Whether `id` is in the set now.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.load().iter().any(|i| &**i == id)
    }

    /// The identities now.
    pub fn to_vec(&self) -> Vec<String> {
        self.ids.load().iter().map(ToString::to_string).collect()
    }
}

impl PartialEq for IdentitySet {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ids, &other.ids)
    }
}

impl Eq for IdentitySet {}

impl std::fmt::Debug for IdentitySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.ids.load().iter()).finish()
    }
}

/// A built client config whose certificate and CAs follow their files.
///
/// Cheap to clone; clones of [`rustls_config`](Self::rustls_config) (such as
/// the ones hyper-rustls and reqwest keep) rotate too, because the verifier and
/// the certificate resolver read the current material on every handshake.
#[derive(Debug, Clone)]
pub struct MtlsClientConfig {
    rustls: Arc<rustls::ClientConfig>,
    material: Arc<Reloading<ClientMaterial>>,
}

impl MtlsClientConfig {
    /// The rustls client config (no ALPN set: hyper-rustls and reqwest add theirs).
    pub fn rustls_config(&self) -> Arc<rustls::ClientConfig> {
        self.rustls.clone()
    }

    /// A tokio-rustls connector for hand-made clients.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.rustls.clone())
    }

    /// Re-reads the files now if they changed (handshakes also do this, at
    /// most once per reload interval). `Ok(true)` when new material is in use.
    pub fn reload_now(&self) -> Result<bool, TlsError> {
        self.material.reload_if_changed()
    }
}

struct ClientMaterial {
    verifier: Arc<WebPkiServerVerifier>,
    key: Option<Arc<CertifiedKey>>,
}

impl ClientMaterial {
    fn load(
        ca: &PemSource,
        pair: Option<&(PemSource, PemSource)>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in ca.load_certificates()? {
            roots
                .add(c)
                .map_err(|e| TlsError::new(TlsErrorKind::Config, format!("CA: {e}")))?;
        }
        let crls = ca.load_crls()?;
        let mut builder =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if !crls.is_empty() {
            builder = builder.with_crls(crls).allow_unknown_revocation_status();
        }
        let verifier = builder
            .build()
            .map_err(|e| TlsError::new(TlsErrorKind::Config, format!("CA: {e}")))?;
        let key = match pair {
            Some((cert, key)) => Some(Arc::new(
                CertifiedKey::from_der(
                    cert.load_certificates()?,
                    key.load_private_key()?,
                    provider,
                )
                .map_err(|e| TlsError::new(TlsErrorKind::Config, format!("client key: {e}")))?,
            )),
            None => None,
        };
        Ok(Self { verifier, key })
    }
}

#[derive(Debug)]
struct ReloadingClientCert {
    material: Arc<Reloading<ClientMaterial>>,
}

impl ResolvesClientCert for ReloadingClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.material.current().key.clone()
    }

    fn has_certs(&self) -> bool {
        self.material.current().key.is_some()
    }
}

#[derive(Debug)]
struct IdentityVerifier {
    material: Arc<Reloading<ClientMaterial>>,
    expected: Option<Arc<str>>,
    expected_set: Option<IdentitySet>,
    verify_hostname: bool,
    provider: Arc<CryptoProvider>,
}

impl IdentityVerifier {
    fn reject(&self, err: rustls::Error, server: &ServerName<'_>) -> rustls::Error {
        let kind = TlsError::from_rustls(&err).kind();
        tracing::warn!(server = ?server, kind = %kind, error = %err, "server certificate rejected");
        #[cfg(feature = "metrics")]
        metrics::counter!("mesh_auth_tls_rejected_total", "side" => "client", "kind" => kind.as_str())
            .increment(1);
        err
    }
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The first callback of a client handshake: the place to notice new files.
        self.material.check();
        let material = self.material.current();
        match material.verifier.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_) => {}
            // webpki checks the chain before the name: this error means the
            // chain is good, and the identity check below decides.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.verify_hostname => {}
            Err(err) => return Err(self.reject(err, server_name)),
        }
        if let Some(expected) = &self.expected {
            let presented = CallerIdentity::from_certificate(end_entity).ok();
            if presented.as_ref().map(CallerIdentity::as_str) != Some(&**expected) {
                let wrong =
                    WrongIdentity::new(expected.clone(), presented.map(|p| Arc::from(p.as_str())));
                let err = rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(wrong)),
                ));
                return Err(self.reject(err, server_name));
            }
        }
        if let Some(set) = &self.expected_set {
            let presented = CallerIdentity::from_certificate(end_entity).ok();
            if !presented.as_ref().is_some_and(|p| set.contains(p.as_str())) {
                let expected: Arc<str> = set.to_vec().join(" | ").into();
                let wrong = WrongIdentity::new(expected, presented.map(|p| Arc::from(p.as_str())));
                let err = rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(wrong)),
                ));
                return Err(self.reject(err, server_name));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_each_bad_field() {
        let mut c = ClientTlsConfig::new(PemSource::pem("x"));
        c.cert = Some(PemSource::pem("y"));
        c.verify_hostname = false;
        c.reload_interval = Duration::from_secs(200_000);
        let err = c.validate().unwrap_err();
        let paths: Vec<_> = err.errors().iter().map(|e| e.path().to_owned()).collect();
        assert_eq!(paths, ["key", "verify_hostname", "reload_interval"]);
    }
}
