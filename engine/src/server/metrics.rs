//! The node's metrics endpoint (`GET /metrics`): what its disks did
//! (scans, writes, checksum failures), their decoded-column caches, the
//! space of every segment, and the slice copies it pulls. Names and
//! meanings are in docs/metrics.md.
//!
//! It only reads counters and in-memory state kept by the store and the
//! mirror manager; it never touches a disk and never takes a lock longer
//! than a copy of a few numbers.

use crate::metrics::{Exposition, Kind};
use crate::store::{SegmentCounts, SegmentKind};

use super::NodeServer;

impl NodeServer {
    /// The node's id.
    pub fn id(&self) -> crate::NodeId {
        self.state.node
    }

    /// The node's metrics in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let st = &self.state;
        let mut e = Exposition::new();
        let node = st.node.to_string();
        e.family(
            "slicedb_node_info",
            Kind::Gauge,
            "Always 1; the node's id as a label.",
        )
        .sample(&[("node", &node)], 1.0);
        let disks: Vec<String> = (0..st.disks.len()).map(|d| d.to_string()).collect();
        type Pick = fn(&SegmentCounts) -> u64;
        let per_segment: [(&str, &str, Pick); 6] = [
            (
                "slicedb_node_scan_rows_total",
                "Rows of the blocks scans read, before filters and visibility.",
                |c| c.scan_rows,
            ),
            (
                "slicedb_node_scan_blocks_total",
                "Blocks scans read, from the disk image or the decoded-column cache.",
                |c| c.scan_blocks,
            ),
            (
                "slicedb_node_read_bytes_total",
                "Bytes of blocks read from the disk image by scans and grooms.",
                |c| c.read_bytes,
            ),
            (
                "slicedb_node_written_rows_total",
                "Rows written into new blocks: writes, mirror forwards, copies, grooms.",
                |c| c.written_rows,
            ),
            (
                "slicedb_node_written_blocks_total",
                "Blocks written.",
                |c| c.written_blocks,
            ),
            (
                "slicedb_node_written_bytes_total",
                "Bytes of blocks written.",
                |c| c.written_bytes,
            ),
        ];
        let counts: Vec<Vec<SegmentCounts>> = st
            .disks
            .iter()
            .map(|d| SegmentKind::ALL.map(|k| d.counters().segment(k)).to_vec())
            .collect();
        for (name, help, pick) in per_segment {
            e.family(name, Kind::Counter, help);
            for (d, segs) in counts.iter().enumerate() {
                for (seg, c) in SegmentKind::ALL.iter().zip(segs) {
                    e.sample(
                        &[("disk", &disks[d]), ("segment", seg.as_str())],
                        pick(c) as f64,
                    );
                }
            }
        }
        e.family(
            "slicedb_node_checksum_failures_total",
            Kind::Counter,
            "Blocks read from the disk image that failed their checksum.",
        );
        for (d, store) in st.disks.iter().enumerate() {
            e.sample(
                &[("disk", &disks[d])],
                store.counters().checksum_failures() as f64,
            );
        }
        e.family(
            "slicedb_node_blocks_repaired_total",
            Kind::Counter,
            "Damaged blocks repaired from the slice's other copy (sector repair).",
        );
        {
            let log = st.repairs.lock();
            for (d, name) in disks.iter().enumerate() {
                e.sample(&[("disk", name)], log.repaired(d as crate::DiskId) as f64);
            }
        }
        let scrubs: Vec<_> = (0..disks.len())
            .map(|d| st.scrub.get(d as crate::DiskId))
            .collect();
        for (name, help, pick) in [
            (
                "slicedb_node_scrub_bytes_total",
                "Bytes of committed blocks read and verified by the background scrubber.",
                (|s: &crate::scrub::DiskScrub| s.bytes_total)
                    as fn(&crate::scrub::DiskScrub) -> u64,
            ),
            (
                "slicedb_node_scrub_passes_total",
                "Complete background scrub passes over the disk.",
                |s| s.passes,
            ),
        ] {
            e.family(name, Kind::Counter, help);
            for (d, s) in scrubs.iter().enumerate() {
                e.sample(&[("disk", &disks[d])], pick(s) as f64);
            }
        }
        let caches: Vec<_> = st.disks.iter().map(|d| d.cache_stats()).collect();
        let cache = |e: &mut Exposition,
                     name: &str,
                     kind: Kind,
                     help: &str,
                     f: &dyn Fn(crate::cache::CacheStats) -> u64| {
            e.family(name, kind, help);
            for (d, c) in caches.iter().enumerate() {
                let v = c.map_or(0, f);
                e.sample(&[("disk", &disks[d])], v as f64);
            }
        };
        cache(
            &mut e,
            "slicedb_node_cache_hits_total",
            Kind::Counter,
            "Block reads answered by the decoded-column cache.",
            &|c| c.hits,
        );
        cache(
            &mut e,
            "slicedb_node_cache_misses_total",
            Kind::Counter,
            "Block reads the decoded-column cache could not answer.",
            &|c| c.misses,
        );
        cache(
            &mut e,
            "slicedb_node_cache_bytes",
            Kind::Gauge,
            "Bytes of decoded columns the cache holds.",
            &|c| c.bytes,
        );
        let usage: Vec<_> = st.disks.iter().map(|d| d.segment_usage()).collect();
        for (name, help, used) in [
            (
                "slicedb_node_segment_bytes",
                "Size of each segment of each disk image.",
                false,
            ),
            (
                "slicedb_node_segment_used_bytes",
                "Bytes of each segment held by extents.",
                true,
            ),
        ] {
            e.family(name, Kind::Gauge, help);
            for (d, segs) in usage.iter().enumerate() {
                for &(seg, total, in_use) in segs {
                    let v = if used { in_use } else { total };
                    e.sample(&[("disk", &disks[d]), ("segment", seg.as_str())], v as f64);
                }
            }
        }
        let failed = st.failed_disks.lock().clone();
        e.family(
            "slicedb_node_disk_failed",
            Kind::Gauge,
            "1 if the disk failed (I/O error, image gone, bad blocks past the limit), else 0.",
        );
        for (d, name) in disks.iter().enumerate() {
            let bad = failed.contains_key(&(d as crate::DiskId));
            e.sample(&[("disk", name)], f64::from(u8::from(bad)));
        }
        let copies = st.copies.counts();
        e.single(
            "slicedb_node_copies_in_progress",
            Kind::Gauge,
            "Slice copies (regeneration, resync) this node is pulling now.",
            copies.in_progress as f64,
        );
        e.single(
            "slicedb_node_copy_bytes_total",
            Kind::Counter,
            "Bytes of blocks slice copies pulled into this node.",
            copies.bytes_total as f64,
        );
        e.family(
            "slicedb_node_copies_finished_total",
            Kind::Counter,
            "Slice copies this node pulled, by outcome.",
        )
        .sample(&[("outcome", "ok")], copies.committed as f64)
        .sample(&[("outcome", "error")], copies.failed as f64);
        e.finish()
    }
}
