//! `Retry-After`, `grpc-retry-pushback-ms` and `grpc-status`: response
//! headers any server (or anything between it and us) controls.
//!
//! Input: 2 bytes of cap (seconds), 2 bytes of HTTP status, 4 bytes of "now"
//! (seconds since the epoch), then up to three `\n`-separated header values:
//! `Retry-After`, `grpc-retry-pushback-ms`, `grpc-status`.
//!
//! Contract: nothing panics; every delay is at most the parser's cap;
//! delta-seconds and milliseconds parse exactly (then clamp); only a negative
//! gRPC number means "do not retry"; a classifier's pushback is the parser's;
//! `grpc-status` is recognised only in its canonical decimal form.

#![no_main]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use mesh_core::classify::{GrpcClassifier, GrpcCode, HttpClassifier};
use mesh_core::pushback::{GRPC_RETRY_PUSHBACK_MS, Pushback, PushbackParser};

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let cap = Duration::from_secs(u64::from(u16::from_le_bytes([head[0], head[1]])));
    let status = StatusCode::from_u16(u16::from_le_bytes([head[2], head[3]]) % 900 + 100)
        .expect("100..=999 is a status code");
    let now = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::from(u32::from_le_bytes([
            head[4], head[5], head[6], head[7],
        ])));
    let parser = PushbackParser::new(cap);

    let mut values = rest.splitn(3, |&b| b == b'\n');
    let retry_after = values.next().unwrap_or_default();
    let grpc_pushback = values.next().unwrap_or_default();
    let grpc_status = values.next().unwrap_or_default();

    // The string parsers, on whatever UTF-8 there is.
    let ra = std::str::from_utf8(retry_after)
        .ok()
        .map(|s| (s, parser.parse_retry_after(s, now)));
    if let Some((s, r)) = ra {
        check_retry_after(&parser, s, r);
    }
    let gp = std::str::from_utf8(grpc_pushback)
        .ok()
        .map(|s| (s, parser.parse_grpc(s)));
    if let Some((s, r)) = gp {
        check_grpc(&parser, s, r);
    }

    // The header path: only bytes a `HeaderValue` can hold get that far.
    let mut headers = HeaderMap::new();
    for (name, bytes) in [
        ("retry-after", retry_after),
        (GRPC_RETRY_PUSHBACK_MS, grpc_pushback),
        ("grpc-status", grpc_status),
    ] {
        if let Ok(v) = HeaderValue::from_bytes(bytes) {
            headers.insert(name, v);
        }
    }
    let from_headers = parser.from_headers(&headers);
    assert_capped(&parser, from_headers);
    // What `from_headers` must find, when it does not depend on the clock (an
    // HTTP-date is relative to `SystemTime::now()`, which moves between calls).
    let visible = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let grpc_found = visible(GRPC_RETRY_PUSHBACK_MS).and_then(|s| parser.parse_grpc(s));
    let expected = match (grpc_found, visible("retry-after")) {
        (Some(p), _) => Some(Some(p)),
        (None, None) => Some(None),
        (None, Some(s)) if is_digits(s.trim()) => Some(parser.parse_retry_after(s, now)),
        (None, Some(_)) => None,
    };
    if let Some(expected) = expected {
        assert_eq!(from_headers, expected);
    }

    // The classifiers hand on exactly what the parser found.
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers.clone();
    let http = HttpClassifier::new()
        .pushback(parser)
        .classify_response(&response);
    assert_capped(&parser, http.pushback());
    if http.is_failure() && expected.is_some() {
        assert_eq!(http.pushback(), from_headers);
    }
    if !http.is_failure() {
        assert_eq!(http.pushback(), None);
    }

    let grpc = GrpcClassifier::new().pushback(parser);
    assert_capped(&parser, grpc.classify_response(&response).pushback());
    assert_capped(&parser, grpc.classify_trailers(&headers).pushback());

    let code = GrpcCode::from_header_bytes(grpc_status);
    if code != GrpcCode::Unknown {
        assert_eq!((code as i32).to_string().as_bytes(), grpc_status);
    }
    if code == GrpcCode::Ok && headers.contains_key("grpc-status") {
        assert!(grpc.classify_response(&response).is_success());
        assert!(grpc.classify_trailers(&headers).is_success());
    }
});

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn assert_capped(parser: &PushbackParser, p: Option<Pushback>) {
    if let Some(Pushback::After(d)) = p {
        assert!(d <= parser.max(), "{d:?} above the cap {:?}", parser.max());
    }
}

fn check_retry_after(parser: &PushbackParser, s: &str, r: Option<Pushback>) {
    assert_ne!(
        r,
        Some(Pushback::DoNotRetry),
        "Retry-After never forbids: {s:?}"
    );
    assert_capped(parser, r);
    let t = s.trim();
    if is_digits(t) {
        let secs = t.parse::<u64>().unwrap_or(u64::MAX);
        let want = Duration::from_secs(secs).min(parser.max());
        assert_eq!(r, Some(Pushback::After(want)), "{s:?}");
    }
}

fn check_grpc(parser: &PushbackParser, s: &str, r: Option<Pushback>) {
    assert_capped(parser, r);
    let t = s.trim();
    match t.strip_prefix('-') {
        Some(n) if is_digits(n) => assert_eq!(r, Some(Pushback::DoNotRetry), "{s:?}"),
        _ if is_digits(t) => {
            let ms = t.parse::<u64>().unwrap_or(u64::MAX);
            let want = Duration::from_millis(ms).min(parser.max());
            assert_eq!(r, Some(Pushback::After(want)), "{s:?}");
        }
        _ => assert_eq!(r, None, "{s:?}"),
    }
}
