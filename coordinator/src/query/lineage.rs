//! Column lineage through physical plans: which input column an output
//! column is, unchanged, through projections, filters, grouping,
//! repartitions and hash joins (never from a side an outer join pads with
//! NULLs). The pushdown rules and the broadcast scan use it to know which
//! table column a filter or a join key is on.

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::ExecutionPlan;

use super::node_fragment::SliceInputExec;

/// The leaf-0 input column (a [`SliceInputExec`] with index 0) that output
/// column `col` of `plan` (a fragment) is, if it is one unchanged.
pub(super) fn leaf_column(plan: &Arc<dyn ExecutionPlan>, col: usize) -> Option<usize> {
    if let Some(leaf) = plan.downcast_ref::<SliceInputExec>() {
        return (leaf.index == 0).then_some(col);
    }
    let below = |(child, c): (usize, usize)| {
        let next = plan.children().get(child).map(|p| (*p).clone())?;
        leaf_column(&next, c)
    };
    column_source(plan, col)
        .and_then(below)
        .or_else(|| join_key_twin(plan, col).and_then(below))
}

/// For an inner hash join's output column `col` that is a probe key: the
/// build key it equals on every joined row, as (0, the left's column).
pub(super) fn join_key_twin(node: &Arc<dyn ExecutionPlan>, col: usize) -> Option<(usize, usize)> {
    let join = node.downcast_ref::<HashJoinExec>()?;
    if *join.join_type() != JoinType::Inner {
        return None;
    }
    let col = match &join.projection {
        Some(p) => *p.get(col)?,
        None => col,
    };
    let probe = col.checked_sub(join.left().schema().fields().len())?;
    join.on().iter().find_map(|(b, p)| {
        let p = p.downcast_ref::<Column>()?;
        let b = b.downcast_ref::<Column>()?;
        (p.index() == probe).then_some((0, b.index()))
    })
}

/// Which child of `node`, and which of its columns, `node`'s output column
/// `col` is, unchanged: [`column_below`], and through a hash join to the
/// side the column comes from, unless that side is padded with NULLs (an
/// outer join's optional side), where the values are not all the child's.
pub(super) fn column_source(node: &Arc<dyn ExecutionPlan>, col: usize) -> Option<(usize, usize)> {
    let Some(join) = node.downcast_ref::<HashJoinExec>() else {
        return column_below(node, col).map(|c| (0, c));
    };
    let col = match &join.projection {
        Some(p) => *p.get(col)?,
        None => col,
    };
    let left = join.left().schema().fields().len();
    let right = join.right().schema().fields().len();
    let (from_left, from_right) = match join.join_type() {
        JoinType::Inner => (col < left, col >= left),
        JoinType::Left => (col < left, false),
        JoinType::Right => (false, col >= left),
        JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
            return (col < left).then_some((0, col))
        }
        JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
            return (col < right).then_some((1, col))
        }
        JoinType::Full => (false, false),
    };
    if from_left {
        Some((0, col))
    } else if from_right && col < left + right {
        Some((1, col - left))
    } else {
        None
    }
}

/// The column of `node`'s first child that its output column `col` is,
/// through operators that pass it on unchanged.
pub(super) fn column_below(node: &Arc<dyn ExecutionPlan>, col: usize) -> Option<usize> {
    if let Some(p) = node.downcast_ref::<ProjectionExec>() {
        Some(p.expr().get(col)?.expr.downcast_ref::<Column>()?.index())
    } else if let Some(f) = node.downcast_ref::<FilterExec>() {
        match f.projection() {
            Some(proj) => proj.get(col).copied(),
            None => Some(col),
        }
    } else if let Some(a) = node.downcast_ref::<AggregateExec>() {
        // A grouping column passes through unchanged.
        if !a.group_expr().is_single() {
            return None;
        }
        Some(
            a.group_expr()
                .expr()
                .get(col)?
                .0
                .downcast_ref::<Column>()?
                .index(),
        )
    } else if node.is::<RepartitionExec>() {
        Some(col)
    } else {
        None
    }
}
