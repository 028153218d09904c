//! Groom: blocks holding rows deleted below a horizon rewritten without
//! them, and their delete records dropped.
//!
//! Rowids and createxids are kept, so both copies of a slice stay logically
//! equal. It must never remove a row a snapshot still open could see.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::compute::filter_record_batch;
use serde::Serialize;
use tracing::info;

use super::evolve::Widener;
use super::repair::{self, StoredBlock};
use super::{read_only_err, DiskStore, IndexedBlock, Stream};
use crate::block;
use crate::disk::meta::{BlockMeta, StreamKey};
use crate::{Result, TableId, Xid};

/// One stream a groom rewrites: its key, blocks and deletes as read.
type GroomWork = (
    StreamKey,
    Arc<Vec<Arc<IndexedBlock>>>,
    Arc<BTreeMap<i64, Xid>>,
);

/// What a groom did on one disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GroomStats {
    pub blocks_rewritten: u64,
    pub rows_removed: u64,
}

impl DiskStore {
    /// Rewrite every block of `table` on this disk (all segments) that holds
    /// rows deleted by a transaction below `horizon` (which no snapshot still
    /// open can miss), without those rows; drop their delete records. Rowids
    /// and createxids are kept, so both copies of a slice stay logically equal.
    pub fn groom(&self, table: TableId, horizon: Xid) -> Result<GroomStats> {
        if self.read_only {
            return Err(read_only_err());
        }
        let _c = self.commit_lock.lock();
        let _gate = self.io_gate.read();
        let (widener, work) = {
            let inner = self.inner.lock();
            let Some(t) = inner.tables.get(&table) else {
                return Ok(GroomStats::default());
            };
            let work: Vec<GroomWork> = inner
                .streams
                .iter()
                .filter(|(k, s)| k.table == table && s.deletes.values().any(|&x| x < horizon))
                .map(|(k, s)| (*k, s.committed.clone(), s.deletes.clone()))
                .collect();
            (t.widener(), work)
        };
        let mut stats = GroomStats::default();
        // (key, old block list len, new blocks, surviving deletes, new run)
        let mut results = Vec::new();
        for (key, blocks, deletes) in work {
            let dead: HashSet<i64> = deletes
                .iter()
                .filter(|(_, &x)| x < horizon)
                .map(|(&r, _)| r)
                .collect();
            let mut new_blocks: Vec<Arc<IndexedBlock>> = Vec::with_capacity(blocks.len());
            // Deleted rows a repair did not hand back (the other copy had
            // groomed them away): their deletes go with them.
            let mut absent: HashSet<i64> = HashSet::new();
            for b in blocks.iter() {
                let touched = deletes
                    .range(b.meta.rowid_min..=b.meta.rowid_max)
                    .any(|(r, _)| dead.contains(r));
                if !touched {
                    new_blocks.push(b.clone());
                    continue;
                }
                let on_disk =
                    StoredBlock::new(self.sb.disk_id, key.segment, table, key.slice, &b.meta);
                let batch = repair::read_block(
                    self.dev.as_ref(),
                    self.opts.repair.as_ref(),
                    &on_disk,
                    None,
                    &self.counters,
                )?;
                self.counters.read(key.segment, b.meta.length);
                let rowids = super::rowid_column(&batch)?;
                if (batch.num_rows() as u64) < b.meta.rows {
                    let read: HashSet<i64> = rowids.iter().flatten().collect();
                    absent.extend(
                        deletes
                            .range(b.meta.rowid_min..=b.meta.rowid_max)
                            .map(|(&r, _)| r)
                            .filter(|r| !read.contains(r)),
                    );
                }
                let keep: arrow::array::BooleanArray = rowids
                    .iter()
                    .map(|r| Some(!dead.contains(&r.unwrap_or(0))))
                    .collect();
                let kept = filter_record_batch(&batch, &keep)?;
                stats.blocks_rewritten += 1;
                stats.rows_removed += (batch.num_rows() - kept.num_rows()) as u64;
                if kept.num_rows() == 0 {
                    continue;
                }
                // An old block comes out with the table's columns now
                // (crate::store::evolve).
                let kept = widener.widen_all(&kept, Widener::block_width(&b.zones))?;
                let seq = {
                    let mut inner = self.inner.lock();
                    let s = inner.streams.entry(key).or_insert_with(Stream::empty);
                    s.next_seq += 1;
                    s.next_seq - 1
                };
                let enc = block::encode_block(table, key.slice, seq, &kept, self.opts.compression)?;
                let offset = self.allocate(key, enc.bytes.len() as u64)?;
                self.dev.write_at(offset, &enc.bytes)?;
                let h = &enc.header;
                new_blocks.push(Arc::new(IndexedBlock {
                    meta: BlockMeta {
                        offset,
                        length: enc.bytes.len() as u64,
                        seq,
                        rows: h.rows,
                        rowid_min: h.rowid_min,
                        rowid_max: h.rowid_max,
                        createxid_min: h.createxid_min,
                        createxid_max: h.createxid_max,
                        zones: Arc::from(enc.zone_bytes),
                    },
                    zones: enc.zones,
                }));
            }
            let survivors: BTreeMap<i64, Xid> = deletes
                .iter()
                .filter(|(r, &x)| x >= horizon && !absent.contains(r))
                .map(|(&r, &x)| (r, x))
                .collect();
            let run = self.write_delete_run(key, &survivors)?;
            results.push((key, blocks.len(), new_blocks, survivors, run));
        }
        if results.is_empty() {
            return Ok(stats);
        }
        self.dev.sync()?;
        let mut inner = self.inner.lock();
        let inner_ref = &mut *inner;
        // Commits are held off by commit_lock, so the committed lists are as read.
        let saved: Vec<_> = results
            .iter()
            .map(|(k, _, _, _, _)| {
                let s = &inner_ref.streams[k];
                (s.committed.clone(), s.deletes.clone(), s.runs.clone())
            })
            .collect();
        for (key, _, new_blocks, survivors, run) in &results {
            let s = inner_ref.streams.get_mut(key).expect("stream exists");
            s.committed = Arc::new(new_blocks.clone());
            s.deletes = Arc::new(survivors.clone());
            s.runs = run.iter().copied().collect();
        }
        let generation = inner_ref.generation + 1;
        let state = Self::meta_state(inner_ref, None);
        drop(inner);
        if let Err(e) = self.write_generation(generation, &state) {
            let mut inner = self.inner.lock();
            for ((key, ..), (c, d, r)) in results.iter().zip(saved) {
                if let Some(s) = inner.streams.get_mut(key) {
                    s.committed = c;
                    s.deletes = d;
                    s.runs = r;
                }
            }
            return Err(e);
        }
        self.inner.lock().generation = generation;
        info!(
            table,
            horizon,
            blocks = stats.blocks_rewritten,
            rows = stats.rows_removed,
            "groomed"
        );
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::*;
    use crate::store::{SegmentKind, Snapshot};
    use crate::EngineError;

    #[test]
    fn forwarded_blocks_make_a_logical_mirror_and_groom_keeps_copies_equal() {
        let dir = tempfile::tempdir().unwrap();
        let prim =
            DiskStore::create(&dir.path().join("p.img"), IDS, small_init(), opts(64)).unwrap();
        let mirr =
            DiskStore::create(&dir.path().join("m.img"), IDS, small_init(), opts(64)).unwrap();
        for d in [&prim, &mirr] {
            d.create_table(1, schema()).unwrap();
        }
        let (p, m) = (SegmentKind::Primary, SegmentKind::Mirror);
        // Mirror has something of its own first, so its extents differ.
        mirr.append(p, 1, 0, 2, &rows(0, 10)).unwrap();
        mirr.commit(2).unwrap();
        let (n, blocks) = prim.append_for_mirror(p, 1, 0, 3, &rows(0, 500)).unwrap();
        assert_eq!(n, 500);
        assert_eq!(blocks.len(), 8);
        for b in &blocks {
            mirr.append_encoded(m, 1, 0, 3, b).unwrap();
        }
        // A forwarded block for the wrong slice or with a flipped byte is refused.
        assert!(mirr.append_encoded(m, 1, 1, 3, &blocks[0]).is_err());
        let mut bad = blocks[0].clone();
        bad[100] ^= 1;
        assert!(matches!(
            mirr.append_encoded(m, 1, 0, 3, &bad),
            Err(EngineError::ChecksumMismatch { .. })
        ));
        prim.commit(3).unwrap();
        mirr.commit(3).unwrap();
        let del: Vec<i64> = (1..=500).filter(|i| i % 3 == 0).collect();
        prim.delete(p, 1, 0, 4, &del, Some(&snap(5, &[], Some(4))))
            .unwrap();
        mirr.delete(m, 1, 0, 4, &del, None).unwrap();
        prim.commit(4).unwrap();
        mirr.commit(4).unwrap();
        let latest = Snapshot::latest();
        let a = prim.checksum(p, 1, 0, &latest).unwrap();
        let b = mirr.checksum(m, 1, 0, &latest).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rows, 500 - del.len() as u64);
        // Different contents give a different checksum.
        assert_ne!(a, mirr.checksum(p, 1, 0, &latest).unwrap());
        // Groom below the horizon removes dead rows on both copies.
        let gp = prim.groom(1, 5).unwrap();
        let gm = mirr.groom(1, 5).unwrap();
        assert_eq!(gp.rows_removed, del.len() as u64);
        assert_eq!(gm.rows_removed, del.len() as u64);
        assert_eq!(prim.checksum(p, 1, 0, &latest).unwrap(), a);
        assert_eq!(mirr.checksum(m, 1, 0, &latest).unwrap(), a);
        // A horizon below the deleting xid keeps the rows (a snapshot may need them).
        let dir2 = tempfile::tempdir().unwrap();
        let s2 =
            DiskStore::create(&dir2.path().join("x.img"), IDS, small_init(), opts(64)).unwrap();
        s2.create_table(1, schema()).unwrap();
        s2.append(p, 1, 0, 3, &rows(0, 100)).unwrap();
        s2.commit(3).unwrap();
        s2.delete(p, 1, 0, 4, &[1], None).unwrap();
        s2.commit(4).unwrap();
        assert_eq!(s2.groom(1, 4).unwrap().rows_removed, 0);
        assert_eq!(count(&s2, p, &snap(4, &[], None)), 100);
        drop(prim);
        let prim = DiskStore::open(&dir.path().join("p.img"), opts(64)).unwrap();
        assert_eq!(prim.checksum(p, 1, 0, &latest).unwrap(), a);
    }
}
