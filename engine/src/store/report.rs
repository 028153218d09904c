//! What `slicedb disk inspect` shows: the superblock, segments, extents,
//! tables and slices of a disk, as a serializable [`DiskReport`] and as text.
//!
//! It only reads the in-memory state; it must never touch the disk.

use serde::Serialize;

use super::{DiskStore, StoreCounters};
use crate::disk::meta::SlotStatus;
use crate::disk::SegmentKind;
use crate::{DiskId, NodeId, SliceId, TableId};

/// Committed contents of one (segment, table, slice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliceStat {
    pub segment: SegmentKind,
    pub table: TableId,
    pub slice: SliceId,
    pub rows: u64,
    pub bytes: u64,
    pub blocks: u64,
}

impl DiskStore {
    /// Committed rows, bytes and blocks per (segment, table, slice).
    pub fn slice_stats(&self) -> Vec<SliceStat> {
        let inner = self.inner.lock();
        inner
            .streams
            .iter()
            .filter(|(_, s)| !s.committed.is_empty())
            .map(|(k, s)| SliceStat {
                segment: k.segment,
                table: k.table,
                slice: k.slice,
                rows: s
                    .committed
                    .iter()
                    .map(|b| b.meta.rows)
                    .sum::<u64>()
                    .saturating_sub(s.deletes.len() as u64),
                bytes: s.committed.iter().map(|b| b.meta.length).sum(),
                blocks: s.committed.len() as u64,
            })
            .collect()
    }

    /// The disk's work counters (metrics).
    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    /// (segment, bytes, bytes used) of every segment, as `report` has them.
    pub fn segment_usage(&self) -> Vec<(SegmentKind, u64, u64)> {
        let inner = self.inner.lock();
        SegmentKind::ALL
            .iter()
            .map(|&k| (k, inner.alloc.segment(k).length, inner.alloc.used(k)))
            .collect()
    }

    /// The committed metadata generation: it only grows while the image
    /// lives (a new image starts low).
    pub fn generation(&self) -> u64 {
        self.inner.lock().generation
    }

    /// What `slicedb disk inspect` shows.
    pub fn report(&self) -> DiskReport {
        let mut inner = self.inner.lock();
        self.release_parked(&mut inner);
        let segments = SegmentKind::ALL
            .iter()
            .map(|&k| {
                let seg = inner.alloc.segment(k);
                SegmentReport {
                    kind: k,
                    offset: seg.offset,
                    length: seg.length,
                    used: inner.alloc.used(k),
                }
            })
            .collect();
        let mut extents = Vec::new();
        for (k, s) in &inner.streams {
            for e in &s.extents {
                let used = s
                    .committed
                    .iter()
                    .filter(|b| b.meta.offset >= e.offset && b.meta.offset < e.end())
                    .map(|b| b.meta.length)
                    .sum();
                extents.push(ExtentReport {
                    segment: k.segment,
                    table: k.table,
                    slice: k.slice,
                    offset: e.offset,
                    length: e.length,
                    used,
                });
            }
        }
        let zones = self
            .sb
            .zones
            .iter()
            .map(|z| {
                let mut used = [0u64; 3];
                for (k, st) in &inner.streams {
                    for e in st
                        .extents
                        .iter()
                        .filter(|e| e.offset >= z.offset && e.offset < z.end())
                    {
                        used[k.segment.index()] += e.length;
                    }
                }
                ZoneReport {
                    offset: z.offset,
                    length: z.length,
                    read_mib_s: z.read_kib_s as f64 / 1024.0,
                    segment: z.owner.as_str().to_string(),
                    primary_used: used[0],
                    mirror_used: used[1],
                    temp_used: used[2],
                }
            })
            .collect();
        let tables = inner
            .tables
            .iter()
            .map(|(id, t)| TableReport {
                table: *id,
                columns: t
                    .user
                    .fields()
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect(),
            })
            .collect();
        let slots = inner
            .slots
            .iter()
            .map(|s| match s {
                SlotStatus::Valid {
                    generation,
                    payload_len,
                } => format!("generation {generation}, {payload_len} bytes"),
                SlotStatus::Invalid(r) => format!("invalid: {r}"),
            })
            .collect();
        DiskReport {
            format_version: self.sb.version,
            cluster_id: self
                .sb
                .cluster_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            node_id: self.sb.node_id,
            disk_id: self.sb.disk_id,
            layout_profile: self.sb.layout.as_str().to_string(),
            image_size: self.sb.image_size,
            extent_size: self.sb.extent_size,
            meta_offset: self.sb.meta_offset,
            meta_slot_size: self.sb.meta_slot_size,
            generation: inner.generation,
            slots_at_open: slots,
            segments,
            zones,
            extents,
            tables,
            slices: {
                drop(inner);
                self.slice_stats()
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentReport {
    pub kind: SegmentKind,
    pub offset: u64,
    pub length: u64,
    /// Bytes in allocated extents.
    pub used: u64,
}

/// One zone of the data area: its measured speed, which segment got it and
/// what each segment has allocated in it.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneReport {
    pub offset: u64,
    pub length: u64,
    /// Sequential read speed measured at init (MiB/s); 0 = not measured.
    pub read_mib_s: f64,
    /// `primary`, `mirror`, `temp`, or `primary+mirror` (`dynamic`).
    pub segment: String,
    /// Bytes of the primary's extents in this zone.
    pub primary_used: u64,
    pub mirror_used: u64,
    pub temp_used: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExtentReport {
    pub segment: SegmentKind,
    pub table: TableId,
    pub slice: SliceId,
    pub offset: u64,
    pub length: u64,
    /// Bytes of committed blocks in this run.
    pub used: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    pub table: TableId,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    pub format_version: u32,
    /// Hex.
    pub cluster_id: String,
    pub node_id: NodeId,
    pub disk_id: DiskId,
    pub layout_profile: String,
    pub image_size: u64,
    pub extent_size: u64,
    pub meta_offset: u64,
    pub meta_slot_size: u64,
    /// Generation of the committed metadata.
    pub generation: u64,
    /// Status of metadata slots 0 and 1 when the image was opened.
    pub slots_at_open: Vec<String>,
    pub segments: Vec<SegmentReport>,
    pub zones: Vec<ZoneReport>,
    pub extents: Vec<ExtentReport>,
    pub tables: Vec<TableReport>,
    pub slices: Vec<SliceStat>,
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl DiskReport {
    /// A human-readable report for `slicedb disk inspect`.
    pub fn render_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "slicedb disk image, format version {}",
            self.format_version
        );
        let _ = writeln!(
            s,
            "cluster {}  node {}  disk {}",
            self.cluster_id, self.node_id, self.disk_id
        );
        let _ = writeln!(
            s,
            "size {}  extent {}  layout profile {} ({})",
            human(self.image_size),
            human(self.extent_size),
            self.layout_profile,
            match self.layout_profile.as_str() {
                "static" => "speed order: primary on the fastest zones, temp on the slowest",
                "dynamic" =>
                    "primary from the fast end, mirror from the slow end, temp on the slowest",
                _ => "offset order: primary on the lowest offsets",
            }
        );
        let _ = writeln!(
            s,
            "metadata: 2 slots of {} at offset {}; committed generation {}",
            human(self.meta_slot_size),
            self.meta_offset,
            self.generation
        );
        for (i, st) in self.slots_at_open.iter().enumerate() {
            let _ = writeln!(s, "  slot {i}: {st}");
        }
        let _ = writeln!(s, "\nsegments:");
        let _ = writeln!(
            s,
            "  {:<8} {:>14} {:>14} {:>12} {:>6}",
            "kind", "offset", "length", "used", "use%"
        );
        for g in &self.segments {
            let pct = if g.length == 0 {
                0.0
            } else {
                g.used as f64 * 100.0 / g.length as f64
            };
            let _ = writeln!(
                s,
                "  {:<8} {:>14} {:>14} {:>12} {:>5.1}%",
                g.kind.as_str(),
                g.offset,
                human(g.length),
                human(g.used),
                pct
            );
        }
        let _ = writeln!(s, "\nzones:");
        let _ = writeln!(
            s,
            "  {:>14} {:>12} {:>10} {:<15} {:>12} {:>12} {:>12}",
            "offset", "length", "MiB/s", "segment", "primary", "mirror", "temp"
        );
        for z in &self.zones {
            let speed = if z.read_mib_s > 0.0 {
                format!("{:.1}", z.read_mib_s)
            } else {
                "-".to_string()
            };
            let _ = writeln!(
                s,
                "  {:>14} {:>12} {:>10} {:<15} {:>12} {:>12} {:>12}",
                z.offset,
                human(z.length),
                speed,
                z.segment,
                human(z.primary_used),
                human(z.mirror_used),
                human(z.temp_used)
            );
        }
        let _ = writeln!(s, "\ntables:");
        if self.tables.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        for t in &self.tables {
            let _ = writeln!(s, "  {}: {}", t.table, t.columns.join(", "));
        }
        let _ = writeln!(s, "\nslices:");
        let _ = writeln!(
            s,
            "  {:<8} {:>8} {:>6} {:>12} {:>8} {:>12}",
            "segment", "table", "slice", "rows", "blocks", "bytes"
        );
        for x in &self.slices {
            let _ = writeln!(
                s,
                "  {:<8} {:>8} {:>6} {:>12} {:>8} {:>12}",
                x.segment.as_str(),
                x.table,
                x.slice,
                x.rows,
                x.blocks,
                human(x.bytes)
            );
        }
        let _ = writeln!(s, "\nextents:");
        let _ = writeln!(
            s,
            "  {:<8} {:>8} {:>6} {:>14} {:>12} {:>12}",
            "segment", "table", "slice", "offset", "length", "used"
        );
        for e in &self.extents {
            let _ = writeln!(
                s,
                "  {:<8} {:>8} {:>6} {:>14} {:>12} {:>12}",
                e.segment.as_str(),
                e.table,
                e.slice,
                e.offset,
                human(e.length),
                human(e.used)
            );
        }
        s
    }
}
