//! The slice store: tables' blocks per (segment, table, slice) on one disk.
//!
//! It owns the committed state of a disk (tables, extents, block index) and
//! the pending blocks of open transactions, assigns rowids, adds the hidden
//! columns, and answers scans. Durability is the commit protocol of
//! docs/disk-format.md: data is synced, then the next metadata slot is written
//! and synced; nothing is visible before, everything after.
//!
//! Locking: `inner` (a short mutex) guards the in-memory state and is never
//! held across block encoding or data I/O. `commit_lock` serializes metadata
//! writers (commit, create/drop table) so generations stay ordered. `io_gate`
//! lets `drop_table` wait for appends still writing into the table's extents
//! before those extents are freed for reuse.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, RecordBatchOptions};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Schema, SchemaRef};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tracing::{debug, info, warn};

pub use crate::block::Compression;
use crate::block::{self, BlockLocation, ZoneMap};
use crate::disk::alloc::SegmentAllocator;
use crate::disk::meta::{
    self, BlockMeta, ExtentRun, MetaState, SlotStatus, StreamKey, StreamMeta, TableMeta,
};
use crate::disk::superblock::SUPERBLOCK_SIZE;
pub use crate::disk::SegmentKind;
use crate::disk::{BlockDevice, FileDevice, Superblock};
use crate::predicate::Predicate;
use crate::{DiskId, EngineError, NodeId, Result, SliceId, TableId, Xid};

/// Who a disk belongs to; written into the superblock at init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct DiskIds {
    pub cluster_id: [u8; 16],
    pub node_id: NodeId,
    pub disk_id: DiskId,
}

/// Runtime options of a store (not part of the image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most rows per block. Default 16384.
    pub block_rows: usize,
    /// Payload compression of new blocks. Default LZ4.
    pub compression: Compression,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            block_rows: 16384,
            compression: Compression::Lz4,
        }
    }
}

/// Layout chosen at `disk init`, fixed for the image's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOptions {
    /// Image size in bytes (the file is sparse).
    pub size: u64,
    /// Allocation unit inside segments. Default 4 MiB; a multiple of 4 KiB.
    pub extent_size: u64,
    /// Size of each of the two metadata slots. Default 4 MiB; a multiple of 4 KiB.
    pub meta_slot_size: u64,
}

impl InitOptions {
    pub const DEFAULT_EXTENT_SIZE: u64 = 4 << 20;
    pub const DEFAULT_META_SLOT_SIZE: u64 = 4 << 20;

    /// Defaults for an image of `size` bytes.
    pub fn new(size: u64) -> Self {
        InitOptions {
            size,
            extent_size: Self::DEFAULT_EXTENT_SIZE,
            meta_slot_size: Self::DEFAULT_META_SLOT_SIZE,
        }
    }
}

/// What a scan reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanSpec {
    pub segment: SegmentKind,
    pub table: TableId,
    pub slice: SliceId,
    /// Indices into the user schema; `None` = all user columns.
    pub projection: Option<Vec<usize>>,
    /// Over user column indices; rows where it is not TRUE are dropped.
    pub predicate: Option<Predicate>,
    /// Append `_rowid`, `_createxid`, `_deletexid` after the projection.
    pub include_hidden: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScanStats {
    pub blocks_total: u64,
    pub blocks_pruned: u64,
    pub blocks_read: u64,
    pub rows_read: u64,
    pub rows_returned: u64,
}

/// Committed contents of one (segment, table, slice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliceStat {
    pub segment: SegmentKind,
    pub table: TableId,
    pub slice: SliceId,
    pub rows: u64,
    pub bytes: u64,
    pub blocks: u64,
}

struct TableEntry {
    user: SchemaRef,
    stored: SchemaRef,
    schema_ipc: Vec<u8>,
}

/// A block in the index, with its zone maps decoded once.
#[derive(Debug)]
struct IndexedBlock {
    meta: BlockMeta,
    zones: Vec<ZoneMap>,
}

struct PendingBlock {
    key: StreamKey,
    block: Arc<IndexedBlock>,
}

struct Stream {
    /// Extent runs in allocation order; appends go into the last one.
    extents: Vec<ExtentRun>,
    /// Next free byte in the last run.
    fill: u64,
    next_rowid: i64,
    next_seq: u64,
    /// Copy-on-write so a scan can hold a snapshot without a lock.
    committed: Arc<Vec<Arc<IndexedBlock>>>,
}

impl Stream {
    fn empty() -> Stream {
        Stream {
            extents: Vec::new(),
            fill: 0,
            next_rowid: 1,
            next_seq: 1,
            committed: Arc::new(Vec::new()),
        }
    }
}

struct Inner {
    tables: BTreeMap<TableId, TableEntry>,
    streams: BTreeMap<StreamKey, Stream>,
    alloc: [SegmentAllocator; 3],
    pending: HashMap<Xid, Vec<PendingBlock>>,
    generation: u64,
    slots: [SlotStatus; 2],
}

/// One disk's slice store. `Send + Sync`; share it as `Arc<DiskStore>`.
pub struct DiskStore {
    dev: Arc<dyn BlockDevice>,
    path: PathBuf,
    sb: Superblock,
    opts: StoreOptions,
    read_only: bool,
    inner: Mutex<Inner>,
    commit_lock: Mutex<()>,
    io_gate: RwLock<()>,
}

fn schema_to_ipc(schema: &Schema) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, schema)?;
    w.finish()?;
    drop(w);
    Ok(buf)
}

fn schema_from_ipc(bytes: &[u8], table: TableId) -> Result<SchemaRef> {
    arrow::ipc::reader::StreamReader::try_new(Cursor::new(bytes), None)
        .map(|r| r.schema())
        .map_err(|e| EngineError::CorruptMetadata(format!("schema of table {table}: {e}")))
}

fn read_only_err() -> EngineError {
    EngineError::InvalidRequest("disk is open read-only".into())
}

impl DiskStore {
    /// Initialize a new image at `path` (which must not exist) and open it.
    pub fn create(
        path: &Path,
        ids: DiskIds,
        init: InitOptions,
        opts: StoreOptions,
    ) -> Result<DiskStore> {
        // Validate the layout before creating anything.
        Superblock::layout(
            ids.cluster_id,
            ids.node_id,
            ids.disk_id,
            init.size,
            init.extent_size,
            init.meta_slot_size,
        )?;
        let dev = FileDevice::create(path, init.size)?;
        Self::create_with_device(Arc::new(dev), path, ids, init, opts)
    }

    /// Initialize an image on any device (tests use [`crate::disk::MemDevice`]).
    /// Writes the superblock and an empty generation 0 into slot 0, then syncs.
    pub fn create_with_device(
        dev: Arc<dyn BlockDevice>,
        path: &Path,
        ids: DiskIds,
        init: InitOptions,
        opts: StoreOptions,
    ) -> Result<DiskStore> {
        let sb = Superblock::layout(
            ids.cluster_id,
            ids.node_id,
            ids.disk_id,
            init.size,
            init.extent_size,
            init.meta_slot_size,
        )?;
        if dev.len()? < sb.image_size {
            return Err(EngineError::InvalidRequest(format!(
                "device {} is smaller than the image size {}",
                dev.name(),
                sb.image_size
            )));
        }
        dev.write_at(0, &sb.encode())?;
        meta::write_slot(dev.as_ref(), &sb, 0, &MetaState::default().encode())?;
        info!(path = %path.display(), node_id = ids.node_id, disk_id = ids.disk_id, size = init.size, "initialized disk image");
        Self::open_with_device(dev, path, opts, false)
    }

    /// Open an image read-write. Recovers exactly the last committed state.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<DiskStore> {
        let dev = FileDevice::open(path, true)?;
        Self::open_with_device(Arc::new(dev), path, opts, false)
    }

    /// Open an image read-only (`slicedb disk inspect`): scans and reports work,
    /// every write fails.
    pub fn open_read_only(path: &Path) -> Result<DiskStore> {
        let dev = FileDevice::open(path, false)?;
        Self::open_with_device(Arc::new(dev), path, StoreOptions::default(), true)
    }

    /// Open an image on any device.
    pub fn open_with_device(
        dev: Arc<dyn BlockDevice>,
        path: &Path,
        opts: StoreOptions,
        read_only: bool,
    ) -> Result<DiskStore> {
        if opts.block_rows == 0 {
            return Err(EngineError::InvalidRequest(
                "block_rows must be positive".into(),
            ));
        }
        let len = dev.len()?;
        if len < SUPERBLOCK_SIZE {
            return Err(EngineError::NotAnImage(format!(
                "{}: {len} bytes is too short for a superblock",
                dev.name()
            )));
        }
        let mut buf = vec![0u8; SUPERBLOCK_SIZE as usize];
        dev.read_at(0, &mut buf)?;
        let sb = Superblock::decode(&buf, dev.name())?;
        if len < sb.image_size {
            return Err(EngineError::CorruptMetadata(format!(
                "{}: image is {len} bytes, superblock says {}",
                dev.name(),
                sb.image_size
            )));
        }
        let (generation, state, slots) = meta::read_latest(dev.as_ref(), &sb)?;
        let inner = Self::recover(&sb, state, generation, slots)?;
        debug!(path = %path.display(), generation, tables = inner.tables.len(), "opened disk image");
        Ok(DiskStore {
            dev,
            path: path.to_path_buf(),
            sb,
            opts,
            read_only,
            inner: Mutex::new(inner),
            commit_lock: Mutex::new(()),
            io_gate: RwLock::new(()),
        })
    }

    /// Rebuild the in-memory state from a committed metadata state. Blocks
    /// written after it are not in the index: their space is simply free again
    /// (a torn tail). Extents holding no committed block are freed too.
    fn recover(
        sb: &Superblock,
        state: MetaState,
        generation: u64,
        slots: [SlotStatus; 2],
    ) -> Result<Inner> {
        let corrupt = |m: String| EngineError::CorruptMetadata(m);
        let mut tables = BTreeMap::new();
        for t in state.tables {
            let user = schema_from_ipc(&t.schema_ipc, t.id)?;
            let stored = block::stored_schema(&user);
            if tables
                .insert(
                    t.id,
                    TableEntry {
                        user,
                        stored,
                        schema_ipc: t.schema_ipc,
                    },
                )
                .is_some()
            {
                return Err(corrupt(format!("table {} listed twice", t.id)));
            }
        }
        let mut alloc =
            SegmentKind::ALL.map(|k| SegmentAllocator::new(sb.segment(k), sb.extent_size));
        let mut streams = BTreeMap::new();
        for s in state.streams {
            let Some(table) = tables.get(&s.key.table) else {
                return Err(corrupt(format!("stream of unknown table {}", s.key.table)));
            };
            if s.blocks.is_empty() {
                continue;
            }
            let mut kept: Vec<ExtentRun> = Vec::new();
            for e in &s.extents {
                if s.blocks
                    .iter()
                    .any(|b| b.offset >= e.offset && b.offset < e.end())
                {
                    alloc[s.key.segment.index()].reserve(*e)?;
                    kept.push(*e);
                }
            }
            let mut committed = Vec::with_capacity(s.blocks.len());
            let (mut next_rowid, mut next_seq) = (1i64, 1u64);
            for b in s.blocks {
                if !kept
                    .iter()
                    .any(|e| b.offset >= e.offset && b.end() <= e.end())
                    || b.length == 0
                {
                    return Err(corrupt(format!(
                        "block at {} (+{}) of table {} slice {} lies outside its extents",
                        b.offset, b.length, s.key.table, s.key.slice
                    )));
                }
                let zones = block::decode_zones(&b.zones, &table.stored, b.rows)?;
                next_rowid = next_rowid.max(b.rowid_max.saturating_add(1));
                next_seq = next_seq.max(b.seq + 1);
                committed.push(Arc::new(IndexedBlock { meta: b, zones }));
            }
            let last = kept[kept.len() - 1];
            let fill = committed
                .iter()
                .filter(|b| b.meta.offset >= last.offset && b.meta.offset < last.end())
                .map(|b| b.meta.end())
                .max()
                .unwrap_or(last.offset);
            streams.insert(
                s.key,
                Stream {
                    extents: kept,
                    fill,
                    next_rowid,
                    next_seq,
                    committed: Arc::new(committed),
                },
            );
        }
        Ok(Inner {
            tables,
            streams,
            alloc,
            pending: HashMap::new(),
            generation,
            slots,
        })
    }

    pub fn ids(&self) -> DiskIds {
        DiskIds {
            cluster_id: self.sb.cluster_id,
            node_id: self.sb.node_id,
            disk_id: self.sb.disk_id,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The committed state as written to a slot, plus `extra` blocks.
    fn meta_state(inner: &Inner, extra: &[PendingBlock]) -> MetaState {
        let tables = inner
            .tables
            .iter()
            .map(|(id, t)| TableMeta {
                id: *id,
                schema_ipc: t.schema_ipc.clone(),
            })
            .collect();
        let streams = inner
            .streams
            .iter()
            .filter(|(_, s)| !s.extents.is_empty())
            .map(|(key, s)| {
                let mut blocks: Vec<BlockMeta> =
                    s.committed.iter().map(|b| b.meta.clone()).collect();
                blocks.extend(
                    extra
                        .iter()
                        .filter(|p| p.key == *key)
                        .map(|p| p.block.meta.clone()),
                );
                StreamMeta {
                    key: *key,
                    extents: s.extents.clone(),
                    blocks,
                }
            })
            .collect();
        MetaState { tables, streams }
    }

    /// Write `state` as the next generation (the caller holds `commit_lock`).
    fn write_generation(&self, generation: u64, state: &MetaState) -> Result<()> {
        let payload = state.encode();
        meta::write_slot(self.dev.as_ref(), &self.sb, generation, &payload)
    }

    /// Create a table. Durable when it returns. Idempotent for an identical schema.
    pub fn create_table(&self, table: TableId, schema: SchemaRef) -> Result<()> {
        if self.read_only {
            return Err(read_only_err());
        }
        for f in schema.fields() {
            if [
                crate::HIDDEN_ROWID,
                crate::HIDDEN_CREATEXID,
                crate::HIDDEN_DELETEXID,
            ]
            .contains(&f.name().as_str())
            {
                return Err(EngineError::InvalidRequest(format!(
                    "column name {} is reserved",
                    f.name()
                )));
            }
        }
        let _c = self.commit_lock.lock();
        let (generation, mut state) = {
            let inner = self.inner.lock();
            if let Some(t) = inner.tables.get(&table) {
                return if *t.user == *schema {
                    Ok(())
                } else {
                    Err(EngineError::TableExists(table))
                };
            }
            (inner.generation + 1, Self::meta_state(&inner, &[]))
        };
        let schema_ipc = schema_to_ipc(&schema)?;
        state.tables.push(TableMeta {
            id: table,
            schema_ipc: schema_ipc.clone(),
        });
        state.tables.sort_by_key(|t| t.id);
        self.write_generation(generation, &state)?;
        let mut inner = self.inner.lock();
        inner.generation = generation;
        inner.tables.insert(
            table,
            TableEntry {
                stored: block::stored_schema(&schema),
                user: schema,
                schema_ipc,
            },
        );
        info!(table, generation, "created table");
        Ok(())
    }

    /// Drop a table: durable when it returns; its extents in every segment are
    /// free for reuse; its pending blocks are forgotten. Ok if absent.
    pub fn drop_table(&self, table: TableId) -> Result<()> {
        if self.read_only {
            return Err(read_only_err());
        }
        let _c = self.commit_lock.lock();
        // Wait for appends still writing into this table's extents.
        let _gate = self.io_gate.write();
        let (generation, mut state) = {
            let inner = self.inner.lock();
            if !inner.tables.contains_key(&table) {
                return Ok(());
            }
            (inner.generation + 1, Self::meta_state(&inner, &[]))
        };
        state.tables.retain(|t| t.id != table);
        state.streams.retain(|s| s.key.table != table);
        self.write_generation(generation, &state)?;
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        inner.generation = generation;
        inner.tables.remove(&table);
        let keys: Vec<StreamKey> = inner
            .streams
            .keys()
            .filter(|k| k.table == table)
            .copied()
            .collect();
        for k in keys {
            if let Some(s) = inner.streams.remove(&k) {
                for e in s.extents {
                    inner.alloc[k.segment.index()].release(e);
                }
            }
        }
        for blocks in inner.pending.values_mut() {
            blocks.retain(|p| p.key.table != table);
        }
        info!(table, generation, "dropped table");
        Ok(())
    }

    pub fn table_schema(&self, table: TableId) -> Result<SchemaRef> {
        self.inner
            .lock()
            .tables
            .get(&table)
            .map(|t| t.user.clone())
            .ok_or(EngineError::TableNotFound(table))
    }

    pub fn tables(&self) -> Vec<TableId> {
        self.inner.lock().tables.keys().copied().collect()
    }

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
        if self.read_only {
            return Err(read_only_err());
        }
        if xid == 0 {
            return Err(EngineError::InvalidRequest(
                "xid 0 is not a transaction".into(),
            ));
        }
        let _gate = self.io_gate.read();
        let n = batch.num_rows();
        let key = StreamKey {
            segment,
            table,
            slice,
        };
        let nblocks = n.div_ceil(self.opts.block_rows);
        let (stored, first_rowid, first_seq) = {
            let mut inner = self.inner.lock();
            let t = inner
                .tables
                .get(&table)
                .ok_or(EngineError::TableNotFound(table))?;
            Self::check_batch(table, &t.user, batch)?;
            let stored = t.stored.clone();
            if n == 0 {
                return Ok(0);
            }
            let s = inner.streams.entry(key).or_insert_with(Stream::empty);
            let first = (s.next_rowid, s.next_seq);
            s.next_rowid += n as i64;
            s.next_seq += nblocks as u64;
            (stored, first.0, first.1)
        };
        let xid_i = i64::try_from(xid)
            .map_err(|_| EngineError::InvalidRequest(format!("xid {xid} out of range")))?;
        for b in 0..nblocks {
            let start = b * self.opts.block_rows;
            let len = self.opts.block_rows.min(n - start);
            let mut cols: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .map(|c| c.slice(start, len))
                .collect();
            let rowid0 = first_rowid + start as i64;
            cols.push(Arc::new(Int64Array::from_iter_values(
                rowid0..rowid0 + len as i64,
            )));
            cols.push(Arc::new(Int64Array::from_value(xid_i, len)));
            cols.push(Arc::new(Int64Array::from_value(0, len)));
            let stored_batch = RecordBatch::try_new(stored.clone(), cols).map_err(|e| {
                EngineError::SchemaMismatch {
                    table,
                    reason: e.to_string(),
                }
            })?;
            let seq = first_seq + b as u64;
            let enc = block::encode_block(table, slice, seq, &stored_batch, self.opts.compression)?;
            let offset = self.allocate(key, enc.bytes.len() as u64)?;
            self.dev.write_at(offset, &enc.bytes)?;
            let h = &enc.header;
            let indexed = IndexedBlock {
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
            };
            self.inner
                .lock()
                .pending
                .entry(xid)
                .or_default()
                .push(PendingBlock {
                    key,
                    block: Arc::new(indexed),
                });
        }
        Ok(n as u64)
    }

    /// Space for `len` bytes in the stream's current extent run, or a new run.
    fn allocate(&self, key: StreamKey, len: u64) -> Result<u64> {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let s = inner
            .streams
            .get_mut(&key)
            .ok_or(EngineError::TableNotFound(key.table))?;
        if let Some(last) = s.extents.last() {
            if last.end() - s.fill >= len {
                let off = s.fill;
                s.fill += len;
                return Ok(off);
            }
        }
        let run = inner.alloc[key.segment.index()].alloc(len)?;
        s.extents.push(run);
        s.fill = run.offset + len;
        Ok(run.offset)
    }

    /// Make every block `xid` appended on this disk durable and visible,
    /// atomically: sync data, write the next metadata slot, sync.
    pub fn commit(&self, xid: Xid) -> Result<()> {
        if self.read_only {
            return Err(read_only_err());
        }
        let _c = self.commit_lock.lock();
        let (generation, state, blocks) = {
            let mut inner = self.inner.lock();
            let Some(blocks) = inner.pending.remove(&xid).filter(|b| !b.is_empty()) else {
                return Ok(());
            };
            (
                inner.generation + 1,
                Self::meta_state(&inner, &blocks),
                blocks,
            )
        };
        let res = self
            .dev
            .sync()
            .and_then(|_| self.write_generation(generation, &state));
        let mut inner = self.inner.lock();
        if let Err(e) = res {
            warn!(xid, generation, error = %e, "commit failed");
            // Keep the blocks pending so the transaction can still be aborted.
            inner.pending.entry(xid).or_default().extend(blocks);
            return Err(e);
        }
        inner.generation = generation;
        let nblocks = blocks.len();
        for p in blocks {
            // A table dropped meanwhile takes its pending blocks with it, so the
            // stream exists; be defensive anyway.
            if let Some(s) = inner.streams.get_mut(&p.key) {
                Arc::make_mut(&mut s.committed).push(p.block);
            }
        }
        debug!(xid, generation, blocks = nblocks, "committed");
        Ok(())
    }

    /// Forget `xid`'s pending blocks (their space is not reused until the
    /// table is dropped; after a restart it is).
    pub fn abort(&self, xid: Xid) -> Result<()> {
        self.inner.lock().pending.remove(&xid);
        Ok(())
    }

    /// Scan committed rows of one (segment, table, slice).
    pub fn scan(&self, spec: &ScanSpec) -> Result<BlockScan> {
        let (user, blocks) = {
            let inner = self.inner.lock();
            let t = inner
                .tables
                .get(&spec.table)
                .ok_or(EngineError::TableNotFound(spec.table))?;
            let key = StreamKey {
                segment: spec.segment,
                table: spec.table,
                slice: spec.slice,
            };
            let blocks = inner
                .streams
                .get(&key)
                .map(|s| s.committed.clone())
                .unwrap_or_default();
            (t.user.clone(), blocks)
        };
        let nuser = user.fields().len();
        let out_user: Vec<usize> = match &spec.projection {
            Some(p) => p.clone(),
            None => (0..nuser).collect(),
        };
        let pred_cols = spec
            .predicate
            .as_ref()
            .map(|p| p.columns())
            .unwrap_or_default();
        if let Some(&bad) = out_user.iter().chain(&pred_cols).find(|&&c| c >= nuser) {
            return Err(EngineError::InvalidRequest(format!(
                "column {bad} out of range: table {} has {nuser} columns",
                spec.table
            )));
        }
        // Stored columns to decode: projection ∪ predicate columns, then hidden.
        let mut read: Vec<usize> = out_user.iter().chain(&pred_cols).copied().collect();
        read.sort_unstable();
        read.dedup();
        if spec.include_hidden {
            read.extend(block::hidden_columns(nuser));
        }
        let pos = |c: usize| {
            read.iter()
                .position(|&r| r == c)
                .expect("column is in the read set")
        };
        let predicate = spec.predicate.as_ref().map(|p| (p.clone(), p.remap(&pos)));
        let mut out_idx: Vec<usize> = out_user.iter().map(|&c| pos(c)).collect();
        let mut fields: Vec<_> = out_user.iter().map(|&c| user.fields()[c].clone()).collect();
        if spec.include_hidden {
            out_idx.extend(block::hidden_columns(nuser).map(pos));
            fields.extend(block::hidden_fields());
        }
        let schema = Arc::new(Schema::new(fields));
        let read_proj = if read.len() == nuser + 3 && read.iter().enumerate().all(|(i, &c)| i == c)
        {
            None
        } else {
            Some(read)
        };
        Ok(BlockScan {
            dev: self.dev.clone(),
            disk: self.sb.disk_id,
            table: spec.table,
            slice: spec.slice,
            stats: ScanStats {
                blocks_total: blocks.len() as u64,
                ..Default::default()
            },
            blocks,
            next: 0,
            predicate,
            read_proj,
            out_idx,
            schema,
            failed: false,
        })
    }

    /// Committed rows, bytes and blocks per (segment, table, slice).
    pub fn slice_stats(&self) -> Vec<SliceStat> {
        let inner = self.inner.lock();
        inner
            .streams
            .iter()
            .filter(|(_, s)| !s.committed.is_empty())
            .map(|(k, s)| SliceStat {
                segment: k.segment,
                table: k.table,
                slice: k.slice,
                rows: s.committed.iter().map(|b| b.meta.rows).sum(),
                bytes: s.committed.iter().map(|b| b.meta.length).sum(),
                blocks: s.committed.len() as u64,
            })
            .collect()
    }

    /// What `slicedb disk inspect` shows.
    pub fn report(&self) -> DiskReport {
        let inner = self.inner.lock();
        let segments = SegmentKind::ALL
            .iter()
            .map(|&k| {
                let a = &inner.alloc[k.index()];
                let seg = a.segment();
                SegmentReport {
                    kind: k,
                    offset: seg.offset,
                    length: seg.length,
                    used: seg.length - a.free_bytes(),
                }
            })
            .collect();
        let mut extents = Vec::new();
        for (k, s) in &inner.streams {
            for e in &s.extents {
                let used = s
                    .committed
                    .iter()
                    .filter(|b| b.meta.offset >= e.offset && b.meta.offset < e.end())
                    .map(|b| b.meta.length)
                    .sum();
                extents.push(ExtentReport {
                    segment: k.segment,
                    table: k.table,
                    slice: k.slice,
                    offset: e.offset,
                    length: e.length,
                    used,
                });
            }
        }
        let tables = inner
            .tables
            .iter()
            .map(|(id, t)| TableReport {
                table: *id,
                columns: t
                    .user
                    .fields()
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect(),
            })
            .collect();
        let slots = inner
            .slots
            .iter()
            .map(|s| match s {
                SlotStatus::Valid {
                    generation,
                    payload_len,
                } => format!("generation {generation}, {payload_len} bytes"),
                SlotStatus::Invalid(r) => format!("invalid: {r}"),
            })
            .collect();
        DiskReport {
            format_version: self.sb.version,
            cluster_id: self
                .sb
                .cluster_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            node_id: self.sb.node_id,
            disk_id: self.sb.disk_id,
            layout_profile: self.sb.layout.as_str().to_string(),
            image_size: self.sb.image_size,
            extent_size: self.sb.extent_size,
            meta_offset: self.sb.meta_offset,
            meta_slot_size: self.sb.meta_slot_size,
            generation: inner.generation,
            slots_at_open: slots,
            segments,
            extents,
            tables,
            slices: {
                drop(inner);
                self.slice_stats()
            },
        }
    }
}

/// A scan over a snapshot of one stream's committed blocks. Holds no lock.
pub struct BlockScan {
    dev: Arc<dyn BlockDevice>,
    disk: DiskId,
    table: TableId,
    slice: SliceId,
    blocks: Arc<Vec<Arc<IndexedBlock>>>,
    next: usize,
    /// (over user columns for pruning, over the read set for evaluation)
    predicate: Option<(Predicate, Predicate)>,
    read_proj: Option<Vec<usize>>,
    out_idx: Vec<usize>,
    schema: SchemaRef,
    stats: ScanStats,
    failed: bool,
}

impl BlockScan {
    /// Output schema: the projection, then the hidden columns if asked for.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn stats(&self) -> ScanStats {
        self.stats
    }

    fn read_block(&mut self, b: &IndexedBlock) -> Result<Option<RecordBatch>> {
        let mut buf = vec![0u8; b.meta.length as usize];
        self.dev.read_at(b.meta.offset, &mut buf)?;
        let loc = BlockLocation {
            disk: self.disk,
            offset: b.meta.offset,
            table: self.table,
            slice: self.slice,
            seq: b.meta.seq,
            rows: b.meta.rows,
        };
        let batch = block::decode_block(&buf, &loc, self.read_proj.clone())?;
        drop(buf);
        self.stats.blocks_read += 1;
        self.stats.rows_read += batch.num_rows() as u64;
        let cols: Vec<ArrayRef> = self
            .out_idx
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let opts = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let out = RecordBatch::try_new_with_options(self.schema.clone(), cols, &opts)?;
        let out = match &self.predicate {
            None => out,
            Some((_, p)) => {
                let mask = p.evaluate(&batch)?;
                let selected = mask.true_count();
                if selected == 0 {
                    return Ok(None);
                } else if selected == mask.len() {
                    out
                } else {
                    filter_record_batch(&out, &mask)?
                }
            }
        };
        Ok((out.num_rows() > 0).then_some(out))
    }
}

impl Iterator for BlockScan {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed && self.next < self.blocks.len() {
            let b = self.blocks[self.next].clone();
            self.next += 1;
            if let Some((p, _)) = &self.predicate {
                if !p.may_match(&b.zones) {
                    self.stats.blocks_pruned += 1;
                    continue;
                }
            }
            match self.read_block(&b) {
                Ok(Some(batch)) => {
                    self.stats.rows_returned += batch.num_rows() as u64;
                    return Some(Ok(batch));
                }
                Ok(None) => continue,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentReport {
    pub kind: SegmentKind,
    pub offset: u64,
    pub length: u64,
    /// Bytes in allocated extents.
    pub used: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExtentReport {
    pub segment: SegmentKind,
    pub table: TableId,
    pub slice: SliceId,
    pub offset: u64,
    pub length: u64,
    /// Bytes of committed blocks in this run.
    pub used: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: TableId,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    pub format_version: u32,
    /// Hex.
    pub cluster_id: String,
    pub node_id: NodeId,
    pub disk_id: DiskId,
    pub layout_profile: String,
    pub image_size: u64,
    pub extent_size: u64,
    pub meta_offset: u64,
    pub meta_slot_size: u64,
    /// Generation of the committed metadata.
    pub generation: u64,
    /// Status of metadata slots 0 and 1 when the image was opened.
    pub slots_at_open: Vec<String>,
    pub segments: Vec<SegmentReport>,
    pub extents: Vec<ExtentReport>,
    pub tables: Vec<TableReport>,
    pub slices: Vec<SliceStat>,
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl DiskReport {
    /// A human-readable report for `slicedb disk inspect`.
    pub fn render_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "slicedb disk image, format version {}",
            self.format_version
        );
        let _ = writeln!(
            s,
            "cluster {}  node {}  disk {}",
            self.cluster_id, self.node_id, self.disk_id
        );
        let _ = writeln!(
            s,
            "size {}  extent {}  layout profile {} (offset order: primary on the fastest zone)",
            human(self.image_size),
            human(self.extent_size),
            self.layout_profile
        );
        let _ = writeln!(
            s,
            "metadata: 2 slots of {} at offset {}; committed generation {}",
            human(self.meta_slot_size),
            self.meta_offset,
            self.generation
        );
        for (i, st) in self.slots_at_open.iter().enumerate() {
            let _ = writeln!(s, "  slot {i}: {st}");
        }
        let _ = writeln!(s, "\nsegments:");
        let _ = writeln!(
            s,
            "  {:<8} {:>14} {:>14} {:>12} {:>6}",
            "kind", "offset", "length", "used", "use%"
        );
        for g in &self.segments {
            let pct = if g.length == 0 {
                0.0
            } else {
                g.used as f64 * 100.0 / g.length as f64
            };
            let _ = writeln!(
                s,
                "  {:<8} {:>14} {:>14} {:>12} {:>5.1}%",
                g.kind.as_str(),
                g.offset,
                human(g.length),
                human(g.used),
                pct
            );
        }
        let _ = writeln!(s, "\ntables:");
        if self.tables.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        for t in &self.tables {
            let _ = writeln!(s, "  {}: {}", t.table, t.columns.join(", "));
        }
        let _ = writeln!(s, "\nslices:");
        let _ = writeln!(
            s,
            "  {:<8} {:>8} {:>6} {:>12} {:>8} {:>12}",
            "segment", "table", "slice", "rows", "blocks", "bytes"
        );
        for x in &self.slices {
            let _ = writeln!(
                s,
                "  {:<8} {:>8} {:>6} {:>12} {:>8} {:>12}",
                x.segment.as_str(),
                x.table,
                x.slice,
                x.rows,
                x.blocks,
                human(x.bytes)
            );
        }
        let _ = writeln!(s, "\nextents:");
        let _ = writeln!(
            s,
            "  {:<8} {:>8} {:>6} {:>14} {:>12} {:>12}",
            "segment", "table", "slice", "offset", "length", "used"
        );
        for e in &self.extents {
            let _ = writeln!(
                s,
                "  {:<8} {:>8} {:>6} {:>14} {:>12} {:>12}",
                e.segment.as_str(),
                e.table,
                e.slice,
                e.offset,
                human(e.length),
                human(e.used)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{CrashPoint, MemDevice};
    use crate::predicate::{CmpOp, Literal};
    use arrow::array::{AsArray, Float64Array, StringArray};
    use arrow::compute::concat_batches;
    use arrow::datatypes::{DataType, Field, Int64Type};

    const IDS: DiskIds = DiskIds {
        cluster_id: [7; 16],
        node_id: 3,
        disk_id: 1,
    };

    fn small_init() -> InitOptions {
        InitOptions {
            size: 64 << 20,
            extent_size: 64 << 10,
            meta_slot_size: 256 << 10,
        }
    }

    fn opts(block_rows: usize) -> StoreOptions {
        StoreOptions {
            block_rows,
            compression: Compression::Lz4,
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("x", DataType::Float64, true),
        ]))
    }

    fn rows(from: i64, n: i64) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(from..from + n)),
                Arc::new(StringArray::from_iter(
                    (from..from + n).map(|i| (i % 7 != 0).then(|| format!("n{i}"))),
                )),
                Arc::new(Float64Array::from_iter_values(
                    (from..from + n).map(|i| i as f64 * 0.5),
                )),
            ],
        )
        .unwrap()
    }

    fn spec(segment: SegmentKind, table: TableId, slice: SliceId) -> ScanSpec {
        ScanSpec {
            segment,
            table,
            slice,
            projection: None,
            predicate: None,
            include_hidden: false,
        }
    }

    fn scan_all(store: &DiskStore, s: &ScanSpec) -> Result<RecordBatch> {
        let mut scan = store.scan(s)?;
        let schema = scan.schema();
        let batches: Vec<RecordBatch> = scan.by_ref().collect::<Result<_>>()?;
        assert!(batches.iter().all(|b| b.num_rows() > 0), "no empty batches");
        Ok(concat_batches(&schema, &batches)?)
    }

    fn mem_store(block_rows: usize) -> (Arc<MemDevice>, DiskStore) {
        let dev = Arc::new(MemDevice::new(small_init().size));
        let store = DiskStore::create_with_device(
            dev.clone(),
            Path::new("mem"),
            IDS,
            small_init(),
            opts(block_rows),
        )
        .unwrap();
        (dev, store)
    }

    fn reopen_mem(image: Vec<u8>, block_rows: usize) -> Result<(Arc<MemDevice>, DiskStore)> {
        let dev = Arc::new(MemDevice::from_image(image));
        let store =
            DiskStore::open_with_device(dev.clone(), Path::new("mem"), opts(block_rows), false)?;
        Ok((dev, store))
    }

    fn rowids(b: &RecordBatch) -> Vec<i64> {
        b.column_by_name(crate::HIDDEN_ROWID)
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn round_trip_across_slices_and_segments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk0.img");
        let store = DiskStore::create(&path, IDS, small_init(), opts(100)).unwrap();
        assert!(
            DiskStore::create(&path, IDS, small_init(), opts(100)).is_err(),
            "existing file"
        );
        store.create_table(1, schema()).unwrap();
        store.create_table(1, schema()).unwrap(); // idempotent
        let other = Arc::new(Schema::new(vec![Field::new("k", DataType::Int32, false)]));
        assert!(matches!(
            store.create_table(1, other.clone()),
            Err(EngineError::TableExists(1))
        ));
        store.create_table(2, other.clone()).unwrap();
        let parts = [
            (SegmentKind::Primary, 1, 0, rows(0, 250)),
            (SegmentKind::Primary, 1, 1, rows(1000, 30)),
            (SegmentKind::Mirror, 1, 0, rows(5000, 120)),
            (SegmentKind::Temp, 1, 3, rows(-50, 10)),
        ];
        for (seg, t, sl, b) in &parts {
            assert_eq!(
                store.append(*seg, *t, *sl, 9, b).unwrap(),
                b.num_rows() as u64
            );
        }
        assert!(matches!(
            store.append(
                SegmentKind::Primary,
                1,
                0,
                9,
                &RecordBatch::new_empty(other.clone())
            ),
            Err(EngineError::SchemaMismatch { .. })
        ));
        assert!(matches!(
            store.append(SegmentKind::Primary, 42, 0, 9, &rows(0, 1)),
            Err(EngineError::TableNotFound(42))
        ));
        store.commit(9).unwrap();
        let check = |store: &DiskStore| {
            for (seg, t, sl, b) in &parts {
                assert_eq!(&scan_all(store, &spec(*seg, *t, *sl)).unwrap(), b);
            }
            let stats = store.slice_stats();
            assert_eq!(stats.len(), 4);
            assert_eq!(
                stats
                    .iter()
                    .find(|s| s.segment == SegmentKind::Primary && s.slice == 0)
                    .unwrap()
                    .blocks,
                3
            );
            assert_eq!(store.tables(), vec![1, 2]);
            assert_eq!(*store.table_schema(2).unwrap(), *other);
        };
        check(&store);
        let hidden = ScanSpec {
            include_hidden: true,
            ..spec(SegmentKind::Primary, 1, 0)
        };
        let before = rowids(&scan_all(&store, &hidden).unwrap());
        drop(store);
        let store = DiskStore::open(&path, opts(100)).unwrap();
        assert_eq!(store.ids(), IDS);
        check(&store);
        store
            .append(SegmentKind::Primary, 1, 0, 10, &rows(250, 50))
            .unwrap();
        store.commit(10).unwrap();
        let all = scan_all(&store, &hidden).unwrap();
        let ids = rowids(&all);
        assert_eq!(&ids[..250], &before[..]);
        let mut uniq = ids.clone();
        uniq.sort_unstable();
        uniq.dedup();
        assert_eq!(uniq.len(), 300, "rowids unique");
        assert!(
            ids[250..]
                .iter()
                .all(|&r| r > *before.iter().max().unwrap()),
            "rowids continue after reopen"
        );
        let cx = all
            .column_by_name(crate::HIDDEN_CREATEXID)
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!((cx.value(0), cx.value(299)), (9, 10));
        let dx = all
            .column_by_name(crate::HIDDEN_DELETEXID)
            .unwrap()
            .as_primitive::<Int64Type>();
        assert!(dx.values().iter().all(|&v| v == 0));
        let text = store.report().render_text();
        assert!(
            text.contains("layout profile flat") && text.contains("primary"),
            "{text}"
        );
        serde_json::to_string(&store.report()).unwrap();
        drop(store);
        let ro = DiskStore::open_read_only(&path).unwrap();
        assert_eq!(
            scan_all(&ro, &spec(SegmentKind::Mirror, 1, 0)).unwrap(),
            parts[2].3
        );
        assert!(ro.create_table(5, schema()).is_err());
    }

    #[test]
    fn uncommitted_is_invisible_and_abort_discards() {
        let (dev, store) = mem_store(64);
        store.create_table(1, schema()).unwrap();
        let s = spec(SegmentKind::Primary, 1, 0);
        store
            .append(SegmentKind::Primary, 1, 0, 5, &rows(0, 100))
            .unwrap();
        store
            .append(SegmentKind::Primary, 1, 0, 6, &rows(100, 100))
            .unwrap();
        assert_eq!(scan_all(&store, &s).unwrap().num_rows(), 0);
        store.abort(6).unwrap();
        store.commit(6).unwrap(); // nothing pending: no-op
        store.commit(77).unwrap();
        assert_eq!(scan_all(&store, &s).unwrap().num_rows(), 0);
        // Restart with xid 5 still open: its rows are gone.
        let (_, store2) = reopen_mem(dev.durable_image(), 64).unwrap();
        assert_eq!(scan_all(&store2, &s).unwrap().num_rows(), 0);
        store.commit(5).unwrap();
        assert_eq!(scan_all(&store, &s).unwrap(), rows(0, 100));
        let (_, store3) = reopen_mem(dev.durable_image(), 64).unwrap();
        assert_eq!(scan_all(&store3, &s).unwrap(), rows(0, 100));
    }

    /// Everything visible on a store, for comparing states.
    type Fingerprint = (
        Vec<TableId>,
        Vec<(SegmentKind, TableId, SliceId, RecordBatch)>,
    );

    fn fingerprint(store: &DiskStore) -> Fingerprint {
        let mut out = Vec::new();
        for st in store.slice_stats() {
            let s = ScanSpec {
                include_hidden: true,
                ..spec(st.segment, st.table, st.slice)
            };
            out.push((st.segment, st.table, st.slice, scan_all(store, &s).unwrap()));
        }
        (store.tables(), out)
    }

    type Op = fn(&DiskStore) -> Result<()>;

    /// Run `ops` on a copy of `base` crashing after every possible write (and
    /// tearing it); the reopened image must show exactly one of the durable
    /// states the ops pass through, and must accept new commits.
    fn crash_everywhere(base: &[u8], ops: &[Op]) {
        // Dry run: the states after each op, and how many writes they take.
        let (dev, store) = reopen_mem(base.to_vec(), 64).unwrap();
        let w0 = dev.writes();
        let mut states = vec![fingerprint(&store)];
        for op in ops {
            op(&store).unwrap();
            states.push(fingerprint(&store));
        }
        let total = dev.writes() - w0;
        assert!(total >= ops.len() as u64);
        let mut seen = vec![false; states.len()];
        for n in 0..=total {
            for torn in [None, Some(1), Some(40), Some(100), Some(3000)] {
                let (dev, store) = reopen_mem(base.to_vec(), 64).unwrap();
                dev.set_crash(Some(CrashPoint {
                    after_writes: dev.writes() + n,
                    torn_prefix: torn,
                }));
                for op in ops {
                    let _ = op(&store);
                }
                let image = dev.durable_image();
                let (_, after) = reopen_mem(image.clone(), 64).unwrap_or_else(|e| {
                    panic!("reopen after crash at write {n} torn {torn:?}: {e}")
                });
                let fp = fingerprint(&after);
                let i = states.iter().position(|s| *s == fp).unwrap_or_else(|| {
                    panic!(
                        "crash at write {n} torn {torn:?} left a state that is neither old nor new"
                    )
                });
                seen[i] = true;
                // The recovered disk keeps working: space of the torn tail is reused.
                after.create_table(50, schema()).unwrap();
                after
                    .append(SegmentKind::Primary, 50, 0, 99, &rows(0, 100))
                    .unwrap();
                after.commit(99).unwrap();
                let (_, again) = reopen_mem(dev_image(&after), 64).unwrap();
                assert_eq!(
                    scan_all(&again, &spec(SegmentKind::Primary, 50, 0)).unwrap(),
                    rows(0, 100)
                );
                let mut fp2 = fingerprint(&again);
                fp2.0.retain(|t| *t != 50);
                fp2.1.retain(|x| x.1 != 50);
                assert!(fp2 == fp, "old data intact after new commits");
            }
        }
        assert!(
            seen.iter().all(|&s| s),
            "every state was reached by some crash point: {seen:?}"
        );
    }

    /// The durable image behind a store opened on a MemDevice.
    fn dev_image(store: &DiskStore) -> Vec<u8> {
        let mut image = vec![0u8; store.dev.len().unwrap() as usize];
        store.dev.read_at(0, &mut image).unwrap();
        image
    }

    fn base_image() -> Vec<u8> {
        let (dev, store) = mem_store(64);
        store.create_table(1, schema()).unwrap();
        store
            .append(SegmentKind::Primary, 1, 0, 1, &rows(0, 100))
            .unwrap();
        store
            .append(SegmentKind::Mirror, 1, 2, 1, &rows(0, 10))
            .unwrap();
        store.commit(1).unwrap();
        dev.durable_image()
    }

    #[test]
    fn crash_at_every_commit_write() {
        let ops: [Op; 1] = [|s| {
            s.append(SegmentKind::Primary, 1, 0, 2, &rows(100, 150))?;
            s.append(SegmentKind::Temp, 1, 1, 2, &rows(7, 5))?;
            s.commit(2)
        }];
        crash_everywhere(&base_image(), &ops);
    }

    #[test]
    fn crash_around_create_drop_and_commit() {
        let ops: [Op; 3] = [
            |s| s.create_table(2, schema()),
            |s| s.drop_table(1),
            |s| {
                s.append(SegmentKind::Primary, 2, 0, 3, &rows(0, 70))?;
                s.commit(3)
            },
        ];
        crash_everywhere(&base_image(), &ops);
    }

    #[test]
    fn torn_slot_falls_back_to_the_other_slot() {
        let (dev, store) = mem_store(64);
        store.create_table(1, schema()).unwrap();
        store
            .append(SegmentKind::Primary, 1, 0, 1, &rows(0, 10))
            .unwrap();
        store.commit(1).unwrap();
        let old = fingerprint(&store);
        // Tear the next metadata write in its payload: the valid older slot wins.
        store
            .append(SegmentKind::Primary, 1, 0, 2, &rows(10, 10))
            .unwrap();
        dev.set_crash(Some(CrashPoint {
            after_writes: dev.writes(),
            torn_prefix: Some(70),
        }));
        store.commit(2).unwrap();
        let (_, after) = reopen_mem(dev.durable_image(), 64).unwrap();
        assert_eq!(fingerprint(&after), old);
        let r = after.report();
        assert!(
            r.slots_at_open.iter().any(|s| s.contains("CRC mismatch")),
            "{:?}",
            r.slots_at_open
        );
    }

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

    #[test]
    fn zone_maps_prune_key_ordered_blocks() {
        let (_, store) = mem_store(100);
        store.create_table(1, schema()).unwrap();
        store
            .append(SegmentKind::Primary, 1, 0, 1, &rows(0, 10_000))
            .unwrap();
        store.commit(1).unwrap();
        let pred = Predicate::And(vec![
            Predicate::Compare {
                column: 0,
                op: CmpOp::GtEq,
                value: Literal::Int(5_050),
            },
            Predicate::Compare {
                column: 0,
                op: CmpOp::Lt,
                value: Literal::Int(5_300),
            },
        ]);
        let s = ScanSpec {
            projection: Some(vec![2, 0]),
            predicate: Some(pred.clone()),
            ..spec(SegmentKind::Primary, 1, 0)
        };
        let mut scan = store.scan(&s).unwrap();
        let schema = scan.schema();
        let batches: Vec<RecordBatch> = scan.by_ref().collect::<Result<_>>().unwrap();
        let out = concat_batches(&schema, &batches).unwrap();
        let st = scan.stats();
        assert_eq!(st.blocks_total, 100);
        assert!(st.blocks_pruned >= 90, "{st:?}");
        assert_eq!(st.blocks_read, 3);
        assert_eq!(st.rows_returned, 250);
        let want = rows(5_050, 250);
        assert_eq!(out.num_columns(), 2);
        assert_eq!(out.column(0), want.column(2));
        assert_eq!(out.column(1), want.column(0));
        // count(*): zero columns, right row count.
        let s0 = ScanSpec {
            projection: Some(vec![]),
            ..s.clone()
        };
        let n: usize = store
            .scan(&s0)
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(n, 250);
        let s1 = ScanSpec {
            projection: Some(vec![]),
            predicate: None,
            ..s.clone()
        };
        let n: usize = store
            .scan(&s1)
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(n, 10_000);
        // Nothing matches: no batches at all, schema still known.
        let none = ScanSpec {
            predicate: Some(Predicate::Compare {
                column: 0,
                op: CmpOp::Gt,
                value: Literal::Int(1 << 40),
            }),
            include_hidden: true,
            ..s.clone()
        };
        let mut scan = store.scan(&none).unwrap();
        assert!(scan.next().is_none());
        assert_eq!(scan.stats().blocks_pruned, 100);
        assert_eq!(scan.schema().fields().len(), 5);
        assert!(matches!(
            store.scan(&ScanSpec {
                projection: Some(vec![3]),
                ..s.clone()
            }),
            Err(EngineError::InvalidRequest(_))
        ));
    }

    #[test]
    fn wrong_version_and_bad_magic_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        drop(DiskStore::create(&path, IDS, small_init(), opts(100)).unwrap());
        let dev = FileDevice::open(&path, true).unwrap();
        dev.write_at(8, &2u32.to_le_bytes()).unwrap();
        assert!(matches!(
            DiskStore::open(&path, opts(100)),
            Err(EngineError::UnsupportedVersion {
                found: 2,
                supported: 1
            })
        ));
        dev.write_at(8, &1u32.to_le_bytes()).unwrap();
        DiskStore::open(&path, opts(100)).unwrap();
        dev.write_at(50, &[0xff]).unwrap();
        assert!(matches!(
            DiskStore::open(&path, opts(100)),
            Err(EngineError::CorruptMetadata(_))
        ));
        dev.write_at(0, b"NOTSLICE").unwrap();
        assert!(matches!(
            DiskStore::open(&path, opts(100)),
            Err(EngineError::NotAnImage(_))
        ));
        let short = dir.path().join("short");
        std::fs::write(&short, b"hello").unwrap();
        assert!(matches!(
            DiskStore::open(&short, opts(100)),
            Err(EngineError::NotAnImage(_))
        ));
    }

    #[test]
    fn metadata_full_leaves_the_committed_state() {
        let init = InitOptions {
            size: 64 << 20,
            extent_size: 64 << 10,
            meta_slot_size: 4096,
        };
        let dev = Arc::new(MemDevice::new(init.size));
        let store =
            DiskStore::create_with_device(dev.clone(), Path::new("mem"), IDS, init, opts(10))
                .unwrap();
        store.create_table(1, schema()).unwrap();
        let mut xid = 1;
        let err = loop {
            store
                .append(SegmentKind::Primary, 1, 0, xid, &rows(0, 10))
                .unwrap();
            match store.commit(xid) {
                Ok(()) => xid += 1,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, EngineError::MetadataFull { capacity: 4096, .. }),
            "{err}"
        );
        let committed = fingerprint(&store);
        store.abort(xid).unwrap();
        let (_, after) = reopen_mem(dev.durable_image(), 10).unwrap();
        assert_eq!(fingerprint(&after), committed);
        assert_eq!(committed.1[0].3.num_rows() as u64, (xid - 1) * 10);
    }

    #[test]
    fn segment_full_and_extents_reused_after_drop() {
        let (dev, store) = mem_store(1000);
        store.create_table(1, schema()).unwrap();
        let temp_len = store.superblock().segment(SegmentKind::Temp).length;
        let mut xid = 1;
        let err = loop {
            match store.append(SegmentKind::Temp, 1, xid as u32 % 4, xid, &rows(0, 1000)) {
                Ok(_) => {
                    store.commit(xid).unwrap();
                    xid += 1;
                }
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, EngineError::SegmentFull { ref segment, .. } if segment == "temp"),
            "{err}"
        );
        assert_eq!(store.report().segments[2].used, temp_len);
        store.drop_table(1).unwrap();
        store.drop_table(1).unwrap(); // absent: Ok
        assert_eq!(store.report().segments[2].used, 0);
        assert!(matches!(
            store.table_schema(1),
            Err(EngineError::TableNotFound(1))
        ));
        store.create_table(2, schema()).unwrap();
        store
            .append(SegmentKind::Temp, 2, 0, 500, &rows(0, 1000))
            .unwrap();
        store.commit(500).unwrap();
        let (_, after) = reopen_mem(dev.durable_image(), 1000).unwrap();
        assert_eq!(after.tables(), vec![2]);
        assert_eq!(
            scan_all(&after, &spec(SegmentKind::Temp, 2, 0)).unwrap(),
            rows(0, 1000)
        );
        assert!(after.report().segments[2].used > 0);
    }

    #[test]
    fn store_is_send_sync_and_scan_is_static() {
        fn check<T: Send + Sync>() {}
        fn check_scan<T: Iterator<Item = Result<RecordBatch>> + Send + 'static>() {}
        check::<DiskStore>();
        check_scan::<BlockScan>();
    }
}
