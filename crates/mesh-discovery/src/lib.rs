//! Live, fail-static endpoint discovery for mesh.
//!
//! A client-side service mesh needs to know, at every moment, which instances
//! of a service exist and are healthy. This crate provides the *sources* of
//! that knowledge, all with one output shape ([`Discovery`]: versioned
//! [`EndpointSet`] snapshots plus a health handle, and a
//! [`tower::discover::Discover`] adapter):
//!
//! - [`consul`]: registration with the local agent (TTL heartbeats,
//!   deregistration on shutdown) and a live watch of
//!   `/v1/health/service/:name` through blocking queries;
//! - [`StaticSource`]: a fixed list from code or config;
//! - [`dns`] (feature `dns`, on by default): A/AAAA or SRV records,
//!   re-resolved when their TTL runs out ([`DnsSource`]);
//! - [`ChannelSource`]: endpoints the program learns its own way.
//!
//! With the `connect` feature, `connect` speaks Consul Connect natively:
//! this service's certificate and trust roots from the agent (rotating
//! mesh-auth's mTLS configs in place), intentions as authorization, and
//! Connect-capable discovery (`/v1/health/connect/:name`).
//!
//! # Why blocking queries
//!
//! Polling trades freshness for load: poll every 10 s and a dead instance
//! keeps getting traffic for up to 10 s, poll every 100 ms and a thousand
//! clients make ten thousand requests a second to Consul for answers that
//! almost never change. A Consul *blocking query* sends the last seen
//! `X-Consul-Index` and Consul holds the request until the answer changes (or
//! `wait` runs out): changes arrive within one round trip, and an idle watch
//! costs one request per `wait` (5 minutes by default) and no CPU in between.
//!
//! Blocking queries have rules that the existing Rust clients get wrong, and
//! this crate follows: an index that goes backwards (a snapshot restore) resets
//! to 0; an index of 0 is never sent as a blocking index (it does not block);
//! a wake-up does not promise a change, so results are compared by content; the
//! loop is rate-limited by a token bucket so churn cannot make it spin; and the
//! HTTP timeout exceeds `wait + wait/16` (Consul's jitter) plus a margin.
//!
//! # Why fail static
//!
//! Discovery is a dependency of every request, so its failures must not become
//! request failures. When Consul (or DNS) is unreachable, answers 500 "No
//! cluster leader", hangs, or returns garbage, the instances that were healthy
//! a moment ago almost certainly still are. So a source *keeps its last known
//! endpoints*, records the error in its [`SourceHealth`] (and in `tracing` and
//! metrics), and retries with capped, jittered backoff from index 0. Errors
//! never go into the snapshot channel: a balancer only ever sees endpoint
//! sets. An answer with *no* healthy instance is treated the same way by
//! default ([`EmptyPolicy::KeepLast`]), because an empty healthy set is more
//! often a health-checking failure than a real scale-to-zero.
//!
//! # Example
//!
//! A watch against the in-process fake Consul from `mesh-testkit`:
//!
//! ```
//! use std::time::Duration;
//! use mesh_discovery::EmptyPolicy;
//! use mesh_discovery::consul::{ConsulClient, ConsulConfig, ConsulDiscovery, WatchConfig};
//! use mesh_testkit::consul::{FakeConsul, Instance};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let consul = FakeConsul::start().await?;
//! consul.add_instance(Instance::new("users", "users-1", "127.0.0.1", 8080));
//!
//! let client = ConsulClient::new(&ConsulConfig::new(consul.url()))?;
//! let mut config = WatchConfig::new("users");
//! config.wait = Duration::from_secs(2);
//! config.empty = EmptyPolicy::Publish; // the default, KeepLast, would keep users-1
//! let users = ConsulDiscovery::spawn(client, config)?;
//!
//! let set = users.wait_for(|s| s.len() == 1).await.unwrap();
//! assert_eq!(set.endpoints()[0].address().to_string(), "127.0.0.1:8080");
//!
//! consul.remove_instance("users-1");
//! users.wait_for(|s| s.is_empty()).await;
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `serde`: `Serialize`/`Deserialize` for the config types, durations in
//!   humantime form (`"250ms"`, `"5m"`).
//! - `consul` (default, through `consul-tls`): the [`consul`] module, a
//!   Consul client on reqwest (plain HTTP to the agent).
//! - `consul-tls` (default): HTTPS to the Consul agent (`CONSUL_HTTP_SSL`,
//!   CA and client certificates) with rustls and ring.
//! - `connect` (implies `consul`): Consul Connect, with mesh-auth.
//! - `dns` (default): the DNS source, on hickory-resolver.
//! - `reqwest` (implied by `consul`): the router rewrites `reqwest::Request`s
//!   too, so it can route a `reqwest::Client`.
//!
//! With `default-features = false` this crate compiles no HTTP client, TLS
//! or DNS resolver: the static and channel sources, the `tower::discover`
//! adapters and the router over any client remain.
//! - `metrics`: counters and gauges through the `metrics` facade:
//!   `mesh_discovery_endpoints{source}`, `mesh_discovery_updates_total{source}`,
//!   `mesh_discovery_errors_total{source}`.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod channel;
#[cfg(feature = "connect")]
#[cfg_attr(docsrs, doc(cfg(feature = "connect")))]
pub mod connect;
#[cfg(feature = "consul")]
#[cfg_attr(docsrs, doc(cfg(feature = "consul")))]
pub mod consul;
pub mod discover;
#[cfg(feature = "dns")]
#[cfg_attr(docsrs, doc(cfg(feature = "dns")))]
pub mod dns;
pub mod error;
pub mod router;
pub mod source;
pub mod static_source;

pub use channel::ChannelSource;
#[cfg(feature = "consul")]
pub use consul::ConsulDiscovery;
pub use discover::Changes;
#[cfg(feature = "dns")]
pub use dns::{DnsConfig, DnsKind, DnsSource};
pub use error::{DiscoveryError, ErrorKind, InvalidName};
pub use source::{Discovery, EmptyPolicy, EndpointSet, Publisher, SetChange, SourceHealth};
pub use static_source::{StaticConfig, StaticSource};
