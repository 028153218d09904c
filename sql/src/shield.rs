//! Keeps datafusion-pg-catalog's `RemoveSubqueryFromProjection` rewrite off
//! user queries.
//!
//! datafusion-postgres rewrites every statement before planning. One of its
//! rules exists for psql's and drivers' catalog queries: a scalar subquery
//! in a SELECT list that *looks* correlated (it names a table that is not an
//! alias of its own FROM, which a nested `EXISTS (SELECT .. FROM b WHERE
//! b.k = a.k)` does) becomes NULL, and every other one gets `LIMIT 1`. On a
//! user's query that is a wrong answer with no error. The rule only matches
//! a subquery that is the select item itself, so wrapping it in parentheses
//! (`Expr::Nested`, the same value) keeps the rule off it.
//!
//! Statements that read the catalog (`pg_*` tables, `pg_catalog`,
//! `information_schema`) are left as they are: the rule is what lets their
//! correlated subqueries plan at all. This module must never change what a
//! statement means; it only adds parentheses.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, ObjectName, Query, SelectItem, SetExpr, Statement, Visit, VisitMut, Visitor, VisitorMut,
};

/// Wrap the scalar subqueries of `stmt`'s SELECT lists in parentheses,
/// unless it reads the catalog. Whether anything changed.
pub fn shield_scalar_subqueries(stmt: &mut Statement) -> bool {
    if reads_catalog(stmt) {
        return false;
    }
    let mut wrap = Wrap { changed: false };
    let _ = stmt.visit(&mut wrap);
    wrap.changed
}

/// `sql` with [`shield_scalar_subqueries`] applied, if that changed it (and
/// it parses).
pub fn shield_sql(sql: &str) -> Option<String> {
    crate::dialect::rewrite_each(sql, shield_scalar_subqueries)
}

/// Whether `stmt` reads the catalog (`pg_*`, `information_schema`).
pub fn reads_catalog(stmt: &Statement) -> bool {
    struct Names(bool);
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
            let text = name.to_string().to_ascii_lowercase();
            if text.split('.').any(|part| {
                let part = part.trim_matches('"');
                part.starts_with("pg_") || part == "information_schema"
            }) {
                self.0 = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut names = Names(false);
    let _ = stmt.visit(&mut names);
    names.0
}

struct Wrap {
    changed: bool,
}

impl VisitorMut for Wrap {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        if let SetExpr::Select(select) = query.body.as_mut() {
            for item in &mut select.projection {
                let expr = match item {
                    SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                    _ => continue,
                };
                if matches!(expr, Expr::Subquery(_)) {
                    let inner = std::mem::replace(
                        expr,
                        Expr::value(datafusion::sql::sqlparser::ast::Value::Null),
                    );
                    *expr = Expr::Nested(Box::new(inner));
                    self.changed = true;
                }
            }
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::parse_statements;

    fn shield(sql: &str) -> (bool, String) {
        let mut p = parse_statements(sql).unwrap();
        let changed = shield_scalar_subqueries(&mut p[0].statement);
        (changed, p[0].statement.to_string())
    }

    #[test]
    fn user_subqueries_are_wrapped_and_catalog_queries_left_alone() {
        let (changed, text) = shield(
            "SELECT (SELECT count(*) FROM a WHERE EXISTS (SELECT 1 FROM b WHERE b.k = a.k)) AS x",
        );
        assert!(changed);
        assert!(text.starts_with("SELECT ((SELECT count(*)"), "{text}");
        // Nested queries too; other select items untouched.
        let (changed, text) =
            shield("SELECT k, (SELECT max(v) FROM t) FROM (SELECT k, (SELECT 1) AS one FROM u) s");
        assert!(changed);
        assert!(
            text.contains("((SELECT max(v) FROM t))") && text.contains("((SELECT 1)) AS one"),
            "{text}"
        );
        // Nothing to wrap.
        assert!(!shield("SELECT k FROM t WHERE k IN (SELECT k FROM u)").0);
        // The catalog keeps the rewrite it needs.
        for sql in [
            "SELECT (SELECT relname FROM pg_class c WHERE c.oid = a.attrelid) FROM pg_attribute a",
            "SELECT (SELECT 1) FROM pg_catalog.pg_namespace",
            "SELECT (SELECT 1) FROM information_schema.tables",
        ] {
            assert!(!shield(sql).0, "{sql}");
        }
    }
}
