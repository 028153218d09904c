//! The coordinator-to-node control calls of the `Node` service: map install,
//! DDL, writes and deletes, two-phase commit, status, groom and checksums.
//!
//! It owns the checks every control call makes (the epoch, the slices the
//! map gives this node, the count of writes a transaction sent before its
//! prepare). It must never serve scans (`scans.rs`) and never decide
//! placement: it does what the installed map says.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};

use super::{status, NodeMap, NodeServer, StagedItem, DEFAULT_MIRROR_TIMEOUT};
use crate::failpoint;
use crate::proto::{self, pb};
use crate::store::{DiskStore, SegmentKind, Snapshot};
use crate::{DiskId, EngineError, SliceId, Xid};

#[tonic::async_trait]
impl pb::node_server::Node for NodeServer {
    #[instrument(skip_all, fields(node = self.state.node, epoch = request.get_ref().epoch))]
    async fn install_map(
        &self,
        request: Request<pb::InstallMapRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        if req.node != self.state.node {
            return Err(status(EngineError::InvalidRequest(format!(
                "map for node {} sent to node {}",
                req.node, self.state.node
            ))));
        }
        let mut slices = HashMap::new();
        let mut mirrors = HashMap::new();
        for a in &req.slices {
            self.disk(a.disk).map_err(status)?;
            let seg = proto::segment_from_i32(a.segment).map_err(status)?;
            slices.insert((a.slice, seg), a.disk);
            if seg == SegmentKind::Primary && a.mirror_active {
                mirrors.insert(a.slice, a.mirror_node);
            }
        }
        let peers = req
            .peers
            .iter()
            .map(|p| (p.node, p.address.clone()))
            .collect();
        let mirror_timeout = match req.mirror_timeout_ms {
            0 => DEFAULT_MIRROR_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        let mut map = self.state.map.write();
        if let Some(cur) = map.as_ref() {
            if req.epoch < cur.epoch {
                return Err(status(EngineError::StaleEpoch {
                    ours: cur.epoch,
                    theirs: req.epoch,
                }));
            }
        }
        info!(slices = slices.len(), "installed map");
        *map = Some(NodeMap {
            epoch: req.epoch,
            slices,
            mirrors,
            peers,
            mirror_timeout,
        });
        Ok(Response::new(pb::Ack {}))
    }

    async fn create_table(
        &self,
        request: Request<pb::CreateTableRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        self.check_epoch(req.epoch).map_err(status)?;
        let schema = proto::schema_from_bytes(&req.schema).map_err(status)?;
        let disks = self.state.disks.clone();
        Self::blocking(move || {
            for d in &disks {
                d.create_table(req.table, schema.clone())?;
            }
            Ok(())
        })
        .await
        .map_err(status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn drop_table(
        &self,
        request: Request<pb::DropTableRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        self.check_epoch(req.epoch).map_err(status)?;
        let disks = self.state.disks.clone();
        Self::blocking(move || {
            for d in &disks {
                d.drop_table(req.table)?;
            }
            Ok(())
        })
        .await
        .map_err(status)?;
        Ok(Response::new(pb::Ack {}))
    }

    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid, slice = request.get_ref().slice))]
    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let req = request.into_inner();
        let map = self.check_epoch(req.epoch).map_err(status)?;
        if req.xid == 0 {
            return Err(status(EngineError::InvalidRequest("xid 0".into())));
        }
        let segment = proto::segment_from_i32(req.segment).map_err(status)?;
        let disk_id = self.owned_disk(&map, req.slice, segment).map_err(status)?;
        let disk = self.disk(disk_id).map_err(status)?.clone();
        let mirror = segment == SegmentKind::Primary
            && map.mirrors.contains_key(&req.slice)
            && !self.degraded(req.xid).contains(&req.slice);
        {
            let mut txns = self.state.txns.lock();
            let t = txns.entry(req.xid).or_default();
            t.disks.insert(disk_id);
            t.requests += 1;
        }
        let (xid, table, slice) = (req.xid, req.table, req.slice);
        let (rows, blocks) = Self::blocking(move || {
            let (_, batches) = proto::ipc_to_batches(&req.batches)?;
            let (mut rows, mut blocks) = (0, Vec::new());
            for b in &batches {
                if mirror {
                    let (n, enc) = disk.append_for_mirror(segment, table, slice, xid, b)?;
                    rows += n;
                    blocks.extend(enc);
                } else {
                    rows += disk.append(segment, table, slice, xid, b)?;
                }
            }
            Ok((rows, blocks))
        })
        .await
        .map_err(|e| {
            self.note_disk_fault(disk_id, &e);
            status(e)
        })?;
        if mirror && !blocks.is_empty() {
            self.forward_write(&map, xid, table, slice, blocks, Vec::new())
                .await;
        }
        Ok(Response::new(pb::WriteResponse {
            rows,
            degraded_slices: self.degraded(xid),
        }))
    }

    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid, slice = request.get_ref().slice))]
    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let req = request.into_inner();
        let map = self.check_epoch(req.epoch).map_err(status)?;
        if req.xid == 0 {
            return Err(status(EngineError::InvalidRequest("xid 0".into())));
        }
        let segment = proto::segment_from_i32(req.segment).map_err(status)?;
        let disk_id = self.owned_disk(&map, req.slice, segment).map_err(status)?;
        let disk = self.disk(disk_id).map_err(status)?.clone();
        let snapshot: Snapshot = req.snapshot.as_ref().map(Snapshot::from).ok_or_else(|| {
            status(EngineError::InvalidRequest(
                "delete without a snapshot".into(),
            ))
        })?;
        {
            let mut txns = self.state.txns.lock();
            let t = txns.entry(req.xid).or_default();
            t.disks.insert(disk_id);
            t.requests += 1;
        }
        let (xid, table, slice) = (req.xid, req.table, req.slice);
        let rowids = req.rowids.clone();
        let rows = Self::blocking(move || {
            disk.delete(segment, table, slice, xid, &rowids, Some(&snapshot))
        })
        .await
        .map_err(status)?;
        if segment == SegmentKind::Primary && rows > 0 {
            self.forward_write(&map, xid, table, slice, Vec::new(), req.rowids)
                .await;
        }
        Ok(Response::new(pb::WriteResponse {
            rows,
            degraded_slices: self.degraded(xid),
        }))
    }

    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid))]
    async fn prepare(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let req = request.into_inner();
        let map = self.check_epoch(req.epoch).map_err(status)?;
        let xid = req.xid;
        let (disks, seen, forwards) = {
            let txns = self.state.txns.lock();
            match txns.get(&xid) {
                Some(t) => (
                    t.disks
                        .iter()
                        .filter_map(|id| self.state.disks.get(*id as usize).cloned())
                        .collect::<Vec<_>>(),
                    t.requests,
                    t.forwards.clone(),
                ),
                None => (Vec::new(), 0, HashMap::new()),
            }
        };
        if seen != req.requests {
            return Err(status(EngineError::InvalidRequest(format!(
                "transaction {xid}: node {} received {seen} of {} write requests (it restarted or lost them); cannot prepare",
                self.state.node, req.requests
            ))));
        }
        failpoint::hit("node.prepare.before");
        Self::blocking(move || {
            for d in &disks {
                d.prepare(xid)?;
            }
            Ok(())
        })
        .await
        .map_err(status)?;
        failpoint::hit("node.prepare.after_local");
        for (mirror, n) in forwards {
            let slices: Vec<SliceId> = {
                let txns = self.state.txns.lock();
                let Some(t) = txns.get(&xid) else { continue };
                let all = t.mirrored.get(&mirror).cloned().unwrap_or_default();
                if all.iter().all(|s| t.degraded.contains(s)) {
                    continue;
                }
                all.into_iter().collect()
            };
            let mreq = pb::MirrorPrepareRequest {
                epoch: map.epoch,
                xid,
                from_node: self.state.node,
                forwards: n,
            };
            let res = self
                .forward(&map, mirror, "prepare", |mut c| async move {
                    c.mirror_prepare(mreq).await
                })
                .await;
            if let Err(e) = res {
                warn!(node = self.state.node, xid, mirror, error = %e, "mirror did not prepare: its slices are degraded");
                let mut txns = self.state.txns.lock();
                let t = txns.entry(xid).or_default();
                t.degraded.extend(slices);
            }
        }
        failpoint::hit("node.prepare.after_mirror");
        Ok(Response::new(pb::TxnResponse {
            degraded_slices: self.degraded(xid),
        }))
    }

    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid))]
    async fn commit(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let req = request.into_inner();
        let xid = req.xid;
        failpoint::hit("node.commit.before");
        self.on_all_disks(xid, DiskStore::commit).await?;
        failpoint::hit("node.commit.after_local");
        let txn = self.state.txns.lock().remove(&xid);
        let map = self.current_map();
        if let Some(t) = txn {
            for (mirror, slices) in &t.mirrored {
                if slices.iter().all(|s| t.degraded.contains(s)) {
                    continue;
                }
                let mreq = pb::TxnRequest {
                    epoch: map.epoch,
                    xid,
                    requests: 0,
                };
                // A mirror that misses this has the transaction prepared on
                // disk; the coordinator's resolver commits it there later.
                if let Err(e) = self
                    .forward(&map, *mirror, "commit", |mut c| async move {
                        c.mirror_commit(mreq).await
                    })
                    .await
                {
                    warn!(node = self.state.node, xid, mirror, error = %e, "mirror commit deferred to the resolver");
                }
            }
        }
        failpoint::hit("node.commit.after_mirror");
        Ok(Response::new(pb::TxnResponse::default()))
    }

    async fn abort(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        let xid = req.xid;
        // Abort is allowed at any epoch: discarding never serves stale data.
        let txn = self.state.txns.lock().remove(&xid);
        self.state.staged.lock().remove(&xid);
        self.on_all_disks(xid, DiskStore::abort).await?;
        if let Some(t) = txn {
            let map = self.current_map();
            for mirror in t.mirrored.keys() {
                let mreq = pb::TxnRequest {
                    epoch: map.epoch,
                    xid,
                    requests: 0,
                };
                if let Err(e) = self
                    .forward(&map, *mirror, "abort", |mut c| async move {
                        c.mirror_abort(mreq).await
                    })
                    .await
                {
                    warn!(node = self.state.node, xid, mirror, error = %e, "mirror abort deferred to the resolver");
                }
            }
        }
        Ok(Response::new(pb::Ack {}))
    }

    async fn mirror_write(
        &self,
        request: Request<pb::MirrorWriteRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        let map = self.check_epoch(req.epoch).map_err(status)?;
        let disk = self
            .owned_disk(&map, req.slice, SegmentKind::Mirror)
            .map_err(status)?;
        let item = if req.blocks.is_empty() {
            StagedItem::Delete {
                disk,
                table: req.table,
                slice: req.slice,
                rowids: req.deleted_rowids,
            }
        } else {
            StagedItem::Blocks {
                disk,
                table: req.table,
                slice: req.slice,
                blocks: req.blocks,
            }
        };
        let mut staged = self.state.staged.lock();
        let st = staged
            .entry(req.xid)
            .or_default()
            .entry(req.from_node)
            .or_default();
        st.received += 1;
        st.items.push(item);
        Ok(Response::new(pb::Ack {}))
    }

    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid))]
    async fn mirror_prepare(
        &self,
        request: Request<pb::MirrorPrepareRequest>,
    ) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        self.check_epoch(req.epoch).map_err(status)?;
        let xid = req.xid;
        let st = {
            let mut staged = self.state.staged.lock();
            let st = staged
                .get_mut(&xid)
                .and_then(|m| m.remove(&req.from_node))
                .unwrap_or_default();
            if staged.get(&xid).is_some_and(|m| m.is_empty()) {
                staged.remove(&xid);
            }
            st
        };
        if st.received != req.forwards {
            return Err(status(EngineError::InvalidRequest(format!(
                "transaction {xid}: mirror node {} staged {} of {} forwards from node {} (it restarted?)",
                self.state.node, st.received, req.forwards, req.from_node
            ))));
        }
        let disks = self.state.disks.clone();
        Self::blocking(move || {
            let mut per_disk: HashMap<DiskId, Vec<&StagedItem>> = HashMap::new();
            for item in &st.items {
                let disk = match item {
                    StagedItem::Blocks { disk, .. } | StagedItem::Delete { disk, .. } => *disk,
                };
                per_disk.entry(disk).or_default().push(item);
            }
            for (disk, items) in per_disk {
                let d = disks
                    .get(disk as usize)
                    .ok_or_else(|| EngineError::Internal(format!("no disk {disk}")))?;
                // Apply and prepare under the disk's commit lock, so the
                // node's own prepare of the same xid cannot interleave.
                d.prepare_after(xid, |d| {
                    for item in items {
                        match item {
                            StagedItem::Blocks {
                                table,
                                slice,
                                blocks,
                                ..
                            } => {
                                for b in blocks {
                                    d.append_encoded(SegmentKind::Mirror, *table, *slice, xid, b)?;
                                }
                            }
                            StagedItem::Delete {
                                table,
                                slice,
                                rowids,
                                ..
                            } => {
                                d.delete(SegmentKind::Mirror, *table, *slice, xid, rowids, None)?;
                            }
                        }
                    }
                    Ok(())
                })?;
            }
            Ok(())
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
        self.state.staged.lock().remove(&xid);
        self.on_all_disks(xid, DiskStore::abort).await?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn groom(
        &self,
        request: Request<pb::GroomRequest>,
    ) -> Result<Response<pb::GroomResponse>, Status> {
        let req = request.into_inner();
        self.check_epoch(req.epoch).map_err(status)?;
        let disks = self.state.disks.clone();
        let out = Self::blocking(move || {
            let mut out = pb::GroomResponse::default();
            for d in &disks {
                let s = d.groom(req.table, req.horizon)?;
                out.blocks_rewritten += s.blocks_rewritten;
                out.rows_removed += s.rows_removed;
            }
            Ok(out)
        })
        .await
        .map_err(status)?;
        Ok(Response::new(out))
    }

    async fn checksum(
        &self,
        request: Request<pb::ChecksumRequest>,
    ) -> Result<Response<pb::ChecksumResponse>, Status> {
        let req = request.into_inner();
        let map = self.check_epoch(req.epoch).map_err(status)?;
        let segment = proto::segment_from_i32(req.segment).map_err(status)?;
        let disk_id = self.owned_disk(&map, req.slice, segment).map_err(status)?;
        let disk = self.disk(disk_id).map_err(status)?.clone();
        let snapshot = req
            .snapshot
            .as_ref()
            .map(Snapshot::from)
            .unwrap_or_default();
        let c = Self::blocking(move || disk.checksum(segment, req.table, req.slice, &snapshot))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ChecksumResponse {
            rows: c.rows,
            checksum: c.checksum,
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let epoch = self.state.map.read().as_ref().map_or(0, |m| m.epoch);
        let mut out = pb::StatusResponse {
            node: self.state.node,
            epoch,
            ..Default::default()
        };
        let mut txns: std::collections::BTreeMap<Xid, bool> = self
            .state
            .staged
            .lock()
            .keys()
            .map(|x| (*x, false))
            .collect();
        for x in self.state.txns.lock().keys() {
            txns.entry(*x).or_insert(false);
        }
        for d in &self.state.disks {
            for t in d.in_doubt() {
                let e = txns.entry(t.xid).or_insert(false);
                *e |= t.prepared;
            }
        }
        out.txns = txns
            .into_iter()
            .map(|(xid, prepared)| pb::TxnState { xid, prepared })
            .collect();
        for (i, d) in self.state.disks.iter().enumerate() {
            let disk = i as DiskId;
            let report = d.report();
            out.disks.push(pb::DiskStatus {
                disk,
                failed: self.disk_failure(disk).unwrap_or_default(),
                path: d.path().display().to_string(),
                segments: report
                    .segments
                    .iter()
                    .map(|s| pb::SegmentStatus {
                        segment: pb::Segment::from(s.kind) as i32,
                        offset: s.offset,
                        bytes: s.length,
                        used: s.used,
                    })
                    .collect(),
            });
            for s in d.slice_stats() {
                out.slices.push(pb::SliceStatus {
                    table: s.table,
                    slice: s.slice,
                    segment: pb::Segment::from(s.segment) as i32,
                    disk,
                    rows: s.rows,
                    bytes: s.bytes,
                    blocks: s.blocks,
                });
            }
        }
        Ok(Response::new(out))
    }
}
