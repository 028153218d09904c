//! DROP TABLE and GROOM under a running reader (issue 18): a cursor still
//! reading a table while another session drops it (or deletes half its rows
//! and grooms it) and loads a new table into the space. The cursor reads every row (each node opens all the slices' scans
//! of a request at its start, so a DROP meanwhile does not fail the slices
//! still to come: before, the query failed with "table does not exist on
//! this node"), no block is met damaged, no disk fails, and the space is
//! reused afterwards. That freed space is not reused while an older scan or
//! copy export may still read it is checked where the race can be forced,
//! in the store's tests (`store::reclaim::tests`): here the coordinator
//! holds the nodes' answers in spill files, so the nodes' scans end early.

use std::time::Duration;

use anyhow::ensure;

use tokio_postgres::Client;

use crate::harness::{self, exec, query, scalar, wait_fully_protected, Slicedb};

/// Make table `d` of `n` rows (k = 1..n, a 64-character pad) with `a`,
/// open a cursor over it in a transaction, and read it to its end in
/// FETCHes of 5,000 rows, running `meanwhile` once after the first one.
/// Answers (rows, sum of k) read; the transaction is committed.
async fn read_under(
    a: &Client,
    n: i64,
    meanwhile: impl AsyncFnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<(i64, i64)> {
    a.batch_execute(&format!(
        "CREATE TABLE d (k bigint, pad text) DISTRIBUTE ON (k); \
         INSERT INTO d SELECT value, md5(value::text) || md5((value + 1)::text) \
         FROM generate_series(1, {n})"
    ))
    .await?;
    a.batch_execute("BEGIN; DECLARE w CURSOR FOR SELECT k, pad FROM d")
        .await?;
    let (mut rows, mut sum) = (0i64, 0i64);
    let mut meanwhile = Some(meanwhile);
    loop {
        let got = a.query("FETCH FORWARD 5000 FROM w", &[]).await?;
        if got.is_empty() {
            break;
        }
        for r in &got {
            let k: i64 = r.get(0);
            let pad: String = r.get(1);
            ensure!(pad.len() == 64, "row {k}: pad {pad:?}");
            rows += 1;
            sum += k;
        }
        if let Some(f) = meanwhile.take() {
            ensure!(rows == 5000, "first FETCH: {rows} rows");
            f().await?;
        }
    }
    a.batch_execute("COMMIT").await?;
    Ok((rows, sum))
}

/// After the reads: nothing met damaged, every node up, every slice in sync.
async fn nothing_damaged_and_all_protected(b: &Client) -> anyhow::Result<()> {
    let repairs = query(b, "SELECT * FROM slicedb_repairs").await?;
    ensure!(repairs.is_empty(), "blocks met damaged: {repairs:?}");
    let down = scalar(b, "SELECT count(*) FROM slicedb_nodes WHERE state <> 'up'").await?;
    ensure!(down == "0", "{down} nodes not up");
    wait_fully_protected(b, Duration::from_secs(60)).await?;
    harness::ensure_verified(b).await
}

#[test]
fn a_table_dropped_under_a_cursor_is_read_whole_and_no_disk_fails() {
    harness::run("reuse_drop", |env| async move {
        let data = env.path().join("data");
        // A small memory limit: the cursor's scan streams from the nodes,
        // a few batches ahead, instead of being read whole at DECLARE.
        let db = Slicedb::local_args(&env, 2, &data, &[], &["--memory-limit", "4MiB"]).await?;
        let a = db.connect().await?;
        let b = db.connect().await?;
        const N: i64 = 300_000;
        // Another session drops the table and fills the space again.
        let (rows, sum) = read_under(&a, N, async || {
            exec(&b, "DROP TABLE d").await?;
            b.batch_execute(&format!(
                "CREATE TABLE e (k bigint, pad text) DISTRIBUTE ON (k); \
                 INSERT INTO e SELECT value, repeat('x', 64) FROM generate_series(1, {N})"
            ))
            .await?;
            Ok(())
        })
        .await?;
        ensure!(
            rows == N && sum == N * (N + 1) / 2,
            "the cursor read {rows} rows summing to {sum}"
        );
        nothing_damaged_and_all_protected(&b).await?;
        let e = scalar(&b, "SELECT count(*) FROM e WHERE pad = repeat('x', 64)").await?;
        ensure!(e == N.to_string(), "e holds {e} rows");
        // The dropped table's space is free again once the cursor ended:
        // the same load fits once more.
        exec(&b, "DROP TABLE e").await?;
        b.batch_execute(&format!(
            "CREATE TABLE f (k bigint, pad text) DISTRIBUTE ON (k); \
             INSERT INTO f SELECT value, repeat('y', 64) FROM generate_series(1, {N})"
        ))
        .await?;
        ensure!(scalar(&b, "SELECT count(*) FROM f").await? == N.to_string());
        db.stop().await
    });
}

/// GROOM under a cursor: another session deletes half the rows of the table
/// a cursor reads, grooms it (both copies rewritten without them) and loads
/// another table. The cursor reads every row of its snapshot, nothing is
/// met damaged, no disk fails, and the groomed table holds its half.
#[test]
fn a_table_groomed_under_a_cursor_is_read_whole_and_no_disk_fails() {
    harness::run("reuse_groom", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local_args(&env, 2, &data, &[], &["--memory-limit", "4MiB"]).await?;
        let a = db.connect().await?;
        let b = db.connect().await?;
        const N: i64 = 200_000;
        let (rows, sum) = read_under(&a, N, async || {
            let load = format!(
                "CREATE TABLE e (k bigint, pad text) DISTRIBUTE ON (k); \
                 INSERT INTO e SELECT value, repeat('x', 64) FROM generate_series(1, {N})"
            );
            for sql in ["DELETE FROM d WHERE k % 2 = 0", "GROOM TABLE d", &load] {
                b.batch_execute(sql)
                    .await
                    .map_err(|e| anyhow::anyhow!("{sql}: {}", harness::describe(&e)))?;
            }
            Ok(())
        })
        .await?;
        ensure!(
            rows == N && sum == N * (N + 1) / 2,
            "the cursor read {rows} rows summing to {sum}"
        );
        nothing_damaged_and_all_protected(&b).await?;
        let left = query(&b, "SELECT count(*), sum(k) FROM d").await?;
        let half = N / 2;
        ensure!(
            left == vec![vec![
                Some(half.to_string()),
                Some((half * half).to_string())
            ]],
            "d after the groom: {left:?}"
        );
        db.stop().await
    });
}
