//! INSERT into a slicedb table from DataFusion: the table's sink is a
//! loader, committed when the input ends (or written under the open
//! transaction block's xid). [`TableSinks`] is what the query path's
//! table is handed to reach it.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::datasource::sink::DataSink;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use futures::StreamExt;

use super::load::Loader;
use crate::catalog::TableMeta;
use crate::cluster::Cluster;
use crate::query::Inserts;
use crate::txn::Txn;

/// INSERT into a slicedb table: one loader, committed when the input ends.
struct SliceSink {
    cluster: Arc<Cluster>,
    meta: Arc<TableMeta>,
    /// The transaction block the INSERT runs in (None: autocommit).
    txn: Option<Arc<Txn>>,
}

impl fmt::Debug for SliceSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SliceSink")
            .field("table", &self.meta.name)
            .finish()
    }
}

impl DisplayAs for SliceSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SliceSink: table={}", self.meta.name)
    }
}

#[async_trait]
impl DataSink for SliceSink {
    fn schema(&self) -> &SchemaRef {
        &self.meta.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> DfResult<u64> {
        let mut loader = match &self.txn {
            Some(t) => Loader::in_txn(self.cluster.clone(), self.meta.clone(), t.clone()),
            None => Loader::new(self.cluster.clone(), self.meta.clone())?,
        };
        while let Some(batch) = data.next().await {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    loader.abort().await;
                    return Err(e);
                }
            };
            if let Err(e) = loader.push(batch).await {
                loader.abort().await;
                return Err(DataFusionError::from(e));
            }
        }
        Ok(loader.finish().await?)
    }
}

/// The write path's [`Inserts`]: every table's INSERT goes to a
/// [`SliceSink`] over this cluster.
pub struct TableSinks {
    cluster: Arc<Cluster>,
}

impl TableSinks {
    pub fn new(cluster: Arc<Cluster>) -> Arc<TableSinks> {
        Arc::new(TableSinks { cluster })
    }
}

impl Inserts for TableSinks {
    fn sink(&self, meta: Arc<TableMeta>, txn: Option<Arc<Txn>>) -> Arc<dyn DataSink> {
        Arc::new(SliceSink {
            cluster: self.cluster.clone(),
            meta,
            txn,
        })
    }
}
