#!/usr/bin/env bash
# Records/s into mosquitto through `tether listen --sink mqtt://…`, acknowledged end to end
# (each `tether send` exits 0 only once every line is acknowledged, so only once the broker
# acknowledged it), beside mosquitto's own client (`mosquitto_pub -q 1 -l`, the same number
# of messages of the same size at QoS 1) in the same run, on a mosquitto started here on a
# free loopback port. Turns alternate (a shared machine moves from run to run).
#
#   scripts/mqtt-bench.sh [RECORDS] [SENDERS] [TURNS]     # defaults 400000 4 2
#   FSYNC=1 scripts/mqtt-bench.sh                          # the state file fsynced too
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-400000}
senders=${2:-4}
turns=${3:-2}
command -v mosquitto >/dev/null || PATH=$PATH:/usr/sbin
command -v mosquitto >/dev/null && command -v mosquitto_pub >/dev/null || {
  echo "mqtt-bench: mosquitto and mosquitto_pub are needed (scripts/setup.sh installs them)" >&2
  exit 2
}
cargo build --release -q -p tether-host
tether=target/release/tether
dir=$(mktemp -d /tmp/tether-mqtt-bench.XXXXXX)
chmod 777 "$dir"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$dir/m.conf"
mosquitto -c "$dir/m.conf" 2>"$dir/mosquitto.log" &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done

per=$((records / senders))
# The lines tether sends (a text record of three fields), and what mosquitto_pub sends: a
# payload as long as the JSON the sink makes of such a record.
python3 - "$dir" "$senders" "$per" <<'EOF'
import sys
d, senders, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for k in range(senders):
    with open(f"{d}/in{k}", "w") as f:
        f.writelines(f"21.5,{i},ok\n" for i in range(per))
with open(f"{d}/pub", "w") as f:
    for i in range(per * senders):
        f.write('{"device":"5100abcd","session":0,"seq":%d,"host_time":"2026-01-01T00:00:00.000000Z","field_1":"21.5","field_2":"%d","field_3":"ok"}\n' % (i, i))
EOF

now() { date +%s.%N; }
rate() { python3 -c "print(f'{$1/($3-$2):,.0f}')"; }
mosquitto_pub_turn() {
  local t0 t1
  t0=$(now)
  mosquitto_pub -p "$port" -q 1 -t bench/pub -l <"$dir/pub"
  t1=$(now)
  echo "mosquitto_pub -q 1 -l: $((per * senders)) messages acknowledged in $(python3 -c "print(f'{$t1-$t0:.2f}')") s: $(rate $((per * senders)) "$t0" "$t1") messages/s"
}
tether_turn() {
  local turn=$1 t0 t1 fsync=()
  [[ ${FSYNC:-} == 1 ]] && fsync=(--fsync)
  rm -f "$dir/state$turn"
  RUST_LOG=info "$tether" listen tcp://127.0.0.1:0 --window 1024 "${fsync[@]}" \
    --sink "mqtt://127.0.0.1:$port/bench?state=$dir/state$turn" 2>"$dir/listen$turn.log" &
  local lp=$!
  pids+=($lp)
  local addr=""
  for _ in $(seq 200); do
    addr=$(grep -so 'listening on tcp://[0-9.:]*' "$dir/listen$turn.log" | head -1 | sed 's/listening on //') || true
    grep -qs 'connected as' "$dir/listen$turn.log" && [[ -n $addr ]] && break
    sleep 0.05
  done
  t0=$(now)
  local sp=()
  for k in $(seq 0 $((senders - 1))); do
    "$tether" send "$addr" --window 1024 <"$dir/in$k" 2>"$dir/send$k.log" &
    sp+=($!)
  done
  for p in "${sp[@]}"; do wait "$p" || { echo "a sender failed: $(cat "$dir"/send*.log)"; exit 1; }; done
  t1=$(now)
  kill -TERM "$lp"; wait "$lp" || true
  echo "tether listen --sink mqtt:// ${fsync[*]}: $((per * senders)) records from $senders devices acknowledged in $(python3 -c "print(f'{$t1-$t0:.2f}')") s: $(rate $((per * senders)) "$t0" "$t1") records/s ($(grep -o 'state file [^ ]* written [0-9]* times ([0-9.]* ms)' "$dir/listen$turn.log" | sed 's/state file [^ ]* //'))"
}
echo "mqtt-bench: $records records, $senders senders, mosquitto $(mosquitto -h | head -1 | awk '{print $3}') on 127.0.0.1:$port, $(nproc) CPUs"
for turn in $(seq "$turns"); do
  mosquitto_pub_turn
  tether_turn "$turn"
done
