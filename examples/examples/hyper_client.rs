//! The smallest useful mesh stack over hyper-util's legacy client.
//!
//! ```sh
//! cargo run -p examples --example hyper_client
//! ```
//!
//! Two backends on 127.0.0.1, one of them failing with 503. Every call
//! succeeds: the failing one is retried on the other endpoint, and after a
//! few failures its breaker takes it out of rotation.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use mesh_stack::core::{BoxError, Endpoint};
use mesh_stack::{Mesh, MeshConfig, ServiceConfig};
use mesh_testkit::{Backend, Behavior};
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let good = Backend::builder().name("users-1").start().await?;
    let bad = Backend::builder()
        .name("users-2")
        .behavior(Behavior::status(503))
        .start()
        .await?;

    // In a real program: MeshConfig::from_path("mesh.toml")?
    let config = MeshConfig::new().service(
        "users",
        ServiceConfig::with_static([
            Endpoint::from_address(good.addr().into()),
            Endpoint::from_address(bad.addr().into()),
        ]),
    );
    let mesh = Mesh::new(config)?;
    // hyper-util's client, built with TCP_NODELAY and a bounded idle pool
    // (or `mesh.http_client("users", your_client)`).
    let users = mesh.hyper_client::<Empty<Bytes>>("users")?; // Clone, no Buffer

    for i in 0..10 {
        let req = http::Request::get("http://users/profile/7").body(Empty::new())?;
        let resp = users.clone().oneshot(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        println!("call {i}: {status} from {}", String::from_utf8_lossy(&body));
    }
    println!(
        "server side: users-1 received {}, users-2 (failing) received {}",
        good.hits(),
        bad.hits()
    );
    Ok(())
}
