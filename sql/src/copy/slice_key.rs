//! Splitting decoded rows by slice: the distribution key's columns, parsed
//! from their text and hashed as the loader hashes stored rows.

use datafusion::arrow::datatypes::DataType;
use slicedb_coordinator::write::hash;

use super::parse::{
    narrow, parse_bool, parse_date_fast, parse_decimal, parse_f32, parse_f64, parse_i64,
    parse_timestamp, parse_u64, timestamp_in_unit, unarrow, ConvErr,
};

/// How a decoder splits rows by slice: the decoded columns that make up the
/// distribution key and the slice count (see `slicedb_coordinator::write::hash`).
#[derive(Clone)]
pub(super) struct KeySplit {
    pub(super) cols: Vec<usize>,
    pub(super) slices: u32,
}

/// Whether [`chain_key`] parses this type (the decoder can split by it):
/// every distribution key type but Date64, which COPY decodes through a cast.
pub(super) fn key_hashable(dt: &DataType) -> bool {
    hash::hashable(dt) && *dt != DataType::Date64
}

/// Chain the key value `v` (a field's text) onto `h`: parsed exactly as
/// [`Col::append`](super::columns::Col::append) parses it, then hashed as
/// the loader hashes the stored value.
#[inline]
pub(super) fn chain_key(dt: &DataType, v: &[u8], h: &mut u32) -> Result<(), ConvErr> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::decode::{CopyDecoder, Decoded, MAX_SPLIT_SLICES};
    use crate::copy::error::CopyError;
    use crate::copy::options::CopyOptions;
    use crate::copy::testing::{all_types, schema, TEXT_ROWS};
    use datafusion::arrow::datatypes::{SchemaRef, TimeUnit};

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
            let want =
                slicedb_coordinator::write::hash::slices_for_batch(&d.batch, key, slices).unwrap();
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
}
