//! Server pushback: what a server says about when to come back.
//!
//! An overloaded server knows better than any client-side backoff how long it
//! needs. HTTP servers say it with `Retry-After` (RFC 9110 §10.2.3: either
//! delta-seconds or an HTTP-date); gRPC servers with the `grpc-retry-pushback-ms`
//! metadata (gRPC proposal A6), where a negative value means "do not retry".
//!
//! mesh reads pushback once, in the classifier, and three layers act on it:
//! retry waits at least that long (or stops), the breaker keeps the endpoint
//! open at least that long, and the balancer adds a penalty to the endpoint.
//!
//! Pushback is outside input, so parsing never panics: a malformed value is
//! ignored with a `tracing` debug event, and every delay is clamped to a
//! configured maximum so that one server cannot park a client for a day.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::HeaderMap;
//! use mesh_core::pushback::{Pushback, PushbackParser};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("retry-after", "7".parse().unwrap());
//! let parser = PushbackParser::new(Duration::from_secs(30));
//! assert_eq!(parser.from_headers(&headers), Some(Pushback::After(Duration::from_secs(7))));
//!
//! headers.insert("retry-after", "86400".parse().unwrap());
//! assert_eq!(parser.from_headers(&headers), Some(Pushback::After(Duration::from_secs(30))));
//! ```

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::RETRY_AFTER;

/// The gRPC pushback metadata key (gRPC proposal A6).
pub const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

/// The default largest delay a server may ask for: 5 minutes.
pub const DEFAULT_MAX_PUSHBACK: Duration = Duration::from_secs(300);

/// What a server asked of its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pushback {
    /// Come back no sooner than this (already clamped to the parser's maximum).
    After(Duration),
    /// Do not retry this request at all.
    DoNotRetry,
}

impl Pushback {
    /// The delay asked for, or `None` for [`Pushback::DoNotRetry`].
    pub fn delay(self) -> Option<Duration> {
        match self {
            Pushback::After(d) => Some(d),
            Pushback::DoNotRetry => None,
        }
    }
}

/// Reads pushback from response headers and clamps it to a maximum.
///
/// `Copy` and tiny: classifiers embed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushbackParser {
    max: Duration,
}

impl Default for PushbackParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PUSHBACK)
    }
}

impl PushbackParser {
    /// A parser that clamps every delay to `max`.
    pub const fn new(max: Duration) -> Self {
        Self { max }
    }

    /// The largest delay this parser returns.
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// Pushback from `Retry-After` or `grpc-retry-pushback-ms`, whichever is
    /// present (gRPC's wins when both are: it is the more specific).
    pub fn from_headers(&self, headers: &HeaderMap) -> Option<Pushback> {
        if let Some(v) = headers.get(GRPC_RETRY_PUSHBACK_MS)
            && let Some(p) = v.to_str().ok().and_then(|s| self.parse_grpc(s))
        {
            return Some(p);
        }
        let v = headers.get(RETRY_AFTER)?;
        match v.to_str() {
            Ok(s) => self.parse_retry_after(s, SystemTime::now()),
            Err(_) => {
                tracing::debug!("ignoring Retry-After header that is not visible ASCII");
                None
            }
        }
    }

    /// Parses a `Retry-After` value, delta-seconds or an HTTP-date (relative to
    /// `now`). A date in the past means "now"; a malformed value is ignored.
    pub fn parse_retry_after(&self, value: &str, now: SystemTime) -> Option<Pushback> {
        let value = value.trim();
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            // Delta-seconds. Too many digits to fit still means "a long time".
            let secs = value.parse::<u64>().unwrap_or(u64::MAX);
            return Some(self.clamp(Duration::from_secs(secs)));
        }
        match httpdate::parse_http_date(value) {
            Ok(at) => {
                let delay = at.duration_since(now).unwrap_or(Duration::ZERO);
                Some(self.clamp(delay))
            }
            Err(_) => {
                tracing::debug!(value, "ignoring malformed Retry-After header");
                None
            }
        }
    }

    /// Parses a `grpc-retry-pushback-ms` value: milliseconds, or a negative
    /// number meaning "do not retry". A malformed value is ignored.
    pub fn parse_grpc(&self, value: &str) -> Option<Pushback> {
        let value = value.trim();
        if let Some(rest) = value.strip_prefix('-') {
            if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
                return Some(Pushback::DoNotRetry);
            }
        } else if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            let ms = value.parse::<u64>().unwrap_or(u64::MAX);
            return Some(self.clamp(Duration::from_millis(ms)));
        }
        tracing::debug!(value, "ignoring malformed grpc-retry-pushback-ms metadata");
        None
    }

    fn clamp(&self, d: Duration) -> Pushback {
        Pushback::After(d.min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: Duration = Duration::from_secs(60);

    fn parser() -> PushbackParser {
        PushbackParser::new(MAX)
    }

    #[test]
    fn retry_after_delta_seconds() {
        let now = SystemTime::now();
        let p = parser();
        assert_eq!(
            p.parse_retry_after("0", now),
            Some(Pushback::After(Duration::ZERO))
        );
        assert_eq!(
            p.parse_retry_after(" 12 ", now),
            Some(Pushback::After(Duration::from_secs(12)))
        );
        assert_eq!(p.parse_retry_after("3600", now), Some(Pushback::After(MAX)));
        assert_eq!(
            p.parse_retry_after("99999999999999999999999999", now),
            Some(Pushback::After(MAX))
        );
    }

    #[test]
    fn retry_after_http_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let p = parser();
        assert_eq!(
            p.parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Pushback::After(Duration::from_secs(30)))
        );
        // In the past: come back now.
        assert_eq!(
            p.parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Pushback::After(Duration::ZERO))
        );
        // Far future: clamped.
        assert_eq!(
            p.parse_retry_after("Tue, 21 Oct 2025 07:28:00 GMT", now),
            Some(Pushback::After(MAX))
        );
    }

    #[test]
    fn retry_after_malformed_is_ignored() {
        let now = SystemTime::now();
        for bad in [
            "",
            "soon",
            "-1",
            "1.5",
            "12s",
            "Wed, 99 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(parser().parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_pushback() {
        let p = parser();
        assert_eq!(
            p.parse_grpc("250"),
            Some(Pushback::After(Duration::from_millis(250)))
        );
        assert_eq!(p.parse_grpc("-1"), Some(Pushback::DoNotRetry));
        assert_eq!(p.parse_grpc("9999999"), Some(Pushback::After(MAX)));
        for bad in ["", "-", "abc", "1e3", "--1", "+5"] {
            assert_eq!(p.parse_grpc(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn headers_prefer_grpc_then_retry_after() {
        let mut h = HeaderMap::new();
        assert_eq!(parser().from_headers(&h), None);
        h.insert(RETRY_AFTER, "5".parse().unwrap());
        assert_eq!(
            parser().from_headers(&h),
            Some(Pushback::After(Duration::from_secs(5)))
        );
        h.insert(GRPC_RETRY_PUSHBACK_MS, "-3".parse().unwrap());
        assert_eq!(parser().from_headers(&h), Some(Pushback::DoNotRetry));
        // A malformed gRPC value falls back to Retry-After.
        h.insert(GRPC_RETRY_PUSHBACK_MS, "x".parse().unwrap());
        assert_eq!(
            parser().from_headers(&h),
            Some(Pushback::After(Duration::from_secs(5)))
        );
        // Non-ASCII bytes are ignored, not a panic.
        h.insert(
            RETRY_AFTER,
            http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        h.remove(GRPC_RETRY_PUSHBACK_MS);
        assert_eq!(parser().from_headers(&h), None);
    }

    proptest! {
        #[test]
        fn parsing_any_string_never_panics_and_respects_the_cap(s in any::<String>()) {
            let p = parser();
            for r in [p.parse_retry_after(&s, SystemTime::now()), p.parse_grpc(&s)] {
                if let Some(Pushback::After(d)) = r {
                    prop_assert!(d <= MAX);
                }
            }
        }

        #[test]
        fn parsing_any_header_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(v) = http::HeaderValue::from_bytes(&bytes) {
                let mut h = HeaderMap::new();
                h.insert(RETRY_AFTER, v.clone());
                h.insert(GRPC_RETRY_PUSHBACK_MS, v);
                let _ = parser().from_headers(&h);
            }
        }

        #[test]
        fn delta_seconds_round_trip(secs in 0u64..=60) {
            prop_assert_eq!(
                parser().parse_retry_after(&secs.to_string(), SystemTime::now()),
                Some(Pushback::After(Duration::from_secs(secs)))
            );
        }
    }
}
