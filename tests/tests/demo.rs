//! The demo, headless: the same engine `cargo run -p examples --example demo`
//! runs, for a short time, and its summary checked. Under the injected
//! faults (a 503 backend, a backend slower than the call timeout, a flapping
//! one) the mesh's success rate must be far above plain round robin's.

use std::time::Duration;

use examples::demo::{self, DemoOptions, Display, Faults};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_succeeds_far_more_often_than_no_mesh() {
    let report = demo::run(DemoOptions {
        duration: Duration::from_secs(2),
        rate: 100,
        faults: Faults::ALL,
        healthy: 3,
        display: Display::Quiet,
    })
    .await
    .expect("demo runs");
    println!("{}", report.render());

    let (mesh, plain) = (&report.mesh, &report.no_mesh);
    assert!(mesh.sent >= 150 && plain.sent >= 150, "{report:?}");
    // 3 of 6 backends misbehave; round robin fails about 40 % of calls.
    assert!(plain.success_rate() < 0.8, "{report:?}");
    assert!(mesh.success_rate() > 0.97, "{report:?}");
    assert!(
        mesh.success_rate() - plain.success_rate() > 0.15,
        "{report:?}"
    );
    // The slow backend holds plain calls until the timeout; the mesh's p99
    // stays well under it.
    assert!(plain.p99 >= Duration::from_millis(900), "{report:?}");
    assert!(mesh.p99 < Duration::from_millis(900), "{report:?}");
    // The breakers ejected the failing backend: it got a handful of
    // attempts (first failures and probes), not its round-robin share.
    let failing = report.mesh_attempts["failing-503"];
    let healthy = report.mesh_attempts["healthy-1"];
    assert!(failing * 4 < healthy, "{:?}", report.mesh_attempts);
    assert!(report.mesh_retries > 0, "{report:?}");
    // The security sections of the same file: accounts served over mTLS
    // saw the demo's certificate.
    assert!(
        report.secure_call == "200 OK balance 42 for spiffe://demo.mesh/demo",
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_faults_both_succeed() {
    let report = demo::run(DemoOptions {
        duration: Duration::from_millis(500),
        rate: 100,
        faults: Faults::parse("none").unwrap(),
        healthy: 2,
        display: Display::Quiet,
    })
    .await
    .expect("demo runs");
    assert_eq!(report.mesh.succeeded, report.mesh.sent, "{report:?}");
    assert_eq!(report.no_mesh.succeeded, report.no_mesh.sent, "{report:?}");
}
