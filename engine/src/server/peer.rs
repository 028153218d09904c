//! The `PeerNode` service: the calls one node makes on another. Today
//! these are a primary's forwards to the mirror of its slices (stage,
//! prepare, commit, abort); each delegates to the mirror manager's
//! [`crate::mirror::Staging`] once the epoch and ownership checks passed.
//!
//! It owns only those checks and the mapping to gRPC. It must never serve
//! the coordinator (that is `control.rs`) and never stage or apply data
//! itself.

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{status, NodeServer};
use crate::failpoint;
use crate::proto::pb;
use crate::store::{DiskStore, SegmentKind};

#[tonic::async_trait]
impl pb::peer_node_server::PeerNode for NodeServer {
    async fn mirror_write(
        &self,
        request: Request<pb::MirrorWriteRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        let map = self.check_epoch(req.epoch).map_err(status)?;
        let disk = self
            .owned_disk(&map, req.slice, SegmentKind::Mirror)
            .map_err(status)?;
        self.state.staging.stage(disk, req);
        Ok(Response::new(pb::Ack {}))
    }

    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid))]
    async fn mirror_prepare(
        &self,
        request: Request<pb::MirrorPrepareRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        self.check_epoch(req.epoch).map_err(status)?;
        let me = self.clone();
        Self::blocking(move || {
            me.state
                .staging
                .prepare(req.xid, req.from_node, req.forwards)
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
