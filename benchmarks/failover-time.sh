#!/usr/bin/env bash
# Time from kill -9 of a node to the first correct answer of a full-table
# aggregate, on a multi-process cluster (3 nodes + coordinator), median and
# spread of TRIALS. Not a test: timings are printed, never asserted.
#
#   benchmarks/failover-time.sh [TRIALS] [ROWS]     (defaults 10, 200000)
#
# SLICEDB_BIN overrides the binary (default: the release build).
set -euo pipefail
TRIALS=${1:-10}
ROWS=${2:-200000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${SLICEDB_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/slicedb}
[ -x "$BIN" ] || { echo "no release binary at $BIN: cargo build --release" >&2; exit 1; }
WORK=$(mktemp -d /tmp/slicedb-failbench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
Q="SELECT count(*), sum(k), sum(v) FROM f"
declare -a T
for trial in $(seq "$TRIALS"); do
  D=$WORK/t$trial; mkdir -p "$D"
  base=$((56000 + trial * 10))
  cat > "$D/cluster.toml" <<TOML
cluster_id = "bench"
slices_per_disk = 4
[coordinator]
listen = "127.0.0.1:$base"
data_dir = "$D/coord"
hba = ["host all all 127.0.0.1/32 trust"]
TOML
  for n in 0 1 2; do
    printf '[[nodes]]\nid = %d\naddress = "127.0.0.1:%d"\ndata_dir = "%s/node%d"\ndisk_size = "1GiB"\n' \
      "$n" $((base + 1 + n)) "$D" "$n" >> "$D/cluster.toml"
  done
  "$BIN" certs --config "$D/cluster.toml" > /dev/null
  PIDS=()
  for n in 0 1 2; do
    "$BIN" node --config "$D/cluster.toml" --id $n > "$D/node$n.out" 2> "$D/node$n.err" &
    PIDS+=($!)
  done
  "$BIN" coordinator --config "$D/cluster.toml" > "$D/coord.out" 2> "$D/coord.err" &
  PIDS+=($!)
  for _ in $(seq 150); do grep -q '^ready: ' "$D/coord.out" 2>/dev/null && break; sleep 0.1; done
  URL=postgres://slicedb@127.0.0.1:$base/slicedb
  psql -X -q -v ON_ERROR_STOP=1 "$URL" -c "CREATE TABLE f (k bigint, v bigint) DISTRIBUTE ON (k)" \
    -c "INSERT INTO f SELECT i, i % 1000 FROM generate_series(1, $ROWS) AS g(i)"
  WANT=$(psql -X -q -t -A "$URL" -c "$Q")
  victim=$(( (trial - 1) % 3 ))
  t0=$(date +%s.%N)
  kill -9 "${PIDS[$victim]}"
  while :; do
    GOT=$(psql -X -q -t -A "$URL" -c "$Q" 2>/dev/null || true)
    [ "$GOT" = "$WANT" ] && break
  done
  t1=$(date +%s.%N)
  T+=("$(echo "$t1 - $t0" | bc)")
  echo "trial $trial: killed node $victim, first correct answer after ${T[-1]} s" >&2
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
done
printf '%s\n' "${T[@]}" | sort -g | awk -v n="$TRIALS" '{a[NR]=$1} END {
  printf "kill -9 -> first correct full-table aggregate, %d trials: median %.3f s, min %.3f s, max %.3f s (goal <= 1 s)\n", n, a[int((NR+1)/2)], a[1], a[NR] }'
