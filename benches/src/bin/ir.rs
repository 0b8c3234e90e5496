//! Instructions per call, for callgrind: runs `N` sequential ready + call
//! rounds of one variant of the router and stack benches, so that
//! `valgrind --tool=callgrind` over two values of `N` gives the per-call
//! instruction count by difference (setup cancels out). Deterministic on a
//! shared machine, where wall-clock figures swing.
//!
//! ```text
//! cargo build --release -p mesh-bench --bin ir
//! benches/ir.sh            # every variant, 20,000 vs 40,000 calls
//! ```
//!
//! Variants: `bare`, `router_p2c_16` (the discovery router over 16 static
//! endpoints, p2c peak-EWMA), `stack_16` (`Mesh::http_client`: retry, router,
//! per-endpoint breaker and attempt timeout), `tower_balance_16` (tower's
//! `Balance<PeakEwma>` without `Buffer`), `tower_buffer_balance_16`
//! (`Buffer<Balance<PeakEwma>>`); with `--features metrics`,
//! `stack_16_prometheus` (`stack_16` with a Prometheus recorder installed).

use std::time::Duration;

use mesh_discovery::StaticSource;
use mesh_discovery::router::DiscoveryLayer;
use mesh_stack::{Mesh, MeshConfig, ServiceConfig};
use tower::Layer;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma};

// The router and stack benches' harness: the same inner service, request
// and ready + call loop.
#[path = "../../benches/common/mod.rs"]
mod common;

use common::{Inner, endpoints, run};

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "stack_16".into());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    // Built inside the runtime (a `Buffer` spawns its worker there).
    let _elapsed = match variant.as_str() {
        "bare" => run(&rt, &mut Inner, n),
        "router_p2c_16" => {
            let discovery = StaticSource::new(endpoints(16)).discovery();
            let layer = DiscoveryLayer::builder(discovery).build().unwrap();
            run(&rt, &mut rt.block_on(async { layer.layer(Inner) }), n)
        }
        "stack_16" => {
            let mesh = Mesh::new(
                MeshConfig::new().service("users", ServiceConfig::with_static(endpoints(16))),
            )
            .unwrap();
            let mut svc = rt.block_on(async { mesh.http_client("users", Inner).unwrap() });
            run(&rt, &mut svc, n)
        }
        // `--features metrics`: the stack's metrics recorded by Prometheus's
        // recorder (installed before the stack registers its handles).
        #[cfg(feature = "metrics")]
        "stack_16_prometheus" => {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            metrics::set_global_recorder(recorder).unwrap();
            let mesh = Mesh::new(
                MeshConfig::new().service("users", ServiceConfig::with_static(endpoints(16))),
            )
            .unwrap();
            let mut svc = rt.block_on(async { mesh.http_client("users", Inner).unwrap() });
            run(&rt, &mut svc, n)
        }
        "tower_balance_16" => run(&rt, &mut Balance::new(peak_ewma(16)), n),
        "tower_buffer_balance_16" => {
            let mut svc = rt.block_on(async { Buffer::new(Balance::new(peak_ewma(16)), 1024) });
            run(&rt, &mut svc, n)
        }
        other => panic!("unknown variant {other}"),
    };
}

fn peak_ewma(n: usize) -> ServiceList<Vec<PeakEwma<Inner, CompleteOnResponse>>> {
    ServiceList::new(
        (0..n)
            .map(|_| {
                PeakEwma::new(
                    Inner,
                    Duration::from_millis(30),
                    Duration::from_secs(10).as_nanos() as f64,
                    CompleteOnResponse::default(),
                )
            })
            .collect::<Vec<_>>(),
    )
}
