#!/usr/bin/env bash
# Load throughput: COPY of the same rows into a mirrored table, an unmirrored
# table (WITH (mirrored = false)) and PostgreSQL 15, in one run, alternating
# trials. Not a test: timings are printed, never asserted. Between loads,
# untimed, PostgreSQL checkpoints and the kernel writes back dirty pages, so
# one system's deferred writes do not land in another's trial.
#
#   benchmarks/mirrored-load.sh [ROWS] [TRIALS]     (defaults 5000000, 3)
#
# Needs a release build (CARGO_TARGET_DIR may point elsewhere; SLICEDB_BIN
# overrides the binary), psql, and for the PostgreSQL column the Debian
# postgresql-15 package (/usr/lib/postgresql/15/bin); it is skipped if absent.
set -euo pipefail
ROWS=${1:-5000000}
TRIALS=${2:-3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SLICEDB_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/slicedb}
WORK=$(mktemp -d /tmp/slicedb-loadbench.XXXXXX)
PORT=55499
PGPORT=55498
trap 'kill $SLICEDB_PID 2>/dev/null || true; [ -n "${PGDATA:-}" ] && su postgres -c "/usr/lib/postgresql/15/bin/pg_ctl -D $PGDATA stop -m immediate" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

[ -x "$BIN" ] || { echo "no release binary at $BIN: cargo build --release" >&2; exit 1; }
echo "generating $ROWS rows..." >&2
awk -v n="$ROWS" 'BEGIN { for (i = 1; i <= n; i++) printf "%d\t%d\tname-%d\t2024-%02d-%02d\t%d.%02d\n", i, i % 1000, i, i % 12 + 1, i % 28 + 1, i % 100000, i % 100 }' > "$WORK/rows.tsv"
echo "$(du -h "$WORK/rows.tsv" | cut -f1) of TSV" >&2

"$BIN" local --nodes 4 --data "$WORK/data" --listen 127.0.0.1:$PORT > "$WORK/slicedb.out" 2> "$WORK/slicedb.err" &
SLICEDB_PID=$!
for _ in $(seq 100); do grep -q '^ready: ' "$WORK/slicedb.out" 2>/dev/null && break; sleep 0.2; done
URL=postgres://slicedb@127.0.0.1:$PORT/slicedb
DDL='(id bigint, grp int, name text, day date, amount numeric(12,2)) DISTRIBUTE ON (id)'

HAVE_PG=0
if [ -x /usr/lib/postgresql/15/bin/initdb ]; then
  PGDATA=$WORK/pg
  mkdir -p "$PGDATA" && chown postgres "$WORK" "$PGDATA" && chmod 755 "$WORK"
  su postgres -c "/usr/lib/postgresql/15/bin/initdb -D $PGDATA -A trust -U postgres" >/dev/null
  su postgres -c "/usr/lib/postgresql/15/bin/pg_ctl -D $PGDATA -l $PGDATA/log -o '-p $PGPORT -k $PGDATA -c listen_addresses=127.0.0.1' start" >/dev/null
  HAVE_PG=1
  chmod 644 "$WORK/rows.tsv"
fi
PGURL=postgres://postgres@127.0.0.1:$PGPORT/postgres

now() { date +%s.%N; }
load() { # url table
  local t0 t1
  t0=$(now)
  psql -X -q -v ON_ERROR_STOP=1 "$1" -c "\\copy $2 FROM '$WORK/rows.tsv'" >/dev/null
  t1=$(now)
  echo "$t1 - $t0" | bc
  # Untimed: write back what this load left dirty (PostgreSQL's COPY leaves
  # its heap to the checkpointer and the kernel; slicedb fsyncs before its
  # COMMIT returns), so it does not slow down the next trial of another system.
  if [ "$2" = p ]; then psql -X -q "$1" -c CHECKPOINT >/dev/null; fi
  sync
}

declare -a M U P
for i in $(seq "$TRIALS"); do
  psql -X -q "$URL" -c "DROP TABLE IF EXISTS m; CREATE TABLE m $DDL; DROP TABLE IF EXISTS u; CREATE TABLE u $DDL WITH (mirrored = false)"
  M+=("$(load "$URL" m)")
  U+=("$(load "$URL" u)")
  if [ $HAVE_PG = 1 ]; then
    psql -X -q "$PGURL" -c "DROP TABLE IF EXISTS p; CREATE TABLE p (id bigint, grp int, name text, day date, amount numeric(12,2))"
    P+=("$(load "$PGURL" p)")
  fi
  echo "trial $i: mirrored ${M[-1]} s, unmirrored ${U[-1]} s${P:+, postgresql ${P[-1]} s}" >&2
done
psql -X -q -t -A "$URL" -c "SELECT 'mirrored rows: ' || count(*) FROM m" >&2
psql -X -q -t -A "$URL" -c "SELECT 'verify: ' || string_agg(DISTINCT status, ',') FROM slicedb_verify" >&2

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
MM=$(median "${M[@]}"); UM=$(median "${U[@]}")
echo "rows: $ROWS, trials: $TRIALS (medians)"
printf 'slicedb mirrored   %8.2f s  %10.0f rows/s\n' "$MM" "$(echo "$ROWS / $MM" | bc -l)"
printf 'slicedb unmirrored %8.2f s  %10.0f rows/s\n' "$UM" "$(echo "$ROWS / $UM" | bc -l)"
printf 'mirrored / unmirrored time: %.2fx (goal <= 1.25x)\n' "$(echo "$MM / $UM" | bc -l)"
if [ $HAVE_PG = 1 ]; then
  PM=$(median "${P[@]}")
  printf 'postgresql 15      %8.2f s  %10.0f rows/s\n' "$PM" "$(echo "$ROWS / $PM" | bc -l)"
  printf 'mirrored rows/s vs postgresql: %.2fx (goal >= 3x)\n' "$(echo "$PM / $MM" | bc -l)"
fi
