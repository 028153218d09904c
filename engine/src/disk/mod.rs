//! The disk image: one sparse file (or device) per disk, laid out as
//!
//! ```text
//! superblock (4 KiB) | metadata slot 0 | metadata slot 1 | primary | mirror | temp
//! ```
//!
//! This module owns the superblock ([`superblock`]: the zone table, which
//! zone went to which segment), the two alternating metadata slots
//! ([`meta`]), the extent allocator ([`alloc`]), the zone profiler of `disk
//! init` ([`profile`]) and the I/O trait every access goes through
//! ([`device`]). It never interprets table
//! data: schemas and zone maps are opaque bytes here; blocks are the business
//! of [`crate::block`] and the slice store ([`crate::store`]).
//! The format is specified byte by byte in `docs/disk-format.md`.

pub mod alloc;
pub mod device;
pub mod le_bytes;
pub mod meta;
pub mod profile;
pub mod superblock;

pub use device::{AlignedBuf, BlockDevice, CrashPoint, FileDevice, MemDevice, DIRECT_ALIGN};
pub use superblock::{
    LayoutProfile, Placement, SegmentExtent, Superblock, Zone, ZoneOwner, ZoneProfile,
    FORMAT_VERSION,
};

/// The three segments of a disk.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SegmentKind {
    /// This disk's own copy of its slices (fastest zone).
    Primary,
    /// A peer's slices, mirrored here.
    Mirror,
    /// Unmirrored data (temp tables, spill).
    Temp,
}

impl SegmentKind {
    pub const ALL: [SegmentKind; 3] =
        [SegmentKind::Primary, SegmentKind::Mirror, SegmentKind::Temp];

    pub fn as_str(self) -> &'static str {
        match self {
            SegmentKind::Primary => "primary",
            SegmentKind::Mirror => "mirror",
            SegmentKind::Temp => "temp",
        }
    }

    /// Position in the segment table.
    pub fn index(self) -> usize {
        match self {
            SegmentKind::Primary => 0,
            SegmentKind::Mirror => 1,
            SegmentKind::Temp => 2,
        }
    }

    /// On-disk code (superblock segment table, metadata streams).
    pub fn code(self) -> u32 {
        self.index() as u32 + 1
    }

    pub fn from_code(c: u32) -> Option<SegmentKind> {
        match c {
            1 => Some(SegmentKind::Primary),
            2 => Some(SegmentKind::Mirror),
            3 => Some(SegmentKind::Temp),
            _ => None,
        }
    }
}

impl std::fmt::Display for SegmentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
