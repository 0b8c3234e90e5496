//! An axum server that registers itself with Consul, is discovered, drains
//! and deregisters on graceful shutdown.
//!
//! ```text
//! cargo run -p examples --example consul_registration
//! ```
//!
//! With `CONSUL_HTTP_ADDR` set (and `CONSUL_HTTP_TOKEN` etc. as the `consul`
//! CLI reads them) it talks to that agent; without it, it starts the fake
//! Consul from `mesh-testkit` in-process. It shuts down by itself after a few
//! seconds (or on Ctrl-C).

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use mesh_discovery::EmptyPolicy;
use mesh_discovery::consul::{
    CheckDefinition, CheckStatus, ConsulClient, ConsulConfig, ConsulDiscovery, Registration,
    ServiceRegistration, WatchConfig,
};
use mesh_testkit::consul::FakeConsul;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_target(false).init();

    // A real agent when CONSUL_HTTP_ADDR says where; the fake one otherwise.
    let _fake;
    let client = if std::env::var_os("CONSUL_HTTP_ADDR").is_some() {
        ConsulClient::from_env()?
    } else {
        let fake = FakeConsul::start().await?;
        println!(
            "CONSUL_HTTP_ADDR is unset: using an in-process fake Consul at {}",
            fake.url()
        );
        let client = ConsulClient::new(&ConsulConfig::new(fake.url()))?;
        _fake = fake;
        client
    };

    // The server.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/", get(|| async { "hello from mesh\n" }))
        .route("/health", get(|| async { "ok" }));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
    });

    // Register, with a TTL check the handle keeps passing in the background.
    let id = format!("hello-{}", addr.port());
    let registration = Registration::register(
        client.clone(),
        ServiceRegistration::new("hello", addr.port())
            .id(&id)
            .address(addr.ip().to_string())
            .tags(["example"])
            .meta("version", env!("CARGO_PKG_VERSION"))
            .check(
                CheckDefinition::ttl(format!("{id}-ttl"), Duration::from_secs(10))
                    .deregister_after(Duration::from_secs(60)),
            ),
    )
    .await?;
    println!("registered {id} at {addr}");

    // Discover it, as a client of the service would.
    let mut watch = WatchConfig::new("hello");
    watch.wait = Duration::from_secs(10);
    watch.empty = EmptyPolicy::Publish;
    let hello = ConsulDiscovery::spawn(client, watch)?;
    if let Ok(Some(set)) =
        tokio::time::timeout(Duration::from_secs(15), hello.wait_for(|s| !s.is_empty())).await
    {
        for ep in &set {
            println!(
                "discovered {} at {} (weight {})",
                ep.key(),
                ep.address(),
                ep.weight()
            );
        }
    }

    // Run until Ctrl-C, or for 3 seconds so the example ends by itself.
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = tokio::time::sleep(Duration::from_secs(3)) => {}
    }

    // Graceful shutdown: drain (watchers drop us), stop accepting, finish
    // in-flight requests, then deregister.
    registration.set_status(CheckStatus::Critical, "draining");
    let drained = tokio::time::timeout(
        Duration::from_secs(15),
        hello.wait_for(mesh_discovery::EndpointSet::is_empty),
    )
    .await;
    println!("drained: {}", drained.is_ok());
    let _ = stop_tx.send(());
    server.await??;
    registration.deregister().await?;
    println!("deregistered {id}; bye");
    Ok(())
}
