//! Property tests for what a server controls in a response, through the
//! classifiers (the string parsers have their own properties beside the code
//! in `src/pushback.rs`), and for endpoint addresses read from config files
//! and Consul. The cargo-fuzz targets `pushback_headers` and `consul_health`
//! explore the same contracts further.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, StatusCode};
use mesh_core::Address;
use mesh_core::classify::{GrpcClassifier, GrpcCode, HttpClassifier};
use mesh_core::pushback::{GRPC_RETRY_PUSHBACK_MS, Pushback, PushbackParser};
use proptest::prelude::*;

/// Header values: mostly plausible ones, some arbitrary bytes.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[0-9]{1,25}".prop_map(String::into_bytes),
        "-[0-9]{1,25}".prop_map(String::into_bytes),
        " ?[0-9]{1,4} ?".prop_map(String::into_bytes),
        Just(b"Wed, 21 Oct 2015 07:28:00 GMT".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..32),
    ]
}

fn headers(retry_after: &[u8], pushback: &[u8], status: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, v) in [
        ("retry-after", retry_after),
        (GRPC_RETRY_PUSHBACK_MS, pushback),
        ("grpc-status", status),
    ] {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            h.insert(name, v);
        }
    }
    h
}

fn capped(p: Option<Pushback>, cap: Duration) -> bool {
    p.and_then(Pushback::delay).is_none_or(|d| d <= cap)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn classifiers_pass_on_capped_pushback_for_any_headers(
        cap_secs in 0u64..600,
        status in 100u16..=999,
        retry_after in value(),
        pushback in value(),
        grpc_status in value(),
    ) {
        let cap = Duration::from_secs(cap_secs);
        let parser = PushbackParser::new(cap);
        let h = headers(&retry_after, &pushback, &grpc_status);
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        *response.headers_mut() = h.clone();

        let http = HttpClassifier::new().pushback(parser).classify_response(&response);
        prop_assert!(capped(http.pushback(), cap));
        if !http.is_failure() {
            prop_assert_eq!(http.pushback(), None);
        }
        let grpc = GrpcClassifier::new().pushback(parser);
        prop_assert!(capped(grpc.classify_response(&response).pushback(), cap));
        prop_assert!(capped(grpc.classify_trailers(&h).pushback(), cap));
    }

    #[test]
    fn a_valid_grpc_pushback_wins_over_retry_after(
        ms in any::<u64>(),
        negative in any::<bool>(),
        retry_after in value(),
    ) {
        let parser = PushbackParser::new(Duration::from_secs(60));
        let pushback = if negative { format!("-{ms}") } else { ms.to_string() };
        let h = headers(&retry_after, pushback.as_bytes(), b"14");
        let want = if negative {
            Pushback::DoNotRetry
        } else {
            Pushback::After(Duration::from_millis(ms).min(parser.max()))
        };
        prop_assert_eq!(parser.from_headers(&h), Some(want));
        let outcome = GrpcClassifier::new().pushback(parser).classify_trailers(&h);
        prop_assert!(outcome.is_failure());
        // A server that says "do not retry" is obeyed even for UNAVAILABLE.
        prop_assert_eq!(outcome.is_retryable(), !negative);
        prop_assert_eq!(outcome.pushback(), Some(want));
    }

    #[test]
    fn grpc_status_is_read_only_in_canonical_form(bytes in value()) {
        let code = GrpcCode::from_header_bytes(&bytes);
        if code != GrpcCode::Unknown {
            prop_assert_eq!((code as i32).to_string().into_bytes(), bytes);
        }
    }

    #[test]
    fn every_grpc_code_round_trips(code in 0i32..=16) {
        prop_assert_eq!(GrpcCode::from_header_bytes(code.to_string().as_bytes()) as i32, code);
    }

    #[test]
    fn any_address_string_never_panics_and_printing_is_stable(s in ".{0,40}") {
        if let Ok(a) = s.parse::<Address>() {
            let printed = a.to_string();
            let again: Address = printed.parse().unwrap();
            prop_assert_eq!(&again, &a);
            prop_assert_eq!(again.to_string(), printed);
        }
    }

    #[test]
    fn host_port_addresses_round_trip(
        host in prop_oneof![
            any::<std::net::IpAddr>().prop_map(|ip| ip.to_string()),
            "[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?(\\.[a-z0-9]{1,8}){0,3}\\.?",
        ],
        port in any::<u16>(),
    ) {
        let a = Address::host(&host, port).unwrap();
        prop_assert_eq!(a.port(), port);
        prop_assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
    }
}
