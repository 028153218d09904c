//! The background scrubber, the node's side: one thread per disk, at the
//! lowest CPU priority ([`crate::background`]), runs scrub passes
//! ([`crate::scrub::pass`]) one after another, each held to `scrub_rate`
//! bytes per second by the copies' [`Pace`]. The pace holds whether or not
//! queries run (unlike a copy's, it does not speed up on an idle node: a
//! scrubber never finishes, so running flat out when idle would keep a core
//! and the disk busy for good). A pass shorter than [`MIN_PASS`] waits out
//! the rest, so an empty disk does not spin.
//!
//! A damaged block met goes through the disks' repair seam as a scan's does
//! ([`super::PeerRepair`]): repaired from the other copy, shown in
//! `slicedb_repairs`, counted against `bad_block_limit`. Each disk's
//! records are on the node's [`ScrubBoard`] (`Status`, `slicedb_scrub`,
//! the `slicedb_node_scrub_*` metrics).
//!
//! It owns the threads and when they run: not before the node has a map
//! (no other copy to repair from yet), not while a disk is failed, and no
//! more once the node is gone. It must never scrub a failed disk.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::info;

use super::{NodeServer, NodeState};
use crate::mirror::copy::Pace;
use crate::proto::pb;
use crate::scrub::{self, ScrubBoard};
use crate::DiskId;

/// The default rate: bytes per second per disk.
pub const DEFAULT_SCRUB_RATE: u64 = 8 << 20;

/// The shortest a pass takes (an empty disk's passes wait this long).
pub const MIN_PASS: Duration = Duration::from_secs(1);

/// How often a failed disk is looked at again.
const FAILED_RECHECK: Duration = Duration::from_secs(5);

impl NodeServer {
    /// Scrub every disk at `rate` bytes per second each (0: no scrubbing);
    /// takes effect when the node starts serving.
    pub fn set_scrub_rate(&self, rate: u64) {
        self.state
            .scrub_rate
            .store(rate, std::sync::atomic::Ordering::Relaxed);
    }

    /// Start the disks' scrubbers (once, when serving starts).
    pub(super) fn start_scrubbers(&self) {
        let rate = self
            .state
            .scrub_rate
            .load(std::sync::atomic::Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        for disk in 0..self.state.disks.len() as DiskId {
            let weak = Arc::downgrade(&self.state);
            let board = self.state.scrub.clone();
            let node = self.state.node;
            let started = std::thread::Builder::new()
                .name(format!("scrub-{node}-{disk}"))
                .spawn(move || {
                    crate::background::lower_priority();
                    scrub_disk(&weak, disk, rate, &board);
                });
            if let Err(e) = started {
                tracing::error!(node, disk, error = %e, "cannot start the scrubber");
            }
        }
    }

    /// Every disk's scrub record, for `Status`.
    pub(super) fn scrub_status(&self) -> Vec<pb::ScrubStatus> {
        self.state
            .scrub
            .all()
            .into_iter()
            .map(|(disk, s)| {
                let last = s.last.unwrap_or_default();
                pb::ScrubStatus {
                    disk,
                    has_last: s.last.is_some(),
                    last_started_unix_ms: last.started_unix_ms,
                    last_finished_unix_ms: last.finished_unix_ms,
                    blocks: last.counts.blocks,
                    bytes: last.counts.bytes,
                    damaged: last.counts.damaged,
                    repaired: last.counts.repaired,
                    running: s.current.is_some(),
                    progress: s.current.map_or(0.0, |p| p.fraction()),
                    passes: s.passes,
                    bytes_total: s.bytes_total,
                }
            })
            .collect()
    }
}

/// Whether the node still runs and `disk` is not failed.
fn usable(weak: &Weak<NodeState>, disk: DiskId) -> bool {
    weak.upgrade()
        .is_some_and(|state| NodeServer { state }.disk_failure(disk).is_none())
}

fn scrub_disk(weak: &Weak<NodeState>, disk: DiskId, rate: u64, board: &ScrubBoard) {
    loop {
        let Some(state) = weak.upgrade() else {
            return;
        };
        if (NodeServer {
            state: state.clone(),
        })
        .disk_failure(disk)
        .is_some()
        {
            drop(state);
            std::thread::sleep(FAILED_RECHECK);
            continue;
        }
        if state.map.read().is_none() {
            // No map yet: a damaged block could not be repaired (no other
            // copy known); wait for the coordinator's.
            drop(state);
            std::thread::sleep(MIN_PASS);
            continue;
        }
        let Some(store) = state.disks.get(disk as usize).cloned() else {
            return;
        };
        let node = state.node;
        // The pass holds the disk, never the node.
        drop(state);
        let began = Instant::now();
        let mut pace = Pace::new(rate, None);
        if let Some(rec) = scrub::pass(
            &store,
            disk,
            board,
            &mut |bytes| pace.after_blocking(bytes),
            &|| usable(weak, disk),
        ) {
            info!(
                node,
                disk,
                blocks = rec.counts.blocks,
                bytes = rec.counts.bytes,
                damaged = rec.counts.damaged,
                repaired = rec.counts.repaired,
                "scrub pass complete"
            );
        }
        drop(store);
        if let Some(rest) = MIN_PASS.checked_sub(began.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}
