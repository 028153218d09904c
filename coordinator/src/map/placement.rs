//! Placement: where a slice's copies go, and the rules every map must keep.
//!
//! A [`Placement`] only decides (which node and disk holds which copy); it
//! never moves data and never changes a live map. [`check`] is the one
//! place the rules are written down: exactly one primary copy per slice, no
//! two copies of a slice on one node, slice ids dense from 0. Later rules
//! (not two copies in one failure set) belong here too.

use std::collections::BTreeSet;

use slicedb_engine::{NodeId, SliceId};

use super::{CopyState, DistMap, Location, Role, SliceCopy, SliceEntry};
use crate::{CoordinatorError, Result};

/// A node as placement sees it.
#[derive(Debug, Clone, Copy)]
pub struct NodeShape {
    pub node: NodeId,
    pub disks: u32,
    /// A spare gets no slices when the map is built.
    pub spare: bool,
    /// Its last `spare_disks` disks get no slices when the map is built:
    /// they take over a failed disk of this node (regeneration).
    pub spare_disks: u32,
}

/// A way of laying a fresh cluster's slices out.
pub trait Placement {
    /// The name recorded in the map (`placement`).
    fn name(&self) -> &'static str;
    /// The slices of a new map: `slices_per_disk` primary copies on every
    /// disk of every node, each with its mirror copies, all in sync. The
    /// result must pass [`check`].
    fn place(&self, nodes: &[NodeShape], slices_per_disk: u32) -> Result<Vec<SliceEntry>>;
}

/// Ring placement: node i's primaries are mirrored on node i+1 (disks taken
/// round robin), so a mirror is never on its primary's node and every node
/// holds as many mirrors as primaries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ring;

impl Placement for Ring {
    fn name(&self) -> &'static str {
        "ring"
    }

    fn place(&self, nodes: &[NodeShape], slices_per_disk: u32) -> Result<Vec<SliceEntry>> {
        if nodes.is_empty() {
            return Err(CoordinatorError::Config(
                "a cluster needs at least one node".into(),
            ));
        }
        if slices_per_disk == 0 || nodes.iter().any(|n| n.disks == 0) {
            return Err(CoordinatorError::Config(
                "every node needs at least one disk and one slice per disk".into(),
            ));
        }
        let mut slices = Vec::new();
        let mut mirror_disk_cursor = vec![0u32; nodes.len()];
        let mut next: SliceId = 0;
        let in_sync = |at, role| SliceCopy {
            at,
            role,
            state: CopyState::InSync,
            behind_from: None,
        };
        // Interleave nodes so consecutive slice ids land on different nodes.
        let max_disks = nodes.iter().map(|n| n.disks).max().unwrap_or(1);
        for _round in 0..slices_per_disk {
            for disk in 0..max_disks {
                for (i, n) in nodes.iter().enumerate() {
                    if disk >= n.disks {
                        continue;
                    }
                    let mut copies = vec![in_sync(Location { node: n.node, disk }, Role::Primary)];
                    if nodes.len() > 1 {
                        let j = (i + 1) % nodes.len();
                        let m = nodes[j];
                        let d = mirror_disk_cursor[j] % m.disks;
                        mirror_disk_cursor[j] += 1;
                        copies.push(in_sync(
                            Location {
                                node: m.node,
                                disk: d,
                            },
                            Role::Mirror,
                        ));
                    }
                    slices.push(SliceEntry {
                        slice: next,
                        copies,
                    });
                    next += 1;
                }
            }
        }
        Ok(slices)
    }
}

/// The rules every map keeps, whoever built or changed it.
pub fn check(map: &DistMap) -> Result<()> {
    let bad = |why: String| Err(CoordinatorError::Catalog(format!("invalid map: {why}")));
    for (i, e) in map.slices.iter().enumerate() {
        if e.slice as usize != i {
            return bad(format!("slice {} at position {i}", e.slice));
        }
        let primaries = e.copies.iter().filter(|c| c.role == Role::Primary).count();
        if primaries != 1 {
            return bad(format!(
                "slice {} has {primaries} primary copies (it needs one)",
                e.slice
            ));
        }
        let nodes: BTreeSet<NodeId> = e.copies.iter().map(|c| c.at.node).collect();
        if nodes.len() != e.copies.len() {
            return bad(format!(
                "slice {} has two copies on one node: {:?}",
                e.slice, e.copies
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_refuses_two_copies_on_one_node_and_two_primaries() {
        let shape: Vec<_> = (0..3)
            .map(|node| NodeShape {
                node,
                disks: 2,
                spare: false,
                spare_disks: 0,
            })
            .collect();
        let good = DistMap::build(&Ring, &shape, 2).unwrap();
        assert!(check(&good).is_ok());

        let mut same_node = good.clone();
        let p = same_node.slices[0].primary().at;
        same_node.slices[0].copies[1].at = Location {
            node: p.node,
            disk: p.disk + 1,
        };
        let e = check(&same_node).unwrap_err().to_string();
        assert!(e.contains("two copies on one node"), "{e}");

        let mut two_primaries = good.clone();
        two_primaries.slices[1].copies[1].role = Role::Primary;
        let e = check(&two_primaries).unwrap_err().to_string();
        assert!(e.contains("2 primary copies"), "{e}");

        assert!(Ring.place(&[], 4).is_err());
        assert!(Ring.place(&shape, 0).is_err());
    }
}
