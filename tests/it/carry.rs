//! Writes carried over a node failure: while autocommit INSERTs, streaming
//! COPYs and transaction blocks (INSERT, UPDATE, DELETE, then COMMIT) run
//! on a multi-process cluster, one node is killed with `kill -9`. No client
//! sees an error (each statement or block whose node died is carried on the
//! new map: the node now serving its slices takes over what the dead one
//! forwarded, and the coordinator sends again only what it lacks), every
//! acknowledged row is there exactly once, and the cluster heals: the node
//! comes back, is resynced, every slice verifies in sync, and the next
//! fault is survived with the same answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use bytes::Bytes;
use futures::SinkExt;

use crate::harness::{self, exec, query, Rows, Slicedb};

const NODES: u32 = 4;
/// Per-writer key ranges (a writer's rows are `k` in [base, base + RANGE)).
const RANGE: i64 = 100_000_000;

/// One writer's acknowledged work: rows and the sum of `v`.
#[derive(Debug, Default, Clone, Copy)]
struct Model {
    rows: i64,
    sum_v: i64,
    statements: u64,
}

fn fail(what: &str, e: &tokio_postgres::Error) -> anyhow::Error {
    anyhow!("{what}: the client saw an error: {}", harness::describe(e))
}

/// Autocommit INSERTs of 2,000 rows each (v = 1).
async fn inserter(url: String, base: i64, stop: Arc<AtomicBool>) -> Result<Model> {
    let c = harness::connect(&url).await?;
    let mut m = Model::default();
    let mut next = base;
    while !stop.load(Ordering::Relaxed) {
        let sql = format!(
            "INSERT INTO w SELECT i, 1 FROM generate_series({next}, {}) AS g(i)",
            next + 1999
        );
        tokio::time::timeout(Duration::from_secs(60), c.simple_query(&sql))
            .await
            .context("an INSERT hung")?
            .map_err(|e| fail("INSERT", &e))?;
        next += 2000;
        m.rows += 2000;
        m.sum_v += 2000;
        m.statements += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(m)
}

/// COPY FROM STDIN of 40,000 rows each (v = 2), streamed in 40 pieces with
/// pauses, so that a COPY is under way when the node dies.
async fn copier(url: String, base: i64, stop: Arc<AtomicBool>) -> Result<Model> {
    let c = harness::connect(&url).await?;
    let mut m = Model::default();
    let mut next = base;
    while !stop.load(Ordering::Relaxed) {
        let sink = c
            .copy_in::<_, Bytes>("COPY w FROM STDIN")
            .await
            .map_err(|e| fail("COPY start", &e))?;
        futures::pin_mut!(sink);
        for _ in 0..40 {
            let mut piece = String::with_capacity(1000 * 12);
            for k in next..next + 1000 {
                piece.push_str(&format!("{k}\t2\n"));
            }
            next += 1000;
            sink.send(Bytes::from(piece))
                .await
                .map_err(|e| fail("COPY data", &e))?;
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        let n = tokio::time::timeout(Duration::from_secs(60), sink.as_mut().finish())
            .await
            .context("a COPY hung")?
            .map_err(|e| fail("COPY finish", &e))?;
        ensure!(n == 40_000, "COPY reported {n} rows, sent 40000");
        m.rows += 40_000;
        m.sum_v += 80_000;
        m.statements += 1;
    }
    Ok(m)
}

/// Transaction blocks: insert 1,000 rows (v = 0), set v = 3 on all of
/// them, delete a fifth, commit: 800 rows, sum 2,400 per block.
async fn blocks(url: String, base: i64, stop: Arc<AtomicBool>) -> Result<Model> {
    let c = harness::connect(&url).await?;
    let mut m = Model::default();
    let mut next = base;
    while !stop.load(Ordering::Relaxed) {
        let (lo, hi) = (next, next + 999);
        let stmts = [
            "BEGIN".to_string(),
            format!("INSERT INTO w SELECT i, 0 FROM generate_series({lo}, {hi}) AS g(i)"),
            format!("UPDATE w SET v = 3 WHERE k BETWEEN {lo} AND {hi}"),
            format!("DELETE FROM w WHERE k BETWEEN {lo} AND {hi} AND k % 5 = 0"),
            "COMMIT".to_string(),
        ];
        for s in &stmts {
            tokio::time::timeout(Duration::from_secs(60), c.simple_query(s))
                .await
                .with_context(|| format!("{s} hung"))?
                .map_err(|e| fail(s, &e))?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        next += 1000;
        m.rows += 800;
        m.sum_v += 2400;
        m.statements += 1;
    }
    Ok(m)
}

/// Lines holding `needle` in every process log of the test.
fn count_in_logs(dir: &std::path::Path, needle: &str) -> usize {
    std::fs::read_dir(dir.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|text| text.lines().filter(|l| l.contains(needle)).count())
        .sum()
}

/// Rows and sum(v) of each writer's key range.
async fn totals(c: &tokio_postgres::Client) -> Result<Rows> {
    query(
        c,
        &format!(
            "SELECT k / {RANGE} AS writer, count(*), sum(v), count(DISTINCT k) FROM w GROUP BY 1 ORDER BY 1"
        ),
    )
    .await
}

fn expected(models: &[Model]) -> Rows {
    models
        .iter()
        .enumerate()
        .filter(|(_, m)| m.rows > 0)
        .map(|(i, m)| {
            vec![
                Some(i.to_string()),
                Some(m.rows.to_string()),
                Some(m.sum_v.to_string()),
                Some(m.rows.to_string()),
            ]
        })
        .collect()
}

/// How the victim fails.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `kill -9`; started again for the healing.
    Kill,
    /// SIGSTOP for this long, then SIGCONT: it wakes fenced and rejoins.
    Hang(Duration),
}

#[test]
fn writes_running_when_a_node_dies_are_carried_over_with_no_client_error() {
    writes_carried_over("carry_over", Fault::Kill);
}

/// The same with a node that hangs (SIGSTOP) for 8 s under the writers:
/// no statement waits for it to wake (each is carried over once the node
/// is declared failed), and once it wakes it is resynced.
#[test]
fn writes_running_when_a_node_hangs_are_carried_over_with_no_client_error() {
    writes_carried_over("carry_over_hang", Fault::Hang(Duration::from_secs(8)));
}

fn signal(pid: u32, sig: i32) -> Result<()> {
    // SAFETY: signalling a child process we started.
    ensure!(
        unsafe { libc::kill(pid as i32, sig) } == 0,
        "kill({pid}, {sig}) failed"
    );
    Ok(())
}

fn writes_carried_over(name: &'static str, fault: Fault) {
    harness::run(name, move |env| async move {
        let mut db = Slicedb::multiprocess(&env, NODES).await?;
        let c = db.connect().await?;
        exec(&c, "CREATE TABLE w (k bigint, v bigint) DISTRIBUTE ON (k)").await?;
        let stop = Arc::new(AtomicBool::new(false));
        let url = db.url().to_string();
        let writers = vec![
            tokio::spawn(inserter(url.clone(), 0, stop.clone())),
            tokio::spawn(copier(url.clone(), RANGE, stop.clone())),
            tokio::spawn(blocks(url.clone(), 2 * RANGE, stop.clone())),
            tokio::spawn(inserter(url.clone(), 3 * RANGE, stop.clone())),
        ];
        tokio::time::sleep(Duration::from_secs(3)).await;
        let victim = 1usize;
        let killed = Instant::now();
        match fault {
            Fault::Kill => {
                db.kill_proc(victim);
                tokio::time::sleep(Duration::from_secs(6)).await;
            }
            Fault::Hang(d) => {
                let pid = db.pids()[victim];
                signal(pid, libc::SIGSTOP)?;
                tokio::time::sleep(d).await;
                signal(pid, libc::SIGCONT)?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut models = Vec::new();
        for w in writers {
            models.push(w.await??);
        }
        eprintln!(
            "[{name}] node {victim} failed ({fault:?}) {:?} before the writers stopped; acknowledged: {models:?}",
            killed.elapsed()
        );
        ensure!(
            models.iter().all(|m| m.statements > 0),
            "every writer got work through: {models:?}"
        );
        // The carry-over really happened (the coordinator's log says so per
        // transaction), not only writes that missed the dead node.
        let carried = count_in_logs(env.path(), "transaction carried over a failed node");
        ensure!(carried > 0, "no transaction was carried over the failure");
        eprintln!("[{name}] {carried} transactions carried over");
        let failovers = harness::scalar(
            &c,
            "SELECT count(*) FROM slicedb_map_history WHERE cause LIKE '%failed%'",
        )
        .await?;
        ensure!(failovers != "0", "the kill was seen as a failure");
        let want = expected(&models);
        let got = totals(&c).await?;
        ensure!(
            got == want,
            "after the kill: {got:?}, acknowledged {want:?}"
        );

        // Healing: the node comes back (restarted, or awake) and is
        // resynced; both copies agree; the next fault is survived with the
        // same answers.
        if let Fault::Kill = fault {
            db.restart_node(&env, victim).await?;
        }
        let took = harness::wait_fully_protected(&c, Duration::from_secs(90)).await?;
        harness::ensure_verified(&c).await?;
        eprintln!("[{name}] node {victim} back: fully protected after {took:?}");
        ensure!(
            totals(&c).await? == want,
            "answers after the node came back"
        );
        db.kill_proc(2);
        ensure!(
            totals(&c).await? == want,
            "answers after the next fault (node 2)"
        );
        drop(c);
        db.kill();
        Ok(())
    });
}

/// The primary dies at each step of its prepare (before it, after its own
/// prepare, after its mirror's): the INSERT is still acknowledged (the node
/// now serving its slices takes over the forwards, staged or already
/// prepared there), every row is there once, and once the node is back
/// (resolving what it held in doubt) both copies agree and the next fault
/// is survived.
#[test]
fn a_primary_dying_at_any_step_of_prepare_loses_no_statement() {
    harness::run("carry_prepare", |env| async move {
        for point in [
            "node.prepare.before",
            "node.prepare.after_local",
            "node.prepare.after_mirror",
        ] {
            let spec = format!("{point}=exit");
            let mut db = Slicedb::multiprocess_with(
                &env,
                NODES,
                point,
                &[(0, "SLICEDB_FAILPOINTS", spec.as_str())],
            )
            .await?;
            let c = db.connect().await?;
            exec(&c, "CREATE TABLE p (k bigint, v bigint) DISTRIBUTE ON (k)").await?;
            c.simple_query("INSERT INTO p SELECT i, i * 2 FROM generate_series(1, 3000) AS g(i)")
                .await
                .map_err(|e| fail(point, &e))?;
            let status = db
                .wait_node_exit(0, Duration::from_secs(10))
                .await
                .ok_or_else(|| anyhow!("{point}: node 0 did not exit at the failpoint"))?;
            ensure!(
                status.code() == Some(86),
                "{point}: expected failpoint exit 86, got {status:?}"
            );
            let want = vec![vec![Some("3000".to_string()), Some("4501500".to_string())]];
            let got = query(&c, "SELECT count(*), sum(k) FROM p").await?;
            ensure!(got == want, "{point}: acknowledged rows: {got:?}");
            db.restart_node(&env, 0).await?;
            harness::wait_fully_protected(&c, Duration::from_secs(60)).await?;
            harness::ensure_verified(&c).await?;
            ensure!(
                query(&c, "SELECT count(*), sum(k) FROM p").await? == want,
                "{point}: answers after node 0 came back"
            );
            db.kill_proc(1);
            ensure!(
                query(&c, "SELECT count(*), sum(k) FROM p").await? == want,
                "{point}: answers after the next fault"
            );
            eprintln!("[carry_prepare] {point}: acknowledged, healed, next fault survived");
            drop(c);
            db.kill();
        }
        Ok(())
    });
}
