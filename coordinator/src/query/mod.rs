//! The query path: how a SELECT over slicedb tables runs.
//!
//! - [`table`]: the DataFusion `TableProvider` of a slicedb table (and its
//!   DML view); its insert goes to the sink the write path hands it.
//! - [`broadcast`]: the broadcast scan, one request per node holding slices.
//! - [`node_scan`]: who answers for each slice, one node's checked answer,
//!   and the retry after a failover.
//! - [`filter`]: filters a node can evaluate, and what join keys imply.
//! - [`colocate`], [`semijoin`]: logical rules that reorder joins so more
//!   of them run on the nodes.
//! - [`pushdown`]: the physical rules that move plan fragments to the nodes;
//!   [`node_fragment`]: a fragment's encoding and the node's runner;
//!   [`lineage`]: which table column an output column is.
//! - [`pgsum`]: `sum` with PostgreSQL's result types (`sum(bigint)` is numeric).
//! - [`memory`]: the memory pool and spill directory of query execution.
//! - [`threads`]: the runtime query execution runs on, apart from the
//!   service threads (connections, cancel requests, heartbeats, RPCs).
//!
//! It sees the cluster through [`crate::Cluster`] only, never writes rows
//! and never changes the map (a node it cannot reach is reported to the
//! system manager). Arrows: `write -> query`, never the other way.

pub mod broadcast;
pub mod colocate;
pub mod filter;
mod lineage;
pub mod memory;
pub mod node_fragment;
pub mod node_scan;
pub mod pgsum;
pub mod pushdown;
pub mod semijoin;
pub mod table;
pub mod threads;

pub use node_fragment::Runner;
pub use pushdown::{optimizer_rules, SlicedbOptions};
pub use table::{Inserts, SliceTable, DML_SLICE};
