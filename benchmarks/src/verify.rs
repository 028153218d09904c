//! Answer verification: slicedb's rows against DataFusion's.
//!
//! Owns the comparison rules. Both answers are compared as PostgreSQL text:
//! slicedb's as it came over the wire, DataFusion's rendered by
//! [`crate::text::render_cell`]. The reference column's Arrow type picks the
//! rule for each cell:
//!
//! - integers: exact (both sides parsed as integers);
//! - decimals and floats: a relative tolerance of [`REL_TOLERANCE`] (or an
//!   absolute one of [`ABS_TOLERANCE`] near zero), both sides parsed as f64;
//! - strings, dates and everything else: the exact text.
//!
//! Row order: where the query has an outermost `ORDER BY`, the sort-key
//! columns must come in the same order, and rows whose sort keys tie may come
//! in any order among themselves (a tie group cut by `LIMIT` is checked on
//! its keys only, since either engine may keep any of its rows). Without
//! `ORDER BY` both sides are compared as sorted multisets.

use std::cmp::Ordering;
use std::fmt;

use anyhow::Result;
use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema};

use crate::queries::Query;
use crate::text::render_cell;

/// Relative tolerance for decimal and floating-point cells.
pub const REL_TOLERANCE: f64 = 1e-6;
/// Absolute tolerance for decimal and floating-point cells (values near zero).
pub const ABS_TOLERANCE: f64 = 1e-9;

/// A query answer as text: column names and rows of optional cells.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// How a column's cells are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellKind {
    /// Exact, parsed as integers.
    Int,
    /// Relative tolerance, parsed as f64.
    Approx,
    /// Exact text (strings, dates, anything else).
    Text,
}

impl CellKind {
    pub fn of(dt: &DataType) -> CellKind {
        match dt {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => CellKind::Int,
            DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..) => CellKind::Approx,
            _ => CellKind::Text,
        }
    }
}

/// The reference answer: DataFusion's batches as text, with each column's kind.
#[derive(Debug, Clone)]
pub struct Expected {
    pub set: ResultSet,
    pub kinds: Vec<CellKind>,
}

impl Expected {
    /// Render DataFusion's result batches.
    pub fn from_batches(schema: &Schema, batches: &[RecordBatch]) -> Result<Expected> {
        let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
        let kinds = schema
            .fields()
            .iter()
            .map(|f| CellKind::of(f.data_type()))
            .collect();
        let mut rows = Vec::new();
        for b in batches {
            for r in 0..b.num_rows() {
                let row = b
                    .columns()
                    .iter()
                    .map(|c| render_cell(c.as_ref(), r))
                    .collect::<Result<Vec<_>>>()?;
                rows.push(row);
            }
        }
        Ok(Expected {
            set: ResultSet { columns, rows },
            kinds,
        })
    }
}

/// Why an answer is wrong: names the query, and the first differing cell
/// where there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub query: String,
    pub detail: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.query, self.detail)
    }
}

impl std::error::Error for Mismatch {}

fn parse_f64(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok()
}

/// Whether two cells are equal under `kind`'s rule.
pub fn cells_equal(kind: CellKind, expected: Option<&str>, actual: Option<&str>) -> bool {
    let (e, a) = match (expected, actual) {
        (None, None) => return true,
        (Some(e), Some(a)) => (e, a),
        _ => return false,
    };
    match kind {
        CellKind::Text => e == a,
        CellKind::Int => match (e.trim().parse::<i128>(), a.trim().parse::<i128>()) {
            (Ok(x), Ok(y)) => x == y,
            _ => e == a,
        },
        CellKind::Approx => match (parse_f64(e), parse_f64(a)) {
            (Some(x), Some(y)) => {
                if x == y || (x.is_nan() && y.is_nan()) {
                    return true;
                }
                let diff = (x - y).abs();
                diff <= ABS_TOLERANCE || diff <= REL_TOLERANCE * x.abs().max(y.abs())
            }
            _ => e == a,
        },
    }
}

/// A sort key for one cell: NULLs first, then numbers (for numeric kinds),
/// then text.
#[derive(Debug, PartialEq, PartialOrd)]
enum SortCell<'a> {
    Null,
    Num(f64),
    Text(&'a str),
}

fn sort_cell(kind: CellKind, v: Option<&str>) -> SortCell<'_> {
    match v {
        None => SortCell::Null,
        Some(s) => match kind {
            CellKind::Int | CellKind::Approx => match parse_f64(s) {
                Some(x) if !x.is_nan() => SortCell::Num(x),
                _ => SortCell::Text(s),
            },
            CellKind::Text => SortCell::Text(s),
        },
    }
}

fn cmp_rows(kinds: &[CellKind], a: &[Option<String>], b: &[Option<String>]) -> Ordering {
    for ((k, x), y) in kinds.iter().zip(a).zip(b) {
        let o = sort_cell(*k, x.as_deref())
            .partial_cmp(&sort_cell(*k, y.as_deref()))
            .unwrap_or(Ordering::Equal);
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

fn show(v: Option<&str>) -> String {
    match v {
        None => "NULL".to_string(),
        Some(s) => format!("'{s}'"),
    }
}

/// Compare rows pairwise on `cols`; the first difference, if any.
fn first_difference(
    kinds: &[CellKind],
    names: &[String],
    cols: &[usize],
    expected: &[&Vec<Option<String>>],
    actual: &[&Vec<Option<String>>],
    row_numbers: &[usize],
) -> Option<String> {
    for ((e, a), rn) in expected.iter().zip(actual).zip(row_numbers) {
        for &c in cols {
            let (ev, av) = (e[c].as_deref(), a[c].as_deref());
            if !cells_equal(kinds[c], ev, av) {
                return Some(format!(
                    "row {} column {} ({}): expected {}, got {}",
                    rn + 1,
                    c + 1,
                    names[c],
                    show(ev),
                    show(av)
                ));
            }
        }
    }
    None
}

/// Compare `actual` to `expected` for `query`.
pub fn compare(query: &Query, expected: &Expected, actual: &ResultSet) -> Result<(), Mismatch> {
    let fail = |detail: String| {
        Err(Mismatch {
            query: query.name(),
            detail,
        })
    };
    let exp = &expected.set;
    let kinds = &expected.kinds;
    if exp.columns.len() != actual.columns.len() {
        return fail(format!(
            "expected {} columns ({}), got {} ({})",
            exp.columns.len(),
            exp.columns.join(", "),
            actual.columns.len(),
            actual.columns.join(", ")
        ));
    }
    for (i, (e, a)) in exp.columns.iter().zip(&actual.columns).enumerate() {
        if !e.eq_ignore_ascii_case(a) {
            return fail(format!("column {} is named '{a}', expected '{e}'", i + 1));
        }
    }
    if let Some((i, r)) = actual
        .rows
        .iter()
        .enumerate()
        .find(|(_, r)| r.len() != exp.columns.len())
    {
        return fail(format!(
            "row {} has {} cells, expected {}",
            i + 1,
            r.len(),
            exp.columns.len()
        ));
    }
    let all_cols: Vec<usize> = (0..exp.columns.len()).collect();
    let n = exp.rows.len();
    let row_count_detail = |extra: Option<String>| {
        let mut d = format!("expected {n} rows, got {}", actual.rows.len());
        if let Some(x) = extra {
            d.push_str("; first difference: ");
            d.push_str(&x);
        }
        d
    };

    let order_by = query.order_by();
    if order_by.is_empty() {
        // No ORDER BY: compare as sorted multisets.
        let mut e: Vec<&Vec<Option<String>>> = exp.rows.iter().collect();
        let mut a: Vec<&Vec<Option<String>>> = actual.rows.iter().collect();
        e.sort_by(|x, y| cmp_rows(kinds, x, y));
        a.sort_by(|x, y| cmp_rows(kinds, x, y));
        let rn: Vec<usize> = (0..e.len().max(a.len())).collect();
        let diff = first_difference(kinds, &exp.columns, &all_cols, &e, &a, &rn)
            .map(|d| format!("{d} (rows compared as sorted multisets)"));
        if e.len() != a.len() {
            return fail(row_count_detail(diff));
        }
        return match diff {
            Some(d) => fail(d),
            None => Ok(()),
        };
    }

    // ORDER BY: the sort-key columns must come in the same order. An item
    // that is not an output column name makes the whole row the key.
    let key_cols: Vec<usize> = {
        let found: Vec<Option<usize>> = order_by
            .iter()
            .map(|item| {
                exp.columns
                    .iter()
                    .position(|c| c.eq_ignore_ascii_case(item))
            })
            .collect();
        if found.iter().all(Option::is_some) {
            found.into_iter().flatten().collect()
        } else {
            all_cols.clone()
        }
    };
    let e: Vec<&Vec<Option<String>>> = exp.rows.iter().collect();
    let a: Vec<&Vec<Option<String>>> = actual.rows.iter().collect();
    let rn: Vec<usize> = (0..n).collect();
    let key_diff = first_difference(kinds, &exp.columns, &key_cols, &e, &a, &rn)
        .map(|d| format!("{d} (ORDER BY {})", order_by.join(", ")));
    if e.len() != a.len() {
        return fail(row_count_detail(key_diff));
    }
    if let Some(d) = key_diff {
        return fail(d);
    }
    // Within each run of tied sort keys, compare as sorted multisets.
    let same_key = |x: &Vec<Option<String>>, y: &Vec<Option<String>>| {
        key_cols
            .iter()
            .all(|&c| cells_equal(kinds[c], x[c].as_deref(), y[c].as_deref()))
    };
    let cut_by_limit = query.limit().is_some_and(|l| n == l);
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && same_key(e[end], e[start]) {
            end += 1;
        }
        if end == n && cut_by_limit && end - start > 1 {
            // The last tie group may have been cut by LIMIT: either engine
            // may keep any of its rows; the keys were compared above.
            break;
        }
        let mut es: Vec<&Vec<Option<String>>> = e[start..end].to_vec();
        let mut as_: Vec<&Vec<Option<String>>> = a[start..end].to_vec();
        if end - start > 1 {
            es.sort_by(|x, y| cmp_rows(kinds, x, y));
            as_.sort_by(|x, y| cmp_rows(kinds, x, y));
        }
        let rn: Vec<usize> = (start..end).collect();
        if let Some(d) = first_difference(kinds, &exp.columns, &all_cols, &es, &as_, &rn) {
            return fail(if end - start > 1 {
                format!("{d} (rows {}..{} tie on the ORDER BY keys)", start + 1, end)
            } else {
                d
            });
        }
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queries;

    fn row(cells: &[&str]) -> Vec<Option<String>> {
        cells.iter().map(|c| Some(c.to_string())).collect()
    }

    fn exp(cols: &[&str], kinds: Vec<CellKind>, rows: Vec<Vec<Option<String>>>) -> Expected {
        Expected {
            set: ResultSet {
                columns: cols.iter().map(|c| c.to_string()).collect(),
                rows,
            },
            kinds,
        }
    }

    #[test]
    fn tolerance() {
        assert!(cells_equal(CellKind::Approx, Some("1.50"), Some("1.5")));
        assert!(cells_equal(
            CellKind::Approx,
            Some("1000000.000000"),
            Some("1000000.0000001")
        ));
        assert!(!cells_equal(
            CellKind::Approx,
            Some("100.01"),
            Some("100.02")
        ));
        assert!(cells_equal(CellKind::Int, Some("42"), Some("42")));
        assert!(!cells_equal(CellKind::Int, Some("42"), Some("42.0")));
        assert!(!cells_equal(CellKind::Text, Some("a"), Some("a ")));
        assert!(!cells_equal(CellKind::Text, Some("a"), None));
        assert!(cells_equal(CellKind::Text, None, None));
    }

    #[test]
    fn ordered_query_detects_swapped_rows() {
        // Q1 orders by l_returnflag, l_linestatus.
        let q = queries::get(1).unwrap();
        let e = exp(
            &["l_returnflag", "l_linestatus", "sum_qty"],
            vec![CellKind::Text, CellKind::Text, CellKind::Approx],
            vec![row(&["A", "F", "1.00"]), row(&["N", "O", "2.00"])],
        );
        let ok = ResultSet {
            columns: e.set.columns.clone(),
            rows: vec![row(&["A", "F", "1"]), row(&["N", "O", "2.0000001"])],
        };
        assert_eq!(compare(&q, &e, &ok), Ok(()));
        let swapped = ResultSet {
            columns: e.set.columns.clone(),
            rows: vec![row(&["N", "O", "2.00"]), row(&["A", "F", "1.00"])],
        };
        let m = compare(&q, &e, &swapped).unwrap_err();
        assert!(
            m.to_string()
                .starts_with("Q01: row 1 column 1 (l_returnflag)"),
            "{m}"
        );
        let wrong = ResultSet {
            columns: e.set.columns.clone(),
            rows: vec![row(&["A", "F", "1.00"]), row(&["N", "O", "2.01"])],
        };
        let m = compare(&q, &e, &wrong).unwrap_err();
        assert_eq!(
            m.to_string(),
            "Q01: row 2 column 3 (sum_qty): expected '2.00', got '2.01'"
        );
    }

    #[test]
    fn ties_may_come_in_any_order() {
        // Q11 orders by value desc only.
        let q = queries::get(11).unwrap();
        let e = exp(
            &["ps_partkey", "value"],
            vec![CellKind::Int, CellKind::Approx],
            vec![
                row(&["1", "9.00"]),
                row(&["2", "5.00"]),
                row(&["3", "5.00"]),
            ],
        );
        let tied = ResultSet {
            columns: e.set.columns.clone(),
            rows: vec![
                row(&["1", "9.00"]),
                row(&["3", "5.00"]),
                row(&["2", "5.00"]),
            ],
        };
        assert_eq!(compare(&q, &e, &tied), Ok(()));
        let wrong = ResultSet {
            columns: e.set.columns.clone(),
            rows: vec![
                row(&["1", "9.00"]),
                row(&["3", "5.00"]),
                row(&["4", "5.00"]),
            ],
        };
        assert!(compare(&q, &e, &wrong).is_err());
    }

    #[test]
    fn unordered_and_row_counts() {
        let q = queries::get(6).unwrap();
        let e = exp(&["revenue"], vec![CellKind::Approx], vec![row(&["10.00"])]);
        let none = ResultSet {
            columns: vec!["revenue".into()],
            rows: vec![],
        };
        let m = compare(&q, &e, &none).unwrap_err();
        assert!(m.detail.starts_with("expected 1 rows, got 0"), "{m}");
        let named = ResultSet {
            columns: vec!["rev".into()],
            rows: vec![row(&["10.00"])],
        };
        assert!(compare(&q, &e, &named).is_err());
    }
}
