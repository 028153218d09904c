//! The cluster as the query path, the write path, the views and the SQL
//! sessions see it: a narrow handle over the current map, the node clients,
//! snapshots and transactions, what heartbeats learned, and "this node
//! could not be reached".
//!
//! It hands out the map read only (`Arc<DistMap>`) and cannot change it:
//! only the system manager can. It holds no state of its own beyond the
//! planner's tuning; everything it answers comes from the part that owns it.

use std::sync::Arc;

use parking_lot::Mutex;
use slicedb_engine::store::Snapshot;
use slicedb_engine::{NodeId, Xid};

use crate::catalog::Catalog;
use crate::map::DistMap;
use crate::nodes::{NodeClient, NodeSet};
use crate::system::{MapReader, NodeHealth, SystemHandle};
use crate::txn::{Txn, TxnManager};
use crate::Result;

/// Planner settings from the coordinator's configuration.
#[derive(Debug, Clone, Copy)]
pub struct PlanTuning {
    /// Tables with fewer rows take no runtime join filters: they are
    /// shipped whole, at once.
    pub runtime_filter_min_rows: u64,
    /// Tables with fewer rows are never the probe side of a join run on the
    /// nodes with its build side sent whole.
    pub broadcast_join_min_rows: u64,
}

/// The cluster, for everyone but the system manager.
pub struct Cluster {
    catalog: Arc<Mutex<Catalog>>,
    map: MapReader,
    nodes: Arc<NodeSet>,
    health: Arc<NodeHealth>,
    txns: Arc<TxnManager>,
    system: SystemHandle,
    tuning: PlanTuning,
}

impl Cluster {
    pub(crate) fn new(
        catalog: Arc<Mutex<Catalog>>,
        map: MapReader,
        nodes: Arc<NodeSet>,
        health: Arc<NodeHealth>,
        txns: Arc<TxnManager>,
        system: SystemHandle,
        tuning: PlanTuning,
    ) -> Cluster {
        Cluster {
            catalog,
            map,
            nodes,
            health,
            txns,
            system,
            tuning,
        }
    }

    /// The map as last published by the system manager.
    pub fn map(&self) -> Arc<DistMap> {
        self.map.current()
    }

    /// Whether the map has declared `node` failed.
    pub fn is_down(&self, node: NodeId) -> bool {
        self.map().is_down(node)
    }

    pub fn node(&self, id: NodeId) -> Result<&NodeClient> {
        crate::nodes::client(&self.nodes, id)
    }

    /// Every configured node, failed ones included.
    pub fn nodes(&self) -> &NodeSet {
        &self.nodes
    }

    /// The nodes the map has not declared failed.
    pub fn live_nodes(&self) -> impl Iterator<Item = &NodeClient> {
        let map = self.map();
        self.nodes.values().filter(move |n| !map.is_down(n.id))
    }

    /// A scan or a write could not reach `node`: the system manager probes
    /// it now rather than at the next heartbeat.
    pub fn report_unreachable(&self, node: NodeId) {
        self.system.report_unreachable(node);
    }

    /// Resolves once the map declares `node` failed.
    pub async fn until_down(&self, node: NodeId) {
        self.map.until_down(node).await
    }

    /// `node` failed while `txn` was open: carry the transaction on
    /// without it (see [`TxnManager::carry_over`]).
    pub async fn carry_over(&self, txn: &Txn, node: NodeId) -> Result<()> {
        self.txns.carry_over(txn, node).await
    }

    /// The copies of the current (or last) resync round.
    pub fn resync_progress(&self) -> Vec<crate::system::CopyProgress> {
        self.system.resync_progress()
    }

    /// Regenerate every failed node and disk now (an admin asked); returns
    /// once the new copies are placed.
    pub async fn regenerate_now(&self) {
        self.system.regenerate_now().await;
    }

    /// The cluster is being shut down on purpose: no more failovers.
    pub fn begin_shutdown(&self) {
        self.system.begin_shutdown();
    }

    /// The catalog (tables, temporary tables).
    pub fn catalog(&self) -> &Mutex<Catalog> {
        &self.catalog
    }

    /// What heartbeats last said of each node.
    pub fn health(&self) -> &NodeHealth {
        &self.health
    }

    /// Record whether `node` answered (a failed node stays down).
    pub fn mark(&self, node: NodeId, up: bool) {
        self.health.mark(node, up, self.is_down(node));
    }

    /// About how many rows `table` holds, as of the last heartbeat.
    pub fn table_rows(&self, table: u64) -> Option<u64> {
        self.health.table_rows(table)
    }

    pub fn tuning(&self) -> PlanTuning {
        self.tuning
    }

    /// Start a transaction: a fresh xid and its snapshot.
    pub fn begin(&self) -> Result<Arc<Txn>> {
        self.txns.begin()
    }

    /// A snapshot for a statement outside any transaction block.
    pub fn read_snapshot(&self) -> Snapshot {
        self.txns.read_snapshot()
    }

    /// Two-phase commit (see `crate::txn`).
    pub async fn commit(&self, txn: &Txn) -> Result<()> {
        self.txns.commit(txn).await
    }

    /// Abort everywhere (best effort; the resolver finishes the rest).
    pub async fn abort(&self, txn: &Txn) {
        self.txns.abort(txn).await
    }

    /// The next xid to be handed out.
    pub fn peek_xid(&self) -> Xid {
        self.txns.peek_xid()
    }

    /// The oldest xid some active snapshot may still not see (for GROOM).
    pub fn horizon(&self) -> Xid {
        self.txns.horizon(self.txns.peek_xid())
    }
}
