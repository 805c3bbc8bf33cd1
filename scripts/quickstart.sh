#!/usr/bin/env bash
# The firmware quick start builds: `scripts/quickstart.sh`.
#
# firmware-sim/quickstart-stm32f1 is a template firmware for an STM32F103 (Blue Pill,
# Cortex-M3) on its HAL, stm32f1xx-hal, from crates.io (no other source): tether-core's
# embedded-hal-nb driver over the HAL's UART, receiving in the UART interrupt through
# io::isr. The suite cannot run it (it needs the board); this checks that it keeps building
# against the core as the core changes: format, a release build for thumbv7m-none-eabi with
# warnings as errors, and its size. (No clippy: it would compile the HAL a second time, and
# the HAL is most of the time this takes. `cargo clippy` in the directory lints it.)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
qs=firmware-sim/quickstart-stm32f1
target=thumbv7m-none-eabi

log() { printf 'quickstart: %s\n' "$*" >&2; }

installed=$(rustup target list --installed)
grep -qx "$target" <<<"$installed" || { log "adding target $target"; rustup target add "$target"; }

start=$SECONDS
# cargo reads .cargo/config.toml from the current directory: build from the crate's own.
cd "$qs"
cargo fmt --check
# `cargo rustc … -- -D warnings` denies warnings in the quick start only, not in its
# dependencies (RUSTFLAGS would also replace the linker script flag of .cargo/config.toml).
cargo rustc --locked --quiet --release --bin tether-quickstart -- -D warnings
elf=$root/target/quickstart/$target/release/tether-quickstart
llvm=$(dirname "$(ls "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-size | head -n1)")
read -r text data bss < <("$llvm/llvm-size" "$elf" | awk 'NR==2 {print $1, $2, $3}')
echo "quickstart (STM32F103, $target): builds; flash $((text + data)) bytes, static RAM $((data + bss)) bytes; $((SECONDS - start)) s"
