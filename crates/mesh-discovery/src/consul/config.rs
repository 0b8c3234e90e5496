//! Where Consul is and how to talk to it, in code or from Consul's own
//! environment variables, read the way the Go client (`api.DefaultConfig`)
//! and the `consul` CLI read them.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use mesh_core::Address;
use mesh_core::config::InvalidConfig;

/// A Consul ACL token. Its `Debug` and `Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsulToken(String);

impl ConsulToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The secret itself, for the `X-Consul-Token` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConsulToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConsulToken(<redacted>)")
    }
}

impl fmt::Display for ConsulToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for ConsulToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

/// HTTP basic credentials for a proxy in front of Consul
/// (`CONSUL_HTTP_AUTH=user:pass`). `Debug` and `Display` show the user
/// only.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpAuth {
    user: String,
    password: Option<String>,
}

impl HttpAuth {
    /// `user:password`, or a user alone.
    pub fn parse(s: &str) -> Self {
        match s.split_once(':') {
            Some((u, p)) => Self {
                user: u.to_owned(),
                password: Some(p.to_owned()),
            },
            None => Self {
                user: s.to_owned(),
                password: None,
            },
        }
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password, for the `Authorization` header only.
    pub fn expose_password(&self) -> Option<&str> {
        self.password.as_deref()
    }
}

impl fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpAuth({}:<redacted>)", self.user)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for HttpAuth {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self::parse(&s))
    }
}

/// How to reach a Consul agent.
///
/// Build it in code ([`ConsulConfig::new`]) or from the variables the `consul`
/// CLI and Go client read ([`ConsulConfig::from_env`]). Check it with
/// [`validate`](Self::validate); [`ConsulClient::new`](super::ConsulClient::new)
/// does.
///
/// # Addresses
///
/// As in the Go client: `host:port`, `http://host[:port][/prefix]`,
/// `https://host[:port][/prefix]` or `unix:///path/to/consul.sock`. A scheme
/// without a port means the scheme's port (80 or 443); a path after the host
/// is a prefix every API path is put under (`https://gw.example/consul`
/// calls `https://gw.example/consul/v1/...`). [`https`](Self::https)
/// upgrades `http://` and bare addresses to HTTPS (never the reverse).
///
/// ```
/// use mesh_discovery::consul::ConsulConfig;
///
/// let mut c = ConsulConfig::new("http://gw.example/consul");
/// c.https = true; // CONSUL_HTTP_SSL=true
/// let client = mesh_discovery::consul::ConsulClient::new(&c)?;
/// assert_eq!(client.base_url(), "https://gw.example/consul/");
/// # Ok::<(), mesh_core::config::InvalidConfig>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct ConsulConfig {
    /// `host:port`, `http(s)://host[:port][/prefix]` or `unix:///path`
    /// (`CONSUL_HTTP_ADDR`; default `127.0.0.1:8500`).
    pub address: String,
    /// Use HTTPS even when `address` says `http://` or has no scheme
    /// (`CONSUL_HTTP_SSL`). `false` never downgrades `https://`.
    pub https: bool,
    /// The ACL token, sent as `X-Consul-Token` (`CONSUL_HTTP_TOKEN`, or
    /// `CONSUL_HTTP_TOKEN_FILE`, which wins). Never serialized, never logged.
    #[cfg_attr(feature = "serde", serde(skip_serializing))]
    pub token: Option<ConsulToken>,
    /// HTTP basic credentials (`CONSUL_HTTP_AUTH`, `user:pass`). Never
    /// serialized, the password never logged.
    #[cfg_attr(feature = "serde", serde(skip_serializing))]
    pub http_auth: Option<HttpAuth>,
    /// A PEM file of CA certificates to trust instead of the system's
    /// (`CONSUL_CACERT`).
    pub ca_cert: Option<PathBuf>,
    /// A directory of PEM CA certificates to trust instead of the system's
    /// (`CONSUL_CAPATH`); with `ca_cert`, both are trusted.
    pub ca_path: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS (`CONSUL_CLIENT_CERT`).
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert` (`CONSUL_CLIENT_KEY`).
    pub client_key: Option<PathBuf>,
    /// The name to check the server certificate against (and send as SNI)
    /// when it differs from the host in `address` (`CONSUL_TLS_SERVER_NAME`;
    /// a `:port` suffix is ignored, as the Go client does).
    pub tls_server_name: Option<String>,
    /// Skip server certificate checks (`CONSUL_HTTP_SSL_VERIFY=false`). For
    /// development only.
    pub tls_skip_verify: bool,
    /// The Consul Enterprise namespace (`CONSUL_NAMESPACE`), sent as `ns`.
    pub namespace: Option<String>,
    /// The Consul Enterprise admin partition (`CONSUL_PARTITION`).
    pub partition: Option<String>,
    /// How long to wait for a TCP (and TLS) connection. 100 ms to 60 s;
    /// default 5 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub connect_timeout: Duration,
    /// The timeout of calls that do not block (register, deregister, TTL
    /// updates). 100 ms to 5 min; default 10 s. Blocking queries get their own,
    /// longer timeout from their `wait`.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub request_timeout: Duration,
    /// The most connections a [`ConsulClient`](super::ConsulClient) (one
    /// per `Mesh`) holds to the agent, whatever the number of watched
    /// services: requests wait for a free one (first come, first served).
    /// A sixteenth is slack for connections on their way back to the pool,
    /// an eighth of the rest (at least one) is kept for calls that do not
    /// block (registration, TTL updates, first reads), the rest (53 of 64)
    /// carry blocking queries. 2 to 1000; default 64 (Consul's agent allows
    /// 200 per client IP, `limits.http_max_conns_per_client`).
    pub max_connections: u32,
    /// How long a blocking query may hold a connection while more watches
    /// share the client than it has connections for blocking queries: the
    /// watches then take turns. A change of a check's status is brought
    /// to its watch at once by the client's change feed (two of the
    /// blocking connections, see [`ConsulDiscovery`](super::ConsulDiscovery));
    /// what the feed cannot see (an instance registered or deregistered
    /// while passing, tag or address changes) waits at most about
    /// `watches / blocking connections × shared_wait`. With fewer watches
    /// than connections, each watch blocks for its own `wait`. 100 ms to
    /// 10 min; default 1 s.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub shared_wait: Duration,
}

/// The default of [`ConsulConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 64;

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:8500".to_owned(),
            https: false,
            token: None,
            http_auth: None,
            ca_cert: None,
            ca_path: None,
            client_cert: None,
            client_key: None,
            tls_server_name: None,
            tls_skip_verify: false,
            namespace: None,
            partition: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shared_wait: Duration::from_secs(1),
        }
    }
}

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Tcp(Address),
    Unix(PathBuf),
}

/// [`ConsulConfig::address`], parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedAddress {
    pub(crate) https: bool,
    pub(crate) target: Target,
    /// `""` or `/prefix` (no trailing `/`).
    pub(crate) prefix: String,
}

impl ParsedAddress {
    /// The TCP address; `None` for a Unix socket.
    #[cfg(test)]
    pub(crate) fn tcp(&self) -> Option<&Address> {
        match &self.target {
            Target::Tcp(a) => Some(a),
            Target::Unix(_) => None,
        }
    }
}

impl ConsulConfig {
    /// The agent at `address` (see [`address`](Self::address)), other fields
    /// at their defaults.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            ..Self::default()
        }
    }

    /// The same config with a token.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(ConsulToken::new(token));
        self
    }

    /// Reads `CONSUL_HTTP_ADDR`, `CONSUL_HTTP_SSL`, `CONSUL_HTTP_TOKEN`,
    /// `CONSUL_HTTP_TOKEN_FILE`, `CONSUL_HTTP_AUTH`, `CONSUL_CACERT`,
    /// `CONSUL_CAPATH`, `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY`,
    /// `CONSUL_TLS_SERVER_NAME`, `CONSUL_HTTP_SSL_VERIFY`, `CONSUL_NAMESPACE`
    /// and `CONSUL_PARTITION`, like the `consul` CLI. Unset variables keep
    /// their defaults. Errors name the variable.
    pub fn from_env() -> Result<Self, InvalidConfig> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) with another source of variables (tests,
    /// or a map from a config system).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, InvalidConfig> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let mut errors = InvalidConfig::default();
        let mut c = Self::default();
        if let Some(a) = get("CONSUL_HTTP_ADDR") {
            c.address = a.trim().to_owned();
        }
        let flag = |name: &str, errors: &mut InvalidConfig| -> Option<bool> {
            let v = get(name)?;
            // Go's strconv.ParseBool.
            match v.trim() {
                "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
                _ => {
                    errors.push(name, format!("must be true or false, got {v:?}"));
                    None
                }
            }
        };
        if let Some(ssl) = flag("CONSUL_HTTP_SSL", &mut errors) {
            c.https = ssl;
        }
        if let Some(verify) = flag("CONSUL_HTTP_SSL_VERIFY", &mut errors) {
            c.tls_skip_verify = !verify;
        }
        if let Some(t) = get("CONSUL_HTTP_TOKEN") {
            c.token = Some(ConsulToken::new(t.trim()));
        }
        if let Some(path) = get("CONSUL_HTTP_TOKEN_FILE") {
            match std::fs::read_to_string(&path) {
                Ok(t) if !t.trim().is_empty() => c.token = Some(ConsulToken::new(t.trim())),
                Ok(_) => errors.push("CONSUL_HTTP_TOKEN_FILE", format!("file {path:?} is empty")),
                Err(e) => errors.push(
                    "CONSUL_HTTP_TOKEN_FILE",
                    format!("file {path:?} could not be read: {e}"),
                ),
            }
        }
        c.http_auth = get("CONSUL_HTTP_AUTH").map(|a| HttpAuth::parse(&a));
        c.ca_cert = get("CONSUL_CACERT").map(PathBuf::from);
        c.ca_path = get("CONSUL_CAPATH").map(PathBuf::from);
        c.client_cert = get("CONSUL_CLIENT_CERT").map(PathBuf::from);
        c.client_key = get("CONSUL_CLIENT_KEY").map(PathBuf::from);
        c.tls_server_name = get("CONSUL_TLS_SERVER_NAME");
        c.namespace = get("CONSUL_NAMESPACE");
        c.partition = get("CONSUL_PARTITION");
        if let Err(e) = c.parse_address() {
            for fe in e.errors() {
                errors.push("CONSUL_HTTP_ADDR", fe.reason().to_owned());
            }
        }
        errors.into_result().map(|()| c)
    }

    pub(crate) fn parse_address(&self) -> Result<ParsedAddress, InvalidConfig> {
        let bad = |why: String| InvalidConfig::field("address", why);
        let raw = self.address.trim();
        if let Some(path) = raw.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(bad("unix:// needs a socket path".into()));
            }
            return Ok(ParsedAddress {
                https: self.https,
                target: Target::Unix(PathBuf::from(path)),
                prefix: String::new(),
            });
        }
        let (scheme_https, rest) = if let Some(r) = raw.strip_prefix("https://") {
            (Some(true), r)
        } else if let Some(r) = raw.strip_prefix("http://") {
            (Some(false), r)
        } else if raw.contains("://") {
            return Err(bad(format!(
                "must use http://, https:// or unix://, got {raw:?}"
            )));
        } else {
            (None, raw)
        };
        // CONSUL_HTTP_SSL upgrades, never downgrades.
        let https = scheme_https.unwrap_or(false) || self.https;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if prefix.contains(['?', '#']) {
            return Err(bad(format!(
                "must not hold a query or fragment, got {raw:?}"
            )));
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(h, _)| !h.ends_with(':') && (!h.starts_with('[') || h.ends_with(']')))
            && !(authority.starts_with('[') && authority.ends_with(']'));
        let with_port = if has_port {
            authority.to_owned()
        } else if scheme_https.is_none() && authority.is_empty() {
            return Err(bad("is empty".into()));
        } else {
            // As Go's net/http: no port means the scheme's.
            format!("{authority}:{}", if https { 443 } else { 80 })
        };
        let address = with_port.parse::<Address>().map_err(|e| {
            bad(format!(
                "must be [http(s)://]host[:port][/prefix] or unix:///path: {e}"
            ))
        })?;
        if address.port() == 0 {
            return Err(bad("has port 0".into()));
        }
        Ok(ParsedAddress {
            https,
            target: Target::Tcp(address),
            prefix: prefix.to_owned(),
        })
    }

    /// `tls_server_name` without a `:port` suffix.
    pub(crate) fn server_name(&self) -> Option<&str> {
        let name = self.tls_server_name.as_deref()?.trim();
        let name = if name.starts_with('[') {
            name.split_once(']').map_or(name, |(h, _)| &h[1..])
        } else {
            match name.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => h,
                _ => name,
            }
        };
        (!name.is_empty()).then_some(name)
    }

    /// Checks every field; errors name each bad one and what is allowed.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        if let Err(e) = self.parse_address() {
            errors.merge_nested("", Err(e));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            errors.push(
                "client_key",
                "client_cert and client_key must be given together",
            );
        }
        let range =
            |errors: &mut InvalidConfig, name: &str, v: Duration, lo: Duration, hi: Duration| {
                if v < lo || v > hi {
                    errors.push(
                        name,
                        format!("must be between {lo:?} and {hi:?}, got {v:?}"),
                    );
                }
            };
        range(
            &mut errors,
            "connect_timeout",
            self.connect_timeout,
            Duration::from_millis(100),
            Duration::from_secs(60),
        );
        range(
            &mut errors,
            "request_timeout",
            self.request_timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        );
        range(
            &mut errors,
            "shared_wait",
            self.shared_wait,
            Duration::from_millis(100),
            Duration::from_secs(600),
        );
        if !(2..=1000).contains(&self.max_connections) {
            errors.push(
                "max_connections",
                format!("must be between 2 and 1000, got {}", self.max_connections),
            );
        }
        if let Some(t) = &self.token
            && t.0.chars().any(|c| c.is_control() || c == ' ')
        {
            errors.push("token", "must not contain spaces or control characters");
        }
        if let Some(a) = &self.http_auth
            && (a.user.is_empty()
                || format!("{}:{}", a.user, a.password.as_deref().unwrap_or(""))
                    .chars()
                    .any(char::is_control))
        {
            errors.push(
                "http_auth",
                "must be user[:password] without control characters",
            );
        }
        for (name, v) in [
            ("namespace", &self.namespace),
            ("partition", &self.partition),
        ] {
            if let Some(v) = v
                && crate::error::check_name("name", v).is_err()
            {
                errors.push(name, "may contain only letters, digits, '-', '_' and '.'");
            }
        }
        errors.into_result()
    }
}

// ===== a [consul] table over the environment =====

/// A `[consul]` table as written: only the fields it sets.
#[cfg(feature = "serde")]
#[derive(serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ConsulTable {
    address: Option<String>,
    https: Option<bool>,
    token: Option<ConsulToken>,
    http_auth: Option<HttpAuth>,
    ca_cert: Option<PathBuf>,
    ca_path: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    tls_server_name: Option<String>,
    tls_skip_verify: Option<bool>,
    namespace: Option<String>,
    partition: Option<String>,
    #[serde(with = "humantime_serde::option")]
    connect_timeout: Option<Duration>,
    #[serde(with = "humantime_serde::option")]
    request_timeout: Option<Duration>,
    max_connections: Option<u32>,
    #[serde(with = "humantime_serde::option")]
    shared_wait: Option<Duration>,
}

#[cfg(feature = "serde")]
impl ConsulConfig {
    /// Reads a config table (`[consul]` in a file) over `base`, field by
    /// field: what the table sets wins, everything else keeps `base`'s
    /// value. Unknown fields are errors.
    ///
    /// ```
    /// use mesh_discovery::consul::ConsulConfig;
    ///
    /// let env = ConsulConfig::from_lookup(|k| (k == "CONSUL_HTTP_TOKEN").then(|| "s3cr3t".into()))?;
    /// let table = serde_json::json!({"address": "https://consul.internal:8501"});
    /// let c = ConsulConfig::deserialize_over(env, table).unwrap();
    /// assert_eq!(c.address, "https://consul.internal:8501");
    /// assert_eq!(c.token.unwrap().expose(), "s3cr3t", "the environment's token is kept");
    /// # Ok::<(), mesh_core::config::InvalidConfig>(())
    /// ```
    pub fn deserialize_over<'de, D: serde::Deserializer<'de>>(
        base: Self,
        table: D,
    ) -> Result<Self, D::Error> {
        let t = <ConsulTable as serde::Deserialize>::deserialize(table)?;
        let mut c = base;
        macro_rules! set {
            ($($f:ident),*) => {$( if let Some(v) = t.$f { c.$f = v; } )*};
        }
        macro_rules! set_opt {
            ($($f:ident),*) => {$( if t.$f.is_some() { c.$f = t.$f; } )*};
        }
        set!(
            address,
            https,
            tls_skip_verify,
            connect_timeout,
            request_timeout,
            max_connections,
            shared_wait
        );
        set_opt!(
            token,
            http_auth,
            ca_cert,
            ca_path,
            client_cert,
            client_key,
            tls_server_name,
            namespace,
            partition
        );
        Ok(c)
    }

    /// For `#[serde(deserialize_with = ...)]` on an `Option<ConsulConfig>`
    /// field: the table read over [`from_env`](Self::from_env) (see
    /// [`deserialize_over`](Self::deserialize_over)), so a file that sets
    /// only `address` keeps `CONSUL_HTTP_TOKEN` and the rest of the
    /// environment. An environment error is a deserialization error naming
    /// the variable.
    pub fn deserialize_over_env<'de, D: serde::Deserializer<'de>>(
        table: D,
    ) -> Result<Option<Self>, D::Error> {
        let env = Self::from_env().map_err(<D::Error as serde::de::Error>::custom)?;
        Self::deserialize_over(env, table).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<ConsulConfig, InvalidConfig> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ConsulConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn reads_consul_environment_conventions() {
        let c = env(&[]).unwrap();
        let p = c.parse_address().unwrap();
        assert_eq!(
            (p.https, p.tcp().unwrap().to_string()),
            (false, "127.0.0.1:8500".into())
        );

        let c = env(&[
            ("CONSUL_HTTP_ADDR", "https://consul.service:8501"),
            ("CONSUL_HTTP_TOKEN", "s3cr3t"),
            ("CONSUL_NAMESPACE", "team-a"),
            ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul"),
        ])
        .unwrap();
        let p = c.parse_address().unwrap();
        assert!(p.https);
        assert_eq!(p.tcp().unwrap().to_string(), "consul.service:8501");
        assert_eq!(c.token.as_ref().unwrap().expose(), "s3cr3t");
        assert_eq!(c.namespace.as_deref(), Some("team-a"));
        assert!(!format!("{c:?}").contains("s3cr3t"), "token never in Debug");

        let c = env(&[
            ("CONSUL_HTTP_ADDR", "10.1.2.3"),
            ("CONSUL_HTTP_SSL", "true"),
        ])
        .unwrap();
        assert_eq!(
            c.parse_address().unwrap().tcp().unwrap().to_string(),
            "10.1.2.3:443",
            "no port: the scheme's, as in the Go client"
        );
        let c = env(&[("CONSUL_HTTP_ADDR", "http://[::1]")]).unwrap();
        assert_eq!(
            c.parse_address().unwrap().tcp().unwrap().to_string(),
            "[::1]:80"
        );
    }

    #[test]
    fn reads_the_environment_as_the_go_client_does() {
        // CONSUL_HTTP_SSL upgrades http://, and never downgrades https://.
        let c = env(&[
            ("CONSUL_HTTP_ADDR", "http://consul.internal:8501"),
            ("CONSUL_HTTP_SSL", "true"),
        ])
        .unwrap();
        assert!(c.parse_address().unwrap().https);
        let c = env(&[
            ("CONSUL_HTTP_ADDR", "https://consul.internal:8501"),
            ("CONSUL_HTTP_SSL", "false"),
        ])
        .unwrap();
        assert!(c.parse_address().unwrap().https);

        // A path prefix, with the scheme's port.
        let p = env(&[("CONSUL_HTTP_ADDR", "https://gw.example/consul/")])
            .unwrap()
            .parse_address()
            .unwrap();
        assert_eq!(
            (p.tcp().unwrap().to_string(), p.prefix.as_str()),
            ("gw.example:443".into(), "/consul")
        );

        // Unix sockets.
        let p = env(&[("CONSUL_HTTP_ADDR", "unix:///var/run/consul.sock")])
            .unwrap()
            .parse_address()
            .unwrap();
        assert_eq!(p.target, Target::Unix("/var/run/consul.sock".into()));

        // The server name's port is dropped; CAPATH and basic auth are read.
        let c = env(&[
            ("CONSUL_TLS_SERVER_NAME", "server.dc1.consul:8501"),
            ("CONSUL_CAPATH", "/etc/consul/ca.d"),
            ("CONSUL_HTTP_AUTH", "ops:pa:ss"),
        ])
        .unwrap();
        assert_eq!(c.server_name(), Some("server.dc1.consul"));
        assert_eq!(
            c.ca_path.as_deref(),
            Some(std::path::Path::new("/etc/consul/ca.d"))
        );
        let auth = c.http_auth.as_ref().unwrap();
        assert_eq!(
            (auth.user(), auth.expose_password()),
            ("ops", Some("pa:ss"))
        );
        assert!(
            !format!("{c:?}").contains("pa:ss"),
            "password never in Debug"
        );
        let mut c = ConsulConfig {
            tls_server_name: Some("[::1]:8501".into()),
            ..ConsulConfig::default()
        };
        assert_eq!(c.server_name(), Some("::1"));
        c.tls_server_name = Some("consul".into());
        assert_eq!(c.server_name(), Some("consul"));
    }

    #[cfg(feature = "serde")]
    #[test]
    fn a_table_fills_in_over_the_environment_field_by_field() {
        let base = env(&[
            ("CONSUL_HTTP_ADDR", "http://from-env:8500"),
            ("CONSUL_HTTP_TOKEN", "env-token"),
            ("CONSUL_NAMESPACE", "team-a"),
        ])
        .unwrap();
        let table =
            serde_json::json!({"address": "https://from-file:8501", "request_timeout": "3s"});
        let c = ConsulConfig::deserialize_over(base.clone(), table).unwrap();
        assert_eq!(c.address, "https://from-file:8501");
        assert_eq!(c.request_timeout, Duration::from_secs(3));
        assert_eq!(c.token.as_ref().unwrap().expose(), "env-token");
        assert_eq!(c.namespace.as_deref(), Some("team-a"));
        let c = ConsulConfig::deserialize_over(
            base.clone(),
            serde_json::json!({"token": "file-token"}),
        )
        .unwrap();
        assert_eq!(c.token.unwrap().expose(), "file-token");
        assert_eq!(c.address, "http://from-env:8500");
        assert!(ConsulConfig::deserialize_over(base, serde_json::json!({"adress": "x"})).is_err());
    }

    #[test]
    fn token_file_wins_and_errors_name_the_variable() {
        let dir = std::env::temp_dir().join(format!("mesh-consul-token-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        let c = env(&[
            ("CONSUL_HTTP_TOKEN", "from-var"),
            ("CONSUL_HTTP_TOKEN_FILE", dir.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(c.token.unwrap().expose(), "from-file");
        std::fs::remove_file(&dir).unwrap();

        let e = env(&[
            ("CONSUL_HTTP_ADDR", "ftp://consul:21"),
            ("CONSUL_HTTP_SSL", "maybe"),
            ("CONSUL_HTTP_TOKEN_FILE", "/nonexistent/token"),
        ])
        .unwrap_err();
        let paths: Vec<_> = e.errors().iter().map(|f| f.path().to_owned()).collect();
        assert!(paths.contains(&"CONSUL_HTTP_ADDR".to_owned()), "{e}");
        assert!(paths.contains(&"CONSUL_HTTP_SSL".to_owned()), "{e}");
        assert!(paths.contains(&"CONSUL_HTTP_TOKEN_FILE".to_owned()), "{e}");
    }

    #[test]
    fn validate_names_bad_fields() {
        for bad in [
            "http://",
            "host:99999",
            "bad host:80",
            "ftp://x:1",
            "127.0.0.1:0",
            "unix://",
            "http://x/a?b",
        ] {
            assert!(ConsulConfig::new(bad).validate().is_err(), "{bad}");
        }
        let mut c = ConsulConfig::new("127.0.0.1:8500");
        c.client_cert = Some("c.pem".into());
        c.connect_timeout = Duration::ZERO;
        let e = c.validate().unwrap_err();
        let paths: Vec<_> = e.errors().iter().map(|f| f.path().to_owned()).collect();
        assert_eq!(paths, ["client_key", "connect_timeout"]);
    }
}
