//! Translation of DataFusion filter expressions into the engine's
//! [`Predicate`], for pushdown to nodes (zone-map pruning + exact filtering).
//!
//! Only what a node can evaluate exactly is translated; everything else stays
//! in DataFusion. Pushed filters are reported as `Inexact`, so DataFusion
//! re-applies them and a node that filters less never changes an answer.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray};
use arrow::datatypes::Schema;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use datafusion::physical_expr::expressions as phys;
use datafusion::physical_expr::PhysicalExpr;
use slicedb_engine::predicate::{CmpOp, Literal, Predicate};

/// Most values of an IN list pushed to the nodes from a join's runtime
/// filter: integer columns only (a node tests them with one hash lookup per
/// row); longer lists are left out, and the bounds still apply.
pub const MAX_RUNTIME_IN_LIST: usize = 65_536;

/// Translate `expr` for a table with `schema`, or `None` if a node cannot
/// evaluate it exactly.
pub fn to_predicate(expr: &Expr, schema: &Schema) -> Option<Predicate> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => Some(Predicate::And(vec![
                to_predicate(left, schema)?,
                to_predicate(right, schema)?,
            ])),
            Operator::Or => Some(Predicate::Or(vec![
                to_predicate(left, schema)?,
                to_predicate(right, schema)?,
            ])),
            _ => compare(
                cmp(*op)?,
                (column(left, schema), literal(right)),
                (literal(left), column(right, schema)),
            ),
        },
        Expr::Not(inner) => Some(Predicate::Not(Box::new(to_predicate(inner, schema)?))),
        Expr::IsNull(inner) => Some(Predicate::IsNull(column(inner, schema)?)),
        Expr::IsNotNull(inner) => Some(Predicate::IsNotNull(column(inner, schema)?)),
        Expr::Between(Between {
            expr,
            negated,
            low,
            high,
        }) => {
            let c = column(expr, schema)?;
            let both = Predicate::And(vec![
                Predicate::Compare {
                    column: c,
                    op: CmpOp::GtEq,
                    value: literal(low)?,
                },
                Predicate::Compare {
                    column: c,
                    op: CmpOp::LtEq,
                    value: literal(high)?,
                },
            ]);
            Some(if *negated {
                Predicate::Not(Box::new(both))
            } else {
                both
            })
        }
        Expr::InList(list) => Some(Predicate::InList {
            column: column(&list.expr, schema)?,
            values: list.list.iter().map(literal).collect::<Option<Vec<_>>>()?,
            negated: list.negated,
        }),
        _ => None,
    }
}

fn column(e: &Expr, schema: &Schema) -> Option<usize> {
    match e {
        Expr::Column(c) => schema.index_of(&c.name).ok(),
        _ => None,
    }
}

/// `column op value` from either spelling: `col op lit` (the first pair)
/// or `lit op col` (the second).
fn compare(
    op: CmpOp,
    col_lit: (Option<usize>, Option<Literal>),
    lit_col: (Option<Literal>, Option<usize>),
) -> Option<Predicate> {
    match (col_lit, lit_col) {
        ((Some(column), Some(value)), _) => Some(Predicate::Compare { column, op, value }),
        (_, (Some(value), Some(column))) => Some(Predicate::Compare {
            column,
            op: flip(op),
            value,
        }),
        _ => None,
    }
}

fn cmp(op: Operator) -> Option<CmpOp> {
    Some(match op {
        Operator::Eq => CmpOp::Eq,
        Operator::NotEq => CmpOp::NotEq,
        Operator::Lt => CmpOp::Lt,
        Operator::LtEq => CmpOp::LtEq,
        Operator::Gt => CmpOp::Gt,
        Operator::GtEq => CmpOp::GtEq,
        _ => return None,
    })
}

fn flip(op: CmpOp) -> CmpOp {
    match op {
        CmpOp::Lt => CmpOp::Gt,
        CmpOp::LtEq => CmpOp::GtEq,
        CmpOp::Gt => CmpOp::Lt,
        CmpOp::GtEq => CmpOp::LtEq,
        other => other,
    }
}

fn literal(e: &Expr) -> Option<Literal> {
    let Expr::Literal(v, _) = e else {
        return None;
    };
    scalar(v)
}

fn scalar(v: &ScalarValue) -> Option<Literal> {
    Some(match v {
        v if v.is_null() => Literal::Null,
        ScalarValue::Boolean(Some(b)) => Literal::Bool(*b),
        ScalarValue::Int8(Some(x)) => Literal::Int(i64::from(*x)),
        ScalarValue::Int16(Some(x)) => Literal::Int(i64::from(*x)),
        ScalarValue::Int32(Some(x)) => Literal::Int(i64::from(*x)),
        ScalarValue::Int64(Some(x)) => Literal::Int(*x),
        ScalarValue::UInt8(Some(x)) => Literal::UInt(u64::from(*x)),
        ScalarValue::UInt16(Some(x)) => Literal::UInt(u64::from(*x)),
        ScalarValue::UInt32(Some(x)) => Literal::UInt(u64::from(*x)),
        ScalarValue::UInt64(Some(x)) => Literal::UInt(*x),
        ScalarValue::Float32(Some(x)) => Literal::Float(f64::from(*x)),
        ScalarValue::Float64(Some(x)) => Literal::Float(*x),
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Literal::Utf8(s.clone()),
        ScalarValue::Date32(Some(d)) => Literal::Date32(*d),
        ScalarValue::Decimal128(Some(v), p, s) => Literal::Decimal128 {
            value: *v,
            precision: *p,
            scale: *s,
        },
        ScalarValue::TimestampMicrosecond(Some(v), None) => Literal::TimestampMicros(*v),
        _ => return None,
    })
}

/// A predicate that holds for every row the physical filter `expr` (a
/// snapshot of a join's dynamic filter: bounds, an IN list, per-partition
/// CASE) selects; it may select more. `None`: nothing can be said.
/// `column` maps a column of the scan's output to the table's user column.
/// Only ever a weaker filter, so a node applying it drops no row the join
/// would keep.
pub fn implied_by(
    expr: &Arc<dyn PhysicalExpr>,
    column: &dyn Fn(usize) -> Option<usize>,
) -> Option<Predicate> {
    let any = expr;
    if let Some(b) = any.downcast_ref::<phys::BinaryExpr>() {
        return match b.op() {
            Operator::And => {
                let mut parts: Vec<Predicate> = [b.left(), b.right()]
                    .into_iter()
                    .filter_map(|e| implied_by(e, column))
                    .flat_map(|p| match p {
                        Predicate::And(items) => items,
                        p => vec![p],
                    })
                    .collect();
                match parts.len() {
                    0 => None,
                    1 => parts.pop(),
                    _ => Some(Predicate::And(parts)),
                }
            }
            Operator::Or => Some(Predicate::Or(vec![
                implied_by(b.left(), column)?,
                implied_by(b.right(), column)?,
            ])),
            op => {
                let op = cmp(*op)?;
                let col_of = |e: &Arc<dyn PhysicalExpr>| {
                    e.downcast_ref::<phys::Column>()
                        .and_then(|c| column(c.index()))
                };
                let lit_of = |e: &Arc<dyn PhysicalExpr>| {
                    e.downcast_ref::<phys::Literal>()
                        .and_then(|l| scalar(l.value()))
                };
                compare(
                    op,
                    (col_of(b.left()), lit_of(b.right())),
                    (lit_of(b.left()), col_of(b.right())),
                )
            }
        };
    }
    if let Some(l) = any.downcast_ref::<phys::InListExpr>() {
        let c = l
            .expr()
            .downcast_ref::<phys::Column>()
            .and_then(|c| column(c.index()))?;
        if l.negated() || l.list().len() > MAX_RUNTIME_IN_LIST {
            return None;
        }
        let values = l
            .list()
            .iter()
            .map(|e| {
                let v = e.downcast_ref::<phys::Literal>()?.value();
                // Integers only: other types are tested value by value on
                // the nodes, too slow for a long list.
                v.data_type()
                    .is_integer()
                    .then(|| scalar(v))
                    .flatten()
                    .filter(|l| !matches!(l, Literal::Null))
            })
            .collect::<Option<Vec<_>>>()?;
        return Some(Predicate::InList {
            column: c,
            values,
            negated: false,
        });
    }
    if let Some(case) = any.downcast_ref::<phys::CaseExpr>() {
        // CASE <partition> WHEN i THEN <filter i> ... ELSE false: a selected
        // row satisfies one of the branches.
        if let Some(e) = case.else_expr() {
            let falsy = e
                .downcast_ref::<phys::Literal>()
                .is_some_and(|l| matches!(l.value(), ScalarValue::Boolean(Some(false) | None)));
            if !falsy {
                return None;
            }
        }
        let branches = case
            .when_then_expr()
            .iter()
            .map(|(_, then)| implied_by(then, column))
            .collect::<Option<Vec<_>>>()?;
        return (!branches.is_empty()).then_some(Predicate::Or(branches));
    }
    None
}

/// A predicate that holds for every probe row an inner (or semi) hash join
/// can match with a build side whose key values are `keys` (one array per
/// batch): the keys' bounds and, for integer keys with at most
/// [`MAX_RUNTIME_IN_LIST`] distinct values, the list of them; `column` is the
/// probe table's column the key is. `None` when no key is known (no
/// non-NULL key, or a type the nodes cannot compare).
pub fn implied_by_keys(keys: &[ArrayRef], column: usize) -> Option<Predicate> {
    use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
    use datafusion::logical_expr::Accumulator;
    let dt = keys.first()?.data_type().clone();
    let mut min = MinAccumulator::try_new(&dt).ok()?;
    let mut max = MaxAccumulator::try_new(&dt).ok()?;
    for k in keys {
        min.update_batch(std::slice::from_ref(k)).ok()?;
        max.update_batch(std::slice::from_ref(k)).ok()?;
    }
    let (lo, hi) = (min.evaluate().ok()?, max.evaluate().ok()?);
    if lo.is_null() || hi.is_null() {
        return None;
    }
    let mut parts = vec![
        Predicate::Compare {
            column,
            op: CmpOp::GtEq,
            value: scalar(&lo)?,
        },
        Predicate::Compare {
            column,
            op: CmpOp::LtEq,
            value: scalar(&hi)?,
        },
    ];
    if dt.is_integer() {
        let mut distinct = std::collections::BTreeSet::new();
        'keys: for k in keys {
            let Ok(k) = arrow::compute::cast(k, &arrow::datatypes::DataType::Int64) else {
                break;
            };
            for v in k
                .as_primitive::<arrow::datatypes::Int64Type>()
                .iter()
                .flatten()
            {
                distinct.insert(v);
                if distinct.len() > MAX_RUNTIME_IN_LIST {
                    distinct.clear();
                    break 'keys;
                }
            }
        }
        // Unsigned keys past i64 do not cast: then only the bounds.
        if !distinct.is_empty() && !matches!(lo, ScalarValue::UInt64(_)) {
            parts.push(Predicate::InList {
                column,
                values: distinct.into_iter().map(Literal::Int).collect(),
                negated: false,
            });
        }
    }
    Some(Predicate::And(parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field};
    use datafusion::prelude::{col, lit};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ])
    }

    #[test]
    fn build_keys_imply_their_bounds_and_short_integer_lists() {
        use arrow::array::{Int32Array, StringArray};
        let keys: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(vec![Some(3), None, Some(-1), Some(3)])),
            Arc::new(Int32Array::from(vec![7])),
        ];
        let want = Predicate::And(vec![
            Predicate::Compare {
                column: 2,
                op: CmpOp::GtEq,
                value: Literal::Int(-1),
            },
            Predicate::Compare {
                column: 2,
                op: CmpOp::LtEq,
                value: Literal::Int(7),
            },
            Predicate::InList {
                column: 2,
                values: vec![Literal::Int(-1), Literal::Int(3), Literal::Int(7)],
                negated: false,
            },
        ]);
        assert_eq!(implied_by_keys(&keys, 2), Some(want));
        // Strings: the bounds alone.
        let names: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec!["b", "a", "c"]))];
        let Some(Predicate::And(parts)) = implied_by_keys(&names, 0) else {
            panic!("no bounds for string keys");
        };
        assert_eq!(parts.len(), 2);
        // Too many distinct integers: the bounds alone.
        let many: Vec<ArrayRef> = vec![Arc::new(Int32Array::from_iter_values(
            0..(MAX_RUNTIME_IN_LIST as i32 + 1),
        ))];
        let Some(Predicate::And(parts)) = implied_by_keys(&many, 0) else {
            panic!("no bounds for many keys");
        };
        assert_eq!(parts.len(), 2);
        // No key at all (only NULLs, or no rows): nothing to say.
        let nulls: Vec<ArrayRef> = vec![Arc::new(Int32Array::from(vec![None, None]))];
        assert_eq!(implied_by_keys(&nulls, 0), None);
        assert_eq!(implied_by_keys(&[], 0), None);
    }

    #[test]
    fn runtime_filters_imply_weaker_node_filters() {
        use arrow::array::{Int64Array, StringArray};
        use datafusion::physical_expr::expressions::{lit as plit, BinaryExpr as PB};
        let s = schema();
        let k: Arc<dyn PhysicalExpr> = Arc::new(phys::Column::new("k", 0));
        let st: Arc<dyn PhysicalExpr> = Arc::new(phys::Column::new("s", 1));
        let bin = |l: Arc<dyn PhysicalExpr>,
                   op,
                   r: Arc<dyn PhysicalExpr>|
         -> Arc<dyn PhysicalExpr> { Arc::new(PB::new(l, op, r)) };
        // The scan's output column c is the table's column c here.
        let same = |c: usize| Some(c);
        let bounds = bin(
            bin(k.clone(), Operator::GtEq, plit(3i64)),
            Operator::And,
            bin(k.clone(), Operator::LtEq, plit(9i64)),
        );
        let keys = Arc::new(Int64Array::from(vec![3, 5, 9]));
        let list: Arc<dyn PhysicalExpr> =
            Arc::new(phys::InListExpr::try_new_from_array(k.clone(), keys, false, &s).unwrap());
        let both = bin(bounds.clone(), Operator::And, list.clone());
        let p = implied_by(&both, &same).expect("bounds and list");
        let want_list = Predicate::InList {
            column: 0,
            values: vec![Literal::Int(3), Literal::Int(5), Literal::Int(9)],
            negated: false,
        };
        assert_eq!(
            p,
            Predicate::And(vec![
                Predicate::Compare {
                    column: 0,
                    op: CmpOp::GtEq,
                    value: Literal::Int(3)
                },
                Predicate::Compare {
                    column: 0,
                    op: CmpOp::LtEq,
                    value: Literal::Int(9)
                },
                want_list.clone(),
            ])
        );
        // An AND keeps what it can translate (a weaker filter); an OR needs
        // both sides; the scan's columns are mapped to the table's.
        let opaque = bin(st.clone(), Operator::LikeMatch, plit("x"));
        assert_eq!(
            implied_by(&bin(opaque.clone(), Operator::And, list.clone()), &same),
            Some(want_list.clone())
        );
        assert_eq!(
            implied_by(&bin(opaque.clone(), Operator::Or, list.clone()), &same),
            None
        );
        assert_eq!(implied_by(&list, &|_| None), None);
        assert!(matches!(
            implied_by(&list, &|_| Some(4)),
            Some(Predicate::InList { column: 4, .. })
        ));
        // A string list is not sent (nodes test strings value by value).
        let names = Arc::new(StringArray::from(vec!["a", "b"]));
        let slist: Arc<dyn PhysicalExpr> =
            Arc::new(phys::InListExpr::try_new_from_array(st.clone(), names, false, &s).unwrap());
        assert_eq!(implied_by(&slist, &same), None);
        // Partitioned joins: CASE partition WHEN i THEN filter_i ELSE false
        // implies the OR of the branches, and nothing if a branch is opaque.
        let case = |then1: Arc<dyn PhysicalExpr>| -> Arc<dyn PhysicalExpr> {
            Arc::new(
                phys::CaseExpr::try_new(
                    Some(k.clone()),
                    vec![(plit(0i64), bounds.clone()), (plit(1i64), then1)],
                    Some(plit(false)),
                )
                .unwrap(),
            )
        };
        assert!(matches!(
            implied_by(&case(list.clone()), &same),
            Some(Predicate::Or(v)) if v.len() == 2
        ));
        assert_eq!(implied_by(&case(opaque), &same), None);
    }

    #[test]
    fn translates_comparisons_both_ways_and_refuses_the_rest() {
        let s = schema();
        assert_eq!(
            to_predicate(&lit(5i64).lt(col("k")), &s),
            Some(Predicate::Compare {
                column: 0,
                op: CmpOp::Gt,
                value: Literal::Int(5)
            })
        );
        let p = to_predicate(
            &col("k")
                .between(lit(1i64), lit(9i64))
                .and(col("s").eq(lit("x"))),
            &s,
        );
        assert!(matches!(p, Some(Predicate::And(_))));
        // A function call cannot be evaluated by a node.
        let f = datafusion::functions::expr_fn::upper(col("s")).eq(lit("X"));
        assert_eq!(to_predicate(&f, &s), None);
        // OR with one untranslatable side is not pushed at all.
        assert_eq!(to_predicate(&col("k").eq(lit(1i64)).or(f), &s), None);
        assert_eq!(to_predicate(&col("nope").eq(lit(1i64)), &s), None);
    }
}
