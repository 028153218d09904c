//! The superblock: 4 KiB at offset 0, written once at `disk init`. It names
//! the disk (cluster, node, disk ids) and fixes the layout: extent size, the
//! metadata slots and the segment table. See docs/disk-format.md.

use super::le_bytes::{ByteReader, ByteWriter};
use super::SegmentKind;
use crate::{DiskId, EngineError, NodeId, Result};

pub const SUPERBLOCK_SIZE: u64 = 4096;
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"SLCDBDSK";
/// The one format version this build reads and writes. Any change to the
/// superblock, metadata slots or block encoding bumps it.
pub const FORMAT_VERSION: u32 = 3;
/// Bytes of the superblock covered by its CRC (the CRC is stored right after).
const SB_BODY_LEN: usize = 160;

/// How segments were laid out on the media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutProfile {
    /// Offset order: on a flat file or SSD, lower offsets are taken as the
    /// fastest zone, so primary comes first, then mirror, then temp.
    Flat,
}

impl LayoutProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            LayoutProfile::Flat => "flat",
        }
    }
    fn code(self) -> u32 {
        match self {
            LayoutProfile::Flat => 0,
        }
    }
    fn from_code(c: u32) -> Option<Self> {
        match c {
            0 => Some(LayoutProfile::Flat),
            _ => None,
        }
    }
}

/// One contiguous segment of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SegmentExtent {
    pub kind: SegmentKind,
    pub offset: u64,
    pub length: u64,
}

impl SegmentExtent {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub version: u32,
    pub cluster_id: [u8; 16],
    pub node_id: NodeId,
    pub disk_id: DiskId,
    pub image_size: u64,
    pub extent_size: u64,
    pub meta_offset: u64,
    pub meta_slot_size: u64,
    pub layout: LayoutProfile,
    /// Primary, mirror, temp, in that order.
    pub segments: [SegmentExtent; 3],
}

impl Superblock {
    /// Lay out a new image. Sizes must be multiples of 4 KiB.
    pub fn layout(
        cluster_id: [u8; 16],
        node_id: NodeId,
        disk_id: DiskId,
        image_size: u64,
        extent_size: u64,
        meta_slot_size: u64,
    ) -> Result<Superblock> {
        let bad = |m: String| Err(EngineError::InvalidRequest(m));
        if extent_size < 4096 || !extent_size.is_multiple_of(4096) {
            return bad(format!(
                "extent size {extent_size} must be a positive multiple of 4096"
            ));
        }
        if meta_slot_size < 4096 || !meta_slot_size.is_multiple_of(4096) {
            return bad(format!(
                "metadata slot size {meta_slot_size} must be a positive multiple of 4096"
            ));
        }
        let meta_offset = SUPERBLOCK_SIZE;
        let meta_end = meta_offset + 2 * meta_slot_size;
        // Segments start on an extent boundary.
        let data_start = meta_end.div_ceil(extent_size) * extent_size;
        let extents = image_size.saturating_sub(data_start) / extent_size;
        let primary = extents * 45 / 100;
        let mirror = extents * 45 / 100;
        let temp = extents - primary - mirror;
        if primary == 0 || temp == 0 {
            return bad(format!(
                "image of {image_size} bytes is too small: need room for at least \
                 3 extents of {extent_size} bytes after the metadata area"
            ));
        }
        let p = SegmentExtent {
            kind: SegmentKind::Primary,
            offset: data_start,
            length: primary * extent_size,
        };
        let m = SegmentExtent {
            kind: SegmentKind::Mirror,
            offset: p.end(),
            length: mirror * extent_size,
        };
        let t = SegmentExtent {
            kind: SegmentKind::Temp,
            offset: m.end(),
            length: temp * extent_size,
        };
        Ok(Superblock {
            version: FORMAT_VERSION,
            cluster_id,
            node_id,
            disk_id,
            image_size,
            extent_size,
            meta_offset,
            meta_slot_size,
            layout: LayoutProfile::Flat,
            segments: [p, m, t],
        })
    }

    pub fn segment(&self, kind: SegmentKind) -> SegmentExtent {
        self.segments[kind.index()]
    }

    /// Offset of metadata slot 0 or 1.
    pub fn slot_offset(&self, slot: u64) -> u64 {
        self.meta_offset + slot * self.meta_slot_size
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = ByteWriter::with_capacity(SUPERBLOCK_SIZE as usize);
        w.bytes(&SUPERBLOCK_MAGIC); // 0
        w.u32(self.version); // 8
        w.u32(SUPERBLOCK_SIZE as u32); // 12
        w.bytes(&self.cluster_id); // 16
        w.u32(self.node_id); // 32
        w.u32(self.disk_id); // 36
        w.u64(self.image_size); // 40
        w.u64(self.extent_size); // 48
        w.u64(self.meta_offset); // 56
        w.u64(self.meta_slot_size); // 64
        w.u32(2); // 72: slot count
        w.u32(self.layout.code()); // 76
        w.u32(3); // 80: segment count
        w.u32(0); // 84: reserved
        for s in &self.segments {
            // 88 + 24 * i
            w.u32(s.kind.code());
            w.u32(0);
            w.u64(s.offset);
            w.u64(s.length);
        }
        debug_assert_eq!(w.len(), SB_BODY_LEN);
        let crc = crc32c::crc32c(&w.buf);
        w.u32(crc); // 160
        w.buf.resize(SUPERBLOCK_SIZE as usize, 0);
        w.buf
    }

    /// Decode and validate. Order of checks: magic (`NotAnImage`), version
    /// (`UnsupportedVersion`, before anything else whose layout a version may
    /// change), CRC and field sanity (`CorruptMetadata`).
    pub fn decode(buf: &[u8], name: &str) -> Result<Superblock> {
        let corrupt = |m: &str| EngineError::CorruptMetadata(format!("superblock of {name}: {m}"));
        if buf.len() < 12 || buf[..8] != SUPERBLOCK_MAGIC {
            return Err(EngineError::NotAnImage(format!(
                "{name}: bad magic in superblock"
            )));
        }
        let mut r = ByteReader::new(buf);
        let t = |_| corrupt("truncated");
        r.take(8).map_err(t)?;
        let version = r.u32().map_err(t)?;
        if version != FORMAT_VERSION {
            return Err(EngineError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if buf.len() < SB_BODY_LEN + 4 {
            return Err(corrupt("truncated"));
        }
        let mut crc_bytes = [0u8; 4];
        crc_bytes.copy_from_slice(&buf[SB_BODY_LEN..SB_BODY_LEN + 4]);
        let stored = u32::from_le_bytes(crc_bytes);
        let actual = crc32c::crc32c(&buf[..SB_BODY_LEN]);
        if stored != actual {
            return Err(corrupt(&format!(
                "CRC mismatch: stored {stored:#010x}, computed {actual:#010x}"
            )));
        }
        let _sb_size = r.u32().map_err(t)?;
        let mut cluster_id = [0u8; 16];
        cluster_id.copy_from_slice(r.take(16).map_err(t)?);
        let node_id = r.u32().map_err(t)?;
        let disk_id = r.u32().map_err(t)?;
        let image_size = r.u64().map_err(t)?;
        let extent_size = r.u64().map_err(t)?;
        let meta_offset = r.u64().map_err(t)?;
        let meta_slot_size = r.u64().map_err(t)?;
        let slots = r.u32().map_err(t)?;
        let layout = LayoutProfile::from_code(r.u32().map_err(t)?)
            .ok_or_else(|| corrupt("unknown layout profile"))?;
        let nseg = r.u32().map_err(t)?;
        let _ = r.u32().map_err(t)?;
        if slots != 2 || nseg != 3 {
            return Err(corrupt("unexpected slot or segment count"));
        }
        let mut segs = Vec::with_capacity(3);
        for i in 0..3 {
            let kind = SegmentKind::from_code(r.u32().map_err(t)?)
                .ok_or_else(|| corrupt("unknown segment kind"))?;
            let _ = r.u32().map_err(t)?;
            let offset = r.u64().map_err(t)?;
            let length = r.u64().map_err(t)?;
            if kind.index() != i {
                return Err(corrupt("segment table out of order"));
            }
            segs.push(SegmentExtent {
                kind,
                offset,
                length,
            });
        }
        let sb = Superblock {
            version,
            cluster_id,
            node_id,
            disk_id,
            image_size,
            extent_size,
            meta_offset,
            meta_slot_size,
            layout,
            segments: [segs[0], segs[1], segs[2]],
        };
        sb.check(corrupt)?;
        Ok(sb)
    }

    fn check(&self, corrupt: impl Fn(&str) -> EngineError) -> Result<()> {
        if self.extent_size == 0 || self.meta_slot_size < 4096 {
            return Err(corrupt("zero extent or slot size"));
        }
        let mut end = self
            .meta_offset
            .checked_add(self.meta_slot_size.saturating_mul(2))
            .ok_or_else(|| corrupt("metadata area overflows"))?;
        for s in &self.segments {
            if s.offset < end
                || !s.offset.is_multiple_of(self.extent_size)
                || !s.length.is_multiple_of(self.extent_size)
            {
                return Err(corrupt("segment table is inconsistent"));
            }
            end = s
                .offset
                .checked_add(s.length)
                .ok_or_else(|| corrupt("segment overflows"))?;
        }
        if end > self.image_size {
            return Err(corrupt("segments extend past the image"));
        }
        Ok(())
    }
}
