#!/usr/bin/env bash
# Installs what Tether's build and tests need on a fresh Debian machine with rustup.
# Idempotent: each step checks first and does nothing when it is already done.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

command -v cargo >/dev/null || { log "cargo not found: install Rust with rustup first"; exit 1; }

# `setup.sh build`: only what building `tether` needs (the demo's case): bluer links libdbus
# through pkg-config for the default `bluetooth` feature. Without an argument: everything the
# test suite needs as well.
if [[ ${1:-} == build ]]; then
  build_need=()
  command -v pkg-config >/dev/null || build_need+=(pkg-config)
  pkg-config --exists dbus-1 2>/dev/null || build_need+=(libdbus-1-dev)
  if ((${#build_need[@]})); then
    log "installing ${build_need[*]} (to build tether with Bluetooth)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${build_need[@]}" >/dev/null
  fi
  exit 0
fi

command -v rustup >/dev/null || { log "rustup not found: the embedded targets need it"; exit 1; }

# Embedded targets: the core must keep building for Cortex-M0 (v6-M) and Cortex-M4F (v7E-M);
# the QEMU firmware (firmware-sim/qemu) is a Cortex-M3 (v7-M) image.
targets=(thumbv6m-none-eabi thumbv7em-none-eabihf thumbv7m-none-eabi)
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || { log "adding target $t"; rustup target add "$t"; }
done

components=$(rustup component list --installed)
for c in rustfmt clippy; do
  grep -q "^$c" <<<"$components" || { log "adding component $c"; rustup component add "$c"; }
done

# python3 runs the independent reference implementation of PROTOCOL.md (tests/interop).
if ! command -v python3 >/dev/null; then
  log "installing python3"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null
fi

# QEMU runs the Cortex-M3 firmware (scripts/firmware-qemu.sh); defmt-print decodes its defmt log.
if ! command -v qemu-system-arm >/dev/null; then
  log "installing qemu-system-arm"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-arm >/dev/null
fi
if ! command -v defmt-print >/dev/null; then
  log "installing defmt-print (about a minute and a half)"
  cargo install defmt-print --locked --quiet
fi

# Bluetooth (tether-host's default `bluetooth` feature): bluer links libdbus through
# pkg-config. The BlueZ tests (scripts/bluez-vm.sh) boot a QEMU guest that runs BlueZ's
# bluetoothd, btvirt and D-Bus from this machine's root, with busybox in its initramfs; that
# script also downloads and caches the guest's kernel under target/bluez-vm/.
apt_need=()
pkg-config --exists dbus-1 2>/dev/null || apt_need+=(libdbus-1-dev)
command -v pkg-config >/dev/null || apt_need+=(pkg-config)
command -v qemu-system-x86_64 >/dev/null || apt_need+=(qemu-system-x86)
[[ -x /usr/libexec/bluetooth/bluetoothd ]] || apt_need+=(bluez)
command -v btvirt >/dev/null || apt_need+=(bluez-test-tools)
[[ -x /bin/busybox ]] || apt_need+=(busybox-static)
command -v cpio >/dev/null || apt_need+=(cpio)
command -v depmod >/dev/null || apt_need+=(kmod)
command -v dbus-daemon >/dev/null || apt_need+=(dbus-daemon)
# socat makes the pseudo-terminal pairs the serial tests run over (host/tests/serial.rs).
command -v socat >/dev/null || apt_need+=(socat)
# Brokers for the MQTT sink's tests (host/tests/mqtt.rs): mosquitto, its clients (the
# benchmark's baseline, scripts/mqtt-bench.sh) and nats-server (a clustered broker with
# JetStream and an MQTT interface). The tests start them on loopback ports themselves; the
# packages' own services are not used (Debian may start mosquitto's: it listens on 1883,
# which the tests leave alone).
command -v mosquitto >/dev/null || [[ -x /usr/sbin/mosquitto ]] || apt_need+=(mosquitto)
command -v mosquitto_pub >/dev/null || apt_need+=(mosquitto-clients)
command -v nats-server >/dev/null || [[ -x /usr/sbin/nats-server ]] || apt_need+=(nats-server)
# PostgreSQL for the PostgreSQL sink's tests (host/tests/postgres.rs) and scripts/pg-bench.sh:
# Debian's server programs (/usr/lib/postgresql/VERSION/bin: initdb, postgres, pg_ctl, psql).
# The tests make a cluster of their own in a temporary directory on a free loopback port, run
# as the package's postgres user; the package's own cluster (port 5432) is not used.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || apt_need+=(postgresql)
# valgrind counts the benchmark's instructions a record (tether-bench's `instructions`
# section, scripts/bench.sh; the section says "not measured" without it).
command -v valgrind >/dev/null || apt_need+=(valgrind)
if ((${#apt_need[@]})); then
  log "installing ${apt_need[*]} (Bluetooth build, BlueZ VM, serial, MQTT and PostgreSQL tests, benchmark)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_need[@]}" >/dev/null
fi

# Headless Chromium: the dashboard's test drives the page in a real browser
# (host/tests/browser.rs, through the DevTools protocol).
if ! command -v chromium >/dev/null; then
  log "installing chromium (the dashboard's browser test)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# cargo-fuzz, when a nightly toolchain is there to run it.
if rustup toolchain list | grep -q '^nightly' && ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (about a minute)"
  cargo install cargo-fuzz --locked --quiet
fi
