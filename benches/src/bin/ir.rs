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
//! (`Buffer<Balance<PeakEwma>>`).

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::Duration;

use mesh_core::Endpoint;
use mesh_discovery::StaticSource;
use mesh_discovery::router::DiscoveryLayer;
use mesh_stack::{Mesh, MeshConfig, ServiceConfig};
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma};
use tower::{Layer, Service, ServiceExt};

type Req = http::Request<()>;
type Resp = http::Response<()>;

#[derive(Clone, Copy)]
struct Inner;

impl Service<Req> for Inner {
    type Response = Resp;
    type Error = Infallible;
    type Future = Ready<Result<Resp, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Req) -> Self::Future {
        ready(Ok(http::Response::new(())))
    }
}

fn request() -> Req {
    let mut r = http::Request::new(());
    *r.uri_mut() = http::Uri::from_static("http://users/");
    r
}

fn endpoints(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            let addr = format!("10.{}.{}.{}:80", i / 65536, (i / 256) % 256, i % 256);
            Endpoint::from_address(addr.parse().unwrap())
        })
        .collect()
}

async fn run<S>(mut svc: S, n: u64)
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..n {
        let resp = svc.ready().await.unwrap().call(request()).await.unwrap();
        black_box(resp);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "stack_16".into());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        match variant.as_str() {
            "bare" => run(Inner, n).await,
            "router_p2c_16" => {
                let discovery = StaticSource::new(endpoints(16)).discovery();
                let layer = DiscoveryLayer::builder(discovery).build().unwrap();
                run(layer.layer(Inner), n).await;
            }
            "stack_16" => {
                let mesh = Mesh::new(
                    MeshConfig::new().service("users", ServiceConfig::with_static(endpoints(16))),
                )
                .unwrap();
                run(mesh.http_client("users", Inner).unwrap(), n).await;
            }
            "tower_balance_16" => {
                run(Balance::new(peak_ewma(16)), n).await;
            }
            "tower_buffer_balance_16" => {
                run(Buffer::new(Balance::new(peak_ewma(16)), 1024), n).await;
            }
            other => panic!("unknown variant {other}"),
        }
    });
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
