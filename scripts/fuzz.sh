#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/, cargo fuzz on nightly) for FUZZ_SECONDS each (default 15), on
# scratch copies of their corpora: `scripts/fuzz.sh [TARGET…]` (all targets by default).
# Exits non-zero as soon as a target fails (a crash, a leak, a time-out), with its log's end.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzz_seconds=${FUZZ_SECONDS:-15}
if (($#)); then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi
for target in "${targets[@]}"; do
  # Run on a scratch copy of the corpus so the checkout is left as it was.
  corpus=$(mktemp -d)
  cp -r "fuzz/corpus/$target/." "$corpus/" 2>/dev/null || true
  echo "fuzz target $target (executions, edges covered as cov, features as ft):"
  # The run's own exit status decides (a crash, a leak, a time-out is non-zero); its log
  # goes to a file first, so no filter in a pipeline can hide that status.
  log=$(mktemp)
  status=0
  cargo +nightly fuzz run --fuzz-dir fuzz --target-dir target/fuzz "$target" "$corpus" -- \
    -max_total_time="$fuzz_seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E '^(Done|#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb)|ERROR|panicked' "$log" || true
  rm -rf "$corpus"
  if [[ $status -ne 0 ]]; then
    echo "fuzz target $target failed (exit $status); the end of its log:"
    tail -n 40 "$log"
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
done
