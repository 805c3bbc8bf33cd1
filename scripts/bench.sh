#!/usr/bin/env bash
# The whole-program benchmark, from a fresh clone: `scripts/bench.sh [tether-bench options]`.
# Installs what the build needs (idempotently), builds `tether` and `tether-bench` in release
# mode, and runs `tether-bench`: raw TCP vs bulk records, 16-byte records into CSV (window
# 4,096 and at the defaults), 1 to 1,000 devices at full rate (the listener's cost curve),
# stop-and-wait vs the tutorial's own Python server, a record's round trip vs a raw TCP
# ping-pong, the listener's memory with 100, 1,000 and 10,000 idle devices, the dashboard's
# cost, all on loopback, and the instructions a record under callgrind (valgrind). Prints a
# table; writes it as JSON to bench.json in the current directory (unless --json PATH is
# given) and, for a full run, the report docs/performance.md that the README
# links, docs/bench.json and the SVG curves beside it (unless --report PATH is given). A few
# minutes once built; run it on an otherwise idle machine.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/setup.sh" build
command -v python3 >/dev/null || { echo "bench: python3 is needed for the tutorial's server (apt-get install python3)" >&2; exit 2; }
cargo build --locked --quiet --release --manifest-path "$repo/Cargo.toml" -p tether-host --bin tether
cargo build --locked --quiet --release --manifest-path "$repo/Cargo.toml" -p tether-bench --bin tether-bench
args=("$@")
# Only a full run replaces the published report and results; --quick and --only runs are
# checks. A full run is compared with the last committed results (docs/bench.json: the
# regression guard, a section of the report), replaces them, and draws the cost curves
# beside the report.
if [[ " ${args[*]} " != *" --report "* && " ${args[*]} " != *" --quick "* && " ${args[*]} " != *" --only "* ]]; then
  [[ -f "$repo/docs/bench.json" ]] && args+=(--previous "$repo/docs/bench.json")
  [[ " ${args[*]} " == *" --json "* ]] || args+=(--json "$repo/docs/bench.json")
  args+=(--report "$repo/docs/performance.md" --plots "$repo/docs")
fi
[[ " ${args[*]} " == *" --json "* ]] || args+=(--json bench.json)
exec "$repo/target/release/tether-bench" --tether "$repo/target/release/tether" "${args[@]}"
