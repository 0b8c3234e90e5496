//! Test doubles for services that use mesh, and for mesh itself.
//!
//! Resilience features are tested against failures, and failures are hard to
//! produce on demand with real dependencies. This crate provides the real
//! thing, scriptable:
//!
//! - [`backend::Backend`]: an HTTP/1 + HTTP/2 server on 127.0.0.1 whose
//!   behaviour can be switched while it runs (healthy, failing with a status
//!   and headers, slow, hanging, dropping the connection, or a scripted
//!   sequence), and which records what it received so tests can assert on the
//!   server's side.
//! - [`consul::FakeConsul`]: a fake Consul agent (registration, TTL checks,
//!   health queries with real blocking) with fault injection, for testing
//!   Consul-aware programs without a cluster.
//!
//! Use it as a dev-dependency only.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use mesh_testkit::backend::{Backend, Behavior, Reply};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let healthy = Backend::builder().name("a").start().await?;
//! let failing = Backend::builder()
//!     .name("b")
//!     .behavior(Reply::status(503).header("retry-after", "1").into())
//!     .start()
//!     .await?;
//! let slow = Backend::builder().behavior(Behavior::slow(Duration::from_millis(200))).start().await?;
//! assert_ne!(healthy.addr(), failing.addr());
//! # let _ = slow;
//! # Ok(())
//! # }
//! ```

pub mod backend;
pub mod consul;

pub use backend::{Backend, Behavior, Reply};
pub use consul::FakeConsul;
