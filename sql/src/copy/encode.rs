//! The encoder: record batches to COPY TO STDOUT text, CSV or binary,
//! values written as PostgreSQL writes them.

use std::fmt::Write as _;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::buffer::ScalarBuffer;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Float16Type, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Int8Type, Schema, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use super::binary::{row_writer, write_header, TRAILER};
use super::error::{CopyError, FEATURE_NOT_SUPPORTED};
use super::options::{CopyFormat, CopyOptions};
use super::parse::civil_from_days;

/// Format a float like PostgreSQL (shortest round-trip digits; exponent
/// notation below 1e-4 and from 1e15 (float8) / 1e6 (float4) on).
fn write_pg_float(
    out: &mut String,
    v: f64,
    digits_limit: i32,
    sci: &str,
    fixed: &dyn std::fmt::Display,
) {
    if v.is_nan() {
        out.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    let (mant, exp) = sci.split_once('e').unwrap_or((sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if v == 0.0 || (-4..digits_limit).contains(&exp) {
        // fixed notation: shortest digits, no exponent
        let _ = write!(out, "{fixed}");
    } else {
        let _ = write!(
            out,
            "{mant}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    }
}

/// A float8 as PostgreSQL writes it.
pub(crate) fn write_pg_float8(out: &mut String, v: f64) {
    write_pg_float(out, v, 15, &format!("{v:e}"), &v)
}

fn write_decimal(out: &mut String, v: i128, scale: i8) {
    if scale <= 0 {
        let _ = write!(out, "{v}");
        if v != 0 {
            for _ in 0..(-scale) {
                out.push('0');
            }
        }
        return;
    }
    let s = scale as usize;
    if v < 0 {
        out.push('-');
    }
    let digits = v.unsigned_abs().to_string();
    if digits.len() <= s {
        out.push_str("0.");
        for _ in digits.len()..s {
            out.push('0');
        }
        out.push_str(&digits);
    } else {
        let (a, b) = digits.split_at(digits.len() - s);
        out.push_str(a);
        out.push('.');
        out.push_str(b);
    }
}

pub(crate) fn write_date(out: &mut String, days: i64) {
    let (y, m, d) = civil_from_days(days);
    let _ = write!(out, "{y:04}-{m:02}-{d:02}");
}

pub(crate) fn write_timestamp(out: &mut String, v: i64, unit: TimeUnit, tz: bool) {
    let (per_sec, frac_digits) = match unit {
        TimeUnit::Second => (1i64, 0usize),
        TimeUnit::Millisecond => (1_000, 3),
        TimeUnit::Microsecond => (1_000_000, 6),
        TimeUnit::Nanosecond => (1_000_000_000, 9),
    };
    let secs = v.div_euclid(per_sec);
    let frac = v.rem_euclid(per_sec);
    let days = secs.div_euclid(86400);
    let sod = secs.rem_euclid(86400);
    write_date(out, days);
    let _ = write!(
        out,
        " {:02}:{:02}:{:02}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
    if frac != 0 {
        let f = format!("{frac:0frac_digits$}");
        out.push('.');
        out.push_str(f.trim_end_matches('0'));
    }
    if tz {
        out.push_str("+00");
    }
}

/// The raw i64 values of a timestamp array of the given unit.
fn timestamp_values(array: &dyn Array, unit: TimeUnit) -> ScalarBuffer<i64> {
    match unit {
        TimeUnit::Second => array.as_primitive::<TimestampSecondType>().values().clone(),
        TimeUnit::Millisecond => array
            .as_primitive::<TimestampMillisecondType>()
            .values()
            .clone(),
        TimeUnit::Microsecond => array
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .clone(),
        TimeUnit::Nanosecond => array
            .as_primitive::<TimestampNanosecondType>()
            .values()
            .clone(),
    }
}

type ValueWriter<'a> = Box<dyn Fn(usize, &mut String) + 'a>;

/// A writer of the (unescaped) PostgreSQL text of one column's values.
fn value_writer(array: &dyn Array) -> Result<ValueWriter<'_>, CopyError> {
    macro_rules! display {
        ($t:ty) => {{
            let a = array.as_primitive::<$t>();
            Box::new(move |i, out: &mut String| {
                let _ = write!(out, "{}", a.value(i));
            })
        }};
    }
    Ok(match array.data_type() {
        DataType::Int8 => display!(Int8Type),
        DataType::Int16 => display!(Int16Type),
        DataType::Int32 => display!(Int32Type),
        DataType::Int64 => display!(Int64Type),
        DataType::UInt8 => display!(UInt8Type),
        DataType::UInt16 => display!(UInt16Type),
        DataType::UInt32 => display!(UInt32Type),
        DataType::UInt64 => display!(UInt64Type),
        DataType::Float16 => {
            let a = array.as_primitive::<Float16Type>();
            Box::new(move |i, out: &mut String| {
                let v = a.value(i).to_f32();
                write_pg_float(out, v as f64, 6, &format!("{v:e}"), &v)
            })
        }
        DataType::Float32 => {
            let a = array.as_primitive::<Float32Type>();
            Box::new(move |i, out: &mut String| {
                let v = a.value(i);
                write_pg_float(out, v as f64, 6, &format!("{v:e}"), &v)
            })
        }
        DataType::Float64 => {
            let a = array.as_primitive::<Float64Type>();
            Box::new(move |i, out: &mut String| write_pg_float8(out, a.value(i)))
        }
        DataType::Decimal128(_, s) => {
            let a = array.as_primitive::<Decimal128Type>();
            let s = *s;
            Box::new(move |i, out: &mut String| write_decimal(out, a.value(i), s))
        }
        DataType::Boolean => {
            let a = array.as_boolean();
            Box::new(move |i, out: &mut String| out.push(if a.value(i) { 't' } else { 'f' }))
        }
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            Box::new(move |i, out: &mut String| out.push_str(a.value(i)))
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            Box::new(move |i, out: &mut String| out.push_str(a.value(i)))
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            Box::new(move |i, out: &mut String| out.push_str(a.value(i)))
        }
        DataType::Binary => {
            let a = array.as_binary::<i32>();
            Box::new(move |i, out: &mut String| {
                out.push_str("\\x");
                for b in a.value(i) {
                    let _ = write!(out, "{b:02x}");
                }
            })
        }
        DataType::Date32 => {
            let a = array.as_primitive::<Date32Type>();
            Box::new(move |i, out: &mut String| write_date(out, a.value(i) as i64))
        }
        DataType::Date64 => {
            let a = array.as_primitive::<Date64Type>();
            Box::new(move |i, out: &mut String| write_date(out, a.value(i).div_euclid(86_400_000)))
        }
        DataType::Timestamp(unit, tz) => {
            let unit = *unit;
            let tz = tz.is_some();
            let values = timestamp_values(array, unit);
            Box::new(move |i, out: &mut String| write_timestamp(out, values[i], unit, tz))
        }
        _ => {
            let f = ArrayFormatter::try_new(array, &FormatOptions::default()).map_err(|e| {
                CopyError::new(
                    FEATURE_NOT_SUPPORTED,
                    format!("COPY TO: type {} not supported: {e}", array.data_type()),
                )
            })?;
            Box::new(move |i, out: &mut String| {
                let _ = write!(out, "{}", f.value(i));
            })
        }
    })
}

fn escape_text(v: &[u8], delim: u8, out: &mut Vec<u8>) {
    for &b in v {
        let esc = match b {
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' if delim == b'\t' => b't',
            8 => b'b',
            12 => b'f',
            11 => b'v',
            _ if b == delim => b,
            _ => {
                out.push(b);
                continue;
            }
        };
        out.push(b'\\');
        out.push(esc);
    }
}

fn escape_csv(v: &[u8], o: &CopyOptions, out: &mut Vec<u8>) {
    let need = v.is_empty() && o.null.is_empty()
        || v == o.null.as_bytes()
        || v == b"\\."
        || v.iter()
            .any(|&b| b == o.delimiter || b == o.quote || b == b'\n' || b == b'\r');
    if !need {
        out.extend_from_slice(v);
        return;
    }
    out.push(o.quote);
    for &b in v {
        if b == o.quote || b == o.escape {
            out.push(o.escape);
        }
        out.push(b);
    }
    out.push(o.quote);
}

fn write_field(v: &[u8], o: &CopyOptions, out: &mut Vec<u8>) {
    match o.format {
        CopyFormat::Text | CopyFormat::Binary => escape_text(v, o.delimiter, out),
        CopyFormat::Csv => escape_csv(v, o, out),
    }
}

/// What COPY TO writes before the first row: the header line (text and
/// CSV with HEADER), the binary format's header, or nothing.
pub fn encode_header(schema: &Schema, options: &CopyOptions) -> Vec<u8> {
    let mut out = Vec::new();
    if options.format == CopyFormat::Binary {
        write_header(&mut out);
    } else if options.header {
        for (i, f) in schema.fields().iter().enumerate() {
            if i > 0 {
                out.push(options.delimiter);
            }
            write_field(f.name().as_bytes(), options, &mut out);
        }
        out.push(b'\n');
    }
    out
}

/// Call `row` with each row of `batch` in COPY TO format (no header).
pub fn encode_each_row(
    batch: &RecordBatch,
    options: &CopyOptions,
    mut row: impl FnMut(&[u8]),
) -> Result<(), CopyError> {
    let mut out = Vec::new();
    if options.format == CopyFormat::Binary {
        let w = row_writer(batch)?;
        for r in 0..batch.num_rows() {
            out.clear();
            w.write(r, &mut out);
            row(&out);
        }
        return Ok(());
    }
    let writers = batch
        .columns()
        .iter()
        .map(|c| value_writer(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let null = options.null.as_bytes();
    let mut val = String::new();
    for r in 0..batch.num_rows() {
        out.clear();
        for (c, w) in writers.iter().enumerate() {
            if c > 0 {
                out.push(options.delimiter);
            }
            if batch.column(c).is_null(r) {
                out.extend_from_slice(null);
                continue;
            }
            val.clear();
            w(r, &mut val);
            write_field(val.as_bytes(), options, &mut out);
        }
        out.push(b'\n');
        row(&out);
    }
    Ok(())
}

/// Encode batches as the whole output of a COPY TO STDOUT: header (the
/// text header line if asked and there is a batch; always in binary), rows
/// and the binary trailer.
pub fn encode_rows(batches: &[RecordBatch], options: &CopyOptions) -> Result<Vec<u8>, CopyError> {
    let mut out = Vec::new();
    if options.format == CopyFormat::Binary || options.header {
        if let Some(b) = batches.first() {
            out = encode_header(&b.schema(), options);
        } else if options.format == CopyFormat::Binary {
            write_header(&mut out);
        }
    }
    for batch in batches {
        encode_each_row(batch, options, |r| out.extend_from_slice(r))?;
    }
    if options.format == CopyFormat::Binary {
        out.extend_from_slice(&TRAILER);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::testing::{all_types, concat, decode, decode_chunks, TEXT_ROWS};

    #[test]
    fn round_trip_every_type_text() {
        let s = all_types();
        let opts = CopyOptions::text();
        let batches = decode(&s, &opts, TEXT_ROWS).unwrap();
        let b = concat(&batches);
        assert_eq!(b.num_rows(), 5);
        // exact text round trip
        let out = encode_rows(&batches, &opts).unwrap();
        assert_eq!(String::from_utf8(out.clone()).unwrap(), TEXT_ROWS);
        let again = concat(&decode_chunks(&s, &opts, &[&out], 2).unwrap());
        assert_eq!(again, b);
        // spot-check values
        assert_eq!(b.column(3).as_primitive::<Int64Type>().value(0), i64::MIN);
        assert_eq!(b.column(7).as_primitive::<UInt64Type>().value(1), u64::MAX);
        assert!(b.column(8).as_primitive::<Float32Type>().value(3).is_nan());
        assert_eq!(
            b.column(9).as_primitive::<Float64Type>().value(3),
            f64::INFINITY
        );
        assert_eq!(
            b.column(10).as_primitive::<Decimal128Type>().value(4),
            12345
        );
        assert_eq!(b.column(10).as_primitive::<Decimal128Type>().value(3), -50);
        assert_eq!(b.column(11).as_string::<i32>().value(0), "a\tb\nc\\d");
        assert_eq!(b.column(11).as_string::<i32>().value(3), "\\N");
        assert!(b.column(11).is_null(2));
        assert_eq!(b.column(12).as_string::<i64>().value(1), "");
        assert!(b.column(13).as_boolean().value(0));
        assert_eq!(b.column(14).as_primitive::<Date32Type>().value(1), 19782);
        assert_eq!(
            timestamp_values(b.column(15), TimeUnit::Microsecond)[1],
            1_709_251_199_123_456
        );
        let tsn = timestamp_values(b.column(16), TimeUnit::Nanosecond);
        assert_eq!((tsn[0], tsn[1], tsn[4]), (-1, i64::MAX, i64::MIN));
        assert_eq!(timestamp_values(b.column(17), TimeUnit::Second)[4], 1 << 31);
    }

    #[test]
    fn round_trip_every_type_csv() {
        let s = all_types();
        let text = concat(&decode(&s, &CopyOptions::text(), TEXT_ROWS).unwrap());
        let mut opts = CopyOptions::csv();
        opts.header = true;
        let out = encode_rows(std::slice::from_ref(&text), &opts).unwrap();
        let out_s = String::from_utf8(out.clone()).unwrap();
        assert!(out_s.starts_with("i8,i16,i32,"), "{out_s}");
        assert!(out_s.contains(",\"a\tb\nc\\d\","), "{out_s}");
        assert!(out_s.contains(",\"\"\"quoted\"\", comma\","), "{out_s}");
        // row 2 (all NULL) is just delimiters
        assert!(out_s.contains("\n,,,,,,,,,,,,,,,,,\n"), "{out_s}");
        let back = concat(&decode_chunks(&s, &opts, &[&out], 3).unwrap());
        assert_eq!(back, text);
    }

    #[test]
    fn float_and_decimal_output_like_postgres() {
        let f8 = |v: f64| {
            let mut s = String::new();
            write_pg_float(&mut s, v, 15, &format!("{v:e}"), &v);
            s
        };
        let f4 = |v: f32| {
            let mut s = String::new();
            write_pg_float(&mut s, v as f64, 6, &format!("{v:e}"), &v);
            s
        };
        assert_eq!(f8(0.1), "0.1");
        assert_eq!(f8(1.0), "1");
        assert_eq!(f8(-0.0), "-0");
        assert_eq!(f8(1e20), "1e+20");
        assert_eq!(f8(1.5e-5), "1.5e-05");
        assert_eq!(f8(0.0001), "0.0001");
        assert_eq!(f8(1e15), "1e+15");
        assert_eq!(f8(123456789012345.0), "123456789012345");
        assert_eq!(f8(1.7976931348623157e308), "1.7976931348623157e+308");
        assert_eq!(f8(f64::NAN), "NaN");
        assert_eq!(f8(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(f4(0.1), "0.1");
        assert_eq!(f4(1234567.0), "1.234567e+06");
        assert_eq!(f4(123456.0), "123456");
        let dec = |v: i128, s: i8| {
            let mut o = String::new();
            write_decimal(&mut o, v, s);
            o
        };
        assert_eq!(dec(12345, 2), "123.45");
        assert_eq!(dec(-5, 2), "-0.05");
        assert_eq!(dec(0, 2), "0.00");
        assert_eq!(dec(7, 0), "7");
        assert_eq!(dec(7, -2), "700");
        let mut t = String::new();
        write_timestamp(&mut t, 1_500_000, TimeUnit::Millisecond, true);
        assert_eq!(t, "1970-01-01 00:25:00+00");
    }
}
