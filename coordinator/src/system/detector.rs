//! Failure detection: a Status heartbeat to every live node each interval,
//! on the detector's own connection; a miss is probed again at once, and
//! the outcome goes to the system manager as an event. It also keeps what
//! heartbeats learn: each node's last known state and its row counts.
//!
//! It never changes the map: declaring a node failed is the system
//! manager's decision (`failover`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use slicedb_engine::proto::pb;
use slicedb_engine::NodeId;

use super::{Event, MapReader, Probe, SystemConfig, SystemHandle};
use crate::nodes::{NodeClient, NodeSet};
use crate::{CoordinatorError, Result};

/// What heartbeats last said of each node.
#[derive(Default)]
pub struct NodeHealth {
    /// Last known state per node ("up" / "down").
    state: Mutex<BTreeMap<NodeId, String>>,
    /// Rows per table on each node's primary and temp segments, as its last
    /// Status answer (every heartbeat) said: the optimizer's row counts.
    table_rows: Mutex<BTreeMap<NodeId, BTreeMap<u64, u64>>>,
    /// Each node's disks' metadata generations, as its last Status said.
    generations: Mutex<BTreeMap<NodeId, Vec<(u32, u64)>>>,
}

impl NodeHealth {
    /// Record whether `node` answered. A node the map declared failed stays
    /// down (fenced) even if it answers again, until it is regenerated.
    pub fn mark(&self, node: NodeId, up: bool, fenced: bool) {
        let up = up && !fenced;
        self.state
            .lock()
            .insert(node, if up { "up" } else { "down" }.to_string());
    }

    /// The last known state of every node that was ever marked.
    pub fn states(&self) -> BTreeMap<NodeId, String> {
        self.state.lock().clone()
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
        self.generations.lock().insert(
            node,
            st.disks.iter().map(|d| (d.disk, d.generation)).collect(),
        );
    }

    /// The metadata generations `node`'s disks had reached by its last
    /// Status answer (empty before any).
    pub fn generations(&self, node: NodeId) -> Vec<(u32, u64)> {
        self.generations
            .lock()
            .get(&node)
            .cloned()
            .unwrap_or_default()
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
}

/// How often a node declared failed is asked whether it is back.
const DOWN_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Heartbeat every live node each interval, and every node declared failed
/// each [`DOWN_PROBE_INTERVAL`] (on its own task, so a dead node's timeouts
/// never slow the live nodes' heartbeats), until the manager is gone.
pub(super) fn spawn_heartbeats(
    config: SystemConfig,
    nodes: Arc<NodeSet>,
    map: MapReader,
    handle: SystemHandle,
) {
    {
        let (nodes, map, handle) = (nodes.clone(), map.clone(), handle.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(DOWN_PROBE_INTERVAL).await;
                if handle.events.is_closed() {
                    return;
                }
                let current = map.current();
                for n in nodes.values().filter(|n| current.is_down(n.id)) {
                    tokio::spawn(probe(config.probe_timeout, n.clone(), handle.clone()));
                }
            }
        });
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(config.heartbeat_interval).await;
            if handle.events.is_closed() {
                return;
            }
            let current = map.current();
            let live = nodes.values().filter(|n| !current.is_down(n.id)).cloned();
            let probes = live.map(|n| probe(config.probe_timeout, n, handle.clone()));
            futures::future::join_all(probes).await;
        }
    });
}

/// Probe one node: a Status within `timeout`, retried once at once; the
/// outcome goes to the system manager.
pub(super) async fn probe(timeout: Duration, n: NodeClient, handle: SystemHandle) {
    let mut last = String::new();
    for _ in 0..2 {
        let mut c = n.health.clone();
        match tokio::time::timeout(timeout, c.status(pb::StatusRequest {})).await {
            Ok(Ok(st)) => {
                handle.send(Event::Probed {
                    node: n.id,
                    outcome: Probe::Answered(Box::new(st.into_inner())),
                });
                return;
            }
            Ok(Err(s)) => last = s.message().to_string(),
            Err(_) => last = format!("no answer in {timeout:?}"),
        }
    }
    handle.send(Event::Probed {
        node: n.id,
        outcome: Probe::Missed(last),
    });
}

/// At startup: wait until every node not declared failed answers a Status,
/// or fail naming the first that does not within `connect_timeout`.
pub async fn wait_for_nodes(
    nodes: &NodeSet,
    down: &[NodeId],
    health: &NodeHealth,
    connect_timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + connect_timeout;
    for n in nodes.values().filter(|n| !down.contains(&n.id)) {
        loop {
            let mut c = n.grpc.clone();
            match c.status(pb::StatusRequest {}).await {
                Ok(st) => {
                    health.mark(n.id, true, false);
                    health.note_status(n.id, st.get_ref());
                    break;
                }
                Err(s) if Instant::now() < deadline => {
                    tracing::debug!(node = n.id, error = %s, "node not answering yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => {
                    health.mark(n.id, false, false);
                    return Err(CoordinatorError::NodeUnreachable {
                        node: n.id,
                        address: n.address.clone(),
                        message: format!("no answer within {connect_timeout:?}: {}", s.message()),
                    });
                }
            }
        }
    }
    Ok(())
}
