//! The decoded-block cache of one disk: columns of blocks already read,
//! checked (CRC) and decoded, kept in memory up to a byte budget.
//!
//! A block never changes once written (a groom writes new blocks), so a
//! cached column is the block's column for as long as the block exists; the
//! key carries the block's stream, sequence number and offset, so a block
//! written later where a freed one was is a different entry. Entries of a
//! dropped table are removed with it. Visibility and filters are applied
//! after the cache, per read, exactly as for a block read from disk.
//!
//! It must never hold a column that was not verified: only what a checked
//! read decoded goes in. Eviction is first-in, first-out by block.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{FieldRef, Schema};
use parking_lot::Mutex;

use crate::disk::SegmentKind;
use crate::{SliceId, TableId};

/// Which block: its stream, its sequence number in it and where it lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub segment: SegmentKind,
    pub table: TableId,
    pub slice: SliceId,
    pub seq: u64,
    pub offset: u64,
}

struct Entry {
    rows: usize,
    /// Stored column index -> its field and decoded values.
    columns: HashMap<usize, (FieldRef, ArrayRef)>,
    bytes: usize,
}

struct Inner {
    entries: HashMap<BlockKey, Entry>,
    order: VecDeque<BlockKey>,
    bytes: usize,
    hits: u64,
    misses: u64,
}

/// Counters of a cache (for `slicedb_nodes`-style reporting and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub bytes: u64,
    pub blocks: u64,
    pub hits: u64,
    pub misses: u64,
}

/// See the module docs.
pub struct BlockCache {
    budget: usize,
    inner: Mutex<Inner>,
}

impl BlockCache {
    /// A cache holding at most `budget` bytes of decoded columns.
    pub fn new(budget: u64) -> Self {
        BlockCache {
            budget: usize::try_from(budget).unwrap_or(usize::MAX),
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
                bytes: 0,
                hits: 0,
                misses: 0,
            }),
        }
    }

    /// The block's stored columns `proj` (all `stored` columns when None),
    /// in that order, if every one of them is cached.
    pub fn get(
        &self,
        key: &BlockKey,
        proj: Option<&[usize]>,
        stored: usize,
    ) -> Option<RecordBatch> {
        let mut inner = self.inner.lock();
        let found = inner.entries.get(key).and_then(|e| {
            let want: Vec<usize> = match proj {
                Some(p) => p.to_vec(),
                None => (0..stored).collect(),
            };
            let mut fields = Vec::with_capacity(want.len());
            let mut arrays = Vec::with_capacity(want.len());
            for c in want {
                let (f, a) = e.columns.get(&c)?;
                fields.push(f.clone());
                arrays.push(a.clone());
            }
            let opts = RecordBatchOptions::new().with_row_count(Some(e.rows));
            RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &opts).ok()
        });
        match found {
            Some(_) => inner.hits += 1,
            None => inner.misses += 1,
        }
        found
    }

    /// Remember the columns of `batch`, which a checked read decoded from
    /// the block as its stored columns `proj` (all when None).
    pub fn insert(&self, key: BlockKey, proj: Option<&[usize]>, batch: &RecordBatch) {
        if self.budget == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let entry = match inner.entries.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                inner.order.push_back(key);
                v.insert(Entry {
                    rows: batch.num_rows(),
                    columns: HashMap::new(),
                    bytes: 0,
                })
            }
        };
        if entry.rows != batch.num_rows() {
            return;
        }
        let schema = batch.schema();
        for (i, array) in batch.columns().iter().enumerate() {
            let stored = proj.map_or(i, |p| p[i]);
            if entry.columns.contains_key(&stored) {
                continue;
            }
            let size = array.get_array_memory_size();
            entry.bytes += size;
            inner.bytes += size;
            entry
                .columns
                .insert(stored, (schema.field(i).clone().into(), array.clone()));
        }
        while inner.bytes > self.budget {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(e) = inner.entries.remove(&old) {
                inner.bytes -= e.bytes;
            }
        }
    }

    /// Forget every block of `table`.
    pub fn remove_table(&self, table: TableId) {
        self.remove_where(|k| k.table == table);
    }

    /// Forget every block of one copy of a slice (all its tables).
    pub fn remove_copy(&self, segment: SegmentKind, slice: SliceId) {
        self.remove_where(|k| k.segment == segment && k.slice == slice);
    }

    fn remove_where(&self, gone: impl Fn(&BlockKey) -> bool) {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        inner.order.retain(|k| !gone(k));
        let mut freed = 0;
        inner.entries.retain(|k, e| {
            let keep = !gone(k);
            if !keep {
                freed += e.bytes;
            }
            keep
        });
        inner.bytes -= freed;
    }

    pub fn stats(&self) -> CacheStats {
        let inner = self.inner.lock();
        CacheStats {
            bytes: inner.bytes as u64,
            blocks: inner.entries.len() as u64,
            hits: inner.hits,
            misses: inner.misses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};

    fn key(table: TableId, seq: u64) -> BlockKey {
        BlockKey {
            segment: SegmentKind::Primary,
            table,
            slice: 0,
            seq,
            offset: seq * 4096,
        }
    }

    fn batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..n)),
                Arc::new(StringArray::from_iter_values((0..n).map(|i| i.to_string()))),
            ],
        )
        .unwrap()
    }

    #[test]
    fn columns_come_back_only_when_all_are_cached_and_the_budget_holds() {
        let c = BlockCache::new(1 << 20);
        let b = batch(100);
        // Stored columns 3 and 5 of a wider block.
        c.insert(key(1, 1), Some(&[3, 5]), &b);
        let got = c.get(&key(1, 1), Some(&[5, 3]), 8).unwrap();
        assert_eq!(got.num_rows(), 100);
        assert_eq!(got.column(0).as_ref(), b.column(1).as_ref());
        assert_eq!(got.column(1).as_ref(), b.column(0).as_ref());
        assert!(
            c.get(&key(1, 1), Some(&[3, 4]), 8).is_none(),
            "column 4 was never read"
        );
        assert!(c.get(&key(1, 2), Some(&[3]), 8).is_none(), "another block");
        // An empty projection needs only the row count.
        assert_eq!(c.get(&key(1, 1), Some(&[]), 8).unwrap().num_rows(), 100);
        c.remove_table(1);
        assert!(c.get(&key(1, 1), Some(&[3]), 8).is_none());
        assert_eq!(c.stats().bytes, 0);

        // The budget evicts the oldest blocks first.
        let size = b.get_array_memory_size() as u64;
        let small = BlockCache::new(size * 3);
        for seq in 0..10 {
            small.insert(key(2, seq), None, &b);
        }
        let st = small.stats();
        assert!(st.bytes <= size * 3, "{st:?} over budget {}", size * 3);
        assert!(small.get(&key(2, 0), None, 2).is_none());
        assert!(small.get(&key(2, 9), None, 2).is_some());
        // A zero budget caches nothing.
        let off = BlockCache::new(0);
        off.insert(key(3, 0), None, &b);
        assert!(off.get(&key(3, 0), None, 2).is_none());
    }
}
