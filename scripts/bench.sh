#!/usr/bin/env bash
# The whole-program benchmark, from a fresh clone: `scripts/bench.sh [tether-bench options]`.
# Installs what the build needs (idempotently), builds `tether` and `tether-bench` in release
# mode, and runs `tether-bench`: raw TCP vs bulk records, 16-byte records into CSV,
# stop-and-wait vs the tutorial's own Python server, a record's round trip vs a raw TCP
# ping-pong, and the listener's memory with 1,000 idle devices, all on loopback. Prints a
# table; writes it as JSON to bench.json in the current directory (unless --json PATH is
# given) and, for a full run, the report docs/performance.md that the README links (unless
# --report PATH is given). About 12 s once built; run it on an otherwise idle machine.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/setup.sh" build
command -v python3 >/dev/null || { echo "bench: python3 is needed for the tutorial's server (apt-get install python3)" >&2; exit 2; }
cargo build --locked --quiet --release --manifest-path "$repo/Cargo.toml" -p tether-host --bin tether
cargo build --locked --quiet --release --manifest-path "$repo/Cargo.toml" -p tether-bench --bin tether-bench
args=("$@")
[[ " ${args[*]} " == *" --json "* ]] || args+=(--json bench.json)
# Only a full run replaces the published report; --quick and --only runs are checks.
if [[ " ${args[*]} " != *" --report "* && " ${args[*]} " != *" --quick "* && " ${args[*]} " != *" --only "* ]]; then
  args+=(--report "$repo/docs/performance.md")
fi
exec "$repo/target/release/tether-bench" --tether "$repo/target/release/tether" "${args[@]}"
