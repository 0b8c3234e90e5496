//! The server side: verify the presented key, record who called.

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::StatusCode;
use http::header::WWW_AUTHENTICATE;
use tower_layer::Layer;
use tower_service::Service;

use super::header::ApiKeyHeader;
use super::keyset::ApiKeySet;
use crate::future::ResponseFuture;
use crate::identity::{CallerIdentity, IdentityKind};

/// Rejects requests without a valid API key with `401 Unauthorized`, and puts
/// the key's [`CallerIdentity`] into the extensions of
/// the others.
///
/// gRPC calls get `grpc-status` 16 (`UNAUTHENTICATED`) instead.
///
/// The 401 has an empty body and says nothing about *why* (missing, unknown,
/// revoked, sent twice): that would only help someone guessing. A request
/// carrying the key header more than once is refused. Once the key is
/// accepted its header is removed from the request, so the handler (and
/// whatever it logs or forwards) never sees it. The key set can be
/// replaced at run time with [`replace_keys`](Self::replace_keys), for every
/// service built from this layer at once.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use mesh_auth::CallerIdentity;
/// use mesh_auth::apikey::{ApiKeyAuthLayer, ApiKeyHeader, ApiKeySet};
/// use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
///
/// let keys = ApiKeySet::new().with_key("billing", &"sk-0123456789abcdef".into());
/// let mut svc = ServiceBuilder::new()
///     .layer(ApiKeyAuthLayer::new(ApiKeyHeader::default(), keys))
///     .service(service_fn(|req: http::Request<()>| async move {
///         let who = req.extensions().get::<CallerIdentity>().unwrap().to_string();
///         Ok::<_, std::convert::Infallible>(http::Response::new(who))
///     }));
///
/// let req = http::Request::builder().header("x-api-key", "sk-0123456789abcdef").body(()).unwrap();
/// let res = svc.ready().await.unwrap().call(req).await.unwrap();
/// assert_eq!(res.body(), "billing");
///
/// let res = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 401);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ApiKeyAuthLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    header: ApiKeyHeader,
    keys: ArcSwap<ApiKeySet>,
    /// Let requests through that already carry a certificate's identity.
    accept_mtls: bool,
}

impl ApiKeyAuthLayer {
    /// Accepts the keys in `keys`, presented in `header`.
    pub fn new(header: ApiKeyHeader, keys: ApiKeySet) -> Self {
        Self {
            shared: Arc::new(Shared {
                header,
                keys: ArcSwap::from_pointee(keys),
                accept_mtls: false,
            }),
        }
    }

    /// Lets requests through without a key when they already carry the
    /// [`CallerIdentity`] of an mTLS client certificate (put there by
    /// `tls::serve` or tonic's `incoming`), for servers that accept either.
    /// A key header on such a request is removed, never checked: the
    /// certificate is the identity.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use mesh_auth::CallerIdentity;
    /// use mesh_auth::apikey::{ApiKeyAuthLayer, ApiKeyHeader, ApiKeySet};
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    ///
    /// let svc = ServiceBuilder::new()
    ///     .layer(ApiKeyAuthLayer::new(ApiKeyHeader::default(), ApiKeySet::new()).accept_mtls_callers())
    ///     .service(service_fn(|req: http::Request<()>| async move {
    ///         let who = req.extensions().get::<CallerIdentity>().unwrap().to_string();
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(who))
    ///     }));
    /// let mut req = http::Request::new(());
    /// req.extensions_mut().insert(CallerIdentity::spiffe("spiffe://example.org/orders"));
    /// assert_eq!(svc.clone().oneshot(req).await.unwrap().body(), "spiffe://example.org/orders");
    /// assert_eq!(svc.oneshot(http::Request::new(())).await.unwrap().status(), 401);
    /// # }
    /// ```
    #[must_use]
    pub fn accept_mtls_callers(self) -> Self {
        Self {
            shared: Arc::new(Shared {
                header: self.shared.header.clone(),
                keys: ArcSwap::new(self.shared.keys.load_full()),
                accept_mtls: true,
            }),
        }
    }

    /// Swaps in a new key set (a rotation); requests in flight finish with the old one.
    pub fn replace_keys(&self, keys: ApiKeySet) {
        let count = keys.len();
        self.shared.keys.store(Arc::new(keys));
        tracing::info!(keys = count, "API key set replaced");
    }
}

impl<S> Layer<S> for ApiKeyAuthLayer {
    type Service = ApiKeyAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyAuth {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`ApiKeyAuthLayer`].
#[derive(Clone, Debug)]
pub struct ApiKeyAuth<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> ApiKeyAuth<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ApiKeyAuth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        if self.shared.accept_mtls
            && req
                .extensions()
                .get::<CallerIdentity>()
                .is_some_and(|id| id.kind() != IdentityKind::ApiKey)
        {
            req.headers_mut().remove(self.shared.header.name());
            return ResponseFuture::inner(self.inner.call(req));
        }
        let identity = self.shared.header.extract(req.headers()).and_then(|key| {
            self.shared
                .keys
                .load()
                .verify(key)
                .cloned()
                .ok_or("unknown")
        });
        match identity {
            Ok(identity) => {
                tracing::trace!(identity = %identity, "API key accepted");
                // The handler needs the caller, not the key: drop it, so it
                // cannot be logged, echoed or forwarded from here on.
                req.headers_mut().remove(self.shared.header.name());
                req.extensions_mut().insert(identity);
                ResponseFuture::inner(self.inner.call(req))
            }
            Err(reason) => {
                // The reason is one of three fixed words; never the key.
                tracing::debug!(reason, "API key rejected");
                #[cfg(feature = "metrics")]
                metrics::counter!("mesh_auth_api_key_rejected_total", "reason" => reason)
                    .increment(1);
                let challenge = match self.shared.header {
                    ApiKeyHeader::Bearer => "Bearer",
                    ApiKeyHeader::Header(_) => "ApiKey",
                };
                ResponseFuture::reject(
                    req.headers(),
                    StatusCode::UNAUTHORIZED,
                    "16",
                    &[(WWW_AUTHENTICATE, challenge)],
                )
            }
        }
    }
}
