//! Per-connection state: an unfinished COPY FROM STDIN, the open
//! transaction block, the coordinator session, the database and user the
//! client named at startup, the connection's own DataFusion context (its
//! `SET datafusion.*` settings are its own), its session settings
//! (`crate::settings`) and its cursors (`crate::cursor`), and what happens to them
//! when the connection goes away, however it goes (the client quits or
//! vanishes, `pg_terminate_backend`, an idle timeout, shutdown): the COPY's
//! load is aborted, an open transaction block is rolled back, and the
//! session's temporary tables are dropped. A statement that writes runs
//! in the open block, or in a transaction of its own ([`in_txn`]).
//!
//! It must never leave an abandoned transaction open: its writes would stay
//! pending on the nodes, holding their row locks and space, and hold back
//! GROOM's horizon.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use std::time::Duration;

use datafusion::execution::context::SessionContext;
use datafusion_postgres::DfSessionService;
use pgwire::api::ClientInfo;
use slicedb_coordinator::session::new_session_id;
use slicedb_coordinator::txn::Txn;
use slicedb_coordinator::{Coordinator, CoordinatorError};
use tokio::sync::Mutex;
use tracing::{debug, info};

use crate::copy::CopyPipeline;
use crate::errors::SqlError;
use crate::sessions::{Registered, Session, Sessions, Stopper};

tokio::task_local! {
    /// The connection the statement on this task runs for: what the
    /// catalog functions and tables that depend on the connection read
    /// (`current_database()`, `current_setting()`, `pg_database`,
    /// `pg_settings`, `SHOW`), while the statement is planned.
    pub(crate) static CURRENT_CONN: Arc<ConnState>;
}

/// The connection of the statement on this task, if the front end set one
/// (not in the embedded API).
pub(crate) fn current_conn() -> Option<Arc<ConnState>> {
    CURRENT_CONN.try_with(|c| c.clone()).ok()
}

/// The database a connection without a name for one is in (the embedded
/// API): the name `slicedb local` prints in its URL.
pub const DEFAULT_DATABASE: &str = "slicedb";

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
    /// The open block's savepoints, oldest first: each name and the
    /// block's write requests when it was made (`crate::block`).
    pub(crate) savepoints: std::sync::Mutex<Vec<(String, u64)>>,
    pub(crate) session: SessionGuard,
    /// The connection's cursors (`crate::cursor`).
    pub(crate) cursors: crate::cursor::Cursors,
    /// The database the client named at startup (slicedb has one
    /// database: every name reaches it, and the catalog shows this one).
    pub(crate) database: String,
    /// The user the client named at startup.
    pub(crate) user: String,
    /// The connection's DataFusion context: a copy of the coordinator's
    /// (same catalog, functions, rules and memory pool) whose options are
    /// this connection's alone.
    pub(crate) ctx: Arc<SessionContext>,
    /// datafusion-postgres over [`ConnState::ctx`].
    pub(crate) df: Arc<DfSessionService>,
    /// What `SET` changed in this session (`crate::settings`).
    pub(crate) settings: SessionSettings,
    /// The parameters the client sent at startup, names in lower case:
    /// their values are the session's reset values.
    pub(crate) startup: HashMap<String, String>,
    /// The server's settings (from its configuration).
    pub(crate) server: Arc<ServerSettings>,
    /// The registered session (idle timeouts, pg_stat_activity); None only
    /// for a connection that never finished its startup.
    pub(crate) registered: Option<Arc<Session>>,
}

impl ConnState {
    /// What the connection's cursors need of it (`crate::cursor`).
    pub(crate) fn cursors(&self) -> crate::cursor::CursorConn<'_> {
        crate::cursor::CursorConn {
            cursors: &self.cursors,
            ctx: &self.ctx,
            txn: &self.txn,
        }
    }

    pub(crate) fn new(
        coord: Arc<Coordinator>,
        server: Arc<ServerSettings>,
        client: &impl ClientInfo,
    ) -> ConnState {
        let meta = client.metadata();
        let field = |k: &str| meta.get(k).cloned().unwrap_or_default();
        let (database, user) = (
            field(pgwire::api::METADATA_DATABASE),
            field(pgwire::api::METADATA_USER),
        );
        let startup = meta
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let registered = client
            .session_extensions()
            .get::<Registered>()
            .map(|r| r.session.clone());
        let ctx = Arc::new(SessionContext::new_with_state(coord.session().state()));
        ConnState {
            copy: Mutex::new(None),
            copy_stop: Mutex::new(None),
            txn: Mutex::new(None),
            savepoints: std::sync::Mutex::new(Vec::new()),
            cursors: Default::default(),
            database: if database.is_empty() {
                user.clone()
            } else {
                database
            },
            user,
            startup,
            server,
            registered,
            df: Arc::new(DfSessionService::new(ctx.clone())),
            ctx,
            settings: SessionSettings::default(),
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

impl SessionGuard {
    pub(crate) fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coord
    }
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

/// The server's values of the settings a session starts from; set once
/// from the configuration (`slicedb local` flags, the cluster file).
#[derive(Debug)]
pub struct ServerSettings {
    /// `statement_timeout` (None: none).
    pub statement_timeout: RwLock<Option<Duration>>,
    /// `max_connections`.
    pub max_connections: Arc<AtomicUsize>,
    /// Where the idle timeouts' defaults live.
    pub sessions: Arc<Sessions>,
}

impl ServerSettings {
    pub fn new(sessions: Arc<Sessions>) -> ServerSettings {
        ServerSettings {
            statement_timeout: RwLock::new(None),
            max_connections: Arc::new(AtomicUsize::new(100)),
            sessions,
        }
    }

    pub fn statement_timeout(&self) -> Option<Duration> {
        *self
            .statement_timeout
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// What a session `SET` (absent: the server's value), and what its open
/// transaction block must undo.
#[derive(Debug, Default)]
pub struct SessionSettings {
    inner: StdMutex<Inner>,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    /// Lower-case name -> value, as normalized when set.
    pub(crate) values: BTreeMap<String, String>,
    /// Inside a transaction block: each name changed in it -> its value at
    /// BEGIN (None: unset) and, if a plain `SET`/`RESET` changed it, the
    /// value that outlives a COMMIT.
    pub(crate) block: Option<BTreeMap<String, Undo>>,
}

/// A setting changed in the open block: its value at BEGIN (None: unset)
/// and, if a plain `SET`/`RESET` changed it, the value a COMMIT keeps.
pub(crate) type Undo = (Option<String>, Option<Option<String>>);

impl SessionSettings {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, name: &str) -> Option<String> {
        self.lock().values.get(&name.to_ascii_lowercase()).cloned()
    }
}

/// The connection's open transaction block, if any.
pub(crate) async fn conn_txn<C: ClientInfo>(client: &C) -> Option<Arc<Txn>> {
    let state = client.session_extensions().get::<ConnState>()?;
    let g = state.txn.lock().await;
    g.clone()
}

/// Run `f` in the connection's transaction (inside BEGIN ... COMMIT: that
/// block, which a failure marks failed) or in a transaction of its own
/// (autocommit: committed on success, aborted on failure).
pub(crate) async fn in_txn<C, T, F, Fut>(
    coord: &Coordinator,
    client: &C,
    f: F,
) -> Result<T, SqlError>
where
    C: ClientInfo,
    F: FnOnce(Arc<Txn>) -> Fut,
    Fut: std::future::Future<Output = Result<T, SqlError>>,
{
    let cluster = coord.cluster();
    match conn_txn(client).await {
        Some(txn) => {
            if let Some(why) = txn.failed() {
                return Err(CoordinatorError::TransactionAborted(why).into());
            }
            let r = f(txn.clone()).await;
            if let Err(e) = &r {
                txn.mark_failed(e.to_string());
            }
            r
        }
        None => {
            let txn = cluster.begin()?;
            match f(txn.clone()).await {
                Ok(v) => {
                    cluster.commit(&txn).await?;
                    Ok(v)
                }
                Err(e) => {
                    cluster.abort(&txn).await;
                    Err(e)
                }
            }
        }
    }
}
