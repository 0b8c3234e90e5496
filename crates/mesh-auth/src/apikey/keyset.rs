//! The server's set of accepted keys, held only as SHA-256 hashes.

use std::fmt;

use mesh_core::config::InvalidConfig;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::header::ApiKeyHeader;
use crate::identity::CallerIdentity;
use crate::secret::Secret;

/// The API keys a server accepts, each mapped to the caller it identifies.
///
/// Only SHA-256 hashes are kept, so a memory dump or a config file does not
/// give the keys away. A presented key is hashed once and compared with
/// *every* entry in constant time (`subtle`), so timing tells an attacker
/// nothing about how close a guess was. Several keys may map to one caller:
/// add the new key, roll the clients, then remove the old one.
///
/// Keys shorter than [`MIN_KEY_LEN`] bytes are never accepted: such a key
/// is guessable, whatever hashing does.
///
/// # Example
///
/// ```
/// use mesh_auth::apikey::ApiKeySet;
///
/// let keys = ApiKeySet::new()
///     .with_key("billing", &"sk-old-0123456789abcdef".into())
///     .with_key("billing", &"sk-new-0123456789abcdef".into());
/// assert_eq!(
///     keys.verify(b"sk-new-0123456789abcdef").map(|id| id.as_str()),
///     Some("billing")
/// );
/// assert!(keys.verify(b"sk-guess-0123456789abcd").is_none());
/// ```
#[derive(Clone, Default)]
pub struct ApiKeySet {
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    // The SHA-256 as four words: four constant-time compares instead of 32.
    hash: [u64; 4],
    identity: CallerIdentity,
}

impl ApiKeySet {
    /// An empty set: every key is rejected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `key` as `identity`. The key itself is not kept.
    ///
    /// A key shorter than [`MIN_KEY_LEN`] bytes is logged (WARN, without the
    /// key) and will never verify.
    #[must_use]
    pub fn with_key(mut self, identity: &str, key: &Secret) -> Self {
        if key.expose().len() < MIN_KEY_LEN {
            tracing::warn!(
                identity,
                min_len = MIN_KEY_LEN,
                "API key is too short and will never be accepted"
            );
        }
        self.entries.push(Entry {
            hash: words(&sha256(key.expose())),
            identity: CallerIdentity::api_key(identity),
        });
        self
    }

    /// Accepts the key whose SHA-256 is `sha256_hex` (64 hex digits) as `identity`.
    pub fn with_hash(mut self, identity: &str, sha256_hex: &str) -> Result<Self, InvalidConfig> {
        let hash = parse_hex(sha256_hex)
            .ok_or_else(|| InvalidConfig::field("sha256", "must be 64 hexadecimal digits"))?;
        self.entries.push(Entry {
            hash: words(&hash),
            identity: CallerIdentity::api_key(identity),
        });
        Ok(self)
    }

    /// The hex SHA-256 of a key: what goes in a server's config.
    pub fn hash_hex(key: &Secret) -> String {
        use fmt::Write;
        sha256(key.expose())
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    }

    /// The caller a presented key identifies, or `None`. Hashes once, then
    /// compares against every entry in constant time.
    pub fn verify(&self, presented: &[u8]) -> Option<&CallerIdentity> {
        if presented.len() < MIN_KEY_LEN {
            return None;
        }
        let hash = words(&sha256(presented));
        let mut found = None;
        // No early exit: the time taken does not depend on which entry matched.
        for entry in &self.entries {
            let equal = entry.hash[0].ct_eq(&hash[0])
                & entry.hash[1].ct_eq(&hash[1])
                & entry.hash[2].ct_eq(&hash[2])
                & entry.hash[3].ct_eq(&hash[3]);
            if bool::from(equal) {
                found = Some(&entry.identity);
            }
        }
        found
    }

    /// How many keys are accepted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no key is accepted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for ApiKeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes are not secrets, but there is no reason to print them either.
        f.debug_list()
            .entries(self.entries.iter().map(|e| &e.identity))
            .finish()
    }
}

/// The shortest API key accepted, in bytes: 16 (128 bits when random).
/// Clients refuse to send a shorter one, servers to accept one.
pub const MIN_KEY_LEN: usize = 16;

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn words(hash: &[u8; 32]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (word, chunk) in out.iter_mut().zip(hash.chunks_exact(8)) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        *word = u64::from_le_bytes(bytes);
    }
    out
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// The serde form of the server's API-key check.
///
/// ```json
/// { "header": "x-api-key",
///   "keys": [ { "identity": "billing", "sha256": "9f86d08...0a08" } ] }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[non_exhaustive]
pub struct ApiKeyAuthConfig {
    /// Where the key travels (`"x-api-key"` by default, or `"bearer"`).
    #[cfg_attr(feature = "serde", serde(default))]
    pub header: ApiKeyHeader,
    /// The accepted keys, by hash.
    pub keys: Vec<ApiKeyEntry>,
}

/// One accepted key: its hash and the caller it identifies.
///
/// `Debug` leaves the hash out: an unsalted SHA-256 of a weak key is a
/// dictionary lookup away from the key.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[non_exhaustive]
pub struct ApiKeyEntry {
    /// The caller this key identifies.
    pub identity: String,
    /// The key's SHA-256, 64 hex digits (see [`ApiKeySet::hash_hex`]).
    pub sha256: String,
}

impl fmt::Debug for ApiKeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyEntry")
            .field("identity", &self.identity)
            .field("sha256", &"[redacted]")
            .finish()
    }
}

impl ApiKeyEntry {
    /// An entry mapping the key with this hex SHA-256 to `identity`.
    pub fn new(identity: impl Into<String>, sha256: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            sha256: sha256.into(),
        }
    }
}

impl ApiKeyAuthConfig {
    /// A config accepting these keys in `header`.
    pub fn new(header: ApiKeyHeader, keys: Vec<ApiKeyEntry>) -> Self {
        Self { header, keys }
    }

    /// Checks every field; the error names each bad one (`keys[1].sha256`).
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        if self.keys.is_empty() {
            errors.push("keys", "must list at least one key");
        }
        for (i, k) in self.keys.iter().enumerate() {
            if k.identity.trim().is_empty() {
                errors.push(format!("keys[{i}].identity"), "must not be empty");
            }
            if parse_hex(&k.sha256).is_none() {
                errors.push(
                    format!("keys[{i}].sha256"),
                    "must be 64 hexadecimal digits (the key's SHA-256)",
                );
            }
        }
        errors.into_result()
    }

    /// The key set, after [`validate`](Self::validate).
    pub fn key_set(&self) -> Result<ApiKeySet, InvalidConfig> {
        self.validate()?;
        let mut set = ApiKeySet::new();
        for k in &self.keys {
            set = set.with_hash(&k.identity, &k.sha256)?;
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_and_rotation_keeps_both_keys() {
        let old = Secret::from("old-0123456789abcdef");
        let hex = ApiKeySet::hash_hex(&old);
        assert_eq!(hex.len(), 64);
        let set = ApiKeySet::new()
            .with_hash("svc", &hex)
            .unwrap()
            .with_key("svc", &"new-0123456789abcdef".into())
            .with_key("other", &"x-0123456789abcdef".into());
        assert_eq!(set.verify(b"old-0123456789abcdef").unwrap().as_str(), "svc");
        assert_eq!(set.verify(b"new-0123456789abcdef").unwrap().as_str(), "svc");
        assert_eq!(set.verify(b"x-0123456789abcdef").unwrap().as_str(), "other");
        assert!(set.verify(b"").is_none());
        assert!(!format!("{set:?}").contains(&hex));
    }

    #[test]
    fn short_keys_are_never_accepted_and_hashes_never_debug_printed() {
        // Row 11 of issue 19: a 1-character key was accepted, and the
        // config's Debug printed the unsalted hashes.
        let set = ApiKeySet::new().with_key("svc", &"k".into());
        assert!(set.verify(b"k").is_none());
        let hex = ApiKeySet::hash_hex(&Secret::from("k"));
        let cfg =
            ApiKeyAuthConfig::new(ApiKeyHeader::default(), vec![ApiKeyEntry::new("svc", &hex)]);
        assert!(!format!("{cfg:?}").contains(&hex));
        assert!(!format!("{cfg:#?}").contains(&hex[..16]));
    }

    #[test]
    fn validate_names_each_bad_entry() {
        let cfg = ApiKeyAuthConfig::new(
            ApiKeyHeader::default(),
            vec![
                ApiKeyEntry::new("a", "zz"),
                ApiKeyEntry::new("", "a".repeat(64)),
            ],
        );
        let err = cfg.validate().unwrap_err();
        let paths: Vec<_> = err.errors().iter().map(|e| e.path().to_owned()).collect();
        assert_eq!(paths, ["keys[0].sha256", "keys[1].identity"]);
        assert!(ApiKeyAuthConfig::default().validate().is_err());
    }

    proptest::proptest! {
        #[test]
        fn hex_parser_never_panics(s in ".{0,80}") {
            let _ = parse_hex(&s);
        }
    }
}
