//! Recovery: the in-memory state of a disk rebuilt from its last committed
//! metadata generation when the image is opened.
//!
//! It owns the rule for what survives a crash: committed and prepared blocks
//! and delete runs, and the extents they pin. It must never write to the
//! disk: a torn tail is simply free space again, and anything that does not
//! add up (a block outside its extents, a stream of an unknown table) is
//! corruption and fails the open loudly.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{
    schema_from_ipc, DiskStore, IndexedBlock, Inner, PendingBlock, PendingTxn, Stream, TableEntry,
};
use crate::block;
use crate::disk::alloc::Space;
use crate::disk::meta::{BlockMeta, DeleteRunMeta, ExtentRun, MetaState, SlotStatus, StreamKey};
use crate::disk::{BlockDevice, Superblock};
use crate::{EngineError, Result, Xid};

impl DiskStore {
    /// Rebuild the in-memory state from a committed metadata state. Blocks
    /// written after it are not in the index: their space is simply free again
    /// (a torn tail). Extents holding no committed or prepared block or delete
    /// run are freed too. Prepared transactions come back as in-doubt.
    pub(super) fn recover(
        dev: &dyn BlockDevice,
        sb: &Superblock,
        state: MetaState,
        generation: u64,
        slots: [SlotStatus; 2],
    ) -> Result<Inner> {
        let corrupt = |m: String| EngineError::CorruptMetadata(m);
        let mut tables = BTreeMap::new();
        for t in state.tables {
            let full = schema_from_ipc(&t.schema_ipc, t.id)?;
            if tables
                .insert(t.id, TableEntry::with_ipc(t.id, full, t.schema_ipc)?)
                .is_some()
            {
                return Err(corrupt(format!("table {} listed twice", t.id)));
            }
        }
        let read_run = |key: &StreamKey, run: &DeleteRunMeta| -> Result<Vec<(i64, u64)>> {
            if block::delete_run_len(run.count) != Some(run.length) {
                return Err(corrupt(format!(
                    "delete run at {} has length {} for {} records",
                    run.offset, run.length, run.count
                )));
            }
            let mut buf = vec![0u8; run.length as usize];
            dev.read_at(run.offset, &mut buf)?;
            block::decode_delete_run(&buf, sb.disk_id, run.offset, key.table, key.slice)
        };
        // Everything that pins an extent: committed and prepared blocks and runs.
        let mut pins: BTreeMap<StreamKey, Vec<(u64, u64)>> = BTreeMap::new();
        for s in &state.streams {
            let p = pins.entry(s.key).or_default();
            p.extend(s.blocks.iter().map(|b| (b.offset, b.end())));
            p.extend(s.deletes.iter().map(|d| (d.offset, d.offset + d.length)));
        }
        for t in &state.prepared {
            for (k, b) in &t.blocks {
                pins.entry(*k).or_default().push((b.offset, b.end()));
            }
            for (k, d) in &t.deletes {
                pins.entry(*k)
                    .or_default()
                    .push((d.offset, d.offset + d.length));
            }
        }
        let mut alloc = Space::new(sb);
        let mut streams = BTreeMap::new();
        let mut extents_of: BTreeMap<StreamKey, Vec<ExtentRun>> = BTreeMap::new();
        for s in &state.streams {
            extents_of.insert(s.key, s.extents.clone());
        }
        for (key, p) in &pins {
            if !tables.contains_key(&key.table) {
                return Err(corrupt(format!("stream of unknown table {}", key.table)));
            }
            if p.is_empty() {
                continue;
            }
            let extents = extents_of.get(key).cloned().unwrap_or_default();
            let mut kept: Vec<ExtentRun> = Vec::new();
            for e in &extents {
                if p.iter().any(|&(o, _)| o >= e.offset && o < e.end()) {
                    alloc.reserve(key.segment, *e)?;
                    kept.push(*e);
                }
            }
            for &(o, end) in p {
                if end <= o || !kept.iter().any(|e| o >= e.offset && end <= e.end()) {
                    return Err(corrupt(format!(
                        "block or delete run at {o} (+{}) of table {} slice {} lies outside its extents",
                        end.saturating_sub(o),
                        key.table,
                        key.slice
                    )));
                }
            }
            let last = kept[kept.len() - 1];
            let fill = p
                .iter()
                .filter(|&&(o, _)| o >= last.offset && o < last.end())
                .map(|&(_, end)| end)
                .max()
                .unwrap_or(last.offset);
            let mut st = Stream::empty();
            st.extents = kept;
            st.fill = fill;
            streams.insert(*key, st);
        }
        // What scans, GROOM and the hidden columns take for granted of an
        // index entry (a rowid range they walk, a row count they allocate).
        let check_block = |k: &StreamKey, b: &BlockMeta| -> Result<()> {
            if b.rowid_min > b.rowid_max
                || b.createxid_min > b.createxid_max
                || b.rows > block::MAX_BLOCK_ROWS
            {
                return Err(corrupt(format!(
                    "block at {} of table {} slice {}: {} rows, rowids {}..={}, createxids {}..={}",
                    b.offset,
                    k.table,
                    k.slice,
                    b.rows,
                    b.rowid_min,
                    b.rowid_max,
                    b.createxid_min,
                    b.createxid_max
                )));
            }
            Ok(())
        };
        let note_block = |st: &mut Stream, b: &BlockMeta| {
            st.next_rowid = st.next_rowid.max(b.rowid_max.saturating_add(1));
            st.next_seq = st.next_seq.max(b.seq.saturating_add(1));
        };
        for s in state.streams {
            let Some(st) = streams.get_mut(&s.key) else {
                continue;
            };
            let table = &tables[&s.key.table];
            let mut committed = Vec::with_capacity(s.blocks.len());
            for b in s.blocks {
                check_block(&s.key, &b)?;
                let zones = table.zones(&b.zones, b.rows)?;
                note_block(st, &b);
                committed.push(Arc::new(IndexedBlock { meta: b, zones }));
            }
            let mut deletes = BTreeMap::new();
            for run in &s.deletes {
                for (rowid, xid) in read_run(&s.key, run)? {
                    deletes.insert(rowid, xid);
                }
            }
            st.committed = Arc::new(committed);
            st.deletes = Arc::new(deletes);
            st.runs = s.deletes;
        }
        let mut pending = HashMap::new();
        let mut locks: HashMap<StreamKey, HashMap<i64, Xid>> = HashMap::new();
        for t in state.prepared {
            let mut txn = PendingTxn {
                prepared: true,
                ..Default::default()
            };
            for (k, b) in t.blocks {
                let table = tables.get(&k.table).ok_or_else(|| {
                    corrupt(format!("prepared block of unknown table {}", k.table))
                })?;
                check_block(&k, &b)?;
                let zones = table.zones(&b.zones, b.rows)?;
                if let Some(st) = streams.get_mut(&k) {
                    note_block(st, &b);
                }
                txn.blocks.push(PendingBlock {
                    key: k,
                    block: Arc::new(IndexedBlock { meta: b, zones }),
                });
            }
            for (k, run) in t.deletes {
                let rows = read_run(&k, &run)?;
                let l = locks.entry(k).or_default();
                for (r, _) in &rows {
                    l.insert(*r, t.xid);
                }
                txn.runs.push((k, run, rows));
            }
            pending.insert(t.xid, txn);
        }
        Ok(Inner {
            tables,
            streams,
            alloc,
            pending,
            locks,
            generation,
            slots,
            parked: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::*;
    use std::path::Path;

    use crate::disk::{CrashPoint, FileDevice, MemDevice};
    use crate::store::{InitOptions, SegmentKind};

    type Op = fn(&DiskStore) -> Result<()>;

    /// Run `ops` on a copy of `base` crashing after every possible write (and
    /// tearing it); the reopened image must show exactly one of the durable
    /// states the ops pass through, and must accept new commits.
    fn crash_everywhere(base: &[u8], ops: &[Op]) {
        // Dry run: the states after each op, and how many writes they take.
        let (dev, store) = reopen_mem(base.to_vec(), 64).unwrap();
        let w0 = dev.writes();
        let mut states = vec![fingerprint(&store)];
        for op in ops {
            op(&store).unwrap();
            states.push(fingerprint(&store));
        }
        let total = dev.writes() - w0;
        assert!(total >= ops.len() as u64);
        let mut seen = vec![false; states.len()];
        for n in 0..=total {
            for torn in [None, Some(1), Some(40), Some(100), Some(3000)] {
                let (dev, store) = reopen_mem(base.to_vec(), 64).unwrap();
                dev.set_crash(Some(CrashPoint {
                    after_writes: dev.writes() + n,
                    torn_prefix: torn,
                }));
                for op in ops {
                    let _ = op(&store);
                }
                let image = dev.durable_image();
                let (_, after) = reopen_mem(image.clone(), 64).unwrap_or_else(|e| {
                    panic!("reopen after crash at write {n} torn {torn:?}: {e}")
                });
                let fp = fingerprint(&after);
                let i = states.iter().position(|s| *s == fp).unwrap_or_else(|| {
                    panic!(
                        "crash at write {n} torn {torn:?} left a state that is neither old nor new"
                    )
                });
                seen[i] = true;
                // The recovered disk keeps working: space of the torn tail is reused.
                after.create_table(50, schema()).unwrap();
                after
                    .append(SegmentKind::Primary, 50, 0, 99, &rows(0, 100))
                    .unwrap();
                after.commit(99).unwrap();
                let (_, again) = reopen_mem(dev_image(&after), 64).unwrap();
                assert_eq!(
                    scan_all(&again, &spec(SegmentKind::Primary, 50, 0)).unwrap(),
                    rows(0, 100)
                );
                let mut fp2 = fingerprint(&again);
                fp2.0.retain(|t| *t != 50);
                fp2.1.retain(|x| x.1 != 50);
                assert!(fp2 == fp, "old data intact after new commits");
            }
        }
        assert!(
            seen.iter().all(|&s| s),
            "every state was reached by some crash point: {seen:?}"
        );
    }

    /// The durable image behind a store opened on a MemDevice.
    fn dev_image(store: &DiskStore) -> Vec<u8> {
        let mut image = vec![0u8; store.dev.len().unwrap() as usize];
        store.dev.read_at(0, &mut image).unwrap();
        image
    }

    fn base_image() -> Vec<u8> {
        let (dev, store) = mem_store(64);
        store.create_table(1, schema()).unwrap();
        store
            .append(SegmentKind::Primary, 1, 0, 1, &rows(0, 100))
            .unwrap();
        store
            .append(SegmentKind::Mirror, 1, 2, 1, &rows(0, 10))
            .unwrap();
        store.commit(1).unwrap();
        dev.durable_image()
    }

    #[test]
    fn crash_at_every_commit_write() {
        let ops: [Op; 1] = [|s| {
            s.append(SegmentKind::Primary, 1, 0, 2, &rows(100, 150))?;
            s.append(SegmentKind::Temp, 1, 1, 2, &rows(7, 5))?;
            s.commit(2)
        }];
        crash_everywhere(&base_image(), &ops);
    }

    #[test]
    fn crash_around_create_drop_and_commit() {
        let ops: [Op; 3] = [
            |s| s.create_table(2, schema()),
            |s| s.drop_table(1),
            |s| {
                s.append(SegmentKind::Primary, 2, 0, 3, &rows(0, 70))?;
                s.commit(3)
            },
        ];
        crash_everywhere(&base_image(), &ops);
    }

    #[test]
    fn torn_slot_falls_back_to_the_other_slot() {
        let (dev, store) = mem_store(64);
        store.create_table(1, schema()).unwrap();
        store
            .append(SegmentKind::Primary, 1, 0, 1, &rows(0, 10))
            .unwrap();
        store.commit(1).unwrap();
        let old = fingerprint(&store);
        // Tear the next metadata write in its payload: the valid older slot wins.
        store
            .append(SegmentKind::Primary, 1, 0, 2, &rows(10, 10))
            .unwrap();
        dev.set_crash(Some(CrashPoint {
            after_writes: dev.writes(),
            torn_prefix: Some(70),
        }));
        store.commit(2).unwrap();
        let (_, after) = reopen_mem(dev.durable_image(), 64).unwrap();
        assert_eq!(fingerprint(&after), old);
        let r = after.report();
        assert!(
            r.slots_at_open.iter().any(|s| s.contains("CRC mismatch")),
            "{:?}",
            r.slots_at_open
        );
    }

    /// A version 3 image (flat, from the build before zone tables) opens,
    /// takes commits, and stays version 3 in its superblock and slots.
    #[test]
    fn a_version_3_image_opens_and_stays_version_3() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        let init = small_init();
        let mut sb = Superblock::layout(
            IDS.cluster_id,
            IDS.node_id,
            IDS.disk_id,
            init.size,
            init.extent_size,
            init.meta_slot_size,
        )
        .unwrap();
        sb.version = 3;
        let dev = FileDevice::create(&path, init.size).unwrap();
        let store = DiskStore::create_laid_out(Arc::new(dev), &path, sb, opts(100)).unwrap();
        store.create_table(1, schema()).unwrap();
        store
            .append(SegmentKind::Primary, 1, 0, 1, &rows(0, 100))
            .unwrap();
        store.commit(1).unwrap();
        drop(store);
        let store = DiskStore::open(&path, opts(100)).unwrap();
        assert_eq!(store.report().format_version, 3);
        assert_eq!(
            scan_all(&store, &spec(SegmentKind::Primary, 1, 0))
                .unwrap()
                .num_rows(),
            100
        );
        let dev = FileDevice::open(&path, false).unwrap();
        let version_at = |off: u64| {
            let mut b = [0u8; 4];
            dev.read_at(off + 8, &mut b).unwrap();
            u32::from_le_bytes(b)
        };
        let sb = store.superblock().clone();
        assert_eq!(version_at(0), 3);
        assert_eq!(
            (version_at(sb.slot_offset(0)), version_at(sb.slot_offset(1))),
            (3, 3)
        );
    }

    #[test]
    fn wrong_version_and_bad_magic_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        drop(DiskStore::create(&path, IDS, small_init(), opts(100)).unwrap());
        let dev = FileDevice::open(&path, true).unwrap();
        dev.write_at(8, &99u32.to_le_bytes()).unwrap();
        assert!(matches!(
            DiskStore::open(&path, opts(100)),
            Err(EngineError::UnsupportedVersion {
                found: 99,
                supported: crate::disk::FORMAT_VERSION
            })
        ));
        dev.write_at(8, &crate::disk::FORMAT_VERSION.to_le_bytes())
            .unwrap();
        DiskStore::open(&path, opts(100)).unwrap();
        dev.write_at(50, &[0xff]).unwrap();
        assert!(matches!(
            DiskStore::open(&path, opts(100)),
            Err(EngineError::CorruptMetadata(_))
        ));
        dev.write_at(0, b"NOTSLICE").unwrap();
        assert!(matches!(
            DiskStore::open(&path, opts(100)),
            Err(EngineError::NotAnImage(_))
        ));
        let short = dir.path().join("short");
        std::fs::write(&short, b"hello").unwrap();
        assert!(matches!(
            DiskStore::open(&short, opts(100)),
            Err(EngineError::NotAnImage(_))
        ));
    }

    #[test]
    fn metadata_full_leaves_the_committed_state() {
        let init = InitOptions {
            size: 64 << 20,
            extent_size: 64 << 10,
            meta_slot_size: 4096,
        };
        let dev = Arc::new(MemDevice::new(init.size));
        let store =
            DiskStore::create_with_device(dev.clone(), Path::new("mem"), IDS, init, opts(10))
                .unwrap();
        store.create_table(1, schema()).unwrap();
        let mut xid = 1;
        let err = loop {
            store
                .append(SegmentKind::Primary, 1, 0, xid, &rows(0, 10))
                .unwrap();
            match store.commit(xid) {
                Ok(()) => xid += 1,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, EngineError::MetadataFull { capacity: 4096, .. }),
            "{err}"
        );
        let committed = fingerprint(&store);
        store.abort(xid).unwrap();
        let (_, after) = reopen_mem(dev.durable_image(), 10).unwrap();
        assert_eq!(fingerprint(&after), committed);
        assert_eq!(committed.1[0].3.num_rows() as u64, (xid - 1) * 10);
    }
}
