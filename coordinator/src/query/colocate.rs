//! A logical optimizer rule: an inner join with a table moves down the join
//! tree to the table it is co-located with, so the two join on the nodes.
//!
//! DataFusion joins tables in the order of the FROM list. TPC-H Q03 and Q10
//! join customer with orders, then the result with lineitem on orderkey; Q09
//! joins lineitem with part, supplier and partsupp before orders. Orders and
//! lineitem are both distributed on orderkey, but by the time the plan joins
//! them one side is a join's output at the coordinator, so both tables are
//! shipped there whole. Joined first, they are a co-located join on the nodes
//! ([`super::pushdown`]), and what reaches the coordinator is their join.
//!
//! Owns: [`CoLocateJoins`]. `(X ⋈ C)`, where every key of the join on X's
//! side is a column of one table T inside X, below inner joins, filters and
//! pass-through projections, and T and C are distributed on those keys,
//! becomes X with T replaced by `T ⋈ C`; the projections on the way pass C's
//! columns up, and a projection on top restores the join's columns in their
//! order. Inner joins are associative, so the answer is the same.
//!
//! It never moves a join with a filter (a non-equi condition), never moves
//! through outer, semi or anti joins, aggregates or aliases, and leaves the
//! plan unchanged on any error.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result as DfResult};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::{
    Expr, Filter, Join, JoinConstraint, JoinType, LogicalPlan, Projection,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

use super::semijoin::passes_through;
use super::table::SliceTable;

/// See the module docs.
#[derive(Debug, Default)]
pub struct CoLocateJoins;

impl OptimizerRule for CoLocateJoins {
    fn name(&self) -> &str {
        "slicedb_co_locate_joins"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> DfResult<Transformed<LogicalPlan>> {
        match co_locate(&plan) {
            Ok(Some(rewritten)) => Ok(Transformed::yes(rewritten)),
            // Unchanged, also when a rewrite cannot be built: the plan as
            // DataFusion made it is always a correct one.
            Ok(None) | Err(_) => Ok(Transformed::no(plan)),
        }
    }
}

/// The join's two sides as (X, C): C is the table joined to a table in X.
struct Candidate<'a> {
    x: &'a Arc<LogicalPlan>,
    c: &'a Arc<LogicalPlan>,
    /// (X's key column, C's key column) pairs.
    keys: Vec<(Column, Column)>,
}

fn co_locate(plan: &LogicalPlan) -> DfResult<Option<LogicalPlan>> {
    let LogicalPlan::Join(j) = plan else {
        return Ok(None);
    };
    if j.join_type != JoinType::Inner || j.filter.is_some() || j.on.is_empty() || j.null_aware {
        return Ok(None);
    }
    let Some(pairs) =
        j.on.iter()
            .map(|(l, r)| match (l, r) {
                (Expr::Column(l), Expr::Column(r)) => Some((l.clone(), r.clone())),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let candidates = [
        Candidate {
            x: &j.left,
            c: &j.right,
            keys: pairs.clone(),
        },
        Candidate {
            x: &j.right,
            c: &j.left,
            keys: pairs.iter().map(|(l, r)| (r.clone(), l.clone())).collect(),
        },
    ];
    for cand in candidates {
        let Some(c_table) = distributed_scan(cand.c) else {
            continue;
        };
        let c_keys: Vec<&Column> = cand.keys.iter().map(|(_, c)| c).collect();
        if !distributed_on(&c_table, &c_keys) {
            continue;
        }
        // Already next to its partner: nothing to move.
        if partner(cand.x, &cand.keys, &c_table) {
            continue;
        }
        let Some(x) = sink(cand.x, &cand, &c_table, j)? else {
            continue;
        };
        // X's columns then C's, or C's then X's, as the join answered them.
        let exprs: Vec<Expr> = j.schema.columns().into_iter().map(Expr::Column).collect();
        return Ok(Some(LogicalPlan::Projection(
            Projection::try_new_with_schema(exprs, Arc::new(x), j.schema.clone())?,
        )));
    }
    Ok(None)
}

/// A scan of a slicedb table hash distributed on one column, under filters
/// and projections: the column, and what decides where its rows live.
struct DistributedScan {
    /// The distribution column's name, as the scan's output has it.
    column: Column,
    key_type: DataType,
    mirrored: bool,
}

impl DistributedScan {
    /// Rows with equal keys are on the same slice copy of both tables:
    /// the same hash of the same key type, in the same kind of segment.
    fn co_located_with(&self, other: &DistributedScan) -> bool {
        self.key_type == other.key_type && self.mirrored == other.mirrored
    }
}

fn distributed_scan(plan: &LogicalPlan) -> Option<DistributedScan> {
    match plan {
        LogicalPlan::TableScan(t) => {
            let provider = source_as_provider(&t.source).ok()?;
            let table = provider.downcast_ref::<SliceTable>()?;
            let (name, key_type, mirrored) = table.distribution()?;
            let column = Column::new(Some(t.table_name.clone()), name);
            t.projected_schema
                .has_column(&column)
                .then_some(DistributedScan {
                    column,
                    key_type,
                    mirrored,
                })
        }
        LogicalPlan::Filter(f) => distributed_scan(&f.input),
        // Only if the column passes through as itself.
        LogicalPlan::Projection(p) => {
            distributed_scan(&p.input).filter(|d| passes_through(p, &d.column))
        }
        _ => None,
    }
}

/// Whether `keys` are the column `scan`'s table is distributed on.
fn distributed_on(scan: &DistributedScan, keys: &[&Column]) -> bool {
    matches!(keys, [k] if **k == scan.column)
}

/// Whether `plan` itself is a scan co-located with `c` on `keys`.
fn partner(plan: &LogicalPlan, keys: &[(Column, Column)], c: &DistributedScan) -> bool {
    let Some(t) = distributed_scan(plan) else {
        return false;
    };
    let x_keys: Vec<&Column> = keys.iter().map(|(x, _)| x).collect();
    distributed_on(&t, &x_keys) && t.co_located_with(c)
}

/// `plan` with its table T (the partner of C) replaced by `T ⋈ C`, and C's
/// columns passed up to `plan`'s output; None if T is not found below inner
/// joins, filters and pass-through projections.
fn sink(
    plan: &Arc<LogicalPlan>,
    cand: &Candidate,
    c: &DistributedScan,
    join: &Join,
) -> DfResult<Option<LogicalPlan>> {
    let has_all = |p: &LogicalPlan| cand.keys.iter().all(|(x, _)| p.schema().has_column(x));
    // `side` joined with C if it is T, else with C sunk into it.
    let joined = |side: &Arc<LogicalPlan>| -> DfResult<Option<LogicalPlan>> {
        if partner(side, &cand.keys, c) {
            let on = cand
                .keys
                .iter()
                .map(|(x, c)| (Expr::Column(x.clone()), Expr::Column(c.clone())))
                .collect();
            return Ok(Some(LogicalPlan::Join(Join::try_new(
                side.clone(),
                cand.c.clone(),
                on,
                None,
                JoinType::Inner,
                JoinConstraint::On,
                join.null_equality,
                false,
            )?)));
        }
        sink(side, cand, c, join)
    };
    match plan.as_ref() {
        LogicalPlan::Join(j) if j.join_type == JoinType::Inner => {
            let (left, right) = if has_all(&j.left) {
                match joined(&j.left)? {
                    Some(l) => (Arc::new(l), j.right.clone()),
                    None => return Ok(None),
                }
            } else if has_all(&j.right) {
                match joined(&j.right)? {
                    Some(r) => (j.left.clone(), Arc::new(r)),
                    None => return Ok(None),
                }
            } else {
                return Ok(None);
            };
            Ok(Some(LogicalPlan::Join(Join::try_new(
                left,
                right,
                j.on.clone(),
                j.filter.clone(),
                j.join_type,
                j.join_constraint,
                j.null_equality,
                j.null_aware,
            )?)))
        }
        LogicalPlan::Filter(f) if has_all(&f.input) => joined(&f.input)?
            .map(|input| Filter::try_new(f.predicate.clone(), Arc::new(input)))
            .transpose()
            .map(|f| f.map(LogicalPlan::Filter)),
        LogicalPlan::Projection(p)
            if has_all(&p.input) && cand.keys.iter().all(|(k, _)| passes_through(p, k)) =>
        {
            let Some(input) = joined(&p.input)? else {
                return Ok(None);
            };
            // C's columns pass through this projection too.
            let mut exprs = p.expr.clone();
            exprs.extend(cand.c.schema().columns().into_iter().map(Expr::Column));
            Ok(Some(LogicalPlan::Projection(Projection::try_new(
                exprs,
                Arc::new(input),
            )?)))
        }
        _ => Ok(None),
    }
}
