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
use mesh_discovery::consul::{ConsulConfig, WatchConfig};
use mesh_discovery::router::{DEFAULT_READY_TIMEOUT, RouterConfig};
use mesh_retry::RetryConfig;

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
    /// The time limit of one attempt on one endpoint; a timed-out attempt
    /// counts as a failure for that endpoint's breaker and is retried
    /// elsewhere. 1ms..=1h, default 2 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub attempt_timeout: Duration,
    /// Each endpoint's breaker (one per endpoint). `open_behavior` is always
    /// `not_ready` in a mesh (an open endpoint is routed around), whatever
    /// the file says.
    pub breaker: BreakerConfig,
    /// Retries of the logical request, across endpoints. Its `deadline` is
    /// the overall time limit of a call.
    pub retry: RetryConfig,
}

/// Where a service's endpoints come from.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "kind", rename_all = "snake_case"))]
pub enum DiscoveryConfig {
    /// A fixed list of endpoints (`{ address = "10.0.0.1:80", weight = 2 }`).
    Static {
        /// The endpoints; at least one.
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
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
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

    /// The per-endpoint breaker settings: the configured ones in readiness
    /// mode, so the balancer routes around an open endpoint.
    pub fn endpoint_breaker_config(&self) -> BreakerConfig {
        BreakerConfig {
            open_behavior: OpenBehavior::NotReady,
            ..self.breaker.clone()
        }
    }

    /// Checks every field; each error names the field by its path within
    /// the service (`retry.max_retries`).
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        errors.merge_nested("discovery", self.discovery.validate());
        errors.merge_nested("balance", self.balance.validate());
        if self.ready_timeout < Duration::from_millis(1)
            || self.ready_timeout > Duration::from_secs(300)
        {
            errors.push(
                "ready_timeout",
                format!("must be within 1ms..=5min, got {:?}", self.ready_timeout),
            );
        }
        if self.attempt_timeout < Duration::from_millis(1)
            || self.attempt_timeout > Duration::from_secs(3600)
        {
            errors.push(
                "attempt_timeout",
                format!("must be within 1ms..=1h, got {:?}", self.attempt_timeout),
            );
        }
        errors.merge_nested("breaker", self.endpoint_breaker_config().validate());
        errors.merge_nested("retry", self.retry.validate());
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
    #[error("cannot parse {format} config: {message}")]
    Parse {
        /// `toml`, `yaml` or `json`.
        format: &'static str,
        /// The parser's message, with the location.
        message: String,
    },
    /// The file's extension is not one of the enabled formats.
    #[error("unsupported config format {0:?} (enable the toml, yaml or json feature)")]
    UnsupportedFormat(String),
    /// The config parsed but has bad values.
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
}

#[cfg(feature = "serde")]
impl MeshConfig {
    /// Parses TOML and validates it.
    #[cfg(feature = "toml")]
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            format: "toml",
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Serializes to TOML.
    #[cfg(feature = "toml")]
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Parse {
            format: "toml",
            message: e.to_string(),
        })
    }

    /// Parses YAML and validates it.
    #[cfg(feature = "yaml")]
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
            format: "yaml",
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Serializes to YAML.
    #[cfg(feature = "yaml")]
    pub fn to_yaml_string(&self) -> Result<String, ConfigError> {
        serde_norway::to_string(self).map_err(|e| ConfigError::Parse {
            format: "yaml",
            message: e.to_string(),
        })
    }

    /// Parses JSON and validates it.
    #[cfg(feature = "json")]
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let config: Self = serde_json::from_str(text).map_err(|e| ConfigError::Parse {
            format: "json",
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Serializes to pretty JSON.
    #[cfg(feature = "json")]
    pub fn to_json_string(&self) -> Result<String, ConfigError> {
        serde_json::to_string_pretty(self).map_err(|e| ConfigError::Parse {
            format: "json",
            message: e.to_string(),
        })
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

#[cfg(test)]
mod tests;
