//! [`MeshConfig`]: every service a program calls, in one file.
//!
//! # Why one config
//!
//! Each mesh crate has its own config type with its own `validate()`. A
//! program that calls five services would otherwise repeat five times the
//! same wiring and, worse, learn about a bad value one field at a time. A
//! [`MeshConfig`] holds, per logical service, where its endpoints come from
//! (a static list or a Consul health watch), how to balance, when to break
//! and how to retry, and [`MeshConfig::validate`] reports **every** bad field
//! by its full path (`services.users.retry.max_retries`), so a config file is
//! fixed in one pass. Bad input is an error, never a panic and never silently
//! clamped.
//!
//! # Format
//!
//! With the `serde` feature (on by default) the config deserializes from any
//! serde format; the `toml`, `yaml` and `json` features add parsers
//! ([`MeshConfig::from_toml_str`], [`MeshConfig::from_yaml_str`],
//! [`MeshConfig::from_json_str`], and [`MeshConfig::from_path`], which picks
//! by file extension). Durations are humantime strings (`"250ms"`, `"30s"`).
//! Every field has a default, so a service needs only its discovery source:
//!
//! ```toml
//! [services.users.discovery]
//! kind = "static"
//! endpoints = [{ address = "127.0.0.1:8081" }, { address = "127.0.0.1:8082" }]
//!
//! [services.orders]
//! discovery = { kind = "consul", tags = ["v2"] }   # watches `orders` in Consul
//! attempt_timeout = "500ms"
//! retry = { max_retries = 2, deadline = "2s" }
//! breaker = { consecutive_failures = 3, recovery_timeout = "5s" }
//! balance = { strategy = "least_outstanding" }
//! ```
//!
//! The Consul agent comes from the standard environment (`CONSUL_HTTP_ADDR`,
//! `CONSUL_HTTP_TOKEN`, ...), with the fields a top-level `[consul]` table
//! sets written over it one by one: a file that sets only `address` keeps
//! the environment's token.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_balance::BalanceConfig;
use mesh_breaker::{BreakerConfig, OpenBehavior};
use mesh_core::Endpoint;
use mesh_core::config::InvalidConfig;
use mesh_core::pushback::DEFAULT_MAX_PUSHBACK;
use mesh_discovery::connect::ConnectConfig;
use mesh_discovery::consul::{ConsulConfig, WatchConfig};
use mesh_discovery::router::{DEFAULT_READY_TIMEOUT, RouterConfig};
use mesh_retry::RetryConfig;

use crate::security::{MeshTlsConfig, ServerSecurityConfig, ServiceApiKeyConfig};

/// The default per-attempt timeout of a service: 2 s.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Every service a program calls through the mesh.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct MeshConfig {
    /// The Consul agent for services discovered through Consul. `None` (the
    /// default): read `CONSUL_HTTP_ADDR` and friends from the environment
    /// when a Consul service is first built. A `[consul]` table is read over
    /// that environment field by field
    /// ([`ConsulConfig::deserialize_over_env`]).
    #[cfg_attr(
        feature = "serde",
        serde(
            skip_serializing_if = "Option::is_none",
            deserialize_with = "ConsulConfig::deserialize_over_env"
        )
    )]
    pub consul: Option<ConsulConfig>,
    /// The logical services, by name. The name is what requests address
    /// (`http://users/...`) and what metrics and logs are labelled with.
    pub services: BTreeMap<String, ServiceConfig>,
    /// `[tls]`: this program's certificate, trusted CAs and the identity
    /// each service must prove (see [`crate::security`]).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub tls: Option<MeshTlsConfig>,
    /// `[server]`: who may call this program, and the API keys it accepts.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub server: Option<ServerSecurityConfig>,
    /// `[connect]`: this program is the Consul Connect service `service`:
    /// its certificate and trust roots come from the agent (rotating in
    /// place), every client checks the Connect identity of the service it
    /// calls (Consul services are found through `/v1/health/connect/`), and
    /// the server layer authorizes callers by intentions. Excludes `[tls]`
    /// and `[server.authorization]` rules. Build with
    /// [`MeshBuilder::start`](crate::MeshBuilder::start).
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub connect: Option<ConnectConfig>,
}

/// One logical service: where its endpoints are and how calls to it behave.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct ServiceConfig {
    /// Where the endpoints come from. Default: an empty static list, which
    /// [`validate`](MeshConfig::validate) rejects; every service names one.
    pub discovery: DiscoveryConfig,
    /// How an endpoint is chosen (p2c peak-EWMA by default), ejection cap and
    /// slow start.
    pub balance: BalanceConfig,
    /// How long a request waits for a ready endpoint before failing with
    /// `NoReadyEndpoint`. 1ms..=5min, default 1 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub ready_timeout: Duration,
    /// The time limit of one attempt on one endpoint, response body
    /// included (unless `streaming`); a timed-out attempt counts as a
    /// failure for that endpoint's breaker and balancer, and is retried
    /// elsewhere while no response was returned. 1ms..=1h, default 2 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub attempt_timeout: Duration,
    /// `true` for a service whose responses stream for long (downloads,
    /// gRPC server streams, watches): `attempt_timeout` and
    /// `retry.deadline` then end when the response headers arrive, and the
    /// body takes as long as it takes. Default `false`: both limits cover
    /// the whole response, and a body still running when one fires fails
    /// with `AttemptTimedOut` or `DeadlineExceeded`. Either way the
    /// breaker and the balancer record the outcome when the body ends.
    pub streaming: bool,
    /// Each endpoint's breaker (one per endpoint). In a mesh a breaker
    /// counts and trips; the balancer decides who gets traffic (ejection
    /// within `balance.max_ejection_percent`, panic mode past it), so
    /// `open_behavior` is always `report`, whatever the file says.
    /// `recovery_timeout` is the base ejection time (the n-th consecutive
    /// ejection lasts n times it), capped at `max_open_time`.
    pub breaker: BreakerConfig,
    /// Retries of the logical request, across endpoints. Its `deadline` is
    /// the overall time limit of a call. In a mesh its `max_pushback` must
    /// be below 5 min: the mesh's classifiers read pushback clamped to 5 min
    /// ([`DEFAULT_MAX_PUSHBACK`]), so a server asking for longer ends the
    /// call at once only while `max_pushback` is shorter than that.
    pub retry: RetryConfig,
    /// `[services.x.api_key]`: the API key presented to this service.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub api_key: Option<ServiceApiKeyConfig>,
}

/// Where a service's endpoints come from.
///
/// With `serde`, a table with a `kind` (`static` or `consul`) and that kind's
/// fields. Deserialized field by field (see `config/de.rs`), so that an error
/// inside names its path (`discovery.endpoints[1].address`).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
pub enum DiscoveryConfig {
    /// A fixed list of endpoints (`{ address = "10.0.0.1:80", weight = 2 }`).
    Static {
        /// The endpoints; at least one. Two entries with the same key or the
        /// same address are an error naming the second
        /// (`services.users.discovery.endpoints[2]`): they would be merged
        /// (same key) or take double traffic (same address) without a word;
        /// give one entry a `weight` instead.
        endpoints: Vec<Endpoint>,
    },
    /// Healthy instances of a Consul service, watched with blocking queries.
    Consul(ConsulSourceConfig),
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig::Static {
            endpoints: Vec::new(),
        }
    }
}

/// A Consul health watch, in config form.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct ConsulSourceConfig {
    /// The Consul service name. `None` (default): the mesh service's name.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub service: Option<String>,
    /// Only instances with all these tags.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Vec::is_empty"))]
    pub tags: Vec<String>,
    /// Another datacenter.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub datacenter: Option<String>,
    /// Only instances whose checks all pass. Default true.
    pub passing_only: bool,
    /// How long Consul may hold each blocking query. 1s..=10min, default 5 min.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub wait: Duration,
    /// The watch's rate once its burst is spent: at most one query per this
    /// period. 1ms..=60s, default 15 s (Consul's guidance for blocking-query
    /// loops; see [`WatchConfig::min_interval`]).
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub min_interval: Duration,
    /// How many queries may go back to back. 1..=100, default 2.
    pub burst: u32,
}

impl Default for ConsulSourceConfig {
    fn default() -> Self {
        Self {
            service: None,
            tags: Vec::new(),
            datacenter: None,
            passing_only: true,
            wait: Duration::from_secs(300),
            min_interval: WatchConfig::default().min_interval,
            burst: WatchConfig::default().burst,
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl ServiceConfig {
    /// A service with these endpoints and every other setting at its default.
    pub fn with_static(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        Self {
            discovery: DiscoveryConfig::Static {
                endpoints: endpoints.into_iter().collect(),
            },
            ..Self::new()
        }
    }

    /// A service discovered in Consul (under the mesh service's name) with
    /// every other setting at its default.
    pub fn with_consul(source: ConsulSourceConfig) -> Self {
        Self {
            discovery: DiscoveryConfig::Consul(source),
            ..Self::new()
        }
    }

    /// Every setting at its default (no endpoints yet).
    pub fn new() -> Self {
        Self {
            discovery: DiscoveryConfig::default(),
            balance: BalanceConfig::default(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            streaming: false,
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            api_key: None,
        }
    }

    /// The router settings this service's config implies.
    pub fn router_config(&self) -> RouterConfig {
        RouterConfig {
            balance: self.balance.clone(),
            ready_timeout: self.ready_timeout,
            ..RouterConfig::default()
        }
    }

    /// The per-endpoint breaker settings: the configured ones in
    /// [`OpenBehavior::Report`] mode, so the balancer alone decides who gets
    /// traffic.
    pub fn endpoint_breaker_config(&self) -> BreakerConfig {
        BreakerConfig {
            open_behavior: OpenBehavior::Report,
            ..self.breaker.clone()
        }
    }

    /// Checks every field; each error names the field by its path within
    /// the service (`retry.max_retries`).
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        errors.merge_nested("discovery", self.discovery.validate());
        errors.merge_nested("balance", self.balance.validate());
        let ms = Duration::from_millis;
        errors.check_duration("ready_timeout", self.ready_timeout, ms(1)..=ms(300_000));
        errors.check_duration(
            "attempt_timeout",
            self.attempt_timeout,
            ms(1)..=ms(3_600_000),
        );
        errors.merge_nested("breaker", self.endpoint_breaker_config().validate());
        errors.merge_nested("retry", self.retry.validate());
        // The mesh's classifiers read pushback clamped to this: a longer
        // `max_pushback` would wait for it instead of giving up.
        if self.retry.max_pushback >= DEFAULT_MAX_PUSHBACK
            && self.retry.max_pushback <= Duration::from_secs(3600)
        {
            errors.push(
                "retry.max_pushback",
                format!(
                    "must be below 5min in a mesh (its classifiers read pushback up to 5min), got {:?}",
                    self.retry.max_pushback
                ),
            );
        }
        errors.into_result()
    }
}

impl DiscoveryConfig {
    /// Checks the source's fields.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        match self {
            DiscoveryConfig::Static { endpoints } => {
                if endpoints.is_empty() {
                    errors.push("endpoints", "must list at least one endpoint");
                }
                for (i, e) in endpoints.iter().enumerate() {
                    if e.address().port() == 0 {
                        errors.push(
                            format!("endpoints[{i}].address"),
                            "must have a port above 0",
                        );
                    }
                    // Quadratic, but a static list is short and this runs once.
                    let earlier = &endpoints[..i];
                    if let Some(j) = earlier.iter().position(|d| d.key() == e.key()) {
                        errors.push(
                            format!("endpoints[{i}]"),
                            format!(
                                "duplicates endpoints[{j}]: the same key `{}` (give one entry a weight instead)",
                                e.key()
                            ),
                        );
                    } else if let Some(j) = earlier.iter().position(|d| d.address() == e.address())
                    {
                        errors.push(
                            format!("endpoints[{i}]"),
                            format!(
                                "duplicates endpoints[{j}]: the same address {}:{} (give one entry a weight instead)",
                                e.address().host_str(),
                                e.address().port()
                            ),
                        );
                    }
                }
            }
            DiscoveryConfig::Consul(c) => {
                if let Some(s) = &c.service
                    && s.trim().is_empty()
                {
                    errors.push("service", "must not be empty (or absent)");
                }
                for (i, t) in c.tags.iter().enumerate() {
                    if t.trim().is_empty() {
                        errors.push(format!("tags[{i}]"), "must not be empty");
                    }
                }
                if c.wait < Duration::from_secs(1) || c.wait > Duration::from_secs(600) {
                    errors.push(
                        "wait",
                        format!("must be within 1s..=10min, got {:?}", c.wait),
                    );
                }
                if c.min_interval < Duration::from_millis(1)
                    || c.min_interval > Duration::from_secs(60)
                {
                    errors.push(
                        "min_interval",
                        format!("must be within 1ms..=60s, got {:?}", c.min_interval),
                    );
                }
                if !(1..=100).contains(&c.burst) {
                    errors.push("burst", format!("must be within 1..=100, got {}", c.burst));
                }
            }
        }
        errors.into_result()
    }
}

impl MeshConfig {
    /// A config with no services.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the service `name`.
    #[must_use]
    pub fn service(mut self, name: impl Into<String>, config: ServiceConfig) -> Self {
        self.services.insert(name.into(), config);
        self
    }

    /// Checks every field of every service and reports each bad one by its
    /// full path (`services.users.retry.max_retries`). Never panics.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        if let Some(consul) = &self.consul {
            errors.merge_nested("consul", consul.validate());
        }
        for (name, service) in &self.services {
            if !valid_service_name(name) {
                errors.push(
                    format!("services.{name}"),
                    "service names are 1..=63 characters of a-z, A-Z, 0-9, `-` and `_`",
                );
            }
            errors.merge_nested(&format!("services.{name}"), service.validate());
        }
        crate::security::validate(self, &mut errors);
        errors.into_result()
    }
}

/// A name usable as a URI host (`http://users/...`) and a metrics label.
fn valid_service_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

// ===== parsing =====

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid in its format, or has unknown fields or
    /// mistyped values.
    #[error("cannot parse {format} config{}: {message}", at_path(.path.as_deref()))]
    Parse {
        /// `toml`, `yaml` or `json`.
        format: &'static str,
        /// The field the parser was reading when it failed, as a dotted path
        /// with indexes (`services.users.discovery.endpoints[2].address`), the
        /// same in every format; `None` when the text failed before any field
        /// (a syntax error at the top) or when serializing.
        path: Option<String>,
        /// The parser's message, with the location. Never the offending
        /// line or value: quoted values are replaced by `"…"`, so a typo
        /// on a secret's line does not put the secret into a log.
        message: String,
    },
    /// The file's extension is not one of the enabled formats.
    #[error("unsupported config format {0:?} (enable the toml, yaml or json feature)")]
    UnsupportedFormat(String),
    /// The config parsed but has bad values.
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
}

/// ` at `path`` for a parse error's message, or nothing.
fn at_path(path: Option<&str>) -> String {
    path.map(|p| format!(" at `{p}`")).unwrap_or_default()
}

/// A parse error with the field path serde was at, the same way for every
/// format (TOML's own messages name the key, YAML's and JSON's only the
/// line and column).
/// The parser's error is rendered by `render`, which redacts what it quotes.
#[cfg(any(feature = "toml", feature = "yaml", feature = "json"))]
fn parse_error<E>(
    format: &'static str,
    e: serde_path_to_error::Error<E>,
    render: impl FnOnce(E) -> String,
) -> ConfigError {
    let path = e.path().to_string();
    // `.` is the root; `?` marks a segment serde could not name.
    let path = (path != "." && !path.contains('?')).then_some(path);
    ConfigError::Parse {
        format,
        path,
        message: render(e.into_inner()),
    }
}

/// An error with no field path: a syntax error before any field, trailing
/// text, or a serializer's error (the config is ours, not the user's text).
#[cfg(any(feature = "toml", feature = "yaml", feature = "json"))]
fn pathless(format: &'static str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Parse {
        format,
        path: None,
        message: message.to_string(),
    }
}

#[cfg(feature = "serde")]
impl MeshConfig {
    /// Parses TOML and validates it. A parse error names the field it was
    /// at ([`ConfigError::Parse`]'s `path`).
    #[cfg(feature = "toml")]
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let toml_message = |e: toml::de::Error| {
            // Not `e.to_string()`: it quotes the whole offending line, which
            // may be the token's.
            redact::message(
                e.message(),
                e.span().map(|s| redact::line_column(text, s.start)),
            )
        };
        // A syntax error comes before any field: no path.
        let de = toml::Deserializer::parse(text).map_err(|e| pathless("toml", toml_message(e)))?;
        let config: Self = serde_path_to_error::deserialize(de)
            .map_err(|e| parse_error("toml", e, toml_message))?;
        config.validate()?;
        Ok(config)
    }

    /// Serializes to TOML.
    #[cfg(feature = "toml")]
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| pathless("toml", e))
    }

    /// Parses YAML and validates it. A parse error names the field it was
    /// at ([`ConfigError::Parse`]'s `path`).
    #[cfg(feature = "yaml")]
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        let de = serde_norway::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(de)
            .map_err(|e| parse_error("yaml", e, |e| redact::scrub(&e.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    /// Serializes to YAML.
    #[cfg(feature = "yaml")]
    pub fn to_yaml_string(&self) -> Result<String, ConfigError> {
        serde_norway::to_string(self).map_err(|e| pathless("yaml", e))
    }

    /// Parses JSON and validates it. A parse error names the field it was
    /// at ([`ConfigError::Parse`]'s `path`).
    #[cfg(feature = "json")]
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| parse_error("json", e, |e| redact::scrub(&e.to_string())))?;
        // Trailing text after the document.
        de.end()
            .map_err(|e| pathless("json", redact::scrub(&e.to_string())))?;
        config.validate()?;
        Ok(config)
    }

    /// Serializes to pretty JSON.
    #[cfg(feature = "json")]
    pub fn to_json_string(&self) -> Result<String, ConfigError> {
        serde_json::to_string_pretty(self).map_err(|e| pathless("json", e))
    }

    /// Reads a file and parses it by extension (`.toml`, `.yaml`/`.yml`,
    /// `.json`; each needs its feature), then validates it.
    pub fn from_path(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        match ext.as_str() {
            #[cfg(feature = "toml")]
            "toml" => Self::from_toml_str(&text),
            #[cfg(feature = "yaml")]
            "yaml" | "yml" => Self::from_yaml_str(&text),
            #[cfg(feature = "json")]
            "json" => Self::from_json_str(&text),
            _ => {
                drop(text);
                Err(ConfigError::UnsupportedFormat(ext))
            }
        }
    }
}

#[cfg(feature = "serde")]
mod de;
#[cfg(any(feature = "toml", feature = "json", feature = "yaml"))]
mod redact;
#[cfg(test)]
mod tests;
