//! Regeneration: a node (or a disk of a running node) that has been down
//! for `regen_delay` without coming back has its copies rebuilt elsewhere,
//! online, so the cluster is fully protected again and survives the next
//! fault.
//!
//! The map decides where each new copy goes (`crate::map::regen`: a spare
//! if one is free, else spread over the survivors); the new copies start
//! `Stale` and empty, and the next resync round (`super::resync`) copies
//! each one whole from its slice's serving copy, node to node, while writes
//! are forwarded to it, then marks them in sync in one epoch. A node that
//! comes back after that holds no copy any more: it rejoins as a spare,
//! drops its old copies once it has the map (the node server does), and
//! from then on can take new copies like any spare.
//!
//! It changes the map only through the manager's `publish`.

use std::time::{Duration, Instant};

use slicedb_engine::proto::pb;
use slicedb_engine::NodeId;
use tracing::{info, warn};

use super::SystemManager;

impl SystemManager {
    /// Regenerate what `node` (or one of its disks) held if it has been
    /// down long enough (`now`: an admin asked, no waiting).
    pub(super) async fn maybe_regenerate(&mut self, node: NodeId, disk: Option<u32>, now: bool) {
        if self.shutting_down() || self.hooks.is_none() {
            return;
        }
        let since = *self
            .down_since
            .entry((node, disk))
            .or_insert_with(Instant::now);
        if !now && since.elapsed() < self.config.regen_delay {
            return;
        }
        let clean = self.clean_emptied_nodes().await;
        let mut next = self.map.clone();
        match next.regenerate(node, disk, &self.config.shapes, &clean) {
            Ok(placed) if placed.is_empty() => {}
            Ok(placed) => {
                let mut targets: Vec<NodeId> = placed.iter().map(|(_, at)| at.node).collect();
                targets.sort_unstable();
                targets.dedup();
                let mut disks: Vec<String> = placed
                    .iter()
                    .map(|(_, at)| format!("{}:{}", at.node, at.disk))
                    .collect();
                disks.sort_unstable();
                disks.dedup();
                let what = match disk {
                    Some(d) => format!("disk {d} of node {node}"),
                    None => format!("node {node}"),
                };
                next.bump(format!(
                    "{what} did not come back within {:?}: regenerating its {} copies onto nodes {targets:?} (disks {})",
                    self.config.regen_delay,
                    placed.len(),
                    disks.join(", ")
                ));
                info!(
                    node,
                    ?disk,
                    copies = placed.len(),
                    ?targets,
                    "regeneration placed"
                );
                self.regen_refused.remove(&(node, disk));
                if let Err(e) = self.publish(next).await {
                    warn!(error = %e, "regeneration map not installed everywhere");
                }
                self.schedule_resync().await;
            }
            Err(e) => {
                // Said once per fault, not every second (and each time an
                // admin asks).
                if self.regen_refused.insert((node, disk)) || now {
                    warn!(node, ?disk, error = %e, "regeneration not possible");
                    let mut next = self.map.clone();
                    next.bump(format!("regeneration refused: {e}"));
                    if let Err(e) = self.publish(next).await {
                        warn!(error = %e, "map not installed everywhere");
                    }
                }
            }
        }
    }

    /// Nodes emptied by an earlier regeneration that are up and report no
    /// copy held any more (they drop the old ones once a map no longer
    /// places them there: no slice, no space used in their primary and
    /// mirror segments, no open transaction): they can take new copies.
    async fn clean_emptied_nodes(&self) -> Vec<NodeId> {
        let mut clean = Vec::new();
        for n in self.nodes.values() {
            if !self.map.is_emptied(n.id) || self.map.is_down(n.id) {
                continue;
            }
            let mut c = n.health.clone();
            let st = tokio::time::timeout(STATUS_WAIT, c.status(pb::StatusRequest {})).await;
            if let Ok(Ok(st)) = st {
                let st = st.into_inner();
                // A transaction open there may still write an old copy.
                let holds = !st.txns.is_empty()
                    || st
                        .slices
                        .iter()
                        .any(|s| s.segment != pb::Segment::Temp as i32)
                    || st.disks.iter().any(|d| {
                        d.segments
                            .iter()
                            .any(|g| g.segment != pb::Segment::Temp as i32 && g.used > 0)
                    });
                if !holds {
                    clean.push(n.id);
                }
            }
        }
        clean
    }
}

/// How long an emptied node may take to say what it holds.
const STATUS_WAIT: Duration = Duration::from_millis(500);
