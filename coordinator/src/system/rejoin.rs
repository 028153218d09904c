//! Rejoin: a node declared failed that answers again (restarted with its
//! images, or awake after a hang) comes back into the map instead of
//! staying fenced. Its copies on disks it reports healthy return: a copy
//! that was the last in sync when it was lost (its slice has been
//! unavailable since, so nothing committed without it) is in sync at once;
//! every other one is `Stale` and the next resync round sends it only what
//! it lacks (`super::resync`). Copies on a disk it reports failed stay
//! lost. A disk whose metadata generation is below what it had reached
//! when the node failed holds a new image (the old one was deleted or
//! replaced): its copies come back stale and empty, never in sync, so a
//! slice whose last in-sync copy was there stays unavailable instead of
//! being served without its rows.
//!
//! It only changes the map through the manager's `publish`; it never
//! serves a copy the map does not record as holding every committed row.

use tracing::warn;

use super::SystemManager;
use slicedb_engine::proto::pb;
use slicedb_engine::NodeId;

impl SystemManager {
    /// `node` is down in the map but answered a probe.
    pub(super) async fn rejoin(&mut self, node: NodeId, st: &pb::StatusResponse) {
        // Not while the coordinator is still starting (its table fan-out
        // must not race an epoch change): the next probe asks again.
        if self.shutting_down() || self.hooks.is_none() {
            return;
        }
        let failed: Vec<u32> = st
            .disks
            .iter()
            .filter(|d| !d.failed.is_empty())
            .map(|d| d.disk)
            .collect();
        let mut next = self.map.clone();
        let generations: Vec<(u32, u64)> =
            st.disks.iter().map(|d| (d.disk, d.generation)).collect();
        let replaced = next.replaced_images(node, &generations);
        let Some((in_sync, stale)) = next.rejoin_node(node, &failed) else {
            return;
        };
        let new_images: String = replaced
            .iter()
            .map(|(d, had, has)| {
                format!("; disk {d} holds a new image (metadata generation {has}, had {had}): its copies start empty")
            })
            .collect();
        if !replaced.is_empty() {
            warn!(node, ?replaced, "node rejoined with new disk images");
        }
        next.bump(format!(
            "node {node} rejoined: {in_sync} copies in sync at once, {stale} to resync{new_images}"
        ));
        warn!(node, epoch = next.epoch(), in_sync, stale, "node rejoined");
        self.health.mark(node, true, false);
        self.down_since.remove(&(node, None));
        self.regen_refused.remove(&(node, None));
        if let Err(e) = self.publish(next).await {
            warn!(node, error = %e, "rejoin map not installed everywhere");
        }
        self.schedule_resync().await;
    }
}
