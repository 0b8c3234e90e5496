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
# Cargo treats a registry crate of a given name and version as immutable:
# it never extracts the overlay's crates again (under
# $CARGO_HOME/registry/src/-<hash>/, local registries get a "-" name) nor
# rebuilds them where it built them before. A second run from the same
# checkout would build the dependents against the first run's crates. So:
# fresh copies, and a target dir of this check's own, emptied first.
cargo_home=${CARGO_HOME:-$HOME/.cargo}
rm -rf "$cargo_home"/registry/src/-*/mesh-* "$cargo_home"/registry/cache/-*/mesh-*
export CARGO_TARGET_DIR=target/package-check
rm -rf "$CARGO_TARGET_DIR"
cargo package --workspace --exclude examples --exclude mesh-tests --exclude mesh-bench "$@"
