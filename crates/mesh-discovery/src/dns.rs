//! DNS: endpoints from A/AAAA or SRV records, re-resolved when their TTL runs out.
//!
//! # Why a DNS source
//!
//! Plenty of services are only known by a name: a Kubernetes headless service,
//! a cloud load balancer's pool, a hand-kept zone with `_grpc._tcp` SRV
//! records. Resolving that name once at startup pins traffic to the addresses
//! of that moment; resolving it on every request puts DNS on the hot path. This
//! source sits in between: it resolves in the background, publishes the
//! answer as an [`EndpointSet`], and resolves again when the answer's TTL runs
//! out — the moment the zone's owner said it may have changed. The TTL is
//! clamped between [`DnsConfig::min_ttl`] (a floor, so a TTL of 0 cannot make
//! the loop spin) and [`DnsConfig::max_ttl`] (a cap, so a day-long TTL does not
//! hide a change for a day).
//!
//! # Fail static
//!
//! Like the Consul watch, a failed lookup (NXDOMAIN, a timeout, a server that is
//! down, SERVFAIL) changes nothing that a balancer sees: the last known
//! endpoints stay, the error goes to [`SourceHealth`](crate::SourceHealth),
//! `tracing` and metrics, and the source retries after a capped, jittered
//! backoff. An answer with no record at all (the name exists, with no record of
//! the type asked) follows [`DnsConfig::empty`].
//!
//! # Records
//!
//! - [`DnsKind::Ip`]: the A and AAAA records of a host name, each address with
//!   the configured port; every endpoint is keyed by its address.
//! - [`DnsKind::Srv`]: SRV records (`_http._tcp.users.example.`). Only the
//!   group with the lowest priority is kept (RFC 2782: a client must use the
//!   lowest priority it can reach; the others are standby). Each record becomes
//!   an endpoint keyed `target:port`, its address the target *host name* (the
//!   client that connects resolves it) and its weight the SRV weight, with 0
//!   raised to 1 (RFC 2782 gives weight 0 "a very small chance", not none).
//!   Targets of `.` ("no service here") are skipped.
//!
//! The resolver is hickory's: the system configuration (`/etc/resolv.conf`) by
//! default, or the name servers in [`DnsConfig::name_servers`] (over UDP, with
//! TCP for truncated answers). Its cache is off: this source *is* the cache.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use mesh_discovery::dns::{DnsConfig, DnsSource};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A and AAAA records of users.internal, each address on port 8080.
//! let users = DnsSource::spawn(DnsConfig::ip("users.internal", 8080))?;
//! // SRV records, with a floor of 10 s between two lookups.
//! let mut config = DnsConfig::srv("_grpc._tcp.billing.internal");
//! config.min_ttl = Duration::from_secs(10);
//! let billing = DnsSource::spawn(config)?;
//!
//! users.wait_for(|set| !set.is_empty()).await;
//! println!("{:?} / {}", users.current(), billing.health().is_healthy());
//! # Ok(())
//! # }
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, Record};
use mesh_core::backoff::Backoff;
use mesh_core::config::InvalidConfig;
use mesh_core::{Address, Endpoint};

use crate::error::{DiscoveryError, ErrorKind, InvalidName};
use crate::source::EmptyPolicy;
use crate::source::{Discovery, EndpointSet, Publisher};

// ===== config =====

/// Which records a [`DnsSource`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)
)]
pub enum DnsKind {
    /// A and AAAA records of a host name; every address gets this port.
    Ip {
        /// The port the instances listen on (1 to 65535).
        port: u16,
    },
    /// SRV records: target, port, priority and weight come from DNS.
    Srv,
}

/// How a [`DnsSource`] resolves, and how often.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct DnsConfig {
    /// The name to resolve: a host name for [`DnsKind::Ip`], an SRV name such
    /// as `_http._tcp.users.example` for [`DnsKind::Srv`]. A name without a
    /// final `.` goes through the resolver's search list.
    pub name: String,
    /// Which records to ask for.
    pub kind: DnsKind,
    /// The name servers to ask (`ip:port`, UDP with TCP fallback). Empty (the
    /// default) uses the system configuration (`/etc/resolv.conf`).
    #[cfg_attr(feature = "serde", serde(default))]
    pub name_servers: Vec<SocketAddr>,
    /// The shortest time between two lookups, whatever the TTL says (a TTL of 0
    /// would otherwise make the source spin). 100 ms to 1 h; default 5 s.
    #[cfg_attr(
        feature = "serde",
        serde(default = "defaults::min_ttl", with = "humantime_serde")
    )]
    pub min_ttl: Duration,
    /// The longest time an answer is trusted, whatever the TTL says. From
    /// `min_ttl` to 1 day; default 5 min.
    #[cfg_attr(
        feature = "serde",
        serde(default = "defaults::max_ttl", with = "humantime_serde")
    )]
    pub max_ttl: Duration,
    /// How long to wait for one answer from one server. 10 ms to 60 s;
    /// default 5 s.
    #[cfg_attr(
        feature = "serde",
        serde(default = "defaults::timeout", with = "humantime_serde")
    )]
    pub timeout: Duration,
    /// How many times a query is sent before the lookup fails. 1 to 10;
    /// default 2.
    #[cfg_attr(feature = "serde", serde(default = "defaults::attempts"))]
    pub attempts: usize,
    /// The delay between lookups after an error. Default 500 ms, ×2, capped at
    /// 30 s, full jitter.
    #[cfg_attr(feature = "serde", serde(default = "defaults::backoff"))]
    pub backoff: Backoff,
    /// What to do with an answer that has no record.
    #[cfg_attr(feature = "serde", serde(default))]
    pub empty: EmptyPolicy,
}

mod defaults {
    use super::*;

    pub(super) fn min_ttl() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn max_ttl() -> Duration {
        Duration::from_secs(300)
    }
    pub(super) fn timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn attempts() -> usize {
        2
    }
    pub(super) fn backoff() -> Backoff {
        Backoff::new(Duration::from_millis(500), 2.0, Duration::from_secs(30))
    }
}

impl DnsConfig {
    /// The A and AAAA records of `host`, each address on `port`, with the
    /// defaults.
    pub fn ip(host: impl Into<String>, port: u16) -> Self {
        Self::new(host, DnsKind::Ip { port })
    }

    /// The SRV records of `name`, with the defaults.
    pub fn srv(name: impl Into<String>) -> Self {
        Self::new(name, DnsKind::Srv)
    }

    /// `name` resolved as `kind`, with the defaults.
    pub fn new(name: impl Into<String>, kind: DnsKind) -> Self {
        Self {
            name: name.into(),
            kind,
            name_servers: Vec::new(),
            min_ttl: defaults::min_ttl(),
            max_ttl: defaults::max_ttl(),
            timeout: defaults::timeout(),
            attempts: defaults::attempts(),
            backoff: defaults::backoff(),
            empty: EmptyPolicy::KeepLast,
        }
    }

    /// Checks every field; errors name each bad one and the allowed range.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut errors = InvalidConfig::default();
        if let Err(e) = check_dns_name(&self.name) {
            errors.push("name", e.to_string());
        }
        if self.kind == (DnsKind::Ip { port: 0 }) {
            errors.push("kind.port", "must be between 1 and 65535, got 0");
        }
        for (i, server) in self.name_servers.iter().enumerate() {
            if server.port() == 0 || server.ip().is_unspecified() {
                errors.push(
                    format!("name_servers[{i}]"),
                    format!("must be a reachable ip:port (port 1 to 65535), got {server}"),
                );
            }
        }
        let mut range = |name: &str, v: Duration, lo: Duration, hi: Duration| {
            if v < lo || v > hi {
                errors.push(
                    name,
                    format!("must be between {lo:?} and {hi:?}, got {v:?}"),
                );
            }
        };
        range(
            "min_ttl",
            self.min_ttl,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        );
        range(
            "max_ttl",
            self.max_ttl,
            self.min_ttl,
            Duration::from_secs(86_400),
        );
        range(
            "timeout",
            self.timeout,
            Duration::from_millis(10),
            Duration::from_secs(60),
        );
        if !(1..=10).contains(&self.attempts) {
            errors.push(
                "attempts",
                format!("must be between 1 and 10, got {}", self.attempts),
            );
        }
        errors.merge_nested("backoff", self.backoff.validate());
        errors.into_result()
    }

    /// How long to trust an answer with this TTL: clamped to
    /// `[min_ttl, max_ttl]`; `min_ttl` when the answer had no record.
    pub fn refresh_after(&self, ttl: Option<Duration>) -> Duration {
        ttl.unwrap_or(self.min_ttl)
            .clamp(self.min_ttl, self.max_ttl.max(self.min_ttl))
    }
}

/// Checks a DNS name: 1 to 253 bytes, labels of 1 to 63 letters, digits, `-`
/// and `_` (SRV names start with `_service._proto`), an optional final `.`; an
/// IP address is not a name.
fn check_dns_name(name: &str) -> Result<(), InvalidName> {
    let bad = |reason| {
        Err(InvalidName {
            what: "DNS name",
            value: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name == "." {
        return bad("is empty");
    }
    if name.len() > 253 {
        return bad("is longer than 253 bytes");
    }
    if name.parse::<IpAddr>().is_ok() {
        return bad("is an IP address; use a StaticSource for fixed addresses");
    }
    for label in name.strip_suffix('.').unwrap_or(name).split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("has a label that is empty or longer than 63 bytes");
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

// ===== DnsSource =====

/// Live discovery from DNS records, re-resolved at their TTL, fail static. See
/// the [module docs](self).
#[derive(Debug)]
pub struct DnsSource(());

impl DnsSource {
    /// Validates `config`, builds its resolver and starts resolving on the
    /// current tokio runtime (call it from within one). The source stops when
    /// every [`Discovery`] handle and receiver taken from it is dropped.
    ///
    /// Fails on bad config, and when `name_servers` is empty and the system's
    /// resolver configuration cannot be read.
    pub fn spawn(config: DnsConfig) -> Result<Discovery, InvalidConfig> {
        config.validate()?;
        let resolver = build_resolver(&config)?;
        let (publisher, discovery) =
            Publisher::new(format!("dns:{}", config.name), EndpointSet::empty());
        tokio::spawn(run(resolver, config, publisher));
        Ok(discovery)
    }
}

fn build_resolver(config: &DnsConfig) -> Result<TokioResolver, InvalidConfig> {
    let mut builder = if config.name_servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| {
            InvalidConfig::field(
                "name_servers",
                format!("is empty and the system DNS configuration cannot be read ({e}); list the name servers"),
            )
        })?
    } else {
        let servers = config
            .name_servers
            .iter()
            .map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.timeout = config.timeout;
    options.attempts = config.attempts;
    // This source caches the answer itself, until its TTL runs out.
    options.cache_size = 0;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder
        .build()
        .map_err(|e| InvalidConfig::field("name_servers", format!("resolver not built: {e}")))
}

/// One good answer: the endpoints and the smallest TTL among their records
/// (`None` for an answer without records).
#[derive(Debug)]
struct Answer {
    endpoints: Vec<Endpoint>,
    ttl: Option<Duration>,
    skipped: usize,
}

async fn resolve(resolver: &TokioResolver, config: &DnsConfig) -> Result<Answer, DiscoveryError> {
    let name = config.name.as_str();
    let lookup = match config.kind {
        DnsKind::Ip { .. } => resolver
            .lookup_ip(name)
            .await
            .map(|l| l.as_lookup().clone()),
        DnsKind::Srv => resolver.srv_lookup(name).await,
    };
    let lookup = match lookup {
        Ok(lookup) => lookup,
        // The name exists but has no record of this type: an empty answer.
        Err(e) if e.is_no_records_found() && !e.is_nx_domain() => {
            return Ok(Answer {
                endpoints: Vec::new(),
                ttl: None,
                skipped: 0,
            });
        }
        Err(e) => return Err(lookup_error(name, e)),
    };
    Ok(match config.kind {
        DnsKind::Ip { port } => ip_endpoints(lookup.answers(), port),
        DnsKind::Srv => srv_endpoints(lookup.answers()),
    })
}

fn lookup_error(name: &str, e: NetError) -> DiscoveryError {
    let kind = if e.is_nx_domain() {
        ErrorKind::NotFound
    } else {
        match e {
            NetError::Timeout => ErrorKind::Timeout,
            NetError::Io(_) | NetError::NoConnections => ErrorKind::Connect,
            _ => ErrorKind::Resolve,
        }
    };
    DiscoveryError::new(kind, format!("DNS lookup of {name:?} failed")).with_source(e)
}

fn min_ttl<'a>(records: impl Iterator<Item = &'a Record>) -> Option<Duration> {
    records.map(|r| Duration::from_secs(u64::from(r.ttl))).min()
}

fn ip_endpoints(records: &[Record], port: u16) -> Answer {
    let used = || {
        records
            .iter()
            .filter(|r| matches!(r.data, RData::A(_) | RData::AAAA(_)))
    };
    let endpoints = used()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .map(|ip| Endpoint::from_address(Address::Socket(SocketAddr::new(ip, port))))
        .collect();
    Answer {
        endpoints,
        ttl: min_ttl(used()),
        skipped: 0,
    }
}

fn srv_endpoints(records: &[Record]) -> Answer {
    let mut skipped = 0;
    // (priority, endpoint, record) for every usable record.
    let usable: Vec<(u16, Endpoint, &Record)> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((r, srv)),
            _ => None,
        })
        .filter_map(|(r, srv)| {
            let target = srv.target.to_ascii();
            let target = target.strip_suffix('.').unwrap_or(&target);
            // "." means "no service at this name" (RFC 2782); port 0 is no port.
            match (srv.port, Address::host(target, srv.port)) {
                (1.., Ok(address)) if !target.is_empty() => {
                    let weight = u32::from(srv.weight).max(1);
                    Some((
                        srv.priority,
                        Endpoint::from_address(address).with_weight(weight),
                        r,
                    ))
                }
                _ => {
                    skipped += 1;
                    None
                }
            }
        })
        .collect();
    let Some(best) = usable.iter().map(|(p, _, _)| *p).min() else {
        return Answer {
            endpoints: Vec::new(),
            ttl: None,
            skipped,
        };
    };
    let ttl = min_ttl(usable.iter().map(|(_, _, r)| *r));
    let endpoints = usable
        .into_iter()
        .filter(|(p, _, _)| *p == best)
        .map(|(_, e, _)| e)
        .collect();
    Answer {
        endpoints,
        ttl,
        skipped,
    }
}

async fn run(resolver: TokioResolver, config: DnsConfig, publisher: Publisher) {
    let mut backoff = config.backoff.session();
    tracing::debug!(source = %publisher.name(), "dns source started");
    loop {
        let answer = tokio::select! {
            () = publisher.closed() => break,
            a = resolve(&resolver, &config) => a,
        };
        let delay = match answer {
            Ok(answer) => {
                backoff.reset();
                if answer.skipped > 0 {
                    tracing::warn!(source = %publisher.name(), skipped = answer.skipped, "skipped SRV records with an unusable target or port");
                }
                if answer.endpoints.is_empty()
                    && config.empty == EmptyPolicy::KeepLast
                    && !publisher.current().is_empty()
                {
                    tracing::warn!(source = %publisher.name(), kept = publisher.current().len(), "no record; keeping the last known endpoints");
                    publisher.record_empty_ignored();
                } else {
                    publisher.publish(answer.endpoints);
                }
                publisher.record_success();
                let delay = config.refresh_after(answer.ttl);
                tracing::trace!(source = %publisher.name(), ttl = ?answer.ttl, refresh_in = ?delay, "dns answer");
                delay
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::debug!(source = %publisher.name(), retry_in = ?delay, "dns source backing off");
                publisher.record_failure(e);
                delay
            }
        };
        tokio::select! {
            () = publisher.closed() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    tracing::debug!(source = %publisher.name(), "dns source stopped: nobody listens");
}

#[cfg(test)]
mod tests {
    use hickory_resolver::proto::rr::Name;
    use hickory_resolver::proto::rr::rdata::{A, SRV};

    use super::*;

    fn srv(priority: u16, weight: u16, port: u16, target: &str, ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_ascii("_http._tcp.x.test.").unwrap(),
            ttl,
            RData::SRV(SRV::new(
                priority,
                weight,
                port,
                Name::from_ascii(target).unwrap(),
            )),
        )
    }

    #[test]
    fn srv_keeps_the_lowest_priority_group_with_weights() {
        let records = [
            srv(20, 5, 80, "standby.x.test.", 1),
            srv(10, 3, 80, "b.x.test.", 30),
            srv(10, 0, 81, "A.x.test.", 60),
            srv(5, 1, 0, "noport.x.test.", 1),
            srv(1, 1, 80, ".", 1),
        ];
        let a = srv_endpoints(&records);
        let got: Vec<_> = a
            .endpoints
            .iter()
            .map(|e| (e.key().as_str().to_owned(), e.weight()))
            .collect();
        assert_eq!(got, [("b.x.test:80".into(), 3), ("a.x.test:81".into(), 1)]);
        assert_eq!(a.skipped, 2);
        // The TTL is the smallest among usable records, standby ones included:
        // a standby that changes may become the active group.
        assert_eq!(a.ttl, Some(Duration::from_secs(1)));
        assert!(srv_endpoints(&[]).endpoints.is_empty());
    }

    #[test]
    fn ip_answers_keep_addresses_and_the_smallest_ttl() {
        let name = Name::from_ascii("x.test.").unwrap();
        let records = [
            Record::from_rdata(name.clone(), 30, RData::A(A::new(10, 0, 0, 2))),
            Record::from_rdata(name, 7, RData::A(A::new(10, 0, 0, 1))),
        ];
        let a = ip_endpoints(&records, 8080);
        let keys: Vec<_> = a.endpoints.iter().map(|e| e.key().to_string()).collect();
        assert_eq!(keys, ["10.0.0.2:8080", "10.0.0.1:8080"]);
        assert_eq!(a.ttl, Some(Duration::from_secs(7)));
    }

    #[test]
    fn the_ttl_is_clamped() {
        let mut c = DnsConfig::ip("x.test", 80);
        c.min_ttl = Duration::from_secs(5);
        c.max_ttl = Duration::from_secs(60);
        assert_eq!(
            c.refresh_after(Some(Duration::ZERO)),
            Duration::from_secs(5)
        );
        assert_eq!(
            c.refresh_after(Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            c.refresh_after(Some(Duration::from_secs(86_400))),
            Duration::from_secs(60)
        );
        assert_eq!(c.refresh_after(None), Duration::from_secs(5));
    }

    #[test]
    fn names_are_checked() {
        for good in [
            "users.internal",
            "_grpc._tcp.billing.internal.",
            "localhost",
        ] {
            check_dns_name(good).unwrap();
        }
        for bad in ["", ".", "a..b", "-a.b", "a b", "10.0.0.1", "::1", "é.test"] {
            let e = check_dns_name(bad).unwrap_err();
            assert_eq!(e.value(), bad);
        }
        assert!(check_dns_name(&format!("{}.test", "a".repeat(64))).is_err());
    }

    #[test]
    fn validate_names_every_bad_field() {
        let mut c = DnsConfig::ip("bad name", 0);
        c.name_servers = vec!["127.0.0.1:0".parse().unwrap()];
        c.min_ttl = Duration::ZERO;
        c.max_ttl = Duration::from_secs(100_000);
        c.timeout = Duration::ZERO;
        c.attempts = 0;
        c.backoff.base = Duration::ZERO;
        let e = c.validate().unwrap_err();
        let paths: Vec<_> = e.errors().iter().map(|f| f.path().to_owned()).collect();
        assert_eq!(
            paths,
            [
                "name",
                "kind.port",
                "name_servers[0]",
                "min_ttl",
                "max_ttl",
                "timeout",
                "attempts",
                "backoff.base"
            ],
            "{e}"
        );
        let mut c = DnsConfig::srv("_http._tcp.x.test");
        c.validate().unwrap();
        c.max_ttl = Duration::from_secs(1);
        assert_eq!(c.validate().unwrap_err().errors()[0].path(), "max_ttl");
    }

    #[cfg(feature = "serde")]
    #[test]
    fn config_from_json() {
        let c: DnsConfig = serde_json::from_str(
            r#"{"name":"users.internal","kind":{"type":"ip","port":8080},"min_ttl":"1s","name_servers":["127.0.0.1:5353"]}"#,
        )
        .unwrap();
        assert_eq!(c.kind, DnsKind::Ip { port: 8080 });
        assert_eq!(c.min_ttl, Duration::from_secs(1));
        assert_eq!(c.max_ttl, Duration::from_secs(300));
        c.validate().unwrap();
        let c: DnsConfig =
            serde_json::from_str(r#"{"name":"_h._tcp.x","kind":{"type":"srv"}}"#).unwrap();
        assert_eq!(c, DnsConfig::srv("_h._tcp.x"));
        assert!(serde_json::from_str::<DnsConfig>(r#"{"name":"x","kind":{"type":"mx"}}"#).is_err());
    }
}
