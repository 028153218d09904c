//! Scans: the rows of one (segment, table, slice) visible to a snapshot,
//! with zone-map pruning, projection, a pushed-down predicate and the
//! decoded-block cache.
//!
//! A [`BlockScan`] holds no lock: it reads a copy-on-write snapshot of the
//! block list. It must never return rows of a block whose bytes failed
//! verification; those go through [`super::repair`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, RecordBatchOptions};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Schema, SchemaRef};
use serde::Serialize;

use super::evolve::Widener;
use super::repair::{self, BlockRepair, StoredBlock};
use super::{DiskStore, IndexedBlock, ScanSpec, Snapshot};
use crate::block;
use crate::cache::{BlockCache, BlockKey};
use crate::disk::meta::StreamKey;
use crate::disk::{BlockDevice, SegmentKind};
use crate::predicate::Predicate;
use crate::{DiskId, EngineError, Result, SliceId, TableId, Xid};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScanStats {
    pub blocks_total: u64,
    pub blocks_pruned: u64,
    pub blocks_read: u64,
    pub rows_read: u64,
    pub rows_returned: u64,
}

impl DiskStore {
    /// Scan rows of one (segment, table, slice) visible to the spec's snapshot.
    pub fn scan(&self, spec: &ScanSpec) -> Result<BlockScan> {
        let key = StreamKey {
            segment: spec.segment,
            table: spec.table,
            slice: spec.slice,
        };
        let committed;
        let (user, phys, widener, blocks, deletes, own_deletes, reader) = {
            let inner = self.inner.lock();
            let t = inner
                .tables
                .get(&spec.table)
                .ok_or(EngineError::TableNotFound(spec.table))?;
            let (mut blocks, deletes) = inner
                .streams
                .get(&key)
                .map(|s| (s.committed.clone(), s.deletes.clone()))
                .unwrap_or_default();
            committed = blocks.len();
            let mut own_deletes = HashSet::new();
            if let Some(own) = spec.snapshot.own.and_then(|x| inner.pending.get(&x)) {
                let mine: Vec<Arc<IndexedBlock>> = own
                    .blocks
                    .iter()
                    .filter(|p| p.key == key)
                    .map(|p| p.block.clone())
                    .collect();
                if !mine.is_empty() {
                    let mut all = (*blocks).clone();
                    all.extend(mine);
                    blocks = Arc::new(all);
                }
                own_deletes = own.deleted_in(&key);
            }
            let reader = self.readers.enter();
            let (phys, widener) = (t.phys.clone(), t.widener());
            (
                t.user.clone(),
                phys,
                widener,
                blocks,
                deletes,
                own_deletes,
                reader,
            )
        };
        let nlogical = user.fields().len();
        let logical: Vec<usize> = match &spec.projection {
            Some(p) => p.clone(),
            None => (0..nlogical).collect(),
        };
        let logical_pred = spec
            .predicate
            .as_ref()
            .map(|p| p.columns())
            .unwrap_or_default();
        if let Some(&bad) = logical
            .iter()
            .chain(&logical_pred)
            .find(|&&c| c >= nlogical)
        {
            return Err(EngineError::InvalidRequest(format!(
                "column {bad} out of range: table {} has {nlogical} columns",
                spec.table
            )));
        }
        // From here on, columns are physical (crate::store::evolve): the
        // places blocks hold them in.
        let nuser = widener.width();
        let out_user: Vec<usize> = logical.iter().map(|&c| phys[c]).collect();
        let predicate = spec.predicate.as_ref().map(|p| p.remap(&|c| phys[c]));
        let pred_cols = predicate.as_ref().map(|p| p.columns()).unwrap_or_default();
        let [rowid_col, createxid_col, _] = block::hidden_columns(nuser);
        // Stored columns to decode: projection ∪ predicate columns, then hidden.
        let mut base: Vec<usize> = out_user.iter().chain(&pred_cols).copied().collect();
        if spec.include_hidden {
            base.extend(block::hidden_columns(nuser));
        }
        let mut with_vis = base.clone();
        with_vis.extend([rowid_col, createxid_col]);
        let plan = |mut read: Vec<usize>| -> ReadPlan {
            read.sort_unstable();
            read.dedup();
            let pos = |c: usize| read.iter().position(|&r| r == c);
            let predicate = predicate.as_ref().map(|p| {
                p.remap(&|c| pos(c).expect("predicate column is in the read set"))
                    .prepared()
            });
            let mut out_idx: Vec<usize> = out_user
                .iter()
                .map(|&c| pos(c).expect("projected column is in the read set"))
                .collect();
            if spec.include_hidden {
                out_idx.extend(
                    block::hidden_columns(nuser)
                        .map(|c| pos(c).expect("hidden column is in the read set")),
                );
            }
            let vis = pos(rowid_col).zip(pos(createxid_col));
            let proj = if read.len() == nuser + 3 && read.iter().enumerate().all(|(i, &c)| i == c) {
                None
            } else {
                Some(read)
            };
            ReadPlan {
                proj,
                predicate,
                out_idx,
                vis,
            }
        };
        let mut fields: Vec<_> = logical.iter().map(|&c| user.fields()[c].clone()).collect();
        if spec.include_hidden {
            fields.extend(block::hidden_fields());
        }
        let schema = Arc::new(Schema::new(fields));
        Ok(BlockScan {
            dev: self.dev.clone(),
            disk: self.sb.disk_id,
            table: spec.table,
            slice: spec.slice,
            stats: ScanStats {
                blocks_total: blocks.len() as u64,
                ..Default::default()
            },
            blocks,
            next: 0,
            prune: predicate.clone().map(Predicate::prepared),
            fast: plan(base),
            checked: plan(with_vis),
            snapshot: spec.snapshot.clone(),
            deletes,
            own_deletes,
            schema,
            failed: false,
            segment: spec.segment,
            stored: nuser + 3,
            widener,
            committed,
            cache: self.cache.clone(),
            counters: self.counters.clone(),
            repair: self.opts.repair.clone(),
            _reader: reader,
        })
    }

    /// Counters of the decoded-block cache (None: no cache).
    pub fn cache_stats(&self) -> Option<crate::cache::CacheStats> {
        self.cache.as_ref().map(|c| c.stats())
    }
}

/// How to decode blocks for one scan: which stored columns, where the output
/// and the predicate columns land, and where `_rowid`/`_createxid` are (only
/// when the plan reads them).
struct ReadPlan {
    proj: Option<Vec<usize>>,
    predicate: Option<Predicate>,
    out_idx: Vec<usize>,
    vis: Option<(usize, usize)>,
}

/// A scan over a snapshot of one stream's blocks. Holds no lock.
pub struct BlockScan {
    dev: Arc<dyn BlockDevice>,
    disk: DiskId,
    table: TableId,
    slice: SliceId,
    blocks: Arc<Vec<Arc<IndexedBlock>>>,
    next: usize,
    /// Over user columns, for zone-map pruning.
    prune: Option<Predicate>,
    /// Blocks whose rows are all visible: no hidden columns needed.
    fast: ReadPlan,
    /// Blocks that need a row-by-row visibility check.
    checked: ReadPlan,
    snapshot: Snapshot,
    deletes: Arc<BTreeMap<i64, Xid>>,
    own_deletes: HashSet<i64>,
    schema: SchemaRef,
    stats: ScanStats,
    failed: bool,
    segment: SegmentKind,
    /// Stored columns of the table: user columns and the hidden ones.
    stored: usize,
    /// Blocks written before the table gained columns, read as if they
    /// held them.
    widener: Widener,
    /// `blocks[..committed]` are committed; the rest are the reader's own
    /// uncommitted blocks, which are never cached (an abort may give their
    /// place and sequence number to another block).
    committed: usize,
    cache: Option<Arc<BlockCache>>,
    counters: Arc<super::StoreCounters>,
    /// Where a block that fails its checksum goes.
    repair: Arc<dyn BlockRepair>,
    /// Keeps space an abort frees from reuse while this scan may read it.
    _reader: super::reclaim::ReaderGuard,
}

impl BlockScan {
    /// Output schema: the projection, then the hidden columns if asked for.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn stats(&self) -> ScanStats {
        self.stats
    }

    /// Whether some row of `b` may be invisible to the snapshot.
    fn needs_check(&self, b: &IndexedBlock) -> bool {
        let m = &b.meta;
        let own_block = self
            .snapshot
            .own
            .is_some_and(|o| m.createxid_min == o && m.createxid_max == o);
        (!own_block && !self.snapshot.sees_all(m.createxid_min, m.createxid_max))
            || self
                .deletes
                .range(m.rowid_min..=m.rowid_max)
                .next()
                .is_some()
            || !self.own_deletes.is_empty()
    }

    fn read_block(&mut self, b: &IndexedBlock) -> Result<Option<RecordBatch>> {
        let check = self.needs_check(b);
        let plan = if check { &self.checked } else { &self.fast };
        let key = BlockKey {
            segment: self.segment,
            table: self.table,
            slice: self.slice,
            seq: b.meta.seq,
            offset: b.meta.offset,
        };
        // The block being read is `self.next - 1`.
        let cache = self.cache.as_ref().filter(|_| self.next <= self.committed);
        let mut read_bytes = 0;
        // A block written before the table gained columns: read what it
        // holds, in its own numbering, and widen.
        let k = Widener::block_width(&b.zones);
        let narrow = k + 3 < self.stored;
        let all_read: Vec<usize>;
        let (proj, stored) = if narrow {
            all_read = plan
                .proj
                .clone()
                .unwrap_or_else(|| (0..self.stored).collect());
            (Some(self.widener.block_projection(&all_read, k)), k + 3)
        } else {
            all_read = Vec::new();
            (plan.proj.clone(), self.stored)
        };
        let cached = cache.and_then(|c| c.get(&key, proj.as_deref(), stored));
        let batch = match cached {
            Some(batch) => batch,
            None => {
                let on_disk =
                    StoredBlock::new(self.disk, self.segment, self.table, self.slice, &b.meta);
                let batch = repair::read_block(
                    self.dev.as_ref(),
                    self.repair.as_ref(),
                    &on_disk,
                    proj.as_deref(),
                    &self.counters,
                )?;
                read_bytes = b.meta.length;
                if let Some(c) = cache {
                    c.insert(key, proj.as_deref(), &batch);
                }
                batch
            }
        };
        let batch = if narrow {
            self.widener.widen(&batch, &all_read, k)?
        } else {
            batch
        };
        self.stats.blocks_read += 1;
        self.stats.rows_read += batch.num_rows() as u64;
        self.counters
            .scanned(self.segment, batch.num_rows() as u64, read_bytes);
        let cols: Vec<ArrayRef> = plan
            .out_idx
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let opts = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let out = RecordBatch::try_new_with_options(self.schema.clone(), cols, &opts)?;
        let mut mask = match &plan.predicate {
            None => None,
            Some(p) => Some(p.evaluate(&batch)?),
        };
        if check {
            let (ri, ci) = plan
                .vis
                .ok_or_else(|| EngineError::Internal("visibility columns not read".into()))?;
            let as_i64 = |i: usize| {
                batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .cloned()
                    .ok_or_else(|| EngineError::Internal("hidden column is not Int64".into()))
            };
            let (rowids, cx) = (as_i64(ri)?, as_i64(ci)?);
            let vis: arrow::array::BooleanArray = rowids
                .values()
                .iter()
                .zip(cx.values())
                .map(|(&r, &c)| {
                    let created = self.snapshot.sees(c as u64);
                    let deleted = self.own_deletes.contains(&r)
                        || self.deletes.get(&r).is_some_and(|&x| self.snapshot.sees(x));
                    Some(created && !deleted)
                })
                .collect();
            mask = Some(match mask {
                None => vis,
                Some(m) => arrow::compute::and(&m, &vis)?,
            });
        }
        let out = match mask {
            None => out,
            Some(mask) => {
                let selected = mask.true_count();
                if selected == 0 {
                    return Ok(None);
                } else if selected == mask.len() {
                    out
                } else {
                    filter_record_batch(&out, &mask)?
                }
            }
        };
        Ok((out.num_rows() > 0).then_some(out))
    }
}

impl Iterator for BlockScan {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.failed && self.next < self.blocks.len() {
            let b = self.blocks[self.next].clone();
            self.next += 1;
            if let Some(p) = &self.prune {
                // Only user columns' zones: an old block's hidden ones come
                // right after its fewer user columns.
                let user_zones = &b.zones[..Widener::block_width(&b.zones)];
                if !p.may_match(user_zones) {
                    self.stats.blocks_pruned += 1;
                    continue;
                }
            }
            match self.read_block(&b) {
                Ok(Some(batch)) => {
                    self.stats.rows_returned += batch.num_rows() as u64;
                    return Some(Ok(batch));
                }
                Ok(None) => continue,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::*;
    use std::path::Path;

    use arrow::array::AsArray;
    use arrow::compute::concat_batches;
    use arrow::datatypes::Int64Type;

    use crate::disk::MemDevice;
    use crate::predicate::{CmpOp, Literal};
    use crate::store::StoreOptions;

    #[test]
    fn zone_maps_prune_key_ordered_blocks() {
        let (_, store) = mem_store(100);
        store.create_table(1, schema()).unwrap();
        store
            .append(SegmentKind::Primary, 1, 0, 1, &rows(0, 10_000))
            .unwrap();
        store.commit(1).unwrap();
        let pred = Predicate::And(vec![
            Predicate::Compare {
                column: 0,
                op: CmpOp::GtEq,
                value: Literal::Int(5_050),
            },
            Predicate::Compare {
                column: 0,
                op: CmpOp::Lt,
                value: Literal::Int(5_300),
            },
        ]);
        let s = ScanSpec {
            projection: Some(vec![2, 0]),
            predicate: Some(pred.clone()),
            ..spec(SegmentKind::Primary, 1, 0)
        };
        let mut scan = store.scan(&s).unwrap();
        let schema = scan.schema();
        let batches: Vec<RecordBatch> = scan.by_ref().collect::<Result<_>>().unwrap();
        let out = concat_batches(&schema, &batches).unwrap();
        let st = scan.stats();
        assert_eq!(st.blocks_total, 100);
        assert!(st.blocks_pruned >= 90, "{st:?}");
        assert_eq!(st.blocks_read, 3);
        assert_eq!(st.rows_returned, 250);
        let want = rows(5_050, 250);
        assert_eq!(out.num_columns(), 2);
        assert_eq!(out.column(0), want.column(2));
        assert_eq!(out.column(1), want.column(0));
        // count(*): zero columns, right row count.
        let s0 = ScanSpec {
            projection: Some(vec![]),
            ..s.clone()
        };
        let n: usize = store
            .scan(&s0)
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(n, 250);
        let s1 = ScanSpec {
            projection: Some(vec![]),
            predicate: None,
            ..s.clone()
        };
        let n: usize = store
            .scan(&s1)
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(n, 10_000);
        // Nothing matches: no batches at all, schema still known.
        let none = ScanSpec {
            predicate: Some(Predicate::Compare {
                column: 0,
                op: CmpOp::Gt,
                value: Literal::Int(1 << 40),
            }),
            include_hidden: true,
            ..s.clone()
        };
        let mut scan = store.scan(&none).unwrap();
        assert!(scan.next().is_none());
        assert_eq!(scan.stats().blocks_pruned, 100);
        assert_eq!(scan.schema().fields().len(), 5);
        assert!(matches!(
            store.scan(&ScanSpec {
                projection: Some(vec![3]),
                ..s.clone()
            }),
            Err(EngineError::InvalidRequest(_))
        ));
    }

    #[test]
    fn store_is_send_sync_and_scan_is_static() {
        fn check<T: Send + Sync>() {}
        fn check_scan<T: Iterator<Item = Result<RecordBatch>> + Send + 'static>() {}
        check::<DiskStore>();
        check_scan::<BlockScan>();
    }

    #[test]
    fn cached_blocks_answer_like_the_disk_and_keep_visibility() {
        let (_dev, store) = {
            let dev = Arc::new(MemDevice::new(small_init().size));
            let cached = StoreOptions {
                cache_bytes: 64 << 20,
                ..opts(100)
            };
            let store = DiskStore::create_with_device(
                dev.clone(),
                Path::new("mem"),
                IDS,
                small_init(),
                cached,
            )
            .unwrap();
            (dev, store)
        };
        let p = SegmentKind::Primary;
        store.create_table(1, schema()).unwrap();
        store.append(p, 1, 0, 5, &rows(0, 1000)).unwrap();
        store.commit(5).unwrap();
        let first = scan_all(&store, &spec(p, 1, 0)).unwrap();
        let st = store.cache_stats().unwrap();
        assert_eq!((st.hits, st.blocks), (0, 10), "{st:?}");
        let again = scan_all(&store, &spec(p, 1, 0)).unwrap();
        assert_eq!(first, again);
        assert_eq!(store.cache_stats().unwrap().hits, 10);
        // A projection of cached columns, with a filter, from the cache.
        let some = ScanSpec {
            projection: Some(vec![2]),
            predicate: Some(Predicate::Compare {
                column: 0,
                op: crate::predicate::CmpOp::Lt,
                value: crate::predicate::Literal::Int(250),
            }),
            ..spec(p, 1, 0)
        };
        assert_eq!(scan_all(&store, &some).unwrap().num_rows(), 250);
        // Zone maps prune 7 blocks; the 3 read come from the cache.
        assert_eq!(store.cache_stats().unwrap().hits, 13);

        // Committed deletes hide cached rows.
        let ids: Vec<i64> = (1..=10).collect();
        store
            .delete(p, 1, 0, 6, &ids, Some(&snap(6, &[], Some(6))))
            .unwrap();
        store.commit(6).unwrap();
        assert_eq!(count(&store, p, &Snapshot::latest()), 990);

        // The reader's own uncommitted rows, read once, do not come back
        // after an abort, not even where a later block was written.
        store.append(p, 1, 0, 7, &rows(1000, 100)).unwrap();
        assert_eq!(count(&store, p, &snap(8, &[7], Some(7))), 1090);
        store.abort(7).unwrap();
        store.append(p, 1, 0, 8, &rows(5000, 100)).unwrap();
        store.commit(8).unwrap();
        let all = scan_all(&store, &spec(p, 1, 0)).unwrap();
        let k = all.column(0).as_primitive::<Int64Type>();
        assert_eq!(all.num_rows(), 1090);
        assert!(
            k.values().iter().all(|&v| !(1000..5000).contains(&v)),
            "aborted rows came back"
        );
        assert!(k.values().contains(&5099));

        // A dropped table takes its cached blocks with it.
        store.drop_table(1).unwrap();
        assert_eq!(store.cache_stats().unwrap().blocks, 0);
        store.create_table(1, schema()).unwrap();
        store.append(p, 1, 0, 9, &rows(7000, 100)).unwrap();
        store.commit(9).unwrap();
        let fresh = scan_all(&store, &spec(p, 1, 0)).unwrap();
        assert_eq!(fresh, scan_all(&store, &spec(p, 1, 0)).unwrap());
        assert_eq!(fresh.column(0).as_primitive::<Int64Type>().value(0), 7000);
    }
}
