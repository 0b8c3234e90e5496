//! [`CircuitBreakerLayer`]: builds one breaker per wrapped service.

use std::fmt;
use std::sync::Arc;

use mesh_core::Availability;
use mesh_core::classify::DefaultHttpClassifier;
use mesh_core::config::InvalidConfig;
use mesh_core::eos::{AtEndOfStream, AtResponse};
use mesh_core::target::{NewEndpoint, Target};
use tower_layer::Layer;

use crate::config::{BreakerConfig, OpenBehavior};
use crate::events::{BreakerEvent, Listener};
use crate::service::CircuitBreaker;
use crate::state::{Labels, Shared};

/// Wraps a service in a [`CircuitBreaker`].
///
/// Each call to [`Layer::layer`] builds a new, independent breaker with its
/// own [`Availability`] signal (read it with
/// [`CircuitBreaker::availability`]); it refuses calls itself while open, as
/// its [`OpenBehavior`] says.
///
/// # Inside a router: one breaker per endpoint target
///
/// The layer is also a [`NewEndpoint`]: given to the discovery router
/// (`DiscoveryLayer::builder(..).new_endpoint(..)`, or through mesh-stack),
/// it builds one breaker per endpoint from the endpoint's [`Target`]. Such a
/// breaker publishes into the target's health signal, is named
/// `service/endpoint` in its logs and metrics, and runs in
/// [`OpenBehavior::Report`]: it counts the endpoint's outcomes and trips,
/// but never refuses a call. Who gets traffic is the balancer's decision
/// alone: it ejects a tripped endpoint within its ejection cap, and past the
/// cap (panic mode) keeps sending to it, so an outage of every endpoint costs
/// the time the backends are down, not a whole open period. Each ejection
/// lasts `recovery_timeout` times the number of consecutive trips, capped at
/// `max_open_time`, as in Envoy's outlier detection.
///
/// Results are classified with `C`, the default
/// [`HttpClassifier`](mesh_core::classify::HttpClassifier) (as the
/// zero-sized [`DefaultHttpClassifier`]) unless you choose another: 5xx and
/// transport errors are failures, other 4xx are ignored. Any
/// [`Classify`](mesh_core::classify::Classify) can be used with
/// [`with_classifier`](Self::with_classifier), a closure
/// `Fn(&Result<Res, Err>) -> Outcome` through [`classify_fn`](crate::classify_fn). The classifier is cloned
/// into each call's future: keep it small (a closure, a `&'static`, an `Arc`).
///
/// # When a call's outcome is counted
///
/// By default ([`AtResponse`]) when the response arrives: for HTTP, at its
/// headers. [`at_end_of_stream`](Self::at_end_of_stream) counts an HTTP
/// response that looks successful when its *body* ends instead: a body that
/// fails (a broken connection, a timeout mid-body) is a failure, a gRPC
/// `grpc-status` in the trailers is classified, and slow-call detection
/// times the whole body (see [`mesh_core::eos`]).
#[derive(Clone)]
pub struct CircuitBreakerLayer<C = DefaultHttpClassifier, M = AtResponse> {
    config: BreakerConfig,
    classifier: C,
    listener: Option<Listener>,
    name: Option<Arc<str>>,
    mode: M,
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
            mode: AtResponse,
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
            mode: AtResponse,
        }
    }
}

impl<C, M> CircuitBreakerLayer<C, M> {
    /// Classifies results with `classifier` instead.
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2, M> {
        CircuitBreakerLayer {
            config: self.config,
            classifier,
            listener: self.listener,
            name: self.name,
            mode: self.mode,
        }
    }

    /// Counts an HTTP response that looks successful when its body ends
    /// (see the [type docs](CircuitBreakerLayer)). The classifier must also
    /// classify the end of a body ([`ClassifyEos`](mesh_core::eos::ClassifyEos)),
    /// as mesh's HTTP and gRPC classifiers do.
    pub fn at_end_of_stream(self) -> CircuitBreakerLayer<C, AtEndOfStream> {
        self.with_mode(AtEndOfStream)
    }

    /// Counts outcomes when `mode` says ([`mesh_core::eos::TrackOutcome`]).
    pub fn with_mode<M2>(self, mode: M2) -> CircuitBreakerLayer<C, M2> {
        CircuitBreakerLayer {
            config: self.config,
            classifier: self.classifier,
            listener: self.listener,
            name: self.name,
            mode,
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
    /// `service` metrics label. Use a bounded name (a service, not a URL).
    /// Breakers built for a router's endpoints are named `service/key`
    /// instead, and carry the endpoint's address in their logs and metrics.
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

impl<S, C: Clone, M: Clone> Layer<S> for CircuitBreakerLayer<C, M> {
    type Service = CircuitBreaker<S, C, M>;

    fn layer(&self, inner: S) -> Self::Service {
        let shared = Shared::new_arc(
            &self.config,
            Availability::new(),
            self.listener.clone(),
            Labels {
                name: self.name.clone(),
                ..Labels::default()
            },
        );
        CircuitBreaker::from_shared(inner, shared, self.classifier.clone(), self.mode.clone())
    }
}

impl<S, C: Clone, M: Clone> NewEndpoint<S> for CircuitBreakerLayer<C, M> {
    type Service = CircuitBreaker<S, C, M>;

    /// A breaker for one endpoint of a router: publishes into the target's
    /// health signal, is named after the target, and only reports (see the
    /// [type docs](CircuitBreakerLayer)).
    fn new_endpoint(&self, target: &Target, inner: S) -> Self::Service {
        let config = BreakerConfig {
            open_behavior: OpenBehavior::Report,
            ..self.config.clone()
        };
        let shared = Shared::new_arc(
            &config,
            target.health().clone(),
            self.listener.clone(),
            Labels {
                name: Some(Arc::clone(target.name_arc())),
                service: Some(Arc::clone(target.service_arc())),
                endpoint: Some(Arc::from(target.endpoint().address().to_string())),
            },
        );
        CircuitBreaker::from_shared(inner, shared, self.classifier.clone(), self.mode.clone())
    }
}

impl<C: fmt::Debug, M: fmt::Debug> fmt::Debug for CircuitBreakerLayer<C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("config", &self.config)
            .field("classifier", &self.classifier)
            .field("listener", &self.listener.is_some())
            .field("name", &self.name)
            .field("mode", &self.mode)
            .finish()
    }
}
