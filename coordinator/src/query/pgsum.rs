//! `sum` with PostgreSQL's result types: `sum(bigint)` is a `numeric`, so it
//! never wraps around (DataFusion's own `sum(Int64)` is an `Int64` that
//! silently overflows: `sum` of `i64::MAX` and 1 was `-9223372036854775808`).
//!
//! It owns only the argument coercion: `smallint`/`integer` sum as `bigint`
//! (as in PostgreSQL), `bigint` as `numeric(38,0)`; every other type and the
//! accumulators are DataFusion's `Sum`. It replaces `sum` in the
//! coordinator's function registry; it never changes another function, and
//! plan fragments sent to the nodes carry the cast argument, so a node's
//! built-in `sum` computes the same type.

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{plan_err, Result, ScalarValue};
use datafusion::functions_aggregate::sum::Sum;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, Expr, GroupsAccumulator, Operator,
    ReversedUDAF, SetMonotonicity, Signature, StatisticsArgs, Volatility,
};

/// The precision `sum(bigint)` is computed in (Decimal128's largest).
const SUM_BIGINT: DataType = DataType::Decimal128(38, 0);

/// `sum` typed as PostgreSQL types it; see the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PgSum {
    inner: Sum,
    signature: Signature,
}

impl PgSum {
    pub fn new() -> PgSum {
        PgSum {
            inner: Sum::new(),
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    /// The UDAF to register in place of DataFusion's `sum`.
    pub fn udaf() -> AggregateUDF {
        AggregateUDF::new_from_impl(PgSum::new())
    }
}

impl Default for PgSum {
    fn default() -> Self {
        PgSum::new()
    }
}

/// The type `sum`'s argument is cast to before it is summed.
fn sum_input(t: &DataType) -> Result<DataType> {
    Ok(match t {
        DataType::Null
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => DataType::Int64,
        DataType::Int64 | DataType::UInt64 => SUM_BIGINT,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => DataType::Float64,
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..)
        | DataType::Duration(_)
        | DataType::Interval(_) => t.clone(),
        DataType::Dictionary(_, v) => return sum_input(v),
        other => return plan_err!("function sum({other}) does not exist"),
    })
}

impl AggregateUDFImpl for PgSum {
    fn name(&self) -> &str {
        "sum"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [t] => Ok(vec![sum_input(t)?]),
            _ => plan_err!("sum takes one argument, got {}", arg_types.len()),
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.accumulator(args)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        self.inner.create_groups_accumulator(args)
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.create_sliding_accumulator(args)
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        ReversedUDAF::Identical
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.set_monotonicity(data_type)
    }

    fn simplify_expr_op_literal(
        &self,
        agg_function: &AggregateFunction,
        arg: &Expr,
        op: Operator,
        lit: &Expr,
        arg_is_left: bool,
    ) -> Result<Option<Expr>> {
        self.inner
            .simplify_expr_op_literal(agg_function, arg, op, lit, arg_is_left)
    }

    fn value_from_stats(&self, statistics_args: &StatisticsArgs) -> Option<ScalarValue> {
        self.inner.value_from_stats(statistics_args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigint_sums_as_numeric_and_smaller_integers_as_bigint() {
        let s = PgSum::new();
        assert_eq!(
            s.coerce_types(&[DataType::Int64]).unwrap(),
            vec![SUM_BIGINT]
        );
        assert_eq!(
            s.coerce_types(&[DataType::Int32]).unwrap(),
            vec![DataType::Int64]
        );
        assert_eq!(
            s.coerce_types(&[DataType::Float32]).unwrap(),
            vec![DataType::Float64]
        );
        let d = DataType::Decimal128(12, 2);
        assert_eq!(s.coerce_types(std::slice::from_ref(&d)).unwrap(), vec![d]);
        assert_eq!(s.return_type(&[SUM_BIGINT]).unwrap(), SUM_BIGINT);
        assert!(s.coerce_types(&[DataType::Utf8]).is_err());
    }

    #[tokio::test]
    async fn sum_of_bigints_past_i64_max_is_exact() {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_udaf(PgSum::udaf());
        let batches = ctx
            .sql(
                "SELECT sum(x) AS s \
                 FROM (VALUES (9223372036854775807), (9223372036854775807), (2)) v(x)",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let s = datafusion::arrow::util::pretty::pretty_format_batches(&batches[..1])
            .unwrap()
            .to_string();
        assert!(s.contains("18446744073709551616"), "{s}");
    }
}
