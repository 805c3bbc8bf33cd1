#!/usr/bin/env bash
# Real firmware under QEMU: tether-core and the device model in the images of
# firmware-sim/qemu, streaming to `tether listen` on 127.0.0.1: a Cortex-M3 on QEMU's
# lm3s6965evb (thumbv7m) and a Cortex-M0 on QEMU's microbit (nRF51, thumbv6m), built from
# the same sources.
#
#   scripts/firmware-qemu.sh             what the test suite runs: builds both images, their
#                                        baselines without Tether and the M3's table-crc and
#                                        defmt variants; checks format and clippy; runs the
#                                        end-to-end tests (tests/tests/firmware_qemu.rs);
#                                        runs the defmt image and decodes its log; prints the
#                                        footprint report of both
#   scripts/firmware-qemu.sh run [PORT] [m0]
#                                        one command to watch it: a listener on
#                                        127.0.0.1:PORT (default 5003) and the firmware (the
#                                        M3's, or the M0's with `m0`) streaming 3,000 readings
#                                        to it; CSV in firmware.csv
#   scripts/firmware-qemu.sh size        the footprint report only
#
# Installs what it needs when missing (as scripts/setup.sh does): the thumbv7m-none-eabi and
# thumbv6m-none-eabi targets, llvm-tools, qemu-system-arm, and defmt-print (for the default
# mode). Every QEMU run is under `timeout`; the tests bound every wait.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

mode=${1:-all}
fw=firmware-sim/qemu
target=thumbv7m-none-eabi
m0_target=thumbv6m-none-eabi
dir=$root/target/firmware-qemu # also fw/.cargo/config.toml's target-dir
elf=$dir/$target/release/tether-firmware
baseline=$dir/$target/release/baseline
m0_elf=$dir/$m0_target/release/tether-firmware
m0_baseline=$dir/$m0_target/release/baseline
table_dir=$root/target/firmware-qemu-table-crc
defmt_dir=$root/target/firmware-qemu-defmt
tether_bin=${CARGO_TARGET_DIR:-$root/target}/debug/tether

log() { printf 'firmware-qemu: %s\n' "$*" >&2; }
step() { printf '\n-- %s\n' "$*"; }

# ---- what it needs (idempotent) ------------------------------------------------------------
command -v rustup >/dev/null || { log "rustup not found"; exit 1; }
installed=$(rustup target list --installed)
for t in "$target" "$m0_target"; do
  grep -qx "$t" <<<"$installed" || { log "adding target $t"; rustup target add "$t"; }
done
components=$(rustup component list --installed)
grep -q '^llvm-tools' <<<"$components" || { log "adding component llvm-tools"; rustup component add llvm-tools; }
llvm=$(dirname "$(ls "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-size | head -n1)")
if ! command -v qemu-system-arm >/dev/null; then
  log "installing qemu-system-arm"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-arm >/dev/null
fi
if [[ $mode == all ]] && ! command -v defmt-print >/dev/null; then
  log "installing defmt-print (about a minute and a half)"
  cargo install defmt-print --locked --quiet
fi

# ---- helpers ------------------------------------------------------------------------------------
# cargo reads .cargo/config.toml from the current directory: build from the firmware's own.
fw_cargo() { (cd "$fw" && CARGO_TARGET_DIR=${FW_TARGET_DIR:-$dir} cargo "$@"); }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

listener_pid=
stop_listener() {
  if [[ -n $listener_pid ]] && kill -0 "$listener_pid" 2>/dev/null; then
    kill -INT "$listener_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$listener_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$listener_pid" 2>/dev/null || true
  fi
  listener_pid=
}
trap stop_listener EXIT

# start_listener PORT CSV LOG: `tether listen` in the background, waiting until it listens.
start_listener() {
  RUST_LOG=${RUST_LOG:-info} NO_COLOR=1 timeout 300 "$tether_bin" listen "tcp://127.0.0.1:$1" --csv "$2" 2>"$3" &
  listener_pid=$!
  for _ in $(seq 200); do
    grep -q 'listening on' "$3" 2>/dev/null && return 0
    sleep 0.05
  done
  log "the listener did not start:"; cat "$3" >&2; return 1
}

# qemu_client ELF PORT [MACHINE]: boots ELF with UART0 connected to 127.0.0.1:PORT,
# semihosting on, on QEMU's MACHINE (default lm3s6965evb).
qemu_client() {
  timeout --kill-after=5 120 qemu-system-arm -M "${3:-lm3s6965evb}" -nographic -monitor none \
    -semihosting-config enable=on,target=native \
    -serial "tcp:127.0.0.1:$2,nodelay=on" -kernel "$1"
}

build() {
  step "building the firmware (release): tether-firmware and baseline for $target (Cortex-M3) and $m0_target (Cortex-M0)"
  fw_cargo build --locked --quiet --release --bins
  fw_cargo build --locked --quiet --release --bins --target "$m0_target"
  FW_TARGET_DIR=$table_dir fw_cargo build --locked --quiet --release --bin tether-firmware --features table-crc
}

size_report() {
  step "footprint of Tether in the QEMU firmware, Cortex-M3 (report, not a gate)"
  python3 scripts/firmware-size.py "$llvm" "$elf" "$baseline" "$table_dir/$target/release/tether-firmware"
  step "footprint of Tether in the QEMU firmware, Cortex-M0 (report, not a gate)"
  python3 scripts/firmware-size.py "$llvm" "$m0_elf" "$m0_baseline"
}

case $mode in
  size)
    build
    size_report
    ;;
  run)
    port=${2:-5003}
    machine=lm3s6965evb
    if [[ ${3:-} == m0 ]]; then machine=microbit; elf=$m0_elf; fi
    build
    cargo build --locked --quiet -p tether-host
    rm -f firmware.csv
    listen_log=$(mktemp)
    start_listener "$port" firmware.csv "$listen_log"
    log "booting the firmware on QEMU, its UART connected to tether listen on 127.0.0.1:$port"
    status=0
    qemu_client "$elf" "$port" "$machine" || status=$?
    stop_listener
    echo "tether listen said:"
    sed 's/^/  /' "$listen_log"
    rm -f "$listen_log"
    echo "firmware exited with $status; $(($(wc -l <firmware.csv) - 1)) records in firmware.csv"
    exit "$status"
    ;;
  all)
    build
    step "format and clippy of the firmware crate (default and defmt features)"
    (cd "$fw" && cargo fmt --check)
    fw_cargo clippy --locked --quiet --release --bins -- -D warnings
    fw_cargo clippy --locked --quiet --release --bins --target "$m0_target" -- -D warnings
    FW_TARGET_DIR=$defmt_dir fw_cargo clippy --locked --quiet --release --bins --features defmt -- -D warnings

    step "end-to-end: the firmware under QEMU streaming to tether listen (tests/tests/firmware_qemu.rs)"
    cargo build --locked --quiet -p tether-host
    TETHER_FIRMWARE_ELF=$elf TETHER_FIRMWARE_ELF_M0=$m0_elf TETHER_BIN=$tether_bin TETHER_QEMU_REQUIRED=1 \
      cargo test --locked -p tether-tests --test firmware_qemu -- --nocapture --test-threads=1

    step "defmt: the firmware built with --features defmt, its log decoded by defmt-print"
    FW_TARGET_DIR=$defmt_dir fw_cargo build --locked --quiet --release --bin tether-firmware --features defmt
    defmt_elf=$defmt_dir/$target/release/tether-firmware
    tmp=$(mktemp -d)
    port=$(free_port)
    start_listener "$port" "$tmp/readings.csv" "$tmp/listen.log"
    status=0
    qemu_client "$defmt_elf" "$port" >"$tmp/defmt.bin" 2>"$tmp/qemu.err" || status=$?
    stop_listener
    defmt-print -e "$defmt_elf" <"$tmp/defmt.bin" >"$tmp/defmt.txt" 2>&1 || true
    sed 's/^/  /' "$tmp/defmt.txt"
    if [[ $status -ne 0 ]] || ! grep -q 'done at' "$tmp/defmt.txt"; then
      log "the defmt firmware failed (exit $status) or its log did not decode"
      cat "$tmp/qemu.err" "$tmp/listen.log" >&2
      exit 1
    fi
    echo "defmt: $(wc -c <"$tmp/defmt.bin") bytes of defmt frames decoded; $(($(wc -l <"$tmp/readings.csv") - 1)) records in the CSV"
    rm -rf "$tmp"

    size_report
    ;;
  *)
    echo "usage: $0 [run [PORT] [m0] | size]" >&2
    exit 2
    ;;
esac
