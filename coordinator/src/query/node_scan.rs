//! Asking the nodes for a table's slices: who answers for each slice under
//! the current map ([`plan_parts`]), one node's streamed answer checked
//! slice by slice against its `done` tags ([`scan_node`]), and the retry
//! after a failover ([`scan_with_failover`]): a node that errs or is
//! declared failed mid-answer is reported to the system manager, and the
//! slices it had not finished are asked again from where the new map
//! serves them. Nothing is passed on twice, nothing is lost, and a partial
//! answer is never returned. A slice's rows are held until its `done` tag
//! (then they are final): in memory up to [`hold_bytes`] per node answer,
//! past that in a spill file of the query's disk manager, so a slice larger
//! than memory is read too.
//!
//! It never changes the map: it reports and waits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::Ticket;
use datafusion::error::Result as DfResult;
use datafusion::physical_plan::metrics::Count;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use slicedb_engine::proto::{pb, ErrorKind};
use slicedb_engine::{NodeId, SliceId};
use tokio::sync::mpsc;

use crate::catalog::TableMeta;
use crate::cluster::Cluster;
use crate::nodes::NodeClient;
use crate::CoordinatorError;

/// Bytes of slice answers one node's answer holds in memory before it
/// spills the rest (until their `done` tags): 64 MiB, or
/// `SLICEDB_SCAN_HOLD_BYTES` (read once; for tuning and tests).
fn hold_bytes() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("SLICEDB_SCAN_HOLD_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64 << 20)
    })
}

/// One slice's rows until its `done` tag: in memory, then (past the hold
/// budget) in a spill file.
#[derive(Default)]
struct Held {
    batches: Vec<RecordBatch>,
    spill: Option<Spill>,
}

struct Spill {
    file: Arc<dyn datafusion::execution::spill_file::SpillFile>,
    writer:
        arrow::ipc::writer::StreamWriter<Box<dyn datafusion::execution::spill_file::SpillWriter>>,
}

impl Held {
    /// Write `batch` to this slice's spill file (created on first use).
    fn spill(
        &mut self,
        disk: &Arc<datafusion::execution::disk_manager::DiskManager>,
        batch: &RecordBatch,
    ) -> DfResult<()> {
        if self.spill.is_none() {
            let file = disk.create_tmp_file("slice answer held until its done tag")?;
            let writer =
                arrow::ipc::writer::StreamWriter::try_new(file.open_writer()?, &batch.schema())?;
            self.spill = Some(Spill { file, writer });
        }
        if let Some(s) = self.spill.as_mut() {
            s.writer.write(batch)?;
        }
        Ok(())
    }

    /// Every batch held, in memory then read back from the spill file.
    fn release(self) -> DfResult<Box<dyn Iterator<Item = DfResult<RecordBatch>> + Send>> {
        let mem = self.batches.into_iter().map(Ok);
        let Some(mut s) = self.spill else {
            return Ok(Box::new(mem));
        };
        s.writer.finish()?;
        s.writer.get_mut().finish()?;
        let path = s.file.path().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("a spill file with no local path".into())
        })?;
        let reader = arrow::ipc::reader::StreamReader::try_new(
            std::io::BufReader::new(std::fs::File::open(path)?),
            None,
        )?;
        // The file stays until the reader is done with it.
        let keep = s.file;
        let read = reader.map(move |b| {
            let _ = &keep;
            b.map_err(Into::into)
        });
        Ok(Box::new(mem.chain(read)))
    }
}

/// Who answers for `slices` under `map`: each slice exactly once, from where
/// it is served now (its primary, or after a failover its mirror's node
/// from the mirror segment, so a survivor may answer twice, once per
/// segment). A slice that cannot be served fails the plan, naming it.
pub(super) fn plan_parts(
    cluster: &Arc<Cluster>,
    meta: &TableMeta,
    map: &crate::map::DistMap,
    slices: &[SliceId],
    base: &pb::ScanRequest,
) -> DfResult<Vec<ScanPart>> {
    let mut per_node: BTreeMap<NodeId, Vec<pb::SliceScan>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for &slice in slices {
        if !seen.insert(slice) {
            return Err(CoordinatorError::IncompleteScan {
                table: meta.name.clone(),
                reason: format!("slice {slice} planned twice"),
            }
            .into());
        }
        let e =
            map.slices()
                .get(slice as usize)
                .ok_or_else(|| CoordinatorError::IncompleteScan {
                    table: meta.name.clone(),
                    reason: format!("slice {slice} is not in the map"),
                })?;
        let (loc, from_mirror) = e.serving()?;
        let segment = meta.segment_for(slice, from_mirror)?;
        per_node.entry(loc.node).or_default().push(pb::SliceScan {
            slice,
            segment: segment as i32,
        });
    }
    let mut parts = Vec::new();
    for (node, scans) in per_node {
        let mut request = base.clone();
        request.epoch = map.epoch();
        request.slices = scans;
        parts.push(ScanPart {
            node: cluster.node(node)?.clone(),
            slices: request.slices.iter().map(|s| s.slice).collect(),
            request,
        });
    }
    Ok(parts)
}

/// How long a scan waits for a failover before it gives up on a node.
const FAILOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a scan error may be cured by a map change (a node died or was
/// fenced): then the scan waits for the new map and asks again.
fn retryable(e: &CoordinatorError) -> bool {
    match e {
        CoordinatorError::NodeUnreachable { .. } => true,
        CoordinatorError::Node { kind, .. } => {
            matches!(
                kind,
                ErrorKind::StaleEpoch
                    | ErrorKind::SliceNotOwned
                    | ErrorKind::Internal
                    | ErrorKind::Unspecified
                    | ErrorKind::Checksum
                    | ErrorKind::Io
            )
        }
        _ => false,
    }
}

/// A block damaged on both copies: the node names the table by id, the
/// client is told its name too.
fn name_damaged_table(e: CoordinatorError, table: &str) -> CoordinatorError {
    match e {
        CoordinatorError::Node {
            node,
            kind: ErrorKind::Unrepairable,
            message,
        } => CoordinatorError::Node {
            node,
            kind: ErrorKind::Unrepairable,
            message: format!("table \"{table}\": {message}"),
        },
        e => e,
    }
}

#[derive(Clone)]
pub(super) struct ScanPart {
    pub node: NodeClient,
    pub slices: Vec<SliceId>,
    pub request: pb::ScanRequest,
}

/// How a DML scan turns a node's batch (all user columns + hidden) into
/// its output: user columns, `_slice`, `_rowid`, then the projection.
#[derive(Debug, Clone)]
pub(super) struct DmlShape {
    pub nuser: usize,
    pub projection: Option<Vec<usize>>,
}

pub(super) struct ScanCounters {
    pub rows: Count,
    /// Slices whose answer was held partly in a spill file.
    pub spilled: Count,
    pub blocks_total: Count,
    pub blocks_pruned: Count,
    pub slices: Count,
}

/// Scan one part; on a node failure wait for the failover and ask the new
/// owners for the slices not yet finished.
#[allow(clippy::too_many_arguments)]
pub(super) async fn scan_with_failover(
    cluster: &Arc<Cluster>,
    meta: &Arc<TableMeta>,
    base: &pb::ScanRequest,
    part: ScanPart,
    schema: SchemaRef,
    table: &str,
    tx: &mpsc::Sender<DfResult<RecordBatch>>,
    counters: &ScanCounters,
    dml: &Option<DmlShape>,
    disk: &Arc<datafusion::execution::disk_manager::DiskManager>,
    txn: &Option<Arc<crate::txn::Txn>>,
) -> DfResult<()> {
    let all: Vec<SliceId> = part.slices.clone();
    let mut done: BTreeSet<SliceId> = BTreeSet::new();
    let mut parts = vec![part];
    let deadline = tokio::time::Instant::now() + FAILOVER_WAIT;
    loop {
        let mut failure = None;
        for p in &parts {
            let (node, epoch) = (p.node.id, p.request.epoch);
            // A hung node never errors: race its answer against the system
            // manager declaring it failed.
            let res = tokio::select! {
                r = scan_node(p.clone(), schema.clone(), table, tx, counters, dml, disk, &mut done) => r,
                _ = cluster.until_down(node) => Err(CoordinatorError::NodeUnreachable {
                    node,
                    address: p.node.address.clone(),
                    message: "declared failed while answering a scan".into(),
                }),
            };
            if let Err(e) = res {
                if !retryable(&e) {
                    return Err(name_damaged_table(e, table).into());
                }
                failure = Some((node, epoch, e));
                break;
            }
        }
        let Some((node, epoch, err)) = failure else {
            return Ok(());
        };
        cluster.report_unreachable(node);
        // Wait for the system manager to change the map (it probes the node
        // at once), then re-plan what is left. A node still at the previous
        // epoch (the new map is being installed) is simply asked again.
        let behind = matches!(
            &err,
            CoordinatorError::Node {
                kind: ErrorKind::StaleEpoch,
                ..
            }
        );
        let asked = tokio::time::Instant::now();
        loop {
            let map = cluster.map();
            if map.epoch() > epoch
                || (behind && asked.elapsed() >= std::time::Duration::from_millis(50))
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(err.into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        // Reading in a transaction block that wrote to the failed node: its
        // writes move to the nodes now serving those slices first, so the
        // scan sees its own rows there.
        if let Some(t) = txn {
            if cluster.is_down(node) && t.participants().contains(&node) {
                cluster.carry_over(t, node).await?;
            }
        }
        let left: Vec<SliceId> = all.iter().copied().filter(|s| !done.contains(s)).collect();
        tracing::info!(table, node, slices = ?left, "scan retried on the new map after a node failure");
        if left.is_empty() {
            return Ok(());
        }
        parts = plan_parts(cluster, meta, &cluster.map(), &left, base)?;
    }
}

#[allow(clippy::too_many_arguments)]
async fn scan_node(
    part: ScanPart,
    schema: SchemaRef,
    table: &str,
    tx: &mpsc::Sender<DfResult<RecordBatch>>,
    counters: &ScanCounters,
    dml: &Option<DmlShape>,
    disk: &Arc<datafusion::execution::disk_manager::DiskManager>,
    finished: &mut BTreeSet<SliceId>,
) -> Result<(), CoordinatorError> {
    let incomplete = |reason: String| CoordinatorError::IncompleteScan {
        table: table.to_string(),
        reason,
    };
    let node = part.node;
    let mut client = node.flight.clone();
    let ticket = Ticket::new(part.request.encode_to_vec());
    let response = client.do_get(ticket).await.map_err(|s| node.err(s))?;
    let node_for_err = node.clone();
    let flight = response
        .into_inner()
        .map_err(move |s| FlightError::Tonic(Box::new(s)));
    let mut decoder = FlightDataDecoder::new(flight);
    let expected: BTreeSet<SliceId> = part.slices.iter().copied().collect();
    let mut done: BTreeSet<SliceId> = BTreeSet::new();
    let mut rows_per_slice: BTreeMap<SliceId, u64> = BTreeMap::new();
    // A slice's batches, held until its `done` tag: then they are final.
    let mut held: BTreeMap<SliceId, Held> = BTreeMap::new();
    let mut held_bytes = 0usize;
    while let Some(msg) = decoder.next().await {
        let msg = msg.map_err(|e| match e {
            FlightError::Tonic(s) => node_for_err.err(*s),
            other => CoordinatorError::Node {
                node: node_for_err.id,
                kind: ErrorKind::Unspecified,
                message: other.to_string(),
            },
        })?;
        let DecodedPayload::RecordBatch(batch) = msg.payload else {
            continue;
        };
        let tag = pb::StreamTag::decode(msg.inner.app_metadata.as_ref()).map_err(|e| {
            incomplete(format!("node {} sent a batch with a bad tag: {e}", node.id))
        })?;
        if !expected.contains(&tag.slice) {
            return Err(incomplete(format!(
                "node {} answered for slice {}, which it was not asked for",
                node.id, tag.slice
            )));
        }
        if done.contains(&tag.slice) {
            return Err(incomplete(format!(
                "node {} answered slice {} twice",
                node.id, tag.slice
            )));
        }
        if tag.done {
            let got = rows_per_slice.get(&tag.slice).copied().unwrap_or(0);
            if got != tag.rows {
                return Err(incomplete(format!(
                    "node {} slice {}: {} rows arrived, {} announced",
                    node.id, tag.slice, got, tag.rows
                )));
            }
            done.insert(tag.slice);
            counters.slices.add(1);
            counters.blocks_total.add(tag.blocks_total as usize);
            counters.blocks_pruned.add(tag.blocks_pruned as usize);
            let h = held.remove(&tag.slice).unwrap_or_default();
            held_bytes -= h
                .batches
                .iter()
                .map(|b| b.get_array_memory_size())
                .sum::<usize>();
            if h.spill.is_some() {
                counters.spilled.add(1);
            }
            for batch in h.release()? {
                let batch = batch?;
                counters.rows.add(batch.num_rows());
                if tx.send(Ok(batch)).await.is_err() {
                    return Ok(()); // the query stopped reading (LIMIT, cancel)
                }
            }
            finished.insert(tag.slice);
            continue;
        }
        if batch.num_rows() == 0 {
            continue;
        }
        *rows_per_slice.entry(tag.slice).or_default() += batch.num_rows() as u64;
        let columns = match dml {
            None => batch.columns().to_vec(),
            Some(d) => {
                let n = batch.num_rows();
                let mut cols = batch.columns()[..d.nuser].to_vec();
                cols.push(Arc::new(arrow::array::UInt32Array::from_value(
                    tag.slice, n,
                )));
                cols.push(batch.column(d.nuser).clone());
                match &d.projection {
                    Some(p) => p.iter().map(|&i| cols[i].clone()).collect(),
                    None => cols,
                }
            }
        };
        let batch = RecordBatch::try_new_with_options(
            schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?;
        let h = held.entry(tag.slice).or_default();
        let size = batch.get_array_memory_size();
        if held_bytes + size > hold_bytes() {
            h.spill(disk, &batch)?;
        } else {
            held_bytes += size;
            h.batches.push(batch);
        }
    }
    if done != expected {
        let missing: Vec<_> = expected.difference(&done).collect();
        return Err(incomplete(format!(
            "node {} did not answer for slices {missing:?}",
            node.id
        )));
    }
    Ok(())
}
