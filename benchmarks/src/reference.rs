//! The reference engine: DataFusion in-process over the generated batches.
//!
//! Owns a `SessionContext` with one `MemTable` per TPC-H table, holding the
//! very record batches that were loaded into slicedb, spread round-robin over
//! `target_partitions` partitions (the number of cores by default), and runs
//! query texts on it. Its answers are the expected ones; its times are the
//! in-process baseline.

use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::gen::TpchData;

/// DataFusion over in-memory tables.
pub struct Reference {
    ctx: SessionContext,
}

impl Reference {
    /// Register the eight tables of `data`.
    pub fn new(data: &TpchData, target_partitions: usize) -> Result<Reference> {
        let parts = target_partitions.max(1);
        let config = SessionConfig::new().with_target_partitions(parts);
        let ctx = SessionContext::new_with_config(config);
        for t in &data.tables {
            let mut partitions: Vec<Vec<RecordBatch>> = vec![Vec::new(); parts];
            for (i, b) in t.batches.iter().enumerate() {
                partitions[i % parts].push(b.clone());
            }
            let table = MemTable::try_new(Arc::clone(&t.schema), partitions)
                .with_context(|| format!("MemTable for {}", t.table.name()))?;
            ctx.register_table(t.table.name(), Arc::new(table))?;
        }
        Ok(Reference { ctx })
    }

    /// Plan and run `sql`; the result schema and batches.
    pub async fn run(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let df = self.ctx.sql(sql).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
        Ok((schema, batches))
    }
}
