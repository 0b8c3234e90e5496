//! The copy of a request that [`RetryService`](crate::RetryService) keeps for
//! a possible retry.
//!
//! The inner service takes the request by value, so whatever a retry will send
//! must be copied *before* the first attempt goes out: a service gives nothing
//! back (hyper's `TrySendError` returns the request only when it was never
//! sent, which is not the failure a retry is for). That copy is most of what
//! the no-retry path costs, so it is kept as small as `http` allows:
//!
//! - not an `http::Request`, whose construction and drop walk an empty
//!   `HeaderMap` even when the request has no headers: empty header and
//!   extension maps are neither cloned nor built;
//! - the method (an inline enum for the standard ones), the `Uri` (whose
//!   parts are `Bytes`: a static or shared buffer is cloned by reference,
//!   never copied) and the body (`Full<Bytes>` shares its buffer);
//! - made only when a retry is possible at all: a retryable method and
//!   `max_retries > 0` (see [`RetryService`](crate::RetryService)).
//!
//! Each retry sends a clone of the copy and keeps the copy for the next one;
//! the last allowed attempt sends the copy itself.

use http::{Extensions, HeaderMap, Method, Request, Uri, Version};

use crate::body::TryCloneBody;

/// What a retry needs of a request: its parts and a clone of its body.
pub(crate) struct RequestCopy<B> {
    method: Method,
    uri: Uri,
    version: Version,
    /// `None` when the request had no headers (and no retry stamped one).
    /// Boxed: a `HeaderMap` inline would add 88 bytes to every response
    /// future, moved on every request; a request with headers allocates for
    /// their copy anyway.
    headers: Option<Box<HeaderMap>>,
    extensions: Extensions,
    body: B,
}

impl<B: TryCloneBody> RequestCopy<B> {
    /// A copy of `req`, or `None` when its body cannot be cloned.
    #[inline]
    pub(crate) fn of(req: &Request<B>) -> Option<Self> {
        let body = req.body().try_clone_body()?;
        Some(Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: (!req.headers().is_empty()).then(|| Box::new(req.headers().clone())),
            // An empty `Extensions` is a `None` inside: cloning it is free.
            extensions: req.extensions().clone(),
            body,
        })
    }

    /// A request to send, keeping this copy for another attempt; `None`
    /// when the body can no longer be cloned.
    pub(crate) fn to_request(&self) -> Option<Request<B>> {
        let body = self.body.try_clone_body()?;
        Some(assemble(
            body,
            self.method.clone(),
            self.uri.clone(),
            self.version,
            self.headers.as_deref().cloned(),
            self.extensions.clone(),
        ))
    }

    /// The copy as the request to send on the last attempt.
    pub(crate) fn into_request(self) -> Request<B> {
        assemble(
            self.body,
            self.method,
            self.uri,
            self.version,
            self.headers.map(|h| *h),
            self.extensions,
        )
    }
}

/// Clones an `http::Request` whose body can be cloned, part by part as
/// [`RequestCopy::of`] copies one (an empty header map is neither cloned nor
/// walked), without boxing the headers.
#[inline]
pub(crate) fn clone_request<B: TryCloneBody>(req: &Request<B>) -> Option<Request<B>> {
    let body = req.body().try_clone_body()?;
    Some(assemble(
        body,
        req.method().clone(),
        req.uri().clone(),
        req.version(),
        (!req.headers().is_empty()).then(|| req.headers().clone()),
        req.extensions().clone(),
    ))
}

/// A request of these parts; `None` headers leave its (empty) map unbuilt.
#[inline]
fn assemble<B>(
    body: B,
    method: Method,
    uri: Uri,
    version: Version,
    headers: Option<HeaderMap>,
    extensions: Extensions,
) -> Request<B> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    if let Some(h) = headers {
        *req.headers_mut() = h;
    }
    *req.extensions_mut() = extensions;
    req
}

/// What deciding a retry reads and stamps on the request that a retry will
/// send: an `http::Request` inside `tower::retry::Retry`, a [`RequestCopy`]
/// inside [`RetryService`](crate::RetryService).
pub(crate) trait RetryRequest {
    /// Whether the body can still be sent whole (see [`TryCloneBody::can_replay`]).
    fn can_replay(&self) -> bool;
    /// The headers, to stamp the attempt number.
    fn headers_mut(&mut self) -> &mut HeaderMap;
    /// The extensions, to add the tried endpoints.
    fn extensions_mut(&mut self) -> &mut Extensions;
}

impl<B: TryCloneBody> RetryRequest for Request<B> {
    fn can_replay(&self) -> bool {
        self.body().can_replay()
    }

    fn headers_mut(&mut self) -> &mut HeaderMap {
        Request::headers_mut(self)
    }

    fn extensions_mut(&mut self) -> &mut Extensions {
        Request::extensions_mut(self)
    }
}

impl<B: TryCloneBody> RetryRequest for RequestCopy<B> {
    fn can_replay(&self) -> bool {
        self.body.can_replay()
    }

    fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers.get_or_insert_with(Box::default)
    }

    fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::Full;

    use super::*;

    #[test]
    fn a_copy_without_headers_builds_no_map() {
        let plain = Request::get("http://svc/x")
            .body(Full::<Bytes>::default())
            .unwrap();
        let copy = RequestCopy::of(&plain).unwrap();
        assert!(copy.headers.is_none() && copy.extensions.is_empty());
        let sent = copy.to_request().unwrap();
        assert_eq!(sent.uri(), plain.uri());
        assert_eq!(sent.method(), Method::GET);
        assert!(sent.headers().is_empty() && sent.extensions().is_empty());
    }

    #[test]
    fn the_copy_keeps_every_part_and_stamps_reach_later_attempts() {
        let mut rich = Request::put("http://svc/y?q=1")
            .version(Version::HTTP_2)
            .header("x-a", "1")
            .header("x-a", "2")
            .body(Full::new(Bytes::from_static(b"body")))
            .unwrap();
        rich.extensions_mut().insert(7u32);
        let mut copy = RequestCopy::of(&rich).unwrap();
        let sent = copy.to_request().unwrap();
        assert_eq!(sent.method(), Method::PUT);
        assert_eq!(sent.uri(), rich.uri());
        assert_eq!(sent.version(), Version::HTTP_2);
        assert_eq!(sent.headers(), rich.headers());
        assert_eq!(sent.extensions().get::<u32>(), Some(&7));

        RetryRequest::headers_mut(&mut copy).insert("x-mesh-attempt", 2.into());
        RetryRequest::extensions_mut(&mut copy).insert("tried");
        for sent in [copy.to_request().unwrap(), copy.into_request()] {
            assert_eq!(sent.headers()["x-mesh-attempt"], "2");
            assert_eq!(sent.headers().get_all("x-a").iter().count(), 2);
            assert_eq!(sent.extensions().get::<&str>(), Some(&"tried"));
            assert_eq!(sent.extensions().get::<u32>(), Some(&7));
        }
    }

    #[test]
    fn a_plain_copy_gets_headers_when_stamped() {
        let plain = Request::get("http://svc/x").body(()).unwrap();
        let mut copy = RequestCopy::of(&plain).unwrap();
        RetryRequest::headers_mut(&mut copy).insert("x-mesh-attempt", 3.into());
        assert_eq!(copy.into_request().headers()["x-mesh-attempt"], "3");
    }
}
