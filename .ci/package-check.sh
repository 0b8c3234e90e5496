#!/usr/bin/env bash
# Packages every publishable crate as crates.io would receive it and builds
# each from its package: `cargo package --workspace` puts the workspace's
# own crates in a local registry overlay, so crates that depend on each other
# (by path and `version = "0.1.0"`) verify before any is published. The
# order `cargo publish` needs is the dependency order: mesh-core,
# mesh-testkit, mesh-balance, mesh-breaker, mesh-retry, mesh-auth,
# mesh-discovery, mesh-stack. examples, tests and benches are
# `publish = false`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Cargo extracts the overlay's crates under $CARGO_HOME/registry/src/-<hash>/
# (local registries get a "-" name) and never extracts a name-version it
# has again: a second run from the same checkout path would build the
# dependents against the first run's sources. Drop those copies first.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
rm -rf "$cargo_home"/registry/src/-*/mesh-* "$cargo_home"/registry/cache/-*/mesh-*
cargo package --workspace --exclude examples --exclude mesh-tests --exclude mesh-bench "$@"
