#!/usr/bin/env python3
"""Concurrent TPC-H streams beside a light query (not a test).

For each client count N: N clients each run the 22 TPC-H queries once (client
i starts at query i + 1 and wraps round, so the streams differ), all at once,
while one more client runs the light query `SELECT count(*) FROM nation`
over and over. Prints, per N: throughput (queries per minute), the streams'
wall time, and the light query's p50/p99/max and errors. First the light
query alone (no load).

    concurrency.py URL QUERIES_DIR [--clients 1,4,8] [--idle-runs 300]

Needs psycopg 3 (python3 -m pip install 'psycopg[binary]').
"""
import argparse
import os
import sys
import threading
import time

import psycopg

LIGHT = "SELECT count(*) FROM nation"


def pct(times, p):
    return times[min(len(times) - 1, int(p * len(times)))]


def light_stats(times, errors):
    times = sorted(times)
    if not times:
        return f"n=0 errors={errors} p50=nan p99=nan max=nan"
    return (
        f"n={len(times)} errors={errors} p50={pct(times, 0.50):.1f} "
        f"p99={pct(times, 0.99):.1f} max={times[-1]:.1f}"
    )


def light_loop(url, stop, out):
    conn = psycopg.connect(url, autocommit=True)
    times, errors, want = [], 0, None
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            got = conn.execute(LIGHT).fetchall()
        except psycopg.Error as e:
            errors += 1
            print(f"concurrency.py: light query: {e}", file=sys.stderr)
            if conn.closed:
                conn = psycopg.connect(url, autocommit=True)
            continue
        times.append((time.perf_counter() - t0) * 1000.0)
        if want is None:
            want = got
        elif got != want:
            errors += 1
    out["times"], out["errors"] = times, errors


def stream(url, queries, start, out):
    conn = psycopg.connect(url, autocommit=True)
    done, errors = 0, 0
    for k in range(len(queries)):
        name, sql = queries[(start + k) % len(queries)]
        try:
            conn.execute(sql).fetchall()
            done += 1
        except psycopg.Error as e:
            errors += 1
            print(f"concurrency.py: {name}: {e}", file=sys.stderr)
            if conn.closed:
                conn = psycopg.connect(url, autocommit=True)
    out["done"], out["errors"] = done, errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("queries_dir")
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--idle-runs", type=int, default=300)
    a = ap.parse_args()
    queries = []
    for f in sorted(os.listdir(a.queries_dir)):
        if f.endswith(".sql"):
            with open(os.path.join(a.queries_dir, f)) as fh:
                queries.append((f, fh.read()))
    conn = psycopg.connect(a.url, autocommit=True)
    idle = []
    for _ in range(a.idle_runs):
        t0 = time.perf_counter()
        conn.execute(LIGHT).fetchall()
        idle.append((time.perf_counter() - t0) * 1000.0)
    print(f"light query alone: {light_stats(idle, 0)}", flush=True)
    for n in [int(x) for x in a.clients.split(",")]:
        stop = threading.Event()
        light = {}
        lt = threading.Thread(target=light_loop, args=(a.url, stop, light))
        lt.start()
        outs = [{} for _ in range(n)]
        threads = [
            threading.Thread(target=stream, args=(a.url, queries, i, outs[i]))
            for i in range(n)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        stop.set()
        lt.join()
        done = sum(o["done"] for o in outs)
        errors = sum(o["errors"] for o in outs)
        print(
            f"clients={n} queries={done} errors={errors} wall_s={wall:.1f} "
            f"qpm={done / wall * 60:.1f} light: {light_stats(light['times'], light['errors'])}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
