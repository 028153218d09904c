//! The distribution map: slice -> a list of copies, each with its own
//! location (node, disk), role (primary or mirror segment) and state (in
//! sync, stale, rebuilding, lost), with an epoch that grows on every change.
//!
//! This module owns the map's shape, the rules every map must keep
//! ([`placement::check`]), where a slice is served from, and the pure
//! transitions of a fault (a node or disk lost, a mirror that missed a
//! commit). It never persists a map, never publishes one and never talks to
//! a node: only the system manager (`crate::system`) applies the
//! transitions to the live map, and it alone can publish the result; every
//! other module reads the map through `crate::system::MapReader`, which
//! hands out `Arc<DistMap>` (read only).
//!
//! The JSON form (version 2) and the reading of version 1 files are
//! specified in docs/coordinator-state.md; the conversion is in [`v1`].

pub mod placement;
mod regen;
pub(crate) use regen::Space;
pub mod v1;

use serde::{Deserialize, Serialize};
use slicedb_engine::{DiskId, NodeId, SliceId, Xid};

use crate::{CoordinatorError, Result};

pub use placement::{NodeShape, Placement, Ring};

/// A disk of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Location {
    pub node: NodeId,
    pub disk: DiskId,
}

/// Which segment of its disk a copy lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The primary segment: the copy writes go to first, which forwards
    /// them to the mirrors.
    Primary,
    /// The mirror segment: a logical copy the primary forwards to.
    Mirror,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Mirror => "mirror",
        }
    }
}

/// The state of one copy of a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// Holds every committed row of the slice: may serve it, and a mirror in
    /// this state may be promoted.
    InSync,
    /// Missed a commit (it could not be reached in time): it holds fewer
    /// rows than the slice has. Never served, never promoted, until resynced.
    Stale,
    /// Being brought back in sync from the serving copy (resync or
    /// regeneration): forwarded every new transaction, not yet usable.
    Rebuilding,
    /// Its node or disk failed: nothing on it may be used.
    Lost,
}

impl CopyState {
    pub fn as_str(&self) -> &'static str {
        match self {
            CopyState::InSync => "in_sync",
            CopyState::Stale => "stale",
            CopyState::Rebuilding => "rebuilding",
            CopyState::Lost => "lost",
        }
    }
}

/// One copy of a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceCopy {
    #[serde(flatten)]
    pub at: Location,
    pub role: Role,
    pub state: CopyState,
    /// For a copy that is not in sync: every transaction below this xid had
    /// finished when it fell behind, so it holds their effects (what it may
    /// lack is younger; GROOM must keep deletes from here on until it is
    /// resynced). `None` on a lost copy: it was the last in-sync copy of
    /// its slice when lost, so nothing committed without it since. A map
    /// written before this field existed reads as `Some(0)` (behind from
    /// the start: never trusted to hold every row, and GROOM keeps every
    /// delete until it is resynced).
    #[serde(default = "behind_from_unknown")]
    pub behind_from: Option<Xid>,
}

fn behind_from_unknown() -> Option<Xid> {
    Some(0)
}

/// The state of a slice as a whole, derived from its copies: what
/// `slicedb_slices.state` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceState {
    /// One copy only (a one-node cluster): nothing to fail over to.
    PrimaryOnly,
    /// The primary and every mirror hold the same committed rows.
    InSync,
    /// A mirror missed a commit: writes are no longer forwarded to it and
    /// it must never be promoted until it is resynced.
    Degraded,
    /// The primary copy is lost: an in-sync mirror serves the slice from
    /// its mirror segment, unprotected.
    FailedOver,
    /// A mirror copy is lost: the primary serves alone, unprotected.
    Unprotected,
    /// A copy is being brought back in sync (resync): the slice is served
    /// as before and the copy is forwarded every new transaction.
    Rebuilding,
    /// No in-sync copy survives (a double fault): the slice is refused
    /// rather than answered wrong.
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
            SliceState::Rebuilding => "rebuilding",
            SliceState::Unavailable => "unavailable",
        }
    }
}

/// A slice and its copies. [`placement::check`] guarantees exactly one copy
/// with the primary role and no two copies on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceEntry {
    pub slice: SliceId,
    pub copies: Vec<SliceCopy>,
}

impl SliceEntry {
    /// The copy in the primary segment.
    pub fn primary(&self) -> &SliceCopy {
        self.copies
            .iter()
            .find(|c| c.role == Role::Primary)
            .unwrap_or(&self.copies[0])
    }

    /// The copies in mirror segments.
    pub fn mirrors(&self) -> impl Iterator<Item = &SliceCopy> {
        self.copies.iter().filter(|c| c.role == Role::Mirror)
    }

    /// The first mirror copy, if the slice has one.
    pub fn mirror(&self) -> Option<&SliceCopy> {
        self.mirrors().next()
    }

    /// The slice's state as a whole.
    pub fn state(&self) -> SliceState {
        let primary = self.primary();
        let in_sync = |c: &SliceCopy| c.state == CopyState::InSync;
        if self.copies.len() == 1 {
            return if in_sync(primary) {
                SliceState::PrimaryOnly
            } else {
                SliceState::Unavailable
            };
        }
        let rebuilding = self.copies.iter().any(|c| c.state == CopyState::Rebuilding);
        if in_sync(primary) {
            if self.mirrors().all(in_sync) {
                SliceState::InSync
            } else if rebuilding {
                SliceState::Rebuilding
            } else if self.mirrors().any(|c| c.state == CopyState::Stale) {
                SliceState::Degraded
            } else {
                SliceState::Unprotected
            }
        } else if self.mirrors().any(in_sync) {
            if rebuilding {
                SliceState::Rebuilding
            } else {
                SliceState::FailedOver
            }
        } else {
            SliceState::Unavailable
        }
    }

    /// The index of the copy that serves the slice now (see `serving`).
    fn serving_index(&self) -> Option<usize> {
        let in_sync = |c: &SliceCopy| c.state == CopyState::InSync;
        self.copies
            .iter()
            .position(|c| c.role == Role::Primary && in_sync(c))
            .or_else(|| {
                self.copies
                    .iter()
                    .position(|c| c.role == Role::Mirror && in_sync(c))
            })
    }

    /// Where the slice is served now: the primary copy, or (failed over)
    /// the first in-sync mirror copy, read from its mirror segment (`true`).
    pub fn serving(&self) -> Result<(Location, bool)> {
        match self.serving_index().map(|i| &self.copies[i]) {
            Some(c) => Ok((c.at, c.role == Role::Mirror)),
            None => Err(CoordinatorError::SliceUnavailable {
                slice: self.slice,
                reason: "both copies are lost or the surviving copy was not in sync (double fault)"
                    .into(),
            }),
        }
    }

    /// The copy the serving copy forwards writes to: another copy that is
    /// in sync or being resynced. A stale or lost copy is not written; it
    /// is brought back by resync or regeneration, never by the next write.
    pub fn forward_target(&self) -> Option<&SliceCopy> {
        let s = self.serving_index()?;
        self.copies.iter().enumerate().find_map(|(i, c)| {
            (i != s && matches!(c.state, CopyState::InSync | CopyState::Rebuilding)).then_some(c)
        })
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

/// The map's format version: 2 holds copies as a list (version 1 held one
/// primary, one optional mirror and one state per slice).
pub const MAP_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistMap {
    version: u32,
    epoch: u64,
    /// The placement the map was built with (`ring`).
    placement: String,
    slices: Vec<SliceEntry>,
    /// Nodes declared failed: out of the cluster until regenerated.
    #[serde(default)]
    down: Vec<NodeId>,
    /// Disks declared failed while their node runs.
    #[serde(default)]
    down_disks: Vec<Location>,
    /// Nodes whose copies were all regenerated elsewhere: they hold none
    /// (a spare, once one answers again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    emptied: Vec<NodeId>,
    /// The metadata generation each disk of a failed node had reached by
    /// its last answer: a node that comes back with a lower one has a new
    /// image, not the one its copies were on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    images: Vec<ImageMark>,
    #[serde(default)]
    history: Vec<MapChange>,
}

/// A disk image's metadata generation as last seen (it only grows while
/// the image lives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMark {
    #[serde(flatten)]
    pub at: Location,
    pub generation: u64,
}

/// Reading the map.
impl DistMap {
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn slices(&self) -> &[SliceEntry] {
        &self.slices
    }

    pub fn slice_count(&self) -> u32 {
        self.slices.len() as u32
    }

    /// Nodes declared failed (fenced).
    pub fn down(&self) -> &[NodeId] {
        &self.down
    }

    pub fn is_down(&self, node: NodeId) -> bool {
        self.down.contains(&node)
    }

    /// Whether `node` lost every copy it held to regeneration (it holds
    /// none: a spare once it answers again).
    pub fn is_emptied(&self, node: NodeId) -> bool {
        self.emptied.contains(&node)
    }

    /// Disks declared failed while their node runs.
    pub fn down_disks(&self) -> &[Location] {
        &self.down_disks
    }

    pub fn history(&self) -> &[MapChange] {
        &self.history
    }

    /// The placement the map was built with.
    pub fn placement(&self) -> &str {
        &self.placement
    }

    /// The oldest xid some copy that is behind may lack (GROOM must keep
    /// deletes from it on, or a resync could not send them).
    pub fn oldest_behind(&self) -> Option<Xid> {
        self.slices
            .iter()
            .flat_map(|e| e.copies.iter())
            .filter(|c| c.state != CopyState::InSync)
            .filter_map(|c| c.behind_from)
            .min()
    }
}

/// One copy a resync brings back: pulled by the target's node from the
/// source's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncJob {
    pub slice: SliceId,
    /// The copy that is behind.
    pub target: Location,
    pub target_role: Role,
    /// The in-sync copy serving the slice.
    pub source: Location,
    pub source_role: Role,
}

/// The transitions of the map. Crate-private: only the system manager
/// applies them to the live map (see the module docs).
impl DistMap {
    /// Record a change: epoch + 1 and a history entry.
    pub(crate) fn bump(&mut self, cause: impl Into<String>) {
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

    /// Fail `node`: every copy on it is lost, so its primaries fail over to
    /// in-sync mirrors (else become unavailable) and its mirrors leave their
    /// primaries unprotected. Returns false if it was already down.
    /// `horizon`: every xid below it had finished (see `behind_from`).
    pub(crate) fn fail_node(&mut self, node: NodeId, cause: &str, horizon: Xid) -> bool {
        if self.down.contains(&node) {
            return false;
        }
        self.down.push(node);
        self.lose_where(|l| l.node == node, horizon);
        self.bump(format!("node {node} failed: {cause}"));
        true
    }

    /// Fail one disk of a running node: only the copies on it are lost.
    pub(crate) fn fail_disk(&mut self, at: Location, cause: &str, horizon: Xid) -> bool {
        if self.down_disks.contains(&at) || self.down.contains(&at.node) {
            return false;
        }
        self.down_disks.push(at);
        self.lose_where(|l| l == at, horizon);
        self.bump(format!(
            "disk {} of node {} failed: {cause}",
            at.disk, at.node
        ));
        true
    }

    /// Every copy at a location `lost` names is lost. One that was the last
    /// in-sync copy of its slice keeps `behind_from = None` (it holds every
    /// committed row); any other is behind from `horizon` (or earlier).
    fn lose_where(&mut self, lost: impl Fn(Location) -> bool, horizon: Xid) {
        for e in &mut self.slices {
            for i in 0..e.copies.len() {
                let c = e.copies[i];
                if !lost(c.at) || c.state == CopyState::Lost {
                    continue;
                }
                let another_in_sync = e
                    .copies
                    .iter()
                    .enumerate()
                    .any(|(j, o)| j != i && o.state == CopyState::InSync && !lost(o.at));
                let c = &mut e.copies[i];
                c.behind_from = match c.state {
                    CopyState::InSync if !another_in_sync => None,
                    CopyState::InSync => Some(horizon),
                    _ => Some(c.behind_from.map_or(horizon, |b| b.min(horizon))),
                };
                c.state = CopyState::Lost;
            }
        }
    }

    /// A commit reached these slices only on the copy on the node named
    /// with each (the one that wrote it; its forward failed): every other
    /// copy in sync or being resynced becomes stale, behind from `horizon`.
    /// Named by writer, not by today's serving copy: a resync may have made
    /// the copy that missed it the serving one meanwhile. Returns whether
    /// anything changed (the caller bumps the epoch).
    pub(crate) fn mark_mirrors_stale(
        &mut self,
        slices: &std::collections::BTreeSet<(SliceId, NodeId)>,
        horizon: Xid,
    ) -> bool {
        let mut changed = false;
        for e in &mut self.slices {
            for c in e.copies.iter_mut() {
                if slices.contains(&(e.slice, c.at.node)) {
                    continue;
                }
                let missed = slices.iter().any(|&(s, _)| s == e.slice);
                if missed && matches!(c.state, CopyState::InSync | CopyState::Rebuilding) {
                    c.state = CopyState::Stale;
                    c.behind_from = Some(c.behind_from.map_or(horizon, |b| b.min(horizon)));
                    changed = true;
                }
            }
        }
        changed
    }

    /// Remember the generations `node`'s disks had reached (when it is
    /// declared failed): see [`DistMap::replaced_images`].
    pub(crate) fn note_images(&mut self, node: NodeId, generations: &[(DiskId, u64)]) {
        self.images.retain(|m| m.at.node != node);
        for &(disk, generation) in generations {
            self.images.push(ImageMark {
                at: Location { node, disk },
                generation,
            });
        }
    }

    /// `node`, down, answers with these disk generations: the disks whose
    /// generation is below the one they had reached hold a new image (the
    /// old one was lost or replaced), with none of the copies the map puts
    /// there. Each of its lost copies on such a disk is marked behind from
    /// the start, so that rejoining makes it stale (to fill whole) and never
    /// in sync, even if it was its slice's last in-sync copy: that slice
    /// stays unavailable rather than be served from an empty copy. Answers
    /// the replaced disks with (had, has).
    pub(crate) fn replaced_images(
        &mut self,
        node: NodeId,
        generations: &[(DiskId, u64)],
    ) -> Vec<(DiskId, u64, u64)> {
        let mut replaced = Vec::new();
        for m in self.images.iter().filter(|m| m.at.node == node) {
            let now = generations
                .iter()
                .find(|(d, _)| *d == m.at.disk)
                .map_or(0, |g| g.1);
            if now < m.generation {
                replaced.push((m.at.disk, m.generation, now));
            }
        }
        for e in &mut self.slices {
            for c in e.copies.iter_mut() {
                if c.at.node == node
                    && c.state == CopyState::Lost
                    && replaced.iter().any(|r| r.0 == c.at.disk)
                {
                    c.behind_from = Some(0);
                }
            }
        }
        replaced
    }

    /// `node`, down, answers again with its disks but `failed_disks`: its
    /// lost copies on healthy disks come back, in sync at once if each was
    /// the last in-sync copy of its slice, else stale (to resync). Returns
    /// (in sync, stale), or None if it was not down.
    pub(crate) fn rejoin_node(
        &mut self,
        node: NodeId,
        failed_disks: &[DiskId],
    ) -> Option<(usize, usize)> {
        if !self.down.contains(&node) {
            return None;
        }
        self.down.retain(|&n| n != node);
        self.images.retain(|m| m.at.node != node);
        for &disk in failed_disks {
            let at = Location { node, disk };
            if !self.down_disks.contains(&at) {
                self.down_disks.push(at);
            }
        }
        let (mut in_sync, mut stale) = (0, 0);
        for e in &mut self.slices {
            for c in e.copies.iter_mut() {
                if c.at.node != node
                    || c.state != CopyState::Lost
                    || self.down_disks.contains(&c.at)
                {
                    continue;
                }
                if c.behind_from.is_none() {
                    c.state = CopyState::InSync;
                    in_sync += 1;
                } else {
                    c.state = CopyState::Stale;
                    stale += 1;
                }
            }
        }
        Some((in_sync, stale))
    }

    /// Start resyncing every stale copy on a running node whose slice is
    /// served from an in-sync copy: each becomes `Rebuilding` (forwarded
    /// from now on). Returns the copies to pull.
    pub(crate) fn begin_resync(&mut self) -> Vec<ResyncJob> {
        let mut jobs = Vec::new();
        for e in &mut self.slices {
            let Some(s) = e.serving_index() else {
                continue;
            };
            let source = e.copies[s];
            for c in e.copies.iter_mut() {
                if c.state == CopyState::Stale
                    && !self.down.contains(&c.at.node)
                    && !self.down_disks.contains(&c.at)
                {
                    c.state = CopyState::Rebuilding;
                    jobs.push(ResyncJob {
                        slice: e.slice,
                        target: c.at,
                        target_role: c.role,
                        source: source.at,
                        source_role: source.role,
                    });
                }
            }
        }
        jobs
    }

    /// Copies left `Rebuilding` by a coordinator that stopped mid-round:
    /// no round is running, so they are stale (the next round starts them
    /// over). Returns how many.
    pub(crate) fn restart_rebuilding(&mut self) -> usize {
        let mut n = 0;
        for e in &mut self.slices {
            for c in e.copies.iter_mut() {
                if c.state == CopyState::Rebuilding {
                    c.state = CopyState::Stale;
                    n += 1;
                }
            }
        }
        n
    }

    /// Copies (slice, location) whose resync came through: those still
    /// `Rebuilding` are in sync. Returns how many.
    pub(crate) fn finish_resync(&mut self, done: &[(SliceId, Location)]) -> usize {
        self.set_rebuilding(done, CopyState::InSync)
    }

    /// Copies whose resync failed: those still `Rebuilding` are stale
    /// again. Returns how many.
    pub(crate) fn abandon_resync(&mut self, failed: &[(SliceId, Location)]) -> usize {
        self.set_rebuilding(failed, CopyState::Stale)
    }

    fn set_rebuilding(&mut self, which: &[(SliceId, Location)], to: CopyState) -> usize {
        let mut n = 0;
        for e in &mut self.slices {
            for c in e.copies.iter_mut() {
                if c.state == CopyState::Rebuilding && which.contains(&(e.slice, c.at)) {
                    c.state = to;
                    if to == CopyState::InSync {
                        c.behind_from = None;
                    }
                    n += 1;
                }
            }
        }
        n
    }
}

impl DistMap {
    /// A new map (epoch 1) with `placement`'s layout, checked against the
    /// rules every map keeps.
    pub fn build(
        placement: &dyn Placement,
        nodes: &[NodeShape],
        slices_per_disk: u32,
    ) -> Result<DistMap> {
        if let Some(n) = nodes.iter().find(|n| !n.spare && n.spare_disks >= n.disks) {
            return Err(CoordinatorError::Config(format!(
                "node {} has {} disks of which {} are spares: at least one must hold slices",
                n.node, n.disks, n.spare_disks
            )));
        }
        // Spare disks (the last of each node) get no slices.
        let active: Vec<NodeShape> = nodes
            .iter()
            .filter(|n| !n.spare)
            .map(|n| NodeShape {
                disks: n.disks - n.spare_disks,
                ..*n
            })
            .collect();
        if active.is_empty() {
            return Err(CoordinatorError::Config(
                "every node is a spare: at least one must hold slices".into(),
            ));
        }
        let slices = placement.place(&active, slices_per_disk)?;
        let map = DistMap {
            version: MAP_VERSION,
            epoch: 1,
            placement: placement.name().to_string(),
            slices,
            down: Vec::new(),
            down_disks: Vec::new(),
            emptied: Vec::new(),
            images: Vec::new(),
            history: Vec::new(),
        };
        placement::check(&map)?;
        Ok(map)
    }

    /// Parse a stored map of any version this build reads (1 or 2),
    /// converted to the current version; `true` if it was converted.
    /// `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<(DistMap, bool)> {
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let bad = |e: serde_json::Error| CoordinatorError::Catalog(format!("{origin}: {e}"));
        let Version { version } = serde_json::from_str(text).map_err(bad)?;
        let map = match version {
            1 => v1::convert(serde_json::from_str(text).map_err(bad)?),
            MAP_VERSION => serde_json::from_str(text).map_err(bad)?,
            v => {
                return Err(CoordinatorError::Catalog(format!(
                "{origin}: map version {v} is not supported (this build reads 1 and {MAP_VERSION})"
            )))
            }
        };
        placement::check(&map).map_err(|e| CoordinatorError::Catalog(format!("{origin}: {e}")))?;
        Ok((map, version != MAP_VERSION))
    }

    /// The current version's JSON form.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).map_err(|e| CoordinatorError::Catalog(e.to_string()))
    }

    /// A stored map must match the configured nodes and disks: moving
    /// slices is a topology change, not a restart.
    pub fn check_matches(&self, nodes: &[NodeShape]) -> Result<()> {
        for e in &self.slices {
            for c in &e.copies {
                let known = nodes
                    .iter()
                    .any(|n| n.node == c.at.node && c.at.disk < n.disks);
                if !known {
                    return Err(CoordinatorError::Config(format!(
                        "the stored distribution map places slice {} on node {} disk {}, which the configuration does not have; \
                         start with the same nodes and disks the data directory was created with",
                        e.slice, c.at.node, c.at.disk
                    )));
                }
            }
        }
        // Every node that is not a spare holds slices; a spare may hold
        // some too (once copies were regenerated onto it).
        let holding: std::collections::BTreeSet<_> = nodes
            .iter()
            .filter(|n| !n.spare && !self.emptied.contains(&n.node))
            .map(|n| n.node)
            .collect();
        let used: std::collections::BTreeSet<_> = self
            .slices
            .iter()
            .flat_map(|e| e.copies.iter().map(|c| c.at.node))
            .collect();
        if !holding.is_subset(&used) {
            return Err(CoordinatorError::Config(format!(
                "the stored distribution map uses nodes {used:?} but the configuration has {holding:?} holding slices; \
                 start with the nodes the data directory was created with"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` regular nodes of `disks` disks each.
    pub(crate) fn shape(n: u32, disks: u32) -> Vec<NodeShape> {
        (0..n)
            .map(|node| NodeShape {
                node,
                disks,
                spare: false,
                spare_disks: 0,
            })
            .collect()
    }

    fn ring(n: u32, d: u32, s: u32) -> DistMap {
        DistMap::build(&Ring, &shape(n, d), s).unwrap()
    }

    #[test]
    fn spares_get_no_slices_and_a_spare_made_regular_is_refused() {
        let mut nodes = shape(4, 1);
        nodes[3].spare = true;
        let map = DistMap::build(&Ring, &nodes, 4).unwrap();
        assert_eq!(map.slices().len(), 12);
        assert!(map
            .slices()
            .iter()
            .all(|e| e.copies.iter().all(|c| c.at.node != 3)));
        map.check_matches(&nodes).unwrap();
        // Left out of the configuration, the spare is not missed.
        map.check_matches(&nodes[..3]).unwrap();
        // Configured as a regular node it would hold nothing: refused.
        assert!(map.check_matches(&shape(4, 1)).is_err());
        let mut all = shape(2, 1);
        all[0].spare = true;
        all[1].spare = true;
        assert!(DistMap::build(&Ring, &all, 4).is_err());
    }

    #[test]
    fn map_is_even_and_never_mirrors_on_the_primary_node() {
        for (n, d, s) in [(2, 1, 4), (3, 2, 4), (4, 1, 4), (5, 3, 2)] {
            let map = ring(n, d, s);
            assert_eq!(map.slice_count(), n * d * s);
            for node in 0..n {
                let prim = map
                    .slices()
                    .iter()
                    .filter(|e| e.primary().at.node == node)
                    .count();
                let mirr = map
                    .slices()
                    .iter()
                    .filter(|e| e.mirror().map(|m| m.at.node) == Some(node))
                    .count();
                assert_eq!(prim as u32, d * s, "primaries on node {node}");
                assert_eq!(mirr as u32, d * s, "mirrors on node {node}");
            }
            for e in map.slices() {
                assert_ne!(e.mirror().unwrap().at.node, e.primary().at.node);
            }
        }
    }

    #[test]
    fn single_node_has_no_mirror() {
        let map = ring(1, 1, 4);
        assert!(map.slices().iter().all(|e| e.mirror().is_none()));
        assert!(map
            .slices()
            .iter()
            .all(|e| e.state() == SliceState::PrimaryOnly));
    }

    #[test]
    fn faults_move_slice_states_as_failover_needs() {
        let mut map = ring(3, 1, 1);
        let e0 = map.slices()[0].clone();
        let (p, m) = (e0.primary().at, e0.mirror().unwrap().at);
        assert_eq!(e0.state(), SliceState::InSync);
        assert_eq!(e0.serving().unwrap(), (p, false));

        // The mirror misses a commit: degraded, still served by the primary.
        assert!(map.mark_mirrors_stale(&[(e0.slice, p.node)].into(), 7));
        assert_eq!(map.slices()[0].state(), SliceState::Degraded);
        assert!(map.slices()[0].forward_target().is_none());
        // Degraded twice changes nothing.
        assert!(!map.mark_mirrors_stale(&[(e0.slice, p.node)].into(), 7));

        // Losing the primary of a degraded slice is a double fault.
        assert!(map.fail_node(p.node, "test", 7));
        assert_eq!(map.slices()[0].state(), SliceState::Unavailable);
        assert!(map.slices()[0].serving().is_err());
        assert!(!map.fail_node(p.node, "again", 7), "already down");

        // A slice that was in sync fails over to its mirror's node.
        let mut map = ring(3, 1, 1);
        let e0 = map.slices()[0].clone();
        let (p, m2) = (e0.primary().at, e0.mirror().unwrap().at);
        assert_eq!(m, m2);
        let epoch = map.epoch();
        map.fail_node(p.node, "test", 7);
        assert_eq!(map.epoch(), epoch + 1);
        assert_eq!(map.slices()[0].state(), SliceState::FailedOver);
        assert_eq!(map.slices()[0].serving().unwrap(), (m, true));
        // The slice whose mirror was on that node is unprotected.
        let mirrored_there = map
            .slices()
            .iter()
            .find(|e| e.mirror().unwrap().at.node == p.node)
            .unwrap();
        assert_eq!(mirrored_there.state(), SliceState::Unprotected);
        // Then the survivor's disk fails: no copy left.
        map.fail_disk(m, "test", 7);
        assert_eq!(map.slices()[0].state(), SliceState::Unavailable);
        assert_eq!(map.history().len(), 2);
    }

    #[test]
    fn a_node_that_rejoins_is_resynced_and_the_last_in_sync_copy_comes_back_in_sync() {
        let mut map = ring(3, 1, 1);
        let e0 = map.slices()[0].clone();
        let (p, m) = (e0.primary().at, e0.mirror().unwrap().at);
        assert_eq!(e0.forward_target().unwrap().at, m);
        // The primary's node fails with xid 10 the oldest unfinished.
        map.fail_node(p.node, "test", 10);
        let lost = map.slices()[0].primary().to_owned();
        assert_eq!((lost.state, lost.behind_from), (CopyState::Lost, Some(10)));
        assert_eq!(map.oldest_behind(), Some(10));
        assert!(
            map.slices()[0].forward_target().is_none(),
            "failed over: alone"
        );
        // It comes back: stale, then rebuilding from the serving mirror,
        // which forwards to it meanwhile.
        assert_eq!(map.rejoin_node(p.node, &[]), Some((0, 2)));
        assert_eq!(map.rejoin_node(p.node, &[]), None, "not down any more");
        assert_eq!(map.slices()[0].primary().state, CopyState::Stale);
        let jobs = map.begin_resync();
        let job = jobs.iter().find(|j| j.slice == e0.slice).unwrap();
        assert_eq!((job.target, job.target_role), (p, Role::Primary));
        assert_eq!((job.source, job.source_role), (m, Role::Mirror));
        assert_eq!(map.slices()[0].state(), SliceState::Rebuilding);
        assert_eq!(map.slices()[0].serving().unwrap(), (m, true));
        assert_eq!(map.slices()[0].forward_target().unwrap().at, p);
        assert!(map.begin_resync().is_empty(), "nothing else is stale");
        // A missed forward sends it back to stale; a later round finishes.
        assert!(map.mark_mirrors_stale(&[(e0.slice, m.node)].into(), 12));
        assert_eq!(map.slices()[0].primary().behind_from, Some(10));
        assert_eq!(
            map.finish_resync(&[(e0.slice, p)]),
            0,
            "no longer rebuilding"
        );
        map.begin_resync();
        let done: Vec<_> = jobs.iter().map(|j| (j.slice, j.target)).collect();
        assert_eq!(map.finish_resync(&done), 2);
        assert_eq!(map.slices()[0].state(), SliceState::InSync);
        assert_eq!(
            map.slices()[0].serving().unwrap(),
            (p, false),
            "primary back"
        );
        assert_eq!(map.oldest_behind(), None);

        // A double fault: the copy lost last holds every committed row and
        // is in sync as soon as its node is back; the other is resynced.
        map.fail_node(p.node, "first", 20);
        map.fail_node(m.node, "second", 30);
        assert_eq!(map.slices()[0].state(), SliceState::Unavailable);
        assert_eq!(map.slices()[0].mirror().unwrap().behind_from, None);
        map.rejoin_node(p.node, &[]);
        assert_eq!(
            map.slices()[0].state(),
            SliceState::Unavailable,
            "it is behind"
        );
        assert!(
            !map.begin_resync().iter().any(|j| j.slice == e0.slice),
            "no source"
        );
        map.rejoin_node(m.node, &[]);
        assert_eq!(map.slices()[0].serving().unwrap(), (m, true));
        assert!(map
            .begin_resync()
            .iter()
            .any(|j| j.slice == e0.slice && j.target == p));

        // A double fault whose last in-sync copy comes back on a new image
        // (its generation below what the disk had reached): that copy is
        // empty, so the slice stays unavailable, and the copy is stale.
        let mut map = ring(3, 1, 1);
        map.fail_node(m.node, "first", 20);
        map.fail_node(p.node, "second", 30);
        map.note_images(p.node, &[(p.disk, 57)]);
        assert_eq!(map.slices()[0].primary().behind_from, None, "last in sync");
        let stored = map.to_json().unwrap();
        assert!(String::from_utf8_lossy(&stored).contains("\"images\""));
        let (back, _) = DistMap::from_json(std::str::from_utf8(&stored).unwrap(), "test").unwrap();
        assert_eq!(
            back.to_json().unwrap(),
            stored,
            "image marks survive a reload"
        );
        let same = map.clone().replaced_images(p.node, &[(p.disk, 57)]);
        assert!(same.is_empty(), "the same image: {same:?}");
        assert_eq!(
            map.replaced_images(p.node, &[(p.disk, 1)]),
            vec![(p.disk, 57, 1)]
        );
        map.rejoin_node(p.node, &[]);
        assert_eq!(map.slices()[0].primary().state, CopyState::Stale);
        assert_eq!(
            map.slices()[0].state(),
            SliceState::Unavailable,
            "never served from the new, empty image"
        );

        // A copy on a disk the returning node reports failed stays lost.
        let mut map = ring(3, 1, 1);
        map.fail_node(p.node, "test", 5);
        map.rejoin_node(p.node, &[p.disk]);
        assert_eq!(map.slices()[0].primary().state, CopyState::Lost);
        assert!(map.down_disks().contains(&p));

        // A map stored before `behind_from` existed never trusts a lost
        // copy to hold every row: it comes back stale.
        let mut map = ring(3, 1, 1);
        map.fail_node(m.node, "first", 5);
        map.fail_node(p.node, "second", 6);
        assert_eq!(map.slices()[0].primary().behind_from, None);
        let json = String::from_utf8(map.to_json().unwrap()).unwrap();
        let old: String = json
            .lines()
            .filter(|l| !l.contains("behind_from"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .replace(",\n        }", "\n        }");
        let (mut old, _) = DistMap::from_json(&old, "test").unwrap();
        old.rejoin_node(p.node, &[]);
        assert_eq!(old.slices()[0].primary().state, CopyState::Stale);
    }
}
