//! The extent allocator of one segment: a free list of extent runs, first fit.
//! It holds no state on disk of its own: at open it is rebuilt as "the segment
//! minus every run the committed metadata lists".

use std::collections::BTreeMap;

use super::meta::ExtentRun;
use super::superblock::SegmentExtent;
use crate::{EngineError, Result};

#[derive(Debug, Clone)]
pub struct SegmentAllocator {
    segment: SegmentExtent,
    extent_size: u64,
    /// offset -> length of each free run; runs never touch (always coalesced).
    free: BTreeMap<u64, u64>,
}

impl SegmentAllocator {
    pub fn new(segment: SegmentExtent, extent_size: u64) -> Self {
        let mut free = BTreeMap::new();
        if segment.length > 0 {
            free.insert(segment.offset, segment.length);
        }
        SegmentAllocator {
            segment,
            extent_size,
            free,
        }
    }

    pub fn segment(&self) -> SegmentExtent {
        self.segment
    }

    pub fn free_bytes(&self) -> u64 {
        self.free.values().sum()
    }

    /// Extents needed to hold `bytes`.
    pub fn extents_for(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.extent_size).max(1)
    }

    /// Take `run` out of the free list (recovery). Fails if any part of it is
    /// not free or not extent-aligned: two owners of one extent is corruption.
    pub fn reserve(&mut self, run: ExtentRun) -> Result<()> {
        let bad = || {
            EngineError::CorruptMetadata(format!(
                "extent run at {} (+{}) in {} segment is misaligned, out of range or listed twice",
                run.offset,
                run.length,
                self.segment.kind.as_str()
            ))
        };
        if run.length == 0
            || !run.offset.is_multiple_of(self.extent_size)
            || !run.length.is_multiple_of(self.extent_size)
        {
            return Err(bad());
        }
        let (&start, &len) = self.free.range(..=run.offset).next_back().ok_or_else(bad)?;
        let end = start + len;
        let run_end = run.offset.checked_add(run.length).ok_or_else(bad)?;
        if run_end > end {
            return Err(bad());
        }
        self.free.remove(&start);
        if run.offset > start {
            self.free.insert(start, run.offset - start);
        }
        if end > run_end {
            self.free.insert(run_end, end - run_end);
        }
        Ok(())
    }

    /// Allocate a contiguous run big enough for `bytes` (first fit).
    pub fn alloc(&mut self, bytes: u64) -> Result<ExtentRun> {
        let want = self.extents_for(bytes) * self.extent_size;
        let found = self
            .free
            .iter()
            .find(|(_, &len)| len >= want)
            .map(|(&off, &len)| (off, len));
        let Some((off, len)) = found else {
            return Err(EngineError::SegmentFull {
                segment: self.segment.kind.as_str().to_string(),
                needed: want,
            });
        };
        self.free.remove(&off);
        if len > want {
            self.free.insert(off + want, len - want);
        }
        Ok(ExtentRun {
            offset: off,
            length: want,
        })
    }

    /// Return a run to the free list, merging with its neighbours.
    pub fn release(&mut self, run: ExtentRun) {
        let mut start = run.offset;
        let mut end = run.end();
        if let Some((&p, &plen)) = self.free.range(..start).next_back() {
            if p + plen == start {
                self.free.remove(&p);
                start = p;
            }
        }
        if let Some(&nlen) = self.free.get(&end) {
            self.free.remove(&end);
            end += nlen;
        }
        self.free.insert(start, end - start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::SegmentKind;

    fn seg() -> SegmentAllocator {
        SegmentAllocator::new(
            SegmentExtent {
                kind: SegmentKind::Primary,
                offset: 4096 * 4,
                length: 4096 * 8,
            },
            4096,
        )
    }

    #[test]
    fn alloc_release_reserve() {
        let mut a = seg();
        let r1 = a.alloc(1).unwrap();
        assert_eq!(
            r1,
            ExtentRun {
                offset: 16384,
                length: 4096
            }
        );
        let r2 = a.alloc(4097).unwrap();
        assert_eq!(r2.length, 8192);
        assert_eq!(r2.offset, 16384 + 4096);
        a.release(r1);
        // The freed extent is reused first.
        assert_eq!(a.alloc(10).unwrap(), r1);
        assert!(matches!(
            a.alloc(4096 * 6),
            Err(EngineError::SegmentFull { .. })
        ));
        let r3 = a.alloc(4096 * 5).unwrap();
        assert_eq!(a.free_bytes(), 0);
        a.release(r2);
        a.release(r3);
        a.release(r1);
        assert_eq!(a.free_bytes(), 4096 * 8);
        assert_eq!(a.free.len(), 1, "free runs coalesce");
        a.reserve(ExtentRun {
            offset: 16384 + 8192,
            length: 4096,
        })
        .unwrap();
        assert!(a
            .reserve(ExtentRun {
                offset: 16384 + 8192,
                length: 4096
            })
            .is_err());
        assert!(a
            .reserve(ExtentRun {
                offset: 100,
                length: 4096
            })
            .is_err());
    }
}
