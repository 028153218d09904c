//! The persistent distribution map: slice -> primary (node, disk) and mirror
//! (node, disk) + state, with an epoch that grows on every change.
//!
//! Built once, evenly, with ring placement (node i's primaries are mirrored on
//! node i+1), so a mirror is never on its primary's node. Stored as
//! `distmap.json` beside the catalog (docs/coordinator-state.md). This module
//! only computes and persists the map; installing it on nodes is the
//! cluster's job.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slicedb_engine::{DiskId, NodeId, SliceId};

use crate::catalog::write_atomic;
use crate::{CoordinatorError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub node: NodeId,
    pub disk: DiskId,
}

/// The state of one slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliceState {
    /// Served by its primary, with no valid mirror (a one-node cluster, or a
    /// map built before mirroring). Never promote such a mirror.
    PrimaryOnly,
    /// Primary and mirror hold the same committed rows.
    InSync,
    /// The mirror missed a commit (it could not be reached in time): the
    /// primary holds rows the mirror does not. Writes are no longer
    /// forwarded; never promote the mirror until it is resynced.
    Degraded,
    /// The primary's node failed: the mirror is the acting primary and serves
    /// the slice from its mirror segment. Unprotected until regenerated.
    FailedOver,
    /// The mirror's node failed: the primary serves alone, unprotected.
    Unprotected,
    /// Both copies are gone, or the surviving one was not in sync (a double
    /// fault): the slice is refused rather than answered wrong.
    Unavailable,
}

impl SliceState {
    pub fn as_str(&self) -> &'static str {
        match self {
            SliceState::PrimaryOnly => "primary_only",
            SliceState::InSync => "in_sync",
            SliceState::Degraded => "degraded",
            SliceState::FailedOver => "failed_over",
            SliceState::Unprotected => "unprotected",
            SliceState::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceEntry {
    pub slice: SliceId,
    pub primary: Location,
    pub mirror: Option<Location>,
    pub state: SliceState,
}

impl SliceEntry {
    /// Where the slice is served now: the primary, or (failed over) the
    /// mirror's location, read from its mirror segment (`true`).
    pub fn serving(&self) -> Result<(Location, bool)> {
        match (self.state, self.mirror) {
            (SliceState::FailedOver, Some(m)) => Ok((m, true)),
            (SliceState::Unavailable, _) | (SliceState::FailedOver, None) => {
                Err(CoordinatorError::SliceUnavailable {
                    slice: self.slice,
                    reason:
                        "both copies are lost or the surviving copy was not in sync (double fault)"
                            .into(),
                })
            }
            _ => Ok((self.primary, false)),
        }
    }
}

/// One change of the map, for `slicedb_map_history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapChange {
    pub epoch: u64,
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub cause: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistMap {
    pub version: u32,
    pub epoch: u64,
    pub slices: Vec<SliceEntry>,
    /// Nodes declared failed: out of the cluster until regenerated.
    #[serde(default)]
    pub down: Vec<NodeId>,
    /// Disks declared failed while their node runs.
    #[serde(default)]
    pub down_disks: Vec<Location>,
    #[serde(default)]
    pub history: Vec<MapChange>,
}

impl DistMap {
    /// Record a change: epoch + 1 and a history entry.
    pub fn bump(&mut self, cause: impl Into<String>) {
        self.epoch += 1;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.history.push(MapChange {
            epoch: self.epoch,
            at_ms,
            cause: cause.into(),
        });
    }

    /// Fail `node`: its primaries fail over to their mirrors if those are in
    /// sync (else they become unavailable), its mirrors leave their
    /// primaries unprotected. Returns false if it was already down.
    pub fn fail_node(&mut self, node: NodeId, cause: &str) -> bool {
        if self.down.contains(&node) {
            return false;
        }
        self.down.push(node);
        self.fail_where(|l| l.node == node);
        self.bump(format!("node {node} failed: {cause}"));
        true
    }

    /// Fail one disk of a running node: only the slices on it move.
    pub fn fail_disk(&mut self, at: Location, cause: &str) -> bool {
        if self.down_disks.contains(&at) || self.down.contains(&at.node) {
            return false;
        }
        self.down_disks.push(at);
        self.fail_where(|l| l == at);
        self.bump(format!(
            "disk {} of node {} failed: {cause}",
            at.disk, at.node
        ));
        true
    }

    fn fail_where(&mut self, lost: impl Fn(Location) -> bool) {
        for e in &mut self.slices {
            let primary_here = lost(e.primary);
            let mirror_here = e.mirror.is_some_and(&lost);
            e.state = match (e.state, primary_here, mirror_here) {
                (SliceState::InSync, true, _) => SliceState::FailedOver,
                (SliceState::InSync, false, true) => SliceState::Unprotected,
                (SliceState::FailedOver, _, true) => SliceState::Unavailable,
                (SliceState::FailedOver, _, false) => SliceState::FailedOver,
                (s, true, _) => {
                    let _ = s;
                    SliceState::Unavailable
                }
                (s, false, _) => s,
            };
        }
    }
}

const MAP_VERSION: u32 = 1;

/// A node as the map builder sees it.
#[derive(Debug, Clone, Copy)]
pub struct NodeShape {
    pub node: NodeId,
    pub disks: u32,
}

impl DistMap {
    /// An even map: `slices_per_disk` primaries on every disk of every node,
    /// each mirrored on the next node in the ring (disks taken round robin).
    pub fn build(nodes: &[NodeShape], slices_per_disk: u32) -> Result<DistMap> {
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
        // Interleave nodes so consecutive slice ids land on different nodes.
        let max_disks = nodes.iter().map(|n| n.disks).max().unwrap_or(1);
        for round in 0..slices_per_disk {
            for disk in 0..max_disks {
                for (i, n) in nodes.iter().enumerate() {
                    if disk >= n.disks {
                        continue;
                    }
                    let _ = round;
                    let mirror = if nodes.len() > 1 {
                        let j = (i + 1) % nodes.len();
                        let m = nodes[j];
                        let d = mirror_disk_cursor[j] % m.disks;
                        mirror_disk_cursor[j] += 1;
                        Some(Location {
                            node: m.node,
                            disk: d,
                        })
                    } else {
                        None
                    };
                    let state = if mirror.is_some() {
                        SliceState::InSync
                    } else {
                        SliceState::PrimaryOnly
                    };
                    slices.push(SliceEntry {
                        slice: next,
                        primary: Location { node: n.node, disk },
                        mirror,
                        state,
                    });
                    next += 1;
                }
            }
        }
        Ok(DistMap {
            version: MAP_VERSION,
            epoch: 1,
            slices,
            down: Vec::new(),
            down_disks: Vec::new(),
            history: Vec::new(),
        })
    }

    /// Load `dir/distmap.json`, or build and persist one for `nodes`.
    /// A stored map that does not match the configured nodes is an error:
    /// moving slices is a topology change, not a restart.
    pub fn open_or_build(dir: &Path, nodes: &[NodeShape], slices_per_disk: u32) -> Result<DistMap> {
        let path = map_path(dir);
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| CoordinatorError::io(path.display().to_string(), e))?;
            let map: DistMap = serde_json::from_str(&text)
                .map_err(|e| CoordinatorError::Catalog(format!("{}: {e}", path.display())))?;
            if map.version != MAP_VERSION {
                return Err(CoordinatorError::Catalog(format!(
                    "{}: map version {} is not supported (this build reads {MAP_VERSION})",
                    path.display(),
                    map.version
                )));
            }
            for e in &map.slices {
                for loc in std::iter::once(e.primary).chain(e.mirror) {
                    let known = nodes
                        .iter()
                        .any(|n| n.node == loc.node && loc.disk < n.disks);
                    if !known {
                        return Err(CoordinatorError::Config(format!(
                            "the stored distribution map places slice {} on node {} disk {}, which the configuration does not have; \
                             start with the same nodes and disks the data directory was created with",
                            e.slice, loc.node, loc.disk
                        )));
                    }
                }
            }
            let configured: std::collections::BTreeSet<_> = nodes.iter().map(|n| n.node).collect();
            let used: std::collections::BTreeSet<_> =
                map.slices.iter().map(|e| e.primary.node).collect();
            if configured != used {
                return Err(CoordinatorError::Config(format!(
                    "the stored distribution map uses nodes {used:?} but the configuration has {configured:?}; \
                     start with the nodes the data directory was created with"
                )));
            }
            return Ok(map);
        }
        let map = DistMap::build(nodes, slices_per_disk)?;
        map.persist(dir)?;
        Ok(map)
    }

    pub fn persist(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| CoordinatorError::Catalog(e.to_string()))?;
        write_atomic(&map_path(dir), &text)
    }

    pub fn slice_count(&self) -> u32 {
        self.slices.len() as u32
    }
}

fn map_path(dir: &Path) -> PathBuf {
    dir.join("distmap.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n: u32, disks: u32) -> Vec<NodeShape> {
        (0..n).map(|node| NodeShape { node, disks }).collect()
    }

    #[test]
    fn map_is_even_and_never_mirrors_on_the_primary_node() {
        for (n, d, s) in [(2, 1, 4), (3, 2, 4), (4, 1, 4), (5, 3, 2)] {
            let map = DistMap::build(&shape(n, d), s).unwrap();
            assert_eq!(map.slice_count(), n * d * s);
            for node in 0..n {
                let prim = map.slices.iter().filter(|e| e.primary.node == node).count();
                let mirr = map
                    .slices
                    .iter()
                    .filter(|e| e.mirror.map(|m| m.node) == Some(node))
                    .count();
                assert_eq!(prim as u32, d * s, "primaries on node {node}");
                assert_eq!(mirr as u32, d * s, "mirrors on node {node}");
            }
            for e in &map.slices {
                assert_ne!(e.mirror.unwrap().node, e.primary.node);
            }
        }
    }

    #[test]
    fn single_node_has_no_mirror() {
        let map = DistMap::build(&shape(1, 1), 4).unwrap();
        assert!(map.slices.iter().all(|e| e.mirror.is_none()));
    }

    #[test]
    fn stored_map_is_reused_and_a_different_topology_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = DistMap::open_or_build(dir.path(), &shape(3, 1), 4).unwrap();
        let b = DistMap::open_or_build(dir.path(), &shape(3, 1), 4).unwrap();
        assert_eq!(a, b);
        let e = DistMap::open_or_build(dir.path(), &shape(2, 1), 4).unwrap_err();
        assert!(matches!(e, CoordinatorError::Config(_)), "{e}");
    }
}
