//! The receiving side of mirroring: staging forwards in memory and applying
//! them at prepare into the segment holding this node's copy of the slice
//! (the mirror segment; the primary segment when a failed-over mirror
//! forwards to the primary copy being resynced); and, when the primary
//! fails with the transaction still open, handing what it forwarded over
//! to this node as its own writes (adoption, so the coordinator need not
//! send it again).
//!
//! Staged blocks live in memory up to a budget per node
//! ([`DEFAULT_STAGING_MEMORY`]); past it, a forward's blocks go to a spill
//! file of its (xid, primary) in the node's spill directory (unlinked at
//! once: nothing is left behind by a crash, which loses the staging anyway
//! and is caught by the forward count at prepare), so a transaction larger
//! than memory is mirrored too.
//!
//! It owns the staged forwards, their spill files and the record of which
//! coordinator requests each (xid, primary) brought here. It must never
//! make a forward visible: only the disk's commit does, and never decide
//! whether the transaction commits.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::proto::pb;
use crate::store::{DiskStore, SegmentKind};
use crate::{DiskId, EngineError, NodeId, Result, SliceId, TableId, Xid};

/// Staged block bytes a node holds in memory before it spills forwards to
/// files (when it has a spill directory).
pub const DEFAULT_STAGING_MEMORY: usize = 256 << 20;

/// What one forward carried.
pub enum StagedData {
    Blocks(Vec<bytes::Bytes>),
    /// Blocks written to a spill file: (offset, length) of each.
    Spilled {
        file: Arc<File>,
        pieces: Vec<(u64, u64)>,
    },
    Delete(Vec<i64>),
}

impl StagedData {
    /// The encoded blocks, read back from the spill file if need be.
    pub fn blocks(&self) -> Result<Vec<bytes::Bytes>> {
        match self {
            StagedData::Blocks(b) => Ok(b.clone()),
            StagedData::Spilled { file, pieces } => pieces
                .iter()
                .map(|&(off, len)| {
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, off).map_err(|e| {
                        EngineError::Internal(format!("reading a spilled forward back: {e}"))
                    })?;
                    Ok(bytes::Bytes::from(buf))
                })
                .collect(),
            StagedData::Delete(_) => Ok(Vec::new()),
        }
    }

    /// Bytes it holds in memory.
    fn in_memory(&self) -> usize {
        match self {
            StagedData::Blocks(b) => b.iter().map(|b| b.len()).sum(),
            StagedData::Spilled { .. } => 0,
            StagedData::Delete(r) => r.len() * 8,
        }
    }
}

/// One forward, held until prepare (or adoption).
pub struct StagedItem {
    pub disk: DiskId,
    pub segment: SegmentKind,
    pub table: TableId,
    pub slice: SliceId,
    /// The coordinator's request it carries (0: none).
    pub request_id: u64,
    pub data: StagedData,
}

impl StagedItem {
    /// Write it into `d` under `xid` (pending); answers the rows written or
    /// deleted.
    pub fn apply(&self, d: &DiskStore, xid: Xid) -> Result<u64> {
        match &self.data {
            StagedData::Delete(rowids) => {
                d.delete(self.segment, self.table, self.slice, xid, rowids, None)
            }
            data => {
                let mut rows = 0;
                for b in data.blocks()? {
                    rows += d.append_encoded(self.segment, self.table, self.slice, xid, &b)?;
                }
                Ok(rows)
            }
        }
    }
}

/// A forward written into this node's disk: at prepare, or by adoption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub request_id: u64,
    pub slice: SliceId,
    pub disk: DiskId,
    pub rows: u64,
}

/// What a mirror holds for one (xid, primary node) until the transaction
/// ends.
#[derive(Default)]
struct Staged {
    received: u64,
    items: Vec<StagedItem>,
    /// Where this (xid, primary)'s forwards spill past the memory budget,
    /// and how long it is.
    spill: Option<(Arc<File>, u64)>,
    /// Applied by the primary's prepare (durable, prepared on the disk).
    prepared: Vec<Applied>,
    /// Taken over by [`Staging::adopt`].
    adopted: Vec<Applied>,
    /// The primary's prepare came (and applied `items`).
    was_prepared: bool,
}

/// What [`Staging::take_for_adoption`] hands over: forwards still to be
/// written, and those the primary's prepare already wrote.
pub struct Adoption {
    pub to_apply: Vec<StagedItem>,
    pub already_applied: Vec<Applied>,
    /// Adopted by an earlier call (answered again, counted once).
    pub earlier: Vec<Applied>,
}

/// A mirror node's staged forwards, per transaction and primary node.
/// Nothing reaches a disk before [`Staging::prepare`] or an adoption.
pub struct Staging {
    node: NodeId,
    disks: Vec<Arc<DiskStore>>,
    staged: Mutex<HashMap<Xid, HashMap<NodeId, Staged>>>,
    /// The spill directory and the memory budget (none: all in memory).
    spill: OnceLock<(PathBuf, usize)>,
    /// Staged bytes held in memory now.
    in_memory: AtomicUsize,
}

impl Staging {
    /// The staging of node `node`, whose disks are `disks` (index = id).
    pub fn new(node: NodeId, disks: Vec<Arc<DiskStore>>) -> Self {
        Staging {
            node,
            disks,
            staged: Mutex::new(HashMap::new()),
            spill: OnceLock::new(),
            in_memory: AtomicUsize::new(0),
        }
    }

    /// Spill forwards into files under `dir` once more than `budget` bytes
    /// are staged in memory (set once; the directory is created, and
    /// emptied of what an earlier process left).
    pub fn spill_to(&self, dir: PathBuf, budget: usize) -> Result<()> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| {
            EngineError::Internal(format!(
                "creating the staging spill dir {}: {e}",
                dir.display()
            ))
        })?;
        let _ = self.spill.set((dir, budget));
        Ok(())
    }

    /// Staged bytes held in memory now.
    pub fn in_memory(&self) -> usize {
        self.in_memory.load(Ordering::Relaxed)
    }

    /// Items leave the staging: their memory is free again.
    fn released<'a>(&self, items: impl IntoIterator<Item = &'a StagedItem>) {
        let n: usize = items.into_iter().map(|i| i.data.in_memory()).sum();
        self.in_memory.fetch_sub(n, Ordering::Relaxed);
    }

    /// Write `blocks` to the spill file of `st`, creating it (unlinked at
    /// once) on first use.
    fn spill_blocks(
        &self,
        dir: &std::path::Path,
        xid: Xid,
        from: NodeId,
        st: &mut Staged,
        blocks: &[bytes::Bytes],
    ) -> std::io::Result<StagedData> {
        if st.spill.is_none() {
            let path = dir.join(format!("{xid}-{from}.forwards"));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            st.spill = Some((Arc::new(f), 0));
        }
        let Some((file, len)) = st.spill.as_mut() else {
            unreachable!("the spill file was just created")
        };
        let mut pieces = Vec::with_capacity(blocks.len());
        for b in blocks {
            file.write_all_at(b, *len)?;
            pieces.push((*len, b.len() as u64));
            *len += b.len() as u64;
        }
        Ok(StagedData::Spilled {
            file: file.clone(),
            pieces,
        })
    }

    /// Hold one forward; (`disk`, `segment`) holds this node's copy of its
    /// slice. The copy's rowids and block sequence move past the forwarded
    /// blocks', so that if this node becomes the slice's acting primary, a
    /// transaction it writes for can never reuse a rowid the staged one
    /// holds (which may yet be adopted and committed).
    pub fn stage(&self, disk: DiskId, segment: SegmentKind, req: pb::MirrorWriteRequest) {
        let data = if req.blocks.is_empty() {
            StagedData::Delete(req.deleted_rowids)
        } else {
            if let Some(d) = self.disks.get(disk as usize) {
                for b in &req.blocks {
                    d.reserve_past(segment, req.table, req.slice, b);
                }
            }
            StagedData::Blocks(req.blocks)
        };
        let item = StagedItem {
            disk,
            segment,
            table: req.table,
            slice: req.slice,
            request_id: req.request_id,
            data,
        };
        let mut staged = self.staged.lock();
        let st = staged
            .entry(req.xid)
            .or_default()
            .entry(req.from_node)
            .or_default();
        st.received += 1;
        let mut item = item;
        let bytes = item.data.in_memory();
        let over = self
            .spill
            .get()
            .filter(|(_, budget)| self.in_memory() + bytes > *budget);
        if let (Some((dir, _)), StagedData::Blocks(blocks)) = (over, &item.data) {
            match self.spill_blocks(dir, req.xid, req.from_node, st, blocks) {
                Ok(spilled) => item.data = spilled,
                // Kept in memory: the budget is exceeded, nothing is lost.
                Err(e) => {
                    tracing::warn!(xid = req.xid, error = %e, "a forward could not be spilled")
                }
            }
        }
        self.in_memory
            .fetch_add(item.data.in_memory(), Ordering::Relaxed);
        st.items.push(item);
    }

    /// Write what `from_node` staged for `xid` (but for `skip_slices`,
    /// degraded in it) into this node's copies and prepare the disks,
    /// refusing unless exactly `forwards` forwards arrived (a gap means this
    /// node restarted and lost some). A repeated prepare is answered as the
    /// first. Blocking: run it on a blocking thread.
    pub fn prepare(
        &self,
        xid: Xid,
        from_node: NodeId,
        forwards: u64,
        skip_slices: &[SliceId],
    ) -> Result<()> {
        let items = {
            let mut staged = self.staged.lock();
            let st = staged.entry(xid).or_default().entry(from_node).or_default();
            if st.was_prepared {
                return Ok(());
            }
            if st.received != forwards {
                let received = st.received;
                return Err(EngineError::InvalidRequest(format!(
                    "transaction {xid}: mirror node {} staged {received} of {forwards} forwards from node {from_node} (it restarted?)",
                    self.node
                )));
            }
            if !st.adopted.is_empty() {
                return Err(EngineError::InvalidRequest(format!(
                    "transaction {xid}: node {from_node}'s forwards were taken over by node {} (it was failed over)",
                    self.node
                )));
            }
            st.was_prepared = true;
            std::mem::take(&mut st.items)
        };
        self.released(&items);
        let mut per_disk: HashMap<DiskId, Vec<&StagedItem>> = HashMap::new();
        for item in items.iter().filter(|i| !skip_slices.contains(&i.slice)) {
            per_disk.entry(item.disk).or_default().push(item);
        }
        let mut applied = Vec::new();
        for (disk, items) in per_disk {
            let d = self.disk(disk)?;
            // Apply and prepare under the disk's commit lock, so the
            // node's own prepare of the same xid cannot interleave.
            d.prepare_after(xid, |d| {
                for item in items {
                    let rows = item.apply(d, xid)?;
                    applied.push(Applied {
                        request_id: item.request_id,
                        slice: item.slice,
                        disk,
                        rows,
                    });
                }
                Ok(())
            })?;
        }
        if let Some(st) = self
            .staged
            .lock()
            .get_mut(&xid)
            .and_then(|m| m.get_mut(&from_node))
        {
            st.prepared = applied;
        }
        Ok(())
    }

    /// Take what `from_node` forwarded for `xid` of `slices` (its primary
    /// failed; this node now serves them): the forwards still staged, to
    /// be written by the caller as this node's own, and those the
    /// primary's prepare already wrote here. The forwards are gone from the
    /// staging afterwards: a late prepare from `from_node` is refused.
    pub fn take_for_adoption(&self, xid: Xid, from_node: NodeId, slices: &[SliceId]) -> Adoption {
        let mut staged = self.staged.lock();
        let st = staged.entry(xid).or_default().entry(from_node).or_default();
        let (to_apply, keep): (Vec<StagedItem>, Vec<StagedItem>) = std::mem::take(&mut st.items)
            .into_iter()
            .partition(|i| slices.contains(&i.slice));
        st.items = keep;
        let (already_applied, keep): (Vec<Applied>, Vec<Applied>) =
            std::mem::take(&mut st.prepared)
                .into_iter()
                .partition(|a| slices.contains(&a.slice));
        st.prepared = keep;
        self.released(&to_apply);
        let earlier = st
            .adopted
            .iter()
            .filter(|a| slices.contains(&a.slice))
            .copied()
            .collect();
        Adoption {
            to_apply,
            already_applied,
            earlier,
        }
    }

    /// Record forwards of (`xid`, `from_node`) adopted by this node.
    pub fn note_adopted(&self, xid: Xid, from_node: NodeId, adopted: &[Applied]) {
        self.staged
            .lock()
            .entry(xid)
            .or_default()
            .entry(from_node)
            .or_default()
            .adopted
            .extend_from_slice(adopted);
    }

    /// The disk with id `disk`.
    pub fn disk(&self, disk: DiskId) -> Result<&Arc<DiskStore>> {
        self.disks
            .get(disk as usize)
            .ok_or_else(|| EngineError::Internal(format!("no disk {disk}")))
    }

    /// Drop whatever is staged for `xid` (it ended).
    pub fn discard(&self, xid: Xid) {
        if let Some(m) = self.staged.lock().remove(&xid) {
            self.released(m.values().flat_map(|st| &st.items));
        }
    }

    /// The transactions with something staged.
    pub fn open_xids(&self) -> Vec<Xid> {
        self.staged.lock().keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::*;
    use crate::store::{DiskStore, Snapshot};

    const M: SegmentKind = SegmentKind::Mirror;

    /// A primary's store and its mirror's, each with table 1.
    fn primary_and_mirror(dir: &std::path::Path) -> (DiskStore, Arc<DiskStore>) {
        let primary = DiskStore::create(&dir.join("p.img"), IDS, small_init(), opts(100)).unwrap();
        let mirror =
            Arc::new(DiskStore::create(&dir.join("m.img"), IDS, small_init(), opts(100)).unwrap());
        for s in [&primary, mirror.as_ref()] {
            s.create_table(1, schema()).unwrap();
        }
        (primary, mirror)
    }

    /// Forwards of a transaction larger than the memory budget go to the
    /// spill file; prepare writes them all (same rows, same rowids as the
    /// primary), commit publishes them, and the memory is free again.
    #[test]
    fn forwards_past_the_memory_budget_spill_and_prepare_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (primary, mirror) = primary_and_mirror(dir.path());
        let staging = Staging::new(1, vec![mirror.clone()]);
        staging.spill_to(dir.path().join("spill"), 4096).unwrap();
        let xid = 7;
        let mut forwards = 0;
        let (mut peak, mut total) = (0, 0);
        for i in 0..20 {
            let (_, blocks) = primary
                .append_for_mirror(SegmentKind::Primary, 1, 0, xid, &rows(i * 150, 150))
                .unwrap();
            total += blocks.iter().map(|b| b.len()).sum::<usize>();
            staging.stage(
                0,
                M,
                pb::MirrorWriteRequest {
                    xid,
                    table: 1,
                    slice: 0,
                    blocks: blocks.into_iter().map(bytes::Bytes::from).collect(),
                    seq: i as u64 + 1,
                    from_node: 0,
                    request_id: i as u64 + 1,
                    ..Default::default()
                },
            );
            forwards += 1;
            peak = peak.max(staging.in_memory());
        }
        assert!(
            total > 4 * 4096,
            "the transaction is larger than the budget: {total}"
        );
        assert!(
            peak <= 4096 + 4096,
            "memory held past the budget: {peak} of {total}"
        );
        assert!(
            std::fs::read_dir(dir.path().join("spill")).unwrap().count() == 0,
            "the spill file is unlinked at once"
        );
        staging.prepare(xid, 0, forwards, &[]).unwrap();
        assert_eq!(staging.in_memory(), 0);
        primary.prepare(xid).unwrap();
        primary.commit(xid).unwrap();
        mirror.commit(xid).unwrap();
        let now = Snapshot::latest();
        let a = primary.checksum(SegmentKind::Primary, 1, 0, &now).unwrap();
        let b = mirror.checksum(M, 1, 0, &now).unwrap();
        assert_eq!(a, b, "the mirror holds what the primary wrote");
        assert_eq!(b.rows, 3000);
    }

    /// A failed primary's forwards are adopted once: a second adoption
    /// answers the same requests and adds nothing; its late prepare is
    /// refused; a staged forward moves the copy's rowids past its own.
    #[test]
    fn adoption_takes_the_forwards_once_and_refuses_the_late_prepare() {
        let dir = tempfile::tempdir().unwrap();
        let (primary, mirror) = primary_and_mirror(dir.path());
        let staging = Staging::new(1, vec![mirror.clone()]);
        let xid = 9;
        let (_, blocks) = primary
            .append_for_mirror(SegmentKind::Primary, 1, 0, xid, &rows(0, 250))
            .unwrap();
        staging.stage(
            0,
            M,
            pb::MirrorWriteRequest {
                xid,
                table: 1,
                slice: 0,
                blocks: blocks.into_iter().map(bytes::Bytes::from).collect(),
                seq: 1,
                from_node: 0,
                request_id: 42,
                ..Default::default()
            },
        );
        // Another transaction written by the mirror as acting primary takes
        // rowids after the staged ones.
        mirror.append(M, 1, 0, 10, &rows(1000, 5)).unwrap();
        let taken = staging.take_for_adoption(xid, 0, &[0]);
        assert_eq!(taken.to_apply.len(), 1);
        let rows_written = taken.to_apply[0].apply(&mirror, xid).unwrap();
        assert_eq!(rows_written, 250);
        staging.note_adopted(
            xid,
            0,
            &[Applied {
                request_id: 42,
                slice: 0,
                disk: 0,
                rows: rows_written,
            }],
        );
        let again = staging.take_for_adoption(xid, 0, &[0]);
        assert!(again.to_apply.is_empty() && again.already_applied.is_empty());
        assert_eq!(again.earlier.len(), 1);
        assert_eq!(again.earlier[0].request_id, 42);
        assert!(
            staging.prepare(xid, 0, 1, &[]).is_err(),
            "a late prepare of the failed primary"
        );
        mirror.prepare(xid).unwrap();
        mirror.prepare(10).unwrap();
        mirror.commit(xid).unwrap();
        mirror.commit(10).unwrap();
        let c = mirror.checksum(M, 1, 0, &Snapshot::latest()).unwrap();
        assert_eq!(c.rows, 255, "no rowid was given twice");
    }
}
