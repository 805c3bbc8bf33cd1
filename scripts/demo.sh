#!/usr/bin/env bash
# The main job, from a fresh clone: `scripts/demo.sh [tether demo options]`.
# Installs what the build needs and nothing else (`setup.sh build`, idempotently), builds
# `tether` in release mode, and runs
# `tether demo`: a listener on 127.0.0.1 and simulated devices streaming readings to it,
# writing tether-demo/ in the current directory (a CSV file per record kind, columns named;
# or --csv FILE for one file), checked at the end.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/setup.sh" build
cargo build --locked --quiet --release --manifest-path "$repo/Cargo.toml" -p tether-host --bin tether
exec "$repo/target/release/tether" demo "$@"
