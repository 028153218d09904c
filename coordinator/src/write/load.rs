//! The write path of one statement (COPY, INSERT, the insert half of
//! UPDATE): hash rows to slices, buffer per slice, ship full buffers to each
//! slice's primary node under the transaction's xid. The primaries forward
//! to their mirrors themselves.
//!
//! In autocommit the loader owns its transaction: nothing it wrote is
//! visible until `finish` commits (two-phase, see `txn`), and a loader
//! dropped unfinished (a dropped connection mid-COPY) aborts. Inside a
//! transaction block it only writes; a failure marks the block failed. It
//! never decides placement; it reads the map.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use slicedb_engine::proto;
use slicedb_engine::Xid;
use tokio::task::JoinSet;
use tracing::debug;

use crate::catalog::TableMeta;
use crate::cluster::Cluster;
use crate::map::DistMap;
use crate::txn::Txn;
use crate::{CoordinatorError, Result};

/// Rows buffered per slice before they are shipped.
const FLUSH_ROWS: usize = 65_536;
/// Input batches held for slice buffers that point into them, at most.
const MAX_HELD_BATCHES: usize = 64;
/// Writes in flight at once per loader, at least (one per slice, up to
/// `MAX_IN_FLIGHT`): slices fill at about the same pace, so their flushes
/// come in bursts, and a burst should not stall the decoding behind it.
const MIN_IN_FLIGHT: usize = 4;
const MAX_IN_FLIGHT: usize = 32;

/// Whether slicedb can store a column of this type.
pub fn storable(dt: &DataType) -> bool {
    super::hash::hashable(dt) && !matches!(dt, DataType::Utf8View)
        || matches!(dt, DataType::Binary | DataType::LargeBinary)
}

/// Rows bound for one slice: (batch, row) pairs into `Loader::batches`,
/// gathered with one `interleave` per flush (one copy of the rows).
#[derive(Default)]
struct SliceBuf {
    rows: Vec<(usize, usize)>,
}

pub struct Loader {
    cluster: Arc<Cluster>,
    table: Arc<TableMeta>,
    map: Arc<DistMap>,
    txn: Arc<Txn>,
    /// Autocommit: the loader commits or aborts its own transaction.
    own: bool,
    bufs: Vec<SliceBuf>,
    /// Batches some slice buffer still points into, by id (`first_batch` +
    /// position); dropped once no buffer does.
    batches: std::collections::VecDeque<RecordBatch>,
    first_batch: usize,
    inflight: JoinSet<Result<u64>>,
    max_in_flight: usize,
    rows_in: u64,
    rows_stored: u64,
    round_robin: u32,
    done: bool,
}

impl Loader {
    /// A load in its own transaction (autocommit).
    pub fn new(cluster: Arc<Cluster>, table: Arc<TableMeta>) -> Result<Loader> {
        let txn = cluster.begin()?;
        Ok(Self::build(cluster, table, txn, true))
    }

    /// A load inside an open transaction block.
    pub fn in_txn(cluster: Arc<Cluster>, table: Arc<TableMeta>, txn: Arc<Txn>) -> Loader {
        Self::build(cluster, table, txn, false)
    }

    fn build(cluster: Arc<Cluster>, table: Arc<TableMeta>, txn: Arc<Txn>, own: bool) -> Loader {
        let map = cluster.map();
        let xid = txn.xid;
        let n = map.slice_count() as usize;
        debug!(xid, table = %table.name, "load started");
        Loader {
            cluster,
            table,
            txn,
            own,
            bufs: (0..n).map(|_| SliceBuf::default()).collect(),
            batches: std::collections::VecDeque::new(),
            first_batch: 0,
            map,
            inflight: JoinSet::new(),
            max_in_flight: n.clamp(MIN_IN_FLIGHT, MAX_IN_FLIGHT),
            rows_in: 0,
            rows_stored: 0,
            round_robin: rand_start(xid),
            done: false,
        }
    }

    pub fn xid(&self) -> Xid {
        self.txn.xid
    }

    pub fn rows(&self) -> u64 {
        self.rows_in
    }

    /// The table's distribution key (column indices, in key order); empty
    /// for a round-robin table.
    pub fn key_columns(&self) -> &[usize] {
        &self.table.key
    }

    /// Slices rows are hashed across ([`super::hash::slice_of`]).
    pub fn slice_count(&self) -> u32 {
        self.map.slice_count()
    }

    /// Add rows that all belong to `slice` (the writer hashed them with
    /// [`crate::hash`], columns in table order). Ships them as they are: no
    /// regathering.
    pub async fn push_slice(&mut self, slice: u32, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.table.key.is_empty() || slice >= self.map.slice_count() {
            return Err(CoordinatorError::Catalog(format!(
                "rows for slice {slice} of table \"{}\", which is not split that way",
                self.table.name
            )));
        }
        let batch = self.conform(batch)?;
        debug_assert!(
            super::hash::slices_for_batch(&batch, &self.table.key, self.map.slice_count())
                .is_ok_and(|s| s.iter().all(|&x| x == slice)),
            "rows handed to push_slice({slice}) hash elsewhere"
        );
        self.rows_in += batch.num_rows() as u64;
        // Wide rows (COPY lines may be 64 MiB): several requests, each far
        // below the message cap.
        for part in proto::split_batch(batch, proto::WRITE_SPLIT_BYTES) {
            self.ship(slice as usize, part).await?;
        }
        Ok(())
    }

    /// Add rows (columns in table order). Ships full slice buffers.
    pub async fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = self.conform(batch)?;
        let nslices = self.map.slice_count();
        let slices = if self.table.key.is_empty() {
            let start = self.round_robin;
            self.round_robin = start.wrapping_add(batch.num_rows() as u32);
            (0..batch.num_rows() as u32)
                .map(|i| start.wrapping_add(i) % nslices)
                .collect()
        } else {
            super::hash::slices_for_batch(&batch, &self.table.key, nslices)?
        };
        let id = self.first_batch + self.batches.len();
        self.batches.push_back(batch.clone());
        for (row, s) in slices.iter().enumerate() {
            self.bufs[*s as usize].rows.push((id, row));
        }
        for slice in 0..self.bufs.len() {
            if self.bufs[slice].rows.len() >= FLUSH_ROWS {
                self.flush_slice(slice).await?;
            }
        }
        self.release_batches();
        // A slice that rarely gets rows (a skewed key) would pin every batch
        // after its oldest row: ship it early instead.
        while self.batches.len() > MAX_HELD_BATCHES {
            let oldest = (0..self.bufs.len())
                .filter_map(|s| self.bufs[s].rows.first().map(|r| (r.0, s)))
                .min();
            let Some((_, slice)) = oldest else { break };
            self.flush_slice(slice).await?;
            self.release_batches();
        }
        self.rows_in += batch.num_rows() as u64;
        Ok(())
    }

    /// Check the batch against the table and give it the table's schema.
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let schema = &self.table.schema;
        if batch.num_columns() != schema.fields().len() {
            return Err(CoordinatorError::DataFusion(
                datafusion::error::DataFusionError::Plan(format!(
                    "table \"{}\" has {} columns, got {}",
                    self.table.name,
                    schema.fields().len(),
                    batch.num_columns()
                )),
            ));
        }
        let mut cols = Vec::with_capacity(batch.num_columns());
        let limits = self.table.max_lengths();
        for ((f, c), limit) in schema.fields().iter().zip(batch.columns()).zip(limits) {
            if !f.is_nullable() && c.null_count() > 0 {
                return Err(CoordinatorError::NotNullViolation {
                    table: self.table.name.clone(),
                    column: f.name().clone(),
                });
            }
            let c = if c.data_type() == f.data_type() {
                c.clone()
            } else {
                arrow::compute::cast(c, f.data_type())?
            };
            if let Some(n) = limit {
                check_length(&c, n)?;
            }
            cols.push(c);
        }
        Ok(RecordBatch::try_new(schema.clone(), cols)?)
    }

    /// Drop the batches no slice buffer points into any more.
    fn release_batches(&mut self) {
        let oldest = self
            .bufs
            .iter()
            .filter_map(|b| b.rows.first().map(|r| r.0))
            .min()
            .unwrap_or(self.first_batch + self.batches.len());
        while self.first_batch < oldest {
            self.batches.pop_front();
            self.first_batch += 1;
        }
    }

    async fn flush_slice(&mut self, slice: usize) -> Result<()> {
        let buf = std::mem::take(&mut self.bufs[slice]);
        if buf.rows.is_empty() {
            return Ok(());
        }
        let batch = self.gather(&buf.rows)?;
        // Wide rows: several requests, each far below the message cap.
        for part in proto::split_batch(batch, proto::WRITE_SPLIT_BYTES) {
            self.ship(slice, part).await?;
        }
        Ok(())
    }

    /// Send `batch` to the node serving `slice` (without waiting for it,
    /// unless too many writes are in flight).
    async fn ship(&mut self, slice: usize, batch: RecordBatch) -> Result<()> {
        while self.inflight.len() >= self.max_in_flight {
            self.join_one().await?;
        }
        let payload =
            super::send::Payload::Rows(proto::batches_to_ipc(&self.table.schema, &[batch])?.into());
        let (cluster, txn, table) = (self.cluster.clone(), self.txn.clone(), self.table.clone());
        let slice = slice as u32;
        self.inflight
            .spawn(async move { super::send::send(&cluster, &txn, &table, slice, &payload).await });
        Ok(())
    }

    /// The rows `rows` points at, as one batch.
    fn gather(&self, rows: &[(usize, usize)]) -> Result<RecordBatch> {
        let first = rows[0].0;
        let last = rows[rows.len() - 1].0;
        let (a, b) = (first - self.first_batch, last - self.first_batch);
        let sources: Vec<&RecordBatch> = self.batches.range(a..=b).collect();
        // All rows of one batch, in order: no copy at all.
        if a == b && rows.len() == sources[0].num_rows() {
            return Ok(sources[0].clone());
        }
        let idx: Vec<(usize, usize)> = rows.iter().map(|&(id, r)| (id - first, r)).collect();
        let cols = (0..self.table.schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn arrow::array::Array> =
                    sources.iter().map(|b| b.column(c).as_ref()).collect();
                arrow::compute::interleave(&arrays, &idx)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(self.table.schema.clone(), cols)?)
    }

    async fn join_one(&mut self) -> Result<()> {
        if let Some(r) = self.inflight.join_next().await {
            let rows =
                r.map_err(|e| CoordinatorError::Catalog(format!("write task failed: {e}")))??;
            self.rows_stored += rows;
        }
        Ok(())
    }

    /// Ship what is left; in autocommit, commit (two-phase). Returns rows stored.
    pub async fn finish(mut self) -> Result<u64> {
        let res = self.finish_inner().await;
        if res.is_err() {
            self.abort_now().await;
        }
        self.done = true;
        res
    }

    async fn finish_inner(&mut self) -> Result<u64> {
        for s in 0..self.bufs.len() {
            self.flush_slice(s).await?;
        }
        while !self.inflight.is_empty() {
            self.join_one().await?;
        }
        if self.rows_stored != self.rows_in {
            return Err(CoordinatorError::Catalog(format!(
                "nodes stored {} rows of {} sent",
                self.rows_stored, self.rows_in
            )));
        }
        debug!(
            xid = self.txn.xid,
            rows = self.rows_in,
            "load written, committing"
        );
        if self.own {
            self.cluster.commit(&self.txn).await?;
            debug!(xid = self.txn.xid, rows = self.rows_in, "load committed");
        }
        Ok(self.rows_in)
    }

    /// Give up: abort the loader's own transaction, or mark the enclosing
    /// transaction block failed.
    pub async fn abort(mut self) {
        self.abort_now().await;
        self.done = true;
    }

    async fn abort_now(&mut self) {
        self.inflight.abort_all();
        while self.inflight.join_next().await.is_some() {}
        if self.own {
            self.cluster.abort(&self.txn).await;
        } else {
            self.txn
                .mark_failed("a statement of the transaction failed");
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Dropped unfinished: the statement was cancelled or its connection
        // went away. Nothing was committed; tell the nodes to discard.
        self.inflight.abort_all();
        if !self.own {
            self.txn
                .mark_failed("a statement of the transaction was cancelled");
            return;
        }
        let cluster = self.cluster.clone();
        let txn = self.txn.clone();
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move { cluster.abort(&txn).await });
        }
    }
}

fn rand_start(xid: Xid) -> u32 {
    // Spread round-robin starting points without a RNG dependency.
    (xid.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as u32
}

/// `varchar(n)`: every value has at most `n` characters (22001).
fn check_length(c: &arrow::array::ArrayRef, n: u32) -> Result<()> {
    use arrow::array::AsArray;
    let Some(strings) = c.as_string_opt::<i32>() else {
        return Ok(());
    };
    let n = n as usize;
    // A value of at most n bytes has at most n characters.
    if strings.value_data().len() <= n {
        return Ok(());
    }
    let long = strings
        .iter()
        .flatten()
        .any(|v| v.len() > n && v.chars().count() > n);
    match long {
        true => Err(CoordinatorError::ValueTooLong(n as u32)),
        false => Ok(()),
    }
}
