//! Scrubbing, the store's side: what a background scrub pass reads (every
//! committed block of every stream: primary, mirror and temp) and how it
//! reads one block: through [`super::repair::read_block`], the read path of
//! scans, so a damaged block goes through the store's [`BlockRepair`] seam
//! and is counted (`checksum_failures`) exactly as a scan's would be. A temp
//! block has no other copy: it is read and its damage reported, never
//! repaired.
//!
//! The pass itself (order, pace, bookkeeping) is [`crate::scrub`]'s. This
//! module must never hold the store lock across a block read: for each
//! block it checks under the lock that the stream still lists it and takes
//! a reader registration ([`ReadHold`]), then reads without the lock, so
//! space dropped meanwhile is not reused under the read. The registration
//! lasts one block's read, never a whole stream's (with the pace's waits):
//! a DROP TABLE's space must be free again at once for the next load.

use std::sync::atomic::{AtomicBool, Ordering};

use super::reclaim::ReadHold;
use super::repair::{self, BlockRepair, NoRepair, Repaired, StoredBlock};
use super::DiskStore;
use crate::disk::meta::StreamKey;
use crate::disk::SegmentKind;
use crate::EngineError;

/// One stream's committed blocks as listed when the batch was taken.
pub struct ScrubBatch {
    pub blocks: Vec<StoredBlock>,
}

/// What reading one block for a scrub found.
#[derive(Debug)]
pub enum ScrubRead {
    /// The bytes passed their checks.
    Clean,
    /// Damaged, and the repair seam handed back good bytes.
    Repaired,
    /// Damaged (or unreadable) and not repaired: why.
    Damaged(EngineError),
    /// No longer listed (its table or copy was dropped, or GROOM replaced
    /// it): not read.
    Gone,
}

/// Notes whether the seam was called.
struct Noting<'a> {
    inner: &'a dyn BlockRepair,
    called: AtomicBool,
}

impl BlockRepair for Noting<'_> {
    fn repair(&self, block: &StoredBlock, error: EngineError) -> crate::Result<Repaired> {
        self.called.store(true, Ordering::Relaxed);
        self.inner.repair(block, error)
    }
}

impl DiskStore {
    /// The streams holding committed blocks now, with their bytes: the
    /// plan of a scrub pass (in key order).
    pub fn scrub_plan(&self) -> Vec<(StreamKey, u64)> {
        let inner = self.inner.lock();
        inner
            .streams
            .iter()
            .filter(|(_, s)| !s.committed.is_empty())
            .map(|(k, s)| (*k, s.committed.iter().map(|b| b.meta.length).sum()))
            .collect()
    }

    /// The committed blocks of `key` now (none once it is gone).
    pub fn scrub_stream(&self, key: &StreamKey) -> ScrubBatch {
        let inner = self.inner.lock();
        let disk = self.sb.disk_id;
        let blocks = inner
            .streams
            .get(key)
            .map(|s| {
                s.committed
                    .iter()
                    .map(|b| StoredBlock::new(disk, key.segment, key.table, key.slice, &b.meta))
                    .collect()
            })
            .unwrap_or_default();
        ScrubBatch { blocks }
    }

    /// A reader registration for `b`, if its stream still lists it.
    fn hold_listed(&self, b: &StoredBlock) -> Option<ReadHold> {
        let inner = self.inner.lock();
        let key = StreamKey {
            segment: b.segment,
            table: b.table,
            slice: b.slice,
        };
        let listed = inner.streams.get(&key).is_some_and(|s| {
            s.committed
                .iter()
                .any(|x| x.meta.offset == b.offset && x.meta.seq == b.seq)
        });
        listed.then(|| self.hold_reads())
    }

    /// Read and verify `b` (taken from a [`ScrubBatch`] still held) as a
    /// scan reads it; a damaged primary or mirror block goes through the
    /// repair seam, a damaged temp block is only reported.
    pub fn scrub_block(&self, b: &StoredBlock) -> ScrubRead {
        let Some(_hold) = self.hold_listed(b) else {
            return ScrubRead::Gone;
        };
        let seam: &dyn BlockRepair = match b.segment {
            SegmentKind::Temp => &NoRepair,
            _ => self.opts.repair.as_ref(),
        };
        let noting = Noting {
            inner: seam,
            called: AtomicBool::new(false),
        };
        let res = repair::read_block(self.dev.as_ref(), &noting, b, None, &self.counters);
        match (res, noting.called.load(Ordering::Relaxed)) {
            (Ok(_), false) => ScrubRead::Clean,
            (Ok(_), true) => ScrubRead::Repaired,
            (Err(e), _) => ScrubRead::Damaged(e),
        }
    }
}
