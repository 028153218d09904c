//! Self-healing on a multi-process cluster with real faults: a node killed
//! with kill -9 and started again on its data dir rejoins. Each copy it
//! holds is resynced with only what it missed, it takes its primaries
//! back, both copies agree, and the next fault is survived.

use std::time::Duration;

use anyhow::{bail, ensure, Result};

use crate::harness::{self, exec, query, scalar, wait_fully_protected, Rows, Slicedb};

const NODES: u32 = 4;
const TOTALS: &str = "SELECT count(*), sum(k), sum(v), min(k), max(k) FROM h";

/// Run a write, retrying while the cluster fails a node over (40001).
async fn write(c: &tokio_postgres::Client, sql: &str) -> Result<()> {
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

/// Bytes the resync rounds sent, from `slicedb_map_history`.
async fn resync_bytes(c: &tokio_postgres::Client) -> Result<u64> {
    let rows: Rows = query(
        c,
        "SELECT cause FROM slicedb_map_history WHERE cause LIKE 'resync finished%'",
    )
    .await?;
    ensure!(!rows.is_empty(), "no resync finished in the map history");
    let mut total = 0;
    for r in rows {
        let cause = r[0].clone().unwrap_or_default();
        let n = cause
            .split(" bytes")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|s| s.parse::<u64>().ok());
        let Some(n) = n else {
            bail!("no byte count in {cause:?}")
        };
        total += n;
    }
    Ok(total)
}

#[test]
fn a_killed_node_that_comes_back_is_resynced_with_only_what_it_missed_and_survives_the_next_fault()
{
    harness::run("heal_rejoin", |env| async move {
        let mut db = Slicedb::multiprocess(&env, NODES).await?;
        let c = db.connect().await?;
        exec(&c, "CREATE TABLE h (k bigint, v bigint) DISTRIBUTE ON (k)").await?;
        exec(
            &c,
            "INSERT INTO h SELECT i, i * 7 % 1000 FROM generate_series(1, 200000) AS g(i)",
        )
        .await?;
        let before = query(&c, TOTALS).await?;

        db.kill_proc(0);
        ensure!(
            query(&c, TOTALS).await? == before,
            "one failure is survived"
        );
        // Writes while node 0 is down: its copies miss them.
        write(
            &c,
            "INSERT INTO h SELECT i, 1 FROM generate_series(200001, 202000) AS g(i)",
        )
        .await?;
        write(&c, "DELETE FROM h WHERE k % 100 = 0 AND k <= 20000").await?;
        let want = query(&c, TOTALS).await?;
        let failed_over = scalar(
            &c,
            "SELECT count(*) FROM slicedb_slices WHERE primary_node = 0 AND state = 'failed_over'",
        )
        .await?;
        ensure!(failed_over != "0", "node 0's slices failed over");

        db.restart_node(&env, 0).await?;
        let took = wait_fully_protected(&c, Duration::from_secs(60)).await?;
        let node0 = scalar(&c, "SELECT state FROM slicedb_nodes WHERE node = 0").await?;
        ensure!(node0 == "up", "node 0 rejoined, is {node0}");
        ensure!(
            query(&c, TOTALS).await? == want,
            "answers after the rejoin equal the answers before it"
        );
        // Node 0 serves its primaries again, from its primary segment.
        let back = scalar(
            &c,
            "SELECT count(*) FROM slicedb_slices WHERE primary_node = 0 AND copies LIKE '0:0 primary in_sync%'",
        )
        .await?;
        let primaries = scalar(
            &c,
            "SELECT count(*) FROM slicedb_slices WHERE primary_node = 0",
        )
        .await?;
        ensure!(
            back == primaries,
            "node 0 holds its {primaries} primaries in sync, {back} are"
        );
        // Only what changed travelled.
        let sent = resync_bytes(&c).await?;
        let total: u64 = scalar(
            &c,
            "SELECT sum(bytes) FROM slicedb_table_slices WHERE table_name = 'h' AND segment = 'primary'",
        )
        .await?
        .parse()?;
        eprintln!("[heal_rejoin] fully protected {took:?} after the restart; resync sent {sent} bytes of {total} table bytes");
        ensure!(sent > 0, "the missed rows were sent");
        ensure!(
            sent * 10 < total,
            "a resync sends what changed ({sent} bytes), not whole slices ({total} bytes in all)"
        );
        harness::ensure_verified(&c).await?;

        // Writes after the rejoin reach both copies; then the node that
        // served node 0's slices meanwhile dies.
        write(
            &c,
            "INSERT INTO h SELECT i, 2 FROM generate_series(202001, 203000) AS g(i)",
        )
        .await?;
        let want = query(&c, TOTALS).await?;
        db.kill_proc(1);
        ensure!(
            query(&c, TOTALS).await? == want,
            "the second failure is survived with every acknowledged row"
        );
        drop(c);
        db.kill();
        Ok(())
    });
}
