#!/usr/bin/env python3
"""DuckDB anchor for the TPC-H runner: the same 22 query texts
(benchmarks/queries/), in-memory tables, median of N runs per query.

    pip install duckdb
    cargo run --release -p slicedb-benchmarks --bin tpch -- --sf 1 --engine datafusion \
        --iterations 1 --dump-parquet /tmp/tpch-sf1
    python3 benchmarks/duckdb_tpch.py --parquet /tmp/tpch-sf1 [--iterations 3] [--json out.json]

The rows are the ones the runner generated with tpchgen (read from its
Parquet dump into DuckDB in-memory tables before timing). Without --parquet,
DuckDB's own tpch extension generates them (it must be downloadable). Not a test: timings are printed, never asserted. Compare the
total with the `tpch` runner's slicedb total from a run on the same machine.
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

QUERIES = pathlib.Path(__file__).resolve().parent / "queries"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parquet", help="directory of <table>.parquet written by tpch --dump-parquet")
    ap.add_argument("--sf", type=float, default=1.0, help="scale factor for DuckDB's dbgen, without --parquet (default 1)")
    ap.add_argument("--iterations", type=int, default=3, help="runs per query; the median is reported")
    ap.add_argument("--threads", type=int, default=0, help="DuckDB threads (0: DuckDB's default, the core count)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    try:
        import duckdb
    except ImportError:
        print("duckdb is not installed: pip install duckdb", file=sys.stderr)
        return 2

    con = duckdb.connect(":memory:")
    if args.threads:
        con.execute(f"SET threads = {args.threads}")
    t0 = time.perf_counter()
    if args.parquet:
        for t in ["region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem"]:
            path = pathlib.Path(args.parquet) / f"{t}.parquet"
            con.execute(f"CREATE TABLE {t} AS SELECT * FROM read_parquet('{path}')")
        print(f"loaded {args.parquet} into memory in {time.perf_counter() - t0:.2f} s", file=sys.stderr)
    else:
        con.execute("INSTALL tpch")
        con.execute("LOAD tpch")
        con.execute(f"CALL dbgen(sf = {args.sf})")
        print(f"generated SF {args.sf} in DuckDB in {time.perf_counter() - t0:.2f} s", file=sys.stderr)

    rows = []
    for n in range(1, 23):
        sql = (QUERIES / f"q{n:02}.sql").read_text()
        times = []
        result = None
        for _ in range(args.iterations):
            t = time.perf_counter()
            result = con.execute(sql).fetchall()
            times.append((time.perf_counter() - t) * 1e3)
        med = statistics.median(times)
        rows.append({"query": f"Q{n:02}", "rows": len(result), "duckdb_ms": times, "duckdb_median_ms": med})
        print(f"Q{n:02} {len(result):>6} rows  {med:>9.1f} ms", file=sys.stderr)

    total = sum(r["duckdb_median_ms"] for r in rows)
    print(f"{'query':<6} {'rows':>6} {'duckdb ms':>12}")
    for r in rows:
        print(f"{r['query']:<6} {r['rows']:>6} {r['duckdb_median_ms']:>12.1f}")
    print(f"{'total':<6} {'':>6} {total:>12.1f}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"parquet": args.parquet, "scale_factor": args.sf, "queries": rows, "total_ms": total}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
