#!/usr/bin/env python3
"""Server-side cursors with psycopg 3: named cursors over 100,000 rows fetched
1,000 at a time, DECLARE / FETCH / MOVE / CLOSE against known answers, WITH
HOLD across COMMIT, and the errors' SQLSTATEs.

Usage: python3 tests/python/test_cursors.py postgres://slicedb@127.0.0.1:PORT/slicedb

Run by tests/it/cursors.rs; exits non-zero on the first failed check.
"""

import sys

try:
    import psycopg
except ImportError:
    print("psycopg 3 is not installed: python3 -m pip install 'psycopg[binary]'", file=sys.stderr)
    sys.exit(2)

N = 100_000


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def expect_error(conn, sql, sqlstate, what):
    """`sql` fails with `sqlstate`; the block it ran in is rolled back."""
    try:
        conn.execute(sql)
    except psycopg.Error as e:
        got = e.sqlstate
        conn.rollback()
        check(got == sqlstate, f"{what}: {got} ({e})")
        return
    raise AssertionError(f"{what}: no error, expected {sqlstate}")


def rows(conn, sql):
    return [r[0] for r in conn.execute(sql).fetchall()]


def status(conn, sql):
    cur = conn.execute(sql)
    return cur.statusmessage


def big_named_cursor(url):
    """100,000 rows through a named cursor, itersize 1,000: every row once."""
    with psycopg.connect(url, connect_timeout=20) as conn:
        cur = conn.cursor("big")
        cur.itersize = 1000
        cur.execute("SELECT k, v, s FROM cur_t")
        n = sk = sv = 0
        seen = set()
        bad = []
        for k, v, s in cur:
            n += 1
            sk += k
            sv += v
            seen.add(k)
            if v != 3 * k or s != f"row {k}":
                bad.append((k, v, s))
        check(n == N, f"named cursor returned {n} rows")
        check(len(seen) == N, "every k exactly once")
        check(sk == N * (N + 1) // 2 and sv == 3 * sk, f"sums of k and v: {sk}, {sv}")
        check(not bad, f"every row's v and s match its k ({bad[:3]})")
        cur.close()
        conn.commit()

        # A parameter in the declared query, fetchmany / fetchone / fetchall.
        cur = conn.cursor("param")
        cur.execute("SELECT k, s FROM cur_t WHERE k <= %s ORDER BY k", (2500,))
        first = cur.fetchmany(1000)
        second = cur.fetchmany(1000)
        one = cur.fetchone()
        rest = cur.fetchall()
        check(
            [r[0] for r in first] == list(range(1, 1001))
            and [r[0] for r in second] == list(range(1001, 2001))
            and one == (2001, "row 2001")
            and [r[0] for r in rest] == list(range(2002, 2501)),
            "fetchmany(1000) twice, fetchone, fetchall: 1..2500 in order",
        )
        check(cur.fetchone() is None and cur.fetchall() == [], "an exhausted cursor returns nothing")
        cur.close()

        # scroll() is MOVE: relative and absolute (forward).
        cur = conn.cursor("scrolled")
        cur.execute("SELECT k FROM cur_t WHERE k <= 100 ORDER BY k")
        cur.scroll(10)
        a = cur.fetchone()
        cur.scroll(20, mode="absolute")
        b = cur.fetchone()
        check((a, b) == ((11,), (21,)), f"scroll(10) then row 11, scroll absolute 20 then row 21: {a} {b}")
        cur.close()
        conn.commit()

        # A binary cursor: FETCH in binary (the Bind's result format).
        cur = conn.cursor("bin", binary=True)
        cur.execute("SELECT k, v, s FROM cur_t WHERE k IN (7, 8) ORDER BY k")
        got = cur.fetchall()
        check(got == [(7, 21, "row 7"), (8, 24, "row 8")], f"binary cursor rows {got}")
        cur.close()
        conn.commit()


def fetch_move_close(url):
    """FETCH / MOVE / CLOSE forms with known answers (simple protocol)."""
    q = "SELECT k FROM cur_t WHERE k <= 10 ORDER BY k"
    with psycopg.connect(url, connect_timeout=20) as conn:
        conn.execute(f"DECLARE c CURSOR FOR {q}")
        check(rows(conn, "FETCH 2 FROM c") == [1, 2], "FETCH 2: 1, 2")
        check(rows(conn, "FETCH NEXT FROM c") == [3], "FETCH NEXT: 3")
        check(status(conn, "MOVE 2 IN c") == "MOVE 2", "MOVE 2 says MOVE 2")
        check(rows(conn, "FETCH FORWARD 1 FROM c") == [6], "FETCH FORWARD 1 after MOVE 2: 6")
        check(rows(conn, "FETCH 0 FROM c") == [6], "FETCH 0 re-fetches the current row: 6")
        check(rows(conn, "FETCH RELATIVE 2 FROM c") == [8], "FETCH RELATIVE 2: 8")
        check(rows(conn, "FETCH ABSOLUTE 9 FROM c") == [9], "FETCH ABSOLUTE 9: 9")
        cur = conn.execute("FETCH ALL FROM c")
        check(cur.fetchall() == [(10,)] and cur.statusmessage == "FETCH 1", "FETCH ALL: 10, tag FETCH 1")
        check(rows(conn, "FETCH NEXT FROM c") == [], "FETCH past the end: nothing")
        check(status(conn, "MOVE NEXT FROM c") == "MOVE 0", "MOVE past the end: MOVE 0")
        check(status(conn, "CLOSE c") == "CLOSE CURSOR", "CLOSE c")
        conn.commit()

        conn.execute(f"DECLARE l CURSOR FOR {q}")
        check(rows(conn, "FETCH LAST FROM l") == [10], "FETCH LAST: 10")
        check(rows(conn, "FETCH NEXT FROM l") == [], "FETCH NEXT after LAST: nothing")
        conn.execute(f'DECLARE "Mixed Case" CURSOR FOR {q}')
        check(status(conn, 'MOVE FORWARD ALL IN "Mixed Case"') == "MOVE 10", "MOVE FORWARD ALL: MOVE 10")
        conn.execute(f"DECLARE f CURSOR FOR {q}")
        check(rows(conn, "FETCH FIRST FROM f") == [1], "FETCH FIRST: 1")
        check(status(conn, "CLOSE ALL") == "CLOSE CURSOR ALL", "CLOSE ALL")
        expect_error(conn, "FETCH NEXT FROM l", "34000", "FETCH after CLOSE ALL")

        # Several statements in one simple query.
        cur = conn.cursor()
        cur.execute(f"DECLARE m CURSOR FOR {q}; FETCH 2 FROM m; FETCH 1 FROM m; FETCH 2 FROM m")
        results = []
        while True:
            if cur.description is not None:
                results.append([r[0] for r in cur.fetchall()])
            if not cur.nextset():
                break
        check(results == [[1, 2], [3], [4, 5]], f"DECLARE; FETCH; FETCH; FETCH in one query: {results}")
        conn.commit()

        # An empty result, a cursor over an aggregate, over VALUES.
        conn.execute("DECLARE e CURSOR FOR SELECT k FROM cur_t WHERE k < 0")
        check(rows(conn, "FETCH ALL FROM e") == [], "empty cursor: FETCH ALL returns nothing")
        conn.execute("DECLARE g CURSOR FOR SELECT count(*), sum(k) FROM cur_t")
        check(
            conn.execute("FETCH 1 FROM g").fetchall() == [(N, N * (N + 1) // 2)],
            "cursor over an aggregate",
        )
        conn.commit()

        # Errors and their SQLSTATEs.
        expect_error(conn, "FETCH 1 FROM nosuch", "34000", "FETCH from an unknown cursor")
        expect_error(conn, "CLOSE nosuch", "34000", "CLOSE of an unknown cursor")
        expect_error(conn, "MOVE 1 IN nosuch", "34000", "MOVE in an unknown cursor")
        conn.execute(f"DECLARE d CURSOR FOR {q}")
        expect_error(conn, f"DECLARE d CURSOR FOR {q}", "42P03", "DECLARE of a name in use")
        conn.execute(f"DECLARE b CURSOR FOR {q}")
        conn.execute("FETCH 3 FROM b")
        expect_error(conn, "FETCH PRIOR FROM b", "55000", "FETCH PRIOR (cursors scan forward)")
        conn.execute(f"DECLARE a CURSOR FOR {q}")
        conn.execute("FETCH 3 FROM a")
        expect_error(conn, "FETCH ABSOLUTE 2 FROM a", "55000", "FETCH ABSOLUTE backward")
        expect_error(conn, f"DECLARE s SCROLL CURSOR FOR {q}", "0A000", "SCROLL cursors")
        expect_error(conn, "DECLARE x CURSOR FOR SELECT * FROM no_such_table", "42P01", "DECLARE over an unknown table")
        conn.execute(f"DECLARE y CURSOR FOR {q}")
        try:
            conn.execute("SELECT * FROM no_such_table")
        except psycopg.Error:
            pass
        expect_error(conn, "FETCH 1 FROM y", "25P02", "FETCH in a failed block")

    with psycopg.connect(url, autocommit=True, connect_timeout=20) as conn:
        expect_error(conn, f"DECLARE c CURSOR FOR {q}", "25P01", "DECLARE without hold outside a block")
        expect_error(conn, f"DECLARE c CURSOR WITHOUT HOLD FOR {q}", "25P01", "DECLARE WITHOUT HOLD outside a block")
        # psycopg's named cursor in autocommit: the same error.
        try:
            with conn.cursor("auto") as cur:
                cur.execute(q)
                cur.fetchall()
            raise AssertionError("named cursor without hold in autocommit")
        except psycopg.errors.NoActiveSqlTransaction:
            check(True, "named cursor without hold in autocommit: 25P01")


def with_hold(url):
    """WITH HOLD survives COMMIT; WITHOUT HOLD does not; ROLLBACK closes both."""
    with psycopg.connect(url, connect_timeout=20) as conn:
        cur = conn.cursor("held", withhold=True)
        cur.itersize = 5000
        cur.execute("SELECT k, v FROM cur_t")
        head = cur.fetchmany(10)
        conn.commit()
        rest = cur.fetchall()
        ks = [r[0] for r in head + rest]
        check(len(ks) == N and sum(ks) == N * (N + 1) // 2, f"WITH HOLD across COMMIT: {len(ks)} rows")
        check(all(v == 3 * k for k, v in head + rest), "WITH HOLD rows intact")
        cur.close()
        conn.commit()

        # The snapshot is the one at DECLARE: rows inserted after it stay unseen.
        conn.execute("DECLARE snap CURSOR WITH HOLD FOR SELECT k FROM snap_t")
        conn.commit()
        conn.execute("INSERT INTO snap_t SELECT value FROM generate_series(101, 150)")
        conn.commit()
        got = rows(conn, "FETCH ALL FROM snap")
        check(sorted(got) == list(range(1, 101)), f"a held cursor keeps its snapshot: {len(got)} rows")
        conn.execute("CLOSE snap")
        conn.commit()

        conn.execute("DECLARE gone CURSOR WITHOUT HOLD FOR SELECT k FROM cur_t")
        conn.execute("FETCH 1 FROM gone")
        conn.commit()
        expect_error(conn, "FETCH 1 FROM gone", "34000", "WITHOUT HOLD closes at COMMIT")

        conn.execute("DECLARE rb CURSOR WITH HOLD FOR SELECT k FROM cur_t")
        conn.rollback()
        expect_error(conn, "FETCH 1 FROM rb", "34000", "ROLLBACK closes a WITH HOLD cursor it declared")

    with psycopg.connect(url, autocommit=True, connect_timeout=20) as conn:
        conn.execute("DECLARE auto CURSOR WITH HOLD FOR SELECT k FROM cur_t WHERE k <= 5 ORDER BY k")
        check(rows(conn, "FETCH 2 FROM auto") == [1, 2], "WITH HOLD outside a block: 1, 2")
        check(rows(conn, "FETCH ALL FROM auto") == [3, 4, 5], "WITH HOLD outside a block: 3, 4, 5")
        conn.execute("CLOSE auto")
        # The named cursor of psycopg, WITH HOLD, in autocommit.
        with conn.cursor("auto_named", withhold=True) as cur:
            cur.itersize = 333
            cur.execute("SELECT k FROM cur_t WHERE k <= 1000")
            got = sorted(r[0] for r in cur)
        check(got == list(range(1, 1001)), "psycopg WITH HOLD named cursor in autocommit: 1..1000")


def main(url):
    with psycopg.connect(url, autocommit=True, connect_timeout=20) as conn:
        conn.execute("CREATE TABLE cur_t (k bigint, v bigint, s text) DISTRIBUTE ON (k)")
        conn.execute(f"INSERT INTO cur_t SELECT value, value * 3, 'row ' || value FROM generate_series(1, {N})")
        conn.execute("CREATE TABLE snap_t (k bigint) DISTRIBUTE ON (k)")
        conn.execute("INSERT INTO snap_t SELECT value FROM generate_series(1, 100)")
        check(conn.execute("SELECT count(*) FROM cur_t").fetchone() == (N,), f"{N} rows loaded")
    big_named_cursor(url)
    fetch_move_close(url)
    with_hold(url)
    with psycopg.connect(url, autocommit=True, connect_timeout=20) as conn:
        check(conn.execute("SELECT count(*) FROM cur_t").fetchone() == (N,), "the server answers on")
    print("all cursor checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
