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
        404,
        "an unknown service id is a 404, as in Consul"
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
    assert_eq!(c.request_count(), 4);
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
}

async fn call_with(
    c: &FakeConsul,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, http::HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", c.url()));
    if let Some(t) = token {
        req = req.header("x-consul-token", t);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn acls_refuse_unknown_tokens_and_filter_anonymous_reads() {
    let c = FakeConsul::start().await.unwrap();
    c.add_instance(Instance::new("s", "s1", "10.0.0.1", 80));
    c.require_token(Some("t0ken"));
    let (status, _, body) = call_with(&c, "GET", "/v1/health/service/s", Some("wrong")).await;
    assert_eq!((status, body.as_str()), (403, "ACL not found"));
    let (status, headers, body) = call_with(&c, "GET", "/v1/health/service/s", None).await;
    assert_eq!((status, body.as_str()), (200, "[]"));
    assert_eq!(headers["x-consul-results-filtered-by-acls"], "true");
    let (status, headers, body) = call_with(&c, "GET", "/v1/health/service/s", Some("t0ken")).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"s1\""), "{body}");
    assert!(headers.get("x-consul-results-filtered-by-acls").is_none());
    let (status, _, body) = call_with(&c, "PUT", "/v1/agent/service/deregister/s1", None).await;
    assert_eq!(status, 403);
    assert!(body.starts_with("Permission denied"), "{body}");
}

#[tokio::test]
async fn unknown_ids_are_404() {
    let c = FakeConsul::start().await.unwrap();
    for path in [
        "/v1/agent/service/deregister/nope",
        "/v1/agent/service/maintenance/nope?enable=true",
        "/v1/agent/check/pass/nope",
        "/v1/agent/check/update/nope",
    ] {
        let body = if path.contains("update") {
            r#"{"Status":"passing"}"#
        } else {
            ""
        };
        assert_eq!(call(&c, "PUT", path, body).await.0, 404, "{path}");
    }
    assert_eq!(
        call(&c, "GET", "/v1/agent/health/service/id/nope", "")
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn each_service_has_its_own_index() {
    let c = FakeConsul::start().await.unwrap();
    c.add_instance(Instance::new("a", "a1", "10.0.0.1", 80));
    let a = c.service_index("a");
    c.add_instance(Instance::new("b", "b1", "10.0.0.2", 80));
    assert_eq!(c.service_index("a"), a, "a write to b leaves a's index");
    assert!(c.index() > a);
    let (_, idx, _) = call(&c, "GET", "/v1/health/service/a", "").await;
    assert_eq!(idx.unwrap(), a.to_string());
    // A blocking query on `a` is not woken by writes to `b`.
    let c2 = c.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c2.set_health("b1", Health::Critical);
    });
    let start = Instant::now();
    let (_, same, _) = call(
        &c,
        "GET",
        &format!("/v1/health/service/a?index={a}&wait=400ms"),
        "",
    )
    .await;
    assert!(start.elapsed() >= Duration::from_millis(400));
    assert_eq!(same.unwrap(), a.to_string());
}

#[tokio::test]
async fn probed_checks_start_critical_until_their_first_run() {
    let c = FakeConsul::start().await.unwrap();
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = target.local_addr().unwrap();
    let reg = format!(
        r#"{{"ID":"t","Name":"t","Port":{},"Check":{{"CheckID":"t-tcp","TCP":"{addr}","Interval":"200ms"}}}}"#,
        addr.port()
    );
    assert_eq!(
        call(&c, "PUT", "/v1/agent/service/register", &reg).await.0,
        200
    );
    assert_eq!(c.check_status("t-tcp"), Some(Health::Critical));
    assert!(c.healthy_ids("t").is_empty());
    let deadline = Instant::now() + Duration::from_secs(3);
    while c.check_status("t-tcp") != Some(Health::Passing) {
        assert!(Instant::now() < deadline, "the first probe never passed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        call(&c, "GET", "/v1/agent/health/service/id/t", "").await.0,
        200
    );
    drop(target);
    let deadline = Instant::now() + Duration::from_secs(3);
    while c.check_status("t-tcp") != Some(Health::Critical) {
        assert!(Instant::now() < deadline, "a closed port still passes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        call(&c, "GET", "/v1/agent/health/service/id/t", "").await.0,
        503
    );
}

#[tokio::test]
async fn http_checks_probe_with_method_and_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = FakeConsul::start().await.unwrap();
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = target.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = target.accept().await.unwrap();
            let mut buf = vec![0; 1024];
            let n = s.read(&mut buf).await.unwrap();
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = s
                .write_all(b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let reg = format!(
        r#"{{"ID":"h","Name":"h","Port":1,"Check":{{"CheckID":"h-http","HTTP":"http://{addr}/health","Method":"HEAD","Header":{{"X-Probe":["yes"]}},"Interval":"100ms"}}}}"#
    );
    assert_eq!(
        call(&c, "PUT", "/v1/agent/service/register", &reg).await.0,
        200
    );
    let req = tokio::time::timeout(Duration::from_secs(3), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(req.starts_with("HEAD /health HTTP/1.1"), "{req}");
    assert!(req.contains("X-Probe: yes"), "{req}");
    let deadline = Instant::now() + Duration::from_secs(3);
    while c.check_status("h-http") != Some(Health::Warning) {
        assert!(Instant::now() < deadline, "429 is a warning");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_reaper_removes_critical_services_on_its_30s_cycle() {
    let c = FakeConsul::start().await.unwrap();
    // 10 s is raised to Consul's minimum of one minute.
    c.add_instance(
        Instance::new("r", "r1", "10.0.0.1", 80)
            .health(Health::Critical)
            .deregister_critical_after(Duration::from_secs(10)),
    );
    c.add_instance(Instance::new("r", "r2", "10.0.0.2", 80).health(Health::Critical));
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(c.instance_ids("r"), ["r1", "r2"], "not before one minute");
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(c.instance_ids("r"), ["r2"], "reaped by the 90 s pass");
}

#[tokio::test]
async fn maintenance_mode_adds_critical_checks() {
    let c = FakeConsul::start().await.unwrap();
    let reg = r#"{"ID":"m1","Name":"m","Port":80,"Address":"10.0.0.1"}"#;
    assert_eq!(
        call(&c, "PUT", "/v1/agent/service/register", reg).await.0,
        200
    );
    assert_eq!(c.healthy_ids("m"), ["m1"]);
    assert_eq!(
        call(&c, "PUT", "/v1/agent/service/maintenance/m1", "")
            .await
            .0,
        400,
        "enable is required"
    );
    assert_eq!(
        call(
            &c,
            "PUT",
            "/v1/agent/service/maintenance/m1?enable=true&reason=deploy",
            ""
        )
        .await
        .0,
        200
    );
    let (_, _, body) = call(&c, "GET", "/v1/health/service/m", "").await;
    assert!(
        body.contains(r#""CheckID":"_service_maintenance:m1""#),
        "{body}"
    );
    assert!(body.contains(r#""Notes":"deploy""#), "{body}");
    assert!(c.healthy_ids("m").is_empty());
    call(
        &c,
        "PUT",
        "/v1/agent/service/maintenance/m1?enable=false",
        "",
    )
    .await;
    assert_eq!(c.healthy_ids("m"), ["m1"]);
    call(&c, "PUT", "/v1/agent/maintenance?enable=true", "").await;
    let (_, _, body) = call(&c, "GET", "/v1/health/service/m", "").await;
    assert!(body.contains(r#""CheckID":"_node_maintenance""#), "{body}");
    assert!(c.healthy_ids("m").is_empty());
    call(&c, "PUT", "/v1/agent/maintenance?enable=false", "").await;
    assert_eq!(c.healthy_ids("m"), ["m1"]);
    c.set_node_health("fake-node", Health::Critical);
    assert!(c.healthy_ids("m").is_empty(), "a dead node");
}

#[tokio::test]
async fn answers_have_consul_1_16_shapes_and_filters_apply() {
    let c = FakeConsul::start().await.unwrap();
    c.add_instance(Instance::new("f", "f1", "10.0.0.1", 80).tags(["v1"]));
    c.add_instance(Instance::new("f", "f2", "10.0.0.2", 80).tags(["v2"]));
    let (_, _, body) = call(
        &c,
        "GET",
        "/v1/health/service/f?filter=Service.Tags%20contains%20%22v2%22",
        "",
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entries = v.as_array().unwrap();
    assert_eq!(entries.len(), 1);
    let svc = &entries[0]["Service"];
    assert_eq!(svc["ID"], "f2");
    for field in [
        "Kind",
        "Proxy",
        "Connect",
        "PeerName",
        "Weights",
        "CreateIndex",
    ] {
        assert!(svc.get(field).is_some(), "Service.{field} missing: {svc}");
    }
    assert_eq!(svc["TaggedAddresses"]["lan_ipv4"]["Address"], "10.0.0.2");
    assert_eq!(entries[0]["Checks"][0]["CheckID"], "serfHealth");
    assert_eq!(
        call(
            &c,
            "GET",
            "/v1/health/service/f?filter=Tags%20contains%20x",
            ""
        )
        .await
        .0,
        400
    );
}

#[tokio::test]
async fn stale_reads_carry_last_contact_and_leaderless_reads_fail() {
    let c = FakeConsul::start().await.unwrap();
    c.set_leader(false, Duration::from_secs(12));
    let (status, _, body) = call_with(&c, "GET", "/v1/health/service/s", None).await;
    assert_eq!((status, body.as_str()), (500, "No cluster leader"));
    let (status, headers, _) = call_with(&c, "GET", "/v1/health/service/s?stale", None).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-consul-knownleader"], "false");
    assert_eq!(headers["x-consul-lastcontact"], "12000");
}

#[cfg(unix)]
#[tokio::test]
async fn serves_on_a_unix_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = std::env::temp_dir().join(format!("fake-consul-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let c = FakeConsul::start_unix(&path).await.unwrap();
    c.add_instance(Instance::new("u", "u1", "10.0.0.1", 80));
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    s.write_all(b"GET /v1/health/service/u HTTP/1.1\r\nHost: consul\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"u1\""), "{out}");
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_write_wakes_the_watchers_of_its_service_only_and_connections_are_counted() {
    let c = FakeConsul::start().await.unwrap();
    c.add_instance(Instance::new("web", "web-1", "10.0.0.1", 80));
    c.add_instance(Instance::new("db", "db-1", "10.0.0.2", 80));
    let web = c.service_index("web");
    let db = c.service_index("db");
    let (c1, c2) = (c.clone(), c.clone());
    let web_watch = tokio::spawn(async move {
        call(
            &c1,
            "GET",
            &format!("/v1/health/service/web?index={web}&wait=5s"),
            "",
        )
        .await
    });
    let db_watch = tokio::spawn(async move {
        call(
            &c2,
            "GET",
            &format!("/v1/health/service/db?index={db}&wait=1s"),
            "",
        )
        .await
    });
    while c.blocked_health_requests() < 2 {
        tokio::task::yield_now().await;
    }
    assert!(c.set_health("web-1", Health::Critical));
    let (_, idx, _) = web_watch.await.unwrap();
    assert!(idx.unwrap().parse::<u64>().unwrap() > web);
    let (_, idx, _) = db_watch.await.unwrap();
    assert_eq!(
        idx.unwrap().parse::<u64>().unwrap(),
        db,
        "db ran out its wait"
    );
    assert_eq!(c.health_wakeups(), 1, "only web's watcher was woken");
    assert_eq!(c.connections_opened(), 2);
    assert!(c.max_open_connections() >= 2);
}

// ===== Connect =====

#[tokio::test]
async fn connect_ca_leaves_and_roots_have_consuls_shapes_and_block() {
    let c = FakeConsul::start().await.unwrap();
    let (status, idx, body) = call(&c, "GET", "/v1/agent/connect/ca/roots", "").await;
    assert_eq!(status, 200);
    let roots: serde_json::Value = serde_json::from_str(&body).unwrap();
    let td = c.connect_trust_domain();
    assert_eq!(roots["TrustDomain"], td.as_str());
    assert!(td.ends_with(".consul"));
    assert_eq!(roots["Roots"][0]["ID"], roots["ActiveRootID"]);
    assert_eq!(roots["Roots"][0]["Active"], true);
    assert!(
        roots["Roots"][0]["RootCert"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );

    let (_, leaf_idx, body) = call(&c, "GET", "/v1/agent/connect/ca/leaf/web", "").await;
    let leaf: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        leaf["ServiceURI"],
        format!("spiffe://{td}/ns/default/dc/dc1/svc/web").as_str()
    );
    assert_eq!(leaf["Service"], "web");
    assert!(
        leaf["PrivateKeyPEM"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );
    assert!(leaf["ValidBefore"].as_str().unwrap().ends_with('Z'));

    // A blocked leaf query returns when the leaf is rotated, with a new one.
    let leaf_idx: u64 = leaf_idx.unwrap().parse().unwrap();
    let c2 = c.clone();
    let blocked = tokio::spawn(async move {
        call(
            &c2,
            "GET",
            &format!("/v1/agent/connect/ca/leaf/web?index={leaf_idx}&wait=30s"),
            "",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!blocked.is_finished());
    c.rotate_connect_leaf("web");
    let (_, new_idx, new_body) = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .unwrap()
        .unwrap();
    assert!(new_idx.unwrap().parse::<u64>().unwrap() > leaf_idx);
    assert_ne!(new_body, body);

    // A CA rotation: two roots, the new one active and cross-signed.
    let idx: u64 = idx.unwrap().parse().unwrap();
    c.rotate_connect_ca();
    let (_, new_idx, body) = call(
        &c,
        "GET",
        &format!("/v1/agent/connect/ca/roots?index={idx}&wait=5s"),
        "",
    )
    .await;
    assert!(new_idx.unwrap().parse::<u64>().unwrap() > idx);
    let roots: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(roots["Roots"].as_array().unwrap().len(), 2);
    assert_eq!(roots["Roots"][1]["Active"], true);
    assert_eq!(
        roots["Roots"][1]["IntermediateCerts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (cert, _) = c.connect_leaf("web");
    assert_eq!(
        cert.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + cross-signed root"
    );
    c.prune_connect_roots();
    assert_eq!(
        c.connect_roots_pem().matches("BEGIN CERTIFICATE").count(),
        1
    );
}

#[tokio::test]
async fn intentions_are_stored_matched_by_precedence_and_validated() {
    let c = FakeConsul::start().await.unwrap();
    let put = |src: &str, dst: &str| {
        format!("/v1/connect/intentions/exact?source={src}&destination={dst}")
    };
    assert_eq!(
        call(&c, "PUT", &put("*", "db"), r#"{"Action":"deny"}"#)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&c, "PUT", &put("web", "db"), r#"{"Action":"allow"}"#)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&c, "PUT", &put("web", "db"), r#"{"Action":"maybe"}"#)
            .await
            .0,
        400
    );
    let l7 = r#"{"Permissions":[{"Action":"allow","HTTP":{"PathPrefix":"/v1"}}]}"#;
    assert_eq!(call(&c, "PUT", &put("api", "db"), l7).await.0, 200);
    let (status, idx, body) = call(
        &c,
        "GET",
        "/v1/connect/intentions/match?by=destination&name=db",
        "",
    )
    .await;
    assert_eq!(status, 200);
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    let list = m["db"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["Precedence"], 9);
    assert_eq!(list[2]["SourceName"], "*");
    assert_eq!(list[2]["Precedence"], 8);
    assert!(
        list.iter()
            .any(|i| i["Permissions"][0]["HTTP"]["PathPrefix"] == "/v1")
    );
    assert_eq!(
        call(&c, "GET", "/v1/connect/intentions/match?name=db", "")
            .await
            .0,
        400
    );

    // Deleting wakes a blocked match query.
    let idx: u64 = idx.unwrap().parse().unwrap();
    let c2 = c.clone();
    let blocked = tokio::spawn(async move {
        call(
            &c2,
            "GET",
            &format!("/v1/connect/intentions/match?by=destination&name=db&index={idx}&wait=30s"),
            "",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(call(&c, "DELETE", &put("web", "db"), "").await.0, 200);
    let (_, _, body) = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .unwrap()
        .unwrap();
    assert!(!body.contains("\"SourceName\":\"web\""), "{body}");
}

#[tokio::test]
async fn health_connect_lists_native_instances_and_proxies() {
    let c = FakeConsul::start().await.unwrap();
    c.add_instance(Instance::new("db", "db-1", "10.0.0.1", 5432).connect_native());
    c.add_instance(Instance::new("db", "db-plain", "10.0.0.2", 5432));
    let reg = r#"{"ID":"db-sidecar","Name":"db-sidecar-proxy","Kind":"connect-proxy","Port":21000,
                 "Proxy":{"DestinationServiceName":"db","DestinationServiceID":"db-plain"}}"#;
    assert_eq!(
        call(&c, "PUT", "/v1/agent/service/register", reg).await.0,
        200
    );
    let (_, _, body) = call(&c, "GET", "/v1/health/connect/db?passing", "").await;
    let entries: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut ids: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Service"]["ID"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["db-1", "db-sidecar"]);
}

#[tokio::test]
async fn health_state_lists_checks_in_a_state_and_blocks_on_that_state() {
    let c = FakeConsul::start().await.unwrap();
    c.add_instances([
        Instance::new("a", "a1", "10.0.0.1", 80),
        Instance::new("b", "b1", "10.0.0.2", 80).health(Health::Critical),
    ]);
    let (status, idx, body) = call(&c, "GET", "/v1/health/state/critical", "").await;
    assert_eq!(status, 200);
    let idx: u64 = idx.unwrap().parse().unwrap();
    assert_eq!(idx, c.index(), "the checks table's (global) index");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(v[0]["ServiceName"], "b");
    assert_eq!(v[0]["ServiceID"], "b1");
    assert_eq!(v[0]["CheckID"], "service:b1");
    assert_eq!(v[0]["Status"], "critical");
    assert_eq!(v[0]["Node"], "fake-node");

    // `any` lists node checks too (serfHealth, no service); `filter`
    // applies to each check.
    let (_, _, body) = call(&c, "GET", "/v1/health/state/any", "").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["serfHealth", "service:a1", "service:b1"]);
    let (_, _, body) = call(
        &c,
        "GET",
        "/v1/health/state/any?filter=Status%20!%3D%20%22passing%22",
        "",
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(
        call(&c, "GET", "/v1/health/state/bogus", "").await.0,
        400,
        "unknown state"
    );
    assert_eq!(
        call(&c, "GET", "/v1/health/state/any?dc=dc9", "").await.0,
        500
    );

    // A blocked `critical` query is not woken by a write that leaves the
    // critical checks alone (a new passing instance)...
    let c2 = c.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c2.add_instance(Instance::new("a", "a2", "10.0.0.3", 80));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // ...but by a check turning critical.
        c2.set_health("a1", Health::Critical);
    });
    let start = Instant::now();
    let (_, new, body) = call(
        &c,
        "GET",
        &format!("/v1/health/state/critical?index={idx}&wait=5s"),
        "",
    )
    .await;
    let el = start.elapsed();
    assert!(
        el >= Duration::from_millis(250) && el < Duration::from_secs(4),
        "{el:?}"
    );
    let new: u64 = new.unwrap().parse().unwrap();
    assert_eq!(new, idx + 2);
    assert!(body.contains("\"a1\""), "{body}");

    // An index behind the checks table's returns at once, whatever changed.
    let start = Instant::now();
    let (_, again, _) = call(
        &c,
        "GET",
        &format!("/v1/health/state/warning?index={idx}&wait=5s"),
        "",
    )
    .await;
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(again.unwrap().parse::<u64>().unwrap(), new);

    // Nothing changes: held for the wait, same index.
    let start = Instant::now();
    let (_, same, _) = call(
        &c,
        "GET",
        &format!("/v1/health/state/critical?index={new}&wait=300ms"),
        "",
    )
    .await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(same.unwrap().parse::<u64>().unwrap(), new);
    assert!(c.state_requests() >= 7);
}

#[tokio::test]
async fn health_state_filters_take_check_selectors() {
    let c = FakeConsul::start().await.unwrap();
    c.add_instance(Instance::new("a", "a1", "10.0.0.1", 80).health(Health::Warning));
    let (status, _, body) = call(
        &c,
        "GET",
        "/v1/health/state/any?filter=ServiceName%20%3D%3D%20%22a%22",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("service:a1") && !body.contains("serfHealth"),
        "{body}"
    );
    let (status, _, _) = call(
        &c,
        "GET",
        "/v1/health/state/any?filter=Service.Service%20%3D%3D%20%22a%22",
        "",
    )
    .await;
    assert_eq!(status, 400, "a health entry's selector is not a check's");
}
