//! Row changes and maintenance: DELETE, UPDATE, TRUNCATE, GROOM TABLE, and
//! the online mirror check behind `slicedb verify`.
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
use serde::Serialize;
use slicedb_engine::proto::pb;
use slicedb_engine::SliceId;

use crate::coordinator::Coordinator;
use crate::load::Loader;
use crate::map::SliceState;
use crate::provider::{SliceTable, CURRENT_TXN, DML_SLICE};
use crate::txn::Txn;
use crate::{CoordinatorError, Result};

static DML_SEQ: AtomicU64 = AtomicU64::new(1);

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// One slice's verdict from `slicedb_verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyRow {
    pub table: String,
    pub slice: SliceId,
    pub primary_rows: Option<u64>,
    pub mirror_rows: Option<u64>,
    /// in_sync, diverged, degraded, unmirrored, or error: ...
    pub status: String,
}

impl Coordinator {
    /// Run `select` (a SELECT list) over the table's DML view at the
    /// transaction's snapshot.
    async fn dml_select(
        &self,
        txn: &Arc<Txn>,
        table: &str,
        alias: Option<&str>,
        select: &str,
        selection: Option<&str>,
    ) -> Result<Vec<RecordBatch>> {
        let meta = self.table(table)?;
        let ctx = self.session();
        let name = format!(
            "__slicedb_dml_{}_{}",
            txn.xid,
            DML_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        ctx.register_table(
            name.as_str(),
            Arc::new(SliceTable::for_dml(self.cluster().clone(), meta)),
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
        &self,
        txn: &Arc<Txn>,
        table: &str,
        batches: &[RecordBatch],
    ) -> Result<u64> {
        let meta = self.table(table)?;
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
        let cluster = self.cluster();
        let map = cluster.map();
        let snapshot = pb::Snapshot::from(&txn.snapshot);
        let mut deleted = 0;
        for (slice, rowids) in per_slice {
            let entry = map.slices().get(slice as usize).ok_or_else(|| {
                CoordinatorError::Catalog(format!("slice {slice} is not in the map"))
            })?;
            let (loc, from_mirror) = entry.serving()?;
            let segment = meta.segment_for(slice, from_mirror)?;
            let node = cluster.node(loc.node)?.clone();
            txn.note_request(node.id, &[]);
            let mut c = node.grpc.clone();
            let r = c
                .delete(pb::DeleteRequest {
                    epoch: cluster.map().epoch(),
                    xid: txn.xid,
                    table: meta.id,
                    slice,
                    segment: segment as i32,
                    rowids,
                    snapshot: Some(snapshot.clone()),
                })
                .await
                .map_err(|s| node.err(s))?
                .into_inner();
            txn.note_request_result(&r.degraded_slices);
            deleted += r.rows;
        }
        Ok(deleted)
    }

    /// DELETE FROM table [AS alias] [WHERE selection].
    pub async fn delete(
        &self,
        txn: &Arc<Txn>,
        table: &str,
        alias: Option<&str>,
        selection: Option<&str>,
    ) -> Result<u64> {
        let cols = format!(
            "{}, {}",
            quote(DML_SLICE),
            quote(slicedb_engine::HIDDEN_ROWID)
        );
        let batches = self.dml_select(txn, table, alias, &cols, selection).await?;
        self.delete_rows(txn, table, &batches).await
    }

    /// UPDATE table [AS alias] SET col = expr, ... [WHERE selection].
    /// `assignments` are (column, SQL expression) pairs.
    pub async fn update(
        &self,
        txn: &Arc<Txn>,
        table: &str,
        alias: Option<&str>,
        assignments: &[(String, String)],
        selection: Option<&str>,
    ) -> Result<u64> {
        let meta = self.table(table)?;
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
        let batches = self
            .dml_select(txn, table, alias, &select, selection)
            .await?;
        let n = self.delete_rows(txn, table, &batches).await?;
        let mut loader = Loader::in_txn(self.cluster().clone(), meta.clone(), txn.clone());
        for b in &batches {
            let cols: Vec<Arc<dyn Array>> = b.columns()[2..].to_vec();
            let fields: Vec<_> = b.schema().fields()[2..].to_vec();
            let batch =
                RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols)?;
            if let Err(e) = loader.push(batch).await {
                loader.abort().await;
                return Err(e);
            }
        }
        loader.finish().await?;
        Ok(n)
    }

    /// GROOM TABLE: rewrite blocks holding rows deleted before every open
    /// snapshot, on every node and both copies. Returns (blocks, rows).
    pub async fn groom(&self, table: &str) -> Result<(u64, u64)> {
        let meta = self.table(table)?;
        let cluster = self.cluster();
        let horizon = cluster.horizon();
        let epoch = cluster.map().epoch();
        let (mut blocks, mut rows) = (0, 0);
        for n in cluster.nodes().values() {
            let mut c = n.grpc.clone();
            let r = c
                .groom(pb::GroomRequest {
                    epoch,
                    table: meta.id,
                    horizon,
                })
                .await
                .map_err(|s| n.err(s))?
                .into_inner();
            blocks += r.blocks_rewritten;
            rows += r.rows_removed;
        }
        Ok((blocks, rows))
    }

    /// Compare the primary and mirror of every slice of every table at one
    /// snapshot: row count and checksum over (rowid, row contents).
    pub async fn verify(&self) -> Result<Vec<VerifyRow>> {
        verify(self.cluster()).await
    }
}

/// [`Coordinator::verify`], for the `slicedb_verify` view.
pub async fn verify(cluster: &crate::cluster::Cluster) -> Result<Vec<VerifyRow>> {
    {
        let snapshot = pb::Snapshot::from(&cluster.read_snapshot());
        let map = cluster.map();
        let epoch = map.epoch();
        let tables = cluster.catalog().lock().tables();
        let mut out = Vec::new();
        for t in tables {
            for e in map.slices() {
                let ask = |node: u32, segment: pb::Segment| {
                    let snapshot = snapshot.clone();
                    let table = t.id;
                    let slice = e.slice;
                    async move {
                        let map_epoch = epoch;
                        let n = cluster.node(node)?.clone();
                        let mut c = n.grpc.clone();
                        c.checksum(pb::ChecksumRequest {
                            epoch: map_epoch,
                            table,
                            slice,
                            segment: segment as i32,
                            snapshot: Some(snapshot),
                        })
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| n.err(s))
                    }
                };
                let p = match e.serving() {
                    Ok((loc, true)) => ask(loc.node, pb::Segment::Mirror).await,
                    Ok((loc, false)) => ask(loc.node, t.segment()).await,
                    Err(err) => Err(err),
                };
                let (m, status) = match (e.mirror().map(|c| c.at), e.state()) {
                    _ if !t.mirrored => (None, "unmirrored".to_string()),
                    (None, _) | (_, SliceState::PrimaryOnly) => (None, "unmirrored".to_string()),
                    (
                        Some(_),
                        s @ (SliceState::Degraded
                        | SliceState::FailedOver
                        | SliceState::Unprotected
                        | SliceState::Unavailable),
                    ) => (None, s.as_str().to_string()),
                    (Some(loc), SliceState::InSync) => {
                        let m = ask(loc.node, pb::Segment::Mirror).await;
                        let status = match (&p, &m) {
                            (Ok(a), Ok(b)) if a.rows == b.rows && a.checksum == b.checksum => {
                                "in_sync".to_string()
                            }
                            (Ok(_), Ok(_)) => "diverged".to_string(),
                            (Err(e), _) | (_, Err(e)) => format!("error: {e}"),
                        };
                        (m.ok(), status)
                    }
                };
                out.push(VerifyRow {
                    table: t.name.clone(),
                    slice: e.slice,
                    primary_rows: p.as_ref().ok().map(|r| r.rows),
                    mirror_rows: m.map(|r| r.rows),
                    status: match (&p, status.as_str()) {
                        (Err(e), s) if s != "in_sync" && s != "diverged" => format!("error: {e}"),
                        _ => status,
                    },
                });
            }
        }
        Ok(out)
    }
}
