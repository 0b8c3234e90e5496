//! The client side: attach the key to every request.

use std::task::{Context, Poll};

use http::HeaderValue;
use tower_layer::Layer;
use tower_service::Service;

use super::header::ApiKeyHeader;
use crate::secret::{Secret, SecretError, SecretSource};

/// Adds an API key to every request, in `x-api-key` or as a bearer token.
///
/// The header value is built once and marked sensitive (so hyper's HPACK never
/// indexes it); cloning it per request is a reference-count increment. Its
/// `Debug` never shows the key.
///
/// # Example
///
/// ```
/// use mesh_auth::apikey::{ApiKeyHeader, ApiKeyLayer};
/// use mesh_auth::SecretSource;
/// use tower::{ServiceBuilder, service_fn};
///
/// let layer = ApiKeyLayer::from_source(ApiKeyHeader::Bearer, &SecretSource::Value("s3cret".into()))?;
/// assert!(!format!("{layer:?}").contains("s3cret"));
/// let client = ServiceBuilder::new().layer(layer).service(service_fn(
///     |req: http::Request<()>| async move {
///         assert_eq!(req.headers()["authorization"], "Bearer s3cret");
///         Ok::<_, std::convert::Infallible>(())
///     },
/// ));
/// # let _ = client;
/// # Ok::<(), mesh_auth::SecretError>(())
/// ```
#[derive(Clone)]
pub struct ApiKeyLayer {
    header: ApiKeyHeader,
    value: HeaderValue,
}

impl ApiKeyLayer {
    /// A layer sending `key` in `header`. Fails if the key cannot be a header
    /// value (control characters); the error does not contain the key.
    pub fn new(header: ApiKeyHeader, key: &Secret) -> Result<Self, SecretError> {
        let mut bytes = Vec::with_capacity(key.expose().len() + 7);
        if header == ApiKeyHeader::Bearer {
            bytes.extend_from_slice(b"Bearer ");
        }
        bytes.extend_from_slice(key.expose());
        let mut value = HeaderValue::from_bytes(&bytes).map_err(|_| {
            SecretError::new("API key contains bytes not allowed in an HTTP header")
        })?;
        value.set_sensitive(true);
        Ok(Self { header, value })
    }

    /// A layer sending the key read from `source` (environment, file or value).
    pub fn from_source(header: ApiKeyHeader, source: &SecretSource) -> Result<Self, SecretError> {
        Self::new(header, &source.load()?)
    }
}

impl std::fmt::Debug for ApiKeyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyLayer")
            .field("header", &self.header)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = AddApiKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AddApiKey {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`ApiKeyLayer`].
#[derive(Clone, Debug)]
pub struct AddApiKey<S> {
    inner: S,
    layer: ApiKeyLayer,
}

impl<S> AddApiKey<S> {
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

impl<S, B> Service<http::Request<B>> for AddApiKey<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        req.headers_mut()
            .insert(self.layer.header.name().clone(), self.layer.value.clone());
        self.inner.call(req)
    }
}
