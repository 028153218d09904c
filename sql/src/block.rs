//! Transaction block statements: BEGIN, COMMIT, ROLLBACK, and savepoints
//! (SAVEPOINT, RELEASE SAVEPOINT, ROLLBACK TO SAVEPOINT), which drivers
//! issue on their own (psycopg's nested `transaction()`, SQLAlchemy's
//! `begin_nested()`). Also the end of the block's `SET`s
//! (`crate::settings`) and cursors (`crate::cursor`).
//!
//! A savepoint marks how many write requests the block had made. ROLLBACK
//! TO SAVEPOINT is done when it has nothing to undo: the block has not
//! failed and wrote nothing since the savepoint (psycopg's type lookups,
//! SQLAlchemy's nested blocks that only read). Writes cannot be taken back
//! from the nodes one savepoint at a time yet, and a failed block cannot be
//! made usable again (pgwire keeps the connection's failed state until the
//! block ends), so those are refused (0A000) and the block stays failed:
//! only a ROLLBACK of the whole block undoes them. `SET`s made after a
//! savepoint are not undone by rolling back to it.
//!
//! It changes the connection's state only; it never touches nodes (the
//! coordinator begins, commits and aborts).

use std::sync::Arc;

use datafusion::sql::sqlparser::ast::{Ident, Statement};
use pgwire::api::results::{Response, Tag};
use slicedb_coordinator::txn::Txn;
use slicedb_coordinator::{Coordinator, CoordinatorError};

use crate::conn::ConnState;
use crate::dialect::normalize;
use crate::settings::{self, Reported};
use crate::SqlError;

/// Whether this module runs `st`.
pub(crate) fn owns(st: &Statement) -> bool {
    matches!(
        st,
        Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
    )
}

/// The connection's open block, if any.
async fn open_block(conn: &ConnState) -> Option<Arc<Txn>> {
    conn.txn.lock().await.clone()
}

async fn set_block(conn: &ConnState, txn: Option<Arc<Txn>>) {
    if let Some(s) = &conn.registered {
        s.set_in_transaction(txn.is_some());
    }
    if txn.is_none() {
        conn.savepoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
    *conn.txn.lock().await = txn;
}

fn savepoint_name(i: &Ident) -> String {
    normalize(&i.value, i.quote_style.is_some())
}

fn outside(what: &str) -> SqlError {
    SqlError::user(
        "25P01",
        format!("{what} can only be used in transaction blocks"),
    )
}

/// Run a statement [`owns`] answered true for. `meta` is the connection's
/// metadata (what `crate::settings` restores at the block's end). Answers
/// the response and the ParameterStatus messages to send.
pub(crate) async fn run(
    coord: &Coordinator,
    conn: &ConnState,
    meta: &mut std::collections::HashMap<String, String>,
    st: &Statement,
) -> Result<(Response, Reported), SqlError> {
    let cluster = coord.cluster();
    let end = |committed: bool, meta: &mut std::collections::HashMap<String, String>| {
        crate::cursor::end_block(&conn.cursors, committed);
        settings::end_block(conn, meta, committed)
    };
    match st {
        Statement::StartTransaction { .. } => {
            if open_block(conn).await.is_none() {
                set_block(conn, Some(cluster.begin()?)).await;
                settings::begin_block(conn);
            }
            Ok((Response::TransactionStart(Tag::new("BEGIN")), Vec::new()))
        }
        Statement::Commit { .. } => {
            let Some(txn) = open_block(conn).await else {
                return Ok((Response::TransactionEnd(Tag::new("COMMIT")), Vec::new()));
            };
            set_block(conn, None).await;
            if txn.failed().is_some() {
                cluster.abort(&txn).await;
                let reported = end(false, meta);
                return Ok((Response::TransactionEnd(Tag::new("ROLLBACK")), reported));
            }
            let r = cluster.commit(&txn).await;
            let reported = end(r.is_ok(), meta);
            r?;
            Ok((Response::TransactionEnd(Tag::new("COMMIT")), reported))
        }
        Statement::Rollback {
            savepoint: Some(name),
            ..
        } => {
            let txn = open_block(conn)
                .await
                .ok_or_else(|| outside("ROLLBACK TO SAVEPOINT"))?;
            rollback_to(conn, &txn, &savepoint_name(name))?;
            Ok((Response::Execution(Tag::new("ROLLBACK")), Vec::new()))
        }
        Statement::Rollback { .. } => {
            let mut reported = Vec::new();
            if let Some(txn) = open_block(conn).await {
                set_block(conn, None).await;
                cluster.abort(&txn).await;
                reported = end(false, meta);
            }
            Ok((Response::TransactionEnd(Tag::new("ROLLBACK")), reported))
        }
        Statement::Savepoint { name } => {
            let txn = open_block(conn).await.ok_or_else(|| outside("SAVEPOINT"))?;
            if let Some(why) = txn.failed() {
                return Err(CoordinatorError::TransactionAborted(why).into());
            }
            conn.savepoints
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((savepoint_name(name), txn.requests_made()));
            Ok((Response::Execution(Tag::new("SAVEPOINT")), Vec::new()))
        }
        Statement::ReleaseSavepoint { name } => {
            let txn = open_block(conn)
                .await
                .ok_or_else(|| outside("RELEASE SAVEPOINT"))?;
            if let Some(why) = txn.failed() {
                return Err(CoordinatorError::TransactionAborted(why).into());
            }
            let name = savepoint_name(name);
            let mut stack = conn.savepoints.lock().unwrap_or_else(|e| e.into_inner());
            let at = stack
                .iter()
                .rposition(|(n, _)| *n == name)
                .ok_or_else(|| no_savepoint(&name))?;
            stack.truncate(at);
            Ok((Response::Execution(Tag::new("RELEASE")), Vec::new()))
        }
        other => Err(SqlError::not_supported(format!("statement {other}"))),
    }
}

fn no_savepoint(name: &str) -> SqlError {
    SqlError::user("3B001", format!("savepoint \"{name}\" does not exist"))
}

/// ROLLBACK TO SAVEPOINT `name`: the savepoints after it go, if there is
/// nothing to undo (see the module doc).
fn rollback_to(conn: &ConnState, txn: &Txn, name: &str) -> Result<(), SqlError> {
    let mut stack = conn.savepoints.lock().unwrap_or_else(|e| e.into_inner());
    let at = stack
        .iter()
        .rposition(|(n, _)| n == name)
        .ok_or_else(|| no_savepoint(name))?;
    let why = if txn.failed().is_some() {
        Some("after an error in the block")
    } else if txn.requests_made() != stack[at].1 {
        Some("after rows were written since it")
    } else {
        None
    };
    if let Some(why) = why {
        let e = SqlError::not_supported(format!(
            "ROLLBACK TO SAVEPOINT \"{name}\" {why}; ROLLBACK the whole transaction block"
        ));
        txn.mark_failed(e.to_string());
        return Err(e);
    }
    stack.truncate(at + 1);
    Ok(())
}
