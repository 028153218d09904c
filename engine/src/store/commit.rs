//! Commit and two-phase commit on one disk: prepare (durable, not visible),
//! commit (durable and visible, atomically), abort, the in-doubt list a
//! resolver reads after a restart, and the metadata generation each of them
//! writes.
//!
//! It owns the order of the commit protocol of docs/disk-format.md: data
//! synced first, then the next metadata slot. It must never write a
//! generation that lists data it has not synced, nor decide a transaction's
//! outcome: the coordinator does.

use std::collections::HashSet;
use std::sync::Arc;

use serde::Serialize;
use tracing::{debug, warn};

use super::{read_only_err, DiskStore, Inner};
use crate::disk::meta::{
    self, BlockMeta, MetaState, PreparedMeta, StreamKey, StreamMeta, TableMeta,
};
use crate::{Result, Xid};

/// An open transaction's state on this disk, as [`DiskStore::in_doubt`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TxnState {
    pub xid: Xid,
    /// Durable and waiting for the coordinator's decision.
    pub prepared: bool,
}

impl DiskStore {
    /// The committed state as written to a slot: the committed streams, with
    /// `commit`'s blocks and delete runs merged in, and every prepared
    /// transaction except `commit`.
    pub(super) fn meta_state(inner: &Inner, commit: Option<Xid>) -> MetaState {
        let tables = inner
            .tables
            .iter()
            .map(|(id, t)| TableMeta {
                id: *id,
                schema_ipc: t.schema_ipc.clone(),
            })
            .collect();
        let committing = commit.and_then(|x| inner.pending.get(&x));
        let streams = inner
            .streams
            .iter()
            .filter(|(_, s)| !s.extents.is_empty())
            .map(|(key, s)| {
                let mut blocks: Vec<BlockMeta> =
                    s.committed.iter().map(|b| b.meta.clone()).collect();
                let mut deletes = s.runs.clone();
                if let Some(t) = committing {
                    blocks.extend(
                        t.blocks
                            .iter()
                            .filter(|p| p.key == *key)
                            .map(|p| p.block.meta.clone()),
                    );
                    deletes.extend(t.runs.iter().filter(|r| r.0 == *key).map(|r| r.1));
                }
                StreamMeta {
                    key: *key,
                    extents: s.extents.clone(),
                    blocks,
                    deletes,
                }
            })
            .collect();
        let mut prepared: Vec<PreparedMeta> = inner
            .pending
            .iter()
            .filter(|(x, t)| t.prepared && Some(**x) != commit)
            .map(|(x, t)| PreparedMeta {
                xid: *x,
                blocks: t
                    .blocks
                    .iter()
                    .map(|p| (p.key, p.block.meta.clone()))
                    .collect(),
                deletes: t.runs.iter().map(|(k, r, _)| (*k, *r)).collect(),
            })
            .collect();
        prepared.sort_by_key(|p| p.xid);
        MetaState {
            tables,
            streams,
            prepared,
        }
    }

    /// Write `state` as the next generation (the caller holds `commit_lock`).
    pub(super) fn write_generation(&self, generation: u64, state: &MetaState) -> Result<()> {
        let payload = state.encode();
        meta::write_slot(self.dev.as_ref(), &self.sb, generation, &payload)
    }

    /// Phase one of two-phase commit: make everything `xid` wrote on this disk
    /// durable (data synced, then a metadata generation that lists it as
    /// prepared) without making it visible. After a crash it comes back as
    /// in-doubt until [`DiskStore::commit`] or [`DiskStore::abort`].
    pub fn prepare(&self, xid: Xid) -> Result<()> {
        self.prepare_after(xid, |_| Ok(()))
    }

    /// Run `writes` (a mirror applying what it staged for `xid`) and then
    /// prepare, with no other prepare or commit of this disk in between: a
    /// prepare must never mark as durable writes it did not sync.
    pub fn prepare_after(
        &self,
        xid: Xid,
        writes: impl FnOnce(&DiskStore) -> Result<()>,
    ) -> Result<()> {
        if self.read_only {
            return Err(read_only_err());
        }
        let _c = self.commit_lock.lock();
        writes(self)?;
        {
            let inner = self.inner.lock();
            match inner.pending.get(&xid) {
                None => return Ok(()),
                Some(t) if (t.prepared && !t.dirty) || t.is_empty() => return Ok(()),
                _ => {}
            }
        }
        self.write_runs(xid)?;
        self.dev.sync()?;
        let was_prepared;
        let (generation, state) = {
            let mut inner = self.inner.lock();
            let Some(t) = inner.pending.get_mut(&xid) else {
                return Ok(());
            };
            was_prepared = t.prepared;
            t.prepared = true;
            t.dirty = false;
            (inner.generation + 1, Self::meta_state(&inner, None))
        };
        let res = self.write_generation(generation, &state);
        let mut inner = self.inner.lock();
        match res {
            Ok(()) => {
                inner.generation = generation;
                debug!(xid, generation, "prepared");
                Ok(())
            }
            Err(e) => {
                if let Some(t) = inner.pending.get_mut(&xid) {
                    t.prepared = was_prepared;
                    t.dirty = true;
                }
                Err(e)
            }
        }
    }

    /// Make everything `xid` did on this disk durable and visible, atomically:
    /// sync data, write the next metadata slot, sync. Works whether or not
    /// the transaction was prepared.
    pub fn commit(&self, xid: Xid) -> Result<()> {
        if self.read_only {
            return Err(read_only_err());
        }
        let _c = self.commit_lock.lock();
        {
            let inner = self.inner.lock();
            match inner.pending.get(&xid) {
                None => return Ok(()),
                Some(t) if t.is_empty() => {
                    drop(inner);
                    self.inner.lock().pending.remove(&xid);
                    return Ok(());
                }
                _ => {}
            }
        }
        self.write_runs(xid)?;
        let res = self.dev.sync().and_then(|_| {
            let (generation, state) = {
                let inner = self.inner.lock();
                (inner.generation + 1, Self::meta_state(&inner, Some(xid)))
            };
            self.write_generation(generation, &state)
                .map(|_| generation)
        });
        let generation = match res {
            Ok(g) => g,
            Err(e) => {
                // The transaction stays pending so it can still be aborted.
                warn!(xid, error = %e, "commit failed");
                return Err(e);
            }
        };
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        inner.generation = generation;
        let Some(t) = inner.pending.remove(&xid) else {
            return Ok(());
        };
        let nblocks = t.blocks.len();
        for p in t.blocks {
            if let Some(s) = inner.streams.get_mut(&p.key) {
                Arc::make_mut(&mut s.committed).push(p.block);
            }
        }
        for (key, run, rows) in t.runs {
            if let Some(s) = inner.streams.get_mut(&key) {
                let d = Arc::make_mut(&mut s.deletes);
                for &(r, x) in &rows {
                    d.insert(r, x);
                }
                s.runs.push(run);
            }
            if let Some(l) = inner.locks.get_mut(&key) {
                for (r, _) in &rows {
                    l.remove(r);
                }
            }
        }
        debug!(xid, generation, blocks = nblocks, "committed");
        Ok(())
    }

    /// [`DiskStore::commit`] for a transaction the coordinator prepared
    /// here. One this disk wrote for but never prepared cannot have been
    /// committed with this work in it: the coordinator carried it over to
    /// another node (this one was failed over meanwhile), so it is aborted
    /// here instead, and its rows are never published on this copy.
    pub fn commit_prepared(&self, xid: Xid) -> Result<()> {
        let unprepared = self
            .inner
            .lock()
            .pending
            .get(&xid)
            .is_some_and(|t| !t.prepared && !t.is_empty());
        if unprepared {
            warn!(
                xid,
                "a commit for a transaction never prepared here: its work was carried over elsewhere; aborted on this disk"
            );
            return self.abort(xid);
        }
        self.commit(xid)
    }

    /// Forget `xid`: its blocks and deletes are dropped and its row locks
    /// released. A prepared transaction is removed durably from the metadata.
    /// The extent runs only it wrote into are free again at once (see
    /// [`super::reclaim`]), after that metadata generation if it was prepared.
    pub fn abort(&self, xid: Xid) -> Result<()> {
        let _c = self.commit_lock.lock();
        let (t, was_prepared) = {
            let mut inner = self.inner.lock();
            let inner = &mut *inner;
            let Some(t) = inner.pending.remove(&xid) else {
                return Ok(());
            };
            let keys: HashSet<StreamKey> = t
                .deletes
                .keys()
                .copied()
                .chain(t.runs.iter().map(|r| r.0))
                .collect();
            for k in keys {
                if let Some(l) = inner.locks.get_mut(&k) {
                    l.retain(|_, x| *x != xid);
                }
            }
            let state = if t.prepared {
                // Until this generation is durable, the last one pins its
                // blocks: its space is freed only after it.
                Some((inner.generation + 1, Self::meta_state(inner, None)))
            } else {
                None
            };
            (t, state)
        };
        if self.read_only {
            return Ok(());
        }
        if let Some((generation, state)) = was_prepared {
            self.write_generation(generation, &state)?;
            self.inner.lock().generation = generation;
        }
        // No append in flight: every byte written to the runs is listed.
        let _gate = self.io_gate.write();
        let freed = self.reclaim_aborted(&mut self.inner.lock(), &t);
        debug!(xid, freed, "aborted");
        Ok(())
    }

    /// Open transactions on this disk: the resolver's view after a restart.
    pub fn in_doubt(&self) -> Vec<TxnState> {
        let inner = self.inner.lock();
        let mut v: Vec<TxnState> = inner
            .pending
            .iter()
            .map(|(x, t)| TxnState {
                xid: *x,
                prepared: t.prepared,
            })
            .collect();
        v.sort_by_key(|t| t.xid);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::*;
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;

    use crate::store::{ScanSpec, SegmentKind, Snapshot};

    #[test]
    fn uncommitted_is_invisible_and_abort_discards() {
        let (dev, store) = mem_store(64);
        store.create_table(1, schema()).unwrap();
        let s = spec(SegmentKind::Primary, 1, 0);
        store
            .append(SegmentKind::Primary, 1, 0, 5, &rows(0, 100))
            .unwrap();
        store
            .append(SegmentKind::Primary, 1, 0, 6, &rows(100, 100))
            .unwrap();
        assert_eq!(scan_all(&store, &s).unwrap().num_rows(), 0);
        store.abort(6).unwrap();
        store.commit(6).unwrap(); // nothing pending: no-op
        store.commit(77).unwrap();
        assert_eq!(scan_all(&store, &s).unwrap().num_rows(), 0);
        // Restart with xid 5 still open: its rows are gone.
        let (_, store2) = reopen_mem(dev.durable_image(), 64).unwrap();
        assert_eq!(scan_all(&store2, &s).unwrap().num_rows(), 0);
        store.commit(5).unwrap();
        assert_eq!(scan_all(&store, &s).unwrap(), rows(0, 100));
        let (_, store3) = reopen_mem(dev.durable_image(), 64).unwrap();
        assert_eq!(scan_all(&store3, &s).unwrap(), rows(0, 100));
    }

    #[test]
    fn prepared_transactions_survive_a_crash_as_in_doubt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        let store = DiskStore::create(&path, IDS, small_init(), opts(100)).unwrap();
        store.create_table(1, schema()).unwrap();
        let p = SegmentKind::Primary;
        store.append(p, 1, 0, 3, &rows(0, 100)).unwrap();
        store.commit(3).unwrap();
        store.append(p, 1, 0, 4, &rows(100, 30)).unwrap();
        store
            .delete(p, 1, 0, 4, &[1, 2], Some(&snap(5, &[], Some(4))))
            .unwrap();
        store.prepare(4).unwrap();
        store.append(p, 1, 0, 5, &rows(130, 30)).unwrap(); // never prepared: lost
        store.append(p, 1, 0, 6, &rows(160, 30)).unwrap();
        store.prepare(6).unwrap();
        drop(store); // crash: nothing else written
        let store = DiskStore::open(&path, opts(100)).unwrap();
        assert_eq!(
            store.in_doubt(),
            vec![
                TxnState {
                    xid: 4,
                    prepared: true
                },
                TxnState {
                    xid: 6,
                    prepared: true
                }
            ]
        );
        assert_eq!(count(&store, p, &Snapshot::latest()), 100);
        // Its row locks are back: a conflicting delete fails.
        assert!(store
            .delete(p, 1, 0, 7, &[2], Some(&snap(8, &[], Some(7))))
            .is_err());
        store.commit(4).unwrap();
        store.abort(6).unwrap();
        assert_eq!(count(&store, p, &Snapshot::latest()), 128);
        drop(store);
        let store = DiskStore::open(&path, opts(100)).unwrap();
        assert!(store.in_doubt().is_empty());
        assert_eq!(count(&store, p, &Snapshot::latest()), 128);
        // New rowids never reuse a committed one.
        store.append(p, 1, 0, 9, &rows(0, 1)).unwrap();
        store.commit(9).unwrap();
        let hidden = ScanSpec {
            include_hidden: true,
            ..spec(p, 1, 0)
        };
        let max_rowid = store
            .scan(&hidden)
            .unwrap()
            .map(|b| {
                let b = b.unwrap();
                arrow::compute::max(b.column(3).as_primitive::<Int64Type>()).unwrap()
            })
            .max()
            .unwrap();
        assert!(
            max_rowid > 130,
            "a new rowid must not reuse a committed one: {max_rowid}"
        );
    }
}
