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
use crate::nodes::{deadline, NodeClient, NodeSet, CONTROL_DEADLINE, WORK_DEADLINE};
use crate::system::{MapReader, SystemHandle};
use crate::{CoordinatorError, Result};

/// What a node did for a transaction: requests sent and slices degraded
/// (each with the node that wrote it alone).
#[derive(Debug, Default)]
struct TxnWork {
    requests: BTreeMap<NodeId, u64>,
    /// Request ids sent to each node, per slice (answered or not).
    sent: BTreeMap<NodeId, BTreeMap<SliceId, BTreeSet<u64>>>,
    /// Request ids a node answered.
    acked: BTreeSet<u64>,
    next_request: u64,
    /// Failed nodes whose work was carried over: request id -> rows, for
    /// every request the new acting primaries already held.
    carried: BTreeMap<NodeId, BTreeMap<u64, u64>>,
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
    /// One carry-over at a time ([`TxnManager::carry_over`]).
    carry: tokio::sync::Mutex<()>,
}

impl Txn {
    /// A request id unique in this transaction (never 0).
    pub fn new_request_id(&self) -> u64 {
        let mut w = self.work.lock();
        w.next_request += 1;
        w.next_request
    }

    /// Record a Write or Delete request (`id`, of `slice`) about to be sent
    /// to `node`.
    pub fn note_request(&self, node: NodeId, slice: SliceId, id: u64) {
        let mut w = self.work.lock();
        *w.requests.entry(node).or_default() += 1;
        w.sent
            .entry(node)
            .or_default()
            .entry(slice)
            .or_default()
            .insert(id);
    }

    /// `node` refused request `id` before it touched anything (its map
    /// epoch differs): it does not count it, and neither does the
    /// transaction.
    pub fn unnote_request(&self, node: NodeId, slice: SliceId, id: u64) {
        let mut w = self.work.lock();
        if let Some(n) = w.requests.get_mut(&node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.requests.remove(&node);
            }
        }
        if let Some(ids) = w.sent.get_mut(&node).and_then(|m| m.get_mut(&slice)) {
            ids.remove(&id);
        }
    }

    /// `node` answered request `id`, reporting `degraded` slices: it holds
    /// their writes, the copies it forwards to do not. False if the answer
    /// came too late: the transaction was carried over `node` meanwhile, so
    /// what it wrote there does not count (see [`Txn::carried_rows`]; the
    /// request is sent again unless it was adopted).
    pub fn note_request_result(&self, node: NodeId, id: u64, degraded: &[SliceId]) -> bool {
        let mut w = self.work.lock();
        if w.carried.contains_key(&node) {
            return false;
        }
        w.acked.insert(id);
        w.degraded.extend(degraded.iter().map(|&s| (s, node)));
        true
    }

    /// The rows of request `id` if the node that took over from `failed`
    /// already held it (then it must not be sent again).
    pub fn carried_rows(&self, failed: NodeId, id: u64) -> Option<u64> {
        self.work
            .lock()
            .carried
            .get(&failed)
            .and_then(|m| m.get(&id))
            .copied()
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

    /// How many write requests the transaction has made so far: a
    /// savepoint's mark (nothing was written after it while this stays).
    pub fn requests_made(&self) -> u64 {
        self.work.lock().next_request
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

/// How long a transaction waits for a failed participant's failover (and
/// for the nodes to install the new map) before it gives up on it.
const CARRY_WAIT: Duration = Duration::from_secs(5);

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
            carry: tokio::sync::Mutex::new(()),
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
        if txn.participants().is_empty() {
            self.end(xid);
            return Ok(());
        }
        // Phase 1.
        let degraded = match self.prepare_all(txn).await {
            Ok(d) => d,
            Err(e) => {
                warn!(xid, error = %e, "prepare failed: aborting");
                self.abort(txn).await;
                return Err(e);
            }
        };
        let requests: Vec<(NodeId, u64)> = txn
            .work
            .lock()
            .requests
            .iter()
            .map(|(n, r)| (*n, *r))
            .collect();
        let epoch = self.map.current().epoch();
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
            let call = c.commit(deadline(
                pb::TxnRequest {
                    epoch,
                    xid,
                    requests: 0,
                },
                WORK_DEADLINE,
            ));
            // A hung node never answers: its mirrors finish the
            // transaction once it is failed over.
            tokio::select! {
                r = call => match r {
                    Ok(_) => None,
                    Err(s) => {
                        warn!(xid, node = id, error = %s, "commit not acknowledged; the resolver will finish it");
                        Some(id)
                    }
                },
                _ = self.map.until_down(id) => {
                    warn!(xid, node = id, "declared failed before it acknowledged the commit; its mirrors finish it");
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
            let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
            while self.is_active(xid) && tokio::time::Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        debug!(xid, "committed");
        Ok(())
    }

    /// Phase one: prepare every participant, carrying the transaction over
    /// a participant that fails meanwhile (or failed since it wrote): its
    /// work moves to the nodes now serving its slices, which are prepared
    /// instead. A node whose map is a step behind is asked again. Answers
    /// the slices written without their mirror (each with its node).
    async fn prepare_all(&self, txn: &Txn) -> Result<BTreeSet<(SliceId, NodeId)>> {
        let xid = txn.xid;
        let give_up = tokio::time::Instant::now() + CARRY_WAIT;
        // Node -> the request count it prepared with.
        let mut prepared: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut degraded: BTreeSet<(SliceId, NodeId)> = BTreeSet::new();
        loop {
            // A participant that failed before it prepared: its work moves
            // (one that prepared is finished by its mirrors, as ever).
            for id in txn.participants() {
                if self.is_down(id) && !prepared.contains_key(&id) {
                    self.carry_over(txn, id).await?;
                }
            }
            let requests: Vec<(NodeId, u64)> = txn
                .work
                .lock()
                .requests
                .iter()
                .filter(|(n, r)| prepared.get(n) != Some(r))
                .map(|(n, r)| (*n, *r))
                .collect();
            if requests.is_empty() {
                let mut all = txn.work.lock().degraded.clone();
                all.extend(degraded);
                return Ok(all);
            }
            let epoch = self.map.current().epoch();
            let calls = requests.iter().map(|&(id, requests)| async move {
                let node = self.node(id)?.clone();
                let mut c = node.grpc.clone();
                let call = c.prepare(deadline(
                    pb::TxnRequest {
                        epoch,
                        xid,
                        requests,
                    },
                    WORK_DEADLINE,
                ));
                // A hung node never answers: race it against its failover.
                tokio::select! {
                    r = call => r
                        .map(|r| (id, requests, r.into_inner().degraded_slices))
                        .map_err(|s| node.err(s)),
                    _ = self.map.until_down(id) => Err(CoordinatorError::NodeUnreachable {
                        node: id,
                        address: node.address.clone(),
                        message: "declared failed while preparing".into(),
                    }),
                }
            });
            let mut retry = false;
            for r in futures::future::join_all(calls).await {
                match r {
                    Ok((id, n, d)) => {
                        prepared.insert(id, n);
                        degraded.extend(d.into_iter().map(|s| (s, id)));
                    }
                    Err(CoordinatorError::Node {
                        kind: slicedb_engine::proto::ErrorKind::StaleEpoch,
                        ..
                    }) if tokio::time::Instant::now() < give_up => retry = true,
                    Err(e @ CoordinatorError::NodeUnreachable { node, .. }) => {
                        self.system.report_unreachable(node);
                        let down = tokio::time::timeout_at(give_up, self.map.until_down(node));
                        if down.await.is_err() {
                            return Err(e);
                        }
                        retry = true;
                    }
                    Err(e) => return Err(e),
                }
            }
            if retry {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }

    /// `failed` was declared failed while `txn` was open and had written
    /// to it: carry the transaction on without it. Every node that now
    /// serves a slice `failed` wrote takes over what `failed` forwarded to
    /// it for the transaction (node protocol `Adopt`); the transaction's
    /// requests then count on those nodes, and a request they already hold
    /// is never sent again ([`Txn::carried_rows`]). Fails (40001, nothing
    /// changed for `failed`'s work) when a request `failed` acknowledged is
    /// on no surviving copy (its mirror was unreachable, or restarted), or
    /// a slice has no surviving copy in sync. Runs once per failed node; a
    /// second call answers the first's outcome.
    pub async fn carry_over(&self, txn: &Txn, failed: NodeId) -> Result<()> {
        let _one = txn.carry.lock().await;
        let sent: BTreeMap<SliceId, BTreeSet<u64>> = {
            let w = txn.work.lock();
            if w.carried.contains_key(&failed) {
                return Ok(());
            }
            w.sent.get(&failed).cloned().unwrap_or_default()
        };
        let xid = txn.xid;
        let cannot = |message: String| CoordinatorError::NodeUnreachable {
            node: failed,
            address: self
                .node(failed)
                .map(|n| n.address.clone())
                .unwrap_or_default(),
            message,
        };
        let give_up = tokio::time::Instant::now() + CARRY_WAIT;
        // Request id -> (slice, rows), and what each adopter already counted.
        let mut adopted: BTreeMap<u64, (SliceId, u64)> = BTreeMap::new();
        let mut counted: BTreeMap<NodeId, u64> = BTreeMap::new();
        'epochs: loop {
            let map = self.map.current();
            let mut by_node: BTreeMap<NodeId, Vec<SliceId>> = BTreeMap::new();
            for &slice in sent.keys() {
                let entry = map.slices().get(slice as usize).ok_or_else(|| {
                    CoordinatorError::Catalog(format!("slice {slice} is not in the map"))
                })?;
                let (loc, _) = entry.serving()?;
                if loc.node == failed {
                    return Err(cannot(format!("slice {slice} is still served there")));
                }
                by_node.entry(loc.node).or_default().push(slice);
            }
            for (&y, slices) in &by_node {
                let node = self.node(y)?.clone();
                let mut c = node.grpc.clone();
                let r = c
                    .adopt(deadline(
                        pb::AdoptRequest {
                            epoch: map.epoch(),
                            xid,
                            from_node: failed,
                            slices: slices.clone(),
                        },
                        WORK_DEADLINE,
                    ))
                    .await
                    .map_err(|s| node.err(s));
                let r = match r {
                    Ok(r) => r.into_inner(),
                    Err(CoordinatorError::Node {
                        kind: slicedb_engine::proto::ErrorKind::StaleEpoch,
                        ..
                    }) if tokio::time::Instant::now() < give_up => {
                        tokio::time::sleep(Duration::from_millis(25)).await;
                        continue 'epochs;
                    }
                    Err(e) => return Err(e),
                };
                for a in &r.writes {
                    adopted.insert(a.request_id, (a.slice, a.rows));
                }
                // Counted on the node as it adopted: count it here too at
                // once, so an abort reaches it even if a later step fails.
                let before = counted.insert(y, r.requests).unwrap_or(0);
                let mut w = txn.work.lock();
                if r.requests > before {
                    *w.requests.entry(y).or_default() += r.requests - before;
                }
                w.degraded.extend(r.degraded_slices.iter().map(|&s| (s, y)));
            }
            break;
        }
        let mut w = txn.work.lock();
        for (slice, ids) in &sent {
            for id in ids {
                if w.acked.contains(id) && !adopted.contains_key(id) {
                    return Err(cannot(format!(
                        "transaction {xid}: its write {id} of slice {slice} is on no surviving copy; it cannot be carried over"
                    )));
                }
            }
        }
        w.requests.remove(&failed);
        w.sent.remove(&failed);
        w.degraded.retain(|(_, n)| *n != failed);
        for (&id, &(slice, _)) in &adopted {
            w.acked.insert(id);
            if let Some(y) = self
                .map
                .current()
                .slices()
                .get(slice as usize)
                .and_then(|e| e.serving().ok())
            {
                w.sent
                    .entry(y.0.node)
                    .or_default()
                    .entry(slice)
                    .or_default()
                    .insert(id);
            }
        }
        w.carried.insert(
            failed,
            adopted.iter().map(|(&id, &(_, rows))| (id, rows)).collect(),
        );
        info!(
            xid,
            node = failed,
            adopted = adopted.len(),
            "transaction carried over a failed node"
        );
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
            let Ok(st) = c
                .status(deadline(pb::StatusRequest {}, CONTROL_DEADLINE))
                .await
            else {
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
                    c.commit(deadline(req, WORK_DEADLINE)).await.map(|_| ())
                } else {
                    c.abort(deadline(req, CONTROL_DEADLINE)).await.map(|_| ())
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
                if c.commit(deadline(
                    pb::TxnRequest {
                        epoch,
                        xid,
                        requests: 0,
                    },
                    WORK_DEADLINE,
                ))
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
