//! Property tests of the COPY codec (`decode.rs`, `fields.rs`, `parse.rs`,
//! `columns.rs`, `slice_key.rs`, `encode.rs`); compiled for tests only.
//!
//! - Any input, in text, CSV or binary, with any options, cut into any chunks:
//!   the decoder returns rows of the table's schema or a [`CopyError`] with
//!   a SQLSTATE, never panics; split by slice, every row is on the slice
//!   the loader's hash gives it.
//! - Values of every supported column type written by COPY TO
//!   (`encode_rows`) are read back by COPY FROM unchanged.
//! - Valid COPY TO output with bytes changed decodes or fails typed.
//!
//! Each test prints its seed; `SLICEDB_TEST_SEED=<seed>` replays it and
//! `SLICEDB_FUZZ_CASES=<n>` runs more cases (docs/benchmarks.md).

use std::fmt::Debug;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array, Int16Array,
    Int32Array, Int64Array, Int8Array, LargeStringArray, StringArray, TimestampMicrosecondArray,
    TimestampNanosecondArray, TimestampSecondArray, UInt16Array, UInt32Array, UInt64Array,
    UInt8Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::subsequence;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use super::decode::CopyDecoder;
use super::encode::encode_rows;
use super::error::CopyError;
use super::options::{CopyFormat, CopyOptions};
use super::testing::{all_types, concat};

/// Run `test` on values of `strategy` from a printed seed
/// (`SLICEDB_TEST_SEED` replays it), `SLICEDB_FUZZ_CASES` cases or
/// `default_cases`; a failure is shrunk and reported with its seed.
fn check<S>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let env = |k: &str| std::env::var(k).ok().map(|v| v.trim().to_string());
    let seed: u64 = match env("SLICEDB_TEST_SEED") {
        Some(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("SLICEDB_TEST_SEED={s:?} is not a u64")),
        None => {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(std::time::SystemTime::now())
        }
    };
    let cases: u32 = match env("SLICEDB_FUZZ_CASES") {
        Some(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("SLICEDB_FUZZ_CASES={s:?} is not a number")),
        None => default_cases,
    };
    eprintln!("[{name}] seed {seed}, {cases} cases (replay with SLICEDB_TEST_SEED={seed})");
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    match runner.run(&strategy, test) {
        Ok(()) => {}
        Err(TestError::Fail(reason, value)) => panic!(
            "[{name}] failed (replay with SLICEDB_TEST_SEED={seed}): {reason}\nminimal input: {value:?}"
        ),
        Err(TestError::Abort(reason)) => {
            panic!("[{name}] aborted (SLICEDB_TEST_SEED={seed}): {reason}")
        }
    }
}

/// SQLSTATEs the COPY path may answer bad data with.
const DATA_ERRORS: &[&str] = &[
    "22P02", "22003", "22P03", "22P04", "22021", "23502", "22007", "22008", "0A000", "22023",
    "54000",
];

fn typed(e: &CopyError) -> Result<(), TestCaseError> {
    prop_assert!(
        DATA_ERRORS.contains(&e.sqlstate),
        "unexpected SQLSTATE {} ({})",
        e.sqlstate,
        e.message
    );
    prop_assert!(!e.message.is_empty());
    Ok(())
}

#[derive(Debug, Clone)]
struct Table {
    /// Columns of `all_types()`, and whether each is nullable.
    columns: Vec<(usize, bool)>,
}

impl Table {
    fn schema(&self) -> SchemaRef {
        let all = all_types();
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|&(c, nullable)| {
                    let f = all.field(c);
                    Field::new(f.name(), f.data_type().clone(), nullable)
                })
                .collect::<Vec<_>>(),
        ))
    }
}

fn table() -> impl Strategy<Value = Table> {
    let n = all_types().fields().len();
    subsequence((0..n).collect::<Vec<_>>(), 1..=6)
        .prop_flat_map(|cols| {
            let k = cols.len();
            (Just(cols), vec(prop::bool::weighted(0.8), k))
        })
        .prop_map(|(cols, nullable)| Table {
            columns: cols.into_iter().zip(nullable).collect(),
        })
}

/// Options a COPY statement may carry.
fn options() -> impl Strategy<Value = CopyOptions> {
    let text = (
        prop::sample::select(vec![b'\t', b',', b'|', b';']),
        prop::sample::select(vec!["\\N", "", "NULL"]),
        any::<bool>(),
    )
        .prop_map(|(delimiter, null, header)| CopyOptions {
            delimiter,
            null: null.to_string(),
            header,
            ..CopyOptions::text()
        });
    let csv = (
        prop::sample::select(vec![b',', b'\t', b'|', b';']),
        prop::sample::select(vec!["", "NULL", "\\N"]),
        any::<bool>(),
        prop::sample::select(vec![b'"', b'\'']),
        any::<bool>(),
    )
        .prop_map(|(delimiter, null, header, quote, backslash)| CopyOptions {
            delimiter,
            null: null.to_string(),
            header,
            quote,
            escape: if backslash { b'\\' } else { quote },
            ..CopyOptions::csv()
        });
    prop_oneof![2 => text, 2 => csv, 1 => Just(CopyOptions::binary())]
}

/// Bytes that look enough like binary COPY data to get past the header:
/// the header (most of the time), then field counts, lengths (NULL, short,
/// huge, negative), value bytes and trailers.
fn binary_bytes() -> impl Strategy<Value = Vec<u8>> {
    let be16 = |v: i16| v.to_be_bytes().to_vec();
    let be32 = |v: i32| v.to_be_bytes().to_vec();
    let token = prop_oneof![
        3 => (0i16..8).prop_map(be16),
        3 => prop_oneof![Just(-1i32), 0..10i32, Just(i32::MAX), Just(-2)].prop_map(be32),
        2 => vec(any::<u8>(), 0..10),
        1 => Just(vec![0xff, 0xff]),
        1 => Just(b"\xc3\x28".to_vec()),
    ];
    (prop::bool::weighted(0.9), vec(token, 0..40)).prop_map(|(header, ts)| {
        let mut out = Vec::new();
        if header {
            out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
            out.extend_from_slice(&[0; 8]);
        }
        out.extend(ts.concat());
        out
    })
}

/// Bytes that look enough like COPY data to get past the first field.
fn copy_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        4 => prop::sample::select(vec![
            &b"\t"[..], b",", b"\n", b"\r\n", b"\\", b"\\N", b"\"", b"'", b"\\.", b"\\.\n",
            b"-", b".", b"e", b"1", b"0", b"9", b"t", b"f", b"NaN", b"Infinity", b"2024-02-29",
            b"1970-01-01 00:00:00", b"23:59:60", b"9223372036854775808", b"+", b" ", b":",
            b"\\x", b"\\0", b"\\777", b"\xc3", b"\xff", b"\xe2\x9c\x93", b"|", b";", b"BC", b"Z",
            b"+02:00", b"99999999999999999999999999999999999999999",
        ])
        .prop_map(|t| t.to_vec()),
        1 => vec(any::<u8>(), 1..8),
    ];
    vec(token, 0..60).prop_map(|ts| ts.concat())
}

/// Where to cut the input into CopyData messages.
fn cuts() -> impl Strategy<Value = Vec<usize>> {
    vec(any::<usize>(), 0..4)
}

/// What a decoder made of an input: batches (with their slice when split
/// by slice), or the COPY's error.
type Decoded = Result<Vec<(Option<u32>, RecordBatch)>, CopyError>;

/// Decode `input` cut at `cuts`, optionally split by slice on `key`.
fn decode(
    table: &Table,
    opts: &CopyOptions,
    input: &[u8],
    cuts: &[usize],
    split: Option<(Vec<usize>, u32)>,
) -> Result<Decoded, TestCaseError> {
    let schema = table.schema();
    let mut d = CopyDecoder::new(schema.clone(), opts.clone(), 7);
    if let Some((key, slices)) = &split {
        d.split_by_slice(key.clone(), *slices);
    }
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    at.push(input.len());
    at.sort_unstable();
    let mut out = Vec::new();
    let mut from = 0;
    let mut run = || -> Result<(), CopyError> {
        for &to in &at {
            out.extend(d.push_sliced(&input[from..to])?);
            from = to;
        }
        out.extend(d.finish_sliced()?);
        Ok(())
    };
    match run() {
        Ok(()) => {}
        Err(e) => {
            typed(&e)?;
            // A failed decoder stays failed.
            prop_assert!(d.push_sliced(b"1\n").is_err());
            return Ok(Err(e));
        }
    }
    let mut rows = 0;
    for o in &out {
        let got = o.batch.schema();
        prop_assert_eq!(got.fields(), schema.fields());
        prop_assert!(o.batch.num_rows() > 0);
        rows += o.batch.num_rows() as u64;
        if let (Some((key, slices)), Some(slice)) = (&split, o.slice) {
            let want = slicedb_coordinator::write::hash::slices_for_batch(&o.batch, key, *slices)
                .map_err(|e| TestCaseError::fail(format!("hash: {e}")))?;
            prop_assert!(
                want.iter().all(|&s| s == slice),
                "rows of slice {} hash to {:?}",
                slice,
                want
            );
        }
    }
    prop_assert_eq!(rows, d.rows());
    Ok(Ok(out.into_iter().map(|o| (o.slice, o.batch)).collect()))
}

fn split_of(table: &Table) -> impl Strategy<Value = Option<(Vec<usize>, u32)>> {
    let n = table.columns.len();
    proptest::option::of((
        subsequence((0..n).collect::<Vec<_>>(), 1..=n.min(2)),
        1..20u32,
    ))
}

#[test]
fn any_input_decodes_or_fails_typed() {
    let strategy = (table(), options()).prop_flat_map(|(t, o)| {
        let split = split_of(&t);
        let input = prop_oneof![copy_bytes(), binary_bytes()];
        (Just(t), Just(o), input, cuts(), split)
    });
    check(
        "any_input_decodes_or_fails_typed",
        1024,
        strategy,
        |(table, opts, input, cuts, split)| {
            let _decoded_or_typed_error = decode(&table, &opts, &input, &cuts, split)?;
            Ok(())
        },
    );
}

/// Values of one column of `all_types()`, inside what PostgreSQL can
/// write (years 1 to 9999); floats never NaN (Arrow's equality says
/// NaN != NaN; NaN itself is covered by the unit tests).
fn values(column: usize, rows: usize) -> BoxedStrategy<ArrayRef> {
    use proptest::option::weighted;
    const MIN_S: i64 = -62_135_596_800; // 0001-01-01
    const MAX_S: i64 = 253_402_300_799; // 9999-12-31 23:59:59
    fn col<T: Debug + Clone + 'static>(
        s: impl Strategy<Value = T> + 'static,
        rows: usize,
        f: impl Fn(Vec<Option<T>>) -> ArrayRef + 'static,
    ) -> BoxedStrategy<ArrayRef> {
        vec(weighted(0.85, s), rows).prop_map(f).boxed()
    }
    let f64s = any::<f64>().prop_map(|v| if v.is_nan() { 1.5 } else { v });
    let f32s = any::<f32>().prop_map(|v| if v.is_nan() { 1.5 } else { v });
    let text = "\\PC{0,12}|[\t\n\r\\\\,;|\"' NULabc]{0,8}";
    match all_types().field(column).name().as_str() {
        "i8" => col(any::<i8>(), rows, |v| Arc::new(Int8Array::from(v))),
        "i16" => col(any::<i16>(), rows, |v| Arc::new(Int16Array::from(v))),
        "i32" => col(any::<i32>(), rows, |v| Arc::new(Int32Array::from(v))),
        "i64" => col(any::<i64>(), rows, |v| Arc::new(Int64Array::from(v))),
        "u8" => col(any::<u8>(), rows, |v| Arc::new(UInt8Array::from(v))),
        "u16" => col(any::<u16>(), rows, |v| Arc::new(UInt16Array::from(v))),
        "u32" => col(any::<u32>(), rows, |v| Arc::new(UInt32Array::from(v))),
        "u64" => col(any::<u64>(), rows, |v| Arc::new(UInt64Array::from(v))),
        "f32" => col(f32s, rows, |v| Arc::new(Float32Array::from(v))),
        "f64" => col(f64s, rows, |v| Arc::new(Float64Array::from(v))),
        "dec" => col(-9_999_999_999..=9_999_999_999i128, rows, |v| {
            Arc::new(
                Decimal128Array::from(v)
                    .with_precision_and_scale(10, 2)
                    .expect("10, 2 is a valid decimal type"),
            )
        }),
        "s" => col(text, rows, |v| Arc::new(StringArray::from(v))),
        "ls" => col(text, rows, |v| Arc::new(LargeStringArray::from(v))),
        "b" => col(any::<bool>(), rows, |v| Arc::new(BooleanArray::from(v))),
        "d" => col(-719_162..=2_932_896i32, rows, |v| {
            Arc::new(Date32Array::from(v))
        }),
        "ts" => col(MIN_S * 1_000_000..=MAX_S * 1_000_000 + 999_999, rows, |v| {
            Arc::new(TimestampMicrosecondArray::from(v))
        }),
        "tsn" => col(any::<i64>(), rows, |v| {
            Arc::new(TimestampNanosecondArray::from(v))
        }),
        "tss" => col(MIN_S..=MAX_S, rows, |v| {
            Arc::new(TimestampSecondArray::from(v))
        }),
        other => unreachable!("all_types() has no column {other}"),
    }
}

/// A table and a batch of its rows (nullable columns only: the batch holds
/// NULLs).
fn rows() -> impl Strategy<Value = (Table, RecordBatch)> {
    (table(), 1..20usize).prop_flat_map(|(table, n)| {
        let table = Table {
            columns: table.columns.iter().map(|&(c, _)| (c, true)).collect(),
        };
        let cols: Vec<BoxedStrategy<ArrayRef>> =
            table.columns.iter().map(|&(c, _)| values(c, n)).collect();
        let schema = table.schema();
        (Just(table), cols).prop_map(move |(t, cols)| {
            let batch = RecordBatch::try_new(schema.clone(), cols).expect("one length");
            (t, batch)
        })
    })
}

fn with_format(opts: &CopyOptions) -> bool {
    // Text format: a value equal to the NULL string is written as is and
    // read back as NULL, in PostgreSQL too; only a NULL string with a
    // backslash (escaped in values) round-trips every value.
    opts.format != CopyFormat::Text || opts.null.contains('\\')
}

/// What a column reads back as: binary COPY carries timestamps in
/// microseconds, so nanoseconds come back rounded.
fn as_read_back(array: &ArrayRef, opts: &CopyOptions) -> ArrayRef {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{TimeUnit, TimestampNanosecondType};
    if opts.format != CopyFormat::Binary
        || *array.data_type() != DataType::Timestamp(TimeUnit::Nanosecond, None)
    {
        return array.clone();
    }
    let ns = array.as_primitive::<TimestampNanosecondType>();
    Arc::new(
        ns.iter()
            .map(|v| {
                v.map(|v| {
                    super::binval::unit_to_micros(v, TimeUnit::Nanosecond)
                        .expect("nanoseconds always fit microseconds")
                        * 1000
                })
            })
            .collect::<TimestampNanosecondArray>(),
    )
}

#[test]
fn copy_to_output_reads_back_unchanged() {
    let strategy = (
        rows(),
        options().prop_filter("ambiguous NULL", with_format),
        cuts(),
    );
    check(
        "copy_to_output_reads_back_unchanged",
        512,
        strategy,
        |((table, batch), opts, cuts)| {
            let text = encode_rows(std::slice::from_ref(&batch), &opts)
                .map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
            let back = match decode(&table, &opts, &text, &cuts, None)? {
                Ok(b) => b,
                Err(e) => {
                    return Err(TestCaseError::fail(format!(
                        "{} reading back {:?}: {}",
                        e.sqlstate,
                        String::from_utf8_lossy(&text),
                        e.message
                    )))
                }
            };
            let back: Vec<RecordBatch> = back.into_iter().map(|(_, b)| b).collect();
            prop_assert!(!back.is_empty());
            let got = concat(&back);
            for c in 0..batch.num_columns() {
                prop_assert_eq!(
                    got.column(c),
                    &as_read_back(batch.column(c), &opts),
                    "column {} of {:?}",
                    batch.schema().field(c).name(),
                    String::from_utf8_lossy(&text)
                );
            }
            Ok(())
        },
    );
}

#[derive(Debug, Clone)]
enum Change {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Change::Flip(a, b)),
        (any::<usize>(), copy_bytes()).prop_map(|(a, b)| Change::Insert(a, b)),
        (any::<usize>(), 1..16usize).prop_map(|(a, n)| Change::Remove(a, n)),
        any::<usize>().prop_map(Change::Truncate),
    ]
}

fn apply(input: &[u8], changes: &[Change]) -> Vec<u8> {
    let mut out = input.to_vec();
    for c in changes {
        let n = out.len() + 1;
        match c {
            Change::Flip(at, bit) => {
                if !out.is_empty() {
                    let i = at % out.len();
                    out[i] ^= 1 << (bit % 8);
                }
            }
            Change::Insert(at, b) => {
                let i = at % n;
                out.splice(i..i, b.iter().copied());
            }
            Change::Remove(at, len) => {
                let i = at % n;
                let end = (i + len).min(out.len());
                if i < end {
                    out.drain(i..end);
                }
            }
            Change::Truncate(len) => out.truncate(len % n),
        }
    }
    out
}

#[test]
fn changed_copy_data_decodes_or_fails_typed() {
    let strategy = (rows(), options(), vec(change(), 1..4)).prop_flat_map(|(rows, o, ch)| {
        let split = split_of(&rows.0);
        (Just(rows), Just(o), Just(ch), cuts(), split)
    });
    check(
        "changed_copy_data_decodes_or_fails_typed",
        512,
        strategy,
        |((table, batch), opts, changes, cuts, split)| {
            let text = encode_rows(std::slice::from_ref(&batch), &opts)
                .map_err(|e| TestCaseError::fail(format!("encode: {e}")))?;
            let _decoded_or_typed_error =
                decode(&table, &opts, &apply(&text, &changes), &cuts, split)?;
            Ok(())
        },
    );
}
