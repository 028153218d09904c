//! PostgreSQL's `pg_typeof(any)`: the name of its argument's type, as
//! PostgreSQL prints a `regtype` (`bigint`, `numeric`, `text`, `timestamp
//! without time zone`, `integer[]`).
//!
//! It only names the SQL type slicedb keeps a value as (an integer literal
//! is a `bigint` here; a `varchar(n)` column is `text`, as it is stored). It
//! never looks at the value.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

/// Register `pg_typeof` (also as `pg_catalog.pg_typeof`) with `ctx`.
pub fn install(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::new_from_impl(PgTypeof {
        signature: Signature::any(1, Volatility::Immutable),
        aliases: vec!["pg_catalog.pg_typeof".to_string()],
    }));
}

/// The PostgreSQL name of the type a value of `t` is.
pub fn pg_type_name(t: &DataType) -> String {
    match t {
        DataType::Null => "unknown".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::UInt8 | DataType::Int16 => "smallint".into(),
        DataType::UInt16 | DataType::Int32 => "integer".into(),
        DataType::UInt32 | DataType::Int64 | DataType::UInt64 => "bigint".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => "numeric".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "bytea".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Time32(_) | DataType::Time64(_) => "time without time zone".into(),
        DataType::Interval(_) | DataType::Duration(_) => "interval".into(),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _) => format!("{}[]", pg_type_name(f.data_type())),
        DataType::Dictionary(_, v) => pg_type_name(v),
        other => other.to_string(),
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct PgTypeof {
    signature: Signature,
    aliases: Vec<String>,
}

impl ScalarUDFImpl for PgTypeof {
    fn name(&self) -> &str {
        "pg_typeof"
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let name = args
            .arg_fields
            .first()
            .map(|f| pg_type_name(f.data_type()))
            .unwrap_or_else(|| "unknown".into());
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use datafusion::arrow::datatypes::{Field, TimeUnit};

    #[test]
    fn names_as_postgresql_prints_regtype() {
        let cases = [
            (DataType::Int64, "bigint"),
            (DataType::Int32, "integer"),
            (DataType::Decimal128(12, 2), "numeric"),
            (DataType::Utf8, "text"),
            (
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                "timestamp without time zone",
            ),
            (
                DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
                "integer[]",
            ),
        ];
        for (t, want) in cases {
            assert_eq!(pg_type_name(&t), want, "{t}");
        }
    }

    #[tokio::test]
    async fn pg_typeof_answers_per_row_type() {
        let ctx = SessionContext::new();
        install(&ctx);
        let batches = ctx
            .sql("SELECT pg_typeof(1), pg_typeof('a'), pg_catalog.pg_typeof(1.5::double)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("bigint"), "{text}");
        assert!(text.contains("text"), "{text}");
        assert!(text.contains("double precision"), "{text}");
    }
}
