//! The delete log: rows a transaction deletes, by rowid, per (segment,
//! table, slice); the write-write conflict check against other open
//! transactions; and the delete runs the records are written as at prepare
//! or commit.
//!
//! Blocks are immutable: it must never change a block to delete a row.

use super::{DiskStore, Snapshot};
use crate::block;
use crate::disk::meta::{DeleteRunMeta, StreamKey};
use crate::disk::SegmentKind;
use crate::{EngineError, Result, SliceId, TableId, Xid};

impl DiskStore {
    /// Write a stream's committed deletes `all` as one delete run, not yet
    /// synced nor listed (None when there are none): what GROOM and a
    /// repair that dropped groomed rows list in place of its runs.
    pub(super) fn write_delete_run(
        &self,
        key: StreamKey,
        all: &std::collections::BTreeMap<i64, Xid>,
    ) -> Result<Option<DeleteRunMeta>> {
        if all.is_empty() {
            return Ok(None);
        }
        let recs: Vec<(i64, u64)> = all.iter().map(|(&r, &x)| (r, x)).collect();
        let bytes = block::encode_delete_run(key.table, key.slice, &recs);
        let offset = self.allocate(key, bytes.len() as u64)?;
        self.dev.write_at(offset, &bytes)?;
        Ok(Some(DeleteRunMeta {
            offset,
            length: bytes.len() as u64,
            count: recs.len() as u64,
        }))
    }

    /// Delete rows of one (segment, table, slice) for `xid`, by rowid.
    ///
    /// With `check = Some(snapshot)` (a primary), a row that another open
    /// transaction deleted, or that a transaction the snapshot does not see
    /// already deleted, is a write-write conflict: the later writer fails
    /// with [`EngineError::WriteConflict`]. A mirror passes `None`: the
    /// primary has checked. Rows already deleted by a transaction the
    /// snapshot sees are skipped. Returns the rows newly deleted.
    pub fn delete(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        xid: Xid,
        rowids: &[i64],
        check: Option<&Snapshot>,
    ) -> Result<u64> {
        self.check_writable(xid)?;
        let key = StreamKey {
            segment,
            table,
            slice,
        };
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        Self::begin_change(inner, table, xid)?;
        let committed = inner
            .streams
            .get(&key)
            .map(|s| s.deletes.clone())
            .unwrap_or_default();
        let locks = inner.locks.entry(key).or_default();
        let mut fresh = Vec::with_capacity(rowids.len());
        for &r in rowids {
            if let Some(&other) = locks.get(&r) {
                if other == xid {
                    continue;
                }
                if check.is_some() {
                    return Err(EngineError::WriteConflict {
                        table,
                        slice,
                        rowid: r,
                        other,
                    });
                }
            }
            if let Some(&dx) = committed.get(&r) {
                match check {
                    Some(snap) if !snap.sees(dx) => {
                        return Err(EngineError::WriteConflict {
                            table,
                            slice,
                            rowid: r,
                            other: dx,
                        })
                    }
                    _ => continue,
                }
            }
            fresh.push(r);
        }
        fresh.sort_unstable();
        fresh.dedup();
        for &r in &fresh {
            locks.insert(r, xid);
        }
        let n = fresh.len() as u64;
        inner
            .pending
            .entry(xid)
            .or_default()
            .deletes
            .entry(key)
            .or_default()
            .extend(fresh.iter().map(|&r| (r, xid)));
        Ok(n)
    }

    /// Write `xid`'s unwritten deletes as delete runs (not yet synced).
    pub(super) fn write_runs(&self, xid: Xid) -> Result<()> {
        let todo: Vec<(StreamKey, Vec<(i64, Xid)>)> = {
            let mut inner = self.inner.lock();
            match inner.pending.get_mut(&xid) {
                Some(t) => std::mem::take(&mut t.deletes).into_iter().collect(),
                None => return Ok(()),
            }
        };
        for (i, (key, rows)) in todo.iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let bytes = block::encode_delete_run(key.table, key.slice, rows);
            let res = self
                .allocate(*key, bytes.len() as u64)
                .and_then(|off| self.dev.write_at(off, &bytes).map(|_| off));
            let mut inner = self.inner.lock();
            let Some(t) = inner.pending.get_mut(&xid) else {
                return Ok(());
            };
            match res {
                Ok(offset) => t.runs.push((
                    *key,
                    DeleteRunMeta {
                        offset,
                        length: bytes.len() as u64,
                        count: rows.len() as u64,
                    },
                    rows.clone(),
                )),
                Err(e) => {
                    // Put back what is not written so abort releases its locks.
                    for (k, r) in todo.into_iter().skip(i) {
                        t.deletes.entry(k).or_default().extend(r);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::*;

    #[test]
    fn snapshots_see_only_committed_and_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            DiskStore::create(&dir.path().join("d.img"), IDS, small_init(), opts(100)).unwrap();
        store.create_table(1, schema()).unwrap();
        let p = SegmentKind::Primary;
        store.append(p, 1, 0, 5, &rows(0, 250)).unwrap();
        store.commit(5).unwrap();
        store.append(p, 1, 0, 7, &rows(250, 50)).unwrap();
        // 7 is pending: invisible to others, visible to itself.
        assert_eq!(count(&store, p, &Snapshot::latest()), 250);
        assert_eq!(count(&store, p, &snap(8, &[7], Some(7))), 300);
        store.commit(7).unwrap();
        // A snapshot taken while 7 was in progress still does not see it.
        assert_eq!(count(&store, p, &snap(8, &[7], None)), 250);
        assert_eq!(count(&store, p, &snap(6, &[], None)), 250);
        assert_eq!(count(&store, p, &snap(5, &[], None)), 0);
        assert_eq!(count(&store, p, &snap(8, &[], None)), 300);
        // Delete 10 rows in 9; conflicting delete in 10 fails with WriteConflict.
        let ids: Vec<i64> = (1..=10).collect();
        assert_eq!(
            store
                .delete(p, 1, 0, 9, &ids, Some(&snap(9, &[], Some(9))))
                .unwrap(),
            10
        );
        assert_eq!(count(&store, p, &snap(10, &[9], Some(9))), 290);
        assert_eq!(count(&store, p, &snap(10, &[9], None)), 300);
        let e = store.delete(p, 1, 0, 10, &[5], Some(&snap(10, &[9], Some(10))));
        assert!(
            matches!(
                e,
                Err(EngineError::WriteConflict {
                    rowid: 5,
                    other: 9,
                    ..
                })
            ),
            "{e:?}"
        );
        store.commit(9).unwrap();
        // After 9 committed, a snapshot that did not see 9 still conflicts.
        let e = store.delete(p, 1, 0, 10, &[5], Some(&snap(10, &[9], Some(10))));
        assert!(matches!(e, Err(EngineError::WriteConflict { .. })), "{e:?}");
        assert_eq!(count(&store, p, &snap(10, &[], None)), 290);
        assert_eq!(count(&store, p, &snap(9, &[], None)), 300);
        // Deletes survive a reopen.
        drop(store);
        let store = DiskStore::open(&dir.path().join("d.img"), opts(100)).unwrap();
        assert_eq!(count(&store, p, &Snapshot::latest()), 290);
        assert_eq!(store.slice_stats()[0].rows, 290);
    }
}
