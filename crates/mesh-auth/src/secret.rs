//! Secrets that never show themselves.
//!
//! An API key that reaches a log line, a panic message or a metrics label is a
//! leaked key. [`Secret`] wraps the bytes so `Debug` prints `[redacted]` and
//! there is no `Display`; [`SecretSource`] says where a secret comes from
//! (an environment variable, a file, or a value) without holding it in a form
//! that prints.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// What a secret serializes as, and what reads back as an error.
#[cfg_attr(not(feature = "serde"), allow(dead_code))]
pub(crate) const REDACTED: &str = "[redacted]";

#[cfg(feature = "serde")]
pub(crate) const REDACTED_READ_BACK: &str = "this value is the `[redacted]` placeholder a config \
     is written out with, not a secret: put the secret back, or use `env`/`file`";

/// Secret bytes (an API key, a token). `Debug` shows `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into().into())
    }

    /// The secret itself. Keep the result out of logs.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s.as_bytes())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s.into_bytes())
    }
}

/// Where a secret comes from.
///
/// With the `serde` feature, it reads as `{ "env": "NAME" }`,
/// `{ "file": "/path" }` or `{ "value": "..." }`; a `value` in a config file
/// is only sensible in tests.
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum SecretSource {
    /// The named environment variable.
    Env(String),
    /// A file; surrounding whitespace (a trailing newline) is trimmed.
    File(PathBuf),
    /// The value itself.
    #[cfg_attr(feature = "serde", serde(with = "serde_secret"))]
    Value(Secret),
}

impl SecretSource {
    /// Reads the secret. The error names the variable or file, never the value.
    pub fn load(&self) -> Result<Secret, SecretError> {
        let bytes = match self {
            SecretSource::Env(name) => std::env::var(name)
                .map_err(|_| SecretError(format!("environment variable `{name}` is not set")))?
                .into_bytes(),
            SecretSource::File(path) => std::fs::read(path).map_err(|e| {
                SecretError(format!("cannot read secret file `{}`: {e}", path.display()))
            })?,
            SecretSource::Value(s) => s.expose().to_vec(),
        };
        let trimmed = bytes.trim_ascii();
        if trimmed.is_empty() {
            return Err(SecretError(format!("{self:?} is empty")));
        }
        Ok(Secret::new(trimmed))
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "Env({name:?})"),
            SecretSource::File(path) => write!(f, "File({path:?})"),
            SecretSource::Value(_) => f.write_str("Value([redacted])"),
        }
    }
}

/// A secret could not be loaded: the variable is unset, the file unreadable,
/// or the value empty. Names the source, never the value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(String);

impl SecretError {
    pub(crate) fn new(why: impl Into<String>) -> Self {
        SecretError(why.into())
    }
}

#[cfg(feature = "serde")]
mod serde_secret {
    use super::Secret;

    pub(super) fn serialize<S: serde::Serializer>(_: &Secret, s: S) -> Result<S::Ok, S::Error> {
        // Writing a config back out must not write the secret.
        s.serialize_str(super::REDACTED)
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        // A config written back out reads back in: the placeholder must not
        // become a working secret whose value is "[redacted]".
        if s == super::REDACTED {
            return Err(serde::de::Error::custom(super::REDACTED_READ_BACK));
        }
        Ok(Secret::from(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = SecretSource::Value(Secret::from("hunter2"));
        assert_eq!(format!("{s:?}"), "Value([redacted])");
        assert_eq!(format!("{:?}", s.load().unwrap()), "[redacted]");
        assert_eq!(s.load().unwrap().expose(), b"hunter2");
    }

    #[test]
    fn file_is_trimmed_and_missing_sources_are_errors() {
        let dir = std::env::temp_dir().join(format!("mesh-auth-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(SecretSource::File(path).load().unwrap().expose(), b"s3cret");
        let err = SecretSource::Env("MESH_AUTH_SURELY_UNSET_VAR".into())
            .load()
            .unwrap_err();
        assert!(err.to_string().contains("MESH_AUTH_SURELY_UNSET_VAR"));
        assert!(SecretSource::Value(Secret::from("  ")).load().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
