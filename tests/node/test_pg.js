#!/usr/bin/env node
// node-postgres (`pg`) against slicedb: parameters of several types, the
// types read back, errors' SQLSTATEs (err.code), transactions.
//
// Usage: TZ=UTC node tests/node/test_pg.js postgres://slicedb@127.0.0.1:PORT/slicedb
// Run by tests/it/node.rs (after `npm ci` in tests/node); exits non-zero
// on the first failed check and prints "all node-postgres checks passed"
// at the end.
'use strict';

const assert = require('node:assert/strict');
let pg;
try {
  pg = require('pg');
} catch (e) {
  console.error('pg is not installed: run `npm ci` in tests/node');
  process.exit(2);
}

function ok(what) {
  console.log(`ok: ${what}`);
}

async function expectCode(client, sql, params, code, what) {
  try {
    await client.query(sql, params);
  } catch (e) {
    assert.equal(e.code, code, `${what}: SQLSTATE ${e.code} (${e.message}), expected ${code}`);
    ok(`${what}: ${code}`);
    return;
  }
  throw new Error(`${what}: no error, expected ${code}`);
}

async function main(url) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(
      'CREATE TABLE node_t (i int, b bigint, n numeric(12,2), t text, f boolean, ' +
        'd date, ts timestamp, x double precision, y bytea) DISTRIBUTE ON (i)'
    );

    // Parameters of every kind node-postgres sends: numbers, strings, a
    // boolean, a Buffer (sent in binary), null.
    const rows = [
      [1, '9007199254740993', '12345.67', "it's \"quoted\"", true, '2024-02-29',
        '2024-02-29 13:14:15.678', 2.5, Buffer.from([0, 1, 2, 255])],
      [2, '-42', '-0.05', 'two', false, '1999-12-31', '1999-12-31 23:59:59', -1e-3,
        Buffer.from('hi')],
      [3, null, null, null, null, null, null, null, null],
    ];
    for (const r of rows) {
      const res = await client.query(
        'INSERT INTO node_t VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)', r
      );
      assert.equal(res.rowCount, 1, 'INSERT reports one row');
    }
    ok('INSERT with nine parameters of nine types, and NULLs');

    // Read back with a parameter (extended protocol): the values and the
    // types node-postgres was told.
    const res = await client.query('SELECT * FROM node_t WHERE i <= $1 ORDER BY i', [3]);
    assert.equal(res.rows.length, 3);
    const oids = Object.fromEntries(res.fields.map((f) => [f.name, f.dataTypeID]));
    assert.deepEqual(oids, {
      i: 23, b: 20, n: 1700, t: 25, f: 16, d: 1082, ts: 1114, x: 701, y: 17,
    });
    ok('result column types: int4 int8 numeric text bool date timestamp float8 bytea');
    const [a, b, c] = res.rows;
    assert.equal(a.i, 1);
    assert.equal(a.b, '9007199254740993'); // int8 arrives as a string, exact
    assert.equal(a.n, '12345.67');
    assert.equal(a.t, "it's \"quoted\"");
    assert.equal(a.f, true);
    assert.equal(a.d.toISOString(), '2024-02-29T00:00:00.000Z');
    assert.equal(a.ts.toISOString(), '2024-02-29T13:14:15.678Z');
    assert.equal(a.x, 2.5);
    assert.deepEqual(a.y, Buffer.from([0, 1, 2, 255]));
    assert.equal(b.b, '-42');
    assert.equal(b.n, '-0.05');
    assert.equal(b.f, false);
    assert.equal(b.d.toISOString(), '1999-12-31T00:00:00.000Z');
    assert.equal(b.ts.toISOString(), '1999-12-31T23:59:59.000Z');
    assert.equal(b.x, -0.001);
    assert.deepEqual(b.y, Buffer.from('hi'));
    for (const k of ['b', 'n', 't', 'f', 'd', 'ts', 'x', 'y']) {
      assert.equal(c[k], null, `row 3 column ${k} is NULL`);
    }
    ok('values read back equal the parameters (int8 and numeric exact, bytea bytes)');

    // The same through the simple protocol (no parameters): text results.
    const simple = await client.query('SELECT i, b, n, f, y FROM node_t WHERE i = 1');
    assert.deepEqual(
      [simple.rows[0].i, simple.rows[0].b, simple.rows[0].n, simple.rows[0].f],
      [1, '9007199254740993', '12345.67', true]
    );
    assert.deepEqual(simple.rows[0].y, Buffer.from([0, 1, 2, 255]));
    ok('the simple protocol returns the same values');

    // Parameters in WHERE of several types, compared on the server.
    const typed = await client.query(
      'SELECT i FROM node_t WHERE b = $1 AND n = $2 AND f = $3 AND d = $4 AND x = $5',
      ['9007199254740993', 12345.67, true, '2024-02-29', 2.5]
    );
    assert.deepEqual(typed.rows, [{ i: 1 }]);
    const isNull = await client.query(
      'SELECT count(*) AS n FROM node_t WHERE $1::text IS NULL AND t IS NULL', [null]
    );
    assert.equal(isNull.rows[0].n, '1');
    ok('parameters compared in WHERE (int8, numeric from a JS number, bool, date, float8, NULL)');

    // Aggregates over the parameters' values.
    const agg = await client.query(
      'SELECT sum(n) AS s, count(y) AS c, max(ts) AS m FROM node_t'
    );
    assert.equal(agg.rows[0].s, '12345.62');
    assert.equal(agg.rows[0].c, '2');
    assert.equal(agg.rows[0].m.toISOString(), '2024-02-29T13:14:15.678Z');
    ok('sum(numeric), count(bytea), max(timestamp)');

    // Errors keep their SQLSTATE.
    await expectCode(client, 'SELECT * FROM no_such_table', [], '42P01', 'unknown table');
    await expectCode(client, 'SELEKT 1', [], '42601', 'syntax error');
    await expectCode(client, 'SELECT 1 / (i - $1) FROM node_t', [1], '22012', 'division by zero');
    await expectCode(client, 'SELECT no_such_column FROM node_t', [], '42703', 'unknown column');

    // Transactions: ROLLBACK undoes, COMMIT keeps, an error fails the block.
    await client.query('BEGIN');
    await client.query('INSERT INTO node_t (i, t) VALUES ($1, $2)', [10, 'rolled back']);
    const inside = await client.query('SELECT count(*) AS n FROM node_t WHERE i = 10');
    assert.equal(inside.rows[0].n, '1', 'the block sees its own row');
    await client.query('ROLLBACK');
    const after = await client.query('SELECT count(*) AS n FROM node_t WHERE i = 10');
    assert.equal(after.rows[0].n, '0');
    ok('ROLLBACK undoes an INSERT the block could see');

    await client.query('BEGIN');
    await client.query('INSERT INTO node_t (i, t) VALUES ($1, $2)', [11, 'committed']);
    await client.query('COMMIT');
    const kept = await client.query('SELECT t FROM node_t WHERE i = $1', [11]);
    assert.deepEqual(kept.rows, [{ t: 'committed' }]);
    ok('COMMIT keeps an INSERT');

    await client.query('BEGIN');
    await expectCode(client, 'SELECT * FROM no_such_table', [], '42P01', 'error inside a block');
    await expectCode(client, 'SELECT 1', [], '25P02', 'the failed block refuses statements');
    await client.query('ROLLBACK');
    const alive = await client.query('SELECT count(*) AS n FROM node_t');
    assert.equal(alive.rows[0].n, '4');
    ok('after ROLLBACK of a failed block the connection works: 4 rows');

    // A pool of connections, queries in parallel.
    const pool = new pg.Pool({ connectionString: url, max: 4 });
    const sums = await Promise.all(
      [1, 2, 3, 4].map((k) => pool.query('SELECT sum(i) * $1::bigint AS s FROM node_t', [k * 1000]))
    );
    assert.deepEqual(sums.map((r) => r.rows[0].s), ['17000', '34000', '51000', '68000']);
    await pool.end();
    ok('a pool of 4 connections answers 4 parallel queries');
  } finally {
    await client.end();
  }
  console.log('all node-postgres checks passed');
}

main(process.argv[2]).catch((e) => {
  console.error(e);
  process.exit(1);
});
