//! [`RetryLayer`].

use mesh_core::classify::DefaultHttpClassifier;
use mesh_core::config::InvalidConfig;
use tower_layer::Layer;

use crate::budget::RetryBudget;
use crate::config::RetryConfig;
use crate::policy::RetryPolicy;
use crate::service::RetryService;

/// Wraps a service in [`RetryService`]: budgeted retries of idempotent
/// requests with backoff, pushback, an overall deadline and per-attempt
/// timeouts.
///
/// Every service the layer builds shares one budget (and so do their clones).
#[derive(Debug, Clone)]
pub struct RetryLayer<C = DefaultHttpClassifier> {
    policy: RetryPolicy<C>,
}

impl RetryLayer<DefaultHttpClassifier> {
    /// A layer for `config`, classifying with the default `HttpClassifier`
    /// (as the zero-sized [`DefaultHttpClassifier`], the breaker's and the
    /// router's default too).
    /// Fails if the config is invalid.
    pub fn new(config: RetryConfig) -> Result<Self, InvalidConfig> {
        Ok(Self::from_policy(RetryPolicy::new(config)?))
    }
}

impl<C> RetryLayer<C> {
    /// A layer for `config` that classifies with `classifier` (use
    /// `GrpcClassifier` for gRPC).
    pub fn with_classifier(config: RetryConfig, classifier: C) -> Result<Self, InvalidConfig> {
        Ok(Self::from_policy(RetryPolicy::with_classifier(
            config, classifier,
        )?))
    }

    /// A layer deciding with `policy` (and its budget).
    pub const fn from_policy(policy: RetryPolicy<C>) -> Self {
        Self { policy }
    }

    /// The same layer drawing from another, shared, budget.
    #[must_use]
    pub fn with_budget(self, budget: RetryBudget) -> Self
    where
        C: Clone,
    {
        Self::from_policy(self.policy.with_budget(budget))
    }

    /// The same layer telling never-sent failures (which it requeues) with
    /// `unsent`: see [`RetryPolicy::unsent_errors`].
    #[must_use]
    pub fn unsent_errors(self, unsent: crate::UnsentErrors) -> Self
    where
        C: Clone,
    {
        Self::from_policy(self.policy.unsent_errors(unsent))
    }

    /// The same layer retrying for the service `service`: its give-up logs
    /// and its metrics' `service` label (see [`RetryPolicy::named`]).
    #[must_use]
    pub fn named(self, service: impl Into<std::sync::Arc<str>>) -> Self
    where
        C: Clone,
    {
        Self::from_policy(self.policy.named(service))
    }

    /// The same layer calling `hook` with every attempt's status or error:
    /// see [`RetryPolicy::on_attempt`].
    #[must_use]
    pub fn on_attempt(self, hook: crate::AttemptHook) -> Self
    where
        C: Clone,
    {
        Self::from_policy(self.policy.on_attempt(hook))
    }

    /// The policy the layer's services decide with.
    pub fn policy(&self) -> &RetryPolicy<C> {
        &self.policy
    }
}

impl<S, C> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService::new(inner, self.policy.clone())
    }
}
