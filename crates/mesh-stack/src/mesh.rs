//! [`Mesh`] and [`MeshBuilder`]: ready-made client stacks from a [`MeshConfig`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use mesh_breaker::CircuitBreakerLayer;
use mesh_core::classify::{GrpcClassifier, HttpClassifier};
use mesh_core::config::InvalidConfig;
use mesh_discovery::consul::{
    ConsulClient, ConsulConfig, ConsulDiscovery, HealthQuery, WatchConfig,
};
use mesh_discovery::router::{DiscoveryLayer, DiscoveryService};
use mesh_discovery::{Discovery, EndpointSet, Publisher};
use mesh_retry::{ReplayBodyLayer, RetryLayer, RetryService, WithReplayBody};
use tower_layer::Layer;

use crate::config::{DiscoveryConfig, MeshConfig, ServiceConfig};
use crate::endpoint::EndpointLayer;

/// The ready-made client stack of one service over the inner client `S`:
/// retry, then the discovery router, then per endpoint a breaker and a
/// timeout. `Clone` and cheap to clone; no `Buffer`.
pub type MeshService<S, C = HttpClassifier> =
    RetryService<DiscoveryService<S, EndpointLayer<C>, C>, Arc<C>>;

/// The gRPC stack: [`MeshService`] with gRPC classification, behind a
/// [`ReplayBodyLayer`] so streaming tonic bodies can be retried.
pub type GrpcMeshService<S> = WithReplayBody<MeshService<S, GrpcClassifier>>;

/// Why a stack could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The config names no service with this name.
    #[error("no service named {name:?} in the mesh config (known: {known:?})")]
    UnknownService {
        /// The name asked for.
        name: String,
        /// The names the config has.
        known: Vec<String>,
    },
    /// The config (or the Consul environment) has bad values.
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
}

/// Builds a [`Mesh`]: the config plus what a file cannot hold (a Consul
/// client, a discovery source of your own).
#[derive(Debug)]
pub struct MeshBuilder {
    config: MeshConfig,
    consul: Option<ConsulClient>,
    sources: HashMap<String, Discovery>,
}

impl MeshBuilder {
    /// Starts from `config`.
    pub fn new(config: MeshConfig) -> Self {
        Self {
            config,
            consul: None,
            sources: HashMap::new(),
        }
    }

    /// The Consul client for services discovered through Consul (instead of
    /// `config.consul` or the environment).
    #[must_use]
    pub fn consul_client(mut self, client: ConsulClient) -> Self {
        self.consul = Some(client);
        self
    }

    /// Uses `discovery` for the service `name`, whatever its config's
    /// `discovery` says (a `ChannelSource`, a DNS source, a test's source).
    #[must_use]
    pub fn discovery(mut self, name: impl Into<String>, discovery: Discovery) -> Self {
        self.sources.insert(name.into(), discovery);
        self
    }

    /// Validates the config and builds the mesh. Discovery sources start
    /// lazily, when a service's first stack is built.
    pub fn build(self) -> Result<Mesh, MeshError> {
        self.config.validate()?;
        let consul = match (self.consul, &self.config.consul) {
            (Some(c), _) => Some(c),
            (None, Some(cfg)) => Some(ConsulClient::new(cfg)?),
            (None, None) => None,
        };
        Ok(Mesh {
            shared: Arc::new(Shared {
                config: self.config,
                consul: Mutex::new(consul),
                sources: Mutex::new(self.sources),
                publishers: Mutex::new(Vec::new()),
            }),
        })
    }
}

/// Ready-made client stacks for the services of a [`MeshConfig`].
///
/// Cheap to clone. Each service's discovery source is started once, when its
/// first stack is built, and shared by every stack built for it afterwards.
#[derive(Clone)]
pub struct Mesh {
    shared: Arc<Shared>,
}

struct Shared {
    config: MeshConfig,
    consul: Mutex<Option<ConsulClient>>,
    sources: Mutex<HashMap<String, Discovery>>,
    publishers: Mutex<Vec<Publisher>>,
}

impl fmt::Debug for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mesh")
            .field("services", &self.shared.config.services.keys())
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// A mesh for `config` (validated), with Consul from `config.consul` or
    /// the environment. See [`MeshBuilder`] for more control.
    pub fn new(config: MeshConfig) -> Result<Self, MeshError> {
        MeshBuilder::new(config).build()
    }

    /// A builder starting from `config`.
    pub fn builder(config: MeshConfig) -> MeshBuilder {
        MeshBuilder::new(config)
    }

    /// The config.
    pub fn config(&self) -> &MeshConfig {
        &self.shared.config
    }

    /// The config of the service `name`.
    pub fn service_config(&self, name: &str) -> Result<&ServiceConfig, MeshError> {
        self.shared
            .config
            .services
            .get(name)
            .ok_or_else(|| MeshError::UnknownService {
                name: name.to_owned(),
                known: self.shared.config.services.keys().cloned().collect(),
            })
    }

    /// The discovery handle of the service `name`, starting its source if
    /// this is the first use (a Consul watch needs a tokio runtime).
    pub fn discovery(&self, name: &str) -> Result<Discovery, MeshError> {
        let config = self.service_config(name)?;
        let mut sources = self
            .shared
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = sources.get(name) {
            return Ok(d.clone());
        }
        let discovery = match &config.discovery {
            DiscoveryConfig::Static { endpoints } => {
                let (publisher, discovery) =
                    Publisher::new(name, EndpointSet::new(endpoints.iter().cloned()));
                publisher.record_success();
                // Kept so the set's watch stays open for the router's waits.
                self.shared
                    .publishers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(publisher);
                discovery
            }
            DiscoveryConfig::Consul(source) => {
                let client = self.consul_client().map_err(|e| e.nest("consul"))?;
                let watch = WatchConfig {
                    query: HealthQuery {
                        tags: source.tags.clone(),
                        datacenter: source.datacenter.clone(),
                        passing_only: source.passing_only,
                        ..HealthQuery::new(source.service.as_deref().unwrap_or(name))
                    },
                    wait: source.wait,
                    ..WatchConfig::default()
                };
                ConsulDiscovery::spawn(client, watch)
                    .map_err(|e| e.nest(&format!("services.{name}.discovery")))?
            }
        };
        tracing::debug!(service = name, "mesh: discovery source started");
        sources.insert(name.to_owned(), discovery.clone());
        Ok(discovery)
    }

    fn consul_client(&self) -> Result<ConsulClient, InvalidConfig> {
        let mut consul = self
            .shared
            .consul
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = &*consul {
            return Ok(c.clone());
        }
        let client = ConsulClient::new(&ConsulConfig::from_env()?)?;
        *consul = Some(client.clone());
        Ok(client)
    }

    /// The stack of the service `name` as a layer, classifying with
    /// `classifier` (for [`ServiceBuilderExt::mesh`](crate::ServiceBuilderExt::mesh)
    /// or to wrap several inner clients).
    pub fn layer<C: Clone>(&self, name: &str, classifier: C) -> Result<MeshLayer<C>, MeshError> {
        let config = self.service_config(name)?;
        let discovery = self.discovery(name)?;
        let classifier_arc = Arc::new(classifier.clone());
        let breaker = CircuitBreakerLayer::new(config.endpoint_breaker_config())
            .map_err(|e| e.nest(&format!("services.{name}.breaker")))?
            .with_classifier(Arc::clone(&classifier_arc))
            .name(name.to_owned());
        let router = DiscoveryLayer::builder(discovery)
            .config(config.router_config())
            .endpoint_layer(EndpointLayer::new(breaker, config.attempt_timeout))
            .classifier(classifier)
            .build()
            .map_err(|e| e.nest(&format!("services.{name}")))?;
        let retry = RetryLayer::with_classifier(config.retry.clone(), classifier_arc)
            .map_err(|e| e.nest(&format!("services.{name}.retry")))?;
        Ok(MeshLayer { retry, router })
    }

    /// The stack of the service `name` over an HTTP client: hyper-util's
    /// legacy `Client`, or any `Service<http::Request<B>>` (bodies must be
    /// cloneable for retries: `Full`, `Empty`, `String`, ... or a
    /// `ReplayBody`). Requests address the service by name:
    /// `http://users/profile/7`.
    pub fn http_client<S>(&self, name: &str, inner: S) -> Result<MeshService<S>, MeshError>
    where
        S: Clone,
    {
        Ok(self.layer(name, HttpClassifier::default())?.layer(inner))
    }

    /// The stack of the service `name` over an HTTP/2 client for a generated
    /// tonic client (`HealthClient::new(stack)`): gRPC status classification,
    /// and streaming request bodies buffered (up to the retry config's
    /// `max_replay_body`) so that they can be retried. The inner client sends
    /// `ReplayBody<tonic::body::Body>`: e.g. hyper-util's
    /// `Client::builder(TokioExecutor::new()).http2_only(true).build_http()`.
    pub fn grpc_client<S>(&self, name: &str, inner: S) -> Result<GrpcMeshService<S>, MeshError>
    where
        S: Clone,
    {
        let max = self.service_config(name)?.retry.max_replay_body;
        let stack = self.layer(name, GrpcClassifier::default())?.layer(inner);
        Ok(ReplayBodyLayer::new(max).layer(stack))
    }

    /// The stack of the service `name` over a `reqwest::Client`: send
    /// `http::Request`s (bodies convertible into `reqwest::Body`), get
    /// `http::Response<reqwest::Body>`s.
    #[cfg(feature = "reqwest")]
    pub fn reqwest_client(
        &self,
        name: &str,
        client: reqwest::Client,
    ) -> Result<MeshService<crate::reqwest::ReqwestService>, MeshError> {
        self.http_client(name, crate::reqwest::ReqwestService::new(client))
    }
}

/// The ready-made stack of one service as a [`Layer`]: wraps an inner client
/// in a [`MeshService`]. From [`Mesh::layer`].
pub struct MeshLayer<C = HttpClassifier> {
    retry: RetryLayer<Arc<C>>,
    router: DiscoveryLayer<EndpointLayer<C>, C>,
}

impl<C> MeshLayer<C> {
    /// The router layer (its balancer and discovery handle).
    pub fn router(&self) -> &DiscoveryLayer<EndpointLayer<C>, C> {
        &self.router
    }

    /// The retry layer (its policy and budget).
    pub fn retry(&self) -> &RetryLayer<Arc<C>> {
        &self.retry
    }
}

impl<C: Clone> Clone for MeshLayer<C> {
    fn clone(&self) -> Self {
        Self {
            retry: self.retry.clone(),
            router: self.router.clone(),
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for MeshLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshLayer")
            .field("retry", &self.retry)
            .field("router", &self.router)
            .finish()
    }
}

impl<S: Clone, C: Clone> Layer<S> for MeshLayer<C> {
    type Service = MeshService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        self.retry.layer(self.router.layer(inner))
    }
}
