//! Filters pushed down to a scan: evaluation over a batch with SQL
//! three-valued logic, and zone-map pruning.
//!
//! The contract between the two: [`Predicate::may_match`] returns `false`
//! only if no row of a block can make [`Predicate::evaluate`] return TRUE.
//! Both compare values exactly (integers, decimals and times as exact numbers,
//! floats in IEEE total order as Arrow's kernels do, strings bytewise), so a
//! pruned block never held a matching row. When in doubt, `may_match` says
//! `true`.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::*;
use arrow::buffer::BooleanBuffer;
use arrow::compute::kernels::{boolean, cmp};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::block::{ZoneMap, ZoneValue};
use crate::{EngineError, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Literal {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Utf8(String),
    /// Days since the epoch.
    Date32(i32),
    /// `value` unscaled: the number is `value * 10^-scale`.
    Decimal128 {
        value: i128,
        precision: u8,
        scale: i8,
    },
    /// Microseconds since the epoch, UTC.
    TimestampMicros(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl CmpOp {
    /// The operator selecting exactly the rows `NOT (x op v)` selects.
    pub fn negate(self) -> CmpOp {
        match self {
            CmpOp::Eq => CmpOp::NotEq,
            CmpOp::NotEq => CmpOp::Eq,
            CmpOp::Lt => CmpOp::GtEq,
            CmpOp::LtEq => CmpOp::Gt,
            CmpOp::Gt => CmpOp::LtEq,
            CmpOp::GtEq => CmpOp::Lt,
        }
    }
}

/// A filter over a table's user columns (`column` indexes the user schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Predicate {
    Compare {
        column: usize,
        op: CmpOp,
        value: Literal,
    },
    And(Vec<Predicate>),
    Or(Vec<Predicate>),
    Not(Box<Predicate>),
    IsNull(usize),
    IsNotNull(usize),
    InList {
        column: usize,
        values: Vec<Literal>,
        negated: bool,
    },
    /// A long integer `InList` made ready by [`Predicate::prepared`] (a
    /// node's scan, never the wire: it is sent as the list it came from).
    #[serde(skip)]
    IntSet(Arc<IntSet>),
}

/// An integer IN list as a set and its range, built once per scan.
#[derive(Debug, Clone, PartialEq)]
pub struct IntSet {
    pub column: usize,
    pub negated: bool,
    /// The list as it came (for the wire, and for a non-integer column).
    pub values: Vec<Literal>,
    members: Members,
    lo: i64,
    hi: i64,
}

/// How an [`IntSet`] answers "is v one of the keys": a bit per value of
/// its range when the range is compact (a join's keys usually are: one bit
/// test per row), else a hash set.
#[derive(Debug, Clone, PartialEq)]
enum Members {
    /// Bit `v - lo` is set for each key `v`.
    Bits(Vec<u64>),
    Hash(std::collections::HashSet<i64, IntHash>),
}

/// The widest range an [`IntSet`] keeps as a bitmap: 2^26 bits, 8 MiB,
/// and at most [`MAX_BITS_PER_KEY`] bits per key (a hash set takes about
/// 128 bits per key).
const MAX_BITMAP_RANGE: u64 = 1 << 26;
const MAX_BITS_PER_KEY: u64 = 256;

impl Members {
    fn new(ints: &[i64], lo: i64, hi: i64) -> Members {
        let range = (hi as i128 - lo as i128 + 1) as u128;
        let compact = range <= MAX_BITMAP_RANGE as u128
            && range <= (ints.len() as u128).max(1) * MAX_BITS_PER_KEY as u128;
        if !ints.is_empty() && compact {
            let mut bits = vec![0u64; (range as usize).div_ceil(64)];
            for &v in ints {
                let i = (v - lo) as usize;
                bits[i / 64] |= 1 << (i % 64);
            }
            Members::Bits(bits)
        } else {
            Members::Hash(ints.iter().copied().collect())
        }
    }
}

impl IntSet {
    fn as_list(&self) -> Predicate {
        Predicate::InList {
            column: self.column,
            values: self.values.clone(),
            negated: self.negated,
        }
    }

    fn with(&self, column: usize, negated: bool) -> Predicate {
        Predicate::IntSet(Arc::new(IntSet {
            column,
            negated,
            ..self.clone()
        }))
    }
}

fn invalid(m: impl Into<String>) -> EngineError {
    EngineError::InvalidRequest(m.into())
}

impl Predicate {
    /// The same predicate, ready to test many batches: IN lists of more
    /// than a few integers become hash sets ([`Predicate::IntSet`]). A join's
    /// runtime filter can carry thousands of keys.
    pub fn prepared(self) -> Predicate {
        match self {
            Predicate::InList {
                column,
                values,
                negated,
            } if values.len() > SHORT_LIST => match int_values(&values) {
                Some(ints) => {
                    let lo = ints.iter().copied().min().unwrap_or(0);
                    let hi = ints.iter().copied().max().unwrap_or(0);
                    Predicate::IntSet(Arc::new(IntSet {
                        column,
                        negated,
                        members: Members::new(&ints, lo, hi),
                        lo,
                        hi,
                        values,
                    }))
                }
                None => Predicate::InList {
                    column,
                    values,
                    negated,
                },
            },
            Predicate::And(items) => {
                Predicate::And(items.into_iter().map(Predicate::prepared).collect())
            }
            Predicate::Or(items) => {
                Predicate::Or(items.into_iter().map(Predicate::prepared).collect())
            }
            Predicate::Not(p) => Predicate::Not(Box::new(p.prepared())),
            p => p,
        }
    }

    /// Evaluate over `batch` (columns in user schema order). NULL in the
    /// result means "not selected".
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let n = batch.num_rows();
        let column = |c: usize| -> Result<&ArrayRef> {
            batch.columns().get(c).ok_or_else(|| {
                invalid(format!(
                    "predicate column {c} out of range ({} columns)",
                    batch.num_columns()
                ))
            })
        };
        Ok(match self {
            Predicate::Compare {
                column: c,
                op,
                value,
            } => compare(column(*c)?, *op, value)?,
            Predicate::And(items) => {
                let Some((first, rest)) = items.split_first() else {
                    return Ok(BooleanArray::new(BooleanBuffer::new_set(n), None));
                };
                let mut acc = first.evaluate(batch)?;
                for p in rest {
                    // Nothing left to select (no row true, none unknown):
                    // the rest cannot change that.
                    if acc.null_count() == 0 && acc.true_count() == 0 {
                        break;
                    }
                    acc = boolean::and_kleene(&acc, &p.evaluate(batch)?)?;
                }
                acc
            }
            Predicate::Or(items) => {
                let Some((first, rest)) = items.split_first() else {
                    return Ok(BooleanArray::new(BooleanBuffer::new_unset(n), None));
                };
                let mut acc = first.evaluate(batch)?;
                for p in rest {
                    acc = boolean::or_kleene(&acc, &p.evaluate(batch)?)?;
                }
                acc
            }
            Predicate::Not(p) => boolean::not(&p.evaluate(batch)?)?,
            Predicate::IsNull(c) => boolean::is_null(column(*c)?.as_ref())?,
            Predicate::IsNotNull(c) => boolean::is_not_null(column(*c)?.as_ref())?,
            Predicate::InList {
                column: c,
                values,
                negated,
            } => {
                let col = column(*c)?;
                let mut acc: Option<BooleanArray> = None;
                for v in values {
                    let eq = compare(col, CmpOp::Eq, v)?;
                    acc = Some(match acc {
                        None => eq,
                        Some(a) => boolean::or_kleene(&a, &eq)?,
                    });
                }
                let acc =
                    acc.unwrap_or_else(|| BooleanArray::new(BooleanBuffer::new_unset(n), None));
                if *negated {
                    boolean::not(&acc)?
                } else {
                    acc
                }
            }
            Predicate::IntSet(s) => match int_member(column(s.column)?, s) {
                Some(member) if s.negated => boolean::not(&member)?,
                Some(member) => member,
                None => s.as_list().evaluate(batch)?,
            },
        })
    }

    /// The same filter with NOT pushed down to the leaves. Exact under SQL
    /// three-valued logic (De Morgan holds in Kleene logic, and
    /// `NOT (x < v)` selects the same rows as `x >= v`).
    pub fn negate(&self) -> Predicate {
        match self {
            Predicate::Compare { column, op, value } => Predicate::Compare {
                column: *column,
                op: op.negate(),
                value: value.clone(),
            },
            Predicate::And(items) => Predicate::Or(items.iter().map(Predicate::negate).collect()),
            Predicate::Or(items) => Predicate::And(items.iter().map(Predicate::negate).collect()),
            Predicate::Not(p) => p.as_ref().clone(),
            Predicate::IsNull(c) => Predicate::IsNotNull(*c),
            Predicate::IsNotNull(c) => Predicate::IsNull(*c),
            Predicate::InList {
                column,
                values,
                negated,
            } => Predicate::InList {
                column: *column,
                values: values.clone(),
                negated: !negated,
            },
            Predicate::IntSet(s) => s.with(s.column, !s.negated),
        }
    }

    /// `false` only if the zone maps (one per stored column, user columns
    /// first) prove that no row of the block is selected.
    pub fn may_match(&self, zones: &[ZoneMap]) -> bool {
        match self {
            Predicate::Compare { column, op, value } => match zones.get(*column) {
                Some(z) => compare_may_match(z, *op, value),
                None => true,
            },
            Predicate::And(items) => items.iter().all(|p| p.may_match(zones)),
            Predicate::Or(items) => items.iter().any(|p| p.may_match(zones)),
            Predicate::Not(p) => p.negate().may_match(zones),
            Predicate::IsNull(c) => zones.get(*c).is_none_or(|z| z.null_count > 0),
            Predicate::IsNotNull(c) => zones.get(*c).is_none_or(|z| z.null_count < z.rows),
            Predicate::InList {
                column,
                values,
                negated,
            } => {
                let Some(z) = zones.get(*column) else {
                    return true;
                };
                if *negated {
                    // x NOT IN (a, b) == x <> a AND x <> b
                    values.iter().all(|v| compare_may_match(z, CmpOp::NotEq, v))
                } else {
                    values.iter().any(|v| compare_may_match(z, CmpOp::Eq, v))
                }
            }
            // Does the block's range meet the list's? (NOT IN: in doubt.)
            Predicate::IntSet(s) => {
                s.negated
                    || zones.get(s.column).is_none_or(|z| {
                        compare_may_match(z, CmpOp::GtEq, &Literal::Int(s.lo))
                            && compare_may_match(z, CmpOp::LtEq, &Literal::Int(s.hi))
                    })
            }
        }
    }

    /// Every user column the predicate reads, sorted, without duplicates.
    pub fn columns(&self) -> Vec<usize> {
        let mut out = Vec::new();
        self.collect_columns(&mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    fn collect_columns(&self, out: &mut Vec<usize>) {
        match self {
            Predicate::Compare { column, .. } | Predicate::InList { column, .. } => {
                out.push(*column)
            }
            Predicate::IntSet(s) => out.push(s.column),
            Predicate::IsNull(c) | Predicate::IsNotNull(c) => out.push(*c),
            Predicate::And(items) | Predicate::Or(items) => {
                items.iter().for_each(|p| p.collect_columns(out))
            }
            Predicate::Not(p) => p.collect_columns(out),
        }
    }

    /// The same predicate over another column numbering.
    pub fn remap(&self, f: &dyn Fn(usize) -> usize) -> Predicate {
        match self {
            Predicate::Compare { column, op, value } => Predicate::Compare {
                column: f(*column),
                op: *op,
                value: value.clone(),
            },
            Predicate::And(items) => Predicate::And(items.iter().map(|p| p.remap(f)).collect()),
            Predicate::Or(items) => Predicate::Or(items.iter().map(|p| p.remap(f)).collect()),
            Predicate::Not(p) => Predicate::Not(Box::new(p.remap(f))),
            Predicate::IsNull(c) => Predicate::IsNull(f(*c)),
            Predicate::IsNotNull(c) => Predicate::IsNotNull(f(*c)),
            Predicate::InList {
                column,
                values,
                negated,
            } => Predicate::InList {
                column: f(*column),
                values: values.clone(),
                negated: *negated,
            },
            Predicate::IntSet(s) => s.with(f(s.column), s.negated),
        }
    }
}

// ---------------------------------------------------------------- evaluation

/// IN lists longer than this are tested with a hash set when the column and
/// the values are integers (a join's runtime filter can carry thousands).
const SHORT_LIST: usize = 8;

/// The values as i64, if every one is an integer that fits.
fn int_values(values: &[Literal]) -> Option<Vec<i64>> {
    values
        .iter()
        .map(|v| match v {
            Literal::Int(x) => Some(*x),
            Literal::UInt(x) => i64::try_from(*x).ok(),
            _ => None,
        })
        .collect()
}

/// Whether each row's value of an integer column (signed, or unsigned of
/// at most 32 bits) is in `set`: one bit test or hash lookup per row; NULL
/// where the column is NULL. `None` for any other column type.
fn int_member(col: &ArrayRef, set: &IntSet) -> Option<BooleanArray> {
    fn member<T>(a: &PrimitiveArray<T>, set: &IntSet) -> BooleanArray
    where
        T: arrow::datatypes::ArrowPrimitiveType,
        T::Native: Into<i64>,
    {
        let (lo, hi, values) = (set.lo, set.hi, a.values());
        let bits = match &set.members {
            Members::Bits(b) => BooleanBuffer::collect_bool(a.len(), |i| {
                let v: i64 = values[i].into();
                v >= lo && v <= hi && {
                    let k = (v - lo) as usize;
                    b[k / 64] & (1 << (k % 64)) != 0
                }
            }),
            Members::Hash(h) => {
                BooleanBuffer::collect_bool(a.len(), |i| h.contains(&values[i].into()))
            }
        };
        BooleanArray::new(bits, a.nulls().cloned())
    }
    use arrow::datatypes::*;
    Some(match col.data_type() {
        DataType::Int64 => member(col.as_primitive::<Int64Type>(), set),
        DataType::Int32 => member(col.as_primitive::<Int32Type>(), set),
        DataType::Int16 => member(col.as_primitive::<Int16Type>(), set),
        DataType::Int8 => member(col.as_primitive::<Int8Type>(), set),
        DataType::UInt32 => member(col.as_primitive::<UInt32Type>(), set),
        DataType::UInt16 => member(col.as_primitive::<UInt16Type>(), set),
        DataType::UInt8 => member(col.as_primitive::<UInt8Type>(), set),
        _ => return None,
    })
}

/// A multiplicative hash for integer keys (SipHash is several times slower
/// and its DoS resistance buys nothing for a filter's own values).
#[derive(Debug, Default, Clone, Copy)]
pub struct IntHash;

impl std::hash::BuildHasher for IntHash {
    type Hasher = IntHasher;
    fn build_hasher(&self) -> IntHasher {
        IntHasher(0)
    }
}

pub struct IntHasher(u64);

impl std::hash::Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_i64(&mut self, v: i64) {
        // Fold the high bits down: hashbrown takes its bucket from the top
        // bits and its tag from the top seven.
        let h = (v as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 29);
    }
}

fn compare(col: &ArrayRef, op: CmpOp, value: &Literal) -> Result<BooleanArray> {
    if matches!(value, Literal::Null) {
        return Ok(BooleanArray::new_null(col.len()));
    }
    if let Literal::Decimal128 {
        value: v,
        precision,
        scale,
    } = value
    {
        decimal(*v, *precision, *scale)?; // validates precision, scale and range
    }
    let (l, r) = coerce(col, value)?;
    let r = Scalar::new(r);
    let out = match op {
        CmpOp::Eq => cmp::eq(&l, &r),
        CmpOp::NotEq => cmp::neq(&l, &r),
        CmpOp::Lt => cmp::lt(&l, &r),
        CmpOp::LtEq => cmp::lt_eq(&l, &r),
        CmpOp::Gt => cmp::gt(&l, &r),
        CmpOp::GtEq => cmp::gt_eq(&l, &r),
    };
    out.map_err(|e| {
        invalid(format!(
            "cannot compare {} with {value:?}: {e}",
            col.data_type()
        ))
    })
}

fn literal_array(lit: &Literal) -> Result<ArrayRef> {
    Ok(match lit {
        Literal::Null => new_null_array(&DataType::Null, 1),
        Literal::Bool(b) => Arc::new(BooleanArray::from(vec![*b])),
        Literal::Int(v) => Arc::new(Int64Array::from(vec![*v])),
        Literal::UInt(v) => Arc::new(UInt64Array::from(vec![*v])),
        Literal::Float(v) => Arc::new(Float64Array::from(vec![*v])),
        Literal::Utf8(s) => Arc::new(StringArray::from(vec![s.as_str()])),
        Literal::Date32(d) => Arc::new(Date32Array::from(vec![*d])),
        Literal::Decimal128 {
            value,
            precision,
            scale,
        } => decimal(*value, *precision, *scale)?,
        Literal::TimestampMicros(v) => Arc::new(TimestampMicrosecondArray::from(vec![*v])),
    })
}

fn decimal(value: i128, precision: u8, scale: i8) -> Result<ArrayRef> {
    let a = Decimal128Array::from(vec![value])
        .with_precision_and_scale(precision, scale)
        .map_err(|e| invalid(format!("bad decimal literal: {e}")))?;
    if a.validate_decimal_precision(precision).is_err() {
        return Err(invalid(format!(
            "decimal literal {value} does not fit precision {precision}"
        )));
    }
    Ok(Arc::new(a))
}

/// Strict cast of a literal: a value that does not convert is an error, never NULL.
fn cast_literal(lit: &Literal, to: &DataType) -> Result<ArrayRef> {
    let a = literal_array(lit)?;
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    let out = cast_with_options(&a, to, &opts)
        .map_err(|e| invalid(format!("literal {lit:?} cannot be converted to {to}: {e}")))?;
    if out.null_count() > 0 {
        return Err(invalid(format!(
            "literal {lit:?} cannot be converted to {to}"
        )));
    }
    Ok(out)
}

/// Widen a column for an exact comparison (never loses values).
fn cast_column(col: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    arrow::compute::cast(col, to)
        .map_err(|e| invalid(format!("cannot compare {} as {to}: {e}", col.data_type())))
}

fn is_int(dt: &DataType) -> bool {
    dt.is_integer()
}

fn int_range(dt: &DataType) -> Option<(i128, i128)> {
    Some(match dt {
        DataType::Int8 => (i8::MIN as i128, i8::MAX as i128),
        DataType::Int16 => (i16::MIN as i128, i16::MAX as i128),
        DataType::Int32 => (i32::MIN as i128, i32::MAX as i128),
        DataType::Int64 => (i64::MIN as i128, i64::MAX as i128),
        DataType::UInt8 => (0, u8::MAX as i128),
        DataType::UInt16 => (0, u16::MAX as i128),
        DataType::UInt32 => (0, u32::MAX as i128),
        DataType::UInt64 => (0, u64::MAX as i128),
        _ => return None,
    })
}

fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

/// An integer value against an integer column.
fn int_side(col: &ArrayRef, v: i128) -> Result<(ArrayRef, ArrayRef)> {
    let dt = col.data_type();
    let (lo, hi) = int_range(dt).ok_or_else(|| invalid(format!("{dt} is not an integer type")))?;
    if v >= lo && v <= hi {
        let lit = if v >= 0 {
            Literal::UInt(v as u64)
        } else {
            Literal::Int(v as i64)
        };
        return Ok((col.clone(), cast_literal(&lit, dt)?));
    }
    // Out of the column's range: compare both as Decimal128(38, 0), exact.
    let to = DataType::Decimal128(38, 0);
    Ok((cast_column(col, &to)?, decimal(v, 38, 0)?))
}

/// A float value against a numeric column.
fn float_side(col: &ArrayRef, f: f64) -> Result<(ArrayRef, ArrayRef)> {
    match col.data_type() {
        DataType::Float64 => Ok((col.clone(), Arc::new(Float64Array::from(vec![f])))),
        DataType::Float32 if (f as f32) as f64 == f || f.is_nan() => {
            Ok((col.clone(), Arc::new(Float32Array::from(vec![f as f32]))))
        }
        _ => Ok((
            cast_column(col, &DataType::Float64)?,
            Arc::new(Float64Array::from(vec![f])),
        )),
    }
}

/// The exact number `v * 10^-s` against a decimal or integer column.
fn decimal_side(col: &ArrayRef, v: i128, s: i8) -> Result<(ArrayRef, ArrayRef)> {
    let as_float = |col: &ArrayRef| float_side(col, v as f64 / 10f64.powi(s as i32));
    match col.data_type().clone() {
        DataType::Decimal128(p, cs) => {
            if s <= cs {
                let Some(scaled) =
                    pow10((cs as i32 - s as i32) as u32).and_then(|m| v.checked_mul(m))
                else {
                    return as_float(col);
                };
                if pow10(p as u32).is_some_and(|lim| scaled.abs() < lim) {
                    return Ok((col.clone(), decimal(scaled, p, cs)?));
                }
                if pow10(38).is_some_and(|lim| scaled.abs() < lim) {
                    return Ok((
                        cast_column(col, &DataType::Decimal128(38, cs))?,
                        decimal(scaled, 38, cs)?,
                    ));
                }
                as_float(col)
            } else {
                let f = pow10((s as i32 - cs as i32) as u32);
                if let Some(f) = f.filter(|f| v % f == 0) {
                    return decimal_side(col, v / f, cs);
                }
                if (p as i32 + (s as i32 - cs as i32)) <= 38 && s >= 0 {
                    let to = DataType::Decimal128(38, s);
                    return Ok((cast_column(col, &to)?, decimal(v, 38, s)?));
                }
                as_float(col)
            }
        }
        dt if is_int(&dt) => {
            if s <= 0 {
                return match pow10((-(s as i32)) as u32).and_then(|m| v.checked_mul(m)) {
                    Some(x) => int_side(col, x),
                    None => as_float(col),
                };
            }
            let Some(f) = pow10(s as u32) else {
                return as_float(col);
            };
            if v % f == 0 {
                return int_side(col, v / f);
            }
            if s <= 18 {
                let to = DataType::Decimal128(38, s);
                return Ok((cast_column(col, &to)?, decimal(v, 38, s)?));
            }
            as_float(col)
        }
        DataType::Float32 | DataType::Float64 => as_float(col),
        dt => Ok((
            col.clone(),
            cast_literal(
                &Literal::Decimal128 {
                    value: v,
                    precision: 38,
                    scale: s,
                },
                &dt,
            )?,
        )),
    }
}

fn unit_per_second(u: TimeUnit) -> i64 {
    match u {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    }
}

fn timestamp_array(v: i64, unit: TimeUnit, tz: Option<Arc<str>>) -> ArrayRef {
    match unit {
        TimeUnit::Second => Arc::new(TimestampSecondArray::from(vec![v]).with_timezone_opt(tz)),
        TimeUnit::Millisecond => {
            Arc::new(TimestampMillisecondArray::from(vec![v]).with_timezone_opt(tz))
        }
        TimeUnit::Microsecond => {
            Arc::new(TimestampMicrosecondArray::from(vec![v]).with_timezone_opt(tz))
        }
        TimeUnit::Nanosecond => {
            Arc::new(TimestampNanosecondArray::from(vec![v]).with_timezone_opt(tz))
        }
    }
}

/// A time in microseconds against a timestamp column of any unit, exactly.
fn micros_side(col: &ArrayRef, micros: i128) -> Result<(ArrayRef, ArrayRef)> {
    let DataType::Timestamp(unit, tz) = col.data_type().clone() else {
        // Dates: compare as timestamps (a date is its midnight).
        let to = DataType::Timestamp(TimeUnit::Microsecond, None);
        let m = i64::try_from(micros).map_err(|_| invalid("timestamp literal out of range"))?;
        return Ok((
            cast_column(col, &to)?,
            timestamp_array(m, TimeUnit::Microsecond, None),
        ));
    };
    let per = unit_per_second(unit) as i128;
    let in_unit = if per >= 1_000_000 {
        Some(micros * (per / 1_000_000))
    } else {
        let f = 1_000_000 / per;
        (micros % f == 0).then(|| micros / f)
    };
    if let Some(v) = in_unit.and_then(|v| i64::try_from(v).ok()) {
        return Ok((col.clone(), timestamp_array(v, unit, tz)));
    }
    let m = i64::try_from(micros).map_err(|_| invalid("timestamp literal out of range"))?;
    let to = DataType::Timestamp(TimeUnit::Microsecond, tz.clone());
    Ok((
        cast_column(col, &to)?,
        timestamp_array(m, TimeUnit::Microsecond, tz),
    ))
}

/// Bring a column and a literal to one type without changing the meaning of
/// the comparison. Returns (column, one-element literal array).
fn coerce(col: &ArrayRef, lit: &Literal) -> Result<(ArrayRef, ArrayRef)> {
    let dt = col.data_type();
    let numeric = is_int(dt)
        || matches!(
            dt,
            DataType::Decimal128(_, _) | DataType::Float32 | DataType::Float64
        );
    match lit {
        Literal::Int(v) if is_int(dt) => int_side(col, *v as i128),
        Literal::UInt(v) if is_int(dt) => int_side(col, *v as i128),
        Literal::Int(v) if numeric => decimal_side(col, *v as i128, 0),
        Literal::UInt(v) if numeric => decimal_side(col, *v as i128, 0),
        Literal::Float(f) if numeric => float_side(col, *f),
        Literal::Decimal128 { value, scale, .. } if numeric => decimal_side(col, *value, *scale),
        Literal::Date32(d) if matches!(dt, DataType::Date32) => {
            Ok((col.clone(), Arc::new(Date32Array::from(vec![*d]))))
        }
        Literal::Date32(d) if matches!(dt, DataType::Date64 | DataType::Timestamp(_, _)) => {
            if let DataType::Date64 = dt {
                let ms = (*d as i64) * 86_400_000;
                return Ok((col.clone(), Arc::new(Date64Array::from(vec![ms]))));
            }
            micros_side(col, *d as i128 * 86_400_000_000)
        }
        Literal::TimestampMicros(t)
            if matches!(
                dt,
                DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
            ) =>
        {
            micros_side(col, *t as i128)
        }
        Literal::Utf8(s)
            if matches!(
                dt,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) =>
        {
            let a: ArrayRef = match dt {
                DataType::Utf8 => Arc::new(StringArray::from(vec![s.as_str()])),
                DataType::LargeUtf8 => Arc::new(LargeStringArray::from(vec![s.as_str()])),
                _ => Arc::new(StringViewArray::from(vec![s.as_str()])),
            };
            Ok((col.clone(), a))
        }
        _ => Ok((col.clone(), cast_literal(lit, dt)?)),
    }
}

// ------------------------------------------------------------------- pruning

/// An exactly comparable value: integers and decimals as `mantissa * 10^-scale`,
/// times as nanoseconds, floats in total order.
#[derive(Debug, Clone, Copy)]
enum Num {
    Exact(i128, i32),
    Float(f64),
}

fn num_cmp(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Exact(x, sx), Num::Exact(y, sy)) => {
            let s = sx.max(sy);
            let x = x.checked_mul(pow10((s - sx) as u32)?)?;
            let y = y.checked_mul(pow10((s - sy) as u32)?)?;
            Some(x.cmp(&y))
        }
        (Num::Float(x), Num::Float(y)) => Some(x.total_cmp(&y)),
        // Mixed: evaluation casts the exact side to f64; do the same.
        (Num::Exact(x, sx), Num::Float(y)) => Some((x as f64 / 10f64.powi(sx)).total_cmp(&y)),
        (Num::Float(x), Num::Exact(y, sy)) => Some(x.total_cmp(&(y as f64 / 10f64.powi(sy)))),
    }
}

fn nanos_per_unit(dt: &DataType) -> Option<i128> {
    Some(match dt {
        DataType::Date32 => 86_400_000_000_000,
        DataType::Date64 => 1_000_000,
        DataType::Timestamp(u, _) => 1_000_000_000 / unit_per_second(*u) as i128,
        _ => return None,
    })
}

/// Order of a zone bound relative to a literal, if it can be known exactly.
fn zone_cmp(zv: &ZoneValue, dt: &DataType, lit: &Literal) -> Option<Ordering> {
    if let (Some(per), ZoneValue::Int(x)) = (nanos_per_unit(dt), zv) {
        let zn = *x as i128 * per;
        let ln = match lit {
            Literal::Date32(d) => *d as i128 * 86_400_000_000_000,
            Literal::TimestampMicros(t) => *t as i128 * 1_000,
            Literal::Int(v) => *v as i128 * per,
            _ => return None,
        };
        return Some(zn.cmp(&ln));
    }
    let zone_num = match (zv, dt) {
        (ZoneValue::Int(x), _) => Num::Exact(*x as i128, 0),
        (ZoneValue::UInt(x), _) => Num::Exact(*x as i128, 0),
        (ZoneValue::Decimal(x), DataType::Decimal128(_, s)) => Num::Exact(*x, *s as i32),
        (ZoneValue::Float(x), _) => Num::Float(*x),
        (ZoneValue::Utf8(s), _) => {
            return match lit {
                Literal::Utf8(l) => Some(s.as_bytes().cmp(l.as_bytes())),
                _ => None,
            }
        }
        (ZoneValue::Bool(b), _) => {
            return match lit {
                Literal::Bool(l) => Some(b.cmp(l)),
                _ => None,
            }
        }
        _ => return None,
    };
    let lit_num = match lit {
        Literal::Int(v) => Num::Exact(*v as i128, 0),
        Literal::UInt(v) => Num::Exact(*v as i128, 0),
        Literal::Decimal128 { value, scale, .. } => Num::Exact(*value, *scale as i32),
        Literal::Float(f) => Num::Float(*f),
        _ => return None,
    };
    // Float columns compare an f32 literal when it is exact, else f64: both
    // agree with comparing in f64, which is what this does.
    num_cmp(zone_num, lit_num)
}

fn compare_may_match(z: &ZoneMap, op: CmpOp, lit: &Literal) -> bool {
    if matches!(lit, Literal::Null) || (z.rows > 0 && z.null_count >= z.rows) {
        return false; // a comparison with NULL is never TRUE
    }
    let Some((lo, hi)) = &z.min_max else {
        return true;
    };
    let (Some(l), Some(h)) = (
        zone_cmp(lo, &z.data_type, lit),
        zone_cmp(hi, &z.data_type, lit),
    ) else {
        return true;
    };
    use Ordering::*;
    match op {
        CmpOp::Eq => l != Greater && h != Less,
        CmpOp::NotEq => !(l == Equal && h == Equal),
        CmpOp::Lt => l == Less,
        CmpOp::LtEq => l != Greater,
        CmpOp::Gt => h == Greater,
        CmpOp::GtEq => h != Less,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("i", DataType::Int32, true),
            Field::new("f", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("d", DataType::Date32, true),
            Field::new("m", DataType::Decimal128(12, 2), true),
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("u", DataType::UInt8, true),
        ]);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(vec![
                Some(1),
                Some(5),
                None,
                Some(-3),
                Some(10),
            ])),
            Arc::new(Float64Array::from(vec![
                Some(0.5),
                Some(f64::NAN),
                Some(2.0),
                None,
                Some(-1.5),
            ])),
            Arc::new(StringArray::from(vec![
                Some("apple"),
                Some("banana"),
                Some("cherry"),
                None,
                Some("Apple"),
            ])),
            Arc::new(Date32Array::from(vec![
                Some(0),
                Some(9000),
                Some(9131),
                Some(10000),
                None,
            ])),
            Arc::new(
                Decimal128Array::from(vec![Some(150), Some(1999), None, Some(-1), Some(100)])
                    .with_precision_and_scale(12, 2)
                    .unwrap(),
            ),
            Arc::new(TimestampMillisecondArray::from(vec![
                Some(1_000),
                Some(1_500),
                Some(2_000),
                None,
                Some(0),
            ])),
            Arc::new(UInt8Array::from(vec![
                Some(0),
                Some(255),
                Some(7),
                Some(7),
                None,
            ])),
        ];
        RecordBatch::try_new(Arc::new(schema), cols).unwrap()
    }

    fn sel(p: &Predicate) -> Vec<usize> {
        let b = batch();
        let m = p.evaluate(&b).unwrap();
        (0..m.len())
            .filter(|&i| m.is_valid(i) && m.value(i))
            .collect()
    }

    fn cmpp(column: usize, op: CmpOp, value: Literal) -> Predicate {
        Predicate::Compare { column, op, value }
    }

    #[test]
    fn long_in_lists_answer_like_short_ones_with_nulls_and_negation() {
        // Columns i (Int32 with a NULL) and u (UInt8 with a NULL); a list of
        // 40 values, prepared, is tested with the hash set, the same list
        // split into ORs of short lists value by value: same three-valued
        // answers.
        // Both set shapes: a compact range (a bitmap) and one spread over
        // a range far wider than the list (a hash set).
        let b = batch();
        for (column, sparse) in [(0usize, false), (6, false), (0, true), (6, true)] {
            let mut values: Vec<Literal> = (100..138).map(Literal::Int).collect();
            values.push(Literal::Int(5));
            values.push(Literal::UInt(7));
            if sparse {
                values.push(Literal::Int(1 << 40));
            }
            for negated in [false, true] {
                let list = Predicate::InList {
                    column,
                    values: values.clone(),
                    negated,
                };
                let long = Predicate::Not(Box::new(list.clone())).prepared();
                let Predicate::Not(long) = long else {
                    panic!("prepared changed the shape: {long:?}")
                };
                let long = *long;
                let Predicate::IntSet(set) = &long else {
                    panic!("not prepared as a set: {long:?}")
                };
                assert_eq!(matches!(set.members, Members::Hash(_)), sparse);
                // It travels as the list it came from.
                assert_eq!(
                    Predicate::try_from(&crate::proto::pb::Predicate::from(&long)).unwrap(),
                    list
                );
                let short: Vec<Predicate> = values
                    .chunks(SHORT_LIST)
                    .map(|c| Predicate::InList {
                        column,
                        values: c.to_vec(),
                        negated: false,
                    })
                    .collect();
                let short = if negated {
                    Predicate::Not(Box::new(Predicate::Or(short)))
                } else {
                    Predicate::Or(short)
                };
                let (l, s) = (long.evaluate(&b).unwrap(), short.evaluate(&b).unwrap());
                assert_eq!(l, s, "column {column} negated {negated}");
                assert!(l.null_count() == 1, "a NULL key stays NULL");
            }
        }
        let long = |values: Vec<i64>| {
            Predicate::InList {
                column: 0,
                values: values.into_iter().map(Literal::Int).collect(),
                negated: false,
            }
            .prepared()
        };
        assert_eq!(sel(&long((100..140).chain([5, -3]).collect())), vec![1, 3]);
        // Zone maps: the block's i spans -3..=10; a long list entirely above
        // it prunes the block, one that reaches into it does not.
        let zones: Vec<ZoneMap> = b
            .columns()
            .iter()
            .map(|c| ZoneMap::compute(c.as_ref()))
            .collect();
        assert!(!long((100..140).collect()).may_match(&zones));
        assert!(long((9..49).collect()).may_match(&zones));
    }

    #[test]
    fn evaluate_ints() {
        assert_eq!(sel(&cmpp(0, CmpOp::Gt, Literal::Int(1))), vec![1, 4]);
        assert_eq!(sel(&cmpp(0, CmpOp::NotEq, Literal::Int(5))), vec![0, 3, 4]);
        // Out of the column's range: exact, not wrapped or NULL.
        assert_eq!(
            sel(&cmpp(0, CmpOp::Lt, Literal::Int(1 << 40))),
            vec![0, 1, 3, 4]
        );
        assert_eq!(sel(&cmpp(6, CmpOp::Gt, Literal::Int(-1))), vec![0, 1, 2, 3]);
        assert_eq!(
            sel(&cmpp(6, CmpOp::Lt, Literal::UInt(1000))),
            vec![0, 1, 2, 3]
        );
        // Float and decimal literals against an integer column.
        assert_eq!(sel(&cmpp(0, CmpOp::Gt, Literal::Float(4.5))), vec![1, 4]);
        assert_eq!(
            sel(&cmpp(0, CmpOp::Eq, Literal::Float(4.5))),
            Vec::<usize>::new()
        );
        let d = |value, scale| Literal::Decimal128 {
            value,
            precision: 10,
            scale,
        };
        assert_eq!(sel(&cmpp(0, CmpOp::LtEq, d(15, 1))), vec![0, 3]);
        assert_eq!(sel(&cmpp(0, CmpOp::Eq, d(500, 2))), vec![1]);
    }

    #[test]
    fn evaluate_floats_strings_dates_decimals_times() {
        assert_eq!(
            sel(&cmpp(1, CmpOp::Gt, Literal::Float(1.0))),
            vec![1, 2],
            "NaN is largest"
        );
        assert_eq!(sel(&cmpp(1, CmpOp::Lt, Literal::Int(1))), vec![0, 4]);
        assert_eq!(
            sel(&cmpp(2, CmpOp::GtEq, Literal::Utf8("b".into()))),
            vec![1, 2]
        );
        assert_eq!(
            sel(&cmpp(2, CmpOp::Lt, Literal::Utf8("a".into()))),
            vec![4],
            "bytewise"
        );
        assert_eq!(sel(&cmpp(3, CmpOp::Gt, Literal::Date32(9000))), vec![2, 3]);
        assert_eq!(
            sel(&cmpp(3, CmpOp::Lt, Literal::Utf8("1995-01-01".into()))),
            vec![0, 1]
        );
        let d = |value, scale| Literal::Decimal128 {
            value,
            precision: 20,
            scale,
        };
        assert_eq!(sel(&cmpp(4, CmpOp::Eq, d(15, 1))), vec![0]);
        assert_eq!(sel(&cmpp(4, CmpOp::Gt, d(1, 0))), vec![0, 1]);
        assert_eq!(
            sel(&cmpp(4, CmpOp::Lt, d(1001, 3))),
            vec![3, 4],
            "finer scale than the column"
        );
        assert_eq!(sel(&cmpp(4, CmpOp::Lt, Literal::Int(1))), vec![3]);
        assert_eq!(sel(&cmpp(4, CmpOp::GtEq, Literal::Float(1.5))), vec![0, 1]);
        let huge = Literal::Decimal128 {
            value: 10i128.pow(30),
            precision: 38,
            scale: 0,
        };
        assert_eq!(sel(&cmpp(4, CmpOp::Lt, huge)), vec![0, 1, 3, 4]);
        assert_eq!(
            sel(&cmpp(5, CmpOp::Gt, Literal::TimestampMicros(1_000_500))),
            vec![1, 2]
        );
        assert_eq!(
            sel(&cmpp(5, CmpOp::Eq, Literal::TimestampMicros(1_500_000))),
            vec![1]
        );
        assert_eq!(
            sel(&cmpp(5, CmpOp::GtEq, Literal::Date32(0))),
            vec![0, 1, 2, 4]
        );
    }

    #[test]
    fn evaluate_nulls_logic_and_in_lists() {
        assert_eq!(sel(&Predicate::IsNull(0)), vec![2]);
        assert_eq!(sel(&Predicate::IsNotNull(2)), vec![0, 1, 2, 4]);
        assert_eq!(sel(&cmpp(0, CmpOp::Eq, Literal::Null)), Vec::<usize>::new());
        // NOT (i > 1): NULL stays unselected.
        let gt = cmpp(0, CmpOp::Gt, Literal::Int(1));
        assert_eq!(sel(&Predicate::Not(Box::new(gt.clone()))), vec![0, 3]);
        assert_eq!(sel(&gt.negate()), vec![0, 3]);
        let or = Predicate::Or(vec![
            Predicate::IsNull(0),
            cmpp(0, CmpOp::Lt, Literal::Int(0)),
        ]);
        assert_eq!(sel(&or), vec![2, 3]);
        let and = Predicate::And(vec![or.clone(), Predicate::IsNotNull(2)]);
        assert_eq!(sel(&and), vec![2]);
        let inl = |values, negated| Predicate::InList {
            column: 0,
            values,
            negated,
        };
        assert_eq!(
            sel(&inl(
                vec![Literal::Int(5), Literal::Int(10), Literal::Int(99)],
                false
            )),
            vec![1, 4]
        );
        assert_eq!(
            sel(&inl(vec![Literal::Int(5), Literal::Int(10)], true)),
            vec![0, 3]
        );
        assert_eq!(
            sel(&inl(vec![Literal::Int(5), Literal::Null], true)),
            Vec::<usize>::new(),
            "NOT IN with NULL"
        );
        assert_eq!(
            sel(&inl(vec![Literal::Int(5), Literal::Null], false)),
            vec![1]
        );
        let s = Predicate::InList {
            column: 2,
            values: vec![Literal::Utf8("cherry".into())],
            negated: false,
        };
        assert_eq!(sel(&s), vec![2]);
    }

    #[test]
    fn bad_literals_are_typed_errors() {
        let b = batch();
        for p in [
            cmpp(0, CmpOp::Eq, Literal::Utf8("abc".into())),
            cmpp(3, CmpOp::Eq, Literal::Bool(true)),
            cmpp(9, CmpOp::Eq, Literal::Int(1)),
            cmpp(
                4,
                CmpOp::Eq,
                Literal::Decimal128 {
                    value: 1,
                    precision: 0,
                    scale: 0,
                },
            ),
        ] {
            assert!(
                matches!(p.evaluate(&b), Err(EngineError::InvalidRequest(_))),
                "{p:?}"
            );
        }
    }

    fn zone(dt: DataType, lo: ZoneValue, hi: ZoneValue, nulls: u64) -> ZoneMap {
        ZoneMap {
            data_type: dt,
            rows: 10,
            null_count: nulls,
            min_max: Some((lo, hi)),
        }
    }

    #[test]
    fn may_match_is_exact_and_conservative() {
        let z = vec![zone(
            DataType::Int64,
            ZoneValue::Int(10),
            ZoneValue::Int(20),
            0,
        )];
        let m = |op, v| cmpp(0, op, v).may_match(&z);
        assert!(!m(CmpOp::Lt, Literal::Int(10)));
        assert!(m(CmpOp::LtEq, Literal::Int(10)));
        assert!(!m(CmpOp::Gt, Literal::Int(20)));
        assert!(
            m(CmpOp::Eq, Literal::Float(15.5)),
            "conservative for non-integers inside"
        );
        assert!(!m(CmpOp::Eq, Literal::Float(20.5)));
        assert!(!m(
            CmpOp::Eq,
            Literal::Decimal128 {
                value: 2001,
                precision: 5,
                scale: 2
            }
        ));
        assert!(
            m(CmpOp::Eq, Literal::Utf8("15".into())),
            "unknown conversions never prune"
        );
        assert!(!m(CmpOp::Eq, Literal::Null));
        let not_lt = Predicate::Not(Box::new(cmpp(0, CmpOp::Lt, Literal::Int(30))));
        assert!(!not_lt.may_match(&z), "NOT (x < 30) is x >= 30");
        let inl = Predicate::InList {
            column: 0,
            values: vec![Literal::Int(1), Literal::Int(25)],
            negated: false,
        };
        assert!(!inl.may_match(&z));
        let one = vec![zone(
            DataType::Int64,
            ZoneValue::Int(7),
            ZoneValue::Int(7),
            0,
        )];
        assert!(!cmpp(0, CmpOp::NotEq, Literal::Int(7)).may_match(&one));
        let nin = Predicate::InList {
            column: 0,
            values: vec![Literal::Int(7)],
            negated: true,
        };
        assert!(!nin.may_match(&one));
        assert!(!Predicate::IsNull(0).may_match(&z));
        let all_null = vec![ZoneMap {
            data_type: DataType::Int64,
            rows: 10,
            null_count: 10,
            min_max: None,
        }];
        assert!(!Predicate::IsNotNull(0).may_match(&all_null));
        assert!(!cmpp(0, CmpOp::NotEq, Literal::Int(1)).may_match(&all_null));
        let absent = vec![ZoneMap {
            data_type: DataType::Utf8,
            rows: 10,
            null_count: 0,
            min_max: None,
        }];
        assert!(cmpp(0, CmpOp::Eq, Literal::Utf8("x".into())).may_match(&absent));
        // Times: a date literal against a millisecond timestamp zone.
        let tz = vec![zone(
            DataType::Timestamp(TimeUnit::Millisecond, None),
            ZoneValue::Int(86_400_000),
            ZoneValue::Int(2 * 86_400_000),
            0,
        )];
        assert!(!cmpp(0, CmpOp::Lt, Literal::Date32(1)).may_match(&tz));
        assert!(cmpp(0, CmpOp::LtEq, Literal::Date32(1)).may_match(&tz));
        assert!(!cmpp(0, CmpOp::Gt, Literal::TimestampMicros(2 * 86_400_000_000)).may_match(&tz));
        let dz = vec![zone(
            DataType::Decimal128(10, 2),
            ZoneValue::Decimal(100),
            ZoneValue::Decimal(200),
            0,
        )];
        assert!(!cmpp(0, CmpOp::Gt, Literal::Int(2)).may_match(&dz));
        assert!(cmpp(0, CmpOp::GtEq, Literal::Int(2)).may_match(&dz));
        let sz = vec![zone(
            DataType::Utf8,
            ZoneValue::Utf8("b".into()),
            ZoneValue::Utf8("d".into()),
            0,
        )];
        assert!(!cmpp(0, CmpOp::Lt, Literal::Utf8("b".into())).may_match(&sz));
        assert!(cmpp(0, CmpOp::Lt, Literal::Utf8("ba".into())).may_match(&sz));
    }

    #[test]
    fn pruning_agrees_with_evaluation() {
        // For every literal and operator: if a block's zone map says "no",
        // evaluation over that block selects nothing.
        let b = batch();
        let zones: Vec<ZoneMap> = b
            .columns()
            .iter()
            .map(|c| ZoneMap::compute(c.as_ref()))
            .collect();
        let lits = [
            Literal::Int(-3),
            Literal::Int(0),
            Literal::Int(10),
            Literal::Int(11),
            Literal::Float(0.5),
            Literal::Float(f64::NAN),
            Literal::Float(-2.0),
            Literal::Decimal128 {
                value: 1999,
                precision: 10,
                scale: 2,
            },
            Literal::Decimal128 {
                value: -2,
                precision: 10,
                scale: 2,
            },
            Literal::Date32(10000),
            Literal::TimestampMicros(2_000_000),
            Literal::Utf8("cherry".into()),
            Literal::Utf8("Apple".into()),
        ];
        let ops = [
            CmpOp::Eq,
            CmpOp::NotEq,
            CmpOp::Lt,
            CmpOp::LtEq,
            CmpOp::Gt,
            CmpOp::GtEq,
        ];
        let mut pruned = 0;
        for c in 0..b.num_columns() {
            for l in &lits {
                for op in ops {
                    let p = cmpp(c, op, l.clone());
                    let Ok(m) = p.evaluate(&b) else { continue };
                    if !p.may_match(&zones) {
                        pruned += 1;
                        assert_eq!(m.true_count(), 0, "{p:?} pruned but selects rows");
                    }
                }
            }
        }
        assert!(pruned > 10, "pruning did something ({pruned})");
    }
}
