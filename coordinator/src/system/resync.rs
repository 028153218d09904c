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
//! ([`super::SystemHandle::resync_progress`], the `slicedb_resync` view).
//!
//! The copying runs in a spawned task that reports back with
//! [`Event::ResyncDone`]; the manager's loop never waits on a node for it,
//! and the task never changes the map.

use std::sync::Arc;
use std::time::{Duration, Instant};

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
                started: now,
                finished: None,
            })
            .collect();
        tokio::spawn(run_round(
            round,
            wait_below,
            hooks,
            self.nodes.clone(),
            self.reader.clone(),
            self.handle.clone(),
        ));
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

/// Wait for older transactions, make sure the targets know every table,
/// then pull every copy (targets in parallel, one copy at a time each).
async fn run_round(
    round: Vec<ResyncJob>,
    wait_below: Xid,
    hooks: Arc<dyn Hooks>,
    nodes: Arc<NodeSet>,
    map: MapReader,
    handle: SystemHandle,
) {
    let t0 = Instant::now();
    while hooks.oldest_unfinished() < wait_below {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut by_target: std::collections::BTreeMap<NodeId, Vec<ResyncJob>> = Default::default();
    for r in round {
        by_target.entry(r.target.node).or_default().push(r);
    }
    let board = handle.progress.clone();
    let per_target = by_target.into_iter().map(|(node, copies)| {
        let (hooks, nodes, map, board) = (hooks.clone(), nodes.clone(), map.clone(), board.clone());
        async move {
            pull_all(
                node,
                wait_below,
                copies,
                hooks.as_ref(),
                &nodes,
                &map,
                &board,
            )
            .await
        }
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

async fn pull_all(
    node: NodeId,
    wait_below: Xid,
    copies: Vec<ResyncJob>,
    hooks: &dyn Hooks,
    nodes: &NodeSet,
    map: &MapReader,
    board: &Board,
) -> RoundOutcome {
    let mut o = RoundOutcome::default();
    let tables = match hooks.ensure_tables(node, map.current().epoch()).await {
        Ok(t) => t,
        Err(e) => {
            let why = e.to_string();
            o.failed = copies.into_iter().map(|r| (r, why.clone())).collect();
            return o;
        }
    };
    for r in copies {
        note(board, &r, |p| {
            p.phase = "copying".into();
            p.tables_total = tables.len() as u32;
            p.started = Instant::now();
        });
        let pulled = match pull_one(&r, &tables, hooks, nodes, map, board).await {
            Ok(sent) => wait_resolved(node, wait_below, nodes).await.map(|()| sent),
            Err(e) => Err(e),
        };
        note(board, &r, |p| {
            p.phase = match &pulled {
                Ok(_) => "done".into(),
                Err(e) => format!("failed: {e}"),
            };
            p.finished = Some(Instant::now());
        });
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

/// Pull every table of one copy; a refused epoch (the map moved on while
/// the round ran) is retried on the newer map.
async fn pull_one(
    r: &ResyncJob,
    tables: &[u64],
    hooks: &dyn Hooks,
    nodes: &NodeSet,
    map: &MapReader,
    board: &Board,
) -> Result<pb::CopySliceResponse> {
    let n = nodes.get(&r.target.node).ok_or_else(|| {
        crate::CoordinatorError::Config(format!("map names unknown node {}", r.target.node))
    })?;
    let mut sent = pb::CopySliceResponse::default();
    for &table in tables {
        let xid = hooks.begin_copy()?;
        let got = copy_table(r, table, xid, n, map).await;
        // The target committed or aborted it; either way it is over.
        hooks.end_copy(xid);
        let got = got?;
        note(board, r, |p| {
            p.tables_done += 1;
            p.blocks += got.blocks;
            p.bytes += got.bytes;
        });
        sent.blocks += got.blocks;
        sent.bytes += got.bytes;
        sent.deletes += got.deletes;
    }
    Ok(sent)
}

/// One table of one copy under `xid`; a refused epoch (the map moved on
/// while the round ran) is retried on the newer map.
async fn copy_table(
    r: &ResyncJob,
    table: u64,
    xid: Xid,
    n: &crate::nodes::NodeClient,
    map: &MapReader,
) -> Result<pb::CopySliceResponse> {
    let mut tries = 0;
    loop {
        let req = pb::CopySliceRequest {
            epoch: map.current().epoch(),
            table,
            slice: r.slice,
            source_node: r.source.node,
            source_segment: segment(r.source_role),
            target_segment: segment(r.target_role),
            xid,
            incremental: true,
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

/// How long after a round with failures the next may start.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// How long a target may keep transactions older than the round in doubt.
const RESOLVE_WAIT: Duration = Duration::from_secs(30);

/// Wait until `node` holds no transaction older than the round (left in
/// doubt when it failed): its copy lacks their rows until the resolver
/// finishes them, so it must not count as in sync before.
async fn wait_resolved(node: NodeId, below: Xid, nodes: &NodeSet) -> Result<()> {
    let n = nodes
        .get(&node)
        .ok_or_else(|| crate::CoordinatorError::Config(format!("map names unknown node {node}")))?;
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
