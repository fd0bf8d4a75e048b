#!/usr/bin/env bash
# Run every fuzz target for a bounded time and print how many inputs each ran.
#   fuzz/run.sh [seconds per target]      (default 300)
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-300}"
for t in identity path config manifest token; do
  mkdir -p "fuzz/corpus/$t"
  cp -n fuzz/seeds/$t/* "fuzz/corpus/$t/" 2>/dev/null || true
  echo "== $t (${secs}s)"
  cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
    | grep -E "^Done [0-9]+ runs|stat::number_of_executed_units|SUMMARY|panicked|deadly signal" || true
done
