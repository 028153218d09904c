//! Sector repair, the node's side: [`PeerRepair`] is the
//! [`BlockRepair`] the node's disks are opened with. A committed block that
//! fails its checksum, does not decode, or cannot be read at all (an I/O
//! error of its read) on a read of this node is asked
//! of the node holding the slice's other copy (`FetchBlock`, the map's
//! `repair_source`), checked exactly as a disk read is (CRC, table, slice,
//! seq, rows, rowid range), written back over the bad bytes in place, and
//! handed to the read, which goes on. When the peer's GROOM already removed
//! rows of the block, the rows left are taken if this copy deleted the
//! others too (`DiskStore::take_replacement`). The peer answers `FetchBlock` from its
//! own copy (`peer.rs`), never through its own repair.
//!
//! Reads that meet the same damaged block while it is being repaired share
//! that one repair: one fetch, one record, one count; one that met it just
//! before a repair's write-back finds it reading well again.
//!
//! Every damaged block met is recorded ([`RepairLog`]: what `Status` reports
//! and `slicedb_repairs` shows; the last 1000 also in `repairs.jsonl` next
//! to the images, across restarts) and counted per disk. One bad block does not
//! fail a disk: only [`RepairPolicy::limit`] of them within
//! [`RepairPolicy::window`] do (docs/disk-format.md, "Sector repair"); past
//! that the read fails with the original error, which fails the disk over
//! as before. A block that cannot be repaired (both copies bad, no in-sync
//! other copy, the peer unreachable) fails the read with
//! [`EngineError::Unrepairable`] (XX001), never with rows.
//!
//! It owns the repair log and the threshold. It must never read a block of
//! its own disk through the store (the read that called it holds the bad
//! one), never hand back bytes it did not verify, and never write anywhere
//! but over the block the index still holds at that offset.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::damaged::Mark;
use super::jsonl;
use super::{NodeServer, NodeState};
use crate::proto::pb;
use crate::store::{BlockRepair, LogicalBlock, Repaired, StoredBlock};
use crate::{DiskId, EngineError, NodeId, Result};

/// Records kept for `Status` (oldest dropped first).
const LOG_CAPACITY: usize = 1000;

/// The oldest bad blocks of a previous run that still count toward the
/// threshold after a restart (those within the policy's window do).
const RECENT_KEPT: Duration = Duration::from_secs(24 * 3600);

/// How long one fetch from the peer may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// When damaged blocks fail a disk over: `limit` of them (repaired or not)
/// within `window`. A limit of 1 fails it at the first bad block (the
/// behaviour before sector repair).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairPolicy {
    pub limit: u32,
    pub window: Duration,
}

impl RepairPolicy {
    pub const DEFAULT_LIMIT: u32 = 16;
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);
}

impl Default for RepairPolicy {
    fn default() -> Self {
        RepairPolicy {
            limit: Self::DEFAULT_LIMIT,
            window: Self::DEFAULT_WINDOW,
        }
    }
}

/// The file the repair log is kept in, next to the node's images.
pub const LOG_FILE: &str = "repairs.jsonl";

/// What the node remembers of the damaged blocks it met. The records are
/// also kept in [`LOG_FILE`] (`jsonl`: one line appended per record, the
/// file rewritten with the last [`LOG_CAPACITY`] once it holds twice
/// that), so the last ones outlive a restart and the bad blocks they
/// record still count toward the threshold within its window; the
/// per-disk repaired count (the metric) starts again from zero.
#[derive(Default)]
pub(super) struct RepairLog {
    records: VecDeque<pb::RepairRecord>,
    /// Blocks repaired, per disk (the metric).
    repaired: HashMap<DiskId, u64>,
    /// When each disk's recent bad blocks were met (the threshold).
    recent: HashMap<DiskId, VecDeque<Instant>>,
    /// Where the records are kept (None: in memory only), written apart
    /// from this lock: a `Status` reading the log never waits for an fsync.
    file: Option<Arc<LogFile>>,
}

/// [`LOG_FILE`], the lines it holds, and the lock its writers take.
struct LogFile {
    path: std::path::PathBuf,
    lines: AtomicUsize,
    writing: Mutex<()>,
}

/// A record to write to [`LOG_FILE`] once the log's lock is released (and
/// the records to rewrite it with, when it holds twice the capacity).
#[must_use = "write() the record to the log's file"]
pub(super) struct Pending {
    file: Option<Arc<LogFile>>,
    record: SavedRecord,
    rewrite: Option<Vec<SavedRecord>>,
}

impl Pending {
    /// Append the record (or rewrite the file); a failure is logged.
    pub(super) fn write(self) {
        let Some(file) = self.file else {
            return;
        };
        let _w = file.writing.lock();
        match self.rewrite {
            Some(all) => {
                jsonl::rewrite(&file.path, all.iter());
                file.lines.store(all.len(), Ordering::Relaxed);
            }
            None => {
                jsonl::append(&file.path, &self.record);
                file.lines.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A repair record as a line of [`LOG_FILE`].
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedRecord {
    at_unix_ms: u64,
    disk: DiskId,
    segment: i32,
    table: u64,
    slice: u32,
    seq: u64,
    offset: u64,
    length: u64,
    source_node: Option<NodeId>,
    outcome: String,
    error: String,
}

impl From<&pb::RepairRecord> for SavedRecord {
    fn from(r: &pb::RepairRecord) -> Self {
        SavedRecord {
            at_unix_ms: r.at_unix_ms,
            disk: r.disk,
            segment: r.segment,
            table: r.table,
            slice: r.slice,
            seq: r.seq,
            offset: r.offset,
            length: r.length,
            source_node: r.has_source.then_some(r.source_node),
            outcome: r.outcome.clone(),
            error: r.error.clone(),
        }
    }
}

impl From<SavedRecord> for pb::RepairRecord {
    fn from(r: SavedRecord) -> Self {
        pb::RepairRecord {
            at_unix_ms: r.at_unix_ms,
            disk: r.disk,
            segment: r.segment,
            table: r.table,
            slice: r.slice,
            seq: r.seq,
            offset: r.offset,
            length: r.length,
            source_node: r.source_node.unwrap_or(0),
            has_source: r.source_node.is_some(),
            outcome: r.outcome,
            error: r.error,
        }
    }
}

impl RepairLog {
    /// The log kept next to `disks`' images, with the records a previous
    /// run of the node left there.
    pub(super) fn open(disks: &[Arc<crate::store::DiskStore>]) -> RepairLog {
        let path = jsonl::next_to_images(disks, LOG_FILE);
        let saved: Vec<SavedRecord> = path.as_deref().map(jsonl::load).unwrap_or_default();
        let lines = saved.len();
        let skip = saved.len().saturating_sub(LOG_CAPACITY);
        // The bad blocks a previous run met count toward the threshold for
        // the rest of their window too: a dying disk does not get a fresh
        // allowance with every restart of its node.
        let now = (Instant::now(), SystemTime::now());
        let mut recent: HashMap<DiskId, VecDeque<Instant>> = HashMap::new();
        for r in &saved {
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(r.at_unix_ms);
            let age = now.1.duration_since(at).unwrap_or_default();
            if age <= RECENT_KEPT {
                if let Some(t) = now.0.checked_sub(age) {
                    recent.entry(r.disk).or_default().push_back(t);
                }
            }
        }
        RepairLog {
            recent,
            records: saved.into_iter().skip(skip).map(Into::into).collect(),
            file: path.map(|path| {
                Arc::new(LogFile {
                    path,
                    lines: AtomicUsize::new(lines),
                    writing: Mutex::new(()),
                })
            }),
            ..Default::default()
        }
    }

    pub(super) fn records(&self) -> Vec<pb::RepairRecord> {
        self.records.iter().cloned().collect()
    }

    pub(super) fn repaired(&self, disk: DiskId) -> u64 {
        self.repaired.get(&disk).copied().unwrap_or(0)
    }

    /// Note a bad block of `disk`; whether the disk is now past `policy`.
    fn bad_block(&mut self, disk: DiskId, policy: RepairPolicy) -> bool {
        let now = Instant::now();
        let q = self.recent.entry(disk).or_default();
        q.push_back(now);
        while q
            .front()
            .is_some_and(|&t| now.duration_since(t) > policy.window)
        {
            q.pop_front();
        }
        q.len() as u64 >= u64::from(policy.limit.max(1))
    }

    /// Record `r`; what to write to the file once the lock is released.
    fn push(&mut self, r: pb::RepairRecord) -> Pending {
        if r.outcome.starts_with("repaired") {
            *self.repaired.entry(r.disk).or_default() += 1;
        }
        if self.records.len() == LOG_CAPACITY {
            self.records.pop_front();
        }
        let record = SavedRecord::from(&r);
        self.records.push_back(r);
        let full = self
            .file
            .as_ref()
            .is_some_and(|f| f.lines.load(Ordering::Relaxed) >= 2 * LOG_CAPACITY);
        Pending {
            file: self.file.clone(),
            record,
            rewrite: full.then(|| self.records.iter().map(SavedRecord::from).collect()),
        }
    }
}

impl NodeServer {
    /// This node's copy of a block another node asked for (`FetchBlock`)
    /// is damaged too: record it and count it against the disk like any
    /// damaged block met (it is not repaired here: the asker's copy is the
    /// bad one).
    pub(super) fn damaged_while_serving(
        &self,
        disk: DiskId,
        segment: crate::store::SegmentKind,
        want: &LogicalBlock,
        asker: NodeId,
        error: &EngineError,
    ) {
        let st = &self.state;
        let policy = st.repair.as_ref().map(|r| r.policy).unwrap_or_default();
        let offset = match error {
            EngineError::ChecksumMismatch { offset, .. }
            | EngineError::CorruptBlock { offset, .. } => *offset,
            _ => 0,
        };
        let past = st.repairs.lock().bad_block(disk, policy);
        let pending = st.repairs.lock().push(pb::RepairRecord {
            at_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            disk,
            segment: pb::Segment::from(segment) as i32,
            table: want.table,
            slice: want.slice,
            seq: want.seq,
            offset,
            length: 0,
            source_node: 0,
            has_source: false,
            outcome: format!("failed: damaged here too, met while serving node {asker}'s repair"),
            error: error.to_string(),
        });
        pending.write();
        warn!(node = st.node, disk, table = want.table, slice = want.slice, seq = want.seq,
              asker, error = %error, "the block asked for repair is damaged here too");
        st.damaged.mark(Mark::new(
            disk,
            segment,
            want,
            format!("damaged here too, met while serving node {asker}'s repair: {error}"),
        ));
        if past {
            self.note_disk_fault(disk, &error.again());
        }
    }
}

/// The error of a read whose block could not be repaired.
fn unrepairable(block: &StoredBlock, reason: String) -> EngineError {
    EngineError::Unrepairable {
        disk: block.disk,
        table: block.table,
        slice: block.slice,
        segment: block.segment.as_str().to_string(),
        seq: block.seq,
        reason,
    }
}

/// The node's [`BlockRepair`]: open the disks with it, then give it to
/// [`NodeServer::with_repair`], which binds it to the node once it serves.
pub struct PeerRepair {
    policy: RepairPolicy,
    bound: OnceLock<(Weak<NodeState>, tokio::runtime::Handle)>,
    /// Repairs running, by block: a read that meets a block another read
    /// is repairing takes that repair's outcome instead of fetching it
    /// again, and the block counts once toward the limit.
    flights: Mutex<HashMap<BlockKey, Arc<Flight>>>,
    /// Blocks repaired a moment ago: a read that met one before the
    /// write-back (and asks after it) finds it reading well again, or,
    /// when the repair rewrote it without rows the other copy had groomed
    /// away, takes the rows that repair took in.
    repaired: Mutex<HashMap<BlockKey, (Instant, Arc<Repaired>)>>,
}

/// One block of one disk: (disk, offset, table, slice, seq).
type BlockKey = (DiskId, u64, u64, u32, u64);

/// How long a repaired block is looked at again before it is repaired
/// again (a read that met its bad bytes may ask this much later).
const REPAIRED_KEEP: Duration = Duration::from_secs(2);

/// A repair's outcome as the reads that waited for it take it: the good
/// bytes, or why it failed (and whether the disk was failed over).
type Shared = std::result::Result<Arc<Repaired>, (bool, String)>;

#[derive(Default)]
struct Flight {
    outcome: Mutex<Option<Shared>>,
    done: parking_lot::Condvar,
}

impl PeerRepair {
    pub fn new(policy: RepairPolicy) -> Arc<PeerRepair> {
        Arc::new(PeerRepair {
            policy,
            bound: OnceLock::new(),
            flights: Mutex::new(HashMap::new()),
            repaired: Mutex::new(HashMap::new()),
        })
    }

    /// The repair of `key` to wait for, or None: the caller repairs it
    /// and must [`PeerRepair::land`] the outcome.
    fn join(&self, key: BlockKey) -> Option<Arc<Flight>> {
        let mut f = self.flights.lock();
        if let Some(fl) = f.get(&key) {
            return Some(fl.clone());
        }
        f.insert(key, Arc::default());
        None
    }

    /// Hand the outcome of `key`'s repair to the reads waiting for it.
    fn land(&self, key: BlockKey, outcome: Shared) {
        if let Ok(good) = &outcome {
            let mut r = self.repaired.lock();
            let now = Instant::now();
            r.retain(|_, (at, _)| now.duration_since(*at) < REPAIRED_KEEP);
            r.insert(key, (now, good.clone()));
        }
        if let Some(fl) = self.flights.lock().remove(&key) {
            *fl.outcome.lock() = Some(outcome);
            fl.done.notify_all();
        }
    }

    /// What `key`'s repair a moment ago took in, if there was one.
    fn just_repaired(&self, key: &BlockKey) -> Option<Arc<Repaired>> {
        self.repaired
            .lock()
            .get(key)
            .filter(|(at, _)| at.elapsed() < REPAIRED_KEEP)
            .map(|(_, good)| good.clone())
    }
}

impl Flight {
    /// Wait for the repair's outcome (the leader's fetch is bounded).
    fn wait(&self) -> Shared {
        let mut o = self.outcome.lock();
        loop {
            if let Some(r) = o.as_ref() {
                return r.clone();
            }
            self.done.wait(&mut o);
        }
    }
}

impl PeerRepair {
    pub(super) fn bind(&self, state: &Arc<NodeState>, rt: tokio::runtime::Handle) {
        let _ = self.bound.set((Arc::downgrade(state), rt));
    }
}

impl BlockRepair for PeerRepair {
    fn repair(&self, block: &StoredBlock, error: EngineError) -> Result<Repaired> {
        let Some((state, rt)) = self.bound.get() else {
            return Err(error);
        };
        let Some(state) = state.upgrade() else {
            return Err(error);
        };
        let key = (
            block.disk,
            block.offset,
            block.table,
            block.slice,
            block.seq,
        );
        if let Some(good) = self.just_repaired(&key) {
            if good.rows != block.rows {
                // Rewritten elsewhere without the groomed rows.
                return Ok(good.as_ref().clone());
            }
            if let Some(bytes) = state
                .disks
                .get(block.disk as usize)
                .and_then(|d| d.reads_well(block))
            {
                return Ok(Repaired::whole(bytes, block));
            }
        }
        if let Some(flight) = self.join(key) {
            return match flight.wait() {
                Ok(good) => Ok(good.as_ref().clone()),
                // The disk was failed over: this read fails as the first.
                Err((true, _)) => Err(error),
                Err((false, reason)) => Err(unrepairable(block, reason)),
            };
        }
        let node = NodeServer { state };
        // The reads waiting on this repair must hear of it even if it
        // panics (then they fail as after a disk failure).
        let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            node.repair_block(block, error, self.policy, rt)
        })) {
            Ok(r) => r,
            Err(panic) => {
                self.land(key, Err((true, "the repair panicked".into())));
                std::panic::resume_unwind(panic);
            }
        };
        self.land(
            key,
            match &result {
                Ok(bytes) => Ok(Arc::new(bytes.clone())),
                Err(EngineError::Unrepairable { reason, .. }) => Err((false, reason.clone())),
                Err(e) => Err((true, e.to_string())),
            },
        );
        result
    }
}

impl NodeServer {
    fn repair_block(
        &self,
        block: &StoredBlock,
        error: EngineError,
        policy: RepairPolicy,
        rt: &tokio::runtime::Handle,
    ) -> Result<Repaired> {
        let st = &self.state;
        if self.disk_failure(block.disk).is_some() {
            return Err(error);
        }
        let started = SystemTime::now();
        let source = self.repair_source(block);
        let mut record = pb::RepairRecord {
            at_unix_ms: started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            disk: block.disk,
            segment: pb::Segment::from(block.segment) as i32,
            table: block.table,
            slice: block.slice,
            seq: block.seq,
            offset: block.offset,
            length: block.length,
            source_node: source.as_ref().map_or(0, |s| s.1),
            has_source: source.is_some(),
            outcome: String::new(),
            error: error.to_string(),
        };
        warn!(node = st.node, disk = block.disk, table = block.table, slice = block.slice,
              seq = block.seq, offset = block.offset, error = %error, "damaged block: repairing");
        // Counted first: a disk past the limit is failed without a fetch.
        let past = st.repairs.lock().bad_block(block.disk, policy);
        let result = match source {
            _ if past => Err(format!(
                "disk {} met {} damaged blocks within {:?}: failed over",
                block.disk, policy.limit, policy.window
            )),
            Some((epoch, from)) => {
                // Tests widen the window in which other reads meet the block.
                if let Some(d) = crate::failpoint::delay("repair.before_fetch") {
                    std::thread::sleep(d);
                }
                self.fetch_and_write(block, epoch, from, rt)
            }
            None => Err("no other in-sync copy of the slice to repair from".to_string()),
        };
        record.outcome = match &result {
            Ok((good, Ok(true))) if good.rows < block.rows => format!(
                "repaired: {} rows groomed away on the other copy dropped here too",
                block.rows - good.rows
            ),
            Ok((_, Ok(true))) => "repaired".into(),
            Ok((_, Ok(false))) => "repaired_not_written".into(),
            Ok((_, Err(why))) => format!("repaired_not_written: {why}"),
            Err(why) => format!("failed: {why}"),
        };
        info!(node = st.node, disk = block.disk, table = block.table, slice = block.slice,
              seq = block.seq, outcome = %record.outcome, "block repair");
        let pending = st.repairs.lock().push(record);
        pending.write();
        if past {
            // Too many bad blocks: the disk itself is going. Fail it over
            // (the read fails with its error, as without repair).
            warn!(node = st.node, disk = block.disk, limit = policy.limit, window = ?policy.window,
                  "damaged blocks past the limit: failing the disk");
            self.note_disk_fault(block.disk, &error.again());
            return Err(error);
        }
        match result {
            Ok((bytes, _)) => Ok(bytes),
            Err(reason) => {
                st.damaged.mark(Mark::new(
                    block.disk,
                    block.segment,
                    &LogicalBlock::from(block),
                    reason.clone(),
                ));
                Err(unrepairable(block, reason))
            }
        }
    }

    /// The map's epoch and the node to repair `block`'s copy from.
    fn repair_source(&self, block: &StoredBlock) -> Option<(u64, NodeId)> {
        let map = self.state.map.read();
        let m = map.as_ref()?;
        if m.slices.get(&(block.slice, block.segment)) != Some(&block.disk) {
            return None;
        }
        let from = *m.repair_sources.get(&(block.slice, block.segment))?;
        Some((m.epoch, from))
    }

    /// Fetch `block` from `from`, verify it, write it back: the verified
    /// bytes, and whether they were written (or why not: a write that
    /// fails with an I/O error fails the disk, but the read still gets the
    /// good bytes). Bytes of fewer rows (rows groomed away on `from`) are
    /// taken only if this copy deleted those rows too
    /// ([`crate::store::DiskStore::take_replacement`]).
    fn fetch_and_write(
        &self,
        block: &StoredBlock,
        epoch: u64,
        from: NodeId,
        rt: &tokio::runtime::Handle,
    ) -> Result<(Repaired, Result<bool, String>), String> {
        let routes = self.current_map().routes;
        let want = LogicalBlock::from(block);
        let req = pb::FetchBlockRequest {
            epoch,
            table: want.table,
            slice: want.slice,
            seq: want.seq,
            rows: want.rows,
            rowid_min: want.rowid_min,
            rowid_max: want.rowid_max,
            from_node: self.state.node,
        };
        // Reads run on blocking or background threads, never on the
        // runtime's workers: the fetch runs there while this thread waits.
        // (The client is made there too: connecting needs the runtime.)
        let me = self.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let answer = async {
                let mut client = me
                    .state
                    .forwarder
                    .client(&routes, from)
                    .map_err(|e| e.to_string())?;
                match tokio::time::timeout(FETCH_TIMEOUT, client.fetch_block(req)).await {
                    Ok(Ok(r)) => Ok(r.into_inner()),
                    Ok(Err(s)) => Err(format!("node {from}: {}", s.message())),
                    Err(_) => Err(format!("node {from} did not answer in {FETCH_TIMEOUT:?}")),
                }
            };
            let _ = tx.send(answer.await);
        });
        let answer = rx
            .recv_timeout(FETCH_TIMEOUT + Duration::from_secs(1))
            .unwrap_or_else(|_| Err(format!("node {from} did not answer in {FETCH_TIMEOUT:?}")))?;
        let disk = self.disk(block.disk).map_err(|e| e.to_string())?;
        let (good, written) = disk
            .take_replacement(block, &answer.block)
            .map_err(|e| format!("bytes from node {from}: {e}"))?;
        let written = written.map_err(|e| {
            self.note_disk_fault(block.disk, &e);
            format!("writing back failed: {e}")
        });
        Ok((good, written))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DiskIds, DiskStore, InitOptions, StoreOptions};

    /// Bad blocks in `repairs.jsonl` younger than the window count toward
    /// the threshold after a restart; older ones do not.
    #[test]
    fn a_restart_keeps_the_bad_blocks_of_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let ids = DiskIds {
            cluster_id: [7; 16],
            node_id: 0,
            disk_id: 0,
        };
        let store = DiskStore::create(
            &dir.path().join("disk-0.img"),
            ids,
            InitOptions::new(64 << 20),
            StoreOptions::default(),
        )
        .unwrap();
        let disks = vec![Arc::new(store)];
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let record = |ago_ms: u64| pb::RepairRecord {
            at_unix_ms: now - ago_ms,
            disk: 0,
            outcome: "repaired".into(),
            ..Default::default()
        };
        {
            let mut log = RepairLog::open(&disks);
            // Two an hour ago, two a minute ago.
            for ago in [3_600_000, 3_600_000, 60_000, 60_000] {
                log.push(record(ago)).write();
            }
        }
        let policy = RepairPolicy {
            limit: 3,
            window: Duration::from_secs(600),
        };
        let mut log = RepairLog::open(&disks);
        assert_eq!(log.records().len(), 4);
        // The two within the window and this one: the limit of 3.
        assert!(
            log.bad_block(0, policy),
            "the restart forgot the window's bad blocks"
        );
        let mut fresh = RepairLog::default();
        assert!(!fresh.bad_block(0, policy));
    }
}
