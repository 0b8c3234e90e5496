//! Consul: registration with the local agent, and live discovery of healthy
//! instances through blocking queries.
//!
//! - [`ConsulClient`] / [`ConsulConfig`]: a small client on reqwest,
//!   configured in code or from Consul's environment variables.
//! - [`Registration`]: register, keep TTL checks alive, deregister on shutdown.
//! - [`ConsulDiscovery`] / [`WatchConfig`]: the blocking-query watch, fail
//!   static, publishing [`EndpointSet`](crate::EndpointSet)s.
//! - [`parse_health`] / [`parse_health_update`]: the health-response parser
//!   on its own (the second reuses unchanged endpoints of the last snapshot).
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
mod health;
mod json;
mod model;
#[doc(hidden)]
pub mod reader;
mod registration;
mod watch;

pub use client::{CheckStatus, Consistency, ConsulClient, HealthAnswer, HealthQuery};
pub use config::{ConsulConfig, ConsulToken, HttpAuth};
pub use health::{InvalidJson, parse_health, parse_health_update, parse_health_with};
pub use model::{
    AddressChoice, CheckDefinition, CheckKind, HealthCheck, HealthEntry, HealthNode, HealthService,
    ServiceRegistration, TaggedAddress, Weights,
};
pub use registration::{DEFAULT_ROUTABLE_WITHIN, Registration};
pub use watch::{ConsulDiscovery, EmptyPolicy, WatchConfig};
