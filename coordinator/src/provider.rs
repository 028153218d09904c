//! A slicedb table inside DataFusion.
//!
//! [`SliceTable`] is the `TableProvider`: its scan is a broadcast — one Flight
//! `do_get` per node holding slices, each carrying the map epoch, the slices
//! that node must answer for, the projection and the pushed-down filters —
//! and its insert hashes rows to slices through a [`Loader`].
//!
//! [`BroadcastScanExec`] checks that every slice of the map is requested from
//! exactly one node, and that every node answered each of its slices exactly
//! once (a `done` tag per slice, with a row count that must match what
//! arrived). A missing, repeated or foreign slice fails the query: a partial
//! answer is never returned.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, SchemaRef};
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::error::FlightError;
use arrow_flight::Ticket;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::Statistics;
use datafusion::config::ConfigOptions;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_expr_common::physical_expr::snapshot_physical_expr;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterPushdownPhase, FilterPushdownPropagation, PushedDown,
};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use slicedb_engine::proto::{pb, ErrorKind};
use slicedb_engine::{NodeId, SliceId};
use tokio::sync::mpsc;

use crate::catalog::TableMeta;
use crate::cluster::Cluster;
use crate::filter::{implied_by, to_predicate};
use crate::load::Loader;
use crate::nodes::NodeClient;
use crate::txn::Txn;
use crate::CoordinatorError;

tokio::task_local! {
    /// The transaction block of the statement being planned on this task, if
    /// any. The SQL front end sets it around a statement inside BEGIN ...
    /// COMMIT; scans then read the block's snapshot (and its own writes) and
    /// inserts write under its xid. Without it, a scan takes a fresh snapshot
    /// and an insert is its own transaction.
    pub static CURRENT_TXN: Arc<Txn>;
}

/// The transaction block the current task runs in, if any.
pub fn current_txn() -> Option<Arc<Txn>> {
    CURRENT_TXN.try_with(|t| t.clone()).ok()
}

/// Name of the slice column of a DML scan.
pub const DML_SLICE: &str = "_slice";

/// A distributed table.
pub struct SliceTable {
    cluster: Arc<Cluster>,
    meta: Arc<TableMeta>,
    /// A DML scan: the schema gains `_slice` and `_rowid` after the user
    /// columns, so UPDATE and DELETE know which rows of which slice to delete.
    dml: Option<SchemaRef>,
}

impl fmt::Debug for SliceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SliceTable")
            .field("table", &self.meta.name)
            .finish()
    }
}

impl SliceTable {
    pub fn new(cluster: Arc<Cluster>, meta: Arc<TableMeta>) -> Self {
        SliceTable {
            cluster,
            meta,
            dml: None,
        }
    }

    /// The table as UPDATE and DELETE scan it: user columns, `_slice`, `_rowid`.
    /// A table hash distributed on one column: that column's name and type,
    /// and whether the table is mirrored (its slices in the primary
    /// segments) or not (the temp segments). None for a DML scan.
    pub(crate) fn distribution(&self) -> Option<(String, DataType, bool)> {
        if self.dml.is_some() {
            return None;
        }
        match (&self.meta.distribution, self.meta.key.as_slice()) {
            (crate::Distribution::Hash(_), [k]) => {
                let f = self.meta.schema.fields().get(*k)?;
                Some((f.name().clone(), f.data_type().clone(), self.meta.mirrored))
            }
            _ => None,
        }
    }

    pub fn for_dml(cluster: Arc<Cluster>, meta: Arc<TableMeta>) -> Self {
        let mut fields: Vec<_> = meta.schema.fields().iter().cloned().collect();
        fields.push(Arc::new(arrow::datatypes::Field::new(
            DML_SLICE,
            arrow::datatypes::DataType::UInt32,
            false,
        )));
        fields.push(Arc::new(arrow::datatypes::Field::new(
            slicedb_engine::HIDDEN_ROWID,
            arrow::datatypes::DataType::Int64,
            false,
        )));
        let dml = Some(Arc::new(arrow::datatypes::Schema::new(fields)));
        SliceTable { cluster, meta, dml }
    }
}

#[async_trait]
impl TableProvider for SliceTable {
    fn schema(&self) -> SchemaRef {
        self.dml.clone().unwrap_or_else(|| self.meta.schema.clone())
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match to_predicate(f, &self.meta.schema) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let map = self.cluster.map();
        let schema = match projection {
            Some(p) => Arc::new(self.schema().project(p)?),
            None => self.schema(),
        };
        let snapshot = current_txn()
            .map(|t| t.snapshot.clone())
            .unwrap_or_else(|| self.cluster.read_snapshot());
        let dml = self.dml.as_ref().map(|_| DmlShape {
            nuser: self.meta.schema.fields().len(),
            projection: projection.cloned(),
        });
        // A DML scan reads every user column plus the hidden ones and
        // projects at the coordinator.
        let projection = if dml.is_some() { None } else { projection };
        let predicates: Vec<pb::Predicate> = filters
            .iter()
            .filter_map(|f| to_predicate(f, &self.meta.schema))
            .map(|p| pb::Predicate::from(&p))
            .collect();
        let base = pb::ScanRequest {
            epoch: map.epoch(),
            table: self.meta.id,
            slices: Vec::new(),
            projection: projection
                .map(|p| p.iter().map(|&i| i as u32).collect())
                .unwrap_or_default(),
            all_columns: projection.is_none(),
            filters: predicates.clone(),
            include_hidden: dml.is_some(),
            snapshot: Some(pb::Snapshot::from(&snapshot)),
            fragment: Vec::new(),
            inputs: Vec::new(),
            broadcast: Vec::new(),
        };
        let all: Vec<SliceId> = map.slices().iter().map(|e| e.slice).collect();
        let parts = plan_parts(&self.cluster, &self.meta, &map, &all, &base)?;
        Ok(Arc::new(BroadcastScanExec::new(
            self.cluster.clone(),
            self.meta.clone(),
            schema,
            parts,
            predicates.len(),
            dml,
            base,
        )))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(CoordinatorError::NotSupported(format!(
                "{insert_op} into a slicedb table"
            ))
            .into());
        }
        Ok(Arc::new(DataSinkExec::new(
            input,
            Arc::new(SliceSink {
                cluster: self.cluster.clone(),
                meta: self.meta.clone(),
                txn: current_txn(),
            }),
            None,
        )))
    }
}

/// Who answers for `slices` under `map`: each slice exactly once, from where
/// it is served now (its primary, or after a failover its mirror's node
/// from the mirror segment, so a survivor may answer twice, once per
/// segment). A slice that cannot be served fails the plan, naming it.
fn plan_parts(
    cluster: &Arc<Cluster>,
    meta: &TableMeta,
    map: &crate::map::DistMap,
    slices: &[SliceId],
    base: &pb::ScanRequest,
) -> DfResult<Vec<ScanPart>> {
    let mut per_node: BTreeMap<NodeId, Vec<pb::SliceScan>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for &slice in slices {
        if !seen.insert(slice) {
            return Err(CoordinatorError::IncompleteScan {
                table: meta.name.clone(),
                reason: format!("slice {slice} planned twice"),
            }
            .into());
        }
        let e =
            map.slices()
                .get(slice as usize)
                .ok_or_else(|| CoordinatorError::IncompleteScan {
                    table: meta.name.clone(),
                    reason: format!("slice {slice} is not in the map"),
                })?;
        let (loc, from_mirror) = e.serving()?;
        let segment = meta.segment_for(slice, from_mirror)?;
        per_node.entry(loc.node).or_default().push(pb::SliceScan {
            slice,
            segment: segment as i32,
        });
    }
    let mut parts = Vec::new();
    for (node, scans) in per_node {
        let mut request = base.clone();
        request.epoch = map.epoch();
        request.slices = scans;
        parts.push(ScanPart {
            node: cluster.node(node)?.clone(),
            slices: request.slices.iter().map(|s| s.slice).collect(),
            request,
        });
    }
    Ok(parts)
}

/// Resolves once the map declares `node` failed.
async fn wait_until_down(cluster: &Arc<Cluster>, node: NodeId) {
    while !cluster.is_down(node) {
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// How long a scan waits for a failover before it gives up on a node.
const FAILOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether a scan error may be cured by a map change (a node died or was
/// fenced): then the scan waits for the new map and asks again.
fn retryable(e: &CoordinatorError) -> bool {
    match e {
        CoordinatorError::NodeUnreachable { .. } => true,
        CoordinatorError::Node { kind, .. } => {
            matches!(
                kind,
                ErrorKind::StaleEpoch
                    | ErrorKind::SliceNotOwned
                    | ErrorKind::Internal
                    | ErrorKind::Unspecified
                    | ErrorKind::Checksum
                    | ErrorKind::Io
            )
        }
        _ => false,
    }
}

#[derive(Clone)]
struct ScanPart {
    node: NodeClient,
    slices: Vec<SliceId>,
    request: pb::ScanRequest,
}

/// How a DML scan turns a node's batch (all user columns + hidden) into
/// its output: user columns, `_slice`, `_rowid`, then the projection.
#[derive(Debug, Clone)]
struct DmlShape {
    nuser: usize,
    projection: Option<Vec<usize>>,
}

/// One partition per node; each streams the node's tagged answer. A slice's
/// rows are passed on only once its `done` tag arrived, so when a node dies
/// mid-answer the slices it had not finished are asked again, after the
/// failover, from where the new map serves them: nothing twice, nothing lost.
pub struct BroadcastScanExec {
    cluster: Arc<Cluster>,
    meta: Arc<TableMeta>,
    table: String,
    base: pb::ScanRequest,
    schema: SchemaRef,
    parts: Vec<ScanPart>,
    pushed_filters: usize,
    dml: Option<DmlShape>,
    /// What the nodes run over each slice's rows (`base.fragment`), shown
    /// as its operators from the top down; None: a plain scan.
    fragment: Option<String>,
    /// The fragment's plan (with `SliceInputExec` leaves), to build on.
    fragment_plan: Option<Arc<dyn ExecutionPlan>>,
    /// Relations the coordinator computes first and sends whole with the
    /// request (`base.broadcast`): the small build sides of hash joins the
    /// fragment runs on the nodes. These are this plan's children.
    broadcast: Broadcast,
    /// Their rows, encoded once for every partition of one execution, and
    /// the filters their keys imply for this scan's table.
    broadcast_rows: Arc<tokio::sync::OnceCell<(Vec<bytes::Bytes>, Vec<pb::Predicate>)>>,
    /// Runtime filters of the hash joins this scan is the probe side of
    /// (DataFusion's dynamic filters: the build side's key bounds and, when
    /// short, its keys). Read once, when the scan is first polled, which a
    /// join does only after its build side is complete; what of them a node
    /// can evaluate is added to the request's filters.
    runtime: Vec<Arc<dyn PhysicalExpr>>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl BroadcastScanExec {
    fn new(
        cluster: Arc<Cluster>,
        meta: Arc<TableMeta>,
        schema: SchemaRef,
        parts: Vec<ScanPart>,
        pushed_filters: usize,
        dml: Option<DmlShape>,
        base: pb::ScanRequest,
    ) -> Self {
        let table = meta.name.clone();
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(parts.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        BroadcastScanExec {
            cluster,
            meta,
            base,
            table,
            schema,
            parts,
            pushed_filters,
            dml,
            fragment: None,
            fragment_plan: None,
            broadcast: Broadcast::default(),
            broadcast_rows: Arc::default(),
            runtime: Vec::new(),
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// Whether the nodes could run a fragment over this scan: not a DML
    /// scan (its hidden columns are for the coordinator), not one already
    /// carrying a fragment.
    pub(crate) fn accepts_fragment(&self) -> bool {
        self.dml.is_none() && self.fragment.is_none()
    }

    /// The fragment's plan, if the nodes run one (see [`crate::fragment`]).
    pub(crate) fn fragment_plan(&self) -> Option<&Arc<dyn ExecutionPlan>> {
        self.fragment_plan.as_ref()
    }

    /// The other tables a fragment reads, slice by slice.
    pub(crate) fn inputs(&self) -> &[pb::ScanInput] {
        &self.base.inputs
    }

    /// Tables with fewer rows are not the probe side of a join run on the
    /// nodes with its build side sent whole.
    pub(crate) fn broadcast_join_min_rows(&self) -> u64 {
        self.cluster.tuning().broadcast_join_min_rows
    }

    /// The relations a fragment reads whole (see [`Self::broadcast`]).
    pub(crate) fn broadcast(&self) -> &Broadcast {
        &self.broadcast
    }

    /// This plain scan as another input of a fragment over a scan it is
    /// [`Self::colocated_with`].
    pub(crate) fn as_input(&self) -> pb::ScanInput {
        pb::ScanInput {
            table: self.base.table,
            projection: self.base.projection.clone(),
            all_columns: self.base.all_columns,
            filters: self.base.filters.clone(),
        }
    }

    /// Whether each slice of both scans is read on the same node, from the
    /// same segment: then a fragment can read both side by side.
    pub(crate) fn colocated_with(&self, other: &BroadcastScanExec) -> bool {
        self.dml.is_none()
            && other.dml.is_none()
            && self.meta.mirrored == other.meta.mirrored
            && self.base.epoch == other.base.epoch
            && self.parts.len() == other.parts.len()
            && self
                .parts
                .iter()
                .zip(&other.parts)
                .all(|(a, b)| a.node.id == b.node.id && a.request.slices == b.request.slices)
    }

    /// The table's one distribution column (index into its columns), if it
    /// is hash distributed on a single column.
    pub(crate) fn distribution_column(&self) -> Option<usize> {
        match (&self.meta.distribution, self.meta.key.as_slice()) {
            (crate::Distribution::Hash(_), [k]) => Some(*k),
            _ => None,
        }
    }

    /// The table column that column `col` of the scanned rows is (the
    /// scan's output, or its fragment's leaf 0).
    pub(crate) fn table_column(&self, col: usize) -> Option<usize> {
        if self.dml.is_some() {
            return None;
        }
        if self.base.all_columns {
            Some(col)
        } else {
            self.base.projection.get(col).map(|&c| c as usize)
        }
    }

    /// The column of this scan's table that output column `col` is, if it
    /// is one unchanged: through a fragment's filters, projections,
    /// grouping and joins (from the side that is not padded with NULLs).
    pub(crate) fn output_table_column(&self, col: usize) -> Option<usize> {
        match &self.fragment_plan {
            None => self.table_column(col),
            Some(plan) => {
                crate::fragment::leaf_column(plan, col).and_then(|c| self.table_column(c))
            }
        }
    }

    /// This scan with these runtime filters.
    fn with_runtime(&self, runtime: Vec<Arc<dyn PhysicalExpr>>) -> BroadcastScanExec {
        let mut exec = BroadcastScanExec::new(
            self.cluster.clone(),
            self.meta.clone(),
            self.schema.clone(),
            self.parts.clone(),
            self.pushed_filters,
            self.dml.clone(),
            self.base.clone(),
        );
        exec.fragment = self.fragment.clone();
        exec.fragment_plan = self.fragment_plan.clone();
        exec.broadcast = self.broadcast.clone();
        exec.runtime = runtime;
        exec
    }

    /// This scan without the runtime filters that contain one of the dynamic
    /// expressions `ids`; `None` if it has none of them.
    pub(crate) fn without_runtime(&self, ids: &BTreeSet<u64>) -> Option<Arc<dyn ExecutionPlan>> {
        let keep: Vec<Arc<dyn PhysicalExpr>> = self
            .runtime
            .iter()
            .filter(|e| {
                !e.exists(|x| Ok(x.expression_id().is_some_and(|i| ids.contains(&i))))
                    .unwrap_or(false)
            })
            .cloned()
            .collect();
        (keep.len() < self.runtime.len())
            .then(|| Arc::new(self.with_runtime(keep)) as Arc<dyn ExecutionPlan>)
    }

    /// Rows of the table (as the nodes last reported), and whether the scan
    /// filters them (pushed filters, or a fragment).
    pub(crate) fn table_rows_and_filtered(&self) -> (Option<u64>, bool) {
        (
            self.cluster.table_rows(self.meta.id),
            self.pushed_filters > 0 || self.fragment_plan.is_some(),
        )
    }

    /// This scan with the nodes running `plan` (encoded as `fragment`, its
    /// output schema `schema`) over each slice's rows of this table and of
    /// `inputs`, and over the rows of `broadcast` (computed here first).
    pub(crate) fn with_fragment(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        fragment: Vec<u8>,
        schema: SchemaRef,
        summary: String,
        inputs: Vec<pb::ScanInput>,
        broadcast: Broadcast,
    ) -> BroadcastScanExec {
        let mut base = self.base.clone();
        base.fragment = fragment.clone();
        base.inputs = inputs.clone();
        let parts = self
            .parts
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p.request.fragment = fragment.clone();
                p.request.inputs = inputs.clone();
                p
            })
            .collect();
        let mut exec = BroadcastScanExec::new(
            self.cluster.clone(),
            self.meta.clone(),
            schema,
            parts,
            self.pushed_filters,
            None,
            base,
        );
        exec.fragment = Some(summary);
        exec.fragment_plan = Some(plan);
        exec.broadcast = broadcast;
        exec
    }
}

impl fmt::Debug for BroadcastScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BroadcastScanExec")
            .field("table", &self.table)
            .finish()
    }
}

impl DisplayAs for BroadcastScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let slices: usize = self.parts.iter().map(|p| p.slices.len()).sum();
        write!(
            f,
            "BroadcastScanExec: table={}, nodes={}, slices={}, pushed_filters={}, {}{}{}tags=[{}]",
            self.table,
            self.parts.len(),
            slices,
            self.pushed_filters,
            match self.runtime.len() {
                0 => String::new(),
                n => format!("runtime_filters={n}, "),
            },
            match self.broadcast.sides.len() {
                0 => String::new(),
                n => format!("broadcast={n}, "),
            },
            match &self.fragment {
                Some(fragment) => format!("fragment=[{fragment}], "),
                None => String::new(),
            },
            self.parts
                .iter()
                .map(|p| format!(
                    "node{}:{}",
                    p.node.id,
                    p.request
                        .slices
                        .iter()
                        .map(|s| format!(
                            "({},{})",
                            s.slice,
                            match pb::Segment::try_from(s.segment) {
                                Ok(pb::Segment::Mirror) => "mirror",
                                Ok(pb::Segment::Temp) => "temp",
                                _ => "primary",
                            }
                        ))
                        .collect::<Vec<_>>()
                        .join("")
                ))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

impl ExecutionPlan for BroadcastScanExec {
    fn name(&self) -> &str {
        "BroadcastScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    /// Row counts from the nodes' last heartbeat (inexact): what lets the
    /// optimizer build hash joins on the small side, and broadcast a small
    /// side instead of repartitioning a large one.
    fn partition_statistics(&self, partition: Option<usize>) -> DfResult<Arc<Statistics>> {
        let mut st = Statistics::new_unknown(&self.schema);
        if self.fragment.is_some() {
            // A fragment's output size is not the table's.
            return Ok(Arc::new(st));
        }
        if let Some(rows) = self.cluster.table_rows(self.meta.id) {
            let rows = match partition {
                None => rows,
                Some(_) => rows / self.parts.len().max(1) as u64,
            };
            st.num_rows = Precision::Inexact(rows as usize);
        }
        Ok(Arc::new(st))
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.broadcast.sides.iter().collect()
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; self.broadcast.sides.len()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        // The runtime filters it consumes: a join computes its dynamic filter
        // only if some node below it reports using it.
        for e in &self.runtime {
            if f(e)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != self.broadcast.sides.len() {
            return Err(DataFusionError::Internal(format!(
                "BroadcastScanExec has {} children, got {}",
                self.broadcast.sides.len(),
                children.len()
            )));
        }
        let mut exec = self.with_runtime(self.runtime.clone());
        exec.broadcast.sides = children;
        Ok(Arc::new(exec))
    }

    /// Keep the dynamic filters of the joins above. What they say of output
    /// columns that are table columns unchanged (see
    /// [`Self::output_table_column`]) filters the table's rows before any
    /// fragment runs over them. They are reported as not pushed down: the
    /// nodes apply a weaker form at most, and the join still checks every
    /// row.
    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> DfResult<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let filters = child_pushdown_result.parent_filters;
        let res = FilterPushdownPropagation::with_parent_pushdown_result(vec![
            PushedDown::No;
            filters.len()
        ]);
        // A table with fewer rows than `runtime_filter_min_rows` (as the
        // nodes last reported) is read at once instead: a scan with runtime
        // filters starts only once the join's build side is complete, and a
        // small table costs less to ship than to wait for.
        let large = self
            .cluster
            .table_rows(self.meta.id)
            .is_some_and(|rows| rows >= self.cluster.tuning().runtime_filter_min_rows);
        let keyed = (0..self.schema.fields().len()).any(|c| self.output_table_column(c).is_some());
        if phase != FilterPushdownPhase::Post || self.dml.is_some() || !keyed || !large {
            return Ok(res);
        }
        let dynamic: Vec<Arc<dyn PhysicalExpr>> = filters
            .into_iter()
            .map(|f| f.filter)
            .filter(|f| {
                f.exists(|e| Ok(e.downcast_ref::<DynamicFilterPhysicalExpr>().is_some()))
                    .unwrap_or(false)
            })
            .collect();
        if dynamic.is_empty() {
            return Ok(res);
        }
        let runtime = self.runtime.iter().cloned().chain(dynamic).collect();
        Ok(res.with_updated_node(Arc::new(self.with_runtime(runtime))))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let schema = self.schema.clone();
        let Some(part) = self.parts.get(partition).cloned() else {
            // A table on a cluster with no slices: nothing to read.
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::empty(),
            )));
        };
        let counters = ScanCounters {
            rows: MetricBuilder::new(&self.metrics).output_rows(partition),
            blocks_total: MetricBuilder::new(&self.metrics).counter("blocks_total", partition),
            blocks_pruned: MetricBuilder::new(&self.metrics).counter("blocks_pruned", partition),
            slices: MetricBuilder::new(&self.metrics).counter("slices_answered", partition),
        };
        let cluster = self.cluster.clone();
        let table = self.table.clone();
        let out_schema = schema.clone();
        let dml = self.dml.clone();
        let meta = self.meta.clone();
        let base = self.base.clone();
        let start = move |extra: Vec<pb::Predicate>, broadcast: Vec<bytes::Bytes>| {
            let (tx, rx) = mpsc::channel::<DfResult<RecordBatch>>(4);
            let (mut base, mut part) = (base, part);
            base.filters.extend(extra.iter().cloned());
            part.request.filters.extend(extra);
            base.broadcast.clone_from(&broadcast);
            part.request.broadcast = broadcast;
            tokio::spawn(async move {
                let res = scan_with_failover(
                    &cluster, &meta, &base, part, out_schema, &table, &tx, &counters, &dml,
                )
                .await;
                if let Err(e) = res {
                    let _ = tx.send(Err(e)).await;
                }
            });
            tokio_stream_from(rx)
        };
        if self.runtime.is_empty() && self.broadcast.sides.is_empty() {
            // Start at once: the nodes read while the plan sets up.
            let stream = start(Vec::new(), Vec::new());
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)));
        }
        // Start when first polled: the join's build side is complete then,
        // and so are its runtime filters. Relations sent whole are computed
        // first, once for all partitions.
        let runtime = self.runtime.clone();
        let columns: Vec<Option<usize>> = (0..self.schema.fields().len())
            .map(|c| self.output_table_column(c))
            .collect();
        let broadcast = self.broadcast.clone();
        let cell = self.broadcast_rows.clone();
        let sent = MetricBuilder::new(&self.metrics).counter("broadcast_rows", partition);
        let stream = futures::stream::once(async move {
            let (encoded, mut implied) = if broadcast.sides.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                match cell
                    .get_or_try_init(|| compute_broadcast(broadcast, context, sent))
                    .await
                {
                    Ok(rows) => rows.clone(),
                    Err(e) => return futures::stream::once(async { Err(e) }).boxed(),
                }
            };
            implied.extend(runtime_predicates(&runtime, &columns));
            start(implied, encoded).boxed()
        })
        .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Relations a fragment reads whole ([`BroadcastScanExec`]'s children),
/// and which of their columns are keys of hash joins with the scan's table.
#[derive(Clone, Default)]
pub(crate) struct Broadcast {
    pub sides: Vec<Arc<dyn ExecutionPlan>>,
    pub keys: Vec<BroadcastKey>,
}

/// Column `column` of side `side` is the build key of an inner or semi join
/// whose probe key is the scan's table column `table_column`: a probe row
/// whose key is none of the side's keys is dropped by the join.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BroadcastKey {
    pub side: usize,
    pub column: usize,
    pub table_column: usize,
}

/// Run the relations a fragment reads whole, all at once, each encoded as
/// one Arrow IPC stream for the request; `sent` counts their rows. Also
/// what their join keys imply for the scan's table (bounds, and short
/// integer key lists).
async fn compute_broadcast(
    broadcast: Broadcast,
    context: Arc<TaskContext>,
    sent: Count,
) -> DfResult<(Vec<bytes::Bytes>, Vec<pb::Predicate>)> {
    let rows = futures::future::try_join_all(
        broadcast
            .sides
            .iter()
            .map(|side| datafusion::physical_plan::collect(side.clone(), context.clone())),
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (side, batches) in broadcast.sides.iter().zip(&rows) {
        sent.add(batches.iter().map(RecordBatch::num_rows).sum());
        let ipc = slicedb_engine::proto::batches_to_ipc(&side.schema(), batches)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        out.push(bytes::Bytes::from(ipc));
    }
    let implied = broadcast
        .keys
        .iter()
        .filter_map(|k| {
            let keys: Vec<arrow::array::ArrayRef> = rows
                .get(k.side)?
                .iter()
                .filter_map(|b| b.columns().get(k.column).cloned())
                .collect();
            crate::filter::implied_by_keys(&keys, k.table_column)
        })
        .map(|p| pb::Predicate::from(&p))
        .collect();
    Ok((out, implied))
}

/// The node filters implied by `runtime` filters as they are now; `columns`
/// maps the scan's output columns to the table's.
fn runtime_predicates(
    runtime: &[Arc<dyn PhysicalExpr>],
    columns: &[Option<usize>],
) -> Vec<pb::Predicate> {
    let column = |c: usize| columns.get(c).copied().flatten();
    runtime
        .iter()
        .filter_map(|e| snapshot_physical_expr(e.clone()).ok())
        .filter_map(|e| implied_by(&e, &column))
        .map(|p| pb::Predicate::from(&p))
        .collect()
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<DfResult<RecordBatch>>,
) -> impl futures::Stream<Item = DfResult<RecordBatch>> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct ScanCounters {
    rows: Count,
    blocks_total: Count,
    blocks_pruned: Count,
    slices: Count,
}

/// Scan one part; on a node failure wait for the failover and ask the new
/// owners for the slices not yet finished.
#[allow(clippy::too_many_arguments)]
async fn scan_with_failover(
    cluster: &Arc<Cluster>,
    meta: &Arc<TableMeta>,
    base: &pb::ScanRequest,
    part: ScanPart,
    schema: SchemaRef,
    table: &str,
    tx: &mpsc::Sender<DfResult<RecordBatch>>,
    counters: &ScanCounters,
    dml: &Option<DmlShape>,
) -> DfResult<()> {
    let all: Vec<SliceId> = part.slices.clone();
    let mut done: BTreeSet<SliceId> = BTreeSet::new();
    let mut parts = vec![part];
    let deadline = tokio::time::Instant::now() + FAILOVER_WAIT;
    loop {
        let mut failure = None;
        for p in &parts {
            let (node, epoch) = (p.node.id, p.request.epoch);
            // A hung node never errors: race its answer against the system
            // manager declaring it failed.
            let res = tokio::select! {
                r = scan_node(p.clone(), schema.clone(), table, tx, counters, dml, &mut done) => r,
                _ = wait_until_down(cluster, node) => Err(CoordinatorError::NodeUnreachable {
                    node,
                    address: p.node.address.clone(),
                    message: "declared failed while answering a scan".into(),
                }),
            };
            if let Err(e) = res {
                if !retryable(&e) {
                    return Err(e.into());
                }
                failure = Some((node, epoch, e));
                break;
            }
        }
        let Some((node, epoch, err)) = failure else {
            return Ok(());
        };
        cluster.report_unreachable(node);
        // Wait for the system manager to change the map (it probes the node
        // at once), then re-plan what is left. A node still at the previous
        // epoch (the new map is being installed) is simply asked again.
        let behind = matches!(
            &err,
            CoordinatorError::Node {
                kind: ErrorKind::StaleEpoch,
                ..
            }
        );
        let asked = tokio::time::Instant::now();
        loop {
            let map = cluster.map();
            if map.epoch() > epoch
                || (behind && asked.elapsed() >= std::time::Duration::from_millis(50))
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(err.into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        let left: Vec<SliceId> = all.iter().copied().filter(|s| !done.contains(s)).collect();
        tracing::info!(table, node, slices = ?left, "scan retried on the new map after a node failure");
        if left.is_empty() {
            return Ok(());
        }
        parts = plan_parts(cluster, meta, &cluster.map(), &left, base)?;
    }
}

async fn scan_node(
    part: ScanPart,
    schema: SchemaRef,
    table: &str,
    tx: &mpsc::Sender<DfResult<RecordBatch>>,
    counters: &ScanCounters,
    dml: &Option<DmlShape>,
    finished: &mut BTreeSet<SliceId>,
) -> Result<(), CoordinatorError> {
    let incomplete = |reason: String| CoordinatorError::IncompleteScan {
        table: table.to_string(),
        reason,
    };
    let node = part.node;
    let mut client = node.flight.clone();
    let ticket = Ticket::new(part.request.encode_to_vec());
    let response = client.do_get(ticket).await.map_err(|s| node.err(s))?;
    let node_for_err = node.clone();
    let flight = response
        .into_inner()
        .map_err(move |s| FlightError::Tonic(Box::new(s)));
    let mut decoder = FlightDataDecoder::new(flight);
    let expected: BTreeSet<SliceId> = part.slices.iter().copied().collect();
    let mut done: BTreeSet<SliceId> = BTreeSet::new();
    let mut rows_per_slice: BTreeMap<SliceId, u64> = BTreeMap::new();
    // A slice's batches, held until its `done` tag: then they are final.
    let mut held: BTreeMap<SliceId, Vec<RecordBatch>> = BTreeMap::new();
    while let Some(msg) = decoder.next().await {
        let msg = msg.map_err(|e| match e {
            FlightError::Tonic(s) => node_for_err.err(*s),
            other => CoordinatorError::Node {
                node: node_for_err.id,
                kind: ErrorKind::Unspecified,
                message: other.to_string(),
            },
        })?;
        let DecodedPayload::RecordBatch(batch) = msg.payload else {
            continue;
        };
        let tag = pb::StreamTag::decode(msg.inner.app_metadata.as_ref()).map_err(|e| {
            incomplete(format!("node {} sent a batch with a bad tag: {e}", node.id))
        })?;
        if !expected.contains(&tag.slice) {
            return Err(incomplete(format!(
                "node {} answered for slice {}, which it was not asked for",
                node.id, tag.slice
            )));
        }
        if done.contains(&tag.slice) {
            return Err(incomplete(format!(
                "node {} answered slice {} twice",
                node.id, tag.slice
            )));
        }
        if tag.done {
            let got = rows_per_slice.get(&tag.slice).copied().unwrap_or(0);
            if got != tag.rows {
                return Err(incomplete(format!(
                    "node {} slice {}: {} rows arrived, {} announced",
                    node.id, tag.slice, got, tag.rows
                )));
            }
            done.insert(tag.slice);
            counters.slices.add(1);
            counters.blocks_total.add(tag.blocks_total as usize);
            counters.blocks_pruned.add(tag.blocks_pruned as usize);
            for batch in held.remove(&tag.slice).unwrap_or_default() {
                counters.rows.add(batch.num_rows());
                if tx.send(Ok(batch)).await.is_err() {
                    return Ok(()); // the query stopped reading (LIMIT, cancel)
                }
            }
            finished.insert(tag.slice);
            continue;
        }
        if batch.num_rows() == 0 {
            continue;
        }
        *rows_per_slice.entry(tag.slice).or_default() += batch.num_rows() as u64;
        let columns = match dml {
            None => batch.columns().to_vec(),
            Some(d) => {
                let n = batch.num_rows();
                let mut cols = batch.columns()[..d.nuser].to_vec();
                cols.push(Arc::new(arrow::array::UInt32Array::from_value(
                    tag.slice, n,
                )));
                cols.push(batch.column(d.nuser).clone());
                match &d.projection {
                    Some(p) => p.iter().map(|&i| cols[i].clone()).collect(),
                    None => cols,
                }
            }
        };
        let batch = RecordBatch::try_new_with_options(
            schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?;
        held.entry(tag.slice).or_default().push(batch);
    }
    if done != expected {
        let missing: Vec<_> = expected.difference(&done).collect();
        return Err(incomplete(format!(
            "node {} did not answer for slices {missing:?}",
            node.id
        )));
    }
    Ok(())
}

/// INSERT into a slicedb table: one loader, committed when the input ends.
struct SliceSink {
    cluster: Arc<Cluster>,
    meta: Arc<TableMeta>,
    /// The transaction block the INSERT runs in (None: autocommit).
    txn: Option<Arc<Txn>>,
}

impl fmt::Debug for SliceSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SliceSink")
            .field("table", &self.meta.name)
            .finish()
    }
}

impl DisplayAs for SliceSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SliceSink: table={}", self.meta.name)
    }
}

#[async_trait]
impl DataSink for SliceSink {
    fn schema(&self) -> &SchemaRef {
        &self.meta.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let mut loader = match &self.txn {
            Some(t) => Loader::in_txn(self.cluster.clone(), self.meta.clone(), t.clone()),
            None => Loader::new(self.cluster.clone(), self.meta.clone())?,
        };
        while let Some(batch) = data.next().await {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    loader.abort().await;
                    return Err(e);
                }
            };
            if let Err(e) = loader.push(batch).await {
                loader.abort().await;
                return Err(DataFusionError::from(e));
            }
        }
        Ok(loader.finish().await?)
    }
}
