#!/usr/bin/env bash
# Records/s committed into PostgreSQL through `tether listen --sink postgres://…`, beside the
# CSV sink (`--csv FILE`) in the same run: the same senders (`tether send`, one device each),
# the same 16-byte records ("00000042,2100042", two fields: tether_records in the database,
# a row of the CSV), acknowledged end to end (each `tether send` exits 0 only once every
# line is acknowledged, so only once its batch committed). PostgreSQL is a cluster made here
# in a temporary directory (Debian's postgresql, scripts/setup.sh installs it), on a free
# loopback port, as the postgres user, with its default durability (fsync on,
# synchronous_commit on); each turn writes a new database. Turns alternate (a shared machine
# moves from run to run); every record is checked in the CSV and counted in the database.
#
#   scripts/pg-bench.sh [RECORDS_PER_DEVICE] [DEVICES] [TURNS]    # defaults 250000 4 2
#   WINDOW=4096 scripts/pg-bench.sh                                # records in flight
#   TETHER=path/to/tether scripts/pg-bench.sh                      # that binary, not built here
set -euo pipefail
cd "$(dirname "$0")/.."
per=${1:-250000}
senders=${2:-4}
turns=${3:-2}
window=${WINDOW:-4096}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $bin/initdb ]] || {
  echo "pg-bench: PostgreSQL's server is needed (scripts/setup.sh installs Debian's postgresql)" >&2
  exit 2
}
if [[ -n ${TETHER:-} ]]; then
  tether=$TETHER
else
  cargo build --release -q -p tether-host --bin tether
  tether=$PWD/target/release/tether
fi
dir=$(mktemp -d /tmp/tether-pg-bench.XXXXXX)
as_pg=()
if [[ $(id -u) == 0 ]]; then
  user=postgres
  id -u "$user" >/dev/null 2>&1 || user=nobody
  chown "$user:" "$dir"
  as_pg=(setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --clear-groups)
fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f $dir/data/postmaster.pid ]] && "${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" stop -m immediate >/dev/null 2>&1
  rm -rf "$dir"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export PGPASSWORD=bench-$RANDOM$RANDOM
printf '%s\n' "$PGPASSWORD" >"$dir/pw"
[[ ${#as_pg[@]} == 0 ]] || chown "$user:" "$dir/pw"
"${as_pg[@]}" "$bin/initdb" -D "$dir/data" -U tether --pwfile="$dir/pw" -E UTF8 --no-locale \
  --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log"
rm "$dir/pw"
printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" "$port" "$dir" \
  >>"$dir/data/postgresql.conf"
"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
psql() { "${as_pg[@]}" "$bin/psql" -h "$dir" -p "$port" -U tether -X -At "$@"; }

# The lines: 16 bytes each ("%08d,%07d"), different in each sender's file.
python3 - "$dir" "$senders" "$per" <<'EOF'
import sys
d, senders, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for k in range(senders):
    with open(f"{d}/in{k}", "w") as f:
        f.writelines("%08d,%07d\n" % (k * per + i, (i * 7) % 10_000_000) for i in range(per))
EOF
total=$((per * senders))

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2-$1:.2f}')"; }
rate() { python3 -c "print(f'{$1/($3-$2):,.0f}')"; }

# Starts `tether listen ARGS`, waits for its address; sets $addr and $lp.
start_listener() {
  local log=$1
  shift
  RUST_LOG=info "$tether" listen tcp://127.0.0.1:0 --window "$window" --max-record 66 "$@" 2>"$log" &
  lp=$!
  pids+=("$lp")
  addr=""
  for _ in $(seq 400); do
    addr=$(grep -so 'listening on tcp://[0-9.:]*' "$log" | head -1 | sed 's/listening on //') || true
    [[ -n $addr ]] && break
    kill -0 "$lp" 2>/dev/null || { echo "pg-bench: the listener stopped: $(cat "$log")" >&2; exit 1; }
    sleep 0.05
  done
  [[ -n $addr ]] || { echo "pg-bench: the listener did not start: $(cat "$log")" >&2; exit 1; }
}
# Runs the senders to $addr; sets $t0 and $t1.
send_all() {
  local sp=() k
  t0=$(now)
  for k in $(seq 0 $((senders - 1))); do
    RUST_LOG=warn "$tether" send "$addr" --window "$window" --max-record 66 "$dir/in$k" 2>"$dir/send$k.log" &
    sp+=($!)
  done
  for p in "${sp[@]}"; do wait "$p" || { echo "pg-bench: a sender failed: $(cat "$dir"/send*.log)" >&2; exit 1; }; done
  t1=$(now)
}
csv_turn() {
  local turn=$1 csv=$dir/out$1.csv
  start_listener "$dir/csv$turn.log" --csv "$csv"
  send_all
  kill -TERM "$lp"; wait "$lp" || true
  local rows
  rows=$(($(wc -l <"$csv") - 1))
  [[ $rows == "$total" ]] || { echo "pg-bench: $rows rows in the CSV, not $total" >&2; exit 1; }
  echo "tether listen --csv:              $total records from $senders devices acknowledged in $(secs "$t0" "$t1") s: $(rate $total "$t0" "$t1") records/s"
  rm -f "$csv"
}
pg_turn() {
  local turn=$1
  psql -d postgres -c "CREATE DATABASE bench$turn" >/dev/null
  start_listener "$dir/pg$turn.log" --sink "postgres://tether@127.0.0.1:$port/bench$turn"
  send_all
  kill -TERM "$lp"; wait "$lp" || true
  local got
  got=$(psql -d "bench$turn" -c "SELECT count(*) || ' ' || count(DISTINCT (device, seq)) || ' ' || count(DISTINCT fields[1]) FROM tether_records")
  [[ $got == "$total $total $total" ]] || { echo "pg-bench: rows, keys, lines in the database: $got, not $total each" >&2; exit 1; }
  local size
  size=$(psql -d "bench$turn" -c "SELECT pg_size_pretty(pg_total_relation_size('tether_records'))")
  echo "tether listen --sink postgres://: $total records from $senders devices committed and acknowledged in $(secs "$t0" "$t1") s: $(rate $total "$t0" "$t1") records/s (tether_records: $size)"
  psql -d postgres -c "DROP DATABASE bench$turn" >/dev/null
}
echo "pg-bench: $senders devices x $per 16-byte records, window $window, PostgreSQL $("$bin/postgres" -V | awk '{print $3}') on 127.0.0.1:$port (fsync $(psql -d postgres -c 'SHOW fsync'), synchronous_commit $(psql -d postgres -c 'SHOW synchronous_commit')), $(nproc) CPUs"
for turn in $(seq "$turns"); do
  csv_turn "$turn"
  pg_turn "$turn"
done
