//! The slice store: tables' blocks per (segment, table, slice) on one disk.
//!
//! It owns the committed state of a disk (tables, extents, block index) and
//! the pending blocks of open transactions, assigns rowids, adds the hidden
//! columns, and answers scans. Durability is the commit protocol of
//! docs/disk-format.md: data is synced, then the next metadata slot is written
//! and synced; nothing is visible before, everything after.
//!
//! It must never: reach the network or another node (a block that fails its
//! checksum goes to the [`BlockRepair`] it was given; forwarding and staging
//! are the mirror manager's); decide which copies a slice has (the
//! coordinator's map does); make a write visible or durable before its data
//! is synced; or use bytes read from the disk before their CRC is checked.
//!
//! One file per concept, each adding an `impl DiskStore` block: this file
//! holds the shared types, the in-memory state and open/create;
//! `recovery` rebuilds that state from the last committed
//! metadata; `tables` creates and drops tables; `append` writes new blocks
//! (local rows and blocks forwarded by a primary) and allocates space;
//! `delete_log` records deletes and writes them as delete runs; `commit` is
//! prepare, commit and abort (two-phase commit) and the metadata generation
//! they write; `scan` reads blocks through a snapshot; `repair` is the seam
//! every block read that fails verification goes through; `groom` rewrites
//! blocks without dead rows; `copy` is what a slice copy between nodes
//! sends and takes in; `checksum` is the slice checksum `slicedb verify`
//! compares; `report` is what `slicedb disk inspect` shows; `sink` is how a
//! copy target writes what it takes in (direct I/O into runs of its own);
//! `reclaim` gives an aborted transaction's space back at once.
//!
//! Locking: `inner` (a short mutex) guards the in-memory state and is never
//! held across block encoding or data I/O. `commit_lock` serializes metadata
//! writers (commit, create/drop table) so generations stay ordered. `io_gate`
//! lets `drop_table` wait for appends still writing into the table's extents
//! before those extents are freed for reuse.

mod append;
mod checksum;
mod commit;
mod copy;
mod counters;
mod delete_log;
mod evolve;
mod groom;
mod reclaim;
mod recovery;
mod repair;
mod report;
mod scan;
mod scrub;
mod sink;
mod tables;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow::datatypes::{Schema, SchemaRef};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tracing::{debug, info};

pub use crate::block::Compression;
use crate::block::ZoneMap;
use crate::cache::BlockCache;
use crate::disk::alloc::Space;
use crate::disk::meta::{
    self, BlockMeta, DeleteRunMeta, ExtentRun, MetaState, SlotStatus, StreamKey,
};
use crate::disk::superblock::SUPERBLOCK_SIZE;
pub use crate::disk::SegmentKind;
use crate::disk::{BlockDevice, FileDevice, Superblock};
use crate::predicate::Predicate;
use crate::{DiskId, EngineError, NodeId, Result, SliceId, TableId, Xid};

pub use checksum::SliceChecksum;
pub use commit::TxnState;
pub use copy::SliceExport;
pub use counters::{SegmentCounts, StoreCounters};
pub use evolve::{META_DEFAULT, META_DROPPED};
pub use groom::GroomStats;
pub use repair::{check_replacement, BlockRepair, LogicalBlock, NoRepair, Repaired, StoredBlock};
pub use report::{DiskReport, ExtentReport, SegmentReport, SliceStat, TableReport};
pub use scan::{BlockScan, ScanStats};
pub use scrub::{ScrubBatch, ScrubRead};
pub use sink::CopySink;

/// Who a disk belongs to; written into the superblock at init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct DiskIds {
    pub cluster_id: [u8; 16],
    pub node_id: NodeId,
    pub disk_id: DiskId,
}

/// Runtime options of a store (not part of the image).
#[derive(Clone)]
pub struct StoreOptions {
    /// Most rows per block. Default 16384.
    pub block_rows: usize,
    /// Payload compression of new blocks. Default LZ4.
    pub compression: Compression,
    /// Bytes of decoded block columns kept in memory for later scans
    /// ([`crate::cache`]). Default 0: every scan reads the disk.
    pub cache_bytes: u64,
    /// What a read does with a block that fails its checksum. Default
    /// [`NoRepair`]: the read fails with the checksum error.
    pub repair: Arc<dyn BlockRepair>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        // One shared `NoRepair`, so that default options compare equal.
        static NO_REPAIR: OnceLock<Arc<dyn BlockRepair>> = OnceLock::new();
        StoreOptions {
            block_rows: 16384,
            compression: Compression::Lz4,
            cache_bytes: 0,
            repair: NO_REPAIR.get_or_init(|| Arc::new(NoRepair)).clone(),
        }
    }
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("block_rows", &self.block_rows)
            .field("compression", &self.compression)
            .field("cache_bytes", &self.cache_bytes)
            .finish_non_exhaustive()
    }
}

/// Equal when every setting is and both use the same repair object.
impl PartialEq for StoreOptions {
    fn eq(&self, other: &Self) -> bool {
        self.block_rows == other.block_rows
            && self.compression == other.compression
            && self.cache_bytes == other.cache_bytes
            && Arc::ptr_eq(&self.repair, &other.repair)
    }
}

impl Eq for StoreOptions {}

/// Layout chosen at `disk init`, fixed for the image's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOptions {
    /// Image size in bytes (a file is allocated whole when it is made).
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

/// A table on a disk: its schema as the coordinator sent it, and the views
/// of it readers and writers need (`evolve`).
struct TableEntry {
    /// Logical columns (not dropped), current names, no metadata.
    user: SchemaRef,
    /// Physical user columns (every block's layout), then the hidden ones.
    stored: SchemaRef,
    /// The physical schema as sent, metadata and all.
    full: SchemaRef,
    schema_ipc: Vec<u8>,
    /// The physical column of each logical one.
    phys: Vec<usize>,
    /// Per physical column, what a block written before it existed reads
    /// as (one value; None: NULL).
    defaults: Arc<Vec<Option<arrow::array::ArrayRef>>>,
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

/// A deleted row: (rowid, the xid that deleted it).
type DeleteRecord = (i64, Xid);

/// One open transaction on this disk.
#[derive(Default)]
struct PendingTxn {
    blocks: Vec<PendingBlock>,
    /// Rowids deleted per stream, not yet written as a run.
    /// (A copy's deletes keep the xid that made them on the source.)
    deletes: BTreeMap<StreamKey, Vec<DeleteRecord>>,
    /// Delete runs written (at prepare), with their records.
    runs: Vec<(StreamKey, DeleteRunMeta, Vec<DeleteRecord>)>,
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
            .map(|&(r, _)| r)
            .collect();
        for (k, _, rows) in &self.runs {
            if k == key {
                out.extend(rows.iter().map(|&(r, _)| r));
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
    alloc: Space,
    pending: HashMap<Xid, PendingTxn>,
    /// Rows deleted by open transactions: the write-write conflict check.
    locks: HashMap<StreamKey, HashMap<i64, Xid>>,
    generation: u64,
    slots: [SlotStatus; 2],
    /// Space freed by aborts that a reader may still read ([`reclaim`]).
    parked: Vec<reclaim::Parked>,
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
    /// Scans in progress: space an abort frees is reused only after them.
    readers: Arc<reclaim::Readers>,
    /// Decoded columns of blocks read before (None: no cache).
    cache: Option<Arc<BlockCache>>,
    /// Work done, for the metrics endpoint.
    counters: Arc<StoreCounters>,
}

fn schema_to_ipc(schema: &Schema) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, schema)?;
    w.finish()?;
    drop(w);
    Ok(buf)
}

fn schema_from_ipc(bytes: &[u8], table: TableId) -> Result<SchemaRef> {
    crate::ipc::read_stream(bytes, None)
        .map(|(schema, _)| schema)
        .map_err(|e| EngineError::CorruptMetadata(format!("schema of table {table}: {e}")))
}

/// The `_rowid` column of a stored batch (user columns, then `_rowid`,
/// `_createxid`, `_deletexid`).
fn rowid_column(batch: &arrow::array::RecordBatch) -> Result<&arrow::array::Int64Array> {
    batch
        .num_columns()
        .checked_sub(3)
        .and_then(|i| batch.column(i).as_any().downcast_ref())
        .ok_or_else(|| EngineError::Internal("_rowid is not Int64".into()))
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
        Self::create_laid_out(dev, path, sb, opts)
    }

    /// Initialize an image on `dev` with a superblock already laid out
    /// (`slicedb disk init` with a zone profile).
    pub fn create_laid_out(
        dev: Arc<dyn BlockDevice>,
        path: &Path,
        sb: Superblock,
        opts: StoreOptions,
    ) -> Result<DiskStore> {
        if dev.len()? < sb.image_size {
            return Err(EngineError::InvalidRequest(format!(
                "device {} is smaller than the image size {}",
                dev.name(),
                sb.image_size
            )));
        }
        dev.write_at(0, &sb.encode())?;
        meta::write_slot(dev.as_ref(), &sb, 0, &MetaState::default().encode())?;
        info!(path = %path.display(), node_id = sb.node_id, disk_id = sb.disk_id, size = sb.image_size, layout = sb.layout.as_str(), "initialized disk image");
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
        if opts.block_rows == 0 || opts.block_rows as u64 > crate::block::MAX_BLOCK_ROWS {
            return Err(EngineError::InvalidRequest(format!(
                "block_rows must be from 1 to {}",
                crate::block::MAX_BLOCK_ROWS
            )));
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
            readers: Arc::default(),
            cache,
            counters: Arc::default(),
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
}
