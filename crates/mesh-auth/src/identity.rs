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
/// Cheap to clone (one `Arc`). Holds no secret: it is safe to log. Two
/// identities are equal when their kind and name are; the certificate
/// fingerprint an mTLS identity carries (for audit events) is not compared.
#[derive(Clone)]
pub struct CallerIdentity {
    name: Arc<str>,
    kind: IdentityKind,
    fingerprint: Option<Arc<str>>,
}

impl PartialEq for CallerIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.name == other.name
    }
}

impl Eq for CallerIdentity {}

impl std::hash::Hash for CallerIdentity {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        self.name.hash(state);
    }
}

impl CallerIdentity {
    /// An identity from a URI SAN, such as `spiffe://example.org/orders`.
    ///
    /// The text is taken as given; [`CallerIdentity::from_certificate`] is
    /// the one that checks it ([`parse_spiffe_id`]).
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
            fingerprint: None,
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

    /// The trust domain of a SPIFFE identity (`example.org`); `None` for
    /// DNS and API-key identities.
    pub fn trust_domain(&self) -> Option<&str> {
        if self.kind != IdentityKind::Spiffe {
            return None;
        }
        let rest = self.name.strip_prefix("spiffe://")?;
        Some(rest.split('/').next().unwrap_or(rest))
    }

    /// The SHA-256 of the certificate this identity came from, in lower-case
    /// hex (what `openssl x509 -fingerprint -sha256` prints, without colons);
    /// `None` for API-key identities. Audit events carry it.
    pub fn certificate_fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// The identity a (verified) certificate carries.
    ///
    /// A certificate with a URI SAN must have exactly one, and it must be a
    /// well-formed SPIFFE ID ([`parse_spiffe_id`]): two URI SANs, or one
    /// that is not `spiffe://`, is [`TlsErrorKind::InvalidIdentity`] rather
    /// than a guess at which one was meant. Without a URI SAN the identity
    /// is the first DNS SAN.
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
        let mut uris = parsed.valid_uri_names();
        let mut identity = match (uris.next(), uris.next()) {
            (Some(_), Some(_)) => {
                return Err(TlsError::new(
                    TlsErrorKind::InvalidIdentity,
                    "certificate has more than one URI subject alternative name",
                ));
            }
            (Some(uri), None) => {
                parse_spiffe_id(uri).map_err(|why| {
                    TlsError::new(
                        TlsErrorKind::InvalidIdentity,
                        format!("URI SAN is not a valid SPIFFE ID: {why}"),
                    )
                })?;
                Self::spiffe(uri)
            }
            (None, _) => match parsed.valid_dns_names().next() {
                Some(dns) => Self::dns(dns),
                None => {
                    return Err(TlsError::new(
                        TlsErrorKind::NoIdentity,
                        "certificate has neither a URI nor a DNS subject alternative name",
                    ));
                }
            },
        };
        identity.fingerprint = Some(fingerprint(cert).into());
        Ok(identity)
    }
}

fn fingerprint(cert: &CertificateDer<'_>) -> String {
    use sha2::Digest;
    use std::fmt::Write;
    sha2::Sha256::digest(cert.as_ref())
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Checks that `id` is a SPIFFE ID as the SPIFFE standard defines it, and
/// returns its trust domain.
///
/// `spiffe://` in lower case; a trust domain of lower-case letters, digits,
/// `.`, `-` and `_` (no port, no user info, no upper case); a path of
/// non-empty segments of letters, digits, `.`, `-` and `_`, none of them `.`
/// or `..`; no query, fragment or percent-encoding; at most 2048 bytes.
/// The error says which rule was broken.
///
/// This is the whole of the standard's grammar, written out rather than
/// pulling in the `spiffe` crate (whose Workload API client brings tonic
/// and protobuf with it) for forty lines of checks.
///
/// ```
/// use mesh_auth::parse_spiffe_id;
///
/// assert_eq!(parse_spiffe_id("spiffe://example.org/ns/prod/sa/orders"), Ok("example.org"));
/// assert!(parse_spiffe_id("spiffe://Example.org/orders").is_err());
/// assert!(parse_spiffe_id("spiffe://example.org/a/../admin").is_err());
/// assert!(parse_spiffe_id("https://example.org/orders").is_err());
/// ```
pub fn parse_spiffe_id(id: &str) -> Result<&str, &'static str> {
    if id.len() > 2048 {
        return Err("longer than 2048 bytes");
    }
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or("does not start with `spiffe://`")?;
    let (domain, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if domain.is_empty() {
        return Err("has an empty trust domain");
    }
    if !domain
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("trust domain may hold only a-z, 0-9, `.`, `-` and `_`");
    }
    if path.is_empty() {
        return Ok(domain);
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err("path has an empty segment (or a trailing `/`)"),
            "." | ".." => return Err("path has a `.` or `..` segment"),
            _ => {}
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err("path may hold only a-z, A-Z, 0-9, `.`, `-`, `_` and `/`");
        }
    }
    Ok(domain)
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
    fn prefers_spiffe_then_dns() {
        let c = cert_with(&[dns("orders.local"), uri("spiffe://td/orders")]);
        let id = CallerIdentity::from_certificate(&c).unwrap();
        assert_eq!(id, CallerIdentity::spiffe("spiffe://td/orders"));
        assert_eq!(id.certificate_fingerprint().map(str::len), Some(64));

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

    #[test]
    fn uri_sans_are_parsed_strictly() {
        // Row 5 of issue 19: each of these was accepted, the first
        // `spiffe://` SAN winning.
        for sans in [
            vec![uri("spiffe://td/orders"), uri("spiffe://td/admin")],
            vec![uri("https://td/orders")],
            vec![uri("spiffe://td/a/../admin")],
            vec![uri("spiffe://TD/orders")],
            vec![uri("spiffe://td:443/orders")],
            vec![uri("spiffe://td/orders?x=1")],
            vec![uri("spiffe://td/orders/")],
            vec![uri("spiffe://td/or%2fders")],
        ] {
            let err = CallerIdentity::from_certificate(&cert_with(&sans)).unwrap_err();
            assert_eq!(err.kind(), TlsErrorKind::InvalidIdentity, "{sans:?}");
        }
        assert_eq!(parse_spiffe_id("spiffe://td"), Ok("td"));
        assert_eq!(
            parse_spiffe_id("spiffe://td.example-1_x/A.b-c_d/e"),
            Ok("td.example-1_x")
        );
        assert!(parse_spiffe_id("spiffe:///x").is_err());
        assert!(parse_spiffe_id("spiffe://td//x").is_err());
        assert!(parse_spiffe_id("spiffe://u@td/x").is_err());
    }

    #[test]
    fn trust_domain_is_only_for_spiffe_identities() {
        assert_eq!(
            CallerIdentity::api_key("spiffe://td/x").trust_domain(),
            None
        );
        assert_eq!(
            CallerIdentity::spiffe("spiffe://td/x").trust_domain(),
            Some("td")
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_der_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = CallerIdentity::from_certificate(&CertificateDer::from(bytes));
        }
    }
}
