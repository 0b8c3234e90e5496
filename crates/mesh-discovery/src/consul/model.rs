//! Consul's JSON, as serde types: health entries (what discovery reads, and
//! the only parser of a health answer: [`parse_health`](super::parse_health)
//! deserializes these) and service registrations (what
//! [`Registration`](super::Registration) writes).
//!
//! Health entries borrow their strings from the body (a `Cow` is owned only
//! when a string holds escapes), and only the fields discovery needs are
//! typed: everything else a real answer carries (`Proxy`, `Connect`, raft
//! indexes, check output, node metadata, ...) is skipped without being
//! stored. Parsing is lenient where Consul is inconsistent: `null` `Tags`,
//! `Meta`, `TaggedAddresses` and `Checks` are empty, tagged-address members
//! are accepted as `Address`/`Port` or `address`/`port`, unknown fields are
//! ignored, missing `Weights` mean weight 1.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use mesh_core::{Address, Endpoint, EndpointKey};
use serde::{Deserialize, Deserializer, Serialize};

use super::client::CheckStatus;
use crate::error::{DiscoveryError, InvalidName, check_name, check_text};

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

// ===== health entries =====

/// One entry of `GET /v1/health/service/:service`: a service instance, its
/// node and its checks, borrowing from the body.
///
/// ```
/// use mesh_discovery::consul::{CheckStatus, HealthEntry};
///
/// let body = br#"[{"Node": {"Node": "n1", "Address": "10.0.0.1"},
///                  "Service": {"ID": "web-1", "Service": "web", "Port": 8080, "Proxy": {}},
///                  "Checks": [{"CheckID": "serfHealth", "Status": "passing"},
///                             {"CheckID": "service:web-1", "Status": "warning", "ServiceID": "web-1"}]}]"#;
/// let entries: Vec<HealthEntry<'_>> = serde_json::from_slice(body)?;
/// assert_eq!(entries[0].status(), CheckStatus::Warning);
/// assert!(entries[0].is_routable());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthEntry<'a> {
    /// The node the instance runs on.
    #[serde(borrow)]
    pub node: HealthNode<'a>,
    /// The instance.
    #[serde(borrow)]
    pub service: HealthService<'a>,
    /// Its checks, the node's first (`serfHealth`, `_node_maintenance`).
    #[serde(default, borrow, deserialize_with = "null_as_default")]
    pub checks: Vec<HealthCheck<'a>>,
}

/// The `Node` of a health entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthNode<'a> {
    /// The node's name.
    #[serde(borrow)]
    pub node: Cow<'a, str>,
    /// The node's address (used when the service has none).
    #[serde(default, borrow)]
    pub address: Cow<'a, str>,
    /// The node's datacenter.
    #[serde(default, borrow)]
    pub datacenter: Cow<'a, str>,
    /// The node's tagged addresses (`lan`, `wan`, `lan_ipv4`, ...), plain
    /// strings.
    #[serde(default, borrow, deserialize_with = "null_as_default")]
    pub tagged_addresses: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
}

/// A `{Address, Port}` pair from a service's `TaggedAddresses`.
#[derive(Debug, Clone, Deserialize)]
pub struct TaggedAddress<'a> {
    /// The address.
    #[serde(alias = "address", rename = "Address", default, borrow)]
    pub address: Cow<'a, str>,
    /// The port; 0 means the service's.
    #[serde(alias = "port", rename = "Port", default)]
    pub port: u16,
}

/// `Weights` of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    /// The weight while every check passes (at least 1).
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
pub struct HealthService<'a> {
    /// `""` for a typical service, `connect-proxy` for a sidecar,
    /// `mesh-gateway`, ...
    #[serde(default, borrow)]
    pub kind: Cow<'a, str>,
    /// The instance ID (unique per agent only).
    #[serde(rename = "ID", borrow)]
    pub id: Cow<'a, str>,
    /// The service name.
    #[serde(default, borrow)]
    pub service: Cow<'a, str>,
    /// Tags (`null` means none).
    #[serde(default, borrow, deserialize_with = "null_as_default")]
    pub tags: Vec<Cow<'a, str>>,
    /// The address; empty means "the node's address".
    #[serde(default, borrow)]
    pub address: Cow<'a, str>,
    /// Tagged addresses (`lan`, `wan`, `lan_ipv4`, `wan_ipv6`, ...).
    #[serde(default, borrow, deserialize_with = "null_as_default")]
    pub tagged_addresses: BTreeMap<Cow<'a, str>, TaggedAddress<'a>>,
    /// Metadata (`null` means none).
    #[serde(default, borrow, deserialize_with = "null_as_default")]
    pub meta: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    /// The port.
    #[serde(default)]
    pub port: u16,
    /// The weights (missing or `null` means 1/1).
    #[serde(default, deserialize_with = "null_as_default")]
    pub weights: Weights,
    /// The cluster peer this instance was imported from; empty when local.
    #[serde(default, borrow)]
    pub peer_name: Cow<'a, str>,
}

/// A check in a health entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck<'a> {
    /// The check's ID (`serfHealth`, `service:web-1`,
    /// `_service_maintenance:web-1`, `_node_maintenance`, ...).
    #[serde(rename = "CheckID", default, borrow)]
    pub check_id: Cow<'a, str>,
    /// `passing`, `warning` or `critical`.
    #[serde(borrow)]
    pub status: Cow<'a, str>,
    /// The service it belongs to; empty for node checks.
    #[serde(rename = "ServiceID", default, borrow)]
    pub service_id: Cow<'a, str>,
}

impl HealthCheck<'_> {
    /// True for the checks maintenance mode adds.
    pub fn is_maintenance(&self) -> bool {
        self.check_id == "_node_maintenance" || self.check_id.starts_with("_service_maintenance:")
    }
}

/// Which address of an instance clients connect to.
///
/// `Default` is what Consul DNS answers in the instance's own datacenter:
/// the service's `Address`, or the node's when empty. The others pick a
/// tagged address (the service's, else the node's with the service port),
/// falling back to the default when the instance has none of that name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum AddressChoice {
    /// `Service.Address`, else `Node.Address`.
    #[default]
    Default,
    /// The `lan` tagged address.
    Lan,
    /// The `lan_ipv4` tagged address.
    LanIpv4,
    /// The `lan_ipv6` tagged address.
    LanIpv6,
    /// The `wan` tagged address (from another datacenter).
    Wan,
    /// The `wan_ipv4` tagged address.
    WanIpv4,
    /// The `wan_ipv6` tagged address.
    WanIpv6,
}

impl AddressChoice {
    /// The `TaggedAddresses` key, or `None` for the default address.
    pub fn key(self) -> Option<&'static str> {
        match self {
            AddressChoice::Default => None,
            AddressChoice::Lan => Some("lan"),
            AddressChoice::LanIpv4 => Some("lan_ipv4"),
            AddressChoice::LanIpv6 => Some("lan_ipv6"),
            AddressChoice::Wan => Some("wan"),
            AddressChoice::WanIpv4 => Some("wan_ipv4"),
            AddressChoice::WanIpv6 => Some("wan_ipv6"),
        }
    }
}

impl HealthEntry<'_> {
    /// The worst status among the entry's checks, node checks included, as
    /// Consul DNS judges an instance: any check neither `passing` nor
    /// `warning` (critical, maintenance, a dead node's `serfHealth`) makes it
    /// `Critical`.
    pub fn status(&self) -> CheckStatus {
        let mut worst = CheckStatus::Passing;
        for c in &self.checks {
            match &*c.status {
                "passing" if !c.is_maintenance() => {}
                "warning" if !c.is_maintenance() => worst = CheckStatus::Warning,
                _ => return CheckStatus::Critical,
            }
        }
        worst
    }

    /// True when the instance should get traffic: its [`status`](Self::status)
    /// is passing or warning.
    pub fn is_routable(&self) -> bool {
        self.status() != CheckStatus::Critical
    }

    /// The weight for its status: `Weights.Warning` while some check warns,
    /// else `Weights.Passing`.
    pub fn weight(&self) -> u32 {
        match self.status() {
            CheckStatus::Warning => self.service.weights.warning,
            _ => self.service.weights.passing,
        }
    }

    /// The host and port clients use, per `choice`.
    pub fn host_port(&self, choice: AddressChoice) -> (&str, u16) {
        let port = self.service.port;
        let key = choice.key();
        if let Some(t) = key.and_then(|k| self.service.tagged_addresses.get(k))
            && !t.address.is_empty()
        {
            return (&t.address, if t.port == 0 { port } else { t.port });
        }
        if !self.service.address.is_empty() {
            return (&self.service.address, port);
        }
        match key.and_then(|k| self.node.tagged_addresses.get(k)) {
            Some(a) if !a.is_empty() => (a, port),
            _ => (&self.node.address, port),
        }
    }

    /// The endpoint this entry describes, whatever its status: keyed
    /// `node/service-id`, at its [`host_port`](Self::host_port), weighted by
    /// [`weight`](Self::weight), with tags and metadata.
    pub fn to_endpoint(&self, choice: AddressChoice) -> Result<Endpoint, DiscoveryError> {
        let address = self.address(choice)?;
        Ok(Endpoint::new(
            EndpointKey::from_parts(&self.node.node, &self.service.id),
            address,
        )
        .with_weight(self.weight())
        .with_tags(self.service.tags.iter().map(|t| String::from(&**t)))
        .with_metadata(
            self.service
                .meta
                .iter()
                .map(|(k, v)| (String::from(&**k), String::from(&**v))),
        ))
    }

    pub(crate) fn address(&self, choice: AddressChoice) -> Result<Address, DiscoveryError> {
        let (host, port) = self.host_port(choice);
        let bad = |what: &str| {
            DiscoveryError::invalid_response(format!(
                "instance {}/{} has {what}",
                self.node.node, self.service.id
            ))
        };
        if port == 0 {
            return Err(bad("port 0"));
        }
        Address::host(host, port).map_err(|e| bad("a bad address").with_source(e))
    }
}

// ===== registration =====

/// A tagged address to register: `{"Address": .., "Port": ..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegisteredAddress {
    /// The address.
    #[serde(rename = "Address")]
    pub address: String,
    /// The port.
    #[serde(rename = "Port")]
    pub port: u16,
}

/// A service instance to register with `PUT /v1/agent/service/register`.
///
/// Without an [`id`](Self::id), the instance ID is `{name}-{port}`, or
/// `{name}-{address}-{port}` when an address is set (characters other than
/// letters, digits, `-`, `_` and `.` become `-`), so two instances of one
/// service on one agent never overwrite each other (Consul's own default,
/// the bare name, would).
///
/// ```
/// use std::time::Duration;
/// use mesh_discovery::consul::{CheckDefinition, ServiceRegistration};
///
/// let r = ServiceRegistration::new("web", 8080)
///     .address("10.0.0.7")
///     .tagged_address("wan_ipv4", "203.0.113.7", 443)
///     .check(
///         CheckDefinition::http("web-http", "http://10.0.0.7:8080/health", Duration::from_secs(5))
///             .method("HEAD")
///             .header("Authorization", "Bearer probe")
///             .success_before_passing(2)
///             .deregister_after(Duration::from_secs(300)),
///     );
/// assert_eq!(r.effective_id(), "web-10.0.0.7-8080");
/// r.validate()?;
/// # Ok::<(), mesh_discovery::InvalidName>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    /// The instance ID; unique on the agent. Defaults to `{name}-{port}` (see
    /// above).
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
    /// Other addresses (`lan`, `wan`, `lan_ipv4`, `wan_ipv6`, ...) that
    /// clients may pick instead (see [`AddressChoice`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, RegisteredAddress>,
    /// The port.
    pub port: u16,
    /// Metadata (string map).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Weights while passing (at least 1) and warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    /// Let tags changed in the catalog (by an external tool) survive the
    /// agent's anti-entropy sync.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub enable_tag_override: bool,
    /// Health checks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckDefinition>,
    /// `Connect.Native`: the instance speaks Connect's mTLS itself (with
    /// the `connect` feature's identity), so `/v1/health/connect/:name`
    /// lists it.
    #[serde(
        rename = "Connect",
        skip_serializing_if = "std::ops::Not::not",
        serialize_with = "connect_native"
    )]
    pub connect_native: bool,
}

fn connect_native<S: serde::Serializer>(native: &bool, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(1))?;
    map.serialize_entry("Native", native)?;
    map.end()
}

impl ServiceRegistration {
    /// Registers a Connect-native instance (`Connect.Native`).
    #[must_use]
    pub fn connect_native(mut self) -> Self {
        self.connect_native = true;
        self
    }

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

    /// Adds a tagged address (`lan`, `wan`, `wan_ipv4`, ...).
    #[must_use]
    pub fn tagged_address(
        mut self,
        name: impl Into<String>,
        address: impl Into<String>,
        port: u16,
    ) -> Self {
        self.tagged_addresses.insert(
            name.into(),
            RegisteredAddress {
                address: address.into(),
                port,
            },
        );
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

    /// Sets the weights (`passing` must be at least 1).
    #[must_use]
    pub fn weights(mut self, passing: u32, warning: u32) -> Self {
        self.weights = Some(Weights { passing, warning });
        self
    }

    /// Sets `EnableTagOverride`.
    #[must_use]
    pub fn enable_tag_override(mut self, enable: bool) -> Self {
        self.enable_tag_override = enable;
        self
    }

    /// Adds a check.
    #[must_use]
    pub fn check(mut self, check: CheckDefinition) -> Self {
        self.checks.push(check);
        self
    }

    /// The instance ID Consul will use: [`id`](Self::id), or the default
    /// described on the type.
    pub fn effective_id(&self) -> Cow<'_, str> {
        if let Some(id) = &self.id {
            return Cow::Borrowed(id);
        }
        let id = match self.address.as_deref().filter(|a| !a.is_empty()) {
            Some(a) => format!("{}-{a}-{}", self.name, self.port),
            None => format!("{}-{}", self.name, self.port),
        };
        Cow::Owned(
            id.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect(),
        )
    }

    /// Checks what Consul checks, before anything is sent: names, IDs, tags
    /// and the address; `Weights.Passing` ≥ 1; each check's kind, `Interval`
    /// (required for HTTP, TCP and gRPC checks), `DeregisterCriticalServiceAfter`
    /// (at least one minute: Consul would raise it silently), headers and
    /// method; check IDs unique.
    pub fn validate(&self) -> Result<(), InvalidName> {
        check_name("service name", &self.name)?;
        check_name("service ID", &self.effective_id())?;
        for t in &self.tags {
            check_text("tag", t)?;
        }
        if let Some(a) = &self.address
            && !a.is_empty()
            && Address::host(a, self.port.max(1)).is_err()
        {
            return Err(invalid(
                "service address",
                a,
                "must be an IP address or a DNS host name",
            ));
        }
        if self.port == 0 {
            return Err(invalid("service port", "0", "must be between 1 and 65535"));
        }
        for (name, t) in &self.tagged_addresses {
            check_name("tagged address name", name)?;
            if Address::host(&t.address, t.port.max(1)).is_err() {
                return Err(invalid(
                    "tagged address",
                    &t.address,
                    "must be an IP address or a DNS host name",
                ));
            }
        }
        if let Some(w) = &self.weights
            && w.passing < 1
        {
            return Err(invalid(
                "Weights.Passing",
                &w.passing.to_string(),
                "must be at least 1",
            ));
        }
        for (i, c) in self.checks.iter().enumerate() {
            c.validate()?;
            if self.checks[..i].iter().any(|o| o.check_id == c.check_id) {
                return Err(invalid("check ID", &c.check_id, "is used by two checks"));
            }
        }
        Ok(())
    }
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> InvalidName {
    InvalidName {
        what,
        value: value.to_owned(),
        reason,
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
    /// How often Consul runs HTTP/TCP/gRPC checks (required for them).
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
    /// (at least one minute; Consul's reaper runs every 30 s, so removal
    /// comes up to 30 s later).
    #[serde(
        serialize_with = "ser_opt_dur",
        skip_serializing_if = "Option::is_none"
    )]
    pub deregister_critical_service_after: Option<Duration>,
    /// The initial status (`passing`, `warning`, `critical`); Consul's
    /// default is critical until the first run or report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// HTTP checks: the method (default `GET`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// HTTP checks: request headers, each with one or more values.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub header: BTreeMap<String, Vec<String>>,
    /// HTTP checks: do not verify the target's certificate.
    #[serde(rename = "TLSSkipVerify", skip_serializing_if = "std::ops::Not::not")]
    pub tls_skip_verify: bool,
    /// gRPC checks: use TLS.
    #[serde(rename = "GRPCUseTLS", skip_serializing_if = "std::ops::Not::not")]
    pub grpc_use_tls: bool,
    /// Consecutive successful runs before the check turns passing.
    #[serde(skip_serializing_if = "is_zero")]
    pub success_before_passing: u32,
    /// Consecutive failed runs before the check turns critical.
    #[serde(skip_serializing_if = "is_zero")]
    pub failures_before_critical: u32,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if signature
fn is_zero(n: &u32) -> bool {
    *n == 0
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
            method: None,
            header: BTreeMap::new(),
            tls_skip_verify: false,
            grpc_use_tls: false,
            success_before_passing: 0,
            failures_before_critical: 0,
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

    /// Sets `DeregisterCriticalServiceAfter` (at least one minute).
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

    /// HTTP checks: sets the method.
    #[must_use]
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// HTTP checks: adds a header value.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.header
            .entry(name.into())
            .or_default()
            .push(value.into());
        self
    }

    /// HTTP checks: do not verify the target's certificate.
    #[must_use]
    pub fn tls_skip_verify(mut self, skip: bool) -> Self {
        self.tls_skip_verify = skip;
        self
    }

    /// gRPC checks: use TLS.
    #[must_use]
    pub fn grpc_use_tls(mut self, tls: bool) -> Self {
        self.grpc_use_tls = tls;
        self
    }

    /// Consecutive successes before passing.
    #[must_use]
    pub fn success_before_passing(mut self, n: u32) -> Self {
        self.success_before_passing = n;
        self
    }

    /// Consecutive failures before critical.
    #[must_use]
    pub fn failures_before_critical(mut self, n: u32) -> Self {
        self.failures_before_critical = n;
        self
    }

    /// True when Consul runs the check itself (HTTP, TCP, gRPC), rather than
    /// waiting for reports (TTL).
    pub fn is_probed(&self) -> bool {
        !matches!(self.kind, CheckKind::Ttl(_))
    }

    fn validate(&self) -> Result<(), InvalidName> {
        check_name("check ID", &self.check_id)?;
        match &self.kind {
            CheckKind::Ttl(ttl) if ttl.is_zero() => {
                return Err(invalid("check TTL", "0s", "must be above zero"));
            }
            CheckKind::Ttl(_) => {}
            CheckKind::Http(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(
                        "check HTTP URL",
                        url,
                        "must start with http:// or https://",
                    ));
                }
            }
            CheckKind::Tcp(t) | CheckKind::Grpc(t) => check_text("check target", t)?,
        }
        if self.is_probed() && self.interval.is_none_or(|i| i.is_zero()) {
            return Err(invalid(
                "check Interval",
                &self.check_id,
                "is required (above zero) for HTTP, TCP and gRPC checks",
            ));
        }
        if let Some(after) = self.deregister_critical_service_after
            && after < Duration::from_secs(60)
        {
            return Err(invalid(
                "check DeregisterCriticalServiceAfter",
                &go_duration(after),
                "must be at least 1m (Consul raises anything lower to 1m)",
            ));
        }
        if let Some(s) = &self.status
            && !matches!(s.as_str(), "passing" | "warning" | "critical")
        {
            return Err(invalid(
                "check Status",
                s,
                "must be passing, warning or critical",
            ));
        }
        if let Some(m) = &self.method
            && http::Method::from_bytes(m.as_bytes()).is_err()
        {
            return Err(invalid("check Method", m, "must be an HTTP method"));
        }
        for (name, values) in &self.header {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(
                    "check Header name",
                    name,
                    "must be an HTTP header name",
                ));
            }
            if let Some(v) = values
                .iter()
                .find(|v| http::HeaderValue::from_str(v).is_err())
            {
                return Err(invalid(
                    "check Header value",
                    v,
                    "must be a valid HTTP header value",
                ));
            }
        }
        Ok(())
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
            .enable_tag_override(true)
            .tagged_address("wan", "203.0.113.1", 443)
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
                .timeout(Duration::from_secs(1))
                .method("HEAD")
                .header("X-Probe", "1")
                .tls_skip_verify(true)
                .success_before_passing(2)
                .failures_before_critical(3),
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
        assert_eq!(v["Checks"][1]["Method"], "HEAD");
        assert_eq!(v["Checks"][1]["Header"]["X-Probe"][0], "1");
        assert_eq!(v["Checks"][1]["TLSSkipVerify"], true);
        assert_eq!(v["Checks"][1]["SuccessBeforePassing"], 2);
        assert_eq!(v["Checks"][1]["FailuresBeforeCritical"], 3);
        assert!(v["Checks"][0].get("Method").is_none());
        assert_eq!(v["EnableTagOverride"], true);
        assert_eq!(v["TaggedAddresses"]["wan"]["Port"], 443);
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
        let http = |s| CheckDefinition::http("c", s, Duration::from_secs(1));
        for (r, what) in [
            (
                ServiceRegistration::new("web", 1).weights(0, 1),
                "Weights.Passing",
            ),
            (
                ServiceRegistration::new("web", 1).check(
                    CheckDefinition::ttl("c", Duration::from_secs(5))
                        .deregister_after(Duration::from_secs(30)),
                ),
                "check DeregisterCriticalServiceAfter",
            ),
            (
                ServiceRegistration::new("web", 1).check(http("ftp://x")),
                "check HTTP URL",
            ),
            (
                ServiceRegistration::new("web", 1).check(http("http://x").method("GE T")),
                "check Method",
            ),
            (
                ServiceRegistration::new("web", 1).check(http("http://x").header("Bad Name", "v")),
                "check Header name",
            ),
            (
                ServiceRegistration::new("web", 1).check({
                    let mut c = CheckDefinition::tcp("c", "x:1", Duration::from_secs(1));
                    c.interval = None;
                    c
                }),
                "check Interval",
            ),
            (
                ServiceRegistration::new("web", 1)
                    .check(CheckDefinition::ttl("c", Duration::from_secs(5)))
                    .check(CheckDefinition::ttl("c", Duration::from_secs(5))),
                "check ID",
            ),
            (
                ServiceRegistration::new("web", 1).check(CheckDefinition::ttl("c", Duration::ZERO)),
                "check TTL",
            ),
        ] {
            assert_eq!(r.validate().unwrap_err().what(), what, "{r:?}");
        }
    }

    #[test]
    fn default_ids_are_unique_per_instance() {
        let a = ServiceRegistration::new("web", 8080);
        let b = ServiceRegistration::new("web", 8081);
        assert_eq!(a.effective_id(), "web-8080");
        assert_ne!(a.effective_id(), b.effective_id());
        let v6 = ServiceRegistration::new("web", 8080).address("::1");
        assert_eq!(v6.effective_id(), "web---1-8080");
        v6.validate().unwrap();
        assert_eq!(
            ServiceRegistration::new("web", 1).id("mine").effective_id(),
            "mine"
        );
    }
}
