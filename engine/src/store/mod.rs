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

use std::collections::{BTreeMap, HashMap, HashSet};
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
use crate::cache::{BlockCache, BlockKey};
use crate::disk::alloc::SegmentAllocator;
use crate::disk::meta::{
    self, BlockMeta, DeleteRunMeta, ExtentRun, MetaState, PreparedMeta, SlotStatus, StreamKey,
    StreamMeta, TableMeta,
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
    /// Bytes of decoded block columns kept in memory for later scans
    /// ([`crate::cache`]). Default 0: every scan reads the disk.
    pub cache_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            block_rows: 16384,
            compression: Compression::Lz4,
            cache_bytes: 0,
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
    /// Which transactions' rows and deletes the scan sees.
    pub snapshot: Snapshot,
}

/// A reader's view of the transaction history, handed out by the coordinator:
/// a row is visible when its createxid is seen and no seen xid deleted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Xids at or above this had not started when the snapshot was taken.
    pub xmax: Xid,
    /// Xids below `xmax` still in progress at the snapshot (sorted).
    pub xip: Vec<Xid>,
    /// The reader's own transaction: its uncommitted rows and deletes are seen.
    pub own: Option<Xid>,
}

impl Snapshot {
    /// Everything committed so far (inspection, tests, rebuilds).
    pub fn latest() -> Snapshot {
        Snapshot {
            xmax: Xid::MAX,
            xip: Vec::new(),
            own: None,
        }
    }

    /// Whether the effects of `xid` (committed on this disk) are visible.
    pub fn sees(&self, xid: Xid) -> bool {
        xid != 0
            && (Some(xid) == self.own || (xid < self.xmax && self.xip.binary_search(&xid).is_err()))
    }

    /// Whether every xid in `lo..=hi` is seen (so a block needs no row check).
    fn sees_all(&self, lo: Xid, hi: Xid) -> bool {
        lo != 0 && hi < self.xmax && {
            let i = self.xip.partition_point(|&x| x < lo);
            self.xip.get(i).is_none_or(|&x| x > hi)
        }
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot::latest()
    }
}

/// An open transaction's state on this disk, as [`DiskStore::in_doubt`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TxnState {
    pub xid: Xid,
    /// Durable and waiting for the coordinator's decision.
    pub prepared: bool,
}

/// Row count and an order-independent checksum over (rowid, row contents) of
/// one copy of a slice at one snapshot: what `slicedb verify` compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SliceChecksum {
    pub rows: u64,
    pub checksum: u64,
}

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

/// One open transaction on this disk.
#[derive(Default)]
struct PendingTxn {
    blocks: Vec<PendingBlock>,
    /// Rowids deleted per stream, not yet written as a run.
    deletes: BTreeMap<StreamKey, Vec<i64>>,
    /// Delete runs written (at prepare), with their records.
    runs: Vec<(StreamKey, DeleteRunMeta, Vec<i64>)>,
    prepared: bool,
    /// Written to since the last prepare (a node that is both a primary and a
    /// mirror for the same xid prepares the same disk twice).
    dirty: bool,
}

impl PendingTxn {
    fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.deletes.is_empty() && self.runs.is_empty()
    }

    fn deleted_in(&self, key: &StreamKey) -> HashSet<i64> {
        let mut out: HashSet<i64> = self
            .deletes
            .get(key)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        for (k, _, rows) in &self.runs {
            if k == key {
                out.extend(rows.iter().copied());
            }
        }
        out
    }
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
    /// Committed deletes: rowid -> deleting xid.
    deletes: Arc<BTreeMap<i64, Xid>>,
    /// Where the committed deletes are on disk.
    runs: Vec<DeleteRunMeta>,
}

impl Stream {
    fn empty() -> Stream {
        Stream {
            extents: Vec::new(),
            fill: 0,
            next_rowid: 1,
            next_seq: 1,
            committed: Arc::new(Vec::new()),
            deletes: Arc::new(BTreeMap::new()),
            runs: Vec::new(),
        }
    }
}

struct Inner {
    tables: BTreeMap<TableId, TableEntry>,
    streams: BTreeMap<StreamKey, Stream>,
    alloc: [SegmentAllocator; 3],
    pending: HashMap<Xid, PendingTxn>,
    /// Rows deleted by open transactions: the write-write conflict check.
    locks: HashMap<StreamKey, HashMap<i64, Xid>>,
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
    /// Decoded columns of blocks read before (None: no cache).
    cache: Option<Arc<BlockCache>>,
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
        let inner = Self::recover(dev.as_ref(), &sb, state, generation, slots)?;
        debug!(path = %path.display(), generation, tables = inner.tables.len(), "opened disk image");
        let cache = (opts.cache_bytes > 0).then(|| Arc::new(BlockCache::new(opts.cache_bytes)));
        Ok(DiskStore {
            dev,
            path: path.to_path_buf(),
            sb,
            opts,
            read_only,
            inner: Mutex::new(inner),
            commit_lock: Mutex::new(()),
            io_gate: RwLock::new(()),
            cache,
        })
    }

    /// Rebuild the in-memory state from a committed metadata state. Blocks
    /// written after it are not in the index: their space is simply free again
    /// (a torn tail). Extents holding no committed or prepared block or delete
    /// run are freed too. Prepared transactions come back as in-doubt.
    fn recover(
        dev: &dyn BlockDevice,
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
        let read_run = |key: &StreamKey, run: &DeleteRunMeta| -> Result<Vec<(i64, u64)>> {
            if run.length != block::delete_run_len(run.count) {
                return Err(corrupt(format!(
                    "delete run at {} has length {} for {} records",
                    run.offset, run.length, run.count
                )));
            }
            let mut buf = vec![0u8; run.length as usize];
            dev.read_at(run.offset, &mut buf)?;
            block::decode_delete_run(&buf, sb.disk_id, run.offset, key.table, key.slice)
        };
        // Everything that pins an extent: committed and prepared blocks and runs.
        let mut pins: BTreeMap<StreamKey, Vec<(u64, u64)>> = BTreeMap::new();
        for s in &state.streams {
            let p = pins.entry(s.key).or_default();
            p.extend(s.blocks.iter().map(|b| (b.offset, b.end())));
            p.extend(s.deletes.iter().map(|d| (d.offset, d.offset + d.length)));
        }
        for t in &state.prepared {
            for (k, b) in &t.blocks {
                pins.entry(*k).or_default().push((b.offset, b.end()));
            }
            for (k, d) in &t.deletes {
                pins.entry(*k)
                    .or_default()
                    .push((d.offset, d.offset + d.length));
            }
        }
        let mut alloc =
            SegmentKind::ALL.map(|k| SegmentAllocator::new(sb.segment(k), sb.extent_size));
        let mut streams = BTreeMap::new();
        let mut extents_of: BTreeMap<StreamKey, Vec<ExtentRun>> = BTreeMap::new();
        for s in &state.streams {
            extents_of.insert(s.key, s.extents.clone());
        }
        for (key, p) in &pins {
            if !tables.contains_key(&key.table) {
                return Err(corrupt(format!("stream of unknown table {}", key.table)));
            }
            if p.is_empty() {
                continue;
            }
            let extents = extents_of.get(key).cloned().unwrap_or_default();
            let mut kept: Vec<ExtentRun> = Vec::new();
            for e in &extents {
                if p.iter().any(|&(o, _)| o >= e.offset && o < e.end()) {
                    alloc[key.segment.index()].reserve(*e)?;
                    kept.push(*e);
                }
            }
            for &(o, end) in p {
                if end <= o || !kept.iter().any(|e| o >= e.offset && end <= e.end()) {
                    return Err(corrupt(format!(
                        "block or delete run at {o} (+{}) of table {} slice {} lies outside its extents",
                        end.saturating_sub(o),
                        key.table,
                        key.slice
                    )));
                }
            }
            let last = kept[kept.len() - 1];
            let fill = p
                .iter()
                .filter(|&&(o, _)| o >= last.offset && o < last.end())
                .map(|&(_, end)| end)
                .max()
                .unwrap_or(last.offset);
            let mut st = Stream::empty();
            st.extents = kept;
            st.fill = fill;
            streams.insert(*key, st);
        }
        let note_block = |st: &mut Stream, b: &BlockMeta| {
            st.next_rowid = st.next_rowid.max(b.rowid_max.saturating_add(1));
            st.next_seq = st.next_seq.max(b.seq + 1);
        };
        for s in state.streams {
            let Some(st) = streams.get_mut(&s.key) else {
                continue;
            };
            let table = &tables[&s.key.table];
            let mut committed = Vec::with_capacity(s.blocks.len());
            for b in s.blocks {
                let zones = block::decode_zones(&b.zones, &table.stored, b.rows)?;
                note_block(st, &b);
                committed.push(Arc::new(IndexedBlock { meta: b, zones }));
            }
            let mut deletes = BTreeMap::new();
            for run in &s.deletes {
                for (rowid, xid) in read_run(&s.key, run)? {
                    deletes.insert(rowid, xid);
                }
            }
            st.committed = Arc::new(committed);
            st.deletes = Arc::new(deletes);
            st.runs = s.deletes;
        }
        let mut pending = HashMap::new();
        let mut locks: HashMap<StreamKey, HashMap<i64, Xid>> = HashMap::new();
        for t in state.prepared {
            let mut txn = PendingTxn {
                prepared: true,
                ..Default::default()
            };
            for (k, b) in t.blocks {
                let table = tables.get(&k.table).ok_or_else(|| {
                    corrupt(format!("prepared block of unknown table {}", k.table))
                })?;
                let zones = block::decode_zones(&b.zones, &table.stored, b.rows)?;
                if let Some(st) = streams.get_mut(&k) {
                    note_block(st, &b);
                }
                txn.blocks.push(PendingBlock {
                    key: k,
                    block: Arc::new(IndexedBlock { meta: b, zones }),
                });
            }
            for (k, run) in t.deletes {
                let rows: Vec<i64> = read_run(&k, &run)?.into_iter().map(|(r, _)| r).collect();
                let l = locks.entry(k).or_default();
                for r in &rows {
                    l.insert(*r, t.xid);
                }
                txn.runs.push((k, run, rows));
            }
            pending.insert(t.xid, txn);
        }
        Ok(Inner {
            tables,
            streams,
            alloc,
            pending,
            locks,
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

    /// The committed state as written to a slot: the committed streams, with
    /// `commit`'s blocks and delete runs merged in, and every prepared
    /// transaction except `commit`.
    fn meta_state(inner: &Inner, commit: Option<Xid>) -> MetaState {
        let tables = inner
            .tables
            .iter()
            .map(|(id, t)| TableMeta {
                id: *id,
                schema_ipc: t.schema_ipc.clone(),
            })
            .collect();
        let committing = commit.and_then(|x| inner.pending.get(&x));
        let streams = inner
            .streams
            .iter()
            .filter(|(_, s)| !s.extents.is_empty())
            .map(|(key, s)| {
                let mut blocks: Vec<BlockMeta> =
                    s.committed.iter().map(|b| b.meta.clone()).collect();
                let mut deletes = s.runs.clone();
                if let Some(t) = committing {
                    blocks.extend(
                        t.blocks
                            .iter()
                            .filter(|p| p.key == *key)
                            .map(|p| p.block.meta.clone()),
                    );
                    deletes.extend(t.runs.iter().filter(|r| r.0 == *key).map(|r| r.1));
                }
                StreamMeta {
                    key: *key,
                    extents: s.extents.clone(),
                    blocks,
                    deletes,
                }
            })
            .collect();
        let mut prepared: Vec<PreparedMeta> = inner
            .pending
            .iter()
            .filter(|(x, t)| t.prepared && Some(**x) != commit)
            .map(|(x, t)| PreparedMeta {
                xid: *x,
                blocks: t
                    .blocks
                    .iter()
                    .map(|p| (p.key, p.block.meta.clone()))
                    .collect(),
                deletes: t.runs.iter().map(|(k, r, _)| (*k, *r)).collect(),
            })
            .collect();
        prepared.sort_by_key(|p| p.xid);
        MetaState {
            tables,
            streams,
            prepared,
        }
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
            (inner.generation + 1, Self::meta_state(&inner, None))
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
        if let Some(c) = &self.cache {
            c.remove_table(table);
        }
        let _c = self.commit_lock.lock();
        // Wait for appends still writing into this table's extents.
        let _gate = self.io_gate.write();
        let (generation, mut state) = {
            let inner = self.inner.lock();
            if !inner.tables.contains_key(&table) {
                return Ok(());
            }
            (inner.generation + 1, Self::meta_state(&inner, None))
        };
        state.tables.retain(|t| t.id != table);
        state.streams.retain(|s| s.key.table != table);
        for p in &mut state.prepared {
            p.blocks.retain(|(k, _)| k.table != table);
            p.deletes.retain(|(k, _)| k.table != table);
        }
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
        for t in inner.pending.values_mut() {
            t.blocks.retain(|p| p.key.table != table);
            t.deletes.retain(|k, _| k.table != table);
            t.runs.retain(|r| r.0.table != table);
        }
        inner.locks.retain(|k, _| k.table != table);
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

    fn check_writable(&self, xid: Xid) -> Result<i64> {
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
        let (user, first_rowid, first_seq) = {
            let mut inner = self.inner.lock();
            let t = inner
                .tables
                .get(&table)
                .ok_or(EngineError::TableNotFound(table))?;
            Self::check_batch(table, &t.user, batch)?;
            let user = t.user.clone();
            if n == 0 {
                return Ok((0, Vec::new()));
            }
            Self::mark_dirty(&mut inner, xid)?;
            let s = inner.streams.entry(key).or_insert_with(Stream::empty);
            let first = (s.next_rowid, s.next_seq);
            s.next_rowid += n as i64;
            s.next_seq += nblocks as u64;
            (user, first.0, first.1)
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

    /// Note a write to `xid`: it must be prepared again before it is durable.
    fn mark_dirty(inner: &mut Inner, xid: Xid) -> Result<()> {
        inner.pending.entry(xid).or_default().dirty = true;
        Ok(())
    }

    fn write_pending(
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
        let indexed = IndexedBlock {
            meta: BlockMeta {
                offset,
                length: bytes.len() as u64,
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
        Ok(())
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
        self.check_writable(xid)?;
        let _gate = self.io_gate.read();
        let (h, zone_bytes) = block::inspect_block(bytes, table, slice)?;
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
            if h.columns as usize != t.stored.fields().len() {
                return Err(EngineError::SchemaMismatch {
                    table,
                    reason: format!(
                        "forwarded block has {} columns, table stores {}",
                        h.columns,
                        t.stored.fields().len()
                    ),
                });
            }
            let zones = block::decode_zones(&zone_bytes, &t.stored, h.rows)?;
            Self::mark_dirty(&mut inner, xid)?;
            let s = inner.streams.entry(key).or_insert_with(Stream::empty);
            s.next_rowid = s.next_rowid.max(h.rowid_max.saturating_add(1));
            s.next_seq = s.next_seq.max(h.seq + 1);
            zones
        };
        self.write_pending(key, xid, bytes, &h, Arc::from(zone_bytes), zones)?;
        Ok(h.rows)
    }

    /// Delete rows of one (segment, table, slice) for `xid`, by rowid.
    ///
    /// With `check = Some(snapshot)` (a primary), a row that another open
    /// transaction deleted, or that a transaction the snapshot does not see
    /// already deleted, is a write-write conflict: the later writer fails
    /// with [`EngineError::WriteConflict`]. A mirror passes `None`: the
    /// primary has checked. Rows already deleted by a transaction the
    /// snapshot sees are skipped. Returns the rows newly deleted.
    pub fn delete(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        xid: Xid,
        rowids: &[i64],
        check: Option<&Snapshot>,
    ) -> Result<u64> {
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
        Self::mark_dirty(inner, xid)?;
        let committed = inner
            .streams
            .get(&key)
            .map(|s| s.deletes.clone())
            .unwrap_or_default();
        let locks = inner.locks.entry(key).or_default();
        let mut fresh = Vec::with_capacity(rowids.len());
        for &r in rowids {
            if let Some(&other) = locks.get(&r) {
                if other == xid {
                    continue;
                }
                if check.is_some() {
                    return Err(EngineError::WriteConflict {
                        table,
                        slice,
                        rowid: r,
                        other,
                    });
                }
            }
            if let Some(&dx) = committed.get(&r) {
                match check {
                    Some(snap) if !snap.sees(dx) => {
                        return Err(EngineError::WriteConflict {
                            table,
                            slice,
                            rowid: r,
                            other: dx,
                        })
                    }
                    _ => continue,
                }
            }
            fresh.push(r);
        }
        fresh.sort_unstable();
        fresh.dedup();
        for &r in &fresh {
            locks.insert(r, xid);
        }
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

    /// Space for `len` bytes in the stream's current extent run, or a new run.
    fn allocate(&self, key: StreamKey, len: u64) -> Result<u64> {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let s = inner.streams.entry(key).or_insert_with(Stream::empty);
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

    /// Write `xid`'s unwritten deletes as delete runs (not yet synced).
    fn write_runs(&self, xid: Xid) -> Result<()> {
        let todo: Vec<(StreamKey, Vec<i64>)> = {
            let mut inner = self.inner.lock();
            match inner.pending.get_mut(&xid) {
                Some(t) => std::mem::take(&mut t.deletes).into_iter().collect(),
                None => return Ok(()),
            }
        };
        for (i, (key, rows)) in todo.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let recs: Vec<(i64, u64)> = rows.iter().map(|&r| (r, xid)).collect();
            let bytes = block::encode_delete_run(key.table, key.slice, &recs);
            let res = self
                .allocate(*key, bytes.len() as u64)
                .and_then(|off| self.dev.write_at(off, &bytes).map(|_| off));
            let mut inner = self.inner.lock();
            let Some(t) = inner.pending.get_mut(&xid) else {
                return Ok(());
            };
            match res {
                Ok(offset) => t.runs.push((
                    *key,
                    DeleteRunMeta {
                        offset,
                        length: bytes.len() as u64,
                        count: rows.len() as u64,
                    },
                    rows.clone(),
                )),
                Err(e) => {
                    // Put back what is not written so abort releases its locks.
                    for (k, r) in todo.into_iter().skip(i) {
                        t.deletes.entry(k).or_default().extend(r);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Phase one of two-phase commit: make everything `xid` wrote on this disk
    /// durable (data synced, then a metadata generation that lists it as
    /// prepared) without making it visible. After a crash it comes back as
    /// in-doubt until [`DiskStore::commit`] or [`DiskStore::abort`].
    pub fn prepare(&self, xid: Xid) -> Result<()> {
        self.prepare_after(xid, |_| Ok(()))
    }

    /// Run `writes` (a mirror applying what it staged for `xid`) and then
    /// prepare, with no other prepare or commit of this disk in between: a
    /// prepare must never mark as durable writes it did not sync.
    pub fn prepare_after(
        &self,
        xid: Xid,
        writes: impl FnOnce(&DiskStore) -> Result<()>,
    ) -> Result<()> {
        if self.read_only {
            return Err(read_only_err());
        }
        let _c = self.commit_lock.lock();
        writes(self)?;
        {
            let inner = self.inner.lock();
            match inner.pending.get(&xid) {
                None => return Ok(()),
                Some(t) if (t.prepared && !t.dirty) || t.is_empty() => return Ok(()),
                _ => {}
            }
        }
        self.write_runs(xid)?;
        self.dev.sync()?;
        let was_prepared;
        let (generation, state) = {
            let mut inner = self.inner.lock();
            let Some(t) = inner.pending.get_mut(&xid) else {
                return Ok(());
            };
            was_prepared = t.prepared;
            t.prepared = true;
            t.dirty = false;
            (inner.generation + 1, Self::meta_state(&inner, None))
        };
        let res = self.write_generation(generation, &state);
        let mut inner = self.inner.lock();
        match res {
            Ok(()) => {
                inner.generation = generation;
                debug!(xid, generation, "prepared");
                Ok(())
            }
            Err(e) => {
                if let Some(t) = inner.pending.get_mut(&xid) {
                    t.prepared = was_prepared;
                    t.dirty = true;
                }
                Err(e)
            }
        }
    }

    /// Make everything `xid` did on this disk durable and visible, atomically:
    /// sync data, write the next metadata slot, sync. Works whether or not
    /// the transaction was prepared.
    pub fn commit(&self, xid: Xid) -> Result<()> {
        if self.read_only {
            return Err(read_only_err());
        }
        let _c = self.commit_lock.lock();
        {
            let inner = self.inner.lock();
            match inner.pending.get(&xid) {
                None => return Ok(()),
                Some(t) if t.is_empty() => {
                    drop(inner);
                    self.inner.lock().pending.remove(&xid);
                    return Ok(());
                }
                _ => {}
            }
        }
        self.write_runs(xid)?;
        let res = self.dev.sync().and_then(|_| {
            let (generation, state) = {
                let inner = self.inner.lock();
                (inner.generation + 1, Self::meta_state(&inner, Some(xid)))
            };
            self.write_generation(generation, &state)
                .map(|_| generation)
        });
        let generation = match res {
            Ok(g) => g,
            Err(e) => {
                // The transaction stays pending so it can still be aborted.
                warn!(xid, error = %e, "commit failed");
                return Err(e);
            }
        };
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        inner.generation = generation;
        let Some(t) = inner.pending.remove(&xid) else {
            return Ok(());
        };
        let nblocks = t.blocks.len();
        for p in t.blocks {
            if let Some(s) = inner.streams.get_mut(&p.key) {
                Arc::make_mut(&mut s.committed).push(p.block);
            }
        }
        for (key, run, rows) in t.runs {
            if let Some(s) = inner.streams.get_mut(&key) {
                let d = Arc::make_mut(&mut s.deletes);
                for r in &rows {
                    d.insert(*r, xid);
                }
                s.runs.push(run);
            }
            if let Some(l) = inner.locks.get_mut(&key) {
                for r in &rows {
                    l.remove(r);
                }
            }
        }
        debug!(xid, generation, blocks = nblocks, "committed");
        Ok(())
    }

    /// Forget `xid`: its blocks and deletes are dropped and its row locks
    /// released. A prepared transaction is removed durably from the metadata.
    /// (Its space is not reused until the table is dropped or the disk reopened.)
    pub fn abort(&self, xid: Xid) -> Result<()> {
        let _c = self.commit_lock.lock();
        let was_prepared = {
            let mut inner = self.inner.lock();
            let inner = &mut *inner;
            let Some(t) = inner.pending.remove(&xid) else {
                return Ok(());
            };
            let keys: HashSet<StreamKey> = t
                .deletes
                .keys()
                .copied()
                .chain(t.runs.iter().map(|r| r.0))
                .collect();
            for k in keys {
                if let Some(l) = inner.locks.get_mut(&k) {
                    l.retain(|_, x| *x != xid);
                }
            }
            if t.prepared {
                // Keep the extents listed: recovery frees what nothing pins.
                Some((inner.generation + 1, Self::meta_state(inner, None)))
            } else {
                None
            }
        };
        if let Some((generation, state)) = was_prepared {
            if self.read_only {
                return Ok(());
            }
            self.write_generation(generation, &state)?;
            self.inner.lock().generation = generation;
        }
        Ok(())
    }

    /// Open transactions on this disk: the resolver's view after a restart.
    pub fn in_doubt(&self) -> Vec<TxnState> {
        let inner = self.inner.lock();
        let mut v: Vec<TxnState> = inner
            .pending
            .iter()
            .map(|(x, t)| TxnState {
                xid: *x,
                prepared: t.prepared,
            })
            .collect();
        v.sort_by_key(|t| t.xid);
        v
    }

    /// Scan rows of one (segment, table, slice) visible to the spec's snapshot.
    pub fn scan(&self, spec: &ScanSpec) -> Result<BlockScan> {
        let key = StreamKey {
            segment: spec.segment,
            table: spec.table,
            slice: spec.slice,
        };
        let committed;
        let (user, blocks, deletes, own_deletes) = {
            let inner = self.inner.lock();
            let t = inner
                .tables
                .get(&spec.table)
                .ok_or(EngineError::TableNotFound(spec.table))?;
            let (mut blocks, deletes) = inner
                .streams
                .get(&key)
                .map(|s| (s.committed.clone(), s.deletes.clone()))
                .unwrap_or_default();
            committed = blocks.len();
            let mut own_deletes = HashSet::new();
            if let Some(own) = spec.snapshot.own.and_then(|x| inner.pending.get(&x)) {
                let mine: Vec<Arc<IndexedBlock>> = own
                    .blocks
                    .iter()
                    .filter(|p| p.key == key)
                    .map(|p| p.block.clone())
                    .collect();
                if !mine.is_empty() {
                    let mut all = (*blocks).clone();
                    all.extend(mine);
                    blocks = Arc::new(all);
                }
                own_deletes = own.deleted_in(&key);
            }
            (t.user.clone(), blocks, deletes, own_deletes)
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
        let [rowid_col, createxid_col, _] = block::hidden_columns(nuser);
        // Stored columns to decode: projection ∪ predicate columns, then hidden.
        let mut base: Vec<usize> = out_user.iter().chain(&pred_cols).copied().collect();
        if spec.include_hidden {
            base.extend(block::hidden_columns(nuser));
        }
        let mut with_vis = base.clone();
        with_vis.extend([rowid_col, createxid_col]);
        let plan = |mut read: Vec<usize>| -> ReadPlan {
            read.sort_unstable();
            read.dedup();
            let pos = |c: usize| read.iter().position(|&r| r == c);
            let predicate = spec.predicate.as_ref().map(|p| {
                p.remap(&|c| pos(c).expect("predicate column is in the read set"))
                    .prepared()
            });
            let mut out_idx: Vec<usize> = out_user
                .iter()
                .map(|&c| pos(c).expect("projected column is in the read set"))
                .collect();
            if spec.include_hidden {
                out_idx.extend(
                    block::hidden_columns(nuser)
                        .map(|c| pos(c).expect("hidden column is in the read set")),
                );
            }
            let vis = pos(rowid_col).zip(pos(createxid_col));
            let proj = if read.len() == nuser + 3 && read.iter().enumerate().all(|(i, &c)| i == c) {
                None
            } else {
                Some(read)
            };
            ReadPlan {
                proj,
                predicate,
                out_idx,
                vis,
            }
        };
        let mut fields: Vec<_> = out_user.iter().map(|&c| user.fields()[c].clone()).collect();
        if spec.include_hidden {
            fields.extend(block::hidden_fields());
        }
        let schema = Arc::new(Schema::new(fields));
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
            prune: spec.predicate.clone().map(Predicate::prepared),
            fast: plan(base),
            checked: plan(with_vis),
            snapshot: spec.snapshot.clone(),
            deletes,
            own_deletes,
            schema,
            failed: false,
            segment: spec.segment,
            stored: nuser + 3,
            committed,
            cache: self.cache.clone(),
        })
    }

    /// Counters of the decoded-block cache (None: no cache).
    pub fn cache_stats(&self) -> Option<crate::cache::CacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }

    /// Checksum of the rows of one copy of a slice visible at `snapshot`:
    /// count, and a wrapping sum of a 64-bit hash of (rowid, row contents),
    /// so block order and layout do not matter, only the logical rows.
    pub fn checksum(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        snapshot: &Snapshot,
    ) -> Result<SliceChecksum> {
        let mut scan = self.scan(&ScanSpec {
            segment,
            table,
            slice,
            projection: None,
            predicate: None,
            include_hidden: true,
            snapshot: snapshot.clone(),
        })?;
        let schema = scan.schema();
        let nuser = schema.fields().len() - 3;
        let fields: Vec<arrow::row::SortField> = schema.fields()[..nuser]
            .iter()
            .map(|f| arrow::row::SortField::new(f.data_type().clone()))
            .collect();
        let conv = arrow::row::RowConverter::new(fields)?;
        let mut out = SliceChecksum::default();
        for batch in scan.by_ref() {
            let batch = batch?;
            let rows = conv.convert_columns(&batch.columns()[..nuser])?;
            let rowids = batch
                .column(nuser)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| EngineError::Internal("_rowid is not Int64".into()))?;
            for (i, row) in rows.iter().enumerate() {
                let id = rowids.value(i).to_le_bytes();
                let lo = crc32c::crc32c_append(crc32c::crc32c(&id), row.as_ref());
                let hi =
                    crc32c::crc32c_append(crc32c::crc32c_append(0x5bd1_e995, &id), row.as_ref());
                out.checksum = out
                    .checksum
                    .wrapping_add((u64::from(hi) << 32) | u64::from(lo));
                out.rows += 1;
            }
        }
        Ok(out)
    }

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
        let (stored, work) = {
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
            (t.stored.clone(), work)
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
            for b in blocks.iter() {
                let touched = deletes
                    .range(b.meta.rowid_min..=b.meta.rowid_max)
                    .any(|(r, _)| dead.contains(r));
                if !touched {
                    new_blocks.push(b.clone());
                    continue;
                }
                let mut buf = vec![0u8; b.meta.length as usize];
                self.dev.read_at(b.meta.offset, &mut buf)?;
                let loc = BlockLocation {
                    disk: self.sb.disk_id,
                    offset: b.meta.offset,
                    table,
                    slice: key.slice,
                    seq: b.meta.seq,
                    rows: b.meta.rows,
                };
                let batch = block::decode_block(&buf, &loc, None)?;
                let rowids = batch
                    .column(batch.num_columns() - 3)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| EngineError::Internal("_rowid is not Int64".into()))?;
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
                let kept = RecordBatch::try_new(stored.clone(), kept.columns().to_vec())?;
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
                .filter(|(_, &x)| x >= horizon)
                .map(|(&r, &x)| (r, x))
                .collect();
            let run = if survivors.is_empty() {
                None
            } else {
                let recs: Vec<(i64, u64)> = survivors.iter().map(|(&r, &x)| (r, x)).collect();
                let bytes = block::encode_delete_run(table, key.slice, &recs);
                let offset = self.allocate(key, bytes.len() as u64)?;
                self.dev.write_at(offset, &bytes)?;
                Some(DeleteRunMeta {
                    offset,
                    length: bytes.len() as u64,
                    count: recs.len() as u64,
                })
            };
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
                rows: s
                    .committed
                    .iter()
                    .map(|b| b.meta.rows)
                    .sum::<u64>()
                    .saturating_sub(s.deletes.len() as u64),
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

/// How to decode blocks for one scan: which stored columns, where the output
/// and the predicate columns land, and where `_rowid`/`_createxid` are (only
/// when the plan reads them).
struct ReadPlan {
    proj: Option<Vec<usize>>,
    predicate: Option<Predicate>,
    out_idx: Vec<usize>,
    vis: Option<(usize, usize)>,
}

/// A scan over a snapshot of one stream's blocks. Holds no lock.
pub struct BlockScan {
    dev: Arc<dyn BlockDevice>,
    disk: DiskId,
    table: TableId,
    slice: SliceId,
    blocks: Arc<Vec<Arc<IndexedBlock>>>,
    next: usize,
    /// Over user columns, for zone-map pruning.
    prune: Option<Predicate>,
    /// Blocks whose rows are all visible: no hidden columns needed.
    fast: ReadPlan,
    /// Blocks that need a row-by-row visibility check.
    checked: ReadPlan,
    snapshot: Snapshot,
    deletes: Arc<BTreeMap<i64, Xid>>,
    own_deletes: HashSet<i64>,
    schema: SchemaRef,
    stats: ScanStats,
    failed: bool,
    segment: SegmentKind,
    /// Stored columns of the table: user columns and the hidden ones.
    stored: usize,
    /// `blocks[..committed]` are committed; the rest are the reader's own
    /// uncommitted blocks, which are never cached (an abort may give their
    /// place and sequence number to another block).
    committed: usize,
    cache: Option<Arc<BlockCache>>,
}

impl BlockScan {
    /// Output schema: the projection, then the hidden columns if asked for.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn stats(&self) -> ScanStats {
        self.stats
    }

    /// Whether some row of `b` may be invisible to the snapshot.
    fn needs_check(&self, b: &IndexedBlock) -> bool {
        let m = &b.meta;
        let own_block = self
            .snapshot
            .own
            .is_some_and(|o| m.createxid_min == o && m.createxid_max == o);
        (!own_block && !self.snapshot.sees_all(m.createxid_min, m.createxid_max))
            || self
                .deletes
                .range(m.rowid_min..=m.rowid_max)
                .next()
                .is_some()
            || !self.own_deletes.is_empty()
    }

    fn read_block(&mut self, b: &IndexedBlock) -> Result<Option<RecordBatch>> {
        let check = self.needs_check(b);
        let plan = if check { &self.checked } else { &self.fast };
        let key = BlockKey {
            segment: self.segment,
            table: self.table,
            slice: self.slice,
            seq: b.meta.seq,
            offset: b.meta.offset,
        };
        // The block being read is `self.next - 1`.
        let cache = self.cache.as_ref().filter(|_| self.next <= self.committed);
        let cached = cache.and_then(|c| c.get(&key, plan.proj.as_deref(), self.stored));
        let batch = match cached {
            Some(batch) => batch,
            None => {
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
                let batch = block::decode_block(&buf, &loc, plan.proj.clone())?;
                drop(buf);
                if let Some(c) = cache {
                    c.insert(key, plan.proj.as_deref(), &batch);
                }
                batch
            }
        };
        self.stats.blocks_read += 1;
        self.stats.rows_read += batch.num_rows() as u64;
        let cols: Vec<ArrayRef> = plan
            .out_idx
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let opts = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let out = RecordBatch::try_new_with_options(self.schema.clone(), cols, &opts)?;
        let mut mask = match &plan.predicate {
            None => None,
            Some(p) => Some(p.evaluate(&batch)?),
        };
        if check {
            let (ri, ci) = plan
                .vis
                .ok_or_else(|| EngineError::Internal("visibility columns not read".into()))?;
            let as_i64 = |i: usize| {
                batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .cloned()
                    .ok_or_else(|| EngineError::Internal("hidden column is not Int64".into()))
            };
            let (rowids, cx) = (as_i64(ri)?, as_i64(ci)?);
            let vis: arrow::array::BooleanArray = rowids
                .values()
                .iter()
                .zip(cx.values())
                .map(|(&r, &c)| {
                    let created = self.snapshot.sees(c as u64);
                    let deleted = self.own_deletes.contains(&r)
                        || self.deletes.get(&r).is_some_and(|&x| self.snapshot.sees(x));
                    Some(created && !deleted)
                })
                .collect();
            mask = Some(match mask {
                None => vis,
                Some(m) => arrow::compute::and(&m, &vis)?,
            });
        }
        let out = match mask {
            None => out,
            Some(mask) => {
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
            if let Some(p) = &self.prune {
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
            cache_bytes: 0,
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
            snapshot: Snapshot::latest(),
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
        dev.write_at(8, &99u32.to_le_bytes()).unwrap();
        assert!(matches!(
            DiskStore::open(&path, opts(100)),
            Err(EngineError::UnsupportedVersion {
                found: 99,
                supported: crate::disk::FORMAT_VERSION
            })
        ));
        dev.write_at(8, &crate::disk::FORMAT_VERSION.to_le_bytes())
            .unwrap();
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

    fn count(store: &DiskStore, seg: SegmentKind, snap: &Snapshot) -> u64 {
        let s = ScanSpec {
            snapshot: snap.clone(),
            ..spec(seg, 1, 0)
        };
        store
            .scan(&s)
            .unwrap()
            .map(|b| b.unwrap().num_rows() as u64)
            .sum()
    }

    fn snap(xmax: Xid, xip: &[Xid], own: Option<Xid>) -> Snapshot {
        Snapshot {
            xmax,
            xip: xip.to_vec(),
            own,
        }
    }

    #[test]
    fn cached_blocks_answer_like_the_disk_and_keep_visibility() {
        let (_dev, store) = {
            let dev = Arc::new(MemDevice::new(small_init().size));
            let cached = StoreOptions {
                cache_bytes: 64 << 20,
                ..opts(100)
            };
            let store = DiskStore::create_with_device(
                dev.clone(),
                Path::new("mem"),
                IDS,
                small_init(),
                cached,
            )
            .unwrap();
            (dev, store)
        };
        let p = SegmentKind::Primary;
        store.create_table(1, schema()).unwrap();
        store.append(p, 1, 0, 5, &rows(0, 1000)).unwrap();
        store.commit(5).unwrap();
        let first = scan_all(&store, &spec(p, 1, 0)).unwrap();
        let st = store.cache_stats().unwrap();
        assert_eq!((st.hits, st.blocks), (0, 10), "{st:?}");
        let again = scan_all(&store, &spec(p, 1, 0)).unwrap();
        assert_eq!(first, again);
        assert_eq!(store.cache_stats().unwrap().hits, 10);
        // A projection of cached columns, with a filter, from the cache.
        let some = ScanSpec {
            projection: Some(vec![2]),
            predicate: Some(Predicate::Compare {
                column: 0,
                op: crate::predicate::CmpOp::Lt,
                value: crate::predicate::Literal::Int(250),
            }),
            ..spec(p, 1, 0)
        };
        assert_eq!(scan_all(&store, &some).unwrap().num_rows(), 250);
        // Zone maps prune 7 blocks; the 3 read come from the cache.
        assert_eq!(store.cache_stats().unwrap().hits, 13);

        // Committed deletes hide cached rows.
        let ids: Vec<i64> = (1..=10).collect();
        store
            .delete(p, 1, 0, 6, &ids, Some(&snap(6, &[], Some(6))))
            .unwrap();
        store.commit(6).unwrap();
        assert_eq!(count(&store, p, &Snapshot::latest()), 990);

        // The reader's own uncommitted rows, read once, do not come back
        // after an abort, not even where a later block was written.
        store.append(p, 1, 0, 7, &rows(1000, 100)).unwrap();
        assert_eq!(count(&store, p, &snap(8, &[7], Some(7))), 1090);
        store.abort(7).unwrap();
        store.append(p, 1, 0, 8, &rows(5000, 100)).unwrap();
        store.commit(8).unwrap();
        let all = scan_all(&store, &spec(p, 1, 0)).unwrap();
        let k = all.column(0).as_primitive::<Int64Type>();
        assert_eq!(all.num_rows(), 1090);
        assert!(
            k.values().iter().all(|&v| !(1000..5000).contains(&v)),
            "aborted rows came back"
        );
        assert!(k.values().contains(&5099));

        // A dropped table takes its cached blocks with it.
        store.drop_table(1).unwrap();
        assert_eq!(store.cache_stats().unwrap().blocks, 0);
        store.create_table(1, schema()).unwrap();
        store.append(p, 1, 0, 9, &rows(7000, 100)).unwrap();
        store.commit(9).unwrap();
        let fresh = scan_all(&store, &spec(p, 1, 0)).unwrap();
        assert_eq!(fresh, scan_all(&store, &spec(p, 1, 0)).unwrap());
        assert_eq!(fresh.column(0).as_primitive::<Int64Type>().value(0), 7000);
    }

    #[test]
    fn snapshots_see_only_committed_and_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            DiskStore::create(&dir.path().join("d.img"), IDS, small_init(), opts(100)).unwrap();
        store.create_table(1, schema()).unwrap();
        let p = SegmentKind::Primary;
        store.append(p, 1, 0, 5, &rows(0, 250)).unwrap();
        store.commit(5).unwrap();
        store.append(p, 1, 0, 7, &rows(250, 50)).unwrap();
        // 7 is pending: invisible to others, visible to itself.
        assert_eq!(count(&store, p, &Snapshot::latest()), 250);
        assert_eq!(count(&store, p, &snap(8, &[7], Some(7))), 300);
        store.commit(7).unwrap();
        // A snapshot taken while 7 was in progress still does not see it.
        assert_eq!(count(&store, p, &snap(8, &[7], None)), 250);
        assert_eq!(count(&store, p, &snap(6, &[], None)), 250);
        assert_eq!(count(&store, p, &snap(5, &[], None)), 0);
        assert_eq!(count(&store, p, &snap(8, &[], None)), 300);
        // Delete 10 rows in 9; conflicting delete in 10 fails with WriteConflict.
        let ids: Vec<i64> = (1..=10).collect();
        assert_eq!(
            store
                .delete(p, 1, 0, 9, &ids, Some(&snap(9, &[], Some(9))))
                .unwrap(),
            10
        );
        assert_eq!(count(&store, p, &snap(10, &[9], Some(9))), 290);
        assert_eq!(count(&store, p, &snap(10, &[9], None)), 300);
        let e = store.delete(p, 1, 0, 10, &[5], Some(&snap(10, &[9], Some(10))));
        assert!(
            matches!(
                e,
                Err(EngineError::WriteConflict {
                    rowid: 5,
                    other: 9,
                    ..
                })
            ),
            "{e:?}"
        );
        store.commit(9).unwrap();
        // After 9 committed, a snapshot that did not see 9 still conflicts.
        let e = store.delete(p, 1, 0, 10, &[5], Some(&snap(10, &[9], Some(10))));
        assert!(matches!(e, Err(EngineError::WriteConflict { .. })), "{e:?}");
        assert_eq!(count(&store, p, &snap(10, &[], None)), 290);
        assert_eq!(count(&store, p, &snap(9, &[], None)), 300);
        // Deletes survive a reopen.
        drop(store);
        let store = DiskStore::open(&dir.path().join("d.img"), opts(100)).unwrap();
        assert_eq!(count(&store, p, &Snapshot::latest()), 290);
        assert_eq!(store.slice_stats()[0].rows, 290);
    }

    #[test]
    fn prepared_transactions_survive_a_crash_as_in_doubt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        let store = DiskStore::create(&path, IDS, small_init(), opts(100)).unwrap();
        store.create_table(1, schema()).unwrap();
        let p = SegmentKind::Primary;
        store.append(p, 1, 0, 3, &rows(0, 100)).unwrap();
        store.commit(3).unwrap();
        store.append(p, 1, 0, 4, &rows(100, 30)).unwrap();
        store
            .delete(p, 1, 0, 4, &[1, 2], Some(&snap(5, &[], Some(4))))
            .unwrap();
        store.prepare(4).unwrap();
        store.append(p, 1, 0, 5, &rows(130, 30)).unwrap(); // never prepared: lost
        store.append(p, 1, 0, 6, &rows(160, 30)).unwrap();
        store.prepare(6).unwrap();
        drop(store); // crash: nothing else written
        let store = DiskStore::open(&path, opts(100)).unwrap();
        assert_eq!(
            store.in_doubt(),
            vec![
                TxnState {
                    xid: 4,
                    prepared: true
                },
                TxnState {
                    xid: 6,
                    prepared: true
                }
            ]
        );
        assert_eq!(count(&store, p, &Snapshot::latest()), 100);
        // Its row locks are back: a conflicting delete fails.
        assert!(store
            .delete(p, 1, 0, 7, &[2], Some(&snap(8, &[], Some(7))))
            .is_err());
        store.commit(4).unwrap();
        store.abort(6).unwrap();
        assert_eq!(count(&store, p, &Snapshot::latest()), 128);
        drop(store);
        let store = DiskStore::open(&path, opts(100)).unwrap();
        assert!(store.in_doubt().is_empty());
        assert_eq!(count(&store, p, &Snapshot::latest()), 128);
        // New rowids never reuse a committed one.
        store.append(p, 1, 0, 9, &rows(0, 1)).unwrap();
        store.commit(9).unwrap();
        let hidden = ScanSpec {
            include_hidden: true,
            ..spec(p, 1, 0)
        };
        let max_rowid = store
            .scan(&hidden)
            .unwrap()
            .map(|b| {
                let b = b.unwrap();
                arrow::compute::max(b.column(3).as_primitive::<Int64Type>()).unwrap()
            })
            .max()
            .unwrap();
        assert!(
            max_rowid > 130,
            "a new rowid must not reuse a committed one: {max_rowid}"
        );
    }

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
