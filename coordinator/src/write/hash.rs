//! Row -> slice assignment for hash-distributed tables.
//!
//! The hash is part of the on-disk contract (it decides where committed rows
//! live), so it is specified in docs/distribution.md and must never change
//! without a format version bump: CRC32C over a canonical encoding of each
//! key value, chained across key columns, modulo the slice count. Integers of
//! every width, dates, timestamps and decimals hash by value as a 16-byte
//! little-endian i128 of their unscaled value, so an `int` key and a `bigint`
//! key holding the same number land on the same slice.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::*;

use crate::{CoordinatorError, Result};

const NULL_TAG: [u8; 1] = [0xff];

/// Seed of the chain; also what a row of only NULL keys starts from.
pub const SEED: u32 = 0x5_11ce;

/// Slice of every row of `batch`, hashing the columns at `key`.
pub fn slices_for_batch(batch: &RecordBatch, key: &[usize], slices: u32) -> Result<Vec<u32>> {
    let mut hashes = vec![SEED; batch.num_rows()];
    for &k in key {
        hash_column(batch.column(k), &mut hashes)?;
    }
    Ok(hashes.into_iter().map(|h| slice_of(h, slices)).collect())
}

// One key value at a time, for writers that hash values as they parse them
// (COPY): chain each key column's value onto a hash that starts at [`SEED`],
// then take [`slice_of`]. `slices_for_batch` is built from the same steps.

/// The slice of a row whose key values were chained into `hash`.
#[inline]
pub fn slice_of(hash: u32, slices: u32) -> u32 {
    hash % slices
}

/// Chain a NULL key value.
#[inline]
pub fn chain_null(h: &mut u32) {
    chain(h, &NULL_TAG);
}

/// Chain an integer, date, timestamp (in its column's unit) or decimal
/// (unscaled) key value.
#[inline]
pub fn chain_int(h: &mut u32, v: i128) {
    chain(h, &v.to_le_bytes());
}

/// Chain a float key value (`f32` values widened to `f64` first).
#[inline]
pub fn chain_f64(h: &mut u32, v: f64) {
    // -0.0 == 0.0 and every NaN is one value for grouping.
    let v = if v == 0.0 {
        0.0
    } else if v.is_nan() {
        f64::NAN
    } else {
        v
    };
    chain(h, &v.to_bits().to_le_bytes());
}

/// Chain a boolean key value.
#[inline]
pub fn chain_bool(h: &mut u32, v: bool) {
    chain(h, &[v as u8]);
}

/// Chain a string key value.
#[inline]
pub fn chain_str(h: &mut u32, s: &[u8]) {
    chain(h, s);
    chain(h, &[0]);
}

#[inline]
fn chain(h: &mut u32, bytes: &[u8]) {
    *h = crc32c::crc32c_append(*h, bytes);
}

macro_rules! int_like {
    ($arr:expr, $t:ty, $hashes:expr) => {{
        let a = $arr.as_primitive::<$t>();
        for (i, h) in $hashes.iter_mut().enumerate() {
            if a.is_null(i) {
                chain_null(h);
            } else {
                chain_int(h, a.value(i) as i128);
            }
        }
    }};
}

fn hash_column(col: &ArrayRef, hashes: &mut [u32]) -> Result<()> {
    match col.data_type() {
        DataType::Int8 => int_like!(col, Int8Type, hashes),
        DataType::Int16 => int_like!(col, Int16Type, hashes),
        DataType::Int32 => int_like!(col, Int32Type, hashes),
        DataType::Int64 => int_like!(col, Int64Type, hashes),
        DataType::UInt8 => int_like!(col, UInt8Type, hashes),
        DataType::UInt16 => int_like!(col, UInt16Type, hashes),
        DataType::UInt32 => int_like!(col, UInt32Type, hashes),
        DataType::UInt64 => int_like!(col, UInt64Type, hashes),
        DataType::Date32 => int_like!(col, Date32Type, hashes),
        DataType::Date64 => int_like!(col, Date64Type, hashes),
        DataType::Timestamp(TimeUnit::Second, _) => int_like!(col, TimestampSecondType, hashes),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            int_like!(col, TimestampMillisecondType, hashes)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            int_like!(col, TimestampMicrosecondType, hashes)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            int_like!(col, TimestampNanosecondType, hashes)
        }
        DataType::Decimal128(_, _) => {
            let a = col.as_primitive::<Decimal128Type>();
            for (i, h) in hashes.iter_mut().enumerate() {
                if a.is_null(i) {
                    chain_null(h);
                } else {
                    chain_int(h, a.value(i));
                }
            }
        }
        DataType::Float32 | DataType::Float64 => {
            let f64s = arrow::compute::cast(col, &DataType::Float64)?;
            let a = f64s.as_primitive::<Float64Type>();
            for (i, h) in hashes.iter_mut().enumerate() {
                if a.is_null(i) {
                    chain_null(h);
                } else {
                    chain_f64(h, a.value(i));
                }
            }
        }
        DataType::Boolean => {
            let a = col.as_boolean();
            for (i, h) in hashes.iter_mut().enumerate() {
                if a.is_null(i) {
                    chain_null(h);
                } else {
                    chain_bool(h, a.value(i));
                }
            }
        }
        DataType::Utf8 => hash_strings(col.as_string::<i32>().iter(), hashes),
        DataType::LargeUtf8 => hash_strings(col.as_string::<i64>().iter(), hashes),
        DataType::Utf8View => hash_strings(col.as_string_view().iter(), hashes),
        other => {
            return Err(CoordinatorError::NotSupported(format!(
                "distribution key of type {other}"
            )))
        }
    }
    Ok(())
}

fn hash_strings<'a>(values: impl Iterator<Item = Option<&'a str>>, hashes: &mut [u32]) {
    for (v, h) in values.zip(hashes.iter_mut()) {
        match v {
            None => chain_null(h),
            Some(s) => chain_str(h, s.as_bytes()),
        }
    }
}

/// Whether a column of this type can be a distribution key.
pub fn hashable(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(_, _)
            | DataType::Decimal128(_, _)
            | DataType::Float32
            | DataType::Float64
            | DataType::Boolean
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn hash_is_stable_and_width_independent() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int32, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), Some(42), None])),
                Arc::new(Int32Array::from(vec![Some(1), Some(42), None])),
                Arc::new(StringArray::from(vec![Some("x"), Some(""), None])),
            ],
        )
        .unwrap();
        let a = slices_for_batch(&b, &[0], 1 << 30).unwrap();
        let i = slices_for_batch(&b, &[1], 1 << 30).unwrap();
        assert_eq!(a, i, "int and bigint keys must agree");
        // Pinned values: changing them moves committed rows (format change).
        assert_eq!(slices_for_batch(&b, &[0], 16).unwrap(), vec![9, 3, 2]);
        let two = slices_for_batch(&b, &[0, 2], 16).unwrap();
        assert_eq!(two.len(), 3);
    }

    #[test]
    fn hashing_spreads_keys_evenly() {
        let n = 100_000i64;
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..n))])
            .unwrap();
        let s = slices_for_batch(&b, &[0], 16).unwrap();
        let mut counts = [0u32; 16];
        for x in s {
            counts[x as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min as f64 > 0.9 * (n as f64 / 16.0), "{counts:?}");
        assert!((*max as f64) < 1.1 * (n as f64 / 16.0), "{counts:?}");
    }
}
