//! Consul: registration with the local agent, and live discovery of healthy
//! instances through blocking queries.
//!
//! - [`ConsulClient`] / [`ConsulConfig`]: a small client on reqwest,
//!   configured in code, from Consul's environment variables, or from a
//!   `[consul]` table read over them.
//! - [`Registration`]: register, make the instance routable before
//!   returning, keep TTL checks alive, maintenance, deregister on shutdown.
//! - [`ConsulDiscovery`] / [`WatchConfig`]: the blocking-query watch, fail
//!   static, publishing [`EndpointSet`](crate::EndpointSet)s.
//! - [`parse_health`] / [`parse_health_update`] / [`parse_health_with`]: the
//!   health-answer parser on its own, over the one serde model
//!   ([`HealthEntry`]).
//!
//! # How Consul behaves, and what this module does about it
//!
//! - **Health.** Without `?passing`, `/v1/health/service/:name` also lists
//!   instances with a critical check, in maintenance
//!   (`_service_maintenance:<id>`, `_node_maintenance`) or on a dead node
//!   (`serfHealth` critical). Like Consul DNS, only passing instances
//!   (weighted `Weights.Passing`) and warning ones (`Weights.Warning`) become
//!   endpoints. `Service.ID` is unique per agent only, so endpoints are keyed
//!   `node/service-id`; an empty `Service.Address` means the node's.
//! - **Checks start critical**: a TTL check until its first report, an
//!   HTTP/TCP/gRPC check until its first run. [`Registration::register`]
//!   reports the first pass (or waits, bounded, for the agent to report the
//!   instance passing) before it returns.
//! - **Blocking queries** (`index` + `wait`): a return promises no change,
//!   an index that goes backwards resets to 0, index 0 never blocks, and the
//!   loop is rate-limited by a token bucket (burst 2, then one query per
//!   15 s by default, as Consul advises) rather than by sleeping each turn.
//!   The HTTP timeout of a blocking query is `wait + wait/16` plus a margin.
//! - **Many watches, one agent.** A [`ConsulClient`] bounds its connections;
//!   past its blocking permits the watches take turns, and a change feed on
//!   `/v1/health/state/critical` and `warning` sends the watches of the
//!   services whose checks changed to the front (see [`ConsulDiscovery`]'s
//!   module docs in `watch`).
//! - **Consistency.** [`Consistency::Stale`] lets any server answer; with
//!   [`WatchConfig::max_staleness`], answers from a server without a leader
//!   or too far behind it (`X-Consul-KnownLeader`, `X-Consul-LastContact`,
//!   which the streaming backend may omit) are asked again of the leader.
//! - **ACLs.** A token goes in `X-Consul-Token`. An unknown token gets 403
//!   ([`ErrorKind::Denied`](crate::ErrorKind::Denied)); reads a token may not
//!   make come back *filtered*, possibly empty, with
//!   `X-Consul-Results-Filtered-By-ACLs: true`: the watch treats an empty
//!   filtered answer as an ACL error and keeps the last known endpoints.
//! - **Queries** use `filter` (`Service.Tags contains "v2"`), not the
//!   deprecated `tag`; [`AddressChoice`] picks a tagged address (`lan`,
//!   `wan`, IPv4 or IPv6) the way Consul DNS translates addresses.
//! - **Errors** never reach the balancer: the watch keeps the last set,
//!   backs off with jitter and restarts from index 0.
//! - **The environment** is read as the Go client reads it; see
//!   [`ConsulConfig`].
//!
//! # Example
//!
//! ```no_run
//! use mesh_discovery::consul::{ConsulClient, ConsulDiscovery, WatchConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = ConsulClient::from_env()?;
//! let users = ConsulDiscovery::spawn(client, WatchConfig::new("users"))?;
//! let set = users.wait_for(|s| !s.is_empty()).await;
//! println!("{set:?}, health: {:?}", users.health());
//! # Ok(())
//! # }
//! ```

mod client;
mod config;
mod feed;
mod health;
mod model;
mod registration;
pub(crate) mod watch;

pub use client::{CheckStatus, Consistency, ConsulClient, HealthAnswer, HealthQuery};
pub use config::{ConsulConfig, ConsulToken, DEFAULT_MAX_CONNECTIONS, HttpAuth};
pub use health::{InvalidJson, parse_health, parse_health_update, parse_health_with};
pub use model::{
    AddressChoice, CheckDefinition, CheckKind, HealthCheck, HealthEntry, HealthNode, HealthService,
    ServiceRegistration, TaggedAddress, Weights,
};
pub use registration::{DEFAULT_ROUTABLE_WITHIN, Registration};
pub use watch::{ConsulDiscovery, EmptyPolicy, WatchConfig};
