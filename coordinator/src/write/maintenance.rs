//! Maintenance over every node: GROOM TABLE (rewrite blocks whose rows
//! every open snapshot sees deleted) and the online mirror check behind
//! `slicedb verify` and the `slicedb_verify` view.
//!
//! It never changes the map and never touches a disk image: it asks the
//! nodes, which do the work on both copies.

use serde::Serialize;
use slicedb_engine::proto::pb;
use slicedb_engine::SliceId;

use crate::catalog::TableMeta;
use crate::cluster::Cluster;
use crate::map::SliceState;
use crate::Result;

/// One slice's verdict from `slicedb_verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyRow {
    pub table: String,
    pub slice: SliceId,
    pub primary_rows: Option<u64>,
    pub mirror_rows: Option<u64>,
    /// in_sync, diverged, degraded, unmirrored, or error: ...
    pub status: String,
}

/// GROOM TABLE: rewrite blocks holding rows deleted before every open
/// snapshot, on every node and both copies. Returns (blocks, rows). While
/// a copy is behind, deletes it may lack are kept (a resync sends them).
pub async fn groom(cluster: &Cluster, meta: &TableMeta) -> Result<(u64, u64)> {
    let map = cluster.map();
    let horizon = map
        .oldest_behind()
        .map_or(cluster.horizon(), |b| b.min(cluster.horizon()));
    let epoch = map.epoch();
    let (mut blocks, mut rows) = (0, 0);
    for n in cluster.nodes().values() {
        let mut c = n.grpc.clone();
        let r = c
            .groom(pb::GroomRequest {
                epoch,
                table: meta.id,
                horizon,
            })
            .await
            .map_err(|s| n.err(s))?
            .into_inner();
        blocks += r.blocks_rewritten;
        rows += r.rows_removed;
    }
    Ok((blocks, rows))
}

/// Compare the primary and mirror of every slice of every table at one
/// snapshot: row count and checksum over (rowid, row contents).
pub async fn verify(cluster: &Cluster) -> Result<Vec<VerifyRow>> {
    {
        let snapshot = pb::Snapshot::from(&cluster.read_snapshot());
        let map = cluster.map();
        let epoch = map.epoch();
        let tables = cluster.catalog().lock().tables();
        let mut out = Vec::new();
        for t in tables {
            for e in map.slices() {
                let ask = |node: u32, segment: pb::Segment| {
                    let snapshot = snapshot.clone();
                    let table = t.id;
                    let slice = e.slice;
                    async move {
                        let map_epoch = epoch;
                        let n = cluster.node(node)?.clone();
                        let mut c = n.grpc.clone();
                        c.checksum(pb::ChecksumRequest {
                            epoch: map_epoch,
                            table,
                            slice,
                            segment: segment as i32,
                            snapshot: Some(snapshot),
                        })
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| n.err(s))
                    }
                };
                let p = match e.serving() {
                    Ok((loc, true)) => ask(loc.node, pb::Segment::Mirror).await,
                    Ok((loc, false)) => ask(loc.node, t.segment()).await,
                    Err(err) => Err(err),
                };
                let (m, status) = match (e.mirror().map(|c| c.at), e.state()) {
                    _ if !t.mirrored => (None, "unmirrored".to_string()),
                    (None, _) | (_, SliceState::PrimaryOnly) => (None, "unmirrored".to_string()),
                    (
                        Some(_),
                        s @ (SliceState::Degraded
                        | SliceState::FailedOver
                        | SliceState::Unprotected
                        | SliceState::Rebuilding
                        | SliceState::Unavailable),
                    ) => (None, s.as_str().to_string()),
                    (Some(loc), SliceState::InSync) => {
                        let m = ask(loc.node, pb::Segment::Mirror).await;
                        let status = match (&p, &m) {
                            (Ok(a), Ok(b)) if a.rows == b.rows && a.checksum == b.checksum => {
                                "in_sync".to_string()
                            }
                            (Ok(_), Ok(_)) => "diverged".to_string(),
                            (Err(e), _) | (_, Err(e)) => format!("error: {e}"),
                        };
                        (m.ok(), status)
                    }
                };
                out.push(VerifyRow {
                    table: t.name.clone(),
                    slice: e.slice,
                    primary_rows: p.as_ref().ok().map(|r| r.rows),
                    mirror_rows: m.map(|r| r.rows),
                    status: match (&p, status.as_str()) {
                        (Err(e), s) if s != "in_sync" && s != "diverged" => format!("error: {e}"),
                        _ => status,
                    },
                });
            }
        }
        Ok(out)
    }
}
