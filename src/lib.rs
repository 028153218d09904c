//! slicedb: the CLI's building blocks and the embedded API.
//!
//! [`LocalCluster`] starts a coordinator and N nodes in this process, talking
//! real gRPC on loopback, with disk images under one directory, and serves the
//! PostgreSQL wire protocol. [`run_node`] and [`run_coordinator`] are the same
//! parts as separate processes, configured by a [`config::ClusterConfig`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), slicedb::Error> {
//! let cluster = slicedb::LocalCluster::start(slicedb::LocalOptions::new("./data")).await?;
//! cluster.sql("CREATE TABLE t (k bigint, v text) DISTRIBUTE ON (k)").await?;
//! cluster.sql("INSERT INTO t VALUES (1, 'one'), (2, 'two')").await?;
//! let batches = cluster.sql("SELECT count(*) FROM t").await?;
//! println!("{}", arrow::util::pretty::pretty_format_batches(&batches).unwrap());
//! cluster.shutdown().await;
//! # Ok(()) }
//! ```

pub mod allocator;
pub mod config;
pub mod metrics;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use slicedb_coordinator::{Coordinator, CoordinatorConfig, NodeEndpoint};
use slicedb_engine::cluster_tls::{ClusterTls, Member};
use slicedb_engine::server::{NodeServer, PeerRepair, RepairPolicy};
use slicedb_engine::store::{DiskIds, DiskStore, InitOptions, StoreOptions};
use slicedb_sql::frontend::Frontend;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The one error type of the slicedb library crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Engine(#[from] slicedb_engine::EngineError),
    #[error(transparent)]
    Coordinator(#[from] slicedb_coordinator::CoordinatorError),
    #[error(transparent)]
    Sql(#[from] slicedb_sql::SqlError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A node server that runs query fragments with the coordinator's
/// DataFusion runner (partial aggregates next to the data), holding at
/// most `memory_limit` bytes (0: no limit) and spilling into `spill_dir`.
pub fn node_server(
    id: u32,
    disks: Vec<Arc<DiskStore>>,
    repair: Arc<PeerRepair>,
    memory_limit: u64,
    spill_dir: &Path,
    scrub_rate: u64,
) -> Result<NodeServer, Error> {
    let server = NodeServer::with_repair(id, disks, repair);
    server.set_scrub_rate(scrub_rate);
    let runner = slicedb_coordinator::query::Runner::with_memory(memory_limit, spill_dir)?;
    // Mirror forwards of a transaction larger than memory spill too (after
    // the runner, which empties `spill_dir` when it starts).
    server.spill_staging_to(
        spill_dir.join("staging"),
        slicedb_engine::mirror::DEFAULT_STAGING_MEMORY,
    )?;
    server.set_fragment_runner(Arc::new(runner));
    Ok(server)
}

/// The cluster id of `slicedb local`'s disks and certificates.
const LOCAL_CLUSTER_ID: &str = "local";

/// Memory each node's query fragments may hold unless configured.
pub const DEFAULT_NODE_MEMORY_LIMIT: u64 = 2 << 30;

/// Sessions connected at once unless configured (PostgreSQL's default).
pub const DEFAULT_MAX_CONNECTIONS: usize = 100;

/// 16-byte cluster id written into every disk image.
pub fn cluster_uuid(name: &str) -> [u8; 16] {
    let a = crc32c::crc32c(name.as_bytes());
    let b = crc32c::crc32c_append(a, b"slicedb-cluster");
    let c = crc32c::crc32c_append(b, name.as_bytes());
    let d = crc32c::crc32c_append(c, &(name.len() as u64).to_le_bytes());
    let mut out = [0u8; 16];
    for (i, w) in [a, b, c, d].iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Open this node's disk images, creating the missing ones.
pub fn open_disks(
    cluster_id: &str,
    node: u32,
    dir: &Path,
    disks: u32,
    disk_size: u64,
    cache_bytes: u64,
    repair: Arc<PeerRepair>,
) -> Result<Vec<Arc<DiskStore>>, Error> {
    let opts = StoreOptions {
        cache_bytes,
        repair,
        ..StoreOptions::default()
    };
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for d in 0..disks {
        let path = dir.join(format!("disk-{d}.img"));
        let ids = DiskIds {
            cluster_id: cluster_uuid(cluster_id),
            node_id: node,
            disk_id: d,
        };
        let store = if path.exists() {
            let s = DiskStore::open(&path, opts.clone())?;
            let found = s.ids();
            if found.cluster_id != ids.cluster_id || found.node_id != node || found.disk_id != d {
                return Err(Error::Config(format!(
                    "{} belongs to node {} disk {} of another cluster or node; refusing to use it as node {node} disk {d}",
                    path.display(),
                    found.node_id,
                    found.disk_id
                )));
            }
            s
        } else {
            let init = InitOptions::new(disk_size);
            DiskStore::create(&path, ids, init, opts.clone())?
        };
        out.push(Arc::new(store));
    }
    Ok(out)
}

/// Options of an embedded local cluster.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub nodes: u32,
    /// Spare nodes started besides `nodes` (ids after theirs): no slices
    /// when the cluster is created, kept in reserve.
    pub spares: u32,
    /// How long a failed node may stay away before its copies are
    /// regenerated elsewhere.
    pub regen_delay: Duration,
    /// Bytes per second one slice copy may take (0: no limit).
    pub copy_rate: u64,
    /// `statement_timeout` of sessions that set none (zero: no limit).
    pub statement_timeout: Duration,
    /// `idle_session_timeout` of sessions that set none (zero: none).
    pub idle_session_timeout: Duration,
    /// `idle_in_transaction_session_timeout` of sessions that set none
    /// (zero: none).
    pub idle_in_transaction_session_timeout: Duration,
    /// Memory the coordinator's query execution may hold (0: no limit).
    pub memory_limit: u64,
    /// Memory each node's query fragments may hold (0: no limit).
    pub node_memory_limit: u64,
    /// Most sessions connected at once (more are refused with 53300).
    pub max_connections: usize,
    /// Disk images of each node.
    pub disks_per_node: u32,
    /// Of those, the last `spare_disks` hold no slices when the cluster is
    /// created: each takes over a failed disk of its node.
    pub spare_disks: u32,
    pub data_dir: PathBuf,
    /// Where to accept PostgreSQL connections; port 0 picks a free one.
    /// `None` serves no wire protocol (embedded use only).
    pub listen: Option<SocketAddr>,
    pub disk_size: u64,
    pub slices_per_disk: u32,
    /// Memory for decoded block columns of each node's disk (0: none).
    pub cache_size: u64,
    /// Bytes per second each node's background scrubber reads from each
    /// disk (0: none).
    pub scrub_rate: u64,
    /// When damaged blocks fail a disk over (so many within a window).
    pub bad_blocks: RepairPolicy,
    /// Tables with fewer rows take no runtime join filters.
    pub runtime_filter_min_rows: u64,
    /// Tables with fewer rows are not joined on the nodes with a build side
    /// sent whole.
    pub broadcast_join_min_rows: u64,
    /// Where the coordinator serves its metrics (None: no endpoints); the
    /// nodes serve theirs on the ports right above (free ports for port 0).
    pub metrics_listen: Option<SocketAddr>,
    /// Who may connect and how (host-based rules, TLS, the bootstrap
    /// superuser); the default trusts loopback connections only.
    pub auth: slicedb_sql::auth::AuthConfig,
}

impl LocalOptions {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        LocalOptions {
            nodes: 4,
            spares: 0,
            regen_delay: CoordinatorConfig::DEFAULT_REGEN_DELAY,
            copy_rate: CoordinatorConfig::DEFAULT_COPY_RATE,
            statement_timeout: Duration::ZERO,
            idle_session_timeout: Duration::ZERO,
            idle_in_transaction_session_timeout: Duration::ZERO,
            memory_limit: CoordinatorConfig::DEFAULT_MEMORY_LIMIT,
            node_memory_limit: DEFAULT_NODE_MEMORY_LIMIT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            disks_per_node: 1,
            spare_disks: 0,
            data_dir: data_dir.into(),
            listen: None,
            disk_size: 4 << 30,
            slices_per_disk: 4,
            cache_size: 1 << 30,
            scrub_rate: slicedb_engine::server::DEFAULT_SCRUB_RATE,
            bad_blocks: RepairPolicy::default(),
            runtime_filter_min_rows: CoordinatorConfig::DEFAULT_RUNTIME_FILTER_MIN_ROWS,
            broadcast_join_min_rows: CoordinatorConfig::DEFAULT_BROADCAST_JOIN_MIN_ROWS,
            metrics_listen: None,
            auth: Default::default(),
        }
    }
}

/// A coordinator and N nodes in this process.
pub struct LocalCluster {
    frontend: Arc<Frontend>,
    pg_addr: Option<SocketAddr>,
    /// The coordinator's metrics endpoint and each node's.
    metrics: Option<(SocketAddr, Vec<(u32, SocketAddr)>)>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl LocalCluster {
    pub async fn start(opts: LocalOptions) -> Result<LocalCluster, Error> {
        if let Some(listen) = opts.listen {
            opts.auth.check_listen(&listen)?;
        }
        if opts.nodes == 0 {
            return Err(Error::Config("--nodes must be at least 1".into()));
        }
        if opts.disks_per_node == 0 || opts.disks_per_node > 64 {
            return Err(Error::Config("--disks-per-node must be in 1..=64".into()));
        }
        if opts.spare_disks >= opts.disks_per_node {
            return Err(Error::Config(format!(
                "--spare-disks {} leaves no disk for slices: it must be below --disks-per-node {}",
                opts.spare_disks, opts.disks_per_node
            )));
        }
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut endpoints = Vec::new();
        let mut node_metrics = Vec::new();
        // The cluster's CA and every member's certificate, made once and
        // kept with the data: the parts call each other over mutual TLS.
        let certs = opts.data_dir.join("certs");
        let cluster = cluster_uuid(LOCAL_CLUSTER_ID);
        let members: Vec<Member> = std::iter::once(Member::Coordinator)
            .chain((0..opts.nodes + opts.spares).map(Member::Node))
            .collect();
        slicedb_engine::cluster_tls::issue(&certs, &cluster, &members)?;
        for id in 0..opts.nodes + opts.spares {
            let dir = opts.data_dir.join(format!("node-{id}"));
            let repair = PeerRepair::new(opts.bad_blocks);
            let disks = open_disks(
                LOCAL_CLUSTER_ID,
                id,
                &dir,
                opts.disks_per_node,
                opts.disk_size,
                opts.cache_size,
                repair.clone(),
            )?;
            let server = node_server(
                id,
                disks,
                repair,
                opts.node_memory_limit,
                &dir.join("spill"),
                opts.scrub_rate,
            )?;
            server.set_cluster_tls(ClusterTls::load(&certs, &cluster, Member::Node(id))?);
            if let Some(m) = opts.metrics_listen {
                let at = metrics::local_node_addr(m, id)?;
                let bound = metrics::serve_node(server.clone(), at, stopped(rx.clone())).await?;
                node_metrics.push((id, bound));
            }
            let (addr, task) = server
                .spawn(
                    "127.0.0.1:0".parse().expect("literal address"),
                    stopped(rx.clone()),
                )
                .await?;
            tasks.push(tokio::spawn(async move {
                if let Ok(Err(e)) = task.await {
                    tracing::error!(error = %e, "node server stopped");
                }
            }));
            endpoints.push(NodeEndpoint {
                id,
                address: addr.to_string(),
                disks: opts.disks_per_node,
                spare: id >= opts.nodes,
                spare_disks: opts.spare_disks,
            });
        }
        let coord = Coordinator::start(CoordinatorConfig {
            data_dir: opts.data_dir.join("coordinator"),
            nodes: endpoints,
            slices_per_disk: opts.slices_per_disk,
            connect_timeout: Duration::from_secs(30),
            target_partitions: 0,
            mirror_timeout: Duration::from_secs(2),
            heartbeat_interval: CoordinatorConfig::DEFAULT_HEARTBEAT_INTERVAL,
            probe_timeout: CoordinatorConfig::DEFAULT_PROBE_TIMEOUT,
            regen_delay: opts.regen_delay,
            copy_rate: opts.copy_rate,
            runtime_filter_min_rows: opts.runtime_filter_min_rows,
            broadcast_join_min_rows: opts.broadcast_join_min_rows,
            memory_limit: opts.memory_limit,
            cluster_tls: Some(ClusterTls::load(&certs, &cluster, Member::Coordinator)?),
        })
        .await?;
        let frontend = Frontend::new(Arc::new(coord))?;
        frontend.set_statement_timeout(Some(opts.statement_timeout));
        frontend.set_idle_timeouts(
            opts.idle_session_timeout,
            opts.idle_in_transaction_session_timeout,
        );
        frontend.set_max_connections(opts.max_connections);
        frontend.set_auth(&opts.auth)?;
        let metrics = match opts.metrics_listen {
            Some(at) => {
                let nodes = node_metrics.clone();
                let bound =
                    metrics::serve_coordinator(frontend.clone(), nodes, at, stopped(rx.clone()))
                        .await?;
                Some((bound, node_metrics))
            }
            None => None,
        };
        let mut pg_addr = None;
        if let Some(listen) = opts.listen {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            pg_addr = Some(listener.local_addr()?);
            let fe = frontend.clone();
            let r = rx.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = slicedb_sql::server::serve(fe, listener, stopped(r)).await {
                    tracing::error!(error = %e, "PostgreSQL server stopped");
                }
            }));
        }
        Ok(LocalCluster {
            frontend,
            pg_addr,
            metrics,
            stop,
            tasks,
        })
    }

    /// Run SQL (CREATE TABLE ... DISTRIBUTE ON, INSERT, SELECT, ...).
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>, Error> {
        Ok(self.frontend.execute(sql).await?)
    }

    /// Load record batches into a table in one transaction (COPY's path).
    pub async fn load(&self, table: &str, batches: Vec<RecordBatch>) -> Result<u64, Error> {
        let mut loader = self.frontend.coordinator().loader(table)?;
        for b in batches {
            loader.push(b).await?;
        }
        Ok(loader.finish().await?)
    }

    /// The PostgreSQL address, if the cluster serves one.
    pub fn pg_addr(&self) -> Option<SocketAddr> {
        self.pg_addr
    }

    /// The coordinator's metrics address and each node's, if served.
    pub fn metrics_addrs(&self) -> Option<&(SocketAddr, Vec<(u32, SocketAddr)>)> {
        self.metrics.as_ref()
    }

    pub fn pg_url(&self) -> Option<String> {
        self.pg_addr.map(pg_url)
    }

    /// Stop serving and wait for every part to finish.
    pub async fn shutdown(self) {
        // The failure detector must not mistake our own nodes stopping for
        // failures (and fail them over in the stored map).
        self.frontend.coordinator().cluster().begin_shutdown();
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

pub fn pg_url(addr: SocketAddr) -> String {
    format!("postgres://slicedb@{addr}/slicedb")
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// `slicedb node --config F --id N`: serve until `shutdown` resolves.
/// `ready` is called with the bound address once the node accepts commands.
pub async fn run_node(
    cfg: &config::ClusterConfig,
    id: u32,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), Error> {
    let n = cfg.node(id)?;
    // Before anything is created: a node without credentials never starts.
    let credentials = cfg.credentials(Member::Node(id))?;
    let repair = PeerRepair::new(RepairPolicy {
        limit: n.bad_block_limit,
        window: config::parse_duration(&n.bad_block_window)?,
    });
    let disks = open_disks(
        &cfg.cluster_id,
        id,
        &n.data_dir,
        n.disks,
        config::parse_size(&n.disk_size)?,
        config::parse_size(&n.cache_size)?,
        repair.clone(),
    )?;
    let addr: SocketAddr = n
        .address
        .parse()
        .map_err(|e| Error::Config(format!("node {id} address {}: {e}", n.address)))?;
    let memory_limit = config::parse_size(&n.memory_limit)?;
    let server = node_server(
        id,
        disks,
        repair,
        memory_limit,
        &n.data_dir.join("spill"),
        config::parse_size(&n.scrub_rate)?,
    )?;
    server.set_cluster_tls(credentials);
    let (stop, stopping) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let what = format!("node {id} metrics_address");
    if let Some(at) = metrics::resolve(&n.metrics_address, &n.address, &what)? {
        metrics::serve_node(server.clone(), at, stopped(stopping)).await?;
    }
    let (bound, task) = server.spawn(addr, shutdown).await?;
    ready(bound);
    task.await
        .map_err(|e| Error::Config(format!("node task failed: {e}")))??;
    Ok(())
}

/// `slicedb coordinator --config F`: serve PostgreSQL until `shutdown`.
pub async fn run_coordinator(
    cfg: &config::ClusterConfig,
    shutdown: impl std::future::Future<Output = ()>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), Error> {
    // Unlike `slicedb local`, a cluster of processes says who may connect.
    if !cfg.coordinator.auth().has_rules() {
        return Err(Error::Config(
            "a multi-process cluster needs host-based rules: add hba = [...] to [coordinator] \
             in the cluster file, e.g. hba = [\"host all all 127.0.0.1/32 trust\"] \
             (docs/configuration.md, \"Authentication\")"
                .into(),
        ));
    }
    let coord = Coordinator::start(CoordinatorConfig {
        data_dir: cfg.coordinator.data_dir.clone(),
        nodes: cfg
            .nodes
            .iter()
            .map(|n| NodeEndpoint {
                id: n.id,
                address: n.address.clone(),
                disks: n.disks,
                spare: n.spare,
                spare_disks: n.spare_disks,
            })
            .collect(),
        slices_per_disk: cfg.slices_per_disk,
        connect_timeout: config::parse_duration(&cfg.coordinator.connect_timeout)?,
        target_partitions: 0,
        mirror_timeout: config::parse_duration(&cfg.coordinator.mirror_timeout)?,
        heartbeat_interval: config::parse_duration(&cfg.coordinator.heartbeat_interval)?,
        probe_timeout: config::parse_duration(&cfg.coordinator.probe_timeout)?,
        regen_delay: config::parse_duration(&cfg.coordinator.regen_delay)?,
        copy_rate: config::parse_size(&cfg.coordinator.copy_rate)?,
        runtime_filter_min_rows: cfg.coordinator.runtime_filter_min_rows,
        broadcast_join_min_rows: cfg.coordinator.broadcast_join_min_rows,
        memory_limit: config::parse_size(&cfg.coordinator.memory_limit)?,
        cluster_tls: Some(cfg.credentials(Member::Coordinator)?),
    })
    .await?;
    let frontend = Frontend::new(Arc::new(coord))?;
    frontend.set_statement_timeout(Some(config::parse_duration(
        &cfg.coordinator.statement_timeout,
    )?));
    frontend.set_idle_timeouts(
        config::parse_duration(&cfg.coordinator.idle_session_timeout)?,
        config::parse_duration(&cfg.coordinator.idle_in_transaction_session_timeout)?,
    );
    frontend.set_max_connections(cfg.coordinator.max_connections);
    let auth = cfg.coordinator.auth();
    let listener = tokio::net::TcpListener::bind(&cfg.coordinator.listen).await?;
    auth.check_listen(&listener.local_addr()?)?;
    frontend.set_auth(&auth)?;
    tracing::info!("{}", auth.describe());
    let (stop, stopping) = watch::channel(false);
    let what = "coordinator metrics_listen";
    let listen = listener.local_addr()?.to_string();
    if let Some(at) = metrics::resolve(&cfg.coordinator.metrics_listen, &listen, what)? {
        let mut nodes = Vec::new();
        for n in &cfg.nodes {
            let what = format!("node {} metrics_address", n.id);
            if let Some(a) = metrics::resolve(&n.metrics_address, &n.address, &what)? {
                nodes.push((n.id, a));
            }
        }
        metrics::serve_coordinator(frontend.clone(), nodes, at, stopped(stopping)).await?;
    }
    ready(listener.local_addr()?);
    slicedb_sql::server::serve(frontend, listener, shutdown).await?;
    let _ = stop.send(true);
    Ok(())
}
