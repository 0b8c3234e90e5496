//! mesh-auth's per-request and per-connection costs (issue 9):
//!
//! - `api_key`: `ApiKeyAuth` checking a header (SHA-256 + constant-time
//!   compare against every key) against a bare service and tower-http's
//!   `ValidateRequestHeaderLayer::bearer` (plain comparison, no hashing).
//! - `authorize`: `Authorize` deciding by identity, method and path against a
//!   bare service; and the bare decision with 1 and 32 rules.
//! - `identity`: extracting the SPIFFE identity from a DER certificate, once per
//!   connection, against parsing the certificate alone.
//! - `intentions`: the Consul Connect decision (`mesh_discovery::connect::decide`)
//!   with 1 and 32 L4 intentions (the caller's last) and one L7 intention,
//!   beside the policy decision with as many rules.
//!
//! Run with `cargo bench -p mesh-bench --bench auth`.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Method, Request, Response};
use mesh_auth::CallerIdentity;
use mesh_auth::apikey::{ApiKeyAuthLayer, ApiKeyHeader, ApiKeySet};
use mesh_auth::authz::{AuthorizationPolicy, AuthorizeLayer, Rule};
use rustls_pki_types::CertificateDer;
use tower::{Layer, Service, service_fn};
use tower_http::validate_request::ValidateRequestHeaderLayer;

const KEY: &str = "sk-live-0123456789abcdef0123456789abcdef";

type Bare = tower::util::ServiceFn<
    fn(Request<()>) -> std::future::Ready<Result<Response<String>, Infallible>>,
>;

fn bare() -> Bare {
    service_fn(|_req: Request<()>| std::future::ready(Ok(Response::new(String::new()))))
}

/// Calls a service whose future is ready at once (all of ours here are).
fn call<S>(svc: &mut S, req: Request<()>) -> Response<String>
where
    S: Service<Request<()>, Response = Response<String>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    match pin!(svc.call(req)).poll(&mut cx) {
        Poll::Ready(res) => res.unwrap(),
        Poll::Pending => unreachable!("bench services are always ready"),
    }
}

fn request(header: Option<(&'static str, String)>) -> Request<()> {
    let mut req = Request::get("/users/7").body(()).unwrap();
    if let Some((name, value)) = header {
        req.headers_mut().insert(name, value.parse().unwrap());
    }
    req
}

fn keys(n: usize) -> ApiKeySet {
    let mut set = ApiKeySet::new();
    for i in 1..n {
        set = set.with_key(&format!("svc-{i}"), &format!("sk-other-{i:032}").into());
    }
    set.with_key("orders", &KEY.into())
}

fn api_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("api_key");
    let with_key = || request(Some(("x-api-key", KEY.to_owned())));
    let with_bearer = || request(Some(("authorization", format!("Bearer {KEY}"))));

    let mut svc = bare();
    g.bench_function("baseline_bare_service", |b| {
        b.iter_batched(
            with_key,
            |r| black_box(call(&mut svc, r)),
            BatchSize::SmallInput,
        )
    });
    // Deprecated upstream as "too basic"; it is here only as the floor to compare with.
    #[allow(deprecated)]
    let mut svc = ValidateRequestHeaderLayer::bearer(KEY).layer(bare());
    g.bench_function("baseline_tower_http_bearer", |b| {
        b.iter_batched(
            with_bearer,
            |r| black_box(call(&mut svc, r)),
            BatchSize::SmallInput,
        )
    });
    for n in [1, 16] {
        let mut svc = ApiKeyAuthLayer::new(ApiKeyHeader::default(), keys(n)).layer(bare());
        g.bench_function(format!("mesh_valid_key_{n}_keys"), |b| {
            b.iter_batched(
                with_key,
                |r| black_box(call(&mut svc, r)),
                BatchSize::SmallInput,
            )
        });
    }
    for n in [1, 16] {
        let set = keys(n);
        g.bench_function(format!("mesh_keyset_verify_only_{n}_keys"), |b| {
            b.iter(|| black_box(set.verify(black_box(KEY.as_bytes())).is_some()))
        });
    }
    let mut svc = ApiKeyAuthLayer::new(ApiKeyHeader::Bearer, keys(1)).layer(bare());
    g.bench_function("mesh_valid_bearer_1_key", |b| {
        b.iter_batched(
            with_bearer,
            |r| black_box(call(&mut svc, r)),
            BatchSize::SmallInput,
        )
    });
    let mut svc = ApiKeyAuthLayer::new(ApiKeyHeader::default(), keys(1)).layer(bare());
    g.bench_function("mesh_unknown_key_401", |b| {
        b.iter_batched(
            || request(Some(("x-api-key", "sk-guess".to_owned()))),
            |r| black_box(call(&mut svc, r)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn policy(rules: usize) -> AuthorizationPolicy {
    let mut list: Vec<Rule> = (1..rules)
        .map(|i| {
            Rule::allow(format!("spiffe://td/svc-{i}"))
                .methods(["POST"])
                .paths(["/x"])
        })
        .collect();
    // The matching rule comes last: the worst case.
    list.push(
        Rule::allow("spiffe://td/orders")
            .methods(["GET"])
            .paths(["/users"]),
    );
    AuthorizationPolicy::deny_by_default(list)
}

fn authorize(c: &mut Criterion) {
    let mut g = c.benchmark_group("authorize");
    let orders = CallerIdentity::spiffe("spiffe://td/orders");
    let with_identity = || {
        let mut req = request(None);
        req.extensions_mut().insert(orders.clone());
        req
    };
    let mut svc = bare();
    g.bench_function("baseline_bare_service", |b| {
        b.iter_batched(
            with_identity,
            |r| black_box(call(&mut svc, r)),
            BatchSize::SmallInput,
        )
    });
    for n in [1, 32] {
        let compiled = policy(n).compile().unwrap();
        let mut svc = AuthorizeLayer::new(compiled.clone()).layer(bare());
        g.bench_function(format!("mesh_service_allow_{n}_rules"), |b| {
            b.iter_batched(
                with_identity,
                |r| black_box(call(&mut svc, r)),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("mesh_decide_only_{n}_rules"), |b| {
            b.iter(|| {
                black_box(compiled.decide(
                    black_box(Some(&orders)),
                    black_box(&Method::GET),
                    black_box("/users/7"),
                ))
            })
        });
    }
    let compiled = policy(1).compile().unwrap();
    let mut svc = AuthorizeLayer::new(compiled).layer(bare());
    g.bench_function("mesh_service_deny_403", |b| {
        b.iter_batched(
            || request(None),
            |r| black_box(call(&mut svc, r)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn identity(c: &mut Criterion) {
    let mut g = c.benchmark_group("identity");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![
        rcgen::SanType::DnsName("orders.internal".try_into().unwrap()),
        rcgen::SanType::URI("spiffe://example.org/ns/prod/sa/orders".try_into().unwrap()),
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let der: CertificateDer<'static> = params.self_signed(&key).unwrap().der().clone();
    g.bench_function("baseline_webpki_parse_only", |b| {
        b.iter(|| black_box(webpki::EndEntityCert::try_from(black_box(&der)).is_ok()))
    });
    g.bench_function("mesh_from_certificate", |b| {
        b.iter(|| black_box(CallerIdentity::from_certificate(black_box(&der)).unwrap()))
    });
    g.finish();
}

/// `n` L4 intentions for destination `users`, the one allowing `orders`
/// last (the worst case), or one L7 intention allowing `GET /users/`.
fn intentions(n: usize, l7: bool) -> Vec<std::sync::Arc<mesh_discovery::connect::Intention>> {
    let mut list: Vec<serde_json::Value> = (1..n)
        .map(|i| serde_json::json!({"ID": format!("i{i}"), "SourceName": format!("svc-{i}"), "Action": "deny", "Precedence": 9}))
        .collect();
    list.push(if l7 {
        serde_json::json!({"ID": "orders", "SourceName": "orders", "Action": "", "Precedence": 9,
            "Permissions": [
                {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
                {"Action": "allow", "HTTP": {"PathPrefix": "/users/", "Methods": ["GET"],
                    "Header": [{"Name": "x-env", "Present": true, "Invert": true}]}}]})
    } else {
        serde_json::json!({"ID": "orders", "SourceName": "orders", "Action": "allow", "Precedence": 9})
    });
    serde_json::from_value::<Vec<mesh_discovery::connect::Intention>>(serde_json::Value::Array(
        list,
    ))
    .unwrap()
    .into_iter()
    .map(std::sync::Arc::new)
    .collect()
}

fn connect_intentions(c: &mut Criterion) {
    use mesh_auth::authz::Decision;
    let mut g = c.benchmark_group("intentions");
    let orders = CallerIdentity::spiffe("spiffe://td.consul/ns/default/dc/dc1/svc/orders");
    let headers = http::HeaderMap::new();
    for (name, list) in [
        ("decide_1_l4", intentions(1, false)),
        ("decide_32_l4", intentions(32, false)),
        ("decide_1_l7", intentions(1, true)),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let v = mesh_discovery::connect::decide(
                    black_box(&list),
                    black_box("td.consul"),
                    Decision::Deny,
                    black_box(Some(&orders)),
                    black_box(&Method::GET),
                    black_box("/users/7"),
                    black_box(&headers),
                );
                assert_eq!(v.decision, Decision::Allow);
                black_box(v)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, api_key, authorize, identity, connect_intentions);
criterion_main!(benches);
