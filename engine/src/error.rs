//! The engine's one error type. Variants are typed so the node server can map
//! them to gRPC status codes and the coordinator to SQLSTATEs.

use crate::{DiskId, NodeId, SliceId, TableId};

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// What the path of an fsync's I/O error ends with.
pub const FSYNC: &str = " (fsync)";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a slicedb disk image: {0}")]
    NotAnImage(String),
    #[error("unsupported disk format version {found} (this build reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("corrupt metadata: {0}")]
    CorruptMetadata(String),
    #[error("checksum mismatch in block at offset {offset} of disk {disk} (table {table}, slice {slice}): expected {expected:#010x}, found {found:#010x}")]
    ChecksumMismatch {
        disk: DiskId,
        offset: u64,
        table: TableId,
        slice: SliceId,
        expected: u32,
        found: u32,
    },
    #[error("corrupt block at offset {offset}: {reason}")]
    CorruptBlock { offset: u64, reason: String },
    /// A committed block failed verification on this copy and the slice's
    /// other copy could not give it back either (sector repair failed).
    #[error("block {seq} of table {table} slice {slice} is damaged on its {segment} copy (disk {disk}) and could not be repaired from the slice's other copy: {reason}")]
    Unrepairable {
        disk: DiskId,
        table: TableId,
        slice: SliceId,
        segment: String,
        seq: u64,
        reason: String,
    },
    #[error("segment {segment} is full: need {needed} bytes")]
    SegmentFull { segment: String, needed: u64 },
    #[error("metadata does not fit in its slot: {needed} bytes, slot holds {capacity}")]
    MetadataFull { needed: u64, capacity: u64 },
    #[error("table {0} does not exist on this node")]
    TableNotFound(TableId),
    #[error("table {0} already exists on this node")]
    TableExists(TableId),
    #[error("schema mismatch for table {table}: {reason}")]
    SchemaMismatch { table: TableId, reason: String },
    #[error("stale map epoch: node is at epoch {ours}, command carried {theirs}")]
    StaleEpoch { ours: u64, theirs: u64 },
    #[error("slice {slice} is not served by node {node} as {segment} at epoch {epoch}")]
    SliceNotOwned {
        node: NodeId,
        slice: SliceId,
        segment: String,
        epoch: u64,
    },
    #[error("could not serialize access: row {rowid} of table {table} slice {slice} was changed by concurrent transaction {other}; retry the transaction")]
    WriteConflict {
        table: TableId,
        slice: SliceId,
        rowid: i64,
        other: u64,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("cluster credentials: {0}")]
    Credentials(String),
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("internal error: {0}")]
    Internal(String),
    /// A query fragment's own work failed (division by zero, overflow, a
    /// cast): the statement's error, not the node's; retrying elsewhere
    /// would fail the same way.
    #[error("{0}")]
    Query(String),
}

impl EngineError {
    /// The same error again where its kind decides what happens next (a bad
    /// block or an I/O error fails a disk over, a stale epoch or a slice not
    /// owned is retried under the new map), else a `Query` error with its
    /// message. For an error that several streams
    /// report (every slice of a fragment whose shared input failed).
    pub fn again(&self) -> EngineError {
        match self {
            EngineError::ChecksumMismatch {
                disk,
                offset,
                table,
                slice,
                expected,
                found,
            } => EngineError::ChecksumMismatch {
                disk: *disk,
                offset: *offset,
                table: *table,
                slice: *slice,
                expected: *expected,
                found: *found,
            },
            EngineError::CorruptBlock { offset, reason } => EngineError::CorruptBlock {
                offset: *offset,
                reason: reason.clone(),
            },
            EngineError::Io { path, source } => EngineError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            EngineError::StaleEpoch { ours, theirs } => EngineError::StaleEpoch {
                ours: *ours,
                theirs: *theirs,
            },
            EngineError::SliceNotOwned {
                node,
                slice,
                segment,
                epoch,
            } => EngineError::SliceNotOwned {
                node: *node,
                slice: *slice,
                segment: segment.clone(),
                epoch: *epoch,
            },
            EngineError::Unrepairable {
                disk,
                table,
                slice,
                segment,
                seq,
                reason,
            } => EngineError::Unrepairable {
                disk: *disk,
                table: *table,
                slice: *slice,
                segment: segment.clone(),
                seq: *seq,
                reason: reason.clone(),
            },
            other => EngineError::Query(other.to_string()),
        }
    }

    /// A write that found no space on the host's file system (a sparse
    /// image that could not grow): the statement fails with 53100 and the
    /// disk stays in service. Never an fsync's error: after a failed fsync
    /// the kernel may have dropped pages other transactions wrote, so that
    /// fails the disk (its path ends with [`FSYNC`]).
    pub fn is_out_of_space(&self) -> bool {
        match self {
            EngineError::Io { path, source } => {
                !path.ends_with(FSYNC)
                    && matches!(
                        source.raw_os_error(),
                        Some(libc::ENOSPC) | Some(libc::EDQUOT)
                    )
            }
            _ => false,
        }
    }

    /// Wrap an `std::io::Error` with the path it happened on.
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No space on a write is "disk full" (the disk stays in service); on
    /// an fsync, or any other I/O error, it is not.
    #[test]
    fn out_of_space_on_a_write_but_not_on_an_fsync() {
        let enospc = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(EngineError::io("disk-0.img", enospc()).is_out_of_space());
        assert!(!EngineError::io(format!("disk-0.img{FSYNC}"), enospc()).is_out_of_space());
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        assert!(!EngineError::io("disk-0.img", eio).is_out_of_space());
        assert_eq!(
            crate::proto::kind_of(&EngineError::io("disk-0.img", enospc())),
            crate::proto::ErrorKind::DiskFull
        );
    }
}
