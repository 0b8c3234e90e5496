//! A throwaway PKI for the tests: CAs and leaf certificates made by rcgen.
#![allow(dead_code, unreachable_pub)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

use mesh_auth::tls::PemSource;

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

#[derive(Clone, Copy)]
pub enum Validity {
    Now,
    Expired,
    NotYetValid,
    /// Valid since an hour ago, until this many seconds from now.
    ForSeconds(u64),
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: rustls_pki_types::CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A CRL of this CA revoking these serial numbers, as PEM.
    pub fn crl(&self, revoked: &[u64]) -> String {
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let now = epoch + std::time::Duration::from_secs(unix_now() - 60);
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + std::time::Duration::from_secs(86_400),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|&serial| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(serial),
                    revocation_time: now,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }

    pub fn source(&self) -> PemSource {
        PemSource::pem(self.pem())
    }

    /// A leaf certificate. SANs starting with `spiffe://` are URIs, IPs are IPs,
    /// anything else a DNS name.
    pub fn leaf(&self, sans: &[&str], validity: Validity) -> Leaf {
        self.leaf_with_serial(sans, validity, None)
    }

    /// A leaf with this serial number (for CRLs).
    pub fn leaf_with_serial(&self, sans: &[&str], validity: Validity, serial: Option<u64>) -> Leaf {
        let mut params = CertificateParams::default();
        params.serial_number = serial.map(rcgen::SerialNumber::from);
        params
            .distinguished_name
            .push(DnType::CommonName, sans.first().copied().unwrap_or("leaf"));
        params.subject_alt_names = sans
            .iter()
            .map(|s| {
                if s.contains("://") {
                    SanType::URI((*s).try_into().unwrap())
                } else if let Ok(ip) = s.parse::<IpAddr>() {
                    SanType::IpAddress(ip)
                } else {
                    SanType::DnsName((*s).try_into().unwrap())
                }
            })
            .collect();
        match validity {
            Validity::Now => {}
            Validity::Expired => {
                params.not_before = rcgen::date_time_ymd(2001, 1, 1);
                params.not_after = rcgen::date_time_ymd(2002, 1, 1);
            }
            Validity::NotYetValid => {
                params.not_before = rcgen::date_time_ymd(2090, 1, 1);
                params.not_after = rcgen::date_time_ymd(2091, 1, 1);
            }
            Validity::ForSeconds(secs) => {
                let epoch = rcgen::date_time_ymd(1970, 1, 1);
                let now = unix_now();
                params.not_before = epoch + std::time::Duration::from_secs(now - 3600);
                params.not_after = epoch + std::time::Duration::from_secs(now + secs);
            }
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

impl Leaf {
    pub fn cert(&self) -> PemSource {
        PemSource::pem(self.cert_pem.clone())
    }

    pub fn key(&self) -> PemSource {
        PemSource::pem(self.key_pem.clone())
    }

    /// Writes cert and key into `dir` (replacing atomically), returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        write_atomic(&cert, &self.cert_pem);
        write_atomic(&key, &self.key_pem);
        (cert, key)
    }
}

pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

pub fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "mesh-auth-{name}-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

fn fastrand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

pub const ORDERS: &str = "spiffe://test.mesh/orders";
pub const USERS: &str = "spiffe://test.mesh/users";
