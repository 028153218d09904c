#!/usr/bin/env bash
# Isolation figures on `slicedb local` (4 nodes in one process, release
# build): a light query's latency idle and while two heavy queries run, and
# whether the failure detector failed any node meanwhile. Not a test:
# timings are printed, never asserted.
#
#   benchmarks/isolation.sh [ROWS] [SECONDS]     (defaults 10000000, 60)
#
# 1. Load table big (ROWS rows) and nation (25 rows).
# 2. Idle: p50/p99 of `SELECT count(*) FROM nation` (300 runs).
# 3. Two heavy clients, each in a loop: a full-table aggregate of big, and a
#    runaway cross join of big with nation three times (it would run for
#    hours; statement_timeout ends it after 20 s and the loop starts it
#    again). Meanwhile the light query runs for SECONDS: p50/p99, errors.
# 4. Failovers during the run (slicedb_map_history), and the server's
#    processor use once the heavy clients are killed (their statements must
#    stop when their clients go).
# Goal (issue 17): p99 of the light query at most 200 ms, no failover.
# Needs psql, bc and psycopg 3. SLICEDB_BIN overrides the binary; KEEP=1
# keeps the work directory.
set -euo pipefail
ROWS=${1:-10000000}
SECONDS_UNDER_LOAD=${2:-60}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SLICEDB_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/slicedb}
[ -x "$BIN" ] || { echo "no release binary at $BIN: cargo build --release -p slicedb" >&2; exit 1; }
python3 -c 'import psycopg' 2>/dev/null || { echo "needs psycopg: python3 -m pip install 'psycopg[binary]'" >&2; exit 1; }
WORK=$(mktemp -d /tmp/slicedb-isobench.XXXXXX)
PORT=57400
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  [ -n "${SERVER:-}" ] && kill -9 "$SERVER" 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "[$(date +%T)] $*" >&2; }
URL=postgres://slicedb@127.0.0.1:$PORT/slicedb
sql() { psql -X -q -t -A -v ON_ERROR_STOP=1 "$URL" -c "$1"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

"$BIN" local --nodes 4 --data "$WORK/data" --listen "127.0.0.1:$PORT" \
  > "$WORK/local.out" 2> "$WORK/local.err" &
SERVER=$!
for _ in $(seq 600); do grep -q '^ready: ' "$WORK/local.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^ready: ' "$WORK/local.out" || { echo "slicedb local not ready; see $WORK/local.err" >&2; exit 1; }
say "slicedb local up (pid $SERVER); loading $ROWS rows"

sql "CREATE TABLE nation (n_nationkey int, n_name text) DISTRIBUTE ON (n_nationkey)" >/dev/null
sql "INSERT INTO nation SELECT i, 'nation ' || i FROM generate_series(0, 24) AS g(i)" >/dev/null
sql "CREATE TABLE big (k bigint, g int, pad text) DISTRIBUTE ON (k)" >/dev/null
BATCH=2000000
for start in $(seq 1 $BATCH "$ROWS"); do
  sql "INSERT INTO big SELECT i, i % 1000, md5(i::text) FROM generate_series($start, $((start + BATCH - 1))) AS g(i)" >/dev/null
done
say "loaded: $(sql "SELECT count(*) FROM big") rows in big"

LIGHT="SELECT count(*) FROM nation"
IDLE=$(python3 "$ROOT/benchmarks/latency.py" "$URL" "$LIGHT" --runs 300)
say "idle: $IDLE"
EPOCH0=$(sql "SELECT coalesce(max(epoch), 0) FROM slicedb_map_history")

heavy_loop() { # query
  while :; do
    psql -X -q -t -A "$URL" -c "SET statement_timeout = '20s'" -c "$1" >/dev/null 2>&1 || true
  done
}
heavy_loop "SELECT g, count(*), sum(length(pad)) FROM big GROUP BY g ORDER BY g" &
PIDS+=($!)
heavy_loop "SELECT count(*) FROM big a, nation b, nation c, nation d" &
PIDS+=($!)
sleep 3
t0=$(cpu_ticks "$SERVER")
sleep 5
BUSY=$(echo "scale=2; ($(cpu_ticks "$SERVER") - $t0) / $(getconf CLK_TCK) / 5" | bc)
say "two heavy clients running: the server uses $BUSY cores"
STOP=$WORK/stop
( sleep "$SECONDS_UNDER_LOAD"; touch "$STOP" ) &
LOADED=$(python3 "$ROOT/benchmarks/latency.py" "$URL" "$LIGHT" --until "$STOP")
say "under load: $LOADED"
FAILOVERS=$(sql "SELECT count(*) FROM slicedb_map_history WHERE epoch > $EPOCH0 AND cause LIKE '%failed%'")
STATES=$(sql "SELECT count(*) FROM slicedb_slices WHERE state <> 'in_sync'")

# The heavy clients go away (loops and their psql processes killed): their
# statements must stop with them.
for p in "${PIDS[@]}"; do pkill -9 -P "$p" 2>/dev/null || true; kill -9 "$p" 2>/dev/null || true; done
PIDS=()
sleep 2
t0=$(cpu_ticks "$SERVER")
sleep 2
AFTER=$(echo "scale=2; ($(cpu_ticks "$SERVER") - $t0) / $(getconf CLK_TCK) / 2" | bc)

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<< "$2"; }
echo
echo "data: $ROWS rows in big, 25 in nation; slicedb local, 4 nodes; ${SECONDS_UNDER_LOAD} s under load"
printf '%-42s %10s %10s %10s %8s\n' "" "runs" "p50 (ms)" "p99 (ms)" "errors"
printf '%-42s %10s %10s %10s %8s\n' "$LIGHT, idle" "$(field n "$IDLE")" "$(field p50 "$IDLE")" "$(field p99 "$IDLE")" "$(field errors "$IDLE")"
printf '%-42s %10s %10s %10s %8s\n' "the same, two heavy queries running" "$(field n "$LOADED")" "$(field p50 "$LOADED")" "$(field p99 "$LOADED")" "$(field errors "$LOADED")"
echo "server processor use: $BUSY cores with the heavy clients, $AFTER cores 2 s after they were killed"
echo "failovers during the run: $FAILOVERS (must be 0); slices not in sync at the end: $STATES"
echo "goal: p99 <= 200 ms under load, no failover"
