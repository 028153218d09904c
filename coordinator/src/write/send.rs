//! One write request (rows, or deleted rowids, of one slice) sent to the
//! node serving its slice, and carried over a failover: if that node fails
//! before it answers, the transaction's work moves to the nodes now serving
//! its slices ([`crate::txn::TxnManager::carry_over`]), and the request is
//! sent again only if the new acting primary does not hold it already. A
//! node whose map is a step behind or ahead (its epoch differs, so it
//! refused before touching anything) is asked again on the new map.
//!
//! It owns the retry of one request. It never changes the map and never
//! decides a transaction's outcome.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use slicedb_engine::proto::{pb, ErrorKind};
use slicedb_engine::SliceId;

use crate::catalog::TableMeta;
use crate::cluster::Cluster;
use crate::nodes::{deadline, WORK_DEADLINE};
use crate::txn::Txn;
use crate::{CoordinatorError, Result};

/// How long one request waits for a failover (and for the nodes to install
/// its map) before it gives up.
const FAILOVER_WAIT: Duration = Duration::from_secs(5);

/// What a request carries.
pub enum Payload {
    /// Rows as an Arrow IPC stream.
    Rows(Bytes),
    /// Rowids to delete, checked for conflicts against the snapshot.
    Delete {
        rowids: Vec<i64>,
        snapshot: pb::Snapshot,
    },
}

/// Send `payload` for `slice` of `table` under `txn` to the node serving the
/// slice; answers the rows it wrote or deleted. Carried over a failure of
/// that node (see the module docs).
pub async fn send(
    cluster: &Arc<Cluster>,
    txn: &Arc<Txn>,
    table: &TableMeta,
    slice: SliceId,
    payload: &Payload,
) -> Result<u64> {
    let id = txn.new_request_id();
    let give_up = tokio::time::Instant::now() + FAILOVER_WAIT;
    loop {
        let map = cluster.map();
        let entry = map
            .slices()
            .get(slice as usize)
            .ok_or_else(|| CoordinatorError::Catalog(format!("slice {slice} is not in the map")))?;
        // Writes go where the slice is served now (after a failover: the
        // acting primary, into its mirror segment).
        let (loc, from_mirror) = entry.serving()?;
        let segment = table.segment_for(slice, from_mirror)? as i32;
        let node = cluster.node(loc.node)?.clone();
        let epoch = map.epoch();
        let (xid, tid) = (txn.xid, table.id);
        txn.note_request(node.id, slice, id);
        let mut c = node.grpc.clone();
        let call = async {
            match payload {
                Payload::Rows(batches) => {
                    c.write(deadline(
                        pb::WriteRequest {
                            epoch,
                            xid,
                            table: tid,
                            slice,
                            segment,
                            batches: batches.clone(),
                            request_id: id,
                        },
                        WORK_DEADLINE,
                    ))
                    .await
                }
                Payload::Delete { rowids, snapshot } => {
                    c.delete(deadline(
                        pb::DeleteRequest {
                            epoch,
                            xid,
                            table: tid,
                            slice,
                            segment,
                            rowids: rowids.clone(),
                            snapshot: Some(snapshot.clone()),
                            request_id: id,
                        },
                        WORK_DEADLINE,
                    ))
                    .await
                }
            }
            .map(|r| r.into_inner())
            .map_err(|s| node.err(s))
        };
        // A hung node never answers: race it against its failover.
        let res = tokio::select! {
            r = call => r,
            _ = cluster.until_down(node.id) => Err(CoordinatorError::NodeUnreachable {
                node: node.id,
                address: node.address.clone(),
                message: "declared failed while writing".into(),
            }),
        };
        let err = match res {
            Ok(r) if txn.note_request_result(node.id, id, &r.degraded_slices) => {
                return Ok(r.rows);
            }
            // Answered after the transaction was carried over that node:
            // held by its successor, or sent again.
            Ok(_) => match txn.carried_rows(node.id, id) {
                Some(rows) => return Ok(rows),
                None => continue,
            },
            Err(e) => e,
        };
        let late = tokio::time::Instant::now() >= give_up;
        match &err {
            CoordinatorError::Node {
                kind: ErrorKind::StaleEpoch | ErrorKind::SliceNotOwned,
                ..
            } if !late => {
                // Refused before it touched anything: ask again once the
                // map moved on (or the node caught up with it).
                txn.unnote_request(node.id, slice, id);
                let asked = tokio::time::Instant::now();
                while cluster.map().epoch() == epoch && asked.elapsed() < Duration::from_millis(50)
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            CoordinatorError::NodeUnreachable { .. } => {
                cluster.report_unreachable(node.id);
                if tokio::time::timeout_at(give_up, cluster.until_down(node.id))
                    .await
                    .is_err()
                {
                    return Err(err);
                }
                cluster.carry_over(txn, node.id).await?;
                if let Some(rows) = txn.carried_rows(node.id, id) {
                    return Ok(rows);
                }
            }
            _ => return Err(err),
        }
    }
}
