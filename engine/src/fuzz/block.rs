//! Blocks and delete runs (`block.rs`): a valid one round-trips; one with a
//! byte changed fails its checksum; one rewritten under a recomputed CRC (a
//! buggy or foreign writer) is decoded or refused as corrupt, never panics
//! and never allocates what a corrupt length asks for.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use proptest::prelude::*;
use proptest::sample::subsequence;

use super::{check, mutate, mutations};
use crate::block::{
    decode_block, decode_delete_run, decode_zones, encode_block, encode_delete_run,
    encode_new_rows, inspect_block, stored_schema, verify_block, BlockLocation, Compression,
    BLOCK_HEADER_LEN,
};
use crate::EngineError;

/// One user column's values, of one of the types tables use.
#[derive(Debug, Clone)]
pub(super) enum Column {
    I64(Vec<Option<i64>>),
    I32(Vec<Option<i32>>),
    F64(Vec<Option<f64>>),
    Utf8(Vec<Option<String>>),
    Bool(Vec<Option<bool>>),
    Date(Vec<Option<i32>>),
    Dec(Vec<Option<i128>>),
    Ts(Vec<Option<i64>>),
}

impl Column {
    pub(super) fn field(&self, i: usize) -> Field {
        let dt = match self {
            Column::I64(_) => DataType::Int64,
            Column::I32(_) => DataType::Int32,
            Column::F64(_) => DataType::Float64,
            Column::Utf8(_) => DataType::Utf8,
            Column::Bool(_) => DataType::Boolean,
            Column::Date(_) => DataType::Date32,
            Column::Dec(_) => DataType::Decimal128(12, 2),
            Column::Ts(_) => DataType::Timestamp(TimeUnit::Microsecond, None),
        };
        Field::new(format!("c{i}"), dt, true)
    }

    pub(super) fn array(&self) -> ArrayRef {
        match self {
            Column::I64(v) => Arc::new(Int64Array::from(v.clone())),
            Column::I32(v) => Arc::new(Int32Array::from(v.clone())),
            Column::F64(v) => Arc::new(Float64Array::from(v.clone())),
            Column::Utf8(v) => Arc::new(StringArray::from(v.clone())),
            Column::Bool(v) => Arc::new(BooleanArray::from(v.clone())),
            Column::Date(v) => Arc::new(Date32Array::from(v.clone())),
            Column::Dec(v) => Arc::new(
                Decimal128Array::from(v.clone())
                    .with_precision_and_scale(12, 2)
                    .expect("12, 2 is a valid decimal type"),
            ),
            Column::Ts(v) => Arc::new(TimestampMicrosecondArray::from(v.clone())),
        }
    }
}

/// A column of `n` values. Floats are never NaN: Arrow's array equality
/// says NaN != NaN, and the round trip compares arrays.
pub(super) fn column(n: usize) -> impl Strategy<Value = Column> {
    use proptest::collection::vec;
    use proptest::option::of;
    let float = any::<f64>().prop_map(|f| if f.is_nan() { 0.5 } else { f });
    prop_oneof![
        vec(of(any::<i64>()), n).prop_map(Column::I64),
        vec(of(any::<i32>()), n).prop_map(Column::I32),
        vec(of(float), n).prop_map(Column::F64),
        vec(of(".{0,80}"), n).prop_map(Column::Utf8),
        vec(of(any::<bool>()), n).prop_map(Column::Bool),
        vec(of(-1_000_000..1_000_000i32), n).prop_map(Column::Date),
        vec(of(-999_999_999_999..=999_999_999_999i128), n).prop_map(Column::Dec),
        vec(of(any::<i64>()), n).prop_map(Column::Ts),
    ]
}

/// A user batch of 1..=`max_rows` rows and 1..=5 columns.
pub(super) fn user_batch(max_rows: usize) -> impl Strategy<Value = Vec<Column>> {
    (1..=max_rows).prop_flat_map(|n| proptest::collection::vec(column(n), 1..=5))
}

pub(super) fn to_batch(cols: &[Column]) -> RecordBatch {
    let fields: Vec<Field> = cols.iter().enumerate().map(|(i, c)| c.field(i)).collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        cols.iter().map(Column::array).collect(),
    )
    .expect("columns of one length")
}

/// A valid block and the batch it holds (user columns and hidden ones).
#[derive(Debug, Clone)]
struct BlockCase {
    cols: Vec<Column>,
    codec: u8,
    /// New rows (implicit hidden columns) from this rowid, or explicit ones.
    implicit: Option<(i64, i64)>,
    explicit_hidden: Vec<(i64, i64)>,
}

fn block_case() -> impl Strategy<Value = BlockCase> {
    user_batch(200).prop_flat_map(|cols| {
        let n = match &cols[0] {
            Column::I64(v) | Column::Ts(v) => v.len(),
            Column::I32(v) | Column::Date(v) => v.len(),
            Column::F64(v) => v.len(),
            Column::Utf8(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Dec(v) => v.len(),
        };
        (
            Just(cols),
            0..3u8,
            proptest::option::of((0..i64::MAX / 2, 1..i64::MAX)),
            proptest::collection::vec((any::<i64>(), 0..i64::MAX), n),
        )
            .prop_map(|(cols, codec, implicit, explicit_hidden)| BlockCase {
                cols,
                codec,
                implicit,
                explicit_hidden,
            })
    })
}

const TABLE: u64 = 5;
const SLICE: u32 = 2;
const SEQ: u64 = 9;

impl BlockCase {
    /// The encoded block and the stored batch it must decode to.
    fn encode(&self) -> (Vec<u8>, RecordBatch) {
        let user = to_batch(&self.cols);
        let n = user.num_rows();
        let codec = Compression::from_code(self.codec).expect("codes 0..3");
        let hidden: [Vec<i64>; 3] = match self.implicit {
            Some((rowid0, xid)) => [
                (rowid0..rowid0 + n as i64).collect(),
                vec![xid; n],
                vec![0; n],
            ],
            None => [
                self.explicit_hidden.iter().map(|h| h.0).collect(),
                self.explicit_hidden.iter().map(|h| h.1).collect(),
                vec![0; n],
            ],
        };
        let mut cols = user.columns().to_vec();
        cols.extend(
            hidden
                .into_iter()
                .map(|v| Arc::new(Int64Array::from(v)) as ArrayRef),
        );
        let stored =
            RecordBatch::try_new(stored_schema(&user.schema()), cols).expect("stored schema fits");
        let enc = match self.implicit {
            Some((rowid0, xid)) => encode_new_rows(TABLE, SLICE, SEQ, &user, rowid0, xid, codec),
            None => encode_block(TABLE, SLICE, SEQ, &stored, codec),
        }
        .expect("a valid batch encodes");
        (enc.bytes, stored)
    }
}

fn loc(rows: u64) -> BlockLocation {
    BlockLocation {
        disk: 0,
        offset: 0,
        table: TABLE,
        slice: SLICE,
        seq: SEQ,
        rows,
    }
}

fn is_corrupt(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::ChecksumMismatch { .. } | EngineError::CorruptBlock { .. }
    )
}

#[test]
fn valid_blocks_round_trip() {
    let strategy = block_case().prop_flat_map(|case| {
        let ncols = case.cols.len() + 3;
        (
            Just(case),
            subsequence((0..ncols).collect::<Vec<_>>(), 0..=ncols),
        )
    });
    check(
        "valid_blocks_round_trip",
        64,
        strategy,
        |(case, projection)| {
            let (bytes, stored) = case.encode();
            let rows = stored.num_rows() as u64;
            let out = decode_block(&bytes, &loc(rows), None)
                .map_err(|e| TestCaseError::fail(format!("decode: {e}")))?;
            prop_assert_eq!(&out, &stored);
            let proj = decode_block(&bytes, &loc(rows), Some(projection.clone()))
                .map_err(|e| TestCaseError::fail(format!("decode {projection:?}: {e}")))?;
            prop_assert_eq!(proj.num_rows() as u64, rows);
            prop_assert_eq!(proj.num_columns(), projection.len());
            for (i, &c) in projection.iter().enumerate() {
                prop_assert_eq!(proj.column(i), stored.column(c), "column {}", c);
            }
            let (header, zone_bytes) = inspect_block(&bytes, TABLE, SLICE)
                .map_err(|e| TestCaseError::fail(format!("inspect: {e}")))?;
            prop_assert_eq!(header.rows, rows);
            let zones = decode_zones(&zone_bytes, &stored.schema(), rows)
                .map_err(|e| TestCaseError::fail(format!("zones: {e}")))?;
            prop_assert_eq!(zones.len(), stored.num_columns());
            // Another index entry for the same bytes is refused.
            prop_assert!(verify_block(&bytes, &loc(rows + 1)).is_err());
            Ok(())
        },
    );
}

#[test]
fn changed_blocks_fail_their_checksum() {
    check(
        "changed_blocks_fail_their_checksum",
        128,
        (block_case(), mutations()),
        |(case, ms)| {
            let (bytes, stored) = case.encode();
            let bad = mutate(&bytes, &ms);
            if bad == bytes {
                return Ok(());
            }
            let rows = stored.num_rows() as u64;
            match decode_block(&bad, &loc(rows), None) {
                Ok(_) => Err(TestCaseError::fail("a changed block decoded")),
                Err(e) if is_corrupt(&e) => Ok(()),
                Err(e) => Err(TestCaseError::fail(format!("untyped error: {e}"))),
            }?;
            prop_assert!(inspect_block(&bad, TABLE, SLICE).is_err());
            Ok(())
        },
    );
}

/// What a writer with a bug could store: a header field or body bytes
/// changed, the CRC recomputed.
#[derive(Debug, Clone)]
enum Rewrite {
    /// Header field at byte `at` (8 bytes wide unless `narrow`) set to `value`.
    Field { at: usize, value: u64 },
    /// The rows of an implicit block, with rowids that agree.
    ImplicitRows { rows: u64 },
    /// Bytes of the body changed.
    Body(Vec<super::Mutation>),
}

/// Header fields and their widths (docs/disk-format.md).
const FIELDS: &[(usize, usize)] = &[
    (4, 2),
    (6, 1),
    (7, 1),
    (8, 8),
    (16, 4),
    (20, 4),
    (24, 8),
    (32, 8),
    (40, 8),
    (48, 8),
    (56, 8),
    (64, 8),
    (72, 4),
    (80, 8),
];

fn rewrite() -> impl Strategy<Value = Rewrite> {
    let value = prop_oneof![
        any::<u64>(),
        0..300u64,
        Just(u64::MAX),
        Just(u32::MAX as u64),
        (0..64u32).prop_map(|s| 1u64 << s),
    ];
    prop_oneof![
        (0..FIELDS.len(), value.clone()).prop_map(|(f, value)| Rewrite::Field {
            at: FIELDS[f].0,
            value
        }),
        value.prop_map(|rows| Rewrite::ImplicitRows { rows }),
        mutations().prop_map(Rewrite::Body),
    ]
}

fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

fn put(body: &mut [u8], at: usize, value: u64) {
    let width = FIELDS
        .iter()
        .find(|f| f.0 == at)
        .map_or(8, |f| f.1)
        .min(body.len().saturating_sub(at));
    body[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

fn header_u64(body: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&body[at..at + 8]);
    u64::from_le_bytes(b)
}

#[test]
fn rewritten_blocks_decode_or_fail_typed() {
    let strategy = (block_case(), rewrite()).prop_flat_map(|(case, rw)| {
        let ncols = case.cols.len() + 3;
        (
            Just(case),
            Just(rw),
            proptest::option::of(subsequence((0..ncols).collect::<Vec<_>>(), 0..=ncols)),
        )
    });
    check(
        "rewritten_blocks_decode_or_fail_typed",
        256,
        strategy,
        |(case, rw, projection)| {
            let (bytes, _) = case.encode();
            let mut body = bytes[..bytes.len() - 4].to_vec();
            match &rw {
                Rewrite::Field { at, value } => put(&mut body, *at, *value),
                Rewrite::ImplicitRows { rows } => {
                    body[7] |= crate::block::FLAG_IMPLICIT_HIDDEN;
                    put(&mut body, 32, *rows);
                    let lo = header_u64(&body, 40) as i64;
                    put(
                        &mut body,
                        48,
                        lo.wrapping_add((*rows as i64).wrapping_sub(1)) as u64,
                    );
                    let x = header_u64(&body, 56);
                    put(&mut body, 64, x);
                }
                Rewrite::Body(ms) => body = mutate(&body, ms),
            }
            let bad = with_crc(body.clone());
            // The index agrees with the header: only the block itself is wrong.
            let rows = if body.len() >= BLOCK_HEADER_LEN {
                header_u64(&body, 32)
            } else {
                0
            };
            match decode_block(&bad, &loc(rows), projection) {
                Ok(b) => prop_assert_eq!(b.num_rows() as u64, rows),
                Err(e) if is_corrupt(&e) || matches!(e, EngineError::Arrow(_)) => {}
                Err(e) => return Err(TestCaseError::fail(format!("untyped error: {e}"))),
            }
            let _ = inspect_block(&bad, TABLE, SLICE);
            Ok(())
        },
    );
}

#[test]
fn random_bytes_are_not_blocks_or_zones() {
    let strategy = (
        proptest::collection::vec(any::<u8>(), 0..512),
        user_batch(4),
    );
    check(
        "random_bytes_are_not_blocks_or_zones",
        256,
        strategy,
        |(bytes, cols)| {
            prop_assert!(decode_block(&bytes, &loc(1), None).is_err());
            // A valid CRC over random bytes still needs a valid header.
            prop_assert!(decode_block(&with_crc(bytes.clone()), &loc(1), None).is_err());
            let schema = stored_schema(&to_batch(&cols).schema());
            let _ = decode_zones(&bytes, &schema, 4);
            Ok(())
        },
    );
}

#[test]
fn delete_runs_round_trip_and_refuse_changes() {
    let strategy = (
        proptest::collection::vec((any::<i64>(), any::<u64>()), 0..100),
        mutations(),
        any::<u64>(),
    );
    check(
        "delete_runs_round_trip_and_refuse_changes",
        256,
        strategy,
        |(records, ms, count)| {
            let bytes = encode_delete_run(TABLE, SLICE, &records);
            let back = decode_delete_run(&bytes, 0, 0, TABLE, SLICE)
                .map_err(|e| TestCaseError::fail(format!("decode: {e}")))?;
            prop_assert_eq!(&back, &records);
            prop_assert!(decode_delete_run(&bytes, 0, 0, TABLE, SLICE + 1).is_err());
            let bad = mutate(&bytes, &ms);
            if bad != bytes {
                let e = decode_delete_run(&bad, 0, 0, TABLE, SLICE);
                prop_assert!(
                    matches!(&e, Err(e) if is_corrupt(e)),
                    "changed run gave {:?}",
                    e.map(|r| r.len())
                );
            }
            // A count that disagrees with the length, under a valid CRC.
            let mut body = bytes[..bytes.len() - 4].to_vec();
            body[8..16].copy_from_slice(&count.to_le_bytes());
            let res = decode_delete_run(&with_crc(body), 0, 0, TABLE, SLICE);
            if count != records.len() as u64 {
                prop_assert!(matches!(&res, Err(e) if is_corrupt(e)));
            }
            Ok(())
        },
    );
}

// Regressions: inputs the properties above found, each once a panic or an
// unbounded allocation.

/// A valid two-column block (one user column) with implicit hidden columns.
fn small_block() -> Vec<u8> {
    let case = BlockCase {
        cols: vec![Column::I64(vec![Some(1), None, Some(3)])],
        codec: 1,
        implicit: Some((10, 4)),
        explicit_hidden: vec![],
    };
    case.encode().0
}

fn rewritten(at: usize, value: u64) -> Vec<u8> {
    let bytes = small_block();
    let mut body = bytes[..bytes.len() - 4].to_vec();
    put(&mut body, at, value);
    with_crc(body)
}

#[test]
fn a_payload_length_that_overflows_is_corrupt() {
    // Was: "attempt to add with overflow" adding up the header sizes.
    let bad = rewritten(80, u64::MAX);
    let e = decode_block(&bad, &loc(3), None).expect_err("corrupt");
    assert!(is_corrupt(&e), "{e}");
}

#[test]
fn a_row_count_past_the_limit_is_corrupt_before_anything_is_allocated() {
    // Was: "capacity overflow" (or an allocation of terabytes) building the
    // implicit hidden columns from the header's row count.
    let rows = 1u64 << 40;
    let bytes = small_block();
    let mut body = bytes[..bytes.len() - 4].to_vec();
    put(&mut body, 32, rows);
    put(&mut body, 40, 0);
    put(&mut body, 48, rows - 1);
    let bad = with_crc(body);
    let e = decode_block(&bad, &loc(rows), Some(vec![1, 2])).expect_err("corrupt");
    assert!(is_corrupt(&e), "{e}");
    // The most rows a block holds still decode (the header is all it takes).
    let ok = crate::block::MAX_BLOCK_ROWS;
    let mut body = bytes[..bytes.len() - 4].to_vec();
    put(&mut body, 32, ok);
    put(&mut body, 40, 0);
    put(&mut body, 48, ok - 1);
    let b = decode_block(&with_crc(body), &loc(ok), Some(vec![2])).expect("within the limit");
    assert_eq!(b.num_rows() as u64, ok);
}

#[test]
fn a_column_count_past_the_limit_is_corrupt() {
    // Was: a projection of u32::MAX columns collected (28 GB) for a block
    // read whole.
    let e = decode_block(&rewritten(20, u32::MAX as u64), &loc(3), None).expect_err("corrupt");
    assert!(is_corrupt(&e), "{e}");
}

#[test]
fn a_delete_run_count_that_overflows_is_corrupt() {
    // Was: "attempt to add with overflow" computing the run's length.
    let bytes = encode_delete_run(TABLE, SLICE, &[]);
    let mut body = bytes[..bytes.len() - 4].to_vec();
    body[8..16].copy_from_slice(&((1u64 << 60) - 2).to_le_bytes());
    let e = decode_delete_run(&with_crc(body), 0, 0, TABLE, SLICE).expect_err("corrupt");
    assert!(is_corrupt(&e), "{e}");
}

#[test]
fn every_bit_flip_and_huge_word_in_a_payload_under_a_valid_crc_is_handled() {
    // Was: Arrow's IPC reader slicing a buffer past the body ("the offset
    // of the new Buffer cannot exceed the existing length") and allocating
    // a body length it had not read.
    let bytes = small_block();
    let body = &bytes[..bytes.len() - 4];
    let z = u32::from_le_bytes(body[72..76].try_into().expect("4 bytes")) as usize;
    let start = BLOCK_HEADER_LEN + z;
    for at in start..body.len() {
        let mut variants: Vec<Vec<u8>> = (0..8)
            .map(|bit| {
                let mut b = body.to_vec();
                b[at] ^= 1 << bit;
                b
            })
            .collect();
        if at + 8 <= body.len() {
            for word in [u64::MAX, 1 << 40, i64::MAX as u64, 1 << 31] {
                let mut b = body.to_vec();
                b[at..at + 8].copy_from_slice(&word.to_le_bytes());
                variants.push(b);
            }
        }
        for v in variants {
            for projection in [None, Some(vec![0]), Some(vec![1])] {
                match decode_block(&with_crc(v.clone()), &loc(3), projection) {
                    Ok(b) => assert_eq!(b.num_rows(), 3),
                    Err(e) => assert!(is_corrupt(&e), "byte {at}: {e}"),
                }
            }
        }
    }
}
