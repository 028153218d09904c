//! Query fragments a node runs over its slices' scans.
//!
//! A scan request may carry a fragment: an opaque plan whose leaves are the
//! scans (for example a filter, a projection and a partial aggregate over
//! one table, or a join of two tables distributed on the join key). The
//! engine does not know how to plan or run it; whoever starts the node hands
//! it a [`FragmentRunner`] that does. The engine owns only the contract: the
//! runner gets every slice's scans at once and answers one stream per
//! slice; whatever a slice's stream yields is that slice's answer, tagged
//! and counted like scanned rows. The slices share what the fragment builds
//! once (the hash table of a build side sent whole).
//!
//! It must never depend on the query engine that runs the fragments (that
//! would turn the arrows around): the plan stays bytes here.

use std::pin::Pin;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::Stream;

use crate::Result;

/// One slice's scanned batches. Reading may block on the disk: pull it from
/// a blocking thread.
pub type ScanBatches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// A fragment's output for one slice.
pub type FragmentStream = Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>;

/// Runs query fragments on a node.
pub trait FragmentRunner: Send + Sync {
    /// The schema of the fragment's output; fails if the fragment does not
    /// decode (then nothing is scanned).
    fn schema(&self, fragment: &[u8]) -> Result<SchemaRef>;

    /// Run `fragment` over `slices` slices at once. `inputs[i]` feeds its
    /// leaf `i`: one scan per slice, in the same slice order for every
    /// table the fragment reads, or a single one for a relation sent whole
    /// (the same rows for every slice). Answers one stream per slice, in
    /// that order; pull them one after the other. An error an input yields
    /// must come out of a stream as that same [`crate::EngineError`] (so a
    /// checksum failure is still one); an error of the fragment's own work
    /// is [`crate::EngineError::Query`].
    fn run(
        &self,
        fragment: &[u8],
        slices: usize,
        inputs: Vec<Vec<ScanBatches>>,
    ) -> Result<Vec<FragmentStream>>;
}
