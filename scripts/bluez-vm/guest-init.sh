#!/bin/sh
# PID 1 of the BlueZ test guest (scripts/bluez-vm.sh): the host's root, read-only under a
# tmpfs overlay. Starts D-Bus, two virtual controllers and bluetoothd, runs the test binary
# given as $1 with --ignored, writes its exit status to $2/status, and powers off.
bin=$1
results=$2
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root RUST_BACKTRACE=1 TETHER_VM_RESULTS="$results"
export TETHER_BIN="$(dirname "$bin")/tether"
finish() {
  echo "$1" >"$results/status"
  sync
  /bin/busybox poweroff -f
}
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mkdir -p /run/dbus /var/lib/bluetooth
ip link set lo up || /bin/busybox ip link set lo up
echo "guest: kernel $(uname -r), up $(cut -d' ' -f1 /proc/uptime) s"
modprobe -a bluetooth rfcomm hci_vhci || { echo "guest: Bluetooth modules missing"; finish 90; }
dbus-daemon --system --fork || { echo "guest: dbus-daemon failed"; finish 91; }
# Two virtual controllers in one btvirt. When this machine is loaded, the first btvirt after
# boot often loses hci0: its first HCI reset times out (2 s, "Opcode 0x0c03 failed: -110",
# the emulated guest being slow) and the kernel gives up on it (it never gets its address).
# A second btvirt sets up both: so start it again when needed, up to 4 times.
ready() {
  for h in hci0 hci1; do
    a=$(hciconfig "$h" 2>/dev/null | sed -n 's/.*BD Address: \([0-9A-F:]*\).*/\1/p')
    [ -n "$a" ] && [ "$a" != 00:00:00:00:00:00 ] || return 1
  done
}
# Read btvirt and its libraries once (over 9p) before it has to answer in time.
cat "$(command -v btvirt)" /lib/x86_64-linux-gnu/libc.so.6 >/dev/null 2>&1
tries=0
while :; do
  tries=$((tries + 1))
  btvirt -l2 >/dev/null 2>&1 &
  btvirt_pid=$!
  i=0
  while [ $i -lt 16 ] && ! ready; do sleep 0.5; i=$((i + 1)); done
  ready && break
  echo "guest: btvirt attempt $tries did not set up two controllers; again"
  kill "$btvirt_pid" 2>/dev/null
  wait "$btvirt_pid" 2>/dev/null
  sleep 1
  [ $tries -lt 4 ] || finish 92
done
/usr/libexec/bluetooth/bluetoothd -n >/run/bluetoothd.log 2>&1 &
echo $! >/run/bluetoothd.pid
echo "guest: controllers $(ls /sys/class/bluetooth | tr '\n' ' '), bluetoothd started at $(cut -d' ' -f1 /proc/uptime) s"
# The tests wait for both adapters to be powered on D-Bus themselves (and fail if never).
cd /tmp
if [ -n "$3" ]; then
  sh -c "$3" 2>&1 # a diagnostic command instead of the tests (BLUEZ_VM_CMD)
else
  "$bin" --ignored --test-threads=1 --nocapture 2>&1
fi
status=$?
if [ "$status" != 0 ]; then
  echo "guest: bluetoothd's log:"
  tail -n 30 /run/bluetoothd.log
  echo "guest: the kernel's log:"
  dmesg | tail -n 40
fi
echo "guest: tests exit $status at $(cut -d' ' -f1 /proc/uptime) s"
finish "$status"
