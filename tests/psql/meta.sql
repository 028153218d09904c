-- Run by tests/it/psql.rs:  psql <url> -X -v ON_ERROR_STOP=0 -f tests/psql/meta.sql
-- psql's meta-commands and the catalog queries of its tab completion, whose
-- output the test compares with what PostgreSQL 15 shows for the same objects.
\set VERBOSITY verbose
\pset pager off
\echo marker: start

CREATE TABLE mt (k bigint, n numeric(12,2), s text, d date, v varchar(20)) DISTRIBUTE ON (k);
CREATE UNLOGGED TABLE scratch (a int, b text) DISTRIBUTED RANDOMLY;
CREATE VIEW mv AS SELECT k, n FROM mt;
CREATE SCHEMA sales;
CREATE TABLE sales.orders (id int, amount numeric(10,3));
INSERT INTO mt (k, n, s, d) VALUES (1, 10.25, 'one', DATE '2024-01-01'), (2, 20.50, 'two', DATE '2024-02-02');

\echo marker: d
\d mt
\echo marker: dplus
\d+ mt
\echo marker: dplus_scratch
\d+ scratch
\echo marker: dtplus
\dt+
\echo marker: di
\di
\echo marker: dv
\dv mv
\echo marker: dn
\dn
\echo marker: du
\du
\echo marker: df
\df
\echo marker: d_qualified
\d sales.orders
\echo marker: complete_tables
SELECT c.relname, NULL::pg_catalog.text FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm') AND (c.relname) LIKE 'm%' AND pg_catalog.pg_table_is_visible(c.oid) AND c.relnamespace <> (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'pg_catalog') UNION ALL SELECT NULL::pg_catalog.text, n.nspname FROM pg_catalog.pg_namespace n WHERE n.nspname LIKE 'm%' AND n.nspname NOT LIKE E'pg\\_%' LIMIT 1000;
\echo marker: complete_qualified
SELECT c.relname, n.nspname FROM pg_catalog.pg_class c, pg_catalog.pg_namespace n WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p') AND (c.relname) LIKE 'o%' AND n.nspname = 'sales' LIMIT 1000;
\echo marker: complete_columns
SELECT pg_catalog.quote_ident(attname) FROM pg_catalog.pg_attribute a, pg_catalog.pg_class c WHERE c.oid = a.attrelid AND a.attnum > 0 AND NOT a.attisdropped AND substring(pg_catalog.quote_ident(attname),1,1)='n' AND (pg_catalog.quote_ident(relname)='mt' OR '"' || relname || '"'='mt') AND pg_catalog.pg_table_is_visible(c.oid);
\echo marker: complete_settings
SELECT pg_catalog.quote_ident(name) FROM pg_catalog.pg_settings WHERE context != 'internal' AND name LIKE 'statement_t%' LIMIT 1000;
\echo marker: typeof
SELECT pg_typeof(k) AS tk, pg_typeof(n) AS tn, pg_typeof(s) AS ts, pg_typeof(d) AS td FROM mt WHERE k = 1;
\echo marker: x
\x
SELECT k, s FROM mt WHERE k = 2;
\x
\echo marker: timing
\timing on
SELECT count(*) AS timed FROM mt;
\timing off
\echo marker: end
