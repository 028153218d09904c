//! Space of aborted writes, given back without a restart; space of dropped
//! tables and copies, given back once no reader can read it.
//!
//! An aborted transaction's blocks (and, if it was prepared, its delete
//! runs) sit in its streams' extent runs, mixed with other writers' blocks.
//! At abort, every run of a stream it wrote to that no longer holds a
//! committed block, a committed delete run or another open transaction's
//! block or run is taken off the stream and freed, and the fill pointer of
//! the stream's last run moves back to the end of what that run still holds.
//!
//! Crash safety is the rule of `drop_table` (docs/disk-format.md): a run
//! that the last durable generation pins (a prepared transaction's blocks)
//! is freed only after the generation without them is written; a run that
//! no generation pins is free after a crash anyway (recovery frees every
//! run nothing pins), so listing it in an older slot is harmless.
//!
//! Readers: a scan of the transaction's own blocks (a statement still
//! reading when its transaction is aborted) or of blocks a GROOM replaced
//! may still read a freed run. So space freed while such an older reader
//! runs is parked and joins the free list once every reader that started
//! before the abort has ended; until then the fill pointer stays where it
//! was. A read of reused space would fail its checksum and fail the disk
//! over: this must never free space a live reader can still read.
//!
//! DROP TABLE and the drop of a copy free whole streams the same way
//! ([`DiskStore::release_runs`]): a scan, or a copy export
//! ([`ReadHold`]), that started before the drop may still read them.
//!
//! It must never free a run a durable generation or an open transaction
//! still lists, nor hold `inner` while waiting for readers.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::debug;

use super::{DiskStore, Inner, PendingTxn};
use crate::disk::meta::{ExtentRun, StreamKey};
use crate::disk::SegmentKind;

/// The scans in progress, by the reader epoch they started in.
#[derive(Default)]
pub(super) struct Readers {
    state: Mutex<ReaderState>,
}

#[derive(Default)]
struct ReaderState {
    /// The epoch a reader registering now gets.
    epoch: u64,
    /// Epoch -> readers of it still running.
    active: BTreeMap<u64, usize>,
}

impl Readers {
    /// Register a reader (call with `inner` held, while taking the block list).
    pub(super) fn enter(self: &Arc<Self>) -> ReaderGuard {
        let mut s = self.state.lock();
        let epoch = s.epoch;
        *s.active.entry(epoch).or_default() += 1;
        ReaderGuard {
            readers: self.clone(),
            epoch,
        }
    }

    /// Close the current epoch: readers registered from now on are newer
    /// than the mark returned.
    fn mark(&self) -> u64 {
        let mut s = self.state.lock();
        let m = s.epoch + 1;
        s.epoch = m;
        m
    }

    /// Whether no reader that started before `mark` is still running.
    fn clear_before(&self, mark: u64) -> bool {
        self.state.lock().active.range(..mark).next().is_none()
    }
}

/// A running reader; dropping it ends it.
pub(crate) struct ReaderGuard {
    readers: Arc<Readers>,
    epoch: u64,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut s = self.readers.state.lock();
        if let Some(n) = s.active.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                s.active.remove(&self.epoch);
            }
        }
    }
}

/// A reader registered for as long as it lives, so space it may read is not
/// reused under it (a copy export's blocks are read after it was listed).
pub struct ReadHold(#[allow(dead_code)] ReaderGuard);

impl std::fmt::Debug for ReadHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadHold")
    }
}

/// Holds compare equal: they carry no data.
impl PartialEq for ReadHold {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for ReadHold {}

/// Runs freed at an abort while older readers ran: free once they end.
pub(super) struct Parked {
    mark: u64,
    segment: SegmentKind,
    run: ExtentRun,
}

impl DiskStore {
    /// Give back the space `t` (just aborted, already out of `pending`)
    /// held, with `inner` held and no append in flight (the caller holds
    /// `io_gate` for writing). Answers the bytes freed or parked.
    pub(super) fn reclaim_aborted(&self, inner: &mut Inner, t: &PendingTxn) -> u64 {
        let touched: HashSet<StreamKey> = t
            .blocks
            .iter()
            .map(|p| p.key)
            .chain(t.runs.iter().map(|r| r.0))
            .collect();
        if touched.is_empty() {
            return 0;
        }
        // Where the aborted transaction wrote, per stream.
        let mut theirs: BTreeMap<StreamKey, Vec<u64>> = BTreeMap::new();
        for p in &t.blocks {
            theirs.entry(p.key).or_default().push(p.block.meta.offset);
        }
        for (k, r, _) in &t.runs {
            theirs.entry(*k).or_default().push(r.offset);
        }
        let mark = self.readers.mark();
        let quiet = self.readers.clear_before(mark);
        let mut freed = 0;
        for key in touched {
            let pins = Self::pins(inner, &key);
            let Some(s) = inner.streams.get_mut(&key) else {
                continue;
            };
            let ours = &theirs[&key];
            let inside = |e: &ExtentRun, o: u64| o >= e.offset && o < e.end();
            let old_last = s.extents.last().copied();
            let mut kept = Vec::with_capacity(s.extents.len());
            for e in std::mem::take(&mut s.extents) {
                let pinned = pins.iter().any(|&(o, _)| inside(&e, o));
                let written = ours.iter().any(|&o| inside(&e, o));
                if pinned || !written {
                    kept.push(e);
                    continue;
                }
                freed += e.length;
                let segment = key.segment;
                if quiet {
                    inner.alloc.release(segment, e);
                } else {
                    inner.parked.push(Parked {
                        mark,
                        segment,
                        run: e,
                    });
                }
            }
            s.extents = kept;
            match s.extents.last().copied() {
                None => s.fill = 0,
                Some(last) if quiet => {
                    s.fill = pins
                        .iter()
                        .filter(|&&(o, _)| inside(&last, o))
                        .map(|&(_, end)| end)
                        .max()
                        .unwrap_or(last.offset);
                }
                // An older reader may still read the aborted blocks at the
                // tail: append after them (or, in a run that was not last,
                // not at all).
                Some(last) if Some(last) != old_last => s.fill = last.end(),
                Some(_) => {}
            }
        }
        debug!(
            freed,
            parked = !quiet,
            "reclaimed an aborted transaction's space"
        );
        freed
    }

    /// Byte ranges of `key`'s extents something still needs: its committed
    /// blocks and delete runs and every open transaction's.
    fn pins(inner: &Inner, key: &StreamKey) -> Vec<(u64, u64)> {
        let mut pins = Vec::new();
        if let Some(s) = inner.streams.get(key) {
            pins.extend(s.committed.iter().map(|b| (b.meta.offset, b.meta.end())));
            pins.extend(s.runs.iter().map(|r| (r.offset, r.offset + r.length)));
        }
        for t in inner.pending.values() {
            pins.extend(
                t.blocks
                    .iter()
                    .filter(|p| p.key == *key)
                    .map(|p| (p.block.meta.offset, p.block.meta.end())),
            );
            pins.extend(
                t.runs
                    .iter()
                    .filter(|r| r.0 == *key)
                    .map(|r| (r.1.offset, r.1.offset + r.1.length)),
            );
        }
        pins
    }

    /// Register a reader until the hold is dropped.
    pub(super) fn hold_reads(&self) -> ReadHold {
        ReadHold(self.readers.enter())
    }

    /// Free `runs` of `segment` (taken off their stream, no longer listed
    /// by the durable generation), or park them while a reader that started
    /// before now runs. Answers their bytes.
    pub(super) fn release_runs(
        &self,
        inner: &mut Inner,
        segment: SegmentKind,
        runs: Vec<ExtentRun>,
    ) -> u64 {
        let mark = self.readers.mark();
        let quiet = self.readers.clear_before(mark);
        let mut bytes = 0;
        for run in runs {
            bytes += run.length;
            match quiet {
                true => inner.alloc.release(segment, run),
                false => inner.parked.push(Parked { mark, segment, run }),
            }
        }
        bytes
    }

    /// Free the parked runs no reader can still read (with `inner` held).
    pub(super) fn release_parked(&self, inner: &mut Inner) {
        if inner.parked.is_empty() {
            return;
        }
        let parked = std::mem::take(&mut inner.parked);
        for p in parked {
            if self.readers.clear_before(p.mark) {
                inner.alloc.release(p.segment, p.run);
            } else {
                inner.parked.push(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::disk::{MemDevice, SegmentKind};
    use crate::store::tests::*;
    use crate::store::{InitOptions, ScanSpec, Snapshot};
    use crate::{EngineError, Xid};

    const P: SegmentKind = SegmentKind::Primary;
    const CHUNK: i64 = 4000;

    /// A store whose primary segment holds about 1.5 MiB.
    fn tiny() -> (Arc<MemDevice>, DiskStore) {
        let init = InitOptions {
            size: 4 << 20,
            extent_size: 64 << 10,
            meta_slot_size: 256 << 10,
        };
        let dev = Arc::new(MemDevice::new(init.size));
        let store =
            DiskStore::create_with_device(dev.clone(), Path::new("mem"), IDS, init, opts(1000))
                .unwrap();
        store.create_table(1, schema()).unwrap();
        (dev, store)
    }

    fn used(store: &DiskStore) -> u64 {
        store.report().segments[P.index()].used
    }

    fn free(store: &DiskStore) -> u64 {
        let s = &store.report().segments[P.index()];
        s.length - s.used
    }

    /// Append chunks under `xid` until the segment is full: how many fit.
    fn fill(store: &DiskStore, xid: Xid) -> i64 {
        for n in 0.. {
            match store.append(P, 1, 0, xid, &rows(n * CHUNK, CHUNK)) {
                Ok(_) => {}
                Err(EngineError::SegmentFull { .. }) => return n,
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    /// Reopen the durable image: it must hold exactly what the store shows,
    /// every block read back through its checksum, with the same space used.
    fn reopen_agrees(dev: &MemDevice, store: &DiskStore) -> DiskStore {
        let (_, again) = reopen_mem(dev.durable_image(), 1000).unwrap();
        assert_eq!(fingerprint(&again), fingerprint(store));
        assert!(again.in_doubt().is_empty());
        assert_eq!(used(&again), used(store), "free space after a reopen");
        again
    }

    #[test]
    fn an_aborted_write_gives_its_space_back_at_once() {
        let (dev, store) = tiny();
        store.append(P, 1, 0, 1, &rows(0, 100)).unwrap();
        store.commit(1).unwrap();
        let before = used(&store);
        let fit = fill(&store, 2);
        assert!(fit >= 5, "the segment holds only {fit} chunks");
        assert_eq!(free(&store), 0);
        store.abort(2).unwrap();
        assert_eq!(used(&store), before, "the aborted write's space is free");
        // The same load again fits: it reuses that space.
        for n in 0..fit {
            store.append(P, 1, 0, 3, &rows(n * CHUNK, CHUNK)).unwrap();
        }
        store.commit(3).unwrap();
        assert_eq!(
            count(&store, P, &Snapshot::latest()),
            100 + (fit * CHUNK) as u64
        );
        reopen_agrees(&dev, &store);

        // A prepared transaction's space, once its abort is durable.
        store.drop_table(1).unwrap();
        store.create_table(1, schema()).unwrap();
        let fit = fill(&store, 4);
        store.prepare(4).unwrap();
        let after_prepare = dev.durable_image();
        store.abort(4).unwrap();
        assert_eq!(used(&store), 0);
        let (_, crashed) = reopen_mem(after_prepare, 1000).unwrap();
        assert_eq!(
            crashed.in_doubt().len(),
            1,
            "a crash before the abort keeps it"
        );
        for n in 0..fit {
            store.append(P, 1, 0, 5, &rows(n * CHUNK, CHUNK)).unwrap();
        }
        store.commit(5).unwrap();
        let again = reopen_agrees(&dev, &store);
        assert_eq!(count(&again, P, &Snapshot::latest()), (fit * CHUNK) as u64);
    }

    #[test]
    fn runs_shared_with_committed_blocks_stay_and_the_rest_is_freed() {
        let (dev, store) = tiny();
        // xid 2's blocks interleave with xid 3's in the same stream.
        for n in 0..6 {
            store.append(P, 1, 0, 2, &rows(n * CHUNK, CHUNK)).unwrap();
            if n % 3 == 0 {
                store.append(P, 1, 0, 3, &rows(-n - 1, 1)).unwrap();
            }
        }
        store.commit(3).unwrap();
        let full = used(&store);
        store.abort(2).unwrap();
        let left = used(&store);
        let extent = store.superblock().extent_size;
        assert!(left < full && left <= 2 * extent, "{left} of {full}");
        // The last run's tail after xid 3's rows is reused: no new run.
        store.append(P, 1, 0, 4, &rows(1_000_000, 10)).unwrap();
        store.commit(4).unwrap();
        assert_eq!(used(&store), left);
        assert_eq!(count(&store, P, &Snapshot::latest()), 12);
        reopen_agrees(&dev, &store);
    }

    #[test]
    fn space_a_scan_still_reads_is_reused_only_after_it() {
        let (dev, store) = tiny();
        let fit = fill(&store, 2);
        // The statement's own scan is still running when xid 2 is aborted.
        let mut scan = store
            .scan(&ScanSpec {
                snapshot: snap(3, &[], Some(2)),
                ..spec(P, 1, 0)
            })
            .unwrap();
        let first = scan.next().unwrap().unwrap();
        store.abort(2).unwrap();
        assert_eq!(free(&store), 0, "parked while the scan runs");
        assert!(matches!(
            store.append(P, 1, 0, 3, &rows(0, CHUNK)),
            Err(EngineError::SegmentFull { .. })
        ));
        let mut n = first.num_rows() as i64;
        for b in scan {
            n += b
                .expect("the aborted blocks are intact under the scan")
                .num_rows() as i64;
        }
        assert!(n >= fit * CHUNK, "{n} rows of {fit} chunks");
        // The scan is over: the space is free.
        assert_eq!(used(&store), 0);
        store.abort(3).unwrap();
        for n in 0..fit {
            store.append(P, 1, 0, 4, &rows(n * CHUNK, CHUNK)).unwrap();
        }
        store.commit(4).unwrap();
        reopen_agrees(&dev, &store);
    }

    #[test]
    fn a_dropped_tables_space_is_reused_only_after_the_scans_and_exports_reading_it() {
        let (dev, store) = tiny();
        let fit = fill(&store, 2);
        store.commit(2).unwrap();
        // A query's scan and a copy export started before the DROP.
        let mut scan = store.scan(&spec(P, 1, 0)).unwrap();
        let first = scan.next().unwrap().unwrap();
        let export = store.export_slice(P, 1, 0, &[]).unwrap();
        assert!(export.blocks.len() as i64 >= fit);
        store.drop_table(1).unwrap();
        assert_eq!(free(&store), 0, "parked while they read");
        store.create_table(2, schema()).unwrap();
        assert!(matches!(
            store.append(P, 2, 0, 3, &rows(0, CHUNK)),
            Err(EngineError::SegmentFull { .. })
        ));
        let mut n = first.num_rows() as i64;
        for b in scan {
            n += b
                .expect("the dropped blocks are intact under the scan")
                .num_rows() as i64;
        }
        assert_eq!(n, fit * CHUNK);
        // The scan is over, the export is not: still parked.
        store.abort(3).unwrap();
        assert_eq!(free(&store), 0, "parked while the export reads");
        for b in &export.blocks {
            store.read_exported(b).expect("exported blocks are intact");
        }
        drop(export);
        for n in 0..fit {
            store.append(P, 2, 0, 4, &rows(n * CHUNK, CHUNK)).unwrap();
        }
        store.commit(4).unwrap();
        let rows: usize = store
            .scan(&spec(P, 2, 0))
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(rows as i64, fit * CHUNK);
        reopen_agrees(&dev, &store);
    }

    #[test]
    fn a_dropped_copys_space_waits_for_its_export() {
        let (_dev, store) = tiny();
        let fit = fill(&store, 2);
        store.commit(2).unwrap();
        let export = store.export_slice(P, 1, 0, &[]).unwrap();
        let freed = store.drop_copy(P, 0).unwrap().unwrap();
        assert!(freed > 0);
        assert_eq!(free(&store), 0, "parked while the export reads");
        for b in &export.blocks {
            store.read_exported(b).expect("exported blocks are intact");
        }
        drop(export);
        for n in 0..fit {
            store.append(P, 1, 0, 3, &rows(n * CHUNK, CHUNK)).unwrap();
        }
        store.commit(3).unwrap();
    }
}
