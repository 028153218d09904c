//! The primary's side of mirroring: forwards and their bookkeeping.

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;
use tonic::{Response, Status};
use tracing::warn;

use super::Routes;
use crate::proto::{self, pb};
use crate::{EngineError, NodeId, Result, SliceId, TableId, Xid};

/// Wait before asking a mirror again that refused a stale epoch.
const EPOCH_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

pub(crate) type PeerClient = pb::peer_node_client::PeerNodeClient<tonic::transport::Channel>;

/// What one transaction forwarded.
#[derive(Default)]
struct Forwarded {
    /// Mirror node -> forwards sent.
    forwards: HashMap<NodeId, u64>,
    /// Mirror node -> slices forwarded to it.
    mirrored: HashMap<NodeId, HashSet<SliceId>>,
    /// Slices whose mirror did not answer, or whose route went away after
    /// the first forward: primary only for this xid.
    degraded: HashSet<SliceId>,
    /// Slices first written while they had no route: never forwarded in
    /// this xid, even if a route appears (a copy being resynced must hold
    /// a transaction whole or not at all; the resync copies those).
    local: HashSet<SliceId>,
}

impl Forwarded {
    /// Whether every slice sent to `mirror` is degraded (then the mirror
    /// has nothing it could prepare or commit).
    fn all_degraded(&self, mirror: NodeId) -> bool {
        self.mirrored
            .get(&mirror)
            .is_none_or(|slices| slices.iter().all(|s| self.degraded.contains(s)))
    }
}

/// Forwards a primary's writes and its transaction's outcome to the
/// mirrors. Failures never come back as errors: they degrade the slices.
pub struct Forwarder {
    node: NodeId,
    clients: Mutex<HashMap<(NodeId, String), (PeerClient, tonic::transport::Channel)>>,
    txns: Mutex<HashMap<Xid, Forwarded>>,
    /// The newest installed map's epoch and routes: a forward refused for
    /// a stale epoch is sent again under it if it routes the same way.
    latest: Mutex<(u64, HashMap<SliceId, NodeId>)>,
    /// Told of every installed map: a call to a mirror that a newer map no
    /// longer routes to (it was failed over) stops waiting for it.
    installs: tokio::sync::watch::Sender<u64>,
    /// The node's cluster credentials: peers are called over mutual TLS
    /// and must present the certificate of the node they are asked as.
    tls: parking_lot::RwLock<Option<std::sync::Arc<crate::cluster_tls::ClusterTls>>>,
}

impl Forwarder {
    /// The forwarder of node `node` (named in every forward it sends).
    pub fn new(node: NodeId) -> Self {
        Forwarder {
            node,
            clients: Mutex::new(HashMap::new()),
            txns: Mutex::new(HashMap::new()),
            latest: Mutex::new((0, HashMap::new())),
            installs: tokio::sync::watch::Sender::new(0),
            tls: Default::default(),
        }
    }

    /// Call peers over mutual TLS with `tls` (connections made before are
    /// dropped).
    pub fn set_tls(&self, tls: std::sync::Arc<crate::cluster_tls::ClusterTls>) {
        *self.tls.write() = Some(tls);
        self.clients.lock().clear();
    }

    /// A map was installed: its epoch and where it routes each slice.
    pub fn installed(&self, epoch: u64, routes: &Routes) {
        *self.latest.lock() = (epoch, routes.mirrors.clone());
        self.installs.send_replace(epoch);
    }

    /// Resolves once the newest installed map no longer routes one of
    /// `slices` to `node` (never for no slices).
    async fn route_gone(&self, slices: &[SliceId], node: NodeId) {
        if slices.is_empty() {
            return std::future::pending().await;
        }
        let mut installs = self.installs.subscribe();
        loop {
            if slices
                .iter()
                .any(|s| self.latest.lock().1.get(s) != Some(&node))
            {
                return;
            }
            if installs.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Whether this write of `slice` in `xid` goes to a mirror, decided
    /// once per transaction and slice at its first write: forwarded from
    /// the first write on, or never. A slice first written with no route
    /// stays local; one whose route went away after its first forward is
    /// degraded (its mirror would otherwise hold part of the transaction).
    pub fn decide(&self, routes: &Routes, xid: Xid, slice: SliceId) -> bool {
        let routed = routes.mirrors.contains_key(&slice);
        let mut txns = self.txns.lock();
        let t = txns.entry(xid).or_default();
        if t.degraded.contains(&slice) || t.local.contains(&slice) {
            return false;
        }
        let forwarded = t.mirrored.values().any(|s| s.contains(&slice));
        match (routed, forwarded) {
            (true, _) => true,
            (false, true) => {
                t.degraded.insert(slice);
                false
            }
            (false, false) => {
                t.local.insert(slice);
                false
            }
        }
    }

    /// The slices degraded in `xid`, in order.
    pub fn degraded(&self, xid: Xid) -> Vec<SliceId> {
        let mut v: Vec<SliceId> = self
            .txns
            .lock()
            .get(&xid)
            .map(|t| t.degraded.iter().copied().collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// The transactions with forwarding state (open on this primary).
    pub fn open_xids(&self) -> Vec<Xid> {
        self.txns.lock().keys().copied().collect()
    }

    /// Forward a slice's new blocks or deleted rowids of `xid` to its
    /// mirror, unless the slice is already degraded for this transaction.
    /// A failure marks it degraded (the primary goes on alone).
    #[allow(clippy::too_many_arguments)]
    pub async fn write(
        &self,
        epoch: u64,
        routes: &Routes,
        xid: Xid,
        table: TableId,
        slice: SliceId,
        blocks: Vec<bytes::Bytes>,
        deleted_rowids: Vec<i64>,
        request_id: u64,
    ) {
        let Some(&mirror) = routes.mirrors.get(&slice) else {
            return;
        };
        let seq = {
            let mut txns = self.txns.lock();
            let t = txns.entry(xid).or_default();
            if t.degraded.contains(&slice) {
                return;
            }
            let n = t.forwards.entry(mirror).or_default();
            *n += 1;
            t.mirrored.entry(mirror).or_default().insert(slice);
            *n
        };
        let req = pb::MirrorWriteRequest {
            epoch: 0,
            xid,
            table,
            slice,
            blocks,
            deleted_rowids,
            seq,
            from_node: self.node,
            request_id,
        };
        let res = self
            .call(
                routes,
                mirror,
                "forward",
                epoch,
                &[slice],
                |mut c, epoch| {
                    let req = pb::MirrorWriteRequest {
                        epoch,
                        ..req.clone()
                    };
                    async move { c.mirror_write(req).await }
                },
            )
            .await;
        if let Err(e) = res {
            warn!(node = self.node, xid, slice, mirror, error = %e, "mirror unreachable: slice degraded for this transaction");
            self.degrade(xid, [slice]);
        }
    }

    /// Prepare `xid` on every mirror it was forwarded to (after the
    /// primary's own prepare). A mirror that refuses or does not answer
    /// degrades the slices it holds.
    pub async fn prepare(&self, epoch: u64, routes: &Routes, xid: Xid) {
        let forwards = match self.txns.lock().get(&xid) {
            Some(t) => t.forwards.clone(),
            None => return,
        };
        for (mirror, n) in forwards {
            let slices: Vec<SliceId> = {
                let txns = self.txns.lock();
                let Some(t) = txns.get(&xid) else { continue };
                if t.all_degraded(mirror) {
                    continue;
                }
                t.mirrored[&mirror].iter().copied().collect()
            };
            let skip_slices = {
                let txns = self.txns.lock();
                txns.get(&xid)
                    .map(|t| {
                        slices
                            .iter()
                            .copied()
                            .filter(|s| t.degraded.contains(s))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let req = pb::MirrorPrepareRequest {
                epoch: 0,
                xid,
                from_node: self.node,
                forwards: n,
                skip_slices,
            };
            let res = self
                .call(routes, mirror, "prepare", epoch, &slices, |mut c, epoch| {
                    let req = pb::MirrorPrepareRequest {
                        epoch,
                        ..req.clone()
                    };
                    async move { c.mirror_prepare(req).await }
                })
                .await;
            if let Err(e) = res {
                warn!(node = self.node, xid, mirror, error = %e, "mirror did not prepare: its slices are degraded");
                self.degrade(xid, slices);
            }
        }
    }

    /// Commit `xid` on its mirrors (after the primary's own commit) and
    /// forget it. A mirror that misses this has the transaction prepared
    /// on disk; the coordinator's resolver commits it there later.
    pub async fn commit(&self, epoch: u64, routes: &Routes, xid: Xid) {
        let Some(t) = self.txns.lock().remove(&xid) else {
            return;
        };
        for mirror in t.mirrored.keys() {
            if t.all_degraded(*mirror) {
                continue;
            }
            let req = pb::TxnRequest {
                epoch,
                xid,
                requests: 0,
            };
            if let Err(e) = self
                .call(
                    routes,
                    *mirror,
                    "commit",
                    epoch,
                    &[],
                    |mut c, _| async move { c.mirror_commit(req).await },
                )
                .await
            {
                warn!(node = self.node, xid, mirror, error = %e, "mirror commit deferred to the resolver");
            }
        }
    }

    /// Forget `xid` (it is being aborted) and answer the mirrors it was
    /// forwarded to, for [`Forwarder::abort`].
    pub fn forget(&self, xid: Xid) -> Vec<NodeId> {
        self.txns
            .lock()
            .remove(&xid)
            .map(|t| t.mirrored.into_keys().collect())
            .unwrap_or_default()
    }

    /// Abort `xid` on `mirrors` (what [`Forwarder::forget`] answered), at
    /// any epoch: discarding never serves stale data. A mirror that misses
    /// it is left to the coordinator's resolver.
    pub async fn abort(&self, epoch: u64, routes: &Routes, xid: Xid, mirrors: Vec<NodeId>) {
        for mirror in mirrors {
            let req = pb::TxnRequest {
                epoch,
                xid,
                requests: 0,
            };
            if let Err(e) = self
                .call(routes, mirror, "abort", epoch, &[], |mut c, _| async move {
                    c.mirror_abort(req).await
                })
                .await
            {
                warn!(node = self.node, xid, mirror, error = %e, "mirror abort deferred to the resolver");
            }
        }
    }

    fn degrade(&self, xid: Xid, slices: impl IntoIterator<Item = SliceId>) {
        self.txns
            .lock()
            .entry(xid)
            .or_default()
            .degraded
            .extend(slices);
    }

    /// A client for a peer node (connected lazily, reused).
    pub(crate) fn client(&self, routes: &Routes, node: NodeId) -> Result<PeerClient> {
        Ok(self.peer(routes, node)?.0)
    }

    /// The connection to a peer node behind [`Forwarder::client`], for a
    /// call read off HTTP/2 directly (a slice copy's stream).
    pub(crate) fn channel(
        &self,
        routes: &Routes,
        node: NodeId,
    ) -> Result<tonic::transport::Channel> {
        Ok(self.peer(routes, node)?.1)
    }

    fn peer(
        &self,
        routes: &Routes,
        node: NodeId,
    ) -> Result<(PeerClient, tonic::transport::Channel)> {
        let addr = routes
            .peers
            .get(&node)
            .ok_or_else(|| EngineError::Internal(format!("no address for node {node}")))?;
        let key = (node, addr.clone());
        let mut clients = self.clients.lock();
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let tls = self.tls.read().clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ep = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| EngineError::Internal(format!("bad peer address {addr}: {e}")))?
            .connect_timeout(routes.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(proto::KEEPALIVE_INTERVAL)
            .keep_alive_timeout(proto::KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            // A slice copy's stream comes back on this connection: blocks
            // of a megabyte each, and the writer drains them in batches.
            // Without this the source sends them in frames of 16 KiB.
            .max_frame_size(Some(proto::MAX_FRAME_BYTES))
            .initial_stream_window_size(Some(proto::RECEIVE_STREAM_WINDOW))
            .initial_connection_window_size(Some(proto::RECEIVE_CONNECTION_WINDOW));
        let ep = match tls {
            Some(t) => t.client(ep, node)?,
            None => ep,
        };
        let channel = ep.connect_lazy();
        let c = PeerClient::new(channel.clone())
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
        clients.insert(key, (c.clone(), channel.clone()));
        Ok((c, channel))
    }

    /// One call to a mirror at `epoch`, bounded by the map's mirror
    /// timeout, or until a newer map no longer routes `slices` to that
    /// mirror (it was failed over: waiting on is pointless). While a new map is being installed two nodes can briefly
    /// disagree on the epoch, and that must not degrade a slice: a refusal
    /// for a stale epoch is sent again under the newest map this node has
    /// if that map routes `slices` to the same mirror, else after a moment
    /// (this node may get it), within the bound.
    #[allow(clippy::too_many_arguments)]
    async fn call<T, F, Fut>(
        &self,
        routes: &Routes,
        node: NodeId,
        what: &str,
        mut epoch: u64,
        slices: &[SliceId],
        f: F,
    ) -> Result<T>
    where
        F: Fn(PeerClient, u64) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let client = self.client(routes, node)?;
        let deadline = tokio::time::Instant::now() + routes.timeout;
        loop {
            // A mirror that hangs is failed over long before the timeout:
            // the map that says so ends the wait (the slice is degraded).
            let call = tokio::select! {
                r = tokio::time::timeout_at(deadline, f(client.clone(), epoch)) => r,
                _ = self.route_gone(slices, node) => {
                    return Err(EngineError::Internal(format!(
                        "{what} to mirror node {node}: a newer map no longer routes there (failed over)"
                    )))
                }
            };
            match call {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s))
                    if proto::error_kind(&s) == proto::ErrorKind::StaleEpoch
                        && tokio::time::Instant::now() + EPOCH_RETRY < deadline =>
                {
                    let (newest, same_route) = {
                        let l = self.latest.lock();
                        (l.0, slices.iter().all(|s| l.1.get(s) == Some(&node)))
                    };
                    if newest > epoch && same_route {
                        epoch = newest;
                    } else {
                        tokio::time::sleep(EPOCH_RETRY).await;
                    }
                }
                Ok(Err(s)) => {
                    return Err(EngineError::Internal(format!(
                        "{what} to mirror node {node}: {}",
                        s.message()
                    )))
                }
                Err(_) => {
                    return Err(EngineError::Internal(format!(
                        "{what} to mirror node {node}: no answer in {:?}",
                        routes.timeout
                    )))
                }
            }
        }
    }
}
