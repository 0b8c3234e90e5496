use super::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

async fn call(
    c: &FakeConsul,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Option<String>, String) {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", c.url()))
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let idx = resp
        .headers()
        .get("x-consul-index")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, idx, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn register_ttl_and_health_filters() {
    let c = FakeConsul::start().await.unwrap();
    let reg = r#"{"ID":"web-1","Name":"web","Port":8080,"Address":"10.0.0.1","Tags":["v1"],
                 "Check":{"CheckID":"web-1-ttl","TTL":"10s"}}"#;
    assert_eq!(
        call(&c, "PUT", "/v1/agent/service/register", reg).await.0,
        200
    );
    assert_eq!(
        c.check_status("web-1-ttl"),
        Some(Health::Critical),
        "TTL checks start critical"
    );
    let (_, _, body) = call(&c, "GET", "/v1/health/service/web?passing", "").await;
    assert_eq!(body, "[]");
    assert_eq!(
        call(&c, "PUT", "/v1/agent/check/pass/web-1-ttl?note=ok", "")
            .await
            .0,
        200
    );
    let (_, _, body) = call(&c, "GET", "/v1/health/service/web?passing&tag=v1", "").await;
    assert!(body.contains("\"ID\":\"web-1\""), "{body}");
    let (_, _, body) = call(&c, "GET", "/v1/health/service/web?passing&tag=v2", "").await;
    assert_eq!(body, "[]");
    assert_eq!(
        call(&c, "PUT", "/v1/agent/check/pass/nope", "").await.0,
        404
    );
    assert_eq!(
        call(&c, "PUT", "/v1/agent/service/register", "{}").await.0,
        400
    );
    assert_eq!(
        call(&c, "PUT", "/v1/agent/service/deregister/web-1", "")
            .await
            .0,
        200
    );
    assert!(c.instance_ids("web").is_empty());
    assert_eq!(
        call(&c, "PUT", "/v1/agent/service/deregister/web-1", "")
            .await
            .0,
        200,
        "idempotent"
    );
}

#[tokio::test(start_paused = true)]
async fn ttl_expires_to_critical() {
    let c = FakeConsul::start().await.unwrap();
    let reg = r#"{"ID":"a","Name":"a","Port":1,"Check":{"CheckID":"a-ttl","TTL":"5s","Status":"passing"}}"#;
    assert_eq!(
        call(&c, "PUT", "/v1/agent/service/register", reg).await.0,
        200
    );
    assert_eq!(c.healthy_ids("a"), ["a"]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(c.check_status("a-ttl"), Some(Health::Critical));
    assert!(c.healthy_ids("a").is_empty());
}

#[tokio::test]
async fn blocking_queries_hold_until_a_change() {
    let c = FakeConsul::start().await.unwrap();
    c.add_instance(Instance::new("s", "s1", "10.0.0.1", 80));
    let (_, idx, _) = call(&c, "GET", "/v1/health/service/s", "").await;
    let idx: u64 = idx.unwrap().parse().unwrap();
    let c2 = c.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c2.set_health("s1", Health::Critical);
    });
    let start = Instant::now();
    let (_, new, _) = call(
        &c,
        "GET",
        &format!("/v1/health/service/s?index={idx}&wait=5s"),
        "",
    )
    .await;
    assert!(start.elapsed() >= Duration::from_millis(150));
    assert!(new.unwrap().parse::<u64>().unwrap() > idx);

    // Nothing changes: held for the wait (plus at most wait/16).
    let cur = c.index();
    let start = Instant::now();
    let (_, same, _) = call(
        &c,
        "GET",
        &format!("/v1/health/service/s?index={cur}&wait=300ms"),
        "",
    )
    .await;
    let el = start.elapsed();
    assert!(
        el >= Duration::from_millis(300) && el < Duration::from_millis(1000),
        "{el:?}"
    );
    assert_eq!(same.unwrap(), cur.to_string());
}

#[tokio::test]
async fn faults_and_tokens() {
    let c = FakeConsul::start().await.unwrap();
    c.set_fault(Fault::NoLeader);
    let (s, _, b) = call(&c, "GET", "/v1/health/service/s", "").await;
    assert_eq!((s, b.as_str()), (500, "No cluster leader"));
    c.set_fault(Fault::MissingIndex);
    assert_eq!(call(&c, "GET", "/v1/health/service/s", "").await.1, None);
    c.set_fault(Fault::IndexZero);
    assert_eq!(
        call(&c, "GET", "/v1/health/service/s", "")
            .await
            .1
            .as_deref(),
        Some("0")
    );
    c.set_fault(Fault::GarbageBody);
    assert!(
        call(&c, "GET", "/v1/health/service/s", "")
            .await
            .2
            .starts_with('<')
    );
    c.clear_fault();
    c.require_token(Some("t0ken"));
    assert_eq!(
        call(
            &c,
            "PUT",
            "/v1/agent/service/register",
            r#"{"Name":"x","Port":1}"#
        )
        .await
        .0,
        403
    );
    assert_eq!(c.request_count(), 5);
    assert_eq!(c.health_request_count(), 4);
}
