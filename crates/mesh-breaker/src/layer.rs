//! [`CircuitBreakerLayer`]: builds one breaker per wrapped service.

use std::fmt;
use std::sync::Arc;

use mesh_core::Availability;
use mesh_core::classify::DefaultHttpClassifier;
use mesh_core::config::InvalidConfig;
use tower_layer::Layer;

use crate::config::BreakerConfig;
use crate::events::{BreakerEvent, Listener};
use crate::service::CircuitBreaker;
use crate::state::Shared;

/// Wraps a service in a [`CircuitBreaker`].
///
/// Each call to [`Layer::layer`] builds a new, independent breaker (one per
/// endpoint when the discovery router builds each endpoint's stack). The
/// breaker publishes its state into the [`Availability`] of the endpoint being
/// built ([`Availability::current`]), or into its own signal outside such a
/// scope; read it with [`CircuitBreaker::availability`].
///
/// Results are classified with `C`, the default
/// [`HttpClassifier`](mesh_core::classify::HttpClassifier) (as the
/// zero-sized [`DefaultHttpClassifier`]) unless you choose another: 5xx and
/// transport errors are failures, other 4xx are ignored. Any
/// [`Classify`](mesh_core::classify::Classify), a closure included, can be used
/// with [`with_classifier`](Self::with_classifier). The classifier is cloned
/// into each call's future: keep it small (a closure, a `&'static`, an `Arc`).
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = DefaultHttpClassifier> {
    config: BreakerConfig,
    classifier: C,
    listener: Option<Listener>,
    name: Option<Arc<str>>,
}

impl CircuitBreakerLayer {
    /// A layer with `config`, checked with [`BreakerConfig::validate`].
    pub fn new(config: BreakerConfig) -> Result<Self, InvalidConfig> {
        config.validate()?;
        Ok(Self {
            config,
            classifier: DefaultHttpClassifier,
            listener: None,
            name: None,
        })
    }
}

impl Default for CircuitBreakerLayer {
    /// The seed's breaker: 5 consecutive failures, 60 s open, 3 probes.
    fn default() -> Self {
        Self {
            config: BreakerConfig::default(),
            classifier: DefaultHttpClassifier,
            listener: None,
            name: None,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Classifies results with `classifier` instead.
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            config: self.config,
            classifier,
            listener: self.listener,
            name: self.name,
        }
    }

    /// Calls `listener` on every transition, refused call, slow call and
    /// timed-out probe. It runs inline on the thread that caused the event:
    /// keep it short, and do not block.
    #[must_use]
    pub fn on_event(mut self, listener: impl Fn(&BreakerEvent) + Send + Sync + 'static) -> Self {
        self.listener = Some(Listener(Arc::new(listener)));
        self
    }

    /// Names the breakers this layer builds, in `tracing` events and as the
    /// `breaker` metrics label. Use a bounded name (a service, not a URL).
    #[must_use]
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let availability = Availability::current().unwrap_or_default();
        let shared = Shared::new_arc(
            &self.config,
            availability,
            self.listener.clone(),
            self.name.clone(),
        );
        CircuitBreaker::from_shared(inner, shared, self.classifier.clone())
    }
}

impl<C: fmt::Debug> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("config", &self.config)
            .field("classifier", &self.classifier)
            .field("listener", &self.listener.is_some())
            .field("name", &self.name)
            .finish()
    }
}
