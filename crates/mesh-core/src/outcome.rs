//! What happened to one call, in the words every layer understands.

use crate::pushback::Pushback;

/// What one call's result says about the server that handled it.
///
/// A classifier ([`Classify`](crate::classify::Classify)) turns a result into an
/// `Outcome`; the breaker counts it, retry decides on it, the balancer scores the
/// endpoint with it. `Copy` and allocation-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The server did its job.
    Success,
    /// The server failed (a 5xx, a reset connection, gRPC `UNAVAILABLE`, ...).
    Failure(Failure),
    /// The result says nothing about the server's health (a 404, a 400, gRPC
    /// `NOT_FOUND`): counted as neither success nor failure.
    Ignored,
}

impl Outcome {
    /// A failure that may be retried, with no pushback.
    pub const fn retryable() -> Self {
        Outcome::Failure(Failure {
            retryable: true,
            pushback: None,
        })
    }

    /// A failure that must not be retried.
    pub const fn fatal() -> Self {
        Outcome::Failure(Failure {
            retryable: false,
            pushback: None,
        })
    }

    /// True for [`Outcome::Success`].
    pub const fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// True for [`Outcome::Failure`].
    pub const fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failure(_))
    }

    /// True when this is a failure that may be retried (and the server did not
    /// say "do not retry").
    pub const fn is_retryable(&self) -> bool {
        match self {
            Outcome::Failure(f) => f.retryable && !matches!(f.pushback, Some(Pushback::DoNotRetry)),
            _ => false,
        }
    }

    /// The pushback the server sent with a failure, if any.
    pub const fn pushback(&self) -> Option<Pushback> {
        match self {
            Outcome::Failure(f) => f.pushback,
            _ => None,
        }
    }
}

/// The details of a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Failure {
    /// Whether another attempt could succeed (connection errors, 502, 503, 504,
    /// 429, gRPC `UNAVAILABLE`, ...). Retry still checks that the request is
    /// safe to repeat.
    pub retryable: bool,
    /// What the server asked of the client (`Retry-After`,
    /// `grpc-retry-pushback-ms`).
    pub pushback: Option<Pushback>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn do_not_retry_pushback_wins_over_retryable() {
        let o = Outcome::Failure(Failure {
            retryable: true,
            pushback: Some(Pushback::DoNotRetry),
        });
        assert!(o.is_failure() && !o.is_retryable());
        let o = Outcome::Failure(Failure {
            retryable: true,
            pushback: Some(Pushback::After(Duration::from_secs(1))),
        });
        assert!(o.is_retryable());
        assert_eq!(o.pushback(), Some(Pushback::After(Duration::from_secs(1))));
        assert!(!Outcome::Ignored.is_failure() && !Outcome::Success.is_retryable());
        assert!(Outcome::retryable().is_retryable() && !Outcome::fatal().is_retryable());
    }
}
