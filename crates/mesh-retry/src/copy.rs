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
//! - the headers as a flat list of name and value (one allocation), not a
//!   `HeaderMap` clone (two, and its hash index copied): a map is built from
//!   the list only for a retry;
//! - the method (an inline enum for the standard ones), the `Uri` (whose
//!   parts are `Bytes`: a static or shared buffer is cloned by reference,
//!   never copied) and the body (`Full<Bytes>` shares its buffer);
//! - made only when a retry is possible at all: a retryable method and
//!   `max_retries > 0` (see [`RetryService`](crate::RetryService)).
//!
//! Each retry sends a clone of the copy and keeps the copy for the next one;
//! the last allowed attempt sends the copy itself.

use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};

use crate::body::TryCloneBody;

/// What a retry needs of a request: its parts and a clone of its body.
pub(crate) struct RequestCopy<B> {
    method: Method,
    uri: Uri,
    version: Version,
    /// The request's headers in its map's order, repeated names included;
    /// `None` when it had none. Copying them so is one allocation (none
    /// without headers), where a `HeaderMap` clone is two and copies the
    /// map's hash index too; and most requests never retry.
    headers: Option<Box<[(HeaderName, HeaderValue)]>>,
    /// The headers once a retry stamped one, as a map that later attempts
    /// clone (boxed: the copy stays small); `None` before.
    stamped: Option<Box<HeaderMap>>,
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
            headers: list_of(req.headers()),
            stamped: None,
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
            match &self.stamped {
                Some(map) => Some(HeaderMap::clone(map)),
                None => self.headers.as_deref().map(|l| map_of(l.iter().cloned())),
            },
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
            match self.stamped {
                Some(map) => Some(*map),
                None => self.headers.map(|l| map_of(l.into_vec().into_iter())),
            },
            self.extensions,
        )
    }
}

/// The headers of `map` as a list, in its order; `None` when it is empty.
#[inline]
fn list_of(map: &HeaderMap) -> Option<Box<[(HeaderName, HeaderValue)]>> {
    if map.is_empty() {
        return None;
    }
    let mut list = Vec::with_capacity(map.len());
    for (name, value) in map {
        list.push((name.clone(), value.clone()));
    }
    Some(list.into_boxed_slice())
}

/// A map of these header values, in their order (`append` keeps repeated
/// names and the order of their values).
fn map_of(values: impl ExactSizeIterator<Item = (HeaderName, HeaderValue)>) -> HeaderMap {
    // A hint only, kept well below the capacity `with_capacity` panics past
    // (values of one name count once there, but every one here).
    let mut map = HeaderMap::with_capacity(values.len().min(1024));
    for (name, value) in values {
        map.append(name, value);
    }
    map
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
        let headers = &mut self.headers;
        self.stamped.get_or_insert_with(|| {
            Box::new(match headers.take() {
                Some(l) => map_of(l.into_vec().into_iter()),
                None => HeaderMap::new(),
            })
        })
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
        assert!(copy.headers.is_none() && copy.stamped.is_none());
        assert!(copy.extensions.is_empty());
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
    fn the_header_list_keeps_order_repeats_and_sensitivity() {
        let mut secret = HeaderValue::from_static("Bearer t0k3n");
        secret.set_sensitive(true);
        let mut rich = Request::get("http://svc/z").body(()).unwrap();
        let h = rich.headers_mut();
        h.append("x-b", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.append("x-b", HeaderValue::from_static("3"));
        h.insert(http::header::AUTHORIZATION, secret);
        let flat = |m: &HeaderMap| {
            m.iter()
                .map(|(n, v)| (n.clone(), v.clone(), v.is_sensitive()))
                .collect::<Vec<_>>()
        };
        let want = flat(rich.headers());
        let mut copy = RequestCopy::of(&rich).unwrap();
        assert!(copy.headers.is_some() && copy.stamped.is_none());
        assert_eq!(flat(copy.to_request().unwrap().headers()), want);
        // Stamping turns the list into a map with the same headers and more.
        RetryRequest::headers_mut(&mut copy).insert("x-mesh-attempt", 2.into());
        assert!(copy.headers.is_none() && copy.stamped.is_some());
        for sent in [copy.to_request().unwrap(), copy.into_request()] {
            let mut got = flat(sent.headers());
            let stamp = got.pop().unwrap();
            assert_eq!(stamp.0, "x-mesh-attempt");
            assert_eq!(got, want);
        }
        let unstamped = RequestCopy::of(&rich).unwrap().into_request();
        assert_eq!(flat(unstamped.headers()), want);
    }

    #[test]
    fn a_plain_copy_gets_headers_when_stamped() {
        let plain = Request::get("http://svc/x").body(()).unwrap();
        let mut copy = RequestCopy::of(&plain).unwrap();
        RetryRequest::headers_mut(&mut copy).insert("x-mesh-attempt", 3.into());
        assert_eq!(copy.into_request().headers()["x-mesh-attempt"], "3");
    }
}
