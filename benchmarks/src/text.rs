//! PostgreSQL text rendering of Arrow values.
//!
//! Owns the one place where Arrow values become PostgreSQL's text format:
//! [`encode_copy_rows`] writes rows in `COPY ... FROM STDIN` text format (tab
//! separated, backslash escapes, `\N` for NULL) for the load, and
//! [`render_cell`] renders one value of a query result the way a PostgreSQL
//! server prints it, for the answer comparison. Integers, decimals, dates and
//! strings take hand-written fast paths; anything else goes through Arrow's
//! display formatter.

use anyhow::{anyhow, Result};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// Append the decimal digits of `v`.
pub fn push_u128(out: &mut Vec<u8>, mut v: u128) {
    let mut buf = [0u8; 40];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Append a signed integer.
pub fn push_i128(out: &mut Vec<u8>, v: i128) {
    if v < 0 {
        out.push(b'-');
    }
    push_u128(out, v.unsigned_abs());
}

/// Append an unscaled decimal with `scale` fractional digits (`1700`, 2 -> `17.00`).
pub fn push_decimal(out: &mut Vec<u8>, v: i128, scale: i8) {
    if scale <= 0 {
        push_i128(out, v);
        for _ in 0..(-(scale as i32)) {
            out.push(b'0');
        }
        return;
    }
    if v < 0 {
        out.push(b'-');
    }
    let a = v.unsigned_abs();
    let p = 10u128.pow(scale as u32);
    push_u128(out, a / p);
    out.push(b'.');
    let frac = a % p;
    let start = out.len();
    push_u128(out, frac);
    let digits = out.len() - start;
    // Left-pad the fraction with zeros to `scale` digits.
    let pad = scale as usize - digits;
    if pad > 0 {
        out.splice(start..start, std::iter::repeat_n(b'0', pad));
    }
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Append a Date32 as `YYYY-MM-DD`.
pub fn push_date32(out: &mut Vec<u8>, days: i32) {
    let (y, m, d) = civil_from_days(days as i64);
    if (0..10_000).contains(&y) {
        let y = y as u32;
        out.extend_from_slice(&[
            b'0' + (y / 1000) as u8,
            b'0' + (y / 100 % 10) as u8,
            b'0' + (y / 10 % 10) as u8,
            b'0' + (y % 10) as u8,
            b'-',
            b'0' + (m / 10) as u8,
            b'0' + (m % 10) as u8,
            b'-',
            b'0' + (d / 10) as u8,
            b'0' + (d % 10) as u8,
        ]);
    } else {
        out.extend_from_slice(format!("{y:04}-{m:02}-{d:02}").as_bytes());
    }
}

/// Append a string escaped for COPY text format.
pub fn push_copy_escaped(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !bytes
        .iter()
        .any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
    {
        out.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// Writes one column's values into COPY text.
enum ColumnWriter<'a> {
    I32(&'a arrow::array::PrimitiveArray<Int32Type>),
    I64(&'a arrow::array::PrimitiveArray<Int64Type>),
    Dec(&'a arrow::array::PrimitiveArray<Decimal128Type>, i8),
    Date(&'a arrow::array::PrimitiveArray<Date32Type>),
    Utf8(&'a arrow::array::StringArray),
    Utf8View(&'a arrow::array::StringViewArray),
    Other(ArrayFormatter<'a>),
}

impl<'a> ColumnWriter<'a> {
    fn new(col: &'a ArrayRef, opts: &'a FormatOptions<'a>) -> Result<Self> {
        Ok(match col.data_type() {
            DataType::Int32 => ColumnWriter::I32(col.as_primitive()),
            DataType::Int64 => ColumnWriter::I64(col.as_primitive()),
            DataType::Decimal128(_, s) => ColumnWriter::Dec(col.as_primitive(), *s),
            DataType::Date32 => ColumnWriter::Date(col.as_primitive()),
            DataType::Utf8 => ColumnWriter::Utf8(col.as_string()),
            DataType::Utf8View => ColumnWriter::Utf8View(col.as_string_view()),
            _ => ColumnWriter::Other(ArrayFormatter::try_new(col.as_ref(), opts)?),
        })
    }

    fn write(&self, out: &mut Vec<u8>, row: usize) {
        match self {
            ColumnWriter::I32(a) => push_i128(out, a.value(row) as i128),
            ColumnWriter::I64(a) => push_i128(out, a.value(row) as i128),
            ColumnWriter::Dec(a, s) => push_decimal(out, a.value(row), *s),
            ColumnWriter::Date(a) => push_date32(out, a.value(row)),
            ColumnWriter::Utf8(a) => push_copy_escaped(out, a.value(row)),
            ColumnWriter::Utf8View(a) => push_copy_escaped(out, a.value(row)),
            ColumnWriter::Other(f) => push_copy_escaped(out, &f.value(row).to_string()),
        }
    }
}

/// Append rows `range` of `batch` in COPY text format, one line per row.
pub fn encode_copy_rows(
    batch: &RecordBatch,
    range: std::ops::Range<usize>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let opts = FormatOptions::default();
    let cols = batch.columns();
    let writers = cols
        .iter()
        .map(|c| ColumnWriter::new(c, &opts))
        .collect::<Result<Vec<_>>>()?;
    for row in range {
        for (i, (w, c)) in writers.iter().zip(cols).enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            if c.is_null(row) {
                out.extend_from_slice(b"\\N");
            } else {
                w.write(out, row);
            }
        }
        out.push(b'\n');
    }
    Ok(())
}

/// Render one value of a result column as PostgreSQL text, `None` for NULL.
pub fn render_cell(col: &dyn Array, row: usize) -> Result<Option<String>> {
    if col.is_null(row) {
        return Ok(None);
    }
    let mut out = Vec::new();
    match col.data_type() {
        DataType::Int8 => push_i128(&mut out, col.as_primitive::<Int8Type>().value(row) as i128),
        DataType::Int16 => push_i128(&mut out, col.as_primitive::<Int16Type>().value(row) as i128),
        DataType::Int32 => push_i128(&mut out, col.as_primitive::<Int32Type>().value(row) as i128),
        DataType::Int64 => push_i128(&mut out, col.as_primitive::<Int64Type>().value(row) as i128),
        DataType::UInt8 => push_i128(&mut out, col.as_primitive::<UInt8Type>().value(row) as i128),
        DataType::UInt16 => push_i128(
            &mut out,
            col.as_primitive::<UInt16Type>().value(row) as i128,
        ),
        DataType::UInt32 => push_i128(
            &mut out,
            col.as_primitive::<UInt32Type>().value(row) as i128,
        ),
        DataType::UInt64 => push_i128(
            &mut out,
            col.as_primitive::<UInt64Type>().value(row) as i128,
        ),
        DataType::Float32 => {
            return Ok(Some(
                col.as_primitive::<Float32Type>().value(row).to_string(),
            ))
        }
        DataType::Float64 => {
            return Ok(Some(
                col.as_primitive::<Float64Type>().value(row).to_string(),
            ))
        }
        DataType::Decimal128(_, s) => push_decimal(
            &mut out,
            col.as_primitive::<Decimal128Type>().value(row),
            *s,
        ),
        DataType::Date32 => push_date32(&mut out, col.as_primitive::<Date32Type>().value(row)),
        DataType::Utf8 => return Ok(Some(col.as_string::<i32>().value(row).to_string())),
        DataType::LargeUtf8 => return Ok(Some(col.as_string::<i64>().value(row).to_string())),
        DataType::Utf8View => return Ok(Some(col.as_string_view().value(row).to_string())),
        DataType::Boolean => {
            let b = col.as_boolean().value(row);
            return Ok(Some(if b { "t" } else { "f" }.to_string()));
        }
        _ => {
            let opts = FormatOptions::default();
            let f = ArrayFormatter::try_new(col, &opts)?;
            return Ok(Some(f.value(row).to_string()));
        }
    }
    String::from_utf8(out)
        .map(Some)
        .map_err(|e| anyhow!("rendered a non-UTF-8 cell: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(v: i128, s: i8) -> String {
        let mut o = Vec::new();
        push_decimal(&mut o, v, s);
        String::from_utf8(o).unwrap()
    }

    fn date(d: i32) -> String {
        let mut o = Vec::new();
        push_date32(&mut o, d);
        String::from_utf8(o).unwrap()
    }

    #[test]
    fn decimals() {
        assert_eq!(dec(1700, 2), "17.00");
        assert_eq!(dec(-5, 2), "-0.05");
        assert_eq!(dec(0, 2), "0.00");
        assert_eq!(dec(123456, 0), "123456");
        assert_eq!(dec(-1, 6), "-0.000001");
        assert_eq!(dec(12, -2), "1200");
    }

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(9204), "1995-03-15");
        assert_eq!(date(-1), "1969-12-31");
        assert_eq!(date(10_957), "2000-01-01");
        assert_eq!(date(11_016), "2000-02-29");
    }

    #[test]
    fn escapes() {
        let mut o = Vec::new();
        push_copy_escaped(&mut o, "a\tb\\c\nd");
        assert_eq!(o, b"a\\tb\\\\c\\nd");
    }
}
