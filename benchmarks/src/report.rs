//! Results: per-query timings and verdicts, the printed table and the JSON.
//!
//! Owns the shape of a run's outcome ([`Report`]), how it is summarised
//! (medians, totals, ratios) and its two renderings: the text table printed
//! at the end of a run and the `--json` file (the same data, serialised).

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::LoadReport;

/// A query's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// slicedb's answer matched DataFusion's.
    Ok,
    /// slicedb answered, differently from DataFusion.
    Wrong,
    /// slicedb returned an error.
    Error,
    /// DataFusion (the reference) failed, so nothing could be verified.
    ReferenceError,
    /// Only DataFusion ran (`--engine datafusion`).
    NotRun,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Wrong => "WRONG",
            Status::Error => "ERROR",
            Status::ReferenceError => "REFERENCE ERROR",
            Status::NotRun => "-",
        }
    }

    /// Whether this verdict is a failure of the run.
    pub fn failed(self) -> bool {
        matches!(self, Status::Wrong | Status::Error | Status::ReferenceError)
    }
}

/// One query's timings and verdict.
#[derive(Debug, Clone, Serialize)]
pub struct QueryReport {
    pub query: String,
    /// Rows in the answer (DataFusion's; slicedb's if DataFusion failed).
    pub rows: Option<usize>,
    pub slicedb_ms: Vec<f64>,
    pub datafusion_ms: Vec<f64>,
    pub slicedb_median_ms: Option<f64>,
    pub datafusion_median_ms: Option<f64>,
    /// slicedb median / DataFusion median.
    pub ratio: Option<f64>,
    pub status: Status,
    /// The first differing cell, or the error message.
    pub detail: Option<String>,
}

impl QueryReport {
    /// Fill in the medians and the ratio from the raw times.
    pub fn summarise(&mut self) {
        self.slicedb_median_ms = median(&self.slicedb_ms);
        self.datafusion_median_ms = median(&self.datafusion_ms);
        self.ratio = match (self.slicedb_median_ms, self.datafusion_median_ms) {
            (Some(s), Some(d)) if d > 0.0 => Some(s / d),
            _ => None,
        };
    }
}

/// Sums of medians.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Sum of slicedb medians over the queries both engines ran.
    pub slicedb_ms: Option<f64>,
    /// Sum of DataFusion medians over the same queries (over all queries
    /// with `--engine datafusion`).
    pub datafusion_ms: Option<f64>,
    pub ratio: Option<f64>,
    /// How many queries the sums cover.
    pub queries_timed: usize,
    pub queries_ok: usize,
    pub queries_failed: usize,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scale_factor: f64,
    pub engine: String,
    /// `local (N nodes)` or the URL given.
    pub target: Option<String>,
    pub iterations: usize,
    pub datafusion_target_partitions: usize,
    pub generated_rows: u64,
    pub generate_seconds: f64,
    pub load: Option<LoadReport>,
    pub queries: Vec<QueryReport>,
    pub totals: Totals,
}

/// The median of `xs` (mean of the middle two for an even count).
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Sum the medians into totals.
pub fn totals(queries: &[QueryReport]) -> Totals {
    let both: Vec<&QueryReport> = queries
        .iter()
        .filter(|q| q.slicedb_median_ms.is_some() && q.datafusion_median_ms.is_some())
        .collect();
    let df_only = queries.iter().all(|q| q.slicedb_ms.is_empty());
    let (s, d, n) = if df_only {
        let ds: Vec<f64> = queries
            .iter()
            .filter_map(|q| q.datafusion_median_ms)
            .collect();
        (None, (!ds.is_empty()).then(|| ds.iter().sum()), ds.len())
    } else if both.is_empty() {
        (None, None, 0)
    } else {
        (
            Some(both.iter().filter_map(|q| q.slicedb_median_ms).sum::<f64>()),
            Some(
                both.iter()
                    .filter_map(|q| q.datafusion_median_ms)
                    .sum::<f64>(),
            ),
            both.len(),
        )
    };
    Totals {
        slicedb_ms: s,
        datafusion_ms: d,
        ratio: match (s, d) {
            (Some(s), Some(d)) if d > 0.0 => Some(s / d),
            _ => None,
        },
        queries_timed: n,
        queries_ok: queries.iter().filter(|q| q.status == Status::Ok).count(),
        queries_failed: queries.iter().filter(|q| q.status.failed()).count(),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into())
}

fn ratio(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
}

impl Report {
    /// The queries that failed, with their details.
    pub fn failures(&self) -> Vec<&QueryReport> {
        self.queries.iter().filter(|q| q.status.failed()).collect()
    }

    /// The load and per-query tables as printed at the end of a run.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "TPC-H SF {} | engine {} | target {} | {} iteration(s) | DataFusion target_partitions {}",
            self.scale_factor,
            self.engine,
            self.target.as_deref().unwrap_or("-"),
            self.iterations,
            self.datafusion_target_partitions
        );
        let _ = writeln!(
            s,
            "generated {} rows in {:.2} s",
            self.generated_rows, self.generate_seconds
        );
        if let Some(load) = &self.load {
            let _ = writeln!(
                s,
                "\n{:<10} {:>12} {:>10} {:>14}",
                "table", "rows", "load s", "rows/s"
            );
            for t in &load.tables {
                let _ = writeln!(
                    s,
                    "{:<10} {:>12} {:>10.2} {:>14.0}",
                    t.table, t.rows, t.seconds, t.rows_per_sec
                );
            }
            let _ = writeln!(
                s,
                "{:<10} {:>12} {:>10.2} {:>14.0}",
                "total", load.rows, load.seconds, load.rows_per_sec
            );
        }
        let _ = writeln!(
            s,
            "\n{:<6} {:>8} {:>14} {:>16} {:>7}  status",
            "query", "rows", "slicedb ms", "datafusion ms", "ratio"
        );
        for q in &self.queries {
            let _ = writeln!(
                s,
                "{:<6} {:>8} {:>14} {:>16} {:>7}  {}",
                q.query,
                q.rows.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                ms(q.slicedb_median_ms),
                ms(q.datafusion_median_ms),
                ratio(q.ratio),
                q.status.as_str()
            );
        }
        let t = &self.totals;
        let _ = writeln!(
            s,
            "{:<6} {:>8} {:>14} {:>16} {:>7}  {} ok, {} failed (sums over {} queries)",
            "total",
            "",
            ms(t.slicedb_ms),
            ms(t.datafusion_ms),
            ratio(t.ratio),
            t.queries_ok,
            t.queries_failed,
            t.queries_timed
        );
        let failures = self.failures();
        if !failures.is_empty() {
            let _ = writeln!(s, "\nfailures:");
            for q in failures {
                let _ = writeln!(
                    s,
                    "  {} {}: {}",
                    q.query,
                    q.status.as_str(),
                    q.detail.as_deref().unwrap_or("")
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
