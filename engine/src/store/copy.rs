//! A slice copy, the store's two ends: what a source sends of one copy of a
//! slice (its committed blocks and deletes, all of them or only those of
//! the transactions in a range of xids, for an incremental resync), and how
//! a target takes them in.
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

use std::ops::Range;

use super::repair::StoredBlock;
use super::{CopyDrop, DiskStore, StreamKey};
use crate::block;
use crate::disk::meta::DeleteRunMeta;
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
}

impl DiskStore {
    /// The committed state of one copy of a slice that a copy sends: every
    /// block whose newest row was created by an xid in `xids` (a block is
    /// written by one transaction, so it lies wholly inside or outside; a
    /// groomed block counts where its newest row does), and every delete
    /// made by an xid in `xids`. `0..Xid::MAX` is the whole copy.
    pub fn export_slice(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        xids: Range<Xid>,
    ) -> Result<SliceExport> {
        let key = StreamKey {
            segment,
            table,
            slice,
        };
        let inner = self.inner.lock();
        if !inner.tables.contains_key(&table) {
            return Err(EngineError::TableNotFound(table));
        }
        let Some(s) = inner.streams.get(&key) else {
            return Ok(SliceExport::default());
        };
        let disk = self.sb.disk_id;
        let blocks: Vec<StoredBlock> = s
            .committed
            .iter()
            .filter(|b| xids.contains(&b.meta.createxid_max))
            .map(|b| StoredBlock::new(disk, segment, table, slice, &b.meta))
            .collect();
        let deletes = s
            .deletes
            .iter()
            .filter(|(_, x)| xids.contains(x))
            .map(|(&r, &x)| (r, x))
            .collect();
        Ok(SliceExport {
            bytes: blocks.iter().map(|b| b.length).sum(),
            blocks,
            deletes,
        })
    }

    /// The bytes of one exported block, verified (a block that fails goes
    /// through the repair seam, and what that returns is verified too).
    pub fn read_exported(&self, stored: &StoredBlock) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; stored.length as usize];
        self.dev.read_at(stored.offset, &mut buf)?;
        match block::inspect_block(&buf, stored.table, stored.slice) {
            Ok(_) => Ok(buf),
            Err(e @ (EngineError::ChecksumMismatch { .. } | EngineError::CorruptBlock { .. })) => {
                let good = self.opts.repair.repair(stored, e)?;
                block::inspect_block(&good, stored.table, stored.slice)?;
                Ok(good)
            }
            Err(e) => Err(e),
        }
    }

    /// Take in deletes a copy sent: each rowid deleted by the xid it names,
    /// pending under `xid` (the copy's) until commit. No conflict check: the
    /// source checked when the rows were deleted. Returns the records taken.
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
        inner
            .pending
            .entry(xid)
            .or_default()
            .deletes
            .entry(key)
            .or_default()
            .extend_from_slice(records);
        Ok(records.len() as u64)
    }

    /// Start a resync of one copy: at commit, it loses the blocks created
    /// and the deletes made by xids at or after `from` (what the source
    /// then sends again, [`DiskStore::export_slice`] with `from..`), in the
    /// same metadata generation that adds what the copy took in. Refused
    /// when a block holds rows of xids on both sides of `from` (then only a
    /// whole copy will do).
    pub fn resync_from(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        xid: Xid,
        from: Xid,
    ) -> Result<()> {
        self.check_writable(xid)?;
        let key = StreamKey {
            segment,
            table,
            slice,
        };
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        if !inner.tables.contains_key(&table) {
            return Err(EngineError::TableNotFound(table));
        }
        if let Some(s) = inner.streams.get(&key) {
            if let Some(b) = s
                .committed
                .iter()
                .find(|b| b.meta.createxid_min < from && from <= b.meta.createxid_max)
            {
                return Err(EngineError::InvalidRequest(format!(
                    "block {} of table {table} slice {slice} holds rows of xids {}..={}, \
                     on both sides of {from}: copy the slice whole",
                    b.meta.seq, b.meta.createxid_min, b.meta.createxid_max
                )));
            }
        }
        Self::mark_dirty(inner, xid)?;
        let t = inner.pending.entry(xid).or_default();
        t.drops.retain(|d| d.key != key);
        t.drops.push(CopyDrop {
            key,
            from,
            run: None,
        });
        Ok(())
    }

    /// Write the surviving deletes of every stream `xid` resyncs as one
    /// delete run (not yet synced), at commit.
    pub(super) fn write_drop_runs(&self, xid: Xid) -> Result<()> {
        let todo: Vec<(StreamKey, Vec<(i64, Xid)>)> = {
            let inner = self.inner.lock();
            let Some(t) = inner.pending.get(&xid) else {
                return Ok(());
            };
            t.drops
                .iter()
                .map(|d| {
                    let kept = inner
                        .streams
                        .get(&d.key)
                        .map(|s| {
                            s.deletes
                                .iter()
                                .filter(|(_, &x)| x < d.from)
                                .map(|(&r, &x)| (r, x))
                                .collect()
                        })
                        .unwrap_or_default();
                    (d.key, kept)
                })
                .collect()
        };
        for (key, kept) in todo {
            let run = if kept.is_empty() {
                None
            } else {
                let bytes = block::encode_delete_run(key.table, key.slice, &kept);
                let offset = self.allocate(key, bytes.len() as u64)?;
                self.dev.write_at(offset, &bytes)?;
                Some(DeleteRunMeta {
                    offset,
                    length: bytes.len() as u64,
                    count: kept.len() as u64,
                })
            };
            let mut inner = self.inner.lock();
            if let Some(d) = inner
                .pending
                .get_mut(&xid)
                .and_then(|t| t.drops.iter_mut().find(|d| d.key == key))
            {
                d.run = run;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::*;
    use crate::store::{DiskStore, Snapshot};

    const P: SegmentKind = SegmentKind::Primary;
    const M: SegmentKind = SegmentKind::Mirror;

    /// Copy what `from` exports of (P, 1, 0) in `xids` into `to`'s mirror
    /// segment under `xid`, and commit.
    fn copy(from: &DiskStore, to: &DiskStore, xids: Range<Xid>, xid: Xid) -> SliceExport {
        let export = from.export_slice(P, 1, 0, xids).unwrap();
        for b in &export.blocks {
            let bytes = from.read_exported(b).unwrap();
            to.append_encoded(M, 1, 0, xid, &bytes).unwrap();
        }
        to.delete_copied(M, 1, 0, xid, &export.deletes).unwrap();
        to.commit(xid).unwrap();
        export
    }

    fn checksum(s: &DiskStore, seg: SegmentKind, snap: &Snapshot) -> crate::store::SliceChecksum {
        s.checksum(seg, 1, 0, snap).unwrap()
    }

    #[test]
    fn a_copy_holds_the_same_rows_rowids_and_deletes_and_an_incremental_one_only_the_new() {
        let dir = tempfile::tempdir().unwrap();
        let src =
            DiskStore::create(&dir.path().join("a.img"), IDS, small_init(), opts(100)).unwrap();
        let dst =
            DiskStore::create(&dir.path().join("b.img"), IDS, small_init(), opts(100)).unwrap();
        for s in [&src, &dst] {
            s.create_table(1, schema()).unwrap();
        }
        src.append(P, 1, 0, 5, &rows(0, 250)).unwrap();
        src.commit(5).unwrap();
        src.delete(P, 1, 0, 6, &[3, 4, 200], None).unwrap();
        src.commit(6).unwrap();

        let first = copy(&src, &dst, 0..Xid::MAX, 100);
        assert_eq!(first.blocks.len(), 3, "250 rows in blocks of 100");
        assert_eq!(first.deletes, vec![(3, 6), (4, 6), (200, 6)]);
        let now = Snapshot::latest();
        assert_eq!(checksum(&src, P, &now), checksum(&dst, M, &now));
        assert_eq!(checksum(&dst, M, &now).rows, 247);
        // A reader that does not see xid 6 sees the deleted rows on the
        // copy too: the deletes kept their own xid, not the copy's.
        let before_6 = Snapshot {
            xmax: 6,
            xip: Vec::new(),
            own: None,
        };
        assert_eq!(checksum(&dst, M, &before_6).rows, 250);
        assert_eq!(checksum(&src, P, &before_6), checksum(&dst, M, &before_6));

        // Later transactions: an incremental copy sends only them.
        src.append(P, 1, 0, 7, &rows(250, 30)).unwrap();
        src.commit(7).unwrap();
        src.delete(P, 1, 0, 8, &[10], None).unwrap();
        src.commit(8).unwrap();
        let next = copy(&src, &dst, 7..Xid::MAX, 101);
        assert_eq!(next.blocks.len(), 1);
        assert_eq!(next.deletes, vec![(10, 8)]);
        assert!(next.bytes < first.bytes);
        assert_eq!(checksum(&src, P, &now), checksum(&dst, M, &now));
        assert_eq!(checksum(&dst, M, &now).rows, 276);

        // What the copy committed survives a reopen.
        drop(dst);
        let dst = DiskStore::open(&dir.path().join("b.img"), opts(100)).unwrap();
        assert_eq!(checksum(&src, P, &now), checksum(&dst, M, &now));
        assert_eq!(checksum(&dst, M, &before_6).rows, 250);
    }

    #[test]
    fn an_interrupted_copy_leaves_nothing_and_a_bad_block_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src =
            DiskStore::create(&dir.path().join("a.img"), IDS, small_init(), opts(100)).unwrap();
        src.create_table(1, schema()).unwrap();
        src.append(P, 1, 0, 5, &rows(0, 150)).unwrap();
        src.commit(5).unwrap();
        let path = dir.path().join("b.img");
        let dst = DiskStore::create(&path, IDS, small_init(), opts(100)).unwrap();
        dst.create_table(1, schema()).unwrap();
        let export = src.export_slice(P, 1, 0, 0..Xid::MAX).unwrap();
        let bytes = src.read_exported(&export.blocks[0]).unwrap();
        dst.append_encoded(M, 1, 0, 100, &bytes).unwrap();
        // Not committed: the target dies here.
        drop(dst);
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
    }

    /// A copy that was in step up to xid 6, then missed 7 and 8 while the
    /// source went on; meanwhile the copy itself holds a transaction (9)
    /// the source never committed. A resync from 7 replaces what the copy
    /// has of 7 onwards with what the source has: only the new blocks
    /// travel, and the copy ends equal to the source.
    #[test]
    fn a_resync_replaces_what_the_copy_has_from_an_xid_on_with_the_sources() {
        let dir = tempfile::tempdir().unwrap();
        let src =
            DiskStore::create(&dir.path().join("a.img"), IDS, small_init(), opts(100)).unwrap();
        let path = dir.path().join("b.img");
        let dst = DiskStore::create(&path, IDS, small_init(), opts(100)).unwrap();
        for s in [&src, &dst] {
            s.create_table(1, schema()).unwrap();
        }
        src.append(P, 1, 0, 5, &rows(0, 300)).unwrap();
        src.commit(5).unwrap();
        src.delete(P, 1, 0, 6, &[1, 2], None).unwrap();
        src.commit(6).unwrap();
        let whole = copy(&src, &dst, 0..Xid::MAX, 100);
        // The copy alone: a row and a delete the source never had.
        dst.append(M, 1, 0, 9, &rows(1000, 5)).unwrap();
        dst.delete(M, 1, 0, 9, &[50], None).unwrap();
        dst.commit(9).unwrap();
        // The source alone.
        src.append(P, 1, 0, 7, &rows(300, 40)).unwrap();
        src.commit(7).unwrap();
        src.delete(P, 1, 0, 8, &[3, 60], None).unwrap();
        src.commit(8).unwrap();
        let now = Snapshot::latest();
        assert_ne!(checksum(&src, P, &now), checksum(&dst, M, &now));

        dst.resync_from(M, 1, 0, 101, 7).unwrap();
        let delta = copy(&src, &dst, 7..Xid::MAX, 101);
        assert_eq!(delta.blocks.len(), 1, "only xid 7's block travels");
        assert!(
            delta.bytes * 3 < whole.bytes,
            "{} vs {}",
            delta.bytes,
            whole.bytes
        );
        assert_eq!(checksum(&src, P, &now), checksum(&dst, M, &now));
        assert_eq!(checksum(&dst, M, &now).rows, 336);
        let before_8 = Snapshot {
            xmax: 8,
            xip: Vec::new(),
            own: None,
        };
        assert_eq!(checksum(&src, P, &before_8), checksum(&dst, M, &before_8));
        // And after a reopen (the surviving deletes were rewritten).
        drop(dst);
        let dst = DiskStore::open(&path, opts(100)).unwrap();
        assert_eq!(checksum(&src, P, &now), checksum(&dst, M, &now));
        assert_eq!(checksum(&src, P, &before_8), checksum(&dst, M, &before_8));

        // A copy commits without prepare.
        dst.resync_from(M, 1, 0, 102, 7).unwrap();
        assert!(matches!(
            dst.prepare(102),
            Err(EngineError::InvalidRequest(_))
        ));
        dst.abort(102).unwrap();
    }
}
