//! Deterministic test data: the rows, their COPY text encoding, and the same
//! rows as Arrow record batches for a DataFusion reference context.
//!
//! The seed comes from `SLICEDB_TEST_SEED` when set (to replay a failure),
//! otherwise from the clock; it is always printed.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Result;
use datafusion::arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::harness::Rows;

/// The seed for this run (printed so a failure can be replayed).
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("SLICEDB_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64
        });
    eprintln!("[{test}] seed {seed} (replay with SLICEDB_TEST_SEED={seed})");
    seed
}

/// One row of `t (k bigint, g int, v double precision, s text, d date,
/// n numeric(12,2))`.
#[derive(Clone, Debug)]
pub struct Row {
    pub k: i64,
    pub g: i32,
    pub v: Option<f64>,
    pub s: Option<String>,
    /// Days since 1970-01-01.
    pub d: i32,
    /// Hundredths: `n` is `cents / 100`.
    pub cents: i64,
}

pub const T_COLUMNS: &str = "k bigint, g int, v double precision, s text, d date, n numeric(12,2)";

const WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
];
/// Values that exercise COPY text escaping and odd text.
const ODD: &[&str] = &[
    "tab\there",
    "back\\slash",
    "new\nline",
    "quote'\"s",
    "comma, and; semicolon",
    "üñíçødé ✓",
    "",
    "\\N is not null",
];

/// `n` rows with distinct `k`, `g` in 0..120, ~5% NULL `v` and `s`.
pub fn gen_rows(seed: u64, n: usize) -> Vec<Row> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = HashSet::with_capacity(n);
    let mut rows = Vec::with_capacity(n);
    while rows.len() < n {
        let k = rng.random_range(-1_000_000_000_000i64..1_000_000_000_000);
        if !seen.insert(k) {
            continue;
        }
        let g = rng.random_range(0..120);
        let v = if rng.random_bool(0.05) {
            None
        } else {
            Some(rng.random::<f64>() * 1000.0)
        };
        let s = if rng.random_bool(0.05) {
            None
        } else if rng.random_bool(0.02) {
            Some(ODD[rng.random_range(0..ODD.len())].to_string())
        } else {
            let a = WORDS[rng.random_range(0..WORDS.len())];
            let b = WORDS[rng.random_range(0..WORDS.len())];
            Some(format!("{a} {b} {}", rng.random_range(0..1000)))
        };
        // 2000-01-01 .. about 2030.
        let d = 10_957 + rng.random_range(0..11_000);
        let cents = rng.random_range(-9_999_999_999i64..=9_999_999_999);
        rows.push(Row {
            k,
            g,
            v,
            s,
            d,
            cents,
        });
    }
    rows
}

/// COPY text-format escaping of one value.
pub fn copy_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// `YYYY-MM-DD` of a day number (Howard Hinnant's civil_from_days).
pub fn date_string(days: i32) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `123.45` / `-0.05` from hundredths.
pub fn cents_string(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let a = cents.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

impl Row {
    /// One line of COPY text format, newline included.
    pub fn copy_line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\n",
            self.k,
            self.g,
            self.v
                .map(|v| v.to_string())
                .unwrap_or_else(|| "\\N".into()),
            self.s
                .as_deref()
                .map(copy_escape)
                .unwrap_or_else(|| "\\N".into()),
            date_string(self.d),
            cents_string(self.cents)
        )
    }
}

fn t_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("g", DataType::Int32, false),
        Field::new("v", DataType::Float64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("d", DataType::Date32, false),
        Field::new("n", DataType::Decimal128(12, 2), false),
    ]))
}

pub fn t_batch(rows: &[Row]) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.k))),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.g))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.v))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.s.as_deref()))),
        Arc::new(Date32Array::from_iter_values(rows.iter().map(|r| r.d))),
        Arc::new(
            Decimal128Array::from_iter_values(rows.iter().map(|r| r.cents as i128))
                .with_precision_and_scale(12, 2)?,
        ),
    ];
    Ok(RecordBatch::try_new(t_schema(), cols)?)
}

/// The `dim (g int, name text)` rows: g in 0..100, names shared by several g.
pub fn dim_rows() -> Vec<(i32, String)> {
    (0..100)
        .map(|g| (g, format!("name {:02}", g % 37)))
        .collect()
}

pub fn dim_batch(rows: &[(i32, String)]) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int32, false),
        Field::new("name", DataType::Utf8, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.1.as_str()),
        )),
    ];
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// Register `batch` as table `name` in `ctx`.
pub fn register(ctx: &SessionContext, name: &str, batch: RecordBatch) -> Result<()> {
    let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
    ctx.register_table(name, Arc::new(table))?;
    Ok(())
}

/// Run `sql` in the reference context; rows as text like the wire returns.
pub async fn reference(ctx: &SessionContext, sql: &str) -> Result<Rows> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut rows = Vec::new();
    for b in &batches {
        for r in 0..b.num_rows() {
            let mut row = Vec::with_capacity(b.num_columns());
            for col in b.columns() {
                row.push(if col.is_null(r) {
                    None
                } else {
                    Some(array_value_to_string(col.as_ref(), r)?)
                });
            }
            rows.push(row);
        }
    }
    Ok(rows)
}
