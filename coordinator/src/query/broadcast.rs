//! The broadcast scan: one Flight `do_get` per node holding slices, each
//! carrying the map epoch, the slices that node must answer for, the
//! projection, the pushed-down filters and, when the nodes run part of the
//! plan, its fragment and the relations it reads whole.
//!
//! [`BroadcastScanExec`] checks that every slice of the map is requested
//! from exactly one node, and (through [`super::node_scan`]) that every
//! node answered each of its slices exactly once. A missing, repeated or
//! foreign slice fails the query: a partial answer is never returned.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::Statistics;
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
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
use futures::StreamExt;
use slicedb_engine::proto::pb;
use tokio::sync::mpsc;

use super::filter::implied_by;
use super::node_scan::{scan_with_failover, DmlShape, ScanCounters, ScanPart};
use crate::catalog::TableMeta;
use crate::cluster::Cluster;
use crate::txn::Txn;

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
    /// The transaction block the scan reads in (its own writes included):
    /// a node it wrote to that fails mid-scan has its work carried over
    /// before the scan asks the new map.
    txn: Option<Arc<Txn>>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl BroadcastScanExec {
    pub(super) fn new(
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
            txn: None,
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

    /// The fragment's plan, if the nodes run one (see [`super::pushdown`]).
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
            Some(plan) => super::lineage::leaf_column(plan, col).and_then(|c| self.table_column(c)),
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
        exec.txn = self.txn.clone();
        exec
    }

    /// This scan, reading in transaction block `txn`.
    pub(super) fn in_txn(mut self, txn: Option<Arc<Txn>>) -> Self {
        self.txn = txn;
        self
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
        exec.txn = self.txn.clone();
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
            spilled: MetricBuilder::new(&self.metrics).counter("slices_spilled", partition),
        };
        let disk = context.runtime_env().disk_manager.clone();
        let txn = self.txn.clone();
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
                    &cluster, &meta, &base, part, out_schema, &table, &tx, &counters, &dml, &disk,
                    &txn,
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
            super::filter::implied_by_keys(&keys, k.table_column)
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
