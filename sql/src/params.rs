//! The extended protocol's parameters: each value a client binds (Bind), in
//! text or binary form, decoded by the type the client declared for it in
//! Parse (a parameter of no declared type, as psycopg sends a Python `str`,
//! by the type the statement needs), then converted to the type the
//! statement needs with PostgreSQL's casts:
//!
//! - integers between widths, and integers, floats and numeric to numeric
//!   (rounded to its scale, half away from zero; past its precision 22003);
//! - any number to an integer type if it is a whole number in range (a
//!   fraction is refused with 22P02 rather than rounded, so that
//!   `WHERE int_col = $1` never matches a value the client did not send),
//!   and to float;
//! - text (and parameters of no declared type) to every type, read as that
//!   type's input reads it (22P02, 22007, 22008, 22003 as PostgreSQL);
//! - dates and timestamps (with or without time zone) into each other;
//! - any value to text, written as PostgreSQL writes it.
//!
//! Anything else (a boolean for an integer, ...) is refused with 42804.
//!
//! It owns this decoding and conversion, and never runs a statement: a
//! statement DataFusion planned gets its placeholders replaced by the
//! values ([`bind`]) before datafusion-postgres runs it, and one slicedb
//! runs itself (UPDATE, DELETE, ...) gets them as SQL literals
//! ([`substitute`]). Parameters of types it does not handle (arrays,
//! intervals, ...) are left to datafusion-postgres whole.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{visit_expressions_mut, Expr, Statement, Value as SqlValue};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use pgwire::api::portal::Portal;
use pgwire::api::stmt::StoredStatement;
use pgwire::api::Type;

use crate::copy::binval::{
    recv_bool, recv_date, recv_f64, recv_int, recv_numeric_text, recv_timestamp,
};
use crate::copy::parse::{
    parse_bool, parse_bytea, parse_date_fast, parse_decimal, parse_f32, parse_f64, parse_i64,
    parse_timestamp, timestamp_in_unit, ConvErr,
};
use crate::copy::{pg_type_name, value_error, write_date, write_pg_float8, write_timestamp};
use crate::errors::SqlError;

/// A statement as datafusion-postgres stores it: its text, and its parsed
/// form and plan (None: a statement slicedb runs itself).
pub type Planned = (String, Option<(Statement, LogicalPlan)>);

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A parameter's value, decoded from its wire form.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Int(i64),
    Float(f64),
    /// numeric as decimal text, or `NaN`, `Infinity`, `-Infinity`
    Numeric(String),
    /// a text type's value, or a parameter of no declared type in text
    /// form: read as the input of the type it is bound to
    Text(String),
    Bool(bool),
    /// days since 1970-01-01
    Date(i32),
    /// microseconds since 1970-01-01 (UTC for timestamptz)
    Timestamp(i64),
    Bytes(Vec<u8>),
}

/// The wire forms this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Int,
    Float,
    Numeric,
    Text,
    Bool,
    Date,
    Timestamp,
    TimestampTz,
    Bytea,
}

fn wire_of_type(ty: &Type) -> Option<Wire> {
    Some(match *ty {
        Type::INT2 | Type::INT4 | Type::INT8 => Wire::Int,
        Type::FLOAT4 | Type::FLOAT8 => Wire::Float,
        Type::NUMERIC => Wire::Numeric,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => Wire::Text,
        Type::BOOL => Wire::Bool,
        Type::DATE => Wire::Date,
        Type::TIMESTAMP => Wire::Timestamp,
        Type::TIMESTAMPTZ => Wire::TimestampTz,
        Type::BYTEA => Wire::Bytea,
        _ => return None,
    })
}

/// The wire form of a parameter of no declared type sent in binary: that
/// of the type it is bound to, as in PostgreSQL.
fn wire_of_arrow(dt: &DataType) -> Option<Wire> {
    Some(match dt {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => Wire::Int,
        DataType::UInt64 | DataType::Decimal128(..) => Wire::Numeric,
        DataType::Float32 | DataType::Float64 => Wire::Float,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Wire::Text,
        DataType::Boolean => Wire::Bool,
        DataType::Date32 => Wire::Date,
        DataType::Timestamp(_, None) => Wire::Timestamp,
        DataType::Timestamp(_, Some(_)) => Wire::TimestampTz,
        DataType::Binary | DataType::LargeBinary => Wire::Bytea,
        _ => return None,
    })
}

fn wire_name(w: Wire) -> &'static str {
    match w {
        Wire::Int => "integer",
        Wire::Float => "double precision",
        Wire::Numeric => "numeric",
        Wire::Text => "text",
        Wire::Bool => "boolean",
        Wire::Date => "date",
        Wire::Timestamp => "timestamp",
        Wire::TimestampTz => "timestamp with time zone",
        Wire::Bytea => "bytea",
    }
}

/// " (parameter $n)", added to an error's message.
fn at_param(mut e: crate::copy::CopyError, n: usize) -> SqlError {
    let _ = write!(e.message, " (parameter ${n})");
    e.into()
}

/// A value's error converting to `dt`, shown as `shown`.
fn conv(kind: ConvErr, dt: &DataType, shown: &str, n: usize) -> SqlError {
    at_param(value_error(kind, dt, shown.as_bytes()), n)
}

/// Decode parameter `n` (1-based), of wire form `wire`, from `bytes`.
fn decode(wire: Wire, binary: bool, bytes: &[u8], n: usize) -> Result<Value, SqlError> {
    if binary {
        let r = match wire {
            Wire::Int => recv_int(bytes).map(Value::Int),
            Wire::Float => recv_f64(bytes).map(Value::Float),
            Wire::Numeric => recv_numeric_text(bytes).map(Value::Numeric),
            Wire::Text => std::str::from_utf8(bytes)
                .map(|s| Value::Text(s.to_string()))
                .map_err(|_| ConvErr::Encoding),
            Wire::Bool => recv_bool(bytes).map(Value::Bool),
            Wire::Date => recv_date(bytes).map(Value::Date),
            Wire::Timestamp | Wire::TimestampTz => recv_timestamp(bytes).map(Value::Timestamp),
            Wire::Bytea => Ok(Value::Bytes(bytes.to_vec())),
        };
        return r.map_err(|kind| match kind {
            ConvErr::Invalid => SqlError::user(
                "22P03",
                format!(
                    "incorrect binary data format in bind parameter {n} ({} bytes for type {})",
                    bytes.len(),
                    wire_name(wire)
                ),
            ),
            ConvErr::Range => SqlError::user(
                if matches!(wire, Wire::Date | Wire::Timestamp | Wire::TimestampTz) {
                    "22008"
                } else {
                    "22003"
                },
                format!("{} out of range in bind parameter {n}", wire_name(wire)),
            ),
            ConvErr::Encoding => at_param(value_error(kind, &DataType::Utf8, bytes), n),
        });
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| at_param(value_error(ConvErr::Encoding, &DataType::Utf8, bytes), n))?;
    let micros = |with_tz: bool, dt: &DataType| {
        let (secs, nanos) = parse_timestamp(bytes, with_tz).map_err(|k| conv(k, dt, text, n))?;
        timestamp_in_unit(secs, nanos, TimeUnit::Microsecond).map_err(|k| conv(k, dt, text, n))
    };
    Ok(match wire {
        Wire::Int => Value::Int(parse_i64(bytes).map_err(|k| conv(k, &DataType::Int64, text, n))?),
        Wire::Float => {
            Value::Float(parse_f64(bytes).map_err(|k| conv(k, &DataType::Float64, text, n))?)
        }
        Wire::Numeric => Value::Numeric(text.trim().to_string()),
        Wire::Text => Value::Text(text.to_string()),
        Wire::Bool => {
            Value::Bool(parse_bool(bytes).map_err(|k| conv(k, &DataType::Boolean, text, n))?)
        }
        Wire::Date => {
            Value::Date(parse_date(text).map_err(|k| conv(k, &DataType::Date32, text, n))?)
        }
        Wire::Timestamp => Value::Timestamp(micros(false, &timestamp_type(false))?),
        Wire::TimestampTz => Value::Timestamp(micros(true, &timestamp_type(true))?),
        Wire::Bytea => {
            let mut out = Vec::new();
            parse_bytea(bytes, &mut out).map_err(|k| conv(k, &DataType::Binary, text, n))?;
            Value::Bytes(out)
        }
    })
}

fn timestamp_type(tz: bool) -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, tz.then(|| "+00:00".into()))
}

/// A date's input: `YYYY-MM-DD`, or a timestamp whose time is dropped (as
/// PostgreSQL's date input takes one).
fn parse_date(text: &str) -> Result<i32, ConvErr> {
    match parse_date_fast(text.as_bytes()) {
        Ok(d) => Ok(d),
        Err(e) => match parse_timestamp(text.as_bytes(), false) {
            Ok((secs, _)) => i32::try_from(secs.div_euclid(86_400)).map_err(|_| ConvErr::Range),
            Err(_) => Err(e),
        },
    }
}

/// A value as PostgreSQL writes it as text.
fn text_of(v: &Value) -> String {
    let mut s = String::new();
    match v {
        Value::Null => {}
        Value::Int(i) => s = i.to_string(),
        Value::Float(f) => write_pg_float8(&mut s, *f),
        Value::Numeric(t) | Value::Text(t) => s = t.clone(),
        Value::Bool(b) => s = b.to_string(),
        Value::Date(d) => write_date(&mut s, *d as i64),
        Value::Timestamp(m) => write_timestamp(&mut s, *m, TimeUnit::Microsecond, false),
        Value::Bytes(b) => {
            s.push_str("\\x");
            for x in b {
                let _ = write!(s, "{x:02x}");
            }
        }
    }
    s
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "unknown",
        Value::Int(_) => "integer",
        Value::Float(_) => "double precision",
        Value::Numeric(_) => "numeric",
        Value::Text(_) => "text",
        Value::Bool(_) => "boolean",
        Value::Date(_) => "date",
        Value::Timestamp(_) => "timestamp",
        Value::Bytes(_) => "bytea",
    }
}

fn is_special(t: &str) -> bool {
    let t = t.trim_start_matches(['-', '+']);
    t.eq_ignore_ascii_case("nan") || t.eq_ignore_ascii_case("infinity")
}

/// `v` as a whole number, if it is one (None: it has a fraction).
fn whole(v: &Value, dt: &DataType, n: usize) -> Result<Option<i128>, SqlError> {
    let shown = text_of(v);
    match v {
        Value::Int(i) => Ok(Some(*i as i128)),
        Value::Float(f) if !f.is_finite() => Err(conv(ConvErr::Range, dt, &shown, n)),
        Value::Float(f) if f.fract() != 0.0 => Ok(None),
        Value::Float(f) if f.abs() >= 1e20 => Err(conv(ConvErr::Range, dt, &shown, n)),
        Value::Float(f) => Ok(Some(*f as i128)),
        Value::Numeric(t) if is_special(t) => Err(conv(ConvErr::Range, dt, &shown, n)),
        Value::Numeric(t) => {
            // Exact to 18 places: any value with a fraction is told apart.
            let x = parse_decimal(t.as_bytes(), 38, 18).map_err(|k| conv(k, dt, t, n))?;
            const E18: i128 = 1_000_000_000_000_000_000;
            Ok((x % E18 == 0).then_some(x / E18))
        }
        Value::Text(t) => {
            let i = parse_i64(t.as_bytes()).map_err(|k| conv(k, dt, t, n))?;
            Ok(Some(i as i128))
        }
        _ => Err(mismatch(v, dt, n)),
    }
}

fn mismatch(v: &Value, dt: &DataType, n: usize) -> SqlError {
    SqlError::user(
        "42804",
        format!(
            "parameter ${n} of type {} cannot be used as {}",
            kind_name(v),
            pg_type_name(dt)
        ),
    )
}

/// `v` converted to `dt`; None: slicedb does not convert to `dt` here.
fn convert(v: Value, dt: &DataType, n: usize) -> Result<Option<ScalarValue>, SqlError> {
    if v == Value::Null {
        return Ok(ScalarValue::try_from(dt)
            .ok()
            .filter(|_| wire_of_arrow(dt).is_some()));
    }
    let shown = text_of(&v);
    let range = |n_: usize| conv(ConvErr::Range, dt, &shown, n_);
    macro_rules! int {
        ($variant:ident, $t:ty) => {{
            let i = whole(&v, dt, n)?.ok_or_else(|| conv(ConvErr::Invalid, dt, &shown, n))?;
            ScalarValue::$variant(Some(<$t>::try_from(i).map_err(|_| range(n))?))
        }};
    }
    let float = |v: &Value| -> Result<f64, SqlError> {
        match v {
            Value::Int(i) => Ok(*i as f64),
            Value::Float(f) => Ok(*f),
            Value::Numeric(t) | Value::Text(t) => {
                parse_f64(t.as_bytes()).map_err(|k| conv(k, dt, t, n))
            }
            _ => Err(mismatch(v, dt, n)),
        }
    };
    let timestamp = |unit: TimeUnit, tz: bool| -> Result<i64, SqlError> {
        let micros = match &v {
            Value::Timestamp(m) => *m,
            Value::Date(d) => *d as i64 * MICROS_PER_DAY,
            Value::Text(t) => {
                let (secs, nanos) =
                    parse_timestamp(t.as_bytes(), tz).map_err(|k| conv(k, dt, t, n))?;
                return timestamp_in_unit(secs, nanos, unit).map_err(|k| conv(k, dt, t, n));
            }
            _ => return Err(mismatch(&v, dt, n)),
        };
        crate::copy::binval::micros_to_unit(micros, unit).map_err(|k| conv(k, dt, &shown, n))
    };
    Ok(Some(match dt {
        DataType::Int8 => int!(Int8, i8),
        DataType::Int16 => int!(Int16, i16),
        DataType::Int32 => int!(Int32, i32),
        DataType::Int64 => int!(Int64, i64),
        DataType::UInt8 => int!(UInt8, u8),
        DataType::UInt16 => int!(UInt16, u16),
        DataType::UInt32 => int!(UInt32, u32),
        DataType::UInt64 => int!(UInt64, u64),
        DataType::Float64 => ScalarValue::Float64(Some(float(&v)?)),
        DataType::Float32 => {
            let f = match &v {
                Value::Text(t) => parse_f32(t.as_bytes()).map_err(|k| conv(k, dt, t, n))?,
                other => {
                    let f = float(other)?;
                    if f.is_finite() && (f as f32).is_infinite() {
                        return Err(range(n));
                    }
                    f as f32
                }
            };
            ScalarValue::Float32(Some(f))
        }
        DataType::Decimal128(p, s) => {
            let text = match &v {
                Value::Int(_) | Value::Float(_) | Value::Numeric(_) | Value::Text(_) => text_of(&v),
                _ => return Err(mismatch(&v, dt, n)),
            };
            if is_special(&text) {
                return Err(range(n));
            }
            let x = parse_decimal(text.as_bytes(), *p, *s).map_err(|k| conv(k, dt, &text, n))?;
            ScalarValue::Decimal128(Some(x), *p, *s)
        }
        DataType::Utf8 => ScalarValue::Utf8(Some(shown)),
        DataType::LargeUtf8 => ScalarValue::LargeUtf8(Some(shown)),
        DataType::Utf8View => ScalarValue::Utf8View(Some(shown)),
        DataType::Boolean => ScalarValue::Boolean(Some(match &v {
            Value::Bool(b) => *b,
            Value::Text(t) => parse_bool(t.as_bytes()).map_err(|k| conv(k, dt, t, n))?,
            _ => return Err(mismatch(&v, dt, n)),
        })),
        DataType::Date32 => ScalarValue::Date32(Some(match &v {
            Value::Date(d) => *d,
            Value::Timestamp(m) => {
                i32::try_from(m.div_euclid(MICROS_PER_DAY)).map_err(|_| range(n))?
            }
            Value::Text(t) => parse_date(t).map_err(|k| conv(k, dt, t, n))?,
            _ => return Err(mismatch(&v, dt, n)),
        })),
        DataType::Timestamp(unit, tz) => {
            let x = Some(timestamp(*unit, tz.is_some())?);
            let tz = tz.clone();
            match unit {
                TimeUnit::Second => ScalarValue::TimestampSecond(x, tz),
                TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(x, tz),
                TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(x, tz),
                TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(x, tz),
            }
        }
        DataType::Binary | DataType::LargeBinary => {
            let b = match v {
                Value::Bytes(b) => b,
                Value::Text(t) => {
                    let mut out = Vec::new();
                    parse_bytea(t.as_bytes(), &mut out).map_err(|k| conv(k, dt, &t, n))?;
                    out
                }
                other => return Err(mismatch(&other, dt, n)),
            };
            if *dt == DataType::Binary {
                ScalarValue::Binary(Some(b))
            } else {
                ScalarValue::LargeBinary(Some(b))
            }
        }
        _ => return Ok(None),
    }))
}

/// A value bound where the statement does not say which type it needs
/// (`SELECT $1`): its own type.
fn natural(v: Value) -> ScalarValue {
    match v {
        Value::Null => ScalarValue::Null,
        Value::Int(i) => ScalarValue::Int64(Some(i)),
        Value::Float(f) => ScalarValue::Float64(Some(f)),
        Value::Numeric(t) => {
            let scale = t.split_once('.').map_or(0, |(_, f)| f.len().min(38) as i8);
            match parse_decimal(t.as_bytes(), 38, scale) {
                Ok(x) => ScalarValue::Decimal128(Some(x), 38, scale),
                Err(_) => ScalarValue::Float64(t.parse().ok()),
            }
        }
        Value::Text(t) => ScalarValue::Utf8(Some(t)),
        Value::Bool(b) => ScalarValue::Boolean(Some(b)),
        Value::Date(d) => ScalarValue::Date32(Some(d)),
        Value::Timestamp(m) => ScalarValue::TimestampMicrosecond(Some(m), None),
        Value::Bytes(b) => ScalarValue::Binary(Some(b)),
    }
}

/// Parameter `i` (0-based) of `portal` decoded; None: of a type this
/// module does not read. `target` is the type the statement needs, if known.
fn param<S>(
    portal: &Portal<S>,
    i: usize,
    target: Option<&DataType>,
) -> Result<Option<Value>, SqlError> {
    let Some(bytes) = portal.parameters.get(i).cloned().flatten() else {
        return Ok(Some(Value::Null));
    };
    let declared = portal.statement.parameter_types.get(i).cloned().flatten();
    let binary = portal.parameter_format.is_binary(i);
    let wire = match declared.as_ref() {
        Some(t) if *t != Type::UNKNOWN => wire_of_type(t),
        // No declared type: text is read as the needed type's input;
        // binary is that type's binary form.
        _ if !binary => Some(Wire::Text),
        _ => target.and_then(wire_of_arrow),
    };
    let Some(wire) = wire else { return Ok(None) };
    decode(wire, binary, &bytes, i + 1).map(Some)
}

/// The portal with its parameters converted and put in the plan as
/// literals (and none left to bind), or None when it has no parameters or
/// one of a type this module does not handle (datafusion-postgres then
/// binds them as it does).
pub fn bind(portal: &Portal<Planned>) -> Result<Option<Portal<Planned>>, SqlError> {
    let (sql, Some((statement, plan))) = &portal.statement.statement else {
        return Ok(None);
    };
    if portal.parameter_len() == 0 {
        return Ok(None);
    }
    let types: HashMap<String, Option<DataType>> = plan.get_parameter_types()?;
    let mut values = Vec::with_capacity(portal.parameter_len());
    for i in 0..portal.parameter_len() {
        let target = types.get(&format!("${}", i + 1)).cloned().flatten();
        let Some(v) = param(portal, i, target.as_ref())? else {
            return Ok(None);
        };
        let scalar = match &target {
            Some(dt) => match convert(v, dt, i + 1)? {
                Some(s) => s,
                None => return Ok(None),
            },
            None => natural(v),
        };
        values.push(scalar);
    }
    let plan = plan
        .clone()
        .replace_params_with_values(&ParamValues::from(values))?;
    let mut bound = Portal::default();
    bound.name = portal.name.clone();
    bound.statement = Arc::new(StoredStatement::new(
        portal.statement.id.clone(),
        (sql.clone(), Some((statement.clone(), plan))),
        vec![],
    ));
    bound.result_column_format = portal.result_column_format.clone();
    bound.state = portal.state.clone();
    Ok(Some(bound))
}

/// A value as a SQL literal of its type.
fn literal(v: &Value) -> Result<Expr, SqlError> {
    let quoted = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let sql = match v {
        Value::Null => "NULL".to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) if f.is_finite() => format!("CAST({f:?} AS DOUBLE PRECISION)"),
        Value::Float(f) => format!("CAST('{f}' AS DOUBLE PRECISION)"),
        Value::Numeric(t) if is_special(t) => format!("CAST({} AS DOUBLE PRECISION)", quoted(t)),
        Value::Numeric(t) => {
            let scale = t.split_once('.').map_or(0, |(_, f)| f.len().min(38));
            format!("CAST({} AS NUMERIC(38, {scale}))", quoted(t))
        }
        Value::Text(t) => quoted(t),
        Value::Bool(b) => b.to_string(),
        Value::Date(_) => format!("DATE {}", quoted(&text_of(v))),
        Value::Timestamp(_) => format!("TIMESTAMP {}", quoted(&text_of(v))),
        Value::Bytes(b) => {
            let mut hex = String::with_capacity(3 + 2 * b.len());
            hex.push_str("X'");
            for x in b {
                let _ = write!(hex, "{x:02x}");
            }
            hex.push('\'');
            hex
        }
    };
    Ok(Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)?
        .parse_expr()?)
}

/// Put the parameters of `portal` into `statement` (one slicedb runs
/// itself) as literals of the types the client declared (text and
/// parameters of no declared type as string literals, which DataFusion
/// converts where the statement needs another type). `types` are the
/// types the server described (`$1` ...), by which binary parameters of
/// no declared type are read.
pub fn substitute(
    statement: &mut Statement,
    portal: &Portal<Planned>,
    types: &HashMap<String, Option<DataType>>,
) -> Result<(), SqlError> {
    let mut literals = Vec::with_capacity(portal.parameter_len());
    for i in 0..portal.parameter_len() {
        let target = types.get(&format!("${}", i + 1)).cloned().flatten();
        let v = param(portal, i, target.as_ref())?.ok_or_else(|| {
            SqlError::not_supported(format!(
                "parameter ${} of type {} in this statement",
                i + 1,
                portal.statement.parameter_types[i]
                    .as_ref()
                    .map_or("unknown", |t| t.name())
            ))
        })?;
        literals.push(literal(&v)?);
    }
    let mut missing = None;
    let _ = visit_expressions_mut(statement, |e| {
        if let Expr::Value(v) = e {
            if let SqlValue::Placeholder(p) = &v.value {
                let at = p
                    .strip_prefix('$')
                    .and_then(|x| x.parse::<usize>().ok())
                    .and_then(|k| k.checked_sub(1));
                match at.and_then(|k| literals.get(k)) {
                    Some(lit) => *e = lit.clone(),
                    None => {
                        missing = Some(p.clone());
                        return ControlFlow::Break(());
                    }
                }
            }
        }
        ControlFlow::Continue(())
    });
    match missing {
        Some(p) => Err(SqlError::user(
            "08P01",
            format!(
                "bind message supplies {} parameters, but {p} is used",
                literals.len()
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use datafusion::arrow::array::{AsArray, Int32Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Field, Int32Type, Schema};
    use datafusion::prelude::SessionContext;
    use pgwire::api::portal::Format;

    fn text(v: &str, wire: Wire) -> Result<Value, SqlError> {
        decode(wire, false, v.as_bytes(), 1)
    }

    fn state(e: SqlError) -> (&'static str, String) {
        match e {
            SqlError::User { sqlstate, message } => (sqlstate, message),
            other => panic!("not a user error: {other}"),
        }
    }

    fn to(v: Value, dt: DataType) -> Result<ScalarValue, (&'static str, String)> {
        convert(v, &dt, 1)
            .map(|s| s.expect("a converted type"))
            .map_err(state)
    }

    #[test]
    fn values_decode_from_text_and_binary() {
        assert_eq!(text(" -42 ", Wire::Int).unwrap(), Value::Int(-42));
        assert_eq!(text("2.5e1", Wire::Float).unwrap(), Value::Float(25.0));
        assert_eq!(text("t", Wire::Bool).unwrap(), Value::Bool(true));
        assert_eq!(text("2024-01-02", Wire::Date).unwrap(), Value::Date(19724));
        assert_eq!(
            text("2024-01-02 03:04:05+02", Wire::TimestampTz).unwrap(),
            Value::Timestamp(1_704_157_445_000_000)
        );
        assert_eq!(
            text("2024-01-02 03:04:05+02", Wire::Timestamp).unwrap(),
            Value::Timestamp(1_704_164_645_000_000)
        );
        assert_eq!(
            text("\\x00ff", Wire::Bytea).unwrap(),
            Value::Bytes(vec![0, 255])
        );
        let bin = |w: Wire, b: &[u8]| decode(w, true, b, 2);
        assert_eq!(bin(Wire::Int, &7i16.to_be_bytes()).unwrap(), Value::Int(7));
        assert_eq!(
            bin(Wire::Float, &1.5f32.to_be_bytes()).unwrap(),
            Value::Float(1.5)
        );
        assert_eq!(
            bin(Wire::Timestamp, &0i64.to_be_bytes()).unwrap(),
            Value::Timestamp(946_684_800_000_000)
        );
        // 12.5 as numeric: 2 digits, weight 0, dscale 1: 0012 5000
        let num = [0, 2, 0, 0, 0, 0, 0, 1, 0, 12, 0x13, 0x88];
        assert_eq!(
            bin(Wire::Numeric, &num).unwrap(),
            Value::Numeric("12.5".into())
        );
        // Errors: SQLSTATE and the parameter's number.
        let (s, m) = state(text("abc", Wire::Int).unwrap_err());
        assert_eq!(
            (s, m.as_str()),
            (
                "22P02",
                "invalid input syntax for type bigint: \"abc\" (parameter $1)"
            )
        );
        assert_eq!(
            state(text("99999999999999999999", Wire::Int).unwrap_err()).0,
            "22003"
        );
        assert_eq!(
            state(text("2024-13-01", Wire::Date).unwrap_err()).0,
            "22008"
        );
        assert_eq!(state(text("soon", Wire::Timestamp).unwrap_err()).0, "22007");
        let (s, m) = state(bin(Wire::Int, &[1, 2, 3]).unwrap_err());
        assert_eq!(
            (s, m.as_str()),
            (
                "22P03",
                "incorrect binary data format in bind parameter 2 (3 bytes for type integer)"
            )
        );
        assert_eq!(
            state(bin(Wire::Date, &i32::MAX.to_be_bytes()).unwrap_err()).0,
            "22008"
        );
        assert_eq!(state(bin(Wire::Text, b"\xff").unwrap_err()).0, "22021");
        assert_eq!(
            state(decode(Wire::Text, false, b"a\xff", 1).unwrap_err()).0,
            "22021"
        );
    }

    #[test]
    fn values_convert_with_postgres_casts() {
        let dec = |x: i128| ScalarValue::Decimal128(Some(x), 12, 2);
        let d12 = DataType::Decimal128(12, 2);
        // numbers to numeric, rounded half away from zero
        assert_eq!(to(Value::Int(7), d12.clone()), Ok(dec(700)));
        assert_eq!(to(Value::Float(0.1 + 0.2), d12.clone()), Ok(dec(30)));
        assert_eq!(to(Value::Float(-1.005), d12.clone()), Ok(dec(-101)));
        assert_eq!(
            to(Value::Numeric("1.235".into()), d12.clone()),
            Ok(dec(124))
        );
        assert_eq!(to(Value::Text("-0.5".into()), d12.clone()), Ok(dec(-50)));
        assert_eq!(to(Value::Float(1e20), d12.clone()).unwrap_err().0, "22003");
        assert_eq!(
            to(Value::Float(f64::NAN), d12.clone()).unwrap_err().0,
            "22003"
        );
        assert_eq!(
            to(Value::Numeric("NaN".into()), d12.clone()).unwrap_err().0,
            "22003"
        );
        assert_eq!(
            to(Value::Text("x".into()), d12.clone()).unwrap_err().0,
            "22P02"
        );
        // integers between widths; whole numbers only
        assert_eq!(
            to(Value::Int(-5), DataType::Int16),
            Ok(ScalarValue::Int16(Some(-5)))
        );
        assert_eq!(
            to(Value::Float(3.0), DataType::Int64),
            Ok(ScalarValue::Int64(Some(3)))
        );
        assert_eq!(
            to(Value::Numeric("42.000".into()), DataType::Int32),
            Ok(ScalarValue::Int32(Some(42)))
        );
        assert_eq!(
            to(Value::Text("12".into()), DataType::UInt8),
            Ok(ScalarValue::UInt8(Some(12)))
        );
        let (s, m) = to(Value::Int(70_000), DataType::Int16).unwrap_err();
        assert_eq!(
            (s, m.as_str()),
            (
                "22003",
                "value \"70000\" is out of range for type smallint (parameter $1)"
            )
        );
        assert_eq!(
            to(Value::Float(1.5), DataType::Int32).unwrap_err().0,
            "22P02"
        );
        assert_eq!(
            to(Value::Numeric("0.001".into()), DataType::Int32)
                .unwrap_err()
                .0,
            "22P02"
        );
        assert_eq!(
            to(Value::Float(f64::INFINITY), DataType::Int64)
                .unwrap_err()
                .0,
            "22003"
        );
        assert_eq!(to(Value::Int(-1), DataType::UInt32).unwrap_err().0, "22003");
        let (s, m) = to(Value::Bool(true), DataType::Int32).unwrap_err();
        assert_eq!(
            (s, m.as_str()),
            (
                "42804",
                "parameter $1 of type boolean cannot be used as integer"
            )
        );
        // floats
        assert_eq!(
            to(Value::Int(3), DataType::Float64),
            Ok(ScalarValue::Float64(Some(3.0)))
        );
        assert_eq!(
            to(Value::Numeric("2.5".into()), DataType::Float32),
            Ok(ScalarValue::Float32(Some(2.5)))
        );
        assert_eq!(
            to(Value::Float(1e300), DataType::Float32).unwrap_err().0,
            "22003"
        );
        // text to every type, and every type to text
        assert_eq!(
            to(Value::Text("yes".into()), DataType::Boolean),
            Ok(ScalarValue::Boolean(Some(true)))
        );
        assert_eq!(
            to(Value::Text("2024-01-02".into()), DataType::Date32),
            Ok(ScalarValue::Date32(Some(19724)))
        );
        assert_eq!(
            to(Value::Text("2024-01-02 10:00:00".into()), DataType::Date32),
            Ok(ScalarValue::Date32(Some(19724)))
        );
        let ns = DataType::Timestamp(TimeUnit::Nanosecond, None);
        assert_eq!(
            to(
                Value::Text("1970-01-01 00:00:01.000000001".into()),
                ns.clone()
            ),
            Ok(ScalarValue::TimestampNanosecond(Some(1_000_000_001), None))
        );
        assert_eq!(
            to(Value::Date(1), ns.clone()),
            Ok(ScalarValue::TimestampNanosecond(
                Some(86_400_000_000_000),
                None
            ))
        );
        assert_eq!(
            to(Value::Timestamp(86_400_000_001), DataType::Date32),
            Ok(ScalarValue::Date32(Some(1)))
        );
        assert_eq!(
            to(Value::Timestamp(i64::MAX), ns.clone()).unwrap_err().0,
            "22008"
        );
        assert_eq!(
            to(Value::Text("\\x41".into()), DataType::Binary),
            Ok(ScalarValue::Binary(Some(b"A".to_vec())))
        );
        for (v, want) in [
            (Value::Int(5), "5"),
            (Value::Float(1e20), "1e+20"),
            (Value::Numeric("1.50".into()), "1.50"),
            (Value::Bool(false), "false"),
            (Value::Date(19724), "2024-01-02"),
            (Value::Timestamp(1_500_000), "1970-01-01 00:00:01.5"),
            (Value::Bytes(vec![1, 171]), "\\x01ab"),
        ] {
            assert_eq!(
                to(v, DataType::Utf8),
                Ok(ScalarValue::Utf8(Some(want.into())))
            );
        }
        // NULL of the needed type; types left to datafusion-postgres
        assert_eq!(
            to(Value::Null, DataType::Int16),
            Ok(ScalarValue::Int16(None))
        );
        assert_eq!(
            convert(
                Value::Int(1),
                &DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano),
                1
            )
            .unwrap(),
            None
        );
        assert_eq!(
            natural(Value::Numeric("2.50".into())),
            ScalarValue::Decimal128(Some(250), 38, 2)
        );
    }

    fn portal(
        sql: &str,
        plan: Option<LogicalPlan>,
        types: Vec<Option<Type>>,
        binary: bool,
        params: Vec<Option<&[u8]>>,
    ) -> Portal<Planned> {
        let statement = crate::dialect::parse_statements(sql)
            .unwrap()
            .remove(0)
            .statement;
        let mut p = Portal::default();
        p.statement = Arc::new(StoredStatement::new(
            "s".into(),
            (sql.to_string(), plan.map(|pl| (statement, pl))),
            types,
        ));
        p.parameter_format = if binary {
            Format::UnifiedBinary
        } else {
            Format::UnifiedText
        };
        p.parameters = params
            .into_iter()
            .map(|b| b.map(Bytes::copy_from_slice))
            .collect();
        p
    }

    /// A planned statement gets its parameters as literals of the types it
    /// needs, and runs with no parameter left.
    #[test]
    fn bind_puts_converted_values_into_the_plan() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let ctx = SessionContext::new();
            let schema = Arc::new(Schema::new(vec![
                Field::new("k", DataType::Int32, false),
                Field::new("n", DataType::Decimal128(10, 2), true),
                Field::new("s", DataType::Utf8, true),
            ]));
            let batch = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Int32Array::from(vec![1, 2, 3])),
                    Arc::new(
                        datafusion::arrow::array::Decimal128Array::from(vec![
                            Some(150),
                            Some(250),
                            None,
                        ])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                    ),
                    Arc::new(StringArray::from(vec!["a", "b", "c"])),
                ],
            )
            .unwrap();
            ctx.register_batch("t", batch).unwrap();
            let sql = "SELECT k FROM t WHERE n >= $1 AND k <= $2 AND s <> $3 ORDER BY k";
            let plan = ctx.state().create_logical_plan(sql).await.unwrap();
            // An int8 for the numeric (binary), a float8 for the int, and
            // text of no declared type.
            let p = portal(
                sql,
                Some(plan.clone()),
                vec![Some(Type::INT8), Some(Type::FLOAT8), None],
                true,
                vec![
                    Some(&1i64.to_be_bytes()),
                    Some(&3.0f64.to_be_bytes()),
                    Some(b"c"),
                ],
            );
            let bound = bind(&p).unwrap().expect("bound");
            assert!(bound.parameters.is_empty());
            let (_, Some((_, bound_plan))) = &bound.statement.statement else {
                panic!("no plan")
            };
            assert!(bound_plan.get_parameter_types().unwrap().is_empty());
            let rows = ctx
                .execute_logical_plan(bound_plan.clone())
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let ks: Vec<i32> = rows
                .iter()
                .flat_map(|b| b.column(0).as_primitive::<Int32Type>().values().to_vec())
                .collect();
            assert_eq!(ks, vec![1, 2]);
            // A value that does not fit fails the statement with its SQLSTATE.
            let p = portal(
                sql,
                Some(plan.clone()),
                vec![Some(Type::NUMERIC), None, None],
                false,
                vec![Some(b"123456789012"), Some(b"1"), Some(b"x")],
            );
            assert_eq!(state(bind(&p).unwrap_err()).0, "22003");
            // A type this module does not read is left to datafusion-postgres.
            let p = portal(
                sql,
                Some(plan.clone()),
                vec![Some(Type::INTERVAL), None, None],
                false,
                vec![Some(b"1 day"), Some(b"1"), Some(b"x")],
            );
            assert!(bind(&p).unwrap().is_none());
            // No parameters, or no plan: nothing to do.
            assert!(bind(&portal("SELECT 1", Some(plan), vec![], false, vec![]))
                .unwrap()
                .is_none());
        });
    }

    #[test]
    fn substitute_writes_literals_into_a_statement() {
        let sql = "UPDATE t SET a = $1, b = $2, c = $3, d = $4 WHERE k = $5 AND e = $6 AND f = $7 AND g IS DISTINCT FROM $8";
        let p = portal(
            sql,
            None,
            vec![
                Some(Type::INT4),
                Some(Type::FLOAT8),
                Some(Type::NUMERIC),
                None,
                Some(Type::DATE),
                Some(Type::BYTEA),
                Some(Type::BOOL),
                Some(Type::TEXT),
            ],
            false,
            vec![
                Some(b"-3"),
                Some(b"1.5"),
                Some(b"12.50"),
                Some(b"it's"),
                Some(b"2024-01-02"),
                Some(b"\\x00ff"),
                Some(b"f"),
                None,
            ],
        );
        let mut st = crate::dialect::parse_statements(sql)
            .unwrap()
            .remove(0)
            .statement;
        substitute(&mut st, &p, &HashMap::new()).unwrap();
        assert_eq!(
            st.to_string(),
            "UPDATE t SET a = -3, b = CAST(1.5 AS DOUBLE PRECISION), c = CAST('12.50' AS NUMERIC(38,2)), d = 'it''s' \
             WHERE k = DATE '2024-01-02' AND e = X'00ff' AND f = false AND g IS DISTINCT FROM NULL"
        );
        // A placeholder past the parameters given.
        let p = portal(
            "DELETE FROM t WHERE k = $2",
            None,
            vec![None],
            false,
            vec![Some(b"1")],
        );
        let mut st = crate::dialect::parse_statements("DELETE FROM t WHERE k = $2")
            .unwrap()
            .remove(0)
            .statement;
        assert_eq!(
            state(substitute(&mut st, &p, &HashMap::new()).unwrap_err()).0,
            "08P01"
        );
    }
}
