//! The mirror manager: what keeps a slice's mirror copy in step with its
//! primary, node to node, with no work from the coordinator or the client.
//!
//! On the primary, [`Forwarder`] sends each slice's encoded blocks (byte for
//! byte as the store wrote them) and deleted rowids to the slice's mirror
//! node, then that node's prepare, commit and abort, each bounded by the
//! map's mirror timeout. A mirror that does not answer in time makes its
//! slices degraded for that transaction: the primary goes on alone and says
//! so in its answers, and the coordinator decides what that means for the
//! map.
//!
//! On the mirror, [`Staging`] holds what arrives in memory per (xid,
//! primary node) and, at prepare, once it has checked that no forward was
//! lost, writes it into the mirror segment with the store's primitives
//! (`append_encoded` and `delete` under `prepare_after`). When the primary
//! fails with a transaction still open, the node that now serves its slices
//! takes what it forwarded over as its own writes (`Staging::take_for_adoption`,
//! the node server's `Adopt`), so the coordinator carries the transaction
//! on instead of failing it.
//!
//! A slice copy's target pulls from its source with [`copy::pull`] (the
//! regeneration and resync of a copy, which the coordinator directs).
//!
//! It owns the forwarding bookkeeping (what went to which mirror, which
//! slices are degraded) and the staging. It must never check epochs or
//! ownership (the node server does that before it calls in), never mark a
//! slice unprotected beyond one transaction, never wait on a mirror without
//! bound, and never encode or decode blocks itself (the store does).

pub mod copy;
mod export_stream;
mod forward;
mod staging;

use std::collections::HashMap;
use std::time::Duration;

pub use forward::Forwarder;
pub use staging::{Applied, StagedData, Staging, DEFAULT_STAGING_MEMORY};

use crate::{NodeId, SliceId};

/// Default bound on one forward to a mirror.
pub const DEFAULT_MIRROR_TIMEOUT: Duration = Duration::from_millis(2000);

/// Where a primary forwards, from the installed map.
#[derive(Debug, Default, Clone)]
pub struct Routes {
    /// Primary slice -> the node its writes are forwarded to (active
    /// mirrors only: a degraded slice has none).
    pub mirrors: HashMap<SliceId, NodeId>,
    /// Every node's address (`host:port`).
    pub peers: HashMap<NodeId, String>,
    /// Bound on one call to a mirror.
    pub timeout: Duration,
}
