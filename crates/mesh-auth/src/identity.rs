//! Who is calling: one identity type for mTLS and API keys.
//!
//! Authorization should not care *how* a caller proved who it is. Both the
//! mTLS acceptor and the API-key layer put a [`CallerIdentity`] into the
//! request extensions; the authorization layer and handlers read it from there.
//!
//! A certificate's identity is its SPIFFE-style URI SAN
//! (`spiffe://trust-domain/path`) when it has one, otherwise its first DNS SAN.
//! The certificate has already been verified by the handshake when this runs.
//!
//! # Example
//!
//! ```
//! use mesh_auth::{CallerIdentity, IdentityKind};
//!
//! let id = CallerIdentity::spiffe("spiffe://example.org/ns/prod/sa/orders");
//! assert_eq!(id.kind(), IdentityKind::Spiffe);
//! assert_eq!(id.trust_domain(), Some("example.org"));
//! assert_eq!(id.as_str(), "spiffe://example.org/ns/prod/sa/orders");
//! ```

use std::fmt;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use crate::error::{TlsError, TlsErrorKind};

/// How a caller proved its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdentityKind {
    /// A URI SAN of an mTLS client certificate (`spiffe://...`).
    Spiffe,
    /// A DNS SAN of an mTLS client certificate.
    Dns,
    /// The name an API key is mapped to.
    ApiKey,
}

impl IdentityKind {
    /// A short, stable name, fit for a log field or a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Spiffe => "spiffe",
            IdentityKind::Dns => "dns",
            IdentityKind::ApiKey => "api_key",
        }
    }
}

/// The verified identity of the caller of a request, found in its extensions.
///
/// Cheap to clone (one `Arc`). Holds no secret: it is safe to log.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CallerIdentity {
    name: Arc<str>,
    kind: IdentityKind,
}

impl CallerIdentity {
    /// An identity from a URI SAN, such as `spiffe://example.org/orders`.
    pub fn spiffe(uri: impl Into<Arc<str>>) -> Self {
        Self::new(IdentityKind::Spiffe, uri)
    }

    /// An identity from a DNS SAN.
    pub fn dns(name: impl Into<Arc<str>>) -> Self {
        Self::new(IdentityKind::Dns, name)
    }

    /// The identity an API key is mapped to.
    pub fn api_key(name: impl Into<Arc<str>>) -> Self {
        Self::new(IdentityKind::ApiKey, name)
    }

    /// An identity of the given kind.
    pub fn new(kind: IdentityKind, name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            kind,
        }
    }

    /// The identity as text: the URI, DNS name or API-key name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// How the caller proved it.
    pub fn kind(&self) -> IdentityKind {
        self.kind
    }

    /// The trust domain of a `spiffe://` identity (`example.org`).
    pub fn trust_domain(&self) -> Option<&str> {
        let rest = self.name.strip_prefix("spiffe://")?;
        Some(rest.split('/').next().unwrap_or(rest))
    }

    /// The identity a (verified) certificate carries: its first `spiffe://`
    /// URI SAN, else its first URI SAN, else its first DNS SAN.
    ///
    /// Fails with [`TlsErrorKind::Handshake`] when the DER does not parse and
    /// [`TlsErrorKind::NoIdentity`] when it carries no usable SAN.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Self, TlsError> {
        let parsed = webpki::EndEntityCert::try_from(cert).map_err(|e| {
            TlsError::new(
                TlsErrorKind::Handshake,
                format!("certificate does not parse: {e}"),
            )
        })?;
        let mut first_uri = None;
        for uri in parsed.valid_uri_names() {
            if uri.starts_with("spiffe://") {
                return Ok(Self::spiffe(uri));
            }
            first_uri.get_or_insert(uri);
        }
        if let Some(uri) = first_uri {
            return Ok(Self::spiffe(uri));
        }
        match parsed.valid_dns_names().next() {
            Some(dns) => Ok(Self::dns(dns)),
            None => Err(TlsError::new(
                TlsErrorKind::NoIdentity,
                "certificate has neither a URI nor a DNS subject alternative name",
            )),
        }
    }
}

impl fmt::Debug for CallerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.kind.as_str(), self.name)
    }
}

impl fmt::Display for CallerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(sans: &[rcgen::SanType]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans.to_vec();
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().unwrap())
    }

    fn dns(s: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(s.try_into().unwrap())
    }

    #[test]
    fn prefers_spiffe_then_uri_then_dns() {
        let c = cert_with(&[dns("orders.local"), uri("spiffe://td/orders")]);
        let id = CallerIdentity::from_certificate(&c).unwrap();
        assert_eq!(id, CallerIdentity::spiffe("spiffe://td/orders"));

        let c = cert_with(&[dns("orders.local")]);
        let id = CallerIdentity::from_certificate(&c).unwrap();
        assert_eq!(id, CallerIdentity::dns("orders.local"));
        assert_eq!(id.trust_domain(), None);
    }

    #[test]
    fn no_san_and_garbage_are_errors() {
        let c = cert_with(&[]);
        let err = CallerIdentity::from_certificate(&c).unwrap_err();
        assert_eq!(err.kind(), TlsErrorKind::NoIdentity);
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        let err = CallerIdentity::from_certificate(&junk).unwrap_err();
        assert_eq!(err.kind(), TlsErrorKind::Handshake);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_der_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = CallerIdentity::from_certificate(&CertificateDer::from(bytes));
        }
    }
}
