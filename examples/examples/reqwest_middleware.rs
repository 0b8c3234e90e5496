//! The mesh inside a `reqwest_middleware::ClientWithMiddleware`: reqwest's
//! own builder API (`.get(url).send().await?.error_for_status()?.json()`),
//! with discovery, breakers and retry underneath.
//!
//! ```sh
//! cargo run -p examples --example reqwest_middleware
//! ```
//!
//! Two backends on 127.0.0.1 answering JSON, one failing its first three
//! requests with 503: every call succeeds, a failure is retried on the other
//! endpoint and the failing one is soon routed around. A request to any other host goes through reqwest as usual.

use std::time::Duration;

use mesh_stack::core::BoxError;
use mesh_stack::{Mesh, MeshConfig};
use mesh_testkit::{Backend, Behavior, Reply};
use reqwest_middleware::ClientBuilder;

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)] // printed with Debug
struct Profile {
    id: u32,
    name: String,
}

fn profile() -> Behavior {
    Reply::status(200)
        .header("content-type", "application/json")
        .body(r#"{"id":7,"name":"ada"}"#)
        .into()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let good = Backend::builder()
        .name("users-1")
        .behavior(profile())
        .start()
        .await?;
    let mut flaky = vec![Behavior::status(503); 3];
    flaky.push(profile());
    let flaky = Backend::builder()
        .name("users-2")
        .behavior(Behavior::Sequence(flaky.into()))
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

    // Add the mesh last: it answers requests to the services it knows.
    let reqwest = reqwest::Client::new();
    let client = ClientBuilder::new(reqwest.clone())
        .with(mesh.reqwest_middleware(&reqwest)?)
        .build();

    for i in 0..6 {
        let profile: Profile = client
            .get("http://users/profile/7")
            .timeout(Duration::from_secs(3))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        println!("call {i}: {profile:?}");
    }
    println!(
        "server side: users-1 received {}, users-2 received {} (its 503s were retried on users-1)",
        good.hits(),
        flaky.hits()
    );

    // Any other host: straight through reqwest.
    let direct = client.get(good.url("/health")).send().await?.status();
    println!("direct call to {}: {direct}", good.addr());
    Ok(())
}
