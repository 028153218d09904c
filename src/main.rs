//! The `slicedb` command: `local`, `node`, `coordinator`, `verify`,
//! `disk init|inspect`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use slicedb::config::{parse_size, ClusterConfig};
use slicedb::{LocalCluster, LocalOptions};

// glibc malloc hands large buffers back to the kernel and faults them in
// again on every COPY batch and scan block; mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// slicedb: a shared-nothing parallel SQL database with mirrored data slices.
#[derive(Parser)]
#[command(name = "slicedb", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of `Local`'s many options costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Start a coordinator and N nodes in this process (real gRPC on loopback)
    /// serving the PostgreSQL wire protocol. Prints `ready: postgres://...`.
    Local {
        /// Number of nodes.
        #[arg(long, default_value_t = 4)]
        nodes: u32,
        /// Spare nodes started besides those (no slices when the cluster is
        /// created; `slicedb_nodes` shows them as `spare`).
        #[arg(long, default_value_t = 0)]
        spares: u32,
        /// How long a failed node may stay away before its copies are
        /// regenerated onto a spare or the survivors, e.g. 60s.
        #[arg(long, default_value = "60s")]
        regen_delay: String,
        /// Bytes per second slice copies (regeneration, resync) may move
        /// into one target node while the nodes run queries or writes
        /// (idle nodes copy at full speed), e.g. 100MiB; 0: no limit.
        #[arg(long, default_value = "25MiB")]
        copy_rate: String,
        /// The longest a statement may run in a session that did not SET
        /// statement_timeout, e.g. 5m; 0: no limit.
        #[arg(long, default_value = "0")]
        statement_timeout: String,
        /// How long a session may sit idle outside a transaction block
        /// before it is closed (57P05), unless it SET idle_session_timeout,
        /// e.g. 1h; 0: never.
        #[arg(long, default_value = "0")]
        idle_session_timeout: String,
        /// How long a session may sit idle inside an open transaction block
        /// before it is closed (25P03) and the block rolled back, unless it
        /// SET idle_in_transaction_session_timeout, e.g. 10min; 0: never.
        #[arg(long, default_value = "0")]
        idle_in_transaction_session_timeout: String,
        /// Memory the coordinator's query execution may hold at once
        /// (sorts, joins and aggregates past it spill to disk or fail with
        /// 53200), e.g. 4GiB; 0: no limit.
        #[arg(long, default_value = "4GiB")]
        memory_limit: String,
        /// Memory each node's query fragments may hold at once (past it
        /// they spill or fail with 53200), e.g. 2GiB; 0: no limit.
        #[arg(long, default_value = "2GiB")]
        node_memory_limit: String,
        /// Most sessions connected at once; more are refused with 53300.
        #[arg(long, default_value_t = slicedb::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
        /// Disk images of each node.
        #[arg(long, default_value_t = 1)]
        disks_per_node: u32,
        /// Of each node's disks, how many hold no slices when the cluster is
        /// created: each takes over a failed disk of its node.
        #[arg(long, default_value_t = 0)]
        spare_disks: u32,
        /// Data directory: disk images and the coordinator's catalog. Reused
        /// on restart.
        #[arg(long, default_value = "./slicedb-data")]
        data: PathBuf,
        /// Address for PostgreSQL clients (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:5433")]
        listen: SocketAddr,
        /// Size of each node's disk image (allocated whole when made), e.g. 4GiB.
        #[arg(long, default_value = "4GiB")]
        disk_size: String,
        /// Data slices per disk when the cluster is first created.
        #[arg(long, default_value_t = 4)]
        slices_per_disk: u32,
        /// Memory for decoded block columns of each node, e.g. 1GiB; 0 reads
        /// every scan from the disk images.
        #[arg(long, default_value = "1GiB")]
        cache_size: String,
        /// Bytes per second each node's background scrubber reads from each
        /// disk, verifying every committed block and repairing a damaged
        /// one from the other copy, e.g. 8MiB; 0 turns it off.
        #[arg(long, default_value = "8MiB")]
        scrub_rate: String,
        /// Damaged blocks (each repaired from the other copy) that fail a
        /// disk over when met within --bad-block-window; 1 fails a disk at
        /// its first bad block.
        #[arg(long, default_value_t = slicedb_engine::server::RepairPolicy::DEFAULT_LIMIT)]
        bad_block_limit: u32,
        /// The window of --bad-block-limit, e.g. 10min.
        #[arg(long, default_value = "10min")]
        bad_block_window: String,
        /// Tables with fewer rows take no runtime join filters: they are
        /// read whole and at once, not after the join's build side.
        #[arg(long, default_value_t = slicedb_coordinator::CoordinatorConfig::DEFAULT_RUNTIME_FILTER_MIN_ROWS)]
        runtime_filter_min_rows: u64,
        /// Tables with fewer rows are never joined on the nodes with the
        /// join's small side sent to them: their rows go to the coordinator.
        #[arg(long, default_value_t = slicedb_coordinator::CoordinatorConfig::DEFAULT_BROADCAST_JOIN_MIN_ROWS)]
        broadcast_join_min_rows: u64,
        /// Where the coordinator serves Prometheus metrics (GET /metrics):
        /// host:port, auto (--listen's port + 1000; port 0 picks a free
        /// one) or off. Node N serves its own on the port + 1 + N (free
        /// ports for port 0). Every address is logged at startup, and the
        /// coordinator's endpoint lists the nodes' (docs/metrics.md).
        #[arg(long, default_value = "auto")]
        metrics_listen: String,
        /// A host-based rule, as a pg_hba.conf line (repeat it; first match
        /// wins), e.g. --hba "hostssl all all 0.0.0.0/0 scram-sha-256".
        /// None: loopback connections are trusted without a password and
        /// --listen must be a loopback address (docs/security.md).
        #[arg(long = "hba", value_name = "RULE")]
        hba: Vec<String>,
        /// PEM certificate chain for TLS on --listen (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The superuser created when the catalog has no role yet (no
        /// password: give it one with ALTER ROLE ... PASSWORD).
        #[arg(long, default_value = slicedb_sql::auth::DEFAULT_SUPERUSER)]
        superuser: String,
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
    /// Create the credentials of a multi-process cluster in the cluster
    /// file's certs_dir: the cluster's CA and a certificate and key for the
    /// coordinator and every node (processes call each other only over
    /// mutual TLS with them). Run it again after adding nodes: it issues
    /// what is missing with the same CA. Give each machine ca.pem and its
    /// own process's two files only; keep ca.key off the cluster.
    Certs {
        /// The cluster file (TOML); see docs/configuration.md.
        #[arg(long)]
        config: PathBuf,
    },
    /// Compare the primary and mirror of every slice of every table, online,
    /// at one snapshot (row count and a checksum over rowid + row contents).
    /// Exits 1 if any slice is diverged or could not be checked.
    Verify {
        /// The running cluster's PostgreSQL URL.
        #[arg(long, default_value = "postgres://slicedb@127.0.0.1:5433/slicedb")]
        url: String,
        /// Print every slice, not only the summary and the bad ones.
        #[arg(long)]
        all: bool,
    },
    /// Heal now: regenerate every failed node's and disk's copies without
    /// waiting for regen_delay, and show progress until every slice is in
    /// sync again (exit 0), or say what blocks it (exit 1).
    Regenerate {
        /// The running cluster's PostgreSQL URL.
        #[arg(long, default_value = "postgres://slicedb@127.0.0.1:5433/slicedb")]
        url: String,
        /// Give up after this long, e.g. 30m.
        #[arg(long, default_value = "1h")]
        timeout: String,
    },
    /// Create or inspect disk images.
    Disk {
        #[command(subcommand)]
        command: DiskCommand,
    },
}

#[derive(Subcommand)]
enum DiskCommand {
    /// Create a disk image (allocated whole) with primary, mirror and temp segments.
    ///
    /// With --profile-zones N it first measures the read speed of N zones of
    /// the device and gives the primary segment the fastest zones, the mirror
    /// the next and temp the slowest (--layout static, the default when the
    /// zones differ); on a flat file or SSD it keeps offset order.
    Init {
        /// Path of the image to create (must not exist unless --existing).
        file: PathBuf,
        /// Size, e.g. 1GiB (default with --existing: the whole file or device).
        #[arg(long)]
        size: Option<String>,
        /// Cluster name written into the image.
        #[arg(long, default_value = "slicedb")]
        cluster_id: String,
        /// Node id written into the image.
        #[arg(long, default_value_t = 0)]
        node: u32,
        /// Disk id written into the image.
        #[arg(long, default_value_t = 0)]
        disk: u32,
        /// Initialize an existing file or block device in place (all it
        /// holds is lost).
        #[arg(long)]
        existing: bool,
        /// How zones go to segments: auto (static if the profile shows
        /// zones of different speeds, else flat), flat (offset order),
        /// static (fastest to primary, then mirror, slowest to temp), or
        /// dynamic (temp on the slowest; primary allocates from the fast
        /// end, mirror from the slow end).
        #[arg(long, default_value = "auto")]
        layout: String,
        /// Measure the sequential read speed of this many zones (1-64) of
        /// the device first (0: no profile).
        #[arg(long, default_value_t = 0)]
        profile_zones: usize,
        /// Bytes read from each zone per round while profiling.
        #[arg(long, default_value = "4MiB")]
        profile_sample: String,
        /// Zone speeds known in advance, in MiB/s, in offset order, comma
        /// separated (instead of --profile-zones), e.g. 180,170,150,120,90.
        #[arg(long)]
        zone_speeds: Option<String>,
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
    slicedb::allocator::keep_freed_memory();
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
        Command::Certs { config } => certs(&config),
        other => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let done = rt.block_on(serve(other));
            // Work still running (a statement that did not stop at once)
            // must not hold the exit: what is committed is on the disks.
            rt.shutdown_timeout(SHUTDOWN_GRACE);
            done
        }
    }
}

/// `slicedb certs`: issue what the cluster file's members lack.
fn certs(config: &std::path::Path) -> Result<()> {
    let cfg = ClusterConfig::load(config)?;
    let written = slicedb_engine::cluster_tls::issue(
        &cfg.certs_dir,
        &slicedb::cluster_uuid(&cfg.cluster_id),
        &cfg.members(),
    )
    .map_err(slicedb::Error::from)?;
    for f in &written {
        println!("wrote {}", f.display());
    }
    println!(
        "{} members have credentials in {} ({} files written)",
        cfg.members().len(),
        cfg.certs_dir.display(),
        written.len()
    );
    Ok(())
}

/// How long a shutdown waits for running work before the process exits.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

async fn serve(cmd: Command) -> Result<()> {
    match cmd {
        Command::Local {
            nodes,
            spares,
            regen_delay,
            copy_rate,
            statement_timeout,
            idle_session_timeout,
            idle_in_transaction_session_timeout,
            memory_limit,
            node_memory_limit,
            max_connections,
            disks_per_node,
            spare_disks,
            data,
            listen,
            disk_size,
            slices_per_disk,
            cache_size,
            scrub_rate,
            bad_block_limit,
            bad_block_window,
            runtime_filter_min_rows,
            broadcast_join_min_rows,
            metrics_listen,
            hba,
            tls_cert,
            tls_key,
            superuser,
        } => {
            let auth = slicedb_sql::auth::AuthConfig {
                rules: hba,
                tls_cert,
                tls_key,
                superuser,
            };
            let banner = auth.describe();
            let metrics_listen = slicedb::metrics::resolve(
                &metrics_listen,
                &listen.to_string(),
                "--metrics-listen",
            )?;
            let opts = LocalOptions {
                nodes,
                spares,
                regen_delay: slicedb::config::parse_duration(&regen_delay)?,
                copy_rate: parse_size(&copy_rate)?,
                statement_timeout: slicedb::config::parse_duration(&statement_timeout)?,
                idle_session_timeout: slicedb::config::parse_duration(&idle_session_timeout)?,
                idle_in_transaction_session_timeout: slicedb::config::parse_duration(
                    &idle_in_transaction_session_timeout,
                )?,
                memory_limit: parse_size(&memory_limit)?,
                node_memory_limit: parse_size(&node_memory_limit)?,
                max_connections,
                disks_per_node,
                spare_disks,
                data_dir: data,
                listen: Some(listen),
                disk_size: parse_size(&disk_size)?,
                slices_per_disk,
                cache_size: parse_size(&cache_size)?,
                scrub_rate: parse_size(&scrub_rate)?,
                bad_blocks: slicedb_engine::server::RepairPolicy {
                    limit: bad_block_limit,
                    window: slicedb::config::parse_duration(&bad_block_window)?,
                },
                runtime_filter_min_rows,
                broadcast_join_min_rows,
                metrics_listen,
                auth,
            };
            let cluster = LocalCluster::start(opts).await?;
            // On stderr: stdout carries the ready line alone.
            eprintln!("slicedb local: {banner}");
            ready_line(&format!(
                "ready: {}",
                cluster.pg_url().expect("local always listens")
            ));
            slicedb::shutdown_signal().await;
            tracing::info!("shutting down");
            if tokio::time::timeout(SHUTDOWN_GRACE, cluster.shutdown())
                .await
                .is_err()
            {
                tracing::warn!(grace = ?SHUTDOWN_GRACE, "shutdown did not finish in time; exiting anyway");
            }
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
        Command::Verify { url, all } => verify(&url, all).await,
        Command::Regenerate { url, timeout } => {
            regenerate(&url, slicedb::config::parse_duration(&timeout)?).await
        }
        Command::Disk { .. } | Command::Certs { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

async fn verify(url: &str, all: bool) -> Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(conn);
    let rows = client
        .simple_query(
            "SELECT table_name, slice, primary_rows, mirror_rows, status \
             FROM slicedb_verify ORDER BY table_name, slice",
        )
        .await
        .context("SELECT FROM slicedb_verify")?;
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    let mut bad = 0;
    for m in rows {
        let tokio_postgres::SimpleQueryMessage::Row(r) = m else {
            continue;
        };
        let status = r.get(4).unwrap_or("?").to_string();
        let ok = matches!(status.as_str(), "in_sync" | "unmirrored" | "degraded");
        if !ok {
            bad += 1;
        }
        if all || !ok {
            println!(
                "{:<24} slice {:>4}  primary {:>10}  mirror {:>10}  {status}",
                r.get(0).unwrap_or("?"),
                r.get(1).unwrap_or("?"),
                r.get(2).unwrap_or("-"),
                r.get(3).unwrap_or("-"),
            );
        }
        let key = status.split(':').next().unwrap_or("?").to_string();
        *counts.entry(key).or_default() += 1;
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "slices: {}",
        if summary.is_empty() {
            "none".into()
        } else {
            summary.join(", ")
        }
    );
    if bad > 0 {
        anyhow::bail!("{bad} slice(s) diverged or could not be checked");
    }
    Ok(())
}

/// REGENERATE, then the slices' states every half second until all are in
/// sync. Stops with an error if the cluster says regeneration is refused,
/// or after `timeout`.
async fn regenerate(url: &str, timeout: std::time::Duration) -> Result<()> {
    use std::io::Write;
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(conn);
    client
        .simple_query("REGENERATE")
        .await
        .context("REGENERATE")?;
    let rows = |msgs: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<Vec<String>> {
        msgs.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("").to_string())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    };
    let start = std::time::Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    loop {
        let states = rows(
            client
                .simple_query(
                    "SELECT state, count(*) FROM slicedb_slices GROUP BY state ORDER BY state",
                )
                .await
                .context("SELECT FROM slicedb_slices")?,
        );
        let total: u64 = states.iter().filter_map(|r| r[1].parse::<u64>().ok()).sum();
        let in_sync: u64 = states
            .iter()
            .filter(|r| r[0] == "in_sync" || r[0] == "primary_only")
            .filter_map(|r| r[1].parse::<u64>().ok())
            .sum();
        let others: Vec<String> = states
            .iter()
            .filter(|r| r[0] != "in_sync" && r[0] != "primary_only")
            .map(|r| format!("{} {}", r[1], r[0]))
            .collect();
        let width = 30;
        let filled = (in_sync * width).checked_div(total).unwrap_or(width) as usize;
        let line = format!(
            "[{}{}] {in_sync}/{total} slices in sync{}  {:.0?}",
            "#".repeat(filled),
            "-".repeat(width as usize - filled),
            if others.is_empty() {
                String::new()
            } else {
                format!(" ({})", others.join(", "))
            },
            start.elapsed()
        );
        if tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
        if in_sync == total {
            if tty {
                eprintln!();
            }
            println!("fully protected: {total} slices in sync");
            return Ok(());
        }
        let last = rows(
            client
                .simple_query("SELECT cause FROM slicedb_map_history ORDER BY epoch DESC LIMIT 1")
                .await
                .context("SELECT FROM slicedb_map_history")?,
        );
        if let Some(cause) = last.first().map(|r| r[0].clone()) {
            if cause.starts_with("regeneration refused") {
                if tty {
                    eprintln!();
                }
                anyhow::bail!("{cause}");
            }
        }
        if start.elapsed() > timeout {
            if tty {
                eprintln!();
            }
            anyhow::bail!(
                "not fully protected after {timeout:?}: {}",
                others.join(", ")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The zone options of `disk init`.
struct ZoneArgs {
    layout: String,
    profile_zones: usize,
    profile_sample: String,
    zone_speeds: Option<String>,
}

/// `slicedb disk init`: make or open the device, profile its zones if asked,
/// lay the segments out and write the superblock.
fn init_disk(
    file: &std::path::Path,
    size: Option<&str>,
    ids: slicedb_engine::store::DiskIds,
    existing: bool,
    z: &ZoneArgs,
) -> Result<()> {
    use slicedb_engine::disk::profile::{measure, ProfileOptions};
    use slicedb_engine::disk::{BlockDevice, FileDevice, Placement, Superblock, ZoneProfile};
    use slicedb_engine::store::{DiskStore, InitOptions, StoreOptions};
    use std::sync::Arc;
    let placement = Placement::parse(&z.layout).with_context(|| {
        format!(
            "--layout {}: expected auto, flat, static or dynamic",
            z.layout
        )
    })?;
    if z.profile_zones > 0 && z.zone_speeds.is_some() {
        anyhow::bail!("give --profile-zones or --zone-speeds, not both");
    }
    let given = match &z.zone_speeds {
        Some(list) => Some(ZoneProfile {
            read_kib_s: list
                .split(',')
                .map(|v| {
                    let mib: f64 = v
                        .trim()
                        .parse()
                        .ok()
                        .filter(|m: &f64| *m > 0.0)
                        .with_context(|| {
                            format!("--zone-speeds: {v:?} is not a positive number of MiB/s")
                        })?;
                    Ok((mib * 1024.0).min(u32::MAX as f64) as u32)
                })
                .collect::<Result<Vec<u32>>>()?,
        }),
        None => None,
    };
    let dev = if existing {
        FileDevice::open(file, true)?
    } else {
        let size = size.context("--size is needed for a new image")?;
        let size = parse_size(size)?;
        // Check the layout before making a file.
        Superblock::layout(
            ids.cluster_id,
            ids.node_id,
            ids.disk_id,
            size,
            InitOptions::DEFAULT_EXTENT_SIZE,
            InitOptions::DEFAULT_META_SLOT_SIZE,
        )?;
        FileDevice::create(file, size)?
    };
    let size = match size {
        Some(s) => parse_size(s)?,
        None => dev.len()?,
    };
    let init = InitOptions::new(size);
    let profile = match given {
        Some(p) => p,
        None if z.profile_zones > 0 => {
            let opts = ProfileOptions {
                zones: z.profile_zones,
                sample: parse_size(&z.profile_sample)?,
                ..ProfileOptions::default()
            };
            eprintln!(
                "profiling {} zones of {} ({} rounds of {} per zone) ...",
                opts.zones,
                file.display(),
                opts.rounds,
                z.profile_sample
            );
            measure(
                file,
                size,
                init.extent_size,
                init.meta_slot_size,
                opts,
                |i, kib| eprintln!("  zone {i}: {:.1} MiB/s", kib as f64 / 1024.0),
            )?
        }
        None => ZoneProfile::default(),
    };
    let sb = Superblock::layout_zoned(
        ids.cluster_id,
        ids.node_id,
        ids.disk_id,
        size,
        init.extent_size,
        init.meta_slot_size,
        &profile,
        placement,
    )?;
    if !profile.read_kib_s.is_empty() && profile.is_flat() && placement == Placement::Auto {
        println!(
            "the zones read at about one speed (the slowest at least {:.0}% of the fastest): offset order",
            ZoneProfile::FLAT_RATIO * 100.0
        );
    }
    let layout = sb.layout;
    let zones = sb.zones.clone();
    DiskStore::create_laid_out(Arc::new(dev), file, sb, StoreOptions::default())?;
    println!(
        "created {} ({size} bytes, layout {})",
        file.display(),
        layout.as_str()
    );
    for zone in zones {
        let speed = match zone.read_kib_s {
            0 => "-".to_string(),
            k => format!("{:.1} MiB/s", k as f64 / 1024.0),
        };
        println!(
            "  zone at {:>12} +{:>12}  {:>14}  {}",
            zone.offset,
            zone.length,
            speed,
            zone.owner.as_str()
        );
    }
    Ok(())
}

fn disk(cmd: DiskCommand) -> Result<()> {
    use slicedb_engine::store::{DiskIds, DiskStore};
    match cmd {
        DiskCommand::Init {
            file,
            size,
            cluster_id,
            node,
            disk,
            existing,
            layout,
            profile_zones,
            profile_sample,
            zone_speeds,
        } => {
            let ids = DiskIds {
                cluster_id: slicedb::cluster_uuid(&cluster_id),
                node_id: node,
                disk_id: disk,
            };
            let zones = ZoneArgs {
                layout,
                profile_zones,
                profile_sample,
                zone_speeds,
            };
            init_disk(&file, size.as_deref(), ids, existing, &zones)
                .with_context(|| format!("initializing {}", file.display()))
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
