//! The error an open breaker returns.

use std::fmt;
use std::time::Duration;

use crate::state::CircuitState;

/// The breaker refused the call without sending it.
///
/// Returned (boxed, as tower's `BoxError`) by a breaker in
/// [`OpenBehavior::FailFast`](crate::OpenBehavior::FailFast) mode when it is
/// open, forced open, or half-open with every probe permit taken. Find it with
/// `error.downcast_ref::<BreakerOpen>()`.
///
/// ```
/// use mesh_breaker::BreakerOpen;
/// # fn check(error: mesh_core::BoxError) {
/// if let Some(open) = error.downcast_ref::<BreakerOpen>() {
///     println!("endpoint ejected, retry in {:?}", open.remaining());
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerOpen {
    state: CircuitState,
    remaining: Option<Duration>,
}

impl BreakerOpen {
    pub(crate) fn new(state: CircuitState, remaining: Option<Duration>) -> Self {
        Self { state, remaining }
    }

    /// How long the breaker stays open from the moment it refused the call:
    /// `None` when the breaker is forced open or half-open (no end is known).
    pub fn remaining(&self) -> Option<Duration> {
        self.remaining
    }

    /// The state the breaker was in when it refused the call.
    pub fn state(&self) -> CircuitState {
        self.state
    }
}

impl fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.state, self.remaining) {
            (CircuitState::HalfOpen, _) => {
                f.write_str("circuit breaker is half-open and every probe permit is taken")
            }
            (CircuitState::ForcedOpen, _) => f.write_str("circuit breaker is forced open"),
            (_, Some(d)) => write!(f, "circuit breaker is open for another {d:?}"),
            (_, None) => f.write_str("circuit breaker is open"),
        }
    }
}

impl std::error::Error for BreakerOpen {}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::BoxError;

    #[test]
    fn found_again_in_a_box_error() {
        let e: BoxError = Box::new(BreakerOpen::new(
            CircuitState::Open,
            Some(Duration::from_secs(3)),
        ));
        let open = e.downcast_ref::<BreakerOpen>().unwrap();
        assert_eq!(open.remaining(), Some(Duration::from_secs(3)));
        assert_eq!(e.to_string(), "circuit breaker is open for another 3s");
        let half = BreakerOpen::new(CircuitState::HalfOpen, None);
        assert!(half.to_string().contains("probe permit"));
        assert!(!mesh_core::classify::is_transient_error(&half));
    }
}
