//! Resync: copies that are behind (on a node that came back, or a mirror
//! that missed commits) brought back in sync online, sending only what they
//! lack.
//!
//! A copy that is behind is `Stale` in the map. Once its node is up and its
//! slice is served from an in-sync copy, one round:
//! 1. marks it `Rebuilding` (epoch + 1): from then on the serving copy
//!    forwards every transaction that starts writing the slice to it;
//! 2. waits until every transaction older than that map has finished (what
//!    they wrote was not forwarded; once committed on the source the copy
//!    below takes it);
//! 3. has the copy's node pull, table by table, what it lacks from the
//!    serving copy's node (`CopySlice`, incremental: the blocks of
//!    transactions it does not hold, and deletes it lacks), node to node;
//! 4. marks every copy that came through `InSync` in one epoch: a copy in
//!    the primary role serves its slice again from that map on.
//!
//! A copy that misses a forwarded commit meanwhile is marked `Stale` again
//! (`mirrors_missed_commit`), and so is one whose pull fails; a later round
//! starts it over. A node that fails mid-round loses its copies as usual.
//!
//! Each copy's progress is on a board every reader sees
//! ([`super::SystemHandle::resync_progress`], the `slicedb_resync` view):
//! bytes so far from the target's `Status` (polled while a table copies),
//! and a total: what finished tables sent, the source's total for the table
//! in flight, and for tables not started the source's bytes less the
//! target's (an estimate: exact for an empty target).
//!
//! Copies are paced at `copy_rate` bytes per second per target (a target
//! pulls two copies at a time, from different sources where it can, each
//! at half the rate), so that healing leaves room for queries.
//!
//! The copying runs in a spawned task that reports back with
//! [`Event::ResyncDone`]; the manager's loop never waits on a node for it,
//! and the task never changes the map.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use slicedb_engine::proto::{self, pb};
use slicedb_engine::{NodeId, SliceId, Xid};
use tracing::{info, warn};

use super::{Event, Hooks, MapReader, SystemHandle, SystemManager};
use crate::map::{Location, ResyncJob, Role};
use crate::nodes::NodeSet;
use crate::Result;

/// One copy of a round, as `slicedb_resync` shows it.
#[derive(Debug, Clone)]
pub struct CopyProgress {
    pub slice: SliceId,
    pub source_node: NodeId,
    pub target_node: NodeId,
    /// The target's segment: `primary` or `mirror`.
    pub segment: &'static str,
    /// waiting (for older transactions), copying, done, failed: why.
    pub phase: String,
    pub tables_done: u32,
    pub tables_total: u32,
    pub blocks: u64,
    pub bytes: u64,
    /// Bytes the whole copy will send, as far as known (see the module
    /// docs); 0 until the copy starts.
    pub total_bytes: u64,
    pub started: Instant,
    /// When it finished (done or failed).
    pub finished: Option<Instant>,
}

type Board = Arc<parking_lot::Mutex<Vec<CopyProgress>>>;

/// Update the board's row for `r`.
fn note(board: &Board, r: &ResyncJob, f: impl FnOnce(&mut CopyProgress)) {
    if let Some(p) = board
        .lock()
        .iter_mut()
        .find(|p| p.slice == r.slice && p.target_node == r.target.node)
    {
        f(p);
    }
}

/// What one round did.
#[derive(Debug, Default)]
pub(crate) struct RoundOutcome {
    pub done: Vec<ResyncJob>,
    pub failed: Vec<(ResyncJob, String)>,
    pub blocks: u64,
    pub bytes: u64,
    pub deletes: u64,
    pub took: Duration,
}

fn segment(role: Role) -> i32 {
    match role {
        Role::Primary => pb::Segment::Primary as i32,
        Role::Mirror => pb::Segment::Mirror as i32,
    }
}

impl SystemManager {
    /// Start a round if none runs and some copy is behind but could be
    /// resynced now.
    pub(super) async fn schedule_resync(&mut self) {
        if self.resync_running
            || self.shutting_down()
            || self.resync_after.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        let Some(hooks) = self.hooks.clone() else {
            return;
        };
        let mut next = self.map.clone();
        let round = next.begin_resync();
        if round.is_empty() {
            return;
        }
        next.bump(format!(
            "resync of {} copies started: {}",
            round.len(),
            describe(&round)
        ));
        info!(epoch = next.epoch(), copies = round.len(), "resync started");
        if let Err(e) = self.publish(next).await {
            warn!(error = %e, "resync map not installed everywhere");
        }
        // Every transaction that took an xid before this point may have
        // written without forwarding: wait for those to finish.
        let wait_below = hooks.xid_high_water();
        self.resync_running = true;
        let now = Instant::now();
        *self.handle.progress.lock() = round
            .iter()
            .map(|r| CopyProgress {
                slice: r.slice,
                source_node: r.source.node,
                target_node: r.target.node,
                segment: r.target_role.as_str(),
                phase: "waiting".into(),
                tables_done: 0,
                tables_total: 0,
                blocks: 0,
                bytes: 0,
                total_bytes: 0,
                started: now,
                finished: None,
            })
            .collect();
        let copier = Arc::new(Copier {
            hooks,
            nodes: self.nodes.clone(),
            map: self.reader.clone(),
            board: self.handle.progress.clone(),
            rate: self.config.copy_rate,
        });
        tokio::spawn(run_round(round, wait_below, copier, self.handle.clone()));
    }

    /// A round finished: copies that came through and are still
    /// `Rebuilding` become `InSync` (one epoch), the others `Stale`.
    pub(super) async fn resync_done(&mut self, outcome: RoundOutcome) {
        self.resync_running = false;
        let mut next = self.map.clone();
        let done: Vec<(SliceId, Location)> =
            outcome.done.iter().map(|r| (r.slice, r.target)).collect();
        let failed: Vec<(SliceId, Location)> = outcome
            .failed
            .iter()
            .map(|(r, _)| (r.slice, r.target))
            .collect();
        let synced = next.finish_resync(&done);
        let dropped = next.abandon_resync(&failed);
        for (r, why) in &outcome.failed {
            warn!(slice = r.slice, node = r.target.node, error = %why, "resync of a copy failed; it stays stale");
        }
        if synced + dropped > 0 {
            next.bump(format!(
                "resync finished: {synced} copies in sync, {dropped} still stale; \
                 {} blocks, {} bytes, {} deletes sent in {:.2} s",
                outcome.blocks,
                outcome.bytes,
                outcome.deletes,
                outcome.took.as_secs_f64()
            ));
            info!(
                epoch = next.epoch(),
                synced,
                dropped,
                bytes = outcome.bytes,
                "resync finished"
            );
            if let Err(e) = self.publish(next).await {
                warn!(error = %e, "resynced map not installed everywhere");
            }
        }
        if dropped == 0 {
            self.schedule_resync().await;
        } else {
            // Try the failed ones again a little later, not in a loop.
            self.resync_after = Some(Instant::now() + RETRY_AFTER);
        }
    }
}

fn describe(round: &[ResyncJob]) -> String {
    round
        .iter()
        .map(|r| {
            format!(
                "slice {} node {} <- node {}",
                r.slice, r.target.node, r.source.node
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What every copy of a round shares.
struct Copier {
    hooks: Arc<dyn Hooks>,
    nodes: Arc<NodeSet>,
    map: MapReader,
    board: Board,
    /// Bytes per second per target, shared by the copies it pulls at once
    /// (0: no limit).
    rate: u64,
}

/// Copies a target pulls at once (each at its share of the rate): while
/// one waits on its source's reads or its own writes, the other moves.
const PULLS_PER_TARGET: usize = 2;

/// Copies reordered so that consecutive ones come from different sources
/// where they can (round robin over the sources, each in its order).
fn interleave_sources(copies: Vec<ResyncJob>) -> Vec<ResyncJob> {
    let mut by_source: std::collections::BTreeMap<NodeId, std::collections::VecDeque<ResyncJob>> =
        Default::default();
    for r in copies {
        by_source.entry(r.source.node).or_default().push_back(r);
    }
    let mut out = Vec::new();
    while !by_source.is_empty() {
        by_source.retain(|_, q| {
            if let Some(r) = q.pop_front() {
                out.push(r);
            }
            !q.is_empty()
        });
    }
    out
}

/// How often the target's progress is read while a table copies.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Wait for older transactions, make sure the targets know every table,
/// then pull every copy (targets in parallel, `PULLS_PER_TARGET` copies
/// at a time each).
async fn run_round(
    round: Vec<ResyncJob>,
    wait_below: Xid,
    copier: Arc<Copier>,
    handle: SystemHandle,
) {
    let t0 = Instant::now();
    while copier.hooks.oldest_unfinished() < wait_below {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut by_target: std::collections::BTreeMap<NodeId, Vec<ResyncJob>> = Default::default();
    for r in round {
        by_target.entry(r.target.node).or_default().push(r);
    }
    let per_target = by_target.into_iter().map(|(node, copies)| {
        let copier = copier.clone();
        async move { copier.pull_all(node, wait_below, copies).await }
    });
    let mut outcome = RoundOutcome::default();
    for o in futures::future::join_all(per_target).await {
        outcome.done.extend(o.done);
        outcome.failed.extend(o.failed);
        outcome.blocks += o.blocks;
        outcome.bytes += o.bytes;
        outcome.deletes += o.deletes;
    }
    outcome.took = t0.elapsed();
    handle.send(Event::ResyncDone(Box::new(outcome)));
}

impl Copier {
    fn node(&self, id: NodeId) -> Result<&crate::nodes::NodeClient> {
        crate::nodes::client(&self.nodes, id)
    }

    async fn pull_all(
        &self,
        node: NodeId,
        wait_below: Xid,
        copies: Vec<ResyncJob>,
    ) -> RoundOutcome {
        let mut o = RoundOutcome::default();
        let tables = match self
            .hooks
            .ensure_tables(node, self.map.current().epoch())
            .await
        {
            Ok(t) => t,
            Err(e) => {
                let why = e.to_string();
                o.failed = copies.into_iter().map(|r| (r, why.clone())).collect();
                return o;
            }
        };
        // Copies from different sources first, so that the ones pulled at
        // once read different disks.
        let copies = interleave_sources(copies);
        let tables = &tables;
        let mut pulls = futures::stream::iter(copies.into_iter().map(|r| async move {
            note(&self.board, &r, |p| {
                p.phase = "copying".into();
                p.tables_total = tables.len() as u32;
                p.started = Instant::now();
            });
            let pulled = match self.pull_one(&r, tables).await {
                Ok(sent) => wait_resolved(node, wait_below, &self.nodes)
                    .await
                    .map(|()| sent),
                Err(e) => Err(e),
            };
            note(&self.board, &r, |p| {
                p.phase = match &pulled {
                    Ok(_) => "done".into(),
                    Err(e) => format!("failed: {e}"),
                };
                if let Ok(sent) = &pulled {
                    p.total_bytes = sent.bytes;
                }
                p.finished = Some(Instant::now());
            });
            (r, pulled)
        }))
        .buffer_unordered(PULLS_PER_TARGET);
        while let Some((r, pulled)) = pulls.next().await {
            match pulled {
                Ok(sent) => {
                    o.blocks += sent.blocks;
                    o.bytes += sent.bytes;
                    o.deletes += sent.deletes;
                    o.done.push(r);
                }
                Err(e) => o.failed.push((r, e.to_string())),
            }
        }
        o
    }

    /// Bytes each table's copy is expected to send: the source's bytes of
    /// the slice less the target's (0 where unknown).
    async fn estimate(&self, r: &ResyncJob, tables: &[u64]) -> Vec<u64> {
        let held = |node: NodeId, role: Role| async move {
            let Ok(n) = self.node(node) else {
                return Default::default();
            };
            let want = segment(role);
            let mut c = n.health.clone();
            match c.status(pb::StatusRequest {}).await {
                Ok(st) => st
                    .into_inner()
                    .slices
                    .into_iter()
                    .filter(|s| s.slice == r.slice && s.segment == want)
                    .map(|s| (s.table, s.bytes))
                    .collect::<std::collections::HashMap<u64, u64>>(),
                Err(_) => Default::default(),
            }
        };
        let (source, target) = futures::join!(
            held(r.source.node, r.source_role),
            held(r.target.node, r.target_role)
        );
        tables
            .iter()
            .map(|t| {
                source
                    .get(t)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(target.get(t).copied().unwrap_or(0))
            })
            .collect()
    }

    /// Pull every table of one copy, each under its own xid.
    async fn pull_one(&self, r: &ResyncJob, tables: &[u64]) -> Result<pb::CopySliceResponse> {
        let n = self.node(r.target.node)?;
        let estimate = self.estimate(r, tables).await;
        let mut sent = pb::CopySliceResponse::default();
        for (i, &table) in tables.iter().enumerate() {
            let later: u64 = estimate[i + 1..].iter().sum();
            let xid = self.hooks.begin_copy()?;
            let got = {
                let copying = self.copy_table(r, table, xid, n);
                tokio::pin!(copying);
                let mut tick = tokio::time::interval(PROGRESS_EVERY);
                loop {
                    tokio::select! {
                        got = &mut copying => break got,
                        _ = tick.tick() => {
                            let (blocks, bytes, total) = in_flight(n, xid).await;
                            note(&self.board, r, |p| {
                                p.bytes = sent.bytes + bytes;
                                p.blocks = sent.blocks + blocks;
                                let table_total = if total > 0 { total } else { estimate[i] };
                                p.total_bytes = sent.bytes + table_total.max(bytes) + later;
                            });
                        }
                    }
                }
            };
            // The target committed or aborted it; either way it is over.
            self.hooks.end_copy(xid);
            let got = got?;
            sent.blocks += got.blocks;
            sent.bytes += got.bytes;
            sent.deletes += got.deletes;
            note(&self.board, r, |p| {
                p.tables_done += 1;
                p.blocks = sent.blocks;
                p.bytes = sent.bytes;
                p.total_bytes = sent.bytes + later;
            });
        }
        Ok(sent)
    }

    /// One table of one copy under `xid`; a refused epoch (the map moved
    /// on while the round ran) is retried on the newer map.
    async fn copy_table(
        &self,
        r: &ResyncJob,
        table: u64,
        xid: Xid,
        n: &crate::nodes::NodeClient,
    ) -> Result<pb::CopySliceResponse> {
        let mut tries = 0;
        loop {
            let req = pb::CopySliceRequest {
                epoch: self.map.current().epoch(),
                table,
                slice: r.slice,
                source_node: r.source.node,
                source_segment: segment(r.source_role),
                target_segment: segment(r.target_role),
                xid,
                incremental: true,
                max_bytes_per_sec: self.rate.div_ceil(PULLS_PER_TARGET as u64),
            };
            let mut c = n.grpc.clone();
            match c.copy_slice(req).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(s) if tries < 3 && proto::error_kind(&s) == proto::ErrorKind::StaleEpoch => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => return Err(n.err(s)),
            }
        }
    }
}

/// What the target reports of the copy under `xid`: blocks and bytes so
/// far, and the source's total (0: not known yet or not reachable).
async fn in_flight(n: &crate::nodes::NodeClient, xid: Xid) -> (u64, u64, u64) {
    let mut c = n.health.clone();
    match tokio::time::timeout(PROGRESS_EVERY, c.status(pb::StatusRequest {})).await {
        Ok(Ok(st)) => st
            .into_inner()
            .copies
            .into_iter()
            .find(|c| c.xid == xid)
            .map_or((0, 0, 0), |c| (c.blocks, c.bytes, c.total_bytes)),
        _ => (0, 0, 0),
    }
}

/// How long after a round with failures the next may start.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// How long a target may keep transactions older than the round in doubt.
const RESOLVE_WAIT: Duration = Duration::from_secs(30);

/// Wait until `node` holds no transaction older than the round (left in
/// doubt when it failed): its copy lacks their rows until the resolver
/// finishes them, so it must not count as in sync before.
async fn wait_resolved(node: NodeId, below: Xid, nodes: &NodeSet) -> Result<()> {
    let n = crate::nodes::client(nodes, node)?;
    let deadline = Instant::now() + RESOLVE_WAIT;
    loop {
        let mut c = n.health.clone();
        let st = c.status(pb::StatusRequest {}).await.map_err(|s| n.err(s))?;
        let old: Vec<Xid> = st
            .into_inner()
            .txns
            .iter()
            .filter(|t| t.prepared && t.xid < below)
            .map(|t| t.xid)
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(crate::CoordinatorError::Healing(format!(
                "node {node} still holds transactions {old:?} in doubt after {RESOLVE_WAIT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
