#!/usr/bin/env bash
# Concurrency figures on `slicedb local` (4 nodes in one process, release
# build), issue 17's benchmark: 1, 4 and 8 clients each running the 22
# TPC-H queries at SF (default 1), throughput in queries per minute, and the
# p50/p99 of `SELECT count(*) FROM nation` meanwhile and with no load. Not a
# test: timings are printed, never asserted.
#
#   benchmarks/concurrency.sh [SF] [CLIENTS]     (defaults 1, 1,4,8)
#
# Loads with the TPC-H runner (which also runs and verifies each query once).
# Needs psql and psycopg 3. SLICEDB_BIN / TPCH_BIN override the binaries;
# KEEP=1 keeps the work directory.
set -euo pipefail
SF=${1:-1}
CLIENTS=${2:-1,4,8}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SLICEDB_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/slicedb}
TPCH=${TPCH_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/tpch}
for b in "$BIN" "$TPCH"; do
  [ -x "$b" ] || { echo "no release binary at $b: cargo build --release -p slicedb -p slicedb-benchmarks" >&2; exit 1; }
done
python3 -c 'import psycopg' 2>/dev/null || { echo "needs psycopg: python3 -m pip install 'psycopg[binary]'" >&2; exit 1; }
WORK=$(mktemp -d /tmp/slicedb-concbench.XXXXXX)
PORT=57500
cleanup() {
  [ -n "${SERVER:-}" ] && kill -9 "$SERVER" 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "[$(date +%T)] $*" >&2; }
URL=postgres://slicedb@127.0.0.1:$PORT/slicedb

"$BIN" local --nodes 4 --data "$WORK/data" --listen "127.0.0.1:$PORT" \
  > "$WORK/local.out" 2> "$WORK/local.err" &
SERVER=$!
for _ in $(seq 600); do grep -q '^ready: ' "$WORK/local.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^ready: ' "$WORK/local.out" || { echo "slicedb local not ready; see $WORK/local.err" >&2; exit 1; }
say "slicedb local up (pid $SERVER); loading TPC-H SF $SF"
"$TPCH" --sf "$SF" --url "$URL" --iterations 1 > "$WORK/load.out" 2>&1 \
  || { tail -20 "$WORK/load.out" >&2; exit 1; }
say "loaded; $(grep -c . "$WORK/load.out") lines of runner output in $WORK/load.out"
FAILOVERS0=$(psql -X -q -t -A "$URL" -c "SELECT count(*) FROM slicedb_map_history WHERE cause LIKE '%failed%'")
python3 "$ROOT/benchmarks/concurrency.py" "$URL" "$ROOT/benchmarks/queries" --clients "$CLIENTS"
FAILOVERS=$(psql -X -q -t -A "$URL" -c "SELECT count(*) FROM slicedb_map_history WHERE cause LIKE '%failed%'")
echo "failovers during the runs: $((FAILOVERS - FAILOVERS0)) (must be 0)"
