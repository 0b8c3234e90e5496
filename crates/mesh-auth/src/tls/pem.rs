//! Where certificates and keys come from: PEM files or PEM bytes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::error::{TlsError, TlsErrorKind};

/// A PEM document: a file (re-read when it changes) or bytes in memory.
///
/// With the `serde` feature it reads as `{ "file": "/etc/mesh/tls.crt" }` or
/// `{ "pem": "-----BEGIN CERTIFICATE-----..." }`. `Debug` never prints the
/// bytes, since a private key may be among them; serializing writes
/// certificates and CRLs out but a document holding a private key as
/// `"[redacted]"`, which reads back as an error rather than as a key.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum PemSource {
    /// A PEM file; certificates reload when it changes.
    File(PathBuf),
    /// PEM text held in memory.
    #[cfg_attr(feature = "serde", serde(with = "serde_pem"))]
    Pem(String),
    /// PEM text a program replaces at run time (certificates from an agent
    /// such as Consul's); configs built on it rotate at the next handshake
    /// after [`PemCell::set`]. Not part of a config file.
    #[cfg_attr(feature = "serde", serde(skip))]
    Cell(PemCell),
}

/// A PEM document held in memory and replaced at run time.
///
/// TLS configs built from a [`PemSource::Cell`] notice a
/// [`set`](Self::set) at their next handshake (one atomic load per cell, no
/// interval) and rebuild their material from the new text; a document that
/// does not load keeps the previous material, as a bad file does. Put a
/// certificate chain and its key in the *same* cell to swap them together.
/// Clones share the document; `Debug` never prints it.
#[derive(Clone)]
pub struct PemCell {
    inner: Arc<CellInner>,
}

struct CellInner {
    text: ArcSwap<String>,
    version: AtomicU64,
}

impl PemCell {
    /// A cell holding `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(CellInner {
                text: ArcSwap::from_pointee(text.into()),
                version: AtomicU64::new(1),
            }),
        }
    }

    /// Replaces the document; configs built on it rebuild at their next
    /// handshake.
    pub fn set(&self, text: impl Into<String>) {
        self.inner.text.store(Arc::new(text.into()));
        self.inner.version.fetch_add(1, Ordering::AcqRel);
    }

    /// How many times the document was set (1 for a new cell).
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Acquire)
    }

    fn text(&self) -> Arc<String> {
        self.inner.text.load_full()
    }
}

impl PartialEq for PemCell {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for PemCell {}

impl fmt::Debug for PemCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PemCell(version {}, {} bytes)",
            self.version(),
            self.text().len()
        )
    }
}

#[cfg(feature = "serde")]
mod serde_pem {
    use crate::secret::{REDACTED, REDACTED_READ_BACK};

    pub(super) fn serialize<S: serde::Serializer>(pem: &str, s: S) -> Result<S::Ok, S::Error> {
        // `PRIVATE KEY` covers PKCS#8 (`BEGIN PRIVATE KEY`, `BEGIN ENCRYPTED
        // PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) and SEC1 (`EC PRIVATE KEY`).
        if pem.contains("PRIVATE KEY") {
            s.serialize_str(REDACTED)
        } else {
            s.serialize_str(pem)
        }
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        if text == REDACTED {
            return Err(serde::de::Error::custom(REDACTED_READ_BACK));
        }
        Ok(text)
    }
}

impl PemSource {
    /// A PEM file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        PemSource::File(path.into())
    }

    /// PEM text held in memory.
    pub fn pem(text: impl Into<String>) -> Self {
        PemSource::Pem(text.into())
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            PemSource::File(p) => Some(p),
            PemSource::Pem(_) | PemSource::Cell(_) => None,
        }
    }

    pub(crate) fn cell(&self) -> Option<&PemCell> {
        match self {
            PemSource::Cell(c) => Some(c),
            PemSource::File(_) | PemSource::Pem(_) => None,
        }
    }

    fn read(&self) -> Result<Vec<u8>, TlsError> {
        match self {
            PemSource::File(path) => std::fs::read(path).map_err(|e| {
                TlsError::new(
                    TlsErrorKind::Io,
                    format!("cannot read `{}`: {e}", path.display()),
                )
            }),
            PemSource::Pem(text) => Ok(text.as_bytes().to_vec()),
            PemSource::Cell(cell) => Ok(cell.text().as_bytes().to_vec()),
        }
    }

    /// Every certificate in the document; an error if there is none.
    pub fn load_certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let bytes = self.read()?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| malformed(self, &format!("bad certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(malformed(self, "no CERTIFICATE section"));
        }
        Ok(certs)
    }

    /// Every `X509 CRL` section in the document (none is fine).
    pub fn load_crls(&self) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
        let bytes = self.read()?;
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| malformed(self, &format!("bad CRL PEM: {e}")))
    }

    /// The first private key (PKCS#8, PKCS#1 or SEC1) in the document.
    pub fn load_private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        let bytes = self.read()?;
        // The pem error never contains key material, only what was missing.
        PrivateKeyDer::from_pem_slice(&bytes)
            .map_err(|e| malformed(self, &format!("no usable private key: {e}")))
    }
}

fn malformed(source: &PemSource, why: &str) -> TlsError {
    TlsError::new(TlsErrorKind::MalformedPem, format!("{source:?}: {why}"))
}

impl fmt::Debug for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(p) => write!(f, "File({p:?})"),
            PemSource::Pem(t) => write!(f, "Pem({} bytes)", t.len()),
            PemSource::Cell(c) => write!(f, "{c:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_malformed_pem_and_never_echoed() {
        let src = PemSource::pem("-----BEGIN PRIVATE KEY-----\nnot base64 at all!\n");
        let err = src.load_private_key().unwrap_err();
        assert_eq!(err.kind(), TlsErrorKind::MalformedPem);
        assert!(!err.to_string().contains("not base64"));
        let err = PemSource::pem("hello").load_certificates().unwrap_err();
        assert_eq!(err.kind(), TlsErrorKind::MalformedPem);
        let err = PemSource::file("/nonexistent/mesh.pem")
            .load_certificates()
            .unwrap_err();
        assert_eq!(err.kind(), TlsErrorKind::Io);
    }
}
