//! The errors retry adds.
//!
//! Both wrap the last attempt's own error as their `source()` when there was
//! one. When the last attempt produced a *response* (a 503, say), retry
//! returns that response rather than an error: the server's answer is more
//! useful to the caller than ours.

use std::fmt;

use mesh_core::BoxError;

/// A retry was needed but the retry budget was spent.
///
/// Returned in place of the last attempt's error (which is its `source()`).
#[derive(Debug, thiserror::Error)]
#[error("retry budget exhausted")]
pub struct BudgetExhausted {
    #[source]
    source: Option<BoxError>,
}

impl BudgetExhausted {
    pub(crate) fn new(source: Option<BoxError>) -> Self {
        Self { source }
    }
}

/// The request's overall deadline passed, or left too little time for
/// another attempt.
#[derive(thiserror::Error)]
#[error("request deadline exceeded")]
pub struct DeadlineExceeded {
    #[source]
    source: Option<BoxError>,
}

impl DeadlineExceeded {
    /// The deadline passed; `source` says during what, if known (a layer
    /// below the retry that enforces the deadline, such as mesh-stack's
    /// per-attempt timeout in a response body, says so).
    pub fn new(source: Option<BoxError>) -> Self {
        Self { source }
    }
}

impl fmt::Debug for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineExceeded")
            .field("source", &self.source)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn found_again_by_downcast_with_source() {
        let e: BoxError = Box::new(BudgetExhausted::new(Some("connection refused".into())));
        let b = e.downcast_ref::<BudgetExhausted>().unwrap();
        assert_eq!(b.source().unwrap().to_string(), "connection refused");
        let e: BoxError = Box::new(DeadlineExceeded::new(None));
        assert!(e.is::<DeadlineExceeded>());
        assert_eq!(e.to_string(), "request deadline exceeded");
    }
}
