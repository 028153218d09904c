//! Server-side cursors: `DECLARE name [BINARY] [NO SCROLL] CURSOR [WITH HOLD
//! | WITHOUT HOLD] FOR query`, `FETCH`, `MOVE`, `CLOSE name | ALL`, as
//! psycopg's named cursors and psql users send them, and the Describe of a
//! cursor's portal (psycopg describes the cursor by name after DECLARE).
//!
//! It owns the connection's cursors ([`Cursors`], kept in
//! `crate::conn::ConnState`). A cursor holds the DataFusion record-batch
//! stream of its query (the coordinator's query path, started at DECLARE
//! inside the connection's transaction block) and a FETCH pulls only the
//! rows it asks for, so memory does not grow with the result: a FETCH's
//! rows are encoded batch by batch as they are sent. Cursors scan forward
//! only (as PostgreSQL's `NO SCROLL`): a FETCH that would move backward is
//! refused (55000), except a re-fetch of the current row (`FETCH 0`,
//! `RELATIVE 0`) and `FETCH LAST`, which reads forward to the end.
//!
//! A `WITHOUT HOLD` cursor lives inside its transaction block and closes at
//! its COMMIT or ROLLBACK (`crate::block` calls [`end_block`]). A `WITH
//! HOLD` cursor survives COMMIT by keeping its stream (it is not
//! materialised: the snapshot it was declared with stays its snapshot, and
//! its rows are read from the nodes as it is fetched); a ROLLBACK of the
//! block that declared it closes it, as in PostgreSQL. Every cursor closes
//! with its connection.
//!
//! Errors: unknown cursor 34000, duplicate name 42P03, `DECLARE` without
//! hold outside a block 25P01, a backward move 55000, a cursor read by a
//! suspended portal 55006, `SCROLL` 0A000.
//!
//! It never touches nodes or disks, and never collects a cursor's whole
//! result (except for `FETCH` inside a simple query of several statements,
//! whose responses are built before any is sent).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::sql::sqlparser::ast::{Declare, DeclareType, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use futures::{Sink, Stream, StreamExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::{
    DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{ClientInfo, ClientPortalStore};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::extendedquery::{
    Describe, TARGET_TYPE_BYTE_PORTAL, TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::PgWireBackendMessage;
use pgwire::types::format::FormatOptions;
use slicedb_coordinator::txn::{Txn, CURRENT_TXN};
use slicedb_coordinator::CoordinatorError;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::dialect::{self, normalize};
use crate::params::{self, Planned};
use crate::{names, shield, SqlError};

/// What a cursor needs of its connection (`crate::conn::ConnState` lends
/// it): the connection's cursors, its DataFusion context and its open
/// transaction block.
pub(crate) struct CursorConn<'a> {
    pub(crate) cursors: &'a Cursors,
    pub(crate) ctx: &'a Arc<datafusion::prelude::SessionContext>,
    pub(crate) txn: &'a Mutex<Option<Arc<Txn>>>,
}

/// A cursor statement, parsed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CursorStatement {
    Declare(Box<Declare>),
    /// FETCH (or MOVE: `fetch` false) from a cursor.
    Fetch {
        name: String,
        direction: Direction,
        fetch: bool,
    },
    /// CLOSE a cursor (None: ALL).
    Close(Option<String>),
}

/// Where a FETCH or MOVE goes, normalized (`NEXT` is `Forward(Some(1))`,
/// `LAST` is `Absolute(-1)`, ...).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Direction {
    /// This many rows forward (None: all).
    Forward(Option<u64>),
    /// This many rows backward (None: all).
    Backward(Option<u64>),
    Absolute(i64),
    Relative(i64),
}

/// Whether `st` is a cursor statement (one of a simple query of several).
pub(crate) fn owns(st: &Statement) -> bool {
    matches!(
        st,
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. }
    )
}

/// `st` (for which [`owns`] is true) as a cursor statement.
pub(crate) fn from_ast(st: Statement) -> Result<CursorStatement, SqlError> {
    match st {
        Statement::Declare { stmts } => declare_of(stmts),
        // Printed and read again: one grammar for FETCH and CLOSE.
        other => parse(&other.to_string()).unwrap_or_else(|| {
            Err(SqlError::user(
                "42601",
                format!("not a cursor statement: {other}"),
            ))
        }),
    }
}

fn declare_of(mut stmts: Vec<Declare>) -> Result<CursorStatement, SqlError> {
    match (stmts.pop(), stmts.is_empty()) {
        (Some(d), true) if d.declare_type == Some(DeclareType::Cursor) && d.for_query.is_some() => {
            Ok(CursorStatement::Declare(Box::new(d)))
        }
        _ => Err(SqlError::user(
            "42601",
            "DECLARE takes one cursor: DECLARE name CURSOR FOR query",
        )),
    }
}

/// `sql` as one cursor statement (None: it is not one, or it is several
/// statements).
pub(crate) fn parse(sql: &str) -> Option<Result<CursorStatement, SqlError>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let mut tokens: Vec<Token> = tokens
        .into_iter()
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    while matches!(tokens.last(), Some(Token::SemiColon)) {
        tokens.pop();
    }
    if tokens.contains(&Token::SemiColon) {
        return None;
    }
    // MOVE is no keyword of sqlparser's.
    let first = match tokens.first()? {
        Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
        _ => return None,
    };
    match first.as_str() {
        "DECLARE" => {
            let mut parsed = match dialect::parse_statements(sql) {
                Ok(p) => p,
                Err(e) => return Some(Err(e.into())),
            };
            match parsed.pop() {
                Some(p) if parsed.is_empty() => match p.statement {
                    Statement::Declare { stmts } => Some(declare_of(stmts)),
                    _ => None,
                },
                _ => None,
            }
        }
        "FETCH" | "MOVE" | "CLOSE" => {
            let mut p = Words {
                tokens: &tokens[1..],
            };
            let st = if first == "CLOSE" {
                p.close()
            } else {
                p.fetch(first == "FETCH")
            };
            Some(st.ok_or_else(|| SqlError::user("42601", format!("syntax error in \"{sql}\""))))
        }
        _ => None,
    }
}

/// The tokens after FETCH, MOVE or CLOSE.
struct Words<'a> {
    tokens: &'a [Token],
}

impl Words<'_> {
    fn next(&mut self) -> Option<&Token> {
        let (t, rest) = self.tokens.split_first()?;
        self.tokens = rest;
        Some(t)
    }

    fn peek_keyword(&self) -> Option<Keyword> {
        match self.tokens.first()? {
            Token::Word(w) if w.quote_style.is_none() => Some(w.keyword),
            _ => None,
        }
    }

    fn eat(&mut self, k: Keyword) -> bool {
        let yes = self.peek_keyword() == Some(k);
        if yes {
            self.tokens = &self.tokens[1..];
        }
        yes
    }

    /// A signed integer, if one comes next.
    fn number(&mut self) -> Option<i64> {
        let negative = matches!(self.tokens.first(), Some(Token::Minus));
        let at = usize::from(negative);
        let Some(Token::Number(n, _)) = self.tokens.get(at) else {
            return None;
        };
        let n: i64 = n.parse().ok()?;
        self.tokens = &self.tokens[at + 1..];
        Some(if negative { -n } else { n })
    }

    /// The cursor's name, and nothing after it.
    fn name(&mut self) -> Option<String> {
        let Some(Token::Word(w)) = self.next() else {
            return None;
        };
        let name = normalize(&w.value, w.quote_style.is_some());
        self.tokens.is_empty().then_some(name)
    }

    fn close(&mut self) -> Option<CursorStatement> {
        if self.eat(Keyword::ALL) {
            return self
                .tokens
                .is_empty()
                .then_some(CursorStatement::Close(None));
        }
        Some(CursorStatement::Close(Some(self.name()?)))
    }

    fn fetch(&mut self, fetch: bool) -> Option<CursorStatement> {
        let count = |n: i64| {
            if n >= 0 {
                Direction::Forward(Some(n as u64))
            } else {
                Direction::Backward(Some(n.unsigned_abs()))
            }
        };
        let direction = match self.peek_keyword() {
            Some(Keyword::NEXT) => Some(Direction::Forward(Some(1))),
            Some(Keyword::PRIOR) => Some(Direction::Backward(Some(1))),
            Some(Keyword::FIRST) => Some(Direction::Absolute(1)),
            Some(Keyword::LAST) => Some(Direction::Absolute(-1)),
            Some(Keyword::ALL) => Some(Direction::Forward(None)),
            _ => None,
        };
        let direction = if let Some(d) = direction {
            self.tokens = &self.tokens[1..];
            d
        } else if self.eat(Keyword::ABSOLUTE) {
            Direction::Absolute(self.number()?)
        } else if self.eat(Keyword::RELATIVE) {
            Direction::Relative(self.number()?)
        } else if self.eat(Keyword::FORWARD) {
            if self.eat(Keyword::ALL) {
                Direction::Forward(None)
            } else {
                self.number().map_or(Direction::Forward(Some(1)), count)
            }
        } else if self.eat(Keyword::BACKWARD) {
            if self.eat(Keyword::ALL) {
                Direction::Backward(None)
            } else {
                match self.number() {
                    None => Direction::Backward(Some(1)),
                    Some(n) => count(-n),
                }
            }
        } else {
            self.number().map_or(Direction::Forward(Some(1)), count)
        };
        if !self.eat(Keyword::FROM) {
            self.eat(Keyword::IN);
        }
        Some(CursorStatement::Fetch {
            name: self.name()?,
            direction,
            fetch,
        })
    }
}

/// The connection's cursors, by name.
#[derive(Default)]
pub(crate) struct Cursors {
    by_name: std::sync::Mutex<HashMap<String, Held>>,
}

/// One cursor and what is known of it without reading it.
struct Held {
    cursor: Arc<Mutex<Cursor>>,
    schema: SchemaRef,
    binary: bool,
    hold: bool,
    /// Declared in the open transaction block: its ROLLBACK closes it.
    in_block: bool,
}

impl Cursors {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.by_name.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cursor `name`: itself, its schema and whether it is BINARY.
    fn get(&self, name: &str) -> Result<(Arc<Mutex<Cursor>>, SchemaRef, bool), SqlError> {
        self.lock()
            .get(name)
            .map(|h| (h.cursor.clone(), h.schema.clone(), h.binary))
            .ok_or_else(|| SqlError::user("34000", format!("cursor \"{name}\" does not exist")))
    }
}

/// The end of the connection's transaction block: its cursors without hold
/// close, and so do those it declared WITH HOLD if it rolled back.
pub(crate) fn end_block(cursors: &Cursors, committed: bool) {
    cursors.lock().retain(|_, h| {
        let keep = h.hold && (committed || !h.in_block);
        h.in_block = false;
        keep
    });
}

/// A cursor's position in its result (forward only).
struct Cursor {
    /// The rest of the result (None: read to its end).
    stream: Option<SendableRecordBatchStream>,
    /// Rows read from the stream and not yet passed.
    pending: Option<RecordBatch>,
    /// The row the cursor is on (a one-row batch).
    current: Option<RecordBatch>,
    /// Rows passed so far: the number of the current row.
    pos: u64,
    /// Past the last row.
    at_end: bool,
}

impl Cursor {
    /// Up to `max` of the next rows, one batch or a part of one (None: no
    /// more rows).
    async fn next_rows(&mut self, max: u64) -> Result<Option<RecordBatch>, DataFusionError> {
        if max == 0 || self.at_end {
            return Ok(None);
        }
        loop {
            let batch = match self.pending.take() {
                Some(b) => Some(b),
                None => match self.stream.as_mut() {
                    Some(s) => match s.next().await {
                        Some(Ok(b)) => Some(b),
                        Some(Err(e)) => {
                            self.stream = None;
                            self.at_end = true;
                            self.current = None;
                            return Err(e);
                        }
                        None => None,
                    },
                    None => None,
                },
            };
            let Some(batch) = batch else {
                self.stream = None;
                self.at_end = true;
                self.current = None;
                return Ok(None);
            };
            let n = batch.num_rows();
            if n == 0 {
                continue;
            }
            let take = usize::try_from(max).unwrap_or(usize::MAX).min(n);
            if take < n {
                self.pending = Some(batch.slice(take, n - take));
            }
            let out = batch.slice(0, take);
            self.pos += take as u64;
            self.current = Some(out.slice(take - 1, 1));
            return Ok(Some(out));
        }
    }

    /// Pass up to `n` rows (None: all); how many were passed.
    async fn skip(&mut self, n: Option<u64>) -> Result<u64, DataFusionError> {
        let mut passed = 0;
        while n.is_none_or(|n| passed < n) {
            let left = n.map_or(u64::MAX, |n| n - passed);
            match self.next_rows(left).await? {
                Some(b) => passed += b.num_rows() as u64,
                None => break,
            }
        }
        Ok(passed)
    }

    fn on_row(&self) -> bool {
        !self.at_end && self.pos > 0 && self.current.is_some()
    }

    /// Move as `d` says for a FETCH or MOVE that returns at most one row:
    /// that row (None: none). `Forward(n)` for n > 0 is not handled here.
    async fn single(&mut self, d: Direction) -> Result<Option<RecordBatch>, SqlError> {
        let backward = || {
            SqlError::user(
                "55000",
                "cursor can only scan forward (slicedb cursors are NO SCROLL)",
            )
        };
        match d {
            Direction::Forward(Some(0)) | Direction::Backward(Some(0)) | Direction::Relative(0) => {
                Ok(self.current.clone().filter(|_| self.on_row()))
            }
            Direction::Relative(n) if n > 0 => {
                self.skip(Some(n as u64 - 1)).await?;
                Ok(self.next_rows(1).await?)
            }
            Direction::Absolute(0) if self.pos == 0 => Ok(None),
            Direction::Absolute(n) if n > 0 && n as u64 > self.pos && !self.at_end => {
                self.skip(Some(n as u64 - self.pos - 1)).await?;
                Ok(self.next_rows(1).await?)
            }
            Direction::Absolute(n) if n > 0 && self.at_end => Ok(None),
            Direction::Absolute(-1) => {
                // LAST: read forward to the end, and stay on the last row.
                let mut last = self.current.clone().filter(|_| self.on_row());
                while let Some(b) = self.next_rows(u64::MAX).await? {
                    last = Some(b.slice(b.num_rows() - 1, 1));
                }
                if last.is_some() {
                    self.at_end = false;
                    self.current = last.clone();
                }
                Ok(last)
            }
            _ => Err(backward()),
        }
    }
}

/// Run a cursor statement for the connection `conn`. `portal` is the
/// extended protocol's portal (its parameters for DECLARE, its result
/// format for FETCH); `eager`: a FETCH's rows are read now, not as they are
/// sent (a simple query of several statements).
pub(crate) async fn run<C: ClientInfo>(
    conn: &CursorConn<'_>,
    client: &C,
    st: CursorStatement,
    portal: Option<&Portal<Planned>>,
    eager: bool,
) -> Result<Response, SqlError> {
    let txn = conn.txn.lock().await.clone();
    if let Some(why) = txn.as_ref().and_then(|t| t.failed()) {
        return Err(CoordinatorError::TransactionAborted(why).into());
    }
    let r = match st {
        CursorStatement::Declare(d) => declare(conn, *d, portal, txn.clone()).await,
        CursorStatement::Close(None) => {
            conn.cursors.lock().clear();
            Ok(Response::Execution(Tag::new("CLOSE CURSOR ALL")))
        }
        CursorStatement::Close(Some(name)) => {
            let closed = conn.cursors.lock().remove(&name);
            match closed {
                Some(_) => Ok(Response::Execution(Tag::new("CLOSE CURSOR"))),
                None => Err(SqlError::user(
                    "34000",
                    format!("cursor \"{name}\" does not exist"),
                )),
            }
        }
        CursorStatement::Fetch {
            name,
            direction,
            fetch,
        } => {
            let format = portal.map(|p| &p.result_column_format);
            let opts = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
            fetch_or_move(
                conn,
                &name,
                direction,
                fetch,
                format,
                opts,
                txn.clone(),
                eager,
            )
            .await
        }
    };
    if let (Err(e), Some(t)) = (&r, &txn) {
        t.mark_failed(e.to_string());
    }
    r
}

async fn declare(
    conn: &CursorConn<'_>,
    d: Declare,
    portal: Option<&Portal<Planned>>,
    txn: Option<Arc<Txn>>,
) -> Result<Response, SqlError> {
    let name = d
        .names
        .first()
        .map(|i| normalize(&i.value, i.quote_style.is_some()))
        .ok_or_else(|| SqlError::user("42601", "DECLARE needs a cursor name"))?;
    let hold = d.hold == Some(true);
    if d.scroll == Some(true) {
        return Err(SqlError::not_supported(
            "SCROLL cursors; slicedb cursors scan forward only (NO SCROLL)",
        ));
    }
    if !hold && txn.is_none() {
        return Err(SqlError::user(
            "25P01",
            "DECLARE CURSOR can only be used in transaction blocks",
        ));
    }
    if conn.cursors.lock().contains_key(&name) {
        return Err(SqlError::user(
            "42P03",
            format!("cursor \"{name}\" already exists"),
        ));
    }
    let query = d
        .for_query
        .ok_or_else(|| SqlError::user("42601", "DECLARE CURSOR needs FOR query"))?;
    let mut st = Statement::Query(query);
    if let Some(portal) = portal {
        params::substitute(&mut st, portal, &Default::default())?;
    }
    // Planned by DataFusion directly (not datafusion-postgres): output
    // columns named as PostgreSQL names them.
    let catalog = shield::reads_catalog(&st);
    names::rewrite(&mut st, catalog);
    let ctx = conn.ctx.clone();
    let sql = st.to_string();
    let start = async move {
        let df = ctx.sql(&sql).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let stream = df.execute_stream().await?;
        Ok::<_, DataFusionError>((schema, stream))
    };
    // The stream's scans take the block's snapshot (or, outside a block, a
    // snapshot of their own) as they start, here.
    let (schema, stream) = match &txn {
        Some(t) => CURRENT_TXN.scope(t.clone(), start).await?,
        None => start.await?,
    };
    let cursor = Cursor {
        stream: Some(stream),
        pending: None,
        current: None,
        pos: 0,
        at_end: false,
    };
    let mut all = conn.cursors.lock();
    if all.contains_key(&name) {
        return Err(SqlError::user(
            "42P03",
            format!("cursor \"{name}\" already exists"),
        ));
    }
    all.insert(
        name,
        Held {
            cursor: Arc::new(Mutex::new(cursor)),
            schema,
            binary: d.binary == Some(true),
            hold,
            in_block: txn.is_some(),
        },
    );
    Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
}

fn in_use(name: &str) -> SqlError {
    SqlError::user(
        "55006",
        format!("cursor \"{name}\" is in use by a suspended portal; close the portal first"),
    )
}

/// The result columns of cursor `name` in `format` (None: the cursor's
/// own, text or BINARY), named as the client sees them.
fn fields(
    conn: &CursorConn<'_>,
    name: &str,
    format: Option<&Format>,
    opts: Option<Arc<FormatOptions>>,
) -> Result<Vec<FieldInfo>, SqlError> {
    let (_, schema, binary) = conn.cursors.get(name)?;
    let own = if binary {
        Format::UnifiedBinary
    } else {
        Format::UnifiedText
    };
    let fields = arrow_schema_to_pg_fields(&schema, format.unwrap_or(&own), opts)
        .map_err(|e| SqlError::user("XX000", e.to_string()))?;
    Ok(names::restore_fields(&fields).unwrap_or(fields))
}

#[allow(clippy::too_many_arguments)]
async fn fetch_or_move(
    conn: &CursorConn<'_>,
    name: &str,
    direction: Direction,
    fetch: bool,
    format: Option<&Format>,
    opts: Arc<FormatOptions>,
    txn: Option<Arc<Txn>>,
    eager: bool,
) -> Result<Response, SqlError> {
    let (cursor, _, _) = conn.cursors.get(name)?;
    let fields = Arc::new(fields(conn, name, format, Some(opts))?);
    let rows: std::pin::Pin<Box<dyn Stream<Item = PgWireResult<DataRow>> + Send>> = match direction
    {
        Direction::Forward(n) if n != Some(0) => {
            if !fetch {
                let mut c = cursor.try_lock_owned().map_err(|_| in_use(name))?;
                let moved = c.skip(n).await?;
                return Ok(Response::Execution(
                    Tag::new("MOVE").with_rows(moved as usize),
                ));
            }
            let rows = rows_of(cursor, name.to_string(), n, fields.clone(), txn);
            if eager {
                let rows: Vec<_> = rows.collect().await;
                Box::pin(futures::stream::iter(rows))
            } else {
                Box::pin(rows)
            }
        }
        d => {
            let mut c = cursor.try_lock_owned().map_err(|_| in_use(name))?;
            let row = c.single(d).await?;
            if !fetch {
                let moved = usize::from(row.is_some());
                return Ok(Response::Execution(Tag::new("MOVE").with_rows(moved)));
            }
            let rows: Vec<_> = row
                .into_iter()
                .flat_map(|b| encode_recordbatch(fields.clone(), b))
                .collect();
            Box::pin(futures::stream::iter(rows))
        }
    };
    let mut q = QueryResponse::new(fields, rows);
    q.set_command_tag("FETCH");
    Ok(Response::Query(q))
}

/// What the row stream of a FETCH holds between two polls.
enum Reading {
    Start(Arc<Mutex<Cursor>>),
    On(OwnedMutexGuard<Cursor>),
    Done,
}

/// Up to `count` rows of `cursor` (None: all), read as they are sent. The
/// cursor is locked from the first row to the last (a FETCH meanwhile is
/// refused, 55006); an error marks the block `txn` failed.
fn rows_of(
    cursor: Arc<Mutex<Cursor>>,
    name: String,
    count: Option<u64>,
    fields: Arc<Vec<FieldInfo>>,
    txn: Option<Arc<Txn>>,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send {
    let batches =
        futures::stream::unfold((Reading::Start(cursor), count), move |(reading, left)| {
            let (name, txn) = (name.clone(), txn.clone());
            async move {
                let mut c = match reading {
                    Reading::Start(c) => match c.try_lock_owned() {
                        Ok(g) => g,
                        Err(_) => {
                            let e: PgWireError = in_use(&name).into();
                            return Some((Err(e), (Reading::Done, Some(0))));
                        }
                    },
                    Reading::On(g) => g,
                    Reading::Done => return None,
                };
                if left == Some(0) {
                    return None;
                }
                match c.next_rows(left.unwrap_or(u64::MAX)).await {
                    Ok(Some(b)) => {
                        let n = b.num_rows() as u64;
                        Some((Ok(b), (Reading::On(c), left.map(|l| l - n))))
                    }
                    Ok(None) => None,
                    Err(e) => {
                        if let Some(t) = &txn {
                            t.mark_failed(e.to_string());
                        }
                        let e: PgWireError = SqlError::from(e).into();
                        Some((Err(e), (Reading::Done, Some(0))))
                    }
                }
            }
        });
    batches.flat_map(move |b| {
        let rows: Vec<PgWireResult<DataRow>> = match b {
            Ok(b) => encode_recordbatch(fields.clone(), b).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(rows)
    })
}

/// Answer a Describe that concerns a cursor: a cursor's own portal (psycopg
/// describes the cursor by name after DECLARE), or a statement or portal
/// that FETCHes from one. False: not one of these (pgwire answers).
pub(crate) async fn describe<C>(
    conn: &CursorConn<'_>,
    client: &mut C,
    message: &Describe,
) -> PgWireResult<bool>
where
    C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::PortalStore: PortalStore<Statement = Planned>,
    C::Error: std::fmt::Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let name = message.name.as_deref().unwrap_or(pgwire::api::DEFAULT_NAME);
    let fetched = |sql: &str| match parse(sql) {
        Some(Ok(CursorStatement::Fetch {
            name, fetch: true, ..
        })) => Some(name),
        _ => None,
    };
    let opts = Some(Arc::new(FormatOptions::from_client_metadata(
        client.metadata(),
    )));
    match message.target_type {
        TARGET_TYPE_BYTE_PORTAL => match client.portal_store().get_portal(name) {
            Some(Entry::Value(p)) => {
                let Some(cursor) = fetched(&p.statement.statement.0) else {
                    return Ok(false);
                };
                let fields = fields(conn, &cursor, Some(&p.result_column_format), opts)?;
                pgwire::api::query::send_describe_response(
                    client,
                    &DescribePortalResponse::new(fields),
                )
                .await?;
                Ok(true)
            }
            Some(Entry::Empty) => Ok(false),
            None => {
                if conn.cursors.get(name).is_err() {
                    return Ok(false);
                }
                let fields = fields(conn, name, None, opts)?;
                pgwire::api::query::send_describe_response(
                    client,
                    &DescribePortalResponse::new(fields),
                )
                .await?;
                Ok(true)
            }
        },
        TARGET_TYPE_BYTE_STATEMENT => {
            let Some(Entry::Value(s)) = client.portal_store().get_statement(name) else {
                return Ok(false);
            };
            let Some(cursor) = fetched(&s.statement.0) else {
                return Ok(false);
            };
            let fields = fields(conn, &cursor, Some(&Format::UnifiedText), opts)?;
            pgwire::api::query::send_describe_response(
                client,
                &DescribeStatementResponse::new(Vec::new(), fields),
            )
            .await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(sql: &str) -> (String, Direction, bool) {
        match parse(sql) {
            Some(Ok(CursorStatement::Fetch {
                name,
                direction,
                fetch,
            })) => (name, direction, fetch),
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn fetch_and_move_forms() {
        use Direction::*;
        let cases = [
            (
                "FETCH FORWARD 1000 FROM \"My Cur\"",
                "My Cur",
                Forward(Some(1000)),
            ),
            ("fetch next from c", "c", Forward(Some(1))),
            ("FETCH c", "c", Forward(Some(1))),
            ("FETCH 5 IN C", "c", Forward(Some(5))),
            ("FETCH ALL FROM c;", "c", Forward(None)),
            ("FETCH FORWARD ALL c", "c", Forward(None)),
            ("FETCH FORWARD FROM c", "c", Forward(Some(1))),
            ("FETCH BACKWARD 2 FROM c", "c", Backward(Some(2))),
            ("FETCH -3 FROM c", "c", Backward(Some(3))),
            ("FETCH PRIOR FROM c", "c", Backward(Some(1))),
            ("FETCH FIRST FROM c", "c", Absolute(1)),
            ("FETCH LAST FROM c", "c", Absolute(-1)),
            ("FETCH ABSOLUTE -2 FROM c", "c", Absolute(-2)),
            ("FETCH RELATIVE 0 FROM c", "c", Relative(0)),
        ];
        for (sql, name, d) in cases {
            assert_eq!(fetch(sql), (name.to_string(), d, true), "{sql}");
        }
        assert_eq!(
            fetch("MOVE FORWARD 3 IN c"),
            ("c".to_string(), Forward(Some(3)), false)
        );
    }

    #[test]
    fn close_declare_and_others() {
        assert_eq!(
            parse("CLOSE ALL").map(|r| r.ok()),
            Some(Some(CursorStatement::Close(None)))
        );
        assert_eq!(
            parse("close \"X\"").map(|r| r.ok()),
            Some(Some(CursorStatement::Close(Some("X".into()))))
        );
        let d = parse("DECLARE \"c\" CURSOR WITHOUT HOLD FOR SELECT $1::int");
        assert!(matches!(d, Some(Ok(CursorStatement::Declare(_)))), "{d:?}");
        for sql in ["FETCH", "FETCH 1 FROM", "CLOSE a b", "MOVE FORWARD x y"] {
            assert!(matches!(parse(sql), Some(Err(_))), "{sql}");
        }
        for sql in ["SELECT 1", "FETCH 1 FROM c; SELECT 1", "\"fetch\""] {
            assert!(parse(sql).is_none(), "{sql}");
        }
    }
}
