"""psycopg 3 against slicedb's authentication (run by tests/it/auth.rs).

Connects as USER with PASSWORD (SCRAM-SHA-256) and reads table t (3 rows,
granted to USER); a wrong password must be refused (28P01), a database no
host-based rule names must be refused (28000). With CAFILE the server
requires TLS (hostssl rules): the connection verifies the server's
certificate (sslmode=verify-full, host name localhost) and a plain
connection is refused.

Usage: python3 tests/python/test_auth.py PORT USER PASSWORD [CAFILE]
"""
import sys

import psycopg

port, user, password = sys.argv[1], sys.argv[2], sys.argv[3]
ca = sys.argv[4] if len(sys.argv) > 4 else None


def conninfo(**changes):
    info = dict(
        host="localhost" if ca else "127.0.0.1",
        port=port,
        dbname="slicedb",
        user=user,
        password=password,
        connect_timeout=20,
    )
    if ca:
        info.update(sslmode="verify-full", sslrootcert=ca)
    else:
        info.update(sslmode="disable")
    info.update(changes)
    return info


def refused(why, **changes):
    try:
        psycopg.connect(**conninfo(**changes)).close()
    except psycopg.OperationalError as e:
        assert why in str(e), f"{changes}: expected {why!r}, got {e}"
        print(f"refused as expected ({why})")
        return
    raise AssertionError(f"{changes}: connected, but should be refused ({why})")


with psycopg.connect(**conninfo()) as conn:
    n = conn.execute("SELECT count(*) FROM t").fetchone()[0]
    assert n == 3, f"t has {n} rows, expected 3"
    ssl = conn.pgconn.ssl_in_use
    assert ssl == bool(ca), f"ssl_in_use = {ssl}, expected {bool(ca)}"
print(f"right password: in (TLS: {bool(ca)})")

refused("password authentication failed", password=password + "-wrong")
refused("no pg_hba.conf entry", dbname="otherdb")
if ca:
    refused("no pg_hba.conf entry", sslmode="disable")

print("all auth checks passed")
