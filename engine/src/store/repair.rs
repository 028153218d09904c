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
//! The store's two ends of a sector repair live here too: on the node
//! holding the good copy, [`DiskStore::fetch_block`] finds the same logical
//! block (by seq and rowids; re-encoding the rows when its layout differs)
//! without ever going through the seam itself; on the damaged side,
//! [`DiskStore::take_replacement`] checks what the peer sent and
//! [`DiskStore::write_back`] writes verified bytes over the bad ones, in
//! place, under the store lock and only while the index still holds that
//! block at that offset (a block freed meanwhile is left alone). A peer
//! whose GROOM already removed rows of the block sends the rows left; they
//! are taken only if this copy deleted the rest, and written as its own
//! GROOM would have (the block rewritten, those rows' deletes dropped).
//!
//! It must never hand a caller rows from bytes that did not pass the same
//! checks as bytes read from the disk, replacement bytes included.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use tracing::info;

use super::{DiskStore, StoreCounters, StreamKey};
use crate::block::{self, BlockLocation};
use crate::disk::meta::{BlockMeta, DeleteRunMeta};
use crate::disk::{BlockDevice, SegmentKind};
use crate::{DiskId, EngineError, Result, SliceId, TableId};

/// The identity of a logical block, the same on every copy of its slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogicalBlock {
    pub table: TableId,
    pub slice: SliceId,
    pub seq: u64,
    pub rows: u64,
    pub rowid_min: i64,
    pub rowid_max: i64,
}

impl From<&StoredBlock> for LogicalBlock {
    fn from(b: &StoredBlock) -> Self {
        LogicalBlock {
            table: b.table,
            slice: b.slice,
            seq: b.seq,
            rows: b.rows,
            rowid_min: b.rowid_min,
            rowid_max: b.rowid_max,
        }
    }
}

/// Check that verified bytes are the block `want` (CRC, table, slice, seq,
/// rows, and the rowid range the index holds).
pub fn check_replacement(bytes: &[u8], want: &StoredBlock) -> Result<()> {
    let h = block::verify_block(bytes, &want.location())?;
    if h.rowid_min != want.rowid_min || h.rowid_max != want.rowid_max {
        return Err(EngineError::CorruptBlock {
            offset: want.offset,
            reason: format!(
                "replacement holds rowids {}..={}, the index says {}..={}",
                h.rowid_min, h.rowid_max, want.rowid_min, want.rowid_max
            ),
        });
    }
    Ok(())
}

impl DiskStore {
    /// The block `want` of this disk's copy in `segment`, verified, for a
    /// peer whose own copy of it is damaged: the stored block with that
    /// seq, rows and rowids, or else the rows with those rowids taken from
    /// the blocks holding them and encoded as one block of that seq
    /// (`true`). That block holds fewer rows than `want` when a GROOM here
    /// removed some (deleted below its horizon), and is empty (no bytes)
    /// when it removed them all: the asker checks that it deleted those
    /// rows too ([`DiskStore::take_replacement`]). Never goes through the
    /// repair seam: a block damaged here too is an error.
    pub fn fetch_block(
        &self,
        segment: SegmentKind,
        want: &LogicalBlock,
    ) -> Result<(Vec<u8>, bool)> {
        let key = StreamKey {
            segment,
            table: want.table,
            slice: want.slice,
        };
        let committed = {
            let inner = self.inner.lock();
            match inner.streams.get(&key) {
                Some(s) => s.committed.clone(),
                None => {
                    return Err(EngineError::InvalidRequest(format!(
                        "no {} copy of table {} slice {} on this disk",
                        segment.as_str(),
                        want.table,
                        want.slice
                    )))
                }
            }
        };
        let disk = self.sb.disk_id;
        let stored = |m: &BlockMeta| StoredBlock::new(disk, segment, want.table, want.slice, m);
        if let Some(b) = committed.iter().find(|b| {
            b.meta.seq == want.seq
                && b.meta.rows == want.rows
                && b.meta.rowid_min == want.rowid_min
                && b.meta.rowid_max == want.rowid_max
        }) {
            let s = stored(&b.meta);
            let buf = self.dev.read_vec(s.offset, s.length as usize)?;
            check_replacement(&buf, &s)?;
            return Ok((buf, false));
        }
        // Another layout here (groomed or copied differently): the rows
        // with those rowids, from every block that holds some.
        let mut parts = Vec::new();
        for b in committed
            .iter()
            .filter(|b| b.meta.rowid_max >= want.rowid_min && b.meta.rowid_min <= want.rowid_max)
        {
            let s = stored(&b.meta);
            let buf = self.dev.read_vec(s.offset, s.length as usize)?;
            let batch = block::decode_block(&buf, &s.location(), None)?;
            let ids = super::rowid_column(&batch)?;
            let keep: arrow::array::BooleanArray = ids
                .iter()
                .map(|r| r.map(|r| r >= want.rowid_min && r <= want.rowid_max))
                .collect();
            parts.push(arrow::compute::filter_record_batch(&batch, &keep)?);
        }
        let rows: usize = parts.iter().map(RecordBatch::num_rows).sum();
        if rows as u64 > want.rows {
            return Err(EngineError::InvalidRequest(format!(
                "this copy holds {rows} rows with rowids {}..={} of table {} slice {}, the damaged block held {}",
                want.rowid_min, want.rowid_max, want.table, want.slice, want.rows
            )));
        }
        if rows == 0 {
            // Every row of it was groomed away here.
            return Ok((Vec::new(), true));
        }
        let batch = arrow::compute::concat_batches(&parts[0].schema(), &parts)?;
        let enc = block::encode_block(
            want.table,
            want.slice,
            want.seq,
            &batch,
            self.opts.compression,
        )?;
        Ok((enc.bytes, true))
    }

    /// Write `bytes` (verified: the block `stored`) in place of the damaged
    /// block and make it durable: over it when they have its length, else
    /// into fresh space of the stream with the index pointing there (a new
    /// metadata generation: a crash before it leaves the old entry, whose
    /// bytes are repaired again on their next read). `false`: nothing
    /// written, because the index no longer holds that block at that offset
    /// (dropped or groomed away meanwhile: its extent may be someone
    /// else's now), or, for fresh space, because a commit or groom holds
    /// the metadata (a groom repairing what it reads).
    pub fn write_back(&self, stored: &StoredBlock, bytes: &[u8]) -> Result<bool> {
        if self.read_only {
            return Ok(false);
        }
        check_replacement(bytes, stored)?;
        // Held while writing: no extent is freed for reuse under us (a
        // groom calling in holds it already).
        let _gate = self.io_gate.read_recursive();
        if bytes.len() as u64 != stored.length {
            return self.relocate(stored, bytes);
        }
        if !self.holds(stored) {
            return Ok(false);
        }
        self.dev.write_at(stored.offset, bytes)?;
        self.dev.sync()?;
        Ok(true)
    }

    fn key_of(stored: &StoredBlock) -> StreamKey {
        StreamKey {
            segment: stored.segment,
            table: stored.table,
            slice: stored.slice,
        }
    }

    /// Where the committed index holds `stored` now, if it does.
    fn position(inner: &super::Inner, stored: &StoredBlock) -> Option<usize> {
        inner
            .streams
            .get(&Self::key_of(stored))?
            .committed
            .iter()
            .position(|b| {
                b.meta.offset == stored.offset
                    && b.meta.seq == stored.seq
                    && b.meta.length == stored.length
            })
    }

    /// The block's bytes as the device holds them now, if the committed
    /// index still holds the block there and they pass a repair's checks
    /// (a read that met it damaged just before a repair's write-back: the
    /// block reads well again, nothing to repair).
    pub fn reads_well(&self, stored: &StoredBlock) -> Option<Vec<u8>> {
        let _gate = self.io_gate.read_recursive();
        if !self.holds(stored) {
            return None;
        }
        let bytes = self
            .dev
            .read_vec(stored.offset, usize::try_from(stored.length).ok()?)
            .ok()?;
        check_replacement(&bytes, stored).ok()?;
        Some(bytes)
    }

    fn holds(&self, stored: &StoredBlock) -> bool {
        Self::position(&self.inner.lock(), stored).is_some()
    }

    /// [`DiskStore::write_back`] of a block of another length: fresh space,
    /// then a metadata generation with the index entry moved there.
    fn relocate(&self, stored: &StoredBlock, bytes: &[u8]) -> Result<bool> {
        let Some(_c) = self.commit_lock.try_lock() else {
            return Ok(false);
        };
        if !self.holds(stored) {
            return Ok(false);
        }
        let moved = self.write_fresh(stored, bytes)?;
        let key = Self::key_of(stored);
        let mut inner = self.inner.lock();
        // Commits are held off by commit_lock: the index is as checked.
        let Some(i) = Self::position(&inner, stored) else {
            return Ok(false);
        };
        let s = inner.streams.get_mut(&key).expect("stream exists");
        let before = (s.committed.clone(), s.deletes.clone(), s.runs.clone());
        Arc::make_mut(&mut s.committed)[i] = moved;
        drop(inner);
        self.land_generation(key, before)
    }

    /// Write `bytes` (a verified block of `stored`'s stream) to fresh space
    /// of the stream: its index entry, not yet listed.
    fn write_fresh(&self, stored: &StoredBlock, bytes: &[u8]) -> Result<Arc<super::IndexedBlock>> {
        let (h, zone_bytes) = block::inspect_block(bytes, stored.table, stored.slice)?;
        let zones = {
            let inner = self.inner.lock();
            let t = inner
                .tables
                .get(&stored.table)
                .ok_or(EngineError::TableNotFound(stored.table))?;
            t.zones(&zone_bytes, h.rows)?
        };
        let offset = self.allocate(Self::key_of(stored), bytes.len() as u64)?;
        self.dev.write_at(offset, bytes)?;
        Ok(Arc::new(super::IndexedBlock {
            meta: BlockMeta {
                offset,
                length: bytes.len() as u64,
                seq: h.seq,
                rows: h.rows,
                rowid_min: h.rowid_min,
                rowid_max: h.rowid_max,
                createxid_min: h.createxid_min,
                createxid_max: h.createxid_max,
                zones: Arc::from(zone_bytes),
            },
            zones,
        }))
    }

    /// Sync, then write the next metadata generation with the stream `key`
    /// as changed in memory (under commit_lock); on failure put back
    /// `before` (its blocks, deletes and delete runs).
    fn land_generation(&self, key: StreamKey, before: StreamState) -> Result<bool> {
        let res = self.dev.sync().and_then(|_| {
            let (generation, state) = {
                let inner = self.inner.lock();
                (inner.generation + 1, Self::meta_state(&inner, None))
            };
            self.write_generation(generation, &state)
                .map(|_| generation)
        });
        match res {
            Ok(generation) => {
                self.inner.lock().generation = generation;
                Ok(true)
            }
            Err(e) => {
                if let Some(s) = self.inner.lock().streams.get_mut(&key) {
                    (s.committed, s.deletes, s.runs) = before;
                }
                Err(e)
            }
        }
    }

    /// Take in the bytes the slice's other copy sent for the damaged block
    /// `stored` (its [`DiskStore::fetch_block`]): check them, fit them to
    /// the columns the block holds here, write them in its place, and hand
    /// them to the read that met it.
    ///
    /// - The same rows: written back as [`DiskStore::write_back`] does,
    ///   first narrowed to this block's columns when the other copy's are
    ///   more (a GROOM there rewrote it after columns were added).
    /// - Fewer rows (none: `bytes` empty): a GROOM of the other copy
    ///   removed rows deleted below its horizon. Taken only if this copy's
    ///   committed deletes hold exactly as many rowids of the block's range,
    ///   absent from the replacement, as rows are missing: those are the
    ///   rows gone (a stream's blocks never share rowids, and a delete is
    ///   recorded only for a row the copy holds). The block is then
    ///   rewritten without them in fresh space (dropped from the index when
    ///   none remain) and their deletes dropped, in one metadata generation,
    ///   as this copy's own GROOM would have done.
    ///
    /// An error: the bytes failed a check (never rows). Else the read gets
    /// the rows, and the write's outcome: `false` when nothing was written
    /// (the index moved on meanwhile, or a commit or groom holds the
    /// metadata), an error when the write failed (this disk's fault).
    pub fn take_replacement(
        &self,
        stored: &StoredBlock,
        bytes: &[u8],
    ) -> Result<(Repaired, Result<bool>)> {
        let bad = |reason: String| EngineError::CorruptBlock {
            offset: stored.offset,
            reason,
        };
        let got = if bytes.is_empty() {
            None
        } else {
            let (h, _) = block::inspect_block(bytes, stored.table, stored.slice)?;
            if h.seq != stored.seq
                || h.rows == 0
                || h.rows > stored.rows
                || h.rowid_min < stored.rowid_min
                || h.rowid_max > stored.rowid_max
            {
                return Err(bad(format!(
                    "the replacement is seq {} of {} rows, rowids {}..={}; the index holds seq {} of {} rows, rowids {}..={}",
                    h.seq, h.rows, h.rowid_min, h.rowid_max,
                    stored.seq, stored.rows, stored.rowid_min, stored.rowid_max
                )));
            }
            let loc = BlockLocation {
                rows: h.rows,
                ..stored.location()
            };
            Some(block::decode_block(bytes, &loc, None)?)
        };
        let rows = got.as_ref().map_or(0, |b| b.num_rows() as u64);
        let width = got.as_ref().map_or(0, RecordBatch::num_columns);
        if rows == stored.rows && width == stored.columns {
            check_replacement(bytes, stored)?;
            let written = self.write_back(stored, bytes);
            return Ok((Repaired::whole(bytes.to_vec(), stored), written));
        }
        let fitted = match got {
            Some(batch) => fit_columns(&batch, stored.columns).map_err(bad)?,
            None => {
                let inner = self.inner.lock();
                let t = inner
                    .tables
                    .get(&stored.table)
                    .ok_or(EngineError::TableNotFound(stored.table))?;
                RecordBatch::new_empty(Arc::new(t.prefix(stored.columns)?))
            }
        };
        let enc = block::encode_block(
            stored.table,
            stored.slice,
            stored.seq,
            &fitted,
            self.opts.compression,
        )?;
        let repaired = Repaired {
            bytes: enc.bytes,
            rows,
        };
        if rows == stored.rows {
            check_replacement(&repaired.bytes, stored)?;
            let written = self.write_back(stored, &repaired.bytes);
            return Ok((repaired, written));
        }
        let present: HashSet<i64> = super::rowid_column(&fitted)?.iter().flatten().collect();
        if present.len() as u64 != rows {
            return Err(bad("the replacement repeats rowids".into()));
        }
        if self
            .rows_gone(stored, &present, &self.inner.lock())?
            .is_none()
        {
            return Ok((repaired, Ok(false)));
        }
        let written = self.drop_groomed(stored, &present, (rows > 0).then_some(&repaired.bytes));
        Ok((repaired, written))
    }

    /// The deletes of this copy that the rows of `stored` missing from
    /// `present` are (an error unless every missing row is one), or None
    /// when the index no longer holds the block there and nothing is to be
    /// written: an earlier repair of it took the same rows in (or dropped
    /// it), or this copy groomed it too.
    fn rows_gone(
        &self,
        stored: &StoredBlock,
        present: &HashSet<i64>,
        inner: &super::Inner,
    ) -> Result<Option<Vec<i64>>> {
        let s = inner.streams.get(&Self::key_of(stored));
        let bad = |reason: String| EngineError::CorruptBlock {
            offset: stored.offset,
            reason,
        };
        if Self::position(inner, stored).is_none() {
            let now = s
                .and_then(|s| s.committed.iter().find(|b| b.meta.seq == stored.seq))
                .map(|b| b.meta.rows);
            return match now {
                Some(r) if r != present.len() as u64 => Err(bad(format!(
                    "the block was rewritten here with {r} rows meanwhile, the other copy holds {}",
                    present.len()
                ))),
                _ => Ok(None),
            };
        }
        let gone: Vec<i64> = s
            .map(|s| {
                s.deletes
                    .range(stored.rowid_min..=stored.rowid_max)
                    .map(|(&r, _)| r)
                    .filter(|r| !present.contains(r))
                    .collect()
            })
            .unwrap_or_default();
        let missing = stored.rows - present.len() as u64;
        if gone.len() as u64 != missing {
            return Err(bad(format!(
                "the other copy lacks {missing} of the block's {} rows, this copy deleted {} of them",
                stored.rows,
                gone.len()
            )));
        }
        Ok(Some(gone))
    }

    /// Drop the rows of `stored` missing from `present` (checked deleted
    /// on this copy: [`DiskStore::rows_gone`]) as a GROOM would, writing
    /// `bytes` (the rows left, None: none) in the block's place. `false`:
    /// not written.
    fn drop_groomed(
        &self,
        stored: &StoredBlock,
        present: &HashSet<i64>,
        bytes: Option<&Vec<u8>>,
    ) -> Result<bool> {
        if self.read_only {
            return Ok(false);
        }
        let key = Self::key_of(stored);
        let _gate = self.io_gate.read_recursive();
        let Some(_c) = self.commit_lock.try_lock() else {
            return Ok(false);
        };
        // Commits and grooms are held off from here: checked again, as is.
        let (gone, survivors) = {
            let inner = self.inner.lock();
            let Ok(Some(gone)) = self.rows_gone(stored, present, &inner) else {
                return Ok(false);
            };
            let mut survivors = inner.streams[&key].deletes.as_ref().clone();
            for r in &gone {
                survivors.remove(r);
            }
            (gone, survivors)
        };
        let moved = bytes.map(|b| self.write_fresh(stored, b)).transpose()?;
        let run = self.write_delete_run(key, &survivors)?;
        let mut inner = self.inner.lock();
        let Some(i) = Self::position(&inner, stored) else {
            return Ok(false);
        };
        let s = inner.streams.get_mut(&key).expect("stream exists");
        let before = (s.committed.clone(), s.deletes.clone(), s.runs.clone());
        let list = Arc::make_mut(&mut s.committed);
        match moved {
            Some(m) => list[i] = m,
            None => {
                list.remove(i);
            }
        }
        s.deletes = Arc::new(survivors);
        s.runs = run.into_iter().collect();
        drop(inner);
        info!(
            table = stored.table,
            slice = stored.slice,
            seq = stored.seq,
            rows_dropped = gone.len(),
            "took in a block the other copy had groomed"
        );
        self.land_generation(key, before)
    }
}

/// `batch` with the stored columns a block of `columns` holds: its first
/// user columns and its hidden ones (a wider block's added columns come
/// last, before the hidden ones).
fn fit_columns(batch: &RecordBatch, columns: usize) -> std::result::Result<RecordBatch, String> {
    let n = batch.num_columns();
    if columns < 3 || n < columns {
        return Err(format!(
            "the replacement holds {n} columns, the block {columns}"
        ));
    }
    let keep: Vec<usize> = (0..columns - 3).chain(n - 3..n).collect();
    batch.project(&keep).map_err(|e| e.to_string())
}

/// A stream's committed blocks, deletes and delete runs, as they were
/// before a change (put back if its generation fails).
type StreamState = (
    Arc<Vec<Arc<super::IndexedBlock>>>,
    Arc<std::collections::BTreeMap<i64, crate::Xid>>,
    Vec<DeleteRunMeta>,
);

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
    /// Stored columns the block holds (hidden ones included; fewer than
    /// the table's when it was written before columns were added).
    pub columns: usize,
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
            columns: block::count_zones(&meta.zones).unwrap_or(0),
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
/// [`EngineError::ChecksumMismatch`] or [`EngineError::CorruptBlock`]), or
/// cannot be read at all (an [`EngineError::Io`] of the read). It
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
    fn repair(&self, block: &StoredBlock, error: EngineError) -> Result<Repaired>;
}

/// What a repair hands the read that met a damaged block: encoded bytes of
/// the block (its table, slice and seq) and the rows they hold. Those are
/// the index's rows, or fewer only when the repairer checked that every row
/// missing was deleted on this copy and groomed away on the other
/// ([`DiskStore::take_replacement`]): no snapshot still open sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub bytes: Vec<u8>,
    pub rows: u64,
}

impl Repaired {
    /// All of the block `of`.
    pub fn whole(bytes: Vec<u8>, of: &StoredBlock) -> Repaired {
        Repaired {
            bytes,
            rows: of.rows,
        }
    }
}

/// No copy to repair from: the read fails with the original error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRepair;

impl BlockRepair for NoRepair {
    fn repair(&self, _block: &StoredBlock, error: EngineError) -> Result<Repaired> {
        Err(error)
    }
}

/// Decode what a repair returned for `stored`, verified as a disk read is
/// (with the rows the repair vouches for, never more than the index's).
fn decode_repaired(
    good: &Repaired,
    stored: &StoredBlock,
    projection: Option<&[usize]>,
) -> Result<RecordBatch> {
    if good.rows > stored.rows {
        return Err(EngineError::CorruptBlock {
            offset: stored.offset,
            reason: format!(
                "a replacement of {} rows for a block of {}",
                good.rows, stored.rows
            ),
        });
    }
    let loc = BlockLocation {
        rows: good.rows,
        ..stored.location()
    };
    block::decode_block(&good.bytes, &loc, projection.map(<[usize]>::to_vec))
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
    if let Err(e) = dev.read_at(stored.offset, &mut buf) {
        // A block that cannot be read at all goes the same way.
        let good = repair.repair(stored, e)?;
        return decode_repaired(&good, stored, projection);
    }
    match block::decode_block(&buf, &loc, projection.map(<[usize]>::to_vec)) {
        Err(e @ (EngineError::ChecksumMismatch { .. } | EngineError::CorruptBlock { .. })) => {
            counters.checksum_failed();
            drop(buf);
            let good = repair.repair(stored, e)?;
            decode_repaired(&good, stored, projection)
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
    use crate::store::{DiskStore, ScanSpec, SegmentKind, Snapshot, StoreOptions};

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
        fn repair(&self, block: &StoredBlock, error: EngineError) -> Result<Repaired> {
            self.calls.lock().push(*block);
            let good = self.good.lock().clone().ok_or(error)?;
            Ok(Repaired::whole(good, block))
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
                columns: block::count_zones(&b.zones).unwrap(),
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

    /// A block that cannot be read at all (an I/O error) goes through the
    /// seam too, and what comes back is verified and used.
    #[test]
    fn an_unreadable_block_goes_through_the_repair_seam() {
        let rec = Arc::new(Recording {
            calls: Mutex::new(Vec::new()),
            good: Mutex::new(None),
        });
        let (dev, store, b) = store_with(rec.clone());
        let good = dev.read_vec(b.offset, b.length as usize).unwrap();
        dev.set_unreadable(b.offset + 100, 512);
        let s = spec(SegmentKind::Primary, 1, 0);
        let res: Result<Vec<RecordBatch>> = store.scan(&s).unwrap().collect();
        assert!(matches!(res, Err(EngineError::Io { .. })), "{res:?}");
        assert_eq!(rec.calls.lock().len(), 1);
        *rec.good.lock() = Some(good.clone());
        assert_eq!(scan_all(&store, &s).unwrap(), rows(0, 500));
        // Written back, the sector reads again without the seam.
        let stored = first_block(&store);
        assert!(store.write_back(&stored, &good).unwrap());
        *rec.good.lock() = None;
        assert_eq!(scan_all(&store, &s).unwrap(), rows(0, 500));
        assert_eq!(rec.calls.lock().len(), 2);
    }

    /// A repair that writes the good bytes back into the store it serves,
    /// as the node's does.
    struct WritesBack {
        store: std::sync::OnceLock<std::sync::Weak<DiskStore>>,
        good: Vec<u8>,
        written: Mutex<Vec<bool>>,
    }

    impl BlockRepair for WritesBack {
        fn repair(&self, block: &StoredBlock, _error: EngineError) -> Result<Repaired> {
            let store = self.store.get().and_then(|s| s.upgrade()).unwrap();
            let written = store.write_back(block, &self.good)?;
            self.written.lock().push(written);
            Ok(Repaired::whole(self.good.clone(), block))
        }
    }

    /// GROOM reads through the seam too, and a repair that writes back
    /// from inside it does not wait on the groom's own locks: in place it
    /// writes, a move to fresh space (the metadata lock is the groom's) is
    /// left for later.
    #[test]
    fn groom_repairs_through_the_seam_without_waiting_on_itself() {
        for relocate in [false, true] {
            let (good_dev, good) = mem_store(1000);
            good.create_table(1, schema()).unwrap();
            good.append(SegmentKind::Primary, 1, 0, 1, &rows(0, 500))
                .unwrap();
            good.commit(1).unwrap();
            let b = first_block(&good);
            let mut bytes = good_dev.read_vec(b.offset, b.length as usize).unwrap();
            if relocate {
                let whole = LogicalBlock::from(&b);
                // A peer that re-encodes it uncompressed: longer.
                let none = DiskStore::create_with_device(
                    Arc::new(MemDevice::new(small_init().size)),
                    Path::new("mem"),
                    IDS,
                    small_init(),
                    StoreOptions {
                        compression: crate::block::Compression::None,
                        ..opts(100)
                    },
                )
                .unwrap();
                none.create_table(1, schema()).unwrap();
                none.append(SegmentKind::Primary, 1, 0, 1, &rows(0, 500))
                    .unwrap();
                none.commit(1).unwrap();
                bytes = none.fetch_block(SegmentKind::Primary, &whole).unwrap().0;
                assert_ne!(bytes.len() as u64, b.length);
            }
            let rep = Arc::new(WritesBack {
                store: std::sync::OnceLock::new(),
                good: bytes,
                written: Mutex::new(Vec::new()),
            });
            let (dev, store) = repairing_store(rep.clone(), 1000);
            let _ = rep.store.set(Arc::downgrade(&store));
            store.create_table(1, schema()).unwrap();
            store
                .append(SegmentKind::Primary, 1, 0, 1, &rows(0, 500))
                .unwrap();
            store.commit(1).unwrap();
            store
                .delete(SegmentKind::Primary, 1, 0, 2, &[1, 2, 3], None)
                .unwrap();
            store.commit(2).unwrap();
            dev.corrupt(b.offset + 60, 0x10);
            let g = store.groom(1, 3).unwrap();
            assert_eq!(g.rows_removed, 3);
            assert_eq!(*rep.written.lock(), vec![!relocate]);
            let s = spec(SegmentKind::Primary, 1, 0);
            assert_eq!(scan_all(&store, &s).unwrap(), rows(3, 497));
        }
    }

    fn first_block(store: &DiskStore) -> StoredBlock {
        let inner = store.inner.lock();
        let (k, s) = inner.streams.iter().next().unwrap();
        StoredBlock::new(1, k.segment, k.table, k.slice, &s.committed[0].meta)
    }

    /// The peer's copy holds the block as stored: the same bytes come back;
    /// written back over a damaged copy they read as the rows again.
    #[test]
    fn fetch_returns_the_stored_block_and_write_back_heals_in_place() {
        let (_, good) = mem_store(1000);
        let (dev, bad) = mem_store(1000);
        for s in [&good, &bad] {
            s.create_table(1, schema()).unwrap();
            s.append(SegmentKind::Primary, 1, 0, 1, &rows(0, 500))
                .unwrap();
            s.commit(1).unwrap();
        }
        let b = first_block(&bad);
        dev.corrupt(b.offset + 40, 0x10);
        let s = spec(SegmentKind::Primary, 1, 0);
        assert!(scan_all(&bad, &s).is_err());
        let (bytes, reencoded) = good
            .fetch_block(SegmentKind::Primary, &LogicalBlock::from(&b))
            .unwrap();
        assert!(!reencoded);
        check_replacement(&bytes, &b).unwrap();
        let mut wrong = bytes.clone();
        wrong[50] ^= 1;
        assert!(
            bad.write_back(&b, &wrong).is_err(),
            "bad bytes are never written"
        );
        assert!(bad.write_back(&b, &bytes).unwrap());
        assert_eq!(scan_all(&bad, &s).unwrap(), rows(0, 500));
        // A block the index no longer holds there is left alone.
        let gone = StoredBlock {
            offset: b.offset + 4096,
            ..b
        };
        assert!(!bad.write_back(&gone, &bytes).unwrap());
    }

    /// The peer's copy is split differently (100-row blocks): the rows with
    /// the damaged block's rowids come back as one block of its shape.
    #[test]
    fn fetch_reencodes_rows_from_another_layout() {
        let (_, split) = mem_store(100);
        let (_, whole) = mem_store(1000);
        for s in [&split, &whole] {
            s.create_table(1, schema()).unwrap();
            s.append(SegmentKind::Primary, 1, 0, 1, &rows(0, 500))
                .unwrap();
            s.commit(1).unwrap();
        }
        let b = first_block(&whole);
        assert_eq!(b.rows, 500);
        let (bytes, reencoded) = split
            .fetch_block(SegmentKind::Primary, &LogicalBlock::from(&b))
            .unwrap();
        assert!(reencoded);
        check_replacement(&bytes, &b).unwrap();
        let batch = block::decode_block(&bytes, &b.location(), Some(vec![0, 1, 2])).unwrap();
        assert_eq!(batch.columns(), rows(0, 500).columns());
        // Rows the peer lacks: the rows it has (the asker checks them
        // against its deletes); more rows than asked: an error.
        let more = LogicalBlock {
            rows: 600,
            rowid_max: b.rowid_max + 100,
            ..LogicalBlock::from(&b)
        };
        let (short, _) = split.fetch_block(SegmentKind::Primary, &more).unwrap();
        let (h, _) = block::inspect_block(&short, 1, 0).unwrap();
        assert_eq!(h.rows, 500);
        let fewer = LogicalBlock {
            rows: 400,
            ..LogicalBlock::from(&b)
        };
        assert!(split.fetch_block(SegmentKind::Primary, &fewer).is_err());
        assert!(split
            .fetch_block(SegmentKind::Mirror, &LogicalBlock::from(&b))
            .is_err());
    }

    /// Re-encoded bytes of another length go to fresh space, the index
    /// moved there durably: the repaired rows read back after a reopen.
    #[test]
    fn reencoded_bytes_of_another_length_are_written_to_fresh_space() {
        // The peer encodes without compression: its block is longer.
        let split = DiskStore::create_with_device(
            Arc::new(MemDevice::new(small_init().size)),
            Path::new("mem"),
            IDS,
            small_init(),
            StoreOptions {
                compression: crate::block::Compression::None,
                ..opts(100)
            },
        )
        .unwrap();
        let (dev, whole) = mem_store(1000);
        for s in [&split, &whole] {
            s.create_table(1, schema()).unwrap();
            s.append(SegmentKind::Primary, 1, 0, 1, &rows(0, 500))
                .unwrap();
            s.commit(1).unwrap();
        }
        let b = first_block(&whole);
        let (bytes, _) = split
            .fetch_block(SegmentKind::Primary, &LogicalBlock::from(&b))
            .unwrap();
        dev.corrupt(b.offset + 40, 0x10);
        let s = spec(SegmentKind::Primary, 1, 0);
        assert!(scan_all(&whole, &s).is_err());
        assert_ne!(bytes.len() as u64, b.length);
        assert!(whole.write_back(&b, &bytes).unwrap());
        let moved = first_block(&whole);
        assert_ne!(moved.offset, b.offset, "moved to fresh space");
        assert_eq!((moved.seq, moved.rows), (b.seq, b.rows));
        assert_eq!(scan_all(&whole, &s).unwrap(), rows(0, 500));
        let (_, again) = reopen_mem(dev.durable_image(), 1000).unwrap();
        assert_eq!(scan_all(&again, &s).unwrap(), rows(0, 500));
    }

    /// The committed blocks of (primary, table 1, slice 0).
    fn blocks(store: &DiskStore) -> Vec<StoredBlock> {
        store
            .export_slice(SegmentKind::Primary, 1, 0, &[])
            .unwrap()
            .blocks
    }

    /// The other copy groomed away rows this copy still holds (deleted
    /// here too): its short block, or no block at all, is taken in; the
    /// missing rows' deletes go with them, durably, and the copies stay
    /// equal. Rows missing that this copy did not delete are refused.
    #[test]
    fn a_block_the_other_copy_groomed_is_taken_in_without_the_rows_deleted_here() {
        let p = SegmentKind::Primary;
        let (_, peer) = mem_store(100);
        let (dev, here) = mem_store(100);
        for s in [&peer, &here] {
            s.create_table(1, schema()).unwrap();
            s.append(p, 1, 0, 1, &rows(0, 500)).unwrap();
            s.commit(1).unwrap();
        }
        let old = blocks(&here);
        assert_eq!(old.len(), 5);
        let (b0, b1, b2) = (old[0], old[1], old[2]);
        // Every third row of the first block, all of the second.
        let del: Vec<i64> = (b0.rowid_min..=b0.rowid_max)
            .filter(|r| r % 3 == 0)
            .chain(b1.rowid_min..=b1.rowid_max)
            .collect();
        for s in [&peer, &here] {
            s.delete(p, 1, 0, 2, &del, None).unwrap();
            s.commit(2).unwrap();
        }
        assert_eq!(peer.groom(1, 3).unwrap().rows_removed, del.len() as u64);
        let latest = Snapshot::latest();
        let want = peer.checksum(p, 1, 0, &latest).unwrap();
        assert_eq!(here.checksum(p, 1, 0, &latest).unwrap(), want);
        let stats = |s: &DiskStore| s.slice_stats()[0].rows;
        assert_eq!(stats(&here), stats(&peer));

        // A peer that lost a row this copy never deleted: refused.
        let (whole, _) = peer.fetch_block(p, &LogicalBlock::from(&b2)).unwrap();
        let batch = block::decode_block(&whole, &b2.location(), None).unwrap();
        let keep: arrow::array::BooleanArray =
            (0..batch.num_rows()).map(|i| Some(i != 7)).collect();
        let lost = arrow::compute::filter_record_batch(&batch, &keep).unwrap();
        let lost = block::encode_block(1, 0, b2.seq, &lost, block::Compression::Lz4).unwrap();
        let err = here.take_replacement(&b2, &lost.bytes).unwrap_err();
        assert!(matches!(err, EngineError::CorruptBlock { .. }), "{err}");
        // Nor is a block of another seq, or no block for one with live rows.
        let other = block::encode_block(1, 0, b2.seq + 1, &batch, block::Compression::Lz4).unwrap();
        assert!(here.take_replacement(&b2, &other.bytes).is_err());
        assert!(here.take_replacement(&b2, &[]).is_err());
        assert_eq!(blocks(&here), old, "nothing written for refused bytes");

        // The first block: its rows left, in fresh space.
        let (short, reencoded) = peer.fetch_block(p, &LogicalBlock::from(&b0)).unwrap();
        assert!(reencoded);
        let (got, written) = here.take_replacement(&b0, &short).unwrap();
        assert!(written.unwrap());
        let left = b0.rows - del.iter().filter(|&&r| r <= b0.rowid_max).count() as u64;
        assert_eq!(got.rows, left);
        assert_eq!(
            decode_repaired(&got, &b0, None).unwrap().num_rows() as u64,
            got.rows
        );
        // The second block: none left, dropped from the index.
        let (none, _) = peer.fetch_block(p, &LogicalBlock::from(&b1)).unwrap();
        assert!(none.is_empty());
        let (got, written) = here.take_replacement(&b1, &none).unwrap();
        assert!(written.unwrap());
        assert_eq!(got.rows, 0);
        assert_eq!(
            decode_repaired(&got, &b1, Some(&[0, 1]))
                .unwrap()
                .num_rows(),
            0
        );
        let now = blocks(&here);
        assert_eq!(now.len(), 4);
        assert_eq!(now[0].seq, b0.seq);
        assert_eq!(now[0].rows, left);
        assert_eq!(&now[1..], &old[2..]);
        assert_eq!(here.checksum(p, 1, 0, &latest).unwrap(), want);
        assert_eq!(stats(&here), stats(&peer));
        assert_eq!(
            scan_all(&here, &spec(p, 1, 0)).unwrap(),
            scan_all(&peer, &spec(p, 1, 0)).unwrap()
        );
        // A read that met the old block late takes the same rows, unwritten.
        let (again, written) = here.take_replacement(&b0, &short).unwrap();
        assert_eq!((again.rows, written.unwrap()), (now[0].rows, false));
        // Durable: the same after a reopen, and a groom here finds nothing
        // of those rows left to remove.
        let (_, reopened) = reopen_mem(dev.durable_image(), 100).unwrap();
        assert_eq!(reopened.checksum(p, 1, 0, &latest).unwrap(), want);
        assert_eq!(stats(&reopened), stats(&peer));
        assert_eq!(reopened.groom(1, 3).unwrap().rows_removed, 0);
    }

    /// A store in memory that repairs through `repair`.
    fn repairing_store(
        repair: Arc<dyn BlockRepair>,
        block_rows: usize,
    ) -> (Arc<MemDevice>, Arc<DiskStore>) {
        let dev = Arc::new(MemDevice::new(small_init().size));
        let opts = StoreOptions {
            repair,
            ..opts(block_rows)
        };
        let store =
            DiskStore::create_with_device(dev.clone(), Path::new("mem"), IDS, small_init(), opts)
                .unwrap();
        (dev, Arc::new(store))
    }

    /// Repairs from a peer's store as the node does: its fetch, this
    /// store's take_replacement.
    struct FromPeer {
        peer: DiskStore,
        here: std::sync::OnceLock<std::sync::Weak<DiskStore>>,
        written: Mutex<Vec<bool>>,
    }

    impl BlockRepair for FromPeer {
        fn repair(&self, block: &StoredBlock, _error: EngineError) -> Result<Repaired> {
            let here = self.here.get().and_then(|s| s.upgrade()).unwrap();
            let (bytes, _) = self
                .peer
                .fetch_block(block.segment, &LogicalBlock::from(block))?;
            let (good, written) = here.take_replacement(block, &bytes)?;
            self.written.lock().push(written?);
            Ok(good)
        }
    }

    /// This copy's GROOM (a lower horizon than the peer's) meets a damaged
    /// block the peer groomed further: the repair hands it the rows left
    /// (not written: the groom holds the metadata), and the groom drops the
    /// deletes of the rows it was not handed too, so the copies stay equal
    /// in rows, checksums and row counts.
    #[test]
    fn a_groom_handed_a_groomed_block_drops_the_deletes_of_the_rows_gone() {
        let p = SegmentKind::Primary;
        let (_, peer) = mem_store(100);
        let rep = Arc::new(FromPeer {
            peer,
            here: std::sync::OnceLock::new(),
            written: Mutex::new(Vec::new()),
        });
        let (dev, here) = repairing_store(rep.clone(), 100);
        let _ = rep.here.set(Arc::downgrade(&here));
        for s in [&rep.peer, here.as_ref()] {
            s.create_table(1, schema()).unwrap();
            s.append(p, 1, 0, 1, &rows(0, 500)).unwrap();
            s.commit(1).unwrap();
            // Two deletes: xid 2 and xid 4.
            let all: Vec<i64> = s
                .export_slice(p, 1, 0, &[])
                .unwrap()
                .blocks
                .iter()
                .flat_map(|b| b.rowid_min..=b.rowid_max)
                .collect();
            let threes: Vec<i64> = all.iter().copied().filter(|r| r % 3 == 0).collect();
            let fives: Vec<i64> = all
                .iter()
                .copied()
                .filter(|r| r % 5 == 0 && r % 3 != 0)
                .collect();
            s.delete(p, 1, 0, 2, &threes, None).unwrap();
            s.commit(2).unwrap();
            s.delete(p, 1, 0, 4, &fives, None).unwrap();
            s.commit(4).unwrap();
        }
        // The peer grooms both deletes away; this copy only the first,
        // and meets its first block damaged.
        rep.peer.groom(1, 5).unwrap();
        let b0 = here.export_slice(p, 1, 0, &[]).unwrap().blocks[0];
        dev.corrupt(b0.offset + b0.length / 2, 0x10);
        here.groom(1, 3).unwrap();
        assert_eq!(*rep.written.lock(), vec![false], "one repair, not written");
        let latest = Snapshot::latest();
        assert_eq!(
            here.checksum(p, 1, 0, &latest).unwrap(),
            rep.peer.checksum(p, 1, 0, &latest).unwrap()
        );
        let stats = |s: &DiskStore| s.slice_stats()[0].rows;
        assert_eq!(stats(&here), stats(&rep.peer));
        assert_eq!(
            scan_all(&here, &spec(p, 1, 0)).unwrap(),
            scan_all(&rep.peer, &spec(p, 1, 0)).unwrap()
        );
        // The later groom of the second delete removes the rest.
        here.groom(1, 5).unwrap();
        assert_eq!(stats(&here), stats(&rep.peer));
        assert_eq!(
            here.checksum(p, 1, 0, &latest).unwrap(),
            rep.peer.checksum(p, 1, 0, &latest).unwrap()
        );
    }
}
