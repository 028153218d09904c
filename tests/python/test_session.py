#!/usr/bin/env python3
"""What drivers read about the server and the session, with psycopg 3:
server_version and server_version_num (startup ParameterStatus and SHOW),
version(), current_database() and pg_database; PostgreSQL's output column
names; per-session SET / SHOW / RESET and SET LOCAL, checked across two
connections.

Usage: python3 tests/python/test_session.py postgres://slicedb@127.0.0.1:PORT/DB

Run by tests/it/python.rs with a database name of its own; exits non-zero
on the first failed check.
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


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def names(conn, sql):
    cur = conn.execute(sql)
    cur.fetchall()
    return [d.name for d in cur.description]


def main(url):
    db = url.rsplit("/", 1)[1]
    a = psycopg.connect(url, autocommit=True, connect_timeout=20)
    b = psycopg.connect(url, autocommit=True, connect_timeout=20)

    # 1. The server, as drivers parse it.
    check(a.info.server_version == 150000, f"libpq reads server_version 15.0: {a.info.server_version}")
    check(a.info.parameter_status("server_version").startswith("15.0 (slicedb "),
          f"startup ParameterStatus server_version: {a.info.parameter_status('server_version')}")
    check(a.info.parameter_status("server_version_num") == "150000",
          "startup ParameterStatus server_version_num")
    check(one(a, "SHOW server_version").startswith("15.0 (slicedb "), "SHOW server_version")
    check(one(a, "SHOW server_version_num") == "150000", "SHOW server_version_num")
    v = one(a, "SELECT version()")
    check(v.startswith("PostgreSQL 15.0 (slicedb "), f"version(): {v}")
    check(one(a, "SELECT pg_catalog.version()") == v, "pg_catalog.version()")
    check(one(a, "SELECT current_database()") == db, f"current_database() is {db}")
    dbs = [r[0] for r in a.execute("SELECT datname FROM pg_catalog.pg_database").fetchall()]
    check(dbs == [db], f"pg_database lists the database named at connect: {dbs}")

    # 3. Output column names.
    check(names(a, "SELECT 1 AS a, 2 AS a") == ["a", "a"], "repeated output names")
    check(names(a, "SELECT 1 + 1, count(*), 'x'::text, CASE WHEN true THEN 1 END, current_database()")
          == ["?column?", "count", "text", "case", "current_database"],
          "unnamed expressions named as PostgreSQL names them")
    check(names(a, 'SELECT 1 AS Foo, 2 AS "Bar", 3 AS "baZ"') == ["foo", "Bar", "baZ"],
          "identifiers fold to lower case unless quoted")
    a.execute("CREATE TABLE sess_t (v bigint, w bigint)")
    a.execute("INSERT INTO sess_t SELECT value, value FROM generate_series(1, 10)")
    check(a.execute("SELECT count(*), sum(v), sum(w) FROM sess_t").fetchone() == (10, 55, 55),
          "INSERT ... SELECT value, value")
    check(names(a, "SELECT V, sess_t.w, W AS w FROM sess_t") == ["v", "w", "w"],
          "columns keep their names, folded")
    a.execute("DROP TABLE sess_t")

    # 4. Settings are each session's own.
    base = one(a, "SHOW datafusion.execution.batch_size")
    check(base.isdigit(), f"SHOW datafusion.execution.batch_size answers: {base}")
    a.execute("SET datafusion.execution.batch_size = 1234")
    a.execute("SET statement_timeout = '42s'")
    a.execute("SET application_name = 'session-a'")
    check(one(a, "SHOW datafusion.execution.batch_size") == "1234", "a sees its SET")
    check(one(b, "SHOW datafusion.execution.batch_size") == base, "b does not see a's SET")
    check(one(a, "SHOW statement_timeout") == "42s" and one(b, "SHOW statement_timeout") == "0",
          "statement_timeout is per session")
    check(one(a, "SELECT current_setting('application_name')") == "session-a"
          and one(b, "SELECT current_setting('application_name')") != "session-a",
          "current_setting() reads the session's value")
    check(a.info.parameter_status("application_name") == "session-a",
          "SET application_name reports a ParameterStatus")
    rows = dict(a.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN ('statement_timeout', 'server_version_num', 'datafusion.execution.batch_size')"
    ).fetchall())
    check(rows == {"statement_timeout": "42s", "server_version_num": "150000",
                   "datafusion.execution.batch_size": "1234"}, f"pg_settings shows the session: {rows}")
    a.execute("RESET datafusion.execution.batch_size")
    check(one(a, "SHOW datafusion.execution.batch_size") == base, "RESET goes back to the server's value")

    # SET LOCAL lasts until the block ends; a plain SET in a rolled back
    # block is undone.
    a.autocommit = False
    a.execute("SET LOCAL statement_timeout = '7s'")
    check(one(a, "SHOW statement_timeout") == "7s", "SET LOCAL inside the block")
    a.commit()
    check(one(a, "SHOW statement_timeout") == "42s", "SET LOCAL undone at COMMIT")
    a.execute("SET datafusion.execution.batch_size = 99")
    a.rollback()
    check(one(a, "SHOW datafusion.execution.batch_size") == base, "SET undone by ROLLBACK")
    a.execute("SET datafusion.execution.batch_size = 98")
    a.commit()
    check(one(a, "SHOW datafusion.execution.batch_size") == "98", "SET kept by COMMIT")
    a.commit()
    a.autocommit = True

    for sql, code in [
        ("SET no_such_setting = 1", "42704"),
        ("SHOW no_such_setting", "42704"),
        ("SET server_version = '1'", "55P02"),
        ("SET max_connections = 5", "55P02"),
        ("SET statement_timeout = 'soon'", "22023"),
        ("SET datafusion.execution.batch_size = 'many'", "22023"),
    ]:
        try:
            a.execute(sql)
            raise AssertionError(f"{sql} should fail")
        except errors.Error as e:
            check(e.sqlstate == code, f"{sql} fails with {code} (got {e.sqlstate})")

    a.close()
    b.close()
    print("all session checks passed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
