//! Tables of a disk: create (durable, idempotent for the same schema), drop
//! (durable; frees the table's extents in every segment) and lookup.
//!
//! It must never free an extent an append is still writing into: drop waits
//! on `io_gate` first.

use arrow::datatypes::SchemaRef;
use tracing::info;

use super::{read_only_err, DiskStore, TableEntry};
use crate::disk::meta::{StreamKey, TableMeta};
use crate::{EngineError, Result, TableId};

impl DiskStore {
    /// Create a table. Durable when it returns. Idempotent for an identical
    /// schema; a schema the table evolved into (ALTER TABLE: columns added,
    /// dropped, renamed; `crate::store::evolve`) replaces the table's.
    pub fn create_table(&self, table: TableId, schema: SchemaRef) -> Result<()> {
        if self.read_only {
            return Err(read_only_err());
        }
        for f in schema.fields() {
            if [
                crate::HIDDEN_ROWID,
                crate::HIDDEN_CREATEXID,
                crate::HIDDEN_DELETEXID,
            ]
            .contains(&f.name().as_str())
            {
                return Err(EngineError::InvalidRequest(format!(
                    "column name {} is reserved",
                    f.name()
                )));
            }
        }
        let _c = self.commit_lock.lock();
        let (generation, mut state, entry) = {
            let inner = self.inner.lock();
            let entry = match inner.tables.get(&table) {
                // The same table after ALTER TABLE (crate::store::evolve).
                Some(t) => match t.evolve(table, &schema)? {
                    None => return Ok(()),
                    Some(e) => e,
                },
                None => TableEntry::new(table, schema.clone())?,
            };
            (inner.generation + 1, Self::meta_state(&inner, None), entry)
        };
        state.tables.retain(|t| t.id != table);
        state.tables.push(TableMeta {
            id: table,
            schema_ipc: entry.schema_ipc.clone(),
        });
        state.tables.sort_by_key(|t| t.id);
        self.write_generation(generation, &state)?;
        let mut inner = self.inner.lock();
        inner.generation = generation;
        inner.tables.insert(table, entry);
        info!(table, generation, "created table");
        Ok(())
    }

    /// Drop a table: durable when it returns; its extents in every segment are
    /// free for reuse; its pending blocks are forgotten. Ok if absent.
    pub fn drop_table(&self, table: TableId) -> Result<()> {
        if self.read_only {
            return Err(read_only_err());
        }
        if let Some(c) = &self.cache {
            c.remove_table(table);
        }
        let _c = self.commit_lock.lock();
        // Wait for appends still writing into this table's extents.
        let _gate = self.io_gate.write();
        let (generation, mut state) = {
            let inner = self.inner.lock();
            if !inner.tables.contains_key(&table) {
                return Ok(());
            }
            (inner.generation + 1, Self::meta_state(&inner, None))
        };
        state.tables.retain(|t| t.id != table);
        state.streams.retain(|s| s.key.table != table);
        for p in &mut state.prepared {
            p.blocks.retain(|(k, _)| k.table != table);
            p.deletes.retain(|(k, _)| k.table != table);
        }
        self.write_generation(generation, &state)?;
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        inner.generation = generation;
        inner.tables.remove(&table);
        let keys: Vec<StreamKey> = inner
            .streams
            .keys()
            .filter(|k| k.table == table)
            .copied()
            .collect();
        for k in keys {
            if let Some(s) = inner.streams.remove(&k) {
                // A scan still running may read them: freed after it.
                self.release_runs(inner, k.segment, s.extents);
            }
        }
        for t in inner.pending.values_mut() {
            t.blocks.retain(|p| p.key.table != table);
            t.deletes.retain(|k, _| k.table != table);
            t.runs.retain(|r| r.0.table != table);
        }
        inner.locks.retain(|k, _| k.table != table);
        info!(table, generation, "dropped table");
        Ok(())
    }

    pub fn table_schema(&self, table: TableId) -> Result<SchemaRef> {
        self.inner
            .lock()
            .tables
            .get(&table)
            .map(|t| t.user.clone())
            .ok_or(EngineError::TableNotFound(table))
    }

    pub fn tables(&self) -> Vec<TableId> {
        self.inner.lock().tables.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::*;
    use crate::store::SegmentKind;

    #[test]
    fn segment_full_and_extents_reused_after_drop() {
        let (dev, store) = mem_store(1000);
        store.create_table(1, schema()).unwrap();
        let temp_len = store.superblock().segment(SegmentKind::Temp).length;
        let mut xid = 1;
        let err = loop {
            match store.append(SegmentKind::Temp, 1, xid as u32 % 4, xid, &rows(0, 1000)) {
                Ok(_) => {
                    store.commit(xid).unwrap();
                    xid += 1;
                }
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, EngineError::SegmentFull { ref segment, .. } if segment == "temp"),
            "{err}"
        );
        assert_eq!(store.report().segments[2].used, temp_len);
        store.drop_table(1).unwrap();
        store.drop_table(1).unwrap(); // absent: Ok
        assert_eq!(store.report().segments[2].used, 0);
        assert!(matches!(
            store.table_schema(1),
            Err(EngineError::TableNotFound(1))
        ));
        store.create_table(2, schema()).unwrap();
        store
            .append(SegmentKind::Temp, 2, 0, 500, &rows(0, 1000))
            .unwrap();
        store.commit(500).unwrap();
        let (_, after) = reopen_mem(dev.durable_image(), 1000).unwrap();
        assert_eq!(after.tables(), vec![2]);
        assert_eq!(
            scan_all(&after, &spec(SegmentKind::Temp, 2, 0)).unwrap(),
            rows(0, 1000)
        );
        assert!(after.report().segments[2].used > 0);
    }
}
