#!/usr/bin/env python3
"""psycopg 3 against slicedb: parameters, COPY in and out, a transaction, errors.

Usage: python3 tests/python/test_psycopg.py postgres://slicedb@127.0.0.1:PORT/slicedb

Run by tests/it/python.rs; exits non-zero on the first failed check.
"""

import sys

try:
    import psycopg
    from psycopg import errors
except ImportError:
    print("psycopg 3 is not installed: python3 -m pip install 'psycopg[binary]'", file=sys.stderr)
    sys.exit(2)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def main(url):
    with psycopg.connect(url, autocommit=True, connect_timeout=20) as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE py_t (k bigint, g int, s text, v double precision) DISTRIBUTE ON (k)"
        )

        # INSERT with parameters, one at a time and executemany.
        cur.execute("INSERT INTO py_t VALUES (%s, %s, %s, %s)", (1, 10, "one", 1.5))
        cur.executemany(
            "INSERT INTO py_t VALUES (%s, %s, %s, %s)",
            [(2, 20, "two", 2.5), (3, 30, None, None), (4, 40, "it's \"quoted\"", -0.25)],
        )

        # SELECT with parameters.
        cur.execute("SELECT s, v FROM py_t WHERE k = %s", (2,))
        check(cur.fetchall() == [("two", 2.5)], "parameterized SELECT returns row k=2")
        cur.execute("SELECT k FROM py_t WHERE g >= %s AND s = %s ORDER BY k", (10, "it's \"quoted\""))
        check(cur.fetchall() == [(4,)], "string parameter with quotes matches")
        cur.execute("SELECT count(*), count(s), count(v) FROM py_t")
        check(cur.fetchone() == (4, 3, 3), "counts after INSERTs (NULLs not counted)")

        # A scalar subquery in the SELECT list, over the extended protocol
        # with a parameter: the same count as the query without it (it once
        # came back NULL from a catalog-query rewrite).
        exists = "SELECT 1 FROM py_t b WHERE b.k = a.k AND b.g >= %s"
        cur.execute(f"SELECT count(*) FROM py_t a WHERE EXISTS ({exists})", (10,))
        direct = cur.fetchone()[0]
        cur.execute(f"SELECT (SELECT count(*) FROM py_t a WHERE EXISTS ({exists})) AS n", (10,))
        got = cur.fetchone()[0]
        check(got == direct and direct > 0, f"scalar subquery in the select list: {got} == {direct}")

        # COPY FROM STDIN writing rows.
        copied = [(100 + i, i % 7, f"copy {i}" if i % 5 else None, i / 4) for i in range(500)]
        with cur.copy("COPY py_t FROM STDIN") as copy:
            for row in copied:
                copy.write_row(row)
        cur.execute("SELECT count(*), sum(k), sum(g) FROM py_t WHERE k >= %s", (100,))
        check(
            cur.fetchone() == (500, sum(r[0] for r in copied), sum(r[1] for r in copied)),
            "COPY FROM STDIN loaded 500 rows with the right sums",
        )

        # COPY TO STDOUT reading them back (text values, NULL as None).
        seen = []
        with cur.copy("COPY py_t TO STDOUT") as copy:
            for row in copy.rows():
                seen.append(row)
        check(len(seen) == 504, f"COPY TO STDOUT returned 504 rows (got {len(seen)})")
        by_k = {int(r[0]): r for r in seen}
        check(by_k[3][2] is None and by_k[3][3] is None, "COPY TO STDOUT keeps NULLs")
        check(by_k[4][2] == "it's \"quoted\"", "COPY TO STDOUT keeps quotes")
        check(
            all(by_k[k][2] == s and float(by_k[k][3]) == v for (k, _g, s, v) in copied),
            "COPY TO STDOUT returns the copied rows",
        )

        # A bad table raises 42P01 and the connection keeps working.
        try:
            cur.execute("SELECT * FROM no_such_table_py")
        except psycopg.Error as e:
            check(e.sqlstate == "42P01", f"unknown table raises SQLSTATE 42P01 (got {e.sqlstate})")
            check(isinstance(e, errors.UndefinedTable), "unknown table maps to UndefinedTable")
        else:
            raise AssertionError("SELECT from an unknown table did not fail")
        cur.execute("SELECT 1")
        check(cur.fetchone() == (1,), "connection works after the error")

        # Same, with a parameter (extended protocol).
        try:
            cur.execute("SELECT * FROM no_such_table_py WHERE k = %s", (1,))
        except psycopg.Error as e:
            check(e.sqlstate == "42P01", "unknown table with a parameter raises 42P01")
        else:
            raise AssertionError("parameterized SELECT from an unknown table did not fail")
        cur.execute("SELECT count(*) FROM py_t WHERE k = %s", (1,))
        check(cur.fetchone() == (1,), "connection works after the parameterized error")

    # A non-autocommit transaction, committed, seen by another connection.
    with psycopg.connect(url, connect_timeout=20) as tx:
        check(not tx.autocommit, "second connection is not autocommit")
        with tx.cursor() as c:
            c.execute("INSERT INTO py_t VALUES (%s, %s, %s, %s)", (9000, 1, "in tx", 9.0))
            c.execute("INSERT INTO py_t VALUES (%s, %s, %s, %s)", (9001, 1, "in tx", 9.5))
        tx.commit()

    with psycopg.connect(url, autocommit=True, connect_timeout=20) as conn:
        cur = conn.cursor()
        cur.execute("SELECT count(*), sum(v) FROM py_t WHERE s = %s", ("in tx",))
        check(cur.fetchone() == (2, 18.5), "committed transaction is visible")
        cur.execute("SELECT count(*) FROM py_t")
        check(cur.fetchone() == (506,), "506 rows in total")
        cur.execute("DROP TABLE py_t")

    print("all psycopg checks passed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
