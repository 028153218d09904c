//! Data generation: the eight TPC-H tables as Arrow record batches.
//!
//! Owns the list of tables ([`Table`]), their SQL definitions (column types
//! that map to exactly the Arrow types `tpchgen-arrow` produces, and the
//! distribution key), and [`generate`], which runs `tpchgen` in parallel
//! parts (one thread per core) and keeps the batches in key order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

/// One of the eight TPC-H tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Region,
    Nation,
    Supplier,
    Customer,
    Part,
    PartSupp,
    Orders,
    LineItem,
}

impl Table {
    /// All tables, smallest first (the order they are generated and loaded in).
    pub const ALL: [Table; 8] = [
        Table::Region,
        Table::Nation,
        Table::Supplier,
        Table::Customer,
        Table::Part,
        Table::PartSupp,
        Table::Orders,
        Table::LineItem,
    ];

    /// The SQL name of the table.
    pub fn name(self) -> &'static str {
        match self {
            Table::Region => "region",
            Table::Nation => "nation",
            Table::Supplier => "supplier",
            Table::Customer => "customer",
            Table::Part => "part",
            Table::PartSupp => "partsupp",
            Table::Orders => "orders",
            Table::LineItem => "lineitem",
        }
    }

    /// The distribution key (`DISTRIBUTE ON (key)`).
    pub fn distribution_key(self) -> &'static str {
        match self {
            Table::Region => "r_regionkey",
            Table::Nation => "n_nationkey",
            Table::Supplier => "s_suppkey",
            Table::Customer => "c_custkey",
            Table::Part => "p_partkey",
            Table::PartSupp => "ps_partkey",
            Table::Orders => "o_orderkey",
            Table::LineItem => "l_orderkey",
        }
    }

    /// Column definitions in table order. The SQL types map to the Arrow
    /// types of `tpchgen-arrow`: `bigint` -> Int64, `integer` -> Int32,
    /// `decimal(15,2)` -> Decimal128(15, 2), `date` -> Date32, and
    /// `char(1)`/`varchar(n)` -> Utf8 (slicedb stores strings as Utf8; the
    /// generator's Utf8View holds the same text, and COPY sends text anyway).
    /// The spec's wider `char(n)` columns are `varchar(n)` here: their values
    /// never need the blank padding `char(n)` would add in PostgreSQL, so the
    /// same DDL gives the same answers on a real PostgreSQL given by `--url`.
    pub fn columns(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Table::Region => &[
                ("r_regionkey", "bigint"),
                ("r_name", "varchar(25)"),
                ("r_comment", "varchar(152)"),
            ],
            Table::Nation => &[
                ("n_nationkey", "bigint"),
                ("n_name", "varchar(25)"),
                ("n_regionkey", "bigint"),
                ("n_comment", "varchar(152)"),
            ],
            Table::Supplier => &[
                ("s_suppkey", "bigint"),
                ("s_name", "varchar(25)"),
                ("s_address", "varchar(40)"),
                ("s_nationkey", "bigint"),
                ("s_phone", "varchar(15)"),
                ("s_acctbal", "decimal(15,2)"),
                ("s_comment", "varchar(101)"),
            ],
            Table::Customer => &[
                ("c_custkey", "bigint"),
                ("c_name", "varchar(25)"),
                ("c_address", "varchar(40)"),
                ("c_nationkey", "bigint"),
                ("c_phone", "varchar(15)"),
                ("c_acctbal", "decimal(15,2)"),
                ("c_mktsegment", "varchar(10)"),
                ("c_comment", "varchar(117)"),
            ],
            Table::Part => &[
                ("p_partkey", "bigint"),
                ("p_name", "varchar(55)"),
                ("p_mfgr", "varchar(25)"),
                ("p_brand", "varchar(10)"),
                ("p_type", "varchar(25)"),
                ("p_size", "integer"),
                ("p_container", "varchar(10)"),
                ("p_retailprice", "decimal(15,2)"),
                ("p_comment", "varchar(23)"),
            ],
            Table::PartSupp => &[
                ("ps_partkey", "bigint"),
                ("ps_suppkey", "bigint"),
                ("ps_availqty", "integer"),
                ("ps_supplycost", "decimal(15,2)"),
                ("ps_comment", "varchar(199)"),
            ],
            Table::Orders => &[
                ("o_orderkey", "bigint"),
                ("o_custkey", "bigint"),
                ("o_orderstatus", "char(1)"),
                ("o_totalprice", "decimal(15,2)"),
                ("o_orderdate", "date"),
                ("o_orderpriority", "varchar(15)"),
                ("o_clerk", "varchar(15)"),
                ("o_shippriority", "integer"),
                ("o_comment", "varchar(79)"),
            ],
            Table::LineItem => &[
                ("l_orderkey", "bigint"),
                ("l_partkey", "bigint"),
                ("l_suppkey", "bigint"),
                ("l_linenumber", "integer"),
                ("l_quantity", "decimal(15,2)"),
                ("l_extendedprice", "decimal(15,2)"),
                ("l_discount", "decimal(15,2)"),
                ("l_tax", "decimal(15,2)"),
                ("l_returnflag", "char(1)"),
                ("l_linestatus", "char(1)"),
                ("l_shipdate", "date"),
                ("l_commitdate", "date"),
                ("l_receiptdate", "date"),
                ("l_shipinstruct", "varchar(25)"),
                ("l_shipmode", "varchar(10)"),
                ("l_comment", "varchar(44)"),
            ],
        }
    }

    /// `CREATE TABLE ... DISTRIBUTE ON (key)` for this table.
    pub fn create_sql(self) -> String {
        let cols: Vec<String> = self
            .columns()
            .iter()
            .map(|(n, t)| format!("    {n} {t} not null"))
            .collect();
        format!(
            "create table {} (\n{}\n) distribute on ({})",
            self.name(),
            cols.join(",\n"),
            self.distribution_key()
        )
    }

    /// The Arrow schema `tpchgen-arrow` produces for this table.
    pub fn schema(self) -> SchemaRef {
        match self {
            Table::Region => RegionArrow::schema_ref(),
            Table::Nation => NationArrow::schema_ref(),
            Table::Supplier => SupplierArrow::schema_ref(),
            Table::Customer => CustomerArrow::schema_ref(),
            Table::Part => PartArrow::schema_ref(),
            Table::PartSupp => PartSuppArrow::schema_ref(),
            Table::Orders => OrderArrow::schema_ref(),
            Table::LineItem => LineItemArrow::schema_ref(),
        }
    }

    /// Rows expected at scale factor `sf` (exact except for lineitem, whose
    /// count is about four lines per order).
    pub fn estimated_rows(self, sf: f64) -> u64 {
        let n = match self {
            Table::Region => 5,
            Table::Nation => 25,
            Table::Supplier => SupplierGenerator::calculate_row_count(sf, 1, 1),
            Table::Customer => CustomerGenerator::calculate_row_count(sf, 1, 1),
            Table::Part => PartGenerator::calculate_row_count(sf, 1, 1),
            Table::PartSupp => PartSuppGenerator::calculate_row_count(sf, 1, 1),
            Table::Orders => OrderGenerator::calculate_row_count(sf, 1, 1),
            Table::LineItem => OrderGenerator::calculate_row_count(sf, 1, 1) * 4,
        };
        n.max(0) as u64
    }

    /// Generate part `part` (1-based) of `parts` at scale factor `sf`,
    /// calling `progress` with the row count of every batch.
    fn generate_part(
        self,
        sf: f64,
        part: i32,
        parts: i32,
        progress: &dyn Fn(u64),
    ) -> Result<Vec<RecordBatch>> {
        fn drain(
            it: impl Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>>,
            progress: &dyn Fn(u64),
        ) -> Result<Vec<RecordBatch>> {
            it.map(|b| {
                let b = b?;
                progress(b.num_rows() as u64);
                Ok(b)
            })
            .collect()
        }
        match self {
            Table::Region => drain(
                RegionArrow::new(RegionGenerator::new(sf, part, parts)),
                progress,
            ),
            Table::Nation => drain(
                NationArrow::new(NationGenerator::new(sf, part, parts)),
                progress,
            ),
            Table::Supplier => drain(
                SupplierArrow::new(SupplierGenerator::new(sf, part, parts)),
                progress,
            ),
            Table::Customer => drain(
                CustomerArrow::new(CustomerGenerator::new(sf, part, parts)),
                progress,
            ),
            Table::Part => drain(
                PartArrow::new(PartGenerator::new(sf, part, parts)),
                progress,
            ),
            Table::PartSupp => drain(
                PartSuppArrow::new(PartSuppGenerator::new(sf, part, parts)),
                progress,
            ),
            Table::Orders => drain(
                OrderArrow::new(OrderGenerator::new(sf, part, parts)),
                progress,
            ),
            Table::LineItem => drain(
                LineItemArrow::new(LineItemGenerator::new(sf, part, parts)),
                progress,
            ),
        }
    }
}

/// One generated table.
#[derive(Debug, Clone)]
pub struct TableData {
    pub table: Table,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl TableData {
    pub fn rows(&self) -> u64 {
        self.batches.iter().map(|b| b.num_rows() as u64).sum()
    }
}

/// All eight tables at one scale factor.
#[derive(Debug, Clone)]
pub struct TpchData {
    pub sf: f64,
    pub tables: Vec<TableData>,
    pub elapsed: Duration,
}

impl TpchData {
    pub fn get(&self, t: Table) -> &TableData {
        self.tables
            .iter()
            .find(|d| d.table == t)
            .expect("every table is generated")
    }

    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows()).sum()
    }
}

/// The progress bar style shared by generation and load.
pub(crate) fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>10} {bar:30.cyan/blue} {human_pos:>11}/{human_len:11} rows {rate:>14} {elapsed:>4} {msg}",
    )
    .expect("valid progress template")
    .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{:.0}/s", s.per_sec());
    })
    .progress_chars("=> ")
}

/// A `MultiProgress` drawing to stderr, or hidden when `show` is false.
pub(crate) fn multi_progress(show: bool) -> MultiProgress {
    if show {
        MultiProgress::new()
    } else {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    }
}

/// Generate all eight tables at scale factor `sf` (0.01 or more), using
/// `threads` parallel parts per table. Shows one progress bar per table
/// when `progress` is true.
pub fn generate(sf: f64, threads: usize, progress: bool) -> Result<TpchData> {
    if sf.is_nan() || sf < 0.01 || !sf.is_finite() {
        return Err(anyhow!("scale factor must be at least 0.01, got {sf}"));
    }
    let start = Instant::now();
    let mp = multi_progress(progress);
    let mut tables = Vec::new();
    for t in Table::ALL {
        let pb = mp.add(ProgressBar::new(t.estimated_rows(sf)));
        pb.set_style(bar_style());
        pb.set_prefix(t.name());
        pb.set_message("generating");
        // The two fixed tables and small scale factors are not worth splitting.
        let parts = if matches!(t, Table::Region | Table::Nation) || sf < 0.1 {
            1
        } else {
            threads.max(1) as i32
        };
        let results: Vec<Result<Vec<RecordBatch>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..=parts)
                .map(|part| {
                    let pb = pb.clone();
                    s.spawn(move || t.generate_part(sf, part, parts, &|n| pb.inc(n)))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(anyhow!("generator thread for {} panicked", t.name()))
                    })
                })
                .collect()
        });
        let mut batches = Vec::new();
        for r in results {
            batches.extend(r?);
        }
        let data = TableData {
            table: t,
            schema: Arc::clone(&t.schema()),
            batches,
        };
        pb.set_length(data.rows());
        pb.set_position(data.rows());
        pb.finish_with_message("generated");
        tables.push(data);
    }
    Ok(TpchData {
        sf,
        tables,
        elapsed: start.elapsed(),
    })
}
