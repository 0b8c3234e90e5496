//! [`DiscoveryLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use mesh_balance::{BalanceConfig, Balancer};
use mesh_core::classify::DefaultHttpClassifier;
use mesh_core::config::InvalidConfig;
use mesh_core::eos::{AtEndOfStream, AtResponse};
use mesh_core::target::{LayerEndpoint, NewEndpoint};
use tower_layer::{Identity, Layer};

use super::rewrite::{HostHeader, Rewrite};
use super::service::DiscoveryService;
use crate::Discovery;

/// The default bound on how long a request waits for a ready endpoint.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(1);

/// The router's settings, as they appear in config files (serde with the
/// `serde` feature; durations in humantime form).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct RouterConfig {
    /// How an endpoint is chosen, ejection cap, slow start.
    pub balance: BalanceConfig,
    /// How long a request waits for a ready endpoint before failing with
    /// [`NoReadyEndpoint`](super::NoReadyEndpoint). 1ms..=5min, default 1s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub ready_timeout: Duration,
    /// What happens to the `Host` header. Default [`HostHeader::Keep`].
    pub host_header: HostHeader,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            balance: BalanceConfig::default(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            host_header: HostHeader::Keep,
        }
    }
}

impl RouterConfig {
    /// Checks every field and names each bad one.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        errors.merge_nested("balance", self.balance.validate());
        if self.ready_timeout < Duration::from_millis(1)
            || self.ready_timeout > Duration::from_secs(300)
        {
            errors.push(
                "ready_timeout",
                format!("must be within 1ms..=5min, got {:?}", self.ready_timeout),
            );
        }
        errors.into_result()
    }
}

/// Makes a client talk to a *service* instead of an address.
///
/// Wraps an inner client `S` (hyper-util's legacy client, `reqwest::Client`,
/// a tonic-compatible HTTP/2 client, or any `Service<http::Request<B>>`) and
/// routes each request to a live endpoint of the service that `discovery`
/// watches. Each endpoint gets its own stack, built by `N` (a
/// [`NewEndpoint`]) from the endpoint's [`Target`](mesh_core::Target) over a
/// [`Rewrite`] of the shared inner client. See the [module docs](super).
///
/// All services this layer builds share one balancer (one set of load and
/// health accounting for the service); build one layer per logical service.
#[derive(Clone)]
pub struct DiscoveryLayer<N = LayerEndpoint<Identity>, C = DefaultHttpClassifier, M = AtResponse> {
    discovery: Discovery,
    service: Arc<str>,
    balancer: Balancer,
    new_endpoint: N,
    classifier: C,
    mode: M,
    ready_timeout: Duration,
    host: HostHeader,
}

impl<N, C, M> fmt::Debug for DiscoveryLayer<N, C, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoveryLayer")
            .field("service", &self.service)
            .field("balance", self.balancer.config())
            .field("ready_timeout", &self.ready_timeout)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl DiscoveryLayer {
    /// Routes over `discovery`'s endpoints with the default settings: p2c
    /// peak-EWMA, no per-endpoint layer, HTTP classification, a 1 s bound on
    /// waiting for an endpoint.
    pub fn new(discovery: Discovery) -> Self {
        let balancer = Balancer::named(discovery.name().to_owned(), BalanceConfig::default())
            .expect("the default balance config is valid");
        Self {
            service: Arc::from(discovery.name()),
            discovery,
            balancer,
            new_endpoint: LayerEndpoint(Identity::new()),
            classifier: DefaultHttpClassifier,
            mode: AtResponse,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            host: HostHeader::Keep,
        }
    }

    /// A builder, to choose the strategy, the per-endpoint layer and more.
    pub fn builder(discovery: Discovery) -> DiscoveryLayerBuilder {
        DiscoveryLayerBuilder {
            discovery,
            service: None,
            config: RouterConfig::default(),
            new_endpoint: LayerEndpoint(Identity::new()),
            classifier: DefaultHttpClassifier,
            mode: AtResponse,
        }
    }
}

impl<N, C, M> DiscoveryLayer<N, C, M> {
    /// The discovery handle this layer routes over.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// The balancer shared by the services this layer builds.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }
}

impl<S, N, C, M> Layer<S> for DiscoveryLayer<N, C, M>
where
    S: Clone,
    N: NewEndpoint<Rewrite<S>> + Clone,
    N::Service: Clone,
    C: Clone,
    M: Clone,
{
    type Service = DiscoveryService<S, N, C, M>;

    fn layer(&self, inner: S) -> Self::Service {
        DiscoveryService::new(
            Arc::clone(&self.service),
            inner,
            self.new_endpoint.clone(),
            self.classifier.clone(),
            self.mode.clone(),
            self.balancer.clone(),
            self.discovery.subscribe(),
            self.ready_timeout,
            self.host,
        )
    }
}

/// Builds a [`DiscoveryLayer`]; [`build`](Self::build) validates.
#[derive(Debug, Clone)]
pub struct DiscoveryLayerBuilder<
    N = LayerEndpoint<Identity>,
    C = DefaultHttpClassifier,
    M = AtResponse,
> {
    discovery: Discovery,
    service: Option<Arc<str>>,
    config: RouterConfig,
    new_endpoint: N,
    classifier: C,
    mode: M,
}

impl<N, C, M> DiscoveryLayerBuilder<N, C, M> {
    /// The service's name in endpoint targets (so in the per-endpoint
    /// breakers' logs and metrics) and in the balancer's: the logical name
    /// callers use (`users`). Defaults to the discovery source's name
    /// (`consul:users`, `channel:users`, ...).
    #[must_use]
    pub fn service(mut self, name: impl Into<Arc<str>>) -> Self {
        self.service = Some(name.into());
        self
    }

    /// All router settings at once (from a config file, say).
    #[must_use]
    pub fn config(mut self, config: RouterConfig) -> Self {
        self.config = config;
        self
    }

    /// The balancing strategy and its settings.
    #[must_use]
    pub fn balance(mut self, balance: BalanceConfig) -> Self {
        self.config.balance = balance;
        self
    }

    /// The bound on waiting for a ready endpoint (default 1 s).
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.config.ready_timeout = timeout;
        self
    }

    /// What happens to the `Host` header (default [`HostHeader::Keep`]).
    #[must_use]
    pub fn host_header(mut self, host: HostHeader) -> Self {
        self.config.host_header = host;
        self
    }

    /// A plain layer applied to each endpoint's [`Rewrite`] service (a
    /// per-attempt timeout, a concurrency limit): it knows nothing of the
    /// endpoint it serves. For a breaker that feeds the balancer, use
    /// [`new_endpoint`](Self::new_endpoint).
    pub fn endpoint_layer<L2>(self, layer: L2) -> DiscoveryLayerBuilder<LayerEndpoint<L2>, C, M> {
        self.new_endpoint(LayerEndpoint(layer))
    }

    /// What builds each endpoint's stack from its
    /// [`Target`](mesh_core::Target) (the endpoint, its health signal, the
    /// service name) over the endpoint's [`Rewrite`] service: linkerd's
    /// `NewService<Target>`. mesh-breaker's `CircuitBreakerLayer` is one (it
    /// builds a breaker that publishes into the target's signal, so the
    /// balancer ejects a tripped endpoint within its cap); compose it with
    /// plain layers through [`endpoint_fn`](mesh_core::target::endpoint_fn).
    pub fn new_endpoint<N2>(self, new_endpoint: N2) -> DiscoveryLayerBuilder<N2, C, M> {
        DiscoveryLayerBuilder {
            discovery: self.discovery,
            service: self.service,
            config: self.config,
            new_endpoint,
            classifier: self.classifier,
            mode: self.mode,
        }
    }

    /// How results are classified for the balancer's load and health
    /// accounting (default
    /// [`HttpClassifier`](mesh_core::classify::HttpClassifier); the classifier is cloned into
    /// every request's future, so pass something small or a reference; use
    /// [`GrpcClassifier`](mesh_core::classify::GrpcClassifier) for gRPC).
    pub fn classifier<C2>(self, classifier: C2) -> DiscoveryLayerBuilder<N, C2, M> {
        DiscoveryLayerBuilder {
            discovery: self.discovery,
            service: self.service,
            config: self.config,
            new_endpoint: self.new_endpoint,
            classifier,
            mode: self.mode,
        }
    }

    /// Records an HTTP response that looks successful in the balancer's
    /// load and health accounting when its *body* ends, not at its headers:
    /// the request counts as in flight until then, its latency is the time
    /// to the end of the body, and a body that fails (or a gRPC
    /// `grpc-status` in the trailers that is not `OK`) is the endpoint's
    /// failure. See [`mesh_core::eos`]. The classifier must classify the end
    /// of a body ([`ClassifyEos`](mesh_core::eos::ClassifyEos)), as mesh's
    /// HTTP and gRPC classifiers do.
    pub fn at_end_of_stream(self) -> DiscoveryLayerBuilder<N, C, AtEndOfStream> {
        DiscoveryLayerBuilder {
            discovery: self.discovery,
            service: self.service,
            config: self.config,
            new_endpoint: self.new_endpoint,
            classifier: self.classifier,
            mode: AtEndOfStream,
        }
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<DiscoveryLayer<N, C, M>, InvalidConfig> {
        self.config.validate()?;
        let service = self
            .service
            .unwrap_or_else(|| Arc::from(self.discovery.name()));
        let balancer = Balancer::named(Arc::clone(&service), self.config.balance)?;
        Ok(DiscoveryLayer {
            discovery: self.discovery,
            service,
            balancer,
            new_endpoint: self.new_endpoint,
            classifier: self.classifier,
            mode: self.mode,
            ready_timeout: self.config.ready_timeout,
            host: self.config.host_header,
        })
    }
}
