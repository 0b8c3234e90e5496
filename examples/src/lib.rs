//! Shared code of the mesh examples.
//!
//! The demo's engine lives here, not in the example's `main`, so that the
//! end-to-end test `tests/tests/demo.rs` runs exactly what
//! `cargo run --release -p examples --example demo` shows.

pub mod demo;
