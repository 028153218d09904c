//! Schema evolution of a table on a disk (ALTER TABLE ADD / DROP / RENAME
//! COLUMN), online: no block is ever rewritten for it.
//!
//! A table's schema as the coordinator sends it is its *physical* column
//! list: every column the table ever had, in the order they were added; a
//! column's place in that list is its stable id and its place in every
//! block. A dropped column stays in the list, marked [`META_DROPPED`] in its
//! field metadata; an added column may carry a constant default
//! ([`META_DEFAULT`], its text form). Readers and writers (the coordinator,
//! scans, appends) see the *logical* columns: the physical ones not
//! dropped, under their current names.
//!
//! Blocks are written with every physical column (a dropped one as NULLs).
//! A block written before columns were added holds a prefix of the list (its
//! header counts its columns): those columns read as their default, or NULL.
//! Renames change no block: a block's column names are never read.
//!
//! It owns the rules of what may change ([`TableEntry::evolve`]) and the
//! mapping from logical to physical columns; it must never change the
//! place of a column that blocks already hold.

use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};

use super::{schema_to_ipc, TableEntry};
use crate::block::{self, ZoneMap};
use crate::{EngineError, Result, TableId};

/// Field metadata: the column was dropped (`"true"`).
pub const META_DROPPED: &str = "slicedb.dropped";
/// Field metadata: the text form of the constant an added column reads as
/// in blocks written before it was added (absent: NULL).
pub const META_DEFAULT: &str = "slicedb.default";

fn dropped(f: &Field) -> bool {
    f.metadata().get(META_DROPPED).is_some_and(|v| v == "true")
}

impl TableEntry {
    /// The entry of a table whose physical schema is `full`.
    pub(super) fn new(table: TableId, full: SchemaRef) -> Result<TableEntry> {
        let schema_ipc = schema_to_ipc(&full)?;
        Self::with_ipc(table, full, schema_ipc)
    }

    /// [`TableEntry::new`] with the schema's stored form at hand.
    pub(super) fn with_ipc(
        table: TableId,
        full: SchemaRef,
        schema_ipc: Vec<u8>,
    ) -> Result<TableEntry> {
        let mut user = Vec::new();
        let mut phys = Vec::new();
        let mut stored: Vec<FieldRef> = Vec::new();
        let mut defaults = Vec::new();
        for (i, f) in full.fields().iter().enumerate() {
            let plain = Field::new(f.name(), f.data_type().clone(), f.is_nullable());
            let gone = dropped(f);
            if !gone {
                user.push(plain.clone());
                phys.push(i);
            }
            // A dropped column is written as NULLs from now on.
            stored.push(Arc::new(plain.with_nullable(f.is_nullable() || gone)));
            let default = match f.metadata().get(META_DEFAULT) {
                None => None,
                Some(text) => {
                    let one = arrow::array::StringArray::from(vec![text.as_str()]);
                    let v = arrow::compute::cast(&one, f.data_type()).map_err(|e| {
                        EngineError::InvalidRequest(format!(
                            "default {text:?} of column {} of table {table}: {e}",
                            f.name()
                        ))
                    })?;
                    (v.null_count() == 0).then_some(v)
                }
            };
            defaults.push(default);
        }
        let user = Arc::new(Schema::new(user));
        Ok(TableEntry {
            stored: block::stored_schema(&Schema::new(stored)),
            user,
            full,
            schema_ipc,
            phys,
            defaults: Arc::new(defaults),
        })
    }

    /// Physical user columns.
    pub(super) fn width(&self) -> usize {
        self.defaults.len()
    }

    /// The entry `new` replaces this one with, if it is this table's schema
    /// after ALTERs: the same physical columns (renamed, dropped or not)
    /// with the same types, then new ones. `None`: the same schema.
    pub(super) fn evolve(&self, table: TableId, new: &SchemaRef) -> Result<Option<TableEntry>> {
        if *self.full == **new {
            return Ok(None);
        }
        let old = self.full.fields();
        // Another table of that id: refused as before schemas evolved.
        let mismatch = |reason: String| {
            tracing::warn!(table, %reason, "create table: not the same table");
            EngineError::TableExists(table)
        };
        if new.fields().len() < old.len() {
            return Err(mismatch(format!(
                "{} columns, the table has {} (columns are never removed, only marked dropped)",
                new.fields().len(),
                old.len()
            )));
        }
        for (i, (o, n)) in old.iter().zip(new.fields()).enumerate() {
            if o.data_type() != n.data_type() {
                return Err(mismatch(format!(
                    "column {i} changes type from {} to {}",
                    o.data_type(),
                    n.data_type()
                )));
            }
            if dropped(o) && !dropped(n) {
                return Err(mismatch(format!("dropped column {i} comes back")));
            }
        }
        Ok(Some(TableEntry::new(table, new.clone())?))
    }

    /// What an append needs to write logical batches in the physical
    /// layout, held without the store's lock.
    pub(super) fn writer(&self) -> PhysicalWriter {
        PhysicalWriter {
            schema: Arc::new(Schema::new(self.stored.fields()[..self.width()].to_vec())),
            phys: self.phys.clone(),
        }
    }

    /// Zone maps of a block of this table: a block written before columns
    /// were added holds fewer.
    pub(super) fn zones(&self, bytes: &[u8], rows: u64) -> Result<Vec<ZoneMap>> {
        let n = block::count_zones(bytes)?;
        if n == self.stored.fields().len() {
            return block::decode_zones(bytes, &self.stored, rows);
        }
        block::decode_zones(bytes, &self.prefix(n)?, rows)
    }

    /// The stored schema of a block of `columns` stored columns.
    pub(super) fn prefix(&self, columns: usize) -> Result<Schema> {
        if columns < 3 || columns > self.stored.fields().len() {
            return Err(EngineError::CorruptMetadata(format!(
                "a block of {columns} columns in a table that stores {}",
                self.stored.fields().len()
            )));
        }
        let user = columns - 3;
        let mut fields: Vec<FieldRef> = self.stored.fields()[..user].to_vec();
        fields.extend(block::hidden_fields());
        Ok(Schema::new(fields))
    }

    /// What a reader of blocks of this table needs to widen old ones.
    pub(super) fn widener(&self) -> Widener {
        Widener {
            stored: self.stored.clone(),
            defaults: self.defaults.clone(),
        }
    }
}

/// Writes a table's logical batches in the physical layout of its blocks.
pub(super) struct PhysicalWriter {
    /// The physical user columns.
    pub(super) schema: SchemaRef,
    phys: Vec<usize>,
}

impl PhysicalWriter {
    /// The logical columns `cols` of `rows` rows as physical ones: a dropped
    /// column as NULLs.
    pub(super) fn to_physical(&self, cols: Vec<ArrayRef>, rows: usize) -> Vec<ArrayRef> {
        let width = self.schema.fields().len();
        if self.phys.len() == width {
            return cols;
        }
        let mut by_phys: Vec<Option<ArrayRef>> = vec![None; width];
        for (c, &p) in cols.into_iter().zip(&self.phys) {
            by_phys[p] = Some(c);
        }
        by_phys
            .into_iter()
            .enumerate()
            .map(|(p, c)| {
                c.unwrap_or_else(|| new_null_array(self.schema.field(p).data_type(), rows))
            })
            .collect()
    }
}

/// Reads blocks written before columns were added as if they held every
/// column: held by a scan or a groom, without the store's lock.
#[derive(Clone)]
pub(super) struct Widener {
    /// The table's stored schema now: physical user columns, hidden ones.
    stored: SchemaRef,
    defaults: Arc<Vec<Option<ArrayRef>>>,
}

impl Widener {
    /// The table's physical user columns.
    pub(super) fn width(&self) -> usize {
        self.defaults.len()
    }

    /// A block's user column count, given its zone maps.
    pub(super) fn block_width(zones: &[ZoneMap]) -> usize {
        zones.len().saturating_sub(3)
    }

    /// The stored columns to read of a block of `k` user columns for the
    /// table's stored columns `read` (sorted): the ones it holds, in its own
    /// numbering.
    pub(super) fn block_projection(&self, read: &[usize], k: usize) -> Vec<usize> {
        let w = self.width();
        read.iter()
            .filter_map(|&c| match c {
                c if c < k => Some(c),
                c if c >= w => Some(c - w + k),
                _ => None,
            })
            .collect()
    }

    /// `batch` (the columns [`Widener::block_projection`] gave, of a block
    /// of `k` user columns) as the table's stored columns `read`: the
    /// columns the block lacks as their defaults.
    pub(super) fn widen(
        &self,
        batch: &RecordBatch,
        read: &[usize],
        k: usize,
    ) -> Result<RecordBatch> {
        let w = self.width();
        let rows = batch.num_rows();
        let mut fields = Vec::with_capacity(read.len());
        let mut cols = Vec::with_capacity(read.len());
        let mut next = 0;
        for &c in read {
            if c < k || c >= w {
                fields.push(batch.schema().fields()[next].clone());
                cols.push(batch.column(next).clone());
                next += 1;
                continue;
            }
            let f = self.stored.field(c);
            let col = match &self.defaults[c] {
                Some(one) => {
                    arrow::compute::take(one.as_ref(), &UInt32Array::from(vec![0; rows]), None)?
                }
                None => new_null_array(f.data_type(), rows),
            };
            fields.push(Arc::new(f.clone().with_nullable(true)));
            cols.push(col);
        }
        let opts = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            cols,
            &opts,
        )?)
    }

    /// A whole block (every stored column) of `k` user columns as the
    /// table's whole stored schema.
    pub(super) fn widen_all(&self, batch: &RecordBatch, k: usize) -> Result<RecordBatch> {
        let all: Vec<usize> = (0..self.stored.fields().len()).collect();
        let wide = if k == self.width() {
            batch.clone()
        } else {
            self.widen(batch, &all, k)?
        };
        Ok(RecordBatch::try_new(
            self.stored.clone(),
            wide.columns().to_vec(),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::*;
    use crate::store::{ScanSpec, SegmentKind};
    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Int64Type};
    use std::collections::HashMap;

    fn field(name: &str, dt: DataType, meta: &[(&str, &str)]) -> Field {
        Field::new(name, dt, true).with_metadata(
            meta.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        )
    }

    /// schema() of the store tests with columns added, dropped, renamed.
    fn evolved(extra: Vec<Field>, drop: Option<usize>, rename: Option<(usize, &str)>) -> SchemaRef {
        let base = schema();
        let mut fields: Vec<Field> = base.fields().iter().map(|f| f.as_ref().clone()).collect();
        if let Some(d) = drop {
            fields[d] = fields[d]
                .clone()
                .with_metadata([(META_DROPPED.to_string(), "true".to_string())].into());
        }
        if let Some((i, n)) = rename {
            fields[i] = fields[i].clone().with_name(n);
        }
        fields.extend(extra);
        Arc::new(Schema::new(fields))
    }

    fn scan_p(store: &crate::store::DiskStore, projection: Option<Vec<usize>>) -> RecordBatch {
        scan_all(
            store,
            &ScanSpec {
                projection,
                ..spec(SegmentKind::Primary, 1, 0)
            },
        )
        .unwrap()
    }

    #[test]
    fn old_blocks_read_added_columns_as_default_and_survive_reopen() {
        let p = SegmentKind::Primary;
        let (dev, store) = mem_store(100);
        let base = schema();
        let nbase = base.fields().len();
        store.create_table(1, base.clone()).unwrap();
        store.append(p, 1, 0, 1, &rows(0, 250)).unwrap();
        store.commit(1).unwrap();
        // ADD COLUMN c int DEFAULT 7, ADD COLUMN d text (NULL).
        let v2 = evolved(
            vec![
                field("c", DataType::Int64, &[(META_DEFAULT, "7")]),
                field("d", DataType::Utf8, &[]),
            ],
            None,
            None,
        );
        store.create_table(1, v2.clone()).unwrap();
        store.create_table(1, v2.clone()).unwrap(); // idempotent
        assert_eq!(store.table_schema(1).unwrap().fields().len(), nbase + 2);
        let old = scan_p(&store, None);
        assert_eq!(old.num_rows(), 250);
        let c = old.column(nbase).as_primitive::<Int64Type>();
        assert!(c.values().iter().all(|&v| v == 7) && c.null_count() == 0);
        assert_eq!(old.column(nbase + 1).null_count(), 250);
        // New rows carry their own values.
        let mut cols = rows(1000, 10).columns().to_vec();
        cols.push(Arc::new(Int64Array::from(vec![1; 10])));
        cols.push(Arc::new(StringArray::from(vec!["x"; 10])));
        let user = store.table_schema(1).unwrap();
        store
            .append(
                p,
                1,
                0,
                2,
                &RecordBatch::try_new(user.clone(), cols).unwrap(),
            )
            .unwrap();
        store.commit(2).unwrap();
        let check = |store: &crate::store::DiskStore| {
            let all = scan_p(store, Some(vec![nbase, 0]));
            assert_eq!(all.num_rows(), 260);
            let sum: i64 = all
                .column(0)
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .sum();
            assert_eq!(sum, 250 * 7 + 10);
        };
        check(&store);
        // A predicate on the added column: old blocks are not pruned away.
        let only7 = scan_all(
            &store,
            &ScanSpec {
                predicate: Some(crate::predicate::Predicate::Compare {
                    column: nbase,
                    op: crate::predicate::CmpOp::Eq,
                    value: crate::predicate::Literal::Int(7),
                }),
                ..spec(p, 1, 0)
            },
        )
        .unwrap();
        assert_eq!(only7.num_rows(), 250);
        // Reopened: the old blocks' zone maps still decode.
        let (_, again) = reopen_mem(dev.durable_image(), 100).unwrap();
        check(&again);
        // A column may not change type, nor be removed.
        let bad = evolved(vec![field("c", DataType::Utf8, &[])], None, None);
        assert!(again.create_table(1, bad).is_err());
        assert!(again.create_table(1, base).is_err());
    }

    #[test]
    fn dropped_columns_are_not_read_and_renames_change_no_block() {
        let p = SegmentKind::Primary;
        let (dev, store) = mem_store(100);
        let base = schema();
        let nbase = base.fields().len();
        store.create_table(1, base.clone()).unwrap();
        store.append(p, 1, 0, 1, &rows(0, 100)).unwrap();
        store.commit(1).unwrap();
        let before = scan_p(&store, None);
        let v2 = evolved(vec![], Some(1), Some((0, "renamed")));
        store.create_table(1, v2).unwrap();
        let user = store.table_schema(1).unwrap();
        assert_eq!(user.fields().len(), nbase - 1);
        assert_eq!(user.field(0).name(), "renamed");
        let after = scan_p(&store, None);
        assert_eq!(after.num_columns(), nbase - 1);
        assert_eq!(after.column(0), before.column(0));
        assert_eq!(after.column(1), before.column(2));
        // New rows: without the dropped column.
        let mut cols = rows(500, 5).columns().to_vec();
        cols.remove(1);
        store
            .append(
                p,
                1,
                0,
                2,
                &RecordBatch::try_new(user.clone(), cols).unwrap(),
            )
            .unwrap();
        store.commit(2).unwrap();
        let (_, again) = reopen_mem(dev.durable_image(), 100).unwrap();
        let all = scan_p(&again, None);
        assert_eq!(all.num_rows(), 105);
        assert_eq!(all.schema().field(0).name(), "renamed");
        // GROOM rewrites a block of the old shape into the new one.
        let ids: Vec<i64> = (1..=3).collect();
        again
            .delete(p, 1, 0, 3, &ids, Some(&snap(3, &[], Some(3))))
            .unwrap();
        again.commit(3).unwrap();
        again.groom(1, 100).unwrap();
        assert_eq!(scan_p(&again, None).num_rows(), 102);
        let k = scan_p(&again, Some(vec![0]));
        let k = k.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert!(k.values().contains(&504));
    }

    /// A GROOM of the other copy after ADD COLUMN wrote its block wider:
    /// a repair here takes it in narrowed to the columns this block holds,
    /// and reads give the same rows as the other copy.
    #[test]
    fn a_wider_groomed_replacement_is_narrowed_to_the_block() {
        let p = SegmentKind::Primary;
        let (_, peer) = mem_store(100);
        let (_, here) = mem_store(100);
        let v2 = evolved(
            vec![field("c", DataType::Int64, &[(META_DEFAULT, "7")])],
            None,
            None,
        );
        for s in [&peer, &here] {
            s.create_table(1, schema()).unwrap();
            s.append(p, 1, 0, 1, &rows(0, 250)).unwrap();
            s.commit(1).unwrap();
        }
        let b0 = here.export_slice(p, 1, 0, &[]).unwrap().blocks[0];
        for s in [&peer, &here] {
            s.delete(p, 1, 0, 2, &[b0.rowid_min, b0.rowid_min + 5], None)
                .unwrap();
            s.commit(2).unwrap();
            s.create_table(1, v2.clone()).unwrap();
        }
        assert_eq!(peer.groom(1, 3).unwrap().rows_removed, 2);
        let (wide, _) = peer
            .fetch_block(p, &crate::store::LogicalBlock::from(&b0))
            .unwrap();
        assert_eq!(
            block::count_zones(&block::inspect_block(&wide, 1, 0).unwrap().1).unwrap(),
            b0.columns + 1
        );
        let (got, written) = here.take_replacement(&b0, &wide).unwrap();
        assert!(written.unwrap());
        assert_eq!(got.rows, b0.rows - 2);
        let (h, zones) = block::inspect_block(&got.bytes, 1, 0).unwrap();
        assert_eq!(
            (h.rows, block::count_zones(&zones).unwrap()),
            (b0.rows - 2, b0.columns)
        );
        assert_eq!(scan_p(&here, None), scan_p(&peer, None));
        assert_eq!(
            scan_p(&here, Some(vec![3, 0])),
            scan_p(&peer, Some(vec![3, 0]))
        );
    }
}
