#!/usr/bin/env bash
# Every publishable crate compiles, without warnings, with no default
# features and with its defaults alone (what a user who picks that one crate
# gets); the all-features build is clippy's. `cargo check`, one crate at a
# time, so feature unification inside the workspace cannot hide a missing
# feature.
set -euo pipefail
cd "$(dirname "$0")/.."
crates=(mesh-core mesh-testkit mesh-balance mesh-breaker mesh-retry mesh-auth mesh-discovery mesh-stack)
fail=0
for crate in "${crates[@]}"; do
  for features in --no-default-features ""; do
    echo "features-check: $crate ${features:-(default features)}"
    # shellcheck disable=SC2086 # an empty $features is no argument
    out=$(cargo check -q -p "$crate" $features --message-format short 2>&1) || {
      echo "$out" >&2
      exit 1
    }
    if grep -E '(^|: )(warning|error)(\[|:)' <<<"$out" >&2; then
      fail=1
    fi
  done
done
exit "$fail"
