//! Configuration errors that name the bad field.
//!
//! Every mesh config type has a `validate()` that checks each field against its
//! allowed range and reports *all* the fields that are wrong, each by its path
//! (`retry.backoff.cap`), so a user fixes a config file in one pass instead of
//! one error at a time. Bad config is an error: never a panic, never silently
//! clamped.
//!
//! # Example
//!
//! ```
//! use mesh_core::config::InvalidConfig;
//!
//! let mut errors = InvalidConfig::default();
//! errors.push("max_retries", "must be at most 100 (got 1000)");
//! let errors = errors.nest("retry").nest("services.users");
//! assert_eq!(
//!     errors.to_string(),
//!     "invalid config: `services.users.retry.max_retries` must be at most 100 (got 1000)"
//! );
//! ```

use std::borrow::Cow;
use std::fmt;

/// One field that failed validation: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    path: String,
    reason: Cow<'static, str>,
}

impl FieldError {
    /// A field error for `path` (dotted, like `backoff.cap`).
    pub fn new(path: impl Into<String>, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The dotted path of the bad field, e.g. `services.users.retry.max_retries`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong with the field and what is allowed.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.path, self.reason)
    }
}

/// A config that failed validation, with every bad field it has.
///
/// Built empty, filled with [`push`](Self::push), prefixed with
/// [`nest`](Self::nest) as it travels up to the enclosing config, and turned into
/// a `Result` with [`into_result`](Self::into_result).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvalidConfig {
    errors: Vec<FieldError>,
}

impl InvalidConfig {
    /// An error for a single field.
    pub fn field(path: impl Into<String>, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            errors: vec![FieldError::new(path, reason)],
        }
    }

    /// Records one more bad field.
    pub fn push(&mut self, path: impl Into<String>, reason: impl Into<Cow<'static, str>>) {
        self.errors.push(FieldError::new(path, reason));
    }

    /// Records the result of validating a nested config found at `prefix`.
    pub fn merge_nested(&mut self, prefix: &str, result: Result<(), InvalidConfig>) {
        if let Err(inner) = result {
            self.errors.extend(inner.nest(prefix).errors);
        }
    }

    /// Puts `prefix.` in front of every path: the config was found at `prefix`.
    #[must_use]
    pub fn nest(mut self, prefix: &str) -> Self {
        if !prefix.is_empty() {
            for e in &mut self.errors {
                e.path = format!("{prefix}.{}", e.path);
            }
        }
        self
    }

    /// The bad fields, in the order they were found.
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// True when no field was bad.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(())` when no field was bad, `Err(self)` otherwise.
    pub fn into_result(self) -> Result<(), InvalidConfig> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid config: ")?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_field_with_its_path() {
        let mut outer = InvalidConfig::default();
        let mut inner = InvalidConfig::default();
        inner.push("base", "must be greater than zero");
        inner.push("multiplier", "must be at least 1 (got 0.5)");
        outer.merge_nested("backoff", inner.into_result());
        outer.merge_nested("other", Ok(()));
        let err = outer.nest("retry").into_result().unwrap_err();
        let paths: Vec<_> = err.errors().iter().map(FieldError::path).collect();
        assert_eq!(paths, ["retry.backoff.base", "retry.backoff.multiplier"]);
        assert!(
            err.to_string()
                .contains("`retry.backoff.multiplier` must be at least 1")
        );
    }

    #[test]
    fn empty_is_ok() {
        assert_eq!(InvalidConfig::default().into_result(), Ok(()));
    }
}
