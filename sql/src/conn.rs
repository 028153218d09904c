//! Per-connection state: an unfinished COPY FROM STDIN, the open
//! transaction block and the coordinator session, and what happens to them
//! when the connection goes away, however it goes (the client quits or
//! vanishes, `pg_terminate_backend`, an idle timeout, shutdown): the COPY's
//! load is aborted, an open transaction block is rolled back, and the
//! session's temporary tables are dropped.
//!
//! It must never leave an abandoned transaction open: its writes would stay
//! pending on the nodes, holding their row locks and space, and hold back
//! GROOM's horizon.

use std::sync::Arc;

use slicedb_coordinator::session::new_session_id;
use slicedb_coordinator::txn::Txn;
use slicedb_coordinator::Coordinator;
use tokio::sync::Mutex;
use tracing::{debug, info};

use crate::copy::CopyPipeline;
use crate::sessions::Stopper;

/// Per-connection state, dropped with the connection: an unfinished COPY
/// FROM STDIN (dropping it aborts the load), the open transaction block
/// (rolled back), and the session (dropping it drops the session's
/// temporary tables).
pub(crate) struct ConnState {
    pub(crate) copy: Mutex<Option<CopyPipeline>>,
    /// The stopper of the COPY FROM STDIN in progress (its statement).
    pub(crate) copy_stop: Mutex<Option<Stopper>>,
    /// The open transaction block (BEGIN ... COMMIT/ROLLBACK).
    pub(crate) txn: Mutex<Option<Arc<Txn>>>,
    pub(crate) session: SessionGuard,
}

impl ConnState {
    pub(crate) fn new(coord: Arc<Coordinator>) -> ConnState {
        ConnState {
            copy: Mutex::new(None),
            copy_stop: Mutex::new(None),
            txn: Mutex::new(None),
            session: SessionGuard {
                id: new_session_id(),
                coord,
            },
        }
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        let Some(txn) = self.txn.get_mut().take() else {
            return;
        };
        let coord = self.session.coord.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                info!(
                    xid = txn.xid,
                    "connection closed inside a transaction block: rolling it back"
                );
                h.spawn(async move { coord.cluster().abort(&txn).await });
            }
            // No runtime (shutdown): the coordinator's next start resolves
            // it (never committed, so aborted).
            Err(_) => debug!(xid = txn.xid, "open transaction left for the next start"),
        }
    }
}

/// Ends the session when the connection goes away.
pub(crate) struct SessionGuard {
    pub(crate) id: u64,
    coord: Arc<Coordinator>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if !self.coord.has_temp_tables(self.id) {
            return;
        }
        let (coord, id) = (self.coord.clone(), self.id);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move { coord.end_session(id).await });
            }
            // No runtime (shutdown): the next coordinator start drops them.
            Err(_) => debug!(session = id, "temporary tables left for the next start"),
        }
    }
}
