//! The superblock and the metadata slots (`disk/superblock.rs`,
//! `disk/meta.rs`), and opening a whole image whose metadata a buggy writer
//! changed under a valid CRC: a valid encoding round-trips, a changed byte
//! is refused, and nothing read from a disk makes the node panic.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use proptest::collection::vec;
use proptest::prelude::*;

use super::{check, mutate, mutations, Mutation};
use crate::disk::meta::{
    BlockMeta, DeleteRunMeta, ExtentRun, MetaState, PreparedMeta, StreamKey, StreamMeta, TableMeta,
    SLOT_HEADER_LEN,
};
use crate::disk::{MemDevice, Placement, SegmentKind, Superblock, ZoneProfile};
use crate::store::{
    Compression, DiskIds, DiskStore, InitOptions, ScanSpec, Snapshot, StoreOptions,
};
use crate::EngineError;

fn superblock() -> impl Strategy<Value = Superblock> {
    (
        any::<[u8; 16]>(),
        any::<u32>(),
        any::<u32>(),
        1..1u64 << 20,
        1..64u64,
        1..64u64,
        proptest::collection::vec(0..2000u32, 0..20),
        0..4usize,
    )
        .prop_filter_map(
            "too small an image",
            |(cluster, node, disk, size, e, s, speeds, placement)| {
                let placement = [
                    Placement::Auto,
                    Placement::Flat,
                    Placement::Static,
                    Placement::Dynamic,
                ][placement];
                let profile = ZoneProfile { read_kib_s: speeds };
                Superblock::layout_zoned(
                    cluster,
                    node,
                    disk,
                    size * 4096 * 4,
                    e * 4096,
                    s * 4096,
                    &profile,
                    placement,
                )
                .ok()
            },
        )
}

#[test]
fn superblocks_round_trip_and_refuse_changes() {
    check(
        "superblocks_round_trip_and_refuse_changes",
        256,
        (superblock(), mutations(), mutations()),
        |(sb, ms, under_crc)| {
            let bytes = sb.encode();
            // Bytes of the superblock the CRC covers: the head and the zone table.
            let sb_body = 88 + 24 * sb.zones.len();
            let back = Superblock::decode(&bytes, "fuzz")
                .map_err(|e| TestCaseError::fail(format!("decode: {e}")))?;
            prop_assert_eq!(&back, &sb);
            let bad = mutate(&bytes, &ms);
            if bad[..bad.len().min(sb_body + 4)] != bytes[..sb_body + 4] {
                let res = Superblock::decode(&bad, "fuzz");
                prop_assert!(
                    matches!(
                        res,
                        Err(EngineError::CorruptMetadata(_)
                            | EngineError::NotAnImage(_)
                            | EngineError::UnsupportedVersion { .. })
                    ),
                    "changed superblock gave {:?}",
                    res
                );
            }
            // Changed under a recomputed CRC: decoded and checked, or refused.
            let mut body = mutate(&bytes[..sb_body], &under_crc);
            body.resize(sb_body, 0);
            let crc = crc32c::crc32c(&body);
            body.extend_from_slice(&crc.to_le_bytes());
            if let Ok(sb) = Superblock::decode(&body, "fuzz") {
                for z in sb.zones {
                    prop_assert!(z.offset.checked_add(z.length).is_some());
                    prop_assert!(z.offset + z.length <= sb.image_size);
                }
            }
            Ok(())
        },
    );
}

fn segment() -> impl Strategy<Value = SegmentKind> {
    prop_oneof![
        Just(SegmentKind::Primary),
        Just(SegmentKind::Mirror),
        Just(SegmentKind::Temp)
    ]
}

fn key() -> impl Strategy<Value = StreamKey> {
    (segment(), any::<u64>(), any::<u32>()).prop_map(|(segment, table, slice)| StreamKey {
        segment,
        table,
        slice,
    })
}

/// An offset and a length whose sum fits a u64 (the decoder refuses others).
fn span() -> impl Strategy<Value = (u64, u64)> {
    (any::<u64>(), any::<u64>()).prop_map(|(o, l)| (o, l % (u64::MAX - o + 1).max(1)))
}

fn block_meta() -> impl Strategy<Value = BlockMeta> {
    (span(), any::<[u64; 6]>(), vec(any::<u8>(), 0..40)).prop_map(|((offset, length), v, zones)| {
        BlockMeta {
            offset,
            length,
            seq: v[0],
            rows: v[1],
            rowid_min: v[2] as i64,
            rowid_max: v[3] as i64,
            createxid_min: v[4],
            createxid_max: v[5],
            zones: Arc::from(zones),
        }
    })
}

fn run_meta() -> impl Strategy<Value = DeleteRunMeta> {
    (span(), any::<u64>()).prop_map(|((offset, length), count)| DeleteRunMeta {
        offset,
        length,
        count,
    })
}

fn meta_state() -> impl Strategy<Value = MetaState> {
    let table = (any::<u64>(), vec(any::<u8>(), 0..64))
        .prop_map(|(id, schema_ipc)| TableMeta { id, schema_ipc });
    let extent = span().prop_map(|(offset, length)| ExtentRun { offset, length });
    let stream = (
        key(),
        vec(extent, 0..4),
        vec(block_meta(), 0..4),
        vec(run_meta(), 0..3),
    )
        .prop_map(|(key, extents, blocks, deletes)| StreamMeta {
            key,
            extents,
            blocks,
            deletes,
        });
    let prepared = (
        any::<u64>(),
        vec((key(), block_meta()), 0..3),
        vec((key(), run_meta()), 0..3),
    )
        .prop_map(|(xid, blocks, deletes)| PreparedMeta {
            xid,
            blocks,
            deletes,
        });
    (vec(table, 0..4), vec(stream, 0..4), vec(prepared, 0..3)).prop_map(
        |(tables, streams, prepared)| MetaState {
            tables,
            streams,
            prepared,
        },
    )
}

#[test]
fn metadata_payloads_round_trip_or_fail_typed() {
    check(
        "metadata_payloads_round_trip_or_fail_typed",
        256,
        (meta_state(), mutations(), vec(any::<u8>(), 0..256)),
        |(state, ms, random)| {
            let bytes = state.encode();
            let back = MetaState::decode(&bytes)
                .map_err(|e| TestCaseError::fail(format!("decode: {e}")))?;
            prop_assert_eq!(&back, &state);
            for input in [mutate(&bytes, &ms), random] {
                match MetaState::decode(&input) {
                    Ok(_) | Err(EngineError::CorruptMetadata(_)) => {}
                    Err(e) => return Err(TestCaseError::fail(format!("untyped error: {e}"))),
                }
            }
            Ok(())
        },
    );
}

const IDS: DiskIds = DiskIds {
    cluster_id: [7; 16],
    node_id: 3,
    disk_id: 1,
};

fn init() -> InitOptions {
    InitOptions {
        size: 4 << 20,
        extent_size: 64 << 10,
        meta_slot_size: 64 << 10,
    }
}

fn opts() -> StoreOptions {
    StoreOptions {
        block_rows: 50,
        compression: Compression::Lz4,
        cache_bytes: 0,
        ..StoreOptions::default()
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
    ]))
}

/// An image holding two tables with committed rows and deletes, a prepared
/// transaction and a few generations of metadata (built once).
fn image() -> &'static [u8] {
    &image_and_deleted().0
}

/// The image and how many rows of table 1 its delete removed.
fn image_and_deleted() -> &'static (Vec<u8>, u64) {
    static IMAGE: OnceLock<(Vec<u8>, u64)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dev = Arc::new(MemDevice::new(init().size));
        let store =
            DiskStore::create_with_device(dev.clone(), Path::new("mem"), IDS, init(), opts())
                .expect("a fresh image");
        let rows = |from: i64| {
            RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(Int64Array::from_iter_values(from..from + 120)),
                    Arc::new(StringArray::from_iter(
                        (from..from + 120).map(|i| (i % 3 != 0).then(|| format!("v{i}"))),
                    )),
                ],
            )
            .expect("fits the schema")
        };
        for table in [1, 2] {
            store.create_table(table, schema()).expect("create table");
        }
        for (xid, table, seg) in [
            (1, 1, SegmentKind::Primary),
            (2, 2, SegmentKind::Mirror),
            (3, 1, SegmentKind::Primary),
        ] {
            store
                .append(seg, table, 0, xid, &rows(xid as i64 * 1000))
                .expect("append");
            store.commit(xid).expect("commit");
        }
        let deleted = store
            .delete(SegmentKind::Primary, 1, 0, 4, &[1, 2, 125], None)
            .expect("delete");
        store.commit(4).expect("commit delete");
        store
            .append(SegmentKind::Primary, 2, 0, 5, &rows(5000))
            .expect("append");
        store.prepare(5).expect("prepare");
        (dev.durable_image(), deleted)
    })
}

/// Where a slot is and what generation it holds.
fn slot(image: &[u8], which: u64) -> (usize, u64, usize) {
    let off = 4096 + which as usize * init().meta_slot_size as usize;
    let le = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&image[at..at + 8]);
        u64::from_le_bytes(b)
    };
    (off, le(off + 16), le(off + 24) as usize)
}

#[derive(Debug, Clone)]
enum ImageChange {
    /// The newest slot's payload changed, its length and CRC made to agree.
    Payload(Vec<Mutation>),
    /// Bytes anywhere in the superblock, slots or first data extents.
    Raw(Vec<Mutation>),
}

fn reopen(image: Vec<u8>) -> crate::Result<DiskStore> {
    DiskStore::open_with_device(
        Arc::new(MemDevice::from_image(image)),
        Path::new("mem"),
        opts(),
        false,
    )
}

/// Everything a node does with an image it opened: scan every stream, with
/// and without hidden columns.
fn use_store(store: &DiskStore) {
    for table in [1, 2, 3] {
        for segment in [SegmentKind::Primary, SegmentKind::Mirror] {
            for include_hidden in [false, true] {
                let spec = ScanSpec {
                    segment,
                    table,
                    slice: 0,
                    projection: None,
                    predicate: None,
                    include_hidden,
                    snapshot: Snapshot::latest(),
                };
                if let Ok(scan) = store.scan(&spec) {
                    for b in scan {
                        if b.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn images_with_changed_metadata_open_or_fail_typed() {
    let change = prop_oneof![
        3 => mutations().prop_map(ImageChange::Payload),
        1 => mutations().prop_map(ImageChange::Raw),
    ];
    check(
        "images_with_changed_metadata_open_or_fail_typed",
        96,
        change,
        |change| {
            let base = image();
            // The unchanged image opens and shows its rows.
            let mut img = base.to_vec();
            match &change {
                ImageChange::Payload(ms) => {
                    let (a, b) = (slot(base, 0), slot(base, 1));
                    let (off, _, len) = if a.1 >= b.1 { a } else { b };
                    let payload = &base[off + SLOT_HEADER_LEN..off + SLOT_HEADER_LEN + len];
                    let mut new = mutate(payload, ms);
                    new.truncate(init().meta_slot_size as usize - SLOT_HEADER_LEN);
                    img[off + 24..off + 32].copy_from_slice(&(new.len() as u64).to_le_bytes());
                    let mut crc = crc32c::crc32c(&img[off..off + 32]);
                    crc = crc32c::crc32c_append(crc, &new);
                    img[off + 32..off + 36].copy_from_slice(&crc.to_le_bytes());
                    img[off + SLOT_HEADER_LEN..off + SLOT_HEADER_LEN + new.len()]
                        .copy_from_slice(&new);
                }
                ImageChange::Raw(ms) => {
                    // Mutations stay inside the first 512 KiB, same length.
                    let head = 512 << 10;
                    let mut new = mutate(&base[..head], ms);
                    new.resize(head, 0);
                    img[..head].copy_from_slice(&new);
                }
            }
            match reopen(img) {
                Ok(store) => use_store(&store),
                Err(
                    EngineError::CorruptMetadata(_)
                    | EngineError::CorruptBlock { .. }
                    | EngineError::ChecksumMismatch { .. }
                    | EngineError::NotAnImage(_)
                    | EngineError::UnsupportedVersion { .. }
                    | EngineError::Arrow(_),
                ) => {}
                Err(e) => return Err(TestCaseError::fail(format!("untyped error: {e}"))),
            }
            Ok(())
        },
    );
}

#[test]
fn the_fuzzed_image_opens_unchanged() {
    let store = reopen(image().to_vec()).expect("the image opens");
    let spec = ScanSpec {
        segment: SegmentKind::Primary,
        table: 1,
        slice: 0,
        projection: None,
        predicate: None,
        include_hidden: false,
        snapshot: Snapshot::latest(),
    };
    let rows: usize = store
        .scan(&spec)
        .expect("scan")
        .map(|b| b.expect("batch").num_rows())
        .sum();
    let deleted = image_and_deleted().1;
    assert!(deleted > 0);
    assert_eq!(rows as u64, 240 - deleted);
}

// Regressions: metadata the properties above found, each once a panic on
// open or on the first scan.

/// The image with the newest slot's payload replaced by `state`.
fn with_state(state: &MetaState) -> Vec<u8> {
    let base = image();
    let (a, b) = (slot(base, 0), slot(base, 1));
    let (off, _, _) = if a.1 >= b.1 { a } else { b };
    let payload = state.encode();
    let mut img = base.to_vec();
    img[off + 24..off + 32].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut crc = crc32c::crc32c(&img[off..off + 32]);
    crc = crc32c::crc32c_append(crc, &payload);
    img[off + 32..off + 36].copy_from_slice(&crc.to_le_bytes());
    img[off + SLOT_HEADER_LEN..off + SLOT_HEADER_LEN + payload.len()].copy_from_slice(&payload);
    img
}

fn newest_state() -> MetaState {
    let base = image();
    let (a, b) = (slot(base, 0), slot(base, 1));
    let (off, _, len) = if a.1 >= b.1 { a } else { b };
    MetaState::decode(&base[off + SLOT_HEADER_LEN..off + SLOT_HEADER_LEN + len]).expect("valid")
}

#[test]
fn a_reversed_rowid_range_in_the_index_is_corrupt_metadata() {
    // Was: "range start is greater than range end in BTreeMap" on the first
    // scan of the block.
    let mut state = newest_state();
    let b = &mut state.streams[0].blocks[0];
    (b.rowid_min, b.rowid_max) = (b.rowid_max, b.rowid_min - 1);
    let res = reopen(with_state(&state));
    assert!(
        matches!(res, Err(EngineError::CorruptMetadata(_))),
        "{:?}",
        res.err()
    );
    // Unchanged, the same image opens.
    reopen(with_state(&newest_state())).expect("opens");
}

#[test]
fn an_index_entry_past_the_end_of_any_disk_is_corrupt_metadata() {
    // Was: "attempt to add with overflow" in offset + length on open.
    let mut state = newest_state();
    state.streams[0].blocks[0].length = u64::MAX;
    let bytes = state.encode();
    assert!(matches!(
        MetaState::decode(&bytes),
        Err(EngineError::CorruptMetadata(_))
    ));
    let res = reopen(with_state(&state));
    assert!(
        matches!(res, Err(EngineError::CorruptMetadata(_))),
        "{:?}",
        res.err()
    );
}
