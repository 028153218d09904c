//! Rewrites that let DataFusion plan the SQL that psql, SQLAlchemy and
//! drivers send, without changing what it asks.
//!
//! - `x LIKE p ESCAPE 'c'` with an escape character other than backslash
//!   (every statement; SQLAlchemy's `get_schema_names` uses `ESCAPE '/'`):
//!   DataFusion only knows backslash, so the pattern is translated by
//!   `slicedb_like_escape(p, 'c')` into the same pattern written with
//!   backslash escapes.
//! - `ARRAY(SELECT e FROM ... [ORDER BY o])` (psql's `\du`, `\d+`):
//!   DataFusion has no array constructor from a query; it becomes the scalar
//!   subquery `(SELECT array_agg(e ORDER BY o) FROM ...)`, which it
//!   decorrelates. PostgreSQL's empty array becomes NULL (array_agg of no
//!   rows); both print as nothing useful in psql. An `ARRAY(...)` over a
//!   table function of the outer row (`unnest(tc.reloptions)`, psql's TOAST
//!   options) cannot be decorrelated: it becomes NULL, which is what an
//!   array of a NULL array's elements appends to an array (`a || NULL` is
//!   `a`); slicedb has no TOAST tables, so the outer value is always NULL.
//! - In statements that read the catalog: a correlated scalar subquery in
//!   a CASE's result (SQLAlchemy's `get_columns`: column defaults, identity
//!   options, collations) becomes NULL, as datafusion-postgres already does
//!   for one that is a whole select item; DataFusion cannot plan a
//!   correlated subquery under a condition. The catalog tables those read
//!   (`pg_attrdef`, `pg_sequence`, a column's own collation) hold nothing
//!   for slicedb's tables, so the answer is the one PostgreSQL would give.
//!
//! - `generate_subscripts(a, 1)` (SQLAlchemy's `get_pk_constraint`, beside
//!   `unnest(indkey)`): see [`generate_subscripts`].
//!
//! - `pg_user` unqualified names `pg_catalog.pg_user`.
//!
//! Queries that datafusion-postgres replaces whole (it matches their text)
//! are left as the client wrote them.
//!
//! It only rewrites expressions; statements slicedb runs itself, and user
//! queries without these forms, are left as they are.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident,
    ObjectName, OrderByKind, Query, SelectItem, SetExpr, Statement, TableFactor, Value, Visit,
    VisitMut, Visitor, VisitorMut,
};

/// Apply the rewrites to `stmt`. Whether anything changed.
pub fn rewrite(stmt: &mut Statement) -> bool {
    let catalog = crate::shield::reads_catalog(stmt);
    let mut v = Rewriter {
        catalog,
        changed: false,
    };
    let _ = stmt.visit(&mut v);
    v.changed
}

/// `sql` with [`rewrite`] applied, if that changed it (and it parses),
/// unless datafusion-postgres replaces `sql` whole.
pub fn rewrite_sql(sql: &str) -> Option<String> {
    crate::dialect::rewrite_each(sql, rewrite).filter(|_| !upstream_replaces(sql))
}

/// [`rewrite`] `stmt`, one of the statements of `sql`, unless
/// datafusion-postgres replaces `sql` whole. Whether anything changed.
pub fn rewrite_in(stmt: &mut Statement, sql: &str) -> bool {
    let mut copy = stmt.clone();
    if !rewrite(&mut copy) || upstream_replaces(sql) {
        return false;
    }
    *stmt = copy;
    true
}

/// Whether datafusion-postgres replaces `sql` whole before planning (its
/// list of client queries it answers with a stub, matched token by token:
/// psql's row-policy, publication and statistics queries, pgcli's, ...).
/// Those must reach it as the client wrote them, or its match fails.
fn upstream_replaces(sql: &str) -> bool {
    use datafusion::sql::sqlparser::{dialect::PostgreSqlDialect, parser::Parser};
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
    static UPSTREAM: std::sync::LazyLock<PostgresCompatibilityParser> =
        std::sync::LazyLock::new(PostgresCompatibilityParser::new);
    let (Ok(theirs), Ok(plain)) = (
        UPSTREAM.parse(sql),
        Parser::parse_sql(&PostgreSqlDialect {}, sql),
    ) else {
        return false;
    };
    let plain: Vec<Statement> = plain.into_iter().map(|s| UPSTREAM.rewrite(s)).collect();
    theirs != plain
}

/// The name of the function that translates a LIKE pattern's escapes.
pub const LIKE_ESCAPE_FN: &str = "slicedb_like_escape";

/// Register [`LIKE_ESCAPE_FN`]`(pattern, escape)`: [`like_escape`].
pub fn install(ctx: &datafusion::prelude::SessionContext) {
    use datafusion::arrow::array::{Array, AsArray, StringArray};
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::{ColumnarValue, Volatility};
    ctx.register_udf(datafusion::logical_expr::create_udf(
        LIKE_ESCAPE_FN,
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        std::sync::Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let (p, e) = (arrays[0].as_string::<i32>(), arrays[1].as_string::<i32>());
            let out: StringArray = (0..p.len())
                .map(|i| {
                    (p.is_valid(i) && e.is_valid(i)).then(|| match e.value(i).chars().next() {
                        Some(c) => like_escape(p.value(i), c),
                        None => p.value(i).to_string(),
                    })
                })
                .collect();
            Ok(ColumnarValue::Array(std::sync::Arc::new(out)))
        }),
    ));
}

/// `pattern` written with `escape` as its escape character, rewritten with
/// backslash as the escape character (what DataFusion's LIKE knows).
pub fn like_escape(pattern: &str, escape: char) -> String {
    if escape == '\\' {
        return pattern.to_string();
    }
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == escape {
            match chars.next() {
                Some(n @ ('%' | '_' | '\\')) => {
                    out.push('\\');
                    out.push(n);
                }
                Some(n) => out.push(n),
                None => out.push(c),
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

struct Rewriter {
    catalog: bool,
    changed: bool,
}

fn func(name: &str, args: Vec<Expr>) -> Function {
    Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    }
}

/// The first argument of a call, if it is a plain expression.
fn first_arg(f: &Function) -> Option<Expr> {
    match &f.args {
        FunctionArguments::List(l) => match l.args.first() {
            Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) => Some(e.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// `generate_subscripts(a, 1)` (a set-returning function, which DataFusion
/// allows only as `unnest`) as `unnest(range(1, cardinality(a) + 1))`: the
/// subscripts of a one-dimensional array (slicedb has no others), zipped
/// with an `unnest(a)` beside it as PostgreSQL does.
fn generate_subscripts(array: Expr) -> Expr {
    let n = Expr::BinaryOp {
        left: Box::new(Expr::Cast {
            kind: datafusion::sql::sqlparser::ast::CastKind::Cast,
            expr: Box::new(Expr::Function(func("cardinality", vec![array]))),
            data_type: datafusion::sql::sqlparser::ast::DataType::BigInt(None),
            array: false,
            format: None,
        }),
        op: datafusion::sql::sqlparser::ast::BinaryOperator::Plus,
        right: Box::new(Expr::value(Value::Number("1".into(), false))),
    };
    let one = Expr::value(Value::Number("1".into(), false));
    Expr::Function(func(
        "unnest",
        vec![Expr::Function(func("range", vec![one, n]))],
    ))
}

/// `ARRAY(query)` as `(SELECT array_agg(e ORDER BY ..) ..)`, or NULL when
/// the query reads a table function (of the outer row).
fn array_of_query(mut query: Query) -> Expr {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Expr::value(Value::Null);
    };
    let over_function = select.from.iter().any(|twj| {
        std::iter::once(&twj.relation)
            .chain(twj.joins.iter().map(|j| &j.relation))
            .any(|r| {
                matches!(r, TableFactor::Table { args: Some(_), .. })
                    || matches!(r, TableFactor::Function { .. } | TableFactor::UNNEST { .. })
            })
    });
    if over_function || select.projection.len() != 1 {
        return Expr::value(Value::Null);
    }
    let item = match select.projection.remove(0) {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return Expr::value(Value::Null),
    };
    let order = match query.order_by.take().map(|o| o.kind) {
        Some(OrderByKind::Expressions(exprs)) => exprs,
        _ => vec![],
    };
    let mut agg = func("array_agg", vec![item]);
    if let FunctionArguments::List(list) = &mut agg.args {
        if !order.is_empty() {
            list.clauses
                .push(datafusion::sql::sqlparser::ast::FunctionArgumentClause::OrderBy(order));
        }
    }
    select
        .projection
        .push(SelectItem::UnnamedExpr(Expr::Function(agg)));
    // Parenthesised, so that datafusion-postgres's rule that turns a
    // correlated select-item subquery into NULL leaves it to DataFusion.
    Expr::Nested(Box::new(Expr::Subquery(Box::new(query))))
}

/// Whether `query` names a column of a relation it does not read itself.
fn correlated(query: &Query) -> bool {
    struct Names(HashSet<String>);
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table { name, alias, .. } = t {
                let full = name.to_string().to_ascii_lowercase();
                if let Some(last) = full.rsplit('.').next() {
                    self.0.insert(last.to_string());
                }
                self.0.insert(full);
                if let Some(a) = alias {
                    self.0.insert(a.name.value.to_ascii_lowercase());
                }
            }
            ControlFlow::Continue(())
        }
    }
    struct Refs<'a>(&'a HashSet<String>, bool);
    impl Visitor for Refs<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::CompoundIdentifier(parts) = e {
                let qualifier = parts[..parts.len().saturating_sub(1)]
                    .iter()
                    .map(|p| p.value.to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join(".");
                if !qualifier.is_empty() && !self.0.contains(&qualifier) {
                    self.1 = true;
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut names = Names(HashSet::new());
    let _ = query.visit(&mut names);
    let mut refs = Refs(&names.0, false);
    let _ = query.visit(&mut refs);
    refs.1
}

impl VisitorMut for Rewriter {
    type Break = ();

    // `pg_user` unqualified: pg_catalog is searched first, as in
    // PostgreSQL (datafusion-postgres qualifies the tables it knows).
    fn pre_visit_relation(&mut self, name: &mut ObjectName) -> ControlFlow<()> {
        if let [part] = name.0.as_slice() {
            if part
                .as_ident()
                .is_some_and(|i| i.quote_style.is_none() && i.value.eq_ignore_ascii_case("pg_user"))
            {
                *name = ObjectName::from(vec![Ident::new("pg_catalog"), Ident::new("pg_user")]);
                self.changed = true;
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        match expr {
            Expr::Like {
                pattern,
                escape_char,
                ..
            }
            | Expr::ILike {
                pattern,
                escape_char,
                ..
            } => {
                let escape = escape_char.as_ref().and_then(|v| match &v.value {
                    Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                        let mut cs = s.chars();
                        match (cs.next(), cs.next()) {
                            (Some(c), None) if c != '\\' => Some(c),
                            _ => None,
                        }
                    }
                    _ => None,
                });
                if let Some(c) = escape {
                    let p = std::mem::replace(pattern.as_mut(), Expr::value(Value::Null));
                    **pattern = Expr::Function(func(
                        LIKE_ESCAPE_FN,
                        vec![p, Expr::value(Value::SingleQuotedString(c.to_string()))],
                    ));
                    *escape_char = None;
                    self.changed = true;
                }
            }
            Expr::Function(f)
                if f.name
                    .to_string()
                    .eq_ignore_ascii_case("generate_subscripts")
                    || f.name
                        .to_string()
                        .eq_ignore_ascii_case("pg_catalog.generate_subscripts") =>
            {
                if let Some(array) = first_arg(f) {
                    *expr = generate_subscripts(array);
                    self.changed = true;
                }
            }
            Expr::Function(f)
                if f.name.to_string().eq_ignore_ascii_case("array")
                    && matches!(f.args, FunctionArguments::Subquery(_)) =>
            {
                if let FunctionArguments::Subquery(q) =
                    std::mem::replace(&mut f.args, FunctionArguments::None)
                {
                    *expr = array_of_query(*q);
                    self.changed = true;
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    // After the children: an ARRAY(...) in a result is a subquery by now.
    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let (
            true,
            Expr::Case {
                conditions,
                else_result,
                ..
            },
        ) = (self.catalog, expr)
        {
            let results = conditions
                .iter_mut()
                .map(|c| &mut c.result)
                .chain(else_result.iter_mut().map(|e| e.as_mut()));
            for r in results {
                let mut nulls = NullCorrelated(false);
                let _ = r.visit(&mut nulls);
                self.changed |= nulls.0;
            }
        }
        ControlFlow::Continue(())
    }
}

/// Replaces each correlated scalar subquery it visits with NULL.
struct NullCorrelated(bool);

impl VisitorMut for NullCorrelated {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        let sub = match expr {
            Expr::Subquery(q) => Some(q),
            Expr::Nested(n) => match n.as_mut() {
                Expr::Subquery(q) => Some(q),
                _ => None,
            },
            _ => None,
        };
        if sub.is_some_and(|q| correlated(q)) {
            *expr = Expr::value(Value::Null);
            self.0 = true;
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::parse_statements;

    fn rw(sql: &str) -> (bool, String) {
        let mut p = parse_statements(sql).unwrap();
        let changed = rewrite(&mut p[0].statement);
        (changed, p[0].statement.to_string())
    }

    #[test]
    fn like_escapes_become_backslashes() {
        assert_eq!(like_escape("pg/_%", '/'), "pg\\_%");
        assert_eq!(like_escape("a\\b//c", '/'), "a\\\\b/c");
        assert_eq!(like_escape("x#%y#", '#'), "x\\%y#");
        let (changed, text) = rw("SELECT 1 FROM t WHERE s NOT LIKE 'pg/_' || '%' ESCAPE '/'");
        assert!(changed);
        assert!(
            text.contains("NOT LIKE slicedb_like_escape('pg/_' || '%', '/')"),
            "{text}"
        );
        assert!(!rw("SELECT 1 FROM t WHERE s LIKE 'a\\_%' ESCAPE '\\'").0);
        assert!(!rw("SELECT 1 FROM t WHERE s LIKE 'a%'").0);
    }

    #[test]
    fn subscripts_are_a_range() {
        let (changed, text) = rw("SELECT unnest(i.indkey) AS attnum, generate_subscripts(i.indkey, 1) AS ord FROM pg_catalog.pg_index i");
        assert!(changed);
        assert!(
            text.contains("unnest(range(1, CAST(cardinality(i.indkey) AS BIGINT) + 1)) AS ord"),
            "{text}"
        );
    }

    #[test]
    fn array_of_a_query_is_an_aggregate() {
        let (changed, text) = rw("SELECT r.rolname, ARRAY(SELECT b.rolname FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid) WHERE m.member = r.oid ORDER BY 1) AS memberof FROM pg_catalog.pg_roles r");
        assert!(changed);
        assert!(
            text.contains("((SELECT array_agg(b.rolname ORDER BY 1) FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid) WHERE m.member = r.oid)) AS memberof"),
            "{text}"
        );
        let (changed, text) = rw("SELECT array_to_string(c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', ') FROM pg_catalog.pg_class c");
        assert!(changed);
        assert!(text.contains("c.reloptions || NULL"), "{text}");
        // ARRAY[...] literals are left alone.
        assert!(!rw("SELECT ARRAY[1, 2]").0);
    }

    #[test]
    fn correlated_subqueries_in_catalog_case_results_become_null() {
        let (changed, text) = rw("SELECT CASE WHEN a.atthasdef THEN (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) ELSE NULL END AS dflt, CASE WHEN a.attnum > 0 THEN (SELECT max(x.v) FROM pg_catalog.pg_x x) END AS u FROM pg_catalog.pg_attribute a");
        assert!(changed);
        assert!(text.contains("THEN NULL ELSE NULL END AS dflt"), "{text}");
        // Uncorrelated: kept.
        assert!(
            text.contains("THEN (SELECT max(x.v) FROM pg_catalog.pg_x AS x) END AS u")
                || text.contains("THEN (SELECT max(x.v) FROM pg_catalog.pg_x x) END AS u"),
            "{text}"
        );
        // Not a catalog query: kept.
        assert!(
            !rw(
                "SELECT CASE WHEN a.k > 0 THEN (SELECT max(b.v) FROM b WHERE b.k = a.k) END FROM a"
            )
            .0
        );
    }
}
#[cfg(test)]
mod probe {
    #[test]
    fn probe_sqlalchemy() {
        let sql = "SELECT pg_catalog.pg_attribute.attname AS name, CASE WHEN pg_catalog.pg_attribute.atthasdef THEN (SELECT pg_catalog.pg_get_expr(pg_catalog.pg_attrdef.adbin, pg_catalog.pg_attrdef.adrelid) AS pg_get_expr_1 \nFROM pg_catalog.pg_attrdef \nWHERE pg_catalog.pg_attribute.atthasdef AND pg_catalog.pg_attrdef.adrelid = pg_catalog.pg_attribute.attrelid AND pg_catalog.pg_attrdef.adnum = pg_catalog.pg_attribute.attnum) ELSE NULL END AS \"default\" FROM pg_catalog.pg_class LEFT OUTER JOIN pg_catalog.pg_attribute ON pg_catalog.pg_class.oid = pg_catalog.pg_attribute.attrelid AND pg_catalog.pg_attribute.attnum > $1::SMALLINT WHERE pg_catalog.pg_class.relname IN ($2::VARCHAR)";
        println!("upstream replaces: {}", super::upstream_replaces(sql));
        println!("{:?}", super::rewrite_sql(sql));
    }
}
