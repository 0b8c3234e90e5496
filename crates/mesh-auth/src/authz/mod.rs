//! Authorization: which caller may call what.
//!
//! Authentication says who is calling; it does not say they may. Every
//! service that is reachable from the rest of the mesh should refuse callers
//! it does not expect, so a compromised neighbour cannot walk the whole graph.
//! [`AuthorizeLayer`] reads the [`CallerIdentity`](crate::CallerIdentity) that
//! mTLS or an API key put into the request, and checks it against an
//! [`AuthorizationPolicy`]: allow rules by identity *and its kind*
//! (`spiffe://...`, `dns:<name>`, `apikey:<name>`), optionally narrowed to
//! methods and path prefixes, and a default that is `deny` unless said
//! otherwise. Paths with dot segments or encoded slashes are denied before
//! any rule is matched. A denied call gets `403` (gRPC calls: `grpc-status`
//! 7, `PERMISSION_DENIED`).
//!
//! Every decision is an audit event on the `mesh_auth::audit` tracing
//! target: `decision`, `reason`, `rule` (its index), `identity`, `kind`,
//! `trust_domain`, `cert_sha256`, `method` and `path` (never the query
//! string, a header or a secret). Denials are INFO, allows DEBUG.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use mesh_auth::CallerIdentity;
//! use mesh_auth::authz::{AuthorizationPolicy, AuthorizeLayer, Rule};
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//!
//! let policy = AuthorizationPolicy::deny_by_default(vec![
//!     Rule::allow("spiffe://example.org/orders").methods(["GET"]).paths(["/users"]),
//! ])
//! .compile()
//! .expect("valid policy");
//! let mut svc = ServiceBuilder::new()
//!     .layer(AuthorizeLayer::new(policy))
//!     .service(service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
//!     }));
//!
//! let mut req = http::Request::get("/users/7").body(()).unwrap();
//! req.extensions_mut().insert(CallerIdentity::spiffe("spiffe://example.org/orders"));
//! assert_eq!(svc.ready().await.unwrap().call(req).await.unwrap().status(), 200);
//!
//! let req = http::Request::delete("/users/7").body(()).unwrap(); // no identity
//! assert_eq!(svc.ready().await.unwrap().call(req).await.unwrap().status(), 403);
//! # }
//! ```

mod layer;
mod policy;
mod service;

pub use layer::AuthorizeLayer;
pub use policy::{AuthorizationPolicy, CompiledPolicy, Decision, Rule, Verdict};
pub use service::Authorize;
