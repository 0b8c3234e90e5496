//! [`Mesh`] and [`MeshBuilder`]: ready-made client stacks from a [`MeshConfig`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use mesh_breaker::CircuitBreakerLayer;
use mesh_core::classify::{DefaultHttpClassifier, GrpcClassifier};
use mesh_core::config::InvalidConfig;
use mesh_core::eos::AtEndOfStream;
use mesh_discovery::connect::ConnectIdentity;
use mesh_discovery::consul::{
    ConsulClient, ConsulConfig, ConsulDiscovery, HealthQuery, WatchConfig,
};
use mesh_discovery::router::{DiscoveryLayer, DiscoveryService};
use mesh_discovery::{Discovery, EndpointSet, Publisher};
use mesh_retry::{ReplayBodyLayer, RetryLayer, RetryService, WithReplayBody};
use tower_layer::Layer;

use crate::config::{DiscoveryConfig, MeshConfig, ServiceConfig};
use crate::endpoint::EndpointLayer;
use crate::observe::{Level, Observe};

/// The ready-made client stack of one service over the inner client `S`:
/// retry, then the discovery router, then per endpoint a breaker and a
/// timeout. `Clone` and cheap to clone; no `Buffer`.
///
/// `C` is the classifier every layer holds. The router and the breaker clone
/// it into each call's future, so it is small: the default,
/// [`DefaultHttpClassifier`], is zero-sized (a configured `HttpClassifier`
/// is 280 bytes: share one through an `Arc`, see [`Mesh::layer`]).
///
/// Each logical call goes through an [`Observe`], which records the
/// service's golden metrics (feature `metrics`; see [`crate::observe`]).
/// [`Observe::get_ref`] reaches the router, [`Observe::policy`] the retry
/// policy.
pub type MeshService<S, C = DefaultHttpClassifier> =
    Observe<RetryService<DiscoveryService<S, EndpointLayer<C>, C, AtEndOfStream>, C>>;

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
    /// `[connect]`: the agent did not give this service its certificate,
    /// roots or intentions.
    #[error("Consul Connect: {0}")]
    Connect(#[source] mesh_discovery::DiscoveryError),
}

/// Builds a [`Mesh`]: the config plus what a file cannot hold (a Consul
/// client, a discovery source of your own).
#[derive(Debug)]
pub struct MeshBuilder {
    config: MeshConfig,
    consul: Option<ConsulClient>,
    sources: HashMap<String, Discovery>,
    connect: Option<ConnectIdentity>,
}

impl MeshBuilder {
    /// Starts from `config`.
    pub fn new(config: MeshConfig) -> Self {
        Self {
            config,
            consul: None,
            sources: HashMap::new(),
            connect: None,
        }
    }

    /// Uses this (started) Connect identity for `[connect]`, instead of
    /// starting one in [`start`](Self::start): to share one between meshes,
    /// or to use one a test made.
    #[must_use]
    pub fn connect_identity(mut self, identity: ConnectIdentity) -> Self {
        self.connect = Some(identity);
        self
    }

    /// Validates the config and builds the mesh; with `[connect]`, first
    /// gets this service's certificate, the roots and the intentions from
    /// the Consul agent (`[consul]`, the builder's client, or the
    /// environment), and keeps them current for as long as the mesh lives.
    /// Call it within a tokio runtime.
    pub async fn start(mut self) -> Result<Mesh, MeshError> {
        if let (Some(connect), None) = (&self.config.connect, &self.connect) {
            self.config.validate()?;
            let client = match (&self.consul, &self.config.consul) {
                (Some(c), _) => c.clone(),
                (None, Some(cfg)) => ConsulClient::new(cfg).map_err(|e| e.nest("consul"))?,
                (None, None) => ConsulClient::new(&ConsulConfig::from_env()?)?,
            };
            self.consul = Some(client.clone());
            let identity = ConnectIdentity::start(client, connect.clone())
                .await
                .map_err(MeshError::Connect)?;
            self.connect = Some(identity);
        }
        self.build()
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
    ///
    /// With `[connect]`, use [`start`](Self::start) (or hand a started
    /// identity to [`connect_identity`](Self::connect_identity)): the
    /// certificate must come from the agent first.
    pub fn build(self) -> Result<Mesh, MeshError> {
        self.config.validate()?;
        if self.config.connect.is_some() && self.connect.is_none() {
            return Err(MeshError::Invalid(InvalidConfig::field(
                "connect",
                "needs this service's certificate from the Consul agent first: build with \
                 `MeshBuilder::start().await` (or `connect_identity`)",
            )));
        }
        crate::security::warn_insecure(&self.config);
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
                stacks: Mutex::new(HashMap::new()),
                connect: self.connect,
                views: Mutex::new(HashMap::new()),
                #[cfg(feature = "metrics")]
                gauges_started: std::sync::atomic::AtomicBool::new(false),
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
    /// The stacks built so far, by service and stack type (the client kind):
    /// one balancer and one set of endpoint stacks per service and kind.
    stacks: Mutex<HashMap<(String, TypeId), Box<dyn Any + Send + Sync>>>,
    connect: Option<ConnectIdentity>,
    /// Every stack's balancer and breakers, by service: what `admin` reads.
    views: Mutex<HashMap<String, Vec<crate::admin::StackView>>>,
    /// Whether the task sampling the endpoint gauges runs.
    #[cfg(feature = "metrics")]
    gauges_started: std::sync::atomic::AtomicBool,
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

    /// Every service and endpoint, their state and the reason for it: see
    /// [`AdminSnapshot`](crate::admin::AdminSnapshot). Services whose
    /// first stack was not built yet have no discovery and no endpoints.
    /// Cheap (no lock a call takes); call it as often as a page refreshes.
    pub fn admin(&self) -> crate::admin::AdminSnapshot {
        let now = tokio::time::Instant::now();
        let sources = self
            .shared
            .sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let views = self
            .shared
            .views
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut names: Vec<&String> = self.shared.config.services.keys().collect();
        names.sort();
        let services = names
            .into_iter()
            .map(|name| {
                let mut endpoints = Vec::new();
                let mut panic_mode = false;
                for view in views.get(name).into_iter().flatten() {
                    panic_mode |= crate::admin::endpoints(view, now, &mut endpoints);
                }
                crate::admin::ServiceSnapshot {
                    name: name.clone(),
                    discovery: sources.get(name).map(|d| crate::admin::discovery(d, now)),
                    panic_mode,
                    endpoints,
                }
            })
            .collect();
        crate::admin::AdminSnapshot { services }
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
                // Every Consul service of the config will share the client:
                // early watches take turns from the start.
                let consul_services = self
                    .shared
                    .config
                    .services
                    .values()
                    .filter(|s| matches!(s.discovery, DiscoveryConfig::Consul(_)))
                    .count();
                client.expect_watches(consul_services);
                let watch = WatchConfig {
                    query: HealthQuery {
                        tags: source.tags.clone(),
                        datacenter: source.datacenter.clone(),
                        passing_only: source.passing_only,
                        // With `[connect]`: Connect-native instances and sidecars.
                        connect: self.shared.connect.is_some(),
                        ..HealthQuery::new(source.service.as_deref().unwrap_or(name))
                    },
                    wait: source.wait,
                    min_interval: source.min_interval,
                    burst: source.burst,
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
    ///
    /// The router and every endpoint's breaker clone `classifier` into each
    /// call's future: pass a small one, such as [`DefaultHttpClassifier`]
    /// (zero-sized; what [`http_client`](Self::http_client) uses) or a
    /// [`GrpcClassifier`] (32 bytes), and share a configured
    /// [`HttpClassifier`](mesh_core::classify::HttpClassifier) (280 bytes)
    /// through an `Arc`.
    pub fn layer<C: Clone>(&self, name: &str, classifier: C) -> Result<MeshLayer<C>, MeshError> {
        let config = self.service_config(name)?;
        let discovery = self.discovery(name)?;
        let breakers = crate::endpoint::BreakerRegistry::default();
        let breaker = CircuitBreakerLayer::new(config.endpoint_breaker_config())
            .map_err(|e| e.nest(&format!("services.{name}.breaker")))?
            .with_classifier(classifier.clone())
            .name(name.to_owned());
        let router = DiscoveryLayer::builder(discovery)
            .service(name.to_owned())
            .config(config.router_config())
            .new_endpoint(
                EndpointLayer::new(breaker, config.attempt_timeout)
                    .streaming(config.streaming)
                    .registry(breakers.clone()),
            )
            .classifier(classifier.clone())
            .at_end_of_stream()
            .build()
            .map_err(|e| e.nest(&format!("services.{name}")))?;
        let retry = RetryLayer::with_classifier(config.retry.clone(), classifier)
            .map_err(|e| e.nest(&format!("services.{name}.retry")))?
            .unsent_errors(is_unsent_error)
            .named(name.to_owned());
        let retry = match crate::observe::attempt_hook(name) {
            Some(hook) => retry.on_attempt(hook),
            None => retry,
        };
        self.shared
            .views
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .push(crate::admin::StackView {
                balancer: router.balancer().clone(),
                breakers,
            });
        #[cfg(feature = "metrics")]
        self.start_endpoint_gauges();
        Ok(MeshLayer {
            retry,
            router,
            service: Arc::from(name),
        })
    }

    /// The stack of the service `name` over an HTTP client: hyper-util's
    /// legacy `Client`, or any `Service<http::Request<B>>` (bodies must be
    /// cloneable for retries: `Full`, `Empty`, `String`, ... or a
    /// `ReplayBody`). Requests address the service by name:
    /// `http://users/profile/7`.
    ///
    /// **One stack per service and client type**: the first call for a
    /// service builds its balancer and endpoint stacks over `inner`; later
    /// calls with an inner client of the same type get a clone of that
    /// stack (one atomic increment) and drop their `inner`. Build a
    /// [`layer`](Self::layer) for a stack of its own. The stack applies
    /// discovery updates as they come, even while idle
    /// ([`DiscoveryService::apply_updates_in_background`]).
    ///
    /// `inner` is yours, and presents what you built it to: **not** the
    /// `[tls]` certificate nor the `[services.x.api_key]` of the config.
    /// Build it over [`client_tls`](Self::client_tls)'s connector and wrap
    /// it in [`credentials_layer`](Self::credentials_layer), or use
    /// [`hyper_client`](Self::hyper_client), which does both. Stacks over
    /// your clients are kept apart from the ready-made clients' stacks.
    pub fn http_client<S>(&self, name: &str, inner: S) -> Result<MeshService<S>, MeshError>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.cached(name, || {
            self.build_stack(name, DefaultHttpClassifier, inner)
        })
    }

    /// The stack of `name` over `inner` with `classifier`, its router
    /// applying updates in the background.
    fn build_stack<S, C>(
        &self,
        name: &str,
        classifier: C,
        inner: S,
    ) -> Result<MeshService<S, C>, MeshError>
    where
        S: Clone + Send + Sync + 'static,
        C: Clone + Send + Sync + 'static,
    {
        let layer = self.layer(name, classifier)?;
        let router = layer.router.layer(inner);
        router.apply_updates_in_background();
        Ok(layer.wrap(router))
    }

    /// The stack of type `T` for `name`, built by `build` on first use.
    fn cached<T>(
        &self,
        name: &str,
        build: impl FnOnce() -> Result<T, MeshError>,
    ) -> Result<T, MeshError>
    where
        T: Clone + Send + Sync + 'static,
    {
        self.cached_as::<T, T>(name, build)
    }

    /// The stack of type `T` for `name`, kept under the kind `K`.
    /// Starts, once per mesh and on the first stack built inside a tokio
    /// runtime, the task that copies every endpoint's in-flight count,
    /// weight and latency estimate into gauges each
    /// [`ENDPOINT_GAUGE_INTERVAL`](crate::admin::ENDPOINT_GAUGE_INTERVAL)
    /// (and zeroes those of endpoints gone). It ends with the mesh.
    #[cfg(feature = "metrics")]
    fn start_endpoint_gauges(&self) {
        use std::sync::atomic::Ordering;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.shared.gauges_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = Arc::downgrade(&self.shared);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(crate::admin::ENDPOINT_GAUGE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut gauged = crate::admin::GaugedEndpoints::new();
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                let snapshot = Mesh { shared }.admin();
                gauged = crate::admin::record_endpoint_gauges(&snapshot, &gauged);
            }
        });
    }

    fn cached_as<K: 'static, T>(
        &self,
        name: &str,
        build: impl FnOnce() -> Result<T, MeshError>,
    ) -> Result<T, MeshError>
    where
        T: Clone + Send + Sync + 'static,
    {
        let key = (name.to_owned(), TypeId::of::<K>());
        let mut stacks = self
            .shared
            .stacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(stack) = stacks.get(&key).and_then(|s| s.downcast_ref::<T>()) {
            return Ok(stack.clone());
        }
        let stack = build()?;
        stacks.insert(key, Box::new(stack.clone()));
        Ok(stack)
    }

    /// The stack of the service `name` over an HTTP/2 client for a generated
    /// tonic client (`HealthClient::new(stack)`): gRPC status classification,
    /// and streaming request bodies buffered (up to the retry config's
    /// `max_replay_body`) so that they can be retried. The inner client sends
    /// `ReplayBody<tonic::body::Body>` over HTTP/2; turn `TCP_NODELAY` on in
    /// its connector ([`inner::connector`](crate::inner::connector)), or unary calls
    /// wait ~40 ms on Nagle's algorithm. [`grpc_channel`](Self::grpc_channel)
    /// (feature `tonic`) builds that client for you and maps mesh errors to
    /// tonic statuses.
    ///
    /// One stack per service and client type, shared by every call, as
    /// for [`http_client`](Self::http_client).
    ///
    /// Time limits cover the whole response: a server stream still running
    /// when `attempt_timeout` or `retry.deadline` fires ends with an error
    /// whose source is [`AttemptTimedOut`](crate::AttemptTimedOut) or
    /// [`DeadlineExceeded`](mesh_retry::DeadlineExceeded) (tonic turns a
    /// body error into a `Status` that keeps it as its source). Set
    /// `streaming = true` on a service whose calls stream for long (watches,
    /// subscriptions): its limits then end at the response headers. Either
    /// way, a `grpc-status` in the trailers is what the breaker and the
    /// balancer record.
    pub fn grpc_client<S>(&self, name: &str, inner: S) -> Result<GrpcMeshService<S>, MeshError>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.cached(name, || self.build_grpc_stack(name, inner))
    }

    fn build_grpc_stack<S>(&self, name: &str, inner: S) -> Result<GrpcMeshService<S>, MeshError>
    where
        S: Clone + Send + Sync + 'static,
    {
        let max = self.service_config(name)?.retry.max_replay_body;
        let stack = self.build_stack(name, GrpcClassifier::default(), inner)?;
        Ok(ReplayBodyLayer::new(max).layer(stack))
    }

    /// The stack of the service `name` over a `reqwest::Client`: send
    /// `http::Request`s (bodies convertible into `reqwest::Body`), get
    /// `http::Response<reqwest::Body>`s.
    ///
    /// `client` is yours: it presents no credentials of the mesh's (no
    /// `[tls]` certificate, no `[services.x.api_key]`), and follows
    /// redirects as you built it to. For a client that presents them and
    /// follows no redirects, use
    /// [`secure_reqwest_client`](Self::secure_reqwest_client).
    #[cfg(feature = "reqwest")]
    pub fn reqwest_client(
        &self,
        name: &str,
        client: reqwest::Client,
    ) -> Result<MeshService<crate::reqwest::ReqwestService>, MeshError> {
        self.http_client(name, crate::reqwest::ReqwestService::new(client))
    }

    // ===== security: [tls], [services.x.api_key], [server] (issue 19) =====

    /// The mTLS client config for calls to the service `name`, from `[tls]`
    /// (with the identity `[tls.server_identities]` gives it, checked instead
    /// of the host name); `None` without a `[tls]` section. Hand its
    /// `https_connector()` (mesh-auth feature `hyper`) to hyper-util's client
    /// under [`http_client`](Self::http_client) or
    /// [`grpc_client`](Self::grpc_client), and send requests to
    /// `https://name/...`. ([`hyper_client`](Self::hyper_client) and
    /// [`grpc_channel`](Self::grpc_channel) do this for you, and also take
    /// identities from endpoint metadata.)
    pub fn client_tls(
        &self,
        name: &str,
    ) -> Result<Option<mesh_auth::tls::MtlsClientConfig>, MeshError> {
        let service = self.service_config(name)?;
        if let Some(identity) = &self.shared.connect {
            // The Consul service name and datacenter the endpoints come from.
            let (consul_name, dc) = match &service.discovery {
                DiscoveryConfig::Consul(source) => {
                    (source.service.as_deref(), source.datacenter.as_deref())
                }
                DiscoveryConfig::Static { .. } => (None, None),
            };
            let config = identity
                .client_config_in(consul_name.unwrap_or(name), dc)
                .build()
                .map_err(|e| MeshError::Invalid(InvalidConfig::field("connect", e.to_string())))?;
            return Ok(Some(config));
        }
        let Some(tls) = &self.shared.config.tls else {
            return Ok(None);
        };
        let config = tls
            .client_config(name)
            .build()
            .map_err(|e| crate::security::tls_error(&e))?;
        Ok(Some(config))
    }

    /// The layer adding the service's API key (`[services.name.api_key]`)
    /// to every request; a no-op for a service without one. Put it between
    /// the stack and the inner client: `mesh.http_client(name,
    /// mesh.credentials_layer(name)?.layer(client))`.
    pub fn credentials_layer(
        &self,
        name: &str,
    ) -> Result<crate::security::CredentialsLayer, MeshError> {
        let config = self.service_config(name)?;
        crate::security::CredentialsLayer::new(config.api_key.as_ref())
            .map_err(|e| MeshError::Invalid(e.nest(&format!("services.{name}"))))
    }

    /// The stack of the service `name` over a reqwest client this builds:
    /// presenting `[tls]`'s certificate and checking the service's identity
    /// (HTTPS only, when `[tls]` is set), sending its API key, and **not
    /// following redirects**, so neither credential travels to a host a
    /// `Location` header names.
    #[cfg(feature = "reqwest")]
    pub fn secure_reqwest_client(
        &self,
        name: &str,
    ) -> Result<MeshService<crate::security::Credentials<crate::reqwest::ReqwestService>>, MeshError>
    {
        let builder = match self.client_tls(name)? {
            Some(tls) => tls.reqwest_builder(),
            None => mesh_auth::apikey::reqwest_builder(),
        };
        let client = builder
            .build()
            .map_err(|e| MeshError::Invalid(InvalidConfig::field("tls", e.to_string())))?;
        let inner = self
            .credentials_layer(name)?
            .layer(crate::reqwest::ReqwestService::new(client));
        self.http_client(name, inner)
    }

    /// The mTLS server config from `[tls]` (clients must chain to its `ca`,
    /// or to their trust domain's bundle); `None` without a `[tls]` section.
    /// Serve with `mesh_auth::tls::serve` (axum, hyper) or
    /// `MtlsAcceptor::incoming` (tonic).
    ///
    /// With `[connect]`: the agent's certificate, and the Connect roots of
    /// this trust domain for clients, rotating in place.
    pub fn server_tls(&self) -> Result<Option<mesh_auth::tls::MtlsServerConfig>, MeshError> {
        if let Some(identity) = &self.shared.connect {
            let config = identity
                .server_tls()
                .map_err(|e| MeshError::Invalid(InvalidConfig::field("connect", e.to_string())))?;
            return Ok(Some(config));
        }
        let Some(tls) = &self.shared.config.tls else {
            return Ok(None);
        };
        let config = tls
            .server_config()
            .build()
            .map_err(|e| crate::security::tls_error(&e))?;
        Ok(Some(config))
    }

    /// One layer for an axum `Router` (`.layer(...)`) or a tonic `Server`:
    /// accepts callers by mTLS identity or by an API key of
    /// `[server.api_keys]`, and applies `[server.authorization]` (deny by
    /// default; without a `[server]` section, every request is denied).
    ///
    /// With `[connect]`, Consul intentions for this service authorize
    /// callers instead (their decision and the intention that made it in
    /// each audit event).
    pub fn server_layer(&self) -> Result<crate::security::ServerSecurityLayer, MeshError> {
        let config = crate::security::server_config(&self.shared.config);
        Ok(crate::security::ServerSecurityLayer::new(
            &config,
            self.shared.connect.as_ref(),
        )?)
    }

    /// The Consul Connect identity of `[connect]` (its status, its TLS
    /// configs, its intentions); `None` without `[connect]`.
    pub fn connect_identity(&self) -> Option<&ConnectIdentity> {
        self.shared.connect.as_ref()
    }

    // ===== ready-made inner clients and client integrations =====

    /// The stack of the service `name` over hyper-util's client, built with
    /// fast defaults ([`inner::http_client`](crate::inner::http_client):
    /// `TCP_NODELAY`, a bounded idle pool). Requests address the service by
    /// name: `http://users/profile/7`; bodies must be cloneable for retries
    /// (`Full`, `Empty`, `String`, ...).
    ///
    /// With `[tls]` (or `[connect]`), every connection to the service is
    /// mTLS whatever the request's scheme (`http://` and `https://` alike):
    /// it presents the certificate and checks the endpoint's identity
    /// (`[tls.server_identities]`, else the endpoint's discovery metadata
    /// under `[tls] identity_metadata`); a failure is a
    /// [`TlsError`](mesh_auth::TlsError) in the error chain
    /// ([`TlsError::find`](mesh_auth::TlsError::find)), or a
    /// [`MissingServerIdentity`](crate::connector::MissingServerIdentity).
    /// With `[services.name.api_key]`, the key goes with every request.
    /// Redirects are not followed (a 3xx comes back to you), so neither
    /// credential travels to another host. Without those sections, a plain
    /// HTTP client as before.
    ///
    /// ```
    /// # use mesh_stack::{Mesh, MeshConfig, ServiceConfig};
    /// # use mesh_stack::core::Endpoint;
    /// use bytes::Bytes;
    /// use http_body_util::Empty;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mesh_stack::core::BoxError> {
    /// # let config = MeshConfig::new().service(
    /// #     "users",
    /// #     ServiceConfig::with_static([Endpoint::from_address("127.0.0.1:8081".parse()?)]),
    /// # );
    /// let mesh = Mesh::new(config)?;
    /// let users = mesh.hyper_client::<Empty<Bytes>>("users")?; // Clone, no Buffer
    /// # let _ = users;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "hyper")]
    pub fn hyper_client<B>(
        &self,
        name: &str,
    ) -> Result<MeshService<crate::inner::HyperClient<B>>, MeshError>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
    {
        type Kind<B> = ReadyMade<MeshService<crate::inner::HyperClient<B>>>;
        self.cached_as::<Kind<B>, _>(name, || {
            let inner = self.ready_made_client(name, false)?;
            self.build_stack(name, DefaultHttpClassifier, inner)
        })
    }

    /// The inner client of [`hyper_client`](Self::hyper_client) (HTTP/1.1)
    /// or [`grpc_channel`](Self::grpc_channel) (`http2`) for `name`: mTLS
    /// with `[tls]` or `[connect]`, the service's API key when it has one.
    #[cfg(feature = "hyper")]
    fn ready_made_client<B>(
        &self,
        name: &str,
        http2: bool,
    ) -> Result<crate::inner::HyperClient<B>, MeshError>
    where
        B: http_body::Body + Send,
        B::Data: Send,
    {
        let service = self.service_config(name)?;
        let api_key = crate::security::api_key_layer(service.api_key.as_ref())
            .map_err(|e| MeshError::Invalid(e.nest(&format!("services.{name}"))))?;
        // HTTP/1.1 stays HTTP/1.1 over TLS, as over TCP; gRPC asks for h2.
        let alpn: &[&[u8]] = if http2 { &[b"h2"] } else { &[b"http/1.1"] };
        let connector = self.connector(name, alpn)?;
        Ok(if http2 {
            crate::inner::http2_client_with(connector, api_key)
        } else {
            crate::inner::http_client_with(connector, api_key)
        })
    }

    /// The connector of the ready-made clients for `name`: see
    /// [`connector`](crate::connector).
    #[cfg(feature = "hyper")]
    fn connector(
        &self,
        name: &str,
        alpn: &[&[u8]],
    ) -> Result<crate::connector::MeshConnector, MeshError> {
        use crate::connector::MeshConnector;

        if self.shared.connect.is_none()
            && let Some(tls) = &self.shared.config.tls
            && let Some(key) = &tls.identity_metadata
            && !tls.server_identities.contains_key(name)
        {
            // Bad files fail now, not at the first connection.
            tls.client_config_expecting(None)
                .build()
                .map_err(|e| crate::security::tls_error(&e))?;
            let discovery = self.discovery(name)?;
            let tls = tls.clone();
            return Ok(MeshConnector::tls_from_metadata(
                name,
                discovery,
                key.clone(),
                move |id| tls.client_config_expecting(Some(id)).build(),
                alpn,
            ));
        }
        Ok(match self.client_tls(name)? {
            Some(config) => MeshConnector::tls(name, &config, alpn),
            None => MeshConnector::plain(),
        })
    }

    /// The gRPC stack of the service `name` for a generated tonic client,
    /// over an HTTP/2 client built with fast defaults
    /// ([`inner::http2_client`](crate::inner::http2_client): `TCP_NODELAY`,
    /// a bounded idle pool), its errors mapped to the `tonic::Status` tonic
    /// itself would use ([`GrpcStatusLayer`](crate::GrpcStatusLayer):
    /// `Unavailable` when no endpoint can be reached, `DeadlineExceeded` past
    /// the deadline).
    ///
    /// With `[tls]`, `[connect]` or `[services.name.api_key]`, it connects
    /// with mTLS (offering ALPN `h2`) and sends the key, as
    /// [`hyper_client`](Self::hyper_client) does; the origin stays
    /// `http://name`.
    ///
    /// ```
    /// # use mesh_stack::{Mesh, MeshConfig, ServiceConfig};
    /// # use mesh_stack::core::Endpoint;
    /// use tonic_health::pb::health_client::HealthClient;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mesh_stack::core::BoxError> {
    /// # let config = MeshConfig::new().service(
    /// #     "health",
    /// #     ServiceConfig::with_static([Endpoint::from_address("127.0.0.1:50051".parse()?)]),
    /// # );
    /// let mesh = Mesh::new(config)?;
    /// let health = HealthClient::with_origin(mesh.grpc_channel("health")?, "http://health".parse()?);
    /// # let _ = health;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tonic")]
    pub fn grpc_channel(&self, name: &str) -> Result<crate::grpc::GrpcChannel, MeshError> {
        let stack = self.cached_as::<ReadyMade<crate::grpc::GrpcChannel>, _>(name, || {
            self.build_grpc_stack(name, self.ready_made_client(name, true)?)
        })?;
        Ok(crate::grpc::GrpcStatusLayer::new().layer(stack))
    }

    /// The mesh as a `reqwest_middleware::Middleware` over `client`: a
    /// `ClientWithMiddleware` sends requests to `http://<service>/...`
    /// through that service's stack, with reqwest's builder API. Add it last;
    /// see [`MeshMiddleware`](crate::middleware::MeshMiddleware).
    ///
    /// ```no_run
    /// # use mesh_stack::{Mesh, MeshConfig};
    /// # async fn run(mesh: Mesh) -> Result<(), mesh_stack::core::BoxError> {
    /// let reqwest = reqwest::Client::new();
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest.clone())
    ///     .with(mesh.reqwest_middleware(&reqwest)?)
    ///     .build();
    /// let text = client.get("http://users/profile/7").send().await?.text().await?;
    /// # let _ = text;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "reqwest-middleware")]
    pub fn reqwest_middleware(
        &self,
        client: &reqwest::Client,
    ) -> Result<crate::middleware::MeshMiddleware, MeshError> {
        crate::middleware::MeshMiddleware::new(self, client)
    }
}

/// The cache kind of the ready-made clients' stacks: kept apart from
/// stacks over a caller's own client of the same type, so a plain client
/// handed to [`Mesh::http_client`] is never what
/// [`Mesh::hyper_client`] returns, nor the other way round.
#[cfg(any(feature = "hyper", feature = "tonic"))]
struct ReadyMade<T>(std::marker::PhantomData<T>);

/// Whether `error` proves the request never reached a server: what the
/// ready-made stacks requeue (send again at once, to another endpoint,
/// whatever the method; see `RetryConfig::max_requeues`).
///
/// [`mesh_core::classify::is_unsent_error`] (a connect that failed, a
/// request hyper handed back unsent, an HTTP/2 stream the server refused
/// unprocessed), plus the mesh's own refusals before sending: the router's
/// [`NoReadyEndpoint`](mesh_discovery::router::NoReadyEndpoint) and
/// [`EndpointNotReady`](mesh_discovery::router::EndpointNotReady), and an
/// open breaker's [`BreakerOpen`](mesh_breaker::BreakerOpen). Give it to a
/// `RetryLayer` of your own with `unsent_errors`.
pub fn is_unsent_error(error: &(dyn std::error::Error + 'static)) -> bool {
    if mesh_core::classify::is_unsent_error(error) {
        return true;
    }
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<mesh_discovery::router::NoReadyEndpoint>()
            || e.is::<mesh_discovery::router::EndpointNotReady>()
            || e.is::<mesh_breaker::BreakerOpen>()
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The ready-made stack of one service as a [`Layer`]: wraps an inner client
/// in a [`MeshService`]. From [`Mesh::layer`].
pub struct MeshLayer<C = DefaultHttpClassifier> {
    retry: RetryLayer<C>,
    router: DiscoveryLayer<EndpointLayer<C>, C, AtEndOfStream>,
    service: Arc<str>,
}

impl<C> MeshLayer<C> {
    /// The stack over a router built by this layer's router layer.
    fn wrap<S>(
        &self,
        router: DiscoveryService<S, EndpointLayer<C>, C, AtEndOfStream>,
    ) -> MeshService<S, C>
    where
        C: Clone,
    {
        Observe::new(self.retry.layer(router), &self.service, Level::Call)
    }

    /// The router layer (its balancer and discovery handle).
    pub fn router(&self) -> &DiscoveryLayer<EndpointLayer<C>, C, AtEndOfStream> {
        &self.router
    }

    /// The retry layer (its policy and budget).
    pub fn retry(&self) -> &RetryLayer<C> {
        &self.retry
    }
}

impl<C: Clone> Clone for MeshLayer<C> {
    fn clone(&self) -> Self {
        Self {
            retry: self.retry.clone(),
            router: self.router.clone(),
            service: Arc::clone(&self.service),
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
        self.wrap(self.router.layer(inner))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use mesh_core::Endpoint;
    use mesh_discovery::ChannelSource;
    use mesh_testkit::consul::{FakeConsul, Instance};
    use tower::{ServiceExt, service_fn};

    use super::*;
    use crate::config::ConsulSourceConfig;

    /// An inner client answering with the authority it was sent to.
    fn echo() -> impl tower_service::Service<
        http::Request<String>,
        Response = http::Response<String>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        service_fn(|req: http::Request<String>| async move {
            Ok::<_, Infallible>(http::Response::new(
                req.uri()
                    .authority()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ))
        })
    }

    async fn call<S, B>(svc: &S) -> String
    where
        S: tower_service::Service<http::Request<String>, Response = http::Response<B>> + Clone,
        S::Error: fmt::Debug,
        B: http_body::Body<Error: fmt::Debug>,
    {
        use http_body_util::BodyExt;
        let req = http::Request::get("http://users/x")
            .body(String::new())
            .unwrap();
        let body = svc.clone().oneshot(req).await.unwrap().into_body();
        let bytes = body.collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn ep(addr: &str) -> Endpoint {
        Endpoint::from_address(addr.parse().unwrap())
    }

    #[test]
    fn an_invalid_config_is_refused_with_its_paths() {
        let mut service = ServiceConfig::with_static([ep("10.0.0.1:80")]);
        service.retry.max_retries = 1000;
        let err = Mesh::new(MeshConfig::new().service("users", service)).unwrap_err();
        let MeshError::Invalid(invalid) = err else {
            panic!("expected Invalid")
        };
        assert_eq!(
            invalid.errors()[0].path(),
            "services.users.retry.max_retries"
        );
    }

    #[tokio::test]
    async fn unknown_services_are_named() {
        let mesh = Mesh::new(
            MeshConfig::new().service("users", ServiceConfig::with_static([ep("10.0.0.1:80")])),
        )
        .unwrap();
        let err = mesh.http_client("orders", echo()).unwrap_err();
        assert!(matches!(&err, MeshError::UnknownService { known, .. } if known == &["users"]));
    }

    #[tokio::test]
    async fn static_sources_are_started_once_and_shared() {
        let mesh = Mesh::new(
            MeshConfig::new().service("users", ServiceConfig::with_static([ep("10.0.0.1:80")])),
        )
        .unwrap();
        let a = mesh.http_client("users", echo()).unwrap();
        let b = mesh.http_client("users", echo()).unwrap();
        assert!(
            a.get_ref().shares_state_with(b.get_ref()),
            "one balancer and one set of endpoint stacks per service and client kind"
        );
        let g1 = mesh.grpc_client("users", echo()).unwrap();
        let g2 = mesh.grpc_client("users", echo()).unwrap();
        assert!(
            g1.get_ref()
                .get_ref()
                .shares_state_with(g2.get_ref().get_ref())
        );
        assert_eq!(call(&a).await, "10.0.0.1:80");
        assert_eq!(call(&b).await, "10.0.0.1:80");
        assert_eq!(mesh.discovery("users").unwrap().name(), "users");
    }

    #[tokio::test]
    async fn a_source_given_to_the_builder_replaces_the_config() {
        let (source, discovery) = ChannelSource::new("users");
        source.set([ep("10.0.0.9:80")]);
        let mesh = Mesh::builder(
            MeshConfig::new().service("users", ServiceConfig::with_static([ep("10.0.0.1:80")])),
        )
        .discovery("users", discovery)
        .build()
        .unwrap();
        let users = mesh.http_client("users", echo()).unwrap();
        assert_eq!(call(&users).await, "10.0.0.9:80");
    }

    #[tokio::test]
    async fn an_idle_client_follows_its_source() {
        let (source, discovery) = ChannelSource::new("users");
        source.set([ep("10.0.0.1:80")]);
        let mesh = Mesh::builder(
            MeshConfig::new().service("users", ServiceConfig::with_static([ep("10.0.0.1:80")])),
        )
        .discovery("users", discovery)
        .build()
        .unwrap();
        let users = mesh.http_client("users", echo()).unwrap();
        assert!(users.get_ref().applies_updates_in_background());
        source.set([ep("10.0.0.2:80"), ep("10.0.0.3:80")]);
        // No request: the background task applies the set.
        tokio::time::timeout(Duration::from_secs(5), async {
            while users.get_ref().endpoints().len() != 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn the_layer_composes_with_service_builder_ext() {
        use crate::ServiceBuilderExt;

        let mesh = Mesh::new(
            MeshConfig::new().service("users", ServiceConfig::with_static([ep("10.0.0.2:80")])),
        )
        .unwrap();
        // A configured classifier is shared through an `Arc`.
        let classifier = Arc::new(mesh_core::classify::HttpClassifier::default());
        let layer = mesh.layer("users", classifier).unwrap();
        assert_eq!(layer.router().discovery().name(), "users");
        let users = tower::ServiceBuilder::new().mesh(layer).service(echo());
        assert_eq!(call(&users).await, "10.0.0.2:80");
    }

    #[tokio::test]
    async fn consul_services_are_watched_through_the_configured_agent() {
        let fake = FakeConsul::start().await.unwrap();
        fake.add_instance(Instance::new("users-v2", "u1", "10.0.0.7", 8080));
        let config = MeshConfig {
            consul: Some(ConsulConfig::new(fake.url())),
            ..MeshConfig::new()
        }
        .service(
            "users",
            ServiceConfig::with_consul(ConsulSourceConfig {
                service: Some("users-v2".into()),
                wait: Duration::from_secs(1),
                ..ConsulSourceConfig::default()
            }),
        );
        let mesh = Mesh::new(config).unwrap();
        let users = mesh.http_client("users", echo()).unwrap();
        // The first request waits (at most ready_timeout) for the watch's
        // first answer.
        assert_eq!(call(&users).await, "10.0.0.7:8080");
    }

    #[tokio::test]
    async fn the_admin_view_says_when_discovery_fails_static() {
        use mesh_testkit::consul::Fault;

        let fake = FakeConsul::start().await.unwrap();
        fake.add_instance(Instance::new("users", "u1", "10.0.0.7", 8080));
        let config = MeshConfig {
            consul: Some(ConsulConfig::new(fake.url())),
            ..MeshConfig::new()
        }
        .service(
            "users",
            ServiceConfig::with_consul(ConsulSourceConfig {
                wait: Duration::from_secs(1),
                ..ConsulSourceConfig::default()
            }),
        )
        .service("orders", ServiceConfig::with_static([ep("10.0.0.9:80")]));
        let mesh = Mesh::new(config).unwrap();
        // Before any stack: services listed, nothing started.
        let snap = mesh.admin();
        assert_eq!(snap.services.len(), 2);
        assert!(snap.service("users").unwrap().discovery.is_none());

        let users = mesh.http_client("users", echo()).unwrap();
        assert_eq!(call(&users).await, "10.0.0.7:8080");
        let snap = mesh.admin();
        let users_view = snap.service("users").unwrap();
        let discovery = users_view.discovery.as_ref().unwrap();
        assert_eq!((discovery.endpoints, discovery.fail_static), (1, false));
        let endpoint = users_view.endpoint("10.0.0.7:8080").unwrap();
        assert_eq!(
            (endpoint.state, endpoint.breaker),
            ("available", Some("closed"))
        );
        assert_eq!(endpoint.weight, 1);

        // The agent fails: the endpoints are kept, and the view says so.
        fake.set_fault(Fault::NoLeader);
        let discovery = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let snap = mesh.admin();
                let d = snap.service("users").unwrap().discovery.clone().unwrap();
                if d.fail_static {
                    return d;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(discovery.endpoints, 1);
        assert!(discovery.consecutive_failures >= 1);
        assert!(discovery.last_error.is_some());
        assert!(discovery.last_success_ms_ago.is_some());
        assert_eq!(call(&users).await, "10.0.0.7:8080", "fail static");
    }
}
