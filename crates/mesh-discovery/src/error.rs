//! Errors: what went wrong talking to a source, and input that was rejected.
//!
//! Both are small opaque types that travel through tower as
//! `mesh_core::BoxError` and are found again with `downcast_ref`.
//! Config errors use [`mesh_core::config::InvalidConfig`], naming each bad field
//! (or environment variable) and what is allowed.

use std::fmt;

use mesh_core::BoxError;

/// What kind of failure a [`DiscoveryError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The server could not be reached (refused, reset, dropped connection).
    Connect,
    /// No answer in time.
    Timeout,
    /// The server answered with an error status.
    Status,
    /// The answer's body could not be parsed.
    Decode,
    /// The answer was well formed but unusable (a missing `X-Consul-Index`, an
    /// instance with a bad address, ...).
    InvalidResponse,
    /// A DNS lookup failed.
    Resolve,
    /// The thing asked about does not exist (an unknown check ID, ...).
    NotFound,
    /// Consul's ACLs refused the request (403: an unknown token, or one
    /// without the permission), or filtered every result out of an answer
    /// (`X-Consul-Results-Filtered-By-ACLs` on an empty list).
    Denied,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// A short, stable name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Status => "status",
            ErrorKind::Decode => "decode",
            ErrorKind::InvalidResponse => "invalid_response",
            ErrorKind::Resolve => "resolve",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Denied => "denied",
            ErrorKind::Other => "other",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A source could not learn its endpoints this time. Sources keep their last
/// known endpoints when this happens (fail static) and report it through
/// [`SourceHealth`](crate::SourceHealth); it never reaches a balancer.
#[derive(Debug)]
pub struct DiscoveryError {
    kind: ErrorKind,
    status: Option<u16>,
    message: String,
    source: Option<BoxError>,
}

impl DiscoveryError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: None,
            message: message.into(),
            source: None,
        }
    }

    #[cfg_attr(not(any(feature = "consul", feature = "dns")), allow(dead_code))]
    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    #[cfg_attr(not(feature = "consul"), allow(dead_code))]
    pub(crate) fn status(status: u16, body: &[u8]) -> Self {
        // Consul's error bodies are one short line ("No cluster leader"); keep
        // at most 200 bytes of it, never more.
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
        let kind = match status {
            403 => ErrorKind::Denied,
            404 => ErrorKind::NotFound,
            _ => ErrorKind::Status,
        };
        let mut e = Self::new(kind, format!("HTTP {status}: {}", text.trim()));
        e.status = Some(status);
        e
    }

    #[cfg_attr(not(feature = "consul"), allow(dead_code))]
    pub(crate) fn invalid_response(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidResponse, message)
    }

    #[cfg(feature = "reqwest")]
    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        let kind = if e.is_timeout() {
            ErrorKind::Timeout
        } else if e.is_connect() || e.is_request() || e.is_body() {
            ErrorKind::Connect
        } else if e.is_decode() {
            ErrorKind::Decode
        } else {
            ErrorKind::Other
        };
        // reqwest's Display includes the URL, which never holds the token
        // (that goes in a header).
        Self::new(kind, "HTTP request failed").with_source(e)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The HTTP status, for [`ErrorKind::Status`], [`ErrorKind::Denied`] and
    /// [`ErrorKind::NotFound`] errors that came with one.
    pub fn http_status(&self) -> Option<u16> {
        self.status
    }
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "discovery {}: {}", self.kind, self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
            let mut cause = source.source();
            while let Some(c) = cause {
                write!(f, ": {c}")?;
                cause = c.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for DiscoveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A name (service, service ID, check ID, tag, DNS name) that was rejected
/// before anything was sent, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct InvalidName {
    pub(crate) what: &'static str,
    pub(crate) value: String,
    pub(crate) reason: &'static str,
}

impl InvalidName {
    /// The input that was rejected.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// What it was meant to be (`"service name"`, `"check ID"`, ...).
    pub fn what(&self) -> &str {
        self.what
    }

    /// Why it was rejected.
    pub fn reason(&self) -> &str {
        self.reason
    }
}

/// Checks a Consul service name, service ID or check ID: 1 to 256 bytes of
/// letters, digits, `-`, `_`, `.` and `:` (IDs such as `service:web-1`), so it
/// is safe in a URL path and a DNS label.
#[cfg_attr(not(feature = "consul"), allow(dead_code))]
pub(crate) fn check_name(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let bad = |reason| {
        Err(InvalidName {
            what,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("is empty");
    }
    if value.len() > 256 {
        return bad("is longer than 256 bytes");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return bad("may contain only letters, digits, '-', '_', '.' and ':'");
    }
    if what == "service name" && value.contains(':') {
        return bad("may not contain ':'");
    }
    Ok(())
}

/// Checks a tag or other free text sent as a query value: not empty, no
/// control characters.
#[cfg_attr(not(feature = "consul"), allow(dead_code))]
pub(crate) fn check_text(what: &'static str, value: &str) -> Result<(), InvalidName> {
    if value.is_empty() || value.len() > 1024 || value.chars().any(char::is_control) {
        return Err(InvalidName {
            what,
            value: value.to_owned(),
            reason: "must be 1 to 1024 bytes without control characters",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        check_name("service name", "users-api.v2").unwrap();
        check_name("check ID", "service:users-1").unwrap();
        for bad in ["", "a b", "a/b", "é", "x?y", "a:b"] {
            let e = check_name("service name", bad).unwrap_err();
            assert_eq!(e.value(), bad);
        }
        assert!(check_name("service name", &"a".repeat(257)).is_err());
        assert!(check_text("tag", "v1").is_ok());
        assert!(check_text("tag", "a\nb").is_err());
    }

    #[test]
    fn errors_are_found_again_in_a_box_error() {
        let e: BoxError = Box::new(DiscoveryError::status(500, b"No cluster leader\n"));
        let d = e.downcast_ref::<DiscoveryError>().unwrap();
        assert_eq!(d.kind(), ErrorKind::Status);
        assert_eq!(d.http_status(), Some(500));
        assert_eq!(
            d.to_string(),
            "discovery status: HTTP 500: No cluster leader"
        );
    }
}
