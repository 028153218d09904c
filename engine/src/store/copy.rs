//! A slice copy, the store's two ends: what a source sends of one copy of a
//! slice (its committed blocks and deletes: all of them, or for an
//! incremental resync only the blocks of transactions the target has not
//! committed), and how a target takes them in.
//!
//! A transaction's effects on one copy are committed all at once or not at
//! all, and each block is written by one transaction, so the set of xids
//! whose blocks a copy holds says exactly which blocks it lacks. Commit
//! order does not matter (xids commit out of order). Deletes always travel
//! whole (16 bytes each) and the target skips those it has.
//!
//! One rule for whoever schedules a resync: GROOM on the source must not
//! have removed deletes the target lacks (their rows are gone from a block
//! whose xid the target holds, so neither the block nor the deletes would
//! travel). The coordinator must keep GROOM's horizon at or below the
//! oldest xid that was unfinished when a copy went stale, until it is
//! resynced (not built yet: nothing schedules resyncs yet).
//!
//! Copies are logical: the target writes the source's block bytes as they
//! are (verified on arrival: [`DiskStore::append_encoded`]) into its own
//! extents, so rows keep their rowids and createxids, and each delete keeps
//! the xid that made it on the source. What a target takes in is pending
//! under the copy's own xid until `commit`, which makes it durable and
//! visible at once; an interrupted copy leaves nothing behind.
//!
//! It never reaches the network (the node server streams what it exports)
//! and never decides which copy is the source or when a copy is complete
//! (the coordinator's system manager does).

use super::repair::StoredBlock;
use super::{DiskStore, StreamKey};
use crate::block;
use crate::disk::SegmentKind;
use crate::{EngineError, Result, SliceId, TableId, Xid};

/// What a copy of one (segment, table, slice) sends, as of one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceExport {
    /// Committed blocks, in stream order, to read with
    /// [`DiskStore::read_exported`].
    pub blocks: Vec<StoredBlock>,
    /// Committed deletes: (rowid, the xid that deleted it).
    pub deletes: Vec<(i64, Xid)>,
    /// Bytes of the blocks.
    pub bytes: u64,
    /// Keeps the blocks' space from reuse until the export is dropped
    /// (None for an empty one).
    pub hold: Option<std::sync::Arc<super::reclaim::ReadHold>>,
}

impl DiskStore {
    /// The store's state, locked, once `table` is known to exist.
    fn lock_table(&self, table: TableId) -> Result<parking_lot::MutexGuard<'_, super::Inner>> {
        let inner = self.inner.lock();
        if !inner.tables.contains_key(&table) {
            return Err(EngineError::TableNotFound(table));
        }
        Ok(inner)
    }

    /// The xids whose effects this copy of a slice holds or will hold
    /// (sorted): those of its committed blocks, and every transaction
    /// prepared on it (forwarded, or in doubt after a crash): its own commit
    /// or abort finishes it here, so the source must not send its blocks
    /// too. A transaction open here but never prepared is not held: it can
    /// only be aborted here (a commit of it aborts it, its work having been
    /// carried over to another node), so if it committed elsewhere the
    /// source sends it. What an incremental resync tells its source it
    /// already has.
    pub fn copy_xids(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
    ) -> Result<Vec<Xid>> {
        let key = StreamKey {
            segment,
            table,
            slice,
        };
        let inner = self.lock_table(table)?;
        let open: Vec<Xid> = inner
            .pending
            .iter()
            .filter(|(_, t)| {
                t.prepared
                    && (t.blocks.iter().any(|b| b.key == key)
                        || t.deletes.contains_key(&key)
                        || t.runs.iter().any(|r| r.0 == key))
            })
            .map(|(&x, _)| x)
            .collect();
        let mut xids: Vec<Xid> = inner
            .streams
            .get(&key)
            .map(|s| {
                s.committed
                    .iter()
                    .flat_map(|b| [b.meta.createxid_min, b.meta.createxid_max])
                    .collect()
            })
            .unwrap_or_default();
        xids.extend(open);
        xids.sort_unstable();
        xids.dedup();
        Ok(xids)
    }

    /// The committed state of one copy of a slice that a copy sends: every
    /// block but those the target holds already (`have`, sorted: the xids of
    /// its blocks, [`DiskStore::copy_xids`]; empty for a whole copy), and
    /// every delete.
    pub fn export_slice(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        have: &[Xid],
    ) -> Result<SliceExport> {
        let key = StreamKey {
            segment,
            table,
            slice,
        };
        let inner = self.lock_table(table)?;
        let Some(s) = inner.streams.get(&key) else {
            return Ok(SliceExport::default());
        };
        // Registered under `inner`: a drop after this parks what it frees.
        let hold = Some(std::sync::Arc::new(self.hold_reads()));
        let held = |x: Xid| have.binary_search(&x).is_ok();
        let disk = self.sb.disk_id;
        let blocks: Vec<StoredBlock> = s
            .committed
            .iter()
            .filter(|b| !(held(b.meta.createxid_min) && held(b.meta.createxid_max)))
            .map(|b| StoredBlock::new(disk, segment, table, slice, &b.meta))
            .collect();
        let deletes = s.deletes.iter().map(|(&r, &x)| (r, x)).collect();
        Ok(SliceExport {
            bytes: blocks.iter().map(|b| b.length).sum(),
            blocks,
            deletes,
            hold,
        })
    }

    /// The copies this disk holds in its primary and mirror segments: every
    /// (segment, slice) with committed blocks or deletes of some table.
    pub fn held_copies(&self) -> Vec<(SegmentKind, SliceId)> {
        let inner = self.inner.lock();
        let mut held: Vec<(SegmentKind, SliceId)> = inner
            .streams
            .iter()
            .filter(|(k, s)| {
                k.segment != SegmentKind::Temp
                    && (!s.committed.is_empty() || !s.deletes.is_empty() || !s.extents.is_empty())
            })
            .map(|(k, _)| (k.segment, k.slice))
            .collect();
        held.sort_unstable_by_key(|&(seg, slice)| (seg.index(), slice));
        held.dedup();
        held
    }

    /// Drop this disk's copy of `slice` in `segment`, every table's blocks
    /// and deletes, and free its extents: a copy the map no longer places
    /// here (it was regenerated elsewhere). Crash-safe: one metadata
    /// generation stops listing it, and only then is its space reused.
    /// Nothing happens (`None`) while a transaction has work pending on it;
    /// otherwise answers the bytes freed.
    pub fn drop_copy(&self, segment: SegmentKind, slice: SliceId) -> Result<Option<u64>> {
        if self.read_only {
            return Err(super::read_only_err());
        }
        let ours = |k: &StreamKey| k.segment == segment && k.slice == slice;
        let _c = self.commit_lock.lock();
        // Wait for appends still writing into its extents.
        let _gate = self.io_gate.write();
        let (generation, mut state) = {
            let inner = self.inner.lock();
            if !inner.streams.keys().any(ours) {
                return Ok(Some(0));
            }
            let busy = inner.pending.values().any(|t| {
                t.blocks.iter().any(|b| ours(&b.key))
                    || t.deletes.keys().any(ours)
                    || t.runs.iter().any(|r| ours(&r.0))
            });
            if busy {
                return Ok(None);
            }
            (inner.generation + 1, Self::meta_state(&inner, None))
        };
        state.streams.retain(|s| !ours(&s.key));
        self.write_generation(generation, &state)?;
        if let Some(c) = &self.cache {
            c.remove_copy(segment, slice);
        }
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        inner.generation = generation;
        let keys: Vec<StreamKey> = inner.streams.keys().filter(|k| ours(k)).copied().collect();
        let mut freed = 0;
        for k in keys {
            if let Some(s) = inner.streams.remove(&k) {
                // An export or scan still running may read them.
                freed += self.release_runs(inner, k.segment, s.extents);
            }
        }
        inner.locks.retain(|k, _| !ours(k));
        Ok(Some(freed))
    }

    /// How many blocks `xid` has pending (a copy checks, before its commit,
    /// that nothing aborted it underneath).
    pub fn pending_blocks(&self, xid: Xid) -> usize {
        self.inner
            .lock()
            .pending
            .get(&xid)
            .map_or(0, |t| t.blocks.len())
    }

    /// Start reading an exported block into the cache (a hint, see
    /// [`crate::disk::BlockDevice::read_ahead`]).
    pub fn read_ahead_exported(&self, stored: &StoredBlock) {
        self.dev.read_ahead(stored.offset, stored.length);
    }

    /// The bytes of one exported block, verified (a block that fails goes
    /// through the repair seam, and what that returns is verified too).
    pub fn read_exported(&self, stored: &StoredBlock) -> Result<Vec<u8>> {
        let buf = match self.dev.read_vec(stored.offset, stored.length as usize) {
            Ok(buf) => buf,
            Err(e) => return self.repaired_export(stored, e),
        };
        match block::inspect_block(&buf, stored.table, stored.slice) {
            Ok(_) => Ok(buf),
            Err(e @ (EngineError::ChecksumMismatch { .. } | EngineError::CorruptBlock { .. })) => {
                self.counters.checksum_failed();
                self.repaired_export(stored, e)
            }
            Err(e) => Err(e),
        }
    }

    /// An exported block repaired through the seam. A repair that took in
    /// fewer rows (the other copy had groomed some away) rewrote the block
    /// and dropped the deletes the export already sent: this copy fails,
    /// and the next one reads the copy as it is now.
    fn repaired_export(&self, stored: &StoredBlock, error: EngineError) -> Result<Vec<u8>> {
        let good = self.opts.repair.repair(stored, error)?;
        block::inspect_block(&good.bytes, stored.table, stored.slice)?;
        if good.rows != stored.rows {
            return Err(EngineError::InvalidRequest(format!(
                "block {} of table {} slice {} was rewritten without rows groomed on the other copy while this copy read it: copy again",
                stored.seq, stored.table, stored.slice
            )));
        }
        Ok(good.bytes)
    }

    /// Take in deletes a copy sent: each rowid deleted by the xid it names,
    /// pending under `xid` (the copy's) until commit; rows this copy has
    /// deleted already are skipped. No conflict check: the source checked
    /// when the rows were deleted. Returns the records taken.
    pub fn delete_copied(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        xid: Xid,
        records: &[(i64, Xid)],
    ) -> Result<u64> {
        self.check_writable(xid)?;
        if let Some(&(r, _)) = records.iter().find(|(_, x)| *x == 0) {
            return Err(EngineError::InvalidRequest(format!(
                "copied delete of rowid {r} names no xid"
            )));
        }
        let key = StreamKey {
            segment,
            table,
            slice,
        };
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        Self::begin_change(inner, table, xid)?;
        let committed = inner
            .streams
            .get(&key)
            .map(|s| s.deletes.clone())
            .unwrap_or_default();
        let fresh: Vec<(i64, Xid)> = records
            .iter()
            .filter(|(r, _)| !committed.contains_key(r))
            .copied()
            .collect();
        let n = fresh.len() as u64;
        inner
            .pending
            .entry(xid)
            .or_default()
            .deletes
            .entry(key)
            .or_default()
            .extend(fresh);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::*;
    use crate::store::{DiskStore, Snapshot};

    const P: SegmentKind = SegmentKind::Primary;
    const M: SegmentKind = SegmentKind::Mirror;

    /// Copy (P, 1, 0) of `from` into `to`'s mirror segment under `xid` and
    /// commit: whole, or only what `to` lacks. Returns what was sent and
    /// how many deletes `to` took.
    fn copy(from: &DiskStore, to: &DiskStore, incremental: bool, xid: Xid) -> (SliceExport, u64) {
        let have = if incremental {
            to.copy_xids(M, 1, 0).unwrap()
        } else {
            Vec::new()
        };
        let export = from.export_slice(P, 1, 0, &have).unwrap();
        for b in &export.blocks {
            let bytes = from.read_exported(b).unwrap();
            to.append_encoded(M, 1, 0, xid, &bytes).unwrap();
        }
        let taken = to.delete_copied(M, 1, 0, xid, &export.deletes).unwrap();
        to.commit(xid).unwrap();
        (export, taken)
    }

    fn checksum(s: &DiskStore, seg: SegmentKind, snap: &Snapshot) -> crate::store::SliceChecksum {
        s.checksum(seg, 1, 0, snap).unwrap()
    }

    fn stores(dir: &std::path::Path) -> (DiskStore, DiskStore) {
        let src = DiskStore::create(&dir.join("a.img"), IDS, small_init(), opts(100)).unwrap();
        let dst = DiskStore::create(&dir.join("b.img"), IDS, small_init(), opts(100)).unwrap();
        for s in [&src, &dst] {
            s.create_table(1, schema()).unwrap();
        }
        (src, dst)
    }

    #[test]
    fn a_copy_holds_the_same_rows_rowids_and_deletes_and_an_incremental_one_only_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = stores(dir.path());
        src.append(P, 1, 0, 5, &rows(0, 250)).unwrap();
        src.commit(5).unwrap();
        src.delete(P, 1, 0, 6, &[3, 4, 200], None).unwrap();
        src.commit(6).unwrap();

        let (first, taken) = copy(&src, &dst, false, 100);
        assert_eq!(first.blocks.len(), 3, "250 rows in blocks of 100");
        assert_eq!(first.deletes, vec![(3, 6), (4, 6), (200, 6)]);
        assert_eq!(taken, 3);
        let now = Snapshot::latest();
        assert_eq!(checksum(&src, P, &now), checksum(&dst, M, &now));
        assert_eq!(checksum(&dst, M, &now).rows, 247);
        // A reader that does not see xid 6 sees the deleted rows on the
        // copy too: the deletes kept their own xid, not the copy's.
        let before_6 = snap(6, &[], None);
        assert_eq!(checksum(&dst, M, &before_6).rows, 250);
        assert_eq!(checksum(&src, P, &before_6), checksum(&dst, M, &before_6));

        // Later transactions: an incremental copy sends only their blocks.
        src.append(P, 1, 0, 7, &rows(250, 30)).unwrap();
        src.commit(7).unwrap();
        src.delete(P, 1, 0, 8, &[10], None).unwrap();
        src.commit(8).unwrap();
        let (next, taken) = copy(&src, &dst, true, 101);
        assert_eq!(next.blocks.len(), 1);
        assert_eq!(taken, 1, "only the new delete is taken");
        assert!(
            next.bytes * 3 < first.bytes,
            "{} vs {}",
            next.bytes,
            first.bytes
        );
        assert_eq!(checksum(&src, P, &now), checksum(&dst, M, &now));
        assert_eq!(checksum(&dst, M, &now).rows, 276);

        // What the copy committed survives a reopen.
        drop(dst);
        let dst = DiskStore::open(&dir.path().join("b.img"), opts(100)).unwrap();
        assert_eq!(checksum(&src, P, &now), checksum(&dst, M, &now));
        assert_eq!(checksum(&dst, M, &before_6).rows, 250);
    }

    /// Xids commit out of order: 9 commits while 8 is still open, a resync
    /// happens, then 8 commits. The next resync still finds 8's block,
    /// although a higher xid was copied before it.
    #[test]
    fn a_resync_finds_what_committed_out_of_xid_order_and_survives_groom() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = stores(dir.path());
        src.append(P, 1, 0, 5, &rows(0, 300)).unwrap();
        src.commit(5).unwrap();
        copy(&src, &dst, false, 100);
        src.append(P, 1, 0, 8, &rows(300, 10)).unwrap();
        src.append(P, 1, 0, 9, &rows(400, 10)).unwrap();
        src.commit(9).unwrap();
        let (a, _) = copy(&src, &dst, true, 101);
        assert_eq!(a.blocks.len(), 1, "xid 9's block");
        src.commit(8).unwrap();
        let (b, _) = copy(&src, &dst, true, 102);
        assert_eq!(b.blocks.len(), 1, "xid 8's block, committed after 9");
        let now = Snapshot::latest();
        assert_eq!(checksum(&src, P, &now), checksum(&dst, M, &now));
        assert_eq!(checksum(&dst, M, &now).rows, 320);

        // Deletes reach the copy; then the source grooms (its dead rows are
        // gone, and so are their delete records, which the copy already
        // has): a resync sends nothing and the copy still answers the same.
        src.delete(P, 1, 0, 10, &[1, 2, 3], None).unwrap();
        src.commit(10).unwrap();
        let (_, taken) = copy(&src, &dst, true, 103);
        assert_eq!(taken, 3);
        src.groom(1, 11).unwrap();
        let (c, taken) = copy(&src, &dst, true, 104);
        assert_eq!((c.blocks.len(), taken), (0, 0));
        assert_eq!(checksum(&src, P, &now), checksum(&dst, M, &now));
        assert_eq!(checksum(&dst, M, &now).rows, 317);
    }

    #[test]
    fn an_interrupted_copy_leaves_nothing_and_bad_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = stores(dir.path());
        src.append(P, 1, 0, 5, &rows(0, 150)).unwrap();
        src.commit(5).unwrap();
        let export = src.export_slice(P, 1, 0, &[]).unwrap();
        let bytes = src.read_exported(&export.blocks[0]).unwrap();
        dst.append_encoded(M, 1, 0, 100, &bytes).unwrap();
        // Not committed: the target dies here.
        drop(dst);
        let path = dir.path().join("b.img");
        let dst = DiskStore::open(&path, opts(100)).unwrap();
        assert_eq!(checksum(&dst, M, &Snapshot::latest()).rows, 0);

        // A byte flipped in flight is caught on arrival.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n / 2] ^= 0x40;
        assert!(dst.append_encoded(M, 1, 0, 101, &bad).is_err());
        // A block of another slice is refused too.
        assert!(dst.append_encoded(M, 1, 1, 101, &bytes).is_err());
        // A copied delete must name its xid.
        assert!(matches!(
            dst.delete_copied(M, 1, 0, 101, &[(1, 0)]),
            Err(EngineError::InvalidRequest(_))
        ));
        dst.abort(101).unwrap();
        assert_eq!(dst.copy_xids(M, 1, 0).unwrap(), Vec::<Xid>::new());
    }

    /// A transaction a node wrote as primary and never prepared, whose work
    /// was carried over to the other copy (which committed it) while the
    /// node was failed over: when the node comes back, a resync sends that
    /// transaction's block (it is not held), and the commit that reaches the
    /// leftover aborts it, so the copy equals the source with no row twice.
    #[test]
    fn a_leftover_never_prepared_is_not_held_and_its_commit_aborts_it() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = stores(dir.path());
        src.append(P, 1, 0, 5, &rows(0, 100)).unwrap();
        src.commit(5).unwrap();
        copy(&src, &dst, false, 100);
        // Xid 7: the copy wrote it first (as primary), then was failed over;
        // the source took the same rows over and committed them.
        let (_, blocks) = dst.append_for_mirror(M, 1, 0, 7, &rows(100, 20)).unwrap();
        src.append_encoded(P, 1, 0, 7, &blocks[0]).unwrap();
        src.prepare(7).unwrap();
        src.commit(7).unwrap();
        assert_eq!(dst.copy_xids(M, 1, 0).unwrap(), vec![5], "7 is not held");
        let (sent, _) = copy(&src, &dst, true, 101);
        assert_eq!(sent.blocks.len(), 1, "xid 7's block is sent");
        dst.commit_prepared(7).unwrap();
        let now = Snapshot::latest();
        assert_eq!(checksum(&src, P, &now), checksum(&dst, M, &now));
        assert_eq!(checksum(&dst, M, &now).rows, 120);
    }

    /// A transaction in doubt on the copy after a crash (prepared there,
    /// committed on the source): a resync does not send its block, and
    /// when the resolver commits it on the copy, the copy equals the
    /// source, with no row twice.
    #[test]
    fn a_transaction_in_doubt_on_the_copy_is_left_to_its_own_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = stores(dir.path());
        src.append(P, 1, 0, 5, &rows(0, 100)).unwrap();
        src.commit(5).unwrap();
        copy(&src, &dst, false, 100);
        // Xid 7 reached both copies; the source committed, the copy only
        // prepared, then crashed.
        src.append(P, 1, 0, 7, &rows(100, 20)).unwrap();
        src.delete(P, 1, 0, 7, &[1], None).unwrap();
        src.commit(7).unwrap();
        let seven = src.export_slice(P, 1, 0, &[5]).unwrap();
        assert_eq!(seven.blocks.len(), 1);
        let bytes = src.read_exported(&seven.blocks[0]).unwrap();
        dst.append_encoded(M, 1, 0, 7, &bytes).unwrap();
        dst.delete(M, 1, 0, 7, &[1], None).unwrap();
        dst.prepare(7).unwrap();
        drop(dst);
        let dst = DiskStore::open(&dir.path().join("b.img"), opts(100)).unwrap();
        assert_eq!(dst.copy_xids(M, 1, 0).unwrap(), vec![5, 7]);
        let (sent, _) = copy(&src, &dst, true, 101);
        assert!(sent.blocks.is_empty(), "xid 7's block stays with xid 7");
        dst.commit(7).unwrap();
        let now = Snapshot::latest();
        assert_eq!(checksum(&src, P, &now), checksum(&dst, M, &now));
        assert_eq!(checksum(&dst, M, &now).rows, 119);
    }

    /// A copy the map no longer places on a disk is dropped whole: every
    /// table's blocks and deletes of that (segment, slice), durably, and
    /// its space is reused; other copies stay as they were. Not while a
    /// transaction has work pending on it.
    #[test]
    fn a_dropped_copy_is_gone_after_a_reopen_and_its_space_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = stores(dir.path());
        src.create_table(2, schema()).unwrap();
        src.append(P, 1, 0, 5, &rows(0, 250)).unwrap();
        src.append(P, 2, 0, 5, &rows(0, 50)).unwrap();
        src.append(P, 1, 1, 5, &rows(0, 100)).unwrap();
        src.append(M, 1, 2, 5, &rows(0, 100)).unwrap();
        src.commit(5).unwrap();
        src.delete(P, 1, 0, 6, &[3], None).unwrap();
        src.commit(6).unwrap();
        assert_eq!(src.held_copies(), vec![(P, 0), (P, 1), (M, 2)]);
        let now = Snapshot::latest();
        let kept = src.checksum(P, 1, 1, &now).unwrap();
        let used = |s: &DiskStore| {
            s.report()
                .segments
                .iter()
                .find(|g| g.kind == P)
                .unwrap()
                .used
        };
        let before = used(&src);

        // Pending work on the copy: nothing is dropped.
        src.append(P, 1, 0, 7, &rows(250, 10)).unwrap();
        assert_eq!(src.drop_copy(P, 0).unwrap(), None);
        src.abort(7).unwrap();

        let freed = src.drop_copy(P, 0).unwrap().unwrap();
        assert!(freed > 0);
        assert!(used(&src) < before, "{} then {}", before, used(&src));
        assert_eq!(src.held_copies(), vec![(P, 1), (M, 2)]);
        assert_eq!(src.drop_copy(P, 0).unwrap(), Some(0), "nothing left");
        drop(src);
        let src = DiskStore::open(&dir.path().join("a.img"), opts(100)).unwrap();
        assert_eq!(src.held_copies(), vec![(P, 1), (M, 2)]);
        assert_eq!(src.checksum(P, 1, 0, &now).unwrap().rows, 0);
        assert_eq!(src.checksum(P, 2, 0, &now).unwrap().rows, 0);
        assert_eq!(src.checksum(P, 1, 1, &now).unwrap(), kept);
        // The copy can be taken in again, into reused space.
        src.append(P, 1, 0, 8, &rows(0, 20)).unwrap();
        src.commit(8).unwrap();
        assert_eq!(src.checksum(P, 1, 0, &Snapshot::latest()).unwrap().rows, 20);
        drop(dst);
    }
}
