//! Row changes: DELETE and UPDATE (TRUNCATE is a DELETE of every row),
//! with PostgreSQL's joins (`UPDATE ... FROM`, `DELETE ... USING`) and
//! `RETURNING`.
//!
//! DELETE and UPDATE find their rows with an ordinary DataFusion query over
//! the table's DML view (user columns + `_slice` + `_rowid`) at the
//! transaction's snapshot, joined to the FROM / USING tables when there are
//! any, then send the rowids to each slice's primary as delete records (the
//! primary checks write-write conflicts and forwards them to the mirror).
//! A target row the join matches several times is changed once, with its
//! first match (PostgreSQL's rule). UPDATE re-inserts the new row versions
//! through a loader in the same transaction, so an update of the
//! distribution key moves the row. RETURNING's items are computed by the
//! same query, on the rows it changes.
//! This module never touches a disk image and never decides placement.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Int64Type, SchemaRef, UInt32Type};
use slicedb_engine::proto::pb;
use slicedb_engine::SliceId;

use datafusion::prelude::SessionContext;

use super::load::Loader;
use crate::catalog::TableMeta;
use crate::cluster::Cluster;
use crate::query::{SliceTable, DML_SLICE};
use crate::txn::{Txn, CURRENT_TXN};
use crate::{CoordinatorError, Result};

static DML_SEQ: AtomicU64 = AtomicU64::new(1);

pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// What an UPDATE or DELETE says besides its target and its assignments,
/// as SQL text the caller has checked.
#[derive(Debug, Default, Clone)]
pub struct DmlQuery {
    /// The target's alias (None: its name).
    pub alias: Option<String>,
    /// UPDATE's FROM or DELETE's USING list: joined to the target.
    pub from: Option<String>,
    /// The WHERE condition.
    pub selection: Option<String>,
    /// RETURNING's items (select items, each aliased by the caller), over
    /// the changed rows. For UPDATE the caller writes the new values in
    /// place of the target's columns.
    pub returning: Vec<String>,
}

/// What a row change did.
#[derive(Debug)]
pub struct DmlOutcome {
    /// Rows changed (deleted, updated or inserted).
    pub rows: u64,
    /// RETURNING's rows, one per changed row, and their schema (None: the
    /// statement returns nothing).
    pub returned: Option<(SchemaRef, Vec<RecordBatch>)>,
}

impl DmlOutcome {
    fn new(rows: u64, returned: Option<(SchemaRef, Vec<RecordBatch>)>) -> DmlOutcome {
        DmlOutcome { rows, returned }
    }
}

/// Run `sql` (which reads the table registered as `name`) at the
/// transaction's snapshot. Returns its schema and batches.
pub(crate) async fn select_in_txn(
    ctx: &SessionContext,
    txn: &Arc<Txn>,
    sql: &str,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let res = CURRENT_TXN
        .scope(txn.clone(), async {
            let df = ctx.sql(sql).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            Ok::<_, datafusion::error::DataFusionError>((schema, df.collect().await?))
        })
        .await;
    Ok(res?)
}

/// A table name no user writes, unique in the process.
pub(crate) fn scratch_name(kind: &str, txn: &Txn) -> String {
    format!(
        "__slicedb_{kind}_{}_{}",
        txn.xid,
        DML_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Run `select` (a SELECT list) over the table's DML view joined to
/// `q.from`, at the transaction's snapshot. A target row is kept once, with
/// its first match.
async fn dml_select(
    cluster: &Arc<Cluster>,
    ctx: &SessionContext,
    txn: &Arc<Txn>,
    meta: &Arc<TableMeta>,
    q: &DmlQuery,
    select: &str,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let table = meta.name.as_str();
    let name = scratch_name("dml", txn);
    ctx.register_table(
        name.as_str(),
        Arc::new(SliceTable::for_dml(cluster.clone(), meta.clone())),
    )?;
    let mut sql = format!(
        "SELECT {select} FROM {name} AS {}",
        quote(q.alias.as_deref().unwrap_or(table))
    );
    if let Some(from) = &q.from {
        sql.push_str(", ");
        sql.push_str(from);
    }
    if let Some(w) = &q.selection {
        sql.push_str(" WHERE ");
        sql.push_str(w);
    }
    let res = select_in_txn(ctx, txn, &sql).await;
    let _ = ctx.deregister_table(name.as_str());
    let (schema, batches) = res?;
    if q.from.is_none() {
        // Without a join every target row appears once.
        return Ok((schema, batches));
    }
    Ok((schema, first_match(batches)?))
}

/// `batches` (columns `_slice`, `_rowid` first) with each (slice, rowid)
/// kept once, at its first row.
fn first_match(batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    let mut seen: HashSet<(u32, i64)> = HashSet::new();
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let slices = b.column(0).as_primitive::<UInt32Type>();
        let rowids = b.column(1).as_primitive::<Int64Type>();
        let keep: BooleanArray = (0..b.num_rows())
            .map(|i| Some(seen.insert((slices.value(i), rowids.value(i)))))
            .collect();
        if keep.true_count() == b.num_rows() {
            out.push(b);
        } else if keep.true_count() > 0 {
            out.push(filter_record_batch(&b, &keep)?);
        }
    }
    Ok(out)
}

/// Send delete records for the (slice, rowid) pairs in `batches`
/// (columns `_slice`, `_rowid` first). Returns rows deleted.
async fn delete_rows(
    cluster: &Arc<Cluster>,
    txn: &Arc<Txn>,
    meta: &TableMeta,
    batches: &[RecordBatch],
) -> Result<u64> {
    let mut per_slice: BTreeMap<SliceId, Vec<i64>> = BTreeMap::new();
    for b in batches {
        let slices = b.column(0).as_primitive::<UInt32Type>();
        let rowids = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            per_slice
                .entry(slices.value(i))
                .or_default()
                .push(rowids.value(i));
        }
    }
    let snapshot = pb::Snapshot::from(&txn.snapshot);
    let mut deleted = 0;
    for (slice, rowids) in per_slice {
        let payload = super::send::Payload::Delete {
            rowids,
            snapshot: snapshot.clone(),
        };
        deleted += super::send::send(cluster, txn, meta, slice, &payload).await?;
    }
    Ok(deleted)
}

/// The columns `from..` of `batches` (RETURNING's), or None when the
/// statement returns nothing.
fn returned(
    q: &DmlQuery,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    from: usize,
) -> Result<Option<(SchemaRef, Vec<RecordBatch>)>> {
    if q.returning.is_empty() {
        return Ok(None);
    }
    let cols: Vec<usize> = (from..schema.fields().len()).collect();
    let out_schema = Arc::new(schema.project(&cols)?);
    let out = batches
        .iter()
        .map(|b| b.project(&cols))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Some((out_schema, out)))
}

/// The `_slice, _rowid` prefix of every DML select.
fn rowid_columns() -> String {
    format!(
        "{}, {}",
        quote(DML_SLICE),
        quote(slicedb_engine::HIDDEN_ROWID)
    )
}

fn with_returning(mut select: String, q: &DmlQuery) -> String {
    for r in &q.returning {
        select.push_str(", ");
        select.push_str(r);
    }
    select
}

/// DELETE FROM table [AS alias] [USING ...] [WHERE ...] [RETURNING ...].
pub async fn delete(
    cluster: &Arc<Cluster>,
    ctx: &SessionContext,
    txn: &Arc<Txn>,
    meta: &Arc<TableMeta>,
    q: &DmlQuery,
) -> Result<DmlOutcome> {
    let select = with_returning(rowid_columns(), q);
    let (schema, batches) = dml_select(cluster, ctx, txn, meta, q, &select).await?;
    let n = delete_rows(cluster, txn, meta, &batches).await?;
    Ok(DmlOutcome::new(n, returned(q, &schema, &batches, 2)?))
}

/// UPDATE table [AS alias] SET col = expr, ... [FROM ...] [WHERE ...]
/// [RETURNING ...]. `assignments` are (column, SQL expression) pairs.
pub async fn update(
    cluster: &Arc<Cluster>,
    ctx: &SessionContext,
    txn: &Arc<Txn>,
    meta: &Arc<TableMeta>,
    assignments: &[(String, String)],
    q: &DmlQuery,
) -> Result<DmlOutcome> {
    let table = meta.name.as_str();
    for (c, _) in assignments {
        if meta.schema.index_of(c).is_err() {
            return Err(CoordinatorError::DataFusion(
                datafusion::error::DataFusionError::Plan(format!(
                    "column \"{c}\" of relation \"{table}\" does not exist"
                )),
            ));
        }
    }
    let target = q.alias.as_deref().unwrap_or(table);
    let mut select = rowid_columns();
    for f in meta.schema.fields() {
        let expr = assignments
            .iter()
            .find(|(c, _)| c == f.name())
            .map(|(_, e)| format!("({e})"))
            .unwrap_or_else(|| format!("{}.{}", quote(target), quote(f.name())));
        select.push_str(&format!(", {expr} AS {}", quote(f.name())));
    }
    let select = with_returning(select, q);
    let (schema, batches) = dml_select(cluster, ctx, txn, meta, q, &select).await?;
    let n = delete_rows(cluster, txn, meta, &batches).await?;
    let ncols = meta.schema.fields().len();
    let mut loader = Loader::in_txn(cluster.clone(), meta.clone(), txn.clone());
    let new_cols: Vec<usize> = (2..2 + ncols).collect();
    for b in &batches {
        let batch = b.project(&new_cols)?;
        if let Err(e) = loader.push(batch).await {
            loader.abort().await;
            return Err(e);
        }
    }
    loader.finish().await?;
    Ok(DmlOutcome::new(
        n,
        returned(q, &schema, &batches, 2 + ncols)?,
    ))
}

/// INSERT INTO table ... RETURNING: `insert` (the INSERT without its
/// RETURNING) planned by DataFusion gives the rows in the table's columns
/// (defaults and casts applied); they are loaded in `txn`, and `returning`
/// (select items) is computed over them, the table named `alias`.
pub async fn insert_returning(
    cluster: &Arc<Cluster>,
    ctx: &SessionContext,
    txn: &Arc<Txn>,
    meta: &Arc<TableMeta>,
    insert: &str,
    alias: &str,
    returning: &[String],
) -> Result<DmlOutcome> {
    use datafusion::datasource::MemTable;
    use datafusion::logical_expr::LogicalPlan;
    let rows = CURRENT_TXN
        .scope(txn.clone(), async {
            let plan = ctx.state().create_logical_plan(insert).await?;
            let LogicalPlan::Dml(dml) = plan else {
                return Err(datafusion::error::DataFusionError::Plan(format!(
                    "INSERT planned as {}",
                    plan.display()
                )));
            };
            let df = datafusion::dataframe::DataFrame::new(ctx.state(), (*dml.input).clone());
            df.collect().await
        })
        .await?;
    let mut loader = Loader::in_txn(cluster.clone(), meta.clone(), txn.clone());
    let mut stored = Vec::with_capacity(rows.len());
    for b in rows {
        // The loader checks the rows against the table first.
        if let Err(e) = loader.push(b.clone()).await {
            loader.abort().await;
            return Err(e);
        }
        // The rows as stored: the table's column names and types.
        let cols = b
            .columns()
            .iter()
            .zip(meta.schema.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<std::result::Result<Vec<_>, _>>();
        match cols.and_then(|cols| RecordBatch::try_new(meta.schema.clone(), cols)) {
            Ok(b) => stored.push(b),
            Err(e) => {
                loader.abort().await;
                return Err(e.into());
            }
        }
    }
    let n = loader.finish().await?;
    let name = scratch_name("returning", txn);
    ctx.register_table(
        name.as_str(),
        Arc::new(MemTable::try_new(meta.schema.clone(), vec![stored])?),
    )?;
    let sql = format!(
        "SELECT {} FROM {name} AS {}",
        returning.join(", "),
        quote(alias)
    );
    let res = select_in_txn(ctx, txn, &sql).await;
    let _ = ctx.deregister_table(name.as_str());
    Ok(DmlOutcome::new(n, Some(res?)))
}
