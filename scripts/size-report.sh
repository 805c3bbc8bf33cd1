#!/usr/bin/env bash
# What tether-core costs on a Cortex-M4F and on a Cortex-M0, in flash and static RAM:
# `scripts/size-report.sh`.
#
# Builds the two images of firmware-sim/size-probe (release, size optimised, LTO) for
# thumbv7em-none-eabihf (Cortex-M4F) and for thumbv6m-none-eabi (Cortex-M0: Thumb-1, no
# hardware divide, no compare-and-swap): `baseline` (a UART loop and a millisecond tick) and
# `with_link` (the same plus a `Link<LinkStorage<4, 4, 128>>` that is connected, fed, polled
# and sent through), and prints their sizes, the difference (the core's share) against the
# design targets, and where the difference goes.
#
# A gate for the default features, on both targets: it exits 1 when the core's share of the
# default build is over 8 KiB of flash or 2 KiB of static RAM (the footprint the README
# promises firmware engineers) on either, after printing the whole report. The `table-crc`
# and protocol version 2 (`v2`) figures are reported only. SIZE_FLASH_LIMIT /
# SIZE_RAM_LIMIT lower the limits (to see the gate fail, say); SIZE_TARGETS=thumbv6m-none-eabi
# reports (and gates) one target only.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

targets=${SIZE_TARGETS:-thumbv7em-none-eabihf thumbv6m-none-eabi}
probe=firmware-sim/size-probe
flash_target=${SIZE_FLASH_LIMIT:-8192} # bytes: the core on a Cortex-M, window 4 x 128-byte frames
ram_target=${SIZE_RAM_LIMIT:-2048}
# The repository's own target/ (also set in the probe's .cargo/config.toml); exported so a
# CARGO_TARGET_DIR from the caller's environment cannot send the images elsewhere.
export CARGO_TARGET_DIR="$root/target/size-probe"

log() { printf 'size-report: %s\n' "$*" >&2; }

# ---- what it needs (idempotent) -------------------------------------------------------
command -v rustup >/dev/null || { log "rustup not found"; exit 1; }
# (Lists captured first: `grep -q` closing a pipe early would fail the pipeline under pipefail.)
installed=$(rustup target list --installed)
for target in $targets; do
  grep -qx "$target" <<<"$installed" || { log "adding target $target"; rustup target add "$target"; }
done
components=$(rustup component list --installed)
grep -q '^llvm-tools' <<<"$components" || { log "adding component llvm-tools"; rustup component add llvm-tools; }
bin=$(dirname "$(ls "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-size | head -n1)")
if ! command -v python3 >/dev/null; then
  log "installing python3"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null
fi

report() { # TARGET: builds, prints the report, sets d_flash and d_ram
target=$1
out="$CARGO_TARGET_DIR/$target/release"
# ---- build (cargo reads .cargo/config.toml from the current directory) ----------------------
log "building $probe for $target (release)"
(cd "$probe" && cargo build --locked --quiet --release --bins --target "$target")

# ---- sizes -------------------------------------------------------------------------------
# Berkeley format: text = every allocated read-only section (vector table, code, constants);
# data = initialised RAM (its initial values also sit in flash); bss = zeroed RAM.
read -r b_text b_data b_bss < <("$bin/llvm-size" "$out/baseline" | awk 'NR==2 {print $1, $2, $3}')
read -r l_text l_data l_bss < <("$bin/llvm-size" "$out/with_link" | awk 'NR==2 {print $1, $2, $3}')

verdict() { # figure target
  if (($1 <= $2)); then echo "within target (<= $2)"; else echo "OVER TARGET (> $2, by $(($1 - $2)))"; fi
}

d_flash=$(((l_text + l_data) - (b_text + b_data)))
d_ram=$(((l_data + l_bss) - (b_data + b_bss)))

echo
echo "==== tether-core on $target: Link<LinkStorage<4, 4, 128>> (window 4, 4 receive slots, 128-byte frames)"
echo "release, opt-level s, LTO, codegen-units 1, panic abort; default features (64-byte CRC table)"
echo
printf '%-22s %8s %8s %8s %10s %14s\n' image text data bss flash "static RAM"
printf '%-22s %8s %8s %8s %10s %14s\n' "" "" "" "" "text+data" "data+bss"
printf '%-22s %8d %8d %8d %10d %14d\n' baseline "$b_text" "$b_data" "$b_bss" $((b_text + b_data)) $((b_data + b_bss))
printf '%-22s %8d %8d %8d %10d %14d\n' with_link "$l_text" "$l_data" "$l_bss" $((l_text + l_data)) $((l_data + l_bss))
printf '%-22s %8d %8d %8d %10d %14d\n' "difference (Tether)" $((l_text - b_text)) $((l_data - b_data)) $((l_bss - b_bss)) "$d_flash" "$d_ram"
echo
# The same image with the `table-crc` feature (1 KiB CRC table), built aside.
(cd "$probe" && CARGO_TARGET_DIR="$root/target/size-probe-table-crc" \
  cargo build --locked --quiet --release --bin with_link --features table-crc --target "$target")
read -r s_text s_data s_bss < <("$bin/llvm-size" "$root/target/size-probe-table-crc/$target/release/with_link" | awk 'NR==2 {print $1, $2, $3}')
s_flash=$(((s_text + s_data) - (b_text + b_data)))
s_ram=$(((s_data + s_bss) - (b_data + b_bss)))
printf '%-22s %8d %8d %8d %10d %14d\n' "with_link, table-crc" "$s_text" "$s_data" "$s_bss" $((s_text + s_data)) $((s_data + s_bss))
printf '%-22s %8d %8d %8d %10d %14d\n' "difference (table-crc)" $((s_text - b_text)) $((s_data - b_data)) $((s_bss - b_bss)) "$s_flash" "$s_ram"
# And with protocol version 2 offered (feature v2, Config::max_version = 2), reported only:
# a v2 that does not build is said so, and the gate goes on.
v_text=$b_text v_data=$b_data v_bss=$b_bss
if (cd "$probe" && CARGO_TARGET_DIR="$root/target/size-probe-v2" \
  cargo build --locked --quiet --release --bin with_link --features v2 --target "$target"); then
  read -r v_text v_data v_bss < <("$bin/llvm-size" "$root/target/size-probe-v2/$target/release/with_link" | awk 'NR==2 {print $1, $2, $3}')
else
  echo "with_link, v2: DOES NOT BUILD (reported only, not part of the gate)"
fi
# And with the readings as records of a declared kind (feature kinds, PROTOCOL.md 10.5),
# reported only: what record kinds cost a firmware that uses them (one that does not links
# none of their code: the default row above).
(cd "$probe" && CARGO_TARGET_DIR="$root/target/size-probe-kinds" \
  cargo build --locked --quiet --release --bin with_link --features kinds --target "$target")
read -r k_text k_data k_bss < <("$bin/llvm-size" "$root/target/size-probe-kinds/$target/release/with_link" | awk 'NR==2 {print $1, $2, $3}')
k_flash=$(((k_text + k_data) - (b_text + b_data)))
k_ram=$(((k_data + k_bss) - (b_data + b_bss)))
v_flash=$(((v_text + v_data) - (b_text + b_data)))
v_ram=$(((v_data + v_bss) - (b_data + b_bss)))
printf '%-22s %8d %8d %8d %10d %14d\n' "with_link, v2" "$v_text" "$v_data" "$v_bss" $((v_text + v_data)) $((v_data + v_bss))
printf '%-22s %8d %8d %8d %10d %14d\n' "difference (v2)" $((v_text - b_text)) $((v_data - b_data)) $((v_bss - b_bss)) "$v_flash" "$v_ram"
printf '%-22s %8d %8d %8d %10d %14d\n' "with_link, kinds" "$k_text" "$k_data" "$k_bss" $((k_text + k_data)) $((k_data + k_bss))
printf '%-22s %8d %8d %8d %10d %14d\n' "difference (kinds)" $((k_text - b_text)) $((k_data - b_data)) $((k_bss - b_bss)) "$k_flash" "$k_ram"
echo
echo "flash:      $d_flash bytes ($(awk -v b="$d_flash" 'BEGIN {printf "%.2f", b / 1024}') KiB): $(verdict "$d_flash" "$flash_target")"
echo "static RAM: $d_ram bytes ($(awk -v b="$d_ram" 'BEGIN {printf "%.2f", b / 1024}') KiB): $(verdict "$d_ram" "$ram_target")"
echo "with table-crc: flash $s_flash bytes: $(verdict "$s_flash" "$flash_target"); static RAM $s_ram bytes: $(verdict "$s_ram" "$ram_target")"
echo "with record kinds: flash $k_flash bytes ($((k_flash - d_flash)) more than the default row: the declaration in flash and KindWriter), static RAM $k_ram bytes (reported, not gated)"
echo "with v2 offered: flash $v_flash bytes: $(verdict "$v_flash" "$flash_target"); static RAM $v_ram bytes: $(verdict "$v_ram" "$ram_target") (reported, not gated)"
echo
echo "What counts as RAM: static RAM = .data + .bss, i.e. the link (in a static, through"
echo "cortex_m::singleton!) and the one frame buffer poll_transmit encodes into. Stack is NOT"
echo "counted: it is reported below for information only (main's own frame, from its prologue)."

# ---- where the bytes go -----------------------------------------------------------------
python3 - "$bin" "$out/baseline" "$out/with_link" <<'PY'
import re
import struct
import subprocess
import sys
from collections import defaultdict

bindir, base_elf, link_elf = sys.argv[1:]


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


HASH = re.compile(r"::h[0-9a-f]{16}( \(\.\d+\))?$")
ESCAPES = {"$LT$": "<", "$GT$": ">", "$u20$": " ", "$u7b$": "{", "$u7d$": "}", "$C$": ",",
           "$RF$": "&", "$BP$": "*", "$u27$": "'", "$u5b$": "[", "$u5d$": "]", "$u3b$": ";"}


def clean(name):
    """A readable, hash-free name: demangling leaves some legacy escapes."""
    name = HASH.sub("", name.strip())
    for k, v in ESCAPES.items():
        name = name.replace(k, v)
    name = name.replace("..", "::")
    if name.startswith("_<"):
        name = name[1:]
    # Two images name the same function after their crate (baseline::/with_link::).
    return re.sub(r"^(baseline|with_link)::", "<probe>::", name)


def symbols(elf):
    """name -> (size, kind) of every sized symbol in flash or RAM."""
    syms = {}
    for line in run(f"{bindir}/llvm-nm", "-C", "--print-size", "--size-sort", "--radix=d", elf).splitlines():
        parts = line.split(None, 3)
        if len(parts) < 4:
            continue
        _addr, size, kind, name = parts
        name = clean(name)
        if name.startswith(".Lanon"):
            name = "(anonymous constants: strings, tables)"
        prev = syms.get(name, (0, kind))
        syms[name] = (prev[0] + int(size), kind)
    return syms


def is_ram(kind):
    return kind in "bBdD"


base, link = symbols(base_elf), symbols(link_elf)

CORE = re.compile(r"tether|crc|memchr|CASTAGNOLI", re.I)
print()
print("Top symbols of the core's share, flash (llvm-nm on with_link; tether/crc/memchr only;")
print("most of the link is inlined into main, broken down further below):")
core = sorted(((s, n) for n, (s, k) in link.items() if CORE.search(n) and not is_ram(k)
               and "__cortex_m_rt_main" not in n and n != "TETHER_LINK_SIZE"), reverse=True)
for size, name in core[:15]:
    print(f"  {size:7d}  {name}")
print(f"  {sum(s for s, _ in core):7d}  total out of line ({len(core)} symbols)")

print()
print("Everything with_link adds or grows over baseline, flash (symbol size difference):")
grown = []
for name, (size, kind) in link.items():
    if is_ram(kind):
        continue
    d = size - base.get(name, (0, kind))[0]
    if d:
        grown.append((d, name))
for name, (size, kind) in base.items():
    if not is_ram(kind) and name not in link:
        grown.append((-size, name))
grown.sort(reverse=True)
groups = defaultdict(int)
for d, name in grown:
    if "__cortex_m_rt_main" in name:
        g = "main (the link inlined into the application loop)"
    elif CORE.search(name):
        g = "tether-core, crc, memchr out of line"
    elif re.search(r"core::fmt|Display|Formatter|anonymous constants", name):
        g = "core::fmt and constants (strings, tables)"
    elif re.search(r"memcpy|memclr|memset|memmove|compiler_builtins", name):
        g = "compiler-builtins mem* (struct moves and clears)"
    else:
        g = "other (panics, vector table, skeleton)"
    groups[g] += d
for g, d in sorted(groups.items(), key=lambda kv: -kv[1]):
    print(f"  {d:7d}  {g}")
print(f"  {sum(groups.values()):7d}  total of sized symbols (the rest of the text difference is alignment)")
print("  largest:")
for d, name in grown[:12]:
    print(f"  {d:7d}  {name}")

print()
print("Static RAM of with_link (llvm-nm, .data/.bss):")
for name, (size, kind) in sorted(link.items(), key=lambda kv: -kv[1][0]):
    if is_ram(kind) and size:
        print(f"  {size:7d}  {name}")


def read_u32(elf, symbol):
    """The u32 a symbol holds in the ELF's file image (ELF32, little endian)."""
    addr = None
    for line in run(f"{bindir}/llvm-nm", elf).splitlines():
        p = line.split()
        if len(p) == 3 and p[2] == symbol:
            addr = int(p[0], 16)
    if addr is None:
        return None
    data = open(elf, "rb").read()
    shoff, = struct.unpack_from("<I", data, 0x20)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x2E)
    for i in range(shnum):
        _n, sh_type, _f, sh_addr, sh_offset, sh_size = struct.unpack_from("<IIIIII", data, shoff + i * shentsize)
        if sh_type == 1 and sh_addr <= addr < sh_addr + sh_size:
            return struct.unpack_from("<I", data, sh_offset + addr - sh_addr)[0]
    return None


size = read_u32(link_elf, "TETHER_LINK_SIZE")
storage = (4 + 4 + 1) * 128 + 2 * (4 + 4)
if size is not None:
    print(f"  size_of::<Link<LinkStorage<4, 4, 128>>>() on the target = {size} bytes:"
          f" storage {storage} + state {size - storage}")


def main_breakdown(elf):
    """Bytes of main by source file, from the line table; main's stack frame from its prologue.

    Code inlined from the standard library (slice indexing, pointer reads, ...) counts for the
    file it was inlined from: the last non-library file seen before it in address order."""
    dis = run(f"{bindir}/llvm-objdump", "-d", "-l", "--no-show-raw-insn", elf).splitlines()
    start = re.compile(r"^[0-9a-f]+ <.*__cortex_m_rt_main.*>:$")
    insn = re.compile(r"^\s+([0-9a-f]+):")
    source = re.compile(r"^; (/.+?):\d+$")
    in_main, current, frame, end = False, "(no line information: set-up code, literal pools)", None, None
    rows = []
    for line in dis:
        if start.match(line):
            in_main = True
            continue
        if not in_main:
            continue
        if re.match(r"^[0-9a-f]+ <", line):
            end = int(line.split()[0], 16)
            break
        m = source.match(line)
        if m:
            path = m.group(1)
            if "/rustc/" not in path:
                path = re.sub(r"^.*/registry/src/[^/]+/", "", path)
                path = re.sub(r"^.*/(core|firmware-sim)/", r"\1/", path).replace("/src/bin/../", "/src/")
                current = path
            continue
        m = insn.match(line)
        if m:
            if frame is None:
                f = re.search(r"sub(?:\.w)?\s+sp, (?:sp, )?#(0x[0-9a-f]+|\d+)", line)
                if f:
                    frame = int(f.group(1), 0)
            rows.append((int(m.group(1), 16), current))
    if not rows or end is None:
        return None, frame
    by = defaultdict(int)
    for (a, f), (b, _) in zip(rows, rows[1:] + [(end, None)]):
        by[f] += b - a
    return by, frame


by, frame = main_breakdown(link_elf)
_, base_frame = main_breakdown(base_elf)
if by:
    print()
    print("main of with_link (the link's API inlined into the loop) by source file, flash bytes:")
    for name, n in sorted(by.items(), key=lambda kv: -kv[1])[:14]:
        print(f"  {n:7d}  {name}")
    print(f"  {sum(by.values()):7d}  total")
if frame is not None:
    print()
    print(f"Stack, for information (not counted above): main's own frame is {frame} bytes in with_link,"
          f" {base_frame or 0} in baseline.")
PY

}

failed=
summary=
for target in $targets; do
  report "$target"
  summary+="  $target: $d_flash bytes of flash ($(verdict "$d_flash" "$flash_target")), $d_ram bytes of static RAM ($(verdict "$d_ram" "$ram_target"))"$'\n'
  if ((d_flash > flash_target || d_ram > ram_target)); then
    failed+=" $target"
  fi
done

# ---- the gate (default features, every target) -------------------------------------------------
echo
printf 'the default build'"'"'s core (limits: %s bytes of flash, %s bytes of static RAM):\n%s' "$flash_target" "$ram_target" "$summary"
if [[ -n $failed ]]; then
  echo "FOOTPRINT GATE FAILED on$failed: over $flash_target bytes of flash or $ram_target bytes of static RAM"
  exit 1
fi
echo "footprint gate passed on $targets"
