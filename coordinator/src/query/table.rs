//! A slicedb table inside DataFusion.
//!
//! [`SliceTable`] is the `TableProvider`: its scan is a broadcast (see
//! [`super::broadcast`]) and its insert hands the rows to the write path's
//! sink, which the table was given when it was registered ([`Inserts`]):
//! the query path itself never writes. Its DML view adds `_slice` and
//! `_rowid` after the user columns, for UPDATE and DELETE.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use slicedb_engine::proto::pb;
use slicedb_engine::SliceId;

use super::broadcast::BroadcastScanExec;
use super::filter::to_predicate;
use super::node_scan::{plan_parts, DmlShape};
use crate::catalog::TableMeta;
use crate::cluster::Cluster;
use crate::roles::Privilege;
use crate::txn::current_txn;
use crate::txn::Txn;
use crate::CoordinatorError;

/// Name of the slice column of a DML scan.
pub const DML_SLICE: &str = "_slice";

/// A distributed table.
/// Where INSERT sends a table's rows: the write path's sink
/// (`crate::write::TableSinks`), handed to each table at registration so
/// that the query path never imports the write path.
pub trait Inserts: Send + Sync {
    /// A sink for rows inserted into `meta`, written under `txn` (the open
    /// transaction block) or as their own transaction.
    fn sink(&self, meta: Arc<TableMeta>, txn: Option<Arc<Txn>>) -> Arc<dyn DataSink>;
}

pub struct SliceTable {
    cluster: Arc<Cluster>,
    /// None for a DML view, which is only read.
    inserts: Option<Arc<dyn Inserts>>,
    meta: Arc<TableMeta>,
    /// A DML scan: the schema gains `_slice` and `_rowid` after the user
    /// columns, so UPDATE and DELETE know which rows of which slice to delete.
    dml: Option<SchemaRef>,
    /// Columns added with a DEFAULT (ALTER TABLE): what an INSERT that
    /// omits them writes.
    defaults: Vec<(String, Expr)>,
}

/// The defaults of a table's columns (ADD COLUMN ... DEFAULT), as DataFusion
/// expressions.
fn column_defaults(meta: &TableMeta) -> Vec<(String, Expr)> {
    meta.columns
        .iter()
        .filter(|c| !c.dropped)
        .filter_map(|c| {
            let text = c.default.as_ref()?;
            let dt = meta.schema.field_with_name(&c.name).ok()?.data_type();
            let v = datafusion::common::ScalarValue::try_from_string(text.clone(), dt).ok()?;
            Some((c.name.clone(), datafusion::logical_expr::lit(v)))
        })
        .collect()
}

impl fmt::Debug for SliceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SliceTable")
            .field("table", &self.meta.name)
            .finish()
    }
}

impl SliceTable {
    pub fn new(cluster: Arc<Cluster>, meta: Arc<TableMeta>, inserts: Arc<dyn Inserts>) -> Self {
        SliceTable {
            cluster,
            inserts: Some(inserts),
            defaults: column_defaults(&meta),
            meta,
            dml: None,
        }
    }

    /// The table as UPDATE and DELETE scan it: user columns, `_slice`, `_rowid`.
    /// A table hash distributed on one column: that column's name and type,
    /// and whether the table is mirrored (its slices in the primary
    /// segments) or not (the temp segments). None for a DML scan.
    pub(crate) fn distribution(&self) -> Option<(String, DataType, bool)> {
        if self.dml.is_some() {
            return None;
        }
        match (&self.meta.distribution, self.meta.key.as_slice()) {
            (crate::Distribution::Hash(_), [k]) => {
                let f = self.meta.schema.fields().get(*k)?;
                Some((f.name().clone(), f.data_type().clone(), self.meta.mirrored))
            }
            _ => None,
        }
    }

    pub fn for_dml(cluster: Arc<Cluster>, meta: Arc<TableMeta>) -> Self {
        let mut fields: Vec<_> = meta.schema.fields().iter().cloned().collect();
        fields.push(Arc::new(arrow::datatypes::Field::new(
            DML_SLICE,
            arrow::datatypes::DataType::UInt32,
            false,
        )));
        fields.push(Arc::new(arrow::datatypes::Field::new(
            slicedb_engine::HIDDEN_ROWID,
            arrow::datatypes::DataType::Int64,
            false,
        )));
        let dml = Some(Arc::new(arrow::datatypes::Schema::new(fields)));
        SliceTable {
            cluster,
            inserts: None,
            meta,
            dml,
            defaults: Vec::new(),
        }
    }
}

#[async_trait]
impl TableProvider for SliceTable {
    fn schema(&self) -> SchemaRef {
        self.dml.clone().unwrap_or_else(|| self.meta.schema.clone())
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.defaults
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, e)| e)
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match to_predicate(f, &self.meta.schema) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // A transaction block whose writes were on a node failed since:
        // carry them over first, so this scan sees them where the new map
        // serves their slices.
        // A DML view is read for its statement, whose own privilege the
        // statement checked (UPDATE, DELETE); any other read is a SELECT.
        if self.dml.is_none() {
            crate::privileges::check(
                &self.cluster.catalog().lock(),
                &self.meta,
                Privilege::Select,
            )?;
        }
        let txn = current_txn();
        if let Some(t) = &txn {
            for node in t.participants() {
                if self.cluster.is_down(node) {
                    self.cluster.carry_over(t, node).await?;
                }
            }
        }
        let map = self.cluster.map();
        let schema = match projection {
            Some(p) => Arc::new(self.schema().project(p)?),
            None => self.schema(),
        };
        let snapshot = txn
            .as_ref()
            .map(|t| t.snapshot.clone())
            .unwrap_or_else(|| self.cluster.read_snapshot());
        let dml = self.dml.as_ref().map(|_| DmlShape {
            nuser: self.meta.schema.fields().len(),
            projection: projection.cloned(),
        });
        // A DML scan reads every user column plus the hidden ones and
        // projects at the coordinator.
        let projection = if dml.is_some() { None } else { projection };
        let predicates: Vec<pb::Predicate> = filters
            .iter()
            .filter_map(|f| to_predicate(f, &self.meta.schema))
            .map(|p| pb::Predicate::from(&p))
            .collect();
        let base = pb::ScanRequest {
            epoch: map.epoch(),
            table: self.meta.id,
            slices: Vec::new(),
            projection: projection
                .map(|p| p.iter().map(|&i| i as u32).collect())
                .unwrap_or_default(),
            all_columns: projection.is_none(),
            filters: predicates.clone(),
            include_hidden: dml.is_some(),
            snapshot: Some(pb::Snapshot::from(&snapshot)),
            fragment: Vec::new(),
            inputs: Vec::new(),
            broadcast: Vec::new(),
        };
        let all: Vec<SliceId> = map.slices().iter().map(|e| e.slice).collect();
        let parts = plan_parts(&self.cluster, &self.meta, &map, &all, &base)?;
        Ok(Arc::new(
            BroadcastScanExec::new(
                self.cluster.clone(),
                self.meta.clone(),
                schema,
                parts,
                predicates.len(),
                dml,
                base,
            )
            .in_txn(txn),
        ))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(CoordinatorError::NotSupported(format!(
                "{insert_op} into a slicedb table"
            ))
            .into());
        }
        crate::privileges::check(
            &self.cluster.catalog().lock(),
            &self.meta,
            Privilege::Insert,
        )?;
        let Some(inserts) = &self.inserts else {
            return Err(CoordinatorError::NotSupported(format!(
                "INSERT into the DML view of {}",
                self.meta.name
            ))
            .into());
        };
        Ok(Arc::new(DataSinkExec::new(
            input,
            inserts.sink(self.meta.clone(), current_txn()),
            None,
        )))
    }
}
