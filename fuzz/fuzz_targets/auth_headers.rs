//! What a caller controls on a mesh-auth server: the API-key header
//! (`x-api-key` or `Authorization: Bearer`), the method and path the
//! authorization policy matches, and the policy / key files themselves.
//!
//! Input: one mode byte (bit 0: bearer), then `\n`-separated fields: the
//! header value, the method, the path, and the rest as a JSON document read
//! both as an `AuthorizationPolicy` and as an `ApiKeyAuthConfig`.
//!
//! Contract: nothing panics; a request passes the API-key check exactly when
//! it carries the configured key (bearer scheme case-insensitive, ASCII
//! whitespace trimmed), with the key's identity, and is a 401 otherwise;
//! `compile` fails exactly when `validate` does; a policy never denies what
//! its default allows, and a caller without identity gets the default,
//! except on a non-canonical path (dot segments, encoded slashes), which is
//! always denied.

#![no_main]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use http::{HeaderValue, Method, Request, Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use mesh_auth::apikey::{ApiKeyAuthConfig, ApiKeyAuthLayer, ApiKeyHeader, ApiKeySet};
use mesh_auth::authz::{AuthorizationPolicy, Decision};
use mesh_auth::{CallerIdentity, Secret};
use tower_layer::Layer;
use tower_service::Service;

const KEY: &[u8] = b"k1-secret-0123456789";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut fields = rest.splitn(4, |&b| b == b'\n');
    let value = fields.next().unwrap_or_default();
    let method = fields.next().unwrap_or_default();
    let path = fields.next().unwrap_or_default();
    let document = fields.next().unwrap_or_default();

    check_api_key(mode & 1 == 1, value);

    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let path = String::from_utf8_lossy(path);
    if let Ok(policy) = serde_json::from_slice::<AuthorizationPolicy>(document) {
        match (policy.validate(), policy.compile()) {
            (Ok(()), Ok(compiled)) => {
                let callers = [
                    CallerIdentity::spiffe("spiffe://example.org/orders"),
                    CallerIdentity::dns("orders.internal"),
                    CallerIdentity::api_key("billing"),
                ];
                // A non-canonical path (dot segments, encoded slashes) is
                // denied before any rule or default is looked at.
                let canonical =
                    compiled.explain(None, &method, &path).reason != "non_canonical_path";
                for caller in &callers {
                    let d = compiled.decide(Some(caller), &method, &path);
                    if policy.default == Decision::Allow && canonical {
                        assert_eq!(d, Decision::Allow);
                    }
                    if !canonical {
                        assert_eq!(d, Decision::Deny);
                    }
                }
                let anonymous = if canonical {
                    policy.default
                } else {
                    Decision::Deny
                };
                assert_eq!(compiled.decide(None, &method, &path), anonymous);
            }
            (Err(a), Err(b)) => assert_eq!(a, b),
            (v, c) => panic!("validate {v:?} but compile {:?}", c.map(drop)),
        }
    }
    if let Ok(config) = serde_json::from_slice::<ApiKeyAuthConfig>(document) {
        assert_eq!(config.validate().is_ok(), config.key_set().is_ok());
    }
});

/// Sends one request with `value` in the key header through `ApiKeyAuth`.
fn check_api_key(bearer: bool, value: &[u8]) {
    let header = if bearer {
        ApiKeyHeader::Bearer
    } else {
        ApiKeyHeader::x_api_key()
    };
    let keys = ApiKeySet::new().with_key("billing", &Secret::new(KEY));
    let mut service = ApiKeyAuthLayer::new(header.clone(), keys).layer(Inner);
    let mut request = Request::new(());
    let Ok(v) = HeaderValue::from_bytes(value) else {
        return;
    };
    request.headers_mut().insert(header.name(), v);

    let response = pin!(service.call(request))
        .poll(&mut Context::from_waker(Waker::noop()))
        .map(|r| r.unwrap_or_else(|e| match e {}));
    let Poll::Ready(response) = response else {
        panic!("the API-key check never waits");
    };

    let presented = if bearer {
        value
            .split_at_checked(7)
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|(_, rest)| rest)
    } else {
        Some(value)
    };
    let accepted = presented.is_some_and(|k| k.trim_ascii() == KEY);
    if accepted {
        assert_eq!(response.status(), StatusCode::OK);
        let id = response.extensions().get::<CallerIdentity>();
        assert_eq!(id, Some(&CallerIdentity::api_key("billing")));
    } else {
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(
            response
                .headers()
                .contains_key(http::header::WWW_AUTHENTICATE)
        );
    }
}

/// Answers 200 and hands the caller's identity back in the response.
#[derive(Clone, Copy)]
struct Inner;

impl Service<Request<()>> for Inner {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let mut response = Response::new(());
        if let Some(id) = request.extensions().get::<CallerIdentity>() {
            response.extensions_mut().insert(id.clone());
        }
        ready(Ok(response))
    }
}
