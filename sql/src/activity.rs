//! `pg_stat_activity`, `pg_cancel_backend(pid)` and
//! `pg_terminate_backend(pid)` over the server's [`Sessions`].
//!
//! `pg_stat_activity` is read when a query is planned: one row per
//! connected session (pid, user, database, application, client address and
//! port, when it connected, its state, its statement and when that
//! started). The two functions answer `true` when the pid is connected
//! (like PostgreSQL) and then cancel its statement, or cancel it and close
//! its connection (`57P01` to that client). Anyone may call them: there are
//! no roles yet.
//!
//! It only reads and signals sessions; it never touches the coordinator.

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, AsArray, BooleanArray, Int32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use crate::sessions::Sessions;

/// Register `pg_stat_activity` (unqualified; the pg_catalog schema
/// answers it too, see [`crate::pgcatalog`]) and the two functions.
pub fn install(ctx: &SessionContext, sessions: &Arc<Sessions>) -> DfResult<()> {
    ctx.register_table(
        "pg_stat_activity",
        Arc::new(StatActivity::new(sessions.clone())),
    )?;
    for kind in [Signal::Cancel, Signal::Terminate] {
        ctx.register_udf(ScalarUDF::new_from_impl(SignalFn {
            kind,
            sessions: sessions.clone(),
            signature: Signature::uniform(1, vec![DataType::Int64], Volatility::Volatile),
        }));
    }
    Ok(())
}

/// `pg_stat_activity`.
#[derive(Debug)]
pub struct StatActivity {
    sessions: Arc<Sessions>,
    schema: SchemaRef,
}

impl StatActivity {
    pub fn new(sessions: Arc<Sessions>) -> Self {
        let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("datname", DataType::Utf8, true),
            Field::new("pid", DataType::Int32, false),
            Field::new("usename", DataType::Utf8, true),
            Field::new("application_name", DataType::Utf8, true),
            Field::new("client_addr", DataType::Utf8, true),
            Field::new("client_port", DataType::Int32, true),
            Field::new("backend_start", ts(), true),
            Field::new("query_start", ts(), true),
            Field::new("state", DataType::Utf8, true),
            Field::new("query", DataType::Utf8, true),
        ]));
        StatActivity { sessions, schema }
    }

    fn rows(&self) -> DfResult<RecordBatch> {
        let all = self.sessions.all();
        let acts: Vec<_> = all.iter().map(|s| s.activity()).collect();
        let micros = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64)
        };
        let text = |f: &dyn Fn(usize) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values((0..all.len()).map(f)))
        };
        let columns: Vec<ArrayRef> = vec![
            text(&|i| all[i].database.clone()),
            Arc::new(Int32Array::from_iter_values(all.iter().map(|s| s.pid))),
            text(&|i| all[i].user.clone()),
            text(&|i| all[i].application_name.clone()),
            text(&|i| all[i].client_addr.ip().to_string()),
            Arc::new(Int32Array::from_iter_values(
                all.iter().map(|s| i32::from(s.client_addr.port())),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    all.iter().map(|s| micros(s.backend_start)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from(
                    acts.iter()
                        .map(|a| a.query_start.map(micros))
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            text(&|i| acts[i].state.to_string()),
            text(&|i| acts[i].query.clone()),
        ];
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[async_trait]
impl TableProvider for StatActivity {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mem = MemTable::try_new(self.schema.clone(), vec![vec![self.rows()?]])?;
        mem.scan(state, projection, filters, limit).await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Signal {
    Cancel,
    Terminate,
}

/// `pg_cancel_backend(pid)` / `pg_terminate_backend(pid)`.
#[derive(Debug)]
struct SignalFn {
    kind: Signal,
    sessions: Arc<Sessions>,
    signature: Signature,
}

impl PartialEq for SignalFn {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}

impl Eq for SignalFn {}

impl std::hash::Hash for SignalFn {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
    }
}

impl ScalarUDFImpl for SignalFn {
    fn name(&self) -> &str {
        match self.kind {
            Signal::Cancel => "pg_cancel_backend",
            Signal::Terminate => "pg_terminate_backend",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let pids = args.args[0].to_array(args.number_rows)?;
        let pids = datafusion::arrow::compute::cast(&pids, &DataType::Int64)?;
        let pids = pids.as_primitive::<Int64Type>();
        let out: BooleanArray = pids
            .iter()
            .map(|pid| {
                let s = self.sessions.get(i32::try_from(pid?).ok()?)?;
                match self.kind {
                    Signal::Cancel => s.cancel(),
                    Signal::Terminate => s.terminate(),
                }
                Some(true)
            })
            .map(|found| Some(found.unwrap_or(false)))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}
