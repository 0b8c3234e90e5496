//! The router's errors.

use std::sync::Arc;
use std::time::Duration;

/// No endpoint of the service could take the request within the bounded wait.
///
/// Says how many endpoints the router knew and how many of them were
/// unavailable (their breakers open), so an operator can tell "discovery found
/// nothing" from "everything is ejected". Find it in a `BoxError` with
/// `downcast_ref::<NoReadyEndpoint>()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no ready endpoint for service `{service}` after waiting {waited:?}: \
     {known} known, {unavailable} unavailable"
)]
pub struct NoReadyEndpoint {
    pub(crate) service: Arc<str>,
    pub(crate) known: usize,
    pub(crate) unavailable: usize,
    pub(crate) waited: Duration,
}

impl NoReadyEndpoint {
    /// The logical service.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// How many endpoints the router knew.
    pub fn known(&self) -> usize {
        self.known
    }

    /// How many of them were unavailable (ejected by their breakers).
    pub fn unavailable(&self) -> usize {
        self.unavailable
    }

    /// How long the request waited for one.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// The chosen endpoint's stack did not become ready within the bounded wait
/// (its breaker stayed open in readiness mode, say, while the balancer was in
/// panic mode).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("endpoint `{endpoint}` did not become ready within {waited:?}")]
pub struct EndpointNotReady {
    pub(crate) endpoint: String,
    pub(crate) waited: Duration,
}

impl EndpointNotReady {
    /// The endpoint's key.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// How long the request waited for it.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}
