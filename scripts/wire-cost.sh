#!/usr/bin/env bash
# Bytes on the wire per record over a serial line, each direction, and the records/s that
# allows at 115200 and 921600 baud 8N1 (10 bits a byte): `scripts/wire-cost.sh [RECORDS]`.
# Streams RECORDS (default 10,000) 16-byte lines with `tether send serial://A` to
# `tether listen serial://B` over a socat pty pair that dumps what crosses it each way.
# A pty has no baud rate: the bytes are measured, the rates computed from them.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-10000}
command -v socat >/dev/null || { echo "wire-cost: socat is needed (scripts/setup.sh installs it)" >&2; exit 2; }
cargo build --locked --quiet --release --manifest-path "$repo/Cargo.toml" -p tether-host --bin tether
tether="$repo/target/release/tether"
dir=$(mktemp -d)
cleanup() { kill "${listener:-}" "${socat:-}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
socat -r "$dir/up" -R "$dir/down" "pty,raw,echo=0,link=$dir/A" "pty,raw,echo=0,link=$dir/B" & socat=$!
for _ in $(seq 100); do [[ -e $dir/A && -e $dir/B ]] && break; sleep 0.05; done
"$tether" listen "serial://$dir/B" --csv "$dir/r.csv" </dev/null 2>"$dir/listen.log" & listener=$!
sleep 0.3
seq -f '%016g' 0 $((n - 1)) >"$dir/in"
"$tether" send "serial://$dir/A" "$dir/in" 2>"$dir/send.log" || { cat "$dir/send.log" >&2; exit 1; }
kill -INT "$listener"; wait "$listener" || true
rows=$(($(wc -l <"$dir/r.csv") - 1))
[[ $rows -eq $n ]] || { echo "wire-cost: $rows rows in the CSV, $n sent" >&2; exit 1; }
up=$(stat -c %s "$dir/up"); down=$(stat -c %s "$dir/down")
awk -v up="$up" -v down="$down" -v n="$n" 'BEGIN {
  per = up / n
  printf "16-byte records, protocol v1, %d records over a pty pair:\n", n
  printf "  device -> host: %d bytes, %.2f bytes a record (%.1f %% payload)\n", up, per, 1600 / per
  printf "  host -> device: %d bytes, %.2f bytes a record (%.1f %% of the forward bytes)\n", down, down / n, 100 * down / up
  printf "  at 115200 baud 8N1: %.0f records/s; at 921600 baud 8N1: %.0f records/s\n", 11520 / per, 92160 / per
}'
