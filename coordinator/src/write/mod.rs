//! The write path: how rows reach their slices.
//!
//! - [`hash`]: the row -> slice hash (an on-disk contract).
//! - [`load`]: the loader every COPY, INSERT and UPDATE writes through.
//! - [`sink`]: INSERT from DataFusion, the sink each table is handed.
//! - [`dml`]: DELETE and UPDATE (their rows found by a query-path scan,
//!   joined to FROM / USING tables), and RETURNING of all three.
//! - [`maintenance`]: GROOM TABLE and the online mirror check.
//! - [`send`]: one write request to its slice's node, carried over a
//!   failover of that node.
//!
//! It sees the cluster through [`crate::Cluster`], reads the map and never
//! changes it, and never touches a disk image: the primaries forward to
//! their mirrors themselves. Arrows: `write -> query`, never the other way.

pub mod dml;
pub mod hash;
pub mod load;
pub mod maintenance;
pub mod send;
pub mod sink;

pub use dml::{DmlOutcome, DmlQuery};
pub use load::Loader;
pub use maintenance::VerifyRow;
pub use sink::TableSinks;
