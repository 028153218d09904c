//! A query fragment as it travels: the part of a plan that runs on the
//! nodes, next to the data, encoded with DataFusion's protobuf plan
//! encoding and [`SliceInputExec`] leaves that stand for the slices' rows.
//!
//! [`Runner`] is the node's side: it decodes a fragment, binds the slice's
//! scans to its leaves and runs it. A fragment comes from the network: it is
//! decoded only into the operators the coordinator emits over slice inputs
//! ([`allowed`]); a file scan or sink, an EXPLAIN, anything else is refused,
//! a decoder panic is an error, and its runtime reaches no object store
//! (no file, no URL) whatever it names. It is handed to the engine's node server as
//! its [`FragmentRunner`]; the engine never sees DataFusion. Which subtrees
//! become fragments is [`super::pushdown`]'s decision, not this module's.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::StreamExt;
use parking_lot::Mutex;
use prost::Message;
use slicedb_engine::fragment_runner::{FragmentRunner, FragmentStream, ScanBatches};
use slicedb_engine::EngineError;

/// A leaf of a fragment: the scanned rows of a table, one partition per
/// slice, or a relation sent whole (one partition). At the coordinator it
/// only stands for the scan (it is never run there, and has one
/// partition); on a node it is bound to the slices' scans when the
/// fragment is decoded.
pub struct SliceInputExec {
    /// Which of the request's scans: 0 its table, i + 1 its `inputs[i]`,
    /// then 1 + inputs + k the relation `broadcast[k]` sent whole.
    pub(super) index: usize,
    pub(super) schema: SchemaRef,
    /// Partition i reads `inputs[i]`, once.
    inputs: Mutex<Vec<Option<ScanBatches>>>,
    /// Where the input's own (engine) error is left, so that it reaches the
    /// node as itself and not as a query error.
    failure: Arc<Mutex<Option<EngineError>>>,
    props: Arc<PlanProperties>,
}

impl SliceInputExec {
    pub(super) fn new(
        index: usize,
        schema: SchemaRef,
        inputs: Vec<ScanBatches>,
        failure: Arc<Mutex<Option<EngineError>>>,
    ) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(inputs.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        SliceInputExec {
            index,
            schema,
            inputs: Mutex::new(inputs.into_iter().map(Some).collect()),
            failure,
            props: Arc::new(props),
        }
    }
}

impl fmt::Debug for SliceInputExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SliceInputExec").finish()
    }
}

impl DisplayAs for SliceInputExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SliceInputExec: input={}", self.index)
    }
}

impl ExecutionPlan for SliceInputExec {
    fn name(&self) -> &str {
        "SliceInputExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let Some(input) = self.inputs.lock().get_mut(partition).and_then(Option::take) else {
            return Err(DataFusionError::Internal(format!(
                "fragment leaf {}: no scan bound to partition {partition} (or it was run twice)",
                self.index
            )));
        };
        // The scan reads the disk: pull it on a blocking thread, from the
        // first poll on (the slices of a fragment are answered in turn).
        let failure = self.failure.clone();
        let stream = futures::stream::once(async move {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(2);
            tokio::task::spawn_blocking(move || {
                for batch in input {
                    let item = batch.map_err(|e| {
                        let message = e.to_string();
                        *failure.lock() = Some(e);
                        DataFusionError::Execution(message)
                    });
                    let stop = item.is_err();
                    if tx.blocking_send(item).is_err() || stop {
                        return;
                    }
                }
            });
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        })
        .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// Encodes [`SliceInputExec`] (its input index, then its schema) inside a
/// fragment; decoding binds the scans of that index it was built with.
#[derive(Default)]
pub(super) struct FragmentCodec {
    inputs: Mutex<Vec<Option<Vec<ScanBatches>>>>,
    failure: Arc<Mutex<Option<EngineError>>>,
}

impl fmt::Debug for FragmentCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FragmentCodec").finish()
    }
}

impl PhysicalExtensionCodec for FragmentCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return Err(DataFusionError::Internal(
                "a fragment's slice input has no children".into(),
            ));
        }
        let (index, schema) = buf
            .split_first_chunk::<4>()
            .ok_or_else(|| DataFusionError::Internal("fragment leaf: truncated".into()))?;
        let index = u32::from_le_bytes(*index) as usize;
        let schema = datafusion_proto::protobuf::Schema::decode(schema)
            .map_err(|e| DataFusionError::Internal(format!("fragment leaf schema: {e}")))?;
        let schema: Schema = (&schema).try_into()?;
        let inputs = self
            .inputs
            .lock()
            .get_mut(index)
            .and_then(Option::take)
            .unwrap_or_default();
        Ok(Arc::new(SliceInputExec::new(
            index,
            Arc::new(schema),
            inputs,
            self.failure.clone(),
        )))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let Some(leaf) = node.downcast_ref::<SliceInputExec>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} cannot run on a node",
                node.name()
            )));
        };
        let schema: datafusion_proto::protobuf::Schema = leaf.schema.as_ref().try_into()?;
        buf.extend_from_slice(&(leaf.index as u32).to_le_bytes());
        schema
            .encode(buf)
            .map_err(|e| DataFusionError::Internal(format!("fragment leaf schema: {e}")))
    }
}

/// Decodes fragments at the coordinator, to check them.
pub(super) static DECODER: std::sync::LazyLock<Runner> = std::sync::LazyLock::new(Runner::default);

/// Runs fragments on a node (see the module docs).
pub struct Runner {
    ctx: Arc<TaskContext>,
}

impl Default for Runner {
    fn default() -> Self {
        let env = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::new(NoObjectStores))
            .build_arc()
            .expect("a runtime with no limits and no stores builds");
        let ctx =
            SessionContext::new_with_config_rt(datafusion::prelude::SessionConfig::new(), env);
        Runner {
            ctx: ctx.task_ctx(),
        }
    }
}

/// The object stores a fragment reaches: none. It reads only its slice
/// inputs; a file or URL it names is refused when it is opened.
#[derive(Debug)]
struct NoObjectStores;

impl datafusion::execution::object_store::ObjectStoreRegistry for NoObjectStores {
    fn register_store(
        &self,
        _url: &url::Url,
        _store: Arc<dyn datafusion::object_store::ObjectStore>,
    ) -> Option<Arc<dyn datafusion::object_store::ObjectStore>> {
        None
    }

    fn get_store(
        &self,
        url: &url::Url,
    ) -> DfResult<Arc<dyn datafusion::object_store::ObjectStore>> {
        Err(DataFusionError::Plan(format!(
            "a query fragment may not reach {url}"
        )))
    }
}

/// Whether a fragment may hold `node`: the operators the coordinator's
/// pushdown emits (filters, projections, aggregates, joins, sorts, limits,
/// repartitions, unions) and the slice inputs. No data source (files,
/// memory, generated series), sink, EXPLAIN or ANALYZE.
#[allow(deprecated)] // CoalesceBatchesExec: older plans still hold it
fn allowed(node: &dyn ExecutionPlan) -> bool {
    use datafusion::physical_plan::{
        aggregates::AggregateExec, coalesce_batches::CoalesceBatchesExec,
        coalesce_partitions::CoalescePartitionsExec, coop::CooperativeExec, empty::EmptyExec,
        filter::FilterExec, joins::CrossJoinExec, joins::HashJoinExec, joins::NestedLoopJoinExec,
        joins::SortMergeJoinExec, joins::SymmetricHashJoinExec, limit::GlobalLimitExec,
        limit::LocalLimitExec, placeholder_row::PlaceholderRowExec, projection::ProjectionExec,
        repartition::RepartitionExec, sorts::sort::SortExec,
        sorts::sort_preserving_merge::SortPreservingMergeExec, union::InterleaveExec,
        union::UnionExec, windows::BoundedWindowAggExec, windows::WindowAggExec,
    };
    let any = node;
    any.is::<SliceInputExec>()
        || any.is::<FilterExec>()
        || any.is::<ProjectionExec>()
        || any.is::<AggregateExec>()
        || any.is::<HashJoinExec>()
        || any.is::<CrossJoinExec>()
        || any.is::<NestedLoopJoinExec>()
        || any.is::<SortMergeJoinExec>()
        || any.is::<SymmetricHashJoinExec>()
        || any.is::<SortExec>()
        || any.is::<SortPreservingMergeExec>()
        || any.is::<GlobalLimitExec>()
        || any.is::<LocalLimitExec>()
        || any.is::<CoalesceBatchesExec>()
        || any.is::<CoalescePartitionsExec>()
        || any.is::<RepartitionExec>()
        || any.is::<UnionExec>()
        || any.is::<InterleaveExec>()
        || any.is::<CooperativeExec>()
        || any.is::<EmptyExec>()
        || any.is::<PlaceholderRowExec>()
        || any.is::<WindowAggExec>()
        || any.is::<BoundedWindowAggExec>()
}

/// The first node of `plan` a fragment may not hold.
fn refused(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    if !allowed(plan.as_ref()) {
        return Some(plan.name().to_string());
    }
    plan.children().into_iter().find_map(refused)
}

impl Runner {
    /// A runner whose fragments hold at most `memory_limit` bytes at once
    /// (0: no limit), spilling into `spill_dir`.
    pub fn with_memory(
        memory_limit: u64,
        spill_dir: &std::path::Path,
    ) -> Result<Runner, EngineError> {
        let env =
            super::memory::runtime_env(memory_limit, spill_dir, Some(Arc::new(NoObjectStores)))
                .map_err(|e| EngineError::Query(e.to_string()))?;
        let ctx =
            SessionContext::new_with_config_rt(datafusion::prelude::SessionConfig::new(), env);
        Ok(Runner {
            ctx: ctx.task_ctx(),
        })
    }

    /// Decode `fragment` with the leaves bound to `codec`'s inputs; it
    /// must answer `slices` partitions, one per slice.
    pub(super) fn decode(
        &self,
        fragment: &[u8],
        codec: &FragmentCodec,
        slices: usize,
    ) -> Result<Arc<dyn ExecutionPlan>, EngineError> {
        // The decoder may panic on bytes it never made: an error, not a
        // dead node.
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            physical_plan_from_bytes_with_extension_codec(fragment, &self.ctx, codec)
        }))
        .map_err(|_| {
            EngineError::InvalidRequest("bad query fragment: the decoder failed".into())
        })?;
        let plan =
            decoded.map_err(|e| EngineError::InvalidRequest(format!("bad query fragment: {e}")))?;
        if let Some(name) = refused(&plan) {
            return Err(EngineError::InvalidRequest(format!(
                "a query fragment may not hold {name}: a node runs only filters, projections, \
                 aggregates, joins, sorts and limits over its slices"
            )));
        }
        let parts = plan.properties().output_partitioning().partition_count();
        if parts != slices {
            return Err(EngineError::InvalidRequest(format!(
                "a query fragment over {slices} slice(s) must have as many output partitions, not {parts}"
            )));
        }
        Ok(plan)
    }
}

impl FragmentRunner for Runner {
    fn schema(&self, fragment: &[u8]) -> Result<SchemaRef, EngineError> {
        Ok(self
            .decode(fragment, &FragmentCodec::default(), 1)?
            .schema())
    }

    fn run(
        &self,
        fragment: &[u8],
        slices: usize,
        inputs: Vec<Vec<ScanBatches>>,
    ) -> Result<Vec<FragmentStream>, EngineError> {
        let codec = FragmentCodec {
            inputs: Mutex::new(inputs.into_iter().map(Some).collect()),
            failure: Arc::new(Mutex::new(None)),
        };
        // Budget checks on every edge, executed and polled on the query
        // threads (super::threads): stoppable, and never in the way of
        // this node's RPCs and heartbeats.
        let plan = super::threads::cooperative(self.decode(fragment, &codec, slices)?)
            .map_err(|e| EngineError::Query(e.to_string()))?;
        (0..slices)
            .map(|slice| {
                let failure = codec.failure.clone();
                let (plan, ctx) = (plan.clone(), self.ctx.clone());
                Ok(super::threads::run_on_query_threads(move || {
                    let stream = match plan.execute(slice, ctx) {
                        Ok(s) => s.left_stream(),
                        Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
                    };
                    stream.map(move |item| {
                        // Every slice whose stream fails for the scan's
                        // error reports it with its kind (whichever the
                        // coordinator reads first decides the failover).
                        item.map_err(|e| {
                            let mut slot = failure.lock();
                            match slot.take() {
                                Some(engine) => {
                                    *slot = Some(engine.again());
                                    engine
                                }
                                None => EngineError::Query(e.to_string()),
                            }
                        })
                    })
                }) as FragmentStream)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::CsvReadOptions;

    /// The bytes of the physical plan of `sql` (DataFusion's own codec).
    async fn fragment_of(ctx: &SessionContext, sql: &str) -> Vec<u8> {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        datafusion_proto::bytes::physical_plan_to_bytes(plan)
            .unwrap()
            .to_vec()
    }

    fn refusal(bytes: &[u8]) -> String {
        let runner = Runner::default();
        let err = runner.schema(bytes).expect_err("refused");
        assert!(matches!(err, EngineError::InvalidRequest(_)), "{err:?}");
        let run = runner.run(bytes, 1, vec![Vec::new()]);
        assert!(run.is_err(), "run refuses it too");
        err.to_string()
    }

    #[tokio::test]
    async fn a_fragment_that_reads_or_writes_files_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret.csv");
        std::fs::write(&secret, "a,b\n1,2\n").unwrap();
        let ctx = SessionContext::new();
        ctx.register_csv("t", secret.to_str().unwrap(), CsvReadOptions::new())
            .await
            .unwrap();
        // A CSV scan of a file on the node.
        let scan = fragment_of(&ctx, "SELECT a, b FROM t WHERE a > 0").await;
        let msg = refusal(&scan);
        assert!(msg.contains("may not hold DataSourceExec"), "{msg}");
        // A sink writing a file on the node.
        let out = dir.path().join("out.csv");
        let sink = fragment_of(
            &ctx,
            &format!("COPY (SELECT 1 AS x) TO '{}' STORED AS CSV", out.display()),
        )
        .await;
        let msg = refusal(&sink);
        assert!(msg.contains("may not hold DataSinkExec"), "{msg}");
        assert!(!out.exists(), "nothing written");
        // EXPLAIN ANALYZE, a generated series.
        for sql in ["EXPLAIN SELECT 1", "SELECT * FROM generate_series(1, 10)"] {
            let msg = refusal(&fragment_of(&ctx, sql).await);
            assert!(msg.contains("may not hold"), "{sql}: {msg}");
        }
        // Bytes no encoder made: an error, never a panic.
        for junk in [
            &b"\xff\xff\xff"[..],
            &[0x0a, 0x05, 0x12, 0x03, 0x0a, 0x01, 0x61][..],
            &[],
        ] {
            assert!(Runner::default().schema(junk).is_err());
        }
    }

    #[tokio::test]
    async fn a_fragments_runtime_reaches_no_object_store() {
        let runner = Runner::default();
        let url = url::Url::parse("file:///etc/passwd").unwrap();
        let err = runner
            .ctx
            .runtime_env()
            .object_store(
                datafusion::execution::object_store::ObjectStoreUrl::parse(
                    &url[..url::Position::BeforePath],
                )
                .unwrap(),
            )
            .expect_err("no store");
        assert!(err.to_string().contains("may not reach"), "{err}");
    }
}
