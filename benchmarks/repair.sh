#!/usr/bin/env bash
# The time a query needs when it meets one damaged block (repaired from the
# slice's other copy on the way) against the same query over good blocks
# (issue 18), on `slicedb local` (4 nodes in one process, one disk each, no
# block cache and no scrubber, so the query is what meets the damage). Not a
# test: timings are printed, never asserted.
#
#   benchmarks/repair.sh [ROWS] [RUNS]          (defaults 400000, 40)
#
# 1. Load table t (ROWS rows, one statement: one block per slice and copy)
#    and list each node's primary extent runs (`slicedb disk inspect --json`).
# 2. RUNS times, in turn on the same data: time the query over good blocks;
#    flip 16 bytes in the middle of one primary run's committed bytes (one
#    block; the disks in turn, each run again once all were damaged and
#    repaired); time the same query again (it meets
#    the damage, fetches the block from the mirror's node, writes it back,
#    and answers). Every answer must equal the first.
# 3. Print p50/p95/max of both, their difference, and the repairs counted in
#    slicedb_repairs (must be RUNS).
# The cluster runs with --bad-block-limit 1000000: the RUNS repairs are the
# benchmark's own damage, not a dying disk (the default, 16 per disk within
# 10 min, would fail a disk over after 64 runs).
# Needs psycopg 3. SLICEDB_BIN overrides the binary (the release build by
# default); KEEP=1 keeps the work directory.
set -euo pipefail
ROWS=${1:-400000}
RUNS=${2:-40}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SLICEDB_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/slicedb}
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release -p slicedb" >&2; exit 1; }
python3 -c 'import psycopg' 2>/dev/null || { echo "needs psycopg: python3 -m pip install 'psycopg[binary]'" >&2; exit 1; }
WORK=$(mktemp -d /tmp/slicedb-repairbench.XXXXXX)
PORT=${PORT:-57470}
cleanup() {
  [ -n "${SERVER:-}" ] && kill -9 "$SERVER" 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "[$(date +%T)] $*" >&2; }
URL=postgres://slicedb@127.0.0.1:$PORT/slicedb
sql() { psql -X -q -t -A -v ON_ERROR_STOP=1 "$URL" -c "$1"; }

"$BIN" local --nodes 4 --data "$WORK/data" --listen "127.0.0.1:$PORT" \
  --disk-size 1GiB --cache-size 0 --metrics-listen off --scrub-rate 0 \
  --bad-block-limit 1000000 > "$WORK/local.out" 2> "$WORK/local.err" &
SERVER=$!
for _ in $(seq 600); do grep -q '^ready: ' "$WORK/local.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^ready: ' "$WORK/local.out" || { echo "slicedb local not ready; see $WORK/local.err" >&2; exit 1; }
say "slicedb local up; loading $ROWS rows"
sql "CREATE TABLE t (k bigint, g int, pad text) DISTRIBUTE ON (k)" >/dev/null
sql "INSERT INTO t SELECT i, i % 1000, md5(i::text) FROM generate_series(1, $ROWS) AS s(i)" >/dev/null
say "loaded: $(sql "SELECT count(*) FROM t") rows"

# Each node's primary extent runs: image, offset, committed bytes.
: > "$WORK/runs.txt"
for img in "$WORK"/data/node-*/disk-0.img; do
  "$BIN" disk inspect --json "$img" | python3 -c '
import json, sys
img = sys.argv[1]
for e in json.load(sys.stdin)["extents"]:
    if e["segment"] in ("primary", "Primary") and e["used"] > 64:
        print(img, e["offset"], e["used"])
' "$img" >> "$WORK/runs.txt"
done
say "$(wc -l < "$WORK/runs.txt") primary extent runs to damage"

python3 - "$URL" "$RUNS" "$WORK/runs.txt" <<'EOF'
import random, statistics, sys, time
import psycopg

url, runs, listing = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spots = [l.split() for l in open(listing)]
random.Random(7).shuffle(spots)
# One damaged block per disk in turn, never the same run twice.
by_img = {}
for img, off, used in spots:
    by_img.setdefault(img, []).append((int(off), int(used)))
order = []
while any(by_img.values()):
    for img in sorted(by_img):
        if by_img[img]:
            order.append((img,) + by_img[img].pop())
if not order:
    sys.exit("no primary extent run to damage")

Q = "SELECT count(*), sum(g), min(pad), max(pad) FROM t"
conn = psycopg.connect(url, autocommit=True)
want = conn.execute(Q).fetchall()
for _ in range(5):  # warm up
    conn.execute(Q).fetchall()

def timed():
    t0 = time.perf_counter()
    got = conn.execute(Q).fetchall()
    ms = (time.perf_counter() - t0) * 1000.0
    if got != want:
        sys.exit(f"wrong answer: {got} != {want}")
    return ms

clean, repaired = [], []
for i in range(runs):
    clean.append(timed())
    # (A run damaged again was repaired in place before.)
    img, off, used = order[i % len(order)]
    with open(img, "r+b") as f:
        at = off + used // 2
        f.seek(at)
        good = f.read(16)
        f.seek(at)
        f.write(bytes(b ^ 0x5A for b in good))
        f.flush()
    repaired.append(timed())

n = conn.execute("SELECT count(*) FROM slicedb_repairs WHERE outcome = 'repaired'").fetchone()[0]
failed = conn.execute("SELECT count(*) FROM slicedb_disks WHERE state <> 'in_service'").fetchone()[0]

def q(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

print()
print(f"{'full scan of t (' + str(runs) + ' runs)':34} {'p50_ms':>8} {'p95_ms':>8} {'max_ms':>8}")
for name, xs in (("no damaged block", clean), ("one block repaired on the way", repaired)):
    print(f"{name:34} {q(xs, 50):8.1f} {q(xs, 95):8.1f} {max(xs):8.1f}")
d = [r - c for r, c in zip(repaired, clean)]
print(f"{'difference per pair':34} {statistics.median(d):8.1f} {q(d, 95):8.1f} {max(d):8.1f}")
print(f"repairs in slicedb_repairs: {n} (of {runs}); disks not in service: {failed}")
EOF
kill -TERM "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
