//! Consul's JSON, as serde types: health entries (the documented model of
//! what discovery reads; the hot path, [`parse_health`](super::parse_health),
//! reads the same fields without serde and is held to agree with it) and
//! service registrations (what [`Registration`](super::Registration) writes).
//!
//! Parsing is lenient where Consul is inconsistent: `null` `Tags` and `Meta`
//! are empty, `TaggedAddresses` keys are accepted in either case, unknown
//! fields are ignored, missing `Weights` mean weight 1.

use std::collections::BTreeMap;
use std::time::Duration;

use mesh_core::{Address, Endpoint, EndpointKey};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::DiscoveryError;

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

// ===== health entries =====

/// One entry of `GET /v1/health/service/:service`: a service instance, its
/// node and its checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthEntry {
    /// The node the instance runs on.
    pub node: HealthNode,
    /// The instance.
    pub service: HealthService,
    /// Its checks (node checks included).
    #[serde(default, deserialize_with = "null_as_default")]
    pub checks: Vec<HealthCheck>,
}

/// The `Node` of a health entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthNode {
    /// The node's name.
    pub node: String,
    /// The node's address (used when the service has none).
    #[serde(default)]
    pub address: String,
    /// The node's datacenter.
    #[serde(default)]
    pub datacenter: String,
}

/// A `{Address, Port}` pair from `TaggedAddresses`.
#[derive(Debug, Clone, Deserialize)]
pub struct TaggedAddress {
    /// The address.
    #[serde(alias = "address", rename = "Address", default)]
    pub address: String,
    /// The port.
    #[serde(alias = "port", rename = "Port", default)]
    pub port: u16,
}

/// `Weights` of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    /// The weight while every check passes.
    pub passing: u32,
    /// The weight while some check warns.
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            passing: 1,
            warning: 1,
        }
    }
}

/// The `Service` of a health entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthService {
    /// The instance ID (unique per agent only).
    #[serde(rename = "ID")]
    pub id: String,
    /// The service name.
    pub service: String,
    /// Tags (`null` means none).
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    /// The address; empty means "the node's address".
    #[serde(default)]
    pub address: String,
    /// Tagged addresses (`lan`, `wan`, `lan_ipv4`, ...), keys in either case.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tagged_addresses: BTreeMap<String, TaggedAddress>,
    /// Metadata (`null` means none).
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    /// The port.
    #[serde(default)]
    pub port: u16,
    /// The weights (missing means 1/1).
    #[serde(default, deserialize_with = "null_as_default")]
    pub weights: Weights,
}

/// A check in a health entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    /// The check's ID.
    #[serde(rename = "CheckID", default)]
    pub check_id: String,
    /// `passing`, `warning` or `critical`.
    #[serde(default)]
    pub status: String,
    /// The service it belongs to; empty for node checks.
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
}

impl HealthEntry {
    /// True when some check is `warning` (and, with `?passing`, none is
    /// critical): the instance gets `Weights.Warning`.
    pub fn is_warning(&self) -> bool {
        self.checks.iter().any(|c| c.status == "warning")
    }

    /// The endpoint this entry describes: keyed `node/service-id`, at the
    /// service address (or the node's when empty), weighted by
    /// `Weights.Passing` or `Weights.Warning`, with tags and metadata.
    pub fn to_endpoint(&self) -> Result<Endpoint, DiscoveryError> {
        let host = if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        };
        let address = Address::host(host, self.service.port).map_err(|e| {
            DiscoveryError::invalid_response(format!(
                "instance {}/{} has a bad address",
                self.node.node, self.service.id
            ))
            .with_source(e)
        })?;
        if self.service.port == 0 {
            return Err(DiscoveryError::invalid_response(format!(
                "instance {}/{} has port 0",
                self.node.node, self.service.id
            )));
        }
        let weight = if self.is_warning() {
            self.service.weights.warning
        } else {
            self.service.weights.passing
        };
        Ok(Endpoint::new(
            EndpointKey::from_parts(&self.node.node, &self.service.id),
            address,
        )
        .with_weight(weight)
        .with_tags(self.service.tags.iter().cloned())
        .with_metadata(self.service.meta.clone()))
    }
}

// ===== registration =====

/// A service instance to register with `PUT /v1/agent/service/register`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    /// The instance ID; unique on the agent. Defaults to the name.
    #[serde(rename = "ID", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The service name.
    pub name: String,
    /// Tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The address clients should use; empty means the agent's node address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The port.
    pub port: u16,
    /// Metadata (string map).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Weights while passing and warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    /// Health checks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckDefinition>,
}

impl ServiceRegistration {
    /// A registration of `name` at `port`; add the rest with the builder
    /// methods.
    pub fn new(name: impl Into<String>, port: u16) -> Self {
        Self {
            name: name.into(),
            port,
            ..Self::default()
        }
    }

    /// Sets the instance ID.
    #[must_use]
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the address.
    #[must_use]
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }

    /// Adds tags.
    #[must_use]
    pub fn tags<I: IntoIterator<Item = T>, T: Into<String>>(mut self, tags: I) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Adds one metadata entry.
    #[must_use]
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// Sets the weights.
    #[must_use]
    pub fn weights(mut self, passing: u32, warning: u32) -> Self {
        self.weights = Some(Weights { passing, warning });
        self
    }

    /// Adds a check.
    #[must_use]
    pub fn check(mut self, check: CheckDefinition) -> Self {
        self.checks.push(check);
        self
    }

    /// The instance ID Consul will use.
    pub fn effective_id(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.name)
    }

    /// Checks names, IDs, tags, the address and the checks before anything is
    /// sent.
    pub fn validate(&self) -> Result<(), crate::error::InvalidName> {
        crate::error::check_name("service name", &self.name)?;
        crate::error::check_name("service ID", self.effective_id())?;
        for t in &self.tags {
            crate::error::check_text("tag", t)?;
        }
        if let Some(a) = &self.address
            && !a.is_empty()
            && Address::host(a, self.port).is_err()
        {
            return Err(crate::error::InvalidName {
                what: "service address",
                value: a.clone(),
                reason: "must be an IP address or a DNS host name",
            });
        }
        if self.port == 0 {
            return Err(crate::error::InvalidName {
                what: "service port",
                value: "0".into(),
                reason: "must be between 1 and 65535",
            });
        }
        for c in &self.checks {
            crate::error::check_name("check ID", &c.check_id)?;
        }
        Ok(())
    }
}

/// How Consul checks an instance's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CheckKind {
    /// Consul sends a request to this URL every interval; 2xx passes, 429
    /// warns, anything else fails.
    #[serde(rename = "HTTP")]
    Http(String),
    /// Consul opens a TCP connection to `host:port` every interval.
    #[serde(rename = "TCP")]
    Tcp(String),
    /// Consul calls the gRPC health service at `host:port[/service]`.
    #[serde(rename = "GRPC")]
    Grpc(String),
    /// The instance reports itself at least once per TTL (see
    /// [`Registration`](super::Registration), which does it for you).
    #[serde(rename = "TTL", serialize_with = "ser_dur")]
    Ttl(Duration),
}

/// A check definition inside a [`ServiceRegistration`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckDefinition {
    /// The check ID: set it explicitly so TTL updates can name it.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// A human-readable name.
    pub name: String,
    /// What kind of check, flattened into `HTTP`/`TCP`/`GRPC`/`TTL`.
    #[serde(flatten)]
    pub kind: CheckKind,
    /// How often Consul runs HTTP/TCP/gRPC checks.
    #[serde(
        serialize_with = "ser_opt_dur",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// The timeout of one check run.
    #[serde(
        serialize_with = "ser_opt_dur",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Consul removes the instance after the check has been critical this long
    /// (at least one minute).
    #[serde(
        serialize_with = "ser_opt_dur",
        skip_serializing_if = "Option::is_none"
    )]
    pub deregister_critical_service_after: Option<Duration>,
    /// The initial status (`passing`, `warning`, `critical`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl CheckDefinition {
    fn new(check_id: impl Into<String>, kind: CheckKind) -> Self {
        let check_id = check_id.into();
        Self {
            name: check_id.clone(),
            check_id,
            kind,
            interval: None,
            timeout: None,
            deregister_critical_service_after: None,
            status: None,
        }
    }

    /// A TTL check: the instance must report within `ttl`.
    pub fn ttl(check_id: impl Into<String>, ttl: Duration) -> Self {
        Self::new(check_id, CheckKind::Ttl(ttl))
    }

    /// An HTTP check of `url` every `interval`.
    pub fn http(check_id: impl Into<String>, url: impl Into<String>, interval: Duration) -> Self {
        let mut c = Self::new(check_id, CheckKind::Http(url.into()));
        c.interval = Some(interval);
        c
    }

    /// A TCP check of `host:port` every `interval`.
    pub fn tcp(check_id: impl Into<String>, addr: impl Into<String>, interval: Duration) -> Self {
        let mut c = Self::new(check_id, CheckKind::Tcp(addr.into()));
        c.interval = Some(interval);
        c
    }

    /// A gRPC health check of `host:port[/service]` every `interval`.
    pub fn grpc(
        check_id: impl Into<String>,
        target: impl Into<String>,
        interval: Duration,
    ) -> Self {
        let mut c = Self::new(check_id, CheckKind::Grpc(target.into()));
        c.interval = Some(interval);
        c
    }

    /// Sets the per-run timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets `DeregisterCriticalServiceAfter`.
    #[must_use]
    pub fn deregister_after(mut self, after: Duration) -> Self {
        self.deregister_critical_service_after = Some(after);
        self
    }

    /// Sets the initial status.
    #[must_use]
    pub fn initial_status(mut self, status: impl Into<String>) -> Self {
        self.status = Some(status.into());
        self
    }
}

/// Go duration syntax, which Consul parses: whole milliseconds (`"1500ms"`).
pub(crate) fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn ser_dur<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&go_duration(*d))
}

#[allow(clippy::ref_option)] // serde's serialize_with signature
fn ser_opt_dur<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&go_duration(*d)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_serializes_like_consul_expects() {
        let r = ServiceRegistration::new("web", 8080)
            .id("web-1")
            .address("10.0.0.1")
            .tags(["v1"])
            .meta("zone", "a")
            .weights(2, 1)
            .check(
                CheckDefinition::ttl("web-1-ttl", Duration::from_secs(10))
                    .deregister_after(Duration::from_secs(60)),
            )
            .check(
                CheckDefinition::http(
                    "web-1-http",
                    "http://10.0.0.1:8080/health",
                    Duration::from_millis(1500),
                )
                .timeout(Duration::from_secs(1)),
            );
        r.validate().unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["ID"], "web-1");
        assert_eq!(v["Weights"]["Passing"], 2);
        assert_eq!(v["Checks"][0]["TTL"], "10s");
        assert_eq!(v["Checks"][0]["DeregisterCriticalServiceAfter"], "60s");
        assert_eq!(v["Checks"][1]["HTTP"], "http://10.0.0.1:8080/health");
        assert_eq!(v["Checks"][1]["Interval"], "1500ms");
        assert_eq!(v["Checks"][1]["CheckID"], "web-1-http");
    }

    #[test]
    fn bad_registrations_are_typed_errors() {
        assert_eq!(
            ServiceRegistration::new("we b", 1)
                .validate()
                .unwrap_err()
                .what(),
            "service name"
        );
        assert_eq!(
            ServiceRegistration::new("web", 0)
                .validate()
                .unwrap_err()
                .what(),
            "service port"
        );
        assert_eq!(
            ServiceRegistration::new("web", 1)
                .address("not valid!")
                .validate()
                .unwrap_err()
                .what(),
            "service address"
        );
        assert_eq!(
            ServiceRegistration::new("web", 1)
                .id("a/b")
                .validate()
                .unwrap_err()
                .what(),
            "service ID"
        );
    }
}
