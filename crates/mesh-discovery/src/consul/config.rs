//! Where Consul is and how to talk to it, in code or from Consul's own
//! environment variables.

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

/// How to reach a Consul agent.
///
/// Build it in code ([`ConsulConfig::new`]) or from the variables the `consul`
/// CLI and Go client read ([`ConsulConfig::from_env`]). Check it with
/// [`validate`](Self::validate); [`ConsulClient::new`](super::ConsulClient::new)
/// does.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct ConsulConfig {
    /// `host:port`, `http://host:port` or `https://host:port`
    /// (`CONSUL_HTTP_ADDR`; default `127.0.0.1:8500`).
    pub address: String,
    /// Use HTTPS when `address` has no scheme (`CONSUL_HTTP_SSL`).
    pub https: bool,
    /// The ACL token, sent as `X-Consul-Token` (`CONSUL_HTTP_TOKEN`, or
    /// `CONSUL_HTTP_TOKEN_FILE`, which wins). Never serialized, never logged.
    #[cfg_attr(feature = "serde", serde(skip_serializing))]
    pub token: Option<ConsulToken>,
    /// A PEM file of CA certificates to trust instead of the system's
    /// (`CONSUL_CACERT`).
    pub ca_cert: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS (`CONSUL_CLIENT_CERT`).
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert` (`CONSUL_CLIENT_KEY`).
    pub client_key: Option<PathBuf>,
    /// The name to check the server certificate against when it differs from
    /// the host in `address` (`CONSUL_TLS_SERVER_NAME`).
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
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:8500".to_owned(),
            https: false,
            token: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            tls_server_name: None,
            tls_skip_verify: false,
            namespace: None,
            partition: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The scheme and authority parsed out of [`ConsulConfig::address`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedAddress {
    pub(crate) https: bool,
    pub(crate) address: Address,
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
    /// `CONSUL_HTTP_TOKEN_FILE`, `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`,
    /// `CONSUL_CLIENT_KEY`, `CONSUL_TLS_SERVER_NAME`, `CONSUL_HTTP_SSL_VERIFY`,
    /// `CONSUL_NAMESPACE` and `CONSUL_PARTITION`, like the `consul` CLI. Unset
    /// variables keep their defaults. Errors name the variable.
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
            match v.trim().to_ascii_lowercase().as_str() {
                "1" | "t" | "true" => Some(true),
                "0" | "f" | "false" => Some(false),
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
        c.ca_cert = get("CONSUL_CACERT").map(PathBuf::from);
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
        let raw = self.address.trim();
        let (https, rest) = if let Some(r) = raw.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = raw.strip_prefix("http://") {
            (false, r)
        } else if raw.contains("://") {
            return Err(InvalidConfig::field(
                "address",
                format!(
                    "must use http:// or https:// (unix sockets are not supported), got {raw:?}"
                ),
            ));
        } else {
            (self.https, raw)
        };
        let rest = rest.trim_end_matches('/');
        let with_port = if rest
            .rsplit_once(':')
            .is_some_and(|(h, _)| !h.ends_with(':'))
            && !(rest.starts_with('[') && rest.ends_with(']'))
        {
            rest.to_owned()
        } else {
            format!("{rest}:{}", if https { 8501 } else { 8500 })
        };
        let address = with_port.parse::<Address>().map_err(|e| {
            InvalidConfig::field("address", format!("must be [http(s)://]host[:port]: {e}"))
        })?;
        if address.port() == 0 {
            return Err(InvalidConfig::field("address", "has port 0"));
        }
        Ok(ParsedAddress { https, address })
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
        if let Some(t) = &self.token
            && t.0.chars().any(|c| c.is_control() || c == ' ')
        {
            errors.push("token", "must not contain spaces or control characters");
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
            (p.https, p.address.to_string()),
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
        assert_eq!(p.address.to_string(), "consul.service:8501");
        assert_eq!(c.token.as_ref().unwrap().expose(), "s3cr3t");
        assert_eq!(c.namespace.as_deref(), Some("team-a"));
        assert!(!format!("{c:?}").contains("s3cr3t"), "token never in Debug");

        let c = env(&[
            ("CONSUL_HTTP_ADDR", "10.1.2.3"),
            ("CONSUL_HTTP_SSL", "true"),
        ])
        .unwrap();
        assert_eq!(
            c.parse_address().unwrap().address.to_string(),
            "10.1.2.3:8501"
        );
        let c = env(&[("CONSUL_HTTP_ADDR", "http://[::1]")]).unwrap();
        assert_eq!(c.parse_address().unwrap().address.to_string(), "[::1]:8500");
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
            ("CONSUL_HTTP_ADDR", "unix:///var/run/consul.sock"),
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
