//! gRPC status classification.

use std::error::Error;
use std::fmt;

use http::{HeaderMap, Response, StatusCode};

use super::Classify;
use super::error::{as_dyn_error, is_transient_error};
use crate::outcome::{Failure, Outcome};
use crate::pushback::PushbackParser;

/// The gRPC status codes (`google.rpc.Code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "SCREAMING_SNAKE_CASE"))]
#[repr(u8)]
#[allow(missing_docs)] // the names are gRPC's own
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The code for a numeric value; values outside 0..=16 are `Unknown`, as
    /// the gRPC spec asks.
    pub const fn from_i32(value: i32) -> Self {
        if value >= 0 && value <= 16 {
            Self::ALL[value as usize]
        } else {
            GrpcCode::Unknown
        }
    }

    /// Parses a `grpc-status` value; anything but a decimal number is `Unknown`.
    pub fn from_header_bytes(bytes: &[u8]) -> Self {
        match bytes {
            [d @ b'0'..=b'9'] => Self::from_i32(i32::from(d - b'0')),
            [b'1', d @ b'0'..=b'6'] => Self::from_i32(10 + i32::from(d - b'0')),
            _ => GrpcCode::Unknown,
        }
    }

    /// The code a gRPC client reports when a response carries no `grpc-status`
    /// and a non-200 HTTP status (gRPC's "HTTP to gRPC status code mapping").
    pub const fn from_http_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 => GrpcCode::Internal,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::Unimplemented,
            429 | 502 | 503 | 504 => GrpcCode::Unavailable,
            _ => GrpcCode::Unknown,
        }
    }
}

/// A set of gRPC codes, as a bitmap.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GrpcCodeSet(u32);

impl GrpcCodeSet {
    /// The empty set.
    pub const fn new() -> Self {
        Self(0)
    }

    /// The set of `codes`.
    pub const fn from_codes(codes: &[GrpcCode]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < codes.len() {
            bits |= 1 << codes[i] as u32;
            i += 1;
        }
        Self(bits)
    }

    /// This set plus `code`.
    #[must_use]
    pub const fn with(self, code: GrpcCode) -> Self {
        Self(self.0 | 1 << code as u32)
    }

    /// Whether `code` is in the set.
    #[inline]
    pub const fn contains(&self, code: GrpcCode) -> bool {
        self.0 & (1 << code as u32) != 0
    }

    /// The codes in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = GrpcCode> + '_ {
        GrpcCode::ALL.into_iter().filter(|c| self.contains(*c))
    }
}

impl fmt::Debug for GrpcCodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<GrpcCode> for GrpcCodeSet {
    fn from_iter<I: IntoIterator<Item = GrpcCode>>(iter: I) -> Self {
        iter.into_iter().fold(Self::new(), Self::with)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for GrpcCodeSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for GrpcCodeSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(<Vec<GrpcCode> as serde::Deserialize>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

/// Classifies gRPC responses by their `grpc-status`.
///
/// A unary call that fails usually comes back *trailers-only*: the status is in
/// the response headers, and [`Classify`] reads it there. A response without
/// `grpc-status` in its headers carries the status in its trailers; layers that
/// observe the body call [`classify_trailers`](Self::classify_trailers) when the
/// trailers arrive, and until then such a response counts as a success. A
/// non-200 HTTP status with no `grpc-status` is mapped as gRPC clients do
/// (503 → `UNAVAILABLE`, ...).
///
/// By default `UNKNOWN`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `ABORTED`,
/// `INTERNAL`, `UNAVAILABLE` and `DATA_LOSS` are failures, `UNAVAILABLE`,
/// `RESOURCE_EXHAUSTED` and `ABORTED` are retryable, and the other non-OK codes
/// (the caller's mistakes: `NOT_FOUND`, `INVALID_ARGUMENT`, ...) are ignored.
/// `grpc-retry-pushback-ms` is read as pushback.
#[derive(Clone, Copy)]
pub struct GrpcClassifier {
    failures: GrpcCodeSet,
    retryable: GrpcCodeSet,
    pushback: PushbackParser,
    retryable_error: fn(&(dyn Error + 'static)) -> bool,
}

impl fmt::Debug for GrpcClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcClassifier")
            .field("failures", &self.failures)
            .field("retryable", &self.retryable)
            .field("pushback", &self.pushback)
            .finish_non_exhaustive()
    }
}

impl Default for GrpcClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcClassifier {
    /// The codes that are failures by default.
    pub const DEFAULT_FAILURES: GrpcCodeSet = GrpcCodeSet::from_codes(&[
        GrpcCode::Unknown,
        GrpcCode::DeadlineExceeded,
        GrpcCode::ResourceExhausted,
        GrpcCode::Aborted,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
    ]);
    /// The codes that are retryable by default.
    pub const DEFAULT_RETRYABLE: GrpcCodeSet = GrpcCodeSet::from_codes(&[
        GrpcCode::Unavailable,
        GrpcCode::ResourceExhausted,
        GrpcCode::Aborted,
    ]);

    /// The default classifier.
    pub const fn new() -> Self {
        Self {
            failures: Self::DEFAULT_FAILURES,
            retryable: Self::DEFAULT_RETRYABLE,
            pushback: PushbackParser::new(crate::pushback::DEFAULT_MAX_PUSHBACK),
            retryable_error: is_transient_error,
        }
    }

    /// Replaces the set of codes counted as failures.
    #[must_use]
    pub const fn failure_codes(mut self, set: GrpcCodeSet) -> Self {
        self.failures = set;
        self
    }

    /// Replaces the set of codes that may be retried (each is a failure too).
    #[must_use]
    pub const fn retryable_codes(mut self, set: GrpcCodeSet) -> Self {
        self.retryable = set;
        self
    }

    /// Replaces the pushback parser (for its maximum delay).
    #[must_use]
    pub const fn pushback(mut self, parser: PushbackParser) -> Self {
        self.pushback = parser;
        self
    }

    /// Replaces the test for retryable transport errors.
    #[must_use]
    pub const fn retryable_errors(mut self, f: fn(&(dyn Error + 'static)) -> bool) -> Self {
        self.retryable_error = f;
        self
    }

    /// Classifies one status code, with the headers or trailers it came in.
    pub fn classify_code(&self, code: GrpcCode, metadata: &HeaderMap) -> Outcome {
        if code == GrpcCode::Ok {
            return Outcome::Success;
        }
        let retryable = self.retryable.contains(code);
        if retryable || self.failures.contains(code) {
            Outcome::Failure(Failure {
                retryable,
                pushback: self.pushback.from_headers(metadata),
            })
        } else {
            Outcome::Ignored
        }
    }

    /// Classifies a response's trailers (for layers that observe the body).
    /// Trailers without `grpc-status` are a protocol error: `UNKNOWN`.
    pub fn classify_trailers(&self, trailers: &HeaderMap) -> Outcome {
        let code = trailers.get("grpc-status").map_or(GrpcCode::Unknown, |v| {
            GrpcCode::from_header_bytes(v.as_bytes())
        });
        self.classify_code(code, trailers)
    }

    /// Classifies a response by its headers (see the type's docs).
    #[inline]
    pub fn classify_response<B>(&self, response: &Response<B>) -> Outcome {
        let headers = response.headers();
        if let Some(v) = headers.get("grpc-status") {
            return self.classify_code(GrpcCode::from_header_bytes(v.as_bytes()), headers);
        }
        let status = response.status();
        if status == StatusCode::OK {
            Outcome::Success
        } else {
            self.classify_code(GrpcCode::from_http_status(status), headers)
        }
    }

    /// Classifies a transport error: always a failure, retryable when the
    /// configured test says so.
    pub fn classify_error<E: 'static>(&self, error: &E) -> Outcome {
        Outcome::Failure(Failure {
            retryable: as_dyn_error(error).is_some_and(self.retryable_error),
            pushback: None,
        })
    }
}

impl<B, E: 'static> Classify<Response<B>, E> for GrpcClassifier {
    #[inline]
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response) => self.classify_response(response),
            Err(e) => self.classify_error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;
    use crate::pushback::Pushback;
    use std::time::Duration;

    fn grpc(code: &str) -> Result<Response<()>, BoxError> {
        Ok(Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", code)
            .body(())
            .unwrap())
    }

    #[test]
    fn codes_parse() {
        for i in 0..=16 {
            assert_eq!(
                GrpcCode::from_header_bytes(i.to_string().as_bytes()) as i32,
                i
            );
            assert_eq!(GrpcCode::from_i32(i) as i32, i);
        }
        for bad in [&b""[..], b"17", b"-1", b"01", b"x", b"140"] {
            assert_eq!(GrpcCode::from_header_bytes(bad), GrpcCode::Unknown);
        }
        assert_eq!(GrpcCode::from_i32(99), GrpcCode::Unknown);
    }

    #[test]
    fn default_codes() {
        let c = GrpcClassifier::default();
        assert_eq!(c.classify(&grpc("0")), Outcome::Success);
        for code in ["14", "8", "10"] {
            assert!(c.classify(&grpc(code)).is_retryable(), "{code}");
        }
        for code in ["2", "4", "13", "15"] {
            let o = c.classify(&grpc(code));
            assert!(o.is_failure() && !o.is_retryable(), "{code}");
        }
        for code in ["1", "3", "5", "6", "7", "9", "11", "12", "16"] {
            assert_eq!(c.classify(&grpc(code)), Outcome::Ignored, "{code}");
        }
    }

    #[test]
    fn status_in_trailers() {
        let c = GrpcClassifier::default();
        // Headers without grpc-status: the status comes later, in trailers.
        let streaming: Result<Response<()>, BoxError> = Ok(Response::new(()));
        assert_eq!(c.classify(&streaming), Outcome::Success);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        trailers.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
        let o = c.classify_trailers(&trailers);
        assert!(o.is_failure() && !o.is_retryable());
        assert_eq!(o.pushback(), Some(Pushback::DoNotRetry));
        assert!(c.classify_trailers(&HeaderMap::new()).is_failure());
    }

    #[test]
    fn http_status_mapping_and_pushback() {
        let c = GrpcClassifier::default();
        let r: Result<_, BoxError> = Ok(Response::builder()
            .status(503)
            .header("grpc-retry-pushback-ms", "300")
            .body(())
            .unwrap());
        let o = c.classify(&r);
        assert!(o.is_retryable());
        assert_eq!(
            o.pushback(),
            Some(Pushback::After(Duration::from_millis(300)))
        );
        let r: Result<_, BoxError> = Ok(Response::builder().status(404).body(()).unwrap());
        assert_eq!(c.classify(&r), Outcome::Ignored);
    }

    #[test]
    fn configurable_codes() {
        let c = GrpcClassifier::new()
            .retryable_codes(GrpcCodeSet::from_codes(&[GrpcCode::Internal]))
            .failure_codes(GrpcCodeSet::new());
        assert!(c.classify(&grpc("13")).is_retryable());
        assert_eq!(c.classify(&grpc("14")), Outcome::Ignored);
        let set: GrpcCodeSet = [GrpcCode::Aborted, GrpcCode::Ok].into_iter().collect();
        assert_eq!(format!("{set:?}"), "{Ok, Aborted}");
    }
}
