//! Self-healing on a multi-process cluster with real faults: a node killed
//! with kill -9 and started again on its data dir rejoins. Each copy it
//! holds is resynced with only what it missed, it takes its primaries
//! back, both copies agree, and the next fault is survived.

use std::time::Duration;

use anyhow::{bail, ensure, Result};

use crate::harness::{self, exec, query, scalar, wait_fully_protected, Rows, Slicedb};

const NODES: u32 = 4;
/// The coordinator's settings in these tests: regenerate after 1 s, and a
/// probe timeout a busy test machine does not miss (a node failed falsely
/// in the middle of a test would be a second fault).
const COORDINATOR: &str = "regen_delay = \"1s\"\nprobe_timeout = \"1500ms\"\n";
/// For a test of the rejoin path: regeneration must not start before the
/// node is back, however slow the machine (with 1 s it did, once, under a
/// full test run beside a release build).
const REJOIN: &str = "regen_delay = \"60s\"\nprobe_timeout = \"1500ms\"\n";
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

/// A multi-process cluster of [`NODES`] nodes and `spares` spares with the
/// coordinator `settings`, table `h` loaded with `rows` rows, every slice
/// in sync. A busy machine can make the detector fail a node falsely (it
/// then rejoins): the load is retried if the cluster refused it meanwhile.
async fn loaded(
    env: &harness::TestEnv,
    spares: u32,
    settings: &str,
    rows: i64,
) -> Result<(Slicedb, tokio_postgres::Client)> {
    loaded_with(env, spares, &[], "", settings, rows).await
}

/// [`loaded`] with environment variables for some nodes (`node_vars`:
/// node, name, value) and `node_toml` lines in every node's section.
async fn loaded_with(
    env: &harness::TestEnv,
    spares: u32,
    node_vars: &[(u32, &str, &str)],
    node_toml: &str,
    settings: &str,
    rows: i64,
) -> Result<(Slicedb, tokio_postgres::Client)> {
    let db = Slicedb::multiprocess_full(
        env, NODES, spares, "cluster", node_vars, node_toml, settings,
    )
    .await?;
    let c = db.connect().await?;
    exec(&c, "CREATE TABLE h (k bigint, v bigint) DISTRIBUTE ON (k)").await?;
    write(
        &c,
        &format!("INSERT INTO h SELECT i, i * 7 % 1000 FROM generate_series(1, {rows}) AS g(i)"),
    )
    .await?;
    wait_fully_protected(&c, Duration::from_secs(60)).await?;
    Ok((db, c))
}

#[test]
fn a_killed_node_that_comes_back_is_resynced_with_only_what_it_missed_and_survives_the_next_fault()
{
    harness::run("heal_rejoin", |env| async move {
        let (mut db, c) = loaded(&env, 0, REJOIN, 200_000).await?;
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
        let rows = query(
            &c,
            "SELECT phase, bytes, total_bytes, eta_seconds FROM slicedb_resync",
        )
        .await?;
        ensure!(
            !rows.is_empty()
                && rows.iter().all(|r| r[0].as_deref() == Some("done")
                    && r[1] == r[2]
                    && r[3].as_deref() == Some("0")),
            "slicedb_resync shows the last round done, every copy's total sent and nothing left: {rows:?}"
        );

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

/// Insert batches of 500 rows from `start` on until `stop`, retrying a
/// batch the cluster refused while failing a node over; answers how many
/// batches were acknowledged.
fn background_writer(
    url: String,
    start: i64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Result<i64>> {
    tokio::spawn(async move {
        let c = harness::connect(&url).await?;
        let mut acked = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let from = start + acked * 500;
            write(
                &c,
                &format!(
                    "INSERT INTO h SELECT i, 3 FROM generate_series({from}, {}) AS g(i)",
                    from + 499
                ),
            )
            .await?;
            acked += 1;
        }
        Ok(acked)
    })
}

/// Kill node 0 while a writer runs; its copies are regenerated by
/// themselves (onto the spare, or spread over the survivors); every
/// acknowledged row is there, both copies agree; node 0, back, holds
/// nothing, drops its old copies and counts as a spare; the next fault
/// (the node that served node 0's slices meanwhile) is survived and
/// regenerated onto node 0; and the fault after that is survived too.
async fn regenerate_and_survive_the_next_fault(
    env: harness::TestEnv,
    spares: u32,
    tag: &str,
) -> Result<()> {
    let (mut db, c) = loaded(&env, spares, COORDINATOR, 100_000).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = background_writer(db.url().to_string(), 1_000_001, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    db.kill_proc(0);
    let t0 = std::time::Instant::now();
    // Regeneration placed every copy node 0 held elsewhere ...
    const ON_0: &str =
        "SELECT count(*) FROM slicedb_slices WHERE copies LIKE '0:%' OR copies LIKE '%, 0:%'";
    while scalar(&c, ON_0).await? != "0" {
        ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "node 0's copies were not regenerated elsewhere"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and copied them in.
    wait_fully_protected(&c, Duration::from_secs(90)).await?;
    let took = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.await??;
    // A commit racing the last map change may have degraded a slice: it
    // is resynced by itself.
    wait_fully_protected(&c, Duration::from_secs(60)).await?;
    let want_rows = 100_000 + acked * 500;
    let rows: i64 = scalar(&c, "SELECT count(*) FROM h").await?.parse()?;
    ensure!(
        rows == want_rows,
        "{rows} rows, {want_rows} acknowledged ({acked} batches during the fault)"
    );
    let history = query(
        &c,
        "SELECT cause FROM slicedb_map_history WHERE cause LIKE '%regenerating%'",
    )
    .await?;
    ensure!(
        !history.is_empty(),
        "the map history records the regeneration"
    );
    let cause = history[0][0].clone().unwrap_or_default();
    if spares > 0 {
        ensure!(
            cause.contains("onto nodes [4] "),
            "regenerated onto the spare: {cause}"
        );
    } else {
        ensure!(
            cause.contains("onto nodes [1, 2, 3] "),
            "spread over every survivor: {cause}"
        );
    }
    harness::ensure_verified(&c).await?;
    eprintln!("[{tag}] fully protected {took:?} after kill -9 of node 0 ({acked} batches written meanwhile): {cause}");
    let totals = query(&c, TOTALS).await?;

    // Node 0 comes back: it holds no copy any more, and drops the old
    // ones its disk still had.
    db.restart_node(&env, 0).await?;
    wait_for(
        &c,
        "SELECT state FROM slicedb_nodes WHERE node = 0",
        |s| s == "spare",
        "node 0 back as a spare",
    )
    .await?;
    wait_for(
        &c,
        "SELECT coalesce(sum(used), -1) FROM slicedb_disks WHERE node = 0 AND segment <> 'temp'",
        |s| s == "0",
        "node 0 dropped the copies regenerated elsewhere",
    )
    .await?;
    ensure!(
        query(&c, TOTALS).await? == totals,
        "answers unchanged after node 0 returned"
    );

    // The node that served node 0's primaries meanwhile dies: the fault is
    // survived, and its copies are regenerated onto node 0, a spare again.
    db.kill_proc(1);
    ensure!(
        query(&c, TOTALS).await? == totals,
        "the second fault is survived with every acknowledged row"
    );
    wait_for(
        &c,
        "SELECT count(*) FROM slicedb_map_history WHERE cause LIKE 'node 1 did not come back%'",
        |v| v != "0",
        "node 1's copies regenerated",
    )
    .await?;
    wait_fully_protected(&c, Duration::from_secs(90)).await?;
    let cause = scalar(
        &c,
        "SELECT cause FROM slicedb_map_history WHERE cause LIKE 'node 1 did not come back%'",
    )
    .await?;
    ensure!(
        cause.contains("onto nodes [0] "),
        "node 0, clean again, takes node 1's copies: {cause}"
    );
    harness::ensure_verified(&c).await?;
    ensure!(
        query(&c, TOTALS).await? == totals,
        "answers unchanged after the second regeneration"
    );

    // And the fault after that is survived too.
    db.kill_proc(2);
    ensure!(
        query(&c, TOTALS).await? == totals,
        "the third fault is survived with every acknowledged row"
    );
    drop(c);
    db.kill();
    Ok(())
}

#[test]
fn a_node_that_stays_away_is_regenerated_onto_the_spare_and_the_next_fault_is_survived() {
    harness::run("heal_regen_spare", |env| async move {
        regenerate_and_survive_the_next_fault(env, 1, "heal_regen_spare").await
    });
}

#[test]
fn without_a_spare_the_lost_copies_spread_over_the_survivors_and_the_next_fault_is_survived() {
    harness::run("heal_regen_spread", |env| async move {
        regenerate_and_survive_the_next_fault(env, 0, "heal_regen_spread").await
    });
}

#[test]
fn a_copy_cut_off_by_its_target_or_the_coordinator_dying_starts_over_and_loses_nothing() {
    harness::run("heal_interrupted", |env| async move {
        // No regeneration here: node 0 is to rejoin each time.
        let settings = "regen_delay = \"10m\"\nprobe_timeout = \"1500ms\"\n";
        let (mut db, c) = loaded(&env, 0, settings, 100_000).await?;
        db.kill_proc(0);
        write(
            &c,
            "INSERT INTO h SELECT i, 1 FROM generate_series(100001, 102000) AS g(i)",
        )
        .await?;
        let want = query(&c, TOTALS).await?;

        // 1. The target dies as it is about to commit its first copy.
        db.restart_node_with(
            &env,
            0,
            &[("SLICEDB_FAILPOINTS", "copy.before_commit=exit")],
        )
        .await?;
        let exit = db.wait_node_exit(0, Duration::from_secs(60)).await;
        ensure!(
            exit.and_then(|s| s.code()) == Some(86),
            "node 0 should die at its first copy's commit: {exit:?}"
        );
        ensure!(
            query(&c, TOTALS).await? == want,
            "answers while the target is dead again"
        );

        // 2. The coordinator dies while copies wait before their commit.
        db.restart_node_with(
            &env,
            0,
            &[("SLICEDB_FAILPOINTS", "copy.before_commit=delay:1500")],
        )
        .await?;
        wait_for(
            &c,
            "SELECT count(*) FROM slicedb_slices WHERE state = 'rebuilding'",
            |v| v != "0",
            "a resync started after node 0 returned",
        )
        .await?;
        // The copies in flight show in slicedb_resync.
        let rows = query(
            &c,
            "SELECT slice, phase, tables_total FROM slicedb_resync WHERE target_node = 0",
        )
        .await?;
        ensure!(
            !rows.is_empty()
                && rows
                    .iter()
                    .all(|r| matches!(r[1].as_deref(), Some("waiting" | "copying" | "done"))),
            "slicedb_resync shows node 0's copies in flight: {rows:?}"
        );
        drop(c);
        db.restart_coordinator(&env).await?;
        let c = db.connect().await?;
        let took = wait_fully_protected(&c, Duration::from_secs(90)).await?;
        ensure!(
            query(&c, TOTALS).await? == want,
            "answers after the copies started over"
        );
        harness::ensure_verified(&c).await?;
        let history = query(
            &c,
            "SELECT cause FROM slicedb_map_history WHERE cause LIKE 'coordinator started%'",
        )
        .await?;
        ensure!(
            !history.is_empty(),
            "the restarted coordinator records the copies it starts over"
        );
        eprintln!(
            "[heal_interrupted] in sync {took:?} after the coordinator restarted: {:?}",
            history[0][0]
        );

        // Fully protected: the next fault is survived.
        survive_the_next_fault(db, c, &want).await
    });
}

#[test]
fn a_regeneration_whose_source_dies_mid_copy_resumes_when_it_returns_and_loses_nothing() {
    harness::run("heal_source_dies", |env| async move {
        // Node 1 dies as it is about to end its first export: its target
        // holds every block of that copy and no end of it.
        let settings = "regen_delay = \"10m\"\nprobe_timeout = \"1500ms\"\n";
        let (mut db, c) = loaded_with(
            &env,
            1,
            &[(1, "SLICEDB_FAILPOINTS", "export.before_done=exit")],
            "",
            settings,
            100_000,
        )
        .await?;
        let before = query(&c, TOTALS).await?;
        kill_node_0(&mut db, &c, &before).await?;
        write(
            &c,
            "INSERT INTO h SELECT i, 1 FROM generate_series(100001, 102000) AS g(i)",
        )
        .await?;
        let want = query(&c, TOTALS).await?;

        exec(&c, "REGENERATE").await?;
        let exit = db.wait_node_exit(1, Duration::from_secs(60)).await;
        ensure!(
            exit.and_then(|s| s.code()) == Some(86),
            "node 1 should die in its first export: {exit:?}"
        );
        // Nodes 0 and 1 are both away: the slices they shared are refused,
        // never answered wrong.
        match c.simple_query(TOTALS).await {
            Ok(_) => {
                let got = query(&c, TOTALS).await?;
                ensure!(
                    got == want,
                    "an answer with two nodes away is right: {got:?}"
                );
            }
            Err(e) => ensure!(
                harness::sqlstate(&e).as_deref() == Some("58000"),
                "a slice whose copies are both away is refused with 58000: {}",
                harness::describe(&e)
            ),
        }

        // The source comes back: its copies are in sync again, and the
        // copy it broke off starts over.
        db.restart_node(&env, 1).await?;
        let took = wait_fully_protected(&c, Duration::from_secs(90)).await?;
        ensure!(
            query(&c, TOTALS).await? == want,
            "answers after the source returned"
        );
        let on_0 = scalar(
            &c,
            "SELECT count(*) FROM slicedb_slices WHERE copies LIKE '0:%' OR copies LIKE '%, 0:%'",
        )
        .await?;
        ensure!(
            on_0 == "0",
            "node 0's copies were all regenerated elsewhere"
        );
        let failed = query(
            &c,
            "SELECT cause FROM slicedb_map_history WHERE cause LIKE 'resync finished:%still stale%'",
        )
        .await?;
        ensure!(
            failed
                .iter()
                .any(|r| !r[0].as_deref().unwrap_or("").contains(", 0 still stale")),
            "a copy cut off by its source is recorded as still stale: {failed:?}"
        );
        harness::ensure_verified(&c).await?;
        eprintln!("[heal_source_dies] fully protected {took:?} after node 1 returned");
        survive_the_next_fault(db, c, &want).await
    });
}

#[test]
fn a_failed_disk_is_regenerated_onto_its_nodes_spare_disk_and_the_next_fault_is_survived() {
    use slicedb_engine::store::SegmentKind;
    harness::run("heal_spare_disk", |env| async move {
        // Two disks per node, the second a spare; no block cache, so the
        // corruption is met by a read of the disk.
        let (db, c) = loaded_with(
            &env,
            0,
            &[],
            // The first damaged block fails the disk (no sector repair).
            "disks = 2\nspare_disks = 1\ncache_size = \"0\"\nbad_block_limit = 1\n",
            COORDINATOR,
            100_000,
        )
        .await?;
        let want = query(&c, TOTALS).await?;
        const ON: &str = "SELECT count(*) FROM slicedb_slices WHERE copies LIKE '0:{d} %' OR copies LIKE '%, 0:{d} %'";
        let on = |d: u32| ON.replace("{d}", &d.to_string());
        ensure!(
            scalar(&c, &on(1)).await? == "0",
            "the spare disk holds nothing at first"
        );
        let held = scalar(&c, &on(0)).await?;
        ensure!(held != "0", "disk 0 of node 0 holds copies");

        // Corrupt every primary extent of node 0's disk 0 under the running
        // node: the next scan fails the disk, its slices fail over.
        let image = env.path().join("cluster").join("node0").join("disk-0.img");
        ensure!(
            crate::mirror::garble(&image, SegmentKind::Primary)? > 0,
            "node 0's disk 0 has primary extents"
        );
        ensure!(
            query(&c, TOTALS).await? == want,
            "answers right after the disk failed"
        );
        // regen_delay later, the spare disk takes the failed disk's copies,
        // in their roles, and nothing leaves node 0.
        let t0 = std::time::Instant::now();
        while scalar(&c, &on(0)).await? != "0" {
            ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "disk 0's copies were not regenerated"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = wait_fully_protected(&c, Duration::from_secs(90)).await?;
        ensure!(
            scalar(&c, &on(1)).await? == held,
            "the spare disk holds every copy disk 0 held ({held})"
        );
        let primaries = scalar(
            &c,
            "SELECT count(*) FROM slicedb_slices WHERE primary_node = 0 AND primary_disk = 1",
        )
        .await?;
        ensure!(
            primaries != "0",
            "node 0 serves its primaries again, from the spare disk"
        );
        let cause = scalar(
            &c,
            "SELECT cause FROM slicedb_map_history WHERE cause LIKE 'disk 0 of node 0 did not come back%'",
        )
        .await?;
        ensure!(
            cause.contains("onto nodes [0] (disks 0:1)"),
            "regenerated onto node 0's spare disk: {cause}"
        );
        ensure!(
            query(&c, TOTALS).await? == want,
            "answers after the regeneration"
        );
        harness::ensure_verified(&c).await?;
        eprintln!("[heal_spare_disk] fully protected {took:?} after the copies moved: {cause}");
        survive_the_next_fault(db, c, &want).await
    });
}

/// Batches of table `r` as the cluster answers them: each acknowledged
/// batch must be there, and every batch there whole. Answers (lost, wrong).
async fn check_batches(c: &tokio_postgres::Client, acked: &[u64], tag: &str) -> Result<(u64, u64)> {
    let rows = query(
        c,
        "SELECT b, count(*), min(k), max(k), sum(k) FROM r GROUP BY b ORDER BY b",
    )
    .await?;
    let (mut lost, mut wrong) = (0, 0);
    let num = |v: &Option<String>| v.as_deref().unwrap_or("0").parse::<u64>();
    for row in &rows {
        let (b, cnt, min, max, sum) = (
            num(&row[0])?,
            num(&row[1])?,
            num(&row[2])?,
            num(&row[3])?,
            num(&row[4])?,
        );
        if min != b * 10_000 || cnt != max - min + 1 || sum != (min + max) * cnt / 2 {
            wrong += 1;
            eprintln!("[{tag}]   batch {b} is not whole: {row:?}");
        }
    }
    for a in acked {
        if !rows
            .iter()
            .any(|r| r[0].as_deref() == Some(a.to_string().as_str()))
        {
            lost += 1;
            eprintln!("[{tag}]   acknowledged batch {a} is missing");
        }
    }
    Ok((lost, wrong))
}

#[test]
fn seeded_random_schedules_of_load_kills_returns_and_regenerations_lose_nothing() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    const TAG: &str = "heal_schedule";
    harness::run(TAG, |env| async move {
        let seed = crate::data::seed(TAG);
        let steps: u64 = std::env::var("SLICEDB_HEAL_STEPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20);
        let mut rng = StdRng::seed_from_u64(seed);
        // Regeneration only when the schedule asks for it (REGENERATE).
        let settings = "regen_delay = \"10m\"\nprobe_timeout = \"1500ms\"\n";
        let (mut db, c) = loaded(&env, 1, settings, 1000).await?;
        exec(&c, "CREATE TABLE r (k bigint, b bigint) DISTRIBUTE ON (k)").await?;
        let (mut acked, mut lost, mut wrong) = (Vec::new(), 0, 0);
        // The node down now, and the nodes regenerated away (never back).
        let mut down: Option<usize> = None;
        let mut gone: Vec<usize> = Vec::new();
        let (mut kills, mut returns, mut regens) = (0, 0, 0);
        for b in 0..steps {
            // Every step loads a batch, whatever is down.
            let n = rng.random_range(100..3000u64);
            let lo = b * 10_000;
            let sql = format!(
                "INSERT INTO r SELECT i, {b} FROM generate_series({lo}, {}) AS g(i)",
                lo + n - 1
            );
            match write(&c, &sql).await {
                Ok(()) => acked.push(b),
                Err(e) => eprintln!("[{TAG}]   batch {b} failed: {e}"),
            }
            let action = match down {
                None if kills < 8 && rng.random_bool(0.7) => "kill",
                None => "load",
                Some(_) => match rng.random_range(0..3) {
                    0 => "load",
                    1 => "return",
                    _ if regens < 2 => "regenerate",
                    _ => "return",
                },
            };
            match (action, down) {
                ("kill", _) => {
                    let up = query(
                        &c,
                        "SELECT node FROM slicedb_nodes WHERE state = 'up' ORDER BY node",
                    )
                    .await?;
                    let up: Vec<usize> = up
                        .iter()
                        .filter_map(|r| r[0].as_deref()?.parse().ok())
                        .collect();
                    let v = up[rng.random_range(0..up.len())];
                    eprintln!("[{TAG}] step {b}: kill -9 node {v}");
                    db.kill_proc(v);
                    down = Some(v);
                    kills += 1;
                }
                ("return", Some(v)) => {
                    eprintln!("[{TAG}] step {b}: node {v} comes back");
                    db.restart_node(&env, v).await?;
                    wait_fully_protected(&c, Duration::from_secs(90)).await?;
                    down = None;
                    returns += 1;
                }
                ("regenerate", Some(v)) => {
                    eprintln!("[{TAG}] step {b}: REGENERATE node {v}'s copies");
                    exec(&c, "REGENERATE").await?;
                    wait_fully_protected(&c, Duration::from_secs(90)).await?;
                    gone.push(v);
                    down = None;
                    regens += 1;
                }
                _ => eprintln!("[{TAG}] step {b}: load only"),
            }
            let (l, w) = check_batches(&c, &acked, TAG).await?;
            lost += l;
            wrong += w;
        }
        if let Some(v) = down {
            db.restart_node(&env, v).await?;
        }
        wait_fully_protected(&c, Duration::from_secs(90)).await?;
        harness::ensure_verified(&c).await?;
        // Fully protected: one more fault is survived.
        let holder = scalar(&c, "SELECT min(primary_node) FROM slicedb_slices").await?;
        db.kill_proc(holder.parse()?);
        let (l, w) = check_batches(&c, &acked, TAG).await?;
        lost += l;
        wrong += w;
        eprintln!(
            "[{TAG}] seed {seed}: {steps} steps, {kills} kills, {returns} returns, {regens} regenerations (nodes {gone:?}), \
             {} batches acknowledged: {lost} lost, {wrong} wrong",
            acked.len()
        );
        ensure!(
            lost == 0 && wrong == 0,
            "{lost} acknowledged batches lost, {wrong} wrong answers (replay with SLICEDB_TEST_SEED={seed})"
        );
        ensure!(
            kills > 0 && returns + regens > 0,
            "the schedule should kill and heal (seed {seed})"
        );
        drop(c);
        db.kill();
        Ok(())
    });
}

/// Ask `sql` (one value) every 50 ms until `done` holds for its answer;
/// fail after 30 s naming `what` was awaited.
async fn wait_for(
    c: &tokio_postgres::Client,
    sql: &str,
    done: impl Fn(&str) -> bool,
    what: &str,
) -> Result<()> {
    let t0 = std::time::Instant::now();
    loop {
        let v = scalar(c, sql).await?;
        if done(&v) {
            return Ok(());
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "not {what} after 30 s: {sql} = {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// kill -9 node 0; answers stay `want`; returns once the map has failed it
/// over.
async fn kill_node_0(db: &mut Slicedb, c: &tokio_postgres::Client, want: &Rows) -> Result<()> {
    db.kill_proc(0);
    ensure!(&query(c, TOTALS).await? == want, "one failure is survived");
    wait_for(
        c,
        "SELECT count(*) FROM slicedb_slices WHERE state <> 'in_sync'",
        |v| v != "0",
        "node 0 failed over",
    )
    .await
}

/// kill -9 node 1 (it served node 0's slices meanwhile): answers stay
/// `want`; then the cluster is torn down.
async fn survive_the_next_fault(
    mut db: Slicedb,
    c: tokio_postgres::Client,
    want: &Rows,
) -> Result<()> {
    db.kill_proc(1);
    ensure!(
        &query(&c, TOTALS).await? == want,
        "the next fault is survived"
    );
    drop(c);
    db.kill();
    Ok(())
}

/// `slicedb regenerate`: its exit status and what it printed.
async fn regenerate_cli(url: &str) -> Result<(bool, String)> {
    let out = tokio::process::Command::new(harness::BIN)
        .args(["regenerate", "--url", url, "--timeout", "90s"])
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[test]
fn slicedb_regenerate_heals_at_once_or_says_why_it_cannot() {
    harness::run("heal_cli", |env| async move {
        // regen_delay far away: only the command starts regeneration.
        let settings = "regen_delay = \"10m\"\nprobe_timeout = \"1500ms\"\n";
        let (mut db, c) = loaded(&env, 1, settings, 50_000).await?;
        let want = query(&c, TOTALS).await?;
        // At once after the kill, before the detector's next heartbeat:
        // the command's probe fails the node first.
        db.kill_proc(0);
        let (ok, out) = regenerate_cli(db.url()).await?;
        eprintln!("[heal_cli] slicedb regenerate:\n{out}");
        ensure!(
            ok && out.contains("fully protected: 16 slices in sync"),
            "regenerate: {out}"
        );
        harness::ensure_verified(&c).await?;
        survive_the_next_fault(db, c, &want).await
    });
}

#[test]
fn slicedb_regenerate_says_when_no_node_has_room() {
    harness::run("heal_cli_no_room", |env| async move {
        let settings = "regen_delay = \"10m\"\nprobe_timeout = \"1500ms\"\n";
        let db = Slicedb::multiprocess_full(&env, 2, 0, "cluster", &[], "", settings).await?;
        let c = db.connect().await?;
        exec(&c, "CREATE TABLE h (k bigint, v bigint) DISTRIBUTE ON (k)").await?;
        write(
            &c,
            "INSERT INTO h SELECT i, i * 2 FROM generate_series(1, 1000) AS g(i)",
        )
        .await?;
        let want = query(&c, TOTALS).await?;
        let mut db = db;
        kill_node_0(&mut db, &c, &want).await?;
        let (ok, out) = regenerate_cli(db.url()).await?;
        eprintln!("[heal_cli_no_room] slicedb regenerate:\n{out}");
        ensure!(!ok, "with no room, slicedb regenerate fails: {out}");
        ensure!(out.contains("no node has room"), "it says why: {out}");
        // Nothing was half-done: the survivor still serves everything.
        ensure!(query(&c, TOTALS).await? == want, "answers unchanged");
        drop(c);
        db.kill();
        Ok(())
    });
}

/// A double fault whose last in-sync copies come back on a new image (the
/// node's disk image deleted while it was down, so it starts with an empty
/// one): those copies are empty, and the slices they were the last in-sync
/// copy of stay unavailable, refused by name, never answered without their
/// rows; the map history says the disk holds a new image.
#[test]
fn a_node_back_on_a_new_image_never_serves_what_the_old_one_held() {
    harness::run("heal_new_image", |env| async move {
        let settings = "regen_delay = \"10m\"\nprobe_timeout = \"1500ms\"\n";
        let (mut db, c) = loaded(&env, 0, settings, 20_000).await?;
        let totals = query(&c, TOTALS).await?;
        // Node 1 dies first, then node 0: where both held a slice's copies,
        // node 0's was the last in sync.
        db.kill_proc(1);
        ensure!(query(&c, TOTALS).await? == totals, "one fault is survived");
        wait_for(
            &c,
            "SELECT count(*) FROM slicedb_nodes WHERE node = 1 AND state = 'down'",
            |v| v == "1",
            "node 1 failed",
        )
        .await?;
        db.kill_proc(0);
        wait_for(
            &c,
            "SELECT count(*) FROM slicedb_slices WHERE state = 'unavailable'",
            |v| v != "0",
            "a double fault",
        )
        .await?;
        let unavailable = scalar(
            &c,
            "SELECT count(*) FROM slicedb_slices WHERE state = 'unavailable'",
        )
        .await?;
        // Node 0's image is gone: it starts on a new, empty one.
        let image = env.path().join("cluster").join("node0").join("disk-0.img");
        std::fs::remove_file(&image)?;
        db.restart_node(&env, 0).await?;
        wait_for(
            &c,
            "SELECT count(*) FROM slicedb_map_history WHERE cause LIKE 'node 0 rejoined%'",
            |v| v != "0",
            "node 0 rejoined",
        )
        .await?;
        let cause = scalar(
            &c,
            "SELECT cause FROM slicedb_map_history WHERE cause LIKE 'node 0 rejoined%'",
        )
        .await?;
        ensure!(
            cause.contains("disk 0 holds a new image"),
            "the history says the image is new: {cause}"
        );
        // Whatever else heals, those slices are never served from the
        // empty copies: every try is refused by name, none answers.
        for _ in 0..10 {
            match c.simple_query(TOTALS).await {
                Ok(_) => bail!("answered without the rows of the lost copies"),
                Err(e) => {
                    let msg = harness::describe(&e);
                    ensure!(msg.contains("is unavailable"), "refused by name: {msg}");
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let still = scalar(
            &c,
            "SELECT count(*) FROM slicedb_slices WHERE state = 'unavailable'",
        )
        .await?;
        ensure!(
            still == unavailable,
            "{still} slices unavailable, {unavailable} before node 0 came back"
        );
        drop(c);
        db.kill();
        Ok(())
    });
}
