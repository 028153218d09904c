-- Run by tests/it/psql.rs:  psql <url> -X -v ON_ERROR_STOP=0 -f tests/psql/basic.sql
-- Exercises psql's catalog queries (\dt, \d) and error reporting against slicedb.
\set VERBOSITY verbose
\echo marker: start

CREATE TABLE t (k bigint, g int, v double precision, s text, d date, n numeric(12,2)) DISTRIBUTE ON (k);

INSERT INTO t VALUES
  (1, 10, 1.5, 'one', DATE '2024-01-01', 10.25),
  (2, 20, 2.5, 'psql-marker-two', DATE '2024-02-02', 20.50),
  (3, 30, NULL, NULL, DATE '2024-03-03', 30.75);

\echo marker: dt
\dt

\echo marker: d
\d t

\echo marker: l
\l

\echo marker: query
SELECT s, k * 1000003 AS big FROM t WHERE k = 2;
SELECT count(*) AS row_count, sum(n) AS n_sum FROM t;

\echo marker: bad
SELECT * FROM no_such_table_psql;

\echo marker: after
SELECT 'still-running-' || count(*) AS after_error FROM t;

DROP TABLE t;
\echo marker: end
