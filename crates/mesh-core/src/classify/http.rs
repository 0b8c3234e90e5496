//! HTTP response classification.

use std::error::Error;
use std::fmt;

use http::{Response, StatusCode};

use super::Classify;
use super::error::{as_dyn_error, is_transient_error};
use crate::outcome::{Failure, Outcome};
use crate::pushback::PushbackParser;

/// A set of HTTP status codes (100 to 999), stored as a bitmap: lookups are a
/// shift and a mask.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StatusSet {
    bits: [u64; 16],
}

impl StatusSet {
    /// The empty set.
    pub const fn new() -> Self {
        Self { bits: [0; 16] }
    }

    /// The set of `codes`; codes outside 100..=999 are left out.
    pub const fn from_codes(codes: &[u16]) -> Self {
        let mut set = Self::new();
        let mut i = 0;
        while i < codes.len() {
            set = set.with(codes[i]);
            i += 1;
        }
        set
    }

    /// The set of every code in `from..=to`.
    pub const fn range(from: u16, to: u16) -> Self {
        let mut set = Self::new();
        let mut c = from;
        while c <= to && c <= 999 {
            set = set.with(c);
            c += 1;
        }
        set
    }

    /// This set plus `code` (ignored outside 100..=999).
    #[must_use]
    pub const fn with(mut self, code: u16) -> Self {
        if code >= 100 && code <= 999 {
            self.bits[(code / 64) as usize] |= 1 << (code % 64);
        }
        self
    }

    /// This set without `code`.
    #[must_use]
    pub const fn without(mut self, code: u16) -> Self {
        if code <= 999 {
            self.bits[(code / 64) as usize] &= !(1 << (code % 64));
        }
        self
    }

    /// Every code in either set.
    #[must_use]
    pub const fn union(mut self, other: Self) -> Self {
        let mut i = 0;
        while i < 16 {
            self.bits[i] |= other.bits[i];
            i += 1;
        }
        self
    }

    /// Whether `status` is in the set.
    #[inline]
    pub const fn contains(&self, status: StatusCode) -> bool {
        self.contains_code(status.as_u16())
    }

    /// Whether the numeric `code` is in the set.
    #[inline]
    pub const fn contains_code(&self, code: u16) -> bool {
        code <= 999 && self.bits[(code / 64) as usize] & (1 << (code % 64)) != 0
    }

    /// The codes in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (100u16..=999).filter(|&c| self.contains_code(c))
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<u16> for StatusSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        iter.into_iter().fold(Self::new(), Self::with)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for StatusSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for StatusSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let codes = <Vec<u16> as serde::Deserialize>::deserialize(d)?;
        let mut set = Self::new();
        for code in codes {
            if !(100..=999).contains(&code) {
                return Err(serde::de::Error::custom(format_args!(
                    "HTTP status {code} is outside 100..=999"
                )));
            }
            set = set.with(code);
        }
        Ok(set)
    }
}

/// Classifies HTTP responses and transport errors.
///
/// By default: 5xx and 429 are failures; 502, 503, 504 and 429 are retryable,
/// as are transient transport errors ([`is_transient_error`]); other 4xx are
/// [`Outcome::Ignored`] (the client's mistake says nothing about the server);
/// everything else is a success. A failure's `Retry-After` is read as pushback.
#[derive(Clone, Copy)]
pub struct HttpClassifier {
    failures: StatusSet,
    retryable: StatusSet,
    pushback: PushbackParser,
    retryable_error: fn(&(dyn Error + 'static)) -> bool,
}

impl fmt::Debug for HttpClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClassifier")
            .field("failures", &self.failures)
            .field("retryable", &self.retryable)
            .field("pushback", &self.pushback)
            .finish_non_exhaustive()
    }
}

impl Default for HttpClassifier {
    fn default() -> Self {
        Self::new()
    }
}

static DEFAULT_HTTP_CLASSIFIER: HttpClassifier = HttpClassifier::new();

/// The default [`HttpClassifier`] as a zero-sized type.
///
/// Layers clone their classifier into every call's future; this one costs
/// nothing to clone and, unlike a `&'static HttpClassifier`, never trips the
/// compiler's "implementation is not general enough" error when the future is
/// spawned. Layers use it as their default classifier type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DefaultHttpClassifier;

impl DefaultHttpClassifier {
    /// The classifier this stands for.
    pub fn get(self) -> &'static HttpClassifier {
        &DEFAULT_HTTP_CLASSIFIER
    }
}

impl<B, E: 'static> Classify<Response<B>, E> for DefaultHttpClassifier {
    #[inline]
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        DEFAULT_HTTP_CLASSIFIER.classify(result)
    }
}

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
impl<E: 'static> Classify<reqwest::Response, E> for DefaultHttpClassifier {
    #[inline]
    fn classify(&self, result: &Result<reqwest::Response, E>) -> Outcome {
        DEFAULT_HTTP_CLASSIFIER.classify(result)
    }
}

impl HttpClassifier {
    /// The statuses that are failures by default: 500..=599 and 429.
    pub const DEFAULT_FAILURES: StatusSet = StatusSet::range(500, 599).with(429);
    /// The statuses that are retryable by default: 502, 503, 504 and 429.
    pub const DEFAULT_RETRYABLE: StatusSet = StatusSet::from_codes(&[429, 502, 503, 504]);

    /// The default classifier.
    pub const fn new() -> Self {
        Self {
            failures: Self::DEFAULT_FAILURES,
            retryable: Self::DEFAULT_RETRYABLE,
            pushback: PushbackParser::new(crate::pushback::DEFAULT_MAX_PUSHBACK),
            retryable_error: is_transient_error,
        }
    }

    /// Replaces the set of statuses counted as failures.
    #[must_use]
    pub const fn failure_statuses(mut self, set: StatusSet) -> Self {
        self.failures = set;
        self
    }

    /// Replaces the set of statuses that may be retried. A retryable status is
    /// always a failure too.
    #[must_use]
    pub const fn retryable_statuses(mut self, set: StatusSet) -> Self {
        self.retryable = set;
        self
    }

    /// Replaces the pushback parser (for its maximum delay).
    #[must_use]
    pub const fn pushback(mut self, parser: PushbackParser) -> Self {
        self.pushback = parser;
        self
    }

    /// Replaces the test for retryable transport errors (default:
    /// [`is_transient_error`]).
    #[must_use]
    pub const fn retryable_errors(mut self, f: fn(&(dyn Error + 'static)) -> bool) -> Self {
        self.retryable_error = f;
        self
    }

    /// The statuses counted as failures (retryable ones included).
    pub const fn failures(&self) -> StatusSet {
        self.failures.union(self.retryable)
    }

    /// The statuses that may be retried.
    pub const fn retryable(&self) -> StatusSet {
        self.retryable
    }

    /// Classifies a response by its status and headers.
    #[inline]
    pub fn classify_response<B>(&self, response: &Response<B>) -> Outcome {
        self.classify_status(response.status(), response.headers())
    }

    /// Classifies a response given as its status and headers (for client
    /// types other than `http::Response`).
    #[inline]
    pub fn classify_status(&self, status: StatusCode, headers: &http::HeaderMap) -> Outcome {
        let retryable = self.retryable.contains(status);
        if retryable || self.failures.contains(status) {
            Outcome::Failure(Failure {
                retryable,
                pushback: self.pushback.from_headers(headers),
            })
        } else if status.is_client_error() {
            Outcome::Ignored
        } else {
            Outcome::Success
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

impl<B, E: 'static> Classify<Response<B>, E> for HttpClassifier {
    #[inline]
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response) => self.classify_response(response),
            Err(e) => self.classify_error(e),
        }
    }
}

/// `reqwest`'s own response type, classified like an `http::Response`
/// (feature `reqwest`).
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
impl<E: 'static> Classify<reqwest::Response, E> for HttpClassifier {
    #[inline]
    fn classify(&self, result: &Result<reqwest::Response, E>) -> Outcome {
        match result {
            Ok(response) => self.classify_status(response.status(), response.headers()),
            Err(e) => self.classify_error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxError;
    use crate::pushback::Pushback;
    use std::io;
    use std::time::Duration;

    fn status(code: u16) -> Result<Response<()>, BoxError> {
        Ok(Response::builder().status(code).body(()).unwrap())
    }

    #[test]
    fn default_statuses() {
        let c = HttpClassifier::default();
        for code in [200, 201, 204, 301, 304] {
            assert_eq!(c.classify(&status(code)), Outcome::Success, "{code}");
        }
        for code in [400, 401, 403, 404, 409, 422] {
            assert_eq!(c.classify(&status(code)), Outcome::Ignored, "{code}");
        }
        for code in [500, 501, 505, 599] {
            let o = c.classify(&status(code));
            assert!(o.is_failure() && !o.is_retryable(), "{code}");
        }
        for code in [429, 502, 503, 504] {
            assert!(c.classify(&status(code)).is_retryable(), "{code}");
        }
    }

    #[test]
    fn configurable_statuses() {
        let c = HttpClassifier::new()
            .failure_statuses(StatusSet::from_codes(&[500]))
            .retryable_statuses(StatusSet::from_codes(&[409]));
        assert!(c.classify(&status(409)).is_retryable());
        assert!(c.classify(&status(500)).is_failure());
        assert_eq!(c.classify(&status(503)), Outcome::Success);
        assert_eq!(c.classify(&status(429)), Outcome::Ignored);
        assert!(c.failures().contains_code(409));
    }

    #[test]
    fn pushback_is_read_on_failures() {
        let c = HttpClassifier::new().pushback(PushbackParser::new(Duration::from_secs(10)));
        let r: Result<_, BoxError> = Ok(Response::builder()
            .status(429)
            .header("retry-after", "120")
            .body(())
            .unwrap());
        assert_eq!(
            c.classify(&r).pushback(),
            Some(Pushback::After(Duration::from_secs(10)))
        );
    }

    #[test]
    fn transport_errors() {
        let c = HttpClassifier::default();
        let refused: Result<Response<()>, BoxError> =
            Err(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)));
        assert!(c.classify(&refused).is_retryable());
        let other: Result<Response<()>, BoxError> = Err("invalid uri".into());
        let o = c.classify(&other);
        assert!(o.is_failure() && !o.is_retryable());
        let io_err: Result<Response<()>, io::Error> = Err(io::ErrorKind::ConnectionReset.into());
        assert!(c.classify(&io_err).is_retryable());
        let never: fn(&(dyn Error + 'static)) -> bool = |_| false;
        assert!(!c.retryable_errors(never).classify(&refused).is_retryable());
    }

    #[test]
    fn status_set_bounds() {
        let s = StatusSet::new().with(99).with(1000).with(100).with(999);
        assert_eq!(s.iter().collect::<Vec<_>>(), [100, 999]);
        assert_eq!(s.without(100).iter().collect::<Vec<_>>(), [999]);
        assert_eq!(StatusSet::range(500, 503).iter().count(), 4);
        let collected: StatusSet = [502u16, 503].into_iter().collect();
        assert_eq!(format!("{collected:?}"), "{502, 503}");
    }

    #[cfg(feature = "serde")]
    #[test]
    fn status_set_serde() {
        let s: StatusSet = serde_json::from_str("[503, 502]").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "[502,503]");
        let err = serde_json::from_str::<StatusSet>("[42]").unwrap_err();
        assert!(
            err.to_string()
                .contains("HTTP status 42 is outside 100..=999")
        );
    }
}
