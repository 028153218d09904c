//! The cluster file (`cluster.toml`) for `slicedb coordinator` and
//! `slicedb node`, documented field by field in docs/configuration.md.
//! Parsing and validation only; starting processes is elsewhere.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// The whole cluster, as every process of it reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Name of the cluster; written into every disk image so a disk of
    /// another cluster is never opened by mistake.
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    /// Data slices per disk when the distribution map is first built.
    #[serde(default = "default_slices_per_disk")]
    pub slices_per_disk: u32,
    /// The cluster's credentials (`slicedb certs` makes them): the CA
    /// certificate `ca.pem` and each process's `<member>.pem` and
    /// `<member>.key` (`coordinator`, `node-<id>`). Every call between the
    /// processes is mutual TLS with them (docs/security.md). A relative
    /// path is taken from the cluster file's directory; default `certs`.
    #[serde(default = "default_certs_dir")]
    pub certs_dir: PathBuf,
    pub coordinator: CoordinatorSection,
    #[serde(default)]
    pub nodes: Vec<NodeSection>,
}

fn default_certs_dir() -> PathBuf {
    PathBuf::from("certs")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSection {
    /// host:port for PostgreSQL clients.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where the catalog and the distribution map are kept.
    pub data_dir: PathBuf,
    /// How long the coordinator waits for every node at startup, e.g. "30s".
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// How long a primary waits for its mirror before it commits alone and
    /// the slice is marked degraded, e.g. "2s".
    #[serde(default = "default_mirror_timeout")]
    pub mirror_timeout: String,
    /// Heartbeat period of the failure detector, e.g. "200ms".
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval: String,
    /// How long one heartbeat or probe may take, e.g. "300ms".
    #[serde(default = "default_probe_timeout")]
    pub probe_timeout: String,
    /// How long a failed node or disk may stay away before its copies are
    /// regenerated onto a spare or the survivors, e.g. "60s".
    #[serde(default = "default_regen_delay")]
    pub regen_delay: String,
    /// Bytes per second one slice copy (regeneration, resync) may read from
    /// its source, per target node, e.g. "100MiB"; "0": no limit.
    #[serde(default = "default_copy_rate")]
    pub copy_rate: String,
    /// The longest a statement may run (planning, execution and sending
    /// its rows) in a session that did not `SET statement_timeout`, e.g.
    /// "5m"; "0": no limit (the default).
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout: String,
    /// How long a session that did not `SET idle_session_timeout` may sit
    /// idle outside a transaction block before it is closed (57P05), e.g.
    /// "1h"; "0": never (the default).
    #[serde(default = "default_statement_timeout")]
    pub idle_session_timeout: String,
    /// How long a session that did not `SET
    /// idle_in_transaction_session_timeout` may sit idle inside an open
    /// transaction block before it is closed (25P03) and the block rolled
    /// back, e.g. "10min"; "0": never (the default).
    #[serde(default = "default_statement_timeout")]
    pub idle_in_transaction_session_timeout: String,
    /// Memory the coordinator's query execution may hold at once, e.g.
    /// "4GiB" (the default); "0": no limit.
    #[serde(default = "default_memory_limit")]
    pub memory_limit: String,
    /// Most sessions connected at once; more are refused with 53300.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Tables with fewer rows take no runtime join filters (they are read
    /// at once, whole); larger ones wait for the join's build side and get
    /// its key bounds and keys.
    #[serde(default = "default_runtime_filter_min_rows")]
    pub runtime_filter_min_rows: u64,
    /// Tables with fewer rows are not joined on the nodes with the join's
    /// small side sent whole; larger ones are (see docs/node-protocol.md).
    #[serde(default = "default_broadcast_join_min_rows")]
    pub broadcast_join_min_rows: u64,
    /// Where the coordinator serves Prometheus metrics (`GET /metrics`):
    /// "host:port", "auto" (the default: `listen`'s port + 1000) or "off".
    #[serde(default = "default_metrics")]
    pub metrics_listen: String,
    /// Host-based rules, `pg_hba.conf` lines (`hostssl all all 0.0.0.0/0
    /// scram-sha-256`), first match wins; none: loopback connections are
    /// trusted and `listen` must be a loopback address (docs/security.md).
    #[serde(default)]
    pub hba: Vec<String>,
    /// PEM certificate chain for TLS on `listen` (with `tls_key`).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// The superuser created when the catalog has no role yet.
    #[serde(default = "default_superuser")]
    pub superuser: String,
}

impl CoordinatorSection {
    /// The SQL port's authentication settings.
    pub fn auth(&self) -> slicedb_sql::auth::AuthConfig {
        slicedb_sql::auth::AuthConfig {
            rules: self.hba.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            superuser: self.superuser.clone(),
        }
    }
}

fn default_superuser() -> String {
    slicedb_sql::auth::DEFAULT_SUPERUSER.into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node's id: unique, small integers.
    pub id: u32,
    /// host:port the node serves gRPC and Arrow Flight on.
    pub address: String,
    /// Where the node's disk images live (`disk-<n>.img`).
    pub data_dir: PathBuf,
    /// Number of disk images of this node.
    #[serde(default = "default_disks")]
    pub disks: u32,
    /// Size of each disk image (sparse), e.g. "4GiB".
    #[serde(default = "default_disk_size")]
    pub disk_size: String,
    /// Memory for decoded block columns, per disk, e.g. "1GiB"; "0" reads
    /// every scan from the disk.
    #[serde(default = "default_cache_size")]
    pub cache_size: String,
    /// Memory the node's query fragments (partial aggregates, joins next
    /// to the data) may hold at once, e.g. "2GiB" (the default); past it
    /// they spill to `<data_dir>/spill` or fail with 53200; "0": no limit.
    #[serde(default = "default_node_memory_limit")]
    pub memory_limit: String,
    /// A spare node: given no slices when the cluster is created, kept in
    /// reserve to take over a failed node's copies.
    #[serde(default)]
    pub spare: bool,
    /// Of `disks`, the last `spare_disks` get no slices when the cluster
    /// is created: each takes over a failed disk of this node.
    #[serde(default)]
    pub spare_disks: u32,
    /// Where the node serves Prometheus metrics (`GET /metrics`):
    /// "host:port", "auto" (the default: `address`'s port + 1000) or "off".
    #[serde(default = "default_metrics")]
    pub metrics_address: String,
    /// Damaged blocks (repaired from the other copy or not) that fail a
    /// disk over when met within `bad_block_window` (docs/disk-format.md,
    /// "Sector repair"); 1 fails it at the first one.
    #[serde(default = "default_bad_block_limit")]
    pub bad_block_limit: u32,
    #[serde(default = "default_bad_block_window")]
    pub bad_block_window: String,
    /// Bytes per second the background scrubber reads from each disk,
    /// verifying (and repairing from the other copy) every committed block,
    /// e.g. "8MiB" (the default); "0": no scrubbing.
    #[serde(default = "default_scrub_rate")]
    pub scrub_rate: String,
}

fn default_scrub_rate() -> String {
    "8MiB".into()
}

fn default_bad_block_limit() -> u32 {
    slicedb_engine::server::RepairPolicy::DEFAULT_LIMIT
}
fn default_bad_block_window() -> String {
    "10min".into()
}

fn default_metrics() -> String {
    "auto".into()
}
fn default_cluster_id() -> String {
    "slicedb".into()
}
fn default_slices_per_disk() -> u32 {
    4
}
fn default_listen() -> String {
    "127.0.0.1:5433".into()
}
fn default_connect_timeout() -> String {
    "30s".into()
}
fn default_heartbeat_interval() -> String {
    "200ms".into()
}
fn default_regen_delay() -> String {
    "60s".into()
}
fn default_node_memory_limit() -> String {
    "2GiB".into()
}
fn default_max_connections() -> usize {
    crate::DEFAULT_MAX_CONNECTIONS
}
fn default_memory_limit() -> String {
    "4GiB".into()
}
fn default_statement_timeout() -> String {
    "0".into()
}
fn default_copy_rate() -> String {
    "25MiB".into()
}
fn default_probe_timeout() -> String {
    "300ms".into()
}
fn default_runtime_filter_min_rows() -> u64 {
    slicedb_coordinator::CoordinatorConfig::DEFAULT_RUNTIME_FILTER_MIN_ROWS
}
fn default_broadcast_join_min_rows() -> u64 {
    slicedb_coordinator::CoordinatorConfig::DEFAULT_BROADCAST_JOIN_MIN_ROWS
}
fn default_mirror_timeout() -> String {
    "2s".into()
}
fn default_disks() -> u32 {
    1
}
fn default_disk_size() -> String {
    "4GiB".into()
}
fn default_cache_size() -> String {
    "1GiB".into()
}

/// Smallest disk image that holds the metadata slots and some extents.
pub const MIN_DISK_SIZE: u64 = 64 << 20;

impl ClusterConfig {
    pub fn load(path: &std::path::Path) -> Result<ClusterConfig, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let cfg: ClusterConfig =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let mut cfg: ClusterConfig = cfg;
        if cfg.certs_dir.is_relative() {
            let base = path.parent().unwrap_or(std::path::Path::new("."));
            cfg.certs_dir = base.join(&cfg.certs_dir);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), Error> {
        if self.nodes.is_empty() {
            return Err(Error::Config(
                "at least one [[nodes]] entry is needed".into(),
            ));
        }
        if self.slices_per_disk == 0 || self.slices_per_disk > 1024 {
            return Err(Error::Config("slices_per_disk must be in 1..=1024".into()));
        }
        if self.cluster_id.is_empty() || self.cluster_id.len() > 64 {
            return Err(Error::Config(
                "cluster_id must be 1 to 64 characters".into(),
            ));
        }
        parse_duration(&self.coordinator.connect_timeout)?;
        parse_duration(&self.coordinator.mirror_timeout)?;
        parse_duration(&self.coordinator.heartbeat_interval)?;
        parse_duration(&self.coordinator.probe_timeout)?;
        parse_duration(&self.coordinator.regen_delay)?;
        parse_size(&self.coordinator.copy_rate)?;
        parse_duration(&self.coordinator.statement_timeout)?;
        parse_duration(&self.coordinator.idle_session_timeout)?;
        parse_duration(&self.coordinator.idle_in_transaction_session_timeout)?;
        parse_size(&self.coordinator.memory_limit)?;
        slicedb_sql::hba::parse_rules(self.coordinator.hba.iter().map(String::as_str))
            .map_err(|e| Error::Config(e.to_string()))?;
        if self.coordinator.tls_cert.is_some() != self.coordinator.tls_key.is_some() {
            return Err(Error::Config(
                "coordinator: tls_cert and tls_key go together".into(),
            ));
        }
        crate::metrics::resolve(
            &self.coordinator.metrics_listen,
            &self.coordinator.listen,
            "coordinator metrics_listen",
        )?;
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for n in &self.nodes {
            if !ids.insert(n.id) {
                return Err(Error::Config(format!("node id {} appears twice", n.id)));
            }
            if !addrs.insert(n.address.clone()) {
                return Err(Error::Config(format!(
                    "address {} appears twice",
                    n.address
                )));
            }
            if n.disks == 0 || n.disks > 64 {
                return Err(Error::Config(format!(
                    "node {}: disks must be in 1..=64",
                    n.id
                )));
            }
            if n.spare_disks >= n.disks {
                return Err(Error::Config(format!(
                    "node {}: spare_disks = {} leaves none of its {} disks for slices",
                    n.id, n.spare_disks, n.disks
                )));
            }
            parse_size(&n.cache_size)?;
            parse_size(&n.scrub_rate)?;
            crate::metrics::resolve(
                &n.metrics_address,
                &n.address,
                &format!("node {} metrics_address", n.id),
            )?;
            parse_size(&n.memory_limit)?;
            if parse_size(&n.disk_size)? < MIN_DISK_SIZE {
                return Err(Error::Config(format!(
                    "node {}: disk_size {} is below the minimum of 64MiB",
                    n.id, n.disk_size
                )));
            }
        }
        Ok(())
    }

    /// `member`'s credentials from `certs_dir`.
    pub fn credentials(
        &self,
        member: slicedb_engine::cluster_tls::Member,
    ) -> Result<slicedb_engine::cluster_tls::ClusterTls, Error> {
        Ok(slicedb_engine::cluster_tls::ClusterTls::load(
            &self.certs_dir,
            &crate::cluster_uuid(&self.cluster_id),
            member,
        )?)
    }

    /// Every member of the cluster: the coordinator and each node.
    pub fn members(&self) -> Vec<slicedb_engine::cluster_tls::Member> {
        use slicedb_engine::cluster_tls::Member;
        std::iter::once(Member::Coordinator)
            .chain(self.nodes.iter().map(|n| Member::Node(n.id)))
            .collect()
    }

    pub fn node(&self, id: u32) -> Result<&NodeSection, Error> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| Error::Config(format!("no node with id {id} in the configuration")))
    }
}

/// "4GiB", "512MiB", "64MB", "1048576" -> bytes.
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| Error::Config(format!("bad size {s:?}: expected e.g. 4GiB")))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(Error::Config(format!("bad size unit {other:?} in {s:?}"))),
    };
    n.checked_mul(mult)
        .ok_or_else(|| Error::Config(format!("size {s:?} is too large")))
}

/// "30s", "500ms", "2m" -> Duration.
pub fn parse_duration(s: &str) -> Result<Duration, Error> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| Error::Config(format!("bad duration {s:?}: expected e.g. 30s")))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        other => {
            return Err(Error::Config(format!(
                "bad duration unit {other:?} in {s:?}"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_duration("10min").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("5 fortnights").is_err());
    }

    #[test]
    fn validation_catches_mistakes() {
        let ok = r#"
            [coordinator]
            data_dir = "/tmp/c"
            [[nodes]]
            id = 0
            address = "127.0.0.1:7000"
            data_dir = "/tmp/n0"
        "#;
        let c: ClusterConfig = toml::from_str(ok).unwrap();
        c.validate().unwrap();
        assert_eq!(c.slices_per_disk, 4);
        let dup = format!(
            "{ok}\n[[nodes]]\nid = 0\naddress = \"127.0.0.1:7001\"\ndata_dir = \"/tmp/n1\"\n"
        );
        let c: ClusterConfig = toml::from_str(&dup).unwrap();
        assert!(c.validate().is_err());
        assert!(toml::from_str::<ClusterConfig>(&format!("{ok}\nbogus = 1\n")).is_err());
    }

    #[test]
    fn host_based_rules_and_tls_are_read_and_checked() {
        let with = |extra: &str| {
            let text = format!(
                "[coordinator]\ndata_dir = \"/tmp/c\"\n{extra}\n[[nodes]]\nid = 0\naddress = \"127.0.0.1:7000\"\ndata_dir = \"/tmp/n0\"\n"
            );
            toml::from_str::<ClusterConfig>(&text).map(|c| (c.validate(), c))
        };
        let (ok, c) = with(
            "hba = [\"host all slicedb 127.0.0.1/32 trust\", \"hostssl all all 0.0.0.0/0 scram-sha-256\"]\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"",
        )
        .unwrap();
        ok.unwrap();
        let auth = c.coordinator.auth();
        assert_eq!(auth.rules.len(), 2);
        assert_eq!(auth.superuser, "slicedb");
        let (bad, _) = with("hba = [\"host all all 10.0.0.0/8 ident\"]").unwrap();
        assert!(bad.unwrap_err().to_string().contains("unknown method"));
        let (half, _) = with("tls_cert = \"/c.pem\"").unwrap();
        assert!(half.is_err(), "a certificate without its key");
        let (_, none) = with("").unwrap();
        assert!(!none.coordinator.auth().has_rules(), "the loopback default");
    }
}
