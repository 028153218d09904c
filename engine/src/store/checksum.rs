//! The slice checksum: row count and an order-independent hash of the rows
//! of one copy of a slice at a snapshot, what `slicedb verify` compares
//! between a primary and its mirror.
//!
//! It depends only on the logical rows (rowid and contents), never on block
//! layout, so two copies written differently still compare equal.

use arrow::array::{Array, Int64Array};
use serde::Serialize;

use super::{DiskStore, ScanSpec, Snapshot};
use crate::disk::SegmentKind;
use crate::{EngineError, Result, SliceId, TableId};

/// Row count and an order-independent checksum over (rowid, row contents) of
/// one copy of a slice at one snapshot: what `slicedb verify` compares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SliceChecksum {
    pub rows: u64,
    pub checksum: u64,
}

impl DiskStore {
    /// Checksum of the rows of one copy of a slice visible at `snapshot`:
    /// count, and a wrapping sum of a 64-bit hash of (rowid, row contents),
    /// so block order and layout do not matter, only the logical rows.
    pub fn checksum(
        &self,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        snapshot: &Snapshot,
    ) -> Result<SliceChecksum> {
        let mut scan = self.scan(&ScanSpec {
            segment,
            table,
            slice,
            projection: None,
            predicate: None,
            include_hidden: true,
            snapshot: snapshot.clone(),
        })?;
        let schema = scan.schema();
        let nuser = schema.fields().len() - 3;
        let fields: Vec<arrow::row::SortField> = schema.fields()[..nuser]
            .iter()
            .map(|f| arrow::row::SortField::new(f.data_type().clone()))
            .collect();
        let conv = arrow::row::RowConverter::new(fields)?;
        let mut out = SliceChecksum::default();
        for batch in scan.by_ref() {
            let batch = batch?;
            let rows = conv.convert_columns(&batch.columns()[..nuser])?;
            let rowids = batch
                .column(nuser)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| EngineError::Internal("_rowid is not Int64".into()))?;
            for (i, row) in rows.iter().enumerate() {
                let id = rowids.value(i).to_le_bytes();
                let lo = crc32c::crc32c_append(crc32c::crc32c(&id), row.as_ref());
                let hi =
                    crc32c::crc32c_append(crc32c::crc32c_append(0x5bd1_e995, &id), row.as_ref());
                out.checksum = out
                    .checksum
                    .wrapping_add((u64::from(hi) << 32) | u64::from(lo));
                out.rows += 1;
            }
        }
        Ok(out)
    }
}
