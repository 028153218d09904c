//! Transactions at the coordinator: xids, snapshots, two-phase commit, the
//! durable commit record, and the resolver that finishes in-doubt
//! transactions after a crash.
//!
//! It owns xid allocation (reserved in the catalog in ranges), the set of
//! active transactions (the source of every snapshot) and the commit log
//! (through the persistence seam, `crate::meta`): a record per committed
//! xid, durable before any node is told to commit. A transaction whose record is present is committed, even if
//! no node has published it yet; one without a record is aborted. It never
//! reads a disk image; nodes are reached through the node protocol only.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use slicedb_engine::failpoint;
use slicedb_engine::proto::pb;
use slicedb_engine::store::Snapshot;
use slicedb_engine::{NodeId, SliceId, Xid};
use tracing::{debug, info, warn};

use crate::catalog::Catalog;
use crate::meta::{CommitLog, MetaStore};
use crate::nodes::{NodeClient, NodeSet};
use crate::system::{MapReader, SystemHandle};
use crate::{CoordinatorError, Result};

/// What a node did for a transaction: requests sent and slices degraded
/// (each with the node that wrote it alone).
#[derive(Debug, Default)]
struct TxnWork {
    requests: BTreeMap<NodeId, u64>,
    degraded: BTreeSet<(SliceId, NodeId)>,
    failed: Option<String>,
}

/// One open transaction. Shared by the statements of a transaction block.
#[derive(Debug)]
pub struct Txn {
    pub xid: Xid,
    /// What the transaction reads: fixed at BEGIN (snapshot isolation).
    pub snapshot: Snapshot,
    work: Mutex<TxnWork>,
}

impl Txn {
    /// Record a Write or Delete request sent to `node`, and what it reported.
    pub fn note_request(&self, node: NodeId, degraded: &[SliceId]) {
        let mut w = self.work.lock();
        *w.requests.entry(node).or_default() += 1;
        w.degraded.extend(degraded.iter().map(|&s| (s, node)));
    }

    /// Slices `node` reported degraded in a Write or Delete answer: it
    /// holds their writes, the copies it forwards to do not.
    pub fn note_request_result(&self, node: NodeId, degraded: &[SliceId]) {
        self.work
            .lock()
            .degraded
            .extend(degraded.iter().map(|&s| (s, node)));
    }

    /// A statement failed: the transaction can only roll back (25P02).
    pub fn mark_failed(&self, why: impl Into<String>) {
        let mut w = self.work.lock();
        if w.failed.is_none() {
            w.failed = Some(why.into());
        }
    }

    pub fn failed(&self) -> Option<String> {
        self.work.lock().failed.clone()
    }

    pub fn participants(&self) -> BTreeSet<NodeId> {
        self.work.lock().requests.keys().copied().collect()
    }
}

tokio::task_local! {
    /// The transaction block of the statement being planned on this task, if
    /// any. The SQL front end sets it around a statement inside BEGIN ...
    /// COMMIT; scans then read the block's snapshot (and its own writes) and
    /// inserts write under its xid. Without it, a scan takes a fresh snapshot
    /// and an insert is its own transaction.
    pub static CURRENT_TXN: Arc<Txn>;
}

tokio::task_local! {
    /// The SQL session the statement on this task runs for (see
    /// `crate::session`).
    pub static CURRENT_SESSION: u64;
}

/// The session the current task runs for, if the front end set one.
pub fn current_session() -> Option<u64> {
    CURRENT_SESSION.try_with(|s| *s).ok()
}

/// The transaction block the current task runs in, if any.
pub fn current_txn() -> Option<Arc<Txn>> {
    CURRENT_TXN.try_with(|t| t.clone()).ok()
}

/// How long an abort waits for one node before leaving it to the resolver.
const ABORT_WAIT: Duration = Duration::from_secs(1);

/// Transactions: xids, the active set and the commit record.
pub struct TxnManager {
    /// Active xid -> the lowest xid its snapshot may not see (for GROOM).
    active: Mutex<BTreeMap<Xid, Xid>>,
    /// Committed, but some node has not published yet: xid -> nodes left.
    unfinished: Mutex<BTreeMap<Xid, BTreeSet<NodeId>>>,
    committed: Mutex<HashSet<Xid>>,
    log: Mutex<Box<dyn CommitLog>>,
    catalog: Arc<Mutex<Catalog>>,
    next_xid: AtomicU64,
    xid_limit: AtomicU64,
    xid_lock: Mutex<()>,
    nodes: Arc<NodeSet>,
    map: MapReader,
    system: SystemHandle,
}

impl TxnManager {
    pub fn open(
        meta: &dyn MetaStore,
        catalog: Arc<Mutex<Catalog>>,
        nodes: Arc<NodeSet>,
        map: MapReader,
        system: SystemHandle,
    ) -> Result<TxnManager> {
        let (committed, log) = meta.open_commit_log()?;
        let hw = catalog.lock().xid_high_water();
        Ok(TxnManager {
            active: Mutex::new(BTreeMap::new()),
            unfinished: Mutex::new(BTreeMap::new()),
            committed: Mutex::new(committed.into_iter().collect()),
            log: Mutex::new(log),
            catalog,
            next_xid: AtomicU64::new(hw),
            xid_limit: AtomicU64::new(hw),
            xid_lock: Mutex::new(()),
            nodes,
            map,
            system,
        })
    }

    fn node(&self, id: NodeId) -> Result<&NodeClient> {
        crate::nodes::client(&self.nodes, id)
    }

    fn is_down(&self, node: NodeId) -> bool {
        self.map.current().is_down(node)
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

    fn snapshot_locked(active: &BTreeMap<Xid, Xid>, xmax: Xid, own: Option<Xid>) -> Snapshot {
        Snapshot {
            xmax,
            xip: active.keys().copied().filter(|x| Some(*x) != own).collect(),
            own,
        }
    }

    /// The oldest xid some active snapshot may still not see: deletes by
    /// xids below it are dead for everyone.
    pub fn horizon(&self, next: Xid) -> Xid {
        self.active
            .lock()
            .values()
            .copied()
            .min()
            .unwrap_or(next)
            .min(next)
    }

    /// Every transaction with an xid below this has finished: neither
    /// active nor committed with nodes still to be told.
    pub fn oldest_unfinished(&self) -> Xid {
        let active = self.active.lock().keys().next().copied();
        let unfinished = self.unfinished.lock().keys().next().copied();
        [active, unfinished]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Xid::MAX)
            .min(self.peek_xid())
    }

    pub fn is_active(&self, xid: Xid) -> bool {
        self.active.lock().contains_key(&xid)
    }

    pub fn is_committed(&self, xid: Xid) -> bool {
        self.committed.lock().contains(&xid)
    }

    /// Append the commit record for `xid` and make it durable.
    fn record_commit(&self, xid: Xid) -> Result<()> {
        self.log.lock().append(xid)?;
        self.committed.lock().insert(xid);
        Ok(())
    }

    /// A failed node will never acknowledge: stop waiting for it (its
    /// mirrors hold the transactions prepared; the resolver commits them).
    pub fn forget_node(&self, node: NodeId) {
        let mut u = self.unfinished.lock();
        let mut done = Vec::new();
        for (x, nodes) in u.iter_mut() {
            nodes.remove(&node);
            if nodes.is_empty() {
                done.push(*x);
            }
        }
        for x in done {
            u.remove(&x);
            self.end(x);
        }
    }

    fn end(&self, xid: Xid) {
        self.active.lock().remove(&xid);
    }

    /// An xid for a slice copy's own pending change on its target, active
    /// until [`TxnManager::end_copy`]: the resolver leaves it alone (an
    /// unknown open xid would be aborted under the copy).
    pub fn begin_copy(&self) -> Result<Xid> {
        Ok(self.begin()?.xid)
    }

    /// The copy under `xid` committed or failed on its target.
    pub fn end_copy(&self, xid: Xid) {
        self.end(xid);
    }

    /// Start a transaction: a fresh xid and a snapshot, atomically, so no
    /// snapshot can see an xid as finished before it started.
    pub fn begin(&self) -> Result<Arc<Txn>> {
        let xid = self.next_xid()?;
        let mut active = self.active.lock();
        let xmax = self.peek_xid().max(xid + 1);
        let snapshot = TxnManager::snapshot_locked(&active, xmax, Some(xid));
        let xmin = snapshot.xip.first().copied().unwrap_or(xid).min(xid);
        active.insert(xid, xmin);
        debug!(xid, "begin");
        Ok(Arc::new(Txn {
            xid,
            snapshot,
            work: Mutex::new(TxnWork::default()),
        }))
    }

    /// A snapshot for a statement outside any transaction block.
    pub fn read_snapshot(&self) -> Snapshot {
        let active = self.active.lock();
        TxnManager::snapshot_locked(&active, self.peek_xid(), None)
    }

    /// Two-phase commit. Returns once the commit record is durable and every
    /// participant answered (a participant that does not is finished by the
    /// resolver; the transaction stays invisible to new snapshots until then).
    pub async fn commit(&self, txn: &Txn) -> Result<()> {
        if let Some(why) = txn.failed() {
            self.abort(txn).await;
            return Err(CoordinatorError::TransactionAborted(why));
        }
        let xid = txn.xid;
        let requests: Vec<(NodeId, u64)> = txn
            .work
            .lock()
            .requests
            .iter()
            .map(|(n, r)| (*n, *r))
            .collect();
        if requests.is_empty() {
            self.end(xid);
            return Ok(());
        }
        // Phase 1.
        let epoch = self.map.current().epoch();
        let calls = requests.iter().map(|&(id, requests)| async move {
            let node = self.node(id)?.clone();
            let mut c = node.grpc.clone();
            c.prepare(pb::TxnRequest {
                epoch,
                xid,
                requests,
            })
            .await
            .map(|r| (id, r.into_inner().degraded_slices))
            .map_err(|s| node.err(s))
        });
        let mut degraded: BTreeSet<(SliceId, NodeId)> = txn.work.lock().degraded.clone();
        for r in futures::future::join_all(calls).await {
            match r {
                Ok((id, d)) => degraded.extend(d.into_iter().map(|s| (s, id))),
                Err(e) => {
                    warn!(xid, error = %e, "prepare failed: aborting");
                    self.abort(txn).await;
                    return Err(e);
                }
            }
        }
        debug!(xid, "prepared");
        failpoint::hit("coord.commit.after_prepare");
        // Slices whose mirror missed the transaction lose their protection
        // before the commit is acknowledged: the map must never claim a
        // mirror holds rows it does not.
        if !degraded.is_empty() {
            if let Err(e) = self.system.mirrors_missed_commit(degraded.clone()).await {
                self.abort(txn).await;
                return Err(e);
            }
        }
        // Decision point.
        if let Err(e) = self.record_commit(xid) {
            self.abort(txn).await;
            return Err(e);
        }
        failpoint::hit("coord.commit.after_record");
        // Phase 2.
        let calls = requests.iter().map(|&(id, _)| async move {
            let Ok(node) = self.node(id) else {
                return Some(id);
            };
            let mut c = node.grpc.clone();
            match c
                .commit(pb::TxnRequest {
                    epoch,
                    xid,
                    requests: 0,
                })
                .await
            {
                Ok(_) => None,
                Err(s) => {
                    warn!(xid, node = id, error = %s, "commit not acknowledged; the resolver will finish it");
                    Some(id)
                }
            }
        });
        let left: BTreeSet<NodeId> = futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect();
        failpoint::hit("coord.commit.after_nodes");
        if let Some(d) = failpoint::delay("coord.commit.before_unfinished") {
            tokio::time::sleep(d).await;
        }
        if left.is_empty() {
            self.end(xid);
        } else {
            // Decided but not yet published everywhere: a node that did not
            // answer is probed at once; if it is dead its mirrors finish the
            // transaction during the failover. Acknowledge only once the
            // rows are visible (bounded: the decision is durable anyway).
            self.unfinished.lock().insert(xid, left.clone());
            for id in &left {
                self.system.report_unreachable(*id);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while self.is_active(xid) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        debug!(xid, "committed");
        Ok(())
    }

    /// Abort everywhere (best effort: a node that misses it is told again by
    /// the resolver, which aborts whatever has no commit record).
    pub async fn abort(&self, txn: &Txn) {
        let xid = txn.xid;
        let epoch = self.map.current().epoch();
        let participants = txn.participants();
        // A node that is down, or does not answer in time, is left to the
        // resolver: once this xid has ended, a transaction it still holds
        // is one no live transaction owns, and with no commit record it is
        // aborted there when the node answers again. A failing statement
        // never waits for a hung node.
        let calls = participants.iter().map(|&id| async move {
            if self.is_down(id) {
                return;
            }
            if let Ok(node) = self.node(id) {
                let mut c = node.grpc.clone();
                let req = pb::TxnRequest {
                    epoch,
                    xid,
                    requests: 0,
                };
                match tokio::time::timeout(ABORT_WAIT, c.abort(req)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(s)) => warn!(node = id, xid, error = %s, "abort not acknowledged"),
                    Err(_) => warn!(
                        node = id,
                        xid, "abort not acknowledged in time; the resolver finishes it"
                    ),
                }
            }
        });
        futures::future::join_all(calls).await;
        self.end(xid);
        debug!(xid, "aborted");
    }

    /// One resolver pass: every node's open transactions that no live
    /// coordinator transaction owns are committed (commit record present)
    /// or aborted (absent); committed transactions some node missed are
    /// retried. Returns how many were resolved.
    pub async fn resolve_once(&self) -> usize {
        let mut resolved = 0;
        let epoch = self.map.current().epoch();
        // Taken before this pass finishes transactions on the live nodes: a
        // committed transaction still waiting for a node that was already
        // down then is finished by that node's mirrors below, so it stops
        // waiting for it (unless some live node could not be reached). A
        // node can fail after the failover's own pass but before its commit
        // is recorded as unfinished; without this, that transaction would
        // wait for the dead node, and stay invisible, forever.
        let unfinished: Vec<(Xid, BTreeSet<NodeId>)> = self
            .unfinished
            .lock()
            .iter()
            .map(|(x, n)| (*x, n.clone()))
            .collect();
        let down_before: BTreeSet<NodeId> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| self.is_down(*id))
            .collect();
        let mut live_all_finished = true;
        for node in self.nodes.values().filter(|n| !self.is_down(n.id)) {
            let mut c = node.grpc.clone();
            let Ok(st) = c.status(pb::StatusRequest {}).await else {
                live_all_finished = false;
                continue;
            };
            for t in st.into_inner().txns {
                // A commit decision is final: finish it even while the
                // transaction still waits for another node. Only aborts wait
                // for the owner to be gone.
                if self.is_active(t.xid) && !(t.prepared && self.is_committed(t.xid)) {
                    continue;
                }
                let req = pb::TxnRequest {
                    epoch,
                    xid: t.xid,
                    requests: 0,
                };
                let r = if self.is_committed(t.xid) {
                    c.commit(req).await.map(|_| ())
                } else {
                    c.abort(req).await.map(|_| ())
                };
                match r {
                    Ok(()) => {
                        resolved += 1;
                        info!(
                            node = node.id,
                            xid = t.xid,
                            committed = self.is_committed(t.xid),
                            "resolved in-doubt transaction"
                        );
                    }
                    Err(s) => {
                        live_all_finished = false;
                        warn!(node = node.id, xid = t.xid, error = %s, "could not resolve")
                    }
                }
            }
        }
        for (xid, nodes) in unfinished {
            let mut left = BTreeSet::new();
            for id in nodes {
                if live_all_finished && down_before.contains(&id) {
                    continue;
                }
                let Ok(node) = self.node(id) else { continue };
                let mut c = node.grpc.clone();
                if c.commit(pb::TxnRequest {
                    epoch,
                    xid,
                    requests: 0,
                })
                .await
                .is_err()
                {
                    left.insert(id);
                }
            }
            if left.is_empty() {
                self.unfinished.lock().remove(&xid);
                self.end(xid);
                resolved += 1;
            } else {
                self.unfinished.lock().insert(xid, left);
            }
        }
        resolved
    }
}

/// Run the resolver every `every`, and at once whenever the system manager
/// installed a new map, until the process ends. A node newly declared
/// failed will never acknowledge: after the pass that finished its
/// transactions on the survivors (its mirrors hold them prepared), nothing
/// waits for it any more.
pub fn spawn_resolver(txns: Arc<TxnManager>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut map = txns.map.clone();
        let mut down: BTreeSet<NodeId> = map.current().down().iter().copied().collect();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                r = map.installed() => if r.is_err() { return },
            }
            txns.resolve_once().await;
            let now: BTreeSet<NodeId> = map.current().down().iter().copied().collect();
            for node in now.difference(&down) {
                txns.forget_node(*node);
            }
            down = now;
        }
    })
}
