#!/usr/bin/env bash
# The whole-program benchmark, from a fresh clone: `scripts/bench.sh [tether bench options]`.
# Installs what the build needs (idempotently), builds `tether` in release mode, and runs
# `tether bench`: raw TCP vs bulk records, 16-byte records into CSV, stop-and-wait vs the
# tutorial's own Python server, a record's round trip vs a raw TCP ping-pong, and the
# listener's memory with 1,000 idle devices, all on loopback. Prints a table; writes it as
# JSON to bench.json in the current directory unless --json PATH is given.
# About 12 s once built (the first release build takes 2 minutes); run it on an otherwise idle
# machine.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/setup.sh"
cargo build --locked --quiet --release --manifest-path "$repo/Cargo.toml" -p tether-host --bin tether
args=("$@")
[[ " ${args[*]} " == *" --json "* ]] || args+=(--json bench.json)
exec "$repo/target/release/tether" bench "${args[@]}"
