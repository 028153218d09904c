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
use crate::map::Space;
use crate::map::{Location, Role};

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
        // Nothing left to place (regenerated already, or no slice served
        // elsewhere): no need to ask every node for its space.
        if !self.map.has_copies_to_regenerate(node, disk) {
            return;
        }
        let (clean, space) = self.survey().await;
        let mut next = self.map.clone();
        match next.regenerate(node, disk, &self.config.shapes, &clean, &space) {
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

    /// An admin asked (REGENERATE): every up node that misses a probe
    /// (twice, within the probe timeout) is failed now, as the detector
    /// would a moment later, so that a node killed just before is
    /// regenerated too; then every failed node and disk is regenerated at
    /// once.
    pub(super) async fn regenerate_now(&mut self) {
        let timeout = self.config.probe_timeout;
        let up: Vec<crate::nodes::NodeClient> = self
            .nodes
            .values()
            .filter(|n| !self.map.is_down(n.id))
            .cloned()
            .collect();
        let missed = futures::future::join_all(up.iter().map(|n| async move {
            for _ in 0..2 {
                let mut c = n.health.clone();
                if let Ok(Ok(_)) =
                    tokio::time::timeout(timeout, c.status(pb::StatusRequest {})).await
                {
                    return None;
                }
            }
            Some(n.id)
        }))
        .await;
        for node in missed.into_iter().flatten() {
            let cause = format!("no answer to the probe of REGENERATE in {timeout:?}");
            if let Err(e) = self.fail_node(node, &cause).await {
                warn!(node, error = %e, "failover failed");
            }
        }
        for node in self.map.down().to_vec() {
            self.maybe_regenerate(node, None, true).await;
        }
        for at in self.map.down_disks().to_vec() {
            self.maybe_regenerate(at.node, Some(at.disk), true).await;
        }
    }

    /// What the up nodes say (each within [`STATUS_WAIT`]): the nodes
    /// emptied by an earlier regeneration that report no copy held any more
    /// (they drop the old ones once a map no longer places them there: no
    /// slice, no space used in their primary and mirror segments, no open
    /// transaction), which can take new copies; and the space a new copy
    /// needs and each disk has.
    async fn survey(&self) -> (Vec<NodeId>, Space) {
        let mut clean = Vec::new();
        let mut space = Space::default();
        let up = self.nodes.values().filter(|n| !self.map.is_down(n.id));
        let answers = futures::future::join_all(up.map(|n| async move {
            let mut c = n.health.clone();
            let st = tokio::time::timeout(STATUS_WAIT, c.status(pb::StatusRequest {})).await;
            (n.id, st.ok().and_then(|r| r.ok()).map(|r| r.into_inner()))
        }))
        .await;
        let role = |segment: i32| match pb::Segment::try_from(segment) {
            Ok(pb::Segment::Primary) => Some(Role::Primary),
            Ok(pb::Segment::Mirror) => Some(Role::Mirror),
            _ => None,
        };
        for (node, st) in answers {
            let Some(st) = st else { continue };
            for d in &st.disks {
                let at = Location { node, disk: d.disk };
                for g in &d.segments {
                    if let Some(r) = role(g.segment) {
                        space.free.insert((at, r), g.bytes.saturating_sub(g.used));
                    }
                }
            }
            // The serving copy's bytes: what a new copy of its slice takes.
            for s in &st.slices {
                let Some(r) = role(s.segment) else { continue };
                let at = Location { node, disk: s.disk };
                let serving = self
                    .map
                    .slices()
                    .get(s.slice as usize)
                    .and_then(|e| e.serving().ok());
                if serving == Some((at, r == Role::Mirror)) {
                    *space.need.entry(s.slice).or_default() += s.bytes;
                }
            }
            if self.map.is_emptied(node) {
                // A transaction open there may still write an old copy.
                let holds = !st.txns.is_empty()
                    || st.slices.iter().any(|s| role(s.segment).is_some())
                    || st.disks.iter().any(|d| {
                        d.segments
                            .iter()
                            .any(|g| role(g.segment).is_some() && g.used > 0)
                    });
                if !holds {
                    clean.push(node);
                }
            }
        }
        (clean, space)
    }
}

/// How long an up node may take to say what it holds.
const STATUS_WAIT: Duration = Duration::from_millis(500);
