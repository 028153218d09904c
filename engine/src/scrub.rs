//! The background scrubber's pass and its bookkeeping: one pass reads every
//! committed block of every stream of one disk ([`DiskStore::scrub_plan`]),
//! each through the read path of scans ([`DiskStore::scrub_block`]: a
//! damaged block is repaired from the other copy and counted as a scan's
//! would be), calling its pace after every block with the bytes read so far,
//! and records per disk the last COMPLETE pass (start, end, blocks, bytes,
//! damaged, repaired) and the current one's progress ([`ScrubBoard`]: what
//! the node's `Status` reports and `slicedb_scrub` shows).
//!
//! It owns the pass order and the records. It never decides when a pass
//! runs or how fast (the node's `server/scrub.rs` does, with the copies'
//! [`crate::mirror::copy::Pace`]), and never holds a store lock across a
//! block read (the store's `scrub.rs` takes each stream's list and a read
//! hold, then reads without the lock).

use std::collections::BTreeMap;
use std::time::SystemTime;

use parking_lot::Mutex;
use tracing::warn;

use crate::store::{DiskStore, ScrubRead};
use crate::DiskId;

/// Counts of one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassCounts {
    pub blocks: u64,
    pub bytes: u64,
    /// Blocks found damaged (repaired or not).
    pub damaged: u64,
    /// Of those, repaired from the other copy.
    pub repaired: u64,
}

/// A complete pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassRecord {
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub counts: PassCounts,
}

/// The pass running now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub started_unix_ms: u64,
    /// Bytes of committed blocks when it started.
    pub planned_bytes: u64,
    pub counts: PassCounts,
}

impl Progress {
    /// Done, from 0 to 1 (1 for an empty disk).
    pub fn fraction(&self) -> f64 {
        if self.planned_bytes == 0 {
            return 1.0;
        }
        (self.counts.bytes as f64 / self.planned_bytes as f64).min(1.0)
    }
}

/// One disk's scrub record.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskScrub {
    pub last: Option<PassRecord>,
    pub current: Option<Progress>,
    /// Complete passes since the node started.
    pub passes: u64,
    /// Bytes read by every pass (complete or not) since the node started.
    pub bytes_total: u64,
}

/// Every disk's scrub record of a node.
#[derive(Debug, Default)]
pub struct ScrubBoard {
    disks: Mutex<BTreeMap<DiskId, DiskScrub>>,
}

impl ScrubBoard {
    pub fn get(&self, disk: DiskId) -> DiskScrub {
        self.disks.lock().get(&disk).copied().unwrap_or_default()
    }

    /// The disks that ever started a pass, with their records.
    pub fn all(&self) -> Vec<(DiskId, DiskScrub)> {
        self.disks.lock().iter().map(|(d, s)| (*d, *s)).collect()
    }

    /// `disk`'s last complete pass as a previous run of the node left it
    /// (kept until a pass of this run completes).
    pub fn restore(&self, disk: DiskId, last: PassRecord) {
        self.update(disk, |s| {
            if s.last
                .is_none_or(|l| l.finished_unix_ms < last.finished_unix_ms)
            {
                s.last = Some(last);
            }
        });
    }

    fn update(&self, disk: DiskId, f: impl FnOnce(&mut DiskScrub)) {
        f(self.disks.lock().entry(disk).or_default());
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One pass over `store` (disk `disk`), recorded on `board`: `pace` is
/// called after every block with the bytes read so far in the pass (it
/// waits until they are due), `go_on` before every block (false: the pass
/// stops, not recorded as complete). The complete pass's record, or None.
pub fn pass(
    store: &DiskStore,
    disk: DiskId,
    board: &ScrubBoard,
    pace: &mut dyn FnMut(u64),
    go_on: &dyn Fn() -> bool,
) -> Option<PassRecord> {
    let plan = store.scrub_plan();
    let started = unix_ms();
    let planned_bytes = plan.iter().map(|(_, b)| b).sum();
    board.update(disk, |s| {
        s.current = Some(Progress {
            started_unix_ms: started,
            planned_bytes,
            counts: PassCounts::default(),
        })
    });
    let mut c = PassCounts::default();
    for (key, _) in plan {
        // Each block is checked still listed, and read-held, as it is read.
        let batch = store.scrub_stream(&key);
        for b in &batch.blocks {
            if !go_on() {
                board.update(disk, |s| s.current = None);
                return None;
            }
            match store.scrub_block(b) {
                ScrubRead::Gone => continue,
                ScrubRead::Clean => {}
                ScrubRead::Repaired => {
                    c.damaged += 1;
                    c.repaired += 1;
                }
                ScrubRead::Damaged(e) => {
                    c.damaged += 1;
                    warn!(disk, segment = b.segment.as_str(), table = b.table, slice = b.slice,
                          seq = b.seq, offset = b.offset, error = %e, "scrub: damaged block not repaired");
                }
            }
            c.blocks += 1;
            c.bytes += b.length;
            board.update(disk, |s| {
                s.bytes_total += b.length;
                if let Some(p) = &mut s.current {
                    p.counts = c;
                }
            });
            pace(c.bytes);
        }
    }
    let rec = PassRecord {
        started_unix_ms: started,
        finished_unix_ms: unix_ms(),
        counts: c,
    };
    board.update(disk, |s| {
        s.current = None;
        s.last = Some(rec);
        s.passes += 1;
    });
    Some(rec)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use parking_lot::Mutex as PMutex;

    use super::*;
    use crate::disk::{BlockDevice, MemDevice};
    use crate::mirror::copy::Pace;
    use crate::store::tests::*;
    use crate::store::{BlockRepair, Repaired, SegmentKind, StoreOptions, StoredBlock};
    use crate::{EngineError, Result};

    /// Hands back the good bytes it was given for a block's offset.
    struct Good(PMutex<Vec<(u64, Vec<u8>)>>);

    impl BlockRepair for Good {
        fn repair(&self, block: &StoredBlock, error: EngineError) -> Result<Repaired> {
            let good = self.0.lock();
            match good.iter().find(|(o, _)| *o == block.offset) {
                Some((_, b)) => Ok(Repaired::whole(b.clone(), block)),
                None => Err(error),
            }
        }
    }

    fn blocks_of(store: &DiskStore, segment: SegmentKind) -> Vec<StoredBlock> {
        store
            .scrub_plan()
            .into_iter()
            .filter(|(k, _)| k.segment == segment)
            .flat_map(|(k, _)| store.scrub_stream(&k).blocks)
            .collect()
    }

    /// A pass reads every committed block of every segment once, calls its
    /// pace after each with the bytes so far, finds a damaged primary block
    /// (repaired through the seam, which hands back good bytes) and a
    /// damaged temp block (reported, never repaired), and records the pass
    /// only once it is complete.
    #[test]
    fn a_pass_reads_every_block_and_records_what_it_found() {
        let good = Arc::new(Good(PMutex::new(Vec::new())));
        let dev = Arc::new(MemDevice::new(small_init().size));
        let store = crate::store::DiskStore::create_with_device(
            dev.clone(),
            std::path::Path::new("mem"),
            IDS,
            small_init(),
            StoreOptions {
                repair: good.clone(),
                ..opts(100)
            },
        )
        .unwrap();
        store.create_table(1, schema()).unwrap();
        for (seg, slice) in [
            (SegmentKind::Primary, 0),
            (SegmentKind::Mirror, 1),
            (SegmentKind::Temp, 0),
        ] {
            store.append(seg, 1, slice, 1, &rows(0, 300)).unwrap();
        }
        store.commit(1).unwrap();
        let all: Vec<StoredBlock> = SegmentKind::ALL
            .iter()
            .flat_map(|s| blocks_of(&store, *s))
            .collect();
        assert_eq!(all.len(), 9, "three 100-row blocks per segment");
        let total: u64 = all.iter().map(|b| b.length).sum();

        // A clean pass: every block, paced after each.
        let board = ScrubBoard::default();
        let mut paced = Vec::new();
        let rec = pass(&store, 0, &board, &mut |b| paced.push(b), &|| true).unwrap();
        assert_eq!(
            rec.counts,
            PassCounts {
                blocks: 9,
                bytes: total,
                damaged: 0,
                repaired: 0
            }
        );
        assert_eq!(paced.len(), 9);
        assert!(paced.windows(2).all(|w| w[0] < w[1]), "{paced:?}");
        assert_eq!(paced.last(), Some(&total));
        let s = board.get(0);
        assert_eq!((s.passes, s.bytes_total, s.current), (1, total, None));

        // Damage a primary block (good bytes known to the seam) and a temp
        // block (no other copy).
        let p = blocks_of(&store, SegmentKind::Primary)[1];
        let t = blocks_of(&store, SegmentKind::Temp)[2];
        good.0
            .lock()
            .push((p.offset, dev.read_vec(p.offset, p.length as usize).unwrap()));
        good.0
            .lock()
            .push((t.offset, dev.read_vec(t.offset, t.length as usize).unwrap()));
        dev.corrupt(p.offset + p.length / 2, 0x10);
        dev.corrupt(t.offset + t.length / 2, 0x10);
        let before = store.counters().checksum_failures();
        let rec = pass(&store, 0, &board, &mut |_| {}, &|| true).unwrap();
        assert_eq!((rec.counts.blocks, rec.counts.bytes), (9, total));
        assert_eq!((rec.counts.damaged, rec.counts.repaired), (2, 1));
        assert_eq!(
            store.counters().checksum_failures(),
            before + 2,
            "counted as a scan's damaged reads are"
        );
        let s = board.get(0);
        assert_eq!((s.passes, s.bytes_total), (2, 2 * total));
        assert_eq!(s.last, Some(rec));

        // A pass stopped half-way is not a complete pass: the last one
        // stays, and its progress shows until it stops.
        let n = std::cell::Cell::new(0);
        let seen = std::cell::Cell::new(0.0);
        let stopped = pass(
            &store,
            0,
            &board,
            &mut |_| seen.set(board.get(0).current.unwrap().fraction()),
            &|| {
                n.set(n.get() + 1);
                n.get() <= 4
            },
        );
        assert!(stopped.is_none());
        let s = board.get(0);
        assert_eq!((s.passes, s.last, s.current), (2, Some(rec), None));
        assert!(seen.get() > 0.0 && seen.get() < 1.0, "{}", seen.get());
    }

    /// The rate bound of the pace a scrub uses, on a given clock: bytes are
    /// due at `rate`, and no wait is asked once they are.
    #[test]
    fn the_pace_holds_bytes_to_the_rate() {
        let mib = 1u64 << 20;
        let p = Pace::new(mib, None);
        assert_eq!(
            p.due_after(4 * mib, Duration::from_secs(1)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(p.due_after(4 * mib, Duration::from_secs(4)), None);
        assert_eq!(p.due_after(4 * mib, Duration::from_secs(5)), None);
        assert_eq!(
            p.due_after(mib / 2, Duration::ZERO),
            Some(Duration::from_millis(500))
        );
        // 0: no limit.
        assert_eq!(Pace::new(0, None).due_after(u64::MAX, Duration::ZERO), None);
    }
}
