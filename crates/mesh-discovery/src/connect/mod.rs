//! Consul Connect, natively: this service's identity, trust roots and
//! intentions from the Consul agent, with no sidecar.
//!
//! Consul's built-in CA gives every service a short-lived SPIFFE
//! certificate (`spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>`),
//! rotates it, and rotates its own roots (cross-signing the new root with
//! the old so both generations verify during the change); intentions say
//! which service may call which. Go programs take part through the
//! `connect` package; this module is the same "Connect-native" integration
//! for tower services, built from mesh's own pieces:
//!
//! - [`ConnectIdentity`]: the leaf (`/v1/agent/connect/ca/leaf/:service`),
//!   the roots (`/v1/agent/connect/ca/roots`) and this service's intentions
//!   (`/v1/connect/intentions/match?by=destination`), each followed by a
//!   rate-limited blocking query, fail static on errors. Its
//!   [`server_tls`](ConnectIdentity::server_tls) and
//!   [`client_tls`](ConnectIdentity::client_tls) are mesh-auth mTLS configs
//!   whose certificate and roots rotate in place (at the next handshake;
//!   open connections keep their session).
//! - [`IntentionsLayer`]: authorizes each caller's SPIFFE identity against
//!   the intentions (L4, and L7 path/method/header permissions), with the
//!   decision and the intention that made it in the audit event.
//! - Discovery of Connect-capable endpoints (native instances and sidecar
//!   proxies): [`HealthQuery::connect`](crate::consul::HealthQuery::connect)
//!   in a [`WatchConfig`](crate::consul::WatchConfig), and
//!   [`ConnectIdentity::client_tls`] for the identity those endpoints
//!   must prove (the service's SPIFFE ID in the trust domain of the roots
//!   and the datacenter the query asks).
//!
//! # What a handshake checks
//!
//! A server built here refuses a client whose certificate does not chain to
//! the Connect roots of its own trust domain (another cluster's
//! certificate fails the handshake); the [`IntentionsLayer`] then refuses
//! callers that are not service identities of this trust domain, and those
//! the intentions deny. A client built here refuses a server that does not
//! prove the expected service identity, whatever address it answers on.
//!
//! # Limits
//!
//! - L7 `PathRegex` and header `Regex` conditions are not evaluated (no
//!   RE2 in mesh): a `deny` permission with one is taken to match, an
//!   `allow` one not to (fail closed), with a warning.
//! - The trust bundle of a server config is keyed by the trust domain at
//!   the time it is built; a cluster whose trust domain changes (a
//!   migration between Consul clusters) needs the server config rebuilt.
//! - The default for a caller no intention matches is configured
//!   ([`ConnectConfig::default`]); Consul's is its ACL default policy.
//!
//! # Example
//!
//! ```no_run
//! use mesh_discovery::connect::{ConnectConfig, ConnectIdentity, IntentionsLayer};
//! use mesh_discovery::consul::{ConsulClient, ConsulDiscovery, HealthQuery, WatchConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = ConsulClient::from_env()?;
//! let identity = ConnectIdentity::start(client.clone(), ConnectConfig::new("orders")).await?;
//! // Serving: mTLS with the agent's certificate, intentions as authorization.
//! let server_tls = identity.server_tls()?;
//! let authorize = IntentionsLayer::new(&identity);
//! // Calling `users`: its Connect endpoints, and the identity they must prove.
//! let users = ConsulDiscovery::spawn(
//!     client,
//!     WatchConfig { query: HealthQuery::connect("users"), ..WatchConfig::default() },
//! )?;
//! let users_tls = identity.client_tls("users")?;
//! # let _ = (server_tls, authorize, users, users_tls);
//! # Ok(()) }
//! ```

mod identity;
mod intentions;
mod model;
mod spiffe;

pub use identity::{ConnectConfig, ConnectIdentity, ConnectStatus};
pub use intentions::{AuthorizeIntentions, IntentionVerdict, IntentionsLayer, decide};
pub use model::{
    CaRoot, CaRoots, Intention, IntentionHeader, IntentionHttp, IntentionPermission, LeafCert,
};
pub use spiffe::ServiceId;
