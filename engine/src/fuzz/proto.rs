//! The node protocol (`proto.rs`): request messages decoded from random or
//! mutated bytes, and every helper that turns a message field into an
//! engine value (IPC batches and schemas, segments, snapshots, predicates,
//! which are then evaluated on every column type and tested against zone
//! maps) returns a value or a typed error, never panics.

use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;

use super::block::{to_batch, user_batch};
use super::{check, mutate, mutations};
use crate::block::ZoneMap;
use crate::predicate::Predicate;
use crate::proto::{self, pb};
use crate::store::{SegmentKind, Snapshot};
use crate::EngineError;

fn literal() -> impl Strategy<Value = pb::Literal> {
    use pb::literal::Value;
    let value = prop_oneof![
        any::<bool>().prop_map(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), -3..3i64].prop_map(Value::Int),
        any::<u64>().prop_map(Value::Uint),
        any::<f64>().prop_map(Value::Float),
        ".{0,12}".prop_map(Value::Utf8),
        any::<i32>().prop_map(Value::Date32),
        vec(any::<u8>(), 0..20).prop_map(Value::Decimal128),
        any::<i128>().prop_map(|v| Value::Decimal128(v.to_le_bytes().to_vec())),
        (-10i128.pow(12)..10i128.pow(12)).prop_map(|v| Value::Decimal128(v.to_le_bytes().to_vec())),
        any::<i64>().prop_map(Value::TimestampMicros),
    ];
    (
        proptest::option::weighted(0.95, value),
        prop_oneof![0..40u32, any::<u32>()],
        prop_oneof![-40..40i32, any::<i32>()],
    )
        .prop_map(|(value, precision, scale)| pb::Literal {
            value,
            precision,
            scale,
        })
}

fn column_index() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 0..8u32, 1 => any::<u32>()]
}

fn predicate() -> impl Strategy<Value = pb::Predicate> {
    use pb::predicate::Kind;
    let leaf = prop_oneof![
        (column_index(), 0..8i32, proptest::option::of(literal()))
            .prop_map(|(column, op, value)| { Kind::Compare(pb::Compare { column, op, value }) }),
        column_index().prop_map(Kind::IsNull),
        column_index().prop_map(Kind::IsNotNull),
        (column_index(), vec(literal(), 0..40), any::<bool>()).prop_map(
            |(column, values, negated)| Kind::InList(pb::InList {
                column,
                values,
                negated
            })
        ),
        (column_index(), vec(any::<i64>(), 0..40), any::<bool>()).prop_map(
            |(column, ints, negated)| Kind::InList(pb::InList {
                column,
                values: ints
                    .into_iter()
                    .map(|v| pb::Literal {
                        value: Some(pb::literal::Value::Int(v)),
                        ..Default::default()
                    })
                    .collect(),
                negated
            })
        ),
    ]
    .prop_map(|k| pb::Predicate { kind: Some(k) });
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|items| Kind::And(pb::PredicateList { items })),
            vec(inner.clone(), 0..4).prop_map(|items| Kind::Or(pb::PredicateList { items })),
            inner.prop_map(|p| Kind::Not(Box::new(p))),
            Just(pb::Predicate { kind: None }).prop_map(|p| Kind::Not(Box::new(p))),
        ]
        .prop_map(|k| pb::Predicate { kind: Some(k) })
    })
}

fn scan_request() -> impl Strategy<Value = pb::ScanRequest> {
    (
        any::<u64>(),
        vec(
            (any::<u32>(), prop_oneof![0..4i32, any::<i32>()])
                .prop_map(|(slice, segment)| pb::SliceScan { slice, segment }),
            0..4,
        ),
        vec(column_index(), 0..4),
        vec(predicate(), 0..3),
        proptest::option::of(
            (any::<u64>(), vec(any::<u64>(), 0..8), any::<u64>())
                .prop_map(|(xmax, xip, own)| pb::Snapshot { xmax, xip, own }),
        ),
    )
        .prop_map(
            |(table, slices, projection, filters, snapshot)| pb::ScanRequest {
                epoch: 1,
                table,
                slices,
                projection,
                all_columns: false,
                filters,
                include_hidden: false,
                snapshot,
                ..Default::default()
            },
        )
}

/// What the node does with a scan request's fields before it reads a block.
fn use_scan_request(
    req: &pb::ScanRequest,
    cols: &[super::block::Column],
) -> Result<(), TestCaseError> {
    for s in &req.slices {
        let seg = proto::segment_from_i32(s.segment);
        prop_assert_eq!(
            seg.is_ok(),
            (0..3).contains(&s.segment),
            "segment {}",
            s.segment
        );
    }
    if let Some(s) = &req.snapshot {
        let snap = Snapshot::from(s);
        prop_assert!(snap.xip.windows(2).all(|w| w[0] <= w[1]));
    }
    let batch = to_batch(cols);
    let zones: Vec<ZoneMap> = batch
        .columns()
        .iter()
        .map(|c| ZoneMap::compute(c.as_ref()))
        .collect();
    for f in &req.filters {
        let p = match Predicate::try_from(f) {
            Ok(p) => p.prepared(),
            Err(EngineError::InvalidRequest(_)) => continue,
            Err(e) => return Err(TestCaseError::fail(format!("untyped error: {e}"))),
        };
        // Zone maps are tested before the block is read, then the rows.
        let may = p.may_match(&zones);
        match p.evaluate(&batch) {
            Ok(sel) => {
                prop_assert_eq!(sel.len(), batch.num_rows());
                // Pruning must never drop a block with a selected row.
                if sel.true_count() > 0 {
                    prop_assert!(may, "zone maps pruned a block {:?} selects rows of", p);
                }
            }
            Err(EngineError::InvalidRequest(_) | EngineError::Arrow(_)) => {}
            Err(e) => return Err(TestCaseError::fail(format!("untyped error: {e}"))),
        }
        let _ = p.negate().evaluate(&batch);
    }
    Ok(())
}

#[test]
fn scan_requests_decode_and_apply_or_fail_typed() {
    check(
        "scan_requests_decode_and_apply_or_fail_typed",
        256,
        (scan_request(), user_batch(30), mutations()),
        |(req, cols, ms)| {
            let bytes = req.encode_to_vec();
            let back = pb::ScanRequest::decode(bytes.as_slice())
                .map_err(|e| TestCaseError::fail(format!("decode: {e}")))?;
            prop_assert_eq!(&back, &req);
            use_scan_request(&req, &cols)?;
            // The same request with its bytes mutated, as a ticket.
            if let Ok(req) = pb::ScanRequest::decode(mutate(&bytes, &ms).as_slice()) {
                use_scan_request(&req, &cols)?;
            }
            Ok(())
        },
    );
}

/// Every message a node server accepts, decoded from the same bytes.
fn decode_every_message(bytes: &[u8]) {
    let b = bytes;
    let _ = pb::InstallMapRequest::decode(b);
    let _ = pb::CreateTableRequest::decode(b);
    let _ = pb::DropTableRequest::decode(b);
    let _ = pb::WriteRequest::decode(b);
    let _ = pb::DeleteRequest::decode(b);
    let _ = pb::AdoptRequest::decode(b);
    let _ = pb::TxnRequest::decode(b);
    let _ = pb::MirrorWriteRequest::decode(b);
    let _ = pb::MirrorPrepareRequest::decode(b);
    let _ = pb::GroomRequest::decode(b);
    let _ = pb::ChecksumRequest::decode(b);
    let _ = pb::StatusRequest::decode(b);
    let _ = pb::CopySliceRequest::decode(b);
    let _ = pb::ExportSliceRequest::decode(b);
    let _ = pb::SliceCopyChunk::decode(b);
    let _ = pb::ScanRequest::decode(b);
    let _ = pb::StreamTag::decode(b);
}

/// An IPC stream must give batches of its own schema or a typed error.
fn ipc_or_typed(bytes: &[u8]) -> Result<(), TestCaseError> {
    match proto::ipc_to_batches(bytes) {
        Ok((schema, batches)) => {
            for b in &batches {
                prop_assert_eq!(b.schema().fields().len(), schema.fields().len());
            }
        }
        Err(EngineError::Arrow(_) | EngineError::InvalidRequest(_)) => {}
        Err(e) => return Err(TestCaseError::fail(format!("untyped error: {e}"))),
    }
    match proto::schema_from_bytes(bytes) {
        Ok(_) | Err(EngineError::Arrow(_) | EngineError::InvalidRequest(_)) => Ok(()),
        Err(e) => Err(TestCaseError::fail(format!("untyped error: {e}"))),
    }
}

#[test]
fn write_requests_round_trip_and_mutated_ones_fail_typed() {
    check(
        "write_requests_round_trip_and_mutated_ones_fail_typed",
        256,
        (user_batch(40), mutations(), vec(any::<u8>(), 0..300)),
        |(cols, ms, random)| {
            let batch = to_batch(&cols);
            let schema = batch.schema();
            let ipc = proto::batches_to_ipc(&schema, std::slice::from_ref(&batch))
                .map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
            let req = pb::WriteRequest {
                epoch: 3,
                xid: 4,
                table: 5,
                slice: 6,
                segment: pb::Segment::Mirror as i32,
                batches: ipc.clone().into(),
                request_id: 7,
            };
            let wire = req.encode_to_vec();
            let back = pb::WriteRequest::decode(wire.as_slice())
                .map_err(|e| TestCaseError::fail(format!("decode: {e}")))?;
            let (s2, batches) = proto::ipc_to_batches(&back.batches)
                .map_err(|e| TestCaseError::fail(format!("ipc: {e}")))?;
            prop_assert_eq!(&s2, &schema);
            prop_assert_eq!(&batches, &vec![batch]);
            prop_assert_eq!(
                proto::segment_from_i32(back.segment).ok(),
                Some(SegmentKind::Mirror)
            );
            let schema_bytes = proto::schema_to_bytes(&schema)
                .map_err(|e| TestCaseError::fail(format!("schema: {e}")))?;
            let s3 = proto::schema_from_bytes(&schema_bytes)
                .map_err(|e| TestCaseError::fail(format!("schema back: {e}")))?;
            prop_assert_eq!(&s3, &schema);
            ipc_or_typed(&mutate(&ipc, &ms))?;
            ipc_or_typed(&mutate(&schema_bytes, &ms))?;
            ipc_or_typed(&random)?;
            decode_every_message(&mutate(&wire, &ms));
            decode_every_message(&random);
            Ok(())
        },
    );
}

#[test]
fn segments_from_the_wire() {
    check("segments_from_the_wire", 512, any::<i32>(), |v| {
        let seg = proto::segment_from_i32(v);
        match v {
            0 => prop_assert_eq!(seg.ok(), Some(SegmentKind::Primary)),
            1 => prop_assert_eq!(seg.ok(), Some(SegmentKind::Mirror)),
            2 => prop_assert_eq!(seg.ok(), Some(SegmentKind::Temp)),
            _ => prop_assert!(matches!(seg, Err(EngineError::InvalidRequest(_)))),
        }
        Ok(())
    });
}

// Regressions: inputs the properties above found, each once a panic or an
// unbounded allocation in Arrow's IPC reader.

#[test]
fn every_bit_flip_and_huge_word_of_an_ipc_stream_is_an_invalid_request() {
    // Was: panics ("Type NONE not supported", "the offset of the new Buffer
    // cannot exceed the existing length") and body lengths allocated before
    // they were read, for a write request's rows or a table's schema.
    let cols = vec![
        super::block::Column::Utf8(vec![Some("a".into()), None]),
        super::block::Column::I64(vec![Some(7), Some(-1)]),
    ];
    let batch = to_batch(&cols);
    let ipc = proto::batches_to_ipc(&batch.schema(), std::slice::from_ref(&batch)).expect("encode");
    let schema = proto::schema_to_bytes(&batch.schema()).expect("schema");
    for input in [&ipc, &schema] {
        for at in 0..input.len() {
            let mut variants: Vec<Vec<u8>> = (0..8)
                .map(|bit| {
                    let mut b = input.to_vec();
                    b[at] ^= 1 << bit;
                    b
                })
                .collect();
            if at + 8 <= input.len() {
                for word in [u64::MAX, 1 << 40, i64::MAX as u64, 1 << 31] {
                    let mut b = input.to_vec();
                    b[at..at + 8].copy_from_slice(&word.to_le_bytes());
                    variants.push(b);
                }
            }
            for v in variants {
                for res in [
                    proto::ipc_to_batches(&v).map(|_| ()),
                    proto::schema_from_bytes(&v).map(|_| ()),
                ] {
                    if let Err(e) = res {
                        assert!(
                            matches!(e, EngineError::InvalidRequest(_)),
                            "byte {at}: {e}"
                        );
                    }
                }
            }
        }
    }
}
