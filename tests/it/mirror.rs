//! Mirrored transactional writes, end to end: after a mixed workload every
//! slice verifies in sync; each copy alone (read straight from the disk
//! images after a kill -9) rebuilds the whole table; ROLLBACK leaves nothing
//! on either copy; kill at every commit step leaves no half transaction and
//! keeps acknowledged commits on both copies; concurrent transfers keep
//! their totals and conflicts fail with 40001; an unreachable mirror
//! degrades its slice within a bounded time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use slicedb_engine::disk::{BlockDevice, FileDevice};
use slicedb_engine::store::{DiskStore, ScanSpec, SegmentKind, Snapshot};

use crate::data;
use crate::harness::{self, exec, query, scalar, sqlstate, Slicedb};

const NODES: u32 = 4;

fn images(data: &Path) -> Vec<PathBuf> {
    (0..NODES)
        .map(|n| data.join(format!("node-{n}")).join("disk-0.img"))
        .collect()
}

/// Every (k, v) of the one user table, read from `segment` of the images.
fn rows_from_images(paths: &[PathBuf], segment: SegmentKind) -> Result<BTreeMap<i64, i64>> {
    let mut out = BTreeMap::new();
    for p in paths {
        let store =
            DiskStore::open_read_only(p).with_context(|| format!("opening {}", p.display()))?;
        for st in store.slice_stats() {
            if st.segment != segment {
                continue;
            }
            let scan = store.scan(&ScanSpec {
                segment,
                table: st.table,
                slice: st.slice,
                projection: Some(vec![0, 1]),
                predicate: None,
                include_hidden: false,
                snapshot: Snapshot::latest(),
            })?;
            for b in scan {
                let b: RecordBatch = b?;
                let k = b.column(0).as_primitive::<Int64Type>();
                let v = b.column(1).as_primitive::<Int64Type>();
                for i in 0..b.num_rows() {
                    ensure!(
                        out.insert(k.value(i), v.value(i)).is_none(),
                        "key {} found twice in the {} segments",
                        k.value(i),
                        segment.as_str()
                    );
                }
            }
        }
    }
    Ok(out)
}

/// Overwrite every extent of `segment` in the image with garbage.
pub(crate) fn garble(path: &Path, segment: SegmentKind) -> Result<u64> {
    let extents: Vec<(u64, u64)> = {
        let store = DiskStore::open_read_only(path)?;
        store
            .report()
            .extents
            .iter()
            .filter(|e| e.segment == segment)
            .map(|e| (e.offset, e.length))
            .collect()
    };
    let dev = FileDevice::open(path, true)?;
    let mut n = 0;
    for (off, len) in extents {
        dev.write_at(off, &vec![0xA5u8; len as usize])?;
        n += len;
    }
    dev.sync()?;
    Ok(n)
}

async fn verify_all_in_sync(client: &tokio_postgres::Client) -> Result<()> {
    let rows = query(
        client,
        "SELECT status, count(*), sum(primary_rows), sum(mirror_rows) FROM slicedb_verify GROUP BY status",
    )
    .await?;
    ensure!(
        rows.len() == 1 && rows[0][0].as_deref() == Some("in_sync"),
        "every slice should verify in_sync: {rows:?}"
    );
    ensure!(rows[0][2] == rows[0][3], "row counts differ: {rows:?}");
    Ok(())
}

async fn kv(client: &tokio_postgres::Client, table: &str) -> Result<BTreeMap<i64, i64>> {
    let rows = query(client, &format!("SELECT k, v FROM {table}")).await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let k: i64 = r[0].as_deref().ok_or_else(|| anyhow!("null k"))?.parse()?;
        let v: i64 = r[1].as_deref().ok_or_else(|| anyhow!("null v"))?.parse()?;
        out.insert(k, v);
    }
    Ok(out)
}

#[test]
fn mixed_workload_verifies_and_each_copy_rebuilds_the_table() {
    harness::run("mirror_rebuild", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local(&env, NODES, &data).await?;
        let c = db.connect().await?;
        exec(
            &c,
            "CREATE TABLE kv (k bigint, v bigint, note text) DISTRIBUTE ON (k)",
        )
        .await?;
        exec(&c, "CREATE TABLE other (a int) DISTRIBUTE ON RANDOM").await?;
        exec(
            &c,
            "INSERT INTO kv SELECT i, i * 10, 'n' || i FROM generate_series(1, 6000) AS g(i)",
        )
        .await?;
        exec(
            &c,
            "INSERT INTO other SELECT i FROM generate_series(1, 500) AS g(i)",
        )
        .await?;
        exec(&c, "DELETE FROM kv WHERE k % 7 = 0").await?;
        exec(&c, "UPDATE kv SET v = v + 1 WHERE k % 5 = 0").await?;
        // Moving rows: the distribution key changes.
        exec(&c, "UPDATE kv SET k = k + 1000000 WHERE k <= 300").await?;
        exec(&c, "BEGIN").await?;
        exec(&c, "INSERT INTO kv VALUES (-1, -1, 'in a block')").await?;
        exec(&c, "DELETE FROM kv WHERE k BETWEEN 400 AND 499").await?;
        let seen = scalar(&c, "SELECT count(*) FROM kv WHERE k = -1").await?;
        ensure!(
            seen == "1",
            "a transaction must see its own insert, saw {seen}"
        );
        exec(&c, "COMMIT").await?;
        // Rolled back work must leave nothing on either copy.
        exec(&c, "BEGIN").await?;
        exec(
            &c,
            "INSERT INTO kv SELECT i, 0, 'rolled back' FROM generate_series(5000000, 5004999) AS g(i)",
        )
        .await?;
        exec(&c, "DELETE FROM kv WHERE k < 1000").await?;
        exec(&c, "ROLLBACK").await?;
        exec(&c, "TRUNCATE other").await?;
        ensure!(
            scalar(&c, "SELECT count(*) FROM other").await? == "0",
            "TRUNCATE left rows"
        );
        exec(&c, "GROOM TABLE kv").await?;
        exec(&c, "DROP TABLE other").await?;

        let want = kv(&c, "kv").await?;
        let mut expect = BTreeMap::new();
        for k in 1..=6000i64 {
            if k % 7 == 0 || (400..=499).contains(&k) {
                continue;
            }
            let v = if k % 5 == 0 { k * 10 + 1 } else { k * 10 };
            expect.insert(if k <= 300 { k + 1_000_000 } else { k }, v);
        }
        expect.insert(-1, -1);
        ensure!(
            want == expect,
            "table contents differ from the workload's model"
        );
        verify_all_in_sync(&c).await?;
        let segs = query(
            &c,
            "SELECT segment, sum(rows) FROM slicedb_table_slices WHERE table_name = 'kv' GROUP BY segment ORDER BY segment",
        )
        .await?;
        ensure!(
            segs.len() == 2 && segs[0][1] == segs[1][1],
            "mirror and primary row counts: {segs:?}"
        );
        // The CLI says the same, and exits 0.
        let out = std::process::Command::new(harness::BIN)
            .args(["verify", "--url", db.url()])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && text.contains("in_sync") && !text.contains("diverged"),
            "slicedb verify: {:?}\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        drop(c);
        // kill -9: nothing after an acknowledged COMMIT may be lost.
        db.kill();

        let imgs = images(&data);
        let from_primary = rows_from_images(&imgs, SegmentKind::Primary)?;
        let from_mirror = rows_from_images(&imgs, SegmentKind::Mirror)?;
        ensure!(
            from_primary == expect,
            "primary segments do not hold the table"
        );
        ensure!(
            from_mirror == expect,
            "mirror segments do not hold the table"
        );

        // Lose every mirror segment: the primaries alone still hold it all.
        let copy = env.path().join("copy");
        std::fs::create_dir_all(&copy)?;
        let mut copies = Vec::new();
        for (i, p) in imgs.iter().enumerate() {
            let to = copy.join(format!("p{i}.img"));
            std::fs::copy(p, &to)?;
            ensure!(
                garble(&to, SegmentKind::Mirror)? > 0,
                "no mirror extents in {}",
                to.display()
            );
            copies.push(to);
        }
        ensure!(rows_from_images(&copies, SegmentKind::Primary)? == expect);
        ensure!(
            rows_from_images(&copies, SegmentKind::Mirror).is_err(),
            "garbled mirror segments must fail their checksums"
        );
        // And the other way round: lose every primary segment.
        for p in &imgs {
            ensure!(garble(p, SegmentKind::Primary)? > 0);
        }
        ensure!(rows_from_images(&imgs, SegmentKind::Mirror)? == expect);
        Ok(())
    });
}

/// Every place a commit can die, in order. Coordinator points first.
const COMMIT_STEPS: &[(&str, bool)] = &[
    // (failpoint, is the transaction committed once it is hit?)
    ("node.prepare.before", false),
    ("node.prepare.after_local", false),
    ("mirror.prepare.after", false),
    ("node.prepare.after_mirror", false),
    ("coord.commit.after_prepare", false),
    ("coord.commit.after_record", true),
    ("node.commit.before", true),
    ("node.commit.after_local", true),
    ("mirror.commit.before", true),
    ("node.commit.after_mirror", true),
    ("coord.commit.after_nodes", true),
];

#[test]
fn kill_at_every_commit_step_leaves_no_half_transaction() {
    harness::run("mirror_failpoints", |env| async move {
        ensure!(
            slicedb_engine::failpoint::ENABLED,
            "the test build must carry failpoints (dev-dependency feature)"
        );
        for (i, &(point, committed)) in COMMIT_STEPS.iter().enumerate() {
            let data = env.path().join(format!("fp{i}"));
            // An acknowledged base load, without failpoints.
            let db = Slicedb::local(&env, NODES, &data).await?;
            let c = db.connect().await?;
            exec(&c, "CREATE TABLE kv (k bigint, v bigint) DISTRIBUTE ON (k)").await?;
            exec(
                &c,
                "INSERT INTO kv SELECT i, i * 2 FROM generate_series(1, 2000) AS g(i)",
            )
            .await?;
            drop(c);
            db.stop().await?;

            // The next commit dies at `point`.
            let spec = format!("{point}=exit");
            let mut db =
                Slicedb::local_with(&env, NODES, &data, &[("SLICEDB_FAILPOINTS", &spec)]).await?;
            let c = db.connect().await?;
            let r = c
                .simple_query(
                    "BEGIN; INSERT INTO kv SELECT i, -i FROM generate_series(100001, 103000) AS g(i); \
                     DELETE FROM kv WHERE k <= 500; COMMIT",
                )
                .await;
            ensure!(r.is_err(), "{point}: the commit must not be acknowledged");
            let status = db
                .wait_exit(Duration::from_secs(20))
                .await
                .ok_or_else(|| anyhow!("{point}: the process did not exit at the failpoint"))?;
            ensure!(
                status.code() == Some(86),
                "{point}: expected failpoint exit 86, got {status:?}"
            );
            drop(c);
            drop(db);

            // Restart: the resolver finishes what the crash left in doubt.
            let db = Slicedb::local(&env, NODES, &data).await?;
            let c = db.connect().await?;
            let got = query(
                &c,
                "SELECT count(*), count(*) FILTER (WHERE k > 100000), min(k) FROM kv",
            )
            .await?;
            let want = if committed {
                vec![
                    Some("4500".to_string()),
                    Some("3000".to_string()),
                    Some("501".to_string()),
                ]
            } else {
                vec![
                    Some("2000".to_string()),
                    Some("0".to_string()),
                    Some("1".to_string()),
                ]
            };
            ensure!(
                got[0] == want,
                "{point}: after restart expected (count, new, min) {want:?}, got {:?}",
                got[0]
            );
            // Both copies agree; in-doubt state on mirrors is resolved too
            // (the resolver runs every 500 ms).
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match verify_all_in_sync(&c).await {
                    Ok(()) => break,
                    Err(e) if Instant::now() > deadline => bail!("{point}: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                }
            }
            eprintln!("[mirror_failpoints] {point}: committed={committed} ok");
            drop(c);
            db.stop().await?;
        }
        Ok(())
    });
}

#[test]
fn concurrent_transfers_keep_totals_and_conflicts_fail_with_40001() {
    harness::run("mirror_isolation", |env| async move {
        let seed = data::seed("mirror_isolation");
        let data_dir = env.path().join("data");
        let db = Slicedb::local(&env, NODES, &data_dir).await?;
        let c = db.connect().await?;
        const ACCOUNTS: i64 = 40;
        const TOTAL: i64 = ACCOUNTS * 1000;
        exec(
            &c,
            "CREATE TABLE acct (id bigint, bal bigint) DISTRIBUTE ON (id)",
        )
        .await?;
        exec(
            &c,
            "INSERT INTO acct SELECT i, 1000 FROM generate_series(1, 40) AS g(i)",
        )
        .await?;

        // A direct conflict: the later writer of a row fails with 40001.
        let c2 = db.connect().await?;
        exec(&c, "BEGIN").await?;
        exec(&c2, "BEGIN").await?;
        exec(&c, "UPDATE acct SET bal = bal - 1 WHERE id = 1").await?;
        let e = c2
            .simple_query("UPDATE acct SET bal = bal + 1 WHERE id = 1")
            .await
            .err()
            .ok_or_else(|| anyhow!("a concurrent update of the same row must fail"))?;
        ensure!(
            sqlstate(&e).as_deref() == Some("40001"),
            "got {}",
            harness::describe(&e)
        );
        exec(&c2, "ROLLBACK").await?;
        exec(&c, "ROLLBACK").await?;
        // Different rows proceed concurrently.
        exec(&c, "BEGIN").await?;
        exec(&c2, "BEGIN").await?;
        exec(&c, "UPDATE acct SET bal = bal - 5 WHERE id = 2").await?;
        exec(&c2, "UPDATE acct SET bal = bal + 5 WHERE id = 3").await?;
        exec(&c, "COMMIT").await?;
        exec(&c2, "COMMIT").await?;
        exec(&c, "UPDATE acct SET bal = bal + 5 WHERE id = 2").await?;
        exec(&c, "UPDATE acct SET bal = bal - 5 WHERE id = 3").await?;

        // A seeded random schedule of transfer clients and readers.
        let mut handles = Vec::new();
        for w in 0..3u64 {
            let url = db.url().to_string();
            handles.push(tokio::spawn(async move {
                let c = harness::connect(&url).await?;
                let mut rng = StdRng::seed_from_u64(seed ^ (w + 1).wrapping_mul(0x9E37_79B9));
                let (mut done, mut conflicts) = (0u32, 0u32);
                for _ in 0..12 {
                    let a = rng.random_range(1..=ACCOUNTS);
                    let b = (a % ACCOUNTS) + 1;
                    let x = rng.random_range(1..50);
                    let sql = format!(
                        "BEGIN; UPDATE acct SET bal = bal - {x} WHERE id = {a}; \
                         UPDATE acct SET bal = bal + {x} WHERE id = {b}; COMMIT"
                    );
                    match c.simple_query(&sql).await {
                        Ok(_) => done += 1,
                        Err(e) if sqlstate(&e).as_deref() == Some("40001") => {
                            conflicts += 1;
                            c.simple_query("ROLLBACK").await?;
                        }
                        Err(e) => return Err(anyhow!("transfer: {}", harness::describe(&e))),
                    }
                }
                Ok::<_, anyhow::Error>((done, conflicts))
            }));
        }
        let url = db.url().to_string();
        let reader = tokio::spawn(async move {
            let c = harness::connect(&url).await?;
            let mut reads = 0;
            for _ in 0..30 {
                let r = query(&c, "SELECT count(*), sum(bal) FROM acct").await?;
                let (n, s) = (r[0][0].clone(), r[0][1].clone());
                ensure!(
                    n.as_deref() == Some("40") && s.as_deref() == Some(TOTAL.to_string().as_str()),
                    "a reader saw half a transfer: count {n:?} sum {s:?}"
                );
                reads += 1;
            }
            Ok::<_, anyhow::Error>(reads)
        });
        let mut committed = 0;
        for h in handles {
            let (d, k) = h.await??;
            eprintln!("[mirror_isolation] client: {d} committed, {k} conflicts");
            committed += d;
        }
        reader.await??;
        ensure!(committed > 0, "no transfer committed");
        let r = query(&c, "SELECT count(*), sum(bal) FROM acct").await?;
        ensure!(
            r[0][0].as_deref() == Some("40")
                && r[0][1].as_deref() == Some(TOTAL.to_string().as_str()),
            "totals after the schedule: {r:?}"
        );
        verify_all_in_sync(&c).await?;
        drop((c, c2));
        db.stop().await
    });
}

#[test]
fn unreachable_mirror_degrades_its_slice_within_a_bounded_time() {
    harness::run("mirror_degraded", |env| async move {
        let mut db = Slicedb::multiprocess(&env, 3).await?;
        let c = db.connect().await?;
        exec(&c, "CREATE TABLE probe (k bigint) DISTRIBUTE ON (k)").await?;
        exec(&c, "CREATE TABLE t (k bigint, v bigint) DISTRIBUTE ON (k)").await?;
        // Find a key whose slice has its primary on node 0 and mirror on node 1.
        let mut key = None;
        for k in 1..200i64 {
            exec(&c, "TRUNCATE probe").await?;
            exec(&c, &format!("INSERT INTO probe VALUES ({k})")).await?;
            let r = query(
                &c,
                "SELECT s.slice, s.primary_node, s.mirror_node FROM slicedb_table_slices t \
                 JOIN slicedb_slices s ON s.slice = t.slice \
                 WHERE t.table_name = 'probe' AND t.segment = 'primary' AND t.rows > 0",
            )
            .await?;
            if r.len() == 1 && r[0][1].as_deref() == Some("0") && r[0][2].as_deref() == Some("1") {
                key = Some((k, r[0][0].clone().unwrap_or_default()));
                break;
            }
        }
        let (k, slice) = key.ok_or_else(|| anyhow!("no key maps to primary 0 / mirror 1"))?;
        exec(&c, &format!("INSERT INTO t VALUES ({k}, 1)")).await?;
        db.kill_proc(1); // kill -9 the mirror node
        let t0 = Instant::now();
        exec(
            &c,
            &format!("INSERT INTO t SELECT {k}, i FROM generate_series(2, 100) AS g(i)"),
        )
        .await?;
        let took = t0.elapsed();
        ensure!(
            took < Duration::from_secs(15),
            "commit took {took:?} with the mirror down"
        );
        let st = scalar(
            &c,
            &format!("SELECT state FROM slicedb_slices WHERE slice = {slice}"),
        )
        .await?;
        // `degraded` if the commit noticed first; `unprotected` if the failure
        // detector declared the node failed first. Either way the primary
        // serves alone and the mirror is never promoted.
        ensure!(
            st == "degraded" || st == "unprotected",
            "slice {slice} should be degraded or unprotected, is {st}"
        );
        // The primary's own count, from slicedb_table_slices.
        let n = scalar(
            &c,
            &format!(
                "SELECT rows FROM slicedb_table_slices WHERE table_name = 't' \
                 AND slice = {slice} AND segment = 'primary'"
            ),
        )
        .await?;
        ensure!(n == "100", "every acknowledged row is on the primary: {n}");
        let others = scalar(
            &c,
            &format!(
                "SELECT count(*) FROM slicedb_slices WHERE state = 'degraded' AND slice <> {slice}"
            ),
        )
        .await?;
        ensure!(
            others == "0",
            "only the written slice is degraded: {others}"
        );
        eprintln!("[mirror_degraded] slice {slice} degraded; commit took {took:?}");
        // The mirror comes back: the slice is resynced by itself, its
        // mirror holds every acknowledged row, and both copies agree.
        db.restart_node(&env, 1).await?;
        let t0 = Instant::now();
        harness::wait_fully_protected(&c, Duration::from_secs(60)).await?;
        let m = scalar(
            &c,
            &format!(
                "SELECT rows FROM slicedb_table_slices WHERE table_name = 't' \
                 AND slice = {slice} AND segment = 'mirror'"
            ),
        )
        .await?;
        ensure!(
            m == "100",
            "the resynced mirror holds every acknowledged row: {m}"
        );
        harness::ensure_verified(&c).await?;
        eprintln!(
            "[mirror_degraded] resynced {:?} after the mirror returned",
            t0.elapsed()
        );
        // Protected again: losing the primary now is survived by the
        // resynced mirror, with every acknowledged row.
        db.kill_proc(0);
        let n = scalar(&c, &format!("SELECT count(*) FROM t WHERE k = {k}")).await?;
        ensure!(
            n == "100",
            "after the primary died the mirror answers {n} rows, not 100"
        );
        drop(c);
        db.kill();
        Ok(())
    });
}
