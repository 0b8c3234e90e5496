//! PEM documents (CA bundles, certificate chains, private keys) and the DER
//! certificates a peer presents in a handshake.
//!
//! Contract: loading never panics and fails only with `MalformedPem` (never
//! `Io`: the bytes are in memory); building a server or client TLS config
//! from the document fails only with `MalformedPem` or `Config`; a
//! certificate's identity comes from a URI or DNS SAN (with a trust domain
//! exactly when it is `spiffe://`), or is a typed `Handshake`/`NoIdentity`/`InvalidIdentity`
//! error; raw bytes as a peer certificate likewise.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_auth::tls::{ClientTlsConfig, PemSource, ServerTlsConfig};
use mesh_auth::{CallerIdentity, IdentityKind, TlsError, TlsErrorKind};
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    // The bytes as a certificate a peer presented.
    check_identity(CallerIdentity::from_certificate(&CertificateDer::from(
        data,
    )));

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let pem = PemSource::pem(text);
    let certs = pem.load_certificates();
    match &certs {
        Ok(certs) => {
            assert!(!certs.is_empty());
            for cert in certs {
                check_identity(CallerIdentity::from_certificate(cert));
            }
        }
        Err(e) => assert_eq!(e.kind(), TlsErrorKind::MalformedPem, "{e}"),
    }
    let key = pem.load_private_key();
    if let Err(e) = &key {
        assert_eq!(e.kind(), TlsErrorKind::MalformedPem, "{e}");
    }

    // The same document as CA, chain and key, as a one-file test setup would.
    let loadable = certs.is_ok() && key.is_ok();
    check_build(
        loadable,
        ServerTlsConfig::new(pem.clone(), pem.clone(), pem.clone())
            .build()
            .map(drop),
    );
    check_build(
        loadable,
        ClientTlsConfig::new(pem.clone())
            .with_client_cert(pem.clone(), pem)
            .build()
            .map(drop),
    );
});

fn check_identity(id: Result<CallerIdentity, TlsError>) {
    match id {
        Ok(id) => {
            // A URI SAN is whatever bytes the (trusted) issuer wrote: webpki does
            // not check it is a URI, so only the `spiffe://` prefix is relied on.
            match id.kind() {
                IdentityKind::Spiffe | IdentityKind::Dns => {}
                other => panic!("a certificate never yields a {other:?} identity"),
            }
            assert_eq!(
                id.trust_domain().is_some(),
                id.as_str().starts_with("spiffe://"),
                "{id:?}"
            );
        }
        Err(e) => assert!(
            matches!(
                e.kind(),
                TlsErrorKind::Handshake | TlsErrorKind::NoIdentity | TlsErrorKind::InvalidIdentity
            ),
            "{e}"
        ),
    }
}

fn check_build(loadable: bool, built: Result<(), TlsError>) {
    if let Err(e) = built {
        match e.kind() {
            // What the document's sections hold, or whether they match.
            TlsErrorKind::Config => {}
            TlsErrorKind::MalformedPem => {
                assert!(!loadable, "loadable PEM reported malformed: {e}")
            }
            _ => panic!("unexpected error kind building from in-memory PEM: {e}"),
        }
    }
}
