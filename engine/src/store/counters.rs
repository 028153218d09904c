//! Work counters of one disk, for the node's metrics endpoint: rows and
//! blocks scans read, bytes read from the image, rows and bytes written
//! into blocks, and blocks that failed their checksum. Counted where the
//! work happens (scans, appends, copies' sinks, groom, exports) with
//! relaxed atomics: a scrape may see one counter a block ahead of another.
//!
//! They only count; nothing reads them to decide anything.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::disk::SegmentKind;

/// Counters per segment (index: [`SegmentKind::index`]).
#[derive(Debug, Default)]
struct PerSegment([AtomicU64; 3]);

impl PerSegment {
    fn add(&self, segment: SegmentKind, n: u64) {
        self.0[segment.index()].fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self, segment: SegmentKind) -> u64 {
        self.0[segment.index()].load(Ordering::Relaxed)
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct StoreCounters {
    scan_rows: PerSegment,
    scan_blocks: PerSegment,
    read_bytes: PerSegment,
    written_rows: PerSegment,
    written_blocks: PerSegment,
    written_bytes: PerSegment,
    checksum_failures: AtomicU64,
}

/// The counters of one segment at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentCounts {
    /// Rows of the blocks scans read (before filters and visibility).
    pub scan_rows: u64,
    /// Blocks scans read, from the image or the decoded-column cache.
    pub scan_blocks: u64,
    /// Bytes read from the image for scans and grooms (cache hits read none).
    pub read_bytes: u64,
    /// Rows written into new blocks (appends, mirror forwards, copies, grooms).
    pub written_rows: u64,
    pub written_blocks: u64,
    pub written_bytes: u64,
}

impl StoreCounters {
    /// A scan read a block of `rows` rows; `bytes` of it came from the image.
    pub(super) fn scanned(&self, segment: SegmentKind, rows: u64, bytes: u64) {
        self.scan_blocks.add(segment, 1);
        self.scan_rows.add(segment, rows);
        if bytes > 0 {
            self.read_bytes.add(segment, bytes);
        }
    }

    /// Bytes read from the image outside a scan (a groom's rewrite).
    pub(super) fn read(&self, segment: SegmentKind, bytes: u64) {
        self.read_bytes.add(segment, bytes);
    }

    /// A block of `rows` rows and `bytes` bytes was written.
    pub(super) fn written(&self, segment: SegmentKind, rows: u64, bytes: u64) {
        self.written_blocks.add(segment, 1);
        self.written_rows.add(segment, rows);
        self.written_bytes.add(segment, bytes);
    }

    /// A block read from the image failed its checksum.
    pub(super) fn checksum_failed(&self) {
        self.checksum_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn segment(&self, segment: SegmentKind) -> SegmentCounts {
        SegmentCounts {
            scan_rows: self.scan_rows.get(segment),
            scan_blocks: self.scan_blocks.get(segment),
            read_bytes: self.read_bytes.get(segment),
            written_rows: self.written_rows.get(segment),
            written_blocks: self.written_blocks.get(segment),
            written_bytes: self.written_bytes.get(segment),
        }
    }

    pub fn checksum_failures(&self) -> u64 {
        self.checksum_failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::RecordBatch;

    use crate::store::tests::*;
    use crate::store::SegmentKind;
    use crate::Result;

    #[test]
    fn appends_scans_and_bad_blocks_are_counted_where_they_happen() {
        let (dev, store) = mem_store(100);
        store.create_table(1, schema()).unwrap();
        store
            .append(SegmentKind::Primary, 1, 0, 1, &rows(0, 250))
            .unwrap();
        store.commit(1).unwrap();
        let c = store.counters().segment(SegmentKind::Primary);
        assert_eq!((c.written_rows, c.written_blocks), (250, 3));
        assert!(c.written_bytes > 0);
        assert_eq!(
            store.counters().segment(SegmentKind::Mirror).written_rows,
            0
        );

        let scan = |store: &crate::store::DiskStore| -> Result<Vec<RecordBatch>> {
            store.scan(&spec(SegmentKind::Primary, 1, 0))?.collect()
        };
        let n: usize = scan(&store).unwrap().iter().map(|b| b.num_rows()).sum();
        assert_eq!(n, 250);
        let c = store.counters().segment(SegmentKind::Primary);
        assert_eq!((c.scan_rows, c.scan_blocks), (250, 3));
        // Read from the image (a cached block would read no bytes).
        let cached = store.cache_stats().map_or(0, |s| s.hits);
        assert_eq!(c.read_bytes == c.written_bytes, cached == 0, "{c:?}");
        assert_eq!(store.counters().checksum_failures(), 0);

        let first = store
            .inner
            .lock()
            .streams
            .values()
            .next()
            .unwrap()
            .committed[0]
            .meta
            .clone();
        dev.corrupt(first.offset + 10, 0x10);
        if let Some(cache) = &store.cache {
            cache.remove_table(1);
        }
        assert!(scan(&store).is_err(), "a flipped byte fails the scan");
        assert_eq!(store.counters().checksum_failures(), 1);
    }
}
