//! `tpch`: generate TPC-H data, load it into slicedb, run the 22 queries,
//! verify every answer against DataFusion in-process and time both.
//! The work is in the `slicedb_benchmarks` library; this only parses flags
//! and prints. See `docs/benchmarks.md`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use slicedb_benchmarks::{run, Engine, Options};

// The same allocator for both engines in this process (the embedded
// cluster and DataFusion in-process); datafusion-cli uses it too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// TPC-H on slicedb, verified against DataFusion in-process.
#[derive(Debug, Parser)]
#[command(name = "tpch", version, about, long_about = None)]
struct Args {
    /// Scale factor (0.01 or more; 1 is about 8.7 million rows).
    #[arg(long, default_value_t = 1.0)]
    sf: f64,
    /// Nodes of the embedded cluster started when no --url is given.
    #[arg(long, default_value_t = 4)]
    nodes: u32,
    /// Runs of each query on each engine; the table shows the median.
    #[arg(long, default_value_t = 3)]
    iterations: usize,
    /// Use this running slicedb (postgres://user@host:port/db) instead of
    /// starting an embedded cluster. Its TPC-H tables are dropped and
    /// re-created unless --skip-load is given.
    #[arg(long)]
    url: Option<String>,
    /// slicedb: time slicedb and DataFusion and verify slicedb's answers;
    /// datafusion: time DataFusion in-process alone (no cluster, no load).
    #[arg(long, value_enum, default_value_t = Engine::Slicedb)]
    engine: Engine,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run only these queries (comma-separated numbers, e.g. 1,6,18).
    #[arg(long, value_delimiter = ',')]
    queries: Vec<u32>,
    /// Data directory of the embedded cluster (default: a temporary
    /// directory, removed at the end).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// DataFusion's target_partitions for the in-process run (0: the number
    /// of cores).
    #[arg(long, default_value_t = 0)]
    target_partitions: usize,
    /// Do not create or load the tables: they are already in the cluster
    /// given by --url, at this scale factor.
    #[arg(long, requires = "url")]
    skip_load: bool,
    /// Give up on a slicedb query after this many seconds, and on a COPY
    /// whose server takes no data for this long.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Also write the generated tables to DIR/<table>.parquet, e.g. for
    /// `benchmarks/duckdb_tpch.py --parquet DIR`.
    #[arg(long, value_name = "DIR")]
    dump_parquet: Option<PathBuf>,
    /// Never draw progress bars (they are drawn only on a terminal anyway).
    #[arg(long)]
    no_progress: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    slicedb::allocator::keep_freed_memory();
    // The embedded cluster logs through tracing: warnings and errors (a node
    // declared failed, a failover) go to stderr; RUST_LOG=info shows more.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let opts = Options {
        sf: args.sf,
        nodes: args.nodes,
        iterations: args.iterations,
        url: args.url,
        engine: args.engine,
        queries: args.queries,
        data_dir: args.data_dir,
        target_partitions: args.target_partitions,
        skip_load: args.skip_load,
        query_timeout: Duration::from_secs(args.timeout),
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        dump_parquet: args.dump_parquet,
    };
    // On Ctrl-C or SIGTERM, drop the run: that stops the embedded cluster
    // and removes its temporary data directory.
    let report = tokio::select! {
        r = run(&opts) => r?,
        _ = slicedb::shutdown_signal() => anyhow::bail!("interrupted"),
    };
    println!("{}", report.render());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if !report.failures().is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
