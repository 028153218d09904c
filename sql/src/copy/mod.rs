//! `COPY ... FROM STDIN` decoding and `COPY ... TO STDOUT` encoding, in
//! PostgreSQL's text and CSV formats.
//!
//! The decoder is on the bulk-load path: it splits rows and fields without
//! allocating per field (fields without escapes are parsed in place, the rest
//! are unescaped into one reusable scratch buffer) and appends straight into
//! Arrow builders.

use std::fmt::Write as _;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, Int8Builder, LargeStringBuilder,
    StringBuilder, StringViewBuilder, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray, UInt16Builder, UInt32Builder, UInt64Builder,
    UInt8Builder,
};
use datafusion::arrow::buffer::ScalarBuffer;
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Float16Type, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Int8Type, SchemaRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, Statement,
};
use slicedb_coordinator::hash;

/// An error of the COPY path, with its PostgreSQL SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CopyError {
    pub sqlstate: &'static str,
    pub message: String,
}

impl CopyError {
    pub fn new(sqlstate: &'static str, message: impl Into<String>) -> Self {
        Self {
            sqlstate,
            message: message.into(),
        }
    }
}

const INVALID_TEXT_REPRESENTATION: &str = "22P02";
const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
const BAD_COPY_FILE_FORMAT: &str = "22P04";
const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
const NOT_NULL_VIOLATION: &str = "23502";
const INVALID_DATETIME_FORMAT: &str = "22007";
const DATETIME_FIELD_OVERFLOW: &str = "22008";
const FEATURE_NOT_SUPPORTED: &str = "0A000";
const INVALID_PARAMETER_VALUE: &str = "22023";
const SYNTAX_ERROR: &str = "42601";

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    pub format: CopyFormat,
    pub delimiter: u8,
    pub null: String,
    pub header: bool,
    pub quote: u8,
    pub escape: u8,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self::text()
    }
}

fn one_byte(c: char, what: &str) -> Result<u8, CopyError> {
    if c.is_ascii() {
        Ok(c as u8)
    } else {
        Err(CopyError::new(
            FEATURE_NOT_SUPPORTED,
            format!("COPY {what} must be a single one-byte character"),
        ))
    }
}

impl CopyOptions {
    /// PostgreSQL's defaults for the text format.
    pub fn text() -> Self {
        Self {
            format: CopyFormat::Text,
            delimiter: b'\t',
            null: "\\N".to_string(),
            header: false,
            quote: b'"',
            escape: b'"',
        }
    }

    /// PostgreSQL's defaults for the CSV format.
    pub fn csv() -> Self {
        Self {
            format: CopyFormat::Csv,
            delimiter: b',',
            null: String::new(),
            header: false,
            quote: b'"',
            escape: b'"',
        }
    }

    /// Read the options of a `Statement::Copy` (new-style `WITH (...)` and
    /// legacy `CSV HEADER DELIMITER ','` forms).
    pub fn from_statement(stmt: &Statement) -> Result<CopyOptions, CopyError> {
        let Statement::Copy {
            options,
            legacy_options,
            ..
        } = stmt
        else {
            return Err(CopyError::new(SYNTAX_ERROR, "not a COPY statement"));
        };
        let mut format = CopyFormat::Text;
        let mut delimiter = None;
        let mut null = None;
        let mut header = false;
        let mut quote = None;
        let mut escape = None;
        let unsupported = |what: &str| {
            CopyError::new(
                FEATURE_NOT_SUPPORTED,
                format!("COPY {what} is not supported"),
            )
        };
        for opt in options {
            match opt {
                CopyOption::Format(f) => match f.value.to_ascii_lowercase().as_str() {
                    "text" => format = CopyFormat::Text,
                    "csv" => format = CopyFormat::Csv,
                    "binary" => return Err(unsupported("format binary")),
                    other => {
                        return Err(CopyError::new(
                            INVALID_PARAMETER_VALUE,
                            format!("COPY format \"{other}\" not recognized"),
                        ))
                    }
                },
                CopyOption::Freeze(_) => {}
                CopyOption::Delimiter(c) => delimiter = Some(one_byte(*c, "delimiter")?),
                CopyOption::Null(s) => null = Some(s.clone()),
                CopyOption::Header(h) => header = *h,
                CopyOption::Quote(c) => quote = Some(one_byte(*c, "quote")?),
                CopyOption::Escape(c) => escape = Some(one_byte(*c, "escape")?),
                CopyOption::Encoding(e) => {
                    let e = e.to_ascii_lowercase().replace(['-', '_'], "");
                    if e != "utf8" && e != "unicode" {
                        return Err(unsupported("encoding other than UTF8"));
                    }
                }
                CopyOption::ForceQuote(_) => return Err(unsupported("FORCE_QUOTE")),
                CopyOption::ForceNotNull(_) => return Err(unsupported("FORCE_NOT_NULL")),
                CopyOption::ForceNull(_) => return Err(unsupported("FORCE_NULL")),
            }
        }
        for opt in legacy_options {
            match opt {
                CopyLegacyOption::Binary => return Err(unsupported("format binary")),
                CopyLegacyOption::Delimiter(c) => delimiter = Some(one_byte(*c, "delimiter")?),
                CopyLegacyOption::Null(s) => null = Some(s.clone()),
                CopyLegacyOption::Header => header = true,
                CopyLegacyOption::Csv(csv) => {
                    format = CopyFormat::Csv;
                    for o in csv {
                        match o {
                            CopyLegacyCsvOption::Header => header = true,
                            CopyLegacyCsvOption::Quote(c) => quote = Some(one_byte(*c, "quote")?),
                            CopyLegacyCsvOption::Escape(c) => {
                                escape = Some(one_byte(*c, "escape")?)
                            }
                            CopyLegacyCsvOption::ForceQuote(_) => {
                                return Err(unsupported("FORCE QUOTE"))
                            }
                            CopyLegacyCsvOption::ForceNotNull(_) => {
                                return Err(unsupported("FORCE NOT NULL"))
                            }
                        }
                    }
                }
                other => return Err(unsupported(&format!("option {other}"))),
            }
        }
        let mut o = match format {
            CopyFormat::Text => Self::text(),
            CopyFormat::Csv => Self::csv(),
        };
        o.header = header;
        if let Some(d) = delimiter {
            o.delimiter = d;
        }
        if let Some(n) = null {
            o.null = n;
        }
        if format == CopyFormat::Text && (quote.is_some() || escape.is_some()) {
            return Err(CopyError::new(
                FEATURE_NOT_SUPPORTED,
                "COPY quote and escape are available only in CSV mode",
            ));
        }
        if let Some(q) = quote {
            o.quote = q;
            o.escape = q;
        }
        if let Some(e) = escape {
            o.escape = e;
        }
        o.validate()?;
        Ok(o)
    }

    fn validate(&self) -> Result<(), CopyError> {
        let bad = |m: &str| Err(CopyError::new(INVALID_PARAMETER_VALUE, m.to_string()));
        if matches!(self.delimiter, b'\n' | b'\r') || !self.delimiter.is_ascii() {
            return bad("COPY delimiter cannot be newline or carriage return");
        }
        if self.null.contains(['\n', '\r']) {
            return bad("COPY null representation cannot use newline or carriage return");
        }
        match self.format {
            CopyFormat::Text => {
                if self.delimiter == b'\\' {
                    return bad("COPY delimiter cannot be \"\\\"");
                }
            }
            CopyFormat::Csv => {
                if self.delimiter == self.quote {
                    return bad("COPY delimiter and quote must be different");
                }
                if matches!(self.quote, b'\n' | b'\r') || matches!(self.escape, b'\n' | b'\r') {
                    return bad("COPY quote and escape cannot be newline or carriage return");
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Value parsing
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConvErr {
    /// Bad syntax (22P02, 22007 for date/time).
    Invalid,
    /// Out of range (22003, 22008 for date/time).
    Range,
}

#[inline]
fn trim_ws(mut b: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = b {
        if first.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = b {
        if last.is_ascii_whitespace() {
            b = rest;
        } else {
            break;
        }
    }
    b
}

/// Parse an integer as (negative, magnitude).
#[inline]
fn parse_int(b: &[u8]) -> Result<(bool, u64), ConvErr> {
    let b = trim_ws(b);
    let (neg, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() {
        return Err(ConvErr::Invalid);
    }
    let mut v: u64 = 0;
    let mut overflow = false;
    for &c in digits {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return Err(ConvErr::Invalid);
        }
        if !overflow {
            match v.checked_mul(10).and_then(|x| x.checked_add(d as u64)) {
                Some(x) => v = x,
                None => overflow = true,
            }
        }
    }
    if overflow {
        Err(ConvErr::Range)
    } else {
        Ok((neg, v))
    }
}

#[inline]
fn parse_i64(b: &[u8]) -> Result<i64, ConvErr> {
    let (neg, v) = parse_int(b)?;
    if neg {
        if v <= 1u64 << 63 {
            Ok((v as i64).wrapping_neg())
        } else {
            Err(ConvErr::Range)
        }
    } else if v <= i64::MAX as u64 {
        Ok(v as i64)
    } else {
        Err(ConvErr::Range)
    }
}

#[inline]
fn parse_u64(b: &[u8]) -> Result<u64, ConvErr> {
    match parse_int(b)? {
        (true, 0) => Ok(0),
        (true, _) => Err(ConvErr::Range),
        (false, v) => Ok(v),
    }
}

#[inline]
fn parse_f64(b: &[u8]) -> Result<f64, ConvErr> {
    let s = std::str::from_utf8(trim_ws(b)).map_err(|_| ConvErr::Invalid)?;
    let v: f64 = s.parse().map_err(|_| ConvErr::Invalid)?;
    if v.is_infinite() && !s.bytes().any(|c| c == b'i' || c == b'I') {
        return Err(ConvErr::Range);
    }
    Ok(v)
}

#[inline]
fn parse_f32(b: &[u8]) -> Result<f32, ConvErr> {
    let s = std::str::from_utf8(trim_ws(b)).map_err(|_| ConvErr::Invalid)?;
    let v: f32 = s.parse().map_err(|_| ConvErr::Invalid)?;
    if v.is_infinite() && !s.bytes().any(|c| c == b'i' || c == b'I') {
        return Err(ConvErr::Range);
    }
    Ok(v)
}

/// PostgreSQL's boolean input: prefixes of true/false/yes/no, on/off, 1/0.
#[inline]
fn parse_bool(b: &[u8]) -> Result<bool, ConvErr> {
    let b = trim_ws(b);
    if b.is_empty() || b.len() > 5 {
        return Err(ConvErr::Invalid);
    }
    let mut buf = [0u8; 5];
    for (d, s) in buf.iter_mut().zip(b) {
        *d = s.to_ascii_lowercase();
    }
    let l = &buf[..b.len()];
    let prefix_of = |word: &[u8]| word.starts_with(l);
    match l[0] {
        b't' if prefix_of(b"true") => Ok(true),
        b'f' if prefix_of(b"false") => Ok(false),
        b'y' if prefix_of(b"yes") => Ok(true),
        b'n' if prefix_of(b"no") => Ok(false),
        b'o' if l.len() >= 2 && prefix_of(b"on") => Ok(true),
        b'o' if l.len() >= 2 && prefix_of(b"off") => Ok(false),
        b'1' if l.len() == 1 => Ok(true),
        b'0' if l.len() == 1 => Ok(false),
        _ => Err(ConvErr::Invalid),
    }
}

const POW10: [i128; 39] = {
    let mut t = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// Parse a decimal literal ("123.45", "-0.5", "1e3") into the unscaled value
/// of a Decimal128(precision, scale), rounding half away from zero.
#[inline]
fn parse_decimal(b: &[u8], precision: u8, scale: i8) -> Result<i128, ConvErr> {
    match parse_decimal_plain(b, precision, scale) {
        Some(r) => r,
        None => parse_decimal_general(b, precision, scale),
    }
}

/// The common shape, `[-]digits[.digits]` with at most 18 digits and no
/// more fractional digits than the scale (no rounding), summed in a u64.
/// None: anything else, which the general parser decides.
#[inline]
fn parse_decimal_plain(b: &[u8], precision: u8, scale: i8) -> Option<Result<i128, ConvErr>> {
    let (neg, body) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    if body.is_empty() || body.len() > 19 || scale < 0 {
        return None;
    }
    let mut acc: u64 = 0;
    let mut digits = 0usize;
    let mut frac: Option<usize> = None;
    for &c in body {
        if c.is_ascii_digit() {
            acc = acc * 10 + (c - b'0') as u64;
            digits += 1;
            if let Some(f) = frac.as_mut() {
                *f += 1;
            }
        } else if c == b'.' && frac.is_none() {
            frac = Some(0);
        } else {
            return None;
        }
    }
    let frac = frac.unwrap_or(0);
    if digits == 0 || digits > 18 || frac > scale as usize {
        return None;
    }
    let v = acc as i128 * POW10[scale as usize - frac];
    if v >= POW10[precision.min(38) as usize] {
        return Some(Err(ConvErr::Range));
    }
    Some(Ok(if neg { -v } else { v }))
}

fn parse_decimal_general(b: &[u8], precision: u8, scale: i8) -> Result<i128, ConvErr> {
    let b = trim_ws(b);
    let mut i = 0;
    let neg = match b.first() {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_part = &b[int_start..i];
    let mut frac_part: &[u8] = &[];
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let fs = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_part = &b[fs..i];
    }
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(ConvErr::Invalid);
    }
    let mut exp: i64 = 0;
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        let eneg = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let es = i;
        while i < b.len() && b[i].is_ascii_digit() {
            exp = (exp * 10 + (b[i] - b'0') as i64).min(100_000);
            i += 1;
        }
        if i == es {
            return Err(ConvErr::Invalid);
        }
        if eneg {
            exp = -exp;
        }
    }
    if i != b.len() {
        return Err(ConvErr::Invalid);
    }
    // value = D * 10^(exp - frac_len); scaled = D * 10^shift
    let shift = exp - frac_part.len() as i64 + scale as i64;
    let mut digits = int_part.iter().chain(frac_part.iter()).copied();
    let mut n = int_part.len() + frac_part.len();
    // skip leading zeros
    let mut first = None;
    for d in digits.by_ref() {
        n -= 1;
        if d != b'0' {
            first = Some(d);
            n += 1;
            break;
        }
    }
    let Some(first) = first else {
        return Ok(0);
    };
    let mut digits = std::iter::once(first).chain(digits);
    let (keep, check_round) = if shift >= 0 {
        (n, false)
    } else {
        let drop = (-shift) as usize;
        if drop > n {
            (0, false)
        } else {
            (n - drop, true)
        }
    };
    let mut acc: i128 = 0;
    if keep > 38 {
        return Err(ConvErr::Range);
    }
    for _ in 0..keep {
        let d = digits.next().unwrap_or(b'0');
        acc = acc * 10 + (d - b'0') as i128;
    }
    if check_round && digits.next().is_some_and(|d| d >= b'5') {
        acc += 1;
    }
    if shift > 0 {
        if keep as i64 + shift > 38 {
            return Err(ConvErr::Range);
        }
        acc *= POW10[shift as usize];
    }
    if acc >= POW10[precision.min(38) as usize] {
        return Err(ConvErr::Range);
    }
    Ok(if neg { -acc } else { acc })
}

const fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

const fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if is_leap(y) {
                29
            } else {
                28
            }
        }
    }
}

/// Days since 1970-01-01 (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Read 1..=max digits at `*i`.
#[inline]
fn digits(b: &[u8], i: &mut usize, max: usize) -> Option<u32> {
    let start = *i;
    let mut v: u32 = 0;
    while *i < b.len() && *i - start < max && b[*i].is_ascii_digit() {
        v = v * 10 + (b[*i] - b'0') as u32;
        *i += 1;
    }
    (*i > start).then_some(v)
}

/// Parse "YYYY-MM-DD" at the start of `b`; returns (days, bytes used).
fn parse_date_prefix(b: &[u8]) -> Result<(i64, usize), ConvErr> {
    let mut i = 0;
    let y = digits(b, &mut i, 7).ok_or(ConvErr::Invalid)? as i64;
    if b.get(i) != Some(&b'-') {
        return Err(ConvErr::Invalid);
    }
    i += 1;
    let m = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)?;
    if b.get(i) != Some(&b'-') {
        return Err(ConvErr::Invalid);
    }
    i += 1;
    let d = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)?;
    if i < b.len() && b[i].is_ascii_digit() {
        return Err(ConvErr::Invalid);
    }
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return Err(ConvErr::Range);
    }
    Ok((days_from_civil(y, m, d), i))
}

/// `parse_date` for the canonical `YYYY-MM-DD`; anything else takes the
/// general path (which also produces the errors).
#[inline]
fn parse_date_fast(b: &[u8]) -> Result<i32, ConvErr> {
    if let &[y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1] = b {
        let x = [y0, y1, y2, y3, m0, m1, d0, d1].map(|c| c.wrapping_sub(b'0'));
        if x.iter().all(|&v| v <= 9) {
            let y = x[0] as i64 * 1000 + x[1] as i64 * 100 + x[2] as i64 * 10 + x[3] as i64;
            let m = (x[4] * 10 + x[5]) as u32;
            let d = (x[6] * 10 + x[7]) as u32;
            if (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m) {
                return Ok(days_from_civil(y, m, d) as i32);
            }
        }
    }
    parse_date(b)
}

#[inline]
fn parse_date(b: &[u8]) -> Result<i32, ConvErr> {
    let b = trim_ws(b);
    let (days, used) = parse_date_prefix(b)?;
    if used != b.len() {
        return Err(ConvErr::Invalid);
    }
    i32::try_from(days).map_err(|_| ConvErr::Range)
}

/// Parse "YYYY-MM-DD[( |T)HH:MM[:SS[.fffffffff]]][ ][Z|(+|-)HH[:MM]]" into
/// nanoseconds-split (seconds since epoch in UTC, nanos).
fn parse_timestamp(b: &[u8], with_tz: bool) -> Result<(i64, u32), ConvErr> {
    let b = trim_ws(b);
    let (days, mut i) = parse_date_prefix(b)?;
    let mut secs = days * 86400;
    let mut nanos = 0u32;
    if i < b.len() && (b[i] == b' ' || b[i] == b'T' || b[i] == b't') {
        i += 1;
        let h = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)?;
        if b.get(i) != Some(&b':') {
            return Err(ConvErr::Invalid);
        }
        i += 1;
        let m = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)?;
        let mut s = 0;
        if b.get(i) == Some(&b':') {
            i += 1;
            s = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)?;
            if b.get(i) == Some(&b'.') {
                i += 1;
                let fs = i;
                let mut scale = 100_000_000u32;
                let mut round_up = false;
                while i < b.len() && b[i].is_ascii_digit() {
                    let d = (b[i] - b'0') as u32;
                    if scale > 0 {
                        nanos += d * scale;
                        scale /= 10;
                    } else if i == fs + 9 {
                        round_up = d >= 5;
                    }
                    i += 1;
                }
                if i == fs {
                    return Err(ConvErr::Invalid);
                }
                if round_up {
                    nanos += 1;
                }
            }
        }
        let total = h * 3600 + m * 60 + s;
        if h > 24 || m > 59 || s > 60 || (h == 24 && (m > 0 || s > 0 || nanos > 0)) {
            return Err(ConvErr::Range);
        }
        secs += total as i64;
        if nanos >= 1_000_000_000 {
            nanos -= 1_000_000_000;
            secs += 1;
        }
        // optional zone
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i < b.len() {
            let offset = match b[i] {
                b'Z' | b'z' => {
                    i += 1;
                    0
                }
                c @ (b'+' | b'-') => {
                    i += 1;
                    let oh = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)? as i64;
                    let mut om = 0;
                    if b.get(i) == Some(&b':') {
                        i += 1;
                        om = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)? as i64;
                    } else if i < b.len() && b[i].is_ascii_digit() {
                        om = digits(b, &mut i, 2).ok_or(ConvErr::Invalid)? as i64;
                    }
                    if oh > 15 || om > 59 {
                        return Err(ConvErr::Range);
                    }
                    let o = oh * 3600 + om * 60;
                    if c == b'-' {
                        -o
                    } else {
                        o
                    }
                }
                _ => return Err(ConvErr::Invalid),
            };
            // like PostgreSQL: the zone is ignored for timestamp without time zone
            if with_tz {
                secs -= offset;
            }
        }
    }
    if i != b.len() {
        return Err(ConvErr::Invalid);
    }
    Ok((secs, nanos))
}

#[inline]
fn timestamp_in_unit(secs: i64, nanos: u32, unit: TimeUnit) -> Result<i64, ConvErr> {
    let (mul, div) = match unit {
        TimeUnit::Second => (1, 1_000_000_000),
        TimeUnit::Millisecond => (1_000, 1_000_000),
        TimeUnit::Microsecond => (1_000_000, 1_000),
        TimeUnit::Nanosecond => (1_000_000_000, 1),
    };
    let frac = (nanos as i64 + div / 2) / div; // round half up
    if secs < 0 && frac > 0 {
        // (secs + 1) * mul + (frac - mul): stays in range down to i64::MIN
        return (secs + 1)
            .checked_mul(mul)
            .and_then(|v| v.checked_add(frac - mul))
            .ok_or(ConvErr::Range);
    }
    secs.checked_mul(mul)
        .and_then(|v| v.checked_add(frac))
        .ok_or(ConvErr::Range)
}

// ---------------------------------------------------------------------------
// Column builders
// ---------------------------------------------------------------------------

enum Col {
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
    /// any other type: collected as text and cast at flush
    Other(StringBuilder),
}

impl Col {
    fn new(dt: &DataType, cap: usize) -> Col {
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
            _ => Col::Other(StringBuilder::with_capacity(cap, cap * 16)),
        }
    }

    /// Like [`Col::new`], with room for `text_bytes` of string data.
    fn sized(dt: &DataType, cap: usize, text_bytes: usize) -> Col {
        let bytes = text_bytes.max(cap * 4);
        match dt {
            DataType::Utf8 => Col::Utf8(StringBuilder::with_capacity(cap, bytes)),
            DataType::LargeUtf8 => Col::LargeUtf8(LargeStringBuilder::with_capacity(cap, bytes)),
            _ => Col::new(dt, cap),
        }
    }

    #[inline]
    fn append_null(&mut self) {
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
            Col::Other(b) => b.append_null(),
        }
    }

    #[inline]
    fn append(&mut self, v: &[u8]) -> Result<(), ConvErr> {
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
            Col::Other(b) => b.append_value(utf8(v)?),
        }
        Ok(())
    }

    fn finish(&mut self, dt: &DataType, column: &str) -> Result<ArrayRef, CopyError> {
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
fn pg_type_name(dt: &DataType) -> String {
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
        other => other.to_string(),
    }
}

fn conv_error(kind: ConvErr, dt: &DataType, value: &[u8], line: u64, column: &str) -> CopyError {
    let v = String::from_utf8_lossy(value);
    let ty = pg_type_name(dt);
    let is_time = matches!(dt, DataType::Date32 | DataType::Timestamp(..));
    let (state, msg) = match kind {
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
    CopyError::new(state, format!("{msg}, line {line}, column {column}"))
}

/// "0xff 0xfe" for the first invalid sequence, like PostgreSQL.
fn bad_utf8_bytes(b: &[u8]) -> String {
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

// ---------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------

/// Where a field's value lives.
#[derive(Clone, Copy)]
enum Span {
    Null,
    /// range in the row
    Row(usize, usize),
    /// range in the scratch buffer (unescaped)
    Scratch(usize, usize),
}

/// Row-end scanner state, carried across chunk boundaries.
#[derive(Default, Clone, Copy)]
struct ScanState {
    in_quote: bool,
    /// the previous byte was an escape; skip this one
    skip: bool,
}

/// Column builders of the rows bound for one output (one slice, or all
/// rows when the decoder does not split by slice).
struct Builders {
    cols: Vec<Col>,
    rows: usize,
}

/// How a decoder splits rows by slice: the decoded columns that make up the
/// distribution key and the slice count (see `slicedb_coordinator::hash`).
#[derive(Clone)]
struct KeySplit {
    cols: Vec<usize>,
    slices: u32,
}

/// A batch of decoded rows; `slice` is set when the decoder splits by slice
/// ([`CopyDecoder::split_by_slice`]) and then every row belongs to it.
pub struct Decoded {
    pub slice: Option<u32>,
    pub batch: RecordBatch,
}

/// Most slices a decoder splits rows into; above this, builders for every
/// slice would hold too much, and the loader hashes rows itself.
pub const MAX_SPLIT_SLICES: u32 = 64;

/// Decodes COPY FROM STDIN data (text or CSV) into record batches.
pub struct CopyDecoder {
    schema: SchemaRef,
    opts: CopyOptions,
    batch_rows: usize,
    /// One per slice when splitting by slice, else one.
    outs: Vec<Builders>,
    split: Option<KeySplit>,
    names: Vec<String>,
    nullable: Vec<bool>,
    /// bytes of an incomplete row
    buf: Vec<u8>,
    scan: ScanState,
    scratch: Vec<u8>,
    spans: Vec<Span>,
    /// input lines consumed (header included), for error messages
    line: u64,
    rows: u64,
    header_pending: bool,
    ended: bool,
    failed: bool,
}

impl CopyDecoder {
    pub fn new(schema: SchemaRef, options: CopyOptions, batch_rows: usize) -> Self {
        let batch_rows = batch_rows.max(1);
        let cap = batch_rows.min(1 << 16);
        let outs = vec![Builders::new(&schema, cap)];
        let names = schema.fields().iter().map(|f| f.name().clone()).collect();
        let nullable = schema.fields().iter().map(|f| f.is_nullable()).collect();
        let header_pending = options.header;
        let n = schema.fields().len();
        Self {
            schema,
            opts: options,
            batch_rows,
            outs,
            split: None,
            names,
            nullable,
            buf: Vec::new(),
            scan: ScanState::default(),
            scratch: Vec::with_capacity(256),
            spans: Vec::with_capacity(n + 1),
            line: 0,
            rows: 0,
            header_pending,
            ended: false,
            failed: false,
        }
    }

    /// A decoder for the same table and options that starts past the header:
    /// for decoding other parts of the same input in parallel.
    pub fn fork(&self) -> CopyDecoder {
        let mut d = CopyDecoder::new(self.schema.clone(), self.opts.clone(), self.batch_rows);
        d.header_pending = false;
        if let Some(k) = &self.split {
            d.split_by_slice(k.cols.clone(), k.slices);
        }
        d
    }

    /// Hand out rows split by slice: `key` are the decoded columns of the
    /// distribution key, in key order, hashed as
    /// `slicedb_coordinator::hash::slices_for_batch` does. Saves the loader
    /// hashing and regathering every row. Returns false, and changes nothing,
    /// if a key column's type has no direct parser here, there are no key
    /// columns or more than [`MAX_SPLIT_SLICES`] slices. Call before input.
    pub fn split_by_slice(&mut self, key: Vec<usize>, slices: u32) -> bool {
        let ok = !key.is_empty()
            && (1..=MAX_SPLIT_SLICES).contains(&slices)
            && key.iter().all(|&c| {
                c < self.schema.fields().len() && key_hashable(self.schema.field(c).data_type())
            });
        if ok {
            // Per slice, start smaller: slices fill at about the same pace.
            let cap = (self.batch_rows / slices as usize).clamp(1, 1 << 16);
            self.outs = (0..slices)
                .map(|_| Builders::new(&self.schema, cap))
                .collect();
            self.split = Some(KeySplit { cols: key, slices });
        }
        ok
    }

    /// Whether the input can be cut at any unescaped newline into parts that
    /// decode independently: text format (a CSV quoted field may hold a
    /// newline, so CSV is decoded in one piece).
    pub fn splits_at_newlines(&self) -> bool {
        self.opts.format == CopyFormat::Text
    }

    /// The next row starts on input line `line + 1` (for error messages of
    /// a part of the input decoded on its own).
    pub fn set_line(&mut self, line: u64) {
        self.line = line;
    }

    /// Input lines read so far (the line of the last error, after one).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Data rows decoded so far (header and end marker excluded).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Feed raw CopyData bytes (chunks may split anywhere). Returns the
    /// batches of `batch_rows` rows that filled up.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<RecordBatch>, CopyError> {
        Ok(untag(self.push_sliced(data)?))
    }

    /// End of input: decodes a last row without newline and returns the last
    /// partial batch, if any.
    pub fn finish(&mut self) -> Result<Vec<RecordBatch>, CopyError> {
        Ok(untag(self.finish_sliced()?))
    }

    /// [`push`](Self::push), with each batch's slice when splitting by slice.
    pub fn push_sliced(&mut self, data: &[u8]) -> Result<Vec<Decoded>, CopyError> {
        self.guard()?;
        let r = self.push_inner(data);
        self.failed = r.is_err();
        r
    }

    /// [`finish`](Self::finish), with each batch's slice when splitting by
    /// slice (then one partial batch per slice that has rows left).
    pub fn finish_sliced(&mut self) -> Result<Vec<Decoded>, CopyError> {
        self.guard()?;
        let r = self.finish_inner();
        self.failed = r.is_err();
        r
    }

    fn guard(&self) -> Result<(), CopyError> {
        if self.failed {
            Err(CopyError::new(
                BAD_COPY_FILE_FORMAT,
                "COPY decoder used after an error",
            ))
        } else {
            Ok(())
        }
    }

    fn push_inner(&mut self, data: &[u8]) -> Result<Vec<Decoded>, CopyError> {
        let mut out = Vec::new();
        if self.ended {
            return Ok(out);
        }
        let mut pos = 0;
        if !self.buf.is_empty() {
            match self.find_row_end(data, 0) {
                None => {
                    self.buf.extend_from_slice(data);
                    return Ok(out);
                }
                Some(e) => {
                    let mut row = std::mem::take(&mut self.buf);
                    row.extend_from_slice(&data[..e]);
                    let r = self.line_in(&row, &mut out);
                    row.clear();
                    self.buf = row;
                    r?;
                    pos = e + 1;
                }
            }
        }
        // Check the chunk's UTF-8 once; rows inside the valid prefix skip
        // their own check (a chunk may end inside a character).
        let valid = match std::str::from_utf8(&data[pos..]) {
            Ok(_) => data.len(),
            Err(e) => pos + e.valid_up_to(),
        };
        while !self.ended {
            match self.find_row_end(data, pos) {
                None => {
                    self.buf.extend_from_slice(&data[pos..]);
                    break;
                }
                Some(e) => {
                    self.line_checked(&data[pos..e], e <= valid, &mut out)?;
                    pos = e + 1;
                }
            }
        }
        Ok(out)
    }

    fn finish_inner(&mut self) -> Result<Vec<Decoded>, CopyError> {
        let mut out = Vec::new();
        if !self.ended && !self.buf.is_empty() {
            if self.scan.in_quote {
                return Err(CopyError::new(
                    BAD_COPY_FILE_FORMAT,
                    format!("unterminated CSV quoted field, line {}", self.line + 1),
                ));
            }
            let row = std::mem::take(&mut self.buf);
            self.line_in(&row, &mut out)?;
        }
        self.ended = true;
        for o in 0..self.outs.len() {
            if self.outs[o].rows > 0 {
                out.push(self.flush(o)?);
            }
        }
        Ok(out)
    }

    /// Find the '\n' ending the row that continues at `data[from..]`.
    #[inline]
    fn find_row_end(&mut self, data: &[u8], from: usize) -> Option<usize> {
        let mut st = self.scan;
        let mut i = from;
        let n = data.len();
        match self.opts.format {
            CopyFormat::Text => {
                if st.skip && i < n {
                    st.skip = false;
                    i += 1;
                }
                // Jump from one newline or backslash to the next (SIMD).
                while i < n {
                    let Some(k) = memchr::memchr2(b'\n', b'\\', &data[i..]) else {
                        break;
                    };
                    let j = i + k;
                    if data[j] == b'\n' {
                        self.scan = ScanState::default();
                        return Some(j);
                    }
                    if j + 1 < n {
                        i = j + 2;
                    } else {
                        st.skip = true;
                        break;
                    }
                }
            }
            CopyFormat::Csv => {
                let (q, e) = (self.opts.quote, self.opts.escape);
                while i < n {
                    let b = data[i];
                    if st.skip {
                        st.skip = false;
                    } else if st.in_quote {
                        if b == e && e != q {
                            st.skip = true;
                        } else if b == q {
                            st.in_quote = false;
                        }
                    } else if b == b'\n' {
                        self.scan = ScanState::default();
                        return Some(i);
                    } else if b == q {
                        st.in_quote = true;
                    }
                    i += 1;
                }
            }
        }
        self.scan = st;
        None
    }

    /// One input line (without its '\n').
    fn line_in(&mut self, line: &[u8], out: &mut Vec<Decoded>) -> Result<(), CopyError> {
        self.line_checked(line, false, out)
    }

    /// One input line; `utf8_ok`: already known to be valid UTF-8.
    #[inline]
    fn line_checked(
        &mut self,
        line: &[u8],
        utf8_ok: bool,
        out: &mut Vec<Decoded>,
    ) -> Result<(), CopyError> {
        let line = match line {
            [rest @ .., b'\r'] => rest,
            l => l,
        };
        self.line += 1;
        if self.header_pending {
            self.header_pending = false;
            return Ok(());
        }
        if line == b"\\." {
            self.ended = true;
            return Ok(());
        }
        if !utf8_ok && std::str::from_utf8(line).is_err() {
            return Err(CopyError::new(
                CHARACTER_NOT_IN_REPERTOIRE,
                format!(
                    "invalid byte sequence for encoding \"UTF8\": {}, line {}",
                    bad_utf8_bytes(line),
                    self.line
                ),
            ));
        }
        match self.opts.format {
            CopyFormat::Text => self.split_text(line)?,
            CopyFormat::Csv => self.split_csv(line)?,
        }
        let o = self.append_row(line)?;
        self.rows += 1;
        self.outs[o].rows += 1;
        if self.outs[o].rows >= self.batch_rows {
            out.push(self.flush(o)?);
        }
        Ok(())
    }

    fn split_text(&mut self, row: &[u8]) -> Result<(), CopyError> {
        let delim = self.opts.delimiter;
        let null = self.opts.null.as_bytes();
        self.scratch.clear();
        self.spans.clear();
        if split_plain(row, delim, null, &mut self.spans) {
            return Ok(());
        }
        self.spans.clear();
        let n = row.len();
        let mut start = 0;
        loop {
            let mut i = start;
            let mut has_bs = false;
            while i < n {
                let b = row[i];
                if b == delim {
                    break;
                }
                if b == b'\\' {
                    has_bs = true;
                    i += 2;
                    continue;
                }
                i += 1;
            }
            let end = i.min(n);
            let raw = &row[start..end];
            let span = if raw == null {
                Span::Null
            } else if !has_bs {
                Span::Row(start, end)
            } else {
                let s0 = self.scratch.len();
                if unescape_text(raw, &mut self.scratch)
                    && std::str::from_utf8(&self.scratch[s0..]).is_err()
                {
                    return Err(CopyError::new(
                        CHARACTER_NOT_IN_REPERTOIRE,
                        format!(
                            "invalid byte sequence for encoding \"UTF8\": {}, line {}",
                            bad_utf8_bytes(&self.scratch[s0..]),
                            self.line
                        ),
                    ));
                }
                Span::Scratch(s0, self.scratch.len())
            };
            self.spans.push(span);
            if end >= n {
                break;
            }
            start = end + 1;
        }
        Ok(())
    }

    fn split_csv(&mut self, row: &[u8]) -> Result<(), CopyError> {
        let delim = self.opts.delimiter;
        let (q, e) = (self.opts.quote, self.opts.escape);
        let null = self.opts.null.as_bytes();
        self.scratch.clear();
        self.spans.clear();
        let n = row.len();
        let mut i = 0;
        loop {
            let start = i;
            let mut seg = i;
            let mut saw_quote = false;
            let s0 = self.scratch.len();
            loop {
                while i < n && row[i] != delim && row[i] != q {
                    i += 1;
                }
                if i < n && row[i] == q {
                    saw_quote = true;
                    self.scratch.extend_from_slice(&row[seg..i]);
                    i += 1;
                    loop {
                        if i >= n {
                            return Err(CopyError::new(
                                BAD_COPY_FILE_FORMAT,
                                format!("unterminated CSV quoted field, line {}", self.line),
                            ));
                        }
                        let c = row[i];
                        if c == e && i + 1 < n && (row[i + 1] == q || row[i + 1] == e) {
                            self.scratch.push(row[i + 1]);
                            i += 2;
                            continue;
                        }
                        if c == q {
                            i += 1;
                            break;
                        }
                        self.scratch.push(c);
                        i += 1;
                    }
                    seg = i;
                    continue;
                }
                break;
            }
            let span = if saw_quote {
                self.scratch.extend_from_slice(&row[seg..i]);
                Span::Scratch(s0, self.scratch.len())
            } else if &row[start..i] == null {
                Span::Null
            } else {
                Span::Row(start, i)
            };
            self.spans.push(span);
            if i >= n {
                break;
            }
            i += 1; // delimiter
        }
        Ok(())
    }

    /// The output a split row goes to: its slice, or 0 when not splitting.
    /// A key value that does not parse picks output 0: `append_row` then
    /// reports the row's first bad field, in column order.
    #[inline]
    fn output_of(&self, row: &[u8]) -> usize {
        let Some(k) = &self.split else { return 0 };
        let mut h = hash::SEED;
        for &c in &k.cols {
            let v = match self.spans.get(c) {
                None => return 0,
                Some(Span::Null) => {
                    hash::chain_null(&mut h);
                    continue;
                }
                Some(&Span::Row(a, b)) => &row[a..b],
                Some(&Span::Scratch(a, b)) => &self.scratch[a..b],
            };
            if chain_key(self.schema.field(c).data_type(), v, &mut h).is_err() {
                return 0;
            }
        }
        hash::slice_of(h, k.slices) as usize
    }

    /// Append the split row to its output's builders; returns the output.
    fn append_row(&mut self, row: &[u8]) -> Result<usize, CopyError> {
        let ncols = self.schema.fields().len();
        if self.spans.len() > ncols {
            return Err(CopyError::new(
                BAD_COPY_FILE_FORMAT,
                format!("extra data after last expected column, line {}", self.line),
            ));
        }
        if self.spans.len() < ncols {
            return Err(CopyError::new(
                BAD_COPY_FILE_FORMAT,
                format!(
                    "missing data for column \"{}\", line {}",
                    self.names[self.spans.len()],
                    self.line
                ),
            ));
        }
        let o = self.output_of(row);
        let cols = &mut self.outs[o].cols;
        for (c, span) in self.spans.iter().enumerate() {
            let v = match *span {
                Span::Null => {
                    if !self.nullable[c] {
                        return Err(CopyError::new(
                            NOT_NULL_VIOLATION,
                            format!(
                                "null value in column \"{}\" violates not-null constraint, line {}",
                                self.names[c], self.line
                            ),
                        ));
                    }
                    cols[c].append_null();
                    continue;
                }
                Span::Row(a, b) => &row[a..b],
                Span::Scratch(a, b) => &self.scratch[a..b],
            };
            if let Err(k) = cols[c].append(v) {
                return Err(conv_error(
                    k,
                    self.schema.field(c).data_type(),
                    v,
                    self.line,
                    &self.names[c],
                ));
            }
        }
        Ok(o)
    }

    /// Finish output `o`'s batch and start its next one.
    fn flush(&mut self, o: usize) -> Result<Decoded, CopyError> {
        let cap = self.batch_rows.min(1 << 16);
        let out = &mut self.outs[o];
        out.rows = 0;
        let mut arrays = Vec::with_capacity(out.cols.len());
        for (i, col) in out.cols.iter_mut().enumerate() {
            let f = self.schema.field(i);
            let a = col.finish(f.data_type(), f.name())?;
            // finish() leaves empty builders that would grow by doubling, a
            // copy each time: start the next batch at this one's size.
            let text_bytes = match a.data_type() {
                DataType::Utf8 => a.as_string::<i32>().value_data().len(),
                DataType::LargeUtf8 => a.as_string::<i64>().value_data().len(),
                _ => 0,
            };
            *col = Col::sized(f.data_type(), cap, text_bytes + text_bytes / 8);
            arrays.push(a);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| CopyError::new("XX000", format!("COPY: cannot build batch: {e}")))?;
        Ok(Decoded {
            slice: self.split.as_ref().map(|_| o as u32),
            batch,
        })
    }
}

impl Builders {
    fn new(schema: &SchemaRef, cap: usize) -> Builders {
        Builders {
            cols: schema
                .fields()
                .iter()
                .map(|f| Col::new(f.data_type(), cap))
                .collect(),
            rows: 0,
        }
    }
}

fn untag(out: Vec<Decoded>) -> Vec<RecordBatch> {
    out.into_iter().map(|d| d.batch).collect()
}

/// An i64 parsed from text, narrowed to a smaller column type.
#[inline]
fn narrow<T: TryFrom<i64>>(v: i64) -> Result<T, ConvErr> {
    T::try_from(v).map_err(|_| ConvErr::Range)
}

/// A u64 parsed from text, narrowed to a smaller column type.
#[inline]
fn unarrow<T: TryFrom<u64>>(v: u64) -> Result<T, ConvErr> {
    T::try_from(v).map_err(|_| ConvErr::Range)
}

/// Whether [`chain_key`] parses this type (the decoder can split by it):
/// every distribution key type but Date64, which COPY decodes through a cast.
fn key_hashable(dt: &DataType) -> bool {
    hash::hashable(dt) && *dt != DataType::Date64
}

/// Chain the key value `v` (a field's text) onto `h`: parsed exactly as
/// [`Col::append`] parses it, then hashed as the loader hashes the stored
/// value.
#[inline]
fn chain_key(dt: &DataType, v: &[u8], h: &mut u32) -> Result<(), ConvErr> {
    match dt {
        DataType::Int8 => hash::chain_int(h, narrow::<i8>(parse_i64(v)?)?.into()),
        DataType::Int16 => hash::chain_int(h, narrow::<i16>(parse_i64(v)?)?.into()),
        DataType::Int32 => hash::chain_int(h, narrow::<i32>(parse_i64(v)?)?.into()),
        DataType::Int64 => hash::chain_int(h, parse_i64(v)? as i128),
        DataType::UInt8 => hash::chain_int(h, unarrow::<u8>(parse_u64(v)?)?.into()),
        DataType::UInt16 => hash::chain_int(h, unarrow::<u16>(parse_u64(v)?)?.into()),
        DataType::UInt32 => hash::chain_int(h, unarrow::<u32>(parse_u64(v)?)?.into()),
        DataType::UInt64 => hash::chain_int(h, parse_u64(v)? as i128),
        DataType::Float32 => hash::chain_f64(h, parse_f32(v)? as f64),
        DataType::Float64 => hash::chain_f64(h, parse_f64(v)?),
        DataType::Decimal128(p, s) => hash::chain_int(h, parse_decimal(v, *p, *s)?),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => hash::chain_str(h, v),
        DataType::Boolean => hash::chain_bool(h, parse_bool(v)?),
        DataType::Date32 => hash::chain_int(h, parse_date_fast(v)? as i128),
        DataType::Timestamp(unit, tz) => {
            let (secs, nanos) = parse_timestamp(v, tz.is_some())?;
            hash::chain_int(h, timestamp_in_unit(secs, nanos, *unit)? as i128)
        }
        _ => return Err(ConvErr::Invalid),
    }
    Ok(())
}

/// Split a text-format row without backslashes into field spans, finding
/// the delimiters 16 bytes at a time. Returns false (spans half done) as soon
/// as it meets a backslash: that row needs the escape-aware split.
#[inline]
fn split_plain(row: &[u8], delim: u8, null: &[u8], spans: &mut Vec<Span>) -> bool {
    let n = row.len();
    let mut start = 0;
    let mut field = |end: usize, spans: &mut Vec<Span>| {
        let raw = &row[start..end];
        spans.push(if raw == null {
            Span::Null
        } else {
            Span::Row(start, end)
        });
        start = end + 1;
    };
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is part of the x86_64 baseline, and every load reads
        // the 16 bytes at row[i..i + 16], which are in bounds (i + 16 <= n).
        unsafe {
            let vd = _mm_set1_epi8(delim as i8);
            let vb = _mm_set1_epi8(b'\\' as i8);
            while i + 16 <= n {
                let v = _mm_loadu_si128(row.as_ptr().add(i) as *const __m128i);
                if _mm_movemask_epi8(_mm_cmpeq_epi8(v, vb)) != 0 {
                    return false;
                }
                let mut m = _mm_movemask_epi8(_mm_cmpeq_epi8(v, vd)) as u32;
                while m != 0 {
                    field(i + m.trailing_zeros() as usize, spans);
                    m &= m - 1;
                }
                i += 16;
            }
        }
    }
    while i < n {
        let b = row[i];
        if b == b'\\' {
            return false;
        }
        if b == delim {
            field(i, spans);
        }
        i += 1;
    }
    field(n, spans);
    true
}

/// Unescape a text-format field into `out`. Returns true if an octal or hex
/// escape produced a non-ASCII byte (the result then needs UTF-8 checking).
fn unescape_text(raw: &[u8], out: &mut Vec<u8>) -> bool {
    let mut high = false;
    let mut i = 0;
    let n = raw.len();
    while i < n {
        let b = raw[i];
        if b != b'\\' || i + 1 >= n {
            out.push(b);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (c - b'0') as u32;
                let mut k = 0;
                while k < 2 && i < n && (b'0'..=b'7').contains(&raw[i]) {
                    v = v * 8 + (raw[i] - b'0') as u32;
                    i += 1;
                    k += 1;
                }
                let v = (v & 0xff) as u8;
                high |= v >= 0x80;
                out.push(v);
            }
            b'x' if i < n && raw[i].is_ascii_hexdigit() => {
                let mut v = hex_val(raw[i]) as u32;
                i += 1;
                if i < n && raw[i].is_ascii_hexdigit() {
                    v = v * 16 + hex_val(raw[i]) as u32;
                    i += 1;
                }
                let v = v as u8;
                high |= v >= 0x80;
                out.push(v);
            }
            other => out.push(other),
        }
    }
    high
}

#[inline]
fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

// ---------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------

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

fn write_date(out: &mut String, days: i64) {
    let (y, m, d) = civil_from_days(days);
    let _ = write!(out, "{y:04}-{m:02}-{d:02}");
}

fn write_timestamp(out: &mut String, v: i64, unit: TimeUnit, tz: bool) {
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
            Box::new(move |i, out: &mut String| {
                let v = a.value(i);
                write_pg_float(out, v, 15, &format!("{v:e}"), &v)
            })
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
        CopyFormat::Text => escape_text(v, o.delimiter, out),
        CopyFormat::Csv => escape_csv(v, o, out),
    }
}

/// Encode batches as COPY TO STDOUT data (text or CSV, header if asked).
pub fn encode_rows(batches: &[RecordBatch], options: &CopyOptions) -> Result<Vec<u8>, CopyError> {
    let mut out = Vec::new();
    if options.header {
        if let Some(b) = batches.first() {
            for (i, f) in b.schema().fields().iter().enumerate() {
                if i > 0 {
                    out.push(options.delimiter);
                }
                write_field(f.name().as_bytes(), options, &mut out);
            }
            out.push(b'\n');
        }
    }
    let null = options.null.as_bytes();
    let mut val = String::new();
    for batch in batches {
        let writers = batch
            .columns()
            .iter()
            .map(|c| value_writer(c.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            for (c, w) in writers.iter().enumerate() {
                if c > 0 {
                    out.push(options.delimiter);
                }
                if batch.column(c).is_null(row) {
                    out.extend_from_slice(null);
                    continue;
                }
                val.clear();
                w(row, &mut val);
                write_field(val.as_bytes(), options, &mut out);
            }
            out.push(b'\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};

    fn schema(fields: Vec<(&str, DataType, bool)>) -> SchemaRef {
        Arc::new(Schema::new(
            fields
                .into_iter()
                .map(|(n, t, nullable)| Field::new(n, t, nullable))
                .collect::<Vec<_>>(),
        ))
    }

    fn all_types() -> SchemaRef {
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
    fn decode_chunks(
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

    fn decode(
        schema: &SchemaRef,
        opts: &CopyOptions,
        input: &str,
    ) -> Result<Vec<RecordBatch>, CopyError> {
        decode_chunks(schema, opts, &[input.as_bytes()], 1024)
    }

    fn concat(batches: &[RecordBatch]) -> RecordBatch {
        datafusion::arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap()
    }

    fn err(schema: &SchemaRef, opts: &CopyOptions, input: &str) -> CopyError {
        decode(schema, opts, input).expect_err(input)
    }

    const TEXT_ROWS: &str = "\
-128\t-32768\t-2147483648\t-9223372036854775808\t0\t0\t0\t0\t-1.5\t-2.5e-300\t-12345678.99\ta\\tb\\nc\\\\d\tx\tt\t1970-01-01\t1970-01-01 00:00:00\t1969-12-31 23:59:59.999999999\t1900-02-28 12:00:00
127\t32767\t2147483647\t9223372036854775807\t255\t65535\t4294967295\t18446744073709551615\t3.4028235e+38\t1.7976931348623157e+308\t0.01\tunicode ✓ ünï\t\tf\t2024-02-29\t2024-02-29 23:59:59.123456\t2262-04-11 23:47:16.854775807\t9999-12-31 23:59:59
\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N
0\t1\t-1\t42\t1\t2\t3\t4\tNaN\tInfinity\t-0.50\t\\\\N\tback\\\\slash\tt\t0001-01-01\t2000-01-01 00:00:00.5\t2000-01-01 00:00:00.000000001\t1969-07-20 20:17:40
1\t2\t3\t4\t5\t6\t7\t8\t-Infinity\t0.1\t123.45\t\"quoted\", comma\tcr\\r\tf\t1999-12-31\t2001-09-09 01:46:40\t1677-09-21 00:12:43.145224192\t2038-01-19 03:14:08
";

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

    /// Decode with the rows split by slice on `key`; every batch's rows
    /// must hash, as the loader hashes stored rows, to the batch's slice.
    fn decode_split(
        schema: &SchemaRef,
        input: &str,
        key: &[usize],
        slices: u32,
    ) -> Result<Vec<Decoded>, CopyError> {
        let mut d = CopyDecoder::new(schema.clone(), CopyOptions::text(), 3);
        assert!(d.split_by_slice(key.to_vec(), slices), "key {key:?}");
        let mut out = d.fork().push_sliced(b"").unwrap();
        assert!(out.is_empty());
        out.extend(d.push_sliced(input.as_bytes())?);
        out.extend(d.finish_sliced()?);
        Ok(out)
    }

    fn assert_rows_on_their_slices(out: &[Decoded], key: &[usize], slices: u32) -> usize {
        let mut rows = 0;
        for d in out {
            let slice = d.slice.expect("split batches carry their slice");
            let want = slicedb_coordinator::hash::slices_for_batch(&d.batch, key, slices).unwrap();
            assert!(
                want.iter().all(|&s| s == slice),
                "key {key:?}: batch tagged {slice}, rows hash to {want:?}"
            );
            rows += d.batch.num_rows();
        }
        rows
    }

    #[test]
    fn rows_split_by_slice_land_where_the_loader_would_put_them() {
        let s = all_types();
        // Every column type, alone and with another column after it.
        for c in 0..s.fields().len() {
            for key in [vec![c], vec![c, (c + 11) % s.fields().len()]] {
                let out = decode_split(&s, TEXT_ROWS, &key, 7).unwrap();
                assert_eq!(assert_rows_on_their_slices(&out, &key, 7), 5, "key {key:?}");
            }
        }
        // Many keys, in text the parser must normalise (signs, spaces,
        // leading zeros, exponents): rows spread over every slice.
        let s = schema(vec![
            ("k", DataType::Int64, true),
            ("d", DataType::Decimal128(12, 2), true),
            ("f", DataType::Float64, true),
        ]);
        let mut input = String::new();
        for i in 0..2000 {
            input.push_str(&format!("{:+06}\t{i}.5\t{}e0\n", i, i as f64 / 4.0));
        }
        input.push_str("\\N\t-0.00\t-0\n");
        for key in [vec![0], vec![1], vec![2], vec![1, 0]] {
            let out = decode_split(&s, &input, &key, 16).unwrap();
            assert_eq!(assert_rows_on_their_slices(&out, &key, 16), 2001);
            let used: std::collections::BTreeSet<u32> =
                out.iter().filter_map(|d| d.slice).collect();
            assert_eq!(used.len(), 16, "key {key:?}");
        }
    }

    #[test]
    fn a_split_row_with_a_bad_key_reports_its_first_bad_field() {
        let s = schema(vec![
            ("a", DataType::Int32, true),
            ("k", DataType::Int32, true),
        ]);
        let e = decode_split(&s, "1\t2\nzz\tyy\n", &[1], 4).err().unwrap();
        assert!(e.message.contains("column a"), "{e}");
        assert!(e.message.contains("line 2"), "{e}");
        let e = decode_split(&s, "1\t99999999999\n", &[1], 4).err().unwrap();
        assert_eq!(e.sqlstate, "22003", "{e}");
        // Only types with a parser of their own can split; the rest leave
        // the decoder as it was.
        let other = schema(vec![("t", DataType::Time64(TimeUnit::Microsecond), true)]);
        let mut d = CopyDecoder::new(other, CopyOptions::text(), 3);
        assert!(!d.split_by_slice(vec![0], 4));
        assert!(!d.split_by_slice(vec![], 4));
        let mut d = CopyDecoder::new(s, CopyOptions::text(), 3);
        assert!(!d.split_by_slice(vec![0], MAX_SPLIT_SLICES + 1));
        assert!(!d.split_by_slice(vec![5], 4));
        let out = d.push_sliced(b"1\t2\n").unwrap();
        assert!(out.is_empty());
        let out = d.finish_sliced().unwrap();
        assert_eq!(out[0].slice, None);
    }

    #[test]
    fn chunk_boundaries_at_every_byte() {
        let s = schema(vec![
            ("a", DataType::Int32, true),
            ("b", DataType::Utf8, true),
            ("c", DataType::Float64, true),
        ]);
        let text = "1\tä\\tö\\\\\\n€\t1.5\r\n\\N\t\\x41\\101\\N\t-2\n3\t\\N\t\\N\n\\.\n";
        let mut csv_opts = CopyOptions::csv();
        csv_opts.header = true;
        let csv = "a,b,c\r\n1,\"multi\nline, \"\"q\"\" €\",1.5\r\n,,\n3,\"\",2e3\n4,x\"y\"z,5";
        for (opts, input) in [(CopyOptions::text(), text), (csv_opts, csv)] {
            let whole = concat(&decode(&s, &opts, input).unwrap());
            let bytes = input.as_bytes();
            for cut in 0..=bytes.len() {
                let (x, y) = bytes.split_at(cut);
                for rows in [1, 2, 1000] {
                    let got = concat(&decode_chunks(&s, &opts, &[x, y], rows).unwrap());
                    assert_eq!(got, whole, "cut at {cut}, batch {rows}");
                }
            }
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(
                concat(&decode_chunks(&s, &opts, &singles, 2).unwrap()),
                whole
            );
        }
        let t = concat(&decode(&s, &CopyOptions::text(), text).unwrap());
        assert_eq!(t.num_rows(), 3);
        assert_eq!(t.column(1).as_string::<i32>().value(0), "ä\tö\\\n€");
        assert_eq!(t.column(1).as_string::<i32>().value(1), "AAN");
        let mut o = CopyOptions::csv();
        o.header = true;
        let c = concat(&decode(&s, &o, csv).unwrap());
        assert_eq!(c.num_rows(), 4);
        assert_eq!(
            c.column(1).as_string::<i32>().value(0),
            "multi\nline, \"q\" €"
        );
        assert!(c.column(0).is_null(1) && c.column(1).is_null(1) && c.column(2).is_null(1));
        assert_eq!(c.column(1).as_string::<i32>().value(2), "");
        assert!(!c.column(1).is_null(2));
        assert_eq!(c.column(1).as_string::<i32>().value(3), "xyz");
    }

    #[test]
    fn batches_fill_as_pushed() {
        let s = schema(vec![("a", DataType::Int64, false)]);
        let mut d = CopyDecoder::new(s, CopyOptions::text(), 2);
        assert_eq!(d.push(b"1\n2\n3").unwrap().len(), 1);
        assert_eq!(d.rows(), 2);
        let b = d.push(b"\n4\n5\n").unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].column(0).as_primitive::<Int64Type>().values(), &[3, 4]);
        let last = d.finish().unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].num_rows(), 1);
        assert_eq!(d.rows(), 5);
        // nothing pending: no empty batch
        let mut d = CopyDecoder::new(
            schema(vec![("a", DataType::Int64, true)]),
            CopyOptions::text(),
            2,
        );
        assert_eq!(d.push(b"1\n2\n").unwrap().len(), 1);
        assert!(d.finish().unwrap().is_empty());
    }

    #[test]
    fn end_marker_is_accepted() {
        let s = schema(vec![("a", DataType::Int32, true)]);
        for input in [
            "1\n2\n\\.\n",
            "1\n2\n\\.",
            "1\n2\n\\.\r\n",
            "1\n2\n\\.\nignored\n",
        ] {
            let b = concat(&decode(&s, &CopyOptions::text(), input).unwrap());
            assert_eq!(b.num_rows(), 2, "{input:?}");
        }
        let b = concat(&decode(&s, &CopyOptions::csv(), "1\n2\n\\.\n").unwrap());
        assert_eq!(b.num_rows(), 2);
    }

    #[test]
    fn header_is_skipped_and_counted_as_line_1() {
        let s = schema(vec![
            ("a", DataType::Int32, true),
            ("b", DataType::Utf8, true),
        ]);
        let mut o = CopyOptions::text();
        o.header = true;
        let b = concat(&decode(&s, &o, "a\tb\n1\tx\n").unwrap());
        assert_eq!(b.num_rows(), 1);
        let e = err(&s, &o, "a\tb\n1\tx\nbad\ty\n");
        assert_eq!(e.sqlstate, "22P02");
        assert!(e.message.ends_with("line 3, column a"), "{}", e.message);
        let out = encode_rows(&[b], &o).unwrap();
        assert_eq!(out, b"a\tb\n1\tx\n");
    }

    #[test]
    fn errors_carry_sqlstate_and_line() {
        let s = schema(vec![
            ("a", DataType::Int32, true),
            ("b", DataType::Utf8, true),
            ("n", DataType::Int64, false),
        ]);
        let t = CopyOptions::text();
        let cases: Vec<(&[u8], &str, &str)> =
            vec![
            (
                b"1\tx\t1\nabc\tx\t1\n",
                "22P02",
                "invalid input syntax for type integer: \"abc\", line 2, column a",
            ),
            (
                b"99999999999\tx\t1\n",
                "22003",
                "value \"99999999999\" is out of range for type integer, line 1, column a",
            ),
            (
                b"1\tx\t99999999999999999999\n",
                "22003",
                "value \"99999999999999999999\" is out of range for type bigint, line 1, column n",
            ),
            (b"1\tx\t1\n1\n", "22P04", "missing data for column \"b\", line 2"),
            (b"1\tx\n", "22P04", "missing data for column \"n\", line 1"),
            (
                b"1\tx\t1\t2\n",
                "22P04",
                "extra data after last expected column, line 1",
            ),
            (
                b"1\tx\t1\n1\t\xff\t1\n",
                "22021",
                "invalid byte sequence for encoding \"UTF8\": 0xff, line 2",
            ),
            (
                b"1\t\\xff\t1\n",
                "22021",
                "invalid byte sequence for encoding \"UTF8\": 0xff, line 1",
            ),
            (
                b"1\tx\t\\N\n",
                "23502",
                "null value in column \"n\" violates not-null constraint, line 1",
            ),
        ];
        for (input, state, msg) in cases {
            let e = decode_chunks(&s, &t, &[input], 10).expect_err(&String::from_utf8_lossy(input));
            assert_eq!((e.sqlstate, e.message.as_str()), (state, msg));
        }
        let c = CopyOptions::csv();
        let e = err(&s, &c, "1,x,1\n1,\"unterminated,1\n");
        assert_eq!(e.sqlstate, "22P04");
        assert!(
            e.message.contains("unterminated CSV quoted field"),
            "{}",
            e.message
        );
        let e = err(&s, &c, "1,x,\n");
        assert_eq!(e.sqlstate, "23502");
        // typed errors
        let typed = |dt: DataType, v: &str| {
            let s = schema(vec![("c", dt, true)]);
            err(&s, &CopyOptions::text(), &format!("{v}\n"))
        };
        assert_eq!(typed(DataType::Boolean, "maybe").sqlstate, "22P02");
        assert_eq!(
            typed(DataType::Boolean, "maybe").message,
            "invalid input syntax for type boolean: \"maybe\", line 1, column c"
        );
        assert_eq!(typed(DataType::Float64, "1.2.3").sqlstate, "22P02");
        assert_eq!(typed(DataType::Float64, "1e400").sqlstate, "22003");
        assert_eq!(typed(DataType::Float32, "1e40").sqlstate, "22003");
        assert_eq!(typed(DataType::Int16, "40000").sqlstate, "22003");
        assert_eq!(typed(DataType::UInt8, "-1").sqlstate, "22003");
        assert_eq!(typed(DataType::Int8, "1x").sqlstate, "22P02");
        assert_eq!(typed(DataType::Int32, "").sqlstate, "22P02");
        assert_eq!(
            typed(DataType::Decimal128(5, 2), "1234.5").sqlstate,
            "22003"
        );
        assert_eq!(typed(DataType::Decimal128(5, 2), "1e3").sqlstate, "22003");
        assert_eq!(typed(DataType::Decimal128(5, 2), "abc").sqlstate, "22P02");
        assert_eq!(typed(DataType::Decimal128(5, 2), "1.2.3").sqlstate, "22P02");
        // dates: PostgreSQL uses 22007 (syntax) and 22008 (field out of range)
        assert_eq!(typed(DataType::Date32, "2024-13-01").sqlstate, "22008");
        assert_eq!(typed(DataType::Date32, "2023-02-29").sqlstate, "22008");
        assert_eq!(typed(DataType::Date32, "yesterday").sqlstate, "22007");
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        assert_eq!(typed(ts.clone(), "2024-01-01 25:00:00").sqlstate, "22008");
        assert_eq!(typed(ts, "2024-01-01 x").sqlstate, "22007");
        // decoder refuses further input after an error
        let mut d = CopyDecoder::new(s.clone(), t.clone(), 10);
        assert!(d.push(b"x\tx\t1\n").is_err());
        assert!(d.push(b"1\tx\t1\n").is_err());
    }

    #[test]
    fn line_numbers_count_csv_rows_and_chunks() {
        let s = schema(vec![
            ("a", DataType::Int32, true),
            ("b", DataType::Utf8, true),
        ]);
        let input = b"1,\"two\nlines\"\n2,x\n3,y\nz,w\n";
        for cut in 0..input.len() {
            let (x, y) = input.split_at(cut);
            let e = decode_chunks(&s, &CopyOptions::csv(), &[x, y], 2).unwrap_err();
            assert_eq!(e.sqlstate, "22P02");
            assert!(e.message.ends_with(", line 4, column a"), "{}", e.message);
        }
    }

    #[test]
    fn csv_quoting_edge_cases() {
        let s = schema(vec![
            ("a", DataType::Utf8, true),
            ("b", DataType::Utf8, true),
        ]);
        let c = CopyOptions::csv();
        let b = concat(
            &decode(
                &s,
                &c,
                "\"\",\n\"a,b\",\"x\"\"y\"\n ab ,\"\"\"\"\nab\"c,d\"e,\"\r\n\"\n\"\\\",\"\\.\"\n",
            )
            .unwrap(),
        );
        let col = |c: usize, r: usize| {
            let a = b.column(c).as_string::<i32>();
            (!a.is_null(r)).then(|| a.value(r).to_string())
        };
        assert_eq!(col(0, 0).as_deref(), Some(""));
        assert_eq!(col(1, 0), None);
        assert_eq!(col(0, 1).as_deref(), Some("a,b"));
        assert_eq!(col(1, 1).as_deref(), Some("x\"y"));
        assert_eq!(col(0, 2).as_deref(), Some(" ab "));
        assert_eq!(col(1, 2).as_deref(), Some("\""));
        assert_eq!(col(0, 3).as_deref(), Some("abc,de"));
        assert_eq!(col(1, 3).as_deref(), Some("\r\n"));
        assert_eq!(col(0, 4).as_deref(), Some("\\"));
        assert_eq!(col(1, 4).as_deref(), Some("\\."));
        // encode back: empty string quoted, NULL empty, specials quoted
        let out = String::from_utf8(encode_rows(std::slice::from_ref(&b), &c).unwrap()).unwrap();
        assert_eq!(
            out,
            "\"\",\n\"a,b\",\"x\"\"y\"\n ab ,\"\"\"\"\n\"abc,de\",\"\r\n\"\n\\,\"\\.\"\n"
        );
        assert_eq!(concat(&decode(&s, &c, &out).unwrap()), b);

        // custom quote / escape / delimiter / null
        let o = CopyOptions {
            format: CopyFormat::Csv,
            delimiter: b';',
            null: "NULL".into(),
            header: false,
            quote: b'\'',
            escape: b'\\',
        };
        let b = concat(&decode(&s, &o, "'it\\'s;\\\\';NULL\n'NULL';\n").unwrap());
        assert_eq!(col_of(&b, 0, 0).as_deref(), Some("it's;\\"));
        assert_eq!(col_of(&b, 1, 0), None);
        assert_eq!(col_of(&b, 0, 1).as_deref(), Some("NULL"));
        assert_eq!(col_of(&b, 1, 1).as_deref(), Some(""));
        let out = String::from_utf8(encode_rows(std::slice::from_ref(&b), &o).unwrap()).unwrap();
        assert_eq!(out, "'it\\'s;\\\\';NULL\n'NULL';\n");
    }

    fn col_of(b: &RecordBatch, c: usize, r: usize) -> Option<String> {
        let a = b.column(c).as_string::<i32>();
        (!a.is_null(r)).then(|| a.value(r).to_string())
    }

    #[test]
    fn text_escapes_and_custom_delimiter() {
        let s = schema(vec![
            ("a", DataType::Utf8, true),
            ("b", DataType::Utf8, true),
        ]);
        let b = concat(
            &decode(
                &s,
                &CopyOptions::text(),
                "\\b\\f\\v\\r\\x7\\x4a\\0\\12\\q\tcontinued\\\nline\n",
            )
            .unwrap(),
        );
        assert_eq!(
            col_of(&b, 0, 0).as_deref(),
            Some("\x08\x0c\x0b\r\x07J\0\nq")
        );
        assert_eq!(col_of(&b, 1, 0).as_deref(), Some("continued\nline"));
        let o = CopyOptions {
            delimiter: b'|',
            null: "".into(),
            ..CopyOptions::text()
        };
        let b = concat(&decode(&s, &o, "a\\|b|\nx|y\n").unwrap());
        assert_eq!(col_of(&b, 0, 0).as_deref(), Some("a|b"));
        assert_eq!(col_of(&b, 1, 0), None);
        let out = encode_rows(std::slice::from_ref(&b), &o).unwrap();
        assert_eq!(out, b"a\\|b|\nx|y\n");
    }

    #[test]
    fn decimal_fast_path_agrees_with_the_general_parser() {
        let mut cases: Vec<String> = [
            "0",
            "-0",
            "5.",
            ".5",
            "-.5",
            ".",
            "-",
            "",
            "1.2.3",
            "1e3",
            " 1.5",
            "1.5 ",
            "+1.5",
            "12.345",
            "99999999999.99",
            "100000000000.00",
            "-99999999999.99",
            "123456789012345678",
            "1234567890123456789",
            "0.000000000000000001",
            "00000000000000000012.5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for i in 0..3000u64 {
            let v = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (i % 60);
            let f = i % 7;
            let text = format!("{}{}", if i % 3 == 0 { "-" } else { "" }, v);
            let (a, b) = text.split_at(
                text.len()
                    .saturating_sub(f as usize)
                    .max(text.starts_with('-') as usize),
            );
            cases.push(format!("{a}.{b}"));
            cases.push(text);
        }
        for (p, sc) in [(12, 2), (38, 0), (18, 6), (5, 5), (38, 10)] {
            for c in &cases {
                let b = c.as_bytes();
                assert_eq!(
                    parse_decimal(b, p, sc),
                    parse_decimal_general(b, p, sc),
                    "{c:?} as numeric({p},{sc})"
                );
            }
        }
        assert!(
            parse_decimal_plain(b"12.34", 12, 2).is_some(),
            "the fast path is taken"
        );
    }

    #[test]
    fn date_fast_path_agrees_with_the_general_parser() {
        // Every day of 1899..=2101, and other shapes (which the general
        // parser decides).
        for days in -25_600..48_300i64 {
            let (y, m, d) = civil_from_days(days);
            let text = format!("{y:04}-{m:02}-{d:02}");
            assert_eq!(parse_date_fast(text.as_bytes()), Ok(days as i32), "{text}");
            assert_eq!(parse_date(text.as_bytes()), Ok(days as i32), "{text}");
        }
        for bad in [
            "2023-02-29",
            "2024-02-30",
            "2024-13-01",
            "2024-00-10",
            "2024-01-00",
            "2024-04-31",
            "2024-1-01",
            "20x4-01-01",
            " 2024-01-01",
            "2024/01/01",
            "",
        ] {
            assert_eq!(
                parse_date_fast(bad.as_bytes()),
                parse_date(bad.as_bytes()),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn value_parsing() {
        assert_eq!(parse_i64(b" +42 "), Ok(42));
        assert_eq!(parse_i64(b"-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), Err(ConvErr::Range));
        assert_eq!(parse_i64(b"-"), Err(ConvErr::Invalid));
        for (s, v) in [
            ("t", true),
            ("TRUE", true),
            ("tr", true),
            ("yes", true),
            ("Y", true),
            ("on", true),
            ("1", true),
            ("f", false),
            ("False", false),
            ("no", false),
            ("off", false),
            ("OF", false),
            (" 0 ", false),
        ] {
            assert_eq!(parse_bool(s.as_bytes()), Ok(v), "{s}");
        }
        for s in ["o", "2", "truee", "", "nope"] {
            assert!(parse_bool(s.as_bytes()).is_err(), "{s}");
        }
        let d = |s: &str, p, sc| parse_decimal(s.as_bytes(), p, sc);
        assert_eq!(d("123.45", 10, 2), Ok(12345));
        assert_eq!(d("-0.5", 10, 2), Ok(-50));
        assert_eq!(d("1e3", 10, 2), Ok(100000));
        assert_eq!(d("1.5E-1", 10, 2), Ok(15));
        assert_eq!(d("1.005", 10, 2), Ok(101));
        assert_eq!(d("-1.005", 10, 2), Ok(-101));
        assert_eq!(d("0.004", 10, 2), Ok(0));
        assert_eq!(
            d("0.0000000000000000000000000000000000000000000001", 10, 2),
            Ok(0)
        );
        assert_eq!(
            d("000000000000000000000000000000000000000000012.3", 10, 2),
            Ok(1230)
        );
        assert_eq!(d(".5", 3, 1), Ok(5));
        assert_eq!(d("5.", 3, 1), Ok(50));
        assert_eq!(d("99.995", 4, 2), Err(ConvErr::Range));
        assert_eq!(d("12345", 38, 0), Ok(12345));
        assert_eq!(d("1e38", 38, 0), Err(ConvErr::Range));
        assert_eq!(d("12345", 5, -2), Ok(123));
        assert_eq!(d("e3", 5, 2), Err(ConvErr::Invalid));
        assert_eq!(d("1e", 5, 2), Err(ConvErr::Invalid));
        assert_eq!(d("NaN", 5, 2), Err(ConvErr::Invalid));
        assert_eq!(parse_date(b"2000-03-01"), Ok(11017));
        assert_eq!(parse_date(b"1969-12-31"), Ok(-1));
        let ts = |s: &str, tz| parse_timestamp(s.as_bytes(), tz);
        assert_eq!(
            ts("1970-01-02T00:00:01.25", false),
            Ok((86401, 250_000_000))
        );
        assert_eq!(ts("1970-01-01", false), Ok((0, 0)));
        assert_eq!(ts("1970-01-01 01:00:00+01", true), Ok((0, 0)));
        assert_eq!(ts("1970-01-01 01:00:00+01", false), Ok((3600, 0)));
        assert_eq!(ts("1970-01-01 00:00:00Z", true), Ok((0, 0)));
        assert_eq!(ts("1970-01-01 00:00:00-05:30", true), Ok((19800, 0)));
        assert_eq!(ts("1970-01-01 24:00:00", false), Ok((86400, 0)));
        assert_eq!(
            timestamp_in_unit(1, 999_999_500, TimeUnit::Microsecond),
            Ok(2_000_000)
        );
        assert_eq!(
            timestamp_in_unit(i64::MAX / 1000, 0, TimeUnit::Nanosecond),
            Err(ConvErr::Range)
        );
        for z in [-800_000i64, -1, 0, 1, 11017, 19782, 2_932_896] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
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

    #[test]
    fn options_from_statement() {
        let opts = |sql: &str| {
            let p = crate::dialect::parse_statements(sql).unwrap();
            CopyOptions::from_statement(&p[0].statement)
        };
        assert_eq!(opts("COPY t FROM STDIN").unwrap(), CopyOptions::text());
        let o = opts("COPY t (a,b) FROM STDIN WITH (FORMAT csv, HEADER true)").unwrap();
        assert_eq!(
            o,
            CopyOptions {
                header: true,
                ..CopyOptions::csv()
            }
        );
        let o = opts("COPY t FROM STDIN CSV HEADER").unwrap();
        assert_eq!(
            (o.format, o.header, o.delimiter),
            (CopyFormat::Csv, true, b',')
        );
        let o = opts("COPY t FROM STDIN DELIMITER ',' NULL 'x'").unwrap();
        assert_eq!(
            (o.format, o.delimiter, o.null.as_str()),
            (CopyFormat::Text, b',', "x")
        );
        let o = opts(
            "COPY t TO STDOUT WITH (FORMAT csv, DELIMITER '|', QUOTE '''', ESCAPE '\\', NULL 'N')",
        )
        .unwrap();
        assert_eq!(
            (o.delimiter, o.quote, o.escape, o.null.as_str()),
            (b'|', b'\'', b'\\', "N")
        );
        let o = opts("COPY t FROM STDIN WITH (FORMAT csv, QUOTE '''')").unwrap();
        assert_eq!((o.quote, o.escape), (b'\'', b'\''));
        assert_eq!(
            opts("COPY t FROM STDIN WITH (FORMAT binary)")
                .unwrap_err()
                .sqlstate,
            "0A000"
        );
        assert_eq!(
            opts("COPY t FROM STDIN BINARY").unwrap_err().sqlstate,
            "0A000"
        );
        assert!(opts("COPY t FROM STDIN WITH (FORMAT text, QUOTE '''')").is_err());
        assert!(opts("COPY t FROM STDIN WITH (FORMAT csv, DELIMITER '\"')").is_err());
        let sel = crate::dialect::parse_statements("SELECT 1").unwrap();
        assert!(CopyOptions::from_statement(&sel[0].statement).is_err());
    }

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
}
