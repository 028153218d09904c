//! Cluster traffic is authenticated (issue 19, docs/security.md): a
//! process that reaches a node's port without the cluster's credentials,
//! or with another cluster's, is refused on every RPC and on Flight; a
//! member is admitted only to the calls its role makes (the coordinator's
//! commands and scans, a node's forwards as itself and only for slices it
//! serves). Afterwards the cluster's data and answers are unchanged, both
//! copies verify, and it survives a node killed with `kill -9`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::Ticket;
use slicedb_engine::cluster_tls::{self, ClusterTls, Member};
use slicedb_engine::proto::pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::harness::{self, exec, query, scalar, Slicedb};

const NODES: u32 = 3;

/// How a rogue client comes.
enum Creds<'a> {
    /// Plain HTTP/2, no TLS at all.
    Plain,
    /// TLS trusting the cluster's CA (it is no secret), no certificate.
    NoCertificate,
    /// TLS trusting the cluster's CA, with a certificate another
    /// cluster's CA signed (its "coordinator").
    OtherCluster(&'a Path),
    /// A member's real credentials (a stolen key, or a member that
    /// oversteps its role).
    Member(&'a ClusterTls),
}

/// The cluster file's cluster id ("test-cluster") as the certificates
/// carry it.
fn cluster_id() -> [u8; 16] {
    slicedb::cluster_uuid("test-cluster")
}

fn channel(certs: &Path, addr: &str, node: u32, creds: &Creds<'_>) -> Result<Channel> {
    let name = format!(
        "node-{node}.{}.slicedb",
        cluster_tls::cluster_hex(&cluster_id())
    );
    let ca = Certificate::from_pem(std::fs::read(certs.join("ca.pem"))?);
    let ep = |scheme: &str| {
        Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map(|e| e.connect_timeout(Duration::from_secs(5)))
    };
    let ep = match creds {
        Creds::Plain => ep("http")?,
        Creds::NoCertificate => {
            ep("https")?.tls_config(ClientTlsConfig::new().ca_certificate(ca).domain_name(name))?
        }
        Creds::OtherCluster(dir) => ep("https")?.tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .identity(Identity::from_pem(
                    std::fs::read(dir.join("coordinator.pem"))?,
                    std::fs::read(dir.join("coordinator.key"))?,
                ))
                .domain_name(name),
        )?,
        Creds::Member(tls) => tls.client(ep("https")?, node)?,
    };
    Ok(ep.connect_lazy())
}

/// What the current map says, read over SQL.
struct MapFacts {
    epoch: u64,
    /// A slice whose mirror is on node 0 and whose primary is on node 2.
    mirrored_on_0_from_2: u32,
}

async fn map_facts(c: &tokio_postgres::Client) -> Result<MapFacts> {
    // The history lists changes: a map never changed is at epoch 1.
    let epoch: u64 = scalar(c, "SELECT coalesce(max(epoch), 1) FROM slicedb_map_history")
        .await?
        .parse()?;
    let slice = scalar(
        c,
        "SELECT min(slice) FROM slicedb_slices WHERE mirror_node = 0 AND primary_node = 2",
    )
    .await?
    .parse()
    .context("no slice mirrored on node 0 from node 2")?;
    Ok(MapFacts {
        epoch,
        mirrored_on_0_from_2: slice,
    })
}

/// A forward of deletes into the slice node 2 serves and node 0 mirrors,
/// sent as `from_node`.
fn forward(facts: &MapFacts, from_node: u32) -> pb::MirrorWriteRequest {
    pb::MirrorWriteRequest {
        epoch: facts.epoch,
        xid: 1 << 40,
        table: 1,
        slice: facts.mirrored_on_0_from_2,
        seq: 1,
        from_node,
        deleted_rowids: vec![0, 1, 2],
        ..Default::default()
    }
}

/// Every call a stranger could do harm with, made on `ch`; each result
/// with its name. The requests are well formed and carry the current
/// epoch, so a node that admitted them would act on them.
async fn every_call(
    ch: Channel,
    facts: &MapFacts,
    from_node: u32,
) -> Vec<(&'static str, tonic::Status)> {
    let mut out = Vec::new();
    let mut node = pb::node_client::NodeClient::new(ch.clone());
    let mut peer = pb::peer_node_client::PeerNodeClient::new(ch.clone());
    let mut flight = FlightServiceClient::new(ch);
    let e = facts.epoch;
    let txn = || pb::TxnRequest {
        epoch: e,
        xid: 1 << 40,
        requests: 0,
    };
    let mut note = |what: &'static str, r: std::result::Result<(), tonic::Status>| {
        out.push((
            what,
            r.err()
                .unwrap_or_else(|| tonic::Status::ok("the call was admitted")),
        ))
    };
    note(
        "InstallMap",
        node.install_map(pb::InstallMapRequest {
            epoch: e + 1_000_000,
            node: 0,
            ..Default::default()
        })
        .await
        .map(drop),
    );
    note(
        "Write",
        node.write(pb::WriteRequest {
            epoch: e,
            xid: 1 << 40,
            table: 1,
            slice: 0,
            ..Default::default()
        })
        .await
        .map(drop),
    );
    note("Commit", node.commit(txn()).await.map(drop));
    note("Abort", node.abort(txn()).await.map(drop));
    note(
        "DropTable",
        node.drop_table(pb::DropTableRequest { epoch: e, table: 1 })
            .await
            .map(drop),
    );
    note(
        "MirrorWrite",
        peer.mirror_write(forward(facts, from_node)).await.map(drop),
    );
    note("MirrorCommit", peer.mirror_commit(txn()).await.map(drop));
    note(
        "do_get",
        flight
            .do_get(Ticket::new(prost::Message::encode_to_vec(
                &pb::ScanRequest {
                    epoch: e,
                    table: 1,
                    ..Default::default()
                },
            )))
            .await
            .map(drop),
    );
    out
}

/// Every call failed, and with a code in `codes`.
fn all_refused(who: &str, got: &[(&str, tonic::Status)], codes: &[tonic::Code]) -> Result<()> {
    for (what, s) in got {
        eprintln!("{who}: {what} -> {:?} {}", s.code(), s.message());
        ensure!(s.code() != tonic::Code::Ok, "{who}: {what} was admitted");
        ensure!(
            codes.contains(&s.code()),
            "{who}: {what} refused with {:?} ({}), want one of {codes:?}",
            s.code(),
            s.message()
        );
    }
    Ok(())
}

#[test]
fn only_the_clusters_members_reach_a_node_and_each_only_for_its_role() {
    harness::run("cluster_auth", |env| async move {
        let mut db = Slicedb::multiprocess(&env, NODES).await?;
        let c = db.connect().await?;
        exec(
            &c,
            "CREATE TABLE acct (id bigint, bal bigint) DISTRIBUTE ON (id)",
        )
        .await?;
        exec(
            &c,
            "INSERT INTO acct SELECT v, v * 3 FROM generate_series(1, 20000) AS t(v)",
        )
        .await?;
        let answer = "SELECT count(*), sum(bal), min(id), max(id) FROM acct";
        let before = query(&c, answer).await?;
        let facts = map_facts(&c).await?;
        let config = db
            .config
            .clone()
            .context("a multi-process cluster has a file")?;
        let certs = config.parent().unwrap().join("certs");
        let node0 = db.node_addrs[0].clone();

        // No credentials, no certificate, another cluster's certificate:
        // the handshake fails, so no call gets to a service.
        let other = env.path().join("other-cluster-certs");
        cluster_tls::issue(
            &other,
            &slicedb::cluster_uuid("other-cluster"),
            &[Member::Coordinator],
        )?;
        // (Which code depends on where the connection broke: no service code ran.)
        let transport = [
            tonic::Code::Unavailable,
            tonic::Code::Unknown,
            tonic::Code::Internal,
            tonic::Code::Cancelled,
        ];
        for (who, creds) in [
            ("plain HTTP/2", Creds::Plain),
            ("TLS without a certificate", Creds::NoCertificate),
            ("another cluster's certificate", Creds::OtherCluster(&other)),
        ] {
            let got = every_call(channel(&certs, &node0, 0, &creds)?, &facts, 2).await;
            all_refused(who, &got, &transport)?;
        }

        // Node 1's own credentials used against node 0: the coordinator's
        // calls and Flight are refused; a forward as node 2, or as itself
        // for a slice whose serving copy is node 2's, is refused too.
        let as_node1 = ClusterTls::load(&certs, &cluster_id(), Member::Node(1))?;
        let ch = channel(&certs, &node0, 0, &Creds::Member(&as_node1))?;
        // (MirrorCommit is a peer call node 1 may make: a member node is
        // trusted with the transactions it could have forwarded.)
        let got: Vec<_> = every_call(ch.clone(), &facts, 2)
            .await
            .into_iter()
            .filter(|(what, _)| *what != "MirrorCommit")
            .collect();
        all_refused(
            "node 1's certificate",
            &got,
            &[tonic::Code::PermissionDenied],
        )?;
        let s = pb::peer_node_client::PeerNodeClient::new(ch)
            .mirror_write(forward(&facts, 1))
            .await
            .err()
            .context("node 1 forwarded into a slice node 2 serves")?;
        ensure!(
            s.code() == tonic::Code::PermissionDenied && s.message().contains("serving copy"),
            "node 1's forward into node 2's slice: {:?} {}",
            s.code(),
            s.message()
        );

        // The coordinator's credentials reach the Node service, and not the
        // peer service.
        let as_coord = ClusterTls::load(&certs, &cluster_id(), Member::Coordinator)?;
        let ch = channel(&certs, &node0, 0, &Creds::Member(&as_coord))?;
        let status = pb::node_client::NodeClient::new(ch.clone())
            .status(pb::StatusRequest {})
            .await
            .context("the coordinator's Status call")?
            .into_inner();
        ensure!(
            status.epoch == facts.epoch,
            "node 0 reports epoch {}",
            status.epoch
        );
        let s = pb::peer_node_client::PeerNodeClient::new(ch)
            .mirror_commit(pb::TxnRequest::default())
            .await
            .err()
            .context("the coordinator made a peer call")?;
        ensure!(s.code() == tonic::Code::PermissionDenied, "{s:?}");

        // Even the coordinator's own credentials cannot make a node read a
        // file: a scan fragment holding a CSV scan of the cluster's CA key
        // is refused, and the node stays up.
        let hostile = csv_scan_fragment(&certs.join("ca.key")).await?;
        let mut flight =
            FlightServiceClient::new(channel(&certs, &node0, 0, &Creds::Member(&as_coord))?);
        let mut refusal = None;
        // The table's id on the nodes is not shown over SQL: try the first
        // ids until the node knows the table (then the fragment is read).
        for table in 1..=16u64 {
            let ticket = pb::ScanRequest {
                epoch: facts.epoch,
                table,
                all_columns: true,
                fragment: hostile.clone(),
                ..Default::default()
            };
            let s = flight
                .do_get(Ticket::new(prost::Message::encode_to_vec(&ticket)))
                .await
                .err()
                .context("a CSV scan fragment was run")?;
            if !s.message().contains("does not exist") {
                refusal = Some(s);
                break;
            }
        }
        let s = refusal.context("node 0 knows none of tables 1..=16")?;
        ensure!(
            s.code() == tonic::Code::InvalidArgument
                && s.message().contains("may not hold DataSourceExec"),
            "a CSV scan fragment: {:?} {}",
            s.code(),
            s.message()
        );

        // Nothing changed: the same answer, both copies agree, no node was
        // failed over, and the cluster survives the next fault.
        let after = query(&c, answer).await?;
        ensure!(after == before, "answer changed: {before:?} -> {after:?}");
        harness::ensure_verified(&c).await?;
        let up = scalar(&c, "SELECT count(*) FROM slicedb_nodes WHERE state = 'up'").await?;
        ensure!(
            up == NODES.to_string(),
            "nodes up after the rogue calls: {up}"
        );
        let epoch_after: u64 = scalar(
            &c,
            "SELECT coalesce(max(epoch), 1) FROM slicedb_map_history",
        )
        .await?
        .parse()?;
        ensure!(
            epoch_after == facts.epoch,
            "the map moved from epoch {} to {epoch_after}",
            facts.epoch
        );
        db.kill_proc(1);
        let t0 = std::time::Instant::now();
        loop {
            match query(&c, answer).await {
                Ok(r) if r == before => break,
                Ok(r) => bail!("wrong answer after node 1 was killed: {r:?}"),
                Err(e) if t0.elapsed() < Duration::from_secs(30) => {
                    eprintln!("while node 1 is failed over: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
        db.restart_node(&env, 1).await?;
        harness::wait_fully_protected(&c, Duration::from_secs(120)).await?;
        harness::ensure_verified(&c).await?;
        ensure!(
            query(&c, answer).await? == before,
            "answer after node 1 rejoined"
        );
        db.stop().await
    });
}

/// A serialized plan that reads `file` as CSV (what a hostile scan ticket
/// would carry).
async fn csv_scan_fragment(file: &Path) -> Result<Vec<u8>> {
    let ctx = datafusion::prelude::SessionContext::new();
    let opts = datafusion::prelude::CsvReadOptions::new()
        .has_header(false)
        .file_extension("key");
    ctx.register_csv("k", file.to_str().context("path")?, opts)
        .await?;
    let plan = ctx
        .sql("SELECT * FROM k")
        .await?
        .create_physical_plan()
        .await?;
    Ok(datafusion_proto::bytes::physical_plan_to_bytes(plan)?.to_vec())
}

#[test]
fn a_process_without_credentials_or_rules_does_not_start() {
    harness::run("cluster_auth_nocreds", |env| async move {
        let dir = env.path().join("c");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("cluster.toml");
        std::fs::write(
            &config,
            format!(
                "cluster_id = \"x\"\n[coordinator]\ndata_dir = \"{0}/coord\"\n\
                 [[nodes]]\nid = 0\naddress = \"127.0.0.1:{1}\"\ndata_dir = \"{0}/n0\"\ndisk_size = \"64MiB\"\n",
                dir.display(),
                harness::free_port()?
            ),
        )?;
        let run = |args: &[&str]| {
            std::process::Command::new(harness::BIN)
                .args(args)
                .arg("--config")
                .arg(&config)
                .output()
        };
        let out = run(&["node", "--id", "0"])?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "a node without credentials started");
        ensure!(
            err.contains("slicedb certs"),
            "its error should say how to make them: {err}"
        );
        // `slicedb certs` makes them; run again, it writes nothing new.
        let out = run(&["certs"])?;
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        ensure!(said.contains("(6 files written)"), "{said}");
        let out = run(&["certs"])?;
        let said = String::from_utf8_lossy(&out.stdout);
        ensure!(said.contains("(0 files written)"), "{said}");
        // With its credentials, a coordinator without host-based rules does
        // not start either (a multi-process cluster says who may connect).
        let out = run(&["coordinator"])?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "a coordinator without rules started");
        ensure!(err.contains("needs host-based rules"), "{err}");
        Ok(())
    });
}
