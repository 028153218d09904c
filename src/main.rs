//! The `slicedb` command: `local`, `node`, `coordinator`, `disk init|inspect`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use slicedb::config::{parse_size, ClusterConfig};
use slicedb::{LocalCluster, LocalOptions};

/// slicedb: a shared-nothing parallel SQL database with mirrored data slices.
#[derive(Parser)]
#[command(name = "slicedb", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a coordinator and N nodes in this process (real gRPC on loopback)
    /// serving the PostgreSQL wire protocol. Prints `ready: postgres://...`.
    Local {
        /// Number of nodes.
        #[arg(long, default_value_t = 4)]
        nodes: u32,
        /// Data directory: disk images and the coordinator's catalog. Reused
        /// on restart.
        #[arg(long, default_value = "./slicedb-data")]
        data: PathBuf,
        /// Address for PostgreSQL clients (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:5433")]
        listen: SocketAddr,
        /// Size of each node's disk image (sparse), e.g. 4GiB.
        #[arg(long, default_value = "4GiB")]
        disk_size: String,
        /// Data slices per disk when the cluster is first created.
        #[arg(long, default_value_t = 4)]
        slices_per_disk: u32,
    },
    /// Run one node of a multi-process cluster. Prints `ready: node N at ADDR`.
    Node {
        /// The cluster file (TOML); see docs/configuration.md.
        #[arg(long)]
        config: PathBuf,
        /// This node's id in the cluster file.
        #[arg(long)]
        id: u32,
    },
    /// Run the coordinator of a multi-process cluster (start the nodes first).
    /// Prints `ready: postgres://...` once every node answered.
    Coordinator {
        /// The cluster file (TOML); see docs/configuration.md.
        #[arg(long)]
        config: PathBuf,
    },
    /// Create or inspect disk images.
    Disk {
        #[command(subcommand)]
        command: DiskCommand,
    },
}

#[derive(Subcommand)]
enum DiskCommand {
    /// Create a sparse disk image with primary, mirror and temp segments.
    Init {
        /// Path of the image to create (must not exist).
        file: PathBuf,
        /// Size, e.g. 1GiB.
        #[arg(long)]
        size: String,
        /// Cluster name written into the image.
        #[arg(long, default_value = "slicedb")]
        cluster_id: String,
        /// Node id written into the image.
        #[arg(long, default_value_t = 0)]
        node: u32,
        /// Disk id written into the image.
        #[arg(long, default_value_t = 0)]
        disk: u32,
    },
    /// Print an image's format version, segments, and extents per table and slice.
    Inspect {
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn ready_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into()),
        )
        .init();
    match cli.command {
        Command::Disk { command } => disk(command),
        other => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(serve(other))
        }
    }
}

async fn serve(cmd: Command) -> Result<()> {
    match cmd {
        Command::Local {
            nodes,
            data,
            listen,
            disk_size,
            slices_per_disk,
        } => {
            let opts = LocalOptions {
                nodes,
                data_dir: data,
                listen: Some(listen),
                disk_size: parse_size(&disk_size)?,
                slices_per_disk,
            };
            let cluster = LocalCluster::start(opts).await?;
            ready_line(&format!(
                "ready: {}",
                cluster.pg_url().expect("local always listens")
            ));
            slicedb::shutdown_signal().await;
            tracing::info!("shutting down");
            cluster.shutdown().await;
            Ok(())
        }
        Command::Node { config, id } => {
            let cfg = ClusterConfig::load(&config)?;
            slicedb::run_node(&cfg, id, slicedb::shutdown_signal(), |addr| {
                ready_line(&format!("ready: node {id} at {addr}"))
            })
            .await?;
            Ok(())
        }
        Command::Coordinator { config } => {
            let cfg = ClusterConfig::load(&config)?;
            slicedb::run_coordinator(&cfg, slicedb::shutdown_signal(), |addr| {
                ready_line(&format!("ready: {}", slicedb::pg_url(addr)))
            })
            .await?;
            Ok(())
        }
        Command::Disk { .. } => unreachable!("handled before the runtime starts"),
    }
}

fn disk(cmd: DiskCommand) -> Result<()> {
    use slicedb_engine::store::{DiskIds, DiskStore, InitOptions, StoreOptions};
    match cmd {
        DiskCommand::Init {
            file,
            size,
            cluster_id,
            node,
            disk,
        } => {
            let size = parse_size(&size)?;
            let ids = DiskIds {
                cluster_id: slicedb::cluster_uuid(&cluster_id),
                node_id: node,
                disk_id: disk,
            };
            let init = InitOptions::new(size);
            DiskStore::create(&file, ids, init, StoreOptions::default())
                .with_context(|| format!("creating {}", file.display()))?;
            println!("created {} ({size} bytes, sparse)", file.display());
            Ok(())
        }
        DiskCommand::Inspect { file, json } => {
            let store = DiskStore::open_read_only(&file)
                .with_context(|| format!("inspecting {}", file.display()))?;
            let report = store.report();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render_text());
            }
            Ok(())
        }
    }
}
