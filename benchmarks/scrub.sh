#!/usr/bin/env bash
# Foreground latency while the background scrubber runs (issue 18), on
# `slicedb local` (4 nodes in one process, one disk each, no block cache so
# every query reads the disk images the scrubber reads too). Not a test:
# timings are printed, never asserted.
#
#   benchmarks/scrub.sh [ROWS] [RUNS] [RATE]    (defaults 2000000, 300, 8MiB)
#
# 1. Start with --scrub-rate 0, load table big (ROWS rows), and time a light
#    query (a zone-map-pruned range of big: a few blocks per node) RUNS
#    times: the idle figures.
# 2. Restart on the same data with --scrub-rate RATE, wait until every disk
#    is scrubbing, and time the same query RUNS times.
# 3. Print both p50/p95/p99 side by side, their ratio, and what slicedb_scrub
#    shows (the scrub rate reached).
# 4. Restart with --scrub-rate FULL (default 4GiB: no pacing), wait for a
#    complete pass of every disk and print each disk's scrub throughput
#    (bytes of the pass / its duration) against the disk's sequential read
#    rate (dd of a 512 MiB file of written data on the same file system,
#    past the page cache: O_DIRECT, 4 MiB reads).
# Goal (issue 18): p95 while scrubbing at most 1.2x idle.
# Needs psql and psycopg 3. SLICEDB_BIN overrides the binary (the release
# build by default); KEEP=1 keeps the work directory.
set -euo pipefail
ROWS=${1:-2000000}
RUNS=${2:-300}
RATE=${3:-8MiB}
FULL=${FULL:-4GiB}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SLICEDB_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/slicedb}
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release -p slicedb" >&2; exit 1; }
python3 -c 'import psycopg' 2>/dev/null || { echo "needs psycopg: python3 -m pip install 'psycopg[binary]'" >&2; exit 1; }
WORK=$(mktemp -d /tmp/slicedb-scrubbench.XXXXXX)
PORT=${PORT:-57460}
cleanup() {
  [ -n "${SERVER:-}" ] && kill -9 "$SERVER" 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "[$(date +%T)] $*" >&2; }
URL=postgres://slicedb@127.0.0.1:$PORT/slicedb
sql() { psql -X -q -t -A -v ON_ERROR_STOP=1 "$URL" -c "$1"; }

start() { # scrub rate
  "$BIN" local --nodes 4 --data "$WORK/data" --listen "127.0.0.1:$PORT" \
    --disk-size 1GiB --cache-size 0 --metrics-listen off --scrub-rate "$1" \
    > "$WORK/local.out" 2> "$WORK/local.err" &
  SERVER=$!
  for _ in $(seq 600); do grep -q '^ready: ' "$WORK/local.out" 2>/dev/null && break; sleep 0.1; done
  grep -q '^ready: ' "$WORK/local.out" || { echo "slicedb local not ready; see $WORK/local.err" >&2; exit 1; }
}
stop() {
  kill -TERM "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
}

start 0
say "slicedb local up, scrubber off; loading $ROWS rows"
sql "CREATE TABLE big (k bigint, g int, pad text) DISTRIBUTE ON (k)" >/dev/null
BATCH=500000
for s in $(seq 1 $BATCH "$ROWS"); do
  sql "INSERT INTO big SELECT i, i % 1000, md5(i::text) FROM generate_series($s, $((s + BATCH - 1))) AS g(i)" >/dev/null
done
say "loaded: $(sql "SELECT count(*) FROM big") rows; $(sql "SELECT sum(used) FROM slicedb_disks") bytes in use on all disks"
LIGHT="SELECT count(*), sum(g) FROM big WHERE k BETWEEN 100000 AND 101000"
python3 "$ROOT/benchmarks/latency.py" "$URL" "$LIGHT" --runs 20 >/dev/null  # warm up
IDLE=$(python3 "$ROOT/benchmarks/latency.py" "$URL" "$LIGHT" --runs "$RUNS")
say "scrubber off: $IDLE"
stop

start "$RATE"
for _ in $(seq 100); do
  n=$(sql "SELECT count(*) FROM slicedb_scrub WHERE current_pass_progress IS NOT NULL OR last_pass_finished IS NOT NULL")
  [ "$n" = 4 ] && break; sleep 0.2
done
python3 "$ROOT/benchmarks/latency.py" "$URL" "$LIGHT" --runs 20 >/dev/null  # warm up
ON=$(python3 "$ROOT/benchmarks/latency.py" "$URL" "$LIGHT" --runs "$RUNS")
say "scrubber at $RATE/s per disk: $ON"
SCRUB=$(sql "SELECT node, disk, blocks, bytes, damaged, repaired,
  round(bytes / 1048576.0 / greatest(0.001, (extract(epoch FROM last_pass_finished) - extract(epoch FROM last_pass_started))), 1) AS mib_per_s,
  round(current_pass_progress, 2) FROM slicedb_scrub ORDER BY node, disk")
stop

start "$FULL"
say "scrubber unpaced ($FULL/s): waiting for a complete pass of every disk"
for _ in $(seq 600); do
  n=$(sql "SELECT count(*) FROM slicedb_scrub WHERE last_pass_finished IS NOT NULL AND bytes > 0")
  [ "$n" = 4 ] && break; sleep 0.5
done
FULLSCRUB=$(sql "SELECT node, disk, bytes,
  round(bytes / 1048576.0 / greatest(0.001, (extract(epoch FROM last_pass_finished) - extract(epoch FROM last_pass_started))), 1)
  FROM slicedb_scrub ORDER BY node, disk")
stop
# (Not the image itself: its unwritten space reads as zeros without I/O.)
IMG="$WORK/seq.bin"
dd if=/dev/urandom of="$IMG" bs=4M count=128 conv=fsync status=none
DD=$(dd if="$IMG" of=/dev/null bs=4M iflag=direct 2>&1 | tail -1)
DDMIB=$(echo "$DD" | python3 -c "import sys,re; t=sys.stdin.read(); b=int(t.split()[0]); s=float(re.search(r'([0-9.]+) s,', t).group(1)); print(round(b/1048576/s,1))")

field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
echo
printf '%-22s %10s %10s %10s %8s\n' "light query ($RUNS runs)" p50_ms p95_ms p99_ms errors
printf '%-22s %10s %10s %10s %8s\n' "scrubber off" "$(field "$IDLE" p50)" "$(field "$IDLE" p95)" "$(field "$IDLE" p99)" "$(field "$IDLE" errors)"
printf '%-22s %10s %10s %10s %8s\n' "scrubber $RATE/s" "$(field "$ON" p50)" "$(field "$ON" p95)" "$(field "$ON" p99)" "$(field "$ON" errors)"
printf 'ratio on/off: p50 %s  p95 %s\n' \
  "$(python3 -c "print(round($(field "$ON" p50) / $(field "$IDLE" p50), 2))")" \
  "$(python3 -c "print(round($(field "$ON" p95) / $(field "$IDLE" p95), 2))")"
echo "slicedb_scrub (node|disk|blocks|bytes|damaged|repaired|MiB/s of the last complete pass|progress now):"
echo "$SCRUB"
echo
echo "scrub throughput, unpaced, one pass per disk (node|disk|bytes|MiB/s; the 4 disks scrub at once):"
echo "$FULLSCRUB"
echo "sequential read on the same file system (512 MiB written, dd O_DIRECT 4 MiB): $DDMIB MiB/s"
