//! The smallest useful mesh stack over a `reqwest::Client`.
//!
//! ```sh
//! cargo run -p examples --example reqwest_client
//! ```
//!
//! The stack takes `http::Request`s and answers `http::Response<reqwest::Body>`,
//! so retry can clone requests; reqwest keeps its pool, TLS and proxies.

use bytes::Bytes;
use http_body_util::BodyExt;
use mesh_stack::core::BoxError;
use mesh_stack::{Mesh, MeshConfig};
use mesh_testkit::{Backend, Behavior};
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let good = Backend::builder().name("users-1").start().await?;
    let flaky = Backend::builder()
        .name("users-2")
        .behavior(Behavior::fail_first(3, 503))
        .start()
        .await?;

    let config = MeshConfig::from_toml_str(&format!(
        r#"
        [services.users]
        discovery = {{ kind = "static", endpoints = [{{ address = "{}" }}, {{ address = "{}" }}] }}
        attempt_timeout = "500ms"
        retry = {{ max_retries = 2, deadline = "2s" }}
        "#,
        good.addr(),
        flaky.addr()
    ))?;
    let mesh = Mesh::new(config)?;
    // This workspace builds reqwest's rustls without a default crypto
    // provider; programs with reqwest's default features skip this line.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let users = mesh.reqwest_client("users", reqwest::Client::new())?;

    for i in 0..6 {
        let req = http::Request::get("http://users/orders").body(Bytes::new())?;
        let resp = ServiceExt::<http::Request<Bytes>>::oneshot(users.clone(), req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        println!("call {i}: {status} from {}", String::from_utf8_lossy(&body));
    }
    println!(
        "server side: users-1 received {}, users-2 received {}",
        good.hits(),
        flaky.hits()
    );
    Ok(())
}
