//! [`MeshMiddleware`]: the mesh as a `reqwest_middleware::Middleware`, so a
//! `ClientWithMiddleware` keeps reqwest's builder API
//! (`client.get(url).send().await?.error_for_status()?.json().await?`) with
//! discovery, breakers and retry underneath.
//!
//! # How a request goes through
//!
//! A request whose URL host names a service of the mesh config
//! (`http://users/profile/7`) is converted into an `http::Request<Bytes>`,
//! sent through that service's ready-made stack over a `reqwest::Client`
//! ([`ReqwestService`]), and its response converted back into a
//! `reqwest::Response` whose `url()` is the URL you asked for. Any other host
//! goes on to the next middleware untouched.
//!
//! The mesh answers requests for its services itself: add it **last**, after
//! the middleware that should run once per logical call (tracing, auth
//! headers); middleware after it would not see mesh services' requests. Do not
//! combine it with `reqwest-retry`: the mesh already retries, within its
//! budget, on another endpoint.
//!
//! Bodies must be in memory (`.body(bytes)`, `.json(..)`, `.form(..)`) so that
//! a retry can send them again; a streaming body fails with
//! [`StreamingBodyUnsupported`]. A per-request `.timeout(..)` bounds the whole
//! call, retries included. Errors from reqwest itself stay
//! `reqwest_middleware::Error::Reqwest`; the mesh's own (`NoReadyEndpoint`,
//! `BudgetExhausted`, `DeadlineExceeded`, ...) are
//! `reqwest_middleware::Error::Middleware`, found with
//! `anyhow::Error::downcast_ref::<MeshCallError>()` and then `source()`.
//!
//! # Example
//!
//! ```no_run
//! use mesh_stack::{Mesh, MeshConfig};
//!
//! # async fn run() -> Result<(), mesh_stack::core::BoxError> {
//! let mesh = Mesh::new(MeshConfig::from_path("mesh.toml")?)?;
//! let reqwest = reqwest::Client::new();
//! let client = reqwest_middleware::ClientBuilder::new(reqwest.clone())
//!     .with(mesh.reqwest_middleware(&reqwest)?)
//!     .build();
//! let profile = client.get("http://users/profile/7").send().await?.error_for_status()?;
//! # let _ = profile;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::Extensions;
use mesh_core::BoxError;
use reqwest_middleware::{Middleware, Next};
use tower::ServiceExt;

use crate::mesh::{Mesh, MeshError, MeshService};
use crate::reqwest::ReqwestService;

/// The mesh as a `reqwest_middleware::Middleware`: requests to a service of
/// the mesh config go through its ready-made stack. From
/// [`Mesh::reqwest_middleware`]. See the [module docs](self).
#[derive(Clone)]
pub struct MeshMiddleware {
    services: Arc<HashMap<String, MeshService<ReqwestService>>>,
}

impl fmt::Debug for MeshMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshMiddleware")
            .field("services", &self.services.keys())
            .finish()
    }
}

impl MeshMiddleware {
    /// A stack over `client` for every service of `mesh`'s config (starting
    /// their discovery sources: a Consul watch needs a tokio runtime).
    pub fn new(mesh: &Mesh, client: &reqwest::Client) -> Result<Self, MeshError> {
        let services = mesh
            .config()
            .services
            .keys()
            .map(|name| {
                let stack = mesh.http_client(name, ReqwestService::new(client.clone()))?;
                Ok((name.clone(), stack))
            })
            .collect::<Result<HashMap<_, _>, MeshError>>()?;
        Ok(Self {
            services: Arc::new(services),
        })
    }

    /// Whether requests to `host` go through the mesh.
    pub fn handles(&self, host: &str) -> bool {
        self.services.contains_key(host)
    }

    async fn send(
        stack: MeshService<ReqwestService>,
        req: reqwest::Request,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let url = req.url().clone();
        let timeout = req.timeout().copied();
        let body = match req.body() {
            None => Bytes::new(),
            Some(body) => match body.as_bytes() {
                Some(bytes) => Bytes::copy_from_slice(bytes),
                None => {
                    return Err(reqwest_middleware::Error::middleware(
                        StreamingBodyUnsupported { url },
                    ));
                }
            },
        };
        let mut http_req = http::Request::new(body);
        *http_req.method_mut() = req.method().clone();
        *http_req.uri_mut() = url
            .as_str()
            .parse()
            .map_err(|e: http::uri::InvalidUri| mesh_error(e.into()))?;
        *http_req.version_mut() = req.version();
        *http_req.headers_mut() = req.headers().clone();
        let call = stack.oneshot(http_req);
        let result = match timeout {
            Some(timeout) => tokio::time::timeout(timeout, call)
                .await
                .unwrap_or_else(|elapsed| Err(elapsed.into())),
            None => call.await,
        };
        let response = result.map_err(|e| match e.downcast::<reqwest::Error>() {
            Ok(e) => reqwest_middleware::Error::Reqwest(*e),
            Err(e) => mesh_error(e),
        })?;
        Ok(with_url(response, url))
    }
}

#[async_trait::async_trait]
impl Middleware for MeshMiddleware {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let stack = req.url().host_str().and_then(|h| self.services.get(h));
        match stack {
            Some(stack) => Self::send(stack.clone(), req).await,
            None => next.run(req, extensions).await,
        }
    }
}

/// The response as a `reqwest::Response` whose `url()` is `url`. The body
/// is wrapped, not read: the stack's time limits and end-of-stream
/// accounting go on while the caller reads it.
fn with_url<B>(response: http::Response<B>, url: reqwest::Url) -> reqwest::Response
where
    B: http_body::Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    use reqwest::ResponseBuilderExt as _;

    let (mut parts, body) = response.into_parts();
    let body = reqwest::Body::wrap(body);
    // reqwest keeps a response's URL in a private extension; its builder sets it.
    if let Ok(marker) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(marker.into_parts().0.extensions);
    }
    reqwest::Response::from(http::Response::from_parts(parts, body))
}

fn mesh_error(error: BoxError) -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(MeshCallError(error))
}

/// A mesh error (not reqwest's own) that failed a call through
/// [`MeshMiddleware`]: `NoReadyEndpoint`, `BudgetExhausted`,
/// `DeadlineExceeded`, a timeout, ... as its [`source`](Error::source).
#[derive(Debug)]
pub struct MeshCallError(BoxError);

impl MeshCallError {
    /// The mesh's error.
    pub fn get_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }

    /// The mesh's error.
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

impl fmt::Display for MeshCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mesh: {}", self.0)
    }
}

impl Error for MeshCallError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

/// A request to a mesh service had a streaming body, which a retry could not
/// send again: give it a body in memory (`.body(bytes)`, `.json(..)`).
#[derive(Debug, thiserror::Error)]
#[error(
    "mesh: the request to {url} has a streaming body, which cannot be retried; send a body in memory"
)]
pub struct StreamingBodyUnsupported {
    url: reqwest::Url,
}

impl StreamingBodyUnsupported {
    /// The request's URL.
    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }
}
