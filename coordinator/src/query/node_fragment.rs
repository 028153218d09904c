//! A query fragment as it travels: the part of a plan that runs on the
//! nodes, next to the data, encoded with DataFusion's protobuf plan
//! encoding and [`SliceInputExec`] leaves that stand for the slices' rows.
//!
//! [`Runner`] is the node's side: it decodes a fragment, binds the slice's
//! scans to its leaves and runs it. It is handed to the engine's node server as
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
        Runner {
            ctx: SessionContext::new().task_ctx(),
        }
    }
}

impl Runner {
    /// A runner whose fragments hold at most `memory_limit` bytes at once
    /// (0: no limit), spilling into `spill_dir`.
    pub fn with_memory(
        memory_limit: u64,
        spill_dir: &std::path::Path,
    ) -> Result<Runner, EngineError> {
        let env = super::memory::runtime_env(memory_limit, spill_dir)
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
        let plan = physical_plan_from_bytes_with_extension_codec(fragment, &self.ctx, codec)
            .map_err(|e| EngineError::InvalidRequest(format!("bad query fragment: {e}")))?;
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
