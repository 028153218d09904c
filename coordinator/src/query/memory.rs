//! The memory of query execution: a pool of a given size shared fairly by
//! the operators that can spill (sorts, joins, aggregates), and the
//! directory they spill to. Used by the coordinator's session and by each
//! node's fragment runner; past its share an operator spills, or fails
//! with DataFusion's "resources exhausted" (SQLSTATE 53200).
//!
//! It owns only the pool and the directory (emptied when made: spill files
//! never outlive their process), never a query.

use std::path::Path;
use std::sync::Arc;

use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};

/// A runtime holding at most `limit` bytes (0: no limit) that spills into
/// `spill_dir` (made empty), reaching the object stores of `stores` (None:
/// DataFusion's, the local file system among them).
pub fn runtime_env(
    limit: u64,
    spill_dir: &Path,
    stores: Option<Arc<dyn datafusion::execution::object_store::ObjectStoreRegistry>>,
) -> DfResult<Arc<RuntimeEnv>> {
    let _ = std::fs::remove_dir_all(spill_dir);
    std::fs::create_dir_all(spill_dir).map_err(|e| {
        DataFusionError::Execution(format!("creating {}: {e}", spill_dir.display()))
    })?;
    let mut b = RuntimeEnvBuilder::new().with_temp_file_path(spill_dir);
    if let Some(stores) = stores {
        b = b.with_object_store_registry(stores);
    }
    if limit > 0 {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        b = b.with_memory_pool(Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(limit),
            std::num::NonZeroUsize::new(5).expect("5 is not zero"),
        )));
    }
    b.build_arc()
}
