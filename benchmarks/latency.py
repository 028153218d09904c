#!/usr/bin/env python3
"""Latency sampler for benchmarks/regeneration.sh and scrub.sh (not a test).

Runs one query over and over on one connection, either N times or until a
stop file appears, and prints one line: "n=<runs> errors=<e> p50=<ms>
p95=<ms> p99=<ms> max=<ms>". Every answer must equal the first one; a different
answer or an error counts in `errors` (they should be 0).

    latency.py URL QUERY (--runs N | --until FILE)

Needs psycopg 3 (python3 -m pip install 'psycopg[binary]').
"""
import argparse
import os
import sys
import time

import psycopg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("query")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--runs", type=int, help="run the query this many times")
    g.add_argument("--until", help="run until this file exists")
    a = ap.parse_args()

    conn = psycopg.connect(a.url, autocommit=True)
    want = None
    times = []
    errors = 0
    while True:
        if a.runs is not None and len(times) + errors >= a.runs:
            break
        if a.until is not None and os.path.exists(a.until):
            break
        t0 = time.perf_counter()
        try:
            got = conn.execute(a.query).fetchall()
        except psycopg.Error as e:
            errors += 1
            print(f"latency.py: {e}", file=sys.stderr)
            if conn.closed:
                conn = psycopg.connect(a.url, autocommit=True)
            continue
        times.append((time.perf_counter() - t0) * 1000.0)
        if want is None:
            want = got
        elif got != want:
            errors += 1
            print(f"latency.py: answer changed: {got} != {want}", file=sys.stderr)
    times.sort()
    if not times:
        print(f"n=0 errors={errors} p50=nan p95=nan p99=nan max=nan")
        return 1

    def pct(p: float) -> float:
        return times[min(len(times) - 1, int(p * len(times)))]

    print(
        f"n={len(times)} errors={errors} p50={pct(0.50):.1f} "
        f"p95={pct(0.95):.1f} p99={pct(0.99):.1f} max={times[-1]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
