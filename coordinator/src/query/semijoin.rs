//! A logical optimizer rule: a semi join (`x IN (subquery)`, `EXISTS`) moves
//! below the inner joins of its filtered side, down to the input whose
//! columns it tests.
//!
//! DataFusion plans `a JOIN b JOIN c WHERE a.k IN (SELECT ...)` as the semi
//! join over the whole inner join, so every row of the join is built first
//! and most are then dropped. TPC-H Q18 joined customer, orders and lineitem
//! (6M rows) and then kept the 399 rows of its 57 orders. Below the joins
//! the semi join filters orders alone, and the join above it meets 57
//! orders; on a cluster, orders filtered by a subquery grouped by orderkey
//! is a co-located join on the nodes.
//!
//! Owns: [`PushSemiJoinDown`]. It rewrites only `LeftSemi` joins that are
//! not null-aware, only through inner joins, filters and projections that
//! pass the columns it reads through as themselves; never into an
//! aggregate, an alias or a computed column (those are other columns).
//! It never changes what a query answers: `(L ⋈ R) ⋉ S = (L ⋉ S) ⋈ R` when
//! every column of `L ⋈ R` the semi join reads is a column of `L`. It moves
//! a semi join only past joins with sides that keep every row of their
//! tables, which multiply rows (orders to lineitem) rather than drop them.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result as DfResult};
use datafusion::logical_expr::{Expr, Filter, Join, JoinType, LogicalPlan, Projection};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// See the module docs.
#[derive(Debug, Default)]
pub struct PushSemiJoinDown;

impl OptimizerRule for PushSemiJoinDown {
    fn name(&self) -> &str {
        "slicedb_push_semi_join_down"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> DfResult<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(semi) = &plan else {
            return Ok(Transformed::no(plan));
        };
        if semi.join_type != JoinType::LeftSemi || semi.null_aware {
            return Ok(Transformed::no(plan));
        }
        // The columns of the left side the semi join reads: its keys, and
        // those of its filter that are the left side's.
        let left = semi.left.schema();
        let mut columns: HashSet<Column> = HashSet::new();
        for (l, _) in &semi.on {
            columns.extend(l.column_refs().into_iter().cloned());
        }
        if let Some(f) = &semi.filter {
            columns.extend(
                f.column_refs()
                    .into_iter()
                    .filter(|c| left.has_column(c))
                    .cloned(),
            );
        }
        if columns.is_empty() || !columns.iter().all(|c| left.has_column(c)) {
            return Ok(Transformed::no(plan));
        }
        match push_into(&semi.left, &columns, semi)? {
            // The semi join's output is its left side's rows and schema.
            Some(pushed) => Ok(Transformed::yes(pushed)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// `plan` with `semi` moved below at least one of its inner joins: at the
/// deepest input, below inner joins and filters and pass-through
/// projections, that has all of `columns`, but never below a join whose
/// other side drops rows ([`reduces`]): joined first, that side makes the
/// semi join's work smaller (TPC-H Q21's EXISTS, over lineitem joined with
/// one nation's suppliers). None if it moves below no join.
fn push_into(
    plan: &Arc<LogicalPlan>,
    columns: &HashSet<Column>,
    semi: &Join,
) -> DfResult<Option<LogicalPlan>> {
    let has_all = |p: &LogicalPlan| columns.iter().all(|c| p.schema().has_column(c));
    match plan.as_ref() {
        LogicalPlan::Join(j) if j.join_type == JoinType::Inner => {
            let mut j = j.clone();
            let (side, other) = if has_all(&j.left) {
                (&mut j.left, &j.right)
            } else if has_all(&j.right) {
                (&mut j.right, &j.left)
            } else {
                return Ok(None);
            };
            if reduces(other)? {
                return Ok(None);
            }
            *side = Arc::new(match push_into(side, columns, semi)? {
                Some(pushed) => pushed,
                None => semi_over(side.clone(), semi)?,
            });
            // Same columns on each side: the join's schema is unchanged.
            Ok(Some(LogicalPlan::Join(j)))
        }
        LogicalPlan::Filter(f) if has_all(&f.input) => push_into(&f.input, columns, semi)?
            .map(|input| Filter::try_new(f.predicate.clone(), Arc::new(input)))
            .transpose()
            .map(|f| f.map(LogicalPlan::Filter)),
        // A projection that passes each column through as itself (the ones
        // DataFusion puts between joins to drop unused columns).
        LogicalPlan::Projection(p)
            if has_all(&p.input) && columns.iter().all(|c| passes_through(p, c)) =>
        {
            push_into(&p.input, columns, semi)?
                .map(|input| {
                    Projection::try_new_with_schema(
                        p.expr.clone(),
                        Arc::new(input),
                        p.schema.clone(),
                    )
                })
                .transpose()
                .map(|p| p.map(LogicalPlan::Projection))
        }
        _ => Ok(None),
    }
}

/// Whether projection `p` passes column `c` through as itself (no
/// expression, no alias), as DataFusion's projections between joins do.
pub(crate) fn passes_through(p: &Projection, c: &Column) -> bool {
    p.expr
        .iter()
        .any(|e| matches!(e, Expr::Column(x) if x == c))
}

/// Whether `plan` likely has fewer rows than its tables: a filter, a scan
/// with filters, an aggregate, a limit or a semi or anti join anywhere in
/// it. Joined with such a side, an input's rows are mostly dropped.
fn reduces(plan: &LogicalPlan) -> DfResult<bool> {
    plan.exists(|n| {
        Ok(match n {
            LogicalPlan::Filter(_)
            | LogicalPlan::Aggregate(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Distinct(_) => true,
            LogicalPlan::TableScan(t) => !t.filters.is_empty() || t.fetch.is_some(),
            LogicalPlan::Join(j) => matches!(
                j.join_type,
                JoinType::LeftSemi
                    | JoinType::LeftAnti
                    | JoinType::RightSemi
                    | JoinType::RightAnti
                    | JoinType::LeftMark
                    | JoinType::RightMark
            ),
            _ => false,
        })
    })
}

/// `semi` with `left` as its left side.
fn semi_over(left: Arc<LogicalPlan>, semi: &Join) -> DfResult<LogicalPlan> {
    Ok(LogicalPlan::Join(Join::try_new(
        left,
        semi.right.clone(),
        semi.on.clone(),
        semi.filter.clone(),
        semi.join_type,
        semi.join_constraint,
        semi.null_equality,
        semi.null_aware,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::logical_expr::{col, lit, table_scan, LogicalPlanBuilder};
    use datafusion::optimizer::OptimizerContext;

    fn scan(name: &str, cols: &[&str]) -> LogicalPlanBuilder {
        let schema = Schema::new(
            cols.iter()
                .map(|c| Field::new(*c, DataType::Int64, true))
                .collect::<Vec<_>>(),
        );
        table_scan(Some(name), &schema, None).unwrap()
    }

    /// Whether the rule changed `plan`, and the plan it answers, as text.
    fn optimize(plan: LogicalPlan) -> (bool, String) {
        let schema = plan.schema().clone();
        let out = PushSemiJoinDown
            .rewrite(plan, &OptimizerContext::new())
            .unwrap();
        // The answer's columns are the same.
        assert_eq!(out.data.schema(), &schema);
        (out.transformed, format!("{}", out.data.display_indent()))
    }

    /// c JOIN o ON custkey, then JOIN l ON orderkey, then o.ok IN (s.ok).
    /// The plan's lines, trimmed, and which of them is the semi join.
    fn semi_line(text: &str) -> (Vec<&str>, usize) {
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        let semi = lines
            .iter()
            .position(|l| l.starts_with("LeftSemi Join"))
            .unwrap_or_else(|| panic!("no semi join left:\n{text}"));
        (lines, semi)
    }

    /// With `filter`, o's rows are also filtered above its join with c.
    fn q18_shape(semi_key: &str, filter: bool) -> LogicalPlan {
        let c = scan("c", &["ck", "name"]).build().unwrap();
        let o = scan("o", &["ok", "ck2"]).build().unwrap();
        let l = scan("l", &["lok", "qty"]).build().unwrap();
        let s = scan("s", &["sok"]).build().unwrap();
        let mut co = LogicalPlanBuilder::from(c)
            .join(o, JoinType::Inner, (vec!["c.ck"], vec!["o.ck2"]), None)
            .unwrap();
        if filter {
            co = co.filter(col("o.ok").gt(lit(0i64))).unwrap();
        }
        co.project(vec![col("c.name"), col("o.ok")])
            .unwrap()
            .join(l, JoinType::Inner, (vec!["o.ok"], vec!["l.lok"]), None)
            .unwrap()
            .project(vec![col("c.name"), col("o.ok"), col("l.lok"), col("l.qty")])
            .unwrap()
            .join(s, JoinType::LeftSemi, (vec![semi_key], vec!["s.sok"]), None)
            .unwrap()
            .build()
            .unwrap()
    }

    #[test]
    fn a_semi_join_moves_to_the_input_whose_column_it_tests() {
        let (changed, text) = optimize(q18_shape("o.ok", true));
        assert!(changed);
        // Through both inner joins, the filter and the projections, right
        // over o.
        let (lines, semi) = semi_line(&text);
        assert_eq!(lines[semi + 1], "TableScan: o", "{text}");
        assert!(
            lines[..semi].iter().any(|l| l.starts_with("Filter")),
            "{text}"
        );
        assert!(
            lines[..semi].iter().any(|l| l.starts_with("Projection")),
            "{text}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("Inner Join")).count(),
            2,
            "{text}"
        );
    }

    #[test]
    fn a_semi_join_on_another_sides_column_moves_there() {
        // Not past a join with a side that drops rows: o's filter.
        assert!(!optimize(q18_shape("l.lok", true)).0);
        let (changed, text) = optimize(q18_shape("l.lok", false));
        assert!(changed);
        let (lines, semi) = semi_line(&text);
        assert_eq!(lines[semi + 1], "TableScan: l", "{text}");
    }

    #[test]
    fn semi_joins_stay_over_outer_joins_and_when_columns_span_inputs() {
        let c = scan("c", &["ck", "name"]).build().unwrap();
        let o = scan("o", &["ok", "ck2"]).build().unwrap();
        let s = scan("s", &["sok", "x"]).build().unwrap();
        let outer = LogicalPlanBuilder::from(c.clone())
            .join(
                o.clone(),
                JoinType::Left,
                (vec!["c.ck"], vec!["o.ck2"]),
                None,
            )
            .unwrap()
            .join(
                s.clone(),
                JoinType::LeftSemi,
                (vec!["o.ok"], vec!["s.sok"]),
                None,
            )
            .unwrap()
            .build()
            .unwrap();
        assert!(!optimize(outer).0);
        let spanning = LogicalPlanBuilder::from(c)
            .join(o, JoinType::Inner, (vec!["c.ck"], vec!["o.ck2"]), None)
            .unwrap()
            .join(
                s,
                JoinType::LeftSemi,
                (vec!["o.ok", "c.name"], vec!["s.sok", "s.x"]),
                None,
            )
            .unwrap()
            .build()
            .unwrap();
        assert!(!optimize(spanning).0);
        // A computed column of the same name is another column.
        let computed = scan("o", &["ok", "ck2"])
            .project(vec![(col("o.ok") + lit(1i64)).alias("ok")])
            .unwrap()
            .join(
                scan("s", &["sok"]).build().unwrap(),
                JoinType::LeftSemi,
                (vec!["ok"], vec!["s.sok"]),
                None,
            )
            .unwrap()
            .build()
            .unwrap();
        assert!(!optimize(computed).0);
    }

    #[test]
    fn semi_joins_stay_over_joins_with_sides_that_drop_rows() {
        // o JOIN (c WHERE name > 0): the join drops most of o's rows, so
        // the semi join stays over it.
        let c = scan("c", &["ck", "name"])
            .filter(col("c.name").gt(lit(0i64)))
            .unwrap()
            .build()
            .unwrap();
        let o = scan("o", &["ok", "ck2"]).build().unwrap();
        let s = scan("s", &["sok"]).build().unwrap();
        let plan = LogicalPlanBuilder::from(o)
            .join(c, JoinType::Inner, (vec!["o.ck2"], vec!["c.ck"]), None)
            .unwrap()
            .join(s, JoinType::LeftSemi, (vec!["o.ok"], vec!["s.sok"]), None)
            .unwrap()
            .build()
            .unwrap();
        assert!(!optimize(plan).0);
    }
}
