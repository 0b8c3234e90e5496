//! Authentication and authorization for mesh: who is calling, and may they?
//!
//! A service mesh moves trust off the network. Inside one, any service can
//! reach any other, so "the request came from inside" proves nothing: each
//! call should carry proof of who made it, and each service should decide
//! whether that caller may do what it asks. A sidecar proxy does this with
//! mTLS and policies; `mesh-auth` does it inside the process, as tower layers
//! for both ends of a call.
//!
//! - [`tls`]: mutual TLS with rustls. Servers require client certificates
//!   from a CA they trust and learn the caller's SPIFFE-style identity
//!   (`spiffe://trust-domain/...`); clients present theirs and check that the
//!   server is the service they meant to reach. Certificates reload when their
//!   files change, so they rotate without a restart. Plugs into axum, hyper,
//!   hyper-util's client, reqwest and tonic.
//! - [`apikey`]: API keys for callers without certificates. The client
//!   reads the key from the environment or a file and never logs it; the server
//!   keeps only SHA-256 hashes, compares in constant time, and accepts several
//!   keys at once for rotation.
//! - [`authz`]: allow or deny by caller identity, method and path, deny by
//!   default, configured with serde.
//!
//! Both ways of proving identity end in the same place: a [`CallerIdentity`]
//! in the request extensions, which [`authz::AuthorizeLayer`] and your
//! handlers read. Secrets never reach `Debug`, logs or metrics.
//!
//! # Example
//!
//! A server that accepts API keys and lets only `billing` post invoices:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use mesh_auth::apikey::{ApiKeyAuthLayer, ApiKeyHeader, ApiKeyLayer, ApiKeySet};
//! use mesh_auth::authz::{AuthorizationPolicy, AuthorizeLayer, Rule};
//! use mesh_auth::{CallerIdentity, SecretSource};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! // Server: key check, then authorization, then the handler.
//! let keys = ApiKeySet::new().with_key("billing", &"sk-billing-0123456789".into());
//! let policy = AuthorizationPolicy::deny_by_default(vec![
//!     Rule::allow("apikey:billing").methods(["POST"]).paths(["/invoices"]),
//! ])
//! .compile()
//! .unwrap();
//! let server = ServiceBuilder::new()
//!     .layer(ApiKeyAuthLayer::new(ApiKeyHeader::default(), keys))
//!     .layer(AuthorizeLayer::new(policy))
//!     .service(service_fn(|req: http::Request<()>| async move {
//!         let caller = req.extensions().get::<CallerIdentity>().unwrap();
//!         Ok::<_, std::convert::Infallible>(http::Response::new(format!("hello {caller}")))
//!     }));
//!
//! // Client: attach the key from wherever it lives.
//! let mut client = ServiceBuilder::new()
//!     .layer(ApiKeyLayer::from_source(
//!         ApiKeyHeader::default(),
//!         &SecretSource::Value("sk-billing-0123456789".into()),
//!     ).unwrap())
//!     .service(server);
//!
//! let res = client.ready().await.unwrap()
//!     .call(http::Request::post("/invoices").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.body(), "hello billing");
//! let res = client.ready().await.unwrap()
//!     .call(http::Request::delete("/invoices/1").body(()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), 403);
//! # }
//! ```
//!
//! # Features
//!
//! - `serde`: `Deserialize`/`Serialize` for the config types
//!   ([`tls::ServerTlsConfig`], [`tls::ClientTlsConfig`],
//!   [`apikey::ApiKeyAuthConfig`], [`authz::AuthorizationPolicy`],
//!   [`SecretSource`]), durations in humantime form.
//! - `hyper`: `tls::serve`, the mTLS accept loop for axum and hyper
//!   services, and `MtlsClientConfig::https_connector` for hyper-util's client
//!   and tonic's `Endpoint::connect_with_connector`.
//! - `reqwest`: `MtlsClientConfig::reqwest_builder`.
//! - `tonic`: `MtlsAcceptor::incoming`, a stream of mTLS connections for
//!   tonic's `Server::serve_with_incoming`.
//! - `metrics`: counters `mesh_auth_tls_rejected_total{side,kind}`,
//!   `mesh_auth_api_key_rejected_total{reason}` and
//!   `mesh_auth_authorization_total{decision}`.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod apikey;
pub mod authz;
mod error;
pub mod future;
mod identity;
mod secret;
pub mod tls;

pub use error::{TlsError, TlsErrorKind, WrongIdentity};
pub use identity::{CallerIdentity, IdentityKind, parse_spiffe_id};
pub use secret::{Secret, SecretError, SecretSource};
