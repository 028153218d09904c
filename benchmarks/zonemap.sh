#!/usr/bin/env bash
# Zone-map pruning: a range predicate over rows loaded in key order. Every
# block keeps min/max per column (docs/disk-format.md); a node skips a block
# whose zone cannot match a pushed-down predicate. EXPLAIN ANALYZE shows the
# counts on each BroadcastScanExec (blocks_total, blocks_pruned). Goal: at
# least 90% of the blocks skipped. Not a test: figures are printed, the goal
# is only reported (the exit code says whether the run itself worked).
#
#   benchmarks/zonemap.sh [ROWS] [RANGE_PERCENT]     (defaults 10000000, 1)
#
# Needs a release build (CARGO_TARGET_DIR may point elsewhere; SLICEDB_BIN
# overrides the binary) and psql.
set -euo pipefail
ROWS=${1:-10000000}
PCT=${2:-1}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SLICEDB_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/slicedb}
WORK=$(mktemp -d /tmp/slicedb-zonemap.XXXXXX)
PORT=55497
trap 'kill $SLICEDB_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

[ -x "$BIN" ] || { echo "no release binary at $BIN: cargo build --release" >&2; exit 1; }
"$BIN" local --nodes 4 --data "$WORK/data" --listen 127.0.0.1:$PORT > "$WORK/slicedb.out" 2> "$WORK/slicedb.err" &
SLICEDB_PID=$!
for _ in $(seq 100); do grep -q '^ready: ' "$WORK/slicedb.out" 2>/dev/null && break; sleep 0.2; done
URL=postgres://slicedb@127.0.0.1:$PORT/slicedb
q() { psql -X -q -v ON_ERROR_STOP=1 -At "$URL" -c "$1"; }

q "CREATE TABLE events (id bigint, amount bigint, note text) DISTRIBUTE ON (id)"
echo "loading $ROWS rows in key order..." >&2
T0=$(date +%s.%N)
awk -v n="$ROWS" 'BEGIN { for (i = 1; i <= n; i++) printf "%d\t%d\tnote %d\n", i, (i * 7919) % 100003, i % 977 }' |
  psql -X -q -v ON_ERROR_STOP=1 "$URL" -c "COPY events FROM STDIN"
T1=$(date +%s.%N)
echo "loaded in $(echo "$T1 - $T0" | bc) s" >&2

LO=$((ROWS / 2))
HI=$((LO + ROWS * PCT / 100 - 1))
RANGE="SELECT count(*), sum(amount) FROM events WHERE id BETWEEN $LO AND $HI"
FULL="SELECT count(*), sum(amount) FROM events WHERE amount >= 0"

plan=$(q "EXPLAIN ANALYZE $RANGE")
total=$(grep -o 'blocks_total=[0-9]*' <<<"$plan" | head -1 | cut -d= -f2)
pruned=$(grep -o 'blocks_pruned=[0-9]*' <<<"$plan" | head -1 | cut -d= -f2)
[ -n "$total" ] && [ -n "$pruned" ] || { echo "EXPLAIN ANALYZE shows no block counts:" >&2; echo "$plan" >&2; exit 1; }
answer=$(q "$RANGE")
expect_count=$((HI - LO + 1))
[ "${answer%%|*}" = "$expect_count" ] || { echo "wrong answer: $answer, expected count $expect_count" >&2; exit 1; }

best() { # best of 5 wall-clock runs of $1, in ms
  local b=""
  for _ in 1 2 3 4 5; do
    local s e
    s=$(date +%s%N); q "$1" > /dev/null; e=$(date +%s%N)
    local ms=$(((e - s) / 1000000))
    if [ -z "$b" ] || [ "$ms" -lt "$b" ]; then b=$ms; fi
  done
  echo "$b"
}
range_ms=$(best "$RANGE")
full_ms=$(best "$FULL")

skipped=$(echo "scale=1; 100 * $pruned / $total" | bc)
echo
echo "rows $ROWS, range $PCT% of the keys (id BETWEEN $LO AND $HI): count $expect_count"
echo "$(grep -o 'BroadcastScanExec: table=events[^,]*, nodes=[0-9]*, slices=[0-9]*, pushed_filters=[0-9]*' <<<"$plan" | head -1)"
echo "$(grep -o 'blocks_pruned=[0-9]*, blocks_total=[0-9]*\|blocks_total=[0-9]*, blocks_pruned=[0-9]*' <<<"$plan" | head -1)"
echo "blocks skipped: $pruned of $total = $skipped% (goal >= 90%)"
echo "range query: ${range_ms} ms (best of 5); the same aggregate over all rows: ${full_ms} ms"
if [ "$(echo "$skipped >= 90" | bc)" = 1 ]; then echo "goal met"; else echo "goal NOT met"; fi
