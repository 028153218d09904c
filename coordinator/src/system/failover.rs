//! Failover: what the system manager does when a node or a disk is lost, or
//! a mirror misses a commit. The map changes first (epoch + 1: primaries on
//! the lost copies fail over to in-sync mirrors, their mirrors' primaries
//! become unprotected, a missed mirror becomes stale), is persisted, then
//! installed on every surviving node. A node that comes back is fenced by
//! the epoch until it rejoins (`super::rejoin`).
//!
//! It must never promote a copy the map does not record as in sync: the
//! transitions in `crate::map` make such a slice unavailable instead.

use std::collections::BTreeSet;

use slicedb_engine::{NodeId, SliceId};
use tracing::warn;

use super::{Probe, SystemManager};
use crate::map::Location;
use crate::Result;

impl SystemManager {
    /// A probe finished: an answer marks the node up, records its row counts
    /// and fails over the disks it reports failed; two misses fail the node.
    pub(super) async fn probed(&mut self, node: NodeId, outcome: Probe) {
        match outcome {
            Probe::Answered(st) if self.map.is_down(node) => self.rejoin(node, &st).await,
            Probe::Answered(st) => {
                self.health.mark(node, true, false);
                self.health.note_status(node, &st);
                for d in &st.disks {
                    if !d.failed.is_empty() {
                        if let Err(e) = self.fail_disk(node, d.disk, &d.failed).await {
                            warn!(node, disk = d.disk, error = %e, "disk failover failed");
                        }
                    }
                }
                // A disk of it that failed earlier may be due for
                // regeneration; a stale copy on it may be resynced now.
                for at in self.map.down_disks().to_vec() {
                    if at.node == node {
                        self.maybe_regenerate(node, Some(at.disk), false).await;
                    }
                }
                self.schedule_resync().await;
            }
            // Still down: regenerate its copies once it stayed away long
            // enough.
            Probe::Missed(_) if self.map.is_down(node) => {
                self.maybe_regenerate(node, None, false).await
            }
            Probe::Missed(why) => {
                let cause = format!("missed heartbeat and probe: {why}");
                if let Err(e) = self.fail_node(node, &cause).await {
                    warn!(node, error = %e, "failover failed");
                }
            }
        }
    }

    /// Declare `node` failed. Transactions it never acknowledged are then
    /// finished on the survivors by the resolver (`crate::txn`), which
    /// waits for this map to be installed.
    pub(super) async fn fail_node(&mut self, node: NodeId, cause: &str) -> Result<()> {
        if self.shutting_down() {
            return Ok(());
        }
        let mut next = self.map.clone();
        if !next.fail_node(node, cause, self.horizon()) {
            return Ok(());
        }
        // What its images had reached: one that comes back lower is new.
        next.note_images(node, &self.health.generations(node));
        warn!(
            node,
            epoch = next.epoch(),
            cause,
            "node failed: map changed"
        );
        self.health.mark(node, false, true);
        self.down_since
            .insert((node, None), std::time::Instant::now());
        self.publish(next).await
    }

    /// Declare one disk of a running node failed: only its slices move.
    async fn fail_disk(&mut self, node: NodeId, disk: u32, cause: &str) -> Result<()> {
        if self.shutting_down() {
            return Ok(());
        }
        let mut next = self.map.clone();
        if !next.fail_disk(Location { node, disk }, cause, self.horizon()) {
            return Ok(());
        }
        warn!(
            node,
            disk,
            epoch = next.epoch(),
            cause,
            "disk failed: map changed"
        );
        self.down_since
            .insert((node, Some(disk)), std::time::Instant::now());
        self.publish(next).await
    }

    /// These slices' mirrors missed a commit: their mirror copies are stale
    /// before the commit is acknowledged, so the map never claims a mirror
    /// holds rows it does not. A node that cannot be reached (often the
    /// very mirror that failed) gets the map when it is back; it refuses
    /// commands until then.
    pub(super) async fn mirrors_missed_commit(
        &mut self,
        slices: &BTreeSet<(SliceId, NodeId)>,
    ) -> Result<()> {
        let mut next = self.map.clone();
        if !next.mark_mirrors_stale(slices, self.horizon()) {
            return Ok(());
        }
        next.bump(format!(
            "mirror unreachable at commit: slices {slices:?} degraded"
        ));
        warn!(epoch = next.epoch(), slices = ?slices, "mirror unreachable: slices degraded");
        self.publish(next).await
    }
}
