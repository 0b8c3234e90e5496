//! The DNS source against a real DNS server: an in-process, authoritative
//! hickory-server on 127.0.0.1 (UDP and TCP, random port) whose zone the tests
//! change between queries, and which counts the lookups it answers.
//!
//! Real time, short TTLs (1 s) and a small floor, so the whole file runs in a
//! few seconds.

#![cfg(feature = "dns")]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType, RrKey};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use mesh_discovery::dns::{DnsConfig, DnsSource};
use mesh_discovery::{Discovery, EmptyPolicy, ErrorKind};
use tokio::net::{TcpListener, UdpSocket};

const ZONE: &str = "mesh.test.";

type Zone = InMemoryZoneHandler<TokioRuntimeProvider>;

/// The catalog, plus a count of the lookups that reached it.
struct Counting {
    catalog: Catalog,
    queries: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl RequestHandler for Counting {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        // One lookup of the source sends one A query (plus one AAAA) or one SRV
        // query: count those, so the count is the number of lookups.
        if let Ok(info) = request.request_info()
            && matches!(info.query.query_type(), RecordType::A | RecordType::SRV)
        {
            self.queries.fetch_add(1, Ordering::SeqCst);
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// An authoritative server for `mesh.test.` on 127.0.0.1.
struct TestDns {
    zone: Arc<Zone>,
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    server: Option<Server<Counting>>,
    serial: u32,
}

impl TestDns {
    async fn start() -> Self {
        let origin = Name::from_str(ZONE).unwrap();
        let zone = Zone::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            Name::from_str("ns.mesh.test.").unwrap(),
            Name::from_str("admin.mesh.test.").unwrap(),
            1,
            60,
            60,
            600,
            1,
        );
        assert!(
            zone.upsert(Record::from_rdata(origin, 1, RData::SOA(soa)), 1)
                .await
        );
        // A random UDP port that is also free for TCP.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                break (udp, tcp);
            }
        };
        let mut dns = Self {
            zone: Arc::new(zone),
            addr: udp.local_addr().unwrap(),
            queries: Arc::default(),
            server: None,
            serial: 1,
        };
        dns.serve(udp, tcp);
        dns
    }

    fn serve(&mut self, udp: UdpSocket, tcp: TcpListener) {
        let mut catalog = Catalog::new();
        let handler: Arc<dyn ZoneHandler> = self.zone.clone();
        catalog.upsert(LowerName::from_str(ZONE).unwrap(), vec![handler]);
        let mut server = Server::new(Counting {
            catalog,
            queries: self.queries.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 16);
        self.server = Some(server);
    }

    /// Stops answering: the ports are closed.
    async fn stop(&mut self) {
        let mut server = self.server.take().expect("running");
        server.shutdown_gracefully().await.unwrap();
    }

    /// Answers again, on the same port.
    async fn restart(&mut self) {
        let udp = UdpSocket::bind(self.addr).await.unwrap();
        let tcp = TcpListener::bind(self.addr).await.unwrap();
        self.serve(udp, tcp);
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// Replaces the records of this type at `name` (relative to the zone).
    async fn set(&mut self, name: &str, rtype: RecordType, data: Vec<RData>, ttl: u32) {
        let name = Name::from_str(&format!("{name}.{ZONE}")).unwrap();
        self.zone
            .records_mut()
            .await
            .remove(&RrKey::new(LowerName::new(&name), rtype));
        self.serial += 1;
        for d in data {
            assert!(
                self.zone
                    .upsert(Record::from_rdata(name.clone(), ttl, d), self.serial)
                    .await
            );
        }
    }

    async fn set_a(&mut self, name: &str, ips: &[Ipv4Addr], ttl: u32) {
        let data = ips.iter().map(|ip| RData::A(A::from(*ip))).collect();
        self.set(name, RecordType::A, data, ttl).await;
    }

    fn config(&self, mut config: DnsConfig) -> DnsConfig {
        config.name_servers = vec![self.addr];
        config.min_ttl = Duration::from_millis(200);
        config.timeout = Duration::from_millis(200);
        config.attempts = 1;
        config.backoff.base = Duration::from_millis(100);
        config.backoff.cap = Duration::from_millis(300);
        config
    }
}

fn ip(a: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, a)
}

fn addresses(d: &Discovery) -> Vec<String> {
    d.current()
        .iter()
        .map(|e| e.address().to_string())
        .collect()
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn srv(priority: u16, weight: u16, port: u16, target: &str) -> RData {
    RData::SRV(SRV::new(
        priority,
        weight,
        port,
        Name::from_str(target).unwrap(),
    ))
}

#[tokio::test]
async fn a_and_aaaa_records_become_endpoints() {
    let mut dns = TestDns::start().await;
    dns.set_a("users", &[ip(2), ip(1)], 60).await;
    let v6 = RData::AAAA(AAAA::from(Ipv6Addr::LOCALHOST));
    dns.set("users", RecordType::AAAA, vec![v6], 60).await;

    let users = DnsSource::spawn(dns.config(DnsConfig::ip("users.mesh.test.", 8080))).unwrap();
    assert_eq!(users.name(), "dns:users.mesh.test.");
    within("3 endpoints", users.wait_for(|s| s.len() == 3)).await;
    assert_eq!(
        addresses(&users),
        ["10.0.0.1:8080", "10.0.0.2:8080", "[::1]:8080"]
    );
    let set = users.current();
    assert_eq!(set.endpoints()[0].key().as_str(), "10.0.0.1:8080");
    assert!(users.health().is_healthy());
}

#[tokio::test]
async fn a_change_is_picked_up_when_the_ttl_runs_out() {
    let mut dns = TestDns::start().await;
    dns.set_a("web", &[ip(1)], 1).await;
    let web = DnsSource::spawn(dns.config(DnsConfig::ip("web.mesh.test.", 80))).unwrap();
    within("first answer", web.wait_for(|s| s.len() == 1)).await;
    let first = dns.queries();

    // The answer is trusted for its TTL (1 s): no query before that.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(dns.queries(), first, "re-resolved before the TTL ran out");

    dns.set_a("web", &[ip(1), ip(3)], 1).await;
    let set = within("the new record", web.wait_for(|s| s.len() == 2))
        .await
        .unwrap();
    assert_eq!(set.version(), 2);
    assert_eq!(addresses(&web), ["10.0.0.1:80", "10.0.0.3:80"]);

    // An unchanged answer publishes nothing; lookups go on at the TTL's pace.
    let before = dns.queries();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = dns.queries() - before;
    assert!(
        (2..=3).contains(&during),
        "{during} lookups in 2.5 s, TTL 1 s"
    );
    assert_eq!(web.current().version(), 2);
}

#[tokio::test]
async fn the_last_set_is_kept_while_the_server_is_down() {
    let mut dns = TestDns::start().await;
    dns.set_a("api", &[ip(7)], 1).await;
    let api = DnsSource::spawn(dns.config(DnsConfig::ip("api.mesh.test.", 443))).unwrap();
    within("first answer", api.wait_for(|s| s.len() == 1)).await;
    let mut health = api.subscribe_health();

    dns.stop().await;
    within(
        "two failures",
        health.wait_for(|h| h.consecutive_failures() >= 2),
    )
    .await
    .unwrap();
    let h = api.health();
    assert!(!h.is_healthy());
    let e = h.last_error().unwrap();
    assert!(
        matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Connect),
        "{e}"
    );
    assert_eq!(addresses(&api), ["10.0.0.7:443"], "fail static");
    assert_eq!(api.current().version(), 1);

    // Back, with a new answer.
    dns.set_a("api", &[ip(8)], 1).await;
    dns.restart().await;
    within(
        "recovery",
        api.wait_for(|s| s.iter().any(|e| e.address().to_string() == "10.0.0.8:443")),
    )
    .await;
    within(
        "healthy again",
        health.wait_for(mesh_discovery::SourceHealth::is_healthy),
    )
    .await
    .unwrap();
    assert!(api.health().last_error().is_some(), "kept for diagnosis");
}

#[tokio::test]
async fn nxdomain_is_an_error_and_keeps_the_set() {
    let mut dns = TestDns::start().await;
    dns.set_a("gone", &[ip(1)], 1).await;
    let gone = DnsSource::spawn(dns.config(DnsConfig::ip("gone.mesh.test.", 80))).unwrap();
    within("first answer", gone.wait_for(|s| s.len() == 1)).await;

    dns.set_a("gone", &[], 1).await; // the name no longer exists
    let mut health = gone.subscribe_health();
    within(
        "a failure",
        health.wait_for(|h| h.consecutive_failures() >= 1),
    )
    .await
    .unwrap();
    assert_eq!(
        gone.health().last_error().unwrap().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(addresses(&gone), ["10.0.0.1:80"]);

    // A name that never existed: no endpoints, the error in health.
    let never = DnsSource::spawn(dns.config(DnsConfig::ip("never.mesh.test.", 80))).unwrap();
    let mut health = never.subscribe_health();
    within(
        "a failure",
        health.wait_for(|h| h.consecutive_failures() >= 1),
    )
    .await
    .unwrap();
    assert!(never.current().is_empty());
}

#[tokio::test]
async fn an_empty_answer_follows_the_empty_policy() {
    let mut dns = TestDns::start().await;
    dns.set_a("batch", &[ip(1)], 1).await;
    // The name keeps a TXT record, so it exists with no A record (NODATA).
    let txt = RData::TXT(hickory_server::proto::rr::rdata::TXT::new(vec!["x".into()]));
    dns.set("batch", RecordType::TXT, vec![txt], 1).await;

    let keep = DnsSource::spawn(dns.config(DnsConfig::ip("batch.mesh.test.", 80))).unwrap();
    let mut config = dns.config(DnsConfig::ip("batch.mesh.test.", 80));
    config.empty = EmptyPolicy::Publish;
    let publish = DnsSource::spawn(config).unwrap();
    within("first answers", async {
        keep.wait_for(|s| s.len() == 1).await;
        publish.wait_for(|s| s.len() == 1).await;
    })
    .await;

    dns.set_a("batch", &[], 1).await;
    within(
        "the empty set",
        publish.wait_for(mesh_discovery::EndpointSet::is_empty),
    )
    .await;
    let mut health = keep.subscribe_health();
    within(
        "an ignored empty answer",
        health.wait_for(|h| h.empty_sets_ignored() >= 1),
    )
    .await
    .unwrap();
    assert_eq!(keep.current().len(), 1);
    assert!(
        keep.health().is_healthy(),
        "an empty answer is not an error"
    );
}

#[tokio::test]
async fn srv_records_give_weighted_endpoints_of_the_best_priority() {
    let mut dns = TestDns::start().await;
    let name = "_grpc._tcp.billing";
    let records = vec![
        srv(10, 60, 9000, "a.mesh.test."),
        srv(10, 20, 9001, "b.mesh.test."),
        srv(20, 100, 9000, "standby.mesh.test."),
    ];
    dns.set(name, RecordType::SRV, records, 1).await;

    let billing =
        DnsSource::spawn(dns.config(DnsConfig::srv("_grpc._tcp.billing.mesh.test."))).unwrap();
    let set = within("SRV endpoints", billing.wait_for(|s| s.len() == 2))
        .await
        .unwrap();
    let got: Vec<_> = set
        .iter()
        .map(|e| (e.key().as_str().to_owned(), e.weight()))
        .collect();
    assert_eq!(
        got,
        [
            ("a.mesh.test:9000".to_owned(), 60),
            ("b.mesh.test:9001".to_owned(), 20)
        ]
    );
    assert_eq!(set.endpoints()[0].address().port(), 9000);

    // The active group goes away: the standby group takes over.
    dns.set(
        name,
        RecordType::SRV,
        vec![srv(20, 100, 9000, "standby.mesh.test.")],
        1,
    )
    .await;
    within(
        "the standby group",
        billing.wait_for(|s| {
            s.len() == 1 && s.endpoints()[0].key().as_str() == "standby.mesh.test:9000"
        }),
    )
    .await;
}

#[tokio::test]
async fn the_source_stops_when_nobody_listens() {
    let mut dns = TestDns::start().await;
    dns.set_a("short", &[ip(1)], 1).await;
    let d = DnsSource::spawn(dns.config(DnsConfig::ip("short.mesh.test.", 80))).unwrap();
    within("first answer", d.wait_for(|s| s.len() == 1)).await;
    drop(d);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after = dns.queries();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(dns.queries(), after, "a stopped source sends no query");
}

#[tokio::test]
async fn bad_config_is_a_typed_error() {
    for (config, field) in [
        (DnsConfig::ip("", 80), "name"),
        (DnsConfig::ip("not a name", 80), "name"),
        (DnsConfig::ip("10.0.0.1", 80), "name"),
        (DnsConfig::srv("a..b"), "name"),
        (DnsConfig::ip("users.mesh.test", 0), "kind.port"),
    ] {
        let e = DnsSource::spawn(config).unwrap_err();
        assert_eq!(e.errors()[0].path(), field, "{e}");
    }
    let mut config = DnsConfig::ip("users.mesh.test", 80);
    config.min_ttl = Duration::ZERO;
    let e = DnsSource::spawn(config).unwrap_err();
    assert_eq!(e.errors()[0].path(), "min_ttl");
    let boxed: mesh_core::BoxError = Box::new(e);
    assert!(
        boxed
            .downcast_ref::<mesh_core::config::InvalidConfig>()
            .is_some()
    );
}
