//! The Arrow Flight scan service: `do_get` answers a `ScanRequest` ticket
//! with every requested slice's rows (or a query fragment's output over
//! them), each batch tagged with its (slice, segment) and each slice closed
//! by a `done` tag with its totals.
//!
//! It owns the scan's checks (epoch, slices owned, each asked once) and the
//! encoding of tagged Flight messages. It must never write: scans only read
//! what the snapshot sees. A disk fault met while scanning is noted on the
//! node so that the next `Status` reports the disk failed.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use futures::Stream;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::warn;

use super::{disk_fault, status, NodeServer};
use crate::fragment_runner::{FragmentRunner, ScanBatches};
use crate::predicate::Predicate;
use crate::proto::{self, pb};
use crate::store::{BlockScan, DiskStore, ScanSpec, ScanStats, SegmentKind, Snapshot};
use crate::{DiskId, EngineError, Result, SliceId, TableId};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Encodes batches as Flight messages, each tagged with its (slice, segment).
struct TaggedEncoder {
    gen: IpcDataGenerator,
    tracker: DictionaryTracker,
    options: IpcWriteOptions,
    ctx: IpcWriteContext,
}

impl TaggedEncoder {
    fn new() -> Self {
        TaggedEncoder {
            gen: IpcDataGenerator::default(),
            tracker: DictionaryTracker::new(false),
            options: IpcWriteOptions::default(),
            ctx: IpcWriteContext::default(),
        }
    }

    fn schema(&self, schema: &SchemaRef) -> FlightData {
        FlightData::from(SchemaAsIpc::new(schema, &self.options))
    }

    fn batch(&mut self, batch: &RecordBatch, tag: &pb::StreamTag) -> Result<Vec<FlightData>> {
        let (dicts, data) =
            self.gen
                .encode(batch, &mut self.tracker, &self.options, &mut self.ctx)?;
        let mut out: Vec<FlightData> = dicts.into_iter().map(FlightData::from).collect();
        out.push(FlightData::from(data).with_app_metadata(tag.encode_to_vec()));
        Ok(out)
    }
}

/// What one scan reads: each requested slice copy and the disk holding it.
type ScanParts = Vec<(SliceId, SegmentKind, Arc<DiskStore>)>;

impl NodeServer {
    /// Validate a scan and resolve every requested slice to its disk.
    fn plan_scan(&self, req: &pb::ScanRequest) -> Result<(SchemaRef, ScanParts)> {
        let map = self.check_epoch(req.epoch)?;
        let mut seen = HashSet::new();
        let mut parts = Vec::with_capacity(req.slices.len());
        for s in &req.slices {
            let seg = proto::segment_from_i32(s.segment)?;
            if !seen.insert((s.slice, seg)) {
                return Err(EngineError::InvalidRequest(format!(
                    "slice {} requested twice",
                    s.slice
                )));
            }
            let disk = self.owned_disk(&map, s.slice, seg)?;
            parts.push((s.slice, seg, self.disk(disk)?.clone()));
        }
        let disk0 = self
            .state
            .disks
            .first()
            .ok_or_else(|| EngineError::Internal("node has no disks".into()))?;
        let table_schema = disk0.table_schema(req.table)?;
        let mut fields: Vec<_> = if req.all_columns {
            table_schema.fields().iter().cloned().collect()
        } else {
            req.projection
                .iter()
                .map(|&i| {
                    table_schema
                        .fields()
                        .get(i as usize)
                        .cloned()
                        .ok_or_else(|| {
                            EngineError::InvalidRequest(format!(
                                "no column {i} in table {}",
                                req.table
                            ))
                        })
                })
                .collect::<Result<_>>()?
        };
        if req.include_hidden {
            use arrow::datatypes::{DataType, Field};
            for name in [
                crate::HIDDEN_ROWID,
                crate::HIDDEN_CREATEXID,
                crate::HIDDEN_DELETEXID,
            ] {
                fields.push(Arc::new(Field::new(name, DataType::Int64, false)));
            }
        }
        Ok((Arc::new(arrow::datatypes::Schema::new(fields)), parts))
    }
}

/// One table's read of each slice: which columns, which rows.
struct TableRead {
    table: TableId,
    projection: Option<Vec<usize>>,
    predicate: Option<Predicate>,
}

impl TableRead {
    fn from_request(
        table: TableId,
        all_columns: bool,
        projection: &[u32],
        filters: &[pb::Predicate],
    ) -> Result<TableRead> {
        let predicate = if filters.is_empty() {
            None
        } else {
            let filters = filters
                .iter()
                .map(Predicate::try_from)
                .collect::<Result<Vec<_>>>()?;
            Some(Predicate::And(filters))
        };
        let projection = (!all_columns).then(|| projection.iter().map(|&i| i as usize).collect());
        Ok(TableRead {
            table,
            projection,
            predicate,
        })
    }
}

/// What a scan request asks of each of its slices.
struct ScanJob {
    /// The request's table; with a fragment, then its other `inputs`.
    reads: Vec<TableRead>,
    /// With a fragment: the relations sent whole, read after `reads`.
    broadcast: Vec<Vec<RecordBatch>>,
    parts: ScanParts,
    include_hidden: bool,
    snapshot: Snapshot,
}

impl ScanJob {
    fn spec(&self, read: &TableRead, slice: SliceId, segment: SegmentKind) -> ScanSpec {
        ScanSpec {
            segment,
            table: read.table,
            slice,
            projection: read.projection.clone(),
            predicate: read.predicate.clone(),
            include_hidden: self.include_hidden,
            snapshot: self.snapshot.clone(),
        }
    }
}

/// An error of a scan, with the disk it came from (None: not a disk's).
type ScanFailure = (Option<DiskId>, EngineError);

/// The messages that end a slice's answer: an empty batch tagged `done`
/// with the slice's totals.
fn done_messages(
    enc: &mut TaggedEncoder,
    schema: SchemaRef,
    mut tag: pb::StreamTag,
    rows: u64,
    stats: ScanStats,
) -> std::result::Result<Vec<FlightData>, ScanFailure> {
    tag.done = true;
    tag.rows = rows;
    tag.blocks_total = stats.blocks_total;
    tag.blocks_pruned = stats.blocks_pruned;
    enc.batch(&RecordBatch::new_empty(schema), &tag)
        .map_err(|e| (None, e))
}

/// Run a scan on a blocking thread, slice after slice.
fn run_scan(
    job: ScanJob,
    tx: mpsc::Sender<Result<FlightData, Status>>,
) -> std::result::Result<(), ScanFailure> {
    let mut enc = TaggedEncoder::new();
    // Every slice's scan is opened before the first is read: each holds its
    // blocks and counts as a reader, so a DROP TABLE meanwhile neither
    // fails the slices still to come nor frees the space they read.
    let mut scans = Vec::with_capacity(job.parts.len());
    for (slice, segment, disk) in &job.parts {
        let disk_id = Some(disk.ids().disk_id);
        let scan = disk
            .scan(&job.spec(&job.reads[0], *slice, *segment))
            .map_err(|e| (disk_id, e))?;
        scans.push((*slice, *segment, disk_id, scan));
    }
    for (slice, segment, disk_id, mut scan) in scans {
        let tag = pb::StreamTag {
            slice,
            segment: pb::Segment::from(segment) as i32,
            ..Default::default()
        };
        let mut rows = 0u64;
        let schema = scan.schema();
        for batch in scan.by_ref() {
            let batch = batch.map_err(|e| (disk_id, e))?;
            rows += batch.num_rows() as u64;
            for fd in enc.batch(&batch, &tag).map_err(|e| (None, e))? {
                if tx.blocking_send(Ok(fd)).is_err() {
                    return Ok(()); // the client went away
                }
            }
        }
        for fd in done_messages(&mut enc, schema, tag, rows, scan.stats())? {
            if tx.blocking_send(Ok(fd)).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A slice's scan handed to a fragment: its counters are read back when the
/// fragment has let go of it.
struct CountedScan {
    scan: BlockScan,
    stats: Arc<Mutex<ScanStats>>,
}

impl Iterator for CountedScan {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        self.scan.next()
    }
}

impl Drop for CountedScan {
    fn drop(&mut self) {
        *self.stats.lock() = self.scan.stats();
    }
}

/// Run a scan's fragment over the slices asked for (one plan for all of
/// them, each slice's answer a stream of its own, sent in turn); `schema`
/// is the fragment's output schema.
async fn run_fragment(
    runner: Arc<dyn FragmentRunner>,
    fragment: Vec<u8>,
    schema: SchemaRef,
    job: ScanJob,
    tx: mpsc::Sender<Result<FlightData, Status>>,
) -> std::result::Result<(), ScanFailure> {
    use futures::StreamExt;
    if job.parts.is_empty() {
        return Ok(());
    }
    let mut enc = TaggedEncoder::new();
    let mut inputs: Vec<Vec<ScanBatches>> = job
        .reads
        .iter()
        .map(|_| Vec::with_capacity(job.parts.len()))
        .collect();
    // Per slice, the counters of its scans.
    let mut counters: Vec<Vec<Arc<Mutex<ScanStats>>>> = Vec::with_capacity(job.parts.len());
    for (slice, segment, disk) in &job.parts {
        let disk_id = disk.ids().disk_id;
        let blame = |e: EngineError| (disk_fault(&e).then_some(disk_id), e);
        let mut mine = Vec::with_capacity(job.reads.len());
        for (leaf, read) in job.reads.iter().enumerate() {
            let scan = disk
                .scan(&job.spec(read, *slice, *segment))
                .map_err(blame)?;
            let stats = Arc::new(Mutex::new(ScanStats::default()));
            mine.push(stats.clone());
            inputs[leaf].push(Box::new(CountedScan { scan, stats }));
        }
        counters.push(mine);
    }
    for rel in &job.broadcast {
        inputs.push(vec![Box::new(rel.clone().into_iter().map(Ok))]);
    }
    let outs = runner
        .run(&fragment, job.parts.len(), inputs)
        .map_err(|e| (None, e))?;
    for (((slice, segment, disk), mut out), counters) in job.parts.iter().zip(outs).zip(counters) {
        let disk_id = disk.ids().disk_id;
        let blame = |e: EngineError| (disk_fault(&e).then_some(disk_id), e);
        let tag = pb::StreamTag {
            slice: *slice,
            segment: pb::Segment::from(*segment) as i32,
            ..Default::default()
        };
        let mut rows = 0u64;
        while let Some(batch) = out.next().await {
            let batch = batch.map_err(blame)?;
            if batch.num_rows() == 0 {
                continue;
            }
            rows += batch.num_rows() as u64;
            for fd in enc.batch(&batch, &tag).map_err(|e| (None, e))? {
                if tx.send(Ok(fd)).await.is_err() {
                    return Ok(()); // the client went away
                }
            }
        }
        drop(out);
        let mut stats = ScanStats::default();
        for c in &counters {
            let c = *c.lock();
            stats.blocks_total += c.blocks_total;
            stats.blocks_pruned += c.blocks_pruned;
        }
        for fd in done_messages(&mut enc, schema.clone(), tag, rows, stats)? {
            if tx.send(Ok(fd)).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl FlightService for NodeServer {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let req = pb::ScanRequest::decode(request.into_inner().ticket)
            .map_err(|e| status(EngineError::InvalidRequest(format!("bad scan ticket: {e}"))))?;
        let (scan_schema, parts) = self.plan_scan(&req).map_err(status)?;
        let runner = if req.fragment.is_empty() {
            None
        } else if req.include_hidden {
            return Err(status(EngineError::InvalidRequest(
                "a scan with a fragment cannot return hidden columns".into(),
            )));
        } else {
            let runner = self.state.fragments.read().clone().ok_or_else(|| {
                status(EngineError::InvalidRequest(
                    "this node runs no query fragments".into(),
                ))
            })?;
            Some(runner)
        };
        let schema = match &runner {
            Some(r) => r.schema(&req.fragment).map_err(status)?,
            None => scan_schema,
        };
        if runner.is_none() && !(req.inputs.is_empty() && req.broadcast.is_empty()) {
            return Err(status(EngineError::InvalidRequest(
                "a scan without a fragment reads one table".into(),
            )));
        }
        let broadcast = req
            .broadcast
            .iter()
            .map(|b| proto::ipc_to_batches(b).map(|(_, batches)| batches))
            .collect::<Result<Vec<_>>>()
            .map_err(status)?;
        let mut reads = vec![TableRead::from_request(
            req.table,
            req.all_columns,
            &req.projection,
            &req.filters,
        )
        .map_err(status)?];
        for input in &req.inputs {
            reads.push(
                TableRead::from_request(
                    input.table,
                    input.all_columns,
                    &input.projection,
                    &input.filters,
                )
                .map_err(status)?,
            );
        }
        let (tx, rx) = mpsc::channel(16);
        let first = TaggedEncoder::new().schema(&schema);
        tx.send(Ok(first))
            .await
            .map_err(|_| Status::internal("scan channel closed"))?;
        let table = req.table;
        let job = ScanJob {
            reads,
            broadcast,
            parts,
            include_hidden: req.include_hidden,
            snapshot: req
                .snapshot
                .as_ref()
                .map(Snapshot::from)
                .unwrap_or_default(),
        };
        // Foreground work until the scan's last batch is sent.
        let fg = self.state.activity.begin();
        let node = self.state.node;
        let me = self.clone();
        let fail = move |(disk, e): ScanFailure| {
            warn!(node, table, error = %e, "scan failed");
            if let Some(d) = disk {
                me.note_disk_fault(d, &e);
            }
            status(e)
        };
        match runner {
            Some(runner) => {
                tokio::spawn(async move {
                    let _fg = fg;
                    let res = run_fragment(runner, req.fragment, schema, job, tx.clone()).await;
                    if let Err(f) = res {
                        let _ = tx.send(Err(fail(f))).await;
                    }
                });
            }
            None => {
                tokio::task::spawn_blocking(move || {
                    let _fg = fg;
                    if let Err(f) = run_scan(job, tx.clone()) {
                        let _ = tx.blocking_send(Err(fail(f)));
                    }
                });
            }
        }
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("handshake: slicedb nodes need none"))
    }
    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented(
            "list_flights: use the coordinator's catalog",
        ))
    }
    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented(
            "get_flight_info: send a ScanRequest ticket to do_get",
        ))
    }
    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("poll_flight_info"))
    }
    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented(
            "get_schema: the coordinator's catalog owns schemas",
        ))
    }
    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented(
            "do_put: writes use the Node.Write rpc",
        ))
    }
    async fn do_action(
        &self,
        _request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("do_action"))
    }
    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Err(Status::unimplemented("list_actions"))
    }
    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("do_exchange"))
    }
}
