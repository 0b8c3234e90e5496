//! Typed TLS errors: what went wrong with a certificate or a handshake.
//!
//! rustls reports failures as a wide enum, wrapped in `io::Error` by
//! tokio-rustls and boxed again by hyper and reqwest. [`TlsError`] folds all of
//! that into the handful of cases an operator acts on ([`TlsErrorKind`]), and
//! [`TlsError::find`] digs it out of any error chain, so a client can tell "the
//! server's certificate expired" from "the server is down".

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::{AlertDescription, CertificateError};

/// What went wrong, in the words an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsErrorKind {
    /// The peer's certificate does not chain to a configured CA.
    UnknownCa,
    /// The peer's certificate (or one in its chain) has expired.
    Expired,
    /// The peer's certificate (or one in its chain) is not valid yet.
    NotYetValid,
    /// The peer's certificate is valid but names another service.
    WrongIdentity,
    /// The client presented no certificate, and the server requires one.
    MissingClientCertificate,
    /// The peer's certificate carries neither a URI nor a DNS SAN.
    NoIdentity,
    /// The peer's certificate carries an identity that is not acceptable:
    /// more than one URI SAN, or a URI SAN that is not a well-formed SPIFFE ID.
    InvalidIdentity,
    /// The peer's certificate (or one in its chain) was revoked by a CRL.
    Revoked,
    /// A PEM file or buffer held no usable certificate or key.
    MalformedPem,
    /// A certificate or key file could not be read.
    Io,
    /// The certificate, key or CA set was rejected while building a config.
    Config,
    /// Any other handshake failure (protocol mismatch, bad signature, ...).
    Handshake,
}

impl TlsErrorKind {
    /// A short, stable name, fit for a log field or a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            TlsErrorKind::UnknownCa => "unknown_ca",
            TlsErrorKind::Expired => "expired",
            TlsErrorKind::NotYetValid => "not_yet_valid",
            TlsErrorKind::WrongIdentity => "wrong_identity",
            TlsErrorKind::MissingClientCertificate => "missing_client_certificate",
            TlsErrorKind::NoIdentity => "no_identity",
            TlsErrorKind::InvalidIdentity => "invalid_identity",
            TlsErrorKind::Revoked => "revoked",
            TlsErrorKind::MalformedPem => "malformed_pem",
            TlsErrorKind::Io => "io",
            TlsErrorKind::Config => "config",
            TlsErrorKind::Handshake => "handshake",
        }
    }
}

impl fmt::Display for TlsErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A certificate, configuration or handshake failure, with its [`TlsErrorKind`].
///
/// Passed through tower as a `BoxError`; find it again with `downcast_ref`, or
/// with [`TlsError::find`] when a client library wrapped it.
#[derive(Debug)]
pub struct TlsError {
    kind: TlsErrorKind,
    detail: String,
}

impl TlsError {
    pub(crate) fn new(kind: TlsErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> TlsErrorKind {
        self.kind
    }

    /// Classifies a rustls error, whether our side detected it or the peer
    /// told us with an alert.
    pub fn from_rustls(err: &rustls::Error) -> Self {
        let kind = match err {
            rustls::Error::InvalidCertificate(cert) => certificate_kind(cert),
            rustls::Error::NoCertificatesPresented => TlsErrorKind::MissingClientCertificate,
            rustls::Error::AlertReceived(alert) => alert_kind(*alert),
            _ => TlsErrorKind::Handshake,
        };
        Self::new(kind, err.to_string())
    }

    /// Classifies an I/O error from a handshake (tokio-rustls wraps the rustls
    /// error in one).
    pub fn from_io(err: &io::Error) -> Self {
        Self::from_io_chain(err).unwrap_or_else(|| Self::new(TlsErrorKind::Io, err.to_string()))
    }

    /// The TLS failure inside an `io::Error`, looking through nested
    /// `io::Error`s (whose `source()` skips the error they wrap).
    fn from_io_chain(err: &io::Error) -> Option<Self> {
        let mut outer = err;
        loop {
            let inner = outer.get_ref()?;
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(Self::from_rustls(r));
            }
            if let Some(tls) = inner.downcast_ref::<TlsError>() {
                return Some(Self::new(tls.kind, tls.detail.clone()));
            }
            match inner.downcast_ref::<io::Error>() {
                Some(io) => outer = io,
                None => return Self::from_alert_text(outer),
            }
        }
    }

    /// A peer's alert read after the handshake reaches us as text only
    /// ("received fatal alert: UnknownCA"); recover its kind from that.
    fn from_alert_text(err: &io::Error) -> Option<Self> {
        let text = err.get_ref()?.to_string();
        let alert = text.strip_prefix("received fatal alert: ")?;
        let kind = match alert {
            "UnknownCA" => TlsErrorKind::UnknownCa,
            "CertificateExpired" => TlsErrorKind::Expired,
            "CertificateRevoked" => TlsErrorKind::Revoked,
            "CertificateRequired" => TlsErrorKind::MissingClientCertificate,
            _ => TlsErrorKind::Handshake,
        };
        Some(Self::new(kind, text))
    }

    /// Walks an error chain (hyper, reqwest and tonic each wrap the handshake
    /// error differently) and returns the TLS failure in it, if there is one.
    pub fn find(err: &(dyn StdError + 'static)) -> Option<TlsError> {
        let mut current: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(e) = current {
            if let Some(tls) = e.downcast_ref::<TlsError>() {
                return Some(Self::new(tls.kind, tls.detail.clone()));
            }
            if let Some(r) = e.downcast_ref::<rustls::Error>() {
                return Some(Self::from_rustls(r));
            }
            if let Some(io) = e.downcast_ref::<io::Error>()
                && let Some(found) = Self::from_io_chain(io)
            {
                return Some(found);
            }
            current = e.source();
        }
        None
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tls error ({}): {}", self.kind, self.detail)
    }
}

impl StdError for TlsError {}

fn certificate_kind(err: &CertificateError) -> TlsErrorKind {
    match err {
        CertificateError::UnknownIssuer => TlsErrorKind::UnknownCa,
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            TlsErrorKind::Expired
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            TlsErrorKind::NotYetValid
        }
        CertificateError::Revoked => TlsErrorKind::Revoked,
        CertificateError::Other(other) => {
            let inner: &(dyn StdError + 'static) = &*other.0;
            if inner.downcast_ref::<WrongIdentity>().is_some() {
                TlsErrorKind::WrongIdentity
            } else if let Some(tls) = inner.downcast_ref::<TlsError>() {
                tls.kind
            } else {
                TlsErrorKind::Handshake
            }
        }
        _ => TlsErrorKind::Handshake,
    }
}

fn alert_kind(alert: AlertDescription) -> TlsErrorKind {
    match alert {
        AlertDescription::UnknownCA => TlsErrorKind::UnknownCa,
        AlertDescription::CertificateExpired => TlsErrorKind::Expired,
        AlertDescription::CertificateRevoked => TlsErrorKind::Revoked,
        AlertDescription::CertificateRequired => TlsErrorKind::MissingClientCertificate,
        _ => TlsErrorKind::Handshake,
    }
}

/// The peer's certificate is valid but belongs to another service.
///
/// Raised by the client's verifier when an expected server identity is
/// configured; it travels inside rustls' error and comes back as
/// [`TlsErrorKind::WrongIdentity`].
#[derive(Debug, Clone)]
pub struct WrongIdentity {
    expected: Arc<str>,
    presented: Option<Arc<str>>,
}

impl WrongIdentity {
    pub(crate) fn new(expected: Arc<str>, presented: Option<Arc<str>>) -> Self {
        Self {
            expected,
            presented,
        }
    }

    /// The identity the client was configured to expect.
    pub fn expected(&self) -> &str {
        &self.expected
    }

    /// The identity the certificate carries, if it carries one.
    pub fn presented(&self) -> Option<&str> {
        self.presented.as_deref()
    }
}

impl fmt::Display for WrongIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.presented {
            Some(p) => write!(f, "expected peer identity `{}`, got `{p}`", self.expected),
            None => write!(
                f,
                "expected peer identity `{}`, certificate has none",
                self.expected
            ),
        }
    }
}

impl StdError for WrongIdentity {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_certificate_errors() {
        let cases = [
            (CertificateError::UnknownIssuer, TlsErrorKind::UnknownCa),
            (CertificateError::Expired, TlsErrorKind::Expired),
            (CertificateError::NotValidYet, TlsErrorKind::NotYetValid),
            (CertificateError::BadSignature, TlsErrorKind::Handshake),
        ];
        for (err, kind) in cases {
            let e = TlsError::from_rustls(&rustls::Error::InvalidCertificate(err));
            assert_eq!(e.kind(), kind);
        }
        let wrong = rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            Arc::new(WrongIdentity::new("a".into(), None)),
        )));
        assert_eq!(
            TlsError::from_rustls(&wrong).kind(),
            TlsErrorKind::WrongIdentity
        );
    }

    #[test]
    fn finds_the_error_inside_io_and_boxes() {
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        let boxed: mesh_core::BoxError = Box::new(io);
        let found = TlsError::find(&*boxed).unwrap();
        assert_eq!(found.kind(), TlsErrorKind::MissingClientCertificate);
        let alert = rustls::Error::AlertReceived(AlertDescription::UnknownCA);
        assert_eq!(
            TlsError::from_rustls(&alert).kind(),
            TlsErrorKind::UnknownCa
        );
        let plain = io::Error::other("boom");
        assert!(TlsError::find(&plain).is_none());
        let nested = io::Error::other(io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        ));
        assert_eq!(
            TlsError::find(&nested).unwrap().kind(),
            TlsErrorKind::UnknownCa
        );
        let text = io::Error::new(
            io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRequired",
        );
        assert_eq!(
            TlsError::from_io(&text).kind(),
            TlsErrorKind::MissingClientCertificate
        );
    }
}
