//! Installing the map on the nodes: every node not declared failed gets its
//! part (each copy it holds as (slice, segment) -> disk), its peers'
//! addresses, for each primary copy, whether to forward writes to the
//! mirror, and for each copy the node a damaged block of it is repaired
//! from. Calls go out in parallel so the window where nodes disagree on
//! the epoch stays short.
//!
//! It only sends what the map says; it never changes the map.

use std::time::Duration;

use slicedb_engine::proto::pb;
use tracing::warn;

use super::NodeHealth;
use crate::map::{CopyState, DistMap, Role};
use crate::nodes::NodeSet;
use crate::{CoordinatorError, Result};

/// Send every node its part of `map`. With `skip_unreachable`, a node that
/// does not answer is marked down, logged and skipped instead of failing
/// the call (it refuses commands until it has the map).
pub(super) async fn install_map(
    nodes: &NodeSet,
    map: &DistMap,
    deadline: Duration,
    skip_unreachable: bool,
    health: &NodeHealth,
) -> Result<()> {
    let peers: Vec<pb::Peer> = nodes
        .values()
        .map(|n| pb::Peer {
            node: n.id,
            address: n.address.clone(),
        })
        .collect();
    let calls = nodes.values().filter(|n| !map.is_down(n.id)).map(|n| {
        let peers = peers.clone();
        async move {
            let mut slices = Vec::new();
            for e in map.slices() {
                // The serving copy forwards to the copy that is in sync or
                // being resynced (the primary to its mirror; failed over,
                // the mirror to the primary copy being resynced).
                let serving = e.serving().ok().map(|(at, _)| at);
                let target = e.forward_target().map(|t| t.at.node);
                for c in e.copies.iter().filter(|c| c.at.node == n.id) {
                    let forward_to = target.filter(|_| serving == Some(c.at));
                    // A damaged block of this copy is repaired from the
                    // other copy that holds every row (in sync), else one
                    // being rebuilt (it holds what it has copied).
                    let other = |state| {
                        e.copies
                            .iter()
                            .find(|o| o.at.node != c.at.node && o.state == state)
                    };
                    let repair_from = other(CopyState::InSync)
                        .or_else(|| other(CopyState::Rebuilding))
                        .map(|o| o.at.node);
                    slices.push(pb::SliceAssignment {
                        slice: e.slice,
                        disk: c.at.disk,
                        segment: match c.role {
                            Role::Primary => pb::Segment::Primary,
                            Role::Mirror => pb::Segment::Mirror,
                        } as i32,
                        mirror_node: forward_to.unwrap_or(0),
                        mirror_active: forward_to.is_some(),
                        repair_source: repair_from.unwrap_or(0),
                        has_repair_source: repair_from.is_some(),
                    });
                }
            }
            let mut c = n.grpc.clone();
            let call = c.install_map(pb::InstallMapRequest {
                epoch: map.epoch(),
                node: n.id,
                slices,
                peers,
                mirror_timeout_ms: deadline.as_millis() as u64,
            });
            match tokio::time::timeout(deadline, call).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(s)) if !skip_unreachable => Err(n.err(s)),
                Err(_) if !skip_unreachable => Err(CoordinatorError::NodeUnreachable {
                    node: n.id,
                    address: n.address.clone(),
                    message: "no answer to InstallMap".into(),
                }),
                Ok(Err(s)) => {
                    health.mark(n.id, false, false);
                    warn!(node = n.id, error = %s, epoch = map.epoch(), "map not installed on an unreachable node");
                    Ok(())
                }
                Err(_) => {
                    health.mark(n.id, false, false);
                    warn!(node = n.id, epoch = map.epoch(), "map not installed: node did not answer");
                    Ok(())
                }
            }
        }
    });
    for r in futures::future::join_all(calls).await {
        r?;
    }
    Ok(())
}
