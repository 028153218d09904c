//! Query fragments: the part of a plan that runs on the nodes, next to the
//! data, so that a node ships its result instead of its rows.
//!
//! [`PushDownFragments`] is a physical optimizer rule. It finds a partial
//! aggregate whose input is a chain of row-local operators (filters,
//! projections, round-robin repartitioning) over a
//! [`BroadcastScanExec`], and replaces that whole subtree with the scan
//! carrying the chain as a fragment (DataFusion's protobuf encoding of the
//! physical plan, with [`SliceInputExec`] as its leaf). Each node runs the
//! fragment over each of its slices on its own, and the coordinator's final
//! aggregate merges the per-slice partial states as it would have merged
//! its own. What the rule cannot encode it leaves alone: the plan is then
//! the one DataFusion made.
//!
//! [`Runner`] is the node's side: it decodes a fragment, binds the slice's
//! scan to its leaf and runs it. It is handed to the engine's node server as
//! its [`FragmentRunner`]; the engine never sees DataFusion.
//!
//! This module must never change what a query answers: a fragment computes
//! exactly what the replaced subtree would have computed over the same rows.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    displayable, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::{
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::StreamExt;
use parking_lot::Mutex;
use prost::Message;
use slicedb_engine::fragment::{FragmentRunner, FragmentStream, ScanBatches};
use slicedb_engine::EngineError;

use crate::provider::BroadcastScanExec;

/// The leaf of a fragment: one slice's scanned rows. At the coordinator it
/// only stands for the scan (it is never run there); on a node it is bound
/// to the slice's scan when the fragment is decoded.
pub struct SliceInputExec {
    schema: SchemaRef,
    input: Mutex<Option<ScanBatches>>,
    /// Where the input's own (engine) error is left, so that it reaches the
    /// node as itself and not as a query error.
    failure: Arc<Mutex<Option<EngineError>>>,
    props: Arc<PlanProperties>,
}

impl SliceInputExec {
    fn new(
        schema: SchemaRef,
        input: Option<ScanBatches>,
        failure: Arc<Mutex<Option<EngineError>>>,
    ) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        SliceInputExec {
            schema,
            input: Mutex::new(input),
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
        write!(f, "SliceInputExec")
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
        let input = match (partition, self.input.lock().take()) {
            (0, Some(input)) => input,
            (0, None) => {
                return Err(DataFusionError::Internal(
                    "a fragment's slice input has no scan bound to it (or was run twice)".into(),
                ))
            }
            (p, _) => {
                return Err(DataFusionError::Internal(format!(
                    "a fragment's slice input has one partition, not {}",
                    p + 1
                )))
            }
        };
        // The scan reads the disk: pull it on a blocking thread.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(2);
        let failure = self.failure.clone();
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
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// Encodes [`SliceInputExec`] (its schema) inside a fragment; decoding binds
/// the scan it was built with.
#[derive(Default)]
struct FragmentCodec {
    input: Mutex<Option<ScanBatches>>,
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
        let schema = datafusion_proto::protobuf::Schema::decode(buf)
            .map_err(|e| DataFusionError::Internal(format!("fragment leaf schema: {e}")))?;
        let schema: Schema = (&schema).try_into()?;
        Ok(Arc::new(SliceInputExec::new(
            Arc::new(schema),
            self.input.lock().take(),
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
        schema
            .encode(buf)
            .map_err(|e| DataFusionError::Internal(format!("fragment leaf schema: {e}")))
    }
}

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
    fn decode(
        &self,
        fragment: &[u8],
        codec: &FragmentCodec,
    ) -> Result<Arc<dyn ExecutionPlan>, EngineError> {
        let plan = physical_plan_from_bytes_with_extension_codec(fragment, &self.ctx, codec)
            .map_err(|e| EngineError::InvalidRequest(format!("bad query fragment: {e}")))?;
        let parts = plan.properties().output_partitioning().partition_count();
        if parts != 1 {
            return Err(EngineError::InvalidRequest(format!(
                "a query fragment must have one output partition, not {parts}"
            )));
        }
        Ok(plan)
    }
}

impl FragmentRunner for Runner {
    fn schema(&self, fragment: &[u8]) -> Result<SchemaRef, EngineError> {
        Ok(self.decode(fragment, &FragmentCodec::default())?.schema())
    }

    fn run(&self, fragment: &[u8], input: ScanBatches) -> Result<FragmentStream, EngineError> {
        let codec = FragmentCodec {
            input: Mutex::new(Some(input)),
            failure: Arc::new(Mutex::new(None)),
        };
        let failure = codec.failure.clone();
        let plan = self.decode(fragment, &codec)?;
        let stream = plan
            .execute(0, self.ctx.clone())
            .map_err(|e| EngineError::Query(e.to_string()))?;
        Ok(Box::pin(stream.map(move |item| {
            item.map_err(|e| match failure.lock().take() {
                Some(engine) => engine,
                None => EngineError::Query(e.to_string()),
            })
        })))
    }
}

/// The physical optimizer rule that moves partial aggregates to the nodes
/// (see the module docs).
#[derive(Debug, Default)]
pub struct PushDownFragments;

impl PhysicalOptimizerRule for PushDownFragments {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            Ok(match push_down(&node) {
                Some(pushed) => Transformed::yes(pushed),
                None => Transformed::no(node),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "slicedb_push_down_fragments"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `node` rewritten as a scan carrying it as a fragment, if it can run on
/// the nodes.
fn push_down(node: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    let agg = node.downcast_ref::<AggregateExec>()?;
    if *agg.mode() != AggregateMode::Partial {
        return None;
    }
    // Walk down to the scan through row-local operators.
    let mut chain: Vec<Arc<dyn ExecutionPlan>> = vec![node.clone()];
    let mut cur = agg.input().clone();
    let scan = loop {
        if cur.is::<BroadcastScanExec>() {
            break cur;
        }
        let keep = cur.is::<FilterExec>() || cur.is::<ProjectionExec>();
        let skip = cur
            .downcast_ref::<RepartitionExec>()
            .is_some_and(|r| matches!(r.partitioning(), Partitioning::RoundRobinBatch(_)));
        if !keep && !skip {
            return None;
        }
        let next = cur.children().first().map(|c| (*c).clone())?;
        if keep {
            chain.push(cur.clone());
        }
        cur = next;
    };
    let scan = scan.downcast_ref::<BroadcastScanExec>()?;
    if !scan.accepts_fragment() {
        return None;
    }
    // Rebuild the chain bottom-up over the slice input.
    let mut plan: Arc<dyn ExecutionPlan> = Arc::new(SliceInputExec::new(
        scan.schema(),
        None,
        Arc::new(Mutex::new(None)),
    ));
    let mut summary = Vec::new();
    for op in chain.iter().rev() {
        plan = op
            .clone()
            .replace_children(
                vec![plan],
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
            )
            .ok()?;
        summary.push(
            displayable(op.as_ref())
                .one_line()
                .to_string()
                .trim()
                .to_string(),
        );
    }
    if plan.schema().fields() != node.schema().fields() {
        return None;
    }
    let bytes = match physical_plan_to_bytes_with_extension_codec(plan, &FragmentCodec::default()) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, "partial aggregate stays at the coordinator: not encodable");
            return None;
        }
    };
    summary.reverse();
    Some(Arc::new(scan.with_fragment(
        bytes.to_vec(),
        node.schema(),
        summary.join(" <- "),
    )))
}

/// How a plan shows which of its parts run on the nodes (for tests and
/// EXPLAIN readers): the fragment summaries of its scans.
pub fn fragments_of(plan: &Arc<dyn ExecutionPlan>) -> Vec<String> {
    let mut out = Vec::new();
    let _ = plan.apply(|p| {
        if let Some(scan) = p.downcast_ref::<BroadcastScanExec>() {
            if let Some(s) = scan.fragment_summary() {
                out.push(s.to_string());
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}
