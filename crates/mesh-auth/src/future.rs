//! The response future shared by the server layers: the inner service's
//! future, or an immediate rejection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

pin_project! {
    /// The future of [`ApiKeyAuth`](crate::apikey::ApiKeyAuth) and
    /// [`Authorize`](crate::authz::Authorize): the inner service's response,
    /// or a ready 401/403. Not boxed.
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner { #[pin] future: F },
        Reject { response: Option<http::Response<B>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    /// The inner service's response, as it comes.
    pub fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    /// An immediate rejection. gRPC callers (`content-type: application/grpc*`)
    /// get what their client libraries understand: HTTP 200, trailers-only,
    /// with `grpc_status` (16 UNAUTHENTICATED or 7 PERMISSION_DENIED).
    /// Other crates' authorization layers (Consul intentions) answer the
    /// same way through it.
    pub fn reject(
        request: &http::HeaderMap,
        status: http::StatusCode,
        grpc_status: &'static str,
        headers: &[(http::HeaderName, &'static str)],
    ) -> Self
    where
        B: Default,
    {
        let mut response = http::Response::new(B::default());
        let grpc = request
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            let h = response.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", http::HeaderValue::from_static(grpc_status));
        } else {
            *response.status_mut() = status;
        }
        for (name, value) in headers {
            response
                .headers_mut()
                .insert(name.clone(), http::HeaderValue::from_static(value));
        }
        Self {
            kind: Kind::Reject {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => future.poll(cx),
            KindProj::Reject { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Reject { .. } => "Reject",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
