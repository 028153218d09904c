//! Statement metrics of the coordinator's endpoint: statements by kind and
//! outcome, their latency, rows returned and written, COPY's bytes, and
//! the sessions connected; and the whole endpoint's text
//! ([`StatementMetrics::endpoint_text`]), with the cluster's families from
//! [`slicedb_coordinator::metrics`]. Names are in docs/metrics.md.
//!
//! Statements are observed where the front end dispatches them: a query's
//! responses are looked at as they leave (the command tag says what a
//! statement was and how many rows it wrote), a result's rows are counted
//! as they stream, and a statement is done when its last row (or COPY
//! data) went out. Only atomics are touched per row. It never changes a
//! response, and never decides anything from what it counts.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::Stream;
use pgwire::api::results::Response;
use pgwire::error::PgWireResult;
use pgwire::messages::response::CommandComplete;
use slicedb_coordinator::metrics::{Exposition, Histogram, Kind, LATENCY_BOUNDS};

use slicedb_coordinator::Cluster;

/// What a statement was, as the endpoint's `kind` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Copy,
    Ddl,
    Other,
}

impl StatementKind {
    const ALL: [StatementKind; 7] = [
        StatementKind::Select,
        StatementKind::Insert,
        StatementKind::Update,
        StatementKind::Delete,
        StatementKind::Copy,
        StatementKind::Ddl,
        StatementKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Select => "select",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Copy => "copy",
            StatementKind::Ddl => "ddl",
            StatementKind::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// From a statement's first keyword (or a command tag's first word).
    pub fn of_keyword(word: &str) -> StatementKind {
        match word.to_ascii_uppercase().as_str() {
            "SELECT" | "WITH" | "VALUES" | "TABLE" => StatementKind::Select,
            "INSERT" => StatementKind::Insert,
            "UPDATE" => StatementKind::Update,
            "DELETE" => StatementKind::Delete,
            "COPY" => StatementKind::Copy,
            "CREATE" | "DROP" | "ALTER" | "TRUNCATE" => StatementKind::Ddl,
            _ => StatementKind::Other,
        }
    }

    /// From a statement's text: its first keyword, past blanks, comments
    /// and opening parentheses.
    pub fn of_sql(sql: &str) -> StatementKind {
        let mut rest = sql;
        loop {
            let t = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
            if let Some(line) = t.strip_prefix("--") {
                rest = line.split_once('\n').map_or("", |(_, r)| r);
            } else if let Some(block) = t.strip_prefix("/*") {
                rest = block.split_once("*/").map_or("", |(_, r)| r);
            } else {
                rest = t;
                break;
            }
        }
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect();
        StatementKind::of_keyword(&word)
    }
}

/// The counters; one set per front end.
#[derive(Debug)]
pub struct StatementMetrics {
    /// [kind][0 ok, 1 error]
    statements: [[AtomicU64; 2]; 7],
    latency: Vec<Histogram>,
    rows_returned: AtomicU64,
    /// By kind (insert, update, delete, copy; the others stay 0).
    rows_written: [AtomicU64; 7],
    copy_in_bytes: AtomicU64,
    copy_out_bytes: AtomicU64,
}

impl Default for StatementMetrics {
    fn default() -> Self {
        StatementMetrics {
            statements: Default::default(),
            latency: StatementKind::ALL
                .iter()
                .map(|_| Histogram::new(LATENCY_BOUNDS))
                .collect(),
            rows_returned: AtomicU64::new(0),
            rows_written: Default::default(),
            copy_in_bytes: AtomicU64::new(0),
            copy_out_bytes: AtomicU64::new(0),
        }
    }
}

impl StatementMetrics {
    /// A statement ended.
    pub fn finished(&self, kind: StatementKind, ok: bool, started: Instant) {
        self.statements[kind.index()][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        self.latency[kind.index()].observe(started.elapsed());
    }

    pub fn wrote(&self, kind: StatementKind, rows: u64) {
        self.rows_written[kind.index()].fetch_add(rows, Ordering::Relaxed);
    }

    /// Bytes of COPY FROM STDIN data received.
    pub fn copy_in(&self, bytes: usize) {
        self.copy_in_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A COPY FROM STDIN that began at `started` ended: with the rows it
    /// committed, or its error.
    pub fn copy_in_done<E>(&self, started: Instant, rows: Result<u64, E>) -> Result<u64, E> {
        if let Ok(n) = &rows {
            self.wrote(StatementKind::Copy, *n);
        }
        self.finished(StatementKind::Copy, rows.is_ok(), started);
        rows
    }

    /// One statement's response, on its way out: counted now, or (rows and
    /// COPY data) as it streams and once its stream ends.
    fn response(self: &Arc<Self>, r: Response, text: StatementKind, started: Instant) -> Response {
        match r {
            Response::Query(mut q) => {
                let kind = match StatementKind::of_keyword(&q.command_tag) {
                    StatementKind::Other => text,
                    k => k,
                };
                let rows = std::mem::replace(&mut q.data_rows, Box::pin(futures::stream::empty()));
                q.data_rows = Box::pin(Watched {
                    inner: rows,
                    end: Some(End::new(self, kind, started)),
                    count: |m, _| {
                        m.rows_returned.fetch_add(1, Ordering::Relaxed);
                    },
                });
                Response::Query(q)
            }
            Response::CopyOut(mut c) => {
                let data =
                    std::mem::replace(&mut c.data_stream, Box::pin(futures::stream::empty()));
                c.data_stream = Box::pin(Watched {
                    inner: data,
                    end: Some(End::new(self, StatementKind::Copy, started)),
                    count: |m, d| {
                        m.copy_out_bytes
                            .fetch_add(d.data.len() as u64, Ordering::Relaxed);
                    },
                });
                Response::CopyOut(c)
            }
            Response::Execution(tag) => {
                let text_tag = CommandComplete::from(tag.clone()).tag;
                let mut words = text_tag.split_whitespace();
                let kind = match words.next().map(StatementKind::of_keyword) {
                    Some(StatementKind::Other) | None => text,
                    Some(k) => k,
                };
                if matches!(
                    kind,
                    StatementKind::Insert
                        | StatementKind::Update
                        | StatementKind::Delete
                        | StatementKind::Copy
                ) {
                    if let Some(n) = words.last().and_then(|w| w.parse().ok()) {
                        self.wrote(kind, n);
                    }
                }
                self.finished(kind, true, started);
                Response::Execution(tag)
            }
            Response::Error(e) => {
                self.finished(text, false, started);
                Response::Error(e)
            }
            r @ (Response::TransactionStart(_) | Response::TransactionEnd(_)) => {
                self.finished(StatementKind::Other, true, started);
                r
            }
            // COPY FROM STDIN ends in the copy handler; an empty query is
            // no statement.
            r => r,
        }
    }

    /// The coordinator's whole endpoint: these counters, `sessions`
    /// connected, and the cluster's state.
    pub fn endpoint_text(&self, sessions: usize, cluster: &Cluster) -> String {
        let mut e = Exposition::new();
        self.write(&mut e, sessions);
        slicedb_coordinator::metrics::write_cluster(cluster, &mut e);
        e.finish()
    }

    fn write(&self, e: &mut Exposition, sessions: usize) {
        e.family(
            "slicedb_statements_total",
            Kind::Counter,
            "Statements clients ran, by kind and outcome.",
        );
        for k in StatementKind::ALL {
            for (o, outcome) in ["ok", "error"].iter().enumerate() {
                let n = self.statements[k.index()][o].load(Ordering::Relaxed);
                e.sample(&[("kind", k.as_str()), ("outcome", outcome)], n as f64);
            }
        }
        e.family(
            "slicedb_statement_duration_seconds",
            Kind::Histogram,
            "Statement latency, from dispatch to the last row or COPY data sent.",
        );
        for k in StatementKind::ALL {
            e.histogram(&[("kind", k.as_str())], &self.latency[k.index()].snapshot());
        }
        e.single(
            "slicedb_rows_returned_total",
            Kind::Counter,
            "Rows sent to clients as query results.",
            self.rows_returned.load(Ordering::Relaxed) as f64,
        );
        e.family(
            "slicedb_rows_written_total",
            Kind::Counter,
            "Rows inserted, updated, deleted or copied in, as the statements' command tags say.",
        );
        for k in [
            StatementKind::Insert,
            StatementKind::Update,
            StatementKind::Delete,
            StatementKind::Copy,
        ] {
            let n = self.rows_written[k.index()].load(Ordering::Relaxed);
            e.sample(&[("kind", k.as_str())], n as f64);
        }
        e.family(
            "slicedb_copy_bytes_total",
            Kind::Counter,
            "Bytes of COPY data: received (from) and sent (to).",
        )
        .sample(
            &[("direction", "from")],
            self.copy_in_bytes.load(Ordering::Relaxed) as f64,
        )
        .sample(
            &[("direction", "to")],
            self.copy_out_bytes.load(Ordering::Relaxed) as f64,
        );
        e.single(
            "slicedb_sessions",
            Kind::Gauge,
            "Client sessions connected now.",
            sessions as f64,
        );
    }
}

/// Observe the statements of one simple query (or, with one response, an
/// extended-protocol Execute) whose responses `work` makes.
/// Callers box `work`: these futures are large, and each level that holds
/// one by value costs its size again on the stack of a debug build.
pub(crate) async fn observe<F>(
    m: &Arc<StatementMetrics>,
    sql: &str,
    work: F,
) -> PgWireResult<Vec<Response>>
where
    F: Future<Output = PgWireResult<Vec<Response>>>,
{
    let kind = StatementKind::of_sql(sql);
    let started = Instant::now();
    // Dropped unfinished (canceled, timed out, the client gone): an error.
    let end = End::new(m, kind, started);
    match work.await {
        Ok(rs) => {
            end.disarm();
            Ok(rs
                .into_iter()
                .map(|r| m.response(r, kind, started))
                .collect())
        }
        Err(e) => {
            end.record(false);
            Err(e)
        }
    }
}

/// [`observe`] for the extended protocol's one response.
pub(crate) async fn observe_one<F>(
    m: &Arc<StatementMetrics>,
    sql: &str,
    work: F,
) -> PgWireResult<Response>
where
    F: Future<Output = PgWireResult<Response>>,
{
    let mut rs = observe(m, sql, async { work.await.map(|r| vec![r]) }).await?;
    Ok(rs.pop().unwrap_or(Response::EmptyQuery))
}

/// A statement to record once: when [`End::record`]ed, or as failed when
/// dropped first.
struct End {
    m: Arc<StatementMetrics>,
    kind: StatementKind,
    started: Instant,
    armed: bool,
}

impl End {
    fn new(m: &Arc<StatementMetrics>, kind: StatementKind, started: Instant) -> End {
        End {
            m: m.clone(),
            kind,
            started,
            armed: true,
        }
    }

    fn record(mut self, ok: bool) {
        self.armed = false;
        self.m.finished(self.kind, ok, self.started);
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for End {
    fn drop(&mut self) {
        if self.armed {
            self.m.finished(self.kind, false, self.started);
        }
    }
}

/// A response's stream, counted item by item; its statement ends with the
/// stream (an error item: failed) or when it is dropped (the client
/// stopped reading: as far as it got, ok).
struct Watched<T> {
    inner: Pin<Box<dyn Stream<Item = PgWireResult<T>> + Send>>,
    end: Option<End>,
    count: fn(&StatementMetrics, &T),
}

impl<T> Stream for Watched<T> {
    type Item = PgWireResult<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = std::task::ready!(self.inner.as_mut().poll_next(cx));
        match &item {
            Some(Ok(x)) => {
                if let Some(end) = &self.end {
                    (self.count)(&end.m, x);
                }
            }
            Some(Err(_)) => {
                if let Some(end) = self.end.take() {
                    end.record(false);
                }
            }
            None => {
                if let Some(end) = self.end.take() {
                    end.record(true);
                }
            }
        }
        Poll::Ready(item)
    }
}

impl<T> Drop for Watched<T> {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            end.record(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_text() {
        use StatementKind::*;
        for (sql, want) in [
            ("select 1", Select),
            ("  -- hi\n /* x */ (SELECT 1) UNION (SELECT 2)", Select),
            ("WITH a AS (SELECT 1) SELECT * FROM a", Select),
            ("insert into t values (1)", Insert),
            ("UPDATE t SET a = 1", Update),
            ("delete from t", Delete),
            ("COPY t FROM STDIN", Copy),
            ("create table t (a int)", Ddl),
            ("TRUNCATE t", Ddl),
            ("BEGIN", Other),
            ("", Other),
            ("/* never closed", Other),
        ] {
            assert_eq!(StatementKind::of_sql(sql), want, "{sql}");
        }
    }

    #[test]
    fn renders_every_kind_and_outcome() {
        let m = StatementMetrics::default();
        let t = Instant::now();
        m.finished(StatementKind::Select, true, t);
        m.finished(StatementKind::Insert, false, t);
        m.wrote(StatementKind::Insert, 5);
        m.copy_in(100);
        let mut e = Exposition::new();
        m.write(&mut e, 3);
        let text = e.finish();
        for line in [
            "slicedb_statements_total{kind=\"select\",outcome=\"ok\"} 1\n",
            "slicedb_statements_total{kind=\"insert\",outcome=\"error\"} 1\n",
            "slicedb_statements_total{kind=\"other\",outcome=\"ok\"} 0\n",
            "slicedb_statement_duration_seconds_count{kind=\"select\"} 1\n",
            "slicedb_statement_duration_seconds_bucket{kind=\"ddl\",le=\"+Inf\"} 0\n",
            "slicedb_rows_written_total{kind=\"insert\"} 5\n",
            "slicedb_copy_bytes_total{direction=\"from\"} 100\n",
            "slicedb_sessions 3\n",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
