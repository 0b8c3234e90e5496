#!/usr/bin/env bash
# Instructions per call of the router and stack variants under callgrind:
# each variant runs 20,000 and 40,000 calls; the difference / 20,000 is the
# per-call count (setup cancels out). Deterministic, unlike wall-clock figures.
# Usage (from the repo root): benches/ir.sh [variant ...]
set -eu
cargo build -q --release -p mesh-bench --bin ir
BIN=${CARGO_TARGET_DIR:-target}/release/ir
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=(bare router_p2c_16 stack_16 tower_balance_16 tower_buffer_balance_16)
d=$(mktemp -d)
ir() { valgrind --tool=callgrind --callgrind-out-file="$d/cg" "$BIN" "$1" "$2" >/dev/null 2>&1
       grep -E '^summary:' "$d/cg" | awk '{print $2}'; }
printf '%-26s %12s\n' variant 'Ir/call'
for v in "${variants[@]}"; do
  a=$(ir "$v" 20000); b=$(ir "$v" 40000)
  awk -v v="$v" -v a="$a" -v b="$b" 'BEGIN { printf "%-26s %12.0f\n", v, (b - a) / 20000 }'
done
rm -rf "$d"
