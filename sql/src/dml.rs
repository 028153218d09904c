//! Row changes as PostgreSQL users write them: UPDATE (with `FROM`),
//! DELETE (with `USING`), TRUNCATE, and `RETURNING` on INSERT, UPDATE and
//! DELETE.
//!
//! This module reads the statement and turns it into the coordinator's
//! request ([`DmlQuery`]): the target, the tables joined to it, the
//! condition, the assignments and RETURNING's items as SQL. RETURNING's
//! items name the target's columns; for UPDATE they mean the new values,
//! so each reference to an assigned column is replaced by its new value's
//! expression, and `*` is spelled out (the target's columns, then each
//! joined table's). Output columns are named as PostgreSQL names them
//! (`crate::names`).
//!
//! For the extended protocol, [`describe`] plans what a statement's
//! Describe reports, without running it: the parameters' types (those of
//! the columns they are compared with or assigned to) and RETURNING's row
//! description.
//!
//! It never touches nodes or disks and never runs a statement outside the
//! connection's transaction (autocommit: one of its own).

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::{exists, LogicalPlan, LogicalPlanBuilder};
use datafusion::sql::sqlparser::ast::{
    visit_expressions_mut, AssignmentTarget, Expr, FromTable, SelectItem,
    SelectItemQualifiedWildcardKind, Statement, TableFactor, TableObject, TableWithJoins,
    UpdateTableFromKind,
};
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use pgwire::api::portal::Format;
use pgwire::api::results::{QueryResponse, Response, Tag};
use pgwire::api::ClientInfo;
use slicedb_coordinator::write::{DmlOutcome, DmlQuery};
use slicedb_coordinator::Coordinator;

use crate::conn::in_txn;
use crate::ddl::object_name;
use crate::dialect::normalize;
use crate::errors::SqlError;
use crate::names;

/// Whether this module runs the statement (besides UPDATE, DELETE and
/// TRUNCATE, which `frontend` routes here): an INSERT with RETURNING.
pub fn owns(s: &Statement) -> bool {
    matches!(s, Statement::Insert(i) if i.returning.is_some())
}

/// Whether [`describe`] has something to say of `st`: UPDATE, DELETE and
/// INSERT ... RETURNING (their parameters and RETURNING's row).
pub fn describes(s: &Statement) -> bool {
    matches!(s, Statement::Update(_) | Statement::Delete(_)) || owns(s)
}

/// A statement read: what the coordinator is asked to do.
struct Change {
    /// The target table.
    table: String,
    /// What the target is called in the statement (its alias or name).
    qualifier: String,
    kind: Kind,
    query: DmlQuery,
    /// RETURNING's items, `*` spelled out.
    items: Vec<Item>,
    /// The joined tables' names as the statement calls them.
    joined: Vec<String>,
}

/// One item of RETURNING.
enum Item {
    /// An expression (SQL) and the name PostgreSQL shows for it.
    Named(String, String),
    /// A joined table's `*`: its columns keep their names.
    Star(String),
}

/// The name the coordinator's query gives RETURNING's `i`th item (the
/// names PostgreSQL shows may repeat; these may not).
fn internal(i: usize) -> String {
    format!("__slicedb_ret_{i}")
}

impl Item {
    /// As a select item named `name`.
    fn sql(&self, name: &str) -> String {
        match self {
            Item::Named(e, _) => format!("{e} AS {}", quote(name)),
            Item::Star(q) => format!("{}.*", quote(q)),
        }
    }
}

enum Kind {
    Delete,
    /// (column, SQL expression) pairs.
    Update(Vec<(String, String)>),
    /// The INSERT without its RETURNING.
    Insert(String),
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The target of an UPDATE or DELETE: (table, alias).
fn table_of(t: &TableWithJoins) -> Result<(String, Option<String>), SqlError> {
    if !t.joins.is_empty() {
        return Err(SqlError::not_supported(
            "UPDATE or DELETE of a join; name the other tables in FROM (UPDATE) or USING (DELETE)",
        ));
    }
    match &t.relation {
        TableFactor::Table { name, alias, .. } => Ok((
            object_name(name)?,
            alias
                .as_ref()
                .map(|a| normalize(&a.name.value, a.name.quote_style.is_some())),
        )),
        other => Err(SqlError::not_supported(format!(
            "UPDATE or DELETE of {other}"
        ))),
    }
}

/// The names the tables of a FROM / USING list go by (for `*`).
fn joined_names(list: &[TableWithJoins]) -> Vec<String> {
    let mut out = Vec::new();
    for t in list {
        for f in std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)) {
            let name = match f {
                TableFactor::Table { name, alias, .. } => match alias {
                    Some(a) => Some(normalize(&a.name.value, a.name.quote_style.is_some())),
                    None => name
                        .0
                        .last()
                        .and_then(|p| p.as_ident())
                        .map(|i| normalize(&i.value, i.quote_style.is_some())),
                },
                TableFactor::Derived { alias: Some(a), .. }
                | TableFactor::Function { alias: Some(a), .. }
                | TableFactor::UNNEST { alias: Some(a), .. } => {
                    Some(normalize(&a.name.value, a.name.quote_style.is_some()))
                }
                _ => None,
            };
            out.extend(name);
        }
    }
    out
}

fn list_sql(list: &[TableWithJoins]) -> String {
    list.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What [`read`] finds in a statement, before it looks up the table.
struct Parts<'a> {
    table: String,
    alias: Option<String>,
    kind: Kind,
    /// FROM (UPDATE) or USING (DELETE).
    from: Option<&'a [TableWithJoins]>,
    selection: Option<String>,
    returning: Option<&'a [SelectItem]>,
}

/// Read an INSERT ... RETURNING, UPDATE or DELETE.
fn read(coord: &Coordinator, st: &Statement) -> Result<Change, SqlError> {
    let Parts {
        table,
        alias,
        kind,
        from,
        selection,
        returning,
    } = match st {
        Statement::Delete(d) => {
            if !d.order_by.is_empty() || d.limit.is_some() || !d.tables.is_empty() {
                return Err(SqlError::not_supported(
                    "DELETE with ORDER BY, LIMIT or several targets",
                ));
            }
            let tables = match &d.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            let [t] = tables.as_slice() else {
                return Err(SqlError::not_supported(
                    "DELETE from several tables; name the others in USING",
                ));
            };
            let (name, alias) = table_of(t)?;
            let sel = d.selection.as_ref().map(|e| e.to_string());
            Parts {
                table: name,
                alias,
                kind: Kind::Delete,
                from: d.using.as_deref(),
                selection: sel,
                returning: d.returning.as_deref(),
            }
        }
        Statement::Update(u) => {
            if !u.order_by.is_empty() || u.limit.is_some() || u.or.is_some() {
                return Err(SqlError::not_supported("UPDATE with ORDER BY, LIMIT or OR"));
            }
            let (name, alias) = table_of(&u.table)?;
            let mut assignments = Vec::new();
            for a in &u.assignments {
                let AssignmentTarget::ColumnName(c) = &a.target else {
                    return Err(SqlError::not_supported("UPDATE of a column tuple"));
                };
                let ident =
                    c.0.last().and_then(|p| p.as_ident()).ok_or_else(|| {
                        SqlError::user("42601", format!("bad column {c} in UPDATE"))
                    })?;
                assignments.push((
                    normalize(&ident.value, ident.quote_style.is_some()),
                    a.value.to_string(),
                ));
            }
            let from = match &u.from {
                None => None,
                Some(UpdateTableFromKind::AfterSet(f)) => Some(f.as_slice()),
                Some(UpdateTableFromKind::BeforeSet(_)) => {
                    return Err(SqlError::user(
                        "42601",
                        "FROM goes after SET: UPDATE t SET ... FROM ...",
                    ))
                }
            };
            let sel = u.selection.as_ref().map(|e| e.to_string());
            Parts {
                table: name,
                alias,
                kind: Kind::Update(assignments),
                from,
                selection: sel,
                returning: u.returning.as_deref(),
            }
        }
        Statement::Insert(i) => {
            let TableObject::TableName(n) = &i.table else {
                return Err(SqlError::not_supported("INSERT into a table function"));
            };
            let name = object_name(n)?;
            let alias = i
                .table_alias
                .as_ref()
                .map(|a| normalize(&a.alias.value, a.alias.quote_style.is_some()));
            let mut plain = i.clone();
            plain.returning = None;
            // DataFusion plans the INSERT without the alias (it has no use
            // for it once RETURNING is taken off).
            plain.table_alias = None;
            let mut plain = Statement::Insert(plain);
            names::rewrite(&mut plain, false);
            Parts {
                table: name,
                alias,
                kind: Kind::Insert(plain.to_string()),
                from: None,
                selection: None,
                returning: i.returning.as_deref(),
            }
        }
        other => return Err(SqlError::not_supported(format!("statement {other}"))),
    };
    let columns: Vec<String> = coord
        .table_schema(&table)?
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let qualifier = alias.clone().unwrap_or_else(|| table.clone());
    let joined = from.map(joined_names).unwrap_or_default();
    unique_names(&qualifier, &joined)?;
    let mut change = Change {
        query: DmlQuery {
            alias,
            from: from.map(list_sql),
            selection,
            returning: vec![],
        },
        table,
        qualifier,
        kind,
        items: vec![],
        joined,
    };
    if let Some(items) = returning {
        change.returning(items, &columns)?;
    }
    Ok(change)
}

impl Change {
    /// The new values of an UPDATE's assigned columns, parsed.
    fn new_values(&self) -> Result<HashMap<String, Expr>, SqlError> {
        let Kind::Update(assignments) = &self.kind else {
            return Ok(HashMap::new());
        };
        let mut out = HashMap::new();
        for (c, e) in assignments {
            let expr = datafusion::sql::sqlparser::parser::Parser::new(
                &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
            )
            .try_with_sql(e)?
            .parse_expr()?;
            out.insert(c.clone(), Expr::Nested(Box::new(expr)));
        }
        Ok(out)
    }

    /// `e` with each reference to an assigned column of the target
    /// replaced by its new value.
    fn with_new_values(&self, mut e: Expr, new: &HashMap<String, Expr>) -> Expr {
        if new.is_empty() {
            return e;
        }
        let _ = visit_expressions_mut(&mut e, |x| {
            let col = match x {
                Expr::Identifier(i) => Some(normalize(&i.value, i.quote_style.is_some())),
                Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                    [q, c] if normalize(&q.value, q.quote_style.is_some()) == self.qualifier => {
                        Some(normalize(&c.value, c.quote_style.is_some()))
                    }
                    _ => None,
                },
                _ => None,
            };
            if let Some(v) = col.and_then(|c| new.get(&c)) {
                *x = v.clone();
            }
            ControlFlow::<()>::Continue(())
        });
        e
    }

    /// Read RETURNING's items.
    fn returning(&mut self, items: &[SelectItem], columns: &[String]) -> Result<(), SqlError> {
        let new = self.new_values()?;
        let target = |out: &mut Vec<Item>| {
            for c in columns {
                let e = match new.get(c) {
                    Some(v) => v.to_string(),
                    None => format!("{}.{}", quote(&self.qualifier), quote(c)),
                };
                out.push(Item::Named(e, c.clone()));
            }
        };
        let mut out = Vec::new();
        for item in items {
            match item {
                SelectItem::Wildcard(_) => {
                    target(&mut out);
                    out.extend(self.joined.iter().map(|j| Item::Star(j.clone())));
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    _,
                ) => {
                    let q =
                        n.0.last()
                            .and_then(|p| p.as_ident())
                            .map(|i| normalize(&i.value, i.quote_style.is_some()))
                            .unwrap_or_default();
                    if q == self.qualifier {
                        target(&mut out);
                    } else if self.joined.contains(&q) {
                        out.push(Item::Star(q));
                    } else {
                        return Err(SqlError::user(
                            "42P01",
                            format!("missing FROM-clause entry for table \"{q}\""),
                        ));
                    }
                }
                SelectItem::UnnamedExpr(e) => {
                    let name = names::figure(e).unwrap_or_else(|| "?column?".into());
                    let e = self.with_new_values(e.clone(), &new);
                    out.push(Item::Named(e.to_string(), name));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let name = normalize(&alias.value, alias.quote_style.is_some());
                    let e = self.with_new_values(expr.clone(), &new);
                    out.push(Item::Named(e.to_string(), name));
                }
                other => {
                    return Err(SqlError::not_supported(format!("RETURNING {other}")));
                }
            }
        }
        self.query.returning = out
            .iter()
            .enumerate()
            .map(|(i, item)| item.sql(&internal(i)))
            .collect();
        self.items = out;
        Ok(())
    }

    /// The names PostgreSQL shows for the coordinator's RETURNING columns.
    fn shown(&self) -> HashMap<String, String> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| match item {
                Item::Named(_, n) => Some((internal(i), n.clone())),
                Item::Star(_) => None,
            })
            .collect()
    }

    /// RETURNING as select items named as PostgreSQL shows them (a repeated
    /// name made unique as `crate::names` does; Describe takes it off).
    fn returning_shown(&self) -> Option<String> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let items: Vec<String> = self
            .items
            .iter()
            .map(|item| match item {
                Item::Named(_, n) => {
                    let k = seen.entry(n.as_str()).or_insert(0);
                    *k += 1;
                    if *k == 1 {
                        item.sql(n)
                    } else {
                        item.sql(&format!("{n}{}{k}", names::MARK))
                    }
                }
                Item::Star(_) => item.sql(""),
            })
            .collect();
        (!items.is_empty()).then(|| items.join(", "))
    }
}

/// DELETE, UPDATE, TRUNCATE and INSERT ... RETURNING, in the connection's
/// transaction. RETURNING's rows are encoded in `format`.
pub async fn run<C: ClientInfo>(
    coord: &Arc<Coordinator>,
    client: &C,
    st: Statement,
    format: &Format,
) -> Result<Response, SqlError> {
    let c = coord.clone();
    if let Statement::Truncate(t) = &st {
        let names: Vec<String> = t
            .table_names
            .iter()
            .map(|n| object_name(&n.name))
            .collect::<Result<_, _>>()?;
        for n in &names {
            let p = slicedb_coordinator::roles::Privilege::Truncate;
            coord.check_table(n, p)?;
        }
        in_txn(coord, client, |txn| async move {
            for n in &names {
                c.delete(&txn, n, &DmlQuery::default()).await?;
            }
            Ok(())
        })
        .await?;
        return Ok(Response::Execution(Tag::new("TRUNCATE TABLE")));
    }
    let change = read(coord, &st)?;
    let shown = change.shown();
    let Change {
        table,
        qualifier,
        kind,
        query,
        ..
    } = change;
    let (tag, outcome) = match kind {
        Kind::Delete => (
            "DELETE",
            in_txn(coord, client, |txn| async move {
                Ok(c.delete(&txn, &table, &query).await?)
            })
            .await?,
        ),
        Kind::Update(assignments) => (
            "UPDATE",
            in_txn(coord, client, |txn| async move {
                Ok(c.update(&txn, &table, &assignments, &query).await?)
            })
            .await?,
        ),
        Kind::Insert(insert) => (
            "INSERT 0",
            in_txn(coord, client, |txn| async move {
                Ok(
                    c.insert_returning(&txn, &table, &insert, &qualifier, &query.returning)
                        .await?,
                )
            })
            .await?,
        ),
    };
    respond(tag, outcome, &shown, format)
}

/// The command's answer: its tag, with RETURNING's rows if it has any.
fn respond(
    tag: &str,
    outcome: DmlOutcome,
    shown: &HashMap<String, String>,
    format: &Format,
) -> Result<Response, SqlError> {
    let Some((schema, batches)) = outcome.returned else {
        let t = match tag.strip_suffix(" 0") {
            Some(cmd) => Tag::new(cmd).with_oid(0),
            None => Tag::new(tag),
        };
        return Ok(Response::Execution(t.with_rows(outcome.rows as usize)));
    };
    let schema: SchemaRef = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| match shown.get(f.name()) {
                Some(n) => Field::new(n, f.data_type().clone(), true),
                None => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    ));
    let fields = Arc::new(
        arrow_schema_to_pg_fields(&schema, format, None)
            .map_err(|e| SqlError::user("XX000", e.to_string()))?,
    );
    let mut rows = Vec::new();
    for b in batches {
        let b = RecordBatch::try_new(schema.clone(), b.columns().to_vec())
            .map_err(datafusion::error::DataFusionError::from)?;
        rows.extend(encode_recordbatch(fields.clone(), b));
    }
    let mut q = QueryResponse::new(fields, futures::stream::iter(rows));
    q.set_command_tag(tag);
    Ok(Response::Query(q))
}

/// What a Describe of `st` (one of this module's statements) reports, as a
/// plan that is never run: its parameters carry their types (those of the
/// columns they are compared with or assigned to) and its schema is
/// RETURNING's row (none without RETURNING). None for TRUNCATE.
pub async fn describe(
    coord: &Coordinator,
    st: &Statement,
) -> Result<Option<LogicalPlan>, SqlError> {
    if !describes(st) {
        return Ok(None);
    }
    let change = read(coord, st)?;
    let ctx = coord.session();
    let state = ctx.state();
    let returning = change.returning_shown();
    let from = format!("{} AS {}", quote(&change.table), quote(&change.qualifier));
    let plan = match &change.kind {
        Kind::Insert(insert) => {
            let params = state.create_logical_plan(insert).await?;
            let result = state
                .create_logical_plan(&format!(
                    "SELECT {} FROM {from}",
                    returning.unwrap_or_else(|| "1".into())
                ))
                .await?;
            LogicalPlanBuilder::from(result)
                .filter(exists(Arc::new(params)))?
                .build()?
        }
        Kind::Delete | Kind::Update(_) => {
            let mut sql = format!(
                "SELECT {} FROM {from}",
                returning.clone().unwrap_or_else(|| "1".into())
            );
            if let Some(f) = &change.query.from {
                sql.push_str(", ");
                sql.push_str(f);
            }
            let mut conds: Vec<String> = change
                .query
                .selection
                .iter()
                .map(|s| format!("({s})"))
                .collect();
            // An assigned value compared with its column: a parameter in
            // it takes the column's type (DataFusion types a parameter by
            // what it is compared with).
            let plain = conds.clone();
            if let Kind::Update(assignments) = &change.kind {
                for (c, e) in assignments {
                    conds.push(format!(
                        "({}.{} = ({e}))",
                        quote(&change.qualifier),
                        quote(c)
                    ));
                }
            }
            let with = |conds: &[String]| {
                if conds.is_empty() {
                    sql.clone()
                } else {
                    format!("{sql} WHERE {}", conds.join(" AND "))
                }
            };
            let planned = match state.create_logical_plan(&with(&conds)).await {
                Ok(p) => p,
                // A value no comparison takes (PostgreSQL may still assign
                // it): its parameters stay untyped.
                Err(_) => state.create_logical_plan(&with(&plain)).await?,
            };
            if returning.is_some() {
                planned
            } else {
                LogicalPlanBuilder::empty(false)
                    .filter(exists(Arc::new(planned)))?
                    .build()?
            }
        }
    };
    Ok(Some(plan))
}

/// The parameter types of a plan [`describe`] made, for reading the
/// parameters a client binds (binary ones need them).
pub fn param_types(
    plan: Option<&LogicalPlan>,
) -> Result<HashMap<String, Option<DataType>>, SqlError> {
    Ok(match plan {
        Some(p) => p.get_parameter_types()?,
        None => HashMap::new(),
    })
}

/// A table named twice (the target among the joined tables, or two
/// joined tables of one name) is PostgreSQL's error 42712.
fn unique_names(target: &str, joined: &[String]) -> Result<(), SqlError> {
    let mut seen = HashSet::new();
    for n in std::iter::once(target).chain(joined.iter().map(String::as_str)) {
        if !seen.insert(n) {
            return Err(SqlError::user(
                "42712",
                format!("table name \"{n}\" specified more than once"),
            ));
        }
    }
    Ok(())
}
