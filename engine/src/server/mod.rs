//! The node server: `slicedb node`. One port serves the tonic `Node`
//! service, the coordinator's control calls (`control.rs`: map install,
//! DDL, writes, two-phase commit, status), the `PeerNode` service, the
//! calls other nodes make (`peer.rs`: mirror forwards), and Arrow Flight
//! `do_get` for scans (`scans.rs`).
//!
//! This module holds what they share: the node's view of the distribution
//! map (epoch, the slices this node answers for, where its primaries
//! forward), its disks and those found failed, the request counts of open
//! transactions, and startup (the listener, without Nagle). Every command
//! is checked against the map: a stale epoch is refused with a typed error,
//! and a slice the map does not give this node is never served.
//!
//! It must never decide placement itself (the coordinator does), and never
//! forward, stage or apply mirror data itself: the mirror manager
//! ([`crate::mirror`]) does, called from here once a command has passed
//! the checks.

mod control;
mod damaged;
mod jsonl;
mod metrics;
mod peer;
mod repair;
mod scans;
mod scrub;

pub use repair::{PeerRepair, RepairPolicy};
pub use scrub::DEFAULT_SCRUB_RATE;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use futures::Stream;
use parking_lot::{Mutex, RwLock};
use tonic::Status;
use tracing::{info, warn};

use crate::cluster_tls::{ClusterTls, Member};
use crate::fragment_runner::FragmentRunner;
use crate::mirror::{Forwarder, Routes, Staging};
use crate::proto::{self, pb};
use crate::store::{DiskStore, SegmentKind};
use crate::{DiskId, EngineError, NodeId, Result, SliceId, Xid};

/// What the installed map says this node holds.
#[derive(Debug, Default, Clone)]
struct NodeMap {
    epoch: u64,
    /// (slice, segment) -> disk holding that copy.
    slices: HashMap<(SliceId, SegmentKind), DiskId>,
    /// Where this node's primary slices are forwarded.
    routes: Routes,
    /// (slice, segment) of a copy here -> the node holding the slice's
    /// other copy, to repair a damaged block from.
    repair_sources: HashMap<(SliceId, SegmentKind), NodeId>,
}

/// A transaction as this node's control calls see it (what it forwarded
/// is the mirror manager's).
#[derive(Default)]
struct NodeTxn {
    disks: HashSet<DiskId>,
    /// Write and Delete requests received (checked at prepare).
    requests: u64,
}

struct NodeState {
    node: NodeId,
    disks: Vec<Arc<DiskStore>>,
    map: RwLock<Option<NodeMap>>,
    txns: Mutex<HashMap<Xid, NodeTxn>>,
    /// The primary's side of mirroring.
    forwarder: Forwarder,
    /// The mirror's side of mirroring.
    staging: Staging,
    /// Slice copies this node pulls now (for `Status`).
    copies: crate::mirror::copy::Meters,
    /// Disks that failed (I/O error, checksum mismatch, image gone), with why.
    failed_disks: Mutex<HashMap<DiskId, String>>,
    /// Runs the query fragments scans may carry (None: scans with a
    /// fragment are refused).
    fragments: RwLock<Option<Arc<dyn FragmentRunner>>>,
    /// Held while obsolete copies are dropped (one sweep at a time).
    sweeping: Mutex<()>,
    /// Foreground work (scans, writes): paced copies keep their rate only
    /// while there is some.
    activity: Arc<crate::background::Activity>,
    /// The damaged blocks met and what became of them.
    repairs: Mutex<repair::RepairLog>,
    /// The disks' repair seam, bound to this node when it serves.
    repair: Option<Arc<PeerRepair>>,
    /// Blocks that could not be repaired (`Status.damaged`).
    damaged: damaged::DamagedBlocks,
    /// Bytes per second each disk's scrubber reads (0: none); read when
    /// serving starts.
    scrub_rate: std::sync::atomic::AtomicU64,
    /// Each disk's scrub passes.
    scrub: Arc<crate::scrub::ScrubBoard>,
    /// Held while a pass is written to `scrub-passes.jsonl`.
    scrub_file: Mutex<()>,
    /// This node's cluster credentials: with them every call must come
    /// over mutual TLS from a member allowed to make it; without (a server
    /// embedded in a test) every caller is taken at its word.
    tls: RwLock<Option<Arc<ClusterTls>>>,
}

/// Which members a service admits.
#[derive(Clone, Copy, Debug)]
enum Admit {
    /// `Node` and Flight: the coordinator's commands and scans.
    Coordinator,
    /// `PeerNode`: other nodes' forwards, copies and repairs.
    Nodes,
}

/// The member that made a call, as its certificate says (set by the
/// services' interceptor when the node has credentials).
#[derive(Clone, Copy, Debug)]
struct Caller(Member);

/// A running node's shared state; cheap to clone.
#[derive(Clone)]
pub struct NodeServer {
    state: Arc<NodeState>,
}

impl NodeServer {
    /// A node serving the given disks (index = disk id), whose damaged
    /// blocks are not repaired (their disks were opened without a
    /// [`PeerRepair`]).
    pub fn new(node: NodeId, disks: Vec<Arc<DiskStore>>) -> Self {
        Self::with_repair_opt(node, disks, None)
    }

    /// A node serving disks opened with `repair` as their
    /// [`crate::store::StoreOptions::repair`]: a damaged block is repaired
    /// from the slice's other copy.
    pub fn with_repair(node: NodeId, disks: Vec<Arc<DiskStore>>, repair: Arc<PeerRepair>) -> Self {
        Self::with_repair_opt(node, disks, Some(repair))
    }

    fn with_repair_opt(
        node: NodeId,
        disks: Vec<Arc<DiskStore>>,
        repair: Option<Arc<PeerRepair>>,
    ) -> Self {
        NodeServer {
            state: Arc::new(NodeState {
                node,
                disks: disks.clone(),
                map: RwLock::new(None),
                txns: Mutex::new(HashMap::new()),
                forwarder: Forwarder::new(node),
                staging: Staging::new(node, disks.clone()),
                copies: Default::default(),
                failed_disks: Mutex::new(HashMap::new()),
                fragments: RwLock::new(None),
                sweeping: Mutex::new(()),
                activity: Default::default(),
                repairs: Mutex::new(repair::RepairLog::open(&disks)),
                repair,
                damaged: damaged::DamagedBlocks::open(&disks),
                scrub_rate: Default::default(),
                scrub: scrub::open_board(&disks),
                scrub_file: Mutex::new(()),
                tls: RwLock::new(None),
            }),
        }
    }

    /// Spill staged mirror forwards into files under `dir` past `budget`
    /// bytes in memory (see `mirror::staging`).
    pub fn spill_staging_to(&self, dir: std::path::PathBuf, budget: usize) -> Result<()> {
        self.state.staging.spill_to(dir, budget)
    }

    /// Run the query fragments of scans with `runner` (the query engine the
    /// process links); without one, a scan carrying a fragment is refused.
    pub fn set_fragment_runner(&self, runner: Arc<dyn FragmentRunner>) {
        *self.state.fragments.write() = Some(runner);
    }

    /// Serve only over mutual TLS with these credentials, admitting the
    /// coordinator's commands and scans only from the coordinator and the
    /// peer calls only from other nodes; call to peers with them too.
    pub fn set_cluster_tls(&self, tls: ClusterTls) {
        let tls = Arc::new(tls);
        self.state.forwarder.set_tls(tls.clone());
        *self.state.tls.write() = Some(tls);
    }

    /// The interceptor of every service: with credentials, a call from a
    /// member the service does not admit is refused before it is decoded.
    fn admit(
        &self,
        who: Admit,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, Status> {
        let Some(tls) = self.state.tls.read().clone() else {
            return Ok(req);
        };
        let caller = match tls.caller(&req) {
            Ok(c) => c,
            Err(s) => {
                warn!(node = self.state.node, error = %s.message(), "refused a call without cluster credentials");
                return Err(s);
            }
        };
        let ok = match (who, caller) {
            (Admit::Coordinator, Member::Coordinator) => true,
            (Admit::Nodes, Member::Node(n)) => n != self.state.node,
            _ => false,
        };
        if !ok {
            warn!(node = self.state.node, %caller, ?who, "refused a call from a member the service does not admit");
            return Err(Status::permission_denied(format!(
                "{caller} may not make this call on node {}: {}",
                self.state.node,
                match who {
                    Admit::Coordinator => "only the coordinator may",
                    Admit::Nodes => "only another node may",
                }
            )));
        }
        req.extensions_mut().insert(Caller(caller));
        Ok(req)
    }

    /// The authenticated member that made `req` (None: this node has no
    /// credentials and takes callers at their word).
    fn caller<T>(req: &tonic::Request<T>) -> Option<Member> {
        req.extensions().get::<Caller>().map(|c| c.0)
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
        if let Some(r) = &self.state.repair {
            r.bind(&self.state, tokio::runtime::Handle::current());
        }
        self.start_scrubbers();
        let incoming = without_nagle(listener);
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.state.tls.read().clone() {
            info!(
                node = self.state.node,
                "node serving over mutual TLS with the cluster's CA"
            );
            builder = builder.tls_config(tls.server_config()).map_err(|e| {
                EngineError::Credentials(format!("TLS settings of the node server: {e}"))
            })?;
        }
        let gate = |who: Admit| {
            let me = self.clone();
            move |req: tonic::Request<()>| me.admit(who, req)
        };
        use tonic::service::interceptor::InterceptedService;
        let node_svc = InterceptedService::new(
            pb::node_server::NodeServer::new(self.clone())
                .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(proto::MAX_MESSAGE_BYTES),
            gate(Admit::Coordinator),
        );
        let peer_svc = InterceptedService::new(
            pb::peer_node_server::PeerNodeServer::new(self.clone())
                .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(proto::MAX_MESSAGE_BYTES),
            gate(Admit::Nodes),
        );
        let flight_svc = InterceptedService::new(
            FlightServiceServer::new(self.clone())
                .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(proto::MAX_MESSAGE_BYTES),
            gate(Admit::Coordinator),
        );
        builder
            .http2_keepalive_interval(Some(proto::KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(proto::KEEPALIVE_TIMEOUT))
            .initial_stream_window_size(Some(proto::RECEIVE_STREAM_WINDOW))
            .initial_connection_window_size(Some(proto::RECEIVE_CONNECTION_WINDOW))
            .max_frame_size(Some(proto::MAX_FRAME_BYTES))
            .add_service(node_svc)
            .add_service(peer_svc)
            .add_service(flight_svc)
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

    /// Where this node holds the copy of `slice` that a serving copy
    /// forwards to: its mirror segment, or (a failed-over mirror forwarding
    /// to the primary copy being resynced) its primary segment.
    fn forwarded_copy(&self, map: &NodeMap, slice: SliceId) -> Result<(SegmentKind, DiskId)> {
        match self.owned_disk(map, slice, SegmentKind::Mirror) {
            Ok(d) => Ok((SegmentKind::Mirror, d)),
            Err(e) => self
                .owned_disk(map, slice, SegmentKind::Primary)
                .map(|d| (SegmentKind::Primary, d))
                .map_err(|_| e),
        }
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
    proto::status_from(&e)
}

/// Whether an error means the disk itself is bad (not the request).
/// (A host file system out of space is not: that write's statement fails
/// with 53100 and the disk stays in service.)
fn disk_fault(e: &EngineError) -> bool {
    !e.is_out_of_space()
        && matches!(
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

    /// Why `disk` is failed, if it is. An image file that vanished counts,
    /// and so does one cut short (a file now shorter than the image its
    /// superblock describes: every block past the cut is gone, and a
    /// repair written there would only grow a sparse file). A block device
    /// (no file length) is judged by its reads alone.
    fn disk_failure(&self, disk: DiskId) -> Option<String> {
        if let Some(why) = self.state.failed_disks.lock().get(&disk) {
            return Some(why.clone());
        }
        let d = self.state.disks.get(disk as usize)?;
        let size = d.superblock().image_size;
        let why = match std::fs::metadata(d.path()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                format!("image {} vanished", d.path().display())
            }
            Ok(m) if m.is_file() && m.len() < size => format!(
                "image {} cut short: {} of its {size} bytes left",
                d.path().display(),
                m.len()
            ),
            _ => return None,
        };
        warn!(node = self.state.node, disk, why = %why, "disk failed");
        self.state
            .failed_disks
            .lock()
            .entry(disk)
            .or_insert(why.clone());
        Some(why)
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

#[cfg(test)]
mod copy_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ErrorKind;
    use crate::store::{DiskIds, InitOptions, StoreOptions};
    use arrow::array::Int64Array;
    use arrow::array::RecordBatch;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
    use arrow_flight::flight_service_client::FlightServiceClient;
    use arrow_flight::Ticket;
    use futures::{StreamExt, TryStreamExt};
    use prost::Message;

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

    /// A message past `MAX_MESSAGE_BYTES` is refused (OutOfRange, "too
    /// large") before it is read, and the node serves on, on the same
    /// connection.
    #[tokio::test]
    async fn a_message_over_the_cap_is_refused_and_the_node_serves_on() {
        let (_dir, addr, _stop) = start().await;
        let mut node = pb::node_client::NodeClient::connect(format!("http://{addr}"))
            .await
            .unwrap()
            .max_encoding_message_size(usize::MAX);
        let e = node
            .write(pb::WriteRequest {
                epoch: 1,
                xid: 1,
                table: 1,
                slice: 0,
                segment: 1,
                batches: vec![0u8; proto::MAX_MESSAGE_BYTES + 1].into(),
                request_id: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange, "{e}");
        assert!(e.message().contains("too large"), "{e}");
        node.status(pb::StatusRequest {}).await.unwrap();
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
        assert_eq!(proto::error_kind(&e), ErrorKind::StaleEpoch);

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
            request_id: 1,
        };
        let e = node.write(write(4, 1)).await.unwrap_err();
        assert_eq!(proto::error_kind(&e), ErrorKind::StaleEpoch, "{e}");
        let e = node.write(write(5, 7)).await.unwrap_err();
        assert_eq!(proto::error_kind(&e), ErrorKind::SliceNotOwned, "{e}");
        assert_eq!(node.write(write(5, 1)).await.unwrap().into_inner().rows, 3);
        node.prepare(pb::TxnRequest {
            epoch: 5,
            xid: 9,
            requests: 1,
        })
        .await
        .unwrap();
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
        assert_eq!(proto::error_kind(&e), ErrorKind::StaleEpoch);
    }
}
