#!/usr/bin/env python3
"""The row changes PostgreSQL users write, with psycopg 3 (extended
protocol) and libpq's PQexec (simple protocol):

- UPDATE ... FROM and DELETE ... USING on distributed tables whose join
  partners live on other slices: every row's value checked after; a target
  row with several matches changed once; rows with no match untouched;
  inside BEGIN ... ROLLBACK (gone) and BEGIN ... COMMIT (kept);
- INSERT / UPDATE / DELETE ... RETURNING (expressions, `*`, repeated and
  PostgreSQL-style names, no rows), with parameters, compared with the
  expected rows, and their command tags;
- Describe of UPDATE / DELETE / INSERT ... RETURNING with `$n`: the
  parameters' types and RETURNING's columns, and a binary parameter bound
  by the described type;
- both copies of every slice agree afterwards (slicedb_verify).

Usage: python3 tests/python/test_dml.py postgres://slicedb@127.0.0.1:PORT/slicedb
Run by tests/it/python.rs; exits non-zero on the first failed check.
"""

import struct
import sys

try:
    import psycopg
    from psycopg import errors
    from psycopg import pq
except ImportError:
    print("psycopg 3 is not installed: python3 -m pip install 'psycopg[binary]'", file=sys.stderr)
    sys.exit(2)

INT4, INT8, TEXT, VARCHAR = 23, 20, 25, 1043


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def rows(conn, sql, params=None):
    return conn.execute(sql, params).fetchall()


def t_values(conn):
    return dict(rows(conn, "SELECT id, v FROM t"))


def reset(conn):
    """t: ids 1..200, grp = id % 10, v = id, distributed on id; u and d
    distributed on other columns, so a row's join partners live on other
    slices."""
    conn.execute("TRUNCATE t")
    conn.execute("INSERT INTO t SELECT value, value % 10, value FROM generate_series(1, 200)")


def expected_initial():
    return {i: i for i in range(1, 201)}


def joins(conn):
    conn.execute("CREATE TABLE t (id INT, grp INT, v INT) DISTRIBUTE ON (id)")
    conn.execute("CREATE TABLE u (gid INT, bonus INT) DISTRIBUTE ON (bonus)")
    conn.execute("CREATE TABLE d (gid INT, val INT) DISTRIBUTE ON (val)")
    conn.execute("INSERT INTO u VALUES (0, 0), (1, 100), (2, 200), (3, 300), (4, 400)")
    # Three partners for each group 0..4: a duplicate match.
    conn.execute(
        "INSERT INTO d SELECT g, k * 1000 + g FROM generate_series(0, 4) AS a(g), "
        "generate_series(1, 3) AS b(k)"
    )
    check(rows(conn, "SELECT count(*) FROM d")[0][0] == 15, "d has 15 rows")
    reset(conn)

    # UPDATE ... FROM, one match per target row.
    cur = conn.execute("UPDATE t SET v = t.v + u.bonus FROM u WHERE t.grp = u.gid")
    check(cur.rowcount == 100, f"UPDATE ... FROM changes 100 rows ({cur.rowcount})")
    check(cur.statusmessage == "UPDATE 100", f"tag {cur.statusmessage}")
    want = {i: (i + (i % 10) * 100 if i % 10 < 5 else i) for i in range(1, 201)}
    check(t_values(conn) == want, "UPDATE ... FROM: every row's value, unmatched rows untouched")

    # With an alias, an unqualified source column and a WHERE on both.
    cur = conn.execute(
        "UPDATE t AS x SET v = bonus * 2 FROM u WHERE x.grp = u.gid AND u.bonus >= 300 AND x.id <= 50"
    )
    check(cur.rowcount == 10, f"aliased UPDATE ... FROM changes 10 rows ({cur.rowcount})")
    for i in range(1, 51):
        if i % 10 in (3, 4):
            want[i] = (i % 10) * 200
    check(t_values(conn) == want, "aliased UPDATE ... FROM: every row's value")

    # Several matches: each target row updated once, with one of them.
    reset(conn)
    cur = conn.execute("UPDATE t SET v = d.val FROM d WHERE t.grp = d.gid")
    check(cur.rowcount == 100, f"UPDATE with 3 matches a row changes 100 rows ({cur.rowcount})")
    got = t_values(conn)
    check(rows(conn, "SELECT count(*), count(DISTINCT id) FROM t")[0] == (200, 200),
          "duplicate matches: still one version of each row")
    bad = [(i, v) for i, v in got.items()
           if (i % 10 < 5 and v not in (1000 + i % 10, 2000 + i % 10, 3000 + i % 10))
           or (i % 10 >= 5 and v != i)]
    check(len(got) == 200 and bad == [],
          f"duplicate matches: each row holds one of its matches, or is untouched ({bad[:5]})")

    # DELETE ... USING.
    reset(conn)
    cur = conn.execute("DELETE FROM t USING d WHERE t.grp = d.gid AND t.id > 150")
    check(cur.rowcount == 25, f"DELETE ... USING with 3 matches a row deletes 25 ({cur.rowcount})")
    check(cur.statusmessage == "DELETE 25", f"tag {cur.statusmessage}")
    want = {i: i for i in range(1, 201) if not (i > 150 and i % 10 < 5)}
    check(t_values(conn) == want, "DELETE ... USING: exactly the matched rows are gone")

    # USING with no match at all.
    cur = conn.execute("DELETE FROM t USING u WHERE t.grp = u.gid AND u.bonus > 10000")
    check(cur.rowcount == 0 and t_values(conn) == want, "DELETE ... USING without a match deletes nothing")

    # Joined to itself under another name, with a join in USING.
    cur = conn.execute(
        "DELETE FROM t USING t AS o JOIN u ON o.grp = u.gid WHERE t.id = o.id + 1 AND u.bonus = 400 AND o.id < 20"
    )
    # o.id in {4, 14} (grp 4): deletes ids 5 and 15.
    check(cur.rowcount == 2, f"self-join DELETE ... USING deletes 2 ({cur.rowcount})")
    del want[5], want[15]
    check(t_values(conn) == want, "self-join DELETE ... USING: every row")

    # Naming the target twice is PostgreSQL's 42712.
    try:
        conn.execute("UPDATE t SET v = 1 FROM t WHERE true")
        check(False, "UPDATE t ... FROM t refused")
    except errors.DuplicateAlias:
        check(True, "UPDATE t ... FROM t refused with 42712")

    # Inside a block: ROLLBACK takes the changes back, COMMIT keeps them.
    reset(conn)
    conn.autocommit = False
    conn.execute("UPDATE t SET v = -u.bonus FROM u WHERE t.grp = u.gid AND u.gid > 0")
    conn.execute("DELETE FROM t USING d WHERE t.grp = d.gid AND d.gid = 0")
    inside = t_values(conn)
    check(len(inside) == 180 and inside[11] == -100, "the block sees its own UPDATE FROM and DELETE USING")
    conn.rollback()
    check(t_values(conn) == expected_initial(), "ROLLBACK: every row as before")
    conn.execute("UPDATE t SET v = -u.bonus FROM u WHERE t.grp = u.gid AND u.gid > 0")
    conn.execute("DELETE FROM t USING d WHERE t.grp = d.gid AND d.gid = 0")
    conn.commit()
    conn.autocommit = True
    want = {i: (-(i % 10) * 100 if 0 < i % 10 < 5 else i) for i in range(1, 201) if i % 10 != 0}
    check(t_values(conn) == want, "COMMIT: UPDATE FROM and DELETE USING kept")
    other = psycopg.connect(conn.info.dsn, autocommit=True)
    check(t_values(other) == want, "another connection sees the committed changes")
    other.close()


def returning(conn):
    conn.execute("CREATE TABLE r (id INT, name TEXT, score DOUBLE PRECISION) DISTRIBUTE ON (id)")
    cur = conn.execute("INSERT INTO r VALUES (1, 'a', 1.5), (2, 'b', 2.5) RETURNING id, name")
    check(sorted(cur.fetchall()) == [(1, "a"), (2, "b")], "INSERT ... RETURNING two rows")
    cur = conn.execute(
        "INSERT INTO r VALUES (3, 'c', 3.5), (4, 'd', 4.5) RETURNING id, name, id * 10, score AS s"
    )
    got = sorted(cur.fetchall())
    check(got == [(3, "c", 30, 3.5), (4, "d", 40, 4.5)], f"INSERT ... RETURNING expressions: {got}")
    check([d.name for d in cur.description] == ["id", "name", "?column?", "s"],
          f"RETURNING names {[d.name for d in cur.description]}")
    check(cur.statusmessage == "INSERT 0 2", f"INSERT RETURNING tag {cur.statusmessage}")

    cur = conn.execute("INSERT INTO r (name, id) VALUES (%s, %s) RETURNING *", ("e", 5))
    check(cur.fetchall() == [(5, "e", None)], "INSERT ... RETURNING * with parameters and a column list")
    check([d.name for d in cur.description] == ["id", "name", "score"], "RETURNING * names the columns")

    cur = conn.execute(
        "INSERT INTO r AS q SELECT value, 'g' || value, value FROM generate_series(6, 8) RETURNING q.id + 1 AS next, upper(name)"
    )
    check(sorted(cur.fetchall()) == [(7, "G6"), (8, "G7"), (9, "G8")], "INSERT ... SELECT RETURNING with an alias")
    check([d.name for d in cur.description] == ["next", "upper"], "function items named as PostgreSQL does")

    cur = conn.execute(
        "UPDATE r SET name = name || '!', score = score * 2 WHERE id >= %s RETURNING id, name, score, r.name AS again, id, %s AS p",
        (7, "x"),
    )
    got = sorted(cur.fetchall())
    check(got == [(7, "g7!", 14.0, "g7!", 7, "x"), (8, "g8!", 16.0, "g8!", 8, "x")],
          f"UPDATE ... RETURNING gives the new values: {got}")
    check([d.name for d in cur.description] == ["id", "name", "score", "again", "id", "p"],
          "repeated RETURNING names kept")
    check(cur.statusmessage == "UPDATE 2", f"UPDATE RETURNING tag {cur.statusmessage}")

    conn.execute("CREATE TABLE bonus (rid INT, extra INT) DISTRIBUTE ON (extra)")
    conn.execute("INSERT INTO bonus VALUES (1, 10), (2, 20), (2, 30)")
    cur = conn.execute(
        "UPDATE r SET score = score + b.extra FROM bonus b WHERE r.id = b.rid RETURNING *"
    )
    got = sorted(cur.fetchall())
    check([d.name for d in cur.description] == ["id", "name", "score", "rid", "extra"],
          f"UPDATE ... FROM RETURNING * names the target's and the source's columns: {[d.name for d in cur.description]}")
    check(len(got) == 2 and got[0] == (1, "a", 11.5, 1, 10)
          and got[1][:3] in ((2, "b", 22.5), (2, "b", 32.5)) and got[1][2] == 2.5 + got[1][4],
          f"UPDATE ... FROM RETURNING * with a duplicate match: one row per target row {got}")

    cur = conn.execute("DELETE FROM r WHERE id = %s RETURNING *, score * 2 AS twice", (3,))
    check(cur.fetchall() == [(3, "c", 3.5, 7.0)], "DELETE ... RETURNING the old row")
    check(cur.statusmessage == "DELETE 1", f"DELETE RETURNING tag {cur.statusmessage}")

    cur = conn.execute("DELETE FROM r USING bonus WHERE r.id = bonus.rid AND bonus.extra = 10 RETURNING r.id, bonus.extra")
    check(cur.fetchall() == [(1, 10)], "DELETE ... USING RETURNING a source column")

    cur = conn.execute("DELETE FROM r WHERE id < 0 RETURNING id")
    check(cur.fetchall() == [] and [d.name for d in cur.description] == ["id"],
          "RETURNING of no rows still describes its column")
    check(cur.statusmessage == "DELETE 0", f"tag {cur.statusmessage}")

    # The simple protocol (PQexec): same rows, row description and tags.
    res = conn.pgconn.exec_(b"INSERT INTO r VALUES (20, 'twenty', 0) RETURNING id * 2, name")
    check(res.status == pq.ExecStatus.TUPLES_OK and res.ntuples == 1, "simple INSERT RETURNING gives a row")
    check((res.get_value(0, 0), res.get_value(0, 1)) == (b"40", b"twenty"), "simple INSERT RETURNING values")
    check((res.fname(0), res.fname(1)) == (b"?column?", b"name"), "simple INSERT RETURNING names")
    check(res.command_status == b"INSERT 0 1", f"simple INSERT tag {res.command_status}")
    res = conn.pgconn.exec_(b"UPDATE r SET name = 'xx' WHERE id = 20 RETURNING name")
    check(res.ntuples == 1 and res.get_value(0, 0) == b"xx" and res.command_status == b"UPDATE 1",
          "simple UPDATE RETURNING")
    res = conn.pgconn.exec_(b"DELETE FROM r WHERE id = 20 RETURNING id")
    check(res.ntuples == 1 and res.get_value(0, 0) == b"20" and res.command_status == b"DELETE 1",
          "simple DELETE RETURNING")
    res = conn.pgconn.exec_(b"UPDATE r SET name = 'none' WHERE id = 20")
    check(res.status == pq.ExecStatus.COMMAND_OK and res.command_status == b"UPDATE 0",
          "simple UPDATE without RETURNING answers a tag only")

    # What is left, row by row.
    got = sorted(rows(conn, "SELECT id, name, score FROM r"))
    want = [(2, "b", got[0][2] if got and got[0][0] == 2 else None), (4, "d", 4.5), (5, "e", None),
            (6, "g6", 6.0), (7, "g7!", 14.0), (8, "g8!", 16.0)]
    check(got == want and got[0][2] in (22.5, 32.5), f"r after the changes: {got}")

    # Inside a block that rolls back, RETURNING's rows are still answered.
    with conn.transaction(force_rollback=True):
        cur = conn.execute("DELETE FROM r RETURNING id")
        check(sorted(x[0] for x in cur.fetchall()) == [2, 4, 5, 6, 7, 8], "DELETE RETURNING in a block")
    check(len(rows(conn, "SELECT id FROM r")) == 6, "rolled-back DELETE RETURNING deleted nothing")


def describe(conn):
    pg = conn.pgconn

    def prepared(name, sql):
        res = pg.prepare(name, sql)
        check(res.status == pq.ExecStatus.COMMAND_OK, f"Parse {sql.decode()}: {res.error_message}")
        return pg.describe_prepared(name)

    d = prepared(b"u1", b"UPDATE t SET v = $1 WHERE id = $2")
    check([d.param_type(i) for i in range(d.nparams)] == [INT4, INT4],
          f"UPDATE describes 2 int4 parameters: {[d.param_type(i) for i in range(d.nparams)]}")
    check(d.nfields == 0, "UPDATE without RETURNING describes no row")
    d = prepared(b"u2", b"UPDATE t SET v = v + $1 FROM u WHERE t.grp = u.gid AND u.bonus = $2 RETURNING t.id, v")
    check([d.param_type(i) for i in range(d.nparams)] == [INT4, INT4], "UPDATE ... FROM describes its parameters")
    check([d.fname(i) for i in range(d.nfields)] == [b"id", b"v"]
          and [d.ftype(i) for i in range(d.nfields)] == [INT4, INT4], "UPDATE ... RETURNING describes its row")
    d = prepared(b"d1", b"DELETE FROM t WHERE id = $1")
    check(d.nparams == 1 and d.param_type(0) == INT4, "DELETE describes an int4 parameter")
    d = prepared(b"i1", b"INSERT INTO r VALUES ($1, $2, $3) RETURNING name, id")
    types = [d.param_type(i) for i in range(d.nparams)]
    check(types[0] == INT4 and types[1] in (TEXT, VARCHAR) and types[2] == 701,
          f"INSERT ... RETURNING describes its parameters: {types}")
    check([d.fname(i) for i in range(d.nfields)] == [b"name", b"id"], "INSERT ... RETURNING describes its row")

    # Bound as the description says, in binary (as drivers that bind by
    # Describe do).
    before = t_values(conn)
    some = sorted(before)[0]
    res = pg.exec_prepared(b"u1", [struct.pack("!i", 777), struct.pack("!i", some)], param_formats=[1, 1])
    check(res.status == pq.ExecStatus.COMMAND_OK and res.command_status == b"UPDATE 1",
          f"binary parameters bound by the described types: {res.error_message}")
    check(t_values(conn)[some] == 777, "the binary parameters reached the row")
    res = pg.exec_prepared(b"i1", [struct.pack("!i", 99), b"bin", struct.pack("!d", 9.5)],
                           param_formats=[1, 0, 1])
    check(res.ntuples == 1 and res.get_value(0, 0) == b"bin" and res.get_value(0, 1) == b"99",
          f"INSERT ... RETURNING with binary parameters: {res.error_message}")
    res = pg.exec_prepared(b"d1", [struct.pack("!i", 99)], param_formats=[1])
    check(res.command_status == b"DELETE 1" and 99 not in t_values(conn),
          f"DELETE with a binary parameter: {res.command_status}")
    res = pg.exec_prepared(b"d1", [struct.pack("!i", 99)], param_formats=[1])
    check(res.command_status == b"DELETE 0", "the same DELETE again finds no row")
    conn.execute("DELETE FROM r WHERE id = 99")


def verify(conn):
    bad = rows(conn, "SELECT table_name, slice, status FROM slicedb_verify WHERE status <> 'in_sync'")
    check(bad == [], f"both copies of every slice agree: {bad}")
    n = rows(conn, "SELECT count(*) FROM slicedb_verify WHERE table_name IN ('t', 'r', 'u', 'd')")[0][0]
    check(n > 0, "slicedb_verify checked the tables")


def main(url):
    with psycopg.connect(url, autocommit=True) as conn:
        joins(conn)
        returning(conn)
        describe(conn)
        verify(conn)
    print("all dml checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
