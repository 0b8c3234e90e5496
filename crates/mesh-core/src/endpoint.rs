//! Endpoints: one instance of a service.
//!
//! Every source (Consul, DNS, static config) produces [`Endpoint`]s, the
//! balancer chooses among them, retry remembers which were tried, and the
//! router rewrites requests to their [`Address`]. An endpoint is immutable and
//! sits behind one `Arc`, so cloning it is a reference-count increment.
//!
//! # Example
//!
//! ```
//! use mesh_core::{Endpoint, EndpointKey};
//!
//! let ep = Endpoint::new(EndpointKey::from_parts("node-1", "users-1"), "10.0.0.7:8080".parse()?)
//!     .with_weight(3)
//!     .with_tags(["v2"])
//!     .with_metadata([("zone", "eu-west-1a")]);
//! assert_eq!(ep.key().as_str(), "node-1/users-1");
//! assert_eq!(ep.address().to_string(), "10.0.0.7:8080");
//! assert_eq!(ep.metadata().get("zone").map(String::as_str), Some("eu-west-1a"));
//!
//! // Bad input is a typed error, never a panic.
//! assert!("10.0.0.7:http".parse::<mesh_core::Address>().is_err());
//! # Ok::<(), mesh_core::endpoint::InvalidEndpoint>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

/// A stable identity for an endpoint, such as Consul's `node/service-id`.
///
/// Carries a precomputed 64-bit hash, so comparing and remembering keys on the
/// request path is an integer operation.
#[derive(Clone)]
pub struct EndpointKey {
    name: Arc<str>,
    id: u64,
}

impl EndpointKey {
    /// A key with the given name. Names should be unique within one service.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        let name = name.into();
        let id = fnv1a(name.as_bytes());
        Self { name, id }
    }

    /// The key Consul discovery uses: `node/service-id` (service IDs are only
    /// unique per agent).
    pub fn from_parts(node: &str, service_id: &str) -> Self {
        Self::new(format!("{node}/{service_id}"))
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The key's 64-bit hash: stable across processes, never zero.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// A [`Hasher`](std::hash::Hasher) that keeps a `u64` as it is: for maps
/// keyed by [`EndpointKey::id`]s, which are well-mixed 64-bit hashes
/// already (`HashMap<u64, V, BuildHasherDefault<IdHasher>>`). Other input is
/// folded in byte by byte.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

impl PartialEq for EndpointKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.name == other.name
    }
}

impl Eq for EndpointKey {}

impl std::hash::Hash for EndpointKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.id);
    }
}

impl PartialOrd for EndpointKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EndpointKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name.cmp(&other.name)
    }
}

impl fmt::Debug for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.name, f)
    }
}

impl fmt::Display for EndpointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl From<&str> for EndpointKey {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for EndpointKey {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

/// Where an endpoint listens: a socket address, or a host name and port.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// An IP address and port.
    Socket(SocketAddr),
    /// A DNS name and port, resolved by the client that connects.
    Host {
        /// A valid DNS host name (RFC 1123).
        host: Arc<str>,
        /// The port.
        port: u16,
    },
}

impl Address {
    /// A host-name address, checked: the name must be a valid RFC 1123 host
    /// name (an IP literal becomes [`Address::Socket`]).
    pub fn host(host: &str, port: u16) -> Result<Self, InvalidEndpoint> {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(Address::Socket(SocketAddr::new(ip, port)));
        }
        validate_host(host)?;
        Ok(Address::Host {
            host: host.to_ascii_lowercase().into(),
            port,
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Address::Socket(s) => s.port(),
            Address::Host { port, .. } => *port,
        }
    }

    /// The host part as it goes in a URI authority (IPv6 in brackets).
    pub fn host_str(&self) -> HostDisplay<'_> {
        HostDisplay(self)
    }
}

/// Displays an [`Address`]'s host as a URI authority needs it.
#[derive(Debug)]
pub struct HostDisplay<'a>(&'a Address);

impl fmt::Display for HostDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Address::Socket(SocketAddr::V4(s)) => write!(f, "{}", s.ip()),
            Address::Socket(SocketAddr::V6(s)) => write!(f, "[{}]", s.ip()),
            Address::Host { host, .. } => f.write_str(host),
        }
    }
}

fn validate_host(host: &str) -> Result<(), InvalidEndpoint> {
    let bad = |why: &'static str| Err(InvalidEndpoint::host(host, why));
    if host.is_empty() {
        return bad("is empty");
    }
    if host.len() > 253 {
        return bad("is longer than 253 characters");
    }
    for label in host.strip_suffix('.').unwrap_or(host).split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("has a label that is empty or longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("may contain only letters, digits, '-', '_' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("has a label that starts or ends with '-'");
        }
    }
    Ok(())
}

impl FromStr for Address {
    type Err = InvalidEndpoint;

    /// Parses `ip:port`, `[ipv6]:port` or `host:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(sock) = s.parse::<SocketAddr>() {
            return Ok(Address::Socket(sock));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| InvalidEndpoint::address(s, "must be host:port"))?;
        let port = port.parse::<u16>().map_err(|_| {
            InvalidEndpoint::address(s, "has a port that is not a number in 0..=65535")
        })?;
        if host.contains(':') && !host.starts_with('[') {
            return Err(InvalidEndpoint::address(
                s,
                "has an IPv6 host that is not in brackets",
            ));
        }
        Address::host(host, port)
    }
}

impl From<SocketAddr> for Address {
    fn from(s: SocketAddr) -> Self {
        Address::Socket(s)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host_str(), self.port())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The weight an endpoint has unless its source says otherwise.
pub const DEFAULT_WEIGHT: u32 = 1;

/// One instance of a service. Cheap to clone.
///
/// Tags and metadata sit behind their own reference counts (none at all when
/// empty), so a source building thousands of endpoints that carry the same
/// tags and metadata can share one copy: see [`Endpoint::with_tags_of`] and
/// [`Endpoint::with_metadata_of`].
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    key: EndpointKey,
    address: Address,
    weight: u32,
    /// `None` when empty, so an endpoint without tags allocates nothing for them.
    tags: Option<Arc<[String]>>,
    /// `None` when empty.
    metadata: Option<Arc<BTreeMap<String, String>>>,
}

/// What [`Endpoint::metadata`] shows for an endpoint without metadata.
static NO_METADATA: BTreeMap<String, String> = BTreeMap::new();

/// Equal when both are empty or both share one allocation, else by content.
fn shared_eq<T: ?Sized + PartialEq>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || **a == **b,
        _ => false,
    }
}

impl PartialEq for Inner {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.address == other.address
            && self.weight == other.weight
            && shared_eq(&self.tags, &other.tags)
            && shared_eq(&self.metadata, &other.metadata)
    }
}

impl Eq for Inner {}

impl Endpoint {
    /// An endpoint with weight 1, no tags and no metadata.
    pub fn new(key: impl Into<EndpointKey>, address: Address) -> Self {
        Self {
            inner: Arc::new(Inner {
                key: key.into(),
                address,
                weight: DEFAULT_WEIGHT,
                tags: None,
                metadata: None,
            }),
        }
    }

    /// An endpoint keyed by its own address, as static and DNS sources do.
    pub fn from_address(address: Address) -> Self {
        Self::new(EndpointKey::new(address.to_string()), address)
    }

    /// The same endpoint with another weight. 0 drains it: balancers send it no
    /// new requests.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        Arc::make_mut(&mut self.inner).weight = weight;
        self
    }

    /// The same endpoint with these tags.
    #[must_use]
    pub fn with_tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let tags: Vec<String> = tags.into_iter().map(Into::into).collect();
        Arc::make_mut(&mut self.inner).tags = (!tags.is_empty()).then(|| tags.into());
        self
    }

    /// The same endpoint with `other`'s tags, shared with it rather than
    /// copied: no allocation, and comparing the two endpoints' tags is a
    /// pointer comparison. Equal to `self.with_tags(other.tags().iter().cloned())`.
    ///
    /// For sources that build many endpoints with the same tags.
    ///
    /// ```
    /// use mesh_core::Endpoint;
    ///
    /// let a = Endpoint::new("n/a", "10.0.0.1:80".parse()?).with_tags(["v1", "primary"]);
    /// let b = Endpoint::new("n/b", "10.0.0.2:80".parse()?).with_tags_of(&a);
    /// assert_eq!(b.tags(), ["v1", "primary"]);
    /// # Ok::<(), mesh_core::endpoint::InvalidEndpoint>(())
    /// ```
    #[must_use]
    pub fn with_tags_of(mut self, other: &Endpoint) -> Self {
        if !self.ptr_eq(other) {
            Arc::make_mut(&mut self.inner).tags = other.inner.tags.clone();
        }
        self
    }

    /// The same endpoint with this metadata.
    #[must_use]
    pub fn with_metadata<I, K, V>(mut self, metadata: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let metadata: BTreeMap<String, String> = metadata
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Arc::make_mut(&mut self.inner).metadata =
            (!metadata.is_empty()).then(|| Arc::new(metadata));
        self
    }

    /// The same endpoint with `other`'s metadata, shared with it rather than
    /// copied, as [`Endpoint::with_tags_of`] does for tags.
    ///
    /// ```
    /// use mesh_core::Endpoint;
    ///
    /// let a = Endpoint::new("n/a", "10.0.0.1:80".parse()?).with_metadata([("zone", "a")]);
    /// let b = Endpoint::new("n/b", "10.0.0.2:80".parse()?).with_metadata_of(&a);
    /// assert_eq!(b.metadata(), a.metadata());
    /// # Ok::<(), mesh_core::endpoint::InvalidEndpoint>(())
    /// ```
    #[must_use]
    pub fn with_metadata_of(mut self, other: &Endpoint) -> Self {
        if !self.ptr_eq(other) {
            Arc::make_mut(&mut self.inner).metadata = other.inner.metadata.clone();
        }
        self
    }

    /// The stable identity.
    pub fn key(&self) -> &EndpointKey {
        &self.inner.key
    }

    /// Where it listens.
    pub fn address(&self) -> &Address {
        &self.inner.address
    }

    /// Its weight (default 1; 0 means drain).
    pub fn weight(&self) -> u32 {
        self.inner.weight
    }

    /// Its tags.
    pub fn tags(&self) -> &[String] {
        self.inner.tags.as_deref().unwrap_or_default()
    }

    /// Its metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        self.inner.metadata.as_deref().unwrap_or(&NO_METADATA)
    }

    /// True when both handles point at the same allocation (a cheap "nothing
    /// changed" test before comparing contents).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("key", &self.inner.key)
            .field("address", &self.inner.address)
            .field("weight", &self.inner.weight)
            .field("tags", &self.tags())
            .field("metadata", self.metadata())
            .finish()
    }
}

/// An endpoint or address that could not be accepted, naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct InvalidEndpoint {
    what: &'static str,
    value: String,
    reason: &'static str,
}

impl InvalidEndpoint {
    fn address(value: &str, reason: &'static str) -> Self {
        Self {
            what: "address",
            value: value.to_owned(),
            reason,
        }
    }

    fn host(value: &str, reason: &'static str) -> Self {
        Self {
            what: "host name",
            value: value.to_owned(),
            reason,
        }
    }

    /// The input that was rejected.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Why it was rejected.
    pub fn reason(&self) -> &str {
        self.reason
    }
}

#[cfg(feature = "serde")]
mod serde_impls {
    use super::*;

    impl serde::Serialize for Address {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(self)
        }
    }

    impl<'de> serde::Deserialize<'de> for Address {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        }
    }

    /// The serde form of an endpoint: `{ address, key?, weight?, tags?, metadata? }`.
    #[derive(serde::Serialize, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Spec {
        address: Address,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
        #[serde(default = "default_weight")]
        weight: u32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tags: Vec<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        metadata: BTreeMap<String, String>,
    }

    fn default_weight() -> u32 {
        DEFAULT_WEIGHT
    }

    impl serde::Serialize for Endpoint {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let key = self.key().as_str();
            Spec {
                address: self.address().clone(),
                key: (key != self.address().to_string()).then(|| key.to_owned()),
                weight: self.weight(),
                tags: self.tags().to_vec(),
                metadata: self.metadata().clone(),
            }
            .serialize(s)
        }
    }

    impl<'de> serde::Deserialize<'de> for Endpoint {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let spec = Spec::deserialize(d)?;
            let key = spec.key.unwrap_or_else(|| spec.address.to_string());
            Ok(Endpoint::new(key, spec.address)
                .with_weight(spec.weight)
                .with_tags(spec.tags)
                .with_metadata(spec.metadata))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            "127.0.0.1:80".parse::<Address>().unwrap(),
            Address::Socket("127.0.0.1:80".parse().unwrap())
        );
        let v6: Address = "[::1]:8080".parse().unwrap();
        assert_eq!(v6.to_string(), "[::1]:8080");
        let host: Address = "Users.Service.Consul:443".parse().unwrap();
        assert_eq!(host.to_string(), "users.service.consul:443");
        assert_eq!(host.port(), 443);
        assert_eq!(Address::host("[::1]", 9).unwrap().to_string(), "[::1]:9");
    }

    #[test]
    fn rejects_bad_addresses_with_a_reason() {
        for (bad, why) in [
            ("localhost", "must be host:port"),
            ("localhost:99999", "port"),
            ("localhost:-1", "port"),
            (":80", "empty"),
            ("bad host:80", "only letters"),
            ("-x.example:80", "starts or ends"),
            ("a..b:80", "empty"),
            ("::1:80", "brackets"),
        ] {
            let err = bad.parse::<Address>().unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        let long = format!("{}:80", "a".repeat(64));
        assert!(long.parse::<Address>().is_err());
    }

    #[test]
    fn endpoints_are_cheap_and_comparable() {
        let a = Endpoint::new("n/a", "10.0.0.1:80".parse().unwrap()).with_weight(0);
        let b = a.clone();
        assert!(a.ptr_eq(&b));
        assert_eq!(a.weight(), 0);
        let c = Endpoint::new("n/a", "10.0.0.1:80".parse().unwrap()).with_weight(0);
        assert_eq!(a, c);
        assert!(!a.ptr_eq(&c));
        assert_ne!(a, c.clone().with_tags(["x"]));
        assert_eq!(
            Endpoint::from_address("10.0.0.2:1".parse().unwrap())
                .key()
                .as_str(),
            "10.0.0.2:1"
        );
    }

    #[test]
    fn shared_tags_and_metadata_equal_copied_ones() {
        let addr: Address = "10.0.0.1:80".parse().unwrap();
        let a = Endpoint::new("n/a", addr.clone())
            .with_tags(["v1", "primary"])
            .with_metadata([("zone", "a"), ("version", "1")]);
        let shared = Endpoint::new("n/a", addr.clone())
            .with_tags_of(&a)
            .with_metadata_of(&a);
        let copied = Endpoint::new("n/a", addr.clone())
            .with_tags(a.tags().iter().cloned())
            .with_metadata(a.metadata().clone());
        assert_eq!(shared, a);
        assert_eq!(copied, a);
        assert_eq!(shared.tags(), ["v1", "primary"]);
        assert_eq!(shared.metadata().get("zone").map(String::as_str), Some("a"));
        // Empty in any form is empty, and equal.
        let bare = Endpoint::new("n/a", addr.clone());
        let emptied = Endpoint::new("n/a", addr.clone())
            .with_tags(Vec::<String>::new())
            .with_metadata(Vec::<(String, String)>::new());
        assert_eq!(bare, emptied);
        assert_eq!(bare, Endpoint::new("n/a", addr).with_tags_of(&emptied));
        assert!(bare.tags().is_empty() && bare.metadata().is_empty());
        assert_ne!(bare, a.clone().with_weight(1).with_tags_of(&bare));
        assert_ne!(shared.clone().with_metadata_of(&bare), shared);
        // Sharing with itself changes nothing.
        assert!(a.clone().with_tags_of(&a).with_metadata_of(&a).ptr_eq(&a));
        assert_eq!(format!("{bare:?}").matches("{}").count(), 1, "{bare:?}");
    }

    #[test]
    fn keys_hash_stably() {
        let k = EndpointKey::from_parts("node", "svc");
        assert_eq!(k, EndpointKey::new("node/svc"));
        assert_eq!(k.id(), EndpointKey::new("node/svc").id());
        assert_ne!(k.id(), EndpointKey::new("node/svc2").id());
        assert_ne!(EndpointKey::new("").id(), 0);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_round_trip() {
        let ep: Endpoint = serde_json::from_str(
            r#"{"address":"10.0.0.1:80","weight":2,"tags":["a"],"metadata":{"zone":"z1"}}"#,
        )
        .unwrap();
        assert_eq!(ep.key().as_str(), "10.0.0.1:80");
        assert_eq!(ep.weight(), 2);
        let back: Endpoint = serde_json::from_str(&serde_json::to_string(&ep).unwrap()).unwrap();
        assert_eq!(back, ep);
        let err = serde_json::from_str::<Endpoint>(r#"{"address":"nope"}"#).unwrap_err();
        assert!(err.to_string().contains("must be host:port"), "{err}");
    }
}
