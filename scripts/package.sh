#!/usr/bin/env bash
# Debian packages of tether: `scripts/package.sh [amd64] [arm64]` (both by default), written
# to target/debian/. The arm64 one (a Raspberry Pi with a 64-bit OS) is cross-compiled here,
# Bluetooth included (libdbus for arm64 through Debian's multiarch). Each package is checked:
# its files, its architecture, its systemd units (systemd-analyze verify), and that its tether
# starts and serves: the arm64 binary under qemu-aarch64 user mode, a listener that a native
# `tether send` streams to, every line in its CSV once; then a short benchmark of the
# package's tether on both sides (the arm64 one under qemu-aarch64: a smoke test, whose rate
# is logged beside amd64's), every record once.
#
# Installs what it needs, idempotently: cargo-deb, the aarch64 target and cross gcc, libdbus
# for arm64, qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
log() { printf 'package: %s\n' "$*" >&2; }

arches=("$@")
((${#arches[@]})) || arches=(amd64 arm64)

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
scripts/setup.sh build
command -v cargo-deb >/dev/null || { log "installing cargo-deb (about a minute)"; cargo install cargo-deb --locked --quiet; }
command -v systemd-analyze >/dev/null || { log "installing systemd (for systemd-analyze)"; apt-get update -qq; apt_install systemd; }
if [[ " ${arches[*]} " == *" arm64 "* ]]; then
  need=()
  command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  [[ -e /usr/lib/aarch64-linux-gnu/pkgconfig/dbus-1.pc ]] || need+=(libdbus-1-dev:arm64)
  command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
  if ((${#need[@]})); then
    log "installing ${need[*]}"
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    apt-get update -qq
    apt_install "${need[@]}"
  fi
  rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
fi

# Checks one package: its contents, architecture and units, then runs its tether (under
# `runner`, empty for a native one) as a listener that the native tether streams to.
check() {
  local deb=$1 arch=$2 runner=$3
  local dir; dir=$(mktemp -d)
  # Outputs captured first: `grep -q` closing a pipe early would fail the pipeline under
  # pipefail (dpkg-deb killed by SIGPIPE: this check once failed a good package so).
  local info; info=$(dpkg-deb --info "$deb")
  grep -q "Architecture: $arch" <<<"$info" || { log "$deb is not $arch"; exit 1; }
  dpkg-deb -x "$deb" "$dir/root"
  for f in usr/bin/tether lib/systemd/system/tether-listen.service lib/systemd/system/tether-bridge.service etc/default/tether usr/share/doc/tether/README.md; do
    [[ -e $dir/root/$f ]] || { log "$deb lacks $f"; exit 1; }
  done
  # systemd-analyze only warns about an unknown key: any word from it is a failure.
  local units="$dir/units"; mkdir "$units"
  sed "s|/usr/bin/tether|$dir/root/usr/bin/tether|" "$dir/root/lib/systemd/system/tether-listen.service" >"$units/tether-listen.service"
  sed "s|/usr/bin/tether|$dir/root/usr/bin/tether|" "$dir/root/lib/systemd/system/tether-bridge.service" >"$units/tether-bridge.service"
  local verdict; verdict=$(systemd-analyze verify "$units"/*.service 2>&1) || true
  [[ -z $verdict ]] || { log "systemd-analyze verify: $verdict"; exit 1; }
  local bin=$dir/root/usr/bin/tether
  local version; version=$($runner "$bin" --version) || true
  grep -q '^tether ' <<<"$version" || { log "$arch tether does not start"; exit 1; }
  $runner "$bin" listen tcp://127.0.0.1:0 --csv "$dir/r.csv" </dev/null 2>"$dir/listen.log" &
  local listener=$!
  local addr=""
  for _ in $(seq 200); do
    addr=$(grep -o 'listening on tcp://[0-9.:]*' "$dir/listen.log" | head -n1 | sed 's|listening on ||') || true
    [[ -n $addr ]] && break
    sleep 0.1
  done
  [[ -n $addr ]] || { log "$arch listener did not start: $(cat "$dir/listen.log")"; kill "$listener"; exit 1; }
  seq 1 2000 | sed 's/$/,from-the-host/' | "$root/target/debug/tether" send "$addr" 2>/dev/null
  kill -INT "$listener"; wait "$listener"
  local rows; rows=$(($(wc -l <"$dir/r.csv") - 1))
  [[ $rows -eq 2000 ]] || { log "$arch listener wrote $rows rows of 2000"; exit 1; }
  log "$deb: $arch, $(stat -c %s "$deb") bytes; units verified; its tether${runner:+ (under $runner)} took 2000 lines from a native sender, each once"
  smoke_bench "$bin" "$arch" "$runner" "$dir"
  rm -rf "$dir"
}

# A short benchmark of the package's tether on both sides (under `runner`: arm64 under
# qemu-aarch64 user mode, whose rate is emulation's, not a Pi's: the instruction count a
# record, tether-bench's `instructions`, is the figure that carries over): SMOKE_RECORDS
# 16-byte lines (default 100,000) from `tether send FILE` to `tether listen --csv`, each
# written once (the check that can fail), the rate logged beside the other architecture's.
smoke_bench() {
  local bin=$1 arch=$2 runner=$3 dir=$4 n=${SMOKE_RECORDS:-100000}
  rm -f "$dir/bench.csv"
  python3 -c "import sys; sys.stdout.write(''.join('%08d,%07d\n' % (i, i % 10000000) for i in range($n)))" >"$dir/lines"
  $runner "$bin" listen tcp://127.0.0.1:0 --csv "$dir/bench.csv" </dev/null 2>"$dir/bench-listen.log" &
  local listener=$! addr=""
  for _ in $(seq 200); do
    addr=$(grep -o 'listening on tcp://[0-9.:]*' "$dir/bench-listen.log" | head -n1 | sed 's|listening on ||') || true
    [[ -n $addr ]] && break
    sleep 0.1
  done
  [[ -n $addr ]] || { log "$arch benchmark listener did not start: $(cat "$dir/bench-listen.log")"; kill "$listener"; exit 1; }
  local start end
  start=$(date +%s.%N)
  $runner "$bin" send "$addr" "$dir/lines" 2>"$dir/bench-send.log" || { log "$arch benchmark sender failed: $(tail -n3 "$dir/bench-send.log")"; kill "$listener"; exit 1; }
  end=$(date +%s.%N)
  kill -INT "$listener"; wait "$listener"
  local rows; rows=$(($(wc -l <"$dir/bench.csv") - 1))
  [[ $rows -eq $n ]] || { log "$arch benchmark: the listener wrote $rows rows of $n"; exit 1; }
  local rate; rate=$(python3 -c "print(f'{$n / ($end - $start):,.0f}')")
  log "smoke benchmark, $arch${runner:+ under $runner}: $n 16-byte records from its tether send to its tether listen in $(python3 -c "print(f'{$end - $start:.2f}')") s, $rate records/s, each once"
}

# The native sender of the checks: the debug build (the test suite has it already).
cargo build --locked --quiet -p tether-host --bin tether
for arch in "${arches[@]}"; do
  case $arch in
    amd64)
      deb=$(cargo deb --locked --quiet --strip -p tether-host --output target/debian/ 2>/dev/null | tail -n1)
      check "$deb" amd64 ""
      ;;
    arm64)
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
      export PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig PKG_CONFIG_SYSROOT_DIR=/
      deb=$(cargo deb --locked --quiet --strip -p tether-host --target aarch64-unknown-linux-gnu --output target/debian/ 2>/dev/null | tail -n1)
      check "$deb" arm64 qemu-aarch64
      ;;
    *) log "unknown architecture $arch (amd64, arm64)"; exit 2 ;;
  esac
done
