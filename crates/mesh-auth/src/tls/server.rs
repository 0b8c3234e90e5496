//! The server side of mTLS: require a client certificate from the configured CA.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use mesh_core::config::InvalidConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::pem::PemSource;
use super::reload::Reloading;
use super::sessions::ServerSessions;
use super::{MAX_RELOAD_INTERVAL, default_reload_interval, provider};
use crate::error::{TlsError, TlsErrorKind};
use crate::identity::{CallerIdentity, parse_spiffe_id};

/// Where the server's certificate, key and trusted client CAs come from.
///
/// Clients must present a certificate that chains to `client_ca`; files are
/// re-read when they change (checked at most every `reload_interval`).
///
/// # Trust domains and federation
///
/// A CA bundle says which CAs to trust, not *for what*: any CA in one
/// bundle can issue a certificate for any identity. With
/// [`trust_bundles`](Self::trust_bundles) set, a SPIFFE certificate
/// (`spiffe://td/...`) is checked against the bundle of its own trust domain
/// `td` only, as SPIFFE federation does, and a trust domain without a bundle
/// is refused; `client_ca` then covers only certificates without a URI SAN
/// (DNS identities). Put your own domain's CA and each federated partner's
/// under their domain names, never in one shared file.
///
/// # Revocation
///
/// `X509 CRL` sections in a CA file (`client_ca` or a trust bundle) are
/// honoured: a certificate one of them revokes is refused with
/// [`TlsErrorKind::Revoked`]. They reload with the file. A certificate
/// whose issuer has no CRL in the file is not checked for revocation.
///
/// With the `serde` feature:
///
/// ```json
/// { "client_ca": { "file": "/etc/mesh/ca.pem" },
///   "trust_bundles": { "example.org": { "file": "/etc/mesh/ca.pem" },
///                      "partner.example": { "file": "/etc/mesh/partner-ca.pem" } },
///   "cert": { "file": "/etc/mesh/tls.crt" },
///   "key": { "file": "/etc/mesh/tls.key" },
///   "reload_interval": "30s" }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[non_exhaustive]
pub struct ServerTlsConfig {
    /// The CA bundle client certificates must chain to.
    pub client_ca: PemSource,
    /// The server's certificate chain, leaf first.
    pub cert: PemSource,
    /// The server's private key.
    pub key: PemSource,
    /// One CA bundle per SPIFFE trust domain (`"example.org"`). When not
    /// empty, a SPIFFE certificate must chain to its own domain's bundle.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "BTreeMap::is_empty")
    )]
    pub trust_bundles: BTreeMap<String, PemSource>,
    /// How often a handshake may check the files for changes (0 to 1 day;
    /// 0 checks on every handshake). Default 10s.
    #[cfg_attr(
        feature = "serde",
        serde(with = "humantime_serde", default = "default_reload_interval")
    )]
    pub reload_interval: Duration,
}

impl ServerTlsConfig {
    /// A config from the client CA bundle and the server's certificate and key.
    pub fn new(client_ca: PemSource, cert: PemSource, key: PemSource) -> Self {
        Self {
            client_ca,
            cert,
            key,
            trust_bundles: BTreeMap::new(),
            reload_interval: default_reload_interval(),
        }
    }

    /// Checks SPIFFE certificates of `trust_domain` against `bundle` only
    /// (and those of every other domain against their own bundles).
    #[must_use]
    pub fn with_trust_bundle(mut self, trust_domain: impl Into<String>, bundle: PemSource) -> Self {
        self.trust_bundles.insert(trust_domain.into(), bundle);
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
        for domain in self.trust_bundles.keys() {
            if parse_spiffe_id(&format!("spiffe://{domain}")) != Ok(domain.as_str()) {
                errors.push(
                    format!("trust_bundles.{domain}"),
                    "is not a SPIFFE trust domain (a-z, 0-9, `.`, `-`, `_`)",
                );
            }
        }
        if self.reload_interval > MAX_RELOAD_INTERVAL {
            errors.push(
                "reload_interval",
                format!("must be at most 1 day (got {:?})", self.reload_interval),
            );
        }
        errors.into_result()
    }

    /// Loads the files and builds the rustls server config.
    ///
    /// Fails with [`TlsErrorKind::MalformedPem`] or [`TlsErrorKind::Io`] when a
    /// file is bad, [`TlsErrorKind::Config`] when the key does not match.
    pub fn build(&self) -> Result<MtlsServerConfig, TlsError> {
        self.validate()
            .map_err(|e| TlsError::new(TlsErrorKind::Config, e.to_string()))?;
        let provider = provider();
        let files = [&self.client_ca, &self.cert, &self.key]
            .into_iter()
            .chain(self.trust_bundles.values())
            .filter_map(|s| s.path().map(ToOwned::to_owned))
            .collect();
        let cells = [&self.client_ca, &self.cert, &self.key]
            .into_iter()
            .chain(self.trust_bundles.values())
            .filter_map(|s| s.cell().cloned())
            .collect();
        let (ca, cert, key, bundles, p) = (
            self.client_ca.clone(),
            self.cert.clone(),
            self.key.clone(),
            self.trust_bundles.clone(),
            provider.clone(),
        );
        let sessions = Arc::new(ServerSessions::new());
        let forget = sessions.clone();
        let material = Arc::new(Reloading::new(
            "server",
            files,
            cells,
            self.reload_interval,
            Box::new(move || ServerMaterial::load(&ca, &bundles, &cert, &key, &p)),
            // Resumed sessions skip the certificates: forget them on rotation.
            Box::new(move || forget.clear()),
        )?);
        let verifier = Arc::new(ReloadingClientVerifier {
            material: material.clone(),
            provider: provider.clone(),
        });
        let resolver = Arc::new(ReloadingServerCert {
            material: material.clone(),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::new(TlsErrorKind::Config, e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver);
        config.session_storage = sessions;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(MtlsServerConfig {
            rustls: Arc::new(config),
            material,
        })
    }
}

/// A built server config whose certificate and client CAs follow their files.
///
/// Cheap to clone. Hand [`rustls_config`](Self::rustls_config) to any rustls
/// server, or use [`MtlsAcceptor`](super::MtlsAcceptor).
#[derive(Debug, Clone)]
pub struct MtlsServerConfig {
    rustls: Arc<rustls::ServerConfig>,
    material: Arc<Reloading<ServerMaterial>>,
}

impl MtlsServerConfig {
    /// The rustls config: requires client certificates, offers h2 and http/1.1.
    pub fn rustls_config(&self) -> Arc<rustls::ServerConfig> {
        self.rustls.clone()
    }

    /// Re-reads the files now if they changed (handshakes also do this, at
    /// most once per reload interval). `Ok(true)` when new material is in use.
    pub fn reload_now(&self) -> Result<bool, TlsError> {
        self.material.reload_if_changed()
    }

    /// Checks a client's certificate chain (leaf first) against the trust
    /// material in use now, at the current time: what the handshake checked,
    /// again.
    ///
    /// A resumed TLS session skips the certificate exchange, so a
    /// certificate that expired (or was revoked, or whose CA was removed)
    /// since the full handshake would live on in its session tickets.
    /// [`MtlsAcceptor`](super::MtlsAcceptor) calls this on every resumed
    /// connection; call it yourself (with `peer_certificates()`) if you use
    /// [`rustls_config`](Self::rustls_config) in an accept loop of your own.
    pub fn verify_client_chain(&self, chain: &[CertificateDer<'_>]) -> Result<(), TlsError> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(TlsError::new(
                TlsErrorKind::MissingClientCertificate,
                "client presented no certificate",
            ));
        };
        self.material
            .current()
            .verify(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| TlsError::from_rustls(&e))
    }
}

struct ServerMaterial {
    /// For certificates without a URI SAN, and for every certificate when
    /// `bundles` is empty.
    default: Arc<dyn ClientCertVerifier>,
    /// One verifier per SPIFFE trust domain.
    bundles: HashMap<String, Arc<dyn ClientCertVerifier>>,
    key: Arc<CertifiedKey>,
}

impl ServerMaterial {
    fn load(
        ca: &PemSource,
        bundles: &BTreeMap<String, PemSource>,
        cert: &PemSource,
        key: &PemSource,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let default = client_verifier(ca, "client CA", provider)?;
        if bundles.is_empty() && ca.load_certificates()?.len() > 1 {
            tracing::warn!(
                "client_ca holds several CA certificates and no trust_bundles are set: \
                 each of them can issue any identity of any trust domain"
            );
        }
        let bundles = bundles
            .iter()
            .map(|(domain, pem)| {
                let what = format!("trust bundle `{domain}`");
                Ok((domain.clone(), client_verifier(pem, &what, provider)?))
            })
            .collect::<Result<_, TlsError>>()?;
        let key =
            CertifiedKey::from_der(cert.load_certificates()?, key.load_private_key()?, provider)
                .map_err(|e| TlsError::new(TlsErrorKind::Config, format!("server key: {e}")))?;
        Ok(Self {
            default,
            bundles,
            key: Arc::new(key),
        })
    }

    /// The chain check: the leaf's identity picks the bundle (its trust
    /// domain's, when bundles are configured), that bundle checks the chain.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let identity = CallerIdentity::from_certificate(end_entity).map_err(other)?;
        let verifier = match identity.trust_domain() {
            Some(domain) if !self.bundles.is_empty() => {
                self.bundles.get(domain).ok_or_else(|| {
                    other(TlsError::new(
                        TlsErrorKind::UnknownCa,
                        format!("no trust bundle for the trust domain `{domain}`"),
                    ))
                })?
            }
            _ => &self.default,
        };
        verifier.verify_client_cert(end_entity, intermediates, now)
    }
}

fn other(err: TlsError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(err),
    )))
}

/// A webpki client verifier for the CAs in `ca`, honouring its CRLs.
fn client_verifier(
    ca: &PemSource,
    what: &str,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in ca.load_certificates()? {
        roots
            .add(c)
            .map_err(|e| TlsError::new(TlsErrorKind::Config, format!("{what}: {e}")))?;
    }
    let crls = ca.load_crls()?;
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if !crls.is_empty() {
        // A CA in the bundle that publishes no CRL is not checked, rather
        // than every one of its certificates refused.
        builder = builder.with_crls(crls).allow_unknown_revocation_status();
    }
    builder
        .build()
        .map_err(|e| TlsError::new(TlsErrorKind::Config, format!("{what}: {e}")))
}

#[derive(Debug)]
struct ReloadingServerCert {
    material: Arc<Reloading<ServerMaterial>>,
}

impl ResolvesServerCert for ReloadingServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // The first callback of every handshake: the place to notice new files.
        self.material.check();
        Some(self.material.current().key.clone())
    }
}

#[derive(Debug)]
struct ReloadingClientVerifier {
    material: Arc<Reloading<ServerMaterial>>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would borrow from material that may be swapped; clients send
        // their one certificate anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.material
            .current()
            .verify(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
