//! The background scrubber on a multi-process cluster (issue 18): bytes of
//! a committed block that no query reads are flipped in a running node's
//! image, on a primary copy (node 0) and on a mirror copy (node 1). With
//! no query at all, each node's scrubber meets the damage, repairs the
//! block from the slice's other copy (`slicedb_repairs`), and records a
//! complete pass that found it (`slicedb_scrub`, the metrics); the good
//! bytes are back in the images, no disk was failed, every slice is still
//! in sync, and after the next fault (a node killed) the answer is exact.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use slicedb_engine::store::SegmentKind;

use crate::harness::{self, query, scalar};
use crate::repair::{bytes_at, flip, node_metric, nothing_failed, other_copy, spots};

const TOTALS: &str = "SELECT count(*), sum(k), sum(v), min(k), max(v) FROM f";

/// Wait (polling the views only: no table is read) until `node`'s
/// scrubber repaired a block of `segment` and `slicedb_scrub` showed a
/// complete pass of its disk 0 that found it. The repair's source node.
async fn scrubbed(
    c: &tokio_postgres::Client,
    node: u32,
    segment: &str,
) -> Result<(String, Vec<Option<String>>)> {
    let t0 = Instant::now();
    let mut repaired: Option<String> = None;
    let mut pass: Option<Vec<Option<String>>> = None;
    loop {
        if repaired.is_none() {
            let r = query(
                c,
                &format!(
                    "SELECT source_node, outcome FROM slicedb_repairs \
                     WHERE node = {node} AND segment = '{segment}'"
                ),
            )
            .await?;
            if let Some(row) = r.first() {
                ensure!(
                    r.len() == 1 && row[1].as_deref() == Some("repaired"),
                    "one repair on node {node}: {r:?}"
                );
                repaired = row[0].clone();
            }
        }
        if pass.is_none() {
            // A complete pass that found the damage (there was none before
            // the flips; a pass lasts a second at least, the view is polled
            // more often than that).
            let p = query(
                c,
                &format!(
                    "SELECT blocks, bytes, damaged, repaired, \
                     CAST(last_pass_started AS VARCHAR), CAST(last_pass_finished AS VARCHAR) \
                     FROM slicedb_scrub WHERE node = {node} AND disk = 0 \
                     AND damaged >= 1 AND last_pass_finished >= last_pass_started"
                ),
            )
            .await?;
            pass = p.into_iter().next();
        }
        if let (Some(from), Some(p)) = (&repaired, &pass) {
            return Ok((from.clone(), p.clone()));
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(90),
            "node {node}'s scrubber did not repair the {segment} block: repaired {repaired:?}, pass {pass:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_scrubber_repairs_a_block_no_query_read() {
    harness::run("scrub", |env| async move {
        // No block cache; a fast scrubber.
        let (mut db, c, want) =
            crate::repair::with_f(&env, &[], "cache_size = \"0\"\nscrub_rate = \"64MiB\"\n")
                .await?;
        let root = env.path().join("cluster");
        let image = |n: u32| -> PathBuf { root.join(format!("node{n}")).join("disk-0.img") };
        let config = root.join("cluster.toml");

        // Flip a primary block on node 0 and a mirror block on node 1;
        // from here on no query reads f until both are repaired.
        let (_, pslice, poff, plen) = *spots(&image(0), SegmentKind::Primary)?
            .last()
            .ok_or_else(|| anyhow!("node 0 has primary blocks"))?;
        let (pat, pgood) = flip(&image(0), poff, plen)?;
        // (Of another slice: one copy of each block stays good.)
        let (_, mslice, moff, mlen) = *spots(&image(1), SegmentKind::Mirror)?
            .iter()
            .rfind(|s| s.1 != pslice)
            .ok_or_else(|| anyhow!("node 1 has mirror blocks of another slice"))?;
        let (mat, mgood) = flip(&image(1), moff, mlen)?;
        ensure!(bytes_at(&image(0), pat)? != pgood, "the flip took");

        let (from0, pass0) = scrubbed(&c, 0, "primary").await?;
        eprintln!("[scrub] node 0: repaired from node {from0}; pass {pass0:?}");
        ensure!(
            from0 == other_copy(&c, pslice, 0).await?,
            "repaired from the other copy"
        );
        let (from1, pass1) = scrubbed(&c, 1, "mirror").await?;
        eprintln!("[scrub] node 1: repaired from node {from1}; pass {pass1:?}");
        ensure!(
            from1 == other_copy(&c, mslice, 1).await?,
            "repaired from the other copy"
        );
        for p in [&pass0, &pass1] {
            let n = |i: usize| p[i].as_deref().unwrap_or("0").parse::<u64>();
            ensure!(n(0)? >= 1 && n(1)? > 0, "blocks and bytes read: {p:?}");
            ensure!(
                n(3)? >= 1,
                "the damaged block was repaired in that pass: {p:?}"
            );
        }
        ensure!(
            bytes_at(&image(0), pat)? == pgood,
            "good bytes back on node 0"
        );
        ensure!(
            bytes_at(&image(1), mat)? == mgood,
            "good bytes back on node 1"
        );
        for node in [0, 1] {
            let passes =
                node_metric(&config, node, "slicedb_node_scrub_passes_total{disk=\"0\"}").await?;
            let bytes =
                node_metric(&config, node, "slicedb_node_scrub_bytes_total{disk=\"0\"}").await?;
            ensure!(
                passes >= 1.0 && bytes > 0.0,
                "node {node}'s metrics: {passes} passes, {bytes} bytes"
            );
        }
        // Every disk of every node reports its scrub (node 2's, with no
        // damage to find, may finish its first pass after the repairs).
        let t0 = Instant::now();
        loop {
            let disks = scalar(
                &c,
                "SELECT count(*) FROM slicedb_scrub WHERE last_pass_finished IS NOT NULL",
            )
            .await?;
            if disks == "3" {
                break;
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "three disks completed a pass: {disks}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The whole view as a client gets it (timestamptz, numbers).
        let all = query(&c, "SELECT * FROM slicedb_scrub ORDER BY node, disk").await?;
        eprintln!("[scrub] slicedb_scrub: {all:?}");
        ensure!(
            all.len() == 3 && all.iter().all(|r| r.len() == 9 && r[3].is_some()),
            "one row per disk, each with its last pass: {all:?}"
        );
        nothing_failed(&c).await?;
        ensure!(query(&c, TOTALS).await? == want, "exact after the repairs");
        harness::ensure_verified(&c).await?;

        // The next fault: node 0 killed, the answer still exact.
        let last0 = "SELECT CAST(last_pass_finished AS VARCHAR), blocks, bytes, damaged, repaired \
                     FROM slicedb_scrub WHERE node = 0 AND disk = 0";
        let before = query(&c, last0).await?;
        db.kill_proc(0);
        let got = query(&c, TOTALS).await?;
        ensure!(got == want, "after node 0 died: {got:?} != {want:?}");
        // Node 0 back with its scrubber off: it rejoins (every slice in sync
        // again), and its disk's last complete pass is still shown, as
        // before it died (kept next to its images).
        let text = std::fs::read_to_string(&config)?;
        let (head, rest) = text
            .split_once("[[nodes]]\nid = 1\n")
            .ok_or_else(|| anyhow!("node 1's section in {text}"))?;
        let head = head.replacen("scrub_rate = \"64MiB\"", "scrub_rate = \"0\"", 1);
        std::fs::write(&config, format!("{head}[[nodes]]\nid = 1\n{rest}"))?;
        db.restart_node(&env, 0).await?;
        harness::wait_fully_protected(&c, Duration::from_secs(60)).await?;
        let after = query(&c, last0).await?;
        eprintln!(
            "[scrub] node 0's last pass before it died {before:?}, after its restart {after:?}"
        );
        // (A pass may have completed between the read and the kill: the
        // one shown is that one or a later one, never none.)
        ensure!(
            before.len() == 1 && before[0][0].is_some(),
            "node 0's last pass before it died: {before:?}"
        );
        ensure!(
            after.len() == 1 && after[0][0].is_some() && after[0][0] >= before[0][0],
            "node 0's last pass across its restart: {before:?} -> {after:?}"
        );
        ensure!(
            query(&c, TOTALS).await? == want,
            "exact after node 0 rejoined"
        );
        drop(c);
        db.kill();
        Ok(())
    });
}
