//! The extent allocator of a disk's segments: a free list of extent runs per
//! pool of zones, first fit in the pool's speed order. It holds no state on
//! disk of its own: at open it is rebuilt as "the zones minus every run the
//! committed metadata lists".
//!
//! Each segment allocates from its own zones (`flat`, `static`), fastest
//! first (`flat`: lowest offset first). Under `dynamic` primary and mirror
//! share one pool: the primary takes the first fit from the fast end and
//! the mirror the last fit from the slow end (claim 15). A run never spans
//! two zones; free runs never cross a zone boundary.

use std::collections::BTreeMap;

use super::meta::ExtentRun;
use super::superblock::{LayoutProfile, SegmentExtent, Superblock, Zone, ZoneOwner};
use super::SegmentKind;
use crate::{EngineError, Result};

/// The zones one or two segments allocate from.
#[derive(Debug, Clone)]
struct Pool {
    /// In offset order.
    zones: Vec<Zone>,
    /// Indices into `zones`, fastest first (`flat`: offset order).
    fast_first: Vec<usize>,
    /// offset -> length of each free run; runs touching inside one zone
    /// are always coalesced.
    free: BTreeMap<u64, u64>,
}

impl Pool {
    fn new(zones: Vec<Zone>, by_speed: bool) -> Pool {
        let mut fast_first: Vec<usize> = (0..zones.len()).collect();
        if by_speed {
            fast_first.sort_by_key(|&i| std::cmp::Reverse(zones[i].read_kib_s));
        }
        let free = zones.iter().map(|z| (z.offset, z.length)).collect();
        Pool {
            zones,
            fast_first,
            free,
        }
    }

    /// The zone holding `offset`.
    fn zone_of(&self, offset: u64) -> Option<&Zone> {
        let i = self.zones.partition_point(|z| z.end() <= offset);
        self.zones.get(i).filter(|z| z.offset <= offset)
    }

    fn take(&mut self, want: u64, slow_end: bool) -> Option<ExtentRun> {
        let order: Box<dyn Iterator<Item = &usize>> = if slow_end {
            Box::new(self.fast_first.iter().rev())
        } else {
            Box::new(self.fast_first.iter())
        };
        let mut found = None;
        for &z in order {
            let z = self.zones[z];
            let mut runs = self.free.range(z.offset..z.end());
            let hit = if slow_end {
                runs.rev().find(|(_, &len)| len >= want)
            } else {
                runs.find(|(_, &len)| len >= want)
            };
            if let Some((&off, &len)) = hit {
                found = Some((off, len));
                break;
            }
        }
        let (off, len) = found?;
        self.free.remove(&off);
        if slow_end {
            if len > want {
                self.free.insert(off, len - want);
            }
            Some(ExtentRun {
                offset: off + len - want,
                length: want,
            })
        } else {
            if len > want {
                self.free.insert(off + want, len - want);
            }
            Some(ExtentRun {
                offset: off,
                length: want,
            })
        }
    }

    /// Take `run` out of the free list; false if any part is not free.
    fn reserve(&mut self, run: ExtentRun, run_end: u64) -> bool {
        let Some((&start, &len)) = self.free.range(..=run.offset).next_back() else {
            return false;
        };
        let end = start + len;
        if run_end > end {
            return false;
        }
        self.free.remove(&start);
        if run.offset > start {
            self.free.insert(start, run.offset - start);
        }
        if end > run_end {
            self.free.insert(run_end, end - run_end);
        }
        true
    }

    /// Return a run, merging with its neighbours inside its zone.
    fn release(&mut self, run: ExtentRun) {
        let (lo, hi) = match self.zone_of(run.offset) {
            Some(z) => (z.offset, z.end()),
            None => (run.offset, run.end()),
        };
        let mut start = run.offset;
        let mut end = run.end();
        if let Some((&p, &plen)) = self.free.range(..start).next_back() {
            if p + plen == start && p >= lo {
                self.free.remove(&p);
                start = p;
            }
        }
        if end < hi {
            if let Some(&nlen) = self.free.get(&end) {
                self.free.remove(&end);
                end += nlen;
            }
        }
        self.free.insert(start, end - start);
    }

    fn free_bytes(&self) -> u64 {
        self.free.values().sum()
    }
}

/// The free space of a disk's three segments.
#[derive(Debug, Clone)]
pub struct Space {
    extent_size: u64,
    pools: Vec<Pool>,
    /// Pool of each segment kind.
    pool_of: [usize; 3],
    /// Whether the mirror takes from the slow end of a shared pool.
    mirror_slow_end: bool,
    segments: [SegmentExtent; 3],
    /// Bytes each segment has allocated.
    used: [u64; 3],
}

impl Space {
    /// All of `sb`'s zones free.
    pub fn new(sb: &Superblock) -> Space {
        let by_speed = sb.layout != LayoutProfile::Flat;
        let owners = [
            ZoneOwner::Segment(SegmentKind::Primary),
            ZoneOwner::Segment(SegmentKind::Mirror),
            ZoneOwner::Segment(SegmentKind::Temp),
            ZoneOwner::PrimaryAndMirror,
        ];
        let mut pools = Vec::new();
        let mut pool_of = [0usize; 3];
        for owner in owners {
            let zones: Vec<Zone> = sb
                .zones
                .iter()
                .filter(|z| z.owner == owner)
                .copied()
                .collect();
            if zones.is_empty() {
                continue;
            }
            for k in SegmentKind::ALL {
                if owner.serves(k) {
                    pool_of[k.index()] = pools.len();
                }
            }
            pools.push(Pool::new(zones, by_speed));
        }
        Space {
            extent_size: sb.extent_size,
            pools,
            pool_of,
            mirror_slow_end: sb.layout == LayoutProfile::Dynamic,
            segments: SegmentKind::ALL.map(|k| sb.segment(k)),
            used: [0; 3],
        }
    }

    /// Where `kind`'s zones are and their bytes (under `dynamic`, primary
    /// and mirror both answer the shared zones).
    pub fn segment(&self, kind: SegmentKind) -> SegmentExtent {
        self.segments[kind.index()]
    }

    /// Bytes `kind` has allocated.
    pub fn used(&self, kind: SegmentKind) -> u64 {
        self.used[kind.index()]
    }

    /// Bytes `kind` could still allocate (shared space counts for both).
    pub fn free_bytes(&self, kind: SegmentKind) -> u64 {
        self.pools
            .get(self.pool_of[kind.index()])
            .map_or(0, Pool::free_bytes)
    }

    /// Extents needed to hold `bytes`.
    pub fn extents_for(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.extent_size).max(1)
    }

    fn slow_end(&self, kind: SegmentKind) -> bool {
        self.mirror_slow_end && kind == SegmentKind::Mirror
    }

    /// Take `run` of `kind` out of the free list (recovery). Fails if any
    /// part of it is not free or not extent-aligned: two owners of one
    /// extent is corruption.
    pub fn reserve(&mut self, kind: SegmentKind, run: ExtentRun) -> Result<()> {
        let bad = || {
            EngineError::CorruptMetadata(format!(
                "extent run at {} (+{}) in {} segment is misaligned, out of range or listed twice",
                run.offset,
                run.length,
                kind.as_str()
            ))
        };
        if run.length == 0
            || !run.offset.is_multiple_of(self.extent_size)
            || !run.length.is_multiple_of(self.extent_size)
        {
            return Err(bad());
        }
        let run_end = run.offset.checked_add(run.length).ok_or_else(bad)?;
        let pool = self
            .pools
            .get_mut(self.pool_of[kind.index()])
            .ok_or_else(bad)?;
        if !pool.reserve(run, run_end) {
            return Err(bad());
        }
        self.used[kind.index()] += run.length;
        Ok(())
    }

    /// Allocate a contiguous run of `kind` big enough for `bytes`.
    pub fn alloc(&mut self, kind: SegmentKind, bytes: u64) -> Result<ExtentRun> {
        let want = self.extents_for(bytes) * self.extent_size;
        let slow_end = self.slow_end(kind);
        let run = self
            .pools
            .get_mut(self.pool_of[kind.index()])
            .and_then(|p| p.take(want, slow_end))
            .ok_or_else(|| EngineError::SegmentFull {
                segment: kind.as_str().to_string(),
                needed: want,
            })?;
        self.used[kind.index()] += run.length;
        Ok(run)
    }

    /// Return a run of `kind` to the free list.
    pub fn release(&mut self, kind: SegmentKind, run: ExtentRun) {
        self.used[kind.index()] = self.used[kind.index()].saturating_sub(run.length);
        if let Some(p) = self.pools.get_mut(self.pool_of[kind.index()]) {
            p.release(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::superblock::{Placement, ZoneProfile};

    const E: u64 = 4096;

    /// An image with 100 extents of data after the metadata.
    fn sb(profile: &[u32], placement: Placement) -> Superblock {
        let meta = 4096 + 2 * 4096;
        Superblock::layout_zoned(
            [0; 16],
            0,
            0,
            meta + 100 * E,
            E,
            4096,
            &ZoneProfile {
                read_kib_s: profile.to_vec(),
            },
            placement,
        )
        .unwrap()
    }

    #[test]
    fn flat_alloc_release_reserve() {
        let sb = sb(&[], Placement::Flat);
        let mut a = Space::new(&sb);
        let p = SegmentKind::Primary;
        let start = a.segment(p).offset;
        assert_eq!(a.segment(p).length, 45 * E);
        let r1 = a.alloc(p, 1).unwrap();
        assert_eq!(
            r1,
            ExtentRun {
                offset: start,
                length: E
            }
        );
        let r2 = a.alloc(p, E + 1).unwrap();
        assert_eq!(r2.length, 2 * E);
        assert_eq!(r2.offset, start + E);
        a.release(p, r1);
        // The freed extent is reused first.
        assert_eq!(a.alloc(p, 10).unwrap(), r1);
        assert!(matches!(
            a.alloc(p, 43 * E),
            Err(EngineError::SegmentFull { .. })
        ));
        let r3 = a.alloc(p, 42 * E).unwrap();
        assert_eq!(a.free_bytes(p), 0);
        assert_eq!(a.used(p), 45 * E);
        a.release(p, r2);
        a.release(p, r3);
        a.release(p, r1);
        assert_eq!(a.free_bytes(p), 45 * E);
        assert_eq!(a.used(p), 0);
        assert_eq!(a.pools[a.pool_of[0]].free.len(), 1, "free runs coalesce");
        let mid = ExtentRun {
            offset: start + 2 * E,
            length: E,
        };
        a.reserve(p, mid).unwrap();
        assert!(a.reserve(p, mid).is_err(), "listed twice");
        assert!(a
            .reserve(
                p,
                ExtentRun {
                    offset: 100,
                    length: E
                }
            )
            .is_err());
        // Another segment's space is not this one's.
        let m = a.segment(SegmentKind::Mirror).offset;
        assert!(a
            .reserve(
                p,
                ExtentRun {
                    offset: m,
                    length: E
                }
            )
            .is_err());
        a.reserve(
            SegmentKind::Mirror,
            ExtentRun {
                offset: m,
                length: E,
            },
        )
        .unwrap();
    }

    #[test]
    fn a_flat_profile_keeps_offset_order() {
        // Within 75%: flat, whatever the small differences say.
        let sb = sb(&[100, 90, 95, 80], Placement::Auto);
        assert_eq!(sb.layout, LayoutProfile::Flat);
        let first = |k| sb.zones_of(k).next().unwrap().offset;
        assert!(first(SegmentKind::Primary) < first(SegmentKind::Mirror));
        assert!(first(SegmentKind::Mirror) < first(SegmentKind::Temp));
    }

    #[test]
    fn static_gives_the_fastest_zones_to_the_primary_and_the_slowest_to_temp() {
        // Ten zones of 10 extents; the first three are slow, the last is the slowest.
        let speeds = [20, 30, 40, 400, 390, 380, 370, 360, 350, 10];
        let sb = sb(&speeds, Placement::Auto);
        assert_eq!(sb.layout, LayoutProfile::Static);
        let zone_speeds = |k| {
            sb.zones_of(k)
                .map(|z| (z.read_kib_s, z.length / E))
                .collect::<Vec<_>>()
        };
        // 45 extents: the four fastest zones and half the fifth.
        assert_eq!(
            zone_speeds(SegmentKind::Primary),
            vec![(400, 10), (390, 10), (380, 10), (370, 10), (360, 5)]
        );
        // 45 extents: the next fastest (the rest of the fifth, the sixth) and the slow first three.
        assert_eq!(
            zone_speeds(SegmentKind::Mirror),
            vec![(20, 10), (30, 10), (40, 10), (360, 5), (350, 10)]
        );
        assert_eq!(zone_speeds(SegmentKind::Temp), vec![(10, 10)]);
        let mut a = Space::new(&sb);
        // The primary's first run is in the fastest zone (the fourth).
        let r = a.alloc(SegmentKind::Primary, E).unwrap();
        let fastest = sb.zones.iter().find(|z| z.read_kib_s == 400).unwrap();
        assert_eq!(r.offset, fastest.offset);
        // Filling it moves on to the next fastest.
        a.alloc(SegmentKind::Primary, 9 * E).unwrap();
        let r = a.alloc(SegmentKind::Primary, E).unwrap();
        let next = sb.zones.iter().find(|z| z.read_kib_s == 390).unwrap();
        assert_eq!(r.offset, next.offset);
        // A run never spans two zones, even neighbours of one segment.
        let mut b = Space::new(&sb);
        assert!(b.alloc(SegmentKind::Primary, 11 * E).is_err());
        // Encoded and decoded alike.
        assert_eq!(Superblock::decode(&sb.encode(), "t").unwrap(), sb);
    }

    #[test]
    fn dynamic_primary_from_the_fast_end_and_mirror_from_the_slow_end() {
        let speeds = [400, 300, 200, 100, 50];
        let sb = sb(&speeds, Placement::Dynamic);
        assert_eq!(sb.layout, LayoutProfile::Dynamic);
        assert_eq!(Superblock::decode(&sb.encode(), "t").unwrap(), sb);
        // Temp: the slowest 10 extents.
        let temp: Vec<_> = sb.zones_of(SegmentKind::Temp).collect();
        assert_eq!(temp.len(), 1);
        assert_eq!((temp[0].read_kib_s, temp[0].length), (50, 10 * E));
        let mut a = Space::new(&sb);
        let p = a.alloc(SegmentKind::Primary, E).unwrap();
        let m = a.alloc(SegmentKind::Mirror, E).unwrap();
        let data_start = sb.zones[0].offset;
        assert_eq!(p.offset, data_start, "primary at the fast end");
        // The mirror's first extent is the last one of the slowest shared zone.
        let slow = sb
            .zones
            .iter()
            .filter(|z| z.owner == ZoneOwner::PrimaryAndMirror)
            .min_by_key(|z| z.read_kib_s)
            .unwrap();
        assert_eq!(m.end(), slow.end(), "mirror at the slow end");
        assert_eq!(a.used(SegmentKind::Primary), E);
        assert_eq!(a.used(SegmentKind::Mirror), E);
        // They share the space: the primary can take what the mirror does not.
        assert_eq!(a.free_bytes(SegmentKind::Primary), 88 * E);
        assert_eq!(a.free_bytes(SegmentKind::Mirror), 88 * E);
        let mut runs = Vec::new();
        while let Ok(r) = a.alloc(SegmentKind::Primary, E) {
            runs.push(r);
        }
        assert_eq!(runs.len(), 88);
        assert!(a.alloc(SegmentKind::Mirror, E).is_err());
        a.release(SegmentKind::Primary, runs[0]);
        assert_eq!(a.alloc(SegmentKind::Mirror, E).unwrap(), runs[0]);
    }
}
