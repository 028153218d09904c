//! The checksum seam: what a read does with a block that fails verification.
//!
//! A block whose bytes do not match their CRC32C, or whose header disagrees
//! with the index, is a sector failure. The store has no network, so it
//! cannot fetch the block from the slice's other copy itself: it hands the
//! damaged block's identity and the error to the [`BlockRepair`] it was
//! opened with ([`StoreOptions::repair`](super::StoreOptions)). Every read of
//! a committed block's bytes (scans and groom) goes through [`read_block`],
//! so this is the one place that decides. The default, [`NoRepair`], fails
//! the read with the original error.
//!
//! It must never hand a caller rows from bytes that did not pass the same
//! checks as bytes read from the disk, replacement bytes included.

use arrow::array::RecordBatch;

use super::StoreCounters;
use crate::block::{self, BlockLocation};
use crate::disk::meta::BlockMeta;
use crate::disk::{BlockDevice, SegmentKind};
use crate::{DiskId, EngineError, Result, SliceId, TableId};

/// A block of this disk as the index knows it: enough to check bytes read
/// for it, and to find the same logical block on another copy of the slice
/// (same table, slice, rowids and rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBlock {
    /// The disk (of this node) the block lies on.
    pub disk: DiskId,
    pub segment: SegmentKind,
    pub table: TableId,
    pub slice: SliceId,
    /// Sequence number in the (segment, table, slice) stream.
    pub seq: u64,
    /// Where the block lies on `disk`, and its length in bytes.
    pub offset: u64,
    pub length: u64,
    /// Rows the index says the block holds, and their rowid range.
    pub rows: u64,
    pub rowid_min: i64,
    pub rowid_max: i64,
}

impl StoredBlock {
    pub(super) fn new(
        disk: DiskId,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        meta: &BlockMeta,
    ) -> StoredBlock {
        StoredBlock {
            disk,
            segment,
            table,
            slice,
            seq: meta.seq,
            offset: meta.offset,
            length: meta.length,
            rows: meta.rows,
            rowid_min: meta.rowid_min,
            rowid_max: meta.rowid_max,
        }
    }

    fn location(&self) -> BlockLocation {
        BlockLocation {
            disk: self.disk,
            offset: self.offset,
            table: self.table,
            slice: self.slice,
            seq: self.seq,
            rows: self.rows,
        }
    }
}

/// What a read does with a block that fails its checksum.
///
/// An implementer is called from the reading thread (a scan or a groom),
/// with no lock of the store held, each time the bytes of `block` read from
/// this disk fail verification with `error` (an
/// [`EngineError::ChecksumMismatch`] or [`EngineError::CorruptBlock`]). It
/// must either
/// - return the encoded bytes of the same block, taken from a copy it
///   trusts (for a sector repair: the slice's copy on the peer). The store
///   verifies them exactly as it verifies its own reads (CRC, and table,
///   slice, seq and rows against the index) and uses them instead; bytes that
///   fail are an error, never rows; or
/// - return `Err`: `error` itself when it cannot repair (the read then fails
///   as if there were no seam), or an error that says why the repair failed.
///
/// It may block (a network fetch) but must not read the same block through
/// the store again. Writing the good bytes back in place is its choice; the
/// store does not do it.
pub trait BlockRepair: Send + Sync {
    fn repair(&self, block: &StoredBlock, error: EngineError) -> Result<Vec<u8>>;
}

/// No copy to repair from: the read fails with the original error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRepair;

impl BlockRepair for NoRepair {
    fn repair(&self, _block: &StoredBlock, error: EngineError) -> Result<Vec<u8>> {
        Err(error)
    }
}

/// Read `stored` from `dev` and decode the stored columns `projection`; bytes
/// that fail verification go through `repair`, and what it returns is
/// verified the same way.
pub(super) fn read_block(
    dev: &dyn BlockDevice,
    repair: &dyn BlockRepair,
    stored: &StoredBlock,
    projection: Option<&[usize]>,
    counters: &StoreCounters,
) -> Result<RecordBatch> {
    let loc = stored.location();
    let mut buf = vec![0u8; stored.length as usize];
    dev.read_at(stored.offset, &mut buf)?;
    match block::decode_block(&buf, &loc, projection.map(<[usize]>::to_vec)) {
        Err(e @ (EngineError::ChecksumMismatch { .. } | EngineError::CorruptBlock { .. })) => {
            counters.checksum_failed();
            drop(buf);
            let good = repair.repair(stored, e)?;
            block::decode_block(&good, &loc, projection.map(<[usize]>::to_vec))
        }
        res => res,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;
    use crate::disk::MemDevice;
    use crate::predicate::{CmpOp, Literal, Predicate};
    use crate::store::tests::*;
    use crate::store::{DiskStore, ScanSpec, SegmentKind, StoreOptions};

    #[test]
    fn flipped_byte_in_block_is_a_checksum_error() {
        let (dev, store) = mem_store(1000);
        store.create_table(1, schema()).unwrap();
        store
            .append(SegmentKind::Primary, 1, 0, 1, &rows(0, 500))
            .unwrap();
        store.commit(1).unwrap();
        let b = store
            .inner
            .lock()
            .streams
            .values()
            .next()
            .unwrap()
            .committed[0]
            .meta
            .clone();
        let s = ScanSpec {
            predicate: Some(Predicate::Compare {
                column: 0,
                op: CmpOp::GtEq,
                value: Literal::Int(0),
            }),
            ..spec(SegmentKind::Primary, 1, 0)
        };
        for at in [0, 10, 30, 100, b.length / 2, b.length - 5, b.length - 1] {
            dev.corrupt(b.offset + at, 0x10);
            let res: Result<Vec<RecordBatch>> = store.scan(&s).unwrap().collect();
            assert!(
                matches!(
                    res,
                    Err(EngineError::ChecksumMismatch {
                        disk: 1,
                        table: 1,
                        slice: 0,
                        ..
                    })
                ),
                "flip at {at}: {res:?}"
            );
            dev.corrupt(b.offset + at, 0x10);
        }
        assert_eq!(scan_all(&store, &s).unwrap(), rows(0, 500));
    }

    /// Records every call and answers with `good` (None: the original error).
    struct Recording {
        calls: Mutex<Vec<StoredBlock>>,
        good: Mutex<Option<Vec<u8>>>,
    }

    impl BlockRepair for Recording {
        fn repair(&self, block: &StoredBlock, error: EngineError) -> Result<Vec<u8>> {
            self.calls.lock().push(*block);
            self.good.lock().clone().ok_or(error)
        }
    }

    fn store_with(repair: Arc<Recording>) -> (Arc<MemDevice>, DiskStore, BlockMeta) {
        let dev = Arc::new(MemDevice::new(small_init().size));
        let opts = StoreOptions {
            repair,
            ..opts(1000)
        };
        let store =
            DiskStore::create_with_device(dev.clone(), Path::new("mem"), IDS, small_init(), opts)
                .unwrap();
        store.create_table(1, schema()).unwrap();
        store
            .append(SegmentKind::Primary, 1, 0, 1, &rows(0, 500))
            .unwrap();
        store.commit(1).unwrap();
        let b = store
            .inner
            .lock()
            .streams
            .values()
            .next()
            .unwrap()
            .committed[0]
            .meta
            .clone();
        (dev, store, b)
    }

    #[test]
    fn a_flipped_byte_goes_through_the_repair_seam() {
        let rec = Arc::new(Recording {
            calls: Mutex::new(Vec::new()),
            good: Mutex::new(None),
        });
        let (dev, store, b) = store_with(rec.clone());
        let s = spec(SegmentKind::Primary, 1, 0);
        assert_eq!(scan_all(&store, &s).unwrap(), rows(0, 500));
        assert!(rec.calls.lock().is_empty(), "a good block never asks");
        dev.corrupt(b.offset + b.length / 2, 0x10);
        let res: Result<Vec<RecordBatch>> = store.scan(&s).unwrap().collect();
        assert!(
            matches!(res, Err(EngineError::ChecksumMismatch { disk: 1, .. })),
            "{res:?}"
        );
        let calls = rec.calls.lock().clone();
        assert_eq!(
            calls,
            vec![StoredBlock {
                disk: 1,
                segment: SegmentKind::Primary,
                table: 1,
                slice: 0,
                seq: b.seq,
                offset: b.offset,
                length: b.length,
                rows: 500,
                rowid_min: b.rowid_min,
                rowid_max: b.rowid_max,
            }]
        );
    }

    #[test]
    fn repaired_bytes_are_verified_and_used() {
        let rec = Arc::new(Recording {
            calls: Mutex::new(Vec::new()),
            good: Mutex::new(None),
        });
        let (dev, store, b) = store_with(rec.clone());
        let mut good = vec![0u8; b.length as usize];
        dev.read_at(b.offset, &mut good).unwrap();
        dev.corrupt(b.offset + 30, 0x10);
        let s = spec(SegmentKind::Primary, 1, 0);
        // A "repair" that hands back bad bytes gives an error, never rows.
        let mut bad = good.clone();
        bad[40] ^= 1;
        *rec.good.lock() = Some(bad);
        let res: Result<Vec<RecordBatch>> = store.scan(&s).unwrap().collect();
        assert!(
            matches!(res, Err(EngineError::ChecksumMismatch { .. })),
            "{res:?}"
        );
        *rec.good.lock() = Some(good);
        assert_eq!(scan_all(&store, &s).unwrap(), rows(0, 500));
        assert_eq!(rec.calls.lock().len(), 2);
    }
}
