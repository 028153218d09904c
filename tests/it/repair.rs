//! Sector repair on a multi-process cluster (issue 18, claims 50-51): bytes
//! of one committed block are flipped in a running node's disk image, on a
//! primary copy (met by a query) and on a mirror copy (met by
//! `slicedb_verify`), and after GROOM rewrote each copy's blocks on its own
//! (the peer matches the block by rowids). The read fetches the block from the slice's other
//! copy, the answer is exact with no error, the repair shows in
//! `slicedb_repairs` and the metric, the disk is not failed, and the good
//! bytes are back in the image. A block damaged on both copies fails the
//! statement with XX001 naming the table and slice. Then the next fault (a
//! node killed) is survived.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, ensure, Result};
use slicedb_engine::disk::{BlockDevice, FileDevice};
use slicedb_engine::store::{DiskStore, SegmentKind, StoredBlock};

use crate::harness::{self, exec, expect_error, query, scalar, Rows, Slicedb};

const TOTALS: &str = "SELECT count(*), sum(k), sum(v), min(k), max(v) FROM f";

/// A committed block of a copy in an image: (table id, slice, offset, length).
type Spot = (u64, u32, u64, u64);

/// The committed blocks of `segment` in `image`, as its index lists them,
/// stream by stream (table and slice).
pub(crate) fn stored_blocks(image: &Path, segment: SegmentKind) -> Result<Vec<Vec<StoredBlock>>> {
    let store = DiskStore::open_read_only(image)?;
    let mut out = Vec::new();
    for s in store
        .report()
        .slices
        .iter()
        .filter(|s| s.segment == segment)
    {
        out.push(store.export_slice(segment, s.table, s.slice, &[])?.blocks);
    }
    Ok(out)
}

/// [`stored_blocks`] as spots.
pub(crate) fn spots(image: &Path, segment: SegmentKind) -> Result<Vec<Spot>> {
    Ok(stored_blocks(image, segment)?
        .into_iter()
        .flatten()
        .map(|b| (b.table, b.slice, b.offset, b.length))
        .collect())
}

/// Flip 16 bytes in the middle of the block at `offset`; the bytes before.
pub(crate) fn flip(image: &Path, offset: u64, length: u64) -> Result<(u64, Vec<u8>)> {
    let dev = FileDevice::open(image, true)?;
    let at = offset + length / 2;
    let good = dev.read_vec(at, 16)?;
    let bad: Vec<u8> = good.iter().map(|b| b ^ 0x5A).collect();
    dev.write_at(at, &bad)?;
    dev.sync()?;
    Ok((at, good))
}

pub(crate) fn bytes_at(image: &Path, at: u64) -> Result<Vec<u8>> {
    Ok(FileDevice::open(image, false)?.read_vec(at, 16)?)
}

async fn repairs(c: &tokio_postgres::Client, node: u32) -> Result<Rows> {
    query(
        c,
        &format!(
            "SELECT segment, table_name, slice, source_node, outcome FROM slicedb_repairs \
             WHERE node = {node} ORDER BY at_unix_ms"
        ),
    )
    .await
}

/// A 3-node cluster (nodes with `node_toml`, environment `vars`) holding
/// table f (30,000 rows), a client, and [`TOTALS`] of f.
pub(crate) async fn with_f(
    env: &harness::TestEnv,
    vars: &[(u32, &str, &str)],
    node_toml: &str,
) -> Result<(Slicedb, tokio_postgres::Client, Rows)> {
    let db = Slicedb::multiprocess_configured(env, 3, "cluster", vars, node_toml).await?;
    let c = db.connect().await?;
    let want = load_f(&c).await?;
    Ok((db, c, want))
}

/// Create and load table f (30,000 rows); its [`TOTALS`].
async fn load_f(c: &tokio_postgres::Client) -> Result<Rows> {
    exec(c, "CREATE TABLE f (k bigint, v bigint) DISTRIBUTE ON (k)").await?;
    exec(
        c,
        "INSERT INTO f SELECT i, i * 3 % 1000 FROM generate_series(1, 30000) AS g(i)",
    )
    .await?;
    query(c, TOTALS).await
}

/// Every slice still mirrored and no disk failed over.
pub(crate) async fn nothing_failed(c: &tokio_postgres::Client) -> Result<()> {
    let bad = scalar(
        c,
        "SELECT count(*) FROM slicedb_slices WHERE state <> 'in_sync'",
    )
    .await?;
    ensure!(bad == "0", "{bad} slices are not in sync after a repair");
    let failed = scalar(
        c,
        "SELECT count(*) FROM slicedb_map_history WHERE cause LIKE '%failed%'",
    )
    .await?;
    ensure!(failed == "0", "no disk or node was failed: {failed}");
    Ok(())
}

/// The node holding the other copy of `slice`.
pub(crate) async fn other_copy(c: &tokio_postgres::Client, slice: u32, of: u32) -> Result<String> {
    let r = query(
        c,
        &format!("SELECT primary_node, mirror_node FROM slicedb_slices WHERE slice = {slice}"),
    )
    .await?;
    let row = r.first().ok_or_else(|| anyhow!("no slice {slice}"))?;
    let other = if row[0].as_deref() == Some(&of.to_string()) {
        &row[1]
    } else {
        &row[0]
    };
    other
        .clone()
        .ok_or_else(|| anyhow!("slice {slice} has one copy"))
}

/// The metric `slicedb_node_blocks_repaired_total` of a node (disk 0).
async fn repaired_metric(config: &Path, node: u32) -> Result<f64> {
    node_metric(
        config,
        node,
        "slicedb_node_blocks_repaired_total{disk=\"0\"}",
    )
    .await
}

/// A sample (`name{labels}`) of a node's metrics.
pub(crate) async fn node_metric(config: &Path, node: u32, sample: &str) -> Result<f64> {
    let text = std::fs::read_to_string(config)?;
    // The node's metrics address from the cluster file.
    let section = text
        .split("[[nodes]]")
        .find(|s| s.contains(&format!("\nid = {node}\n")))
        .ok_or_else(|| anyhow!("node {node} in the cluster file"))?;
    let addr = section
        .lines()
        .find_map(|l| l.strip_prefix("metrics_address = "))
        .ok_or_else(|| anyhow!("metrics address of node {node}"))?
        .trim_matches('"')
        .to_string();
    let body = reqwest_get(&addr).await?;
    body.lines()
        .find(|l| l.starts_with(&format!("{sample} ")))
        .and_then(|l| l.split_whitespace().last())
        .ok_or_else(|| anyhow!("no {sample} in {body}"))?
        .parse()
        .map_err(|e| anyhow!("{e}"))
}

/// GET /metrics over a plain TCP connection.
pub(crate) async fn reqwest_get(addr: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

#[test]
fn a_damaged_block_is_repaired_from_the_other_copy_in_both_directions() {
    harness::run("repair", |env| async move {
        // No block cache: every read meets the disk's bytes. No scrubber:
        // the reads below must be the ones that meet the damage.
        let (mut db, c, want) =
            with_f(&env, &[], "cache_size = \"0\"\nscrub_rate = \"0\"\n").await?;
        let root = env.path().join("cluster");
        let image = |n: u32| -> PathBuf { root.join(format!("node{n}")).join("disk-0.img") };
        let config = env.path().join("cluster").join("cluster.toml");

        // 1. A primary copy's block, met by a query.
        let (_, slice, off, len) = *spots(&image(0), SegmentKind::Primary)?
            .first()
            .ok_or_else(|| anyhow!("node 0 has primary blocks"))?;
        let (at, good) = flip(&image(0), off, len)?;
        ensure!(bytes_at(&image(0), at)? != good, "the flip took");
        let got = query(&c, TOTALS).await?;
        ensure!(
            got == want,
            "answer with a damaged primary block: {got:?} != {want:?}"
        );
        let from = other_copy(&c, slice, 0).await?;
        let r = repairs(&c, 0).await?;
        eprintln!("[repair] node 0 repairs: {r:?}");
        ensure!(
            r == vec![vec![
                Some("primary".to_string()),
                Some("f".to_string()),
                Some(slice.to_string()),
                Some(from.clone()),
                Some("repaired".to_string()),
            ]],
            "one repair of slice {slice} from node {from}: {r:?}"
        );
        ensure!(
            bytes_at(&image(0), at)? == good,
            "the good bytes were written back into node 0's image"
        );
        nothing_failed(&c).await?;
        ensure!(query(&c, TOTALS).await? == want, "second read");
        ensure!(
            repairs(&c, 0).await?.len() == 1,
            "the second read met good bytes"
        );
        let m = repaired_metric(&config, 0).await?;
        ensure!(
            m == 1.0,
            "slicedb_node_blocks_repaired_total on node 0 is {m}"
        );

        // 2. A mirror copy's block, met by slicedb_verify (reads both).
        let (_, mslice, moff, mlen) = *spots(&image(1), SegmentKind::Mirror)?
            .first()
            .ok_or_else(|| anyhow!("node 1 has mirror blocks"))?;
        let (mat, mgood) = flip(&image(1), moff, mlen)?;
        harness::ensure_verified(&c).await?;
        let mfrom = other_copy(&c, mslice, 1).await?;
        let r = repairs(&c, 1).await?;
        eprintln!("[repair] node 1 repairs: {r:?}");
        ensure!(
            r == vec![vec![
                Some("mirror".to_string()),
                Some("f".to_string()),
                Some(mslice.to_string()),
                Some(mfrom.clone()),
                Some("repaired".to_string()),
            ]],
            "one repair of mirror slice {mslice} from node {mfrom}: {r:?}"
        );
        ensure!(
            bytes_at(&image(1), mat)? == mgood,
            "the good bytes were written back into node 1's image"
        );
        nothing_failed(&c).await?;

        // 2b. After GROOM (each copy rewrites its blocks on its own, so
        // their seqs may differ and the peer matches by rowids): a groomed
        // block of node 2's primary.
        exec(&c, "DELETE FROM f WHERE k % 10 = 0").await?;
        exec(&c, "GROOM TABLE f").await?;
        let want = query(&c, TOTALS).await?;
        ensure!(want[0][0].as_deref() == Some("27000"), "{want:?}");
        let (_, oslice, ooff, olen) = *spots(&image(2), SegmentKind::Primary)?
            .first()
            .ok_or_else(|| anyhow!("node 2 has primary blocks"))?;
        let (oat, ogood) = flip(&image(2), ooff, olen)?;
        let got = query(&c, TOTALS).await?;
        ensure!(got == want, "after GROOM: {got:?} != {want:?}");
        let r = repairs(&c, 2).await?;
        eprintln!("[repair] node 2 repairs after GROOM: {r:?}");
        ensure!(
            r.len() == 1
                && r[0][2].as_deref() == Some(oslice.to_string().as_str())
                && r[0][4].as_deref() == Some("repaired"),
            "one repair of groomed slice {oslice}: {r:?}"
        );
        ensure!(bytes_at(&image(2), oat)? == ogood, "written back on node 2");
        harness::ensure_verified(&c).await?;
        nothing_failed(&c).await?;

        // 3. Both copies of one block damaged: XX001 naming table and slice.
        exec(&c, "CREATE TABLE g (k bigint, v bigint) DISTRIBUTE ON (k)").await?;
        exec(
            &c,
            "INSERT INTO g SELECT i, i FROM generate_series(1, 30000) AS g(i)",
        )
        .await?;
        let g_spots = spots(&image(0), SegmentKind::Primary)?;
        let gid = g_spots.iter().map(|s| s.0).max().unwrap_or(0);
        let (_, gslice, goff, glen) = *g_spots
            .iter()
            .find(|s| s.0 == gid)
            .ok_or_else(|| anyhow!("g on node 0"))?;
        let gmirror: u32 = other_copy(&c, gslice, 0).await?.parse()?;
        let (_, _, gmoff, gmlen) = *spots(&image(gmirror), SegmentKind::Mirror)?
            .iter()
            .find(|s| s.0 == gid && s.1 == gslice)
            .ok_or_else(|| anyhow!("g slice {gslice} mirrored on node {gmirror}"))?;
        flip(&image(0), goff, glen)?;
        flip(&image(gmirror), gmoff, gmlen)?;
        let msg = expect_error(&c, "SELECT count(*), sum(v) FROM g", &["XX001"]).await?;
        eprintln!("[repair] both copies damaged: {msg}");
        ensure!(
            msg.contains("table \"g\"") && msg.contains(&format!("slice {gslice} ")),
            "the error names table g and slice {gslice}: {msg}"
        );
        let failed = scalar(
            &c,
            "SELECT count(*) FROM slicedb_repairs WHERE table_name = 'g' AND outcome LIKE 'failed%'",
        )
        .await?;
        ensure!(failed != "0", "the failed repair is shown");
        let there = scalar(
            &c,
            &format!(
                "SELECT count(*) FROM slicedb_repairs WHERE node = {gmirror} AND table_name = 'g' \
                 AND outcome LIKE 'failed: damaged here too%'"
            ),
        )
        .await?;
        ensure!(there != "0", "node {gmirror} records its own damaged copy");
        nothing_failed(&c).await?;
        ensure!(query(&c, TOTALS).await? == want, "f is still whole");

        // 4. Healed: the next fault (node 0 killed) is survived exactly.
        db.kill_proc(0);
        let got = query(&c, TOTALS).await?;
        ensure!(got == want, "after node 0 died: {got:?} != {want:?}");
        drop(c);
        db.kill();
        Ok(())
    });
}

#[test]
fn damaged_blocks_past_the_limit_fail_the_disk_over() {
    harness::run("repair_limit", |env| async move {
        // Two damaged blocks are repaired; the third within the window
        // fails the disk over (its slices are then served by their mirrors).
        let (db, c, want) = with_f(&env, &[], "cache_size = \"0\"\nbad_block_limit = 3\nbad_block_window = \"10min\"\nscrub_rate = \"0\"\n").await?;
        let image = env.path().join("cluster").join("node0").join("disk-0.img");
        let all = spots(&image, SegmentKind::Primary)?;
        ensure!(all.len() >= 3, "node 0 has 3 primary blocks: {all:?}");
        for (i, &(_, _, off, len)) in all.iter().take(2).enumerate() {
            flip(&image, off, len)?;
            ensure!(query(&c, TOTALS).await? == want, "damaged block {i}");
        }
        nothing_failed(&c).await?;
        let (_, _, off, len) = all[2];
        flip(&image, off, len)?;
        let got = query(&c, TOTALS).await?;
        ensure!(
            got == want,
            "answer when the disk fails: {got:?} != {want:?}"
        );
        let outcomes = query(
            &c,
            "SELECT outcome FROM slicedb_repairs WHERE node = 0 ORDER BY at_unix_ms",
        )
        .await?;
        eprintln!("[repair_limit] {outcomes:?}");
        ensure!(
            outcomes.len() == 3
                && outcomes[..2]
                    .iter()
                    .all(|r| r[0].as_deref() == Some("repaired"))
                && outcomes[2][0]
                    .as_deref()
                    .is_some_and(|o| o.contains("failed over")),
            "two repaired, the third fails the disk: {outcomes:?}"
        );
        let hist = scalar(
            &c,
            "SELECT count(*) FROM slicedb_map_history WHERE cause LIKE 'disk 0 of node 0 failed%'",
        )
        .await?;
        ensure!(hist == "1", "the disk was failed over: {hist}");
        db.kill();
        Ok(())
    });
}

/// `slicedb local --bad-block-limit 2`: the first damaged block is
/// repaired, the second within the window fails the disk over, which heals
/// (copies regenerated, in sync) and survives the next damaged block; the answer
/// stays exact throughout.
#[test]
fn slicedb_local_takes_the_bad_block_limit_from_its_flags() {
    harness::run("repair_local_limit", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local_args(
            &env,
            3,
            &data,
            &[],
            &[
                "--regen-delay",
                "1s",
                "--cache-size",
                "0",
                "--scrub-rate",
                "0",
                "--bad-block-limit",
                "2",
                "--bad-block-window",
                "10min",
            ],
        )
        .await?;
        let c = db.connect().await?;
        let want = load_f(&c).await?;
        let image = data.join("node-0").join("disk-0.img");
        let all = spots(&image, SegmentKind::Primary)?;
        ensure!(all.len() >= 2, "node 0 has 2 primary blocks: {all:?}");
        let (_, _, off, len) = all[0];
        flip(&image, off, len)?;
        ensure!(
            query(&c, TOTALS).await? == want,
            "answer with one damaged block"
        );
        nothing_failed(&c).await?;
        let (_, _, off, len) = all[1];
        flip(&image, off, len)?;
        let got = query(&c, TOTALS).await?;
        ensure!(
            got == want,
            "answer when the disk fails: {got:?} != {want:?}"
        );
        let hist = scalar(
            &c,
            "SELECT count(*) FROM slicedb_map_history WHERE cause LIKE 'disk 0 of node 0 failed%'",
        )
        .await?;
        ensure!(
            hist == "1",
            "the second damaged block failed the disk over: {hist}"
        );
        db.kill();
        Ok(())
    });
}

/// `slicedb_damaged` as (node, segment, table, slice), sorted.
async fn damaged(c: &tokio_postgres::Client) -> Result<Rows> {
    query(
        c,
        "SELECT node, segment, table_name, slice FROM slicedb_damaged ORDER BY node, segment",
    )
    .await
}

/// Poll `slicedb_damaged` until it is `want` (each Status re-checks the
/// marks), or fail with what it shows.
async fn wait_damaged(c: &tokio_postgres::Client, want: &Rows, what: &str) -> Result<()> {
    let t0 = std::time::Instant::now();
    loop {
        let got = damaged(c).await?;
        if &got == want {
            return Ok(());
        }
        ensure!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "{what}: slicedb_damaged is {got:?}, want {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Damage both copies of one block of table `t` (a primary block on node 0
/// and the same block's mirror copy): its slice, the mirror's node, and
/// where the mirror's bytes were flipped with the good ones.
async fn damage_both(
    c: &tokio_postgres::Client,
    image: &dyn Fn(u32) -> PathBuf,
    t: &str,
) -> Result<(u32, u32, (u64, Vec<u8>))> {
    // The newest table's first primary block on node 0 (one load: one
    // block per slice and copy, so the mirror's block of that slice is the
    // same logical block).
    let all = spots(&image(0), SegmentKind::Primary)?;
    let id = all.iter().map(|s| s.0).max().unwrap_or(0);
    let (_, slice, off, len) = *all
        .iter()
        .find(|s| s.0 == id)
        .ok_or_else(|| anyhow!("{t} on node 0"))?;
    let mirror: u32 = other_copy(c, slice, 0).await?.parse()?;
    let (_, _, moff, mlen) = *spots(&image(mirror), SegmentKind::Mirror)?
        .iter()
        .find(|s| s.0 == id && s.1 == slice)
        .ok_or_else(|| anyhow!("{t} slice {slice} mirrored on node {mirror}"))?;
    flip(&image(0), off, len)?;
    let good = flip(&image(mirror), moff, mlen)?;
    Ok((slice, mirror, good))
}

#[test]
fn a_block_damaged_on_both_copies_stays_marked_until_it_reads_well_or_is_gone() {
    harness::run("damaged_marks", |env| async move {
        let mut db = Slicedb::multiprocess_configured(
            &env,
            3,
            "cluster",
            &[],
            "cache_size = \"0\"\nscrub_rate = \"0\"\n",
        )
        .await?;
        let c = db.connect().await?;
        exec(&c, "CREATE TABLE g (k bigint, v bigint) DISTRIBUTE ON (k)").await?;
        exec(
            &c,
            "INSERT INTO g SELECT i, i FROM generate_series(1, 30000) AS s(i)",
        )
        .await?;
        const G: &str = "SELECT count(*), sum(k), sum(v) FROM g";
        let want = query(&c, G).await?;
        let root = env.path().join("cluster");
        let image = |n: u32| -> PathBuf { root.join(format!("node{n}")).join("disk-0.img") };
        ensure!(damaged(&c).await?.is_empty(), "nothing marked at first");

        // 1. Both copies of one block of g damaged: XX001, and the block is
        // marked on both nodes (node 0 failed to repair its primary; the
        // mirror's node found its copy damaged too when asked).
        let (slice, mirror, (mat, mgood)) = damage_both(&c, &image, "g").await?;
        let msg = expect_error(&c, G, &["XX001"]).await?;
        ensure!(msg.contains(&format!("slice {slice} ")), "{msg}");
        let mut marked: Rows = vec![
            vec![
                Some("0".into()),
                Some("primary".into()),
                Some("g".into()),
                Some(slice.to_string()),
            ],
            vec![
                Some(mirror.to_string()),
                Some("mirror".into()),
                Some("g".into()),
                Some(slice.to_string()),
            ],
        ];
        marked.sort();
        wait_damaged(&c, &marked, "both copies marked").await?;
        let file = root
            .join(format!("node{mirror}"))
            .join("damaged-blocks.jsonl");
        ensure!(
            std::fs::read_to_string(&file)?.lines().count() == 1,
            "node {mirror} keeps its mark in {}",
            file.display()
        );

        // 2. The mark, and the node's repair log, survive a restart of the
        // mirror's node.
        let log = format!(
            "SELECT at_unix_ms, segment, table_name, slice, outcome FROM slicedb_repairs \
             WHERE node = {mirror} ORDER BY at_unix_ms"
        );
        let logged = query(&c, &log).await?;
        ensure!(
            logged.iter().any(|r| r[4]
                .as_deref()
                .is_some_and(|o| o.contains("damaged here too"))),
            "node {mirror} logged its damaged copy: {logged:?}"
        );
        db.kill_proc(mirror as usize);
        let limit = std::time::Duration::from_secs(30);
        crate::disks::wait_history(&c, &format!("node {mirror} failed"), limit).await?;
        db.restart_node(&env, mirror as usize).await?;
        crate::disks::wait_history(&c, &format!("node {mirror} rejoined"), limit).await?;
        harness::wait_fully_protected(&c, std::time::Duration::from_secs(60)).await?;
        wait_damaged(&c, &marked, &format!("marks after node {mirror} restarted")).await?;
        let again = query(&c, &log).await?;
        ensure!(
            again == logged,
            "node {mirror}'s repair log after its restart: {again:?}, before {logged:?}"
        );
        expect_error(&c, G, &["XX001"]).await?;

        // 3. The mirror's good bytes restored (as a regeneration or an
        // operator would): its mark clears; the next read repairs node 0's
        // primary from it, and that mark clears too.
        let dev = FileDevice::open(&image(mirror), true)?;
        dev.write_at(mat, &mgood)?;
        dev.sync()?;
        let primary_only: Rows = marked
            .iter()
            .filter(|r| r[1].as_deref() == Some("primary"))
            .cloned()
            .collect();
        wait_damaged(&c, &primary_only, "the mirror reads well again").await?;
        ensure!(query(&c, G).await? == want, "g is whole again");
        wait_damaged(&c, &vec![], "the primary was repaired").await?;

        // 4. Damaged on both copies again, then the table dropped: the
        // blocks are gone, and so are the marks. (TRUNCATE and DELETE read
        // the table, so they fail on the block with XX001 too.)
        damage_both(&c, &image, "g").await?;
        expect_error(&c, G, &["XX001"]).await?;
        wait_damaged(&c, &marked, "marked again").await?;
        expect_error(&c, "TRUNCATE g", &["XX001"]).await?;
        exec(&c, "DROP TABLE g").await?;
        wait_damaged(&c, &vec![], "g dropped").await?;
        let up = scalar(
            &c,
            "SELECT count(*) FROM slicedb_disks WHERE state <> 'in_service'",
        )
        .await?;
        ensure!(up == "0", "no disk was failed by the damage: {up}");
        drop(c);
        db.kill();
        Ok(())
    });
}

/// Two queries that meet the same damaged block while it is being repaired
/// (the repair held 1.5 s by a failpoint) share that one repair: both get
/// the exact answer, the node records one repair and counts one bad block
/// (the second would otherwise be a second record and count toward the
/// limit); the copies verify and the cluster survives a node kill after.
#[test]
fn reads_that_meet_a_block_under_repair_share_that_repair() {
    harness::run("repair_shared", |env| async move {
        let vars = [(0, "SLICEDB_FAILPOINTS", "repair.before_fetch=delay:1500")];
        let (mut db, c, want) =
            with_f(&env, &vars, "cache_size = \"0\"\nscrub_rate = \"0\"\n").await?;
        let root = env.path().join("cluster");
        let image = root.join("node0").join("disk-0.img");
        let (_, _, off, len) = *spots(&image, SegmentKind::Primary)?
            .first()
            .ok_or_else(|| anyhow!("node 0 has primary blocks"))?;
        flip(&image, off, len)?;
        let url = db.url().to_string();
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let c = harness::connect(&url).await?;
                    query(&c, TOTALS).await
                })
            })
            .collect();
        for r in readers {
            let got = r.await??;
            ensure!(got == want, "a reader's answer: {got:?} != {want:?}");
        }
        let r = repairs(&c, 0).await?;
        eprintln!("[repair_shared] node 0 repairs: {r:?}");
        ensure!(
            r.len() == 1,
            "one repair recorded for the block three reads met: {r:?}"
        );
        let config = root.join("cluster.toml");
        let counted = repaired_metric(&config, 0).await?;
        ensure!(counted == 1.0, "blocks repaired on node 0: {counted}");
        nothing_failed(&c).await?;
        harness::ensure_verified(&c).await?;
        db.kill_proc(1);
        crate::disks::wait_history(&c, "node 1 failed", std::time::Duration::from_secs(30)).await?;
        ensure!(
            query(&c, TOTALS).await? == want,
            "answer after node 1 was killed"
        );
        db.restart_node(&env, 1).await?;
        harness::wait_fully_protected(&c, std::time::Duration::from_secs(60)).await?;
        harness::ensure_verified(&c).await?;
        db.stop().await
    });
}

/// GROOM runs node by node; node 2's is held back 8 s (a failpoint), so
/// the other copies of its slices are groomed while its own still hold the
/// deleted rows. A damaged block of node 2 met by a query, and another met
/// by node 2's own GROOM, are repaired from those groomed copies: the rows
/// they lack are the ones node 2 deleted too, so node 2 takes the rest in
/// (dropping those rows and their deletes, as its GROOM would) with no
/// error, the answer exact; the copies verify, nothing failed over, and the
/// cluster survives a node kill after.
#[test]
fn a_block_whose_other_copy_was_groomed_is_repaired_without_the_groomed_rows() {
    harness::run("repair_groomed", |env| async move {
        let vars = [(2, "SLICEDB_FAILPOINTS", "groom.before=delay:8000")];
        let (mut db, c, _) =
            with_f(&env, &vars, "cache_size = \"0\"\nscrub_rate = \"0\"\n").await?;
        let root = env.path().join("cluster");
        let image = |n: u32| -> PathBuf { root.join(format!("node{n}")).join("disk-0.img") };
        exec(&c, "DELETE FROM f WHERE k % 10 = 0").await?;
        let want = query(&c, TOTALS).await?;
        ensure!(want[0][0].as_deref() == Some("27000"), "{want:?}");
        let prim: Vec<StoredBlock> = stored_blocks(&image(2), SegmentKind::Primary)?
            .into_iter()
            .flatten()
            .collect();
        ensure!(prim.len() >= 2, "node 2 holds primary blocks: {prim:?}");
        let (a, b) = (prim[0], prim[prim.len() - 1]);
        let url = db.url().to_string();
        let groom = tokio::spawn(async move {
            let c = harness::connect(&url).await?;
            exec(&c, "GROOM TABLE f").await
        });
        // Wait until the other copies of both blocks are groomed.
        for blk in [a, b] {
            let other: u32 = other_copy(&c, blk.slice, 2).await?.parse()?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
            loop {
                let there: Vec<StoredBlock> = stored_blocks(&image(other), SegmentKind::Mirror)
                    .unwrap_or_default()
                    .into_iter()
                    .flatten()
                    .filter(|m| m.table == blk.table && m.slice == blk.slice)
                    .collect();
                if !there.is_empty() && there.iter().all(|m| m.seq != blk.seq) {
                    break;
                }
                ensure!(
                    std::time::Instant::now() < deadline,
                    "node {other}'s copy of slice {} was not groomed in 6 s",
                    blk.slice
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        ensure!(!groom.is_finished(), "node 2's groom is held back");
        ensure!(
            spots(&image(2), SegmentKind::Primary)?
                .contains(&(a.table, a.slice, a.offset, a.length)),
            "node 2 has not groomed yet"
        );
        flip(&image(2), a.offset, a.length)?;
        let got = query(&c, TOTALS).await?;
        ensure!(
            got == want,
            "damaged block, other copy groomed: {got:?} != {want:?}"
        );
        // The other block is met by node 2's own GROOM.
        flip(&image(2), b.offset, b.length)?;
        groom.await??;
        ensure!(query(&c, TOTALS).await? == want, "after GROOM");
        let r = repairs(&c, 2).await?;
        eprintln!("[repair_groomed] node 2 repairs: {r:?}");
        ensure!(r.len() == 2, "two repairs on node 2: {r:?}");
        let outcome = |i: usize| r[i][4].clone().unwrap_or_default();
        ensure!(
            outcome(0).starts_with("repaired: ") && outcome(0).contains("groomed away"),
            "the query's repair took the groomed block in: {r:?}"
        );
        ensure!(
            outcome(1).starts_with("repaired"),
            "the groom's repair gave it the rows: {r:?}"
        );
        ensure!(
            scalar(&c, "SELECT count(*) FROM slicedb_damaged").await? == "0",
            "nothing marked damaged"
        );
        nothing_failed(&c).await?;
        harness::ensure_verified(&c).await?;
        // Healed: node 0 killed, the answer exact, then it rejoins.
        db.kill_proc(0);
        crate::disks::wait_history(&c, "node 0 failed", std::time::Duration::from_secs(30)).await?;
        ensure!(query(&c, TOTALS).await? == want, "after node 0 was killed");
        db.restart_node(&env, 0).await?;
        harness::wait_fully_protected(&c, std::time::Duration::from_secs(60)).await?;
        harness::ensure_verified(&c).await?;
        ensure!(query(&c, TOTALS).await? == want, "after node 0 rejoined");
        db.stop().await
    });
}
