//! slicedb-coordinator: the "host" of the cluster.
//!
//! Owns the persistent catalog, the distribution map (slice -> a list of
//! copies, with an epoch) and the system manager that alone changes it,
//! transaction ids and two-phase commit, the clients of every node, and the
//! DataFusion integration: a slicedb table is a
//! [`datafusion::catalog::TableProvider`] whose scan is one broadcast per live
//! node and whose insert hashes rows to slices and ships them to primaries.
//! docs/architecture.md says which file holds which concept.
//!
//! It never touches disk images and never speaks the PostgreSQL protocol: it
//! is a client of the node protocol (`slicedb_engine::proto`) and a library for
//! the SQL front end.

pub mod catalog;
pub mod cluster;
pub mod coordinator;
pub mod ddl;
mod error;
pub mod map;
pub mod meta;
pub mod metrics;
pub mod nodes;
pub mod privileges;
pub mod query;
pub mod roles;
pub mod session;
pub mod system;
pub mod txn;
pub mod views;
pub mod write;

pub use catalog::Distribution;
pub use cluster::Cluster;
pub use coordinator::{Coordinator, CoordinatorConfig};
pub use error::{CoordinatorError, Result};
pub use nodes::NodeEndpoint;
