//! Blocks this node could not repair (both copies damaged, or no good copy
//! to be had): the marks behind `StatusResponse.damaged` and the
//! coordinator's `slicedb_damaged` view. A block is marked when its repair
//! fails (the read fails with XX001) or when a peer asks for it and this
//! node's copy is damaged too; the mark stays until a re-check (on every
//! `Status`) finds the block readable again (a later repair, a restored
//! image) or gone (rewritten by GROOM, its rows deleted and groomed, its
//! table dropped or truncated, its copy dropped after a regeneration moved
//! it). Marks are kept in `damaged-blocks.jsonl` next to the node's disk
//! images (`jsonl`: rewritten whole on each change), so a restart keeps
//! them; they are not part of the disk image format.
//!
//! It owns the marks and their file. It must never repair a block or read
//! one through the repair seam (a re-check reads the block as a peer's
//! `FetchBlock` does), and never clear a mark whose block it could not
//! read for another reason than its being gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::jsonl;
use crate::proto::pb;
use crate::store::{DiskStore, LogicalBlock, SegmentKind};
use crate::{DiskId, EngineError, SliceId, TableId};

/// The file of the marks, in the directory of the node's first disk image.
pub const FILE_NAME: &str = "damaged-blocks.jsonl";

/// One block marked damaged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Mark {
    pub since_unix_ms: u64,
    pub disk: DiskId,
    /// `primary`, `mirror` or `temp`.
    pub segment: String,
    pub table: TableId,
    pub slice: SliceId,
    pub seq: u64,
    pub rows: u64,
    pub rowid_min: i64,
    pub rowid_max: i64,
    /// Why it could not be repaired.
    pub error: String,
}

type Key = (DiskId, String, TableId, SliceId, u64, i64, i64);

impl Mark {
    pub(super) fn new(
        disk: DiskId,
        segment: SegmentKind,
        block: &LogicalBlock,
        error: String,
    ) -> Mark {
        Mark {
            since_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            disk,
            segment: segment.as_str().to_string(),
            table: block.table,
            slice: block.slice,
            seq: block.seq,
            rows: block.rows,
            rowid_min: block.rowid_min,
            rowid_max: block.rowid_max,
            error,
        }
    }

    fn key(&self) -> Key {
        (
            self.disk,
            self.segment.clone(),
            self.table,
            self.slice,
            self.seq,
            self.rowid_min,
            self.rowid_max,
        )
    }

    fn segment_kind(&self) -> Option<SegmentKind> {
        [SegmentKind::Primary, SegmentKind::Mirror, SegmentKind::Temp]
            .into_iter()
            .find(|s| s.as_str() == self.segment)
    }

    pub(super) fn to_pb(&self) -> pb::DamagedBlock {
        pb::DamagedBlock {
            since_unix_ms: self.since_unix_ms,
            disk: self.disk,
            segment: self
                .segment_kind()
                .map_or(pb::Segment::Primary, pb::Segment::from) as i32,
            table: self.table,
            slice: self.slice,
            seq: self.seq,
            rows: self.rows,
            rowid_min: self.rowid_min,
            rowid_max: self.rowid_max,
            error: self.error.clone(),
        }
    }
}

/// What a re-check found of a marked block.
enum Recheck {
    Damaged,
    Readable,
    Gone(String),
}

/// The node's marks, and where they are kept.
#[derive(Default)]
pub(super) struct DamagedBlocks {
    file: Option<PathBuf>,
    marks: Mutex<BTreeMap<Key, Mark>>,
}

impl DamagedBlocks {
    /// The marks kept next to `disks`' first image (none kept for a node
    /// without disks). An unreadable file starts empty, with a warning:
    /// the marks are a report, and the damage is met again on its next read.
    pub(super) fn open(disks: &[Arc<DiskStore>]) -> DamagedBlocks {
        let file = jsonl::next_to_images(disks, FILE_NAME);
        let marks = file.as_deref().map(load).unwrap_or_default();
        DamagedBlocks {
            file,
            marks: Mutex::new(marks),
        }
    }

    /// Mark a block (a block marked already keeps its first mark).
    pub(super) fn mark(&self, m: Mark) {
        let mut marks = self.marks.lock();
        if marks.contains_key(&m.key()) {
            return;
        }
        warn!(disk = m.disk, segment = %m.segment, table = m.table, slice = m.slice,
              seq = m.seq, error = %m.error, "block marked damaged: no good copy to repair it from");
        marks.insert(m.key(), m);
        self.save(&marks);
    }

    /// Re-check every mark against `disks` and drop those whose block is
    /// readable again or gone; the marks that stay.
    pub(super) fn recheck(&self, disks: &[Arc<DiskStore>]) -> Vec<Mark> {
        let now: Vec<Mark> = self.marks.lock().values().cloned().collect();
        if now.is_empty() {
            return now;
        }
        let mut cleared = Vec::new();
        for m in &now {
            let found = match (disks.get(m.disk as usize), m.segment_kind()) {
                (Some(d), Some(seg)) => check(d, seg, m),
                _ => Recheck::Gone("no such disk or segment".into()),
            };
            match found {
                Recheck::Damaged => {}
                Recheck::Readable => {
                    info!(
                        disk = m.disk,
                        table = m.table,
                        slice = m.slice,
                        seq = m.seq,
                        "a block marked damaged is readable again: mark cleared"
                    );
                    cleared.push(m.key());
                }
                Recheck::Gone(why) => {
                    info!(disk = m.disk, table = m.table, slice = m.slice, seq = m.seq, why = %why,
                          "a block marked damaged is gone: mark cleared");
                    cleared.push(m.key());
                }
            }
        }
        let mut marks = self.marks.lock();
        if !cleared.is_empty() {
            for k in &cleared {
                marks.remove(k);
            }
            self.save(&marks);
        }
        marks.values().cloned().collect()
    }

    /// Write the marks whole (a failure is logged: the marks stay in
    /// memory).
    fn save(&self, marks: &BTreeMap<Key, Mark>) {
        if let Some(file) = &self.file {
            jsonl::rewrite(file, marks.values());
        }
    }
}

/// The marks in `file`.
fn load(file: &Path) -> BTreeMap<Key, Mark> {
    jsonl::load::<Mark>(file)
        .into_iter()
        .map(|m| (m.key(), m))
        .collect()
}

/// Read the marked block as a peer's `FetchBlock` would (no repair).
fn check(disk: &DiskStore, segment: SegmentKind, m: &Mark) -> Recheck {
    let want = LogicalBlock {
        table: m.table,
        slice: m.slice,
        seq: m.seq,
        rows: m.rows,
        rowid_min: m.rowid_min,
        rowid_max: m.rowid_max,
    };
    match disk.fetch_block(segment, &want) {
        Ok((bytes, _)) if bytes.is_empty() => {
            Recheck::Gone("its rows were deleted and groomed away".into())
        }
        Ok(_) => Recheck::Readable,
        // No such stream, or its rows are no longer held (deleted,
        // groomed, truncated, dropped, the copy moved away).
        Err(EngineError::InvalidRequest(why)) => Recheck::Gone(why),
        Err(EngineError::TableNotFound(t)) => Recheck::Gone(format!("table {t} dropped")),
        Err(_) => Recheck::Damaged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(seq: u64) -> Mark {
        Mark::new(
            0,
            SegmentKind::Mirror,
            &LogicalBlock {
                table: 7,
                slice: 3,
                seq,
                rows: 10,
                rowid_min: 1,
                rowid_max: 10,
            },
            "both copies bad".into(),
        )
    }

    #[test]
    fn marks_survive_a_reopen_and_a_bad_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE_NAME);
        let d = DamagedBlocks {
            file: Some(file.clone()),
            marks: Default::default(),
        };
        let (one, two) = (mark(1), mark(2));
        d.mark(one.clone());
        d.mark(mark(1)); // marked already: the first mark stays
        d.mark(two.clone());
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        std::fs::write(&file, format!("{text}not json\n")).unwrap();
        let loaded: Vec<Mark> = load(&file).into_values().collect();
        assert_eq!(loaded, vec![one, two]);
        assert!(load(&dir.path().join("none")).is_empty());
    }
}
