//! Which header carries the key.

use std::fmt;

use http::HeaderName;
use http::header::AUTHORIZATION;

/// Where an API key travels: a header of its own (default `x-api-key`) or
/// `Authorization: Bearer <key>`.
///
/// With the `serde` feature it is a string: `"bearer"`, or a header name.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "serde", serde(try_from = "String", into = "String"))]
pub enum ApiKeyHeader {
    /// The key is the whole value of this header.
    Header(HeaderName),
    /// `Authorization: Bearer <key>`.
    Bearer,
}

impl ApiKeyHeader {
    /// `x-api-key`.
    pub fn x_api_key() -> Self {
        ApiKeyHeader::Header(HeaderName::from_static("x-api-key"))
    }

    /// The header name the key travels in.
    pub fn name(&self) -> &HeaderName {
        match self {
            ApiKeyHeader::Header(name) => name,
            ApiKeyHeader::Bearer => &AUTHORIZATION,
        }
    }

    /// The presented key in `headers`. No allocation.
    ///
    /// `Err("missing")` without one, `Err("duplicate")` when the header
    /// appears more than once: which copy counts would otherwise depend on
    /// the code reading it (a proxy may check the last, we the first).
    pub(crate) fn extract<'a>(
        &self,
        headers: &'a http::HeaderMap,
    ) -> Result<&'a [u8], &'static str> {
        let mut values = headers.get_all(self.name()).iter();
        let value = values.next().ok_or("missing")?.as_bytes();
        if values.next().is_some() {
            return Err("duplicate");
        }
        let key = match self {
            ApiKeyHeader::Header(_) => value,
            ApiKeyHeader::Bearer => {
                let (scheme, rest) = value.split_at_checked(7).ok_or("missing")?;
                if !scheme.eq_ignore_ascii_case(b"bearer ") {
                    return Err("missing");
                }
                rest
            }
        };
        let key = key.trim_ascii();
        if key.is_empty() {
            Err("missing")
        } else {
            Ok(key)
        }
    }
}

impl Default for ApiKeyHeader {
    fn default() -> Self {
        Self::x_api_key()
    }
}

impl fmt::Debug for ApiKeyHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiKeyHeader::Header(name) => write!(f, "Header({name})"),
            ApiKeyHeader::Bearer => f.write_str("Bearer"),
        }
    }
}

impl TryFrom<String> for ApiKeyHeader {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.eq_ignore_ascii_case("bearer") {
            return Ok(ApiKeyHeader::Bearer);
        }
        HeaderName::try_from(s.as_str())
            .map(ApiKeyHeader::Header)
            .map_err(|_| format!("`{s}` is neither \"bearer\" nor a valid header name"))
    }
}

impl From<ApiKeyHeader> for String {
    fn from(h: ApiKeyHeader) -> String {
        match h {
            ApiKeyHeader::Header(name) => name.as_str().to_owned(),
            ApiKeyHeader::Bearer => "bearer".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_header_and_bearer() {
        let mut h = http::HeaderMap::new();
        h.insert("x-api-key", "k1".parse().unwrap());
        h.insert("authorization", "bEaReR  k2 ".parse().unwrap());
        assert_eq!(ApiKeyHeader::default().extract(&h), Ok(&b"k1"[..]));
        assert_eq!(ApiKeyHeader::Bearer.extract(&h), Ok(&b"k2"[..]));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(ApiKeyHeader::Bearer.extract(&h), Err("missing"));
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(ApiKeyHeader::Bearer.extract(&h), Err("missing"));
        assert!(ApiKeyHeader::try_from("bad header".to_owned()).is_err());
    }

    #[test]
    fn a_repeated_key_header_is_refused() {
        // Row 11 of issue 19: with two `x-api-key` headers the first won.
        let mut h = http::HeaderMap::new();
        h.append("x-api-key", "k1".parse().unwrap());
        h.append("x-api-key", "k2".parse().unwrap());
        assert_eq!(ApiKeyHeader::default().extract(&h), Err("duplicate"));
        h.append("authorization", "Bearer a".parse().unwrap());
        h.append("authorization", "Bearer b".parse().unwrap());
        assert_eq!(ApiKeyHeader::Bearer.extract(&h), Err("duplicate"));
    }
}
