//! Appends: rows of a transaction encoded into new blocks (with rowids and
//! the hidden columns), blocks a primary forwarded written as they are, and
//! the space they go into.
//!
//! What it writes is pending under its xid: neither durable nor visible
//! until `commit`. It must never hold `inner` across encoding or I/O, nor
//! assign a rowid twice in a stream.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::Schema;

use super::{read_only_err, DiskStore, IndexedBlock, Inner, PendingBlock, Stream};
use crate::block::{self, ZoneMap};
use crate::disk::meta::{BlockMeta, StreamKey};
use crate::disk::SegmentKind;
use crate::{EngineError, Result, SliceId, TableId, Xid};

/// A verified block ready to be written: [`DiskStore::accept_encoded`].
pub(super) struct Accepted {
    pub(super) key: StreamKey,
    pub(super) header: block::BlockHeader,
    pub(super) zone_bytes: Arc<[u8]>,
    pub(super) zones: Vec<ZoneMap>,
}

impl DiskStore {
    fn check_batch(table: TableId, user: &Schema, batch: &RecordBatch) -> Result<()> {
        let bs = batch.schema();
        let mismatch = |reason: String| EngineError::SchemaMismatch { table, reason };
        if bs.fields().len() != user.fields().len() {
            return Err(mismatch(format!(
                "batch has {} columns, table has {}",
                bs.fields().len(),
                user.fields().len()
            )));
        }
        for (i, (b, t)) in bs.fields().iter().zip(user.fields()).enumerate() {
            if b.name() != t.name() || b.data_type() != t.data_type() {
                return Err(mismatch(format!(
                    "column {i} is {} {}, table has {} {}",
                    b.name(),
                    b.data_type(),
                    t.name(),
                    t.data_type()
                )));
            }
            if !t.is_nullable() && batch.column(i).null_count() > 0 {
                return Err(mismatch(format!(
                    "column {} is NOT NULL but the batch has nulls",
                    t.name()
                )));
            }
        }
        Ok(())
    }

    /// Append rows for `xid`: split into blocks of at most `block_rows`, assign
    /// rowids, add hidden columns, encode and write. Neither durable nor
    /// visible until [`DiskStore::commit`].
    pub fn append(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        xid: Xid,
        batch: &RecordBatch,
    ) -> Result<u64> {
        self.append_inner(segment, table, slice, xid, batch, false)
            .map(|(n, _)| n)
    }

    /// [`DiskStore::append`], also returning the encoded blocks so a primary
    /// can forward them, byte for byte, to the slice's mirror.
    pub fn append_for_mirror(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        xid: Xid,
        batch: &RecordBatch,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        self.append_inner(segment, table, slice, xid, batch, true)
    }

    pub(super) fn check_writable(&self, xid: Xid) -> Result<i64> {
        if self.read_only {
            return Err(read_only_err());
        }
        if xid == 0 {
            return Err(EngineError::InvalidRequest(
                "xid 0 is not a transaction".into(),
            ));
        }
        let xid_i = i64::try_from(xid)
            .map_err(|_| EngineError::InvalidRequest(format!("xid {xid} out of range")))?;
        Ok(xid_i)
    }

    fn append_inner(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        xid: Xid,
        batch: &RecordBatch,
        keep: bool,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let xid_i = self.check_writable(xid)?;
        let _gate = self.io_gate.read();
        let n = batch.num_rows();
        let key = StreamKey {
            segment,
            table,
            slice,
        };
        let nblocks = n.div_ceil(self.opts.block_rows);
        let (user, to_physical, first_rowid, first_seq) = {
            let mut inner = self.inner.lock();
            let t = inner
                .tables
                .get(&table)
                .ok_or(EngineError::TableNotFound(table))?;
            Self::check_batch(table, &t.user, batch)?;
            let to_physical = t.writer();
            let user = to_physical.schema.clone();
            if n == 0 {
                return Ok((0, Vec::new()));
            }
            Self::mark_dirty(&mut inner, xid)?;
            let s = inner.streams.entry(key).or_insert_with(Stream::empty);
            let first = (s.next_rowid, s.next_seq);
            s.next_rowid += n as i64;
            s.next_seq += nblocks as u64;
            (user, to_physical, first.0, first.1)
        };
        let mut kept = Vec::new();
        for b in 0..nblocks {
            let start = b * self.opts.block_rows;
            let len = self.opts.block_rows.min(n - start);
            let cols: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .map(|c| c.slice(start, len))
                .collect();
            let cols = to_physical.to_physical(cols, len);
            let rowid0 = first_rowid + start as i64;
            let user_batch = RecordBatch::try_new(user.clone(), cols).map_err(|e| {
                EngineError::SchemaMismatch {
                    table,
                    reason: e.to_string(),
                }
            })?;
            let seq = first_seq + b as u64;
            // Hidden columns implicit: this write's rowids are contiguous,
            // all rows are created by `xid` and none is deleted.
            let enc = block::encode_new_rows(
                table,
                slice,
                seq,
                &user_batch,
                rowid0,
                xid_i,
                self.opts.compression,
            )?;
            self.write_pending(
                key,
                xid,
                &enc.bytes,
                &enc.header,
                Arc::from(enc.zone_bytes),
                enc.zones,
            )?;
            if keep {
                kept.push(enc.bytes);
            }
        }
        Ok((n as u64, kept))
    }

    /// Start a change of one of `table`'s streams under `xid`, with `inner`
    /// held: the table must exist, and `xid` is noted as written to.
    pub(super) fn begin_change(inner: &mut Inner, table: TableId, xid: Xid) -> Result<()> {
        if !inner.tables.contains_key(&table) {
            return Err(EngineError::TableNotFound(table));
        }
        Self::mark_dirty(inner, xid)
    }

    /// Note a write to `xid`: it must be prepared again before it is durable.
    pub(super) fn mark_dirty(inner: &mut Inner, xid: Xid) -> Result<()> {
        inner.pending.entry(xid).or_default().dirty = true;
        Ok(())
    }

    pub(super) fn write_pending(
        &self,
        key: StreamKey,
        xid: Xid,
        bytes: &[u8],
        h: &block::BlockHeader,
        zone_bytes: Arc<[u8]>,
        zones: Vec<ZoneMap>,
    ) -> Result<()> {
        let offset = self.allocate(key, bytes.len() as u64)?;
        self.dev.write_at(offset, bytes)?;
        // The prepare's sync then finds most of the transaction's data on
        // its way to the disk already, instead of all of it at once.
        self.dev.start_writeback(offset, bytes.len() as u64);
        self.add_pending(key, xid, offset, bytes.len() as u64, h, zone_bytes, zones);
        Ok(())
    }

    /// Note a block of `xid` at `offset` in `key`'s extents.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_pending(
        &self,
        key: StreamKey,
        xid: Xid,
        offset: u64,
        length: u64,
        h: &block::BlockHeader,
        zone_bytes: Arc<[u8]>,
        zones: Vec<ZoneMap>,
    ) {
        self.counters.written(key.segment, h.rows, length);
        let indexed = IndexedBlock {
            meta: BlockMeta {
                offset,
                length,
                seq: h.seq,
                rows: h.rows,
                rowid_min: h.rowid_min,
                rowid_max: h.rowid_max,
                createxid_min: h.createxid_min,
                createxid_max: h.createxid_max,
                zones: zone_bytes,
            },
            zones,
        };
        self.inner
            .lock()
            .pending
            .entry(xid)
            .or_default()
            .blocks
            .push(PendingBlock {
                key,
                block: Arc::new(indexed),
            });
    }

    /// Append a block encoded elsewhere (the primary's bytes, forwarded to a
    /// mirror): verified, written as is, pending under `xid`. The rows keep
    /// the primary's rowids and createxids: the mirror is logical, not physical.
    pub fn append_encoded(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        xid: Xid,
        bytes: &[u8],
    ) -> Result<u64> {
        Ok(self
            .append_encoded_unless(segment, table, slice, xid, bytes, &[])?
            .unwrap_or(0))
    }

    /// [`DiskStore::append_encoded`], unless the block was written by an
    /// xid in `held` (sorted): then nothing is written and `None` answered.
    pub fn append_encoded_unless(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        xid: Xid,
        bytes: &[u8],
        held: &[Xid],
    ) -> Result<Option<u64>> {
        let _gate = self.io_gate.read();
        let Some(b) = self.accept_encoded(segment, table, slice, xid, bytes, held)? else {
            return Ok(None);
        };
        self.write_pending(b.key, xid, bytes, &b.header, b.zone_bytes, b.zones)?;
        Ok(Some(b.header.rows))
    }

    /// Move the stream's next rowid and block sequence past those of a
    /// block encoded elsewhere (a forward staged for a later prepare, or
    /// for adoption): rows this copy writes itself never take its rowids.
    /// A block that does not parse, or of an unknown table, changes nothing
    /// (it fails when it is applied).
    pub fn reserve_past(&self, segment: SegmentKind, table: TableId, slice: SliceId, bytes: &[u8]) {
        let Some(h) = block::peek_header(bytes) else {
            return;
        };
        let mut inner = self.inner.lock();
        if !inner.tables.contains_key(&table) {
            return;
        }
        let s = inner
            .streams
            .entry(StreamKey {
                segment,
                table,
                slice,
            })
            .or_insert_with(Stream::empty);
        s.next_rowid = s.next_rowid.max(h.rowid_max.saturating_add(1));
        s.next_seq = s.next_seq.max(h.seq.saturating_add(1));
    }

    /// Verify a block encoded elsewhere and note it on its stream (rowids
    /// and seqs stay ahead of it), unless an xid in `held` wrote it: what
    /// it takes to write it pending under `xid`.
    pub(super) fn accept_encoded(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        xid: Xid,
        bytes: &[u8],
        held: &[Xid],
    ) -> Result<Option<Accepted>> {
        self.check_writable(xid)?;
        let (h, zone_bytes) = block::inspect_block(bytes, table, slice)?;
        if held.binary_search(&h.createxid_max).is_ok() {
            return Ok(None);
        }
        let key = StreamKey {
            segment,
            table,
            slice,
        };
        let zones = {
            let mut inner = self.inner.lock();
            let t = inner
                .tables
                .get(&table)
                .ok_or(EngineError::TableNotFound(table))?;
            // A block written before the table gained columns holds fewer
            // (a slice copy sends old blocks as they are).
            if h.columns as usize > t.stored.fields().len() || h.columns < 3 {
                return Err(EngineError::SchemaMismatch {
                    table,
                    reason: format!(
                        "forwarded block has {} columns, table stores {}",
                        h.columns,
                        t.stored.fields().len()
                    ),
                });
            }
            let zones = t.zones(&zone_bytes, h.rows)?;
            if zones.len() != h.columns as usize {
                return Err(EngineError::CorruptBlock {
                    offset: 0,
                    reason: format!("{} zone maps for {} columns", zones.len(), h.columns),
                });
            }
            Self::mark_dirty(&mut inner, xid)?;
            let s = inner.streams.entry(key).or_insert_with(Stream::empty);
            s.next_rowid = s.next_rowid.max(h.rowid_max.saturating_add(1));
            s.next_seq = s.next_seq.max(h.seq + 1);
            zones
        };
        Ok(Some(Accepted {
            key,
            header: h,
            zone_bytes: Arc::from(zone_bytes),
            zones,
        }))
    }

    /// Space for `len` bytes in the stream's current extent run, or a new run.
    /// A segment full while dropped space waits for its older readers
    /// (`reclaim`) is tried again a few times over half a second: a scrub's
    /// or a short scan's read ends in milliseconds.
    pub(super) fn allocate(&self, key: StreamKey, len: u64) -> Result<u64> {
        for _ in 0..50 {
            match self.try_allocate(key, len) {
                Err(EngineError::SegmentFull { .. }) if !self.inner.lock().parked.is_empty() => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
        self.try_allocate(key, len)
    }

    fn try_allocate(&self, key: StreamKey, len: u64) -> Result<u64> {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        self.release_parked(inner);
        let s = inner.streams.entry(key).or_insert_with(Stream::empty);
        if let Some(last) = s.extents.last() {
            if last.end() - s.fill >= len {
                let off = s.fill;
                s.fill += len;
                return Ok(off);
            }
        }
        let run = inner.alloc.alloc(key.segment, len)?;
        s.extents.push(run);
        s.fill = run.offset + len;
        Ok(run.offset)
    }
}
