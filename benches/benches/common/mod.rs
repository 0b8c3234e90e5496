//! The harness the router and stack benches share: an always-ready inner
//! service, the request every variant sends, and the timed ready + call loop.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::time::{Duration, Instant};

use mesh_core::Endpoint;
use tower::{Service, ServiceExt};

pub(crate) type Req = http::Request<()>;
/// An empty body: the response is classified from its headers, the hot
/// path every variant shares (a body that streams is recorded when it ends,
/// see `mesh_core::eos`).
pub(crate) type Resp = http::Response<http_body_util::Empty<bytes::Bytes>>;

/// The always-ready inner service every variant ends in.
#[derive(Clone, Copy)]
pub(crate) struct Inner;

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
        ready(Ok(http::Response::new(http_body_util::Empty::new())))
    }
}

/// The request every variant sends, addressed to the logical service.
pub(crate) fn request() -> Req {
    let mut r = http::Request::new(());
    *r.uri_mut() = http::Uri::from_static("http://users/");
    r
}

/// Times `iters` sequential ready + call rounds of `svc`.
pub(crate) fn run<S>(rt: &tokio::runtime::Runtime, svc: &mut S, iters: u64) -> Duration
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let resp = svc.ready().await.unwrap().call(request()).await.unwrap();
            black_box(resp);
        }
        start.elapsed()
    })
}

/// `n` distinct endpoints (`10.a.b.c:80`), enough for 10,000 and more.
pub(crate) fn endpoints(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|i| {
            let addr = format!("10.{}.{}.{}:80", i / 65536, (i / 256) % 256, i % 256);
            Endpoint::from_address(addr.parse().unwrap())
        })
        .collect()
}
