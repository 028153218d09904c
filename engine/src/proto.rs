//! The node protocol (`proto/node.proto`, specified in docs/node-protocol.md):
//! generated gRPC types plus conversions to and from engine types.
//!
//! This module is the only part of the engine a client (the coordinator) needs.
//! It must never reach into the store or the server.

#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("slicedb.node.v9");
}

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use prost::Message;
use std::sync::Arc;

use crate::predicate::{CmpOp, Literal, Predicate};
use crate::store::SegmentKind;
use crate::{EngineError, Result};

/// Largest gRPC message either side accepts (a larger one is refused with
/// `OutOfRange` before it is read; the connection and the server go on).
/// Writes are split well below it ([`WRITE_SPLIT_BYTES`]).
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// About the most bytes of rows one write request carries: a loader splits
/// a larger slice buffer ([`split_batch`]), so even rows of 64 MiB each
/// keep writes far below [`MAX_MESSAGE_BYTES`].
pub const WRITE_SPLIT_BYTES: usize = 64 * 1024 * 1024;

/// Bytes the rows of `batch` take (a slice counts only its own rows).
pub fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}

/// `batch` cut into runs of rows of about `max_bytes` at most each (by the
/// average row; a single row larger than that goes alone). Zero-copy.
pub fn split_batch(batch: RecordBatch, max_bytes: usize) -> Vec<RecordBatch> {
    let size = batch_bytes(&batch);
    let rows = batch.num_rows();
    if size <= max_bytes || rows <= 1 {
        return vec![batch];
    }
    let per = rows.div_ceil(size.div_ceil(max_bytes.max(1)).min(rows));
    (0..rows)
        .step_by(per)
        .map(|start| batch.slice(start, per.min(rows - start)))
        .collect()
}

/// HTTP/2 receive windows of a node's server. Writes and mirror forwards
/// are megabytes each; with hyper's 1 MiB defaults every request waits for
/// WINDOW_UPDATEs several times over. Bounded memory per connection.
pub const RECEIVE_STREAM_WINDOW: u32 = 16 << 20;
pub const RECEIVE_CONNECTION_WINDOW: u32 = 64 << 20;
/// Largest HTTP/2 frame a node or the coordinator accepts (the default is
/// 16 KiB: a 4 MiB write would be 256 frames, each handled on its own).
/// A block of a slice copy (about 1.2 MB) fits in one.
pub const MAX_FRAME_BYTES: u32 = 4 << 20;

/// HTTP/2 keepalive of every node connection, both ways: a ping after
/// this long without traffic (idle or not)...
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// ...unanswered this long closes the connection, and every call on it
/// fails (retryable): a peer that hangs (SIGSTOP, a dead host whose TCP
/// stays open) cannot hold a call forever. Pings are answered on the
/// service threads, apart from query execution, so load does not delay them.
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

pub use pb::ErrorKind;

impl From<SegmentKind> for pb::Segment {
    fn from(s: SegmentKind) -> Self {
        match s {
            SegmentKind::Primary => pb::Segment::Primary,
            SegmentKind::Mirror => pb::Segment::Mirror,
            SegmentKind::Temp => pb::Segment::Temp,
        }
    }
}

impl From<pb::Segment> for SegmentKind {
    fn from(s: pb::Segment) -> Self {
        match s {
            pb::Segment::Primary => SegmentKind::Primary,
            pb::Segment::Mirror => SegmentKind::Mirror,
            pb::Segment::Temp => SegmentKind::Temp,
        }
    }
}

/// Decode a segment number received from the network.
pub fn segment_from_i32(v: i32) -> Result<SegmentKind> {
    pb::Segment::try_from(v)
        .map(SegmentKind::from)
        .map_err(|_| EngineError::InvalidRequest(format!("unknown segment {v}")))
}

/// Serialize a schema as an Arrow IPC stream holding no batches.
pub fn schema_to_bytes(schema: &Schema) -> Result<Vec<u8>> {
    batches_to_ipc(&Arc::new(schema.clone()), &[])
}

/// An Arrow IPC stream from the network that Arrow would misread (see
/// [`crate::ipc`]) or refuses: the request is invalid.
fn bad_ipc(e: impl std::fmt::Display) -> EngineError {
    EngineError::InvalidRequest(format!("bad Arrow IPC stream: {e}"))
}

/// Parse a schema written by [`schema_to_bytes`].
pub fn schema_from_bytes(bytes: &[u8]) -> Result<SchemaRef> {
    let (schema, _) = crate::ipc::read_stream(bytes, None).map_err(bad_ipc)?;
    Ok(schema)
}

/// Encode batches as one Arrow IPC stream (uncompressed: it is on loopback or
/// a LAN, and the node compresses into blocks itself).
pub fn batches_to_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    // Presized: growing a multi-megabyte Vec copies it several times over.
    let data: usize = batches.iter().map(batch_bytes).sum();
    let mut out = Vec::with_capacity(data + 4096);
    {
        let mut w =
            StreamWriter::try_new_with_options(&mut out, schema, IpcWriteOptions::default())?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(out)
}

/// Decode an Arrow IPC stream into its schema and batches.
pub fn ipc_to_batches(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let (schema, batches) = crate::ipc::read_stream(bytes, None).map_err(bad_ipc)?;
    Ok((schema, batches))
}

impl From<&Literal> for pb::Literal {
    fn from(l: &Literal) -> Self {
        use pb::literal::Value;
        let mut out = pb::Literal::default();
        out.value = Some(match l {
            Literal::Null => Value::Null(true),
            Literal::Bool(b) => Value::Bool(*b),
            Literal::Int(v) => Value::Int(*v),
            Literal::UInt(v) => Value::Uint(*v),
            Literal::Float(v) => Value::Float(*v),
            Literal::Utf8(s) => Value::Utf8(s.clone()),
            Literal::Date32(d) => Value::Date32(*d),
            Literal::Decimal128 {
                value,
                precision,
                scale,
            } => {
                out.precision = u32::from(*precision);
                out.scale = i32::from(*scale);
                Value::Decimal128(value.to_le_bytes().to_vec())
            }
            Literal::TimestampMicros(v) => Value::TimestampMicros(*v),
        });
        out
    }
}

impl TryFrom<&pb::Literal> for Literal {
    type Error = EngineError;
    fn try_from(l: &pb::Literal) -> Result<Self> {
        use pb::literal::Value;
        let bad = |what: &str| EngineError::InvalidRequest(format!("bad literal: {what}"));
        Ok(
            match l.value.as_ref().ok_or_else(|| bad("missing value"))? {
                Value::Null(_) => Literal::Null,
                Value::Bool(b) => Literal::Bool(*b),
                Value::Int(v) => Literal::Int(*v),
                Value::Uint(v) => Literal::UInt(*v),
                Value::Float(v) => Literal::Float(*v),
                Value::Utf8(s) => Literal::Utf8(s.clone()),
                Value::Date32(d) => Literal::Date32(*d),
                Value::Decimal128(bytes) => {
                    let arr: [u8; 16] = bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| bad("decimal128 needs 16 bytes"))?;
                    Literal::Decimal128 {
                        value: i128::from_le_bytes(arr),
                        precision: u8::try_from(l.precision).map_err(|_| bad("precision"))?,
                        scale: i8::try_from(l.scale).map_err(|_| bad("scale"))?,
                    }
                }
                Value::TimestampMicros(v) => Literal::TimestampMicros(*v),
            },
        )
    }
}

fn cmp_to_pb(op: CmpOp) -> pb::CmpOp {
    match op {
        CmpOp::Eq => pb::CmpOp::CmpEq,
        CmpOp::NotEq => pb::CmpOp::CmpNotEq,
        CmpOp::Lt => pb::CmpOp::CmpLt,
        CmpOp::LtEq => pb::CmpOp::CmpLtEq,
        CmpOp::Gt => pb::CmpOp::CmpGt,
        CmpOp::GtEq => pb::CmpOp::CmpGtEq,
    }
}

fn cmp_from_pb(op: i32) -> Result<CmpOp> {
    Ok(
        match pb::CmpOp::try_from(op)
            .map_err(|_| EngineError::InvalidRequest(format!("unknown comparison {op}")))?
        {
            pb::CmpOp::CmpEq => CmpOp::Eq,
            pb::CmpOp::CmpNotEq => CmpOp::NotEq,
            pb::CmpOp::CmpLt => CmpOp::Lt,
            pb::CmpOp::CmpLtEq => CmpOp::LtEq,
            pb::CmpOp::CmpGt => CmpOp::Gt,
            pb::CmpOp::CmpGtEq => CmpOp::GtEq,
        },
    )
}

impl From<&Predicate> for pb::Predicate {
    fn from(p: &Predicate) -> Self {
        use pb::predicate::Kind;
        let list = |items: &[Predicate]| pb::PredicateList {
            items: items.iter().map(pb::Predicate::from).collect(),
        };
        let kind = match p {
            Predicate::Compare { column, op, value } => Kind::Compare(pb::Compare {
                column: *column as u32,
                op: cmp_to_pb(*op) as i32,
                value: Some(value.into()),
            }),
            Predicate::And(items) => Kind::And(list(items)),
            Predicate::Or(items) => Kind::Or(list(items)),
            Predicate::Not(inner) => Kind::Not(Box::new(inner.as_ref().into())),
            Predicate::IsNull(c) => Kind::IsNull(*c as u32),
            Predicate::IsNotNull(c) => Kind::IsNotNull(*c as u32),
            Predicate::InList {
                column,
                values,
                negated,
            } => Kind::InList(pb::InList {
                column: *column as u32,
                values: values.iter().map(pb::Literal::from).collect(),
                negated: *negated,
            }),
            Predicate::IntSet(s) => Kind::InList(pb::InList {
                column: s.column as u32,
                values: s.values.iter().map(pb::Literal::from).collect(),
                negated: s.negated,
            }),
        };
        pb::Predicate { kind: Some(kind) }
    }
}

impl TryFrom<&pb::Predicate> for Predicate {
    type Error = EngineError;
    fn try_from(p: &pb::Predicate) -> Result<Self> {
        use pb::predicate::Kind;
        let list = |l: &pb::PredicateList| -> Result<Vec<Predicate>> {
            l.items.iter().map(Predicate::try_from).collect()
        };
        Ok(
            match p
                .kind
                .as_ref()
                .ok_or_else(|| EngineError::InvalidRequest("empty predicate".into()))?
            {
                Kind::Compare(c) => Predicate::Compare {
                    column: c.column as usize,
                    op: cmp_from_pb(c.op)?,
                    value: Literal::try_from(c.value.as_ref().ok_or_else(|| {
                        EngineError::InvalidRequest("comparison without a value".into())
                    })?)?,
                },
                Kind::And(l) => Predicate::And(list(l)?),
                Kind::Or(l) => Predicate::Or(list(l)?),
                Kind::Not(inner) => Predicate::Not(Box::new(Predicate::try_from(inner.as_ref())?)),
                Kind::IsNull(c) => Predicate::IsNull(*c as usize),
                Kind::IsNotNull(c) => Predicate::IsNotNull(*c as usize),
                Kind::InList(l) => Predicate::InList {
                    column: l.column as usize,
                    values: l
                        .values
                        .iter()
                        .map(Literal::try_from)
                        .collect::<Result<_>>()?,
                    negated: l.negated,
                },
            },
        )
    }
}

impl From<&crate::store::Snapshot> for pb::Snapshot {
    fn from(s: &crate::store::Snapshot) -> Self {
        pb::Snapshot {
            xmax: s.xmax,
            xip: s.xip.clone(),
            own: s.own.unwrap_or(0),
        }
    }
}

impl From<&pb::Snapshot> for crate::store::Snapshot {
    fn from(s: &pb::Snapshot) -> Self {
        let mut xip = s.xip.clone();
        xip.sort_unstable();
        crate::store::Snapshot {
            xmax: s.xmax,
            xip,
            own: (s.own != 0).then_some(s.own),
        }
    }
}

/// The kind of an engine error, as the node protocol carries it.
pub fn kind_of(err: &EngineError) -> ErrorKind {
    if err.is_out_of_space() {
        return ErrorKind::DiskFull;
    }
    match err {
        EngineError::StaleEpoch { .. } => ErrorKind::StaleEpoch,
        EngineError::SliceNotOwned { .. } => ErrorKind::SliceNotOwned,
        EngineError::ChecksumMismatch { .. } | EngineError::CorruptBlock { .. } => {
            ErrorKind::Checksum
        }
        EngineError::Unrepairable { .. } => ErrorKind::Unrepairable,
        EngineError::TableNotFound(_) => ErrorKind::TableNotFound,
        EngineError::SchemaMismatch { .. } | EngineError::InvalidRequest(_) => ErrorKind::Invalid,
        EngineError::SegmentFull { .. } | EngineError::MetadataFull { .. } => ErrorKind::DiskFull,
        EngineError::Io { .. } => ErrorKind::Io,
        EngineError::WriteConflict { .. } => ErrorKind::WriteConflict,
        EngineError::Query(_) => ErrorKind::Query,
        _ => ErrorKind::Internal,
    }
}

/// Turn an engine error into a gRPC status that keeps its kind: the code
/// says what gRPC clients in general should make of it, the details (an
/// [`pb::ErrorDetail`]) say what slicedb should.
pub fn status_from(err: &EngineError) -> tonic::Status {
    use tonic::Code;
    let code = match err {
        e if e.is_out_of_space() => Code::ResourceExhausted,
        EngineError::StaleEpoch { .. } | EngineError::SliceNotOwned { .. } => {
            Code::FailedPrecondition
        }
        EngineError::ChecksumMismatch { .. }
        | EngineError::CorruptBlock { .. }
        | EngineError::Unrepairable { .. } => Code::DataLoss,
        EngineError::TableNotFound(_) => Code::NotFound,
        EngineError::SchemaMismatch { .. } | EngineError::InvalidRequest(_) => {
            Code::InvalidArgument
        }
        EngineError::SegmentFull { .. } | EngineError::MetadataFull { .. } => {
            Code::ResourceExhausted
        }
        EngineError::WriteConflict { .. } => Code::Aborted,
        EngineError::Query(_) => Code::InvalidArgument,
        _ => Code::Internal,
    };
    let detail = pb::ErrorDetail {
        kind: kind_of(err) as i32,
    };
    tonic::Status::with_details(code, err.to_string(), detail.encode_to_vec().into())
}

/// The kind a node put in `status` ([`ErrorKind::Unspecified`] when it
/// carries none, or one this build does not know: a transport failure, a
/// call that never reached a node's code, a newer node).
pub fn error_kind(status: &tonic::Status) -> ErrorKind {
    pb::ErrorDetail::decode(status.details())
        .ok()
        .and_then(|d| ErrorKind::try_from(d.kind).ok())
        .unwrap_or(ErrorKind::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wide rows are cut so each write stays near the limit; narrow ones
    /// go whole; one row is never cut.
    #[test]
    fn split_batch_keeps_writes_under_the_limit() {
        use arrow::array::StringArray;
        use arrow::datatypes::{DataType, Field};
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, false)]));
        let wide: Vec<String> = (0..1000).map(|i| format!("{i:0>10000}")).collect();
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(wide)) as _])
                .unwrap();
        let total = batch_bytes(&batch);
        assert!(total > 10_000_000);
        let parts = split_batch(batch.clone(), 1 << 20);
        assert!(parts.len() >= 10, "{} parts", parts.len());
        assert_eq!(parts.iter().map(|p| p.num_rows()).sum::<usize>(), 1000);
        for p in &parts {
            assert!(batch_bytes(p) <= (1 << 20) + 20_000, "{}", batch_bytes(p));
            let ipc = batches_to_ipc(&schema, std::slice::from_ref(p)).unwrap();
            assert!(ipc.len() <= (1 << 20) + 40_000, "encoded {}", ipc.len());
        }
        assert_eq!(
            arrow::compute::concat_batches(&schema, &parts).unwrap(),
            batch
        );
        assert_eq!(split_batch(batch.clone(), total).len(), 1);
        assert_eq!(split_batch(batch.slice(3, 1), 10).len(), 1);
    }

    #[test]
    fn predicate_round_trips_through_protobuf() {
        let p = Predicate::And(vec![
            Predicate::Compare {
                column: 1,
                op: CmpOp::GtEq,
                value: Literal::Decimal128 {
                    value: -12345,
                    precision: 12,
                    scale: 2,
                },
            },
            Predicate::Not(Box::new(Predicate::InList {
                column: 0,
                values: vec![Literal::Utf8("a".into()), Literal::Null],
                negated: true,
            })),
            Predicate::Or(vec![Predicate::IsNull(2), Predicate::IsNotNull(3)]),
        ]);
        let wire = pb::Predicate::from(&p);
        assert_eq!(Predicate::try_from(&wire).unwrap(), p);
    }

    #[test]
    fn malformed_literal_is_an_error_not_a_panic() {
        let bad = pb::Literal {
            value: Some(pb::literal::Value::Decimal128(vec![1, 2, 3])),
            precision: 10,
            scale: 2,
        };
        assert!(Literal::try_from(&bad).is_err());
        assert!(Literal::try_from(&pb::Literal::default()).is_err());
    }

    #[test]
    fn error_kinds_survive_a_status_and_a_bare_status_has_none() {
        let e = EngineError::StaleEpoch { ours: 5, theirs: 4 };
        let s = status_from(&e);
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
        assert_eq!(s.message(), e.to_string());
        assert_eq!(error_kind(&s), ErrorKind::StaleEpoch);
        let full = status_from(&EngineError::SegmentFull {
            segment: "primary".into(),
            needed: 1,
        });
        assert_eq!(error_kind(&full), ErrorKind::DiskFull);
        assert_eq!(
            error_kind(&tonic::Status::unavailable("connection refused")),
            ErrorKind::Unspecified
        );
    }
}
