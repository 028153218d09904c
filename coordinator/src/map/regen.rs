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
//! free, else on the surviving node holding the fewest copies (declustered:
//! every survivor takes some), never on a node that holds a copy of that
//! slice. A slice with no in-sync copy keeps its lost copies: one of them
//! may be the last in sync and come back. With no room for every copy,
//! nothing changes and the error says why.

use std::collections::BTreeMap;

use slicedb_engine::NodeId;

use super::{CopyState, DistMap, Location, NodeShape};
use crate::{CoordinatorError, Result};

impl DistMap {
    /// Replace the copies lost at `lost` (a whole node: `disk` None) by new
    /// copies over `nodes` (the configuration; spares first). Returns how
    /// many were placed and on which nodes.
    pub(crate) fn regenerate(
        &mut self,
        node: NodeId,
        disk: Option<u32>,
        nodes: &[NodeShape],
    ) -> Result<Vec<(u32, Location)>> {
        let lost_here = |at: Location| at.node == node && disk.is_none_or(|d| d == at.disk);
        // A node emptied by an earlier regeneration still has its old
        // blocks on disk (nothing drops them yet): a copy placed there would
        // count them as held, so it takes none.
        let usable = |n: &NodeShape, map: &DistMap| {
            !map.down.contains(&n.node) && !map.emptied.contains(&n.node)
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
        let spare = |n: NodeId| nodes.iter().any(|s| s.node == n && s.spare);
        let node_load = |load: &BTreeMap<Location, usize>, n: NodeId| -> usize {
            load.iter()
                .filter(|(l, _)| l.node == n)
                .map(|(_, c)| c)
                .sum()
        };
        let mut next = self.clone();
        let mut placed = Vec::new();
        let mut no_room = Vec::new();
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
                // Spares before survivors; then the least loaded node and
                // disk; ties by location.
                let target = load
                    .iter()
                    .filter(|(l, _)| !holders.contains(&l.node))
                    .min_by_key(|(l, n)| (!spare(l.node), node_load(&load, l.node), **n, **l))
                    .map(|(l, _)| *l);
                let Some(at) = target else {
                    no_room.push(e.slice);
                    continue;
                };
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
        super::placement::check(&next)?;
        let holds_any = next
            .slices
            .iter()
            .any(|e| e.copies.iter().any(|c| c.at.node == node));
        if disk.is_none() && !holds_any && !next.emptied.contains(&node) {
            next.emptied.push(node);
        }
        *self = next;
        Ok(placed)
    }
}
