//! The node server: `slicedb node`. Serves the tonic `Node` service (map
//! install, DDL, writes, commit/abort, status) and Arrow Flight `do_get` for
//! scans, on one port.
//!
//! It owns the node's view of the distribution map (epoch + the slices this
//! node answers for) and checks every command against it: a stale epoch is
//! refused with a typed error, and a slice the map does not give this node is
//! never served. It must never decide placement itself; the coordinator does.
//!
//! Mirroring is node to node: as a primary it forwards the blocks it encoded
//! (and the rowids it deleted) to the slice's mirror node, which stages them
//! in memory, writes them into its mirror segment at prepare and publishes
//! them at commit. A mirror that does not answer within the map's timeout
//! is reported back as degraded for that slice; the node never waits
//! without bound and never decides on its own that a slice is unprotected.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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

use crate::failpoint;
use crate::fragment::{FragmentRunner, ScanBatches};
use crate::predicate::Predicate;
use crate::proto::{self, pb};
use crate::store::{BlockScan, DiskStore, ScanSpec, ScanStats, SegmentKind, Snapshot};
use crate::{DiskId, EngineError, NodeId, Result, SliceId, TableId, Xid};

/// What the installed map says this node holds.
#[derive(Debug, Default, Clone)]
struct NodeMap {
    epoch: u64,
    /// (slice, segment) -> disk holding that copy.
    slices: HashMap<(SliceId, SegmentKind), DiskId>,
    /// Primary slice -> the node its writes are forwarded to.
    mirrors: HashMap<SliceId, NodeId>,
    peers: HashMap<NodeId, String>,
    mirror_timeout: Duration,
}

/// Default bound on one forward to a mirror.
pub const DEFAULT_MIRROR_TIMEOUT: Duration = Duration::from_millis(2000);

/// A transaction as this node's primary side sees it.
#[derive(Default)]
struct NodeTxn {
    disks: HashSet<DiskId>,
    /// Write and Delete requests received (checked at prepare).
    requests: u64,
    /// Mirror node -> forwards sent.
    forwards: HashMap<NodeId, u64>,
    /// Mirror node -> slices forwarded to it.
    mirrored: HashMap<NodeId, HashSet<SliceId>>,
    /// Slices whose mirror did not answer: primary only for this xid.
    degraded: HashSet<SliceId>,
}

enum StagedItem {
    Blocks {
        disk: DiskId,
        table: TableId,
        slice: SliceId,
        blocks: Vec<bytes::Bytes>,
    },
    Delete {
        disk: DiskId,
        table: TableId,
        slice: SliceId,
        rowids: Vec<i64>,
    },
}

/// What a mirror holds for one (xid, primary node) before prepare.
#[derive(Default)]
struct Staged {
    received: u64,
    items: Vec<StagedItem>,
}

type PeerClient = pb::node_client::NodeClient<tonic::transport::Channel>;

struct NodeState {
    node: NodeId,
    disks: Vec<Arc<DiskStore>>,
    map: RwLock<Option<NodeMap>>,
    txns: Mutex<HashMap<Xid, NodeTxn>>,
    staged: Mutex<HashMap<Xid, HashMap<NodeId, Staged>>>,
    peers: Mutex<HashMap<(NodeId, String), PeerClient>>,
    /// Disks that failed (I/O error, checksum mismatch, image gone), with why.
    failed_disks: Mutex<HashMap<DiskId, String>>,
    /// Runs the query fragments scans may carry (None: scans with a
    /// fragment are refused).
    fragments: RwLock<Option<Arc<dyn FragmentRunner>>>,
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
                txns: Mutex::new(HashMap::new()),
                staged: Mutex::new(HashMap::new()),
                peers: Mutex::new(HashMap::new()),
                failed_disks: Mutex::new(HashMap::new()),
                fragments: RwLock::new(None),
            }),
        }
    }

    /// Run the query fragments of scans with `runner` (the query engine the
    /// process links); without one, a scan carrying a fragment is refused.
    pub fn set_fragment_runner(&self, runner: Arc<dyn FragmentRunner>) {
        *self.state.fragments.write() = Some(runner);
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
        let incoming = without_nagle(listener);
        tonic::transport::Server::builder()
            .initial_stream_window_size(Some(proto::RECEIVE_STREAM_WINDOW))
            .initial_connection_window_size(Some(proto::RECEIVE_CONNECTION_WINDOW))
            .max_frame_size(Some(proto::MAX_FRAME_BYTES))
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

    /// The disk holding this node's copy of `slice` in `segment`. Unmirrored
    /// data (the temp segment) lives on the disk of the slice's primary.
    fn owned_disk(&self, map: &NodeMap, slice: SliceId, segment: SegmentKind) -> Result<DiskId> {
        let lookup = match segment {
            SegmentKind::Temp => SegmentKind::Primary,
            s => s,
        };
        map.slices
            .get(&(slice, lookup))
            .copied()
            .ok_or_else(|| EngineError::SliceNotOwned {
                node: self.state.node,
                slice,
                segment: segment.as_str().to_string(),
                epoch: map.epoch,
            })
    }

    /// A client for a peer node (connected lazily, reused).
    fn peer(&self, map: &NodeMap, node: NodeId) -> Result<PeerClient> {
        let addr = map
            .peers
            .get(&node)
            .ok_or_else(|| EngineError::Internal(format!("no address for node {node}")))?;
        let key = (node, addr.clone());
        let mut peers = self.state.peers.lock();
        if let Some(c) = peers.get(&key) {
            return Ok(c.clone());
        }
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| EngineError::Internal(format!("bad peer address {addr}: {e}")))?
            .connect_timeout(map.mirror_timeout)
            .tcp_nodelay(true);
        let c = pb::node_client::NodeClient::new(ep.connect_lazy())
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
        peers.insert(key, c.clone());
        Ok(c)
    }

    /// Send one forward to a mirror, bounded by the map's mirror timeout.
    async fn forward<T, F, Fut>(&self, map: &NodeMap, node: NodeId, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(PeerClient) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let client = self.peer(map, node)?;
        match tokio::time::timeout(map.mirror_timeout, f(client)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(EngineError::Internal(format!(
                "{what} to mirror node {node}: {}",
                s.message()
            ))),
            Err(_) => Err(EngineError::Internal(format!(
                "{what} to mirror node {node}: no answer in {:?}",
                map.mirror_timeout
            ))),
        }
    }

    /// Forward a slice's new blocks or deleted rowids of `xid` to its mirror,
    /// unless the slice is already degraded for this transaction. A failure
    /// marks it degraded (the primary goes on alone); never an error.
    async fn forward_write(
        &self,
        map: &NodeMap,
        xid: Xid,
        table: TableId,
        slice: SliceId,
        blocks: Vec<Vec<u8>>,
        deleted_rowids: Vec<i64>,
    ) {
        let Some(&mirror) = map.mirrors.get(&slice) else {
            return;
        };
        let seq = {
            let mut txns = self.state.txns.lock();
            let t = txns.entry(xid).or_default();
            if t.degraded.contains(&slice) {
                return;
            }
            let n = t.forwards.entry(mirror).or_default();
            *n += 1;
            t.mirrored.entry(mirror).or_default().insert(slice);
            *n
        };
        let req = pb::MirrorWriteRequest {
            epoch: map.epoch,
            xid,
            table,
            slice,
            blocks: blocks.into_iter().map(bytes::Bytes::from).collect(),
            deleted_rowids,
            seq,
            from_node: self.state.node,
        };
        let res = self
            .forward(map, mirror, "forward", |mut c| async move {
                c.mirror_write(req).await
            })
            .await;
        if let Err(e) = res {
            warn!(node = self.state.node, xid, slice, mirror, error = %e, "mirror unreachable: slice degraded for this transaction");
            self.state
                .txns
                .lock()
                .entry(xid)
                .or_default()
                .degraded
                .insert(slice);
        }
    }

    fn degraded(&self, xid: Xid) -> Vec<SliceId> {
        let mut v: Vec<SliceId> = self
            .state
            .txns
            .lock()
            .get(&xid)
            .map(|t| t.degraded.iter().copied().collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Commit or abort `xid` on every disk (a no-op where it has nothing).
    async fn on_all_disks(
        &self,
        xid: Xid,
        f: fn(&DiskStore, Xid) -> Result<()>,
    ) -> Result<(), Status> {
        let disks = self.state.disks.clone();
        Self::blocking(move || {
            for d in &disks {
                f(d, xid)?;
            }
            Ok(())
        })
        .await
        .map_err(status)
    }

    /// The map, without an epoch check (commit/abort finish at any epoch).
    fn current_map(&self) -> NodeMap {
        self.state.map.read().clone().unwrap_or_default()
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

/// Whether an error means the disk itself is bad (not the request).
fn disk_fault(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Io { .. }
            | EngineError::ChecksumMismatch { .. }
            | EngineError::CorruptBlock { .. }
    )
}

impl NodeServer {
    /// Remember that `disk` failed; the next Status reports it.
    fn note_disk_fault(&self, disk: DiskId, e: &EngineError) {
        if disk_fault(e) {
            if let std::collections::hash_map::Entry::Vacant(v) =
                self.state.failed_disks.lock().entry(disk)
            {
                warn!(node = self.state.node, disk, error = %e, "disk failed");
                v.insert(e.to_string());
            }
        }
    }

    /// Why `disk` is failed, if it is (its image file vanished counts).
    fn disk_failure(&self, disk: DiskId) -> Option<String> {
        if let Some(why) = self.state.failed_disks.lock().get(&disk) {
            return Some(why.clone());
        }
        let d = self.state.disks.get(disk as usize)?;
        if !d.path().exists() {
            let why = format!("image {} vanished", d.path().display());
            self.state.failed_disks.lock().insert(disk, why.clone());
            return Some(why);
        }
        None
    }
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
        let mut mirrors = HashMap::new();
        for a in &req.slices {
            self.disk(a.disk).map_err(status)?;
            let seg = proto::segment_from_i32(a.segment).map_err(status)?;
            slices.insert((a.slice, seg), a.disk);
            if seg == SegmentKind::Primary && a.mirror_active {
                mirrors.insert(a.slice, a.mirror_node);
            }
        }
        let peers = req
            .peers
            .iter()
            .map(|p| (p.node, p.address.clone()))
            .collect();
        let mirror_timeout = match req.mirror_timeout_ms {
            0 => DEFAULT_MIRROR_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
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
            mirrors,
            peers,
            mirror_timeout,
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
        let mirror = segment == SegmentKind::Primary
            && map.mirrors.contains_key(&req.slice)
            && !self.degraded(req.xid).contains(&req.slice);
        {
            let mut txns = self.state.txns.lock();
            let t = txns.entry(req.xid).or_default();
            t.disks.insert(disk_id);
            t.requests += 1;
        }
        let (xid, table, slice) = (req.xid, req.table, req.slice);
        let (rows, blocks) = Self::blocking(move || {
            let (_, batches) = proto::ipc_to_batches(&req.batches)?;
            let (mut rows, mut blocks) = (0, Vec::new());
            for b in &batches {
                if mirror {
                    let (n, enc) = disk.append_for_mirror(segment, table, slice, xid, b)?;
                    rows += n;
                    blocks.extend(enc);
                } else {
                    rows += disk.append(segment, table, slice, xid, b)?;
                }
            }
            Ok((rows, blocks))
        })
        .await
        .map_err(|e| {
            self.note_disk_fault(disk_id, &e);
            status(e)
        })?;
        if mirror && !blocks.is_empty() {
            self.forward_write(&map, xid, table, slice, blocks, Vec::new())
                .await;
        }
        Ok(Response::new(pb::WriteResponse {
            rows,
            degraded_slices: self.degraded(xid),
        }))
    }

    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid, slice = request.get_ref().slice))]
    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let req = request.into_inner();
        let map = self.check_epoch(req.epoch).map_err(status)?;
        if req.xid == 0 {
            return Err(status(EngineError::InvalidRequest("xid 0".into())));
        }
        let segment = proto::segment_from_i32(req.segment).map_err(status)?;
        let disk_id = self.owned_disk(&map, req.slice, segment).map_err(status)?;
        let disk = self.disk(disk_id).map_err(status)?.clone();
        let snapshot: Snapshot = req.snapshot.as_ref().map(Snapshot::from).ok_or_else(|| {
            status(EngineError::InvalidRequest(
                "delete without a snapshot".into(),
            ))
        })?;
        {
            let mut txns = self.state.txns.lock();
            let t = txns.entry(req.xid).or_default();
            t.disks.insert(disk_id);
            t.requests += 1;
        }
        let (xid, table, slice) = (req.xid, req.table, req.slice);
        let rowids = req.rowids.clone();
        let rows = Self::blocking(move || {
            disk.delete(segment, table, slice, xid, &rowids, Some(&snapshot))
        })
        .await
        .map_err(status)?;
        if segment == SegmentKind::Primary && rows > 0 {
            self.forward_write(&map, xid, table, slice, Vec::new(), req.rowids)
                .await;
        }
        Ok(Response::new(pb::WriteResponse {
            rows,
            degraded_slices: self.degraded(xid),
        }))
    }

    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid))]
    async fn prepare(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let req = request.into_inner();
        let map = self.check_epoch(req.epoch).map_err(status)?;
        let xid = req.xid;
        let (disks, seen, forwards) = {
            let txns = self.state.txns.lock();
            match txns.get(&xid) {
                Some(t) => (
                    t.disks
                        .iter()
                        .filter_map(|id| self.state.disks.get(*id as usize).cloned())
                        .collect::<Vec<_>>(),
                    t.requests,
                    t.forwards.clone(),
                ),
                None => (Vec::new(), 0, HashMap::new()),
            }
        };
        if seen != req.requests {
            return Err(status(EngineError::InvalidRequest(format!(
                "transaction {xid}: node {} received {seen} of {} write requests (it restarted or lost them); cannot prepare",
                self.state.node, req.requests
            ))));
        }
        failpoint::hit("node.prepare.before");
        Self::blocking(move || {
            for d in &disks {
                d.prepare(xid)?;
            }
            Ok(())
        })
        .await
        .map_err(status)?;
        failpoint::hit("node.prepare.after_local");
        for (mirror, n) in forwards {
            let slices: Vec<SliceId> = {
                let txns = self.state.txns.lock();
                let Some(t) = txns.get(&xid) else { continue };
                let all = t.mirrored.get(&mirror).cloned().unwrap_or_default();
                if all.iter().all(|s| t.degraded.contains(s)) {
                    continue;
                }
                all.into_iter().collect()
            };
            let mreq = pb::MirrorPrepareRequest {
                epoch: map.epoch,
                xid,
                from_node: self.state.node,
                forwards: n,
            };
            let res = self
                .forward(&map, mirror, "prepare", |mut c| async move {
                    c.mirror_prepare(mreq).await
                })
                .await;
            if let Err(e) = res {
                warn!(node = self.state.node, xid, mirror, error = %e, "mirror did not prepare: its slices are degraded");
                let mut txns = self.state.txns.lock();
                let t = txns.entry(xid).or_default();
                t.degraded.extend(slices);
            }
        }
        failpoint::hit("node.prepare.after_mirror");
        Ok(Response::new(pb::TxnResponse {
            degraded_slices: self.degraded(xid),
        }))
    }

    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid))]
    async fn commit(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let req = request.into_inner();
        let xid = req.xid;
        failpoint::hit("node.commit.before");
        self.on_all_disks(xid, DiskStore::commit).await?;
        failpoint::hit("node.commit.after_local");
        let txn = self.state.txns.lock().remove(&xid);
        let map = self.current_map();
        if let Some(t) = txn {
            for (mirror, slices) in &t.mirrored {
                if slices.iter().all(|s| t.degraded.contains(s)) {
                    continue;
                }
                let mreq = pb::TxnRequest {
                    epoch: map.epoch,
                    xid,
                    requests: 0,
                };
                // A mirror that misses this has the transaction prepared on
                // disk; the coordinator's resolver commits it there later.
                if let Err(e) = self
                    .forward(&map, *mirror, "commit", |mut c| async move {
                        c.mirror_commit(mreq).await
                    })
                    .await
                {
                    warn!(node = self.state.node, xid, mirror, error = %e, "mirror commit deferred to the resolver");
                }
            }
        }
        failpoint::hit("node.commit.after_mirror");
        Ok(Response::new(pb::TxnResponse::default()))
    }

    async fn abort(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        let xid = req.xid;
        // Abort is allowed at any epoch: discarding never serves stale data.
        let txn = self.state.txns.lock().remove(&xid);
        self.state.staged.lock().remove(&xid);
        self.on_all_disks(xid, DiskStore::abort).await?;
        if let Some(t) = txn {
            let map = self.current_map();
            for mirror in t.mirrored.keys() {
                let mreq = pb::TxnRequest {
                    epoch: map.epoch,
                    xid,
                    requests: 0,
                };
                if let Err(e) = self
                    .forward(&map, *mirror, "abort", |mut c| async move {
                        c.mirror_abort(mreq).await
                    })
                    .await
                {
                    warn!(node = self.state.node, xid, mirror, error = %e, "mirror abort deferred to the resolver");
                }
            }
        }
        Ok(Response::new(pb::Ack {}))
    }

    async fn mirror_write(
        &self,
        request: Request<pb::MirrorWriteRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        let map = self.check_epoch(req.epoch).map_err(status)?;
        let disk = self
            .owned_disk(&map, req.slice, SegmentKind::Mirror)
            .map_err(status)?;
        let item = if req.blocks.is_empty() {
            StagedItem::Delete {
                disk,
                table: req.table,
                slice: req.slice,
                rowids: req.deleted_rowids,
            }
        } else {
            StagedItem::Blocks {
                disk,
                table: req.table,
                slice: req.slice,
                blocks: req.blocks,
            }
        };
        let mut staged = self.state.staged.lock();
        let st = staged
            .entry(req.xid)
            .or_default()
            .entry(req.from_node)
            .or_default();
        st.received += 1;
        st.items.push(item);
        Ok(Response::new(pb::Ack {}))
    }

    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid))]
    async fn mirror_prepare(
        &self,
        request: Request<pb::MirrorPrepareRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        self.check_epoch(req.epoch).map_err(status)?;
        let xid = req.xid;
        let st = {
            let mut staged = self.state.staged.lock();
            let st = staged
                .get_mut(&xid)
                .and_then(|m| m.remove(&req.from_node))
                .unwrap_or_default();
            if staged.get(&xid).is_some_and(|m| m.is_empty()) {
                staged.remove(&xid);
            }
            st
        };
        if st.received != req.forwards {
            return Err(status(EngineError::InvalidRequest(format!(
                "transaction {xid}: mirror node {} staged {} of {} forwards from node {} (it restarted?)",
                self.state.node, st.received, req.forwards, req.from_node
            ))));
        }
        let disks = self.state.disks.clone();
        Self::blocking(move || {
            let mut per_disk: HashMap<DiskId, Vec<&StagedItem>> = HashMap::new();
            for item in &st.items {
                let disk = match item {
                    StagedItem::Blocks { disk, .. } | StagedItem::Delete { disk, .. } => *disk,
                };
                per_disk.entry(disk).or_default().push(item);
            }
            for (disk, items) in per_disk {
                let d = disks
                    .get(disk as usize)
                    .ok_or_else(|| EngineError::Internal(format!("no disk {disk}")))?;
                // Apply and prepare under the disk's commit lock, so the
                // node's own prepare of the same xid cannot interleave.
                d.prepare_after(xid, |d| {
                    for item in items {
                        match item {
                            StagedItem::Blocks {
                                table,
                                slice,
                                blocks,
                                ..
                            } => {
                                for b in blocks {
                                    d.append_encoded(SegmentKind::Mirror, *table, *slice, xid, b)?;
                                }
                            }
                            StagedItem::Delete {
                                table,
                                slice,
                                rowids,
                                ..
                            } => {
                                d.delete(SegmentKind::Mirror, *table, *slice, xid, rowids, None)?;
                            }
                        }
                    }
                    Ok(())
                })?;
            }
            Ok(())
        })
        .await
        .map_err(status)?;
        failpoint::hit("mirror.prepare.after");
        Ok(Response::new(pb::Ack {}))
    }

    async fn mirror_commit(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let xid = request.into_inner().xid;
        failpoint::hit("mirror.commit.before");
        self.on_all_disks(xid, DiskStore::commit).await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn mirror_abort(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let xid = request.into_inner().xid;
        self.state.staged.lock().remove(&xid);
        self.on_all_disks(xid, DiskStore::abort).await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn groom(
        &self,
        request: Request<pb::GroomRequest>,
    ) -> Result<Response<pb::GroomResponse>, Status> {
        let req = request.into_inner();
        self.check_epoch(req.epoch).map_err(status)?;
        let disks = self.state.disks.clone();
        let out = Self::blocking(move || {
            let mut out = pb::GroomResponse::default();
            for d in &disks {
                let s = d.groom(req.table, req.horizon)?;
                out.blocks_rewritten += s.blocks_rewritten;
                out.rows_removed += s.rows_removed;
            }
            Ok(out)
        })
        .await
        .map_err(status)?;
        Ok(Response::new(out))
    }

    async fn checksum(
        &self,
        request: Request<pb::ChecksumRequest>,
    ) -> Result<Response<pb::ChecksumResponse>, Status> {
        let req = request.into_inner();
        let map = self.check_epoch(req.epoch).map_err(status)?;
        let segment = proto::segment_from_i32(req.segment).map_err(status)?;
        let disk_id = self.owned_disk(&map, req.slice, segment).map_err(status)?;
        let disk = self.disk(disk_id).map_err(status)?.clone();
        let snapshot = req
            .snapshot
            .as_ref()
            .map(Snapshot::from)
            .unwrap_or_default();
        let c = Self::blocking(move || disk.checksum(segment, req.table, req.slice, &snapshot))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ChecksumResponse {
            rows: c.rows,
            checksum: c.checksum,
        }))
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
        let mut txns: std::collections::BTreeMap<Xid, bool> = self
            .state
            .staged
            .lock()
            .keys()
            .map(|x| (*x, false))
            .collect();
        for x in self.state.txns.lock().keys() {
            txns.entry(*x).or_insert(false);
        }
        for d in &self.state.disks {
            for t in d.in_doubt() {
                let e = txns.entry(t.xid).or_insert(false);
                *e |= t.prepared;
            }
        }
        out.txns = txns
            .into_iter()
            .map(|(xid, prepared)| pb::TxnState { xid, prepared })
            .collect();
        for (i, d) in self.state.disks.iter().enumerate() {
            let disk = i as DiskId;
            let report = d.report();
            out.disks.push(pb::DiskStatus {
                disk,
                failed: self.disk_failure(disk).unwrap_or_default(),
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

/// The connections `listener` accepts, each without Nagle's algorithm: a
/// scan's last small message (its `done` tag) would otherwise wait for the
/// peer's delayed ACK, 40 ms on Linux, on every query.
fn without_nagle(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            conn.inspect(|socket| {
                if let Err(e) = socket.set_nodelay(true) {
                    warn!(error = %e, "could not set TCP_NODELAY on a node connection");
                }
            })
        },
    )
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
    for (slice, segment, disk) in &job.parts {
        let disk_id = Some(disk.ids().disk_id);
        let mut scan = disk
            .scan(&job.spec(&job.reads[0], *slice, *segment))
            .map_err(|e| (disk_id, e))?;
        let tag = pb::StreamTag {
            slice: *slice,
            segment: pb::Segment::from(*segment) as i32,
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
                    let res = run_fragment(runner, req.fragment, schema, job, tx.clone()).await;
                    if let Err(f) = res {
                        let _ = tx.send(Err(fail(f))).await;
                    }
                });
            }
            None => {
                tokio::task::spawn_blocking(move || {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DiskIds, InitOptions, StoreOptions};
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
    use arrow_flight::flight_service_client::FlightServiceClient;
    use futures::{StreamExt, TryStreamExt};

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(without_nagle(listener));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY is off");
    }

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
            ..Default::default()
        };
        node.install_map(pb::InstallMapRequest {
            epoch: 5,
            node: 3,
            slices: vec![slice(1), slice(2)],
            ..Default::default()
        })
        .await
        .unwrap();
        // A lower epoch cannot replace the map.
        let e = node
            .install_map(pb::InstallMapRequest {
                epoch: 4,
                node: 3,
                slices: vec![],
                ..Default::default()
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
            batches: proto::batches_to_ipc(&schema, std::slice::from_ref(&batch))
                .unwrap()
                .into(),
        };
        let e = node.write(write(4, 1)).await.unwrap_err();
        assert_eq!(kind(&e), "stale_epoch", "{e}");
        let e = node.write(write(5, 7)).await.unwrap_err();
        assert_eq!(kind(&e), "slice_not_owned", "{e}");
        assert_eq!(node.write(write(5, 1)).await.unwrap().into_inner().rows, 3);
        node.commit(pb::TxnRequest {
            epoch: 5,
            xid: 9,
            requests: 1,
        })
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
