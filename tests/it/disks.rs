//! Several disks per node (issue 18, claim 2): three nodes with two disks
//! each, as a multi-process cluster (cluster.toml `disks = 2`) and as
//! `slicedb local --disks-per-node 2`. Every disk holds primaries, each
//! mirrored on another node's disk (never on its own node); `slicedb_disks`
//! shows every disk with its state. One disk at a time fails (its image
//! removed, its image cut short, damaged blocks past `bad_block_limit`):
//! only that disk's slices fail over, the node's other disk keeps serving
//! its primaries, answers stay exact, and regen_delay later its copies are
//! regenerated on their own until every slice is in sync and verified.
//! After the healing, the next fault (a node killed with SIGKILL) is
//! survived with exact answers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use slicedb_engine::store::SegmentKind;

use crate::harness::{self, exec, query, scalar, wait_fully_protected, Rows, Slicedb};
use crate::repair::{flip, spots};

const TOTALS: &str = "SELECT count(*), sum(k), sum(v), min(k), max(v) FROM h";
const GROUPS: &str = "SELECT k % 5, count(*), sum(v) FROM h GROUP BY 1 ORDER BY 1";
const NODES: u32 = 3;
const DISKS: u32 = 2;

/// (slice, primary node, primary disk, mirror node, mirror disk).
type Layout = Vec<(u32, u32, u32, u32, u32)>;

async fn layout(c: &tokio_postgres::Client) -> Result<Layout> {
    let rows = query(
        c,
        "SELECT slice, primary_node, primary_disk, mirror_node, mirror_disk \
         FROM slicedb_slices ORDER BY slice",
    )
    .await?;
    rows.iter()
        .map(|r| {
            let n = |i: usize| -> Result<u32> {
                Ok(r[i]
                    .as_deref()
                    .ok_or_else(|| anyhow!("NULL in {r:?}"))?
                    .parse()?)
            };
            Ok((n(0)?, n(1)?, n(2)?, n(3)?, n(4)?))
        })
        .collect()
}

/// A fresh cluster's layout: every disk of every node holds primaries and
/// mirrors, and no slice has both copies on one node.
fn check_fresh_layout(l: &Layout) -> Result<()> {
    ensure!(
        l.len() == (NODES * DISKS * 4) as usize,
        "four slices per disk: {l:?}"
    );
    for &(slice, pn, _, mn, _) in l {
        ensure!(pn != mn, "slice {slice}'s copies are both on node {pn}");
    }
    for node in 0..NODES {
        for disk in 0..DISKS {
            let primaries = l.iter().filter(|s| (s.1, s.2) == (node, disk)).count();
            let mirrors = l.iter().filter(|s| (s.3, s.4) == (node, disk)).count();
            ensure!(
                primaries == 4 && mirrors >= 1,
                "disk {disk} of node {node} holds {primaries} primaries and {mirrors} mirrors: {l:?}"
            );
        }
    }
    Ok(())
}

/// `slicedb_disks`: (node, disk) -> (state, failed reason), one entry per
/// disk, and the count of rows.
async fn disk_states(
    c: &tokio_postgres::Client,
) -> Result<(
    std::collections::BTreeMap<(u32, u32), (String, String)>,
    usize,
)> {
    let rows = query(
        c,
        "SELECT node, disk, state, coalesce(failed, '') FROM slicedb_disks",
    )
    .await?;
    let mut out = std::collections::BTreeMap::new();
    for r in &rows {
        let n = |i: usize| -> Result<u32> {
            Ok(r[i]
                .as_deref()
                .ok_or_else(|| anyhow!("NULL in {r:?}"))?
                .parse()?)
        };
        out.insert(
            (n(0)?, n(1)?),
            (
                r[2].clone().unwrap_or_default(),
                r[3].clone().unwrap_or_default(),
            ),
        );
    }
    Ok((out, rows.len()))
}

/// Wait until the map history has a cause starting with `prefix`.
pub(crate) async fn wait_history(
    c: &tokio_postgres::Client,
    prefix: &str,
    limit: Duration,
) -> Result<String> {
    let t0 = Instant::now();
    loop {
        let r = query(
            c,
            &format!(
                "SELECT cause FROM slicedb_map_history WHERE cause LIKE '{prefix}%' ORDER BY epoch"
            ),
        )
        .await?;
        if let Some(cause) = r.first().and_then(|r| r[0].clone()) {
            return Ok(cause);
        }
        ensure!(
            t0.elapsed() < limit,
            "no '{prefix}...' in the map history after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One disk failed: only its slices moved, the node's other disk serves
/// on, the answers are exact; then regenerated and verified.
async fn one_disk_fails(
    c: &tokio_postgres::Client,
    node: u32,
    disk: u32,
    want: &[Rows; 2],
    how: &str,
    reason: &str,
) -> Result<()> {
    let before = layout(c).await?;
    let failed = wait_history(
        c,
        &format!("disk {disk} of node {node} failed"),
        Duration::from_secs(30),
    )
    .await?;
    eprintln!("[disks] {how}: {failed}");
    ensure!(
        query(c, TOTALS).await? == want[0] && query(c, GROUPS).await? == want[1],
        "exact answers with disk {disk} of node {node} failed"
    );
    let (states, _) = disk_states(c).await?;
    let (state, why) = &states[&(node, disk)];
    ensure!(
        state == "failed" && why.contains(reason) && failed.contains(reason),
        "disk {disk} of node {node} failed for '{reason}': {failed}; slicedb_disks {states:?}"
    );
    eprintln!("[disks] slicedb_disks says disk {disk} of node {node} is {state}: {why}");
    for (&(n, d), (s, _)) in &states {
        ensure!(
            (n, d) == (node, disk) || s != "failed" || !before.iter().any(|l| (l.1, l.2) == (n, d)),
            "only disk {disk} of node {node} failed: {states:?}"
        );
    }
    // The node's other disk still serves its primaries (none moved).
    let after = layout(c).await?;
    let on_other = |l: &Layout| -> BTreeSet<u32> {
        l.iter()
            .filter(|s| s.1 == node && s.2 != disk)
            .map(|s| s.0)
            .collect()
    };
    ensure!(
        !on_other(&before).is_empty() && on_other(&before).is_subset(&on_other(&after)),
        "node {node}'s other disk keeps its primaries: {before:?} -> {after:?}"
    );
    let up = scalar(
        c,
        &format!("SELECT state FROM slicedb_nodes WHERE node = {node}"),
    )
    .await?;
    ensure!(up == "up", "only the disk failed, node {node} is {up}");
    // Regenerated on its own (regen_delay), then fully protected.
    let regen = wait_history(
        c,
        &format!("disk {disk} of node {node} did not come back"),
        Duration::from_secs(60),
    )
    .await?;
    let took = wait_fully_protected(c, Duration::from_secs(90)).await?;
    let left = scalar(
        c,
        &format!(
            "SELECT count(*) FROM slicedb_slices \
             WHERE copies LIKE '{node}:{disk} %' OR copies LIKE '%, {node}:{disk} %'"
        ),
    )
    .await?;
    ensure!(left == "0", "no copy is left on the failed disk: {left}");
    for &(slice, pn, _, mn, _) in &layout(c).await? {
        ensure!(
            pn != mn,
            "after regeneration slice {slice} has both copies on node {pn}"
        );
    }
    harness::ensure_verified(c).await?;
    ensure!(
        query(c, TOTALS).await? == want[0] && query(c, GROUPS).await? == want[1],
        "exact answers after the regeneration"
    );
    eprintln!("[disks] {how}: regenerated ({regen}), fully protected {took:?} after");
    Ok(())
}

fn image(root: &Path, node: u32, disk: u32) -> PathBuf {
    root.join(format!("node{node}"))
        .join(format!("disk-{disk}.img"))
}

/// Load table h into a fresh cluster and check its layout and that
/// `slicedb_disks` shows every disk in service, three segments each; the
/// answers of TOTALS and GROUPS.
async fn load(c: &tokio_postgres::Client) -> Result<[Rows; 2]> {
    check_fresh_layout(&layout(c).await?)?;
    let (states, rows) = disk_states(c).await?;
    ensure!(
        states.len() == (NODES * DISKS) as usize
            && rows == 3 * states.len()
            && states
                .values()
                .all(|(s, w)| s == "in_service" && w.is_empty()),
        "slicedb_disks shows every disk in service, three segments each: {states:?}"
    );
    exec(c, "CREATE TABLE h (k bigint, v bigint) DISTRIBUTE ON (k)").await?;
    exec(
        c,
        "INSERT INTO h SELECT i, i * 7 % 1000 FROM generate_series(1, 60000) AS g(i)",
    )
    .await?;
    Ok([query(c, TOTALS).await?, query(c, GROUPS).await?])
}

#[test]
fn each_disk_of_a_node_fails_over_and_is_regenerated_on_its_own() {
    harness::run("disks", |env| async move {
        // No block cache (the damaged blocks must be read); three damaged
        // blocks fail a disk; a failed disk is regenerated after 1 s.
        let mut db = Slicedb::multiprocess_full(
            &env,
            NODES,
            0,
            "cluster",
            &[],
            "disks = 2\ncache_size = \"0\"\nscrub_rate = \"0\"\nbad_block_limit = 3\n",
            "regen_delay = \"1s\"\nprobe_timeout = \"1500ms\"\n",
        )
        .await?;
        let c = db.connect().await?;
        let want = load(&c).await?;
        let root = env.path().join("cluster");

        // 1. Node 0's disk 1: its image removed under the running node.
        std::fs::remove_file(image(&root, 0, 1))?;
        one_disk_fails(&c, 0, 1, &want, "image removed", "vanished").await?;

        // 2. Node 1's disk 0: its image cut short (unreadable past 1 MiB).
        std::fs::OpenOptions::new()
            .write(true)
            .open(image(&root, 1, 0))?
            .set_len(1 << 20)?;
        one_disk_fails(&c, 1, 0, &want, "image cut short", "cut short").await?;

        // 3. Node 2's disk 1: three damaged blocks (the limit), met by a
        // query: the first two are repaired, the third fails the disk.
        let blocks = spots(&image(&root, 2, 1), SegmentKind::Primary)?;
        ensure!(blocks.len() >= 3, "node 2's disk 1 holds primary blocks");
        for &(_, _, off, len) in blocks.iter().take(3) {
            flip(&image(&root, 2, 1), off, len)?;
        }
        ensure!(
            query(&c, TOTALS).await? == want[0],
            "exact while the damaged disk fails"
        );
        one_disk_fails(
            &c,
            2,
            1,
            &want,
            "bad blocks past the limit",
            "checksum mismatch",
        )
        .await?;
        let outcomes = query(
            &c,
            "SELECT outcome FROM slicedb_repairs WHERE node = 2 AND disk = 1 ORDER BY at_unix_ms",
        )
        .await?;
        // (The scan reads the disk's slices in parallel: the records, by
        // start time, may list the one that passed the limit before the
        // last repaired one.)
        let over = outcomes
            .iter()
            .filter(|r| r[0].as_deref().is_some_and(|o| o.contains("failed over")))
            .count();
        let repaired = outcomes
            .iter()
            .filter(|r| r[0].as_deref() == Some("repaired"))
            .count();
        ensure!(
            outcomes.len() == 3 && over == 1 && repaired == 2,
            "two repaired, the third failed the disk over: {outcomes:?}"
        );

        // 4. Healed three times; the next fault: node 0 killed.
        db.kill_proc(0);
        ensure!(
            query(&c, TOTALS).await? == want[0] && query(&c, GROUPS).await? == want[1],
            "the next fault is survived with exact answers"
        );
        let (states, _) = disk_states(&c).await?;
        ensure!(
            (0..DISKS).all(|d| states.get(&(0, d)).is_some_and(|s| s.0 == "unreachable")),
            "slicedb_disks shows the killed node's disks unreachable: {states:?}"
        );
        drop(c);
        db.kill();
        Ok(())
    });
}

#[test]
fn slicedb_local_with_two_disks_per_node_places_and_heals_every_disk() {
    harness::run("disks_local", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local_args(
            &env,
            NODES,
            &data,
            &[],
            &[
                "--disks-per-node",
                "2",
                "--disk-size",
                "256MiB",
                "--cache-size",
                "0",
                "--regen-delay",
                "1s",
            ],
        )
        .await?;
        let c = db.connect().await?;
        let want = load(&c).await?;
        // Node 2's disk 0 removed: only it fails over, then is regenerated.
        let img = data.join("node-2").join("disk-0.img");
        ensure!(img.exists(), "local keeps its images at {}", img.display());
        std::fs::remove_file(&img)?;
        one_disk_fails(&c, 2, 0, &want, "local: image removed", "vanished").await?;
        drop(c);
        db.stop().await
    });
}
