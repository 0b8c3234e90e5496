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

    /// The presented key in `headers`, if any. No allocation.
    pub(crate) fn extract<'a>(&self, headers: &'a http::HeaderMap) -> Option<&'a [u8]> {
        let value = headers.get(self.name())?.as_bytes();
        let key = match self {
            ApiKeyHeader::Header(_) => value,
            ApiKeyHeader::Bearer => {
                let (scheme, rest) = value.split_at_checked(7)?;
                if !scheme.eq_ignore_ascii_case(b"bearer ") {
                    return None;
                }
                rest
            }
        };
        let key = key.trim_ascii();
        (!key.is_empty()).then_some(key)
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
        assert_eq!(ApiKeyHeader::default().extract(&h), Some(&b"k1"[..]));
        assert_eq!(ApiKeyHeader::Bearer.extract(&h), Some(&b"k2"[..]));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(ApiKeyHeader::Bearer.extract(&h), None);
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(ApiKeyHeader::Bearer.extract(&h), None);
        assert!(ApiKeyHeader::try_from("bad header".to_owned()).is_err());
    }
}
