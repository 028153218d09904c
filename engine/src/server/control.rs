//! The coordinator-to-node control calls of the `Node` service: map install,
//! DDL, writes and deletes, two-phase commit, status, groom and checksums.
//!
//! It owns the checks every control call makes (the epoch, the slices the
//! map gives this node, the count of writes a transaction sent before its
//! prepare). It must never serve scans (`scans.rs`) and never decide
//! placement: it does what the installed map says.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};

use super::{status, NodeMap, NodeServer};
use crate::failpoint;
use crate::mirror::{Routes, DEFAULT_MIRROR_TIMEOUT};
use crate::proto::{self, pb};
use crate::store::{DiskStore, SegmentKind, Snapshot};
use crate::{DiskId, EngineError, SliceId, Xid};

/// How long a sweep retries obsolete copies that have work pending.
const SWEEP_GIVE_UP: Duration = Duration::from_secs(600);

impl NodeServer {
    /// In the background, drop every copy this node's healthy disks hold
    /// that the installed map no longer places there (it was regenerated
    /// elsewhere), and free its space. Each decision is made under the map
    /// lock, so a newer map that places the copy here again (and a copy
    /// that fills it) cannot lose it. A copy with work pending (a
    /// transaction in doubt since a crash, until the resolver finishes it)
    /// is tried again every second while this map is the newest; a newer
    /// map's own sweep takes over from there.
    fn drop_obsolete_copies(&self) {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let epoch = me.state.map.read().as_ref().map(|m| m.epoch);
            let t0 = std::time::Instant::now();
            loop {
                let busy = me.sweep_obsolete_copies();
                let newest = me.state.map.read().as_ref().map(|m| m.epoch) == epoch;
                if busy == 0 || !newest {
                    return;
                }
                if t0.elapsed() > SWEEP_GIVE_UP {
                    warn!(
                        busy,
                        "obsolete copies still have work pending: left until the next map"
                    );
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    }

    /// One pass of [`Self::drop_obsolete_copies`]; answers how many
    /// obsolete copies had work pending and stayed.
    fn sweep_obsolete_copies(&self) -> usize {
        let _one = self.state.sweeping.lock();
        let mut busy = 0;
        for (i, d) in self.state.disks.iter().enumerate() {
            let disk = i as DiskId;
            if self.disk_failure(disk).is_some() {
                continue;
            }
            for (segment, slice) in d.held_copies() {
                let map = self.state.map.read();
                let Some(m) = map.as_ref() else { return 0 };
                if m.slices.get(&(slice, segment)) == Some(&disk) {
                    continue;
                }
                match d.drop_copy(segment, slice) {
                    Ok(Some(freed)) => info!(
                        disk,
                        slice,
                        segment = segment.as_str(),
                        freed,
                        epoch = m.epoch,
                        "dropped a copy the map no longer places here"
                    ),
                    Ok(None) => busy += 1,
                    Err(e) => warn!(disk, slice, error = %e, "obsolete copy not dropped"),
                }
            }
        }
        busy
    }

    /// The checks a Write or Delete passes before it touches a disk: the
    /// epoch, a real xid, a (slice, segment) this node holds; answers the
    /// map, the segment and the disk holding the copy.
    fn write_target(
        &self,
        epoch: u64,
        xid: Xid,
        slice: SliceId,
        segment: i32,
    ) -> Result<(NodeMap, SegmentKind, DiskId, Arc<DiskStore>), EngineError> {
        let map = self.check_epoch(epoch)?;
        if xid == 0 {
            return Err(EngineError::InvalidRequest("xid 0".into()));
        }
        let segment = proto::segment_from_i32(segment)?;
        let disk_id = self.owned_disk(&map, slice, segment)?;
        let disk = self.disk(disk_id)?.clone();
        Ok((map, segment, disk_id, disk))
    }

    /// Count a Write or Delete of `xid` on `disk` (checked at prepare).
    fn count_request(&self, xid: Xid, disk: DiskId) {
        let mut txns = self.state.txns.lock();
        let t = txns.entry(xid).or_default();
        t.disks.insert(disk);
        t.requests += 1;
    }
}

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
        let mut repair_sources = HashMap::new();
        for a in &req.slices {
            self.disk(a.disk).map_err(status)?;
            let seg = proto::segment_from_i32(a.segment).map_err(status)?;
            slices.insert((a.slice, seg), a.disk);
            // The serving copy forwards: the primary, or (failed over)
            // a mirror forwarding to the primary copy being resynced.
            if seg != SegmentKind::Temp && a.mirror_active {
                mirrors.insert(a.slice, a.mirror_node);
            }
            if seg != SegmentKind::Temp && a.has_repair_source {
                repair_sources.insert((a.slice, seg), a.repair_source);
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
        let routes = Routes {
            mirrors,
            peers,
            timeout: mirror_timeout,
        };
        self.state.forwarder.installed(req.epoch, &routes);
        *map = Some(NodeMap {
            epoch: req.epoch,
            slices,
            routes,
            repair_sources,
        });
        drop(map);
        self.drop_obsolete_copies();
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
        let _fg = self.state.activity.begin();
        let req = request.into_inner();
        let (map, segment, disk_id, disk) = self
            .write_target(req.epoch, req.xid, req.slice, req.segment)
            .map_err(status)?;
        let mirror = segment != SegmentKind::Temp
            && self.state.forwarder.decide(&map.routes, req.xid, req.slice);
        self.count_request(req.xid, disk_id);
        let (xid, table, slice, request_id) = (req.xid, req.table, req.slice, req.request_id);
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
            self.state
                .forwarder
                .write(
                    map.epoch,
                    &map.routes,
                    xid,
                    table,
                    slice,
                    blocks.into_iter().map(bytes::Bytes::from).collect(),
                    Vec::new(),
                    request_id,
                )
                .await;
        }
        Ok(Response::new(pb::WriteResponse {
            rows,
            degraded_slices: self.state.forwarder.degraded(xid),
        }))
    }

    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid, slice = request.get_ref().slice))]
    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        let _fg = self.state.activity.begin();
        let req = request.into_inner();
        let (map, segment, disk_id, disk) = self
            .write_target(req.epoch, req.xid, req.slice, req.segment)
            .map_err(status)?;
        let snapshot: Snapshot = req.snapshot.as_ref().map(Snapshot::from).ok_or_else(|| {
            status(EngineError::InvalidRequest(
                "delete without a snapshot".into(),
            ))
        })?;
        self.count_request(req.xid, disk_id);
        let (xid, table, slice) = (req.xid, req.table, req.slice);
        let rowids = req.rowids.clone();
        let rows = Self::blocking(move || {
            disk.delete(segment, table, slice, xid, &rowids, Some(&snapshot))
        })
        .await
        .map_err(status)?;
        if segment != SegmentKind::Temp
            && rows > 0
            && self.state.forwarder.decide(&map.routes, req.xid, req.slice)
        {
            self.state
                .forwarder
                .write(
                    map.epoch,
                    &map.routes,
                    xid,
                    table,
                    slice,
                    Vec::new(),
                    req.rowids,
                    req.request_id,
                )
                .await;
        }
        Ok(Response::new(pb::WriteResponse {
            rows,
            degraded_slices: self.state.forwarder.degraded(xid),
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
        let (disks, seen) = {
            let txns = self.state.txns.lock();
            match txns.get(&xid) {
                Some(t) => (
                    t.disks
                        .iter()
                        .filter_map(|id| self.state.disks.get(*id as usize).cloned())
                        .collect::<Vec<_>>(),
                    t.requests,
                ),
                None => (Vec::new(), 0),
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
        self.state
            .forwarder
            .prepare(map.epoch, &map.routes, xid)
            .await;
        failpoint::hit("node.prepare.after_mirror");
        Ok(Response::new(pb::TxnResponse {
            degraded_slices: self.state.forwarder.degraded(xid),
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
        self.on_all_disks(xid, DiskStore::commit_prepared).await?;
        failpoint::hit("node.commit.after_local");
        self.state.txns.lock().remove(&xid);
        // Forwards staged here but never prepared were left out of this
        // commit (their primary degraded them): drop them.
        self.state.staging.discard(xid);
        let map = self.current_map();
        self.state
            .forwarder
            .commit(map.epoch, &map.routes, xid)
            .await;
        failpoint::hit("node.commit.after_mirror");
        Ok(Response::new(pb::TxnResponse::default()))
    }

    async fn abort(&self, request: Request<pb::TxnRequest>) -> Result<Response<pb::Ack>, Status> {
        let req = request.into_inner();
        let xid = req.xid;
        // Abort is allowed at any epoch: discarding never serves stale data.
        self.state.txns.lock().remove(&xid);
        let mirrors = self.state.forwarder.forget(xid);
        self.state.staging.discard(xid);
        self.on_all_disks(xid, DiskStore::abort).await?;
        let map = self.current_map();
        self.state
            .forwarder
            .abort(map.epoch, &map.routes, xid, mirrors)
            .await;
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
            // Tests hold one node's groom back while the others groom.
            if let Some(d) = crate::failpoint::delay("groom.before") {
                std::thread::sleep(d);
            }
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

    /// Pull one copy of a slice from its source node into this node's
    /// copy (see `mirror::copy`).
    #[instrument(skip_all, fields(node = self.state.node, slice = request.get_ref().slice))]
    async fn copy_slice(
        &self,
        request: Request<pb::CopySliceRequest>,
    ) -> Result<Response<pb::CopySliceResponse>, Status> {
        let req = request.into_inner();
        let map = self.check_epoch(req.epoch).map_err(status)?;
        let target_segment = proto::segment_from_i32(req.target_segment).map_err(status)?;
        let source_segment = proto::segment_from_i32(req.source_segment).map_err(status)?;
        if req.xid == 0 || req.source_node == self.state.node {
            return Err(status(EngineError::InvalidRequest(
                "a slice copy needs its own xid and another node as its source".into(),
            )));
        }
        let disk = self
            .owned_disk(&map, req.slice, target_segment)
            .map_err(status)?;
        let store = self.disk(disk).map_err(status)?.clone();
        let source = self
            .state
            .forwarder
            .channel(&map.routes, req.source_node)
            .map_err(status)?;
        let plan = crate::mirror::copy::CopyPlan {
            table: req.table,
            slice: req.slice,
            source_segment,
            target_segment,
            xid: req.xid,
            incremental: req.incremental,
            epoch: req.epoch,
            source_node: req.source_node,
            max_bytes_per_sec: req.max_bytes_per_sec,
        };
        let done = crate::mirror::copy::pull(
            source,
            store,
            plan,
            &self.state.copies,
            self.state.activity.clone(),
        )
        .await
        .map_err(status)?;
        info!(
            slice = req.slice,
            table = req.table,
            from = req.source_node,
            blocks = done.blocks,
            bytes = done.bytes,
            "slice copied"
        );
        Ok(Response::new(done))
    }

    /// Take over what a failed primary forwarded here for an open
    /// transaction (see `mirror::staging`): forwards still staged are
    /// written now as this node's own writes of the transaction (pending,
    /// and forwarded on if the slice has a route), those the primary's
    /// prepare already wrote here count as this node's too. Answers every
    /// request adopted for the slices asked, by this call or an earlier one.
    #[instrument(skip_all, fields(node = self.state.node, xid = request.get_ref().xid, from = request.get_ref().from_node))]
    async fn adopt(
        &self,
        request: Request<pb::AdoptRequest>,
    ) -> Result<Response<pb::AdoptResponse>, Status> {
        let req = request.into_inner();
        let map = self.check_epoch(req.epoch).map_err(status)?;
        let xid = req.xid;
        if xid == 0 || req.from_node == self.state.node {
            return Err(status(EngineError::InvalidRequest(
                "adopt needs an xid and another node".into(),
            )));
        }
        // Only slices this node now serves from the copy the forwards went to.
        for &slice in &req.slices {
            self.forwarded_copy(&map, slice).map_err(status)?;
        }
        let taken = self
            .state
            .staging
            .take_for_adoption(xid, req.from_node, &req.slices);
        let to_apply = taken.to_apply;
        let me = self.clone();
        let (written, items) = Self::blocking(move || {
            let mut written = Vec::with_capacity(to_apply.len());
            for item in &to_apply {
                let d = me.state.staging.disk(item.disk)?;
                let rows = item.apply(d, xid)?;
                written.push(crate::mirror::Applied {
                    request_id: item.request_id,
                    slice: item.slice,
                    disk: item.disk,
                    rows,
                });
            }
            Ok((written, to_apply))
        })
        .await
        .map_err(status)?;
        // Forward on what this node now writes for the transaction, like
        // its own writes (a slice with no route stays local in it).
        for item in items {
            if item.segment == SegmentKind::Temp
                || !self.state.forwarder.decide(&map.routes, xid, item.slice)
            {
                continue;
            }
            // (Rare: a slice that gained a route since the failover. A
            // spilled forward is read back here.)
            let (blocks, rowids) = match &item.data {
                crate::mirror::StagedData::Delete(r) => (Vec::new(), r.clone()),
                data => (data.blocks().map_err(status)?, Vec::new()),
            };
            self.state
                .forwarder
                .write(
                    map.epoch,
                    &map.routes,
                    xid,
                    item.table,
                    item.slice,
                    blocks,
                    rowids,
                    item.request_id,
                )
                .await;
        }
        let fresh: Vec<crate::mirror::Applied> =
            written.into_iter().chain(taken.already_applied).collect();
        for a in &fresh {
            self.count_request(xid, a.disk);
        }
        self.state.staging.note_adopted(xid, req.from_node, &fresh);
        let all: Vec<&crate::mirror::Applied> = taken.earlier.iter().chain(&fresh).collect();
        info!(
            xid,
            from = req.from_node,
            adopted = fresh.len(),
            "took over a failed primary's forwards"
        );
        Ok(Response::new(pb::AdoptResponse {
            requests: all.len() as u64,
            writes: all
                .into_iter()
                .map(|a| pb::AdoptedWrite {
                    request_id: a.request_id,
                    slice: a.slice,
                    rows: a.rows,
                })
                .collect(),
            degraded_slices: self.state.forwarder.degraded(xid),
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
            .staging
            .open_xids()
            .into_iter()
            .chain(self.state.txns.lock().keys().copied())
            .chain(self.state.forwarder.open_xids())
            .map(|x| (x, false))
            .collect();
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
        out.copies = self.state.copies.snapshot();
        out.repairs = self.state.repairs.lock().records();
        out.scrubs = self.scrub_status();
        out.damaged = self
            .state
            .damaged
            .recheck(&self.state.disks)
            .iter()
            .map(|m| m.to_pb())
            .collect();
        for (i, d) in self.state.disks.iter().enumerate() {
            let disk = i as DiskId;
            let report = d.report();
            out.disks.push(pb::DiskStatus {
                disk,
                failed: self.disk_failure(disk).unwrap_or_default(),
                generation: d.generation(),
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
