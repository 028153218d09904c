//! The running coordinator: its configuration, startup (the persistence
//! seam, the map, the node clients, the system manager, the transaction
//! manager, the DataFusion session), and DDL fan-out to the nodes.
//!
//! It wires the parts together and runs DDL; it never changes the map (the
//! system manager does), never reads or writes disk images (everything on a
//! node goes through the node protocol), and plans nothing itself (the
//! query path's rules do).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use datafusion::execution::context::SessionContext;
use datafusion::prelude::SessionConfig;
use parking_lot::Mutex;
use slicedb_engine::proto::{self, pb};
use tracing::{debug, info, warn};

use crate::catalog::{Catalog, Distribution, TableMeta};
use crate::cluster::{Cluster, PlanTuning};
use crate::map::{DistMap, NodeShape, Ring};
use crate::meta::{Doc, FileMeta, MetaStore};
use crate::nodes::{connect_all, NodeEndpoint};
use crate::nodes::{deadline, WORK_DEADLINE};
use crate::query::SliceTable;
use crate::roles::Privilege;
use crate::session::current_session;
use crate::system::detector::wait_for_nodes;
use crate::system::{NodeHealth, SystemConfig};
use crate::txn::{Txn, TxnManager};
use crate::write::TableSinks;
use crate::{CoordinatorError, Result};

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
    /// How long a failed node or disk may stay away before its copies are
    /// regenerated onto a spare or the survivors.
    pub regen_delay: Duration,
    /// Bytes per second one slice copy (regeneration, resync) may take,
    /// per target node (0: no limit).
    pub copy_rate: u64,
    /// Tables with fewer rows take no runtime join filters (see
    /// `provider::BroadcastScanExec`): they are shipped whole, at once.
    pub runtime_filter_min_rows: u64,
    /// Tables with fewer rows are never the probe side of a join run on the
    /// nodes with its build side sent whole (see `fragment`): they are
    /// shipped to the coordinator's join instead.
    pub broadcast_join_min_rows: u64,
    /// Memory the coordinator's query execution may hold at once, over all
    /// statements (0: no limit). Sorts, joins and aggregates that would
    /// pass their share spill to `<data_dir>/spill` or fail with 53200.
    pub memory_limit: u64,
    /// The coordinator's cluster credentials: every node is called over
    /// mutual TLS and must present its own certificate. None: plain
    /// HTTP/2 (only for nodes without credentials, embedded in a test).
    pub cluster_tls: Option<slicedb_engine::cluster_tls::ClusterTls>,
}

impl CoordinatorConfig {
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
    pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
    /// Long enough for a node process restart or a reboot of a few
    /// seconds to rejoin (sending only what it missed) instead of being
    /// copied whole.
    pub const DEFAULT_REGEN_DELAY: Duration = Duration::from_secs(60);
    /// A sixth of this machine kind's 24 GiB: room for the nodes of
    /// `slicedb local` and their block caches beside it.
    pub const DEFAULT_MEMORY_LIMIT: u64 = 4 << 30;
    /// Per receiving node, while the nodes run queries or writes (idle
    /// nodes copy at full speed). Measured with benchmarks/regeneration.sh
    /// (2 GB per node, 2 cores, 2026-12-04, second run): a 9 ms query ran
    /// at 1.12x its idle p50 and 1.11x its idle p99 while a node was
    /// regenerated at this rate (100 MiB: 1.30x and 1.46x; unpaced: 1.92x
    /// and 4.59x).
    pub const DEFAULT_COPY_RATE: u64 = 25 << 20;
    /// Waiting for a build side puts a scan's latency on the critical path;
    /// at TPC-H SF 1 that paid for lineitem (6 M rows: Q08, Q09, Q17) but
    /// not for orders (1.5 M: Q03 108 -> 200 ms with its runtime filter).
    pub const DEFAULT_RUNTIME_FILTER_MIN_ROWS: u64 = 2_000_000;
    /// A join run on the nodes starts its probe scan only once its build
    /// side is computed and sent; below this many rows, shipping the probe
    /// table costs less than that wait.
    pub const DEFAULT_BROADCAST_JOIN_MIN_ROWS: u64 = 1_000_000;
}

/// The running coordinator.
pub struct Coordinator {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) ctx: Arc<SessionContext>,
}

impl Coordinator {
    /// Open (or create) the catalog and map, wait for every node, install the
    /// map on each, and register every table with a new DataFusion session.
    pub async fn start(config: CoordinatorConfig) -> Result<Coordinator> {
        let meta: Arc<dyn MetaStore> = Arc::new(FileMeta::open(&config.data_dir)?);
        let catalog = Arc::new(Mutex::new(Catalog::load(meta.clone())?));
        let shapes: Vec<NodeShape> = config
            .nodes
            .iter()
            .map(|n| NodeShape {
                node: n.id,
                disks: n.disks,
                spare: n.spare,
                spare_disks: n.spare_disks,
            })
            .collect();
        let map = open_or_build_map(meta.as_ref(), &shapes, config.slices_per_disk)?;
        let nodes = Arc::new(connect_all(&config.nodes, config.cluster_tls.as_ref())?);
        let health = Arc::new(NodeHealth::default());
        wait_for_nodes(&nodes, map.down(), &health, config.connect_timeout).await?;
        let (system, map) = crate::system::start(
            SystemConfig {
                heartbeat_interval: config.heartbeat_interval,
                probe_timeout: config.probe_timeout,
                mirror_timeout: config.mirror_timeout,
                regen_delay: config.regen_delay,
                copy_rate: config.copy_rate,
                shapes: shapes.clone(),
            },
            meta.clone(),
            map,
            nodes.clone(),
            health.clone(),
        )
        .await?;
        let txns = Arc::new(TxnManager::open(
            meta.as_ref(),
            catalog.clone(),
            nodes.clone(),
            map.clone(),
            system.clone(),
        )?);
        let cluster = Arc::new(Cluster::new(
            catalog,
            map,
            nodes,
            health,
            txns.clone(),
            system.clone(),
            PlanTuning {
                runtime_filter_min_rows: config.runtime_filter_min_rows,
                broadcast_join_min_rows: config.broadcast_join_min_rows,
            },
        ));
        // Finish whatever a crash left in doubt before serving anyone.
        let resolved = txns.resolve_once().await;
        if resolved > 0 {
            info!(resolved, "resolved in-doubt transactions at startup");
        }
        crate::txn::spawn_resolver(txns.clone(), Duration::from_millis(500));
        // Make sure every node knows every table (a node may have been
        // initialised after the table was created, or missed a DDL).
        let tables = cluster.catalog().lock().tables();
        for t in &tables {
            create_on_nodes(&cluster, t).await?;
        }
        // Temporary tables of the previous process's sessions: those
        // sessions are gone, and so are their tables.
        let leftovers = cluster.catalog().lock().temps(None);
        for t in leftovers {
            info!(table = %t.name, id = t.id, "dropping a temporary table left by a previous run");
            cluster.catalog().lock().remove_meta(&t)?;
            drop_on_nodes(&cluster, &t).await;
        }
        // Only now may the system manager resync and regenerate (each
        // changes the epoch, which the fan-out above must not race).
        system.attach(Arc::new(Healing {
            txns,
            cluster: cluster.clone(),
        }));

        let mut session = SessionConfig::new()
            .with_option_extension(crate::query::SlicedbOptions::default())
            .with_information_schema(true)
            .with_default_catalog_and_schema("datafusion", "public");
        // `text`/`varchar` columns are stored as Utf8 (the type the engine,
        // the hash and COPY know); Utf8View is an in-memory optimisation.
        session
            .options_mut()
            .sql_parser
            .map_string_types_to_utf8view = false;
        // `timestamptz` is a point in time (Arrow's timestamp with a time
        // zone, UTC), as in PostgreSQL; `timestamp` stays without one.
        session.options_mut().execution.time_zone = Some("+00:00".to_string());
        if config.target_partitions > 0 {
            session = session.with_target_partitions(config.target_partitions);
        }
        // A join's runtime filter reaches the nodes as bounds plus, for an
        // integer key, the build side's keys as an IN list
        // (`crate::query::filter::implied_by`): allow lists far longer than
        // DataFusion's default (150 values, meant for statistics pruning).
        // Shipping a probe side costs far more than a few thousand keys.
        let opts = &mut session.options_mut().optimizer;
        opts.hash_join_inlist_pushdown_max_distinct_values =
            crate::query::filter::MAX_RUNTIME_IN_LIST;
        opts.hash_join_inlist_pushdown_max_size = crate::query::filter::MAX_RUNTIME_IN_LIST * 16;
        // Joins of co-located tables are made adjacent (crate::query::colocate),
        // semi joins move below inner joins (crate::query::semijoin); co-located
        // joins and partial aggregates run on the nodes (crate::query::pushdown).
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(session)
            .with_runtime_env(crate::query::memory::runtime_env(
                config.memory_limit,
                &config.data_dir.join("spill"),
                None,
            )?)
            .with_default_features()
            .with_optimizer_rule(Arc::new(crate::query::colocate::CoLocateJoins))
            .with_optimizer_rule(Arc::new(crate::query::semijoin::PushSemiJoinDown))
            .with_physical_optimizer_rules(crate::query::optimizer_rules())
            .build();
        let ctx = Arc::new(SessionContext::new_with_state(state));
        ctx.register_udaf(crate::query::pgsum::PgSum::udaf());
        // Names resolve through the session's temporary tables first.
        let catalog = ctx
            .catalog("datafusion")
            .ok_or_else(|| CoordinatorError::Catalog("no default catalog".into()))?;
        let public = catalog
            .schema("public")
            .ok_or_else(|| CoordinatorError::Catalog("no public schema".into()))?;
        catalog.register_schema(
            "public",
            Arc::new(crate::session::SessionSchema::new(public, cluster.clone())),
        )?;
        // Schemas of CREATE SCHEMA, before their tables.
        for s in cluster.catalog().lock().schemas() {
            catalog.register_schema(
                &s,
                Arc::new(datafusion::catalog::MemorySchemaProvider::new()),
            )?;
        }
        for t in tables {
            let name = t.name.clone();
            ctx.register_table(
                name.as_str(),
                Arc::new(SliceTable::new(
                    cluster.clone(),
                    t,
                    TableSinks::new(cluster.clone()),
                )),
            )?;
        }
        crate::views::register(&ctx, &cluster)?;
        let coord = Coordinator { cluster, ctx };
        coord.register_views().await?;
        info!(
            nodes = coord.cluster.nodes().len(),
            slices = coord.cluster.map().slice_count(),
            "coordinator ready"
        );
        Ok(coord)
    }

    /// The DataFusion session every SQL connection plans in.
    pub fn session(&self) -> Arc<SessionContext> {
        self.ctx.clone()
    }

    /// The cluster as the query and write paths see it.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The table `name` as the current session sees it: its temporary
    /// table of that name, else the permanent one.
    pub fn table(&self, name: &str) -> Result<Arc<TableMeta>> {
        let cat = self.cluster.catalog().lock();
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
        if let Some((schema_name, _)) = name.split_once('.') {
            if !self.cluster.catalog().lock().has_schema(schema_name) {
                return Err(CoordinatorError::SchemaNotFound(schema_name.to_string()));
            }
            if session.is_some() {
                return Err(CoordinatorError::NotSupported(
                    "a temporary table in a schema".into(),
                ));
            }
        }
        // A system view has the name (a session's temporary table may
        // shadow a permanent one, as in PostgreSQL, but not a view).
        let shadowed = current_session()
            .and_then(|s| self.cluster.catalog().lock().get_temp(s, name))
            .is_some();
        if !shadowed
            && self.ctx.table_exist(name)?
            && self.cluster.catalog().lock().get(name).is_none()
        {
            return Err(CoordinatorError::TableExists(name.to_string()));
        }
        for f in schema.fields() {
            if !crate::write::load::storable(f.data_type()) {
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
                if !crate::write::hash::hashable(dt) {
                    return Err(CoordinatorError::NotSupported(format!(
                        "distribution key column \"{c}\" of type {dt}"
                    )));
                }
            }
        }
        let meta = {
            let mut cat = self.cluster.catalog().lock();
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
            let meta = cat.add(name, schema, distribution, mirrored, session)?;
            // The creating role owns it (none: the superusers' table).
            if let Some(role) = crate::privileges::current_role() {
                cat.change_acl(meta.id, |a| a.owner = Some(role.to_string()))?;
            }
            meta
        };
        if let Err(e) = create_on_nodes(&self.cluster, &meta).await {
            // Leave no half-created table behind in the catalog.
            let _ = self.cluster.catalog().lock().remove_meta(&meta);
            return Err(e);
        }
        // Temporary tables resolve through the session schema, never here.
        if session.is_none() {
            self.ctx.register_table(
                name,
                Arc::new(SliceTable::new(
                    self.cluster.clone(),
                    meta,
                    TableSinks::new(self.cluster.clone()),
                )),
            )?;
        }
        Ok(())
    }

    /// Whether the session has temporary tables.
    pub fn has_temp_tables(&self, session: u64) -> bool {
        !self
            .cluster
            .catalog()
            .lock()
            .temps(Some(session))
            .is_empty()
    }

    /// A session ended: drop its temporary tables.
    pub async fn end_session(&self, session: u64) {
        let temps = self.cluster.catalog().lock().temps(Some(session));
        for t in temps {
            match self.cluster.catalog().lock().remove_meta(&t) {
                Ok(_) => {}
                Err(e) => {
                    warn!(table = %t.name, error = %e, "temporary table not dropped at session end");
                    continue;
                }
            }
            drop_on_nodes(&self.cluster, &t).await;
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
        let meta = {
            let mut cat = self.cluster.catalog().lock();
            crate::privileges::check_owner(&cat, &found)?;
            cat.remove_meta(&found)?
        };
        if meta.session.is_none() {
            self.ctx.deregister_table(name)?;
        }
        drop_on_nodes(&self.cluster, &meta).await;
        Ok(())
    }
}

/// Drop a table's blocks on every live node (the catalog no longer names it).
async fn drop_on_nodes(cluster: &Cluster, meta: &TableMeta) {
    let epoch = cluster.map().epoch();
    for n in cluster.live_nodes() {
        let mut c = n.grpc.clone();
        if let Err(s) = c
            .drop_table(deadline(
                pb::DropTableRequest {
                    epoch,
                    table: meta.id,
                },
                WORK_DEADLINE,
            ))
            .await
        {
            // Its blocks are orphaned on that node until it is reached again.
            warn!(node = n.id, table = meta.id, error = %s, "drop on node failed");
        }
    }
}

/// What the system manager needs of transactions and the catalog.
struct Healing {
    txns: Arc<TxnManager>,
    cluster: Arc<Cluster>,
}

impl crate::system::Hooks for Healing {
    fn oldest_unfinished(&self) -> slicedb_engine::Xid {
        self.txns.oldest_unfinished()
    }

    fn xid_high_water(&self) -> slicedb_engine::Xid {
        self.txns.peek_xid()
    }

    fn begin_copy(&self) -> Result<slicedb_engine::Xid> {
        self.txns.begin_copy()
    }

    fn end_copy(&self, xid: slicedb_engine::Xid) {
        self.txns.end_copy(xid)
    }

    fn ensure_tables(
        &self,
        node: slicedb_engine::NodeId,
        epoch: u64,
    ) -> futures::future::BoxFuture<'_, Result<Vec<slicedb_engine::TableId>>> {
        Box::pin(async move {
            let n = self.cluster.node(node)?.clone();
            let tables = self.cluster.catalog().lock().tables();
            let mut mirrored = Vec::new();
            for t in &tables {
                let mut c = n.grpc.clone();
                c.create_table(deadline(
                    pb::CreateTableRequest {
                        epoch,
                        table: t.id,
                        schema: proto::schema_to_bytes(&t.node_schema()?)?,
                        mirrored: t.mirrored,
                    },
                    WORK_DEADLINE,
                ))
                .await
                .map_err(|s| n.err(s))?;
                if t.mirrored {
                    mirrored.push(t.id);
                }
            }
            Ok(mirrored)
        })
    }
}

/// Create (or, after ALTER TABLE, evolve) a table on every live node.
pub(crate) async fn create_on_nodes(cluster: &Cluster, meta: &TableMeta) -> Result<()> {
    let epoch = cluster.map().epoch();
    let schema = proto::schema_to_bytes(&meta.node_schema()?)?;
    let calls = cluster.live_nodes().map(|n| {
        let mut c = n.grpc.clone();
        let req = pb::CreateTableRequest {
            epoch,
            table: meta.id,
            schema: schema.clone(),
            mirrored: meta.mirrored,
        };
        async move {
            c.create_table(deadline(req, WORK_DEADLINE))
                .await
                .map_err(|s| n.err(s))
        }
    });
    for r in futures::future::join_all(calls).await {
        r?;
    }
    Ok(())
}

impl Coordinator {
    /// Start a load (COPY) into `table`; rows become visible at `finish`.
    pub fn loader(&self, table: &str) -> Result<crate::write::Loader> {
        let meta = self.check_table(table, Privilege::Insert)?;
        crate::write::Loader::new(self.cluster.clone(), meta)
    }

    /// Table `name` if the current role may do `p` on it (42501 if not).
    pub fn check_table(&self, name: &str, p: Privilege) -> Result<Arc<TableMeta>> {
        let meta = self.table(name)?;
        crate::privileges::check(&self.cluster.catalog().lock(), &meta, p)?;
        Ok(meta)
    }

    /// Table `name` if the current role owns it or is a superuser (42501
    /// if not).
    pub fn check_owner(&self, name: &str) -> Result<Arc<TableMeta>> {
        let meta = self.table(name)?;
        crate::privileges::check_owner(&self.cluster.catalog().lock(), &meta)?;
        Ok(meta)
    }

    /// Refused (42501) unless the current role is a superuser.
    pub fn require_superuser(&self, what: &str) -> Result<()> {
        crate::privileges::require_superuser(&self.cluster.catalog().lock(), what)
    }

    /// DELETE FROM table [AS alias] [USING ...] [WHERE ...] [RETURNING
    /// ...], in `txn`.
    pub async fn delete(
        &self,
        txn: &Arc<Txn>,
        table: &str,
        q: &crate::write::DmlQuery,
    ) -> Result<crate::write::DmlOutcome> {
        let meta = self.check_table(table, Privilege::Delete)?;
        crate::write::dml::delete(&self.cluster, &self.ctx, txn, &meta, q).await
    }

    /// UPDATE table [AS alias] SET col = expr, ... [FROM ...] [WHERE ...]
    /// [RETURNING ...], in `txn`. `assignments` are (column, SQL
    /// expression) pairs.
    pub async fn update(
        &self,
        txn: &Arc<Txn>,
        table: &str,
        assignments: &[(String, String)],
        q: &crate::write::DmlQuery,
    ) -> Result<crate::write::DmlOutcome> {
        let meta = self.check_table(table, Privilege::Update)?;
        crate::write::dml::update(&self.cluster, &self.ctx, txn, &meta, assignments, q).await
    }

    /// INSERT ... RETURNING in `txn`: `insert` is the statement without its
    /// RETURNING, `returning` its select items over the inserted rows (the
    /// table named `alias`).
    pub async fn insert_returning(
        &self,
        txn: &Arc<Txn>,
        table: &str,
        insert: &str,
        alias: &str,
        returning: &[String],
    ) -> Result<crate::write::DmlOutcome> {
        let meta = self.table(table)?;
        crate::write::dml::insert_returning(
            &self.cluster,
            &self.ctx,
            txn,
            &meta,
            insert,
            alias,
            returning,
        )
        .await
    }

    /// GROOM TABLE on every node and both copies. Returns (blocks, rows).
    pub async fn groom(&self, table: &str) -> Result<(u64, u64)> {
        let meta = self.check_owner(table)?;
        crate::write::maintenance::groom(&self.cluster, &meta).await
    }

    /// Regenerate every failed node's and disk's copies now, without
    /// waiting for `regen_delay` (REGENERATE); a node that does not answer
    /// a probe is failed first. Returns once the new copies are placed.
    pub async fn regenerate_now(&self) -> Result<()> {
        self.require_superuser("start regeneration")?;
        self.cluster.regenerate_now().await;
        Ok(())
    }

    /// Compare the primary and mirror of every slice of every table.
    pub async fn verify(&self) -> Result<Vec<crate::write::VerifyRow>> {
        crate::write::maintenance::verify(&self.cluster).await
    }
}

/// The stored map (a version 1 map is converted, and written back as the
/// current version), or a new ring map for `nodes`, persisted. A stored map
/// that does not match the configured nodes is an error: moving slices is a
/// topology change, not a restart.
pub fn open_or_build_map(
    meta: &dyn MetaStore,
    nodes: &[NodeShape],
    slices_per_disk: u32,
) -> Result<DistMap> {
    if let Some(bytes) = meta.read(Doc::Map)? {
        let origin = meta.describe(Doc::Map);
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| CoordinatorError::Catalog(format!("{origin}: {e}")))?;
        let (map, converted) = DistMap::from_json(text, &origin)?;
        map.check_matches(nodes)?;
        if converted {
            info!(path = %origin, "distribution map converted to version {}", crate::map::MAP_VERSION);
            meta.write(Doc::Map, &map.to_json()?)?;
        }
        return Ok(map);
    }
    let map = DistMap::build(&Ring, nodes, slices_per_disk)?;
    meta.write(Doc::Map, &map.to_json()?)?;
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::tests::shape;
    use crate::map::Location;

    #[test]
    fn stored_map_is_reused_and_a_different_topology_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let meta = FileMeta::open(dir.path()).unwrap();
        let a = open_or_build_map(&meta, &shape(3, 1), 4).unwrap();
        let b = open_or_build_map(&meta, &shape(3, 1), 4).unwrap();
        assert_eq!(a, b);
        let e = open_or_build_map(&meta, &shape(2, 1), 4).unwrap_err();
        assert!(matches!(e, CoordinatorError::Config(_)), "{e}");
    }

    #[test]
    fn a_saved_version_1_map_is_converted_and_written_back_at_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("distmap.json"),
            include_str!("map/testdata/distmap-v1.json"),
        )
        .unwrap();
        let meta = FileMeta::open(dir.path()).unwrap();
        let map = open_or_build_map(&meta, &shape(4, 1), 2).unwrap();
        assert_eq!(map.epoch(), 7);
        assert_eq!(
            map.slices()[3].serving().unwrap(),
            (Location { node: 0, disk: 0 }, true)
        );
        let stored = std::fs::read_to_string(dir.path().join("distmap.json")).unwrap();
        assert!(stored.contains("\"version\": 2"), "{stored}");
        assert!(stored.contains("\"copies\""), "{stored}");
        // Read again: the same map, no longer a conversion.
        assert_eq!(open_or_build_map(&meta, &shape(4, 1), 2).unwrap(), map);
    }
}
