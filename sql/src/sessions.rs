//! The server's sessions, and how a statement is stopped.
//!
//! Every connection that finished its startup is a [`Session`] in the
//! [`Sessions`] registry: its backend pid and secret key (what psql's
//! Ctrl-C, psycopg's `cancel()` and JDBC's `Statement.cancel()` send in a
//! CancelRequest), user, database, client address, and what it runs now.
//! A statement runs under a [`Stopper`], which ends it with an error when
//! - a CancelRequest names its session (57014, the connection stays usable),
//! - it passes the session's `statement_timeout` (or the server default),
//!   counted from its start over planning, execution and sending rows (57014),
//! - the session is terminated (57P01; the connection is then closed),
//! - or the client went away (checked on a copy of the socket while the
//!   statement runs).
//!
//! Ending a statement means dropping its work: its plan's streams, and with
//! them the node scans (query execution runs on the query threads,
//! `slicedb_coordinator::query::threads`, so these checks are never starved
//! by it).
//!
//! A session idle between statements is closed, like PostgreSQL's, after
//! `idle_in_transaction_session_timeout` inside an open transaction block
//! (FATAL 25P03; closing it rolls the block back) or `idle_session_timeout`
//! outside one (FATAL 57P05): each is the session's `SET` value, else the
//! server default, 0 meaning none. A watcher task per session waits for the
//! deadline; the error is written on the session's copy of the socket while
//! the connection waits for its client, and the socket is shut down.
//!
//! After authentication (`crate::auth`), [`Startup`] makes each connection a session (or
//! refuses it past `max_connections`, 53300); [`Canceller`] answers
//! CancelRequests.
//!
//! It owns no query state and never touches the coordinator.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures::{Sink, StreamExt};
use pgwire::api::auth::{DefaultServerParameterProvider, ServerParameterProvider};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::results::Response;
use pgwire::api::ClientInfo;
use pgwire::api::PidSecretKeyGenerator;
use pgwire::error::PgWireResult;
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::startup::SecretKey;
use pgwire::messages::PgWireBackendMessage;

/// How often a running statement looks whether its client is still there.
const CLIENT_CHECK: Duration = Duration::from_millis(200);

/// What a session runs now.
#[derive(Debug, Clone)]
pub struct Activity {
    /// `active` while a statement runs, else `idle`.
    pub state: &'static str,
    /// The statement running, or the last one.
    pub query: String,
    pub query_start: Option<SystemTime>,
}

/// One connection after its startup.
pub struct Session {
    pub pid: i32,
    secret: bytes::Bytes,
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub client_addr: SocketAddr,
    pub backend_start: SystemTime,
    activity: Mutex<Activity>,
    /// Bumped by each cancel; a statement stops when it changes.
    cancels: tokio::sync::watch::Sender<u64>,
    terminated: AtomicBool,
    /// A copy of the connection's socket: to see a client that left, and
    /// to close the connection of a terminated session.
    socket: Option<OwnedFd>,
    /// Idle timeouts, statement starts and ends, the open transaction block.
    idle: Idle,
    /// The server's defaults (shared by every session).
    defaults: Arc<IdleDefaults>,
}

/// A timeout setting of a session: `UNSET` means the server default.
const UNSET: u64 = u64::MAX;

/// What the idle watcher of a session looks at.
struct Idle {
    /// `SET idle_session_timeout` in ms (0: none; `UNSET`: the default).
    session_ms: AtomicU64,
    /// `SET idle_in_transaction_session_timeout` in ms (same).
    in_txn_ms: AtomicU64,
    /// Whether a transaction block (BEGIN ...) is open.
    in_txn: AtomicBool,
    /// Bumped at every statement's start and end.
    changes: AtomicU64,
    /// Statements running now.
    running: AtomicU64,
    /// Wakes the watcher: a statement started or ended, or the session ends.
    wake: tokio::sync::Notify,
    closed: AtomicBool,
}

/// The idle timeouts of sessions that `SET` none (ms, 0: none).
#[derive(Debug, Default)]
pub struct IdleDefaults {
    pub session_ms: AtomicU64,
    pub in_txn_ms: AtomicU64,
}

/// Which idle timeout a session passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleTimeout {
    /// `idle_session_timeout`: idle outside a transaction block.
    Session,
    /// `idle_in_transaction_session_timeout`: idle inside one.
    InTransaction,
}

impl IdleTimeout {
    /// The setting's name, as `SET` and `SHOW` spell it.
    pub fn name(self) -> &'static str {
        match self {
            IdleTimeout::Session => "idle_session_timeout",
            IdleTimeout::InTransaction => "idle_in_transaction_session_timeout",
        }
    }

    /// The setting `name` is, if it is one of the two.
    pub fn from_name(name: &str) -> Option<IdleTimeout> {
        [IdleTimeout::Session, IdleTimeout::InTransaction]
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// The FATAL error a session closed by it gets (PostgreSQL's).
    fn error(self) -> ErrorInfo {
        let (code, message) = match self {
            IdleTimeout::Session => (
                "57P05",
                "terminating connection due to idle-session timeout",
            ),
            IdleTimeout::InTransaction => (
                "25P03",
                "terminating connection due to idle-in-transaction timeout",
            ),
        };
        ErrorInfo::new("FATAL".to_string(), code.to_string(), message.to_string())
    }
}

impl Session {
    /// What the session runs now.
    pub fn activity(&self) -> Activity {
        self.activity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stop the statement running now, if any.
    pub fn cancel(&self) {
        self.cancels.send_modify(|n| *n += 1);
    }

    /// Stop the statement running now and close the connection.
    pub fn terminate(&self) {
        self.terminated.store(true, Ordering::SeqCst);
        self.cancel();
        if let Some(fd) = &self.socket {
            // SAFETY: shutdown only reads its integer arguments; the fd is
            // a copy this session owns, open while it lives.
            unsafe {
                libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
            }
        }
    }

    /// Whether the client closed its end (or the socket failed).
    fn client_gone(&self) -> bool {
        let Some(fd) = &self.socket else {
            return false;
        };
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
    }

    /// The session's own value of an idle timeout (None: the server's).
    pub fn idle_timeout_set(&self, which: IdleTimeout) -> Option<Duration> {
        let ms = self.idle_cell(which).load(Ordering::SeqCst);
        (ms != UNSET).then(|| Duration::from_millis(ms))
    }

    /// The idle timeout in force (None: none).
    pub fn idle_timeout(&self, which: IdleTimeout) -> Option<Duration> {
        let default = match which {
            IdleTimeout::Session => &self.defaults.session_ms,
            IdleTimeout::InTransaction => &self.defaults.in_txn_ms,
        };
        let ms = match self.idle_cell(which).load(Ordering::SeqCst) {
            UNSET => default.load(Ordering::SeqCst),
            ms => ms,
        };
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// `SET` an idle timeout for this session (zero: none; None: back to
    /// the server's default, `RESET` / `SET ... TO DEFAULT`).
    pub fn set_idle_timeout(&self, which: IdleTimeout, value: Option<Duration>) {
        let ms = value.map_or(UNSET, |d| (d.as_millis() as u64).min(UNSET - 1));
        self.idle_cell(which).store(ms, Ordering::SeqCst);
    }

    fn idle_cell(&self, which: IdleTimeout) -> &AtomicU64 {
        match which {
            IdleTimeout::Session => &self.idle.session_ms,
            IdleTimeout::InTransaction => &self.idle.in_txn_ms,
        }
    }

    /// Note whether a transaction block is open (BEGIN ... COMMIT/ROLLBACK).
    pub fn set_in_transaction(&self, open: bool) {
        self.idle.in_txn.store(open, Ordering::SeqCst);
    }

    /// Close the session once it stays idle past its idle timeouts.
    async fn watch_idle(self: Arc<Self>) {
        loop {
            let woken = self.idle.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.idle.closed.load(Ordering::SeqCst) {
                return;
            }
            let since = self.idle.changes.load(Ordering::SeqCst);
            let which = if self.idle.in_txn.load(Ordering::SeqCst) {
                IdleTimeout::InTransaction
            } else {
                IdleTimeout::Session
            };
            let timeout = match self.idle_timeout(which) {
                Some(t) if self.idle.running.load(Ordering::SeqCst) == 0 => t,
                // Busy, or no limit: wait for the next start or end (a
                // SET runs as a statement, so its end wakes us too).
                _ => {
                    woken.await;
                    continue;
                }
            };
            tokio::select! {
                _ = &mut woken => continue,
                _ = tokio::time::sleep(timeout) => {}
            }
            if self.idle.changes.load(Ordering::SeqCst) != since
                || self.idle.running.load(Ordering::SeqCst) > 0
            {
                continue;
            }
            tracing::info!(pid = self.pid, timeout = ?timeout, setting = which.name(), "closing an idle session");
            self.close_with(which.error());
            return;
        }
    }

    /// Send `error` to the client, then close the connection (while it
    /// waits for the client: nothing else writes to the socket then).
    fn close_with(&self, error: ErrorInfo) {
        self.terminated.store(true, Ordering::SeqCst);
        self.cancel();
        let Some(fd) = &self.socket else {
            return;
        };
        let mut buf = bytes::BytesMut::new();
        let msg = pgwire::messages::response::ErrorResponse::from(error);
        if pgwire::messages::Message::encode(&msg, &mut buf).is_ok() {
            // SAFETY: `buf` is valid for its length; the fd is our open copy.
            let n = unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n != buf.len() as isize {
                tracing::debug!(
                    pid = self.pid,
                    sent = n,
                    "the idle timeout's error was not sent whole"
                );
            }
        }
        // SAFETY: shutdown only reads its integer arguments.
        unsafe {
            libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
        }
    }

    /// Note a statement's start; the returned guard notes its end. The
    /// stopper ends it on cancel, after `timeout`, on terminate or when the
    /// client goes away.
    pub fn start(self: &Arc<Self>, query: &str, timeout: Option<Duration>) -> Stopper {
        let mut cancels = self.cancels.subscribe();
        cancels.mark_unchanged();
        self.idle.running.fetch_add(1, Ordering::SeqCst);
        self.idle.changes.fetch_add(1, Ordering::SeqCst);
        self.idle.wake.notify_one();
        {
            let mut a = self.activity.lock().unwrap_or_else(|e| e.into_inner());
            a.state = "active";
            a.query = query.to_string();
            a.query_start = Some(SystemTime::now());
        }
        Stopper {
            session: self.clone(),
            cancels,
            deadline: timeout.map(|t| Instant::now() + t),
            _active: Arc::new(Active(self.clone())),
        }
    }
}

/// Notes a statement's end when the last of its stoppers goes.
struct Active(Arc<Session>);

impl Drop for Active {
    fn drop(&mut self) {
        let idle = &self.0.idle;
        {
            let mut a = self.0.activity.lock().unwrap_or_else(|e| e.into_inner());
            a.state = if idle.in_txn.load(Ordering::SeqCst) {
                "idle in transaction"
            } else {
                "idle"
            };
        }
        idle.running.fetch_sub(1, Ordering::SeqCst);
        idle.changes.fetch_add(1, Ordering::SeqCst);
        idle.wake.notify_one();
    }
}

/// Ends a statement (see the module docs). The statement is over when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Stopper {
    session: Arc<Session>,
    cancels: tokio::sync::watch::Receiver<u64>,
    deadline: Option<Instant>,
    _active: Arc<Active>,
}

/// [`Stopper::stopped`], owning its stopper.
type StopFuture = std::pin::Pin<Box<dyn std::future::Future<Output = PgWireError> + Send>>;

impl Stopper {
    /// Resolves with the error to end the statement with, once it must end.
    pub async fn stopped(&mut self) -> PgWireError {
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let session = self.session.clone();
        let gone = async {
            loop {
                tokio::time::sleep(CLIENT_CHECK).await;
                if session.client_gone() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = self.cancels.changed() => self.canceled(),
            _ = deadline => timed_out(),
            _ = gone => error("08006", "the client closed the connection"),
        }
    }

    /// The error of a statement canceled, or of a session terminated.
    fn canceled(&self) -> PgWireError {
        if self.session.terminated.load(Ordering::SeqCst) {
            fatal(
                "57P01",
                "terminating connection due to administrator command",
            )
        } else {
            error("57014", "canceling statement due to user request")
        }
    }

    /// Whether the statement must stop now (without waiting): the error
    /// to end it with. For work that is not a future it can race, like a
    /// COPY FROM STDIN fed message by message.
    pub fn check(&mut self) -> Option<PgWireError> {
        if self.cancels.has_changed().unwrap_or(false) {
            self.cancels.mark_unchanged();
            return Some(self.canceled());
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Some(timed_out());
        }
        None
    }

    fn into_future(mut self) -> StopFuture {
        Box::pin(async move { self.stopped().await })
    }

    /// Run `work` until it ends or the statement must stop.
    pub async fn run<T>(
        &mut self,
        work: impl std::future::Future<Output = Result<T, PgWireError>>,
    ) -> Result<T, PgWireError> {
        tokio::select! {
            r = work => r,
            e = self.stopped() => Err(e),
        }
    }
}

fn timed_out() -> PgWireError {
    error("57014", "canceling statement due to statement timeout")
}

fn error(code: &str, message: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message.to_string(),
    )))
}

pub(crate) fn fatal(code: &str, message: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_string(),
        code.to_string(),
        message.to_string(),
    )))
}

/// `responses` whose rows (of a query, or of COPY TO) stop with `stopper`
/// (the statement is over once the last of them is sent or dropped).
pub fn guard_responses(responses: Vec<Response>, stopper: Stopper) -> Vec<Response> {
    responses
        .into_iter()
        .map(|r| match r {
            Response::Query(mut q) => {
                let rows = std::mem::replace(&mut q.data_rows, Box::pin(futures::stream::empty()));
                q.data_rows = Box::pin(stoppable(rows, stopper.clone()));
                Response::Query(q)
            }
            Response::CopyOut(mut c) => {
                let data =
                    std::mem::replace(&mut c.data_stream, Box::pin(futures::stream::empty()));
                c.data_stream = Box::pin(stoppable(data, stopper.clone()));
                Response::CopyOut(c)
            }
            other => other,
        })
        .collect()
}

/// `items`, ended by an error once `stopper` says the statement must stop.
fn stoppable<T: Send + 'static>(
    items: std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, PgWireError>> + Send>>,
    stopper: Stopper,
) -> impl futures::Stream<Item = Result<T, PgWireError>> + Send {
    futures::stream::unfold(Some((items, stopper.into_future())), |state| async move {
        let (mut items, mut stop) = state?;
        match futures::future::select(items.next(), &mut stop).await {
            futures::future::Either::Left((Some(item), _)) => Some((item, Some((items, stop)))),
            futures::future::Either::Left((None, _)) => None,
            futures::future::Either::Right((e, _)) => Some((Err(e), None)),
        }
    })
}

/// Every session of the server, by pid.
#[derive(Default)]
pub struct Sessions {
    by_pid: Mutex<HashMap<i32, Arc<Session>>>,
    /// Socket copies of connections not yet started, by client address.
    sockets: Mutex<HashMap<SocketAddr, OwnedFd>>,
    /// The idle timeouts of sessions that set none.
    idle_defaults: Arc<IdleDefaults>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

/// Removes its session from the registry when the connection goes.
pub struct Registered {
    sessions: Arc<Sessions>,
    pub session: Arc<Session>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.session.idle.closed.store(true, Ordering::SeqCst);
        self.session.idle.wake.notify_one();
        self.session.cancel();
        self.sessions
            .by_pid
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.session.pid);
    }
}

impl Sessions {
    /// Keep a copy of a new connection's socket for its session.
    pub fn accepted(&self, peer: SocketAddr, socket: &impl AsRawFd) {
        // SAFETY: dup of an open fd; the copy is owned from here on.
        let fd = unsafe { libc::dup(socket.as_raw_fd()) };
        if fd >= 0 {
            // SAFETY: `fd` was just made and is owned by nobody else.
            let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            self.lock_sockets().insert(peer, owned);
        }
    }

    /// Close the connection from `peer` if it has not finished its startup
    /// (authenticated and become a session) by now: a client that connects
    /// and sends nothing must not hold a connection forever.
    pub fn close_if_not_started(&self, peer: SocketAddr) -> bool {
        match self.lock_sockets().remove(&peer) {
            Some(fd) => {
                // SAFETY: shutdown only reads its integer arguments; `fd` is
                // our own copy, open until dropped below.
                unsafe {
                    libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
                }
                true
            }
            None => false,
        }
    }

    /// The connection from `peer` ended (whether or not it started).
    pub fn closed(&self, peer: SocketAddr) {
        self.lock_sockets().remove(&peer);
    }

    fn lock_sockets(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, OwnedFd>> {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register a connection that finished its startup.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        self: &Arc<Self>,
        pid: i32,
        secret: &SecretKey,
        user: &str,
        database: &str,
        application_name: &str,
        client_addr: SocketAddr,
    ) -> Registered {
        let socket = self.lock_sockets().remove(&client_addr);
        let session = Arc::new(Session {
            pid,
            secret: secret.to_bytes(),
            user: user.to_string(),
            database: database.to_string(),
            application_name: application_name.to_string(),
            client_addr,
            backend_start: SystemTime::now(),
            activity: Mutex::new(Activity {
                state: "idle",
                query: String::new(),
                query_start: None,
            }),
            cancels: tokio::sync::watch::channel(0).0,
            terminated: AtomicBool::new(false),
            socket,
            idle: Idle {
                session_ms: AtomicU64::new(UNSET),
                in_txn_ms: AtomicU64::new(UNSET),
                in_txn: AtomicBool::new(false),
                changes: AtomicU64::new(0),
                running: AtomicU64::new(0),
                wake: tokio::sync::Notify::new(),
                closed: AtomicBool::new(false),
            },
            defaults: self.idle_defaults.clone(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(session.clone().watch_idle());
        }
        self.by_pid
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, session.clone());
        Registered {
            sessions: self.clone(),
            session,
        }
    }

    /// The server's idle timeouts (None or zero: none), for sessions that
    /// `SET` none; sessions connected already follow the change.
    pub fn set_idle_default(&self, which: IdleTimeout, timeout: Option<Duration>) {
        let ms = timeout.map_or(0, |d| (d.as_millis() as u64).min(UNSET - 1));
        match which {
            IdleTimeout::Session => &self.idle_defaults.session_ms,
            IdleTimeout::InTransaction => &self.idle_defaults.in_txn_ms,
        }
        .store(ms, Ordering::SeqCst);
    }

    /// The server's idle timeout `which` (None: none).
    pub fn idle_default(&self, which: IdleTimeout) -> Option<Duration> {
        let ms = match which {
            IdleTimeout::Session => &self.idle_defaults.session_ms,
            IdleTimeout::InTransaction => &self.idle_defaults.in_txn_ms,
        }
        .load(Ordering::SeqCst);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// How many sessions are connected.
    pub fn count(&self) -> usize {
        self.by_pid.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The session `pid`, if it is connected.
    pub fn get(&self, pid: i32) -> Option<Arc<Session>> {
        self.by_pid
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .cloned()
    }

    /// Every session, by pid.
    pub fn all(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<_> = self
            .by_pid
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|s| s.pid);
        v
    }

    /// A CancelRequest: cancel `pid`'s statement if the secret matches.
    pub fn cancel_request(&self, pid: i32, secret: &SecretKey) -> bool {
        match self.get(pid) {
            Some(s) if s.secret == secret.to_bytes() => {
                s.cancel();
                true
            }
            _ => false,
        }
    }
}

/// After authentication (`crate::auth`), the connection becomes a session,
/// unless `max_connections` are connected already (53300, closed).
pub struct Startup {
    sessions: Arc<Sessions>,
    max_connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Startup {
    pub fn new(
        sessions: Arc<Sessions>,
        max_connections: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        Startup {
            sessions,
            max_connections,
        }
    }
}

/// The ParameterStatus values a client gets at startup: pgwire's, with
/// slicedb's `server_version` (and `server_version_num`), which drivers
/// parse to pick their SQL.
struct ServerParameters;

impl ServerParameterProvider for ServerParameters {
    fn server_parameters<C: ClientInfo>(&self, client: &C) -> Option<HashMap<String, String>> {
        let mut params = DefaultServerParameterProvider::default().server_parameters(client)?;
        params.insert("server_version".into(), crate::version::server_version());
        params.insert(
            "server_version_num".into(),
            crate::version::PG_VERSION_NUM.into(),
        );
        params.insert("DateStyle".into(), "ISO, MDY".into());
        Some(params)
    }
}

static PID_GENERATOR: std::sync::LazyLock<pgwire::api::RandomPidSecretKeyGenerator> =
    std::sync::LazyLock::new(Default::default);

impl Startup {
    /// After authentication (`crate::auth`): the connection becomes a
    /// session (pid and secret key, registered) and is told it is ready.
    pub(crate) async fn finish<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, secret) = PID_GENERATOR.generate(client);
        client.set_pid_and_secret_key(pid, secret);
        self.register(client)?;
        pgwire::api::auth::finish_authentication(client, &ServerParameters).await
    }

    /// Make the connection a session, unless `max_connections` are
    /// connected already.
    fn register<C: ClientInfo>(&self, client: &mut C) -> PgWireResult<()> {
        let max = self
            .max_connections
            .load(std::sync::atomic::Ordering::Relaxed);
        if self.sessions.count() >= max {
            return Err(fatal(
                "53300",
                &format!("sorry, too many clients already (max_connections = {max})"),
            ));
        }
        let (pid, secret) = client.pid_and_secret_key();
        let meta = client.metadata();
        let field = |k: &str| meta.get(k).cloned().unwrap_or_default();
        let registered = self.sessions.register(
            pid,
            &secret,
            &field(pgwire::api::METADATA_USER),
            &field(pgwire::api::METADATA_DATABASE),
            &field(pgwire::api::METADATA_APPLICATION_NAME),
            client.socket_addr(),
        );
        client.session_extensions().insert(registered);
        Ok(())
    }
}

/// A CancelRequest (psql's Ctrl-C): stops the statement of the session
/// it names, if its secret key matches.
pub struct Canceller {
    sessions: Arc<Sessions>,
}

impl Canceller {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        Canceller { sessions }
    }
}

#[async_trait]
impl CancelHandler for Canceller {
    async fn on_cancel_request(&self, request: pgwire::messages::cancel::CancelRequest) {
        let found = self
            .sessions
            .cancel_request(request.pid, &request.secret_key);
        tracing::debug!(pid = request.pid, found, "cancel request");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A connection that never finished its startup is closed by
    /// `close_if_not_started` (the client reads the end); a started one is
    /// left alone, and its session listed until it goes.
    #[test]
    fn a_connection_that_never_starts_is_closed_and_a_started_one_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let sessions = Arc::new(Sessions::default());
        sessions.accepted(peer, &server);
        assert!(sessions.close_if_not_started(peer));
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0, "the client sees the end");

        let mut client2 = std::net::TcpStream::connect(addr).unwrap();
        let (server2, peer2) = listener.accept().unwrap();
        sessions.accepted(peer2, &server2);
        let reg = sessions.register(7, &SecretKey::I32(42), "u", "db", "app", peer2);
        assert!(
            !sessions.close_if_not_started(peer2),
            "a started session stays"
        );
        assert_eq!(sessions.count(), 1);
        assert!(
            !sessions.cancel_request(7, &SecretKey::I32(41)),
            "a wrong secret cancels nothing"
        );
        assert!(sessions.cancel_request(7, &SecretKey::I32(42)));
        drop(reg);
        assert_eq!(sessions.count(), 0, "a session leaves with its connection");
        client2
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(
            client2.read(&mut buf).is_err(),
            "still open: nothing to read"
        );
    }
}
