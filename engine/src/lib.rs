//! slicedb-engine: everything local to one node.
//!
//! Owns the disk image (superblock, metadata slots, segments, extent allocator),
//! the block format (Arrow IPC + zone maps + CRC32C), the slice store (tables'
//! blocks per slice and segment, hidden columns, visibility by committed xid),
//! predicate evaluation with zone-map pruning, the mirror manager (forwarding
//! on the primary, staging and applying on the mirror), and the node server
//! (tonic gRPC for control and node-to-node calls, Arrow Flight for scans).
//!
//! It must never import the coordinator or the SQL front end: arrows run
//! `sql -> coordinator -> engine`. The protocol types in [`proto`] are the only
//! thing the coordinator needs from here to talk to a node.

pub mod background;
pub mod block;
pub mod cache;
pub mod cluster_tls;
pub mod disk;
pub mod failpoint;
pub mod fragment_runner;
#[cfg(test)]
mod fuzz;
pub mod grpc_codec;
pub mod ipc;
pub mod metrics;
pub mod mirror;
pub mod predicate;
pub mod scrub;
pub mod store;

mod error;
pub use error::{EngineError, Result};

/// A table's id, assigned by the coordinator's catalog. Stable for the table's life.
pub type TableId = u64;
/// A data slice: a hash bucket of every distributed table.
pub type SliceId = u32;
/// A transaction id, assigned by the coordinator. 0 is never a valid xid.
pub type Xid = u64;
/// A node's id in the cluster configuration.
pub type NodeId = u32;
/// A disk's id within its node.
pub type DiskId = u32;

/// Names of the hidden columns every stored row carries, in this order, after
/// the table's own columns.
pub const HIDDEN_ROWID: &str = "_rowid";
pub const HIDDEN_CREATEXID: &str = "_createxid";
pub const HIDDEN_DELETEXID: &str = "_deletexid";

pub mod proto;
pub mod server;
