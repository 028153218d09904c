//! The coordinator's one error type. Every variant knows its SQLSTATE, so the
//! SQL front end can answer a client with a code it can act on.

use datafusion::error::DataFusionError;
use slicedb_engine::proto::ErrorKind;
use slicedb_engine::{EngineError, NodeId};

pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("relation \"{0}\" already exists")]
    TableExists(String),
    #[error("relation \"{0}\" does not exist")]
    TableNotFound(String),
    #[error("value too long for type character varying({0})")]
    ValueTooLong(u32),
    #[error("view \"{0}\" does not exist")]
    ViewNotFound(String),
    #[error("\"{name}\" is not a {wanted}")]
    WrongObjectType { name: String, wanted: &'static str },
    #[error(
        "column \"{column}\" named in the distribution key does not exist in table \"{table}\""
    )]
    UnknownDistributionColumn { table: String, column: String },
    #[error("unsupported column type {data_type} for column \"{column}\"")]
    UnsupportedType { column: String, data_type: String },
    #[error(
        "null value in column \"{column}\" of relation \"{table}\" violates not-null constraint"
    )]
    NotNullViolation { table: String, column: String },
    #[error("feature not supported: {0}")]
    NotSupported(String),
    #[error("schema \"{0}\" does not exist")]
    SchemaNotFound(String),
    #[error("schema \"{0}\" already exists")]
    SchemaExists(String),
    #[error("cannot drop schema \"{schema}\" because other objects depend on it (tables {tables}); use DROP SCHEMA ... CASCADE to drop them too")]
    SchemaNotEmpty { schema: String, tables: String },
    #[error("column \"{column}\" of relation \"{table}\" does not exist")]
    ColumnNotFound { table: String, column: String },
    #[error("column \"{column}\" of relation \"{table}\" already exists")]
    ColumnExists { table: String, column: String },
    #[error("cannot drop column \"{column}\" of table \"{table}\": it is in the table's distribution key; create a new table with another distribution (CREATE TABLE ... AS SELECT ... DISTRIBUTE ON ...) instead")]
    DistributionKeyColumn { table: String, column: String },
    #[error("{}", node_error_text(*node, *kind, message))]
    Node {
        node: NodeId,
        kind: ErrorKind,
        message: String,
    },
    #[error("node {node} at {address} is unreachable: {message}; the cluster fails the node over, retry the transaction")]
    NodeUnreachable {
        node: NodeId,
        address: String,
        message: String,
    },
    #[error("slice {slice} is unavailable: {reason}")]
    SliceUnavailable { slice: u32, reason: String },
    #[error("scan of table {table} is incomplete: {reason}")]
    IncompleteScan { table: String, reason: String },
    #[error("cluster configuration error: {0}")]
    Config(String),
    /// A resync or regeneration step that could not finish (it is retried).
    #[error("self-healing: {0}")]
    Healing(String),
    #[error(
        "current transaction is aborted, commands ignored until end of transaction block ({0})"
    )]
    TransactionAborted(String),
    #[error("the coordinator is shutting down")]
    ShuttingDown,
    #[error("catalog error: {0}")]
    Catalog(String),
    #[error("role \"{0}\" already exists")]
    RoleExists(String),
    #[error("role \"{0}\" does not exist")]
    RoleNotFound(String),
    #[error(
        "role \"{role}\" cannot be dropped because it owns tables ({tables}); drop them first"
    )]
    RoleOwnsObjects { role: String, tables: String },
    /// A role without the privilege or attribute the statement needs.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
}

/// A node's error as a client reads it: a full disk is not a failed node
/// (nothing fails over), so it says so.
fn node_error_text(node: NodeId, kind: ErrorKind, message: &str) -> String {
    match kind {
        ErrorKind::DiskFull => format!(
            "could not write: disk full on node {node} ({message}); the transaction cannot commit, no disk was failed over; DROP TABLE frees space"
        ),
        ErrorKind::Unrepairable => {
            format!("data damaged on both copies (read on node {node}): {message}")
        }
        _ => format!("node {node} failed: {message}"),
    }
}

impl CoordinatorError {
    pub fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        CoordinatorError::Io {
            path: path.into(),
            source,
        }
    }

    /// The PostgreSQL SQLSTATE a client should see for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            CoordinatorError::TableExists(_) => "42P07",
            CoordinatorError::TableNotFound(_) | CoordinatorError::ViewNotFound(_) => "42P01",
            CoordinatorError::WrongObjectType { .. } => "42809",
            CoordinatorError::ValueTooLong(_) => "22001",
            CoordinatorError::SchemaNotFound(_) => "3F000",
            CoordinatorError::SchemaExists(_) => "42P06",
            CoordinatorError::SchemaNotEmpty { .. } => "2BP01",
            CoordinatorError::ColumnNotFound { .. } => "42703",
            CoordinatorError::ColumnExists { .. } => "42701",
            CoordinatorError::DistributionKeyColumn { .. } => "42P16",
            CoordinatorError::UnknownDistributionColumn { .. } => "42703",
            CoordinatorError::NotNullViolation { .. } => "23502",
            CoordinatorError::UnsupportedType { .. } | CoordinatorError::NotSupported(_) => "0A000",
            CoordinatorError::Node { kind, .. } => match kind {
                ErrorKind::Checksum | ErrorKind::Unrepairable => "XX001",
                ErrorKind::DiskFull => "53100",
                ErrorKind::StaleEpoch | ErrorKind::SliceNotOwned | ErrorKind::WriteConflict => {
                    "40001"
                }
                _ => "XX000",
            },
            CoordinatorError::NodeUnreachable { .. } => "40001",
            CoordinatorError::SliceUnavailable { .. } => "58000",
            CoordinatorError::IncompleteScan { .. } => "XX000",
            CoordinatorError::Config(_) => "F0000",
            CoordinatorError::Healing(_) => "58000",
            CoordinatorError::ShuttingDown => "57P01",
            CoordinatorError::TransactionAborted(_) => "25P02",
            // The host file system full (the commit log, a spill file):
            // the statement fails, nothing is lost, the server stays up.
            CoordinatorError::Io { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                "53100"
            }
            CoordinatorError::Catalog(_) | CoordinatorError::Io { .. } => "58030",
            CoordinatorError::RoleExists(_) => "42710",
            CoordinatorError::RoleNotFound(_) => "42704",
            CoordinatorError::RoleOwnsObjects { .. } => "2BP01",
            CoordinatorError::PermissionDenied(_) => "42501",
            CoordinatorError::Engine(_) => "XX000",
            CoordinatorError::Arrow(_) => "22000",
            CoordinatorError::DataFusion(_) => "XX000",
        }
    }

    /// Build from a gRPC status returned by a node, keeping the typed kind.
    pub fn from_status(node: NodeId, address: &str, s: tonic::Status) -> Self {
        let kind = slicedb_engine::proto::error_kind(&s);
        // A node's own errors carry their kind; a connection that broke
        // mid-call (the node died: "transport error", "connection reset")
        // comes back from tonic as Unknown or Cancelled without one.
        let broken = kind == ErrorKind::Unspecified
            && matches!(s.code(), tonic::Code::Unknown | tonic::Code::Cancelled);
        if broken
            || matches!(
                s.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            )
        {
            return CoordinatorError::NodeUnreachable {
                node,
                address: address.to_string(),
                message: s.message().to_string(),
            };
        }
        CoordinatorError::Node {
            node,
            kind,
            message: s.message().to_string(),
        }
    }
}

impl From<CoordinatorError> for DataFusionError {
    fn from(e: CoordinatorError) -> Self {
        match e {
            CoordinatorError::DataFusion(inner) => inner,
            // A node's query fragment failed on the statement's own terms
            // (division by zero, overflow): the same error as if the
            // coordinator had computed it.
            CoordinatorError::Node {
                kind: ErrorKind::Query,
                message,
                ..
            } => DataFusionError::Execution(message),
            other => DataFusionError::External(Box::new(other)),
        }
    }
}
