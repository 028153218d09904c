//! Query fragments: the part of a plan that runs on the nodes, next to the
//! data, so that a node ships its result instead of its rows.
//!
//! [`PushDownFragments`] is a physical optimizer rule. It replaces with a
//! [`BroadcastScanExec`] carrying a fragment (DataFusion's protobuf
//! encoding of the physical plan, with [`SliceInputExec`] leaves):
//! - a hash join of two scans, through filters and projections, whose
//!   tables are distributed on the join key and placed alike (a co-located
//!   join: equal keys live in the same slice);
//! - a hash join whose build side is small (an estimate from the tables'
//!   row counts) and whose probe side is a scan of a large table: the
//!   coordinator computes the build side first and sends its rows whole
//!   with the request, as one more leaf (a broadcast join);
//! - a partial aggregate over a chain of filters and projections over a scan,
//!   or over such a join;
//! - the final step of an aggregate grouped by the distribution key (each
//!   slice's groups are whole), and filters and projections over any of
//!   these.
//!
//! Each node runs the fragment over each of its slices on its own; the
//! coordinator's final aggregate merges the per-slice partial states, and a
//! join's rows are the union of the slices' joins. What the rule cannot
//! encode it leaves alone: the plan is then the one DataFusion made.
//!
//! [`super::node_fragment`] holds the fragment's encoding and the node's
//! runner; [`super::lineage`] follows columns through plans.
//!
//! This module must never change what a query answers: a fragment computes
//! exactly what the replaced subtree would have computed over the same rows.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinType, NullEquality};
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{displayable, ExecutionPlan, Partitioning};
use datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec;
use parking_lot::Mutex;

use super::broadcast::{Broadcast, BroadcastKey, BroadcastScanExec};
use super::lineage::{column_below, leaf_column};
use super::node_fragment::{FragmentCodec, SliceInputExec, DECODER};

datafusion::common::extensions_options! {
    /// slicedb's session settings, `SET slicedb.<name> = <value>`.
    pub struct SlicedbOptions {
        /// Run hash joins whose build side is small on the nodes, the build
        /// side sent to them whole (see `push_broadcast_join`).
        pub broadcast_joins: bool, default = true
        /// The most rows a build side is estimated to have for it to be
        /// sent whole: each node builds one hash table of them.
        pub broadcast_max_rows: u64, default = BROADCAST_MAX_ROWS
        /// The most bytes (estimated) a build side sent whole may have.
        pub broadcast_max_bytes: u64, default = BROADCAST_MAX_BYTES
    }
}

impl datafusion::common::config::ConfigExtension for SlicedbOptions {
    const PREFIX: &'static str = "slicedb";
}

/// The physical optimizer rule that moves work to the nodes (see the module
/// docs). It runs before DataFusion's `EnsureRequirements`, so the
/// repartitioning that the rewritten plan needs is added afterwards, from
/// the fragment scan's own (unknown) partitioning.
#[derive(Debug, Default)]
pub struct PushDownFragments;

impl PhysicalOptimizerRule for PushDownFragments {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let options = config
            .extensions
            .get::<SlicedbOptions>()
            .cloned()
            .unwrap_or_default();
        let broadcast = options.broadcast_joins.then_some(BroadcastLimits {
            rows: options.broadcast_max_rows,
            bytes: options.broadcast_max_bytes,
        });
        plan.transform_up(|node| {
            let pushed = push_join(&node)
                .or_else(|| broadcast.and_then(|limits| push_broadcast_join(&node, limits)))
                .or_else(|| push_final(&node))
                .or_else(|| push_aggregate(&node))
                .or_else(|| push_row_local(&node));
            Ok(match pushed {
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

/// DataFusion's physical optimizer rules with [`PushDownFragments`] placed
/// before `EnsureRequirements` (or last, should that rule be renamed), and
/// [`super::threads::RunOnQueryThreads`] last.
pub fn optimizer_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
    let at = rules
        .iter()
        .position(|r| r.name() == "EnsureRequirements")
        .unwrap_or(rules.len());
    rules.insert(at, Arc::new(PushDownFragments));
    rules.push(Arc::new(KeepUsefulRuntimeFilters));
    // Last: every plan runs on the query threads.
    rules.push(Arc::new(super::threads::RunOnQueryThreads));
    rules
}

/// Runs after DataFusion's filter pushdown: takes back a join's runtime
/// filter from the scans of its probe side unless its build side is one
/// table's scan small enough that its keys likely fit an IN list
/// ([`super::filter::MAX_RUNTIME_IN_LIST`]). A scan with runtime filters
/// waits for the build side; for a join's output, or a large table, what it
/// would get is the keys' bounds alone, which rarely pay for the wait
/// (TPC-H SF 1, lineitem waiting for a join's output: Q03 118 -> 212 ms,
/// Q10 134 -> 288 ms).
#[derive(Debug, Default)]
pub struct KeepUsefulRuntimeFilters;

impl PhysicalOptimizerRule for KeepUsefulRuntimeFilters {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mut take_back = std::collections::BTreeSet::new();
        plan.apply(|node| {
            if let Some(join) = node.downcast_ref::<HashJoinExec>() {
                if !small_build_side(join.left()) {
                    take_back.extend(
                        node.dynamic_expressions_produced()
                            .iter()
                            .filter_map(|e| e.expression_id()),
                    );
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if take_back.is_empty() {
            return Ok(plan);
        }
        plan.transform_up(|node| {
            let stripped = node
                .downcast_ref::<BroadcastScanExec>()
                .and_then(|scan| scan.without_runtime(&take_back));
            Ok(match stripped {
                Some(s) => Transformed::yes(s),
                None => Transformed::no(node),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "slicedb_keep_useful_runtime_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether a join's build side is one table's scan (under operators that
/// keep or drop rows one by one) whose rows, or a filtered part of them,
/// likely fit an IN list.
fn small_build_side(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut cur = plan.clone();
    loop {
        if let Some(scan) = cur.downcast_ref::<BroadcastScanExec>() {
            if !scan.inputs().is_empty() {
                return false;
            }
            let broadcast = scan.broadcast();
            if !broadcast.sides.is_empty() {
                // Rows kept by an inner join with a small relation sent
                // whole (TPC-H Q17: lineitem of 200 parts): few, if that
                // relation's keys are.
                return broadcast.keys.iter().any(|k| {
                    broadcast
                        .sides
                        .get(k.side)
                        .and_then(estimated_rows)
                        .is_some_and(|r| r <= super::filter::MAX_RUNTIME_IN_LIST as u64)
                });
            }
            let (rows, filtered) = scan.table_rows_and_filtered();
            let limit = super::filter::MAX_RUNTIME_IN_LIST as u64 * if filtered { 8 } else { 1 };
            return rows.is_some_and(|r| r <= limit);
        }
        let passes = cur.is::<FilterExec>()
            || cur.is::<ProjectionExec>()
            || cur.is::<RepartitionExec>()
            || cur.name() == "CoalescePartitionsExec"
            || cur.name() == "CoalesceBatchesExec";
        let next = match cur.children().as_slice() {
            [only] if passes => (*only).clone(),
            _ => return false,
        };
        cur = next;
    }
}

/// Row-local operators over a scan, top first.
type Chain = Vec<Arc<dyn ExecutionPlan>>;

/// From `top` down through row-local operators (filters, projections,
/// round-robin repartitions) to a scan: the filters and projections, top
/// first, and the scan.
fn chain_to_scan(top: &Arc<dyn ExecutionPlan>) -> Option<(Chain, Arc<dyn ExecutionPlan>)> {
    let mut chain = Vec::new();
    let mut cur = top.clone();
    loop {
        if cur.is::<BroadcastScanExec>() {
            return Some((chain, cur));
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
    }
}

/// `chain` (top first) rebuilt over `leaf`.
fn rebuild(
    chain: &[Arc<dyn ExecutionPlan>],
    leaf: Arc<dyn ExecutionPlan>,
) -> Option<Arc<dyn ExecutionPlan>> {
    let mut plan = leaf;
    for op in chain.iter().rev() {
        plan = op
            .clone()
            .replace_children(
                vec![plan],
                ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
            )
            .ok()?;
    }
    Some(plan)
}

/// A leaf for input `index` of a fragment (rows of `schema`), as the
/// coordinator builds it: bound to no scan.
fn leaf(index: usize, schema: SchemaRef) -> Arc<dyn ExecutionPlan> {
    Arc::new(SliceInputExec::new(
        index,
        schema,
        Vec::new(),
        Arc::new(Mutex::new(None)),
    ))
}

/// `plan` (which replaces `node`) encoded onto `scan`, reading `inputs`
/// next to the scan's own table, and the rows of `broadcast` whole.
fn finish(
    node: &Arc<dyn ExecutionPlan>,
    scan: &BroadcastScanExec,
    plan: Arc<dyn ExecutionPlan>,
    inputs: Vec<slicedb_engine::proto::pb::ScanInput>,
    broadcast: Broadcast,
) -> Option<Arc<dyn ExecutionPlan>> {
    if plan.schema().fields() != node.schema().fields() {
        return None;
    }
    let bytes = match physical_plan_to_bytes_with_extension_codec(
        plan.clone(),
        &FragmentCodec::default(),
    ) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, "not encodable: stays at the coordinator");
            return None;
        }
    };
    // Some plans encode but do not decode on their own (a scalar subquery's
    // expression needs its surrounding ScalarSubqueryExec): check here, as
    // the node will.
    if let Err(e) = DECODER.decode(&bytes, &FragmentCodec::default(), 1) {
        tracing::debug!(error = %e, "does not decode: stays at the coordinator");
        return None;
    }
    let summary = displayable(plan.as_ref())
        .indent(false)
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" <- ");
    Some(Arc::new(scan.with_fragment(
        plan,
        bytes.to_vec(),
        node.schema(),
        summary,
        inputs,
        broadcast,
    )))
}

/// The plan a fragment over `scan` builds on: its fragment so far, or a leaf
/// for a plain scan (None: a DML scan, whose rows the coordinator needs).
fn fragment_base(scan: &BroadcastScanExec) -> Option<Arc<dyn ExecutionPlan>> {
    match scan.fragment_plan() {
        Some(plan) => Some(plan.clone()),
        None if scan.accepts_fragment() => Some(leaf(0, scan.schema())),
        None => None,
    }
}

/// A filter or projection right over a scan (or a fragment), moved to the
/// nodes: what is filtered out or projected away is never shipped.
fn push_row_local(node: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if !(node.is::<FilterExec>() || node.is::<ProjectionExec>()) {
        return None;
    }
    let child = node.children().first().map(|c| (*c).clone())?;
    let scan = child.downcast_ref::<BroadcastScanExec>()?;
    let plan = rebuild(std::slice::from_ref(node), fragment_base(scan)?)?;
    finish(
        node,
        scan,
        plan,
        scan.inputs().to_vec(),
        scan.broadcast().clone(),
    )
}

/// A partial aggregate over a scan (or over a fragment already on the
/// nodes), moved to the nodes.
fn push_aggregate(node: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    let agg = node.downcast_ref::<AggregateExec>()?;
    if *agg.mode() != AggregateMode::Partial {
        return None;
    }
    let (mut chain, scan) = chain_to_scan(agg.input())?;
    let scan = scan.downcast_ref::<BroadcastScanExec>()?;
    let base = fragment_base(scan)?;
    chain.insert(0, node.clone());
    let plan = rebuild(&chain, base)?;
    finish(
        node,
        scan,
        plan,
        scan.inputs().to_vec(),
        scan.broadcast().clone(),
    )
}

/// `plan` reading input `to(i)` where it read input `i`.
fn renumber(
    plan: Arc<dyn ExecutionPlan>,
    to: impl Fn(usize) -> usize,
) -> Option<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|n| {
        Ok(match n.downcast_ref::<SliceInputExec>() {
            Some(l) if to(l.index) != l.index => {
                Transformed::yes(leaf(to(l.index), l.schema.clone()))
            }
            _ => Transformed::no(n),
        })
    })
    .data()
    .ok()
}

/// The table column (of the scan at the bottom of `top`'s row-local chain)
/// that `top`'s output column `col` is, if it is one unchanged.
fn table_column(top: &Arc<dyn ExecutionPlan>, col: usize) -> Option<usize> {
    let mut cur = top.clone();
    let mut col = col;
    loop {
        if let Some(scan) = cur.downcast_ref::<BroadcastScanExec>() {
            return scan.output_table_column(col);
        }
        col = column_below(&cur, col)?;
        let next = cur.children().first().map(|c| (*c).clone())?;
        cur = next;
    }
}

/// Whether `scan` answers partial aggregate states (its fragment ends in a
/// partial aggregate): rows that only a final aggregate may consume.
fn partial_states(scan: &BroadcastScanExec) -> bool {
    scan.fragment_plan()
        .and_then(|p| p.downcast_ref::<AggregateExec>())
        .is_some_and(|a| *a.mode() == AggregateMode::Partial)
}

/// The final step of an aggregate grouped by the distribution key, moved
/// onto its partial step on the nodes: all rows of a group are in one
/// slice, so each slice's groups are final. A HAVING filter over it then
/// runs on the nodes too, and only the groups it keeps are shipped.
fn push_final(node: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    let agg = node.downcast_ref::<AggregateExec>()?;
    if !matches!(
        agg.mode(),
        AggregateMode::Final | AggregateMode::FinalPartitioned
    ) || !agg.group_expr().is_single()
    {
        return None;
    }
    let child = agg.input();
    let scan = child.downcast_ref::<BroadcastScanExec>()?;
    if !partial_states(scan) {
        return None;
    }
    let dist = scan.distribution_column()?;
    let by_key = agg.group_expr().expr().iter().any(|(e, _)| {
        e.downcast_ref::<Column>()
            .and_then(|c| table_column(child, c.index()))
            == Some(dist)
    });
    if !by_key {
        return None;
    }
    let plan = rebuild(std::slice::from_ref(node), scan.fragment_plan()?.clone())?;
    finish(
        node,
        scan,
        plan,
        scan.inputs().to_vec(),
        scan.broadcast().clone(),
    )
}

/// A hash join of two scans whose tables are distributed on the join key,
/// moved to the nodes: equal keys live in the same slice, so each slice
/// joins its own rows of both tables, and the union of the slices' joins is
/// the join.
fn push_join(node: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    let join = node.downcast_ref::<HashJoinExec>()?;
    if join.null_equality() != NullEquality::NullEqualsNothing {
        return None;
    }
    let (lchain, lscan) = chain_to_scan(join.left())?;
    let (rchain, rscan) = chain_to_scan(join.right())?;
    let l = lscan.downcast_ref::<BroadcastScanExec>()?;
    let r = rscan.downcast_ref::<BroadcastScanExec>()?;
    // Each side is a plain scan or a fragment already on the nodes (which
    // may read more tables placed like its own, and relations sent whole).
    if !l.colocated_with(r) || partial_states(l) || partial_states(r) {
        return None;
    }
    let (lkey, rkey) = (l.distribution_column()?, r.distribution_column()?);
    let on_keys = join.on().iter().any(|(a, b)| {
        let a = a.downcast_ref::<Column>().map(|c| c.index());
        let b = b.downcast_ref::<Column>().map(|c| c.index());
        match (a, b) {
            (Some(a), Some(b)) => {
                table_column(join.left(), a) == Some(lkey)
                    && table_column(join.right(), b) == Some(rkey)
            }
            _ => false,
        }
    });
    if !on_keys {
        return None;
    }
    // Leaves: the left's table and inputs, the right's table and inputs
    // (the combined inputs), then the left's relations sent whole, then the
    // right's.
    let (lin, rin, lb) = (
        l.inputs().len(),
        r.inputs().len(),
        l.broadcast().sides.len(),
    );
    let inputs = 1 + lin + 1 + rin;
    let left = rebuild(
        &lchain,
        renumber(fragment_base(l)?, |i| {
            if i <= lin {
                i
            } else {
                inputs + (i - 1 - lin)
            }
        })?,
    )?;
    let right = rebuild(
        &rchain,
        renumber(fragment_base(r)?, |i| {
            if i <= rin {
                1 + lin + i
            } else {
                inputs + lb + (i - 1 - rin)
            }
        })?,
    )?;
    // Slice i of one side joins slice i of the other: on a node each side
    // has one partition per slice.
    let plan = node
        .clone()
        .replace_children(
            vec![left, right],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
        .ok()?;
    let plan = with_mode(&plan, PartitionMode::Partitioned)?;
    // The keys of the left's relations still filter the left's table (the
    // request's own); the right's table becomes an input, which is read as
    // it is.
    let broadcast = Broadcast {
        sides: l
            .broadcast()
            .sides
            .iter()
            .chain(&r.broadcast().sides)
            .cloned()
            .collect(),
        keys: l.broadcast().keys.clone(),
    };
    let inputs = l
        .inputs()
        .iter()
        .cloned()
        .chain(std::iter::once(r.as_input()))
        .chain(r.inputs().iter().cloned())
        .collect();
    finish(node, l, plan, inputs, broadcast)
}

/// `plan` (a hash join) in partition mode `mode`.
fn with_mode(plan: &Arc<dyn ExecutionPlan>, mode: PartitionMode) -> Option<Arc<dyn ExecutionPlan>> {
    plan.downcast_ref::<HashJoinExec>()?
        .builder()
        .with_partition_mode(mode)
        .build_exec()
        .ok()
}

/// Rows a build side may have, as estimated, to be sent whole to the nodes
/// ([`push_broadcast_join`]), unless `SET slicedb.broadcast_max_rows` says
/// otherwise: each node builds one hash table of them, which its slices
/// share.
pub const BROADCAST_MAX_ROWS: u64 = 200_000;
/// Bytes a build side may have, as estimated (its rows times a width from
/// its column types, 32 bytes per string), to be sent whole to every node,
/// unless `SET slicedb.broadcast_max_bytes` says otherwise.
pub const BROADCAST_MAX_BYTES: u64 = 4 << 20;

/// When a build side is small enough to be sent whole.
#[derive(Debug, Clone, Copy)]
struct BroadcastLimits {
    rows: u64,
    bytes: u64,
}

impl BroadcastLimits {
    fn admit(&self, side: &Arc<dyn ExecutionPlan>) -> bool {
        let Some(rows) = estimated_rows(side) else {
            return false;
        };
        let width: u64 = side
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().primitive_width().map_or(32, |w| w as u64))
            .sum();
        rows <= self.rows && rows.saturating_mul(width.max(1)) <= self.bytes
    }
}

/// A hash join whose probe side is a scan (or a fragment) of a large table
/// and whose build side is small, moved to the nodes: the coordinator
/// computes the build side first and sends its rows whole with the scan
/// request, and every slice joins its own probe rows with all of them.
/// Only joins that keep or drop each probe row on its own (inner, right,
/// right semi, right anti, right mark) are moved: the union of the slices'
/// joins is then the join. Joins that preserve build rows are not.
///
/// A join whose build side is the large table's (DataFusion chose it with
/// no row count for a fragment below it) and whose probe side is small is
/// swapped first, when the swap gives such a join (inner, left, left semi,
/// left anti, left mark).
fn push_broadcast_join(
    node: &Arc<dyn ExecutionPlan>,
    limits: BroadcastLimits,
) -> Option<Arc<dyn ExecutionPlan>> {
    let join = node.downcast_ref::<HashJoinExec>()?;
    if let Some(pushed) = broadcast_build_side(node, limits) {
        return Some(pushed);
    }
    if join.null_aware
        || !matches!(
            join.join_type(),
            JoinType::Inner
                | JoinType::Left
                | JoinType::LeftSemi
                | JoinType::LeftAnti
                | JoinType::LeftMark
        )
        || large_scan(join.left()).is_none()
        || !limits.admit(join.right())
    {
        return None;
    }
    let swapped = join.swap_inputs(PartitionMode::CollectLeft).ok()?;
    match swapped.downcast_ref::<ProjectionExec>() {
        // The swap puts the columns back in order with a projection.
        Some(projection) => {
            let pushed = broadcast_build_side(projection.input(), limits)?;
            let plan = swapped
                .clone()
                .replace_children(
                    vec![pushed],
                    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
                )
                .ok()?;
            push_row_local(&plan).or(Some(plan))
        }
        None => broadcast_build_side(&swapped, limits),
    }
}

/// The scan at the bottom of `plan`'s row-local chain, if it is of a table
/// of at least `broadcast_join_min_rows` rows and answers rows (not
/// partial aggregate states).
fn large_scan(plan: &Arc<dyn ExecutionPlan>) -> Option<(Chain, Arc<dyn ExecutionPlan>)> {
    let (chain, scan) = chain_to_scan(plan)?;
    let s = scan.downcast_ref::<BroadcastScanExec>()?;
    let (rows, _) = s.table_rows_and_filtered();
    (!partial_states(s) && rows? >= s.broadcast_join_min_rows()).then_some((chain, scan))
}

/// [`push_broadcast_join`] of `node` as it is: its build side sent whole.
fn broadcast_build_side(
    node: &Arc<dyn ExecutionPlan>,
    limits: BroadcastLimits,
) -> Option<Arc<dyn ExecutionPlan>> {
    let join = node.downcast_ref::<HashJoinExec>()?;
    if !matches!(
        join.join_type(),
        JoinType::Inner
            | JoinType::Right
            | JoinType::RightSemi
            | JoinType::RightAnti
            | JoinType::RightMark
    ) {
        return None;
    }
    let (rchain, rscan) = large_scan(join.right())?;
    let r = rscan.downcast_ref::<BroadcastScanExec>()?;
    if !limits.admit(join.left()) {
        return None;
    }
    let side = join.left().clone();
    let index = 1 + r.inputs().len() + r.broadcast().sides.len();
    let build = leaf(index, side.schema());
    let probe = rebuild(&rchain, fragment_base(r)?)?;
    // One hash table of the build side per node, cluster by its slices.
    let plan = node
        .clone()
        .replace_children(
            vec![build, probe.clone()],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
        .ok()?;
    let plan = with_mode(&plan, PartitionMode::CollectLeft)?;
    let mut broadcast = r.broadcast().clone();
    // A probe row whose key is none of the build side's drops out of an
    // inner or semi join: the side's keys filter the table's scan.
    if matches!(join.join_type(), JoinType::Inner | JoinType::RightSemi) {
        for (b, p) in join.on() {
            let key = b.downcast_ref::<Column>().zip(p.downcast_ref::<Column>());
            let Some((b, p)) = key else { continue };
            let table_column = leaf_column(&probe, p.index()).and_then(|c| r.table_column(c));
            if let Some(table_column) = table_column {
                broadcast.keys.push(BroadcastKey {
                    side: broadcast.sides.len(),
                    column: b.index(),
                    table_column,
                });
            }
        }
    }
    broadcast.sides.push(side);
    finish(node, r, plan, r.inputs().to_vec(), broadcast)
}

/// A rough estimate of the rows `plan` yields, from the tables' row counts
/// as the nodes last reported them: a filtered scan keeps a fifth, an inner
/// join the larger side's estimate (a key join), a semi or anti join its
/// kept side's. None where it cannot tell.
fn estimated_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<u64> {
    if let Some(scan) = plan.downcast_ref::<BroadcastScanExec>() {
        if !scan.inputs().is_empty() || !scan.broadcast().sides.is_empty() {
            return None;
        }
        let (rows, filtered) = scan.table_rows_and_filtered();
        return rows.map(|r| if filtered { r / 5 } else { r });
    }
    if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
        let (l, r) = (estimated_rows(join.left())?, estimated_rows(join.right())?);
        return match join.join_type() {
            JoinType::Inner => Some(l.max(r)),
            JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                Some(l)
            }
            JoinType::Right | JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                Some(r)
            }
            JoinType::Full => Some(l + r),
        };
    }
    let passes = plan.is::<FilterExec>()
        || plan.is::<ProjectionExec>()
        || plan.is::<RepartitionExec>()
        || plan.is::<AggregateExec>()
        || plan.name() == "CoalescePartitionsExec"
        || plan.name() == "CoalesceBatchesExec";
    match plan.children().as_slice() {
        [only] if passes => estimated_rows(only),
        _ => None,
    }
}
