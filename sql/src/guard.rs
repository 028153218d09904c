//! Statements refused before they reach datafusion-postgres or DataFusion,
//! which would panic on them (the panic ends the connection's task, and
//! the client sees its connection drop). Each one was found by
//! `tests/it/fuzz_sql.rs` and is run again there first on every run.
//!
//! This module only looks at a parsed statement; it must never change one.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr, SetExpr, Statement, Visit, Visitor};

use crate::errors::SqlError;

/// Refuse, with a SQLSTATE, statements that datafusion-postgres or
/// DataFusion cannot take without panicking (the panic ended the
/// connection's task and the client saw the connection drop; found by
/// `tests/it/fuzz_sql.rs`):
/// - 0.19's `SHOW` hook indexes the parameter's first name without
///   checking there is one (`SHOW 1`);
/// - DataFusion 55 plans a scalar or IN subquery with an empty SELECT list
///   (`k = (SELECT FROM u)`) by taking its first column. PostgreSQL refuses
///   it too: "subquery must return only one column".
pub fn refuse_unsupported(s: &Statement) -> Result<(), SqlError> {
    if let Statement::ShowVariable { variable } = s {
        if variable.is_empty() {
            return Err(SqlError::User {
                sqlstate: "42601",
                message: format!("SHOW needs the name of a configuration parameter: {s}"),
            });
        }
    }
    struct EmptySubquery;
    impl Visitor for EmptySubquery {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            let q = match e {
                Expr::Subquery(q) => q,
                Expr::InSubquery { subquery, .. } => subquery,
                _ => return ControlFlow::Continue(()),
            };
            match q.body.as_ref() {
                SetExpr::Select(sel) if sel.projection.is_empty() => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    if s.visit(&mut EmptySubquery).is_break() {
        return Err(SqlError::User {
            sqlstate: "42601",
            message: "subquery must return only one column".into(),
        });
    }
    Ok(())
}

/// [`refuse_unsupported`] for every statement of `sql` that parses (the
/// extended protocol, where DataFusion plans while it parses).
pub fn refuse_unsupported_sql(sql: &str) -> Result<(), SqlError> {
    if let Ok(parsed) = crate::dialect::parse_statements(sql) {
        for p in &parsed {
            refuse_unsupported(&p.statement)?;
        }
    }
    Ok(())
}
