//! Regeneration's placement: where the copies a failed node or disk held
//! go when it has not come back. A pure transition of the map, like the
//! fault transitions in `super`: it never moves data (the system manager's
//! resync rounds copy the new copies in) and never publishes a map.
//!
//! Each copy lost there, of a slice still served from an in-sync copy, is
//! replaced by a new copy in the same role, on a node that holds nothing of
//! it (it fills by the resync rounds' incremental copy: everything but the
//! transactions forwarded to it meanwhile) (a lost primary is rebuilt
//! into a primary segment from the serving mirror, claim 23; a lost mirror
//! into a mirror segment from the primary, claim 24) on a spare if one is
//! free (a configured spare, or a node an earlier regeneration emptied once
//! it is known to have dropped its old copies, that holds nothing; one
//! spare takes all it has room for, the others stay free), else on the surviving node holding the fewest copies (declustered:
//! every survivor takes some), never on a node that holds a copy of that
//! slice, and only where it fits: the segment of its role has room for the
//! serving copy's bytes and some slack ([`Space`], from the nodes' Status).
//! A slice with no in-sync copy keeps its lost copies: one of them
//! may be the last in sync and come back. With no room for every copy,
//! nothing changes and the error says why.
//!
//! A failed disk of a node that has a free spare disk (one of its last
//! `spare_disks`, holding no copy, not failed) is replaced by that disk:
//! every copy the failed disk held goes there, in its role (claims 44-46),
//! and nothing leaves the node. Without one, its copies go elsewhere as a
//! failed node's do.

use std::collections::BTreeMap;

use slicedb_engine::{NodeId, SliceId};

use super::{CopyState, DistMap, Location, NodeShape, Role};
use crate::{CoordinatorError, Result};

/// What the nodes said of their space, for placing new copies: the free
/// bytes of each disk's primary and mirror segments, and the bytes of each
/// slice's serving copy (what a new copy of it will take). A location or
/// slice it does not know limits nothing.
#[derive(Debug, Clone, Default)]
pub struct Space {
    pub free: BTreeMap<(Location, Role), u64>,
    pub need: BTreeMap<SliceId, u64>,
}

impl Space {
    /// Room kept beyond a copy's bytes: extents are allocated whole per
    /// table, and writes forwarded during the copy land there too.
    const SLACK: u64 = 64 << 20;

    /// Whether a new copy of `slice` in `role` fits at `at`.
    fn fits(&self, at: Location, role: Role, slice: SliceId) -> bool {
        match (self.free.get(&(at, role)), self.need.get(&slice)) {
            (Some(&free), Some(&need)) => free >= need + need / 16 + Self::SLACK,
            _ => true,
        }
    }

    /// Count a new copy of `slice` at `at` against its room.
    fn take(&mut self, at: Location, role: Role, slice: SliceId) {
        let need = self.need.get(&slice).copied().unwrap_or(0);
        if let Some(free) = self.free.get_mut(&(at, role)) {
            *free = free.saturating_sub(need);
        }
    }
}

impl DistMap {
    /// Whether `node` (or its `disk`) lost copies of slices still served
    /// elsewhere: what [`DistMap::regenerate`] would place.
    pub(crate) fn has_copies_to_regenerate(&self, node: NodeId, disk: Option<u32>) -> bool {
        self.slices.iter().any(|e| {
            e.serving_index().is_some()
                && e.copies.iter().any(|c| {
                    c.state == CopyState::Lost
                        && c.at.node == node
                        && disk.is_none_or(|d| d == c.at.disk)
                })
        })
    }

    /// Replace the copies lost at `lost` (a whole node: `disk` None) by new
    /// copies over `nodes` (the configuration; spares first). `clean`:
    /// nodes emptied by an earlier regeneration that are known to have
    /// dropped every old copy since. Returns how many were placed and on
    /// which nodes.
    pub(crate) fn regenerate(
        &mut self,
        node: NodeId,
        disk: Option<u32>,
        nodes: &[NodeShape],
        clean: &[NodeId],
        space: &Space,
    ) -> Result<Vec<(u32, Location)>> {
        let mut space = space.clone();
        let lost_here = |at: Location| at.node == node && disk.is_none_or(|d| d == at.disk);
        // A node emptied by an earlier regeneration drops its old copies
        // once it has a map again; until it is known to hold none, a copy
        // placed there would count old blocks as held, so it takes none.
        let usable = |n: &NodeShape, map: &DistMap| {
            !map.down.contains(&n.node)
                && (!map.emptied.contains(&n.node) || clean.contains(&n.node))
        };
        // Copies each node holds now, and per disk (balance).
        let mut load: BTreeMap<Location, usize> = BTreeMap::new();
        for n in nodes.iter().filter(|n| usable(n, self)) {
            for d in 0..n.disks {
                let at = Location {
                    node: n.node,
                    disk: d,
                };
                if !self.down_disks.contains(&at) {
                    load.insert(at, 0);
                }
            }
        }
        for e in &self.slices {
            for c in &e.copies {
                if let Some(n) = load.get_mut(&c.at) {
                    *n += 1;
                }
            }
        }
        let node_load = |load: &BTreeMap<Location, usize>, n: NodeId| -> usize {
            load.iter()
                .filter(|(l, _)| l.node == n)
                .map(|(_, c)| c)
                .sum()
        };
        // Free spares: configured spares and emptied nodes that hold
        // nothing yet (one that took copies before is a survivor now).
        let free: std::collections::BTreeSet<NodeId> = nodes
            .iter()
            .filter(|n| n.spare || self.emptied.contains(&n.node))
            .filter(|n| load.keys().any(|l| l.node == n.node) && node_load(&load, n.node) == 0)
            .map(|n| n.node)
            .collect();
        let spare = |n: NodeId| free.contains(&n);
        // A failed disk's stand-in on its own node: a free spare disk.
        let stand_in = disk.and_then(|_| {
            let shape = nodes.iter().find(|n| n.node == node)?;
            (shape.disks - shape.spare_disks.min(shape.disks)..shape.disks)
                .map(|d| Location { node, disk: d })
                .find(|at| load.get(at) == Some(&0))
        });
        let mut next = self.clone();
        let mut placed = Vec::new();
        let mut no_room = Vec::new();
        let mut no_space = Vec::new();
        let mut taker: Option<NodeId> = None;
        for e in &mut next.slices {
            if e.serving_index().is_none() {
                continue;
            }
            for i in 0..e.copies.len() {
                let c = e.copies[i];
                if c.state != CopyState::Lost || !lost_here(c.at) {
                    continue;
                }
                let holders: Vec<NodeId> = e.copies.iter().map(|c| c.at.node).collect();
                let fits = |at: Location| space.fits(at, c.role, e.slice);
                // The node's spare disk; else spares before survivors, then
                // the least loaded node and disk; ties by location. Only
                // where the copy fits.
                let candidates: Vec<Location> = load
                    .keys()
                    .filter(|l| !holders.contains(&l.node))
                    .copied()
                    .collect();
                // One free spare takes the lost copies whole where it has
                // room (the first one picked), so the others stay free for
                // the next fault.
                let target = stand_in.filter(|&at| fits(at)).or_else(|| {
                    candidates
                        .iter()
                        .filter(|&&l| fits(l))
                        .min_by_key(|&&l| {
                            (
                                !spare(l.node),
                                taker.is_some_and(|t| t != l.node),
                                node_load(&load, l.node),
                                load[&l],
                                l,
                            )
                        })
                        .copied()
                });
                let Some(at) = target else {
                    if candidates.is_empty() && stand_in.is_none() {
                        no_room.push(e.slice);
                    } else {
                        no_space.push(e.slice);
                    }
                    continue;
                };
                space.take(at, c.role, e.slice);
                if taker.is_none() && spare(at.node) {
                    taker = Some(at.node);
                }
                *load.entry(at).or_default() += 1;
                let c = &mut e.copies[i];
                c.at = at;
                c.state = CopyState::Stale;
                c.behind_from = Some(0);
                placed.push((e.slice, at));
            }
        }
        if !no_room.is_empty() {
            return Err(CoordinatorError::Healing(format!(
                "no node has room for a new copy of slices {no_room:?} (every up node holds one already): \
                 add a spare node or bring node {node} back"
            )));
        }
        if !no_space.is_empty() {
            let need: u64 = no_space
                .iter()
                .filter_map(|s| space.need.get(s))
                .max()
                .copied()
                .unwrap_or(0);
            return Err(CoordinatorError::Healing(format!(
                "no node that could take a new copy of slices {no_space:?} has the free space for it \
                 (up to {} MB each, in the segment of its role): add a spare node or larger disks, \
                 or bring node {node} back",
                need / 1_000_000
            )));
        }
        super::placement::check(&next)?;
        let holds_any = next
            .slices
            .iter()
            .any(|e| e.copies.iter().any(|c| c.at.node == node));
        if disk.is_none() && !holds_any && !next.emptied.contains(&node) {
            next.emptied.push(node);
        }
        // An emptied node that took copies holds some again.
        let holders: std::collections::BTreeSet<NodeId> = next
            .slices
            .iter()
            .flat_map(|e| e.copies.iter().map(|c| c.at.node))
            .collect();
        next.emptied.retain(|n| !holders.contains(n));
        *self = next;
        Ok(placed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::{Ring, Role};

    fn shapes(spare_disks: u32) -> Vec<NodeShape> {
        (0..3)
            .map(|node| NodeShape {
                node,
                disks: 2,
                spare: false,
                spare_disks,
            })
            .collect()
    }

    /// Three nodes of two disks, and spare nodes `spares` like them.
    fn with_spares(spares: &[NodeId]) -> Vec<NodeShape> {
        let mut nodes = shapes(0);
        nodes.extend(spares.iter().map(|&node| NodeShape {
            node,
            disks: 2,
            spare: true,
            spare_disks: 0,
        }));
        nodes
    }

    /// Every copy at `at` and its role, by slice.
    fn copies_at(map: &DistMap, at: Location) -> Vec<(u32, Role)> {
        map.slices
            .iter()
            .flat_map(|e| {
                e.copies
                    .iter()
                    .filter(move |c| c.at == at)
                    .map(move |c| (e.slice, c.role))
            })
            .collect()
    }

    #[test]
    fn a_failed_disk_is_replaced_by_its_nodes_spare_disk_else_goes_elsewhere() {
        let disk0 = Location { node: 0, disk: 0 };
        let disk1 = Location { node: 0, disk: 1 };
        // One spare disk per node: disk 1 holds nothing at first.
        let nodes = shapes(1);
        let mut map = DistMap::build(&Ring, &nodes, 2).unwrap();
        assert!(
            copies_at(&map, disk1).is_empty(),
            "a spare disk starts empty"
        );
        let lost = copies_at(&map, disk0);
        assert!(!lost.is_empty());
        assert!(map.fail_disk(disk0, "test", 1));
        let placed = map
            .regenerate(0, Some(0), &nodes, &[], &Space::default())
            .unwrap();
        assert_eq!(placed.len(), lost.len());
        assert!(placed.iter().all(|(_, at)| *at == disk1), "{placed:?}");
        // The same copies, in the same roles, now on the spare disk.
        assert_eq!(copies_at(&map, disk1), lost);
        crate::map::placement::check(&map).unwrap();

        // The spare disk is taken: a second failed disk of node 0 (the
        // stand-in itself) goes to other nodes.
        assert!(map.fail_disk(disk1, "test", 2));
        let placed = map
            .regenerate(0, Some(1), &nodes, &[], &Space::default())
            .unwrap();
        assert_eq!(placed.len(), lost.len());
        assert!(placed.iter().all(|(_, at)| at.node != 0), "{placed:?}");

        // Without spare disks, a failed disk's copies leave the node.
        let nodes = shapes(0);
        let mut map = DistMap::build(&Ring, &nodes, 2).unwrap();
        assert!(map.fail_disk(disk0, "test", 1));
        let placed = map
            .regenerate(0, Some(0), &nodes, &[], &Space::default())
            .unwrap();
        assert!(!placed.is_empty());
        assert!(placed.iter().all(|(_, at)| at.node != 0), "{placed:?}");
    }

    #[test]
    fn a_node_made_only_of_spare_disks_is_refused() {
        let mut nodes = shapes(1);
        nodes[1].spare_disks = 2;
        let e = DistMap::build(&Ring, &nodes, 2).unwrap_err().to_string();
        assert!(
            e.contains("node 1 has 2 disks of which 2 are spares"),
            "{e}"
        );
    }

    /// A node emptied by a regeneration is a spare again once it dropped
    /// its old copies: the next regeneration goes there, not onto the
    /// configured spare that already took copies.
    #[test]
    fn a_clean_emptied_node_is_the_next_spare() {
        let nodes = with_spares(&[3]);
        let mut map = DistMap::build(&Ring, &nodes, 2).unwrap();
        assert!(map.fail_node(0, "test", 1));
        let placed = map
            .regenerate(0, None, &nodes, &[], &Space::default())
            .unwrap();
        assert!(placed.iter().all(|(_, at)| at.node == 3), "{placed:?}");
        // Copies are in sync (the resync round did its work).
        let done: Vec<(u32, Location)> = placed.clone();
        map.begin_resync();
        map.finish_resync(&done);
        assert!(map.is_emptied(0));
        // Node 0 is back with nothing; node 1 fails. Not known clean:
        // node 0 takes nothing.
        assert!(map.rejoin_node(0, &[]).is_some());
        assert!(map.fail_node(1, "test", 2));
        let mut unknown = map.clone();
        let placed = unknown
            .regenerate(1, None, &nodes, &[], &Space::default())
            .unwrap();
        assert!(placed.iter().all(|(_, at)| at.node != 0), "{placed:?}");
        // Known clean: it takes every copy, and holds copies again.
        let placed = map
            .regenerate(1, None, &nodes, &[0], &Space::default())
            .unwrap();
        assert!(!placed.is_empty());
        assert!(placed.iter().all(|(_, at)| at.node == 0), "{placed:?}");
        assert!(!map.is_emptied(0));
        crate::map::placement::check(&map).unwrap();
    }

    /// A new copy goes only where it fits: a spare too small for a copy
    /// is passed over for a survivor with room; with room nowhere, nothing
    /// changes and the error says it is space.
    #[test]
    fn a_new_copy_goes_only_where_its_segment_has_room() {
        let nodes = with_spares(&[3]);
        let mut map = DistMap::build(&Ring, &nodes, 2).unwrap();
        assert!(map.fail_node(0, "test", 1));
        let gb = 1_000_000_000u64;
        let mut space = Space::default();
        for e in map.slices() {
            space.need.insert(e.slice, gb);
        }
        for n in 0..4 {
            for disk in 0..2 {
                for role in [Role::Primary, Role::Mirror] {
                    // The spare has room for one copy per disk and role.
                    let free = if n == 3 { 2 * gb } else { 100 * gb };
                    space.free.insert((Location { node: n, disk }, role), free);
                }
            }
        }
        let placed = map
            .clone()
            .regenerate(0, None, &nodes, &[], &space)
            .unwrap();
        let on_spare = placed.iter().filter(|(_, at)| at.node == 3).count();
        assert!(on_spare > 0 && on_spare < placed.len(), "{placed:?}");
        assert!(on_spare <= 4, "one per disk and role: {placed:?}");
        crate::map::placement::check(&map).unwrap();

        // Room nowhere: refused, the map as it was.
        for free in space.free.values_mut() {
            *free = gb / 2;
        }
        let before = map.clone();
        let e = map
            .regenerate(0, None, &nodes, &[], &space)
            .unwrap_err()
            .to_string();
        assert!(e.contains("free space"), "{e}");
        assert_eq!(map.to_json().unwrap(), before.to_json().unwrap());
    }

    /// With several free spares, one takes a failed node's copies whole
    /// and the others stay free for the next fault.
    #[test]
    fn one_free_spare_takes_a_failed_nodes_copies_and_the_others_stay_free() {
        let nodes = with_spares(&[3, 4]);
        let mut map = DistMap::build(&Ring, &nodes, 2).unwrap();
        assert!(map.fail_node(0, "test", 1));
        let placed = map
            .regenerate(0, None, &nodes, &[], &Space::default())
            .unwrap();
        assert!(placed.len() > 2);
        assert!(placed.iter().all(|(_, at)| at.node == 3), "{placed:?}");
        // Balanced over the spare's disks.
        assert!(
            placed.iter().any(|(_, at)| at.disk == 0) && placed.iter().any(|(_, at)| at.disk == 1)
        );
        assert!(map.fail_node(1, "test", 2));
        let placed = map
            .regenerate(1, None, &nodes, &[], &Space::default())
            .unwrap();
        assert!(
            placed.iter().all(|(_, at)| at.node == 4),
            "the next spare: {placed:?}"
        );
    }
}
