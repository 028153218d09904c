//! The clients of every node: one per node, each with its own HTTP/2
//! connections for control and writes, scans, and heartbeats.
//!
//! It owns how the coordinator connects to a node and nothing else: it
//! never decides anything from an answer (the system manager and the query
//! and write paths do).

use std::collections::BTreeMap;
use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use slicedb_engine::cluster_tls::ClusterTls;
use slicedb_engine::proto::{self, pb};
use slicedb_engine::NodeId;
use tonic::transport::{Channel, Endpoint};

use crate::{CoordinatorError, Result};

/// A node as the coordinator's configuration names it.
#[derive(Debug, Clone)]
pub struct NodeEndpoint {
    pub id: NodeId,
    /// host:port of the node's gRPC + Flight server.
    pub address: String,
    pub disks: u32,
    /// A spare: given no slices when the map is built, kept in reserve for
    /// regeneration (`slicedb_nodes.state = 'spare'` while it holds none).
    pub spare: bool,
    /// Its last `spare_disks` disks hold no slices when the cluster is
    /// created: each takes over a failed disk of this node.
    pub spare_disks: u32,
}

/// Receive window of one scan stream: what a node may send ahead of the
/// plan reading it.
const SCAN_STREAM_WINDOW: u32 = 4 << 20;
/// Receive window of the scan connection to one node (HTTP/2's largest).
const SCAN_CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// One node's clients. Channels reconnect by themselves.
#[derive(Clone)]
pub struct NodeClient {
    pub id: NodeId,
    pub address: String,
    /// Configured as a spare (see [`NodeEndpoint::spare`]).
    pub spare: bool,
    /// Its disks, as configured (`slicedb_disks` lists them all, even
    /// while the node does not answer).
    pub disks: u32,
    pub grpc: pb::node_client::NodeClient<Channel>,
    pub flight: FlightServiceClient<Channel>,
    /// The failure detector's own connection (see [`NodeClient::new`]).
    pub health: pb::node_client::NodeClient<Channel>,
}

impl NodeClient {
    /// Three HTTP/2 connections per node: one for control and writes, one
    /// for scans, one for heartbeats. HTTP/2 flow control is per stream and per connection; a scan
    /// stream that the plan does not read yet (the probe side of a hash
    /// join waits for its build side) keeps its data unacknowledged. On a
    /// shared connection that would use up the connection's window, stall
    /// every other stream on it, including the one the plan is waiting for,
    /// and the heartbeats: a deadlock that looks like a dead node. So scans
    /// get their own connection, whose window is far larger than the sum of
    /// the stream windows of the scans a plan can open at once.
    ///
    /// Heartbeats get a connection of their own for the same reason: during
    /// a large COPY, megabyte Write bodies queue on the control connection
    /// for its flow-control window, and a Status request behind them waited
    /// for the node to read them. Under load that took longer than the
    /// probe timeout twice in a row, and a live node was failed over
    /// mid-load (seen at TPC-H SF 1 on the 4-node local cluster).
    ///
    /// With `tls`, every connection is mutual TLS: the coordinator shows
    /// its certificate and accepts only node `ep.id`'s.
    pub(crate) fn new(ep: &NodeEndpoint, tls: Option<&ClusterTls>) -> Result<NodeClient> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{}", ep.address))
            .map_err(|e| {
                CoordinatorError::Config(format!("node {} address {}: {e}", ep.id, ep.address))
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(proto::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(proto::KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .max_frame_size(Some(proto::MAX_FRAME_BYTES));
        let endpoint = match tls {
            Some(t) => t.client(endpoint, ep.id).map_err(CoordinatorError::from)?,
            None => endpoint,
        };
        let control = endpoint.clone().connect_lazy();
        let health = endpoint.clone().connect_lazy();
        let scans = endpoint
            .initial_stream_window_size(Some(SCAN_STREAM_WINDOW))
            .initial_connection_window_size(Some(SCAN_CONNECTION_WINDOW))
            .connect_lazy();
        Ok(NodeClient {
            spare: ep.spare,
            disks: ep.disks,
            id: ep.id,
            address: ep.address.clone(),
            grpc: pb::node_client::NodeClient::new(control)
                .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(proto::MAX_MESSAGE_BYTES),
            flight: FlightServiceClient::new(scans)
                .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(proto::MAX_MESSAGE_BYTES),
            health: pb::node_client::NodeClient::new(health)
                .max_decoding_message_size(proto::MAX_MESSAGE_BYTES),
        })
    }

    pub fn err(&self, s: tonic::Status) -> CoordinatorError {
        CoordinatorError::from_status(self.id, &self.address, s)
    }
}

/// The deadline of a call that writes or makes durable a transaction's
/// data (Write, Delete, Prepare, Commit, Adopt, DDL): long enough for a
/// large batch's sync on a busy disk. A node that hangs is failed over long
/// before (the callers race it against its failover); this bounds a node
/// that answers heartbeats but not the call.
pub const WORK_DEADLINE: Duration = Duration::from_secs(60);
/// The deadline of a call that only reads or flips state (Status, Abort by
/// the resolver).
pub const CONTROL_DEADLINE: Duration = Duration::from_secs(10);

/// `msg` as a request bounded by `d`: the call ends with `DEADLINE_EXCEEDED`
/// (the node reads as unreachable) and the node stops working on it too
/// (the `grpc-timeout` header). Long calls with progress of their own (a
/// slice copy, GROOM, a checksum run) and streams (scans) take none.
pub fn deadline<T>(msg: T, d: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(d);
    r
}

/// Every configured node's clients, by id.
pub type NodeSet = BTreeMap<NodeId, NodeClient>;

/// The client of node `id`, which the map names (an error if the
/// configuration does not have it).
pub fn client(nodes: &NodeSet, id: NodeId) -> Result<&NodeClient> {
    nodes
        .get(&id)
        .ok_or_else(|| CoordinatorError::Config(format!("map names unknown node {id}")))
}

/// Clients for every endpoint; an id given twice is a configuration error.
pub fn connect_all(endpoints: &[NodeEndpoint], tls: Option<&ClusterTls>) -> Result<NodeSet> {
    let mut nodes = BTreeMap::new();
    for ep in endpoints {
        if nodes.insert(ep.id, NodeClient::new(ep, tls)?).is_some() {
            return Err(CoordinatorError::Config(format!(
                "node id {} appears twice",
                ep.id
            )));
        }
    }
    Ok(nodes)
}
