//! DDL statements beyond CREATE / DROP TABLE, from SQL to the coordinator:
//! `CREATE TABLE ... AS SELECT` (and `SELECT ... INTO`), `ALTER TABLE`
//! (ADD / DROP / RENAME COLUMN, RENAME TO), `CREATE SCHEMA`, `DROP
//! SCHEMA`; and the table names they and the front end share
//! ([`object_name`]: `t`, `public.t`, `s.t`).
//!
//! CREATE TABLE AS writes its rows through the same path as INSERT ...
//! SELECT (hashed to slices, mirrored), in one transaction with the create:
//! if the rows cannot be written, the table is dropped again.
//!
//! It never touches nodes or disks: it only calls the coordinator.

use std::sync::Arc;

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::sqlparser::ast::{
    AlterTableOperation, CharacterLength, ColumnOption, DataType as SqlDataType, ObjectName,
    ObjectType, Query, RenameTableNameKind, SchemaName, SetExpr, Statement,
};
use pgwire::api::results::{Response, Tag};
use slicedb_coordinator::catalog::META_MAX_LENGTH;
use slicedb_coordinator::ddl::AlterOp;
use slicedb_coordinator::txn::{Txn, CURRENT_TXN};
use slicedb_coordinator::{Coordinator, CoordinatorError, Distribution};
use tracing::info;

use crate::dialect::{self, normalize};
use crate::errors::SqlError;
use crate::names;

/// The catalog name of a table: `t` (also `public.t`) or `s.t` for a table
/// of schema `s` (CREATE SCHEMA).
pub fn object_name(n: &ObjectName) -> Result<String, SqlError> {
    let parts: Vec<String> =
        n.0.iter()
            .map(|p| {
                p.as_ident()
                    .map(|i| normalize(&i.value, i.quote_style.is_some()))
            })
            .collect::<Option<_>>()
            .ok_or_else(|| SqlError::user("42601", format!("bad table name {n}")))?;
    match parts.as_slice() {
        [t] => Ok(t.clone()),
        [s, t] if s == "public" => Ok(t.clone()),
        [s, t] => Ok(format!("{s}.{t}")),
        _ => Err(SqlError::user(
            "42601",
            format!("improper qualified name (too many dotted names): {n}"),
        )),
    }
}

/// The name without its schema: DataFusion plans a CREATE TABLE's column
/// definitions only, and the coordinator checks the schema (3F000).
pub fn unqualify(n: &mut ObjectName) {
    if n.0.len() > 1 {
        n.0.drain(..n.0.len() - 1);
    }
}

/// Greenplum's default distribution: the first column, if it can be hashed.
pub fn default_distribution(schema: &Schema) -> Distribution {
    match schema.fields().first() {
        Some(f) if slicedb_coordinator::write::hash::hashable(f.data_type()) => {
            Distribution::Hash(vec![f.name().clone()])
        }
        _ => Distribution::Random,
    }
}

/// Whether this module runs the statement (CREATE TABLE AS comes through
/// the front end's CREATE TABLE).
pub fn owns(s: &Statement) -> bool {
    matches!(
        s,
        Statement::AlterTable(_)
            | Statement::CreateSchema { .. }
            | Statement::Drop {
                object_type: ObjectType::Schema | ObjectType::View,
                ..
            }
            | Statement::CreateView(_)
    ) || select_into(s).is_some()
}

/// `SELECT ... INTO t FROM ...`: the target and the query without INTO.
fn select_into(s: &Statement) -> Option<(bool, ObjectName, Query)> {
    let Statement::Query(q) = s else {
        return None;
    };
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return None;
    };
    let into = sel.into.as_ref()?;
    let mut q = (**q).clone();
    if let SetExpr::Select(sel) = q.body.as_mut() {
        sel.into = None;
    }
    Some((into.temporary, into.name.clone(), q))
}

/// Run a statement [`owns`] says is ours. `block`: the connection's open
/// transaction block, if any.
pub async fn run(
    coord: &Arc<Coordinator>,
    block: Option<Arc<Txn>>,
    st: Statement,
) -> Result<Response, SqlError> {
    if let Some((temporary, name, query)) = select_into(&st) {
        let sql = format!(
            "CREATE {}TABLE {name} AS {query}",
            if temporary { "TEMPORARY " } else { "" }
        );
        let mut parsed = dialect::parse_statements(&sql)?;
        let Some(Statement::CreateTable(ct)) = parsed.pop().map(|p| p.statement) else {
            return Err(SqlError::user(
                "XX000",
                "SELECT INTO did not become CREATE TABLE AS",
            ));
        };
        let query = ct
            .query
            .clone()
            .ok_or_else(|| SqlError::user("XX000", "no query"))?;
        return create_table_as(
            coord,
            Ctas {
                name: object_name(&ct.name)?,
                query: *query,
                columns: vec![],
                distribution: None,
                mirrored: true,
                temporary,
                if_not_exists: false,
                no_data: false,
            },
            block,
        )
        .await;
    }
    match st {
        Statement::AlterTable(at) => {
            let name = object_name(&at.name)?;
            for op in &at.operations {
                let op = alter_op(coord, op).await?;
                info!(table = %name, ?op, "alter table");
                coord.alter_table(&name, at.if_exists, op).await?;
            }
            Ok(Response::Execution(Tag::new("ALTER TABLE")))
        }
        Statement::CreateSchema {
            schema_name,
            if_not_exists,
            ..
        } => {
            let name = match &schema_name {
                SchemaName::Simple(n) | SchemaName::NamedAuthorization(n, _) => schema(n)?,
                SchemaName::UnnamedAuthorization(i) => normalize(&i.value, i.quote_style.is_some()),
            };
            coord.create_schema(&name, if_not_exists).await?;
            Ok(Response::Execution(Tag::new("CREATE SCHEMA")))
        }
        Statement::Drop {
            object_type: ObjectType::Schema,
            names,
            if_exists,
            cascade,
            ..
        } => {
            for n in &names {
                coord.drop_schema(&schema(n)?, if_exists, cascade).await?;
            }
            Ok(Response::Execution(Tag::new("DROP SCHEMA")))
        }
        Statement::CreateView(cv) => {
            if cv.materialized || cv.temporary {
                return Err(SqlError::not_supported(
                    "materialized and temporary views; CREATE VIEW makes a view every session sees",
                ));
            }
            let name = object_name(&cv.name)?;
            // Kept as PostgreSQL would name its output columns.
            let mut query = Statement::Query(cv.query);
            names::rewrite(&mut query, false);
            let columns: Vec<String> = cv.columns.iter().map(|c| c.name.to_string()).collect();
            let sql = match columns.is_empty() {
                true => query.to_string(),
                false => format!("SELECT * FROM ({query}) AS v ({})", columns.join(", ")),
            };
            info!(view = %name, query = %sql, "create view");
            coord.create_view(&name, &sql, cv.or_replace).await?;
            Ok(Response::Execution(Tag::new("CREATE VIEW")))
        }
        Statement::Drop {
            object_type: ObjectType::View,
            names,
            if_exists,
            ..
        } => {
            for n in &names {
                coord.drop_view(&object_name(n)?, if_exists).await?;
            }
            Ok(Response::Execution(Tag::new("DROP VIEW")))
        }
        other => Err(SqlError::not_supported(format!("statement {other}"))),
    }
}

/// `varchar(n)` / `character varying(n)`: n, the most characters a value
/// may have. None for every other type (`char(n)` is text, unpadded).
/// `character varying` is written `varchar`, which DataFusion plans.
pub fn varchar_length(t: &mut SqlDataType) -> Option<u32> {
    if let SqlDataType::CharacterVarying(l) = t {
        *t = SqlDataType::Varchar(l.take());
    }
    let len = match t {
        SqlDataType::Varchar(l) | SqlDataType::CharacterVarying(l) => l.as_ref()?,
        _ => return None,
    };
    match len {
        CharacterLength::IntegerLength { length, .. } => u32::try_from(*length).ok(),
        CharacterLength::Max => None,
    }
}

/// `schema` with each column's `varchar(n)` limit (`lengths`, in column
/// order) in the field metadata the coordinator reads it from.
pub fn with_max_lengths(schema: &SchemaRef, lengths: &[Option<u32>]) -> SchemaRef {
    if lengths.iter().all(Option::is_none) {
        return schema.clone();
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .zip(lengths.iter().chain(std::iter::repeat(&None)))
        .map(|(f, n)| match n {
            Some(n) => f
                .as_ref()
                .clone()
                .with_metadata([(META_MAX_LENGTH.to_string(), n.to_string())].into()),
            None => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// A schema's name.
fn schema(n: &ObjectName) -> Result<String, SqlError> {
    match n.0.as_slice() {
        [p] => {
            let i = p
                .as_ident()
                .ok_or_else(|| SqlError::user("42601", format!("bad schema name {n}")))?;
            Ok(normalize(&i.value, i.quote_style.is_some()))
        }
        _ => Err(SqlError::user("42601", format!("bad schema name {n}"))),
    }
}

fn ident(i: &datafusion::sql::sqlparser::ast::Ident) -> String {
    normalize(&i.value, i.quote_style.is_some())
}

/// One operation of ALTER TABLE as the coordinator takes it.
async fn alter_op(coord: &Coordinator, op: &AlterTableOperation) -> Result<AlterOp, SqlError> {
    Ok(match op {
        AlterTableOperation::AddColumn {
            if_not_exists,
            column_def,
            column_position: None,
            ..
        } => {
            let mut nullable = true;
            let mut default = None;
            for o in &column_def.options {
                match &o.option {
                    ColumnOption::Null => nullable = true,
                    ColumnOption::NotNull => nullable = false,
                    ColumnOption::Default(e) => default = Some(e.clone()),
                    other => {
                        return Err(SqlError::not_supported(format!(
                            "column option {other} in ADD COLUMN"
                        )))
                    }
                }
            }
            // DataFusion turns the SQL type into an Arrow type, as for
            // CREATE TABLE.
            let mut sql_type = column_def.data_type.clone();
            let max_length = varchar_length(&mut sql_type);
            let probe = format!(
                "CREATE TABLE slicedb_add_column ({} {sql_type})",
                column_def.name
            );
            let ctx = coord.session();
            let plan = ctx.state().create_logical_plan(&probe).await?;
            let data_type = match &plan {
                LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(m)) => m
                    .input
                    .schema()
                    .fields()
                    .first()
                    .map(|f| f.data_type().clone())
                    .ok_or_else(|| SqlError::user("42601", "ADD COLUMN without a type"))?,
                other => {
                    return Err(SqlError::user(
                        "XX000",
                        format!("ADD COLUMN type planned as {}", other.display()),
                    ))
                }
            };
            let default = match default {
                None => None,
                Some(e) => default_text(coord, &e.to_string(), &sql_type.to_string()).await?,
            };
            AlterOp::AddColumn {
                name: ident(&column_def.name),
                data_type,
                nullable,
                default,
                max_length,
                if_not_exists: *if_not_exists,
            }
        }
        AlterTableOperation::DropColumn {
            column_names,
            if_exists,
            ..
        } => match column_names.as_slice() {
            [c] => AlterOp::DropColumn {
                name: ident(c),
                if_exists: *if_exists,
            },
            _ => return Err(SqlError::not_supported("DROP COLUMN of several columns")),
        },
        AlterTableOperation::RenameColumn {
            old_column_name,
            new_column_name,
        } => AlterOp::RenameColumn {
            from: ident(old_column_name),
            to: ident(new_column_name),
        },
        AlterTableOperation::RenameTable { table_name } => {
            let (RenameTableNameKind::To(n) | RenameTableNameKind::As(n)) = table_name;
            AlterOp::RenameTable {
                to: object_name(n)?,
            }
        }
        other => {
            return Err(SqlError::not_supported(format!(
            "ALTER TABLE {other} (slicedb does ADD COLUMN, DROP COLUMN, RENAME COLUMN, RENAME TO)"
        )))
        }
    })
}

/// A column default, which must be a constant, evaluated once as the
/// column's type: its text form (None: NULL).
async fn default_text(
    coord: &Coordinator,
    expr: &str,
    sql_type: &str,
) -> Result<Option<String>, SqlError> {
    let ctx = coord.session();
    let batches = ctx
        .sql(&format!("SELECT CAST({expr} AS {sql_type})"))
        .await
        .map_err(|e| {
            SqlError::user(
                "0A000",
                format!("DEFAULT {expr}: only constants are supported ({e})"),
            )
        })?
        .collect()
        .await?;
    let col = batches
        .first()
        .filter(|b| b.num_rows() == 1)
        .map(|b| b.column(0).clone())
        .ok_or_else(|| SqlError::user("XX000", format!("DEFAULT {expr} gave no value")))?;
    if col.is_null(0) {
        return Ok(None);
    }
    let text = datafusion::arrow::util::display::array_value_to_string(&col, 0)
        .map_err(datafusion::error::DataFusionError::from)?;
    Ok(Some(text))
}

/// CREATE TABLE ... AS, parsed.
pub struct Ctas {
    pub name: String,
    pub query: Query,
    /// Names for the query's columns (`CREATE TABLE t (a, b) AS ...`).
    pub columns: Vec<String>,
    pub distribution: Option<dialect::Distribution>,
    pub mirrored: bool,
    pub temporary: bool,
    pub if_not_exists: bool,
    /// WITH NO DATA: the table only.
    pub no_data: bool,
}

/// CREATE TABLE ... AS SELECT: the table with the query's columns, then
/// its rows through INSERT's path, in one transaction (`block`'s, if a
/// transaction block is open); a failure drops the table again.
pub async fn create_table_as(
    coord: &Arc<Coordinator>,
    c: Ctas,
    block: Option<Arc<Txn>>,
) -> Result<Response, SqlError> {
    if let Some(txn) = &block {
        if let Some(why) = txn.failed() {
            return Err(CoordinatorError::TransactionAborted(why).into());
        }
    }
    if c.if_not_exists && coord.table(&c.name).is_ok() {
        return Ok(Response::Execution(Tag::new("CREATE TABLE AS")));
    }
    // The query's columns named as PostgreSQL names them (`sum`, not
    // `sum(t.v)`).
    let mut st = Statement::Query(Box::new(c.query));
    names::rewrite(&mut st, false);
    let query_sql = st.to_string();
    let ctx = coord.session();
    let plan = ctx.state().create_logical_plan(&query_sql).await?;
    let out = plan.schema().as_arrow().clone();
    if !c.columns.is_empty() && c.columns.len() != out.fields().len() {
        return Err(SqlError::user(
            "42601",
            format!(
                "CREATE TABLE AS names {} columns, the query has {}",
                c.columns.len(),
                out.fields().len()
            ),
        ));
    }
    let fields: Vec<Field> = out
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let name = c.columns.get(i).unwrap_or(f.name()).clone();
            Field::new(name, stored_type(f.data_type()), true)
        })
        .collect();
    for (i, f) in fields.iter().enumerate() {
        if fields[..i].iter().any(|g| g.name() == f.name()) {
            return Err(SqlError::user(
                "42701",
                format!("column \"{}\" specified more than once", f.name()),
            ));
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let distribution = match c.distribution {
        Some(dialect::Distribution::Hash(cols)) => Distribution::Hash(cols),
        Some(dialect::Distribution::Random) => Distribution::Random,
        None => source_distribution(coord, &plan, &schema)
            .unwrap_or_else(|| default_distribution(&schema)),
    };
    info!(table = %c.name, ?distribution, "create table as");
    coord
        .create_table(
            &c.name,
            schema,
            distribution,
            c.mirrored,
            c.temporary,
            false,
        )
        .await?;
    if c.no_data {
        return Ok(Response::Execution(Tag::new("SELECT").with_rows(0)));
    }
    let insert = format!("INSERT INTO {} {query_sql}", quoted(&c.name));
    let cluster = coord.cluster().clone();
    let txn = match &block {
        Some(t) => t.clone(),
        None => cluster.begin()?,
    };
    let work = async {
        let batches = ctx.sql(&insert).await?.collect().await?;
        Ok::<u64, SqlError>(inserted(&batches))
    };
    let r = CURRENT_TXN.scope(txn.clone(), work).await;
    let r = match (r, &block) {
        (Ok(n), None) => cluster
            .commit(&txn)
            .await
            .map(|_| n)
            .map_err(SqlError::from),
        (r, _) => r,
    };
    match r {
        Ok(n) => Ok(Response::Execution(
            Tag::new("SELECT").with_rows(n as usize),
        )),
        Err(e) => {
            match &block {
                None => cluster.abort(&txn).await,
                Some(t) => t.mark_failed(e.to_string()),
            }
            // All or nothing: no table without its rows.
            if let Err(d) = coord.drop_table(&c.name, true).await {
                tracing::warn!(table = %c.name, error = %d, "CREATE TABLE AS failed and its table was not dropped");
            }
            Err(e)
        }
    }
}

/// The row count an INSERT answers.
fn inserted(batches: &[datafusion::arrow::array::RecordBatch]) -> u64 {
    batches
        .iter()
        .filter(|b| b.num_columns() == 1 && b.num_rows() == 1)
        .filter_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                .map(|a| a.value(0))
        })
        .sum()
}

/// A catalog name (`t` or `s.t`) as SQL.
fn quoted(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// The type a column of a query's type is stored as.
fn stored_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => DataType::Utf8,
        DataType::Dictionary(_, v) => stored_type(v),
        other => other.clone(),
    }
}

/// The distribution of the one table the query reads, if the query keeps
/// its key columns as they are (renamed or not): then the new table's rows
/// stay on their slices.
fn source_distribution(
    coord: &Coordinator,
    plan: &LogicalPlan,
    out: &Schema,
) -> Option<Distribution> {
    let (table, lineage) = lineage(plan)?;
    let meta = coord.table(&table).ok()?;
    let Distribution::Hash(keys) = &meta.distribution else {
        return None;
    };
    let cols = keys
        .iter()
        .map(|k| {
            let i = lineage.iter().position(|l| l.as_deref() == Some(k))?;
            Some(out.field(i).name().clone())
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Distribution::Hash(cols))
}

/// The one table a plan reads and, per output column, the table column it
/// is unchanged (None: computed). None: not a plain read of one table.
fn lineage(plan: &LogicalPlan) -> Option<(String, Vec<Option<String>>)> {
    use datafusion::logical_expr::Expr;
    match plan {
        LogicalPlan::TableScan(s) => {
            let name = match &s.table_name {
                datafusion::common::TableReference::Bare { table } => table.to_string(),
                datafusion::common::TableReference::Partial { schema, table }
                | datafusion::common::TableReference::Full { schema, table, .. } => {
                    if schema.as_ref() == "public" {
                        table.to_string()
                    } else {
                        format!("{schema}.{table}")
                    }
                }
            };
            let cols = s
                .projected_schema
                .fields()
                .iter()
                .map(|f| Some(f.name().clone()))
                .collect();
            Some((name, cols))
        }
        LogicalPlan::Projection(p) => {
            let (t, inner) = lineage(&p.input)?;
            let cols = p
                .expr
                .iter()
                .map(|e| {
                    let mut e = e;
                    while let Expr::Alias(a) = e {
                        e = &a.expr;
                    }
                    match e {
                        Expr::Column(c) => p
                            .input
                            .schema()
                            .index_of_column(c)
                            .ok()
                            .and_then(|i| inner.get(i).cloned().flatten()),
                        _ => None,
                    }
                })
                .collect();
            Some((t, cols))
        }
        LogicalPlan::Filter(f) => lineage(&f.input),
        LogicalPlan::Sort(s) => lineage(&s.input),
        LogicalPlan::Limit(l) => lineage(&l.input),
        LogicalPlan::SubqueryAlias(a) => lineage(&a.input),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(sql: &str) -> Result<String, SqlError> {
        let p = dialect::parse_statements(&format!("DROP TABLE {sql}")).unwrap();
        let Statement::Drop { names, .. } = &p[0].statement else {
            panic!()
        };
        object_name(&names[0])
    }

    #[test]
    fn names_fold_and_keep_their_schema() {
        assert_eq!(name("T").unwrap(), "t");
        assert_eq!(name("public.T").unwrap(), "t");
        assert_eq!(name("S.t").unwrap(), "s.t");
        assert_eq!(name("\"S\".\"T\"").unwrap(), "S.T");
        assert!(matches!(
            name("a.b.c"),
            Err(SqlError::User {
                sqlstate: "42601",
                ..
            })
        ));
        assert_eq!(quoted("s.t"), "\"s\".\"t\"");
    }

    #[test]
    fn ours_and_select_into() {
        let one = |sql: &str| dialect::parse_statements(sql).unwrap().remove(0).statement;
        assert!(owns(&one("ALTER TABLE t ADD COLUMN c int")));
        assert!(owns(&one("CREATE SCHEMA s")));
        assert!(owns(&one("DROP SCHEMA s CASCADE")));
        assert!(!owns(&one("SELECT 1")));
        let s = one("SELECT a, b INTO t2 FROM t WHERE a > 1");
        let (temp, n, q) = select_into(&s).unwrap();
        assert!(!temp);
        assert_eq!(n.to_string(), "t2");
        assert_eq!(q.to_string(), "SELECT a, b FROM t WHERE a > 1");
        let p =
            dialect::parse_statements("CREATE TABLE t2 AS SELECT a FROM t WITH NO DATA").unwrap();
        assert!(p[0].no_data);
        let p = dialect::parse_statements("CREATE TABLE t2 AS SELECT a FROM t WITH DATA").unwrap();
        assert!(!p[0].no_data);
        let p = dialect::parse_statements("CREATE TABLE t2 AS SELECT a FROM t DISTRIBUTE ON (a)")
            .unwrap();
        assert_eq!(
            p[0].distribution,
            Some(dialect::Distribution::Hash(vec!["a".into()]))
        );
        let p = dialect::parse_statements(
            "CREATE TABLE t2 DISTRIBUTE ON RANDOM AS SELECT a FROM t WITH NO DATA",
        )
        .unwrap();
        assert!(p[0].no_data);
        assert_eq!(p[0].distribution, Some(dialect::Distribution::Random));
    }
}
