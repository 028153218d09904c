//! PostgreSQL's rules for the names of a query's output columns.
//!
//! - An expression without an alias is named as PostgreSQL names it
//!   (`FigureColname`): a column by its name, a function call by the
//!   function's name (`count(*)` is `count`), a cast by its operand or else
//!   its type (`'x'::text` is `text`), `CASE` is `case`, and anything else
//!   `?column?`. DataFusion would name them by their text
//!   (`Int64(1) + Int64(1)`).
//! - Output names may repeat (`SELECT 1 AS a, 2 AS a`, `INSERT INTO t SELECT
//!   v, v FROM ...`), which DataFusion refuses: a repeated name gets a
//!   hidden suffix while DataFusion plans ([`MARK`] and a number), and the
//!   suffix is taken off the names the client sees ([`restore`]).
//! - Identifiers fold to lower case unless quoted: the dialect and
//!   DataFusion's planner already do that; the names given here follow it.
//!
//! Statements that read the catalog (psql's and drivers' queries) keep
//! their select items as written, except a repeated name: the
//! datafusion-pg-catalog rewrites match their shapes.
//!
//! It only adds aliases: it must never change what a statement computes.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::sql::sqlparser::ast::{
    DataType, Expr, Ident, Query, SelectItem, SetExpr, Statement, VisitMut, VisitorMut,
};
use pgwire::api::results::{FieldInfo, QueryResponse};

use crate::dialect::normalize;

/// Starts the hidden suffix of a repeated output name. A control character
/// no client writes in a name.
pub const MARK: char = '\u{1}';

/// Name the select items of `stmt` as PostgreSQL does and make repeated
/// names unique for DataFusion. Whether anything changed.
pub fn rewrite(stmt: &mut Statement, reads_catalog: bool) -> bool {
    let mut v = Namer {
        catalog: reads_catalog,
        changed: false,
    };
    let _ = stmt.visit(&mut v);
    v.changed
}

/// `sql` with [`rewrite`] applied, if that changed it (and it parses).
pub fn rewrite_sql(sql: &str) -> Option<String> {
    crate::dialect::rewrite_each(sql, |st| {
        let catalog = crate::shield::reads_catalog(st);
        rewrite(st, catalog)
    })
}

/// The name a client sees for an output column DataFusion planned as
/// `name`.
pub fn shown(name: &str) -> &str {
    name.split(MARK).next().unwrap_or(name)
}

/// `fields` with their hidden suffixes taken off (None: none had one).
pub fn restore_fields(fields: &[FieldInfo]) -> Option<Vec<FieldInfo>> {
    if !fields.iter().any(|f| f.name().contains(MARK)) {
        return None;
    }
    Some(
        fields
            .iter()
            .map(|f| {
                FieldInfo::new(
                    shown(f.name()).to_string(),
                    f.table_id(),
                    f.column_id(),
                    f.datatype().clone(),
                    f.format(),
                )
                .with_format_options(f.format_options().clone())
                .with_type_size(f.type_size())
                .with_type_modifier(f.type_modifier())
            })
            .collect(),
    )
}

/// Take the hidden suffixes off a result's column names.
pub fn restore(q: &mut QueryResponse) {
    if let Some(fields) = restore_fields(&q.row_schema) {
        q.row_schema = Arc::new(fields);
    }
}

struct Namer {
    catalog: bool,
    changed: bool,
}

impl VisitorMut for Namer {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        name_set_expr(query.body.as_mut(), self);
        ControlFlow::Continue(())
    }
}

fn name_set_expr(body: &mut SetExpr, v: &mut Namer) {
    match body {
        SetExpr::Select(select) => {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for item in &mut select.projection {
                let (name, is_plain) = match item {
                    SelectItem::ExprWithAlias { alias, .. } => {
                        (normalize(&alias.value, alias.quote_style.is_some()), true)
                    }
                    // In a catalog query only names DataFusion gives as
                    // PostgreSQL does (a column's) can be known to repeat.
                    SelectItem::UnnamedExpr(e)
                        if v.catalog
                            && !matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) =>
                    {
                        continue
                    }
                    SelectItem::UnnamedExpr(e) => match figure(e) {
                        Some(n) => (
                            n,
                            matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)),
                        ),
                        None => ("?column?".to_string(), false),
                    },
                    _ => continue,
                };
                let n = seen.entry(name.clone()).or_insert(0);
                *n += 1;
                let unique = if *n == 1 {
                    name.clone()
                } else {
                    format!("{name}{MARK}{n}")
                };
                let needs_alias = *n > 1 || (!v.catalog && !is_plain);
                if !needs_alias {
                    continue;
                }
                let alias = Ident::with_quote('"', unique);
                let taken = std::mem::replace(
                    item,
                    SelectItem::UnnamedExpr(Expr::value(
                        datafusion::sql::sqlparser::ast::Value::Null,
                    )),
                );
                *item = match taken {
                    SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => {
                        SelectItem::ExprWithAlias { expr, alias }
                    }
                    other => other,
                };
                v.changed = true;
            }
        }
        SetExpr::Query(q) => name_set_expr(q.body.as_mut(), v),
        SetExpr::SetOperation { left, right, .. } => {
            name_set_expr(left, v);
            name_set_expr(right, v);
        }
        _ => {}
    }
}

/// PostgreSQL's name for an unaliased select item (`FigureColname`), None
/// for `?column?`.
pub(crate) fn figure(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(normalize(&i.value, i.quote_style.is_some())),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .map(|i| normalize(&i.value, i.quote_style.is_some())),
        Expr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| normalize(&i.value, i.quote_style.is_some())),
        Expr::Cast {
            expr, data_type, ..
        } => figure(expr).or_else(|| Some(type_name(data_type))),
        Expr::TypedString(t) => Some(type_name(&t.data_type)),
        Expr::Nested(inner) => figure(inner),
        Expr::Collate { expr, .. } => figure(expr),
        Expr::Case { .. } => Some("case".into()),
        Expr::Exists { .. } => Some("exists".into()),
        Expr::Array(_) => Some("array".into()),
        Expr::Extract { .. } => Some("extract".into()),
        Expr::Substring { .. } => Some("substring".into()),
        Expr::Position { .. } => Some("position".into()),
        Expr::Overlay { .. } => Some("overlay".into()),
        Expr::Trim { .. } => Some("btrim".into()),
        Expr::Ceil { .. } => Some("ceil".into()),
        Expr::Floor { .. } => Some("floor".into()),
        Expr::Interval(_) => Some("interval".into()),
        Expr::Subquery(q) => match q.body.as_ref() {
            SetExpr::Select(s) => match s.projection.first() {
                Some(SelectItem::ExprWithAlias { alias, .. }) => {
                    Some(normalize(&alias.value, alias.quote_style.is_some()))
                }
                Some(SelectItem::UnnamedExpr(e)) => figure(e),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// A type's name as PostgreSQL names a cast to it (its internal name).
fn type_name(t: &DataType) -> String {
    let text = t.to_string().to_ascii_lowercase();
    let base = text.split('(').next().unwrap_or(&text).trim().to_string();
    match base.as_str() {
        "int" | "integer" | "int4" => "int4",
        "bigint" | "int8" => "int8",
        "smallint" | "int2" => "int2",
        "double precision" | "double" | "float8" | "float" => "float8",
        "real" | "float4" => "float4",
        "boolean" | "bool" => "bool",
        "character varying" | "varchar" => "varchar",
        "character" | "char" => "bpchar",
        "decimal" | "numeric" => "numeric",
        "timestamp with time zone" | "timestamptz" => "timestamptz",
        "timestamp" | "timestamp without time zone" => "timestamp",
        "time" | "time without time zone" => "time",
        other => return other.to_string(),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::parse_statements;

    fn named(sql: &str, catalog: bool) -> String {
        let mut p = parse_statements(sql).unwrap();
        rewrite(&mut p[0].statement, catalog);
        p[0].statement.to_string()
    }

    #[test]
    fn select_items_are_named_as_postgres_names_them() {
        assert_eq!(
            named("SELECT 1 + 1, count(*), k, t.v, 'x'::text, CAST(g AS int), CASE WHEN k THEN 1 END FROM t", false),
            "SELECT 1 + 1 AS \"?column?\", count(*) AS \"count\", k, t.v, 'x'::TEXT AS \"text\", CAST(g AS INT) AS \"g\", CASE WHEN k THEN 1 END AS \"case\" FROM t"
        );
        // Repeated names get a hidden suffix; the client sees them plain.
        let text = named("SELECT 1 AS a, 2 AS A, v, v FROM t", false);
        assert_eq!(
            text,
            format!("SELECT 1 AS a, 2 AS \"a{MARK}2\", v, v AS \"v{MARK}2\" FROM t")
        );
        assert_eq!(shown(&format!("a{MARK}2")), "a");
        assert_eq!(shown("a"), "a");
        // Set operations and subqueries too.
        let text = named("SELECT 1, 1 UNION SELECT 2, 2", false);
        assert!(
            text.contains(&format!("2 AS \"?column?{MARK}2\"")),
            "{text}"
        );
        // Catalog queries keep their shapes, but not a repeated name.
        assert_eq!(
            named(
                "SELECT oid, 1 + 1, (SELECT 1), (SELECT 1) FROM pg_class",
                true
            ),
            "SELECT oid, 1 + 1, (SELECT 1), (SELECT 1) FROM pg_class"
        );
        assert_eq!(
            named("SELECT oid, oid FROM pg_class", true),
            format!("SELECT oid, oid AS \"oid{MARK}2\" FROM pg_class")
        );
    }
}
