//! The node server: `slicedb node`. Serves the tonic `Node` service (map
//! install, DDL, writes, commit/abort, status) and Arrow Flight `do_get` for
//! scans, on one port.
//!
//! It owns the node's view of the distribution map (epoch + the slices this
//! node answers for) and checks every command against it: a stale epoch is
//! refused with a typed error, and a slice the map does not give this node is
//! never served. It must never decide placement itself; the coordinator does.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions};
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use futures::Stream;
use parking_lot::{Mutex, RwLock};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, instrument, warn};

use crate::predicate::Predicate;
use crate::proto::{self, pb};
use crate::store::{DiskStore, ScanSpec, SegmentKind};
use crate::{DiskId, EngineError, NodeId, Result, SliceId, TableId, Xid};

/// What the installed map says this node holds.
#[derive(Debug, Default, Clone)]
struct NodeMap {
    epoch: u64,
    /// (slice, segment) -> disk holding that copy.
    slices: HashMap<(SliceId, SegmentKind), DiskId>,
}

struct NodeState {
    node: NodeId,
    disks: Vec<Arc<DiskStore>>,
    map: RwLock<Option<NodeMap>>,
    /// xid -> disks holding its pending blocks.
    pending: Mutex<HashMap<Xid, HashSet<DiskId>>>,
}

/// A running node's shared state; cheap to clone.
#[derive(Clone)]
pub struct NodeServer {
    state: Arc<NodeState>,
}

impl NodeServer {
    /// A node serving the given disks (index = disk id).
    pub fn new(node: NodeId, disks: Vec<Arc<DiskStore>>) -> Self {
        NodeServer {
            state: Arc::new(NodeState {
                node,
                disks,
                map: RwLock::new(None),
                pending: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Serve gRPC + Flight on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let addr = listener
            .local_addr()
            .map_err(|e| EngineError::io("listener", e))?;
        info!(node = self.state.node, %addr, "node serving");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .add_service(
                pb::node_server::NodeServer::new(self.clone())
                    .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(proto::MAX_MESSAGE_BYTES),
            )
            .add_service(
                FlightServiceServer::new(self)
                    .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(proto::MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| EngineError::Internal(format!("node server on {addr}: {e}")))
    }

    /// Bind `addr` and serve; returns the bound address and the server task.
    pub async fn spawn(
        self,
        addr: SocketAddr,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(SocketAddr, tokio::task::JoinHandle<Result<()>>)> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| EngineError::io(addr.to_string(), e))?;
        let bound = listener
            .local_addr()
            .map_err(|e| EngineError::io(addr.to_string(), e))?;
        Ok((bound, tokio::spawn(self.serve(listener, shutdown))))
    }

    fn disk(&self, id: DiskId) -> Result<&Arc<DiskStore>> {
        self.state
            .disks
            .get(id as usize)
            .ok_or_else(|| EngineError::InvalidRequest(format!("node has no disk {id}")))
    }

    /// Check the epoch of a command against the installed map.
    fn check_epoch(&self, theirs: u64) -> Result<NodeMap> {
        let map = self.state.map.read();
        let Some(map) = map.as_ref() else {
            return Err(EngineError::StaleEpoch { ours: 0, theirs });
        };
        if theirs != map.epoch {
            return Err(EngineError::StaleEpoch {
                ours: map.epoch,
                theirs,
            });
        }
        Ok(map.clone())
    }

    fn owned_disk(&self, map: &NodeMap, slice: SliceId, segment: SegmentKind) -> Result<DiskId> {
        map.slices
            .get(&(slice, segment))
            .copied()
            .ok_or_else(|| EngineError::SliceNotOwned {
                node: self.state.node,
                slice,
                segment: segment.as_str().to_string(),
                epoch: map.epoch,
            })
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| EngineError::Internal(format!("blocking task failed: {e}")))?
    }
}

fn status(e: EngineError) -> Status {
    proto::to_status(&e)
}

#[tonic::async_trait]
impl pb::node_server::Node for NodeServer {
    #[instrument(skip_all, fields(node = self.state.node, epoch = request.get_ref().epoch))]
    async fn install_map(
        &self,
        request: Request<pb::InstallMapRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        if req.node != self.state.node {
            return Err(status(EngineError::InvalidRequest(format!(
                "map for node {} sent to node {}",
                req.node, self.state.node
            ))));
        }
        let mut slices = HashMap::new();
        for a in &req.slices {
            self.disk(a.disk).map_err(status)?;
            let seg = proto::segment_from_i32(a.segment).map_err(status)?;
            slices.insert((a.slice, seg), a.disk);
        }
        let mut map = self.state.map.write();
        if let Some(cur) = map.as_ref() {
            if req.epoch < cur.epoch {
                return Err(status(EngineError::StaleEpoch {
                    ours: cur.epoch,
                    theirs: req.epoch,
                }));
            }
        }
        info!(slices = slices.len(), "installed map");
        *map = Some(NodeMap {
            epoch: req.epoch,
            slices,
        });
        Ok(Response::new(pb::Ack {}))
    }

    async fn create_table(
        &self,
        request: Request<pb::CreateTableRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        self.check_epoch(req.epoch).map_err(status)?;
        let schema = proto::schema_from_bytes(&req.schema).map_err(status)?;
        let disks = self.state.disks.clone();
        Self::blocking(move || {
            for d in &disks {
                d.create_table(req.table, schema.clone())?;
            }
            Ok(())
        })
        .await
        .map_err(status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn drop_table(
        &self,
        request: Request<pb::DropTableRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        self.check_epoch(req.epoch).map_err(status)?;
        let disks = self.state.disks.clone();
        Self::blocking(move || {
            for d in &disks {
                d.drop_table(req.table)?;
            }
            Ok(())
        })
        .await
        .map_err(status)?;
        Ok(Response::new(pb::Ack {}))
    }

    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid, slice = request.get_ref().slice))]
    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let req = request.into_inner();
        let map = self.check_epoch(req.epoch).map_err(status)?;
        if req.xid == 0 {
            return Err(status(EngineError::InvalidRequest("xid 0".into())));
        }
        let segment = proto::segment_from_i32(req.segment).map_err(status)?;
        let disk_id = self.owned_disk(&map, req.slice, segment).map_err(status)?;
        let disk = self.disk(disk_id).map_err(status)?.clone();
        self.state
            .pending
            .lock()
            .entry(req.xid)
            .or_default()
            .insert(disk_id);
        let rows = Self::blocking(move || {
            let (_, batches) = proto::ipc_to_batches(&req.batches)?;
            let mut rows = 0;
            for b in &batches {
                rows += disk.append(segment, req.table, req.slice, req.xid, b)?;
            }
            Ok(rows)
        })
        .await
        .map_err(status)?;
        Ok(Response::new(pb::WriteResponse { rows }))
    }

    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid))]
    async fn commit(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        self.check_epoch(req.epoch).map_err(status)?;
        let disks: Vec<Arc<DiskStore>> = {
            let pending = self.state.pending.lock();
            let ids = pending.get(&req.xid).cloned().unwrap_or_default();
            ids.iter()
                .filter_map(|id| self.state.disks.get(*id as usize).cloned())
                .collect()
        };
        let xid = req.xid;
        Self::blocking(move || {
            for d in &disks {
                d.commit(xid)?;
            }
            Ok(())
        })
        .await
        .map_err(status)?;
        self.state.pending.lock().remove(&xid);
        Ok(Response::new(pb::Ack {}))
    }

    async fn abort(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        // Abort is allowed at any epoch: discarding never serves stale data.
        let ids = self
            .state
            .pending
            .lock()
            .remove(&req.xid)
            .unwrap_or_default();
        for id in ids {
            if let Some(d) = self.state.disks.get(id as usize) {
                d.abort(req.xid).map_err(status)?;
            }
        }
        Ok(Response::new(pb::Ack {}))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let epoch = self.state.map.read().as_ref().map_or(0, |m| m.epoch);
        let mut out = pb::StatusResponse {
            node: self.state.node,
            epoch,
            ..Default::default()
        };
        for (i, d) in self.state.disks.iter().enumerate() {
            let disk = i as DiskId;
            let report = d.report();
            out.disks.push(pb::DiskStatus {
                disk,
                path: d.path().display().to_string(),
                segments: report
                    .segments
                    .iter()
                    .map(|s| pb::SegmentStatus {
                        segment: pb::Segment::from(s.kind) as i32,
                        offset: s.offset,
                        bytes: s.length,
                        used: s.used,
                    })
                    .collect(),
            });
            for s in d.slice_stats() {
                out.slices.push(pb::SliceStatus {
                    table: s.table,
                    slice: s.slice,
                    segment: pb::Segment::from(s.segment) as i32,
                    disk,
                    rows: s.rows,
                    bytes: s.bytes,
                    blocks: s.blocks,
                });
            }
        }
        Ok(Response::new(out))
    }
}

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

fn run_scan(
    table: TableId,
    parts: ScanParts,
    projection: Option<Vec<usize>>,
    predicate: Option<Predicate>,
    include_hidden: bool,
    tx: mpsc::Sender<Result<FlightData, Status>>,
) -> Result<()> {
    let mut enc = TaggedEncoder::new();
    for (slice, segment, disk) in parts {
        let spec = ScanSpec {
            segment,
            table,
            slice,
            projection: projection.clone(),
            predicate: predicate.clone(),
            include_hidden,
        };
        let mut scan = disk.scan(&spec)?;
        let mut tag = pb::StreamTag {
            slice,
            segment: pb::Segment::from(segment) as i32,
            ..Default::default()
        };
        let mut rows = 0u64;
        let schema = scan.schema();
        for batch in scan.by_ref() {
            let batch = batch?;
            rows += batch.num_rows() as u64;
            for fd in enc.batch(&batch, &tag)? {
                if tx.blocking_send(Ok(fd)).is_err() {
                    return Ok(()); // the client went away
                }
            }
        }
        let stats = scan.stats();
        tag.done = true;
        tag.rows = rows;
        tag.blocks_total = stats.blocks_total;
        tag.blocks_pruned = stats.blocks_pruned;
        let end = RecordBatch::new_empty(schema);
        for fd in enc.batch(&end, &tag)? {
            if tx.blocking_send(Ok(fd)).is_err() {
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
        let (schema, parts) = self.plan_scan(&req).map_err(status)?;
        let predicate = if req.filters.is_empty() {
            None
        } else {
            let filters = req
                .filters
                .iter()
                .map(Predicate::try_from)
                .collect::<Result<Vec<_>>>()
                .map_err(status)?;
            Some(Predicate::And(filters))
        };
        let projection = if req.all_columns {
            None
        } else {
            Some(req.projection.iter().map(|&i| i as usize).collect())
        };
        let (tx, rx) = mpsc::channel(16);
        let first = TaggedEncoder::new().schema(&schema);
        tx.send(Ok(first))
            .await
            .map_err(|_| Status::internal("scan channel closed"))?;
        let table = req.table;
        let include_hidden = req.include_hidden;
        let node = self.state.node;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = run_scan(
                table,
                parts,
                projection,
                predicate,
                include_hidden,
                tx.clone(),
            ) {
                warn!(node, table, error = %e, "scan failed");
                let _ = tx.blocking_send(Err(status(e)));
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DiskIds, InitOptions, StoreOptions};
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
    use arrow_flight::flight_service_client::FlightServiceClient;
    use futures::{StreamExt, TryStreamExt};

    async fn start() -> (
        tempfile::TempDir,
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let ids = DiskIds {
            cluster_id: [7; 16],
            node_id: 3,
            disk_id: 0,
        };
        let store = DiskStore::create(
            &dir.path().join("d.img"),
            ids,
            InitOptions::new(64 << 20),
            StoreOptions::default(),
        )
        .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (addr, _task) = NodeServer::new(3, vec![Arc::new(store)])
            .spawn("127.0.0.1:0".parse().unwrap(), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        (dir, addr, tx)
    }

    fn kind(s: &Status) -> String {
        s.metadata()
            .get(proto::ERROR_KIND_KEY)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn stale_epochs_and_foreign_slices_are_refused_and_scans_are_tagged() {
        let (_dir, addr, _stop) = start().await;
        let url = format!("http://{addr}");
        let mut node = pb::node_client::NodeClient::connect(url.clone())
            .await
            .unwrap();

        // No map yet: everything is refused as stale.
        let e = node
            .create_table(pb::CreateTableRequest {
                epoch: 1,
                table: 1,
                schema: vec![],
                mirrored: true,
            })
            .await
            .unwrap_err();
        assert_eq!(kind(&e), "stale_epoch");

        let slice = |slice| pb::SliceAssignment {
            slice,
            disk: 0,
            segment: pb::Segment::Primary as i32,
        };
        node.install_map(pb::InstallMapRequest {
            epoch: 5,
            node: 3,
            slices: vec![slice(1), slice(2)],
        })
        .await
        .unwrap();
        // A lower epoch cannot replace the map.
        let e = node
            .install_map(pb::InstallMapRequest {
                epoch: 4,
                node: 3,
                slices: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);

        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)]));
        let schema_bytes = proto::schema_to_bytes(&schema).unwrap();
        node.create_table(pb::CreateTableRequest {
            epoch: 5,
            table: 1,
            schema: schema_bytes,
            mirrored: true,
        })
        .await
        .unwrap();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
        )
        .unwrap();
        let write = |epoch, slice| pb::WriteRequest {
            epoch,
            xid: 9,
            table: 1,
            slice,
            segment: pb::Segment::Primary as i32,
            batches: proto::batches_to_ipc(&schema, std::slice::from_ref(&batch)).unwrap(),
        };
        let e = node.write(write(4, 1)).await.unwrap_err();
        assert_eq!(kind(&e), "stale_epoch", "{e}");
        let e = node.write(write(5, 7)).await.unwrap_err();
        assert_eq!(kind(&e), "slice_not_owned", "{e}");
        assert_eq!(node.write(write(5, 1)).await.unwrap().into_inner().rows, 3);
        node.commit(pb::TxnRequest { epoch: 5, xid: 9 })
            .await
            .unwrap();

        // Scan both slices: slice 1 has 3 rows, slice 2 none; both end with a done tag.
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut flight = FlightServiceClient::new(channel);
        let req = pb::ScanRequest {
            epoch: 5,
            table: 1,
            slices: [1, 2]
                .iter()
                .map(|&s| pb::SliceScan {
                    slice: s,
                    segment: pb::Segment::Primary as i32,
                })
                .collect(),
            all_columns: true,
            ..Default::default()
        };
        let stream = flight
            .do_get(Ticket::new(req.encode_to_vec()))
            .await
            .unwrap()
            .into_inner()
            .map_err(|s| arrow_flight::error::FlightError::Tonic(Box::new(s)));
        let mut decoder = FlightDataDecoder::new(stream);
        let mut done = vec![];
        let mut rows = 0;
        while let Some(m) = decoder.next().await {
            let m = m.unwrap();
            if let DecodedPayload::RecordBatch(b) = m.payload {
                let tag = pb::StreamTag::decode(m.inner.app_metadata.as_ref()).unwrap();
                if tag.done {
                    done.push((tag.slice, tag.rows));
                } else {
                    assert_eq!(tag.slice, 1);
                    rows += b.num_rows();
                }
            }
        }
        assert_eq!(rows, 3);
        assert_eq!(done, vec![(1, 3), (2, 0)]);

        // A stale scan is refused too.
        let mut stale = req.clone();
        stale.epoch = 4;
        let e = flight
            .do_get(Ticket::new(stale.encode_to_vec()))
            .await
            .unwrap_err();
        assert_eq!(kind(&e), "stale_epoch");
    }
}
