//! Helpers the COPY unit tests share.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

use super::decode::CopyDecoder;
use super::error::CopyError;
use super::options::CopyOptions;

pub(super) fn schema(fields: Vec<(&str, DataType, bool)>) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .into_iter()
            .map(|(n, t, nullable)| Field::new(n, t, nullable))
            .collect::<Vec<_>>(),
    ))
}

pub(super) fn all_types() -> SchemaRef {
    schema(vec![
        ("i8", DataType::Int8, true),
        ("i16", DataType::Int16, true),
        ("i32", DataType::Int32, true),
        ("i64", DataType::Int64, true),
        ("u8", DataType::UInt8, true),
        ("u16", DataType::UInt16, true),
        ("u32", DataType::UInt32, true),
        ("u64", DataType::UInt64, true),
        ("f32", DataType::Float32, true),
        ("f64", DataType::Float64, true),
        ("dec", DataType::Decimal128(10, 2), true),
        ("s", DataType::Utf8, true),
        ("ls", DataType::LargeUtf8, true),
        ("b", DataType::Boolean, true),
        ("d", DataType::Date32, true),
        ("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ("tsn", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        ("tss", DataType::Timestamp(TimeUnit::Second, None), true),
    ])
}

/// Decode `input` in one push (or in the given chunks).
pub(super) fn decode_chunks(
    schema: &SchemaRef,
    opts: &CopyOptions,
    chunks: &[&[u8]],
    batch_rows: usize,
) -> Result<Vec<RecordBatch>, CopyError> {
    let mut d = CopyDecoder::new(schema.clone(), opts.clone(), batch_rows);
    let mut out = Vec::new();
    for c in chunks {
        out.extend(d.push(c)?);
    }
    out.extend(d.finish()?);
    Ok(out)
}

pub(super) fn decode(
    schema: &SchemaRef,
    opts: &CopyOptions,
    input: &str,
) -> Result<Vec<RecordBatch>, CopyError> {
    decode_chunks(schema, opts, &[input.as_bytes()], 1024)
}

pub(super) fn concat(batches: &[RecordBatch]) -> RecordBatch {
    datafusion::arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap()
}

pub(super) fn err(schema: &SchemaRef, opts: &CopyOptions, input: &str) -> CopyError {
    decode(schema, opts, input).expect_err(input)
}

pub(super) const TEXT_ROWS: &str = "\
-128\t-32768\t-2147483648\t-9223372036854775808\t0\t0\t0\t0\t-1.5\t-2.5e-300\t-12345678.99\ta\\tb\\nc\\\\d\tx\tt\t1970-01-01\t1970-01-01 00:00:00\t1969-12-31 23:59:59.999999999\t1900-02-28 12:00:00
127\t32767\t2147483647\t9223372036854775807\t255\t65535\t4294967295\t18446744073709551615\t3.4028235e+38\t1.7976931348623157e+308\t0.01\tunicode ✓ ünï\t\tf\t2024-02-29\t2024-02-29 23:59:59.123456\t2262-04-11 23:47:16.854775807\t9999-12-31 23:59:59
\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N
0\t1\t-1\t42\t1\t2\t3\t4\tNaN\tInfinity\t-0.50\t\\\\N\tback\\\\slash\tt\t0001-01-01\t2000-01-01 00:00:00.5\t2000-01-01 00:00:00.000000001\t1969-07-20 20:17:40
1\t2\t3\t4\t5\t6\t7\t8\t-Infinity\t0.1\t123.45\t\"quoted\", comma\tcr\\r\tf\t1999-12-31\t2001-09-09 01:46:40\t1677-09-21 00:12:43.145224192\t2038-01-19 03:14:08
";

pub(super) fn col_of(b: &RecordBatch, c: usize, r: usize) -> Option<String> {
    let a = b.column(c).as_string::<i32>();
    (!a.is_null(r)).then(|| a.value(r).to_string())
}
