//! Security in the ready-made stack: mTLS, API keys and authorization from
//! the same [`MeshConfig`] as the rest of the mesh.
//!
//! # Why in the config
//!
//! A service that calls others through the mesh is usually called through
//! it too, and both directions need the same material: a certificate and
//! key, the CA bundles of the trust domains it talks to, the identity each
//! peer must prove, an API key for the peers that want one, and on the
//! serving side who may call what. Written in one file, they are validated
//! together (every bad field by its full path) and cannot drift apart.
//!
//! ```toml
//! [tls]
//! ca = { file = "/etc/mesh/ca.pem" }
//! cert = { file = "/etc/mesh/tls.crt" }
//! key = { file = "/etc/mesh/tls.key" }
//! # Optional: check each SPIFFE trust domain against its own bundle.
//! trust_bundles = { "example.org" = { file = "/etc/mesh/ca.pem" } }
//!
//! [tls.server_identities]   # what each service called must prove
//! users = "spiffe://example.org/users"
//! # Or, for services not listed: each endpoint's own, from its discovery
//! # metadata (Consul `ServiceMeta`, a static endpoint's `metadata`):
//! # identity_metadata = "spiffe_id"   (under [tls])
//!
//! [services.billing.api_key]   # a peer that wants an API key
//! header = "x-api-key"
//! key = { env = "BILLING_API_KEY" }
//!
//! [server.authorization]   # who may call this service
//! rules = [ { identity = "spiffe://example.org/gateway" },
//!           { identity = "apikey:reports", methods = ["GET"], paths = ["/orders"] } ]
//!
//! [server.api_keys]   # keys this service accepts, by SHA-256
//! keys = [ { identity = "reports", sha256 = "…64 hex digits…" } ]
//! ```
//!
//! - Clients the mesh builds present everything themselves:
//!   [`Mesh::hyper_client`] and [`Mesh::grpc_channel`] connect with mTLS
//!   to every endpoint of a service when `[tls]` (or `[connect]`) is set,
//!   whatever the request's scheme (`http://users/..` keeps working: the
//!   service decides, not the URL), check the endpoint's identity
//!   (`[tls.server_identities]`, else its metadata under
//!   `identity_metadata`), and send `[services.x.api_key]`; hyper follows
//!   no redirects. See [`connector`](crate::connector).
//!   [`Mesh::secure_reqwest_client`] does the same over reqwest (HTTPS,
//!   redirects off). Without these sections they are plain, as before.
//! - Clients you bring ([`Mesh::http_client`], `grpc_client`,
//!   `reqwest_client`, `reqwest_middleware`) present nothing by themselves:
//!   build them from [`Mesh::client_tls`] (the mTLS config for one service,
//!   with its expected identity; `https_connector()` / `reqwest_builder()`
//!   on it), wrap them in [`Mesh::credentials_layer`] (adds the service's
//!   API key), and do not let them follow redirects.
//! - Servers: [`Mesh::server_tls`] for `mesh_auth::tls::serve` or tonic's
//!   `MtlsAcceptor::incoming`, and [`Mesh::server_layer`], one layer for
//!   axum or tonic that accepts mTLS callers or API keys and applies
//!   `[server.authorization]`.
//!
//! # Consul Connect instead of files
//!
//! ```toml
//! [connect]
//! service = "orders"   # this program's Connect service name
//! ```
//!
//! With `[connect]` (and no `[tls]`), the certificate, key and trust roots
//! come from the Consul agent and rotate in place; [`Mesh::client_tls`]
//! expects each called service's Connect identity
//! (`spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<name>`), Consul
//! services are found through `/v1/health/connect/`, and
//! [`Mesh::server_layer`] authorizes callers by Consul intentions instead of
//! `[server.authorization]`. Build the mesh with
//! [`MeshBuilder::start`](crate::MeshBuilder::start), which fetches the
//! first certificate. See `mesh_discovery::connect`.
//!
//! [`Mesh::client_tls`]: crate::Mesh::client_tls
//! [`Mesh::hyper_client`]: crate::Mesh::hyper_client
//! [`Mesh::grpc_channel`]: crate::Mesh::grpc_channel
//! [`Mesh::http_client`]: crate::Mesh::http_client
//! [`Mesh::credentials_layer`]: crate::Mesh::credentials_layer
//! [`Mesh::secure_reqwest_client`]: crate::Mesh::secure_reqwest_client
//! [`Mesh::server_tls`]: crate::Mesh::server_tls
//! [`Mesh::server_layer`]: crate::Mesh::server_layer

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_auth::apikey::{
    AddApiKey, ApiKeyAuth, ApiKeyAuthConfig, ApiKeyAuthLayer, ApiKeyHeader, ApiKeyLayer, ApiKeySet,
};
use mesh_auth::authz::{AuthorizationPolicy, Authorize, AuthorizeLayer};
use mesh_auth::tls::{ClientTlsConfig, PemSource, ServerTlsConfig};
use mesh_auth::{SecretSource, parse_spiffe_id};
use mesh_core::config::InvalidConfig;
use mesh_discovery::connect::{AuthorizeIntentions, ConnectIdentity, IntentionsLayer};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::MeshConfig;

/// `[tls]`: this program's certificate, the CAs it trusts, and the identity
/// each service it calls must prove.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
#[non_exhaustive]
pub struct MeshTlsConfig {
    /// The CA bundle peers' certificates must chain to (servers we call,
    /// and clients calling us).
    pub ca: PemSource,
    /// This program's certificate chain, leaf first: presented to the
    /// services it calls, and served to its own callers.
    pub cert: PemSource,
    /// The private key of `cert`.
    pub key: PemSource,
    /// One CA bundle per SPIFFE trust domain. When set, a peer's SPIFFE
    /// certificate must chain to its own domain's bundle (see
    /// [`ServerTlsConfig::trust_bundles`]); a service called with an
    /// expected `spiffe://td/...` identity is checked against `td`'s bundle.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "BTreeMap::is_empty")
    )]
    pub trust_bundles: BTreeMap<String, PemSource>,
    /// The identity each service (by its name in `[services]`) must prove:
    /// `spiffe://...` or a DNS SAN. A service listed here is checked by
    /// identity rather than host name, since discovery hands out IPs.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "BTreeMap::is_empty")
    )]
    pub server_identities: BTreeMap<String, String>,
    /// The discovery metadata key that carries each endpoint's identity
    /// (for example `"spiffe_id"`: Consul's `ServiceMeta`, or a static
    /// endpoint's `metadata`). When set, the ready-made clients
    /// ([`Mesh::hyper_client`](crate::Mesh::hyper_client),
    /// [`Mesh::grpc_channel`](crate::Mesh::grpc_channel)) check each
    /// endpoint of a service that has no `server_identities` entry against
    /// the identity in its own metadata, at connect; an endpoint without
    /// the key is not connected to. A `server_identities` entry wins over
    /// metadata. `None` (default): identities come from
    /// `server_identities` only.
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    pub identity_metadata: Option<String>,
    /// How often handshakes may check the files for changes. Default 10s.
    #[cfg_attr(
        feature = "serde",
        serde(with = "humantime_serde", default = "default_reload_interval")
    )]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

impl MeshTlsConfig {
    /// A config from the CA bundle and this program's certificate and key.
    pub fn new(ca: PemSource, cert: PemSource, key: PemSource) -> Self {
        Self {
            ca,
            cert,
            key,
            trust_bundles: BTreeMap::new(),
            server_identities: BTreeMap::new(),
            identity_metadata: None,
            reload_interval: default_reload_interval(),
        }
    }

    /// Reads each endpoint's expected identity from its discovery metadata
    /// under `key` (see [`identity_metadata`](Self::identity_metadata)).
    #[must_use]
    pub fn with_identity_metadata(mut self, key: impl Into<String>) -> Self {
        self.identity_metadata = Some(key.into());
        self
    }

    /// Requires the service `service` to prove `identity`.
    #[must_use]
    pub fn with_server_identity(
        mut self,
        service: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        self.server_identities
            .insert(service.into(), identity.into());
        self
    }

    /// Checks SPIFFE certificates of `trust_domain` against `bundle` only.
    #[must_use]
    pub fn with_trust_bundle(mut self, trust_domain: impl Into<String>, bundle: PemSource) -> Self {
        self.trust_bundles.insert(trust_domain.into(), bundle);
        self
    }

    /// The mTLS server config: clients must chain to `ca` (or their trust
    /// domain's bundle).
    pub fn server_config(&self) -> ServerTlsConfig {
        let mut config = ServerTlsConfig::new(self.ca.clone(), self.cert.clone(), self.key.clone())
            .with_reload_interval(self.reload_interval);
        for (domain, bundle) in &self.trust_bundles {
            config = config.with_trust_bundle(domain.clone(), bundle.clone());
        }
        config
    }

    /// The mTLS client config for calls to `service`.
    pub fn client_config(&self, service: &str) -> ClientTlsConfig {
        self.client_config_expecting(self.server_identities.get(service).map(String::as_str))
    }

    /// The mTLS client config for a server that must prove `expected`
    /// (checked instead of the host name, against its trust domain's bundle
    /// when there is one); `None` checks the host name dialled.
    pub fn client_config_expecting(&self, expected: Option<&str>) -> ClientTlsConfig {
        // The expected identity's own trust domain bundle, when there is one.
        let ca = expected
            .and_then(|id| parse_spiffe_id(id).ok())
            .and_then(|domain| self.trust_bundles.get(domain))
            .unwrap_or(&self.ca);
        let mut config = ClientTlsConfig::new(ca.clone())
            .with_client_cert(self.cert.clone(), self.key.clone())
            .with_reload_interval(self.reload_interval);
        if let Some(id) = expected {
            config = config
                .with_server_identity(id)
                .without_hostname_verification();
        }
        config
    }

    fn validate(&self, config: &MeshConfig) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        errors.merge_nested("", self.server_config().validate());
        for (service, id) in &self.server_identities {
            let path = format!("server_identities.{service}");
            if !config.services.contains_key(service) {
                errors.push(&path, "names no service in `[services]`");
            }
            if id.trim().is_empty() {
                errors.push(&path, "must not be empty");
            } else if id.contains("://") && parse_spiffe_id(id).is_err() {
                errors.push(&path, "is not a valid SPIFFE ID");
            }
        }
        if let Some(key) = &self.identity_metadata
            && key.trim().is_empty()
        {
            errors.push("identity_metadata", "must not be empty when set");
        }
        errors.into_result()
    }
}

/// `[services.x.api_key]`: the API key to present to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
#[non_exhaustive]
pub struct ServiceApiKeyConfig {
    /// Where the key travels: `"x-api-key"` (default), another header
    /// name, or `"bearer"`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub header: ApiKeyHeader,
    /// Where the key comes from: `{ env = "NAME" }` or `{ file = "/path" }`
    /// (`{ value = "..." }` only in tests: it is logged as a warning).
    pub key: SecretSource,
}

impl ServiceApiKeyConfig {
    /// The key from `key`, in `header`.
    pub fn new(header: ApiKeyHeader, key: SecretSource) -> Self {
        Self { header, key }
    }
}

/// `[server]`: who may call this program, and which API keys it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct ServerSecurityConfig {
    /// The API keys accepted from callers without a client certificate.
    /// `None`: only mTLS callers are authenticated.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub api_keys: Option<ApiKeyAuthConfig>,
    /// Who may call what; deny by default.
    pub authorization: AuthorizationPolicy,
}

impl ServerSecurityConfig {
    /// Accepts these keys (with `api_keys`) and enforces `authorization`.
    pub fn new(api_keys: Option<ApiKeyAuthConfig>, authorization: AuthorizationPolicy) -> Self {
        Self {
            api_keys,
            authorization,
        }
    }

    fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        if let Some(keys) = &self.api_keys {
            errors.merge_nested("api_keys", keys.validate());
        }
        errors.merge_nested("authorization", self.authorization.validate());
        errors.into_result()
    }
}

/// The security sections' checks, for [`MeshConfig::validate`].
pub(crate) fn validate(config: &MeshConfig, errors: &mut InvalidConfig) {
    if let Some(tls) = &config.tls {
        errors.merge_nested("tls", tls.validate(config));
    }
    if let Some(server) = &config.server {
        errors.merge_nested("server", server.validate());
    }
    if let Some(connect) = &config.connect {
        errors.merge_nested("connect", connect.validate());
        if config.tls.is_some() {
            errors.push(
                "tls",
                "cannot be set with `[connect]`: the Consul agent issues the certificate and the roots",
            );
        }
        if config
            .server
            .as_ref()
            .is_some_and(|s| !s.authorization.rules.is_empty())
        {
            errors.push(
                "server.authorization.rules",
                "must be empty with `[connect]`: Consul intentions authorize callers",
            );
        }
    }
}

/// Logs a warning for each setting that weakens security (issue 19, row
/// 12): a Consul agent whose certificate is not checked, a Consul token
/// sent in clear to another host, API keys written into the file.
pub(crate) fn warn_insecure(config: &MeshConfig) {
    if let Some(consul) = &config.consul {
        if consul.tls_skip_verify {
            tracing::warn!(
                "consul.tls_skip_verify is set: the Consul agent's certificate is not \
                 checked, so anyone on the path can feed this mesh endpoints"
            );
        }
        let address = consul.address.trim();
        let https =
            address.starts_with("https://") || (consul.https && !address.starts_with("http://"));
        if consul.token.is_some() && !https && !is_loopback(address) {
            tracing::warn!(
                "the Consul token is sent over plain HTTP to a non-loopback agent: \
                 use https, or a local agent"
            );
        }
    }
    for (name, service) in &config.services {
        if let Some(key) = &service.api_key
            && matches!(key.key, SecretSource::Value(_))
        {
            tracing::warn!(
                service = name.as_str(),
                "an API key is written into the config file: use `env` or `file`"
            );
        }
    }
}

/// Whether a Consul address (`host:port`, with or without a scheme) is on
/// this machine.
fn is_loopback(address: &str) -> bool {
    let rest = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

// ===== the client side =====

/// Adds a service's API key (when `[services.x.api_key]` has one) to every
/// request. From [`Mesh::credentials_layer`](crate::Mesh::credentials_layer).
#[derive(Debug, Clone)]
pub struct CredentialsLayer {
    key: Option<ApiKeyLayer>,
}

impl CredentialsLayer {
    pub(crate) fn new(config: Option<&ServiceApiKeyConfig>) -> Result<Self, InvalidConfig> {
        Ok(Self {
            key: api_key_layer(config)?,
        })
    }
}

/// The key of `[services.x.api_key]`, loaded; `None` without one.
pub(crate) fn api_key_layer(
    config: Option<&ServiceApiKeyConfig>,
) -> Result<Option<ApiKeyLayer>, InvalidConfig> {
    config
        .map(|c| {
            ApiKeyLayer::from_source(c.header.clone(), &c.key)
                .map_err(|e| InvalidConfig::field("api_key.key", e.to_string()))
        })
        .transpose()
}

impl<S> Layer<S> for CredentialsLayer {
    type Service = Credentials<S>;

    fn layer(&self, inner: S) -> Self::Service {
        match &self.key {
            Some(key) => Credentials::Key(key.layer(inner)),
            None => Credentials::Plain(inner),
        }
    }
}

/// The service of [`CredentialsLayer`]: the inner client, with or without
/// the API key.
#[derive(Debug, Clone)]
pub enum Credentials<S> {
    /// Adds the key.
    Key(AddApiKey<S>),
    /// The service has no key configured.
    Plain(S),
}

impl<S, B> Service<http::Request<B>> for Credentials<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Credentials::Key(s) => s.poll_ready(cx),
            Credentials::Plain(s) => s.poll_ready(cx),
        }
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self {
            Credentials::Key(s) => s.call(req),
            Credentials::Plain(s) => s.call(req),
        }
    }
}

// ===== the server side =====

/// One layer for an axum `Router` or a tonic `Server`: authenticates the
/// caller (the mTLS identity `mesh_auth::tls::serve` or `incoming` put into
/// the request, else an API key from `[server.api_keys]`), then applies
/// `[server.authorization]`. From [`Mesh::server_layer`](crate::Mesh::server_layer).
///
/// Unauthenticated requests get 401 (gRPC: `UNAUTHENTICATED`), forbidden
/// ones 403 (`PERMISSION_DENIED`); each decision is an audit event on the
/// `mesh_auth::audit` target.
///
/// With `[connect]`, the authorization is Consul's intentions for this
/// service instead of `[server.authorization]`
/// ([`IntentionsLayer`]).
#[derive(Debug, Clone)]
pub struct ServerSecurityLayer {
    keys: ApiKeyAuthLayer,
    authorize: ServerAuthorizeLayer,
}

#[derive(Debug, Clone)]
enum ServerAuthorizeLayer {
    Policy(AuthorizeLayer),
    Intentions(IntentionsLayer),
}

/// The authorization inside [`ServerSecurityLayer`]: `[server.authorization]`,
/// or Consul intentions with `[connect]`.
#[derive(Debug, Clone)]
pub enum ServerAuthorize<S> {
    /// `[server.authorization]`.
    Policy(Authorize<S>),
    /// Consul intentions.
    Intentions(AuthorizeIntentions<S>),
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ServerAuthorize<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = mesh_auth::future::ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            ServerAuthorize::Policy(s) => s.poll_ready(cx),
            ServerAuthorize::Intentions(s) => s.poll_ready(cx),
        }
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        match self {
            ServerAuthorize::Policy(s) => s.call(req),
            ServerAuthorize::Intentions(s) => s.call(req),
        }
    }
}

impl ServerSecurityLayer {
    pub(crate) fn new(
        config: &ServerSecurityConfig,
        connect: Option<&ConnectIdentity>,
    ) -> Result<Self, InvalidConfig> {
        let keys = match &config.api_keys {
            Some(c) => ApiKeyAuthLayer::new(
                c.header.clone(),
                c.key_set().map_err(|e| e.nest("server.api_keys"))?,
            ),
            None => ApiKeyAuthLayer::new(ApiKeyHeader::default(), ApiKeySet::new()),
        }
        .accept_mtls_callers();
        let policy = config
            .authorization
            .compile()
            .map_err(|e| e.nest("server.authorization"))?;
        let authorize = match connect {
            Some(identity) => ServerAuthorizeLayer::Intentions(IntentionsLayer::new(identity)),
            None => ServerAuthorizeLayer::Policy(AuthorizeLayer::new(policy)),
        };
        Ok(Self { keys, authorize })
    }

    /// The API-key layer inside, to rotate keys (`replace_keys`).
    pub fn api_keys(&self) -> &ApiKeyAuthLayer {
        &self.keys
    }
}

impl<S> Layer<S> for ServerSecurityLayer {
    type Service = ApiKeyAuth<ServerAuthorize<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        let authorize = match &self.authorize {
            ServerAuthorizeLayer::Policy(l) => ServerAuthorize::Policy(l.layer(inner)),
            ServerAuthorizeLayer::Intentions(l) => ServerAuthorize::Intentions(l.layer(inner)),
        };
        self.keys.layer(authorize)
    }
}

/// A `[tls]` error as a config error at `tls`.
pub(crate) fn tls_error(err: &mesh_auth::TlsError) -> InvalidConfig {
    InvalidConfig::field("tls", err.to_string())
}

/// The `[server]` section, or a deny-everything default.
pub(crate) fn server_config(config: &MeshConfig) -> ServerSecurityConfig {
    config.server.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        for a in [
            "127.0.0.1:8500",
            "http://localhost:8500",
            "[::1]:8500",
            "http://[::1]:8500/",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "10.0.0.1:8500",
            "http://consul.internal:8500",
            "[2001:db8::1]:8500",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }
}
