//! slicedb-benchmarks: the TPC-H runner.
//!
//! Generates the eight TPC-H tables ([`gen`]), loads them into a slicedb
//! cluster over the PostgreSQL wire with `COPY FROM STDIN` ([`load`]), runs
//! the 22 queries ([`queries`]) on slicedb ([`wire`]) and on DataFusion
//! in-process over the same record batches ([`reference`]), checks slicedb's
//! answers against DataFusion's ([`verify`]) and reports timings ([`report`]).
//! [`run`] ties these together; the `tpch` binary and the SF 0.01 test both
//! call it. See `docs/benchmarks.md`.

pub mod gen;
pub mod load;
pub mod queries;
pub mod reference;
pub mod report;
pub mod text;
pub mod verify;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::queries::Query;
use crate::reference::Reference;
use crate::report::{QueryReport, Report, Status};
use crate::verify::Expected;

/// How long to wait for the embedded cluster to stop at the end of a run.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

/// Which engines a run times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// slicedb over the PostgreSQL wire, verified against (and timed next
    /// to) DataFusion in-process.
    Slicedb,
    /// DataFusion in-process only: no cluster, no load, no verification.
    Datafusion,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Slicedb => "slicedb",
            Engine::Datafusion => "datafusion",
        }
    }
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Scale factor, 0.01 or more.
    pub sf: f64,
    /// Nodes of the embedded cluster (ignored with `url`).
    pub nodes: u32,
    /// Runs of each query on each engine; the median is reported.
    pub iterations: usize,
    /// A running slicedb to use instead of starting an embedded one.
    pub url: Option<String>,
    pub engine: Engine,
    /// Query numbers to run; empty means all 22.
    pub queries: Vec<u32>,
    /// Data directory of the embedded cluster; a temporary one if `None`.
    pub data_dir: Option<PathBuf>,
    /// DataFusion's target partitions; 0 means the number of cores.
    pub target_partitions: usize,
    /// Skip DDL and COPY (the tables are already loaded at this SF).
    pub skip_load: bool,
    /// Give up on one slicedb query after this long, and on a COPY whose
    /// server takes no data for this long.
    pub query_timeout: Duration,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// Also write the generated tables here as `<table>.parquet` (for other
    /// engines, e.g. `benchmarks/duckdb_tpch.py`).
    pub dump_parquet: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sf: 1.0,
            nodes: 4,
            iterations: 3,
            url: None,
            engine: Engine::Slicedb,
            queries: Vec::new(),
            data_dir: None,
            target_partitions: 0,
            skip_load: false,
            query_timeout: Duration::from_secs(600),
            progress: false,
            dump_parquet: None,
        }
    }
}

/// Write every generated table to `dir/<table>.parquet`.
pub fn dump_parquet(data: &gen::TpchData, dir: &std::path::Path) -> Result<()> {
    use datafusion::parquet::arrow::ArrowWriter;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for t in &data.tables {
        let path = dir.join(format!("{}.parquet", t.table.name()));
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = ArrowWriter::try_new(file, t.schema.clone(), None)?;
        for b in &t.batches {
            w.write(b)?;
        }
        w.close()?;
    }
    Ok(())
}

/// The number of cores (at least 1).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn selected_queries(opts: &Options) -> Result<Vec<Query>> {
    if opts.queries.is_empty() {
        return Ok(queries::all());
    }
    opts.queries
        .iter()
        .map(|&n| queries::get(n).ok_or_else(|| anyhow!("there is no TPC-H query {n} (1..=22)")))
        .collect()
}

/// An embedded cluster and the directory it keeps its disks in.
struct Embedded {
    cluster: slicedb::LocalCluster,
    _tmp: Option<tempfile::TempDir>,
}

async fn start_embedded(opts: &Options) -> Result<(Embedded, String)> {
    let (dir, tmp) = match &opts.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("slicedb-tpch-")
                .tempdir()
                .context("creating a temporary data directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut lo = slicedb::LocalOptions::new(&dir);
    lo.nodes = opts.nodes;
    lo.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    // Disk images are sparse files: size them for two copies of the data
    // with room to spare.
    let per_node = (opts.sf * 8.0 * (1u64 << 30) as f64 / opts.nodes.max(1) as f64) as u64;
    lo.disk_size = lo.disk_size.max(per_node);
    let cluster = slicedb::LocalCluster::start(lo)
        .await
        .map_err(|e| anyhow!("starting the embedded cluster in {}: {e}", dir.display()))?;
    let url = cluster
        .pg_url()
        .ok_or_else(|| anyhow!("the embedded cluster serves no PostgreSQL address"))?;
    Ok((Embedded { cluster, _tmp: tmp }, url))
}

fn query_bar(progress: bool, n: usize) -> ProgressBar {
    let pb = if progress {
        ProgressBar::new(n as u64)
    } else {
        ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::hidden())
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} {bar:30.cyan/blue} {pos:>2}/{len:2} {elapsed:>4} {msg}",
        )
        .expect("valid progress template")
        .progress_chars("=> "),
    );
    pb.set_prefix("queries");
    pb
}

/// Generate, load, run and verify, as `opts` says.
pub async fn run(opts: &Options) -> Result<Report> {
    if opts.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let selected = selected_queries(opts)?;
    let partitions = if opts.target_partitions == 0 {
        cores()
    } else {
        opts.target_partitions
    };

    let (sf, threads, progress) = (opts.sf, cores(), opts.progress);
    let data = tokio::task::spawn_blocking(move || gen::generate(sf, threads, progress))
        .await
        .context("generator task")??;
    if !opts.progress {
        eprintln!(
            "generated {} rows at SF {} in {:.2} s",
            data.total_rows(),
            opts.sf,
            data.elapsed.as_secs_f64()
        );
    }

    if let Some(dir) = &opts.dump_parquet {
        dump_parquet(&data, dir)?;
        eprintln!("wrote the tables as Parquet to {}", dir.display());
    }

    let mut embedded = None;
    let mut client = None;
    let mut target = None;
    let mut load_report = None;
    let mut url = String::new();
    if opts.engine == Engine::Slicedb {
        url = match &opts.url {
            Some(u) => {
                target = Some(u.clone());
                u.clone()
            }
            None => {
                let (e, u) = start_embedded(opts).await?;
                embedded = Some(e);
                target = Some(format!("local ({} nodes)", opts.nodes));
                u
            }
        };
        let c = wire::connect(&url).await?;
        if !opts.skip_load {
            load_report = Some(load::load(&c, &data, opts.progress, opts.query_timeout).await?);
        }
        client = Some(c);
    }

    let reference = Reference::new(&data, partitions)?;
    let pb = query_bar(opts.progress, selected.len());
    let mut reports = Vec::new();
    for q in &selected {
        pb.set_message(q.name());
        let mut qr = QueryReport {
            query: q.name(),
            rows: None,
            slicedb_ms: Vec::new(),
            datafusion_ms: Vec::new(),
            slicedb_median_ms: None,
            datafusion_median_ms: None,
            ratio: None,
            status: if opts.engine == Engine::Slicedb {
                Status::Ok
            } else {
                Status::NotRun
            },
            detail: None,
        };

        // The reference answer, and DataFusion's times.
        let mut expected: Option<Expected> = None;
        for _ in 0..opts.iterations {
            let t0 = Instant::now();
            match reference.run(q.sql).await {
                Ok((schema, batches)) => {
                    qr.datafusion_ms.push(t0.elapsed().as_secs_f64() * 1e3);
                    if expected.is_none() {
                        let e = Expected::from_batches(&schema, &batches)?;
                        qr.rows = Some(e.set.rows.len());
                        expected = Some(e);
                    }
                }
                Err(e) => {
                    qr.status = Status::ReferenceError;
                    qr.detail = Some(format!("DataFusion: {e:#}"));
                    qr.datafusion_ms.clear();
                    break;
                }
            }
        }

        // slicedb's answers and times.
        if let Some(c) = client.as_mut() {
            for _ in 0..opts.iterations {
                let t0 = Instant::now();
                let res = tokio::time::timeout(opts.query_timeout, wire::query(c, q.sql)).await;
                let elapsed = t0.elapsed().as_secs_f64() * 1e3;
                match res {
                    Ok(Ok(set)) => {
                        qr.slicedb_ms.push(elapsed);
                        if qr.rows.is_none() {
                            qr.rows = Some(set.rows.len());
                        }
                        if let (Some(e), Status::Ok) = (&expected, qr.status) {
                            if let Err(m) = verify::compare(q, e, &set) {
                                qr.status = Status::Wrong;
                                qr.detail = Some(m.detail);
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        if qr.status != Status::ReferenceError {
                            qr.status = Status::Error;
                            qr.detail = Some(format!("{e:#}"));
                        }
                        qr.slicedb_ms.clear();
                        break;
                    }
                    Err(_) => {
                        if qr.status != Status::ReferenceError {
                            qr.status = Status::Error;
                            qr.detail = Some(format!("no answer within {:?}", opts.query_timeout));
                        }
                        qr.slicedb_ms.clear();
                        // The old session may still be busy: start a new one.
                        *c = wire::connect(&url).await?;
                        break;
                    }
                }
            }
        }
        qr.summarise();
        if !opts.progress {
            eprintln!(
                "{} slicedb {:>10} ms  datafusion {:>10} ms  {}{}",
                qr.query,
                qr.slicedb_median_ms
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| "-".into()),
                qr.datafusion_median_ms
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| "-".into()),
                qr.status.as_str(),
                qr.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            );
        }
        reports.push(qr);
        pb.inc(1);
    }
    pb.finish_with_message("done");

    drop(client);
    if let Some(e) = embedded {
        // A cluster wedged by a failure may not stop: the report matters more.
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, e.cluster.shutdown())
            .await
            .is_err()
        {
            eprintln!(
                "warning: the embedded cluster did not shut down within {SHUTDOWN_TIMEOUT:?}; leaving it"
            );
        }
    }

    let totals = report::totals(&reports);
    Ok(Report {
        scale_factor: opts.sf,
        engine: opts.engine.as_str().to_string(),
        target,
        iterations: opts.iterations,
        datafusion_target_partitions: partitions,
        generated_rows: data.total_rows(),
        generate_seconds: data.elapsed.as_secs_f64(),
        load: load_report,
        queries: reports,
        totals,
    })
}
