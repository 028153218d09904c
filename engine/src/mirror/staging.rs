//! The receiving side of mirroring: staging forwards in memory and applying
//! them at prepare into the segment holding this node's copy of the slice
//! (the mirror segment; the primary segment when a failed-over mirror
//! forwards to the primary copy being resynced).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::proto::pb;
use crate::store::{DiskStore, SegmentKind};
use crate::{DiskId, EngineError, NodeId, Result, SliceId, TableId, Xid};

enum StagedItem {
    Blocks {
        disk: DiskId,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        blocks: Vec<bytes::Bytes>,
    },
    Delete {
        disk: DiskId,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        rowids: Vec<i64>,
    },
}

impl StagedItem {
    fn disk(&self) -> DiskId {
        match self {
            StagedItem::Blocks { disk, .. } | StagedItem::Delete { disk, .. } => *disk,
        }
    }

    fn slice(&self) -> SliceId {
        match self {
            StagedItem::Blocks { slice, .. } | StagedItem::Delete { slice, .. } => *slice,
        }
    }
}

/// What a mirror holds for one (xid, primary node) before prepare.
#[derive(Default)]
struct Staged {
    received: u64,
    items: Vec<StagedItem>,
}

/// A mirror node's staged forwards, per transaction and primary node.
/// Nothing reaches a disk before [`Staging::prepare`].
pub struct Staging {
    node: NodeId,
    disks: Vec<Arc<DiskStore>>,
    staged: Mutex<HashMap<Xid, HashMap<NodeId, Staged>>>,
}

impl Staging {
    /// The staging of node `node`, whose disks are `disks` (index = id).
    pub fn new(node: NodeId, disks: Vec<Arc<DiskStore>>) -> Self {
        Staging {
            node,
            disks,
            staged: Mutex::new(HashMap::new()),
        }
    }

    /// Hold one forward; (`disk`, `segment`) holds this node's copy of its
    /// slice.
    pub fn stage(&self, disk: DiskId, segment: SegmentKind, req: pb::MirrorWriteRequest) {
        let item = if req.blocks.is_empty() {
            StagedItem::Delete {
                disk,
                segment,
                table: req.table,
                slice: req.slice,
                rowids: req.deleted_rowids,
            }
        } else {
            StagedItem::Blocks {
                disk,
                segment,
                table: req.table,
                slice: req.slice,
                blocks: req.blocks,
            }
        };
        let mut staged = self.staged.lock();
        let st = staged
            .entry(req.xid)
            .or_default()
            .entry(req.from_node)
            .or_default();
        st.received += 1;
        st.items.push(item);
    }

    /// Write what `from_node` staged for `xid` (but for `skip_slices`,
    /// degraded in it) into this node's copies and prepare the disks,
    /// refusing unless exactly `forwards` forwards arrived (a gap means this
    /// node restarted and lost some). Blocking: run it on a blocking thread.
    pub fn prepare(
        &self,
        xid: Xid,
        from_node: NodeId,
        forwards: u64,
        skip_slices: &[SliceId],
    ) -> Result<()> {
        let st = {
            let mut staged = self.staged.lock();
            let st = staged
                .get_mut(&xid)
                .and_then(|m| m.remove(&from_node))
                .unwrap_or_default();
            if staged.get(&xid).is_some_and(|m| m.is_empty()) {
                staged.remove(&xid);
            }
            st
        };
        if st.received != forwards {
            return Err(EngineError::InvalidRequest(format!(
                "transaction {xid}: mirror node {} staged {} of {forwards} forwards from node {from_node} (it restarted?)",
                self.node, st.received
            )));
        }
        let mut per_disk: HashMap<DiskId, Vec<&StagedItem>> = HashMap::new();
        for item in st
            .items
            .iter()
            .filter(|i| !skip_slices.contains(&i.slice()))
        {
            per_disk.entry(item.disk()).or_default().push(item);
        }
        for (disk, items) in per_disk {
            let d = self
                .disks
                .get(disk as usize)
                .ok_or_else(|| EngineError::Internal(format!("no disk {disk}")))?;
            // Apply and prepare under the disk's commit lock, so the
            // node's own prepare of the same xid cannot interleave.
            d.prepare_after(xid, |d| {
                for item in items {
                    match item {
                        StagedItem::Blocks {
                            segment,
                            table,
                            slice,
                            blocks,
                            ..
                        } => {
                            for b in blocks {
                                d.append_encoded(*segment, *table, *slice, xid, b)?;
                            }
                        }
                        StagedItem::Delete {
                            segment,
                            table,
                            slice,
                            rowids,
                            ..
                        } => {
                            d.delete(*segment, *table, *slice, xid, rowids, None)?;
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Drop whatever is staged for `xid` (it aborted).
    pub fn discard(&self, xid: Xid) {
        self.staged.lock().remove(&xid);
    }

    /// The transactions with something staged.
    pub fn open_xids(&self) -> Vec<Xid> {
        self.staged.lock().keys().copied().collect()
    }
}
