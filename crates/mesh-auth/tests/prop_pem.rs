//! Property tests for what reaches mesh-auth from outside: PEM documents,
//! the DER certificates peers present, and the API-key header. Whatever the
//! bytes, nothing panics and every error is typed. The cargo-fuzz targets
//! `pem_input` and `auth_headers` explore the same contracts further.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use http::{HeaderValue, Request, Response, StatusCode};
use mesh_auth::apikey::{ApiKeyAuthLayer, ApiKeyHeader, ApiKeySet};
use mesh_auth::tls::{ClientTlsConfig, PemSource, ServerTlsConfig};
use mesh_auth::{CallerIdentity, Secret, TlsError, TlsErrorKind};
use proptest::prelude::*;
use rustls_pki_types::CertificateDer;
use tower::{Layer, Service};

/// A self-signed certificate with a SPIFFE URI SAN, and its key.
struct Material {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
}

fn material() -> &'static Material {
    static M: OnceLock<Material> = OnceLock::new();
    M.get_or_init(|| {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://example.org/users".try_into().unwrap(),
        )];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Material {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        }
    })
}

fn loads_typed(pem: &PemSource) -> Result<(), TestCaseError> {
    for r in [
        pem.load_certificates().map(drop),
        pem.load_private_key().map(drop),
    ] {
        if let Err(e) = r {
            prop_assert_eq!(e.kind(), TlsErrorKind::MalformedPem, "{}", e);
        }
    }
    Ok(())
}

fn build_typed(r: Result<(), TlsError>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(
            matches!(e.kind(), TlsErrorKind::MalformedPem | TlsErrorKind::Config),
            "{}",
            e
        );
    }
    Ok(())
}

fn identity_typed(r: Result<CallerIdentity, TlsError>) -> Result<(), TestCaseError> {
    if let Ok(id) = &r {
        // A URI SAN holds whatever the issuer wrote (the fuzzer found
        // `spiffe//...`): only the `spiffe://` prefix makes a trust domain.
        prop_assert_eq!(
            id.trust_domain().is_some(),
            id.as_str().starts_with("spiffe://")
        );
    }
    if let Err(e) = r {
        prop_assert!(
            matches!(
                e.kind(),
                TlsErrorKind::Handshake | TlsErrorKind::NoIdentity | TlsErrorKind::InvalidIdentity
            ),
            "{}",
            e
        );
    }
    Ok(())
}

/// Answers 200 and hands the caller's identity back in the response.
#[derive(Clone, Copy)]
struct Echo;

impl Service<Request<()>> for Echo {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let mut response = Response::new(());
        if let Some(id) = request.extensions().get::<CallerIdentity>() {
            response.extensions_mut().insert(id.clone());
        }
        ready(Ok(response))
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_text_is_malformed_pem_or_loads(text in ".{0,200}") {
        loads_typed(&PemSource::pem(text))?;
    }

    #[test]
    fn pem_shaped_text_never_panics(
        label in prop::sample::select(vec!["CERTIFICATE", "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY", "X"]),
        body in "[A-Za-z0-9+/=\n]{0,120}",
        close in any::<bool>(),
    ) {
        let end = if close { format!("-----END {label}-----\n") } else { String::new() };
        loads_typed(&PemSource::pem(format!("-----BEGIN {label}-----\n{body}\n{end}")))?;
    }

    #[test]
    fn mutated_cert_and_key_fail_typed(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<char>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let m = material();
        let mut chars: Vec<char> = format!("{}{}", m.cert_pem, m.key_pem).chars().collect();
        for (at, ch) in &edits {
            let at = at.index(chars.len());
            chars[at] = *ch;
        }
        chars.truncate(chars.len() - cut.index(chars.len() / 4));
        let pem = PemSource::pem(chars.into_iter().collect::<String>());
        loads_typed(&pem)?;
        if let Ok(certs) = pem.load_certificates() {
            for c in &certs {
                identity_typed(CallerIdentity::from_certificate(c))?;
            }
        }
        build_typed(ServerTlsConfig::new(pem.clone(), pem.clone(), pem.clone()).build().map(drop))?;
        build_typed(
            ClientTlsConfig::new(pem.clone()).with_client_cert(pem.clone(), pem).build().map(drop),
        )?;
    }

    #[test]
    fn mutated_peer_certificates_fail_typed(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut der = material().cert_der.clone();
        for (at, b) in &edits {
            let at = at.index(der.len());
            der[at] = *b;
        }
        identity_typed(CallerIdentity::from_certificate(&CertificateDer::from(der)))?;
    }

    #[test]
    fn an_api_key_is_accepted_exactly_when_it_is_the_key(
        bearer in any::<bool>(),
        value in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..24),
            "(Bearer|bearer|BEARER|Basic)? ?k1-secret-0123456789 ?".prop_map(String::into_bytes),
        ],
    ) {
        const KEY: &[u8] = b"k1-secret-0123456789";
        let header = if bearer { ApiKeyHeader::Bearer } else { ApiKeyHeader::x_api_key() };
        let keys = ApiKeySet::new().with_key("billing", &Secret::new(KEY));
        let mut service = ApiKeyAuthLayer::new(header.clone(), keys).layer(Echo);
        let Ok(v) = HeaderValue::from_bytes(&value) else { return Ok(()) };
        let mut request = Request::new(());
        request.headers_mut().insert(header.name(), v);
        let Poll::Ready(Ok(response)) =
            pin!(service.call(request)).poll(&mut Context::from_waker(Waker::noop()))
        else {
            panic!("the API-key check answers at once");
        };
        let presented = if bearer {
            value
                .split_at_checked(7)
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
                .map(|(_, rest)| rest)
        } else {
            Some(&value[..])
        };
        if presented.is_some_and(|k| k.trim_ascii() == KEY) {
            prop_assert_eq!(response.status(), StatusCode::OK);
            prop_assert_eq!(
                response.extensions().get::<CallerIdentity>(),
                Some(&CallerIdentity::api_key("billing"))
            );
        } else {
            prop_assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
    }
}
