//! Prometheus metrics: the text exposition format (version 0.0.4) written
//! by [`Exposition`], the lock-free [`Histogram`] the hot paths observe
//! into, and the small HTTP server that answers `GET /metrics`
//! ([`http::serve`]). The metric names are listed in docs/metrics.md.
//!
//! The coordinator and the node server both render through this module,
//! so every endpoint follows the same rules: each family's `# HELP` and
//! `# TYPE` come once, before its samples; label values are escaped;
//! histogram buckets are cumulative and end with `+Inf` equal to `_count`.
//!
//! It owns no counter of the database's work (those live where the work
//! happens: the store, the copy meters, the front end) and never blocks:
//! rendering reads atomics and the callers' snapshots only.

pub mod http;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The type of a metric family, as `# TYPE` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A text exposition being written. Families are declared with
/// [`Exposition::family`] and their samples follow at once.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
    /// The family whose samples may follow (name, type).
    current: Option<(String, Kind)>,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a family: its `# HELP` and `# TYPE` lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        debug_assert!(valid_name(name), "bad metric name {name:?}");
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self.current = Some((name.to_string(), kind));
        self
    }

    /// One sample of the current counter or gauge family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let name = match &self.current {
            Some((n, Kind::Counter | Kind::Gauge)) => n.clone(),
            _ => {
                debug_assert!(false, "a sample outside a counter or gauge family");
                return self;
            }
        };
        self.line(&name, labels, None, value);
        self
    }

    /// A family of one sample without labels.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(&[], value)
    }

    /// The samples of one histogram of the current histogram family:
    /// cumulative `_bucket`s up to `+Inf`, `_sum` and `_count`.
    pub fn histogram(&mut self, labels: &[(&str, &str)], h: &HistogramSnapshot) -> &mut Self {
        let name = match &self.current {
            Some((n, Kind::Histogram)) => n.clone(),
            _ => {
                debug_assert!(false, "histogram samples outside a histogram family");
                return self;
            }
        };
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, &bound) in h.bounds.iter().enumerate() {
            cumulative += h.counts[i];
            self.line(
                &bucket,
                labels,
                Some(&format_value(bound)),
                cumulative as f64,
            );
        }
        let count = cumulative + h.counts[h.bounds.len()];
        self.line(&bucket, labels, Some("+Inf"), count as f64);
        self.line(&format!("{name}_sum"), labels, None, h.sum_seconds);
        self.line(&format!("{name}_count"), labels, None, count as f64);
        self
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.out
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>, value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() || le.is_some() {
            self.out.push('{');
            let mut first = true;
            for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
                debug_assert!(valid_label(k), "bad label name {k:?}");
                if !first {
                    self.out.push(',');
                }
                first = false;
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&format_value(value));
        self.out.push('\n');
    }
}

/// A value as the format writes it: integers without a fraction, `+Inf`,
/// `-Inf`, `NaN`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not `le` (the histograms' own).
fn valid_label(n: &str) -> bool {
    valid_name(n) && !n.contains(':')
}

/// Bucket bounds (seconds) of statement latencies: 1 ms to 5 min.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A histogram of durations, observed without a lock: one atomic per
/// bucket (not cumulative; [`Exposition::histogram`] adds them up) and
/// the sum in microseconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// `bounds.len() + 1` buckets: the last one is above every bound.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

/// What a [`Histogram`] held at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub bounds: &'static [f64],
    /// Per bucket, not cumulative; one more than `bounds`.
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

impl Histogram {
    /// `bounds` must be sorted ascending.
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < secs);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples() {
        let mut e = Exposition::new();
        e.family("slicedb_x_total", Kind::Counter, "Things.\nDone \\ here.")
            .sample(&[("kind", "select"), ("outcome", "ok")], 3.0)
            .sample(&[("kind", "a\"b\\c\nd")], 0.5);
        e.single("slicedb_up", Kind::Gauge, "Up.", 1.0);
        assert_eq!(
            e.finish(),
            "# HELP slicedb_x_total Things.\\nDone \\\\ here.\n\
             # TYPE slicedb_x_total counter\n\
             slicedb_x_total{kind=\"select\",outcome=\"ok\"} 3\n\
             slicedb_x_total{kind=\"a\\\"b\\\\c\\nd\"} 0.5\n\
             # HELP slicedb_up Up.\n\
             # TYPE slicedb_up gauge\n\
             slicedb_up 1\n"
        );
    }

    #[test]
    fn values() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(12345678901.0), "12345678901");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(1e20), "100000000000000000000");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_count() {
        static BOUNDS: &[f64] = &[0.01, 0.1, 1.0];
        let h = Histogram::new(BOUNDS);
        for ms in [1, 5, 10, 50, 100, 2_000, 3_000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        // A value on a bound falls into that bound's bucket (le: <=).
        assert_eq!(s.counts, vec![3, 2, 0, 2]);
        assert!((s.sum_seconds - 5.166).abs() < 1e-9, "{}", s.sum_seconds);
        let mut e = Exposition::new();
        e.family("lat_seconds", Kind::Histogram, "Latency.")
            .histogram(&[("kind", "select")], &s);
        assert_eq!(
            e.finish(),
            "# HELP lat_seconds Latency.\n\
             # TYPE lat_seconds histogram\n\
             lat_seconds_bucket{kind=\"select\",le=\"0.01\"} 3\n\
             lat_seconds_bucket{kind=\"select\",le=\"0.1\"} 5\n\
             lat_seconds_bucket{kind=\"select\",le=\"1\"} 5\n\
             lat_seconds_bucket{kind=\"select\",le=\"+Inf\"} 7\n\
             lat_seconds_sum{kind=\"select\"} 5.166\n\
             lat_seconds_count{kind=\"select\"} 7\n"
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("slicedb_rows_total"));
        assert!(valid_name("a:b"));
        assert!(!valid_name("1abc"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(""));
        assert!(!valid_label("a:b"));
    }
}
