//! Column builders: the Arrow builder a decoded column appends to, and the
//! messages of a value that does not fit its column.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, Int8Builder, LargeStringBuilder,
    StringBuilder, StringViewBuilder, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray, UInt16Builder, UInt32Builder, UInt64Builder,
    UInt8Builder,
};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, TimeUnit};

use super::binval::{
    micros_to_unit, recv_bool, recv_date, recv_f32, recv_f64, recv_int, recv_numeric,
    recv_timestamp,
};
use super::error::{
    CopyError, CHARACTER_NOT_IN_REPERTOIRE, DATETIME_FIELD_OVERFLOW, INVALID_BINARY_REPRESENTATION,
    INVALID_DATETIME_FORMAT, INVALID_TEXT_REPRESENTATION, NUMERIC_VALUE_OUT_OF_RANGE,
};
use super::parse::{
    narrow, parse_bool, parse_bytea, parse_date_fast, parse_decimal, parse_f32, parse_f64,
    parse_i64, parse_timestamp, parse_u64, timestamp_in_unit, unarrow, ConvErr,
};

pub(super) enum Col {
    I8(Int8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    U8(UInt8Builder),
    U16(UInt16Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Dec(Decimal128Builder, u8, i8),
    Utf8(StringBuilder),
    LargeUtf8(LargeStringBuilder),
    Utf8View(StringViewBuilder),
    Bool(BooleanBuilder),
    Date32(Date32Builder),
    /// values in the column's unit; built into the timestamp type at flush
    Ts(Int64Builder, TimeUnit, Option<Arc<str>>),
    /// bytea, and a buffer for a value's unescaped bytes
    Bin(BinaryBuilder, Vec<u8>),
    /// any other type: collected as text and cast at flush
    Other(StringBuilder),
}

impl Col {
    pub(super) fn new(dt: &DataType, cap: usize) -> Col {
        match dt {
            DataType::Int8 => Col::I8(Int8Builder::with_capacity(cap)),
            DataType::Int16 => Col::I16(Int16Builder::with_capacity(cap)),
            DataType::Int32 => Col::I32(Int32Builder::with_capacity(cap)),
            DataType::Int64 => Col::I64(Int64Builder::with_capacity(cap)),
            DataType::UInt8 => Col::U8(UInt8Builder::with_capacity(cap)),
            DataType::UInt16 => Col::U16(UInt16Builder::with_capacity(cap)),
            DataType::UInt32 => Col::U32(UInt32Builder::with_capacity(cap)),
            DataType::UInt64 => Col::U64(UInt64Builder::with_capacity(cap)),
            DataType::Float32 => Col::F32(Float32Builder::with_capacity(cap)),
            DataType::Float64 => Col::F64(Float64Builder::with_capacity(cap)),
            DataType::Decimal128(p, s) => Col::Dec(
                Decimal128Builder::with_capacity(cap).with_data_type(dt.clone()),
                *p,
                *s,
            ),
            DataType::Utf8 => Col::Utf8(StringBuilder::with_capacity(cap, cap * 16)),
            DataType::LargeUtf8 => Col::LargeUtf8(LargeStringBuilder::with_capacity(cap, cap * 16)),
            DataType::Utf8View => Col::Utf8View(StringViewBuilder::with_capacity(cap)),
            DataType::Boolean => Col::Bool(BooleanBuilder::with_capacity(cap)),
            DataType::Date32 => Col::Date32(Date32Builder::with_capacity(cap)),
            DataType::Timestamp(unit, tz) => {
                Col::Ts(Int64Builder::with_capacity(cap), *unit, tz.clone())
            }
            DataType::Binary => Col::Bin(BinaryBuilder::with_capacity(cap, cap * 16), Vec::new()),
            _ => Col::Other(StringBuilder::with_capacity(cap, cap * 16)),
        }
    }

    /// Like [`Col::new`], with room for `text_bytes` of string data.
    pub(super) fn sized(dt: &DataType, cap: usize, text_bytes: usize) -> Col {
        let bytes = text_bytes.max(cap * 4);
        match dt {
            DataType::Utf8 => Col::Utf8(StringBuilder::with_capacity(cap, bytes)),
            DataType::LargeUtf8 => Col::LargeUtf8(LargeStringBuilder::with_capacity(cap, bytes)),
            _ => Col::new(dt, cap),
        }
    }

    #[inline]
    pub(super) fn append_null(&mut self) {
        match self {
            Col::I8(b) => b.append_null(),
            Col::I16(b) => b.append_null(),
            Col::I32(b) => b.append_null(),
            Col::I64(b) => b.append_null(),
            Col::U8(b) => b.append_null(),
            Col::U16(b) => b.append_null(),
            Col::U32(b) => b.append_null(),
            Col::U64(b) => b.append_null(),
            Col::F32(b) => b.append_null(),
            Col::F64(b) => b.append_null(),
            Col::Dec(b, _, _) => b.append_null(),
            Col::Utf8(b) => b.append_null(),
            Col::LargeUtf8(b) => b.append_null(),
            Col::Utf8View(b) => b.append_null(),
            Col::Bool(b) => b.append_null(),
            Col::Date32(b) => b.append_null(),
            Col::Ts(b, _, _) => b.append_null(),
            Col::Bin(b, _) => b.append_null(),
            Col::Other(b) => b.append_null(),
        }
    }

    #[inline]
    pub(super) fn append(&mut self, v: &[u8]) -> Result<(), ConvErr> {
        #[inline]
        fn utf8(v: &[u8]) -> Result<&str, ConvErr> {
            debug_assert!(std::str::from_utf8(v).is_ok(), "fields are valid UTF-8");
            // SAFETY: every row is checked as UTF-8 before it is split
            // (`CopyDecoder::line_in`, or its whole chunk in `push_inner`);
            // fields are split at ASCII bytes (delimiter, quote, backslash),
            // which never fall inside a multi-byte character, and removing
            // ASCII quote or escape bytes keeps UTF-8 valid; a text field
            // whose escapes produced non-ASCII bytes is checked on its own
            // (`split_text`).
            Ok(unsafe { std::str::from_utf8_unchecked(v) })
        }
        match self {
            Col::I8(b) => b.append_value(narrow(parse_i64(v)?)?),
            Col::I16(b) => b.append_value(narrow(parse_i64(v)?)?),
            Col::I32(b) => b.append_value(narrow(parse_i64(v)?)?),
            Col::I64(b) => b.append_value(parse_i64(v)?),
            Col::U8(b) => b.append_value(unarrow(parse_u64(v)?)?),
            Col::U16(b) => b.append_value(unarrow(parse_u64(v)?)?),
            Col::U32(b) => b.append_value(unarrow(parse_u64(v)?)?),
            Col::U64(b) => b.append_value(parse_u64(v)?),
            Col::F32(b) => b.append_value(parse_f32(v)?),
            Col::F64(b) => b.append_value(parse_f64(v)?),
            Col::Dec(b, p, s) => b.append_value(parse_decimal(v, *p, *s)?),
            Col::Utf8(b) => b.append_value(utf8(v)?),
            Col::LargeUtf8(b) => b.append_value(utf8(v)?),
            Col::Utf8View(b) => b.append_value(utf8(v)?),
            Col::Bool(b) => b.append_value(parse_bool(v)?),
            Col::Date32(b) => b.append_value(parse_date_fast(v)?),
            Col::Ts(b, unit, tz) => {
                let (secs, nanos) = parse_timestamp(v, tz.is_some())?;
                b.append_value(timestamp_in_unit(secs, nanos, *unit)?)
            }
            Col::Bin(b, buf) => {
                buf.clear();
                parse_bytea(v, buf)?;
                b.append_value(&buf[..])
            }
            Col::Other(b) => b.append_value(utf8(v)?),
        }
        Ok(())
    }

    /// Whether [`append_binary`](Self::append_binary) reads this type.
    pub(super) fn reads_binary(dt: &DataType) -> bool {
        !matches!(Col::new(dt, 0), Col::Other(_))
    }

    /// Append a value in PostgreSQL's binary form (binary COPY): the form
    /// of the column's type; integer and float columns also take the other
    /// widths of their kind (int2/int4/int8, float4/float8).
    #[inline]
    pub(super) fn append_binary(&mut self, v: &[u8]) -> Result<(), ConvErr> {
        let uint = |v: &[u8]| u64::try_from(recv_int(v)?).map_err(|_| ConvErr::Range);
        let text = |v| std::str::from_utf8(v).map_err(|_| ConvErr::Encoding);
        match self {
            Col::I8(b) => b.append_value(narrow(recv_int(v)?)?),
            Col::I16(b) => b.append_value(narrow(recv_int(v)?)?),
            Col::I32(b) => b.append_value(narrow(recv_int(v)?)?),
            Col::I64(b) => b.append_value(recv_int(v)?),
            Col::U8(b) => b.append_value(unarrow(uint(v)?)?),
            Col::U16(b) => b.append_value(unarrow(uint(v)?)?),
            Col::U32(b) => b.append_value(unarrow(uint(v)?)?),
            // a UInt64 is sent as numeric (it does not fit an int8)
            Col::U64(b) => {
                b.append_value(u64::try_from(recv_numeric(v, 20, 0)?).map_err(|_| ConvErr::Range)?)
            }
            Col::F32(b) => b.append_value(recv_f32(v)?),
            Col::F64(b) => b.append_value(recv_f64(v)?),
            Col::Dec(b, p, s) => b.append_value(recv_numeric(v, *p, *s)?),
            Col::Utf8(b) => b.append_value(text(v)?),
            Col::LargeUtf8(b) => b.append_value(text(v)?),
            Col::Utf8View(b) => b.append_value(text(v)?),
            Col::Bool(b) => b.append_value(recv_bool(v)?),
            Col::Date32(b) => b.append_value(recv_date(v)?),
            Col::Ts(b, unit, _) => b.append_value(micros_to_unit(recv_timestamp(v)?, *unit)?),
            Col::Bin(b, _) => b.append_value(v),
            Col::Other(_) => return Err(ConvErr::Invalid),
        }
        Ok(())
    }

    pub(super) fn finish(&mut self, dt: &DataType, column: &str) -> Result<ArrayRef, CopyError> {
        Ok(match self {
            Col::I8(b) => Arc::new(b.finish()),
            Col::I16(b) => Arc::new(b.finish()),
            Col::I32(b) => Arc::new(b.finish()),
            Col::I64(b) => Arc::new(b.finish()),
            Col::U8(b) => Arc::new(b.finish()),
            Col::U16(b) => Arc::new(b.finish()),
            Col::U32(b) => Arc::new(b.finish()),
            Col::U64(b) => Arc::new(b.finish()),
            Col::F32(b) => Arc::new(b.finish()),
            Col::F64(b) => Arc::new(b.finish()),
            Col::Dec(b, _, _) => Arc::new(b.finish()),
            Col::Utf8(b) => Arc::new(b.finish()),
            Col::LargeUtf8(b) => Arc::new(b.finish()),
            Col::Utf8View(b) => Arc::new(b.finish()),
            Col::Bool(b) => Arc::new(b.finish()),
            Col::Date32(b) => Arc::new(b.finish()),
            Col::Ts(b, unit, tz) => {
                let (_, values, nulls) = b.finish().into_parts();
                let tz = tz.clone();
                match unit {
                    TimeUnit::Second => {
                        Arc::new(TimestampSecondArray::new(values, nulls).with_timezone_opt(tz))
                    }
                    TimeUnit::Millisecond => Arc::new(
                        TimestampMillisecondArray::new(values, nulls).with_timezone_opt(tz),
                    ),
                    TimeUnit::Microsecond => Arc::new(
                        TimestampMicrosecondArray::new(values, nulls).with_timezone_opt(tz),
                    ),
                    TimeUnit::Nanosecond => {
                        Arc::new(TimestampNanosecondArray::new(values, nulls).with_timezone_opt(tz))
                    }
                }
            }
            Col::Bin(b, _) => Arc::new(b.finish()),
            Col::Other(b) => {
                let strings: ArrayRef = Arc::new(b.finish());
                let opts = CastOptions {
                    safe: false,
                    ..Default::default()
                };
                cast_with_options(&strings, dt, &opts).map_err(|e| {
                    CopyError::new(
                        INVALID_TEXT_REPRESENTATION,
                        format!("invalid input for column {column} of type {dt}: {e}"),
                    )
                })?
            }
        })
    }
}

/// PostgreSQL's name for an Arrow type, for error messages.
pub(crate) fn pg_type_name(dt: &DataType) -> String {
    match dt {
        DataType::Int8 => "tinyint".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::UInt8 => "tinyint unsigned".into(),
        DataType::UInt16 => "smallint unsigned".into(),
        DataType::UInt32 => "integer unsigned".into(),
        DataType::UInt64 => "bigint unsigned".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal128(..) => "numeric".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Date32 => "date".into(),
        DataType::Timestamp(_, None) => "timestamp".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Binary | DataType::LargeBinary => "bytea".into(),
        other => other.to_string(),
    }
}

pub(super) fn conv_error(
    kind: ConvErr,
    dt: &DataType,
    value: &[u8],
    line: u64,
    column: &str,
) -> CopyError {
    let e = value_error(kind, dt, value);
    CopyError::new(
        e.sqlstate,
        format!("{}, line {line}, column {column}", e.message),
    )
}

/// The error of a value (its text) that does not convert to type `dt`,
/// with PostgreSQL's SQLSTATE and message.
pub(crate) fn value_error(kind: ConvErr, dt: &DataType, value: &[u8]) -> CopyError {
    let v = String::from_utf8_lossy(value);
    let ty = pg_type_name(dt);
    let is_time = matches!(dt, DataType::Date32 | DataType::Timestamp(..));
    let (state, msg) = match kind {
        ConvErr::Encoding => (
            CHARACTER_NOT_IN_REPERTOIRE,
            format!(
                "invalid byte sequence for encoding \"UTF8\": {}",
                bad_utf8_bytes(value)
            ),
        ),
        ConvErr::Invalid if is_time => (
            INVALID_DATETIME_FORMAT,
            format!("invalid input syntax for type {ty}: \"{v}\""),
        ),
        ConvErr::Invalid => (
            INVALID_TEXT_REPRESENTATION,
            format!("invalid input syntax for type {ty}: \"{v}\""),
        ),
        ConvErr::Range if is_time => (
            DATETIME_FIELD_OVERFLOW,
            format!("date/time field value out of range: \"{v}\""),
        ),
        ConvErr::Range => match dt {
            DataType::Decimal128(p, s) => (
                NUMERIC_VALUE_OUT_OF_RANGE,
                format!("numeric field overflow: value \"{v}\" does not fit numeric({p},{s})"),
            ),
            DataType::Float32 | DataType::Float64 => (
                NUMERIC_VALUE_OUT_OF_RANGE,
                format!("\"{v}\" is out of range for type {ty}"),
            ),
            _ => (
                NUMERIC_VALUE_OUT_OF_RANGE,
                format!("value \"{v}\" is out of range for type {ty}"),
            ),
        },
    };
    CopyError::new(state, msg)
}

/// [`conv_error`] for a value in binary form (binary COPY): bytes that do
/// not have the layout of the column's type are 22P03, as in PostgreSQL.
pub(super) fn binary_conv_error(
    kind: ConvErr,
    dt: &DataType,
    value: &[u8],
    row: u64,
    column: &str,
) -> CopyError {
    let ty = pg_type_name(dt);
    let is_time = matches!(dt, DataType::Date32 | DataType::Timestamp(..));
    let (state, msg) = match kind {
        ConvErr::Invalid => (
            INVALID_BINARY_REPRESENTATION,
            format!(
                "incorrect binary data format for type {ty} ({} bytes)",
                value.len()
            ),
        ),
        ConvErr::Range if is_time => (DATETIME_FIELD_OVERFLOW, format!("{ty} out of range")),
        ConvErr::Range => (
            NUMERIC_VALUE_OUT_OF_RANGE,
            match dt {
                DataType::Decimal128(p, s) => {
                    format!("numeric field overflow: value does not fit numeric({p},{s})")
                }
                _ => format!("value out of range for type {ty}"),
            },
        ),
        ConvErr::Encoding => return conv_error(kind, dt, value, row, column),
    };
    CopyError::new(state, format!("{msg}, line {row}, column {column}"))
}

/// "0xff 0xfe" for the first invalid sequence, like PostgreSQL.
pub(super) fn bad_utf8_bytes(b: &[u8]) -> String {
    let (at, len) = match std::str::from_utf8(b) {
        Ok(_) => return String::new(),
        Err(e) => (e.valid_up_to(), e.error_len().unwrap_or(4)),
    };
    b[at..]
        .iter()
        .take(len)
        .map(|x| format!("0x{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::encode::encode_rows;
    use crate::copy::options::CopyOptions;
    use crate::copy::testing::{concat, decode, err, schema};

    #[test]
    fn other_types_fall_back_to_cast() {
        let s = schema(vec![
            ("t", DataType::Time64(TimeUnit::Microsecond), true),
            ("v", DataType::Utf8View, true),
        ]);
        let b = concat(&decode(&s, &CopyOptions::text(), "12:34:56.5\tx\n\\N\t\\N\n").unwrap());
        assert_eq!(b.num_rows(), 2);
        let out = encode_rows(&[b], &CopyOptions::text()).unwrap();
        assert_eq!(out, b"12:34:56.500\tx\n\\N\t\\N\n");
        let e = err(&s, &CopyOptions::text(), "nope\tx\n");
        assert_eq!(e.sqlstate, "22P02");
    }

    #[test]
    fn bytea_reads_its_text_forms_and_writes_hex() {
        use datafusion::arrow::array::{Array, AsArray};
        let s = schema(vec![("b", DataType::Binary, true)]);
        let b = concat(
            &decode(
                &s,
                &CopyOptions::text(),
                "\\\\x00ff41\nab\\\\\\\\c\\\\001\n\\N\n\\\\x\n",
            )
            .unwrap(),
        );
        let a = b.column(0).as_binary::<i32>();
        assert_eq!(a.value(0), b"\x00\xffA");
        assert_eq!(a.value(1), b"ab\\c\x01");
        assert!(a.is_null(2));
        assert_eq!(a.value(3), b"");
        let out = encode_rows(std::slice::from_ref(&b), &CopyOptions::text()).unwrap();
        assert_eq!(out, b"\\\\x00ff41\n\\\\x61625c6301\n\\N\n\\\\x\n");
        let e = err(&s, &CopyOptions::text(), "\\\\x0\n");
        assert_eq!(
            (e.sqlstate, e.message.as_str()),
            (
                "22P02",
                "invalid input syntax for type bytea: \"\\x0\", line 1, column b"
            )
        );
    }
}
