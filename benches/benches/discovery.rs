//! Parsing and diffing a Consul health response of 10,000 instances.
//!
//! What a watch does on every answer that changed: parse the JSON body into
//! endpoints, build the sorted snapshot (`EndpointSet::new`) and diff it
//! against the previous one. The parser is the one serde model
//! (`HealthEntry<'a>`: typed derive, borrowed strings, unused fields
//! skipped). Target: ≤ 50 ms for 10,000 instances (issue 18: at the few
//! updates a minute the watch's rate limit allows, a typed model beats a
//! hand-written reader). The baseline is serde_json parsing the same body
//! into an untyped `serde_json::Value`: the cost of merely reading the JSON.
//!
//! Issue 18's comparison, one run of this bench on the shared 2-core machine
//! under load (load average 7 to 12; the baseline took 484 to 750 ms, against
//! 139 ms in `BENCHMARKS.md`), before the hand-written reader was deleted:
//!
//! | variant | serde model | hand-written reader |
//! |---|---:|---:|
//! | parse + snapshot + diff | 119 ms | 21 ms |
//! | update + snapshot + diff | 106 ms | 17 ms |
//! | update + snapshot + diff, unique indexes | 89 ms | 21 ms |
//!
//! Against the baseline of the same run, the serde model costs 0.22× a
//! `Value` parse and the reader 0.04×. Measured again on the idle machine
//! (2026-12-01, load average 0.5 at the start, nothing else running), the
//! serde model: parse + snapshot + diff 45.7 ms, update + snapshot + diff
//! 41.8 ms, unique indexes 42.0 ms, baseline 189.8 ms; within the 50 ms
//! target, so the serde model was kept.
//!
//! - `parse`, `parse_snapshot_diff`: a cold parse (`parse_health`), as for a
//!   watch's first answer or after an error;
//! - `update`, `update_snapshot_diff`: what a running watch does
//!   (`parse_health_update` against the set it published last, so the 9,999
//!   unchanged instances come back as the same endpoints);
//! - `update_snapshot_diff_unique_indexes`: the same with every instance's
//!   `CreateIndex`/`ModifyIndex` its own, as in a real answer (the parser
//!   passes over members that repeat the previous entry's text, so the
//!   constant indexes of the other bodies flatter it a little).
//!
//! Run: `cargo bench -p mesh-bench --bench discovery -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mesh_discovery::EndpointSet;
use mesh_discovery::consul::{parse_health, parse_health_update};

/// A body shaped like Consul's, 10,000 entries on 1,000 nodes, each with the
/// node's serfHealth check and one service check. With `unique_indexes`, each
/// node and service has its own raft indexes.
fn health_body(n: u32, changed: Option<u32>, unique_indexes: bool) -> Vec<u8> {
    let mut out = String::from("[");
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        let node = format!("node-{}", i / 10);
        let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        let port = if Some(i) == changed { 9090 } else { 8080 };
        let (node_index, index) = if unique_indexes {
            (100 + i / 10, 20_000 + i)
        } else {
            (5, 7)
        };
        out.push_str(&format!(
            r#"{{"Node":{{"ID":"00000000-0000-0000-0000-{i:012}","Node":"{node}","Address":"{ip}","Datacenter":"dc1","TaggedAddresses":{{"lan":"{ip}","wan":"{ip}"}},"Meta":{{"consul-network-segment":""}},"CreateIndex":{node_index},"ModifyIndex":{node_index}}},"Service":{{"ID":"users-{i}","Service":"users","Tags":["v1","primary"],"Address":"{ip}","TaggedAddresses":{{"lan_ipv4":{{"Address":"{ip}","Port":{port}}},"wan_ipv4":{{"Address":"{ip}","Port":{port}}}}},"Meta":{{"version":"1.2.3","zone":"eu-west-1a"}},"Port":{port},"Weights":{{"Passing":1,"Warning":1}},"EnableTagOverride":false,"Namespace":"default","CreateIndex":{index},"ModifyIndex":{index}}},"Checks":[{{"Node":"{node}","CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing","Notes":"","Output":"Agent alive and reachable","ServiceID":"","ServiceName":"","ServiceTags":[],"Type":""}},{{"Node":"{node}","CheckID":"service:users-{i}","Name":"Service 'users' check","Status":"passing","Notes":"","Output":"HTTP GET http://{ip}:{port}/health: 200 OK","ServiceID":"users-{i}","ServiceName":"users","ServiceTags":["v1","primary"],"Type":"http"}}]}}"#
        ));
    }
    out.push(']');
    out.into_bytes()
}

fn bench(c: &mut Criterion) {
    let before = health_body(10_000, None, false);
    let after = health_body(10_000, Some(5_000), false);
    let previous = EndpointSet::new(parse_health(&before).unwrap());
    assert_eq!(previous.len(), 10_000);

    let mut g = c.benchmark_group("consul_health_10k");
    g.sample_size(20);
    g.bench_function("baseline_serde_json_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&after)).unwrap())
    });
    g.bench_function("parse", |b| {
        b.iter(|| parse_health(black_box(&after)).unwrap())
    });
    g.bench_function("parse_snapshot_diff", |b| {
        b.iter(|| {
            let set = EndpointSet::new(parse_health(black_box(&after)).unwrap());
            let changes = previous.diff(&set);
            assert_eq!(changes.len(), 1);
            changes
        })
    });
    g.bench_function("update", |b| {
        b.iter(|| parse_health_update(black_box(&after), &previous).unwrap())
    });
    g.bench_function("update_snapshot_diff", |b| {
        b.iter(|| {
            let set = EndpointSet::new(parse_health_update(black_box(&after), &previous).unwrap());
            let changes = previous.diff(&set);
            assert_eq!(changes.len(), 1);
            changes
        })
    });
    let before_unique = health_body(10_000, None, true);
    let after_unique = health_body(10_000, Some(5_000), true);
    let previous_unique = EndpointSet::new(parse_health(&before_unique).unwrap());
    g.bench_function("update_snapshot_diff_unique_indexes", |b| {
        b.iter(|| {
            let body = black_box(&after_unique);
            let set = EndpointSet::new(parse_health_update(body, &previous_unique).unwrap());
            let changes = previous_unique.diff(&set);
            assert_eq!(changes.len(), 1);
            changes
        })
    });
    g.finish();

    let same = EndpointSet::new(parse_health(&before).unwrap());
    c.bench_function("consul_health_10k/diff_only_no_change", |b| {
        b.iter(|| previous.diff(black_box(&same)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
