//! Translation of DataFusion filter expressions into the engine's
//! [`Predicate`], for pushdown to nodes (zone-map pruning + exact filtering).
//!
//! Only what a node can evaluate exactly is translated; everything else stays
//! in DataFusion. Pushed filters are reported as `Inexact`, so DataFusion
//! re-applies them and a node that filters less never changes an answer.

use arrow::datatypes::Schema;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use slicedb_engine::predicate::{CmpOp, Literal, Predicate};

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
            _ => {
                let op = cmp(*op)?;
                if let (Some(c), Some(v)) = (column(left, schema), literal(right)) {
                    Some(Predicate::Compare {
                        column: c,
                        op,
                        value: v,
                    })
                } else if let (Some(v), Some(c)) = (literal(left), column(right, schema)) {
                    Some(Predicate::Compare {
                        column: c,
                        op: flip(op),
                        value: v,
                    })
                } else {
                    None
                }
            }
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
