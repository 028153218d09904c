//! slicedb-coordinator: the "host" of the cluster.
//!
//! Owns the persistent catalog, the persistent distribution map (slice ->
//! primary and mirror (node, disk), with an epoch), transaction ids, the
//! clients of every node, and the DataFusion integration: a slicedb table is a
//! [`datafusion::catalog::TableProvider`] whose scan is one broadcast per live
//! node and whose insert hashes rows to slices and ships them to primaries.
//!
//! It never touches disk images and never speaks the PostgreSQL protocol: it
//! is a client of the node protocol (`slicedb_engine::proto`) and a library for
//! the SQL front end.

pub mod catalog;
pub mod cluster;
pub mod colocate;
pub mod distmap;
pub mod dml;
mod error;
pub mod filter;
pub mod fragment;
pub mod hash;
pub mod load;
pub mod provider;
pub mod semijoin;
pub mod session;
pub mod system;
pub mod txn;

pub use catalog::Distribution;
pub use cluster::{Coordinator, CoordinatorConfig, NodeEndpoint};
pub use error::{CoordinatorError, Result};
