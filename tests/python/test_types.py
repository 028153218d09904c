#!/usr/bin/env python3
"""psycopg 3 against slicedb: every column type through parameters (text and
binary, with PostgreSQL's casts) and through binary COPY in both directions.

Usage: python3 tests/python/test_types.py postgres://slicedb@127.0.0.1:PORT/slicedb

Run by tests/it/python.rs; exits non-zero on the first failed check.
"""

import datetime
import struct
import sys
from decimal import Decimal

try:
    import psycopg
    from psycopg import errors
except ImportError:
    print("psycopg 3 is not installed: python3 -m pip install 'psycopg[binary]'", file=sys.stderr)
    sys.exit(2)

UTC = datetime.timezone.utc

COLUMNS = [
    ("id", "bigint", "int8"),
    ("s2", "smallint", "int2"),
    ("i4", "integer", "int4"),
    ("i8", "bigint", "int8"),
    ("f4", "real", "float4"),
    ("f8", "double precision", "float8"),
    ("n", "numeric(20,4)", "numeric"),
    ("t", "text", "text"),
    ("vc", "varchar(20)", "varchar"),
    ("b", "boolean", "bool"),
    ("d", "date", "date"),
    ("ts", "timestamp", "timestamp"),
    ("tz", "timestamptz", "timestamptz"),
    ("by", "bytea", "bytea"),
]
NAMES = [c[0] for c in COLUMNS]
COPY_TYPES = [c[2] for c in COLUMNS]
COPY_ROWS = 100_000


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def f4(x):
    """A float as a real column stores it."""
    return struct.unpack("f", struct.pack("f", x))[0]


def row(i):
    """Row i of the COPY data: every type, a NULL in column c of every
    (c + 3)-th row, values spread over each type's range."""
    base = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=i * 7919, microseconds=i % 1_000_000)
    values = [
        i,
        (i * 37) % 65536 - 32768,
        i * 1000 - 50_000_000,
        (i - 50_000) * 92_233_720_368_547,
        f4(i / 8.0 - 1000.0),
        i * 1.0e-3 - 0.1,
        Decimal(i * 12345 - 500_000_000).scaleb(-4),
        f"text {i} ü ✓ \t\n\\ '\"",
        f"v{i % 1000}",
        i % 2 == 0,
        datetime.date(1900, 1, 1) + datetime.timedelta(days=i % 200_000),
        base,
        (base + datetime.timedelta(hours=3)).replace(tzinfo=UTC),
        bytes([i % 256, (i >> 8) % 256, 0, 255]) * (i % 4),
    ]
    for c in range(1, len(values)):
        if i % (c + 3) == 0:
            values[c] = None
    return tuple(values)


def expect_error(cur, sqlstate, what, sql, params=None, **kw):
    try:
        cur.execute(sql, params, **kw)
    except psycopg.Error as e:
        check(e.sqlstate == sqlstate, f"{what}: SQLSTATE {sqlstate} (got {e.sqlstate}: {e})")
    else:
        raise AssertionError(f"{what}: no error")
    cur.execute("SELECT 1")
    check(cur.fetchone() == (1,), f"connection works after: {what}")


def parameters(cur):
    """Every type bound in text (%t) and binary (%b), read back in the
    matching result format."""
    placeholders = {"text": "%t", "binary": "%b"}
    sample = [
        7,
        -32768,
        2147483647,
        -9223372036854775808,
        f4(1.25),
        -2.5e-300,
        Decimal("1234567890123456.7891"),
        "quote ' and \"",
        "varchar",
        False,
        datetime.date(2024, 2, 29),
        datetime.datetime(2024, 2, 29, 23, 59, 59, 999999),
        datetime.datetime(2000, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        b"\x00\x01\xfe\xff",
    ]
    for k, (fmt, ph) in enumerate(placeholders.items()):
        binary = fmt == "binary"
        values = list(sample)
        values[0] = 1000 + k
        cur.execute(
            f"INSERT INTO types_t ({', '.join(NAMES)}) VALUES ({', '.join([ph] * len(NAMES))})",
            values,
        )
        cur.execute(f"SELECT {', '.join(NAMES)} FROM types_t WHERE id = {ph}", (values[0],), binary=binary)
        got = cur.fetchone()
        want = list(values)
        # timestamptz comes back as the same point in time, in UTC.
        for c, name in enumerate(NAMES):
            check(got[c] == want[c], f"{fmt} parameter of type {COLUMNS[c][1]}: {got[c]!r} == {want[c]!r}")
        # NULL of every type.
        nulls = [2000 + k] + [None] * (len(NAMES) - 1)
        cur.execute(
            f"INSERT INTO types_t ({', '.join(NAMES)}) VALUES ({', '.join([ph] * len(NAMES))})",
            nulls,
        )
        cur.execute(f"SELECT {', '.join(NAMES[1:])} FROM types_t WHERE id = {ph}", (2000 + k,), binary=binary)
        check(cur.fetchone() == tuple([None] * (len(NAMES) - 1)), f"{fmt} NULL parameters of every type")

        # PostgreSQL's implicit casts: what the column needs from what the
        # client sent.
        casts = [
            ("n", 42, Decimal("42.0000")),  # int to numeric
            ("n", 0.1 + 0.2, Decimal("0.3000")),  # float to numeric, rounded to its scale
            ("n", -1.00005, Decimal("-1.0001")),  # half away from zero
            ("s2", 12, 12),  # int (psycopg: int2/int8) to smallint
            ("i8", 7, 7),  # int to bigint
            ("f4", 3, 3.0),  # int to real
            ("f8", Decimal("2.5"), 2.5),  # numeric to double
            ("i4", Decimal("12.000"), 12),  # whole numeric to integer
            ("d", "2024-03-01", datetime.date(2024, 3, 1)),  # text to date
            ("ts", "2024-03-01 12:34:56.5", datetime.datetime(2024, 3, 1, 12, 34, 56, 500000)),
            ("ts", datetime.date(2024, 3, 2), datetime.datetime(2024, 3, 2)),  # date to timestamp
            ("d", datetime.datetime(2024, 3, 3, 23, 0), datetime.date(2024, 3, 3)),  # timestamp to date
            ("b", "yes", True),  # text to boolean
            ("t", 12345, "12345"),  # int to text
            ("t", Decimal("1.50"), "1.50"),  # numeric to text
            ("by", "\\x6869", b"hi"),  # text to bytea
        ]
        for j, (col, value, want) in enumerate(casts):
            key = 3000 + 100 * k + j
            cur.execute(f"INSERT INTO types_t (id, {col}) VALUES ({ph}, {ph})", (key, value))
            cur.execute(f"SELECT {col} FROM types_t WHERE id = {ph}", (key,), binary=binary)
            got = cur.fetchone()[0]
            check(got == want, f"{fmt}: {value!r} bound to {col} reads back {got!r} == {want!r}")
            # The same value finds the row in a WHERE clause.
            cur.execute(f"SELECT count(*) FROM types_t WHERE id = {ph} AND {col} = {ph}", (key, value))
            check(cur.fetchone()[0] == 1, f"{fmt}: {value!r} matches its row in WHERE {col} = $2")

        # Values that do not fit fail with PostgreSQL's SQLSTATE.
        ins = f"INSERT INTO types_t (id, {{}}) VALUES ({ph}, {ph})"
        expect_error(cur, "22003", f"{fmt}: 70000 into smallint", ins.format("s2"), (1, 70000))
        expect_error(cur, "22003", f"{fmt}: too many digits for numeric(20,4)", ins.format("n"), (1, 10**17))
        expect_error(cur, "22P02", f"{fmt}: 1.5 into integer", ins.format("i4"), (1, 1.5))
        expect_error(cur, "22P02", f"{fmt}: 'abc' into integer", ins.format("i4"), (1, "abc"))
        expect_error(cur, "22007", f"{fmt}: 'tomorrow' into date", ins.format("d"), (1, "tomorrow"))
        expect_error(cur, "22008", f"{fmt}: Feb 30 into date", ins.format("d"), (1, "2023-02-30"))
        expect_error(cur, "42804", f"{fmt}: boolean into integer", ins.format("i4"), (1, True))

    # UPDATE and DELETE take parameters too.
    cur.execute("UPDATE types_t SET n = %s, t = %s WHERE id = %s", (5, "updated", 1000))
    cur.execute("SELECT n, t FROM types_t WHERE id = %s", (1000,))
    check(cur.fetchone() == (Decimal("5.0000"), "updated"), "UPDATE with parameters")
    cur.execute("DELETE FROM types_t WHERE id >= %s", (1000,))
    cur.execute("SELECT count(*) FROM types_t")
    check(cur.fetchone() == (0,), "DELETE with a parameter removed every row")


def binary_copy(cur):
    rows = [row(i) for i in range(COPY_ROWS)]
    with cur.copy(f"COPY types_t ({', '.join(NAMES)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(COPY_TYPES)
        for r in rows:
            copy.write_row(r)
    check(cur.rowcount == COPY_ROWS, f"binary COPY FROM loaded {cur.rowcount} rows")
    cur.execute("SELECT count(*), count(n), sum(i8), sum(n), count(by) FROM types_t")
    want = (
        COPY_ROWS,
        sum(1 for r in rows if r[6] is not None),
        sum(r[3] for r in rows if r[3] is not None),
        sum(r[6] for r in rows if r[6] is not None),
        sum(1 for r in rows if r[13] is not None),
    )
    got = cur.fetchone()
    check(got == want, f"counts and sums after binary COPY: {got} == {want}")

    # Read back in binary, value by value, NULLs included.
    seen = []
    with cur.copy("COPY types_t TO STDOUT (FORMAT BINARY)") as copy:
        copy.set_types(COPY_TYPES)
        for r in copy.rows():
            seen.append(r)
    check(len(seen) == COPY_ROWS, f"binary COPY TO returned {len(seen)} rows")
    seen.sort(key=lambda r: r[0])
    bad = [(w, g) for w, g in zip(rows, seen) if w != g]
    check(not bad, f"binary COPY TO returns every value as written ({len(bad)} rows differ{': ' + repr(bad[0]) if bad else ''})")

    # A query's result, and a column list, in binary.
    with cur.copy("COPY (SELECT id, n, tz FROM types_t WHERE id < 50 ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
        copy.set_types(["int8", "numeric", "timestamptz"])
        got = list(copy.rows())
    check(got == [(r[0], r[6], r[12]) for r in rows[:50]], "binary COPY TO of a query")

    # Text COPY TO reads the same values.
    with cur.copy("COPY (SELECT id, n, by FROM types_t WHERE id < 20 ORDER BY id) TO STDOUT") as copy:
        copy.set_types(["int8", "numeric", "bytea"])
        got = list(copy.rows())
    check(got == [(r[0], r[6], r[13]) for r in rows[:20]], "text COPY TO of numeric and bytea")


def malformed_copy(cur, conn):
    cur.execute("SELECT count(*) FROM types_t")
    before = cur.fetchone()[0]
    header = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
    one_field = struct.pack(">hi", 1, 8) + struct.pack(">q", 1)
    streams = [
        ("22P04", "garbage instead of a header", b"this is not binary copy data\n"),
        ("22P04", "a tuple with the wrong field count", header + one_field + b"\xff\xff"),
        ("22P04", "data ending inside a tuple", header + struct.pack(">hi", 2, 8) + b"\x00\x00"),
        ("22P03", "a 3-byte integer", header + struct.pack(">hi", 2, 8) + struct.pack(">q", 1)
         + struct.pack(">i", 3) + b"abc" + b"\xff\xff"),
    ]
    for sqlstate, what, data in streams:
        try:
            with cur.copy("COPY types_t (id, i4) FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(data)
        except psycopg.Error as e:
            check(e.sqlstate == sqlstate, f"malformed binary COPY ({what}): SQLSTATE {sqlstate} (got {e.sqlstate}: {e})")
        else:
            raise AssertionError(f"malformed binary COPY ({what}) did not fail")
        cur.execute("SELECT count(*) FROM types_t")
        check(cur.fetchone()[0] == before, f"connection works and nothing was loaded after: {what}")
    check(isinstance(conn, psycopg.Connection), "same connection throughout")
    # Text formats' options are refused in binary mode.
    expect_error(cur, "42601", "HEADER with FORMAT binary",
                 "COPY types_t TO STDOUT (FORMAT binary, HEADER true)")


def main(url):
    with psycopg.connect(url, autocommit=True, connect_timeout=20) as conn:
        cur = conn.cursor()
        cur.execute("DROP TABLE IF EXISTS types_t")
        cur.execute(
            f"CREATE TABLE types_t ({', '.join(f'{n} {t}' for n, t, _ in COLUMNS)}) DISTRIBUTE ON (id)"
        )
        parameters(cur)
        binary_copy(cur)
        malformed_copy(cur, conn)
    # On a new connection: psycopg prepared the statements it ran five
    # times, and answers DDL with DEALLOCATE ALL, which slicedb does not
    # take yet.
    with psycopg.connect(url, autocommit=True, connect_timeout=20) as conn:
        conn.execute("DROP TABLE types_t")
    print("all type checks passed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
