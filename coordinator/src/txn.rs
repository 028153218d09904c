//! Transactions at the coordinator: xids, snapshots, two-phase commit, the
//! durable commit record, and the resolver that finishes in-doubt
//! transactions after a crash.
//!
//! It owns the set of active transactions (the source of every snapshot) and
//! `commits.log` in the data dir: one 16-byte record per committed xid
//! (u64 xid, u32 CRC32C of the xid, u32 magic), fsynced before any node is
//! told to commit. A transaction whose record is present is committed, even if
//! no node has published it yet; one without a record is aborted. It never
//! reads a disk image; nodes are reached through the node protocol only.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use slicedb_engine::failpoint;
use slicedb_engine::proto::pb;
use slicedb_engine::store::Snapshot;
use slicedb_engine::{NodeId, SliceId, Xid};
use tracing::{debug, info, warn};

use crate::cluster::Shared;
use crate::{CoordinatorError, Result};

const RECORD_MAGIC: u32 = 0x534c_434d; // "SLCM"
const RECORD_LEN: usize = 16;

/// What a node did for a transaction: requests sent and slices degraded.
#[derive(Debug, Default)]
struct TxnWork {
    requests: BTreeMap<NodeId, u64>,
    degraded: BTreeSet<SliceId>,
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
        w.degraded.extend(degraded.iter().copied());
    }

    /// Slices a node reported degraded in a Write or Delete answer.
    pub fn note_request_result(&self, degraded: &[SliceId]) {
        self.work.lock().degraded.extend(degraded.iter().copied());
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

/// The active set and the commit record.
pub struct TxnManager {
    /// Active xid -> the lowest xid its snapshot may not see (for GROOM).
    active: Mutex<BTreeMap<Xid, Xid>>,
    /// Committed, but some node has not published yet: xid -> nodes left.
    unfinished: Mutex<BTreeMap<Xid, BTreeSet<NodeId>>>,
    committed: Mutex<HashSet<Xid>>,
    log: Mutex<File>,
    path: PathBuf,
}

impl TxnManager {
    pub fn open(dir: &Path) -> Result<TxnManager> {
        let path = dir.join("commits.log");
        let io = |e| CoordinatorError::Io {
            path: path.display().to_string(),
            source: e,
        };
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io)?;
        let mut committed = HashSet::new();
        for rec in buf.chunks(RECORD_LEN) {
            if rec.len() < RECORD_LEN {
                break; // a torn tail: never acknowledged
            }
            let xid = u64::from_le_bytes(rec[0..8].try_into().expect("8 bytes"));
            let crc = u32::from_le_bytes(rec[8..12].try_into().expect("4 bytes"));
            let magic = u32::from_le_bytes(rec[12..16].try_into().expect("4 bytes"));
            if magic == RECORD_MAGIC && crc == crc32c::crc32c(&rec[0..8]) {
                committed.insert(xid);
            } else {
                warn!(path = %path.display(), "skipping a torn commit record");
            }
        }
        Ok(TxnManager {
            active: Mutex::new(BTreeMap::new()),
            unfinished: Mutex::new(BTreeMap::new()),
            committed: Mutex::new(committed),
            log: Mutex::new(f),
            path,
        })
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

    pub fn is_active(&self, xid: Xid) -> bool {
        self.active.lock().contains_key(&xid)
    }

    pub fn is_committed(&self, xid: Xid) -> bool {
        self.committed.lock().contains(&xid)
    }

    /// Append the commit record for `xid` and make it durable.
    fn record_commit(&self, xid: Xid) -> Result<()> {
        let mut rec = [0u8; RECORD_LEN];
        rec[0..8].copy_from_slice(&xid.to_le_bytes());
        rec[8..12].copy_from_slice(&crc32c::crc32c(&xid.to_le_bytes()).to_le_bytes());
        rec[12..16].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        let mut f = self.log.lock();
        f.write_all(&rec)
            .and_then(|_| f.sync_data())
            .map_err(|e| CoordinatorError::Io {
                path: self.path.display().to_string(),
                source: e,
            })?;
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
}

impl Shared {
    /// Start a transaction: a fresh xid and a snapshot, atomically, so no
    /// snapshot can see an xid as finished before it started.
    pub fn begin(&self) -> Result<Arc<Txn>> {
        let xid = self.next_xid()?;
        let mut active = self.txns.active.lock();
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
        let active = self.txns.active.lock();
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
            self.txns.end(xid);
            return Ok(());
        }
        // Phase 1.
        let epoch = self.map().epoch;
        let calls = requests.iter().map(|&(id, requests)| async move {
            let node = self.node(id)?.clone();
            let mut c = node.grpc.clone();
            c.prepare(pb::TxnRequest {
                epoch,
                xid,
                requests,
            })
            .await
            .map(|r| r.into_inner().degraded_slices)
            .map_err(|s| node.err(s))
        });
        let mut degraded: BTreeSet<SliceId> = txn.work.lock().degraded.clone();
        for r in futures::future::join_all(calls).await {
            match r {
                Ok(d) => degraded.extend(d),
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
            if let Err(e) = self.mark_degraded(&degraded).await {
                self.abort(txn).await;
                return Err(e);
            }
        }
        // Decision point.
        if let Err(e) = self.txns.record_commit(xid) {
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
            self.txns.end(xid);
        } else {
            // Decided but not yet published everywhere: a node that did not
            // answer is probed at once; if it is dead its mirrors finish the
            // transaction during the failover. Acknowledge only once the
            // rows are visible (bounded: the decision is durable anyway).
            self.txns.unfinished.lock().insert(xid, left.clone());
            if let Some(me) = self.self_arc() {
                for id in &left {
                    me.probe_now(*id);
                }
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while self.txns.is_active(xid) && tokio::time::Instant::now() < deadline {
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
        let epoch = self.map().epoch;
        let participants = txn.participants();
        let calls = participants.iter().map(|&id| async move {
            if let Ok(node) = self.node(id) {
                let mut c = node.grpc.clone();
                if let Err(s) = c
                    .abort(pb::TxnRequest {
                        epoch,
                        xid,
                        requests: 0,
                    })
                    .await
                {
                    warn!(node = id, xid, error = %s, "abort not acknowledged");
                }
            }
        });
        futures::future::join_all(calls).await;
        self.txns.end(xid);
        debug!(xid, "aborted");
    }

    /// One resolver pass: every node's open transactions that no live
    /// coordinator transaction owns are committed (commit record present)
    /// or aborted (absent); committed transactions some node missed are
    /// retried. Returns how many were resolved.
    pub async fn resolve_once(&self) -> usize {
        let mut resolved = 0;
        let epoch = self.map().epoch;
        // Taken before this pass finishes transactions on the live nodes: a
        // committed transaction still waiting for a node that was already
        // down then is finished by that node's mirrors below, so it stops
        // waiting for it (unless some live node could not be reached). A
        // node can fail after the failover's own pass but before its commit
        // is recorded as unfinished; without this, that transaction would
        // wait for the dead node, and stay invisible, forever.
        let unfinished: Vec<(Xid, BTreeSet<NodeId>)> = self
            .txns
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
                if self.txns.is_active(t.xid) && !(t.prepared && self.txns.is_committed(t.xid)) {
                    continue;
                }
                let req = pb::TxnRequest {
                    epoch,
                    xid: t.xid,
                    requests: 0,
                };
                let r = if self.txns.is_committed(t.xid) {
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
                            committed = self.txns.is_committed(t.xid),
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
                self.txns.unfinished.lock().remove(&xid);
                self.txns.end(xid);
                resolved += 1;
            } else {
                self.txns.unfinished.lock().insert(xid, left);
            }
        }
        resolved
    }
}

/// Run the resolver every `every` until the process ends.
pub fn spawn_resolver(shared: Arc<Shared>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            shared.resolve_once().await;
        }
    })
}
