//! Helpers the store's unit tests share, and the test that runs the whole
//! store end to end.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};

use super::*;
use crate::disk::MemDevice;
use crate::{EngineError, Result, SliceId, TableId, Xid};

pub(crate) const IDS: DiskIds = DiskIds {
    cluster_id: [7; 16],
    node_id: 3,
    disk_id: 1,
};

pub(crate) fn small_init() -> InitOptions {
    InitOptions {
        size: 64 << 20,
        extent_size: 64 << 10,
        meta_slot_size: 256 << 10,
    }
}

pub(crate) fn opts(block_rows: usize) -> StoreOptions {
    StoreOptions {
        block_rows,
        compression: Compression::Lz4,
        cache_bytes: 0,
        ..StoreOptions::default()
    }
}

pub(crate) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("x", DataType::Float64, true),
    ]))
}

pub(crate) fn rows(from: i64, n: i64) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(from..from + n)),
            Arc::new(StringArray::from_iter(
                (from..from + n).map(|i| (i % 7 != 0).then(|| format!("n{i}"))),
            )),
            Arc::new(Float64Array::from_iter_values(
                (from..from + n).map(|i| i as f64 * 0.5),
            )),
        ],
    )
    .unwrap()
}

pub(crate) fn spec(segment: SegmentKind, table: TableId, slice: SliceId) -> ScanSpec {
    ScanSpec {
        segment,
        table,
        slice,
        projection: None,
        predicate: None,
        include_hidden: false,
        snapshot: Snapshot::latest(),
    }
}

pub(crate) fn scan_all(store: &DiskStore, s: &ScanSpec) -> Result<RecordBatch> {
    let mut scan = store.scan(s)?;
    let schema = scan.schema();
    let batches: Vec<RecordBatch> = scan.by_ref().collect::<Result<_>>()?;
    assert!(batches.iter().all(|b| b.num_rows() > 0), "no empty batches");
    Ok(concat_batches(&schema, &batches)?)
}

pub(crate) fn mem_store(block_rows: usize) -> (Arc<MemDevice>, DiskStore) {
    let dev = Arc::new(MemDevice::new(small_init().size));
    let store = DiskStore::create_with_device(
        dev.clone(),
        Path::new("mem"),
        IDS,
        small_init(),
        opts(block_rows),
    )
    .unwrap();
    (dev, store)
}

pub(crate) fn reopen_mem(image: Vec<u8>, block_rows: usize) -> Result<(Arc<MemDevice>, DiskStore)> {
    let dev = Arc::new(MemDevice::from_image(image));
    let store =
        DiskStore::open_with_device(dev.clone(), Path::new("mem"), opts(block_rows), false)?;
    Ok((dev, store))
}

pub(crate) fn rowids(b: &RecordBatch) -> Vec<i64> {
    b.column_by_name(crate::HIDDEN_ROWID)
        .unwrap()
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

/// Everything visible on a store, for comparing states.
pub(crate) type Fingerprint = (
    Vec<TableId>,
    Vec<(SegmentKind, TableId, SliceId, RecordBatch)>,
);

pub(crate) fn fingerprint(store: &DiskStore) -> Fingerprint {
    let mut out = Vec::new();
    for st in store.slice_stats() {
        let s = ScanSpec {
            include_hidden: true,
            ..spec(st.segment, st.table, st.slice)
        };
        out.push((st.segment, st.table, st.slice, scan_all(store, &s).unwrap()));
    }
    (store.tables(), out)
}

pub(crate) fn count(store: &DiskStore, seg: SegmentKind, snap: &Snapshot) -> u64 {
    let s = ScanSpec {
        snapshot: snap.clone(),
        ..spec(seg, 1, 0)
    };
    store
        .scan(&s)
        .unwrap()
        .map(|b| b.unwrap().num_rows() as u64)
        .sum()
}

pub(crate) fn snap(xmax: Xid, xip: &[Xid], own: Option<Xid>) -> Snapshot {
    Snapshot {
        xmax,
        xip: xip.to_vec(),
        own,
    }
}

#[test]
fn round_trip_across_slices_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk0.img");
    let store = DiskStore::create(&path, IDS, small_init(), opts(100)).unwrap();
    assert!(
        DiskStore::create(&path, IDS, small_init(), opts(100)).is_err(),
        "existing file"
    );
    store.create_table(1, schema()).unwrap();
    store.create_table(1, schema()).unwrap(); // idempotent
    let other = Arc::new(Schema::new(vec![Field::new("k", DataType::Int32, false)]));
    assert!(matches!(
        store.create_table(1, other.clone()),
        Err(EngineError::TableExists(1))
    ));
    store.create_table(2, other.clone()).unwrap();
    let parts = [
        (SegmentKind::Primary, 1, 0, rows(0, 250)),
        (SegmentKind::Primary, 1, 1, rows(1000, 30)),
        (SegmentKind::Mirror, 1, 0, rows(5000, 120)),
        (SegmentKind::Temp, 1, 3, rows(-50, 10)),
    ];
    for (seg, t, sl, b) in &parts {
        assert_eq!(
            store.append(*seg, *t, *sl, 9, b).unwrap(),
            b.num_rows() as u64
        );
    }
    assert!(matches!(
        store.append(
            SegmentKind::Primary,
            1,
            0,
            9,
            &RecordBatch::new_empty(other.clone())
        ),
        Err(EngineError::SchemaMismatch { .. })
    ));
    assert!(matches!(
        store.append(SegmentKind::Primary, 42, 0, 9, &rows(0, 1)),
        Err(EngineError::TableNotFound(42))
    ));
    store.commit(9).unwrap();
    let check = |store: &DiskStore| {
        for (seg, t, sl, b) in &parts {
            assert_eq!(&scan_all(store, &spec(*seg, *t, *sl)).unwrap(), b);
        }
        let stats = store.slice_stats();
        assert_eq!(stats.len(), 4);
        assert_eq!(
            stats
                .iter()
                .find(|s| s.segment == SegmentKind::Primary && s.slice == 0)
                .unwrap()
                .blocks,
            3
        );
        assert_eq!(store.tables(), vec![1, 2]);
        assert_eq!(*store.table_schema(2).unwrap(), *other);
    };
    check(&store);
    let hidden = ScanSpec {
        include_hidden: true,
        ..spec(SegmentKind::Primary, 1, 0)
    };
    let before = rowids(&scan_all(&store, &hidden).unwrap());
    drop(store);
    let store = DiskStore::open(&path, opts(100)).unwrap();
    assert_eq!(store.ids(), IDS);
    check(&store);
    store
        .append(SegmentKind::Primary, 1, 0, 10, &rows(250, 50))
        .unwrap();
    store.commit(10).unwrap();
    let all = scan_all(&store, &hidden).unwrap();
    let ids = rowids(&all);
    assert_eq!(&ids[..250], &before[..]);
    let mut uniq = ids.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert_eq!(uniq.len(), 300, "rowids unique");
    assert!(
        ids[250..]
            .iter()
            .all(|&r| r > *before.iter().max().unwrap()),
        "rowids continue after reopen"
    );
    let cx = all
        .column_by_name(crate::HIDDEN_CREATEXID)
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!((cx.value(0), cx.value(299)), (9, 10));
    let dx = all
        .column_by_name(crate::HIDDEN_DELETEXID)
        .unwrap()
        .as_primitive::<Int64Type>();
    assert!(dx.values().iter().all(|&v| v == 0));
    let text = store.report().render_text();
    assert!(
        text.contains("layout profile flat") && text.contains("primary"),
        "{text}"
    );
    serde_json::to_string(&store.report()).unwrap();
    drop(store);
    let ro = DiskStore::open_read_only(&path).unwrap();
    assert_eq!(
        scan_all(&ro, &spec(SegmentKind::Mirror, 1, 0)).unwrap(),
        parts[2].3
    );
    assert!(ro.create_table(5, schema()).is_err());
}
