//! The PostgreSQL wire protocol front end.
//!
//! Built on datafusion-postgres (pg_catalog emulation, type encoding, the
//! extended protocol) with our own routing in front of it: statements
//! slicedb owns — CREATE TABLE with a distribution clause, DROP TABLE, COPY
//! FROM STDIN / TO STDOUT, DELETE, UPDATE, TRUNCATE, INSERT ... RETURNING —
//! are handled here (row changes in `dml`, transaction blocks and
//! savepoints in `block`, SET / SHOW / RESET in `settings`, GROOM TABLE and
//! REGENERATE in `admin`, cursors in `cursor`, unlimited Executes streamed
//! in `portal`); every
//! other statement goes to DataFusion through datafusion-postgres (each
//! connection with a context of its own, `crate::conn`; output columns named
//! as PostgreSQL names them, `crate::names`), inside
//! the connection's transaction block when one is open (a task-local the
//! coordinator's scans and inserts read). Every error leaves as a SQLSTATE.
//!
//! It never touches nodes or disks: it only calls the coordinator.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{
    CopySource, CopyTarget, CreateTableOptions, Expr as SqlExpr, ObjectType, OnCommit, SqlOption,
    Statement, Value,
};
use datafusion_postgres::DfSessionService;
use futures::{Sink, SinkExt};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyResponse, FieldInfo, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone};
use pgwire::messages::extendedquery::Describe;
use pgwire::messages::PgWireBackendMessage;
use slicedb_coordinator::privileges::CURRENT_ROLE;
use slicedb_coordinator::roles::Privilege;
use slicedb_coordinator::session::{new_session_id, CURRENT_SESSION};
use slicedb_coordinator::txn::Txn;
use slicedb_coordinator::txn::CURRENT_TXN;
use slicedb_coordinator::write::load::Loader;
use slicedb_coordinator::{Coordinator, CoordinatorError, Distribution};
use tracing::{debug, info};

use crate::admin;
use crate::auth::{Auth, AuthConfig, AuthState};
use crate::block;
use crate::conn::ServerSettings;
use crate::conn::{conn_txn, ConnState, CURRENT_CONN};
use crate::copy::{check_binary_columns, copy_out, CopyDecoder, CopyOptions, CopyPipeline, Widen};
use crate::cursor;
use crate::ddl::{self, object_name};
use crate::dialect::{self, normalize, ParsedStatement};
use crate::dml;
use crate::errors::{fix_response, fix_responses, to_pg, SqlError};
use crate::guard;
use crate::names;
use crate::params;
use crate::roles;
use crate::sessions::{guard_responses, Canceller, Registered, Sessions, Startup, Stopper};
use crate::settings;
use crate::shield;

/// Rows per batch when decoding COPY input.
const COPY_BATCH_ROWS: usize = 65_536;

/// Everything a connection needs; shared by all connections.
pub struct Frontend {
    coord: Arc<Coordinator>,
    df: Arc<DfSessionService>,
    /// The connected sessions (cancel requests, pg_stat_activity).
    sessions: Arc<Sessions>,
    /// The server's settings: `statement_timeout` of a session that did not
    /// SET one, `max_connections` (more sessions are refused, 53300).
    server: Arc<ServerSettings>,
    /// The session of the embedded API ([`Frontend::execute`]): one for
    /// the life of the front end.
    embedded_session: u64,
    pub metrics: Arc<crate::metrics::StatementMetrics>,
    /// Host-based rules and the TLS certificate (`crate::auth`).
    auth: Arc<AuthState>,
}

impl Frontend {
    /// Install pg_catalog on the coordinator's session and build the handlers.
    pub fn new(coord: Arc<Coordinator>) -> Result<Arc<Frontend>, SqlError> {
        let ctx = coord.session();
        datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog(
            &ctx,
            "datafusion",
            Arc::new(datafusion_postgres::auth::AuthManager::default()),
        )
        .map_err(|e| SqlError::DataFusion(*e))?;
        let sessions = Arc::new(Sessions::default());
        crate::pgcatalog::install(&ctx, coord.clone(), &sessions)?;
        let df = Arc::new(DfSessionService::new(ctx));
        Ok(Arc::new(Frontend {
            coord,
            df,
            server: Arc::new(ServerSettings::new(sessions.clone())),
            sessions,
            embedded_session: new_session_id(),
            metrics: Default::default(),
            auth: Default::default(),
        }))
    }

    /// Apply the authentication configuration (rules, certificate, the
    /// bootstrap superuser); before serving connections.
    pub fn set_auth(&self, cfg: &AuthConfig) -> Result<(), SqlError> {
        self.auth.configure(cfg, &self.coord)
    }

    /// The TLS acceptor, if a certificate is configured.
    pub fn tls(&self) -> Option<pgwire::tokio::TlsAcceptor> {
        self.auth.tls()
    }

    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coord
    }

    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// The server's `statement_timeout` (None or zero: none), for sessions
    /// that did not SET their own.
    pub fn set_statement_timeout(&self, timeout: Option<std::time::Duration>) {
        *self
            .server
            .statement_timeout
            .write()
            .unwrap_or_else(|e| e.into_inner()) = timeout.filter(|t| !t.is_zero());
    }

    /// The server's `idle_session_timeout` and
    /// `idle_in_transaction_session_timeout` (zero: none), for sessions
    /// that did not SET their own.
    pub fn set_idle_timeouts(&self, session: std::time::Duration, in_txn: std::time::Duration) {
        use crate::sessions::IdleTimeout;
        self.sessions
            .set_idle_default(IdleTimeout::Session, Some(session));
        self.sessions
            .set_idle_default(IdleTimeout::InTransaction, Some(in_txn));
    }

    /// Most sessions connected at once (more are refused with 53300).
    pub fn set_max_connections(&self, n: usize) {
        self.server
            .max_connections
            .store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// A stopper for a statement `query` of `client`'s session (None: a
    /// connection with no session, which cannot happen after startup).
    fn stopper<C: ClientInfo>(&self, client: &C, query: &str) -> Option<Stopper> {
        let session = client.session_extensions().get::<Registered>()?;
        // What `SET statement_timeout` stored in the connection's metadata
        // (0: none), else the server's.
        let own = client
            .metadata()
            .get(settings::STATEMENT_TIMEOUT_KEY)
            .and_then(|ms| ms.parse::<u64>().ok());
        let timeout = match own {
            Some(0) => None,
            Some(ms) => Some(std::time::Duration::from_millis(ms)),
            None => self.server.statement_timeout(),
        };
        Some(session.session.start(query, timeout))
    }
}

/// The pgwire handler set: one per server, connections share it.
pub struct Handlers {
    fe: Arc<Frontend>,
    simple: Arc<Simple>,
    extended: Arc<Extended>,
    copy: Arc<CopyIn>,
    startup: Arc<Auth>,
    cancel: Arc<Canceller>,
}

impl Handlers {
    pub fn new(fe: Arc<Frontend>) -> Arc<Handlers> {
        Arc::new(Handlers {
            simple: Arc::new(Simple { fe: fe.clone() }),
            extended: Arc::new(Extended {
                fe: fe.clone(),
                parser: Arc::new(OurParser { fe: fe.clone() }),
            }),
            copy: Arc::new(CopyIn { fe: fe.clone() }),
            startup: Arc::new(Auth::new(
                fe.coord.clone(),
                fe.auth.clone(),
                Startup::new(fe.sessions.clone(), fe.server.max_connections.clone()),
            )),
            cancel: Arc::new(Canceller::new(fe.sessions.clone())),
            fe,
        })
    }

    pub fn frontend(&self) -> &Arc<Frontend> {
        &self.fe
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.simple.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.extended.clone()
    }
    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }
    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.copy.clone()
    }
    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }
}

/// Whether slicedb itself handles this statement.
fn is_ours(s: &Statement) -> bool {
    matches!(
        s,
        Statement::CreateTable(_)
            | Statement::Drop {
                object_type: ObjectType::Table,
                ..
            }
            | Statement::Copy { .. }
            | Statement::Truncate(_)
            | Statement::Update(_)
            | Statement::Delete(_)
    ) || block::owns(s)
        || settings::owns(s)
        || cursor::owns(s)
        || dml::owns(s)
        || ddl::owns(s)
}

/// Run DataFusion work inside the transaction block `txn`: refused (25P02)
/// if the block already failed; a failure marks it failed.
async fn in_block<T>(
    txn: Arc<Txn>,
    work: impl std::future::Future<Output = PgWireResult<T>>,
) -> PgWireResult<T> {
    if let Some(why) = txn.failed() {
        return Err(SqlError::from(CoordinatorError::TransactionAborted(why)).into());
    }
    let r = CURRENT_TXN.scope(txn.clone(), work).await;
    if let Err(e) = &r {
        txn.mark_failed(e.to_string());
    }
    r
}

/// Run one statement slicedb owns. COPY FROM STDIN answers `CopyIn` and
/// leaves its state in the connection's session extensions.
async fn run_ours<C>(
    fe: &Frontend,
    client: &mut C,
    p: ParsedStatement,
    format: &Format,
) -> Result<Response, SqlError>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let copy_opts = match &p.statement {
        Statement::Copy { .. } => Some(CopyOptions::from_statement(&p.statement)?),
        _ => None,
    };
    match p.statement {
        st if ddl::owns(&st) => ddl::run(&fe.coord, conn_txn(client).await, st).await,
        Statement::CreateTable(ct) => {
            let block = conn_txn(client).await;
            create_table(fe, ct, (p.distribution, p.no_data), block).await
        }
        Statement::Drop {
            names, if_exists, ..
        } => {
            for n in &names {
                fe.coord.drop_table(&object_name(n)?, if_exists).await?;
            }
            Ok(Response::Execution(Tag::new("DROP TABLE")))
        }
        Statement::Copy {
            source, to, target, ..
        } => {
            let opts = copy_opts.expect("computed above for COPY");
            match (to, target) {
                (false, CopyTarget::Stdin) => copy_from_stdin(fe, client, source, opts).await,
                (true, CopyTarget::Stdout) => copy_to_stdout(fe, source, opts).await,
                (false, _) => Err(SqlError::not_supported(COPY_FROM_FILE)),
                (true, _) => Err(SqlError::not_supported(
                    "COPY TO a server file or program; use COPY ... TO STDOUT (psql: \\copy)",
                )),
            }
        }
        st @ (Statement::Truncate(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Insert(_)) => dml::run(&fe.coord, client, st, format).await,
        st if block::owns(&st) => {
            let conn = conn_state(fe, client);
            let (response, reported) =
                block::run(&fe.coord, &conn, client.metadata_mut(), &st).await?;
            report(client, reported).await?;
            Ok(response)
        }
        st if cursor::owns(&st) => {
            let st = cursor::from_ast(st)?;
            cursor::run(&conn_state(fe, client).cursors(), client, st, None, true).await
        }
        st @ (Statement::Set(_) | Statement::Reset(_) | Statement::ShowVariable { .. }) => {
            let conn = conn_state(fe, client);
            let in_block = conn_txn(client).await.is_some();
            let (response, reported) = settings::run(&conn, client.metadata_mut(), &st, in_block)?;
            report(client, reported).await?;
            Ok(response)
        }
        other => Err(SqlError::not_supported(format!("statement {other}"))),
    }
}

/// Tell the client of settings that changed (ParameterStatus).
async fn report<C>(client: &mut C, changed: settings::Reported) -> Result<(), SqlError>
where
    C: Sink<PgWireBackendMessage> + Unpin,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for (name, value) in changed {
        client
            .send(PgWireBackendMessage::ParameterStatus(
                pgwire::messages::startup::ParameterStatus::new(name, value),
            ))
            .await
            .map_err(|e| SqlError::user("08006", PgWireError::from(e).to_string()))?;
    }
    Ok(())
}

/// CREATE TABLE (`as_query`: its distribution clause and WITH NO DATA;
/// `block`: the connection's transaction block, for CREATE TABLE AS).
async fn create_table(
    fe: &Frontend,
    mut ct: datafusion::sql::sqlparser::ast::CreateTable,
    (distribution, no_data): (Option<dialect::Distribution>, bool),
    block: Option<Arc<Txn>>,
) -> Result<Response, SqlError> {
    let name = object_name(&ct.name)?;
    ddl::unqualify(&mut ct.name);
    // DataFusion plans the column definitions below and refuses TEMP.
    let temporary = std::mem::take(&mut ct.temporary);
    match ct.on_commit {
        None | Some(OnCommit::PreserveRows) => {}
        Some(other) => {
            return Err(SqlError::not_supported(format!(
                "ON COMMIT {}; temporary tables last until the session ends",
                match other {
                    OnCommit::DeleteRows => "DELETE ROWS",
                    _ => "DROP",
                }
            )))
        }
    }
    let mut mirrored = true;
    let mut explicit_mirrored = false;
    let options = std::mem::take(&mut ct.table_options);
    if let CreateTableOptions::With(opts) = &options {
        for o in opts {
            match o {
                SqlOption::KeyValue { key, value }
                    if key.value.eq_ignore_ascii_case("mirrored") =>
                {
                    explicit_mirrored = true;
                    mirrored = match value {
                        SqlExpr::Value(v) => match &v.value {
                            Value::Boolean(b) => *b,
                            Value::SingleQuotedString(s) | Value::Number(s, _) => {
                                matches!(s.to_lowercase().as_str(), "true" | "on" | "1" | "yes")
                            }
                            _ => true,
                        },
                        SqlExpr::Identifier(i) => {
                            matches!(i.value.to_lowercase().as_str(), "true" | "on" | "yes")
                        }
                        _ => {
                            return Err(SqlError::user(
                                "22023",
                                format!("invalid value for option mirrored: {value}"),
                            ))
                        }
                    };
                }
                other => {
                    return Err(SqlError::user(
                        "22023",
                        format!("unrecognized table option {other}"),
                    ))
                }
            }
        }
    } else if !matches!(options, CreateTableOptions::None) {
        return Err(SqlError::not_supported(format!("table options {options}")));
    }
    let if_not_exists = ct.if_not_exists;
    if let Some(query) = ct.query.take() {
        let ctas = ddl::Ctas {
            name,
            query: *query,
            columns: ct
                .columns
                .iter()
                .map(|c| normalize(&c.name.value, c.name.quote_style.is_some()))
                .collect(),
            distribution,
            mirrored,
            temporary,
            if_not_exists,
            no_data,
        };
        return ddl::create_table_as(&fe.coord, ctas, block).await;
    }
    // Let DataFusion turn the column definitions into an Arrow schema.
    let lengths: Vec<_> = ct
        .columns
        .iter_mut()
        .map(|c| ddl::varchar_length(&mut c.data_type))
        .collect();
    let ctx = fe.coord.session();
    let plan = ctx
        .state()
        .statement_to_plan(DfStatement::Statement(Box::new(Statement::CreateTable(ct))))
        .await?;
    let schema: SchemaRef = match &plan {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(m)) => {
            Arc::new(Schema::new(m.input.schema().as_arrow().fields().clone()))
        }
        other => {
            return Err(SqlError::user(
                "XX000",
                format!("CREATE TABLE planned as {}", other.display()),
            ))
        }
    };
    if schema.fields().is_empty() {
        return Err(SqlError::user("42601", "a table needs at least one column"));
    }
    let schema = ddl::with_max_lengths(&schema, &lengths);
    let distribution = match distribution {
        Some(dialect::Distribution::Hash(cols)) => Distribution::Hash(cols),
        Some(dialect::Distribution::Random) => Distribution::Random,
        None => ddl::default_distribution(&schema),
    };
    if temporary && mirrored && explicit_mirrored {
        return Err(SqlError::not_supported(
            "a mirrored temporary table; temporary tables live in the temp segment, unmirrored",
        ));
    }
    info!(table = %name, ?distribution, temporary, "create table");
    fe.coord
        .create_table(
            &name,
            schema,
            distribution,
            mirrored,
            temporary,
            if_not_exists,
        )
        .await?;
    Ok(Response::Execution(Tag::new("CREATE TABLE")))
}

/// Run `work` for the connection `conn`: its coordinator session (table
/// names, temporary tables) and its state (`crate::conn::CURRENT_CONN`).
fn in_conn<F: std::future::Future>(
    conn: Arc<ConnState>,
    work: F,
) -> impl std::future::Future<Output = F::Output> {
    let role: Arc<str> = Arc::from(conn.user.as_str());
    let work = CURRENT_ROLE.scope(role, work);
    CURRENT_SESSION.scope(conn.session.id, CURRENT_CONN.scope(conn, work))
}

/// The connection's state, created at its first statement.
fn conn_state<C: ClientInfo>(fe: &Frontend, client: &C) -> Arc<ConnState> {
    let ext = client.session_extensions();
    if let Some(state) = ext.get::<ConnState>() {
        return state;
    }
    // Built outside the extensions' lock: it reads them (the registered
    // session). One connection runs one statement at a time, so no other
    // task inserts meanwhile.
    let state = ConnState::new(fe.coord.clone(), fe.server.clone(), client);
    ext.get_or_insert_with(|| state)
}

/// What a COPY FROM STDIN loads, checked (the table, the caller's INSERT
/// privilege, the listed columns, binary-capable types): the table's name,
/// schema, the listed columns and their schema.
fn copy_in_target(
    fe: &Frontend,
    source: &CopySource,
    opts: &CopyOptions,
) -> Result<(String, SchemaRef, Vec<usize>, SchemaRef), SqlError> {
    let CopySource::Table {
        table_name,
        columns,
    } = source
    else {
        return Err(SqlError::user("42601", "COPY FROM needs a table"));
    };
    let name = object_name(table_name)?;
    let table = fe
        .coord
        .check_table(&name, Privilege::Insert)?
        .schema
        .clone();
    let targets: Vec<usize> = if columns.is_empty() {
        (0..table.fields().len()).collect()
    } else {
        columns
            .iter()
            .map(|c| {
                let n = normalize(&c.value, c.quote_style.is_some());
                table.index_of(&n).map_err(|_| {
                    SqlError::user(
                        "42703",
                        format!("column \"{n}\" of relation \"{name}\" does not exist"),
                    )
                })
            })
            .collect::<Result<_, _>>()?
    };
    let decode_schema = Arc::new(
        table
            .project(&targets)
            .map_err(datafusion::error::DataFusionError::from)?,
    );
    if opts.format_code() == 1 {
        check_binary_columns(&decode_schema, false)?;
    }
    Ok((name, table, targets, decode_schema))
}

/// A COPY FROM checked when it is parsed (extended protocol), as its
/// execution would check it: options, source, table, privilege, columns.
/// Refused at Parse, a client never starts the copy; refused only at
/// Execute, a client that pipelines a Sync after that Execute and another
/// one after its CopyFail (rust-postgres) gets two ReadyForQuery and drops
/// its connection (PostgreSQL's answer too).
fn check_copy_in(fe: &Frontend, statement: &Statement) -> Result<(), SqlError> {
    let Statement::Copy {
        source,
        to: false,
        target,
        ..
    } = statement
    else {
        return Ok(());
    };
    let opts = CopyOptions::from_statement(statement)?;
    match target {
        CopyTarget::Stdin => copy_in_target(fe, source, &opts).map(|_| ()),
        _ => Err(SqlError::not_supported(COPY_FROM_FILE)),
    }
}

/// COPY FROM anything but STDIN.
const COPY_FROM_FILE: &str =
    "COPY FROM a server file or program; use COPY ... FROM STDIN (psql: \\copy)";

async fn copy_from_stdin<C>(
    fe: &Frontend,
    client: &mut C,
    source: CopySource,
    opts: CopyOptions,
) -> Result<Response, SqlError>
where
    C: ClientInfo + Send + Sync,
{
    let (name, table, targets, decode_schema) = copy_in_target(fe, &source, &opts)?;
    let ncols = targets.len();
    let format = opts.format_code();
    let loader = match conn_txn(client).await {
        Some(txn) => {
            if let Some(why) = txn.failed() {
                return Err(CoordinatorError::TransactionAborted(why).into());
            }
            Loader::in_txn(fe.coord.cluster().clone(), fe.coord.table(&name)?, txn)
        }
        None => fe.coord.loader(&name)?,
    };
    debug!(table = %name, xid = loader.xid(), "copy in started");
    let mut decoder = CopyDecoder::new(decode_schema, opts, COPY_BATCH_ROWS);
    // The decoders hash rows to slices themselves when every key column is
    // in the column list (a missing one is NULL, which the loader hashes).
    let key: Option<Vec<usize>> = loader
        .key_columns()
        .iter()
        .map(|k| targets.iter().position(|t| t == k))
        .collect();
    if let Some(key) = key {
        decoder.split_by_slice(key, loader.slice_count());
    }
    let pipeline = CopyPipeline::start(decoder, loader, Widen { table, targets });
    *conn_state(fe, client).copy.lock().await = Some(pipeline);
    Ok(Response::CopyIn(CopyResponse::new(
        format,
        ncols,
        futures::stream::empty(),
    )))
}

async fn copy_to_stdout(
    fe: &Frontend,
    source: CopySource,
    opts: CopyOptions,
) -> Result<Response, SqlError> {
    let sql = match source {
        CopySource::Table {
            table_name,
            columns,
        } => {
            let name = object_name(&table_name)?;
            fe.coord.table(&name)?;
            let cols = if columns.is_empty() {
                "*".to_string()
            } else {
                columns
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            format!("SELECT {cols} FROM \"{name}\"")
        }
        CopySource::Query(q) => q.to_string(),
    };
    let ctx = fe.coord.session();
    let df = ctx.sql(&sql).await?;
    // Streamed: one batch at a time is encoded and sent, so memory does not
    // grow with the result.
    let stream = df.execute_stream().await?;
    Ok(Response::CopyOut(copy_out(stream, opts)?))
}

pub struct Simple {
    fe: Arc<Frontend>,
}

#[async_trait]
impl SimpleQueryHandler for Simple {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let conn = conn_state(&self.fe, client);
        let fe = self.fe.clone();
        let stopper = fe.stopper(client, &roles::redact(query));
        let work = in_conn(conn, self.simple_query(client, query));
        let work = crate::metrics::observe(&fe.metrics, query, Box::pin(work));
        match stopper {
            Some(mut stopper) => {
                let responses = stopper.run(work).await?;
                if responses.iter().any(|r| matches!(r, Response::CopyIn(_))) {
                    // The COPY FROM STDIN goes on message by message.
                    *conn_state(&fe, client).copy_stop.lock().await = Some(stopper.clone());
                }
                Ok(guard_responses(responses, stopper))
            }
            None => work.await,
        }
    }
}

impl Simple {
    /// The simple-query protocol, in the connection's session.
    async fn simple_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(a) = admin::parse(query) {
            return Ok(vec![admin::run(&self.fe.coord, a).await?]);
        }
        if let Some(st) = roles::parse(query) {
            return Ok(vec![roles::run(&self.fe.coord, st?)?]);
        }
        if let Some(st) = cursor::parse(query) {
            let conn = conn_state(&self.fe, client);
            return Ok(vec![
                cursor::run(&conn.cursors(), client, st?, None, false).await?,
            ]);
        }
        let txn = conn_txn(client).await;
        let mut parsed = match dialect::parse_statements(query) {
            Ok(p) => p,
            Err(ours) => {
                // Something sqlparser's PostgreSQL dialect cannot read (psql's
                // catalog queries use a few such forms): let
                // datafusion-postgres's compatibility parser try; if it fails
                // too, report our parser's syntax error.
                let df = conn_state(&self.fe, client).df.clone();
                return match SimpleQueryHandler::do_query(&*df, client, query).await {
                    Ok(r) => Ok(r),
                    Err(_) => Err(SqlError::Parser(ours).into()),
                };
            }
        };
        for p in &parsed {
            guard::refuse_unsupported(&p.statement)?;
        }
        if let [p] = parsed.as_slice() {
            if let Statement::Deallocate { name, .. } = &p.statement {
                if name.value.eq_ignore_ascii_case("all") && name.quote_style.is_none() {
                    // psycopg's after DDL. Statements stay stored until the
                    // connection ends (pgwire cannot list them); a Parse
                    // of a name again replaces it.
                    return Ok(vec![Response::Execution(Tag::new("DEALLOCATE ALL"))]);
                }
            }
        }
        // Scalar subqueries in SELECT lists, kept from a datafusion-postgres
        // rewrite that is wrong for user queries (crate::shield): then the
        // statements go on as we print them, not as the client wrote them.
        // Output columns named as PostgreSQL names them (crate::names).
        let mut shielded = false;
        for p in &mut parsed {
            shielded |= shield::shield_scalar_subqueries(&mut p.statement);
            shielded |= crate::catalog_sql::rewrite_in(&mut p.statement, query);
            if !is_ours(&p.statement) || matches!(p.statement, Statement::Copy { .. }) {
                let catalog = shield::reads_catalog(&p.statement);
                shielded |= names::rewrite(&mut p.statement, catalog);
            }
        }
        if txn.is_none() && !shielded && !parsed.iter().any(|p| is_ours(&p.statement)) {
            let df = conn_state(&self.fe, client).df.clone();
            return fix_responses(SimpleQueryHandler::do_query(&*df, client, query).await);
        }
        let mut out = Vec::new();
        for p in parsed {
            if is_ours(&p.statement) {
                let is_copy_in = matches!(p.statement, Statement::Copy { to: false, .. });
                out.push(run_ours(&self.fe, client, p, &Format::UnifiedText).await?);
                if is_copy_in {
                    // COPY FROM STDIN takes over the connection until CopyDone.
                    break;
                }
            } else {
                let text = p.statement.to_string();
                out.extend(self.df_in_txn(client, &text).await?);
            }
        }
        Ok(out)
    }
}

impl Simple {
    /// A statement DataFusion plans, inside the connection's transaction
    /// block if one is open.
    async fn df_in_txn<C>(&self, client: &mut C, text: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let df = conn_state(&self.fe, client).df.clone();
        match conn_txn(client).await {
            None => fix_responses(SimpleQueryHandler::do_query(&*df, client, text).await),
            Some(txn) => {
                in_block(txn, async {
                    fix_responses(SimpleQueryHandler::do_query(&*df, client, text).await)
                })
                .await
            }
        }
    }
}

pub struct CopyIn {
    fe: Arc<Frontend>,
}

impl CopyIn {
    /// Whether the COPY in progress was canceled or timed out (or its
    /// session terminated): then it is aborted, nothing of it committed.
    async fn stopped(&self, state: &ConnState) -> Option<PgWireError> {
        let e = state.copy_stop.lock().await.as_mut()?.check()?;
        *state.copy_stop.lock().await = None;
        if let Some(pipeline) = state.copy.lock().await.take() {
            let _ = (self.fe.metrics).copy_in_done(pipeline.started(), Err(()));
            pipeline.abort().await;
        }
        Some(e)
    }

    /// The COPY in progress, which ends here (its statement with it).
    async fn take<C: ClientInfo>(client: &C) -> Option<CopyPipeline> {
        let state = client.session_extensions().get::<ConnState>()?;
        *state.copy_stop.lock().await = None;
        let mut g = state.copy.lock().await;
        g.take()
    }
}

#[async_trait]
impl CopyHandler for CopyIn {
    async fn on_copy_data<C>(&self, client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.fe.metrics.copy_in(copy_data.data.len());
        let Some(state) = client.session_extensions().get::<ConnState>() else {
            return Ok(());
        };
        if let Some(e) = self.stopped(&state).await {
            return Err(e);
        }
        let mut g = state.copy.lock().await;
        if let Some(pipeline) = g.as_mut() {
            pipeline.send(copy_data.data).await;
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(state) = client.session_extensions().get::<ConnState>() {
            if let Some(e) = self.stopped(&state).await {
                return Err(e);
            }
        }
        let Some(pipeline) = Self::take(client).await else {
            return Err(SqlError::user("08P01", "CopyDone without COPY in progress").into());
        };
        let started = pipeline.started();
        let rows = (self.fe.metrics).copy_in_done(started, pipeline.finish().await)?;
        client
            .send(PgWireBackendMessage::CommandComplete(
                Tag::new("COPY").with_rows(rows as usize).into(),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(
        &self,
        client: &mut C,
        fail: pgwire::messages::copy::CopyFail,
    ) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(pipeline) = Self::take(client).await {
            let _ = (self.fe.metrics).copy_in_done(pipeline.started(), Err(()));
            pipeline.abort().await;
        }
        SqlError::user("57014", format!("COPY from stdin failed: {}", fail.message)).into()
    }
}

type DfStmt = <DfSessionService as ExtendedQueryHandler>::Statement;

/// Parses with our dialect first: a statement slicedb owns is stored as
/// `(sql, None)` (no DataFusion plan) and routed to us at execution; the rest
/// is parsed and planned by datafusion-postgres. Sharing its statement type
/// keeps the portal store the type its hooks expect.
pub struct OurParser {
    fe: Arc<Frontend>,
}

fn parse_ours(sql: &str) -> Option<ParsedStatement> {
    let mut stmts = dialect::parse_statements(sql).ok()?;
    if stmts.len() == 1 && is_ours(&stmts[0].statement) {
        Some(stmts.remove(0))
    } else {
        None
    }
}

#[async_trait]
impl QueryParser for OurParser {
    type Statement = DfStmt;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<DfStmt>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if let Some(p) = parse_ours(sql) {
            if matches!(p.statement, Statement::Copy { to: false, .. }) {
                if let Some(why) = conn_txn(client).await.and_then(|t| t.failed()) {
                    return Err(SqlError::from(CoordinatorError::TransactionAborted(why)).into());
                }
            }
            in_conn(conn_state(&self.fe, client), async {
                check_copy_in(&self.fe, &p.statement)
            })
            .await?;
            // UPDATE, DELETE and INSERT ... RETURNING: a plan for Describe.
            let plan = match dml::describes(&p.statement) {
                true => {
                    in_conn(
                        conn_state(&self.fe, client),
                        dml::describe(&self.fe.coord, &p.statement),
                    )
                    .await?
                }
                false => None,
            };
            return Ok(Some((sql.to_string(), plan.map(|pl| (p.statement, pl)))));
        }
        if admin::parse(sql).is_some()
            || cursor::parse(sql).is_some()
            || roles::parse(sql).is_some()
        {
            return Ok(Some((sql.to_string(), None)));
        }
        guard::refuse_unsupported_sql(sql)?;
        let shielded = shield::shield_sql(sql);
        let sql = shielded.as_deref().unwrap_or(sql);
        let fixed = crate::catalog_sql::rewrite_sql(sql);
        let sql = fixed.as_deref().unwrap_or(sql);
        let named = names::rewrite_sql(sql);
        let sql = named.as_deref().unwrap_or(sql);
        // Planning resolves table names: in the connection's session.
        let conn = conn_state(&self.fe, client);
        let df = conn.df.clone();
        let parsed = in_conn(conn, async {
            df.query_parser()
                .parse_sql(client, sql, types)
                .await
                .map_err(to_pg)
        })
        .await?;
        if let Some((_, Some((statement, _)))) = &parsed {
            guard::refuse_unsupported(statement)?;
        }
        Ok(parsed)
    }

    fn get_parameter_types(&self, stmt: &DfStmt) -> PgWireResult<Vec<Type>> {
        self.fe.df.query_parser().get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &DfStmt,
        column_format: Option<&pgwire::api::portal::Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let fields = self
            .fe
            .df
            .query_parser()
            .get_result_schema(stmt, column_format)?;
        Ok(names::restore_fields(&fields).unwrap_or(fields))
    }
}

pub struct Extended {
    fe: Arc<Frontend>,
    parser: Arc<OurParser>,
}

#[async_trait]
impl ExtendedQueryHandler for Extended {
    type Statement = DfStmt;
    type QueryParser = OurParser;

    fn query_parser(&self) -> Arc<OurParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<DfStmt>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = DfStmt>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let conn = conn_state(&self.fe, client);
        let fe = self.fe.clone();
        let stopper = fe.stopper(client, &roles::redact(&portal.statement.statement.0));
        let work = in_conn(conn, self.extended_query(client, portal, max_rows));
        let work =
            crate::metrics::observe_one(&fe.metrics, &portal.statement.statement.0, Box::pin(work));
        let response = match stopper {
            Some(mut stopper) => {
                let response = stopper.run(work).await?;
                if matches!(response, Response::CopyIn(_)) {
                    *conn_state(&fe, client).copy_stop.lock().await = Some(stopper.clone());
                }
                guard_responses(vec![response], stopper)
                    .pop()
                    .unwrap_or(Response::EmptyQuery)
            }
            None => work.await?,
        };
        crate::portal::send_unlimited(client, response, max_rows).await
    }

    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = DfStmt>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let conn = conn_state(&self.fe, client);
        if !cursor::describe(&conn.cursors(), client, &message).await? {
            crate::describe::on_describe(self, client, message).await?;
        }
        Ok(())
    }
}

impl Extended {
    /// The extended protocol's Execute, in the connection's session.
    async fn extended_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<DfStmt>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = DfStmt>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (sql, plan) = &portal.statement.statement;
        if plan.as_ref().is_none_or(|(st, _)| is_ours(st)) {
            if let Some(st) = cursor::parse(sql) {
                let conn = conn_state(&self.fe, client);
                return Ok(cursor::run(&conn.cursors(), client, st?, Some(portal), false).await?);
            }
            if let Some(mut p) = parse_ours(sql) {
                let types = dml::param_types(plan.as_ref().map(|(_, pl)| pl))?;
                params::substitute(&mut p.statement, portal, &types)?;
                let format = &portal.result_column_format;
                return Ok(run_ours(&self.fe, client, p, format).await?);
            }
            if let Some(a) = admin::parse(sql) {
                return Ok(admin::run(&self.fe.coord, a).await?);
            }
            if let Some(st) = roles::parse(sql) {
                return Ok(roles::run(&self.fe.coord, st?)?);
            }
        }
        let df = conn_state(&self.fe, client).df.clone();
        // Parameters converted as PostgreSQL would (datafusion-postgres
        // refuses e.g. an integer for a numeric column).
        let bound = params::bind(portal)?;
        let portal = bound.as_ref().unwrap_or(portal);
        match conn_txn(client).await {
            None => {
                fix_response(ExtendedQueryHandler::do_query(&*df, client, portal, max_rows).await)
            }
            Some(txn) => {
                in_block(txn, async {
                    fix_response(
                        ExtendedQueryHandler::do_query(&*df, client, portal, max_rows).await,
                    )
                })
                .await
            }
        }
    }
}

impl Frontend {
    /// Run SQL without a PostgreSQL connection (the embedded API): the same
    /// routing as the wire protocol, minus COPY. Returns the batches of the
    /// last statement.
    pub async fn execute(&self, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
        CURRENT_SESSION
            .scope(self.embedded_session, self.execute_in_session(sql))
            .await
    }

    async fn execute_in_session(&self, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
        let mut last = Vec::new();
        for p in dialect::parse_statements(sql)? {
            last = match &p.statement {
                Statement::Copy { .. } => {
                    return Err(SqlError::not_supported(
                        "COPY in the embedded API; use LocalCluster::load",
                    ))
                }
                s if ddl::owns(s) => {
                    ddl::run(&self.coord, None, s.clone()).await?;
                    vec![]
                }
                Statement::CreateTable(ct) => {
                    let how = (p.distribution.clone(), p.no_data);
                    create_table(self, ct.clone(), how, None).await?;
                    vec![]
                }
                Statement::Drop {
                    object_type: ObjectType::Table,
                    names,
                    if_exists,
                    ..
                } => {
                    for n in names {
                        self.coord.drop_table(&object_name(n)?, *if_exists).await?;
                    }
                    vec![]
                }
                s if is_ours(s) => {
                    return Err(SqlError::not_supported(
                        "UPDATE, DELETE, TRUNCATE and transaction blocks in the embedded API; use the PostgreSQL wire protocol",
                    ))
                }
                s => {
                    let ctx = self.coord.session();
                    ctx.sql(&s.to_string()).await?.collect().await?
                }
            };
        }
        Ok(last)
    }
}
