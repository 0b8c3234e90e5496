//! Rewriting a request addressed to a service into one addressed to an
//! endpoint.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::HeaderValue;
use http::uri::{Authority, Scheme};
use mesh_core::{BoxError, Endpoint, TriedEndpoints};
use pin_project_lite::pin_project;
use tower_service::Service;

/// What happens to the `Host` header when a request is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum HostHeader {
    /// Leave it as the caller set it (or unset: HTTP/1 clients then send the
    /// endpoint's authority). Servers that route on `Host` still see the
    /// logical service name. The default.
    #[default]
    Keep,
    /// Set it to the endpoint's `host:port`.
    Endpoint,
}

/// One endpoint, ready to be written into requests: the authority is built
/// once, when the endpoint arrives, not per request.
///
/// Writing them into a request clones two reference-counted byte buffers
/// (two atomic increments, ~18 ns here). Making them `'static` would save
/// that, but only by leaking one copy per distinct address for the life of
/// the process, which grows without bound where instance addresses churn
/// (new pod IPs at every deploy): not a trade a long-lived client should make.
#[derive(Clone)]
pub struct EndpointTarget {
    endpoint: Endpoint,
    authority: Authority,
    host_value: HeaderValue,
}

impl EndpointTarget {
    /// Prepares `endpoint` for rewriting. Fails only for an address that
    /// cannot be a URI authority, which a validated [`Endpoint`] never is.
    pub fn new(endpoint: Endpoint) -> Result<Self, BoxError> {
        let text = endpoint.address().to_string();
        let authority = Authority::try_from(text.as_str())?;
        let host_value = HeaderValue::try_from(text)?;
        Ok(Self {
            endpoint,
            authority,
            host_value,
        })
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The endpoint's address as a URI authority.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }
}

impl fmt::Debug for EndpointTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointTarget")
            .field("endpoint", self.endpoint.key())
            .field("authority", &self.authority)
            .finish()
    }
}

/// A request that can be pointed at an endpoint.
///
/// Implemented for `http::Request<B>` (scheme, authority and optionally
/// `Host`; no allocation) and for `reqwest::Request` (the URL's host and
/// port; reqwest's URL type allocates).
pub trait RewriteTarget {
    /// Points the request at `target`.
    fn rewrite(&mut self, target: &EndpointTarget, host: HostHeader) -> Result<(), BoxError>;

    /// The endpoints this logical request already tried, if retry put a
    /// record in the request (the balancer avoids them).
    fn tried_endpoints(&self) -> Option<&TriedEndpoints> {
        None
    }
}

impl<B> RewriteTarget for http::Request<B> {
    fn rewrite(&mut self, target: &EndpointTarget, host: HostHeader) -> Result<(), BoxError> {
        let uri = std::mem::take(self.uri_mut());
        let mut parts = uri.into_parts();
        if parts.scheme.is_none() {
            parts.scheme = Some(Scheme::HTTP);
        }
        parts.authority = Some(target.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *self.uri_mut() = http::Uri::from_parts(parts)?;
        if host == HostHeader::Endpoint {
            self.headers_mut()
                .insert(http::header::HOST, target.host_value.clone());
        }
        Ok(())
    }

    #[inline]
    fn tried_endpoints(&self) -> Option<&TriedEndpoints> {
        self.extensions().get::<TriedEndpoints>()
    }
}

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
impl RewriteTarget for reqwest::Request {
    fn rewrite(&mut self, target: &EndpointTarget, host: HostHeader) -> Result<(), BoxError> {
        let address = target.endpoint.address();
        let url = self.url_mut();
        url.set_host(Some(&address.host_str().to_string()))?;
        url.set_port(Some(address.port()))
            .map_err(|()| format!("cannot set a port on URL {url}"))?;
        if host == HostHeader::Endpoint {
            self.headers_mut()
                .insert(http::header::HOST, target.host_value.clone());
        }
        Ok(())
    }
}

/// The innermost service of every endpoint's stack: rewrites each request to
/// the endpoint, then hands it to the shared inner client.
#[derive(Clone)]
pub struct Rewrite<S> {
    target: Arc<EndpointTarget>,
    host: HostHeader,
    inner: S,
}

impl<S> Rewrite<S> {
    /// Rewrites requests to `target` before `inner` sends them.
    pub fn new(target: Arc<EndpointTarget>, host: HostHeader, inner: S) -> Self {
        Self {
            target,
            host,
            inner,
        }
    }

    /// The endpoint this service sends to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.target.endpoint
    }

    /// The inner client.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> fmt::Debug for Rewrite<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rewrite")
            .field("target", &self.target)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl<S, R> Service<R> for Rewrite<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    R: RewriteTarget,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = RewriteFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: R) -> Self::Future {
        match req.rewrite(&self.target, self.host) {
            Ok(()) => RewriteFuture::Sent {
                future: self.inner.call(req),
            },
            Err(e) => RewriteFuture::Failed { error: Some(e) },
        }
    }
}

pin_project! {
    /// The response future of [`Rewrite`].
    #[project = RewriteProj]
    #[allow(missing_docs)]
    pub enum RewriteFuture<F> {
        Sent { #[pin] future: F },
        Failed { error: Option<BoxError> },
    }
}

impl<F> fmt::Debug for RewriteFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RewriteFuture")
    }
}

impl<F, T, E> Future for RewriteFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RewriteProj::Sent { future } => {
                Poll::Ready(ready!(future.poll(cx)).map_err(Into::into))
            }
            RewriteProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "RewriteFuture polled after completion".into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(addr: &str) -> EndpointTarget {
        EndpointTarget::new(Endpoint::from_address(addr.parse().unwrap())).unwrap()
    }

    #[test]
    fn rewrites_scheme_authority_and_keeps_path() {
        let t = target("10.0.0.1:8080");
        let mut req = http::Request::get("http://users/api/v1?x=1")
            .body(())
            .unwrap();
        req.rewrite(&t, HostHeader::Keep).unwrap();
        assert_eq!(req.uri(), "http://10.0.0.1:8080/api/v1?x=1");
        assert!(req.headers().get("host").is_none());

        let mut req = http::Request::get("/only/path").body(()).unwrap();
        req.rewrite(&t, HostHeader::Endpoint).unwrap();
        assert_eq!(req.uri(), "http://10.0.0.1:8080/only/path");
        assert_eq!(req.headers()["host"], "10.0.0.1:8080");

        let mut req = http::Request::get("https://users").body(()).unwrap();
        req.rewrite(&target("[::1]:443"), HostHeader::Keep).unwrap();
        assert_eq!(req.uri(), "https://[::1]:443/");
    }
}
