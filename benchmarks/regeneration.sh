#!/usr/bin/env bash
# Self-healing figures on a multi-process cluster (4 nodes + 2 spares +
# coordinator, release build), side by side in one run. Not a test: timings
# are printed, never asserted.
#
#   benchmarks/regeneration.sh [BYTES_PER_NODE]     (default 2000000000)
#
# 1. Load table r until its primary copies hold BYTES_PER_NODE stored bytes
#    per regular node (plus a small table q for the fixed query).
# 2. Idle: p50/p99 of the fixed query (with the same map poller running as
#    during the regenerations, so that both see the same observer).
# 3. Unpaced regeneration (copy_rate = 0): kill -9 node 0, REGENERATE at
#    once; time to fully protected, bytes copied, throughput; the fixed
#    query's p50/p99 from the failover to fully protected; `cp` of the same
#    number of bytes between two files on this disk (with sync), just before
#    and just after, for the throughput anchor.
# 4. Paced regeneration at each rate of COPY_RATES (default "25MiB", the
#    product's default): the coordinator restarts with it, kill -9 the next
#    node, same figures (one spare per rate). A paced copy keeps its rate
#    only while its nodes run queries or writes, as the fixed query does.
# 5. The default rate with no queries running: kill -9 the next node; the
#    time to fully protected (idle nodes copy at full speed).
# 6. Resync: kill -9 the next node, change 1% of r's rows during a 10 s
#    outage, start it again; bytes sent and time to fully protected, against
#    the full regeneration of a node in 3.
#
# Every answer of the fixed query must stay the same (errors are counted).
# Copy throughput is the round's bytes over its wall time (from the map
# history), from the first copy's start to the last one's commit. The copy
# rate is per receiving node: a node's copies that go to two targets move
# at twice the rate.
# Needs psql, bc and psycopg 3 (python3 -m pip install 'psycopg[binary]').
# Disk images are allocated up front (3 x BYTES_PER_NODE + 512 MiB each:
# primary and mirror segments of 45% each hold a node's copies and the
# resync's updates, loads fill extents to about 80%); the default needs
# about 53 GB free under /tmp.
# SLICEDB_BIN overrides the binary; KEEP=1 keeps the work directory.
set -euo pipefail
PER_NODE=${1:-2000000000}
read -r -a RATES <<< "${COPY_RATES:-25MiB}"
SPARES=$((2 + ${#RATES[@]}))
ALL=$((4 + SPARES))
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SLICEDB_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/slicedb}
[ -x "$BIN" ] || { echo "no release binary at $BIN: cargo build --release -p slicedb" >&2; exit 1; }
python3 -c 'import psycopg' 2>/dev/null || { echo "needs psycopg: python3 -m pip install 'psycopg[binary]'" >&2; exit 1; }
WORK=$(mktemp -d /tmp/slicedb-regenbench.XXXXXX)
NEED=$(( (PER_NODE * 3 / 1048576 + 512) * ALL + PER_NODE * 2 / 1048576 * 2 ))
FREE=$(( $(df -Pk "$WORK" | awk 'NR == 2 { print $4 }') / 1024 ))
[ "$FREE" -ge "$NEED" ] || { echo "needs $NEED MiB free under /tmp, has $FREE" >&2; rm -rf "$WORK"; exit 1; }
BASE=29100  # below the ephemeral port range (32768-60999), where tests' ports land
declare -A PID
cleanup() {
  for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
now() { date +%s.%N; }
say() { echo "[$(date +%T)] $*" >&2; }

config() { # copy_rate
  cat > "$WORK/cluster.toml" <<TOML
cluster_id = "regenbench"
slices_per_disk = 4
[coordinator]
listen = "127.0.0.1:$BASE"
data_dir = "$WORK/coord"
hba = ["host all all 127.0.0.1/32 trust"]
regen_delay = "10m"
copy_rate = "$1"
TOML
  for n in $(seq 0 $((ALL - 1))); do
    spare=false; [ $n -ge 4 ] && spare=true
    printf '[[nodes]]\nid = %d\naddress = "127.0.0.1:%d"\ndata_dir = "%s/node%d"\ndisk_size = "%dMiB"\nspare = %s\n' \
      "$n" $((BASE + 1 + n)) "$WORK" "$n" $((PER_NODE * 3 / 1048576 + 512)) "$spare" >> "$WORK/cluster.toml"
  done
  "$BIN" certs --config "$WORK/cluster.toml" > /dev/null
}
start_node() { "$BIN" node --config "$WORK/cluster.toml" --id "$1" >> "$WORK/node$1.out" 2>> "$WORK/node$1.err" & PID[n$1]=$!; disown; }
gone() { while kill -0 "$1" 2>/dev/null; do sleep 0.05; done; }
start_coordinator() {
  : > "$WORK/coord.out"
  "$BIN" coordinator --config "$WORK/cluster.toml" >> "$WORK/coord.out" 2>> "$WORK/coord.err" & PID[c]=$!; disown
  for _ in $(seq 600); do grep -q '^ready: ' "$WORK/coord.out" 2>/dev/null && return; sleep 0.1; done
  echo "coordinator not ready; see $WORK/coord.err" >&2; exit 1
}
URL=postgres://slicedb@127.0.0.1:$BASE/slicedb
sql() { psql -X -q -t -A -v ON_ERROR_STOP=1 "$URL" -c "$1"; }
protected() { [ "$(sql "SELECT count(*) FROM slicedb_slices WHERE state <> 'in_sync'")" = 0 ]; }
wait_protected() { until protected; do sleep 0.2; done; }
# The same polling as wait_protected's, until the file $1 exists.
poll_until() { until [ -e "$1" ]; do protected || true; sleep 0.2; done; }
QUERY="SELECT count(*), sum(v), sum(g) FROM q WHERE g < 500"
# Wall time of the last resync round, from its map history entry.
round_seconds() {
  sql "SELECT cause FROM slicedb_map_history WHERE cause LIKE 'resync finished%' ORDER BY epoch DESC LIMIT 1" \
    | sed -n 's/.* in \([0-9.]*\) s$/\1/p'
}
sample_until() { python3 "$ROOT/benchmarks/latency.py" "$URL" "$QUERY" --until "$1"; }

config 0
for n in $(seq 0 $((ALL - 1))); do start_node $n; done
start_coordinator
say "cluster up: 4 nodes + $SPARES spares; loading $PER_NODE stored bytes per node"

sql "CREATE TABLE q (k bigint, g int, v bigint) DISTRIBUTE ON (k)" >/dev/null
sql "INSERT INTO q SELECT i, i % 1000, i * 7 FROM generate_series(1, 2000000) AS g(i)" >/dev/null
sql "CREATE TABLE r (k bigint, g int, pad text) DISTRIBUTE ON (k)" >/dev/null
BATCH=2000000
loaded=0; rows=0; t0=$(now)
while [ "$loaded" -lt $((PER_NODE * 4)) ]; do
  sql "INSERT INTO r SELECT i, i % 1000, md5(i::text) || md5((i + 1)::text) || md5((i + 2)::text) FROM generate_series($((rows + 1)), $((rows + BATCH))) AS g(i)" >/dev/null
  rows=$((rows + BATCH))
  loaded=$(sql "SELECT coalesce(sum(bytes), 0) FROM slicedb_table_slices WHERE table_name = 'r' AND segment = 'primary'")
  say "  $rows rows, $((loaded / 1000000)) MB stored (primary copies)"
done
LOAD_S=$(echo "$(now) - $t0" | bc)
say "loaded $rows rows in $LOAD_S s"
sync

idle() { # the fixed query's figures with the poller running
  local stop=$WORK/idle.stop poller
  rm -f "$stop"; poll_until "$stop" & poller=$!
  python3 "$ROOT/benchmarks/latency.py" "$URL" "$QUERY" --runs 1000
  touch "$stop"; wait "$poller"
}
IDLE=$(idle)
say "idle: $IDLE"

# One regeneration of the node $1 onto a spare, with the fixed query running.
# Sets REGEN_S (kill -> fully protected), DETECT_S, BYTES, COPY_S, LAT.
regenerate() {
  local victim=$1 t0 t1 stop=$WORK/stop.$1
  rm -f "$stop"
  t0=$(now)
  kill -9 "${PID[n$victim]}"; unset "PID[n$victim]"
  # Failed over: the map no longer counts on the victim's copies.
  while protected; do sleep 0.02; done
  DETECT_S=$(echo "$(now) - $t0" | bc)
  # The fixed query runs from here (the failover is done) to the end.
  sample_until "$stop" > "$WORK/lat.$victim" &
  local sampler=$!
  sql REGENERATE >/dev/null
  sleep 0.5
  wait_protected
  t1=$(now)
  touch "$stop"; wait "$sampler" || true
  REGEN_S=$(echo "$t1 - $t0" | bc)
  BYTES=$(sql "SELECT sum(bytes) FROM slicedb_resync WHERE phase = 'done'")
  COPY_S=$(round_seconds)
  LAT=$(cat "$WORK/lat.$victim")
  say "node $victim regenerated: $(sql "SELECT count(*) FROM slicedb_resync") copies, $BYTES bytes; kill -> fully protected $REGEN_S s (detected after $DETECT_S s); query meanwhile: $LAT"
  [ "$(sql "SELECT count(*) FROM slicedb_verify WHERE status <> 'in_sync'")" = 0 ] || { echo "verify not in sync after regenerating node $victim" >&2; exit 1; }
}

# cp of as many bytes between two files on this disk, written back to disk.
cp_seconds() {
  head -c "$1" /dev/urandom > "$WORK/cp.src"; sync
  local t0; t0=$(now); cp "$WORK/cp.src" "$WORK/cp.dst"; sync; echo "$(now) - $t0" | bc
  rm -f "$WORK/cp.src" "$WORK/cp.dst"
}
say "cp of the bytes one node holds in both segments"
CP0_S=$(cp_seconds $((loaded / 2)))

say "unpaced regeneration of node 0 (copy_rate = 0)"
regenerate 0
U_REGEN=$REGEN_S U_DETECT=$DETECT_S U_BYTES=$BYTES U_COPY=$COPY_S U_LAT=$LAT
CP1_S=$(cp_seconds "$U_BYTES")
# The anchor: the faster of the two cp runs, scaled to the bytes copied.
CP_S=$(echo "c0 = $CP0_S * $U_BYTES / ($loaded / 2); c1 = $CP1_S; if (c0 < c1) c0 else c1" | bc -l)

declare -a P_BYTES P_COPY P_REGEN P_LAT
victim=1
for rate in "${RATES[@]}"; do
  say "paced regeneration of node $victim (copy_rate = $rate): the coordinator restarts with it"
  kill -9 "${PID[c]}"; gone "${PID[c]}"
  config "$rate"
  start_coordinator
  wait_protected
  regenerate $victim
  P_REGEN+=("$REGEN_S") P_BYTES+=("$BYTES") P_COPY+=("$COPY_S") P_LAT+=("$LAT")
  victim=$((victim + 1))
done

say "regeneration of node $victim at copy_rate = 25MiB with no queries running"
kill -9 "${PID[c]}"; gone "${PID[c]}"
config 25MiB
start_coordinator
wait_protected
t0=$(now)
kill -9 "${PID[n$victim]}"; unset "PID[n$victim]"
while protected; do sleep 0.02; done
sql REGENERATE >/dev/null
sleep 0.5
wait_protected
Q_REGEN=$(echo "$(now) - $t0" | bc)
Q_BYTES=$(sql "SELECT sum(bytes) FROM slicedb_resync WHERE phase = 'done'")
Q_COPY=$(round_seconds)
say "node $victim regenerated with no queries: $Q_BYTES bytes, kill -> fully protected $Q_REGEN s"
victim=$((victim + 1))

say "resync: node $victim away for 10 s while 1% of r's rows change"
t0=$(now)
kill -9 "${PID[n$victim]}"; unset "PID[n$victim]"
while protected; do sleep 0.02; done
sql "UPDATE r SET g = g + 1 WHERE k % 100 = 0" >/dev/null
left=$(echo "10 - ($(now) - $t0)" | bc); [ "${left:0:1}" = - ] || sleep "$left"
t1=$(now)
start_node $victim
wait_protected
R_S=$(echo "$(now) - $t1" | bc)
R_BYTES=$(sql "SELECT sum(bytes) FROM slicedb_resync WHERE phase = 'done'")
R_COPY=$(round_seconds)
[ "$(sql "SELECT count(*) FROM slicedb_verify WHERE status <> 'in_sync'")" = 0 ] || { echo "verify not in sync after the resync" >&2; exit 1; }
say "resync of node $victim: $R_BYTES bytes in $R_COPY s, back -> fully protected $R_S s"

mb() { echo "scale=1; $1 / 1000000" | bc; }
rate() { echo "scale=1; $1 / 1000000 / $2" | bc; }
field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
echo
echo "data: $rows rows of r, $(mb "$loaded") MB stored in primary copies ($(mb $((loaded / 4))) MB per node), loaded in $LOAD_S s"
printf '%-34s %12s %12s %14s %10s %10s %8s\n' "" "bytes (MB)" "copy (s)" "kill->prot (s)" "MB/s" "p50 (ms)" "p99 (ms)"
printf '%-34s %12s %12s %14s %10s %10s %8s\n' "idle" "" "" "" "" "$(field "$IDLE" p50)" "$(field "$IDLE" p99)"
printf '%-34s %12s %12s %14s %10s %10s %8s\n' "regeneration, unpaced" "$(mb "$U_BYTES")" "$U_COPY" "$U_REGEN" "$(rate "$U_BYTES" "$U_COPY")" "$(field "$U_LAT" p50)" "$(field "$U_LAT" p99)"
for i in "${!RATES[@]}"; do
  printf '%-34s %12s %12s %14s %10s %10s %8s\n' "regeneration, copy_rate=${RATES[$i]}" "$(mb "${P_BYTES[$i]}")" "${P_COPY[$i]}" "${P_REGEN[$i]}" "$(rate "${P_BYTES[$i]}" "${P_COPY[$i]}")" "$(field "${P_LAT[$i]}" p50)" "$(field "${P_LAT[$i]}" p99)"
done
printf '%-34s %12s %12s %14s %10s\n' "regeneration, 25MiB, no queries" "$(mb "$Q_BYTES")" "$Q_COPY" "$Q_REGEN" "$(rate "$Q_BYTES" "$Q_COPY")"
printf '%-34s %12s %12s %14s %10s\n' "cp + sync before (scaled)" "$(mb "$U_BYTES")" "$(echo "scale=2; $CP0_S * $U_BYTES / ($loaded / 2)" | bc)" "" "$(rate $((loaded / 2)) "$CP0_S")"
printf '%-34s %12s %12s %14s %10s\n' "cp + sync after" "$(mb "$U_BYTES")" "$CP1_S" "" "$(rate "$U_BYTES" "$CP1_S")"
printf '%-34s %12s %12s %14s %10s\n' "resync after 10 s, 1% changed" "$(mb "$R_BYTES")" "$R_COPY" "$R_S" ""
echo
printf 'regeneration / cp throughput (the faster cp): %.0f%% with no queries running (25MiB, idle nodes copy at full speed), %.0f%% unpaced beside the fixed query (goal >= 70%%)\n' \
  "$(echo "100 * $CP_S * $Q_BYTES / $U_BYTES / $Q_COPY" | bc -l)" "$(echo "100 * $CP_S / $U_COPY" | bc -l)"
ratio() { echo "$(field "$1" "$2") / $(field "$IDLE" "$2")" | bc -l; }
printf 'query during regeneration / idle: unpaced p50 %.2fx p99 %.2fx' "$(ratio "$U_LAT" p50)" "$(ratio "$U_LAT" p99)"
for i in "${!RATES[@]}"; do printf '; %s p50 %.2fx p99 %.2fx' "${RATES[$i]}" "$(ratio "${P_LAT[$i]}" p50)" "$(ratio "${P_LAT[$i]}" p99)"; done
echo " (goal <= 1.5x)"
printf 'query errors or changed answers: idle %s, unpaced %s' "$(field "$IDLE" errors)" "$(field "$U_LAT" errors)"
for i in "${!RATES[@]}"; do printf ', %s %s' "${RATES[$i]}" "$(field "${P_LAT[$i]}" errors)"; done
echo " (must be 0)"
printf 'resync: %.1f%% of a full regeneration'"'"'s bytes, %.1f%% of its kill -> fully protected time; detection %.2f s\n' \
  "$(echo "100 * $R_BYTES / $U_BYTES" | bc -l)" "$(echo "100 * $R_S / $U_REGEN" | bc -l)" "$U_DETECT"
echo "anchors: Greenplum full recovery ~22-29 MB/s per segment; CockroachDB default snapshot rate 32 MB/s"
