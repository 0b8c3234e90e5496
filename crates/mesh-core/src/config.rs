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
use std::ops::RangeInclusive;
use std::time::Duration;

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

    /// Checks that the duration `value` of the field `path` lies in `range`;
    /// if not, records `must be within 1ms..=24h, got 30000000s` (the range
    /// in humantime units). Returns whether it did.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mesh_core::config::InvalidConfig;
    ///
    /// let mut errors = InvalidConfig::default();
    /// let day = Duration::from_secs(86_400);
    /// assert!(errors.check_duration("deadline", Duration::from_secs(5), Duration::from_millis(1)..=day));
    /// assert!(!errors.check_duration("deadline", Duration::MAX, Duration::from_millis(1)..=day));
    /// assert!(errors.to_string().contains("`deadline` must be within 1ms..=24h, got"));
    /// ```
    pub fn check_duration(
        &mut self,
        path: &str,
        value: Duration,
        range: RangeInclusive<Duration>,
    ) -> bool {
        if range.contains(&value) {
            return true;
        }
        self.push(
            path.to_owned(),
            format!(
                "must be within {}..={}, got {value:?}",
                Short(*range.start()),
                Short(*range.end())
            ),
        );
        false
    }

    /// Checks that the count `value` of the field `path` lies in `range`; if
    /// not, records `must be within 1..=1000000, got 0`. Returns whether it
    /// did.
    pub fn check_count(&mut self, path: &str, value: u64, range: RangeInclusive<u64>) -> bool {
        if range.contains(&value) {
            return true;
        }
        self.push(
            path.to_owned(),
            format!(
                "must be within {}..={}, got {value}",
                range.start(),
                range.end()
            ),
        );
        false
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

/// A range bound in the largest whole unit: `24h`, `5min`, `1ms`, `0s`.
struct Short(Duration);

impl fmt::Display for Short {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("h", 3_600_000_000_000u128),
            ("min", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("µs", 1_000),
        ] {
            if nanos.is_multiple_of(size) {
                return write!(f, "{}{unit}", nanos / size);
            }
        }
        write!(f, "{nanos}ns")
    }
}

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
    fn ranges_are_checked_and_named_in_humantime_units() {
        let mut errors = InvalidConfig::default();
        let ms = Duration::from_millis;
        assert!(errors.check_duration("a", ms(1), ms(1)..=ms(86_400_000)));
        assert!(!errors.check_duration("b", Duration::ZERO, ms(1)..=ms(300_000)));
        assert!(!errors.check_duration("c", Duration::MAX, Duration::ZERO..=ms(1500)));
        assert!(!errors.check_duration("d", ms(2), Duration::from_nanos(1)..=ms(1)));
        assert!(errors.check_count("e", 7, 1..=7));
        assert!(!errors.check_count("f", 0, 1..=1_000_000));
        let reasons: Vec<_> = errors.errors().iter().map(FieldError::reason).collect();
        assert_eq!(
            reasons,
            [
                "must be within 1ms..=5min, got 0ns",
                "must be within 0s..=1500ms, got 18446744073709551615.999999999s",
                "must be within 1ns..=1ms, got 2ms",
                "must be within 1..=1000000, got 0",
            ]
        );
    }

    #[test]
    fn empty_is_ok() {
        assert_eq!(InvalidConfig::default().into_result(), Ok(()));
    }
}
