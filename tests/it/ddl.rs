//! The DDL users expect, over the wire on real clusters: CREATE TABLE AS
//! (row counts, sums, the distribution it picks, all or nothing), SELECT
//! INTO, CREATE / DROP SCHEMA, TRUNCATE of several tables in one
//! transaction, and ALTER TABLE (ADD / DROP / RENAME COLUMN, RENAME TO)
//! online, with answers checked before and after a restart, and on a
//! multi-process cluster after a node is killed, misses ALTERs, comes back
//! and is resynced, and after another's copies are regenerated.

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::{self, exec, expect_error, query, scalar, wait_fully_protected, Slicedb};

/// The row count a statement's CommandComplete carries.
async fn affected(c: &Client, sql: &str) -> Result<u64> {
    let msgs = c
        .simple_query(sql)
        .await
        .map_err(|e| anyhow::anyhow!("{sql}: {}", harness::describe(&e)))?;
    for m in msgs {
        if let SimpleQueryMessage::CommandComplete(n) = m {
            return Ok(n);
        }
    }
    bail!("{sql}: no CommandComplete")
}

/// (distribution, key) of `table` in slicedb_tables.
async fn distribution(c: &Client, table: &str) -> Result<(String, Option<String>)> {
    let rows = query(
        c,
        &format!(
            "SELECT distribution, distribution_key FROM slicedb_tables WHERE table_name = '{table}'"
        ),
    )
    .await?;
    ensure!(rows.len() == 1, "{table} in slicedb_tables: {rows:?}");
    Ok((rows[0][0].clone().unwrap_or_default(), rows[0][1].clone()))
}

fn hash(key: &str) -> (String, Option<String>) {
    ("hash".into(), Some(key.into()))
}

const SRC: &str = "CREATE TABLE src (k bigint, region int, amount numeric(12,2), note text) \
     DISTRIBUTE ON (k)";
const SRC_ROWS: &str = "INSERT INTO src SELECT i, i % 5, CAST(i AS numeric(12,2)) / 4, \
     'n' || CAST(i AS text) FROM generate_series(1, 5000) AS g(i)";

#[test]
fn create_table_as_select_into_schemas_and_truncate() {
    harness::run("ddl_ctas", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local(&env, 3, &data).await?;
        let c = db.connect().await?;
        exec(&c, SRC).await?;
        exec(&c, SRC_ROWS).await?;

        // Keeps the key column (renamed): the source's distribution.
        let n = affected(
            &c,
            "CREATE TABLE c1 AS SELECT k AS id, amount FROM src WHERE region = 2",
        )
        .await?;
        ensure!(n == 1000, "CREATE TABLE AS answers SELECT 1000, got {n}");
        let want = query(
            &c,
            "SELECT count(*), sum(amount), sum(k) FROM src WHERE region = 2",
        )
        .await?;
        let got = query(&c, "SELECT count(*), sum(amount), sum(id) FROM c1").await?;
        ensure!(
            got == want,
            "c1 holds the selected rows: {got:?} vs {want:?}"
        );
        ensure!(got[0][0].as_deref() == Some("1000") && got[0][2].as_deref() == Some("2499500"));
        ensure!(
            distribution(&c, "c1").await? == hash("id"),
            "c1 takes src's key"
        );
        // Aggregates: a new key by the default rule (the first column).
        exec(
            &c,
            "CREATE TABLE c2 AS SELECT region, sum(amount) AS total, count(*) FROM src GROUP BY region",
        )
        .await?;
        let total = scalar(&c, "SELECT sum(total) FROM c2").await?;
        ensure!(total == scalar(&c, "SELECT sum(amount) FROM src").await?);
        ensure!(
            scalar(&c, "SELECT sum(count) FROM c2").await? == "5000",
            "PostgreSQL's column name count"
        );
        ensure!(distribution(&c, "c2").await? == hash("region"));
        // An explicit clause wins; a computed key is not the source's.
        exec(
            &c,
            "CREATE TABLE c3 AS SELECT note, k FROM src DISTRIBUTE ON RANDOM",
        )
        .await?;
        ensure!(distribution(&c, "c3").await? == ("random".to_string(), None));
        ensure!(scalar(&c, "SELECT count(DISTINCT k) FROM c3").await? == "5000");
        exec(&c, "CREATE TABLE c4 AS SELECT note, k * 2 AS k2 FROM src").await?;
        ensure!(distribution(&c, "c4").await? == hash("note"));
        exec(
            &c,
            "CREATE TABLE c5 AS SELECT k AS a, note AS b FROM src DISTRIBUTE ON (b)",
        )
        .await?;
        ensure!(distribution(&c, "c5").await? == hash("b"));
        ensure!(scalar(&c, "SELECT sum(a) FROM c5").await? == "12502500");
        // The rows landed where the key hashes: a co-located join finds them all.
        ensure!(scalar(&c, "SELECT count(*) FROM c1 JOIN src ON c1.id = src.k").await? == "1000");
        // WITH NO DATA: the table only.
        exec(&c, "CREATE TABLE c6 AS SELECT * FROM src WITH NO DATA").await?;
        ensure!(scalar(&c, "SELECT count(*) FROM c6").await? == "0");
        exec(&c, "INSERT INTO c6 SELECT * FROM src WHERE k <= 3").await?;
        ensure!(scalar(&c, "SELECT sum(amount) FROM c6").await? == "1.50");
        // SELECT INTO.
        exec(&c, "SELECT k, note INTO c7 FROM src WHERE k <= 10").await?;
        ensure!(scalar(&c, "SELECT count(*) FROM c7").await? == "10");
        // All or nothing: a failure while writing leaves no table.
        expect_error(
            &c,
            "CREATE TABLE bad AS SELECT k, CAST(CASE WHEN k = 4000 THEN 'x' ELSE '1' END AS int) AS v FROM src",
            &["22P02", "22018", "XX000"],
        )
        .await?;
        expect_error(&c, "SELECT count(*) FROM bad", &["42P01"]).await?;
        ensure!(
            scalar(
                &c,
                "SELECT count(*) FROM slicedb_tables WHERE table_name = 'bad'"
            )
            .await?
                == "0"
        );
        expect_error(&c, "CREATE TABLE c1 AS SELECT 1 AS x", &["42P07"]).await?;
        exec(&c, "CREATE TABLE IF NOT EXISTS c1 AS SELECT 1 AS x").await?;
        ensure!(scalar(&c, "SELECT count(*) FROM c1").await? == "1000");

        // Schemas.
        exec(&c, "CREATE SCHEMA s").await?;
        expect_error(&c, "CREATE SCHEMA s", &["42P06"]).await?;
        exec(&c, "CREATE SCHEMA IF NOT EXISTS s").await?;
        exec(&c, "CREATE TABLE s.t (a int, b text)").await?;
        exec(&c, "INSERT INTO s.t VALUES (1, 'x'), (2, 'y'), (3, 'z')").await?;
        exec(
            &c,
            "CREATE TABLE s.c AS SELECT k, amount FROM src WHERE k <= 100",
        )
        .await?;
        ensure!(scalar(&c, "SELECT sum(a) FROM s.t").await? == "6");
        ensure!(
            scalar(&c, "SELECT count(*) FROM s.c JOIN s.t ON s.c.k = s.t.a").await? == "3",
            "tables of a schema join"
        );
        ensure!(distribution(&c, "s.c").await? == hash("k"));
        expect_error(&c, "CREATE TABLE nope.t (a int)", &["3F000"]).await?;
        exec(&c, "CREATE TABLE t (a int)").await?;
        exec(&c, "INSERT INTO t VALUES (42)").await?;
        ensure!(
            scalar(&c, "SELECT a FROM t").await? == "42",
            "public.t is not s.t"
        );
        ensure!(scalar(&c, "SELECT count(*) FROM public.t").await? == "1");

        // TRUNCATE of several tables: one transaction.
        expect_error(&c, "TRUNCATE c2, nosuch", &["42P01"]).await?;
        ensure!(
            scalar(&c, "SELECT count(*) FROM c2").await? == "5",
            "nothing truncated"
        );
        exec(&c, "TRUNCATE c1, c3, s.c").await?;
        for t in ["c1", "c3", "s.c"] {
            ensure!(
                scalar(&c, &format!("SELECT count(*) FROM {t}")).await? == "0",
                "{t} truncated"
            );
        }
        ensure!(scalar(&c, "SELECT count(*) FROM src").await? == "5000");
        exec(&c, "BEGIN").await?;
        exec(&c, "TRUNCATE c2, c4").await?;
        exec(&c, "ROLLBACK").await?;
        ensure!(scalar(&c, "SELECT count(*) FROM c2").await? == "5");
        ensure!(scalar(&c, "SELECT count(*) FROM c4").await? == "5000");

        expect_error(&c, "DROP SCHEMA s", &["2BP01"]).await?;
        exec(&c, "CREATE SCHEMA kept").await?;
        exec(&c, "CREATE TABLE kept.u AS SELECT k FROM src WHERE k <= 7").await?;
        exec(&c, "DROP SCHEMA s CASCADE").await?;
        expect_error(&c, "SELECT count(*) FROM s.t", &["42P01", "3F000"]).await?;
        exec(&c, "DROP SCHEMA IF EXISTS s").await?;
        expect_error(&c, "DROP SCHEMA s", &["3F000"]).await?;

        // Everything survives a restart.
        drop(c);
        db.stop().await?;
        let db = Slicedb::local(&env, 3, &data).await?;
        let c = db.connect().await?;
        ensure!(scalar(&c, "SELECT sum(k) FROM kept.u").await? == "28");
        ensure!(distribution(&c, "c5").await? == hash("b"));
        ensure!(scalar(&c, "SELECT count(*) FROM c4").await? == "5000");
        expect_error(&c, "SELECT count(*) FROM s.t", &["42P01", "3F000"]).await?;
        db.stop().await?;
        Ok(())
    });
}

/// ALTERs of `a` (from `src`'s first 1,000 rows) and the answers they must
/// give, checked by [`check_altered`].
async fn alter_steps(c: &Client) -> Result<()> {
    exec(
        c,
        "CREATE TABLE a AS SELECT k, amount, note FROM src WHERE k <= 1000",
    )
    .await?;
    exec(c, "ALTER TABLE a ADD COLUMN flag int DEFAULT 7").await?;
    ensure!(
        scalar(c, "SELECT sum(flag) FROM a").await? == "7000",
        "old rows read the default"
    );
    exec(
        c,
        "INSERT INTO a (k, amount, note) VALUES (1001, 1.00, 'new')",
    )
    .await?;
    exec(c, "INSERT INTO a VALUES (1002, 2.00, 'new', 1)").await?;
    ensure!(
        scalar(c, "SELECT sum(flag) FROM a").await? == "7008",
        "new rows: default, own value"
    );
    exec(c, "ALTER TABLE a ADD COLUMN extra text").await?;
    ensure!(scalar(c, "SELECT count(*) FROM a WHERE extra IS NULL").await? == "1002");
    expect_error(c, "ALTER TABLE a ADD COLUMN flag int", &["42701"]).await?;
    expect_error(c, "ALTER TABLE a DROP COLUMN nosuch", &["42703"]).await?;
    let msg = expect_error(c, "ALTER TABLE a DROP COLUMN k", &["42P16", "0A000"]).await?;
    ensure!(msg.contains("distribution key"), "{msg}");
    expect_error(c, "ALTER TABLE a RENAME COLUMN nosuch TO x", &["42703"]).await?;
    exec(c, "ALTER TABLE a DROP COLUMN note").await?;
    exec(c, "ALTER TABLE a RENAME COLUMN amount TO amt").await?;
    expect_error(c, "SELECT amount FROM a", &["42703"]).await?;
    expect_error(c, "SELECT note FROM a", &["42703"]).await?;
    // The dropped column's name is free again.
    exec(c, "ALTER TABLE a ADD COLUMN note int DEFAULT 3").await?;
    exec(
        c,
        "INSERT INTO a (k, amt, flag, extra, note) VALUES (1003, 3.00, 2, 'e', 9)",
    )
    .await?;
    exec(c, "ALTER TABLE a RENAME COLUMN k TO id").await?;
    exec(c, "ALTER TABLE a RENAME TO b").await?;
    expect_error(c, "SELECT count(*) FROM a", &["42P01"]).await?;
    // Deletes and updates work on the evolved table.
    exec(c, "DELETE FROM b WHERE id % 10 = 0").await?;
    exec(c, "UPDATE b SET extra = 'u' WHERE id <= 5").await?;
    Ok(())
}

/// The answers [`alter_steps`] leave.
async fn check_altered(c: &Client, when: &str) -> Result<()> {
    let cols = query(c, "SELECT * FROM b WHERE id = 1003").await?;
    ensure!(
        cols == vec![vec![
            Some("1003".into()),
            Some("3.00".into()),
            Some("2".into()),
            Some("e".into()),
            Some("9".into())
        ]],
        "{when}: b's columns are id, amt, flag, extra, note: {cols:?}"
    );
    let got = query(
        c,
        "SELECT count(*), sum(id), sum(amt), sum(flag), sum(note), count(extra) FROM b",
    )
    .await?;
    // 1,003 rows less the 100 with id % 10 = 0 (ids 10..=1000).
    let want_ids: i64 = (1..=1003).filter(|i| i % 10 != 0).sum();
    let want_amt: f64 = (1..=1000)
        .filter(|i| i % 10 != 0)
        .map(|i| i as f64 / 4.0)
        .sum::<f64>()
        + 6.0;
    let flags = 7 * 900 + 7 + 1 + 2;
    let notes = 3 * 902 + 9;
    let want = vec![vec![
        Some("903".to_string()),
        Some(want_ids.to_string()),
        Some(format!("{want_amt:.2}")),
        Some(flags.to_string()),
        Some(notes.to_string()),
        Some("6".to_string()),
    ]];
    ensure!(got == want, "{when}: b answers {got:?}, want {want:?}");
    ensure!(
        distribution(c, "b").await? == hash("id"),
        "{when}: the key follows the rename"
    );
    Ok(())
}

#[test]
fn alter_table_online_survives_a_restart() {
    harness::run("ddl_alter_restart", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local(&env, 3, &data).await?;
        let c = db.connect().await?;
        exec(&c, SRC).await?;
        exec(&c, SRC_ROWS).await?;
        alter_steps(&c).await?;
        check_altered(&c, "before the restart").await?;
        exec(&c, "GROOM TABLE b").await?;
        check_altered(&c, "after GROOM").await?;
        harness::ensure_verified(&c).await?;
        drop(c);
        db.stop().await?;
        let db = Slicedb::local(&env, 3, &data).await?;
        let c = db.connect().await?;
        check_altered(&c, "after the restart").await?;
        harness::ensure_verified(&c).await?;
        db.stop().await?;
        Ok(())
    });
}

/// Retry a statement while the cluster fails a node over (40001).
async fn write(c: &Client, sql: &str) -> Result<()> {
    for _ in 0..50 {
        match c.simple_query(sql).await {
            Ok(_) => return Ok(()),
            Err(e) if harness::sqlstate(&e).as_deref() == Some("40001") => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => bail!("{sql}: {}", harness::describe(&e)),
        }
    }
    bail!("{sql}: still refused after the failover")
}

#[test]
fn alter_table_while_a_node_is_down_reaches_it_when_it_comes_back() {
    harness::run("ddl_alter_heal", |env| async move {
        let mut db = Slicedb::multiprocess_full(
            &env,
            3,
            0,
            "cluster",
            &[],
            "",
            "regen_delay = \"60s\"\nprobe_timeout = \"1500ms\"\n",
        )
        .await?;
        let c = db.connect().await?;
        exec(&c, SRC).await?;
        write(&c, SRC_ROWS).await?;
        write(
            &c,
            "CREATE TABLE a AS SELECT k, amount, note FROM src WHERE k <= 1000",
        )
        .await?;
        exec(&c, "ALTER TABLE a ADD COLUMN flag int DEFAULT 7").await?;
        wait_fully_protected(&c, Duration::from_secs(60)).await?;

        // Node 0 dies: its slices are served from their mirrors, old
        // blocks widened there too.
        db.kill_proc(0);
        ensure!(scalar(&c, "SELECT sum(flag) FROM a").await? == "7000");
        // ALTERs and writes it misses.
        write(
            &c,
            "INSERT INTO a (k, amount, note) VALUES (1001, 1.00, 'new')",
        )
        .await?;
        write(&c, "INSERT INTO a VALUES (1002, 2.00, 'new', 1)").await?;
        exec(&c, "ALTER TABLE a ADD COLUMN extra text").await?;
        exec(&c, "ALTER TABLE a DROP COLUMN note").await?;
        exec(&c, "ALTER TABLE a RENAME COLUMN amount TO amt").await?;
        exec(&c, "ALTER TABLE a ADD COLUMN note int DEFAULT 3").await?;
        write(
            &c,
            "INSERT INTO a (k, amt, flag, extra, note) VALUES (1003, 3.00, 2, 'e', 9)",
        )
        .await?;
        exec(&c, "ALTER TABLE a RENAME COLUMN k TO id").await?;
        exec(&c, "ALTER TABLE a RENAME TO b").await?;
        write(&c, "DELETE FROM b WHERE id % 10 = 0").await?;
        write(&c, "UPDATE b SET extra = 'u' WHERE id <= 5").await?;
        check_altered(&c, "with node 0 down").await?;

        // It comes back: the coordinator gives it the tables' schemas now,
        // then resyncs what it missed.
        db.restart_node(&env, 0).await?;
        wait_fully_protected(&c, Duration::from_secs(90)).await?;
        check_altered(&c, "after node 0 rejoined").await?;
        harness::ensure_verified(&c).await?;
        // Node 0 serves its primaries again; the next fault is survived.
        write(
            &c,
            "INSERT INTO b (id, amt, flag, extra, note) VALUES (2000, 0.00, 0, NULL, 0)",
        )
        .await?;
        write(&c, "DELETE FROM b WHERE id = 2000").await?;
        db.restart_coordinator(&env).await?;
        let c = db.connect().await?;
        check_altered(&c, "after the coordinator restarted").await?;
        db.kill_proc(1);
        check_altered(&c, "after node 1 died").await?;
        // Its copies regenerated on the survivors: old blocks, of fewer
        // columns, copied as they are.
        exec(&c, "REGENERATE").await?;
        wait_fully_protected(&c, Duration::from_secs(90)).await?;
        let on_1 = scalar(
            &c,
            "SELECT count(*) FROM slicedb_slices WHERE copies LIKE '1:%' OR copies LIKE '%, 1:%'",
        )
        .await?;
        ensure!(on_1 == "0", "no copy left on node 1 ({on_1} slices)");
        check_altered(&c, "after node 1's copies were regenerated").await?;
        harness::ensure_verified(&c).await?;
        drop(c);
        db.kill();
        Ok(())
    });
}

/// Views are kept: CREATE VIEW (with a column list, OR REPLACE) is seen by
/// every session and answers after a restart; DROP VIEW is durable too;
/// names taken by tables or system views, TEMP views and DROP VIEW of a
/// table are refused with PostgreSQL's SQLSTATEs.
#[test]
fn views_are_shared_by_sessions_and_survive_a_restart() {
    harness::run("ddl_views", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local(&env, 2, &data).await?;
        let c = db.connect().await?;
        exec(&c, "CREATE TABLE vt (k bigint, g int) DISTRIBUTE ON (k)").await?;
        exec(
            &c,
            "INSERT INTO vt SELECT value, value % 3 FROM generate_series(1, 300)",
        )
        .await?;
        exec(
            &c,
            "CREATE VIEW per_g AS SELECT g, count(*), sum(k) FROM vt GROUP BY g",
        )
        .await?;
        exec(
            &c,
            "CREATE VIEW big (key, grp) AS SELECT k, g FROM vt WHERE k > 290",
        )
        .await?;
        exec(&c, "CREATE VIEW gone AS SELECT k FROM vt").await?;
        exec(
            &c,
            "CREATE OR REPLACE VIEW gone AS SELECT k * 2 AS k2 FROM vt",
        )
        .await?;
        exec(&c, "DROP VIEW gone").await?;
        expect_error(&c, "CREATE VIEW per_g AS SELECT 1", &["42P07"]).await?;
        expect_error(&c, "CREATE VIEW vt AS SELECT 1", &["42P07"]).await?;
        expect_error(
            &c,
            "CREATE OR REPLACE VIEW slicedb_nodes AS SELECT 1",
            &["42P07"],
        )
        .await?;
        expect_error(&c, "CREATE TABLE per_g (a int)", &["42P07"]).await?;
        expect_error(&c, "DROP VIEW vt", &["42809"]).await?;
        expect_error(&c, "DROP VIEW gone", &["42P01"]).await?;
        expect_error(&c, "CREATE TEMP VIEW tv AS SELECT 1", &["0A000"]).await?;
        expect_error(&c, "CREATE VIEW bad AS SELECT nope FROM vt", &["42703"]).await?;
        exec(&c, "DROP VIEW IF EXISTS gone").await?;

        let check = |c: Client, when: &'static str| async move {
            let rows = query(&c, "SELECT g, count, sum FROM per_g ORDER BY g").await?;
            let want: Vec<Vec<Option<String>>> = [
                ("0", "100", "15150"),
                ("1", "100", "14950"),
                ("2", "100", "15050"),
            ]
            .iter()
            .map(|(a, b, s)| {
                vec![
                    Some(a.to_string()),
                    Some(b.to_string()),
                    Some(s.to_string()),
                ]
            })
            .collect();
            ensure!(rows == want, "per_g {when}: {rows:?}");
            let keys = scalar(
                &c,
                "SELECT string_agg(key::text, ',' ORDER BY key) FROM big WHERE grp = 0",
            )
            .await?;
            ensure!(keys == "291,294,297,300", "big {when}: {keys}");
            let n = scalar(
                &c,
                "SELECT count(*) FROM pg_catalog.pg_class WHERE relname = 'gone'",
            )
            .await?;
            ensure!(n == "0", "the dropped view is listed {when}");
            Ok::<_, anyhow::Error>(())
        };
        // Another session sees them.
        check(db.connect().await?, "in another session").await?;
        drop(c);
        db.stop().await?;
        let db = Slicedb::local(&env, 2, &data).await?;
        check(db.connect().await?, "after the restart").await?;
        let c = db.connect().await?;
        exec(&c, "DROP VIEW big").await?;
        drop(c);
        db.stop().await?;
        let db = Slicedb::local(&env, 2, &data).await?;
        let c = db.connect().await?;
        expect_error(&c, "SELECT * FROM big", &["42P01"]).await?;
        ensure!(scalar(&c, "SELECT count(*) FROM per_g").await? == "3");
        db.stop().await
    });
}

/// `varchar(n)` (also `character varying(n)`, and in ADD COLUMN) keeps its
/// limit: psql's catalog shows it, values of at most n characters (not
/// bytes) are stored, and a longer one fails INSERT, UPDATE and COPY with
/// 22001, leaving nothing behind, also after a restart.
#[test]
fn varchar_limits_are_kept_and_enforced() {
    use futures::SinkExt;
    harness::run("ddl_varchar", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local(&env, 2, &data).await?;
        let c = db.connect().await?;
        exec(
            &c,
            "CREATE TABLE vc (k int, v varchar(5), w character varying(3), x varchar)",
        )
        .await?;
        exec(
            &c,
            "INSERT INTO vc VALUES (1, 'abcde', 'äöü', 'no limit at all')",
        )
        .await?;
        exec(&c, "ALTER TABLE vc ADD COLUMN z varchar(2)").await?;
        let check = |c: Client, when: &'static str| async move {
            expect_error(
                &c,
                "INSERT INTO vc VALUES (2, 'abcdef', 'a', 'x', NULL)",
                &["22001"],
            )
            .await?;
            expect_error(&c, "INSERT INTO vc (k, w) VALUES (2, 'äöüß')", &["22001"]).await?;
            expect_error(&c, "UPDATE vc SET w = 'abcd' WHERE k = 1", &["22001"]).await?;
            expect_error(&c, "INSERT INTO vc (k, z) VALUES (3, 'zzz')", &["22001"]).await?;
            let sink = c.copy_in("COPY vc (k, v) FROM STDIN").await?;
            futures::pin_mut!(sink);
            sink.send(bytes::Bytes::from_static(b"4\tok\n5\ttoo long\n"))
                .await?;
            let e = sink.finish().await.err().map(|e| harness::sqlstate(&e));
            ensure!(
                e == Some(Some("22001".into())),
                "COPY of a long value {when}: {e:?}"
            );
            let rows = query(&c, "SELECT k, v, w, x, z FROM vc ORDER BY k").await?;
            ensure!(
                rows == vec![vec![
                    Some("1".to_string()),
                    Some("abcde".into()),
                    Some("äöü".into()),
                    Some("no limit at all".into()),
                    None
                ]],
                "vc {when}: {rows:?}"
            );
            let types = query(
                &c,
                "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) \
                 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class r ON r.oid = a.attrelid \
                 WHERE r.relname = 'vc' AND a.attnum > 0 ORDER BY a.attnum",
            )
            .await?;
            let types: Vec<String> = types
                .iter()
                .map(|r| {
                    format!(
                        "{} {}",
                        r[0].clone().unwrap_or_default(),
                        r[1].clone().unwrap_or_default()
                    )
                })
                .collect();
            ensure!(
                types
                    == [
                        "k integer",
                        "v character varying(5)",
                        "w character varying(3)",
                        "x text",
                        "z character varying(2)"
                    ],
                "types {when}: {types:?}"
            );
            Ok::<_, anyhow::Error>(())
        };
        check(c, "at first").await?;
        db.stop().await?;
        let db = Slicedb::local(&env, 2, &data).await?;
        check(db.connect().await?, "after a restart").await?;
        db.stop().await
    });
}
