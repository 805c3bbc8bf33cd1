#!/usr/bin/env bash
# The whole test suite, from a fresh clone: `scripts/test.sh`. `.ci/run` calls exactly this.
#
# FUZZ_SECONDS (default 15) bounds each fuzz target's run; 0 skips fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."

start=$SECONDS
# Each step says when it starts (seconds since the suite began), so a slow step shows.
step() { printf '\n== [%ss] %s\n' "$((SECONDS - start))" "$*"; }

step "setup"
scripts/setup.sh

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "tests"
cargo test --locked --workspace

step "Bluetooth against real BlueZ: RFCOMM, the bridge and the error messages in a QEMU guest"
scripts/bluez-vm.sh

# The workspace run unifies features, so tether-core's tests above ran with the host's
# `hw-crc`. Run them again with the CRC back ends firmware uses (the default nibble table,
# `fast-crc`, `table-crc`).
step "tether-core tests with the firmware CRC back ends"
for features in "" fast-crc table-crc async auth; do
  cargo test --locked -p tether-core --lib --tests ${features:+--features "$features"}
done

step "firmware-sim with its std parts (the fault-injecting stream)"
cargo test --locked -p tether-firmware-sim --all-features

step "no_std builds of tether-core and the simulated device"
for target in thumbv6m-none-eabi thumbv7em-none-eabihf; do
  for features in "" "defmt" "fast-crc" "table-crc" "async,defmt" "auth" "auth,defmt"; do
    echo "tether-core for $target, features [${features}]"
    cargo build --locked --quiet --release -p tether-core --target "$target" \
      ${features:+--features "$features"}
  done
  echo "tether-firmware-sim for $target"
  cargo build --locked --quiet --release -p tether-firmware-sim --target "$target"
done

step "footprint of tether-core on a Cortex-M4F and a Cortex-M0 (a gate: default features within 8 KiB flash and 2 KiB RAM on both)"
scripts/size-report.sh

step "real firmware: the Cortex-M3 and Cortex-M0 images under QEMU streaming to tether listen, defmt, footprint"
scripts/firmware-qemu.sh
step "firmware quick start: the STM32F103 template on its HAL builds" && scripts/quickstart.sh

step "the Raspberry Pi package: tether for arm64 cross-compiled into a .deb, its units verified, run under qemu-aarch64"
scripts/package.sh arm64

fuzz_seconds=${FUZZ_SECONDS:-15}
if [[ $fuzz_seconds -gt 0 ]] && cargo +nightly fuzz --version >/dev/null 2>&1; then
  step "fuzzing, ${fuzz_seconds}s per target"
  scripts/fuzz.sh
else
  step "fuzzing skipped (FUZZ_SECONDS=0 or no nightly toolchain with cargo-fuzz)"
fi

step "all checks passed in $((SECONDS - start))s"
