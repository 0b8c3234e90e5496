#!/usr/bin/env bash
# Dependency budget: each publishable crate's count of distinct crates in its
# normal dependency tree (default features, itself included), as
#   cargo tree -e normal --prefix none -p <crate> | sort -u | wc -l
# (after dropping cargo's "(*)" repeat marks). Fails when a count exceeds its
# budget, so heavy dependencies cannot creep back into crates users pick
# alone. Budgets sit a little above today's counts (README, "Picking single
# crates"); raise one only on purpose, in the same change as the README.
# Offline: it reads Cargo.lock and the index cargo already fetched.
set -euo pipefail
cd "$(dirname "$0")/.."

# crate            budget   today
budgets=(
  "mesh-core        24"    # 21
  "mesh-breaker     25"    # 22
  "mesh-retry       31"    # 28
  "mesh-balance     27"    # 24
  "mesh-auth        50"    # 45
  "mesh-discovery   140"   # 130 (default: consul-tls, dns)
  "mesh-stack       155"   # 147 (default: serde, tls, dns)
  "mesh-testkit     60"    # 56
)
# Crates that must never appear in these crates' default trees.
forbidden='^(hyper|hyper-util|h2|reqwest|rustls|ring|hickory-resolver) '
lean=(mesh-core mesh-breaker mesh-retry mesh-balance)

count() {
  cargo tree --offline -q -e normal --prefix none -p "$1" "${@:2}" | sed 's/ (\*)$//' | sort -u
}

fail=0
for entry in "${budgets[@]}"; do
  read -r crate budget <<<"$entry"
  n=$(count "$crate" | wc -l)
  if [ "$n" -gt "$budget" ]; then
    echo "dep-budget: $crate has $n crates in its normal tree, budget $budget" >&2
    fail=1
  else
    printf 'dep-budget: %-15s %4d / %d\n' "$crate" "$n" "$budget"
  fi
done
for crate in "${lean[@]}"; do
  if heavy=$(count "$crate" | grep -E "$forbidden"); then
    echo "dep-budget: $crate pulls in $(echo "$heavy" | tr '\n' ' ')" >&2
    fail=1
  fi
done
# Every crate compiles with no default features, without the heavy ones too.
if heavy=$(count mesh-discovery --no-default-features | grep -E "$forbidden"); then
  echo "dep-budget: mesh-discovery --no-default-features pulls in $(echo "$heavy" | tr '\n' ' ')" >&2
  fail=1
fi
exit "$fail"
