//! The coordinator proper: configuration, node clients, map installation,
//! DDL fan-out, transaction ids, and the shared DataFusion session.
//!
//! It owns the only mutable copy of the catalog and the distribution map.
//! It must never read or write disk images: everything on a node goes through
//! the node protocol.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow_flight::flight_service_client::FlightServiceClient;
use datafusion::execution::context::SessionContext;
use datafusion::prelude::SessionConfig;
use parking_lot::{Mutex, RwLock};
use slicedb_engine::proto::{self, pb};
use slicedb_engine::{NodeId, SliceId, Xid};
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use crate::catalog::{Catalog, Distribution, TableMeta};
use crate::distmap::{DistMap, NodeShape, SliceState};
use crate::provider::SliceTable;
use crate::session::current_session;
use crate::{CoordinatorError, Result};

/// A node as the coordinator's configuration names it.
#[derive(Debug, Clone)]
pub struct NodeEndpoint {
    pub id: NodeId,
    /// host:port of the node's gRPC + Flight server.
    pub address: String,
    pub disks: u32,
}

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Where the catalog and the distribution map live.
    pub data_dir: PathBuf,
    pub nodes: Vec<NodeEndpoint>,
    /// Slices per disk when the map is first built.
    pub slices_per_disk: u32,
    /// How long startup waits for every node to answer.
    pub connect_timeout: Duration,
    /// DataFusion target partitions (0 = number of cores).
    pub target_partitions: usize,
    /// How long a primary waits for its mirror before the slice is degraded.
    pub mirror_timeout: Duration,
    /// Heartbeat period; a node that misses one is probed at once and, if the
    /// probe fails too, declared failed (detection <= interval + 2 x timeout).
    pub heartbeat_interval: Duration,
    /// How long one heartbeat or probe may take.
    pub probe_timeout: Duration,
    /// Tables with fewer rows take no runtime join filters (see
    /// `provider::BroadcastScanExec`): they are shipped whole, at once.
    pub runtime_filter_min_rows: u64,
    /// Tables with fewer rows are never the probe side of a join run on the
    /// nodes with its build side sent whole (see `fragment`): they are
    /// shipped to the coordinator's join instead.
    pub broadcast_join_min_rows: u64,
}

impl CoordinatorConfig {
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
    pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
    /// Waiting for a build side puts a scan's latency on the critical path;
    /// at TPC-H SF 1 that paid for lineitem (6 M rows: Q08, Q09, Q17) but
    /// not for orders (1.5 M: Q03 108 -> 200 ms with its runtime filter).
    pub const DEFAULT_RUNTIME_FILTER_MIN_ROWS: u64 = 2_000_000;
    /// A join run on the nodes starts its probe scan only once its build
    /// side is computed and sent; below this many rows, shipping the probe
    /// table costs less than that wait.
    pub const DEFAULT_BROADCAST_JOIN_MIN_ROWS: u64 = 1_000_000;
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
    fn new(ep: &NodeEndpoint) -> Result<NodeClient> {
        let endpoint = Endpoint::from_shared(format!("http://{}", ep.address))
            .map_err(|e| {
                CoordinatorError::Config(format!("node {} address {}: {e}", ep.id, ep.address))
            })?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .max_frame_size(Some(proto::MAX_FRAME_BYTES));
        let control = endpoint.clone().connect_lazy();
        let health = endpoint.clone().connect_lazy();
        let scans = endpoint
            .initial_stream_window_size(Some(SCAN_STREAM_WINDOW))
            .initial_connection_window_size(Some(SCAN_CONNECTION_WINDOW))
            .connect_lazy();
        Ok(NodeClient {
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

/// What every provider and view shares with the coordinator.
pub struct Shared {
    pub config: CoordinatorConfig,
    pub catalog: Mutex<Catalog>,
    pub map: RwLock<Arc<DistMap>>,
    pub nodes: BTreeMap<NodeId, NodeClient>,
    /// Last known state per node ("up" / "down").
    pub node_state: Mutex<BTreeMap<NodeId, String>>,
    /// Rows per table on each node's primary and temp segments, as its last
    /// Status answer (every heartbeat) said: the optimizer's row counts.
    table_rows: Mutex<BTreeMap<NodeId, BTreeMap<u64, u64>>>,
    pub txns: crate::txn::TxnManager,
    next_xid: AtomicU64,
    xid_limit: AtomicU64,
    xid_lock: Mutex<()>,
    map_lock: tokio::sync::Mutex<()>,
    me: std::sync::Weak<Shared>,
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Stop the failure detector: the cluster is being shut down on purpose.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// This `Shared` as an `Arc` (for tasks it spawns).
    pub fn self_arc(&self) -> Option<Arc<Shared>> {
        self.me.upgrade()
    }

    pub fn map(&self) -> Arc<DistMap> {
        self.map.read().clone()
    }

    pub fn node(&self, id: NodeId) -> Result<&NodeClient> {
        self.nodes
            .get(&id)
            .ok_or_else(|| CoordinatorError::Config(format!("map names unknown node {id}")))
    }

    /// A fresh transaction id; durable reservation in the catalog in ranges.
    pub fn next_xid(&self) -> Result<Xid> {
        let _g = self.xid_lock.lock();
        let x = self.next_xid.load(Ordering::SeqCst);
        if x >= self.xid_limit.load(Ordering::SeqCst) {
            let start = self.catalog.lock().reserve_xids(x)?;
            self.next_xid.store(start, Ordering::SeqCst);
            self.xid_limit
                .store(start + crate::catalog::XID_RESERVATION, Ordering::SeqCst);
        }
        Ok(self.next_xid.fetch_add(1, Ordering::SeqCst))
    }

    /// The next xid `next_xid` would hand out (every xid below it was handed out).
    pub fn peek_xid(&self) -> Xid {
        self.next_xid.load(Ordering::SeqCst)
    }

    /// Record that these slices' mirrors missed a commit: state `degraded`,
    /// epoch + 1, persisted, installed on every node (so primaries stop
    /// forwarding) before the caller acknowledges anything.
    pub async fn mark_degraded(&self, slices: &BTreeSet<SliceId>) -> Result<()> {
        let _g = self.map_lock.lock().await;
        let mut map = (*self.map()).clone();
        let mut changed = false;
        for e in &mut map.slices {
            if slices.contains(&e.slice) && e.state == SliceState::InSync {
                e.state = SliceState::Degraded;
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        map.bump(format!(
            "mirror unreachable at commit: slices {slices:?} degraded"
        ));
        map.persist(&self.config.data_dir)?;
        warn!(epoch = map.epoch, slices = ?slices, "mirror unreachable: slices degraded");
        *self.map.write() = Arc::new(map);
        // A node that cannot be reached (often the very mirror that failed)
        // gets the map when it is back; it refuses commands until then.
        install_map_on(self, true).await
    }

    /// Declare `node` failed: change the map first (epoch + 1: its primaries
    /// fail over to in-sync mirrors, its mirrors' primaries become
    /// unprotected), persist it, install it on every surviving node. A node
    /// that comes back is fenced by the epoch and stays out.
    pub async fn fail_node(&self, node: NodeId, cause: &str) -> Result<()> {
        let _g = self.map_lock.lock().await;
        if self.shutting_down.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut map = (*self.map()).clone();
        if !map.fail_node(node, cause) {
            return Ok(());
        }
        map.persist(&self.config.data_dir)?;
        warn!(node, epoch = map.epoch, cause, "node failed: map changed");
        *self.map.write() = Arc::new(map);
        self.mark(node, false);
        let installed = install_map_on(self, true).await;
        // Transactions decided as committed that the dead node never
        // acknowledged: finish them on the survivors (the mirrors hold them
        // prepared) before they count as done, so no reader misses them.
        self.resolve_once().await;
        self.txns.forget_node(node);
        installed
    }

    /// Declare one disk of a running node failed: only its slices move.
    pub async fn fail_disk(&self, node: NodeId, disk: u32, cause: &str) -> Result<()> {
        let _g = self.map_lock.lock().await;
        if self.shutting_down.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut map = (*self.map()).clone();
        if !map.fail_disk(crate::distmap::Location { node, disk }, cause) {
            return Ok(());
        }
        map.persist(&self.config.data_dir)?;
        warn!(
            node,
            disk,
            epoch = map.epoch,
            cause,
            "disk failed: map changed"
        );
        *self.map.write() = Arc::new(map);
        install_map_on(self, true).await
    }

    /// Whether the map has declared `node` failed.
    pub fn is_down(&self, node: NodeId) -> bool {
        self.map().down.contains(&node)
    }

    /// Remember the row counts a node's Status reported.
    pub fn note_status(&self, node: NodeId, st: &pb::StatusResponse) {
        let mut rows: BTreeMap<u64, u64> = BTreeMap::new();
        for s in &st.slices {
            if s.segment != pb::Segment::Mirror as i32 {
                *rows.entry(s.table).or_default() += s.rows;
            }
        }
        self.table_rows.lock().insert(node, rows);
    }

    /// About how many rows `table` holds (stored rows, deleted ones
    /// included, as of the last heartbeat); `None` before any node reported.
    pub fn table_rows(&self, table: u64) -> Option<u64> {
        let all = self.table_rows.lock();
        if all.is_empty() {
            return None;
        }
        Some(all.values().filter_map(|t| t.get(&table)).sum())
    }

    pub fn mark(&self, node: NodeId, up: bool) {
        // A node the map declared failed stays down (fenced) even if it
        // answers again, until it is regenerated.
        let up = up && !self.is_down(node);
        self.node_state
            .lock()
            .insert(node, if up { "up" } else { "down" }.to_string());
    }
}

/// The running coordinator.
pub struct Coordinator {
    shared: Arc<Shared>,
    ctx: Arc<SessionContext>,
}

impl Coordinator {
    /// Open (or create) the catalog and map, wait for every node, install the
    /// map on each, and register every table with a new DataFusion session.
    pub async fn start(config: CoordinatorConfig) -> Result<Coordinator> {
        let catalog = Catalog::open(&config.data_dir)?;
        let shapes: Vec<NodeShape> = config
            .nodes
            .iter()
            .map(|n| NodeShape {
                node: n.id,
                disks: n.disks,
            })
            .collect();
        let map = DistMap::open_or_build(&config.data_dir, &shapes, config.slices_per_disk)?;
        let mut nodes = BTreeMap::new();
        for ep in &config.nodes {
            if nodes.insert(ep.id, NodeClient::new(ep)?).is_some() {
                return Err(CoordinatorError::Config(format!(
                    "node id {} appears twice",
                    ep.id
                )));
            }
        }
        let hw = catalog.xid_high_water();
        let txns = crate::txn::TxnManager::open(&config.data_dir)?;
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            config: config.clone(),
            catalog: Mutex::new(catalog),
            map: RwLock::new(Arc::new(map)),
            nodes,
            node_state: Mutex::new(BTreeMap::new()),
            table_rows: Mutex::new(BTreeMap::new()),
            txns,
            next_xid: AtomicU64::new(hw),
            xid_limit: AtomicU64::new(hw),
            xid_lock: Mutex::new(()),
            map_lock: tokio::sync::Mutex::new(()),
        });
        wait_for_nodes(&shared).await?;
        install_map(&shared).await?;
        // Finish whatever a crash left in doubt before serving anyone.
        let resolved = shared.resolve_once().await;
        if resolved > 0 {
            info!(resolved, "resolved in-doubt transactions at startup");
        }
        crate::txn::spawn_resolver(shared.clone(), Duration::from_millis(500));
        spawn_heartbeats(shared.clone());
        // Make sure every node knows every table (a node may have been
        // initialised after the table was created, or missed a DDL).
        let tables = shared.catalog.lock().tables();
        for t in &tables {
            create_on_nodes(&shared, t).await?;
        }
        // Temporary tables of the previous process's sessions: those
        // sessions are gone, and so are their tables.
        let leftovers = shared.catalog.lock().temps(None);
        for t in leftovers {
            info!(table = %t.name, id = t.id, "dropping a temporary table left by a previous run");
            shared.catalog.lock().remove_meta(&t)?;
            drop_on_nodes(&shared, &t).await;
        }

        let mut session = SessionConfig::new()
            .with_option_extension(crate::fragment::SlicedbOptions::default())
            .with_information_schema(true)
            .with_default_catalog_and_schema("datafusion", "public");
        // `text`/`varchar` columns are stored as Utf8 (the type the engine,
        // the hash and COPY know); Utf8View is an in-memory optimisation.
        session
            .options_mut()
            .sql_parser
            .map_string_types_to_utf8view = false;
        if config.target_partitions > 0 {
            session = session.with_target_partitions(config.target_partitions);
        }
        // A join's runtime filter reaches the nodes as bounds plus, for an
        // integer key, the build side's keys as an IN list
        // (`crate::filter::implied_by`): allow lists far longer than
        // DataFusion's default (150 values, meant for statistics pruning).
        // Shipping a probe side costs far more than a few thousand keys.
        let opts = &mut session.options_mut().optimizer;
        opts.hash_join_inlist_pushdown_max_distinct_values = crate::filter::MAX_RUNTIME_IN_LIST;
        opts.hash_join_inlist_pushdown_max_size = crate::filter::MAX_RUNTIME_IN_LIST * 16;
        // Joins of co-located tables are made adjacent (crate::colocate),
        // semi joins move below inner joins (crate::semijoin); co-located
        // joins and partial aggregates run on the nodes (crate::fragment).
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(session)
            .with_default_features()
            .with_optimizer_rule(Arc::new(crate::colocate::CoLocateJoins))
            .with_optimizer_rule(Arc::new(crate::semijoin::PushSemiJoinDown))
            .with_physical_optimizer_rules(crate::fragment::optimizer_rules())
            .build();
        let ctx = Arc::new(SessionContext::new_with_state(state));
        // Names resolve through the session's temporary tables first.
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| CoordinatorError::Catalog("no default catalog".into()))?;
        let public = catalog
            .schema("public")
            .ok_or_else(|| CoordinatorError::Catalog("no public schema".into()))?;
        catalog.register_schema(
            "public",
            Arc::new(crate::session::SessionSchema::new(public, shared.clone())),
        )?;
        for t in tables {
            let name = t.name.clone();
            ctx.register_table(name.as_str(), Arc::new(SliceTable::new(shared.clone(), t)))?;
        }
        crate::system::register(&ctx, &shared)?;
        info!(
            nodes = shared.nodes.len(),
            slices = shared.map().slice_count(),
            "coordinator ready"
        );
        Ok(Coordinator { shared, ctx })
    }

    /// The DataFusion session every SQL connection plans in.
    pub fn session(&self) -> Arc<SessionContext> {
        self.ctx.clone()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The table `name` as the current session sees it: its temporary
    /// table of that name, else the permanent one.
    pub fn table(&self, name: &str) -> Result<Arc<TableMeta>> {
        let cat = self.shared.catalog.lock();
        if let Some(t) = current_session().and_then(|s| cat.get_temp(s, name)) {
            return Ok(t);
        }
        cat.get(name)
            .ok_or_else(|| CoordinatorError::TableNotFound(name.to_string()))
    }

    pub fn table_schema(&self, name: &str) -> Result<SchemaRef> {
        Ok(self.table(name)?.schema.clone())
    }

    /// CREATE TABLE: durable in the catalog, then created on every node.
    /// `temporary`: a table of the current session (CREATE TEMP TABLE),
    /// unmirrored, dropped when the session ends.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_table(
        &self,
        name: &str,
        schema: SchemaRef,
        distribution: Distribution,
        mirrored: bool,
        temporary: bool,
        if_not_exists: bool,
    ) -> Result<()> {
        let session = match (temporary, current_session()) {
            (false, _) => None,
            (true, Some(s)) => Some(s),
            (true, None) => {
                return Err(CoordinatorError::NotSupported(
                    "a temporary table outside a SQL session".into(),
                ))
            }
        };
        // A system view has the name (a session's temporary table may
        // shadow a permanent one, as in PostgreSQL, but not a view).
        let shadowed = current_session()
            .and_then(|s| self.shared.catalog.lock().get_temp(s, name))
            .is_some();
        if !shadowed
            && self.ctx.table_exist(name)?
            && self.shared.catalog.lock().get(name).is_none()
        {
            return Err(CoordinatorError::TableExists(name.to_string()));
        }
        for f in schema.fields() {
            if !crate::load::storable(f.data_type()) {
                return Err(CoordinatorError::UnsupportedType {
                    column: f.name().clone(),
                    data_type: f.data_type().to_string(),
                });
            }
        }
        if let Distribution::Hash(cols) = &distribution {
            for c in cols {
                let idx = schema.index_of(c).map_err(|_| {
                    CoordinatorError::UnknownDistributionColumn {
                        table: name.to_string(),
                        column: c.clone(),
                    }
                })?;
                let dt = schema.field(idx).data_type();
                if !crate::hash::hashable(dt) {
                    return Err(CoordinatorError::NotSupported(format!(
                        "distribution key column \"{c}\" of type {dt}"
                    )));
                }
            }
        }
        let meta = {
            let mut cat = self.shared.catalog.lock();
            let exists = match session {
                Some(s) => cat.get_temp(s, name).is_some(),
                None => cat.get(name).is_some(),
            };
            if exists {
                if if_not_exists {
                    return Ok(());
                }
                return Err(CoordinatorError::TableExists(name.to_string()));
            }
            cat.add(name, schema, distribution, mirrored, session)?
        };
        if let Err(e) = create_on_nodes(&self.shared, &meta).await {
            // Leave no half-created table behind in the catalog.
            let _ = self.shared.catalog.lock().remove_meta(&meta);
            return Err(e);
        }
        // Temporary tables resolve through the session schema, never here.
        if session.is_none() {
            self.ctx
                .register_table(name, Arc::new(SliceTable::new(self.shared.clone(), meta)))?;
        }
        Ok(())
    }

    /// Whether the session has temporary tables.
    pub fn has_temp_tables(&self, session: u64) -> bool {
        !self.shared.catalog.lock().temps(Some(session)).is_empty()
    }

    /// A session ended: drop its temporary tables.
    pub async fn end_session(&self, session: u64) {
        let temps = self.shared.catalog.lock().temps(Some(session));
        for t in temps {
            match self.shared.catalog.lock().remove_meta(&t) {
                Ok(_) => {}
                Err(e) => {
                    warn!(table = %t.name, error = %e, "temporary table not dropped at session end");
                    continue;
                }
            }
            drop_on_nodes(&self.shared, &t).await;
            debug!(table = %t.name, session, "temporary table dropped at session end");
        }
    }

    /// DROP TABLE: out of the catalog first (so nothing new reaches it), then
    /// off every node.
    /// The session's temporary table of that name comes first.
    pub async fn drop_table(&self, name: &str, if_exists: bool) -> Result<()> {
        let found = match self.table(name) {
            Ok(m) => m,
            Err(CoordinatorError::TableNotFound(_)) if if_exists => return Ok(()),
            Err(e) => return Err(e),
        };
        let meta = self.shared.catalog.lock().remove_meta(&found)?;
        if meta.session.is_none() {
            self.ctx.deregister_table(name)?;
        }
        drop_on_nodes(&self.shared, &meta).await;
        Ok(())
    }
}

/// Drop a table's blocks on every live node (the catalog no longer names it).
async fn drop_on_nodes(shared: &Shared, meta: &TableMeta) {
    let epoch = shared.map().epoch;
    for n in shared.nodes.values().filter(|n| !shared.is_down(n.id)) {
        let mut c = n.grpc.clone();
        if let Err(s) = c
            .drop_table(pb::DropTableRequest {
                epoch,
                table: meta.id,
            })
            .await
        {
            // Its blocks are orphaned on that node until it is reached again.
            warn!(node = n.id, table = meta.id, error = %s, "drop on node failed");
        }
    }
}

async fn create_on_nodes(shared: &Shared, meta: &TableMeta) -> Result<()> {
    let epoch = shared.map().epoch;
    let schema = proto::schema_to_bytes(&meta.schema)?;
    let calls = shared
        .nodes
        .values()
        .filter(|n| !shared.is_down(n.id))
        .map(|n| {
            let mut c = n.grpc.clone();
            let req = pb::CreateTableRequest {
                epoch,
                table: meta.id,
                schema: schema.clone(),
                mirrored: meta.mirrored,
            };
            async move { c.create_table(req).await.map_err(|s| n.err(s)) }
        });
    for r in futures::future::join_all(calls).await {
        r?;
    }
    Ok(())
}

/// The system manager's failure detector: a Status heartbeat to every live
/// node each interval; a miss is probed again at once; two misses in a row
/// fail the node.
fn spawn_heartbeats(shared: Arc<Shared>) {
    tokio::spawn(async move {
        let interval = shared.config.heartbeat_interval;
        loop {
            tokio::time::sleep(interval).await;
            let live: Vec<NodeClient> = shared
                .nodes
                .values()
                .filter(|n| !shared.is_down(n.id))
                .cloned()
                .collect();
            let probes = live.into_iter().map(|n| probe(shared.clone(), n));
            futures::future::join_all(probes).await;
        }
    });
}

/// Heartbeat one node: a Status within the probe timeout, retried once at
/// once; two misses fail the node. A node that answers but reports a failed
/// disk has that disk failed over.
async fn probe(shared: Arc<Shared>, n: NodeClient) {
    let timeout = shared.config.probe_timeout;
    let mut last = String::new();
    for _ in 0..2 {
        let mut c = n.health.clone();
        match tokio::time::timeout(timeout, c.status(pb::StatusRequest {})).await {
            Ok(Ok(st)) => {
                shared.mark(n.id, true);
                shared.note_status(n.id, st.get_ref());
                for d in &st.get_ref().disks {
                    if !d.failed.is_empty() {
                        if let Err(e) = shared.fail_disk(n.id, d.disk, &d.failed).await {
                            warn!(node = n.id, disk = d.disk, error = %e, "disk failover failed");
                        }
                    }
                }
                return;
            }
            Ok(Err(s)) => last = s.message().to_string(),
            Err(_) => last = format!("no answer in {timeout:?}"),
        }
    }
    if let Err(e) = shared
        .fail_node(n.id, &format!("missed heartbeat and probe: {last}"))
        .await
    {
        warn!(node = n.id, error = %e, "failover failed");
    }
}

impl Shared {
    /// A query or a forward could not reach `node`: probe it now rather
    /// than at the next heartbeat.
    pub fn probe_now(self: &Arc<Self>, node: NodeId) {
        if self.is_down(node) {
            return;
        }
        if let Some(n) = self.nodes.get(&node).cloned() {
            tokio::spawn(probe(self.clone(), n));
        }
    }
}

async fn wait_for_nodes(shared: &Shared) -> Result<()> {
    let deadline = Instant::now() + shared.config.connect_timeout;
    for n in shared.nodes.values().filter(|n| !shared.is_down(n.id)) {
        loop {
            let mut c = n.grpc.clone();
            match c.status(pb::StatusRequest {}).await {
                Ok(st) => {
                    shared.mark(n.id, true);
                    shared.note_status(n.id, st.get_ref());
                    break;
                }
                Err(s) if Instant::now() < deadline => {
                    tracing::debug!(node = n.id, error = %s, "node not answering yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => {
                    shared.mark(n.id, false);
                    return Err(CoordinatorError::NodeUnreachable {
                        node: n.id,
                        address: n.address.clone(),
                        message: format!(
                            "no answer within {:?}: {}",
                            shared.config.connect_timeout,
                            s.message()
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Send every node its part of the map, with its peers' addresses and, for
/// each primary slice, whether to forward writes to the mirror.
pub async fn install_map(shared: &Shared) -> Result<()> {
    install_map_on(shared, false).await
}

/// [`install_map`]; with `skip_unreachable`, a node that does not answer is
/// logged and skipped instead of failing the call.
pub async fn install_map_on(shared: &Shared, skip_unreachable: bool) -> Result<()> {
    let map = shared.map();
    let peers: Vec<pb::Peer> = shared
        .nodes
        .values()
        .map(|n| pb::Peer {
            node: n.id,
            address: n.address.clone(),
        })
        .collect();
    let calls = shared
        .nodes
        .values()
        .filter(|n| !map.down.contains(&n.id))
        .map(|n| {
            let map = map.clone();
            let peers = peers.clone();
            async move {
        let mut slices = Vec::new();
        for e in &map.slices {
            if e.primary.node == n.id {
                slices.push(pb::SliceAssignment {
                    slice: e.slice,
                    disk: e.primary.disk,
                    segment: pb::Segment::Primary as i32,
                    mirror_node: e.mirror.map_or(0, |m| m.node),
                    mirror_active: e.mirror.is_some() && e.state == SliceState::InSync,
                });
            }
            if let Some(m) = e.mirror {
                if m.node == n.id {
                    slices.push(pb::SliceAssignment {
                        slice: e.slice,
                        disk: m.disk,
                        segment: pb::Segment::Mirror as i32,
                        ..Default::default()
                    });
                }
            }
        }
        let mut c = n.grpc.clone();
        let call = c.install_map(pb::InstallMapRequest {
            epoch: map.epoch,
            node: n.id,
            slices,
            peers,
            mirror_timeout_ms: shared.config.mirror_timeout.as_millis() as u64,
        });
        match tokio::time::timeout(shared.config.mirror_timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) if !skip_unreachable => Err(n.err(s)),
            Err(_) if !skip_unreachable => Err(CoordinatorError::NodeUnreachable {
                node: n.id,
                address: n.address.clone(),
                message: "no answer to InstallMap".into(),
            }),
            Ok(Err(s)) => {
                shared.mark(n.id, false);
                warn!(node = n.id, error = %s, epoch = map.epoch, "map not installed on an unreachable node");
                Ok(())
            }
            Err(_) => {
                shared.mark(n.id, false);
                warn!(node = n.id, epoch = map.epoch, "map not installed: node did not answer");
                Ok(())
            }
        }
            }
        });
    // In parallel: the window where nodes disagree on the epoch stays short.
    for r in futures::future::join_all(calls).await {
        r?;
    }
    Ok(())
}

impl Coordinator {
    /// Start a load (COPY) into `table`; rows become visible at `finish`.
    pub fn loader(&self, table: &str) -> Result<crate::load::Loader> {
        crate::load::Loader::new(self.shared.clone(), self.table(table)?)
    }
}
