//! Row changes: DELETE and UPDATE (TRUNCATE is a DELETE of every row).
//!
//! DELETE and UPDATE find their rows with an ordinary DataFusion query over
//! the table's DML view (user columns + `_slice` + `_rowid`) at the
//! transaction's snapshot, then send the rowids to each slice's primary as
//! delete records (the primary checks write-write conflicts and forwards them
//! to the mirror). UPDATE re-inserts the new row versions through a loader in
//! the same transaction, so an update of the distribution key moves the row.
//! This module never touches a disk image and never decides placement.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, UInt32Type};
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

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Run `select` (a SELECT list) over the table's DML view at the
/// transaction's snapshot.
async fn dml_select(
    cluster: &Arc<Cluster>,
    ctx: &SessionContext,
    txn: &Arc<Txn>,
    meta: &Arc<TableMeta>,
    alias: Option<&str>,
    select: &str,
    selection: Option<&str>,
) -> Result<Vec<RecordBatch>> {
    let table = meta.name.as_str();
    let name = format!(
        "__slicedb_dml_{}_{}",
        txn.xid,
        DML_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    ctx.register_table(
        name.as_str(),
        Arc::new(SliceTable::for_dml(cluster.clone(), meta.clone())),
    )?;
    let mut sql = format!(
        "SELECT {select} FROM {name} AS {}",
        quote(alias.unwrap_or(table))
    );
    if let Some(w) = selection {
        sql.push_str(" WHERE ");
        sql.push_str(w);
    }
    let res = CURRENT_TXN
        .scope(txn.clone(), async {
            let df = ctx.sql(&sql).await?;
            df.collect().await
        })
        .await;
    let _ = ctx.deregister_table(name.as_str());
    Ok(res?)
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

/// DELETE FROM table [AS alias] [WHERE selection].
pub async fn delete(
    cluster: &Arc<Cluster>,
    ctx: &SessionContext,
    txn: &Arc<Txn>,
    meta: &Arc<TableMeta>,
    alias: Option<&str>,
    selection: Option<&str>,
) -> Result<u64> {
    let cols = format!(
        "{}, {}",
        quote(DML_SLICE),
        quote(slicedb_engine::HIDDEN_ROWID)
    );
    let batches = dml_select(cluster, ctx, txn, meta, alias, &cols, selection).await?;
    delete_rows(cluster, txn, meta, &batches).await
}

/// UPDATE table [AS alias] SET col = expr, ... [WHERE selection].
/// `assignments` are (column, SQL expression) pairs.
pub async fn update(
    cluster: &Arc<Cluster>,
    ctx: &SessionContext,
    txn: &Arc<Txn>,
    meta: &Arc<TableMeta>,
    alias: Option<&str>,
    assignments: &[(String, String)],
    selection: Option<&str>,
) -> Result<u64> {
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
    let q = alias.unwrap_or(table);
    let mut select = format!(
        "{}, {}",
        quote(DML_SLICE),
        quote(slicedb_engine::HIDDEN_ROWID)
    );
    for f in meta.schema.fields() {
        let expr = assignments
            .iter()
            .find(|(c, _)| c == f.name())
            .map(|(_, e)| format!("({e})"))
            .unwrap_or_else(|| format!("{}.{}", quote(q), quote(f.name())));
        select.push_str(&format!(", {expr} AS {}", quote(f.name())));
    }
    let batches = dml_select(cluster, ctx, txn, meta, alias, &select, selection).await?;
    let n = delete_rows(cluster, txn, meta, &batches).await?;
    let mut loader = Loader::in_txn(cluster.clone(), meta.clone(), txn.clone());
    for b in &batches {
        let cols: Vec<Arc<dyn Array>> = b.columns()[2..].to_vec();
        let fields: Vec<_> = b.schema().fields()[2..].to_vec();
        let batch = RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols)?;
        if let Err(e) = loader.push(batch).await {
            loader.abort().await;
            return Err(e);
        }
    }
    loader.finish().await?;
    Ok(n)
}
