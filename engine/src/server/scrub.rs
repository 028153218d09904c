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
//! the `slicedb_node_scrub_*` metrics); each complete pass is also kept in
//! [`PASSES_FILE`] next to the images, so the last one of each disk is
//! still shown after the node restarts.
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

/// The file each disk's complete passes are kept in, next to the images:
/// the last complete pass of each disk outlives a restart.
pub const PASSES_FILE: &str = "scrub-passes.jsonl";

/// Lines [`PASSES_FILE`] may hold before it is rewritten with the last
/// pass of each disk.
const PASSES_KEPT: usize = 1000;

/// A complete pass as a line of [`PASSES_FILE`].
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPass {
    disk: DiskId,
    started_unix_ms: u64,
    finished_unix_ms: u64,
    blocks: u64,
    bytes: u64,
    damaged: u64,
    repaired: u64,
}

impl SavedPass {
    fn new(disk: DiskId, r: &scrub::PassRecord) -> Self {
        SavedPass {
            disk,
            started_unix_ms: r.started_unix_ms,
            finished_unix_ms: r.finished_unix_ms,
            blocks: r.counts.blocks,
            bytes: r.counts.bytes,
            damaged: r.counts.damaged,
            repaired: r.counts.repaired,
        }
    }

    fn record(&self) -> scrub::PassRecord {
        scrub::PassRecord {
            started_unix_ms: self.started_unix_ms,
            finished_unix_ms: self.finished_unix_ms,
            counts: scrub::PassCounts {
                blocks: self.blocks,
                bytes: self.bytes,
                damaged: self.damaged,
                repaired: self.repaired,
            },
        }
    }
}

/// A board with each disk's last complete pass from [`PASSES_FILE`] next
/// to `disks`' images.
pub(super) fn open_board(disks: &[Arc<crate::store::DiskStore>]) -> Arc<ScrubBoard> {
    let board = ScrubBoard::default();
    if let Some(path) = super::jsonl::next_to_images(disks, PASSES_FILE) {
        for p in super::jsonl::load::<SavedPass>(&path) {
            if (p.disk as usize) < disks.len() {
                board.restore(p.disk, p.record());
            }
        }
    }
    Arc::new(board)
}

/// Keep `disk`'s complete pass in [`PASSES_FILE`] (rewritten with each
/// disk's last pass once it holds [`PASSES_KEPT`] lines).
fn save_pass(weak: &Weak<NodeState>, disk: DiskId, rec: &scrub::PassRecord, board: &ScrubBoard) {
    let Some(state) = weak.upgrade() else {
        return;
    };
    let Some(path) = super::jsonl::next_to_images(&state.disks, PASSES_FILE) else {
        return;
    };
    let _w = state.scrub_file.lock();
    let lines = std::fs::read_to_string(&path).map_or(0, |t| t.lines().count());
    if lines + 1 >= PASSES_KEPT {
        let last: Vec<SavedPass> = board
            .all()
            .into_iter()
            .filter_map(|(d, s)| s.last.map(|l| SavedPass::new(d, &l)))
            .collect();
        super::jsonl::rewrite(&path, last.iter());
    } else {
        super::jsonl::append(&path, &SavedPass::new(disk, rec));
    }
}

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
            save_pass(weak, disk, &rec, board);
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
