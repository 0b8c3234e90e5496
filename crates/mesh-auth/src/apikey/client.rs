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
/// `Debug` never shows the key. Keys shorter than
/// [`MIN_KEY_LEN`](super::MIN_KEY_LEN) bytes are refused.
///
/// # Redirects
///
/// The key goes wherever the inner client sends the request. A client that
/// follows redirects by itself (reqwest's default client does, up to 10)
/// would carry it to any host a `Location` header names: reqwest strips
/// `Authorization` on a cross-host redirect but not `x-api-key`. Put this
/// layer over a client that does not follow redirects: hyper-util's client,
/// or reqwest built with [`reqwest_builder`](super::reqwest_builder)
/// (feature `reqwest`), which returns the 3xx to the caller.
///
/// # Example
///
/// ```
/// use mesh_auth::apikey::{ApiKeyHeader, ApiKeyLayer};
/// use mesh_auth::SecretSource;
/// use tower::{ServiceBuilder, service_fn};
///
/// let key = SecretSource::Value("sk-0123456789abcdef".into());
/// let layer = ApiKeyLayer::from_source(ApiKeyHeader::Bearer, &key)?;
/// assert!(!format!("{layer:?}").contains("sk-0123456789abcdef"));
/// let client = ServiceBuilder::new().layer(layer).service(service_fn(
///     |req: http::Request<()>| async move {
///         assert_eq!(req.headers()["authorization"], "Bearer sk-0123456789abcdef");
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
    /// Fails too if the key is shorter than [`MIN_KEY_LEN`](super::MIN_KEY_LEN)
    /// bytes.
    pub fn new(header: ApiKeyHeader, key: &Secret) -> Result<Self, SecretError> {
        if key.expose().len() < super::MIN_KEY_LEN {
            return Err(SecretError::new(format!(
                "API key is shorter than {} bytes",
                super::MIN_KEY_LEN
            )));
        }
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

    /// Sets the key's header on `headers` (replacing any value there), as
    /// the layer's service does for each request: for clients that add the
    /// key themselves rather than through a layer. The value is marked
    /// sensitive.
    pub fn insert_into(&self, headers: &mut http::HeaderMap) {
        headers.insert(self.header.name().clone(), self.value.clone());
    }
}

/// A `reqwest::ClientBuilder` for clients that carry an API key: redirects
/// are not followed (the 3xx comes back to the caller), so the key never
/// travels to a host a `Location` header names. Opt back in with
/// `.redirect(...)` on the builder if you must. Feature `reqwest`.
///
/// reqwest's TLS needs a process-wide rustls crypto provider; when none is
/// installed yet, this installs rustls' `ring` provider (as mesh-discovery's
/// Consul client does).
#[cfg(feature = "reqwest")]
pub fn reqwest_builder() -> reqwest::ClientBuilder {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none())
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
        self.layer.insert_into(req.headers_mut());
        self.inner.call(req)
    }
}
