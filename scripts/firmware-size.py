#!/usr/bin/env python3
"""Flash and static RAM of the QEMU firmware, of its baseline without Tether, and of the
core's share, by crate. Called by scripts/firmware-qemu.sh; a report, never a gate.

usage: firmware-size.py LLVM_BIN_DIR FIRMWARE_ELF BASELINE_ELF [TABLE_CRC_FIRMWARE_ELF]

Both images receive through tether-core's `io::isr` queue, so its code and its 1 KiB queue
are in both and cancel out in the difference.

Flash = text + data (Berkeley, llvm-size: vector table, code, constants, initial values);
static RAM = data + bss. Stack is not static RAM (main's frame is printed for information).

Which crate a byte of code belongs to comes from the ELF's line table (llvm-objdump -l):
each instruction counts for the source file it was compiled from. Code inlined from Rust's
own library (slice indexing, iterators, ...) counts for the crate it was inlined into (the
last of our files seen in the same function); functions entirely from the library
(core::fmt, parsing, soft float, mem*) are a group of their own. Constants count by symbol
(the CRC table is tether-core's); anonymous ones (strings, panic locations) stay apart.
"""
import re
import subprocess
import sys
from collections import defaultdict

FLASH_TARGET = 8192  # the core, window 4 x 128-byte frames
RAM_TARGET = 2048

CORE = "tether-core (+ crc, embedded-io)"
DEVICE = "device logic (tether-firmware-sim)"
FIRMWARE = "firmware: board, UART, main loop"
RT = "cortex-m, cortex-m-rt, semihosting"
LIB = "Rust library: fmt, parsing, soft float, mem*"
ANON = "anonymous constants (strings, panic locations)"
OTHER = "other (vector table, handlers, padding)"
ORDER = [CORE, DEVICE, FIRMWARE, RT, LIB, ANON, OTHER]


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def by_path(path):
    if "/rustc/" in path:
        return None
    if "/firmware-sim/qemu/" in path:
        return FIRMWARE
    if "/firmware-sim/src/" in path:
        return DEVICE
    if re.search(r"/core/src/", path) or re.search(r"/(crc|crc-catalog|embedded-io)-[0-9.]+/", path):
        return CORE
    if re.search(r"/(cortex-m|cortex-m-rt|cortex-m-semihosting|semihosting|defmt[a-z-]*)-[0-9.]+/", path):
        return RT
    return None


def by_symbol(name):
    if "tether_core" in name or name.startswith("crc::") or "CASTAGNOLI" in name:
        return CORE
    if "tether_firmware_sim" in name:
        return DEVICE
    if re.match(r"(tether_firmware|baseline)::", name) or "__cortex_m_rt_main" in name:
        return FIRMWARE
    if re.match(r"(cortex_m|cortex_m_rt|cortex_m_semihosting|semihosting|defmt)", name):
        return RT
    if re.match(r"(core::|compiler_builtins|__aeabi|<|_<|mem(cpy|set|move|cmp)|__(udiv|div|mul))", name):
        return LIB
    return OTHER


def sizes(bindir, elf):
    out = run(f"{bindir}/llvm-size", elf).splitlines()[1].split()
    text, data, bss = int(out[0]), int(out[1]), int(out[2])
    return text + data, data + bss


def code_by_crate(bindir, elf):
    """Bytes of executable code by crate, from the line table."""
    dis = run(f"{bindir}/llvm-objdump", "-d", "-l", "-C", "--no-show-raw-insn", elf).splitlines()
    func = re.compile(r"^([0-9a-f]+) <(.*)>:$")
    insn = re.compile(r"^\s+([0-9a-f]+):")
    src = re.compile(r"^; (/.+?):\d+$")
    rows = []  # (address, category)
    fn_cat, current = OTHER, None
    for line in dis:
        m = func.match(line)
        if m:
            fn_cat, current = by_symbol(m.group(2)), None
            rows.append((int(m.group(1), 16), None))  # a boundary
            continue
        m = src.match(line)
        if m:
            c = by_path(m.group(1))
            if c is not None:
                current = c
            continue
        m = insn.match(line)
        if m:
            rows.append((int(m.group(1), 16), current or fn_cat))
    by = defaultdict(int)
    for (a, c), (b, _) in zip(rows, rows[1:]):
        if c is not None:
            by[c] += b - a
    return by


def symbols(bindir, elf):
    """(name, size, kind) of every sized symbol."""
    out = []
    for line in run(f"{bindir}/llvm-nm", "-C", "--print-size", "--size-sort", "--radix=d", elf).splitlines():
        p = line.split(None, 3)
        if len(p) == 4:
            out.append((p[3], int(p[1]), p[2]))
    return out


def breakdown(bindir, elf):
    """Flash and RAM bytes by category."""
    flash, ram = code_by_crate(bindir, elf), defaultdict(int)
    for name, size, kind in symbols(bindir, elf):
        if kind in "rR":
            if name.startswith(".Lanon") or name.startswith(".L"):
                flash[ANON] += size
            elif name == "__INTERRUPTS" or name == "__EXCEPTIONS" or name.startswith("__RESET"):
                flash[OTHER] += size
            else:
                flash[by_symbol(name)] += size
        elif kind in "bBdD":
            ram[by_symbol(name)] += size
    total_flash, total_ram = sizes(bindir, elf)
    flash[OTHER] += total_flash - sum(flash.values())
    ram[OTHER] += total_ram - sum(ram.values())
    return flash, ram


def main_frame(bindir, elf):
    dis = run(f"{bindir}/llvm-objdump", "-d", "--no-show-raw-insn", elf).splitlines()
    inside = False
    for line in dis:
        if re.match(r"^[0-9a-f]+ <.*__cortex_m_rt_main.*>:$", line):
            inside = True
        elif inside:
            m = re.search(r"sub(?:\.w)?\s+sp, (?:sp, )?#(0x[0-9a-f]+|\d+)", line)
            if m:
                return int(m.group(1), 0)
    return None


def verdict(n, target):
    return f"within target (<= {target})" if n <= target else f"OVER TARGET (> {target}, by {n - target})"


def main():
    bindir, fw, base = sys.argv[1:4]
    table = sys.argv[4] if len(sys.argv) > 4 else None
    fw_flash, fw_ram = sizes(bindir, fw)
    b_flash, b_ram = sizes(bindir, base)
    arch = ("thumbv6m-none-eabi (Cortex-M0, nRF51, no CAS)" if "thumbv6m" in fw
            else "thumbv7m-none-eabi (Cortex-M3, no FPU)")
    print(f"QEMU firmware on {arch}: release, opt-level s, LTO, panic abort")
    print("Link<LinkStorage<4, 4, 128>> (window 4, 128-byte frames), default features (64-byte CRC table)")
    print()
    print(f"{'image':<44} {'flash':>8} {'static RAM':>11}")
    print(f"{'firmware (tether-core + device logic)':<44} {fw_flash:>8} {fw_ram:>11}")
    print(f"{'baseline (same board, UART, RX queue, sensor)':<44} {b_flash:>8} {b_ram:>11}")
    print(f"{'difference: what Tether costs this firmware':<44} {fw_flash - b_flash:>8} {fw_ram - b_ram:>11}")
    if table:
        t_flash, t_ram = sizes(bindir, table)
        print(f"{'firmware with table-crc (1 KiB CRC table)':<44} {t_flash:>8} {t_ram:>11}")
        print(f"{'difference with table-crc':<44} {t_flash - b_flash:>8} {t_ram - b_ram:>11}")

    f_fl, f_ram = breakdown(bindir, fw)
    b_fl, b_rm = breakdown(bindir, base)
    print()
    print("By crate (line table and symbols; firmware, baseline, difference), bytes:")
    print(f"  {'':<46} {'flash':>7} {'base':>6} {'diff':>7}   {'RAM':>5} {'base':>5} {'diff':>5}")
    for c in ORDER:
        print(f"  {c:<46} {f_fl[c]:>7} {b_fl[c]:>6} {f_fl[c] - b_fl[c]:>7}   "
              f"{f_ram[c]:>5} {b_rm[c]:>5} {f_ram[c] - b_rm[c]:>5}")
    core_flash = f_fl[CORE]
    # The link's storage, the device (its Link's state inside) and the transmit buffer are
    # main's statics (singleton!): Tether's RAM is the difference.
    core_ram = fw_ram - b_ram
    print()
    print(f"the core's share of flash: {core_flash} bytes ({core_flash / 1024:.2f} KiB): {verdict(core_flash, FLASH_TARGET)}")
    print(f"Tether's static RAM (link storage and state, device, transmit buffer): {core_ram} bytes: {verdict(core_ram, RAM_TARGET)}")
    if table:
        t_fl, _ = breakdown(bindir, table)
        print(f"the core's share with table-crc: {t_fl[CORE]} bytes: {verdict(t_fl[CORE], FLASH_TARGET)}")

    print()
    print("Largest symbols of the difference (llvm-nm --size-sort; most of the link is inlined into")
    print("main and Device::work, counted for its crate above):")
    base_syms = defaultdict(int)
    for name, size, kind in symbols(bindir, base):
        base_syms[re.sub(r"::h[0-9a-f]{16}$", "", name)] += size
    grown = defaultdict(int)
    for name, size, kind in symbols(bindir, fw):
        if kind in "tTrR":
            grown[re.sub(r"::h[0-9a-f]{16}$", "", name)] += size
    rows = sorted(((s - base_syms.get(n, 0), n) for n, s in grown.items()), reverse=True)
    for d, n in rows[:16]:
        if d > 0:
            print(f"  {d:7d}  {n[:110]}")
    frame = main_frame(bindir, fw)
    if frame is not None:
        print(f"Stack, for information: main's own frame is {frame} bytes in the firmware"
              f" ({main_frame(bindir, base) or 0} in the baseline).")


if __name__ == "__main__":
    main()
