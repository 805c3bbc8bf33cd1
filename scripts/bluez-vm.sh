#!/usr/bin/env bash
# Tether over real BlueZ: boots a Linux guest in QEMU with kernel RFCOMM, bluetoothd and two
# virtual controllers (btvirt: hci0 and hci1, which can page each other), and runs in it, in
# one boot, the host-built tests of host/tests/bluez_vm.rs (`--ignored`: they need BlueZ).
#
#   scripts/bluez-vm.sh            # exit status: the tests' (non-zero if they could not run)
#
# How: the host's own root is shared read-only over 9p with a tmpfs overlay on top in the
# guest, so the guest runs the host's binaries (bluetoothd, dbus-daemon, btvirt, the test
# binary) and writes nowhere on the host but one results directory. The kernel is Debian's
# stock linux-image (Bluetooth as modules), downloaded once as a .deb and cached under
# target/bluez-vm/ (nothing is installed on the host). TCG only: this machine's /dev/kvm is
# a paravirtual one a stock kernel hangs on. See shared notes "bluez-in-a-vm".
#
# Installs what it needs, idempotently: qemu-system-x86 bluez bluez-test-tools busybox-static
# cpio kmod (Debian packages). QEMU always runs under `timeout`.
#
# BLUEZ_VM_TIMEOUT (seconds, default 420) bounds the VM run. BLUEZ_VM_PROFILE=release runs
# release builds (for figures; the default, dev, reuses what `cargo test` built).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
log() { printf 'bluez-vm: %s\n' "$*" >&2; }
started=$SECONDS

# ---- what it needs (idempotent) -------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[[ -x /usr/libexec/bluetooth/bluetoothd ]] || need+=(bluez)
command -v btvirt >/dev/null || need+=(bluez-test-tools)
[[ -x /bin/busybox ]] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v depmod >/dev/null || need+=(kmod)
command -v dbus-daemon >/dev/null || need+=(dbus-daemon)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# bluetoothd may be started on the host by the package: the host kernel has no Bluetooth,
# so it exits at once; nothing on the host is used.

cache="$root/target/bluez-vm"
mkdir -p "$cache"

# ---- the kernel: Debian's linux-image (Bluetooth, RFCOMM, vhci as modules) --------------
kdir="$cache/kernel"
if ! ls "$kdir"/boot/vmlinuz-* >/dev/null 2>&1; then
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [[ -z $pkg ]]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  fi
  [[ -n $pkg ]] || { log "cannot find Debian's linux-image-amd64 package"; exit 1; }
  log "downloading $pkg (about 70 MB, once; cached in $cache)"
  rm -rf "$cache/deb" && mkdir -p "$cache/deb"
  (cd "$cache/deb" && apt-get download "$pkg" 2>/dev/null)
  deb=$(ls "$cache"/deb/*.deb)
  rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$kdir.tmp" --wildcards \
    './boot/vmlinuz-*' './lib/modules/*/modules.order' './lib/modules/*/modules.builtin*' \
    './lib/modules/*/kernel/net/bluetooth' './lib/modules/*/kernel/drivers/bluetooth' \
    './lib/modules/*/kernel/net/9p' './lib/modules/*/kernel/fs/9p' './lib/modules/*/kernel/fs/netfs' \
    './lib/modules/*/kernel/fs/fscache' './lib/modules/*/kernel/fs/overlayfs' \
    './lib/modules/*/kernel/drivers/virtio' './lib/modules/*/kernel/net/rfkill' \
    './lib/modules/*/kernel/crypto' './lib/modules/*/kernel/lib' './lib/modules/*/kernel/drivers/char'
  kver=$(basename "$(ls -d "$kdir.tmp"/lib/modules/*)")
  depmod -b "$kdir.tmp" "$kver"
  rm -rf "$kdir" "$cache/deb"
  mv "$kdir.tmp" "$kdir"
fi
vmlinuz=$(ls "$kdir"/boot/vmlinuz-* | head -n1)
kver=$(basename "$(ls -d "$kdir"/lib/modules/*)")
mods="$kdir/lib/modules/$kver"

# ---- the tests, built on the host ------------------------------------------------------
profile=${BLUEZ_VM_PROFILE:-dev}
build=(cargo test --locked --profile "$profile" -p tether-host --test bluez_vm --no-run)
log "building the tests (profile $profile)"
bin=$({ "${build[@]}" --message-format=json 2>/dev/null || true; } \
  | python3 -c 'import json,sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bluez_vm" in m["target"]["name"]:
        print(m["executable"])' | tail -n1)
if [[ -z $bin || ! -x $bin ]]; then
  # Show the build's errors.
  "${build[@]}"
  log "the test binary was not built"; exit 1
fi
# Private copies of the test binary and of the `tether` binary it runs: others building in
# the same target/ must not change them under the guest's feet.
tether_bin="$(dirname "$(dirname "$bin")")/tether"
[[ -x $tether_bin ]] || { log "no tether binary next to the tests ($tether_bin)"; exit 1; }
rm -rf "$cache/bin" && mkdir -p "$cache/bin"
cp "$bin" "$cache/bin/bluez_vm"
cp "$tether_bin" "$cache/bin/tether"
bin="$cache/bin/bluez_vm"

# ---- the initramfs: busybox, the virtio/9p/overlay modules, an init that mounts the host ----
results="$cache/run"
rm -rf "$results" && mkdir -p "$results"
ird="$cache/initramfs"
rm -rf "$ird" && mkdir -p "$ird"/{bin,dev,proc,sys,mnt/lower,mnt/rw,mnt/root,modules}
cp /bin/busybox "$ird/bin/busybox"
modlist="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p overlay"
for m in $modlist; do
  f=$(find "$mods/kernel" -name "$m.ko*" | head -n1)
  if [[ -n $f ]]; then cp "$f" "$ird/modules/"; fi
done
cat >"$ird/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $modlist; do
  [ -f /modules/\$m.ko ] && insmod /modules/\$m.ko
done
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000 hostroot /mnt/lower || { echo "bluez-vm: cannot mount the host root"; poweroff -f; }
mount -t tmpfs -o size=512m tmpfs /mnt/rw
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /mnt/root || { echo "bluez-vm: overlay failed"; poweroff -f; }
mkdir -p /mnt/root$results
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /mnt/root$results || { echo "bluez-vm: cannot mount the results directory"; poweroff -f; }
mkdir -p /mnt/root/lib/modules/$kver
mount --bind /mnt/root$mods /mnt/root/lib/modules/$kver
umount /proc /sys
mount --move /dev /mnt/root/dev
exec switch_root /mnt/root /bin/sh $root/scripts/bluez-vm/guest-init.sh "$bin" "$results" "\$(cat /guest-cmd)"
INIT
chmod +x "$ird/init"
printf '%s' "${BLUEZ_VM_CMD:-}" >"$ird/guest-cmd"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) >"$cache/initramfs.gz"

# ---- one boot ----------------------------------------------------------------------------
accel="tcg,thread=multi"
limit=${BLUEZ_VM_TIMEOUT:-420}
log "booting the guest (TCG; at most ${limit}s)"
set +e
timeout --kill-after=10 "$limit" qemu-system-x86_64 -M pc -accel "$accel" -cpu max -smp 2 -m 1024 \
  -nodefaults -display none -no-reboot \
  -chardev stdio,id=con,signal=off -serial chardev:con \
  -kernel "$vmlinuz" -initrd "$cache/initramfs.gz" \
  -append "console=ttyS0 quiet panic=-1 loglevel=3" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$results",mount_tag=results,security_model=none \
  </dev/null >"$cache/console.log" 2>&1
qemu=$?
set -e
# The guest's console: in full (its last 200 lines) on failure, its summary lines otherwise.
console() { sed -e 's/\r$//' "$cache/console.log" | grep -v '^\s*$' || true; }
if [[ $(cat "$results/status" 2>/dev/null) == 0 ]]; then
  console | grep -E '^(guest:|test |test result)' >&2 || true
else
  console | tail -n 200 >&2
fi
if [[ $qemu -eq 124 || $qemu -eq 137 ]]; then
  log "the VM did not finish within ${limit}s (console: $cache/console.log)"
  exit 1
fi
if [[ ! -f $results/status ]]; then
  log "the tests did not run (no status written; QEMU exit $qemu; console: $cache/console.log)"
  exit 1
fi
status=$(cat "$results/status")
[[ -f $results/figures.txt ]] && { log "figures:"; sed 's/^/  /' "$results/figures.txt" >&2; }
log "VM run: tests exit $status, $((SECONDS - started)) s in all"
exit "$status"
