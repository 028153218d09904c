//! The `PeerNode` service: the calls one node makes on another: a
//! primary's forwards to the mirror of its slices (stage, prepare, commit,
//! abort), each delegated to the mirror manager's
//! [`crate::mirror::Staging`] once the epoch and ownership checks passed;
//! and the source side of a slice copy (`ExportSlice`), which streams what
//! the store exports, one block per message; and the good side of a
//! sector repair (`FetchBlock`: one block of this node's copy, for a node
//! whose copy of it is damaged; see `repair.rs`).
//!
//! It owns only those checks and the mapping to gRPC. It must never serve
//! the coordinator (that is `control.rs`) and never stage or apply data
//! itself.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use super::{status, NodeServer};
use crate::cluster_tls::Member;
use crate::failpoint;
use crate::proto::pb;
use crate::store::{DiskStore, LogicalBlock, SegmentKind};
use crate::EngineError;

/// Blocks in flight per export stream (each up to a block's size).
const EXPORT_WINDOW: usize = 8;

/// Blocks an export asks the disk for ahead of the one it reads.
const READ_AHEAD: usize = 4;

impl NodeServer {
    /// A peer call names the node it comes from: with credentials, that
    /// must be the node whose certificate made the call.
    fn caller_is(caller: Option<Member>, from_node: u32) -> Result<(), Status> {
        match caller {
            Some(c) if c != Member::Node(from_node) => Err(Status::permission_denied(format!(
                "{c} sent a call as node {from_node}: refused"
            ))),
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl pb::peer_node_server::PeerNode for NodeServer {
    type ExportSliceStream = Pin<Box<dyn Stream<Item = Result<pb::SliceCopyChunk, Status>> + Send>>;

    /// Stream one copy of a slice as it is committed now: its blocks (read
    /// and verified one at a time, a few in flight, paced when asked), then
    /// its deletes.
    async fn export_slice(
        &self,
        request: Request<pb::ExportSliceRequest>,
    ) -> Result<Response<Self::ExportSliceStream>, Status> {
        let req = request.into_inner();
        let map = self.check_epoch(req.epoch).map_err(status)?;
        let segment = crate::proto::segment_from_i32(req.segment).map_err(status)?;
        let disk = self.owned_disk(&map, req.slice, segment).map_err(status)?;
        let store = self.disk(disk).map_err(status)?.clone();
        let export = Self::blocking({
            let store = store.clone();
            move || {
                let mut have = req.have_xids;
                have.sort_unstable();
                store.export_slice(segment, req.table, req.slice, &have)
            }
        })
        .await
        .map_err(status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_WINDOW);
        let mut pace = crate::mirror::copy::Pace::new(
            req.max_bytes_per_sec,
            Some(self.state.activity.clone()),
        );
        // Below queries' priority: the export reads what they leave.
        let _done = crate::background::spawn("copy-export", move || {
            let mut sent = 0;
            for b in export.blocks.iter().take(READ_AHEAD) {
                store.read_ahead_exported(b);
            }
            for (i, b) in export.blocks.iter().enumerate() {
                // Each block read once it is due: no burst ahead of the
                // target's own pace.
                pace.after_blocking(sent);
                // The cache fills with the next blocks while this one is
                // read and sent (they sit in extents apart from each other).
                if let Some(next) = export.blocks.get(i + READ_AHEAD) {
                    store.read_ahead_exported(next);
                }
                sent += b.length;
                let chunk = store.read_exported(b).map(|block| pb::SliceCopyChunk {
                    block: block.into(),
                    total_bytes: if i == 0 { export.bytes } else { 0 },
                    ..Default::default()
                });
                let failed = chunk.is_err();
                if tx.blocking_send(chunk.map_err(status)).is_err() || failed {
                    return Ok(()); // the target went away, or the read failed
                }
            }
            // A source that dies here leaves its target with every block
            // and no end: the copy must be thrown away.
            failpoint::hit("export.before_done");
            let _ = tx.blocking_send(Ok(pb::SliceCopyChunk {
                block: Default::default(),
                deletes: export
                    .deletes
                    .iter()
                    .map(|&(rowid, xid)| pb::DeleteRecord { rowid, xid })
                    .collect(),
                done: true,
                blocks: export.blocks.len() as u64,
                bytes: export.bytes,
                total_bytes: export.bytes,
            }));
            Ok(())
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// Another node's copy of a slice has a damaged block: send the same
    /// logical block from this node's copy (never through this node's own
    /// repair: a block damaged here too is an error).
    async fn fetch_block(
        &self,
        request: Request<pb::FetchBlockRequest>,
    ) -> Result<Response<pb::FetchBlockResponse>, Status> {
        let caller = Self::caller(&request);
        let req = request.into_inner();
        Self::caller_is(caller, req.from_node)?;
        let map = self.check_epoch(req.epoch).map_err(status)?;
        let held = [SegmentKind::Primary, SegmentKind::Mirror]
            .into_iter()
            .find_map(|seg| map.slices.get(&(req.slice, seg)).map(|&d| (seg, d)));
        let Some((segment, disk)) = held else {
            return Err(status(EngineError::SliceNotOwned {
                node: self.state.node,
                slice: req.slice,
                segment: "primary or mirror".into(),
                epoch: map.epoch,
            }));
        };
        if let Some(why) = self.disk_failure(disk) {
            return Err(status(EngineError::InvalidRequest(format!(
                "its copy is on failed disk {disk}: {why}"
            ))));
        }
        let store = self.disk(disk).map_err(status)?.clone();
        let want = LogicalBlock {
            table: req.table,
            slice: req.slice,
            seq: req.seq,
            rows: req.rows,
            rowid_min: req.rowid_min,
            rowid_max: req.rowid_max,
        };
        let (block, reencoded) =
            match Self::blocking(move || store.fetch_block(segment, &want)).await {
                Ok(r) => r,
                Err(e) => {
                    if matches!(
                        e,
                        EngineError::ChecksumMismatch { .. } | EngineError::CorruptBlock { .. }
                    ) {
                        self.damaged_while_serving(disk, segment, &want, req.from_node, &e);
                    }
                    return Err(status(e));
                }
            };
        info!(
            node = self.state.node,
            from = req.from_node,
            table = req.table,
            slice = req.slice,
            seq = req.seq,
            reencoded,
            "sent a block for repair"
        );
        Ok(Response::new(pb::FetchBlockResponse {
            block,
            segment: pb::Segment::from(segment) as i32,
            disk,
            reencoded,
        }))
    }

    async fn mirror_write(
        &self,
        request: Request<pb::MirrorWriteRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let _fg = self.state.activity.begin();
        let caller = Self::caller(&request);
        let req = request.into_inner();
        Self::caller_is(caller, req.from_node)?;
        // Checked and staged under the map lock: once a newer map is
        // installed no forward of an older one is staged, so an `Adopt` at
        // the newer epoch sees every forward this node will ever stage
        // from the failed primary.
        let guard = self.state.map.read();
        let map = match guard.as_ref() {
            Some(m) if m.epoch == req.epoch => m,
            other => {
                return Err(status(EngineError::StaleEpoch {
                    ours: other.map_or(0, |m| m.epoch),
                    theirs: req.epoch,
                }))
            }
        };
        let (segment, disk) = self.forwarded_copy(map, req.slice).map_err(status)?;
        // Only the slice's serving copy forwards to this one: the map names
        // its node as this copy's other copy.
        if caller.is_some() && map.repair_sources.get(&(req.slice, segment)) != Some(&req.from_node)
        {
            return Err(Status::permission_denied(format!(
                "node {} does not hold the serving copy of slice {} at epoch {}: its forward is refused",
                req.from_node, req.slice, map.epoch
            )));
        }
        self.state.staging.stage(disk, segment, req);
        drop(guard);
        Ok(Response::new(pb::Ack {}))
    }

    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid))]
    async fn mirror_prepare(
        &self,
        request: Request<pb::MirrorPrepareRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let caller = Self::caller(&request);
        let req = request.into_inner();
        Self::caller_is(caller, req.from_node)?;
        self.check_epoch(req.epoch).map_err(status)?;
        let me = self.clone();
        Self::blocking(move || {
            me.state
                .staging
                .prepare(req.xid, req.from_node, req.forwards, &req.skip_slices)
        })
        .await
        .map_err(status)?;
        failpoint::hit("mirror.prepare.after");
        Ok(Response::new(pb::Ack {}))
    }

    async fn mirror_commit(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let xid = request.into_inner().xid;
        failpoint::hit("mirror.commit.before");
        self.on_all_disks(xid, DiskStore::commit).await?;
        self.state.staging.discard(xid);
        Ok(Response::new(pb::Ack {}))
    }

    async fn mirror_abort(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let xid = request.into_inner().xid;
        self.state.staging.discard(xid);
        self.on_all_disks(xid, DiskStore::abort).await?;
        Ok(Response::new(pb::Ack {}))
    }
}
