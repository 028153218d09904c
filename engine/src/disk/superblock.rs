//! The superblock: 4 KiB at offset 0, written once at `disk init`. It names
//! the disk (cluster, node, disk ids) and fixes the layout: extent size, the
//! metadata slots and the segment table. See docs/disk-format.md.

use super::le_bytes::{ByteReader, ByteWriter};
use super::SegmentKind;
use crate::{DiskId, EngineError, NodeId, Result};

pub const SUPERBLOCK_SIZE: u64 = 4096;
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"SLCDBDSK";
/// The format version this build writes. Any change to the superblock,
/// metadata slots or block encoding bumps it. Version 4 added the zone
/// table (layout profiles `static` and `dynamic`, measured speeds).
pub const FORMAT_VERSION: u32 = 4;
/// The older version this build still reads and keeps writing to such an
/// image: 3, whose superblock is a version 4 one with the flat layout and
/// three zones, and whose slots and blocks are the same.
pub const OLDEST_READABLE_VERSION: u32 = 3;
/// Bytes of the fixed head of the superblock, before the zone table.
const SB_HEAD_LEN: usize = 88;
/// Bytes of one zone table entry.
const ZONE_ENTRY_LEN: usize = 24;
/// At most this many entries in the zone table (the profile's zones plus
/// the two a segment boundary may split): they fit the 4 KiB superblock.
pub const MAX_ZONE_ENTRIES: usize = 100;
/// At most this many zones in a profile.
pub const MAX_PROFILE_ZONES: usize = 64;

/// How the zones of the media were given to the segments (fixed at init).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayoutProfile {
    /// Offset order: on a flat file or SSD, or with no profile, lower
    /// offsets are taken as the fastest, so primary comes first, then
    /// mirror, then temp.
    Flat,
    /// Speed order, once at init (claim 14): the primary segment got the
    /// fastest zones, the mirror the next, temp the slowest.
    Static,
    /// On demand (claim 15): temp got the slowest zones; primary and mirror
    /// share the rest, the primary allocating from the fast end and the
    /// mirror from the slow end.
    Dynamic,
}

impl LayoutProfile {
    pub fn as_str(self) -> &'static str {
        match self {
            LayoutProfile::Flat => "flat",
            LayoutProfile::Static => "static",
            LayoutProfile::Dynamic => "dynamic",
        }
    }
    fn code(self) -> u32 {
        match self {
            LayoutProfile::Flat => 0,
            LayoutProfile::Static => 1,
            LayoutProfile::Dynamic => 2,
        }
    }
    fn from_code(c: u32) -> Option<Self> {
        match c {
            0 => Some(LayoutProfile::Flat),
            1 => Some(LayoutProfile::Static),
            2 => Some(LayoutProfile::Dynamic),
            _ => None,
        }
    }
}

/// A segment's extent of the image: where it starts and how many bytes it
/// has (under `static` or `dynamic` its zones need not touch: `offset` is
/// its first byte, `length` the sum of its zones).
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

/// Which segment allocates from a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneOwner {
    Segment(SegmentKind),
    /// `dynamic`: primary from the fast end, mirror from the slow end.
    PrimaryAndMirror,
}

impl ZoneOwner {
    pub fn as_str(self) -> &'static str {
        match self {
            ZoneOwner::Segment(k) => k.as_str(),
            ZoneOwner::PrimaryAndMirror => "primary+mirror",
        }
    }
    /// Whether `kind` allocates from a zone of this owner.
    pub fn serves(self, kind: SegmentKind) -> bool {
        match self {
            ZoneOwner::Segment(k) => k == kind,
            ZoneOwner::PrimaryAndMirror => kind != SegmentKind::Temp,
        }
    }
    fn code(self) -> u32 {
        match self {
            ZoneOwner::Segment(k) => k.code(),
            ZoneOwner::PrimaryAndMirror => 4,
        }
    }
    fn from_code(c: u32) -> Option<Self> {
        match c {
            4 => Some(ZoneOwner::PrimaryAndMirror),
            c => SegmentKind::from_code(c).map(ZoneOwner::Segment),
        }
    }
}

/// One zone of the data area: a run of whole extents, its read speed as
/// measured (or given) at init, and the segment it went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Zone {
    pub offset: u64,
    pub length: u64,
    /// Sequential read throughput in KiB/s; 0 = not measured.
    pub read_kib_s: u32,
    pub owner: ZoneOwner,
}

impl Zone {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Read speeds of equal zones of a device's data area, in offset order
/// (measured by [`crate::disk::profile`], or given for a device whose
/// zones are known).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ZoneProfile {
    /// KiB/s of each zone; empty = no profile (one zone of unknown speed).
    pub read_kib_s: Vec<u32>,
}

impl ZoneProfile {
    /// The slowest zone is at least this fraction of the fastest: the
    /// device is flat (a file or SSD), and offset order is as good as any.
    pub const FLAT_RATIO: f64 = 0.75;

    /// Whether the zones' speeds are within [`Self::FLAT_RATIO`] (or there is
    /// no profile).
    pub fn is_flat(&self) -> bool {
        let (Some(&max), Some(&min)) = (self.read_kib_s.iter().max(), self.read_kib_s.iter().min())
        else {
            return true;
        };
        max == 0 || min as f64 >= max as f64 * Self::FLAT_RATIO
    }
}

/// What `disk init` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Static when the profile is not flat, else flat.
    #[default]
    Auto,
    Flat,
    Static,
    Dynamic,
}

impl Placement {
    pub fn parse(s: &str) -> Option<Placement> {
        match s {
            "auto" => Some(Placement::Auto),
            "flat" => Some(Placement::Flat),
            "static" => Some(Placement::Static),
            "dynamic" => Some(Placement::Dynamic),
            _ => None,
        }
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
    /// The data area's zones in offset order; they do not overlap.
    pub zones: Vec<Zone>,
}

impl Superblock {
    /// Lay out a new image in offset order, with no profile. Sizes must be
    /// multiples of 4 KiB.
    pub fn layout(
        cluster_id: [u8; 16],
        node_id: NodeId,
        disk_id: DiskId,
        image_size: u64,
        extent_size: u64,
        meta_slot_size: u64,
    ) -> Result<Superblock> {
        Self::layout_zoned(
            cluster_id,
            node_id,
            disk_id,
            image_size,
            extent_size,
            meta_slot_size,
            &ZoneProfile::default(),
            Placement::Flat,
        )
    }

    /// Lay out a new image from a zone profile: the data area is cut in
    /// `profile.read_kib_s.len()` zones of whole extents (the last takes
    /// the rest); primary gets `floor(45%)` of the extents, mirror
    /// `floor(45%)`, temp the rest, in offset order (`flat`), speed order
    /// (`static`), or temp the slowest and the rest shared (`dynamic`).
    #[allow(clippy::too_many_arguments)]
    pub fn layout_zoned(
        cluster_id: [u8; 16],
        node_id: NodeId,
        disk_id: DiskId,
        image_size: u64,
        extent_size: u64,
        meta_slot_size: u64,
        profile: &ZoneProfile,
        placement: Placement,
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
        if profile.read_kib_s.len() > MAX_PROFILE_ZONES {
            return bad(format!(
                "a zone profile has at most {MAX_PROFILE_ZONES} zones, not {}",
                profile.read_kib_s.len()
            ));
        }
        let meta_offset = SUPERBLOCK_SIZE;
        let (data_start, extents) = Self::data_area(image_size, extent_size, meta_slot_size);
        let primary = extents * 45 / 100;
        let mirror = extents * 45 / 100;
        let temp = extents - primary - mirror;
        let nzones = profile.read_kib_s.len().max(1);
        if primary == 0 || temp == 0 || extents < nzones as u64 {
            return bad(format!(
                "image of {image_size} bytes is too small: need room for at least \
                 3 extents of {extent_size} bytes (and one per profiled zone) after \
                 the metadata area"
            ));
        }
        // (first extent, extents, speed) of each profiled zone.
        let zones: Vec<(u64, u64, u32)> =
            Self::zone_bounds(image_size, extent_size, meta_slot_size, nzones)?
                .into_iter()
                .enumerate()
                .map(|(i, (off, len))| {
                    let speed = profile.read_kib_s.get(i).copied().unwrap_or(0);
                    ((off - data_start) / extent_size, len / extent_size, speed)
                })
                .collect();
        let layout = match placement {
            Placement::Flat => LayoutProfile::Flat,
            Placement::Static => LayoutProfile::Static,
            Placement::Dynamic => LayoutProfile::Dynamic,
            Placement::Auto if profile.is_flat() => LayoutProfile::Flat,
            Placement::Auto => LayoutProfile::Static,
        };
        // Zones in the order they are handed out, and (owner, extents) to hand out.
        let mut order: Vec<usize> = (0..zones.len()).collect();
        if layout != LayoutProfile::Flat {
            // Fastest first; equal speeds in offset order.
            order.sort_by_key(|&i| std::cmp::Reverse(zones[i].2));
        }
        use SegmentKind::{Mirror, Primary, Temp};
        let quotas: Vec<(ZoneOwner, u64)> = match layout {
            LayoutProfile::Dynamic => vec![
                (ZoneOwner::PrimaryAndMirror, primary + mirror),
                (ZoneOwner::Segment(Temp), temp),
            ],
            _ => vec![
                (ZoneOwner::Segment(Primary), primary),
                (ZoneOwner::Segment(Mirror), mirror),
                (ZoneOwner::Segment(Temp), temp),
            ],
        };
        let mut out: Vec<Zone> = Vec::new();
        let mut quota = quotas.into_iter();
        let (mut owner, mut left) = quota.next().unwrap_or((ZoneOwner::Segment(Temp), 0));
        for i in order {
            let (mut first, mut n, speed) = zones[i];
            while n > 0 {
                while left == 0 {
                    (owner, left) = quota.next().unwrap_or((ZoneOwner::Segment(Temp), u64::MAX));
                }
                let take = n.min(left);
                out.push(Zone {
                    offset: data_start + first * extent_size,
                    length: take * extent_size,
                    read_kib_s: speed,
                    owner,
                });
                first += take;
                n -= take;
                left -= take;
            }
        }
        out.sort_by_key(|z| z.offset);
        // Neighbours of one owner and speed are one zone.
        let mut zones: Vec<Zone> = Vec::with_capacity(out.len());
        for z in out {
            match zones.last_mut() {
                Some(l)
                    if l.end() == z.offset
                        && l.owner == z.owner
                        && l.read_kib_s == z.read_kib_s =>
                {
                    l.length += z.length
                }
                _ => zones.push(z),
            }
        }
        Ok(Superblock {
            version: FORMAT_VERSION,
            cluster_id,
            node_id,
            disk_id,
            image_size,
            extent_size,
            meta_offset,
            meta_slot_size,
            layout,
            zones,
        })
    }

    /// Where the data area of such an image starts (on an extent boundary
    /// after the metadata) and how many whole extents it has.
    fn data_area(image_size: u64, extent_size: u64, meta_slot_size: u64) -> (u64, u64) {
        let meta_end = SUPERBLOCK_SIZE.saturating_add(meta_slot_size.saturating_mul(2));
        let data_start = meta_end.div_ceil(extent_size.max(1)) * extent_size;
        (
            data_start,
            image_size.saturating_sub(data_start) / extent_size.max(1),
        )
    }

    /// (offset, length) of the `n` zones a profile of such an image
    /// measures: whole extents, equal but for the last, which takes the rest.
    pub fn zone_bounds(
        image_size: u64,
        extent_size: u64,
        meta_slot_size: u64,
        n: usize,
    ) -> Result<Vec<(u64, u64)>> {
        let (start, extents) = Self::data_area(image_size, extent_size, meta_slot_size);
        let n = n as u64;
        if n == 0 || extent_size == 0 || extents < n {
            return Err(EngineError::InvalidRequest(format!(
                "an image of {image_size} bytes has {extents} extents of {extent_size} bytes \
                 after its metadata: too few for {n} zones"
            )));
        }
        let per = extents / n;
        Ok((0..n)
            .map(|i| {
                let len = if i + 1 == n { extents - per * i } else { per };
                (start + per * i * extent_size, len * extent_size)
            })
            .collect())
    }

    /// The zones `kind` allocates from, in offset order.
    pub fn zones_of(&self, kind: SegmentKind) -> impl Iterator<Item = &Zone> {
        self.zones.iter().filter(move |z| z.owner.serves(kind))
    }

    /// Where `kind`'s zones start and how many bytes they hold (under
    /// `dynamic`, primary and mirror both answer the shared zones).
    pub fn segment(&self, kind: SegmentKind) -> SegmentExtent {
        SegmentExtent {
            kind,
            offset: self.zones_of(kind).map(|z| z.offset).min().unwrap_or(0),
            length: self.zones_of(kind).map(|z| z.length).sum(),
        }
    }

    /// Offset of metadata slot 0 or 1.
    pub fn slot_offset(&self, slot: u64) -> u64 {
        self.meta_offset + slot * self.meta_slot_size
    }

    /// Bytes covered by the CRC: the head and the zone table.
    fn body_len(zones: usize) -> usize {
        SB_HEAD_LEN + ZONE_ENTRY_LEN * zones
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
        w.u32(self.zones.len() as u32); // 80: zone count
        w.u32(0); // 84: reserved
        for z in &self.zones {
            // 88 + 24 * i
            w.u32(z.owner.code());
            w.u32(z.read_kib_s);
            w.u64(z.offset);
            w.u64(z.length);
        }
        debug_assert_eq!(w.len(), Self::body_len(self.zones.len()));
        let crc = crc32c::crc32c(&w.buf);
        w.u32(crc);
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
        if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(EngineError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if buf.len() < SB_HEAD_LEN {
            return Err(corrupt("truncated"));
        }
        // The zone count sits before the CRC it is covered by: bound it
        // first, then check the CRC, then trust the rest.
        let nzones = u32::from_le_bytes([buf[80], buf[81], buf[82], buf[83]]) as usize;
        if !(2..=MAX_ZONE_ENTRIES).contains(&nzones) || (version == 3 && nzones != 3) {
            return Err(corrupt(&format!("zone count {nzones}")));
        }
        let body = Self::body_len(nzones);
        if buf.len() < body + 4 {
            return Err(corrupt("truncated"));
        }
        let mut crc_bytes = [0u8; 4];
        crc_bytes.copy_from_slice(&buf[body..body + 4]);
        let stored = u32::from_le_bytes(crc_bytes);
        let actual = crc32c::crc32c(&buf[..body]);
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
        let _nzones = r.u32().map_err(t)?;
        let _ = r.u32().map_err(t)?;
        if slots != 2 {
            return Err(corrupt("unexpected slot count"));
        }
        let mut zones = Vec::with_capacity(nzones);
        for _ in 0..nzones {
            let owner = ZoneOwner::from_code(r.u32().map_err(t)?)
                .ok_or_else(|| corrupt("unknown zone owner"))?;
            let read_kib_s = r.u32().map_err(t)?;
            let offset = r.u64().map_err(t)?;
            let length = r.u64().map_err(t)?;
            zones.push(Zone {
                offset,
                length,
                read_kib_s,
                owner,
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
            zones,
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
        for z in &self.zones {
            if z.offset < end
                || z.length == 0
                || !z.offset.is_multiple_of(self.extent_size)
                || !z.length.is_multiple_of(self.extent_size)
            {
                return Err(corrupt("zone table is inconsistent"));
            }
            end = z
                .offset
                .checked_add(z.length)
                .ok_or_else(|| corrupt("zone overflows"))?;
        }
        if end > self.image_size {
            return Err(corrupt("zones extend past the image"));
        }
        let shared = self
            .zones
            .iter()
            .any(|z| z.owner == ZoneOwner::PrimaryAndMirror);
        if shared != (self.layout == LayoutProfile::Dynamic) {
            return Err(corrupt("shared zones and the layout profile disagree"));
        }
        if SegmentKind::ALL
            .iter()
            .any(|&k| self.zones_of(k).next().is_none())
        {
            return Err(corrupt("a segment has no zone"));
        }
        Ok(())
    }
}
