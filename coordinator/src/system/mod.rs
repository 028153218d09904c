//! The system manager: the one task that changes the distribution map.
//!
//! It takes [`Event`]s over a channel (a heartbeat's outcome, a node a scan
//! or a write could not reach, a disk fault a node reported, a mirror that
//! missed a commit; later admin commands), decides, and for every change:
//! applies it to its own copy of the map (epoch + 1), persists it through
//! the persistence seam, publishes it to every [`MapReader`], installs it
//! on every node it can reach, and only then answers whoever waits. It holds
//! no lock while it calls a node: events simply queue behind the one being
//! handled.
//!
//! It alone owns the [`MapWriter`] (private to this module): nothing else
//! can publish a map. Everyone else reads through a [`MapReader`] and
//! reports through a [`SystemHandle`]. Failure detection (`detector`),
//! failover (`failover`), a failed node that answers again (`rejoin`),
//! bringing copies that are behind back in sync (`resync`) and map
//! installation (`install`) are a file each; regeneration onto spares,
//! repair scheduling and topology changes will be further files beside
//! them.
//!
//! What it needs of transactions and the catalog (which import it) comes
//! through [`Hooks`], attached once they exist.

pub mod detector;
mod failover;
mod install;
mod regen;
mod rejoin;
mod resync;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use slicedb_engine::proto::pb;
use slicedb_engine::{NodeId, SliceId, TableId, Xid};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use crate::map::DistMap;
use crate::meta::{Doc, MetaStore};
use crate::nodes::NodeSet;
use crate::{CoordinatorError, Result};

pub use detector::NodeHealth;
pub use resync::CopyProgress;

/// What the system manager reacts to.
#[derive(Debug)]
pub(crate) enum Event {
    /// A heartbeat or probe of `node` finished.
    Probed { node: NodeId, outcome: Probe },
    /// A scan or a write could not reach `node`: probe it now.
    Unreachable { node: NodeId },
    /// These slices' mirrors missed a commit; answer once every node that
    /// can be reached knows, before the commit is acknowledged.
    MirrorsMissedCommit {
        slices: BTreeSet<(SliceId, NodeId)>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// What the manager needs of transactions and the catalog.
    Attach(Arc<dyn Hooks>),
    /// A resync round finished.
    ResyncDone(Box<resync::RoundOutcome>),
    /// An admin asked: regenerate every failed node and disk now (a node
    /// that misses a probe first failed); answered once placed.
    RegenerateNow(tokio::sync::oneshot::Sender<()>),
}

/// What the system manager needs from the transaction manager and the
/// catalog, which are built after it and import it.
pub trait Hooks: Send + Sync {
    /// Every transaction with an xid below this has finished: committed on
    /// every copy it must reach, or aborted.
    fn oldest_unfinished(&self) -> Xid;
    /// Every xid handed out so far is below this.
    fn xid_high_water(&self) -> Xid;
    /// A fresh xid for a copy's own pending change on its target, counted
    /// active (the resolver must not abort it) until [`Hooks::end_copy`].
    fn begin_copy(&self) -> Result<Xid>;
    /// The copy under `xid` is over (committed or aborted on its target).
    fn end_copy(&self, xid: Xid);
    /// Create every table on `node` that it lacks (it was down at the
    /// CREATE); answers the mirrored tables, whose copies a resync brings.
    fn ensure_tables(&self, node: NodeId, epoch: u64) -> BoxFuture<'_, Result<Vec<TableId>>>;
}

impl std::fmt::Debug for dyn Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooks")
    }
}

/// The outcome of one probe (a heartbeat, retried once at once).
#[derive(Debug)]
pub(crate) enum Probe {
    Answered(Box<pb::StatusResponse>),
    /// Two misses in a row, and why.
    Missed(String),
}

/// The system manager's settings.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    /// Heartbeat period (detection <= interval + 2 x probe timeout).
    pub heartbeat_interval: Duration,
    /// How long one heartbeat or probe may take.
    pub probe_timeout: Duration,
    /// How long a primary waits for its mirror; also the deadline of one
    /// InstallMap call.
    pub mirror_timeout: Duration,
    /// How long a failed node or disk may stay away before its copies are
    /// regenerated elsewhere.
    pub regen_delay: Duration,
    /// Bytes per second one slice copy may take (0: no limit).
    pub copy_rate: u64,
    /// The configured nodes (spares included): where regeneration may
    /// place copies.
    pub shapes: Vec<crate::map::NodeShape>,
}

/// Reads the current map; can wait for the next one installed.
#[derive(Clone)]
pub struct MapReader {
    map: watch::Receiver<Arc<DistMap>>,
    installed: watch::Receiver<u64>,
}

impl MapReader {
    /// The map as last published.
    pub fn current(&self) -> Arc<DistMap> {
        self.map.borrow().clone()
    }

    /// Resolves once the map declares `node` failed.
    pub async fn until_down(&self, node: NodeId) {
        while !self.current().is_down(node) {
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// Wait until a newer map has been installed on the nodes (or sent to
    /// every node that could be reached). Err once the manager is gone.
    pub async fn installed(&mut self) -> Result<()> {
        self.installed
            .changed()
            .await
            .map_err(|_| CoordinatorError::ShuttingDown)
    }
}

/// The only way to publish a map. Private to the system manager.
struct MapWriter {
    map: watch::Sender<Arc<DistMap>>,
    installed: watch::Sender<u64>,
}

/// How the rest of the coordinator talks to the system manager.
#[derive(Clone)]
pub struct SystemHandle {
    events: mpsc::UnboundedSender<Event>,
    shutting_down: Arc<AtomicBool>,
    /// The copies of the current (or last) resync round, as it goes.
    progress: Arc<parking_lot::Mutex<Vec<CopyProgress>>>,
}

impl SystemHandle {
    /// A scan or a write could not reach `node`: probe it at once rather
    /// than at the next heartbeat.
    pub fn report_unreachable(&self, node: NodeId) {
        let _ = self.events.send(Event::Unreachable { node });
    }

    /// These slices' mirrors missed a commit: mark them degraded (epoch +
    /// 1, persisted, installed on every node so primaries stop forwarding).
    /// Returns once that is done, so the commit may be acknowledged.
    /// Each entry is (slice, the node that wrote it alone).
    pub async fn mirrors_missed_commit(&self, slices: BTreeSet<(SliceId, NodeId)>) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::MirrorsMissedCommit { slices, reply })
            .map_err(|_| CoordinatorError::ShuttingDown)?;
        answer.await.map_err(|_| CoordinatorError::ShuttingDown)?
    }

    /// Give the manager what it needs of transactions and the catalog:
    /// until then it fails over but resyncs nothing.
    pub fn attach(&self, hooks: Arc<dyn Hooks>) {
        let _ = self.events.send(Event::Attach(hooks));
    }

    /// The copies of the current (or last) resync round and how far each
    /// got (`slicedb_resync`).
    pub fn resync_progress(&self) -> Vec<CopyProgress> {
        self.progress.lock().clone()
    }

    /// Regenerate every failed node's and disk's copies now, without
    /// waiting for `regen_delay`; a node that does not answer a probe is
    /// failed first. Returns once the manager placed the new copies (the
    /// copying goes on in the background).
    pub async fn regenerate_now(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.events.send(Event::RegenerateNow(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The cluster is being shut down on purpose: no more failovers.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub(crate) fn send(&self, e: Event) {
        let _ = self.events.send(e);
    }
}

/// The system manager's state: the one mutable map.
struct SystemManager {
    config: SystemConfig,
    meta: Arc<dyn MetaStore>,
    nodes: Arc<NodeSet>,
    health: Arc<NodeHealth>,
    map: DistMap,
    writer: MapWriter,
    reader: MapReader,
    handle: SystemHandle,
    hooks: Option<Arc<dyn Hooks>>,
    /// A resync round is running (one at a time).
    resync_running: bool,
    /// No new round before this (after one that failed).
    resync_after: Option<std::time::Instant>,
    /// Since when each failed node (disk None) or disk has been down.
    down_since: std::collections::BTreeMap<(NodeId, Option<u32>), std::time::Instant>,
    /// Faults whose regeneration was refused (said once).
    regen_refused: BTreeSet<(NodeId, Option<u32>)>,
}

/// Install `map` on every node (each must answer: the cluster starts only
/// whole), then start the system manager and its failure detector.
pub async fn start(
    config: SystemConfig,
    meta: Arc<dyn MetaStore>,
    map: DistMap,
    nodes: Arc<NodeSet>,
    health: Arc<NodeHealth>,
) -> Result<(SystemHandle, MapReader)> {
    // A round the previous coordinator left running is gone with it: its
    // copies start over (before anyone reads this map).
    let mut map = map;
    let interrupted = map.restart_rebuilding();
    if interrupted > 0 {
        map.bump(format!(
            "coordinator started: {interrupted} copies it was resyncing start over"
        ));
        meta.write(Doc::Map, &map.to_json()?)?;
    }
    install::install_map(&nodes, &map, config.mirror_timeout, false, &health).await?;
    let (map_tx, map_rx) = watch::channel(Arc::new(map.clone()));
    let (inst_tx, inst_rx) = watch::channel(map.epoch());
    let (events, rx) = mpsc::unbounded_channel();
    let handle = SystemHandle {
        events,
        shutting_down: Arc::new(AtomicBool::new(false)),
        progress: Default::default(),
    };
    let reader = MapReader {
        map: map_rx,
        installed: inst_rx,
    };
    let manager = SystemManager {
        config: config.clone(),
        meta,
        nodes: nodes.clone(),
        health: health.clone(),
        map,
        writer: MapWriter {
            map: map_tx,
            installed: inst_tx,
        },
        reader: reader.clone(),
        handle: handle.clone(),
        hooks: None,
        resync_running: false,
        resync_after: None,
        down_since: Default::default(),
        regen_refused: BTreeSet::new(),
    };
    tokio::spawn(manager.run(rx));
    detector::spawn_heartbeats(config, nodes, reader.clone(), handle.clone());
    Ok((handle, reader))
}

impl SystemManager {
    async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>) {
        while let Some(e) = events.recv().await {
            match e {
                Event::Probed { node, outcome } => self.probed(node, outcome).await,
                Event::Unreachable { node } => {
                    if !self.map.is_down(node) {
                        if let Some(n) = self.nodes.get(&node).cloned() {
                            tokio::spawn(detector::probe(
                                self.config.probe_timeout,
                                n,
                                self.handle.clone(),
                            ));
                        }
                    }
                }
                Event::MirrorsMissedCommit { slices, reply } => {
                    let _ = reply.send(self.mirrors_missed_commit(&slices).await);
                }
                Event::Attach(hooks) => {
                    self.hooks = Some(hooks);
                    self.schedule_resync().await;
                }
                Event::ResyncDone(outcome) => self.resync_done(*outcome).await,
                Event::RegenerateNow(done) => {
                    self.regenerate_now().await;
                    let _ = done.send(());
                }
            }
        }
    }

    fn shutting_down(&self) -> bool {
        self.handle.shutting_down.load(Ordering::SeqCst)
    }

    /// Every xid below this had finished (0 before the hooks are attached:
    /// then GROOM keeps every delete a lost copy may lack).
    fn horizon(&self) -> Xid {
        self.hooks.as_ref().map_or(0, |h| h.oldest_unfinished())
    }

    /// Persist and publish `next` as the map, install it on every node that
    /// answers, then tell those waiting for installs.
    async fn publish(&mut self, next: DistMap) -> Result<()> {
        self.meta.write(Doc::Map, &next.to_json()?)?;
        self.map = next;
        self.writer.map.send_replace(Arc::new(self.map.clone()));
        let installed = install::install_map(
            &self.nodes,
            &self.map,
            self.config.mirror_timeout,
            true,
            &self.health,
        )
        .await;
        self.writer.installed.send_replace(self.map.epoch());
        if let Err(e) = &installed {
            warn!(epoch = self.map.epoch(), error = %e, "map not installed everywhere");
        }
        installed
    }
}
