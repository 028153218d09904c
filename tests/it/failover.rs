//! Failover with real faults on a multi-process cluster: kill -9 each node in
//! turn (with queries running and after), SIGSTOP a node until it is failed
//! over and then SIGCONT it. Every answer must equal the answer before the
//! fault: the survivor answers for both its segments and nothing twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};

use crate::harness::{self, exec, query, scalar, Rows, Slicedb};

const NODES: u32 = 3;
const TOTALS: &str = "SELECT count(*), sum(k), sum(v), min(k), max(v) FROM f";
const GROUPS: &str = "SELECT k % 7 AS g, count(*), sum(v) FROM f GROUP BY k % 7 ORDER BY g";

async fn load(db: &Slicedb) -> Result<(Rows, Rows)> {
    let c = db.connect().await?;
    exec(&c, "CREATE TABLE f (k bigint, v bigint) DISTRIBUTE ON (k)").await?;
    exec(
        &c,
        "INSERT INTO f SELECT i, i * 3 % 1000 FROM generate_series(1, 30000) AS g(i)",
    )
    .await?;
    Ok((query(&c, TOTALS).await?, query(&c, GROUPS).await?))
}

/// Keep asking `TOTALS` until `stop`; every answer must be `want`.
fn background_queries(
    url: String,
    want: Rows,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<u32>> {
    tokio::spawn(async move {
        let c = harness::connect(&url).await?;
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let got = c.simple_query(TOTALS).await.map_err(|e| {
                anyhow!(
                    "a query during the failover failed: {}",
                    harness::describe(&e)
                )
            })?;
            let rows: Rows = got
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect();
            ensure!(rows == want, "answer during failover {rows:?} != {want:?}");
            n += 1;
        }
        Ok(n)
    })
}

#[test]
fn kill_each_node_in_turn_and_every_answer_stays_the_same() {
    harness::run("failover_kill", |env| async move {
        for victim in 0..NODES {
            let mut db = Slicedb::multiprocess_in(&env, NODES, &format!("victim{victim}")).await?;
            let (totals, groups) = load(&db).await?;
            let stop = Arc::new(AtomicBool::new(false));
            let bg = background_queries(db.url().to_string(), totals.clone(), stop.clone());
            tokio::time::sleep(Duration::from_millis(300)).await;
            let t0 = Instant::now();
            db.kill_proc(victim as usize);
            let c = db.connect().await?;
            // First correct answer after the kill.
            let got = query(&c, TOTALS).await?;
            let first = t0.elapsed();
            ensure!(got == totals, "victim {victim}: {got:?} != {totals:?}");
            ensure!(
                query(&c, GROUPS).await? == groups,
                "victim {victim}: group-by changed"
            );
            stop.store(true, Ordering::SeqCst);
            let n = bg.await??;
            eprintln!("[failover_kill] node {victim} killed: first full answer after {first:?}; {n} background answers all equal");

            let failed = scalar(
                &c,
                &format!("SELECT count(*) FROM slicedb_slices WHERE primary_node = {victim} AND state = 'failed_over'"),
            )
            .await?;
            let owned = scalar(
                &c,
                &format!("SELECT count(*) FROM slicedb_slices WHERE primary_node = {victim}"),
            )
            .await?;
            ensure!(
                failed == owned && failed != "0",
                "victim {victim}: {failed} of {owned} slices failed over"
            );
            let hist = scalar(
                &c,
                &format!("SELECT count(*) FROM slicedb_map_history WHERE cause LIKE 'node {victim} failed%'"),
            )
            .await?;
            ensure!(
                hist == "1",
                "map history should record the failure once, has {hist}"
            );
            // The survivor answers from both segments: the plan's tags say so.
            let plan = query(&c, "EXPLAIN ANALYZE SELECT count(*) FROM f").await?;
            let text: String = plan
                .iter()
                .flatten()
                .flatten()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n");
            ensure!(
                text.contains(",mirror)"),
                "EXPLAIN ANALYZE should show mirror-segment tags:\n{text}"
            );
            ensure!(
                text.contains("slices_answered=12"),
                "every slice answered once:\n{text}"
            );
            // Writes after the failover go to the acting primaries.
            exec(
                &c,
                "INSERT INTO f SELECT i, 1 FROM generate_series(100001, 100300) AS g(i)",
            )
            .await?;
            let n = scalar(&c, "SELECT count(*) FROM f").await?;
            ensure!(n == "30300", "after a post-failover insert: {n}");
            exec(&c, "DELETE FROM f WHERE k > 100000").await?;
            ensure!(
                query(&c, TOTALS).await? == totals,
                "after delete the totals are back"
            );
            drop(c);
            db.kill();
        }
        Ok(())
    });
}

#[test]
fn hung_node_is_failed_over_and_stays_out_after_it_wakes() {
    harness::run("failover_hang", |env| async move {
        let db = Slicedb::multiprocess(&env, NODES).await?;
        let (totals, _) = load(&db).await?;
        let pid = db.pids()[1] as i32;
        // SAFETY: signalling a child process we started.
        ensure!(
            unsafe { libc::kill(pid, libc::SIGSTOP) } == 0,
            "SIGSTOP failed"
        );
        let c = db.connect().await?;
        let t0 = Instant::now();
        let got = query(&c, TOTALS).await?;
        ensure!(got == totals, "while node 1 hangs: {got:?} != {totals:?}");
        let took = t0.elapsed();
        let state = scalar(
            &c,
            "SELECT count(*) FROM slicedb_slices WHERE primary_node = 1 AND state = 'failed_over'",
        )
        .await?;
        ensure!(state != "0", "node 1's slices should have failed over");
        // SAFETY: as above.
        ensure!(
            unsafe { libc::kill(pid, libc::SIGCONT) } == 0,
            "SIGCONT failed"
        );
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            ensure!(
                query(&c, TOTALS).await? == totals,
                "after SIGCONT the totals changed"
            );
        }
        let down = scalar(&c, "SELECT state FROM slicedb_nodes WHERE node = 1").await?;
        eprintln!("[failover_hang] answer while hung after {took:?}; node 1 after SIGCONT: {down}");
        ensure!(
            down == "down",
            "a failed node stays out until regenerated, is {down}"
        );
        drop(c);
        db.kill();
        Ok(())
    });
}
