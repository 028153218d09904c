//! What slicedb adds to the pg_catalog emulation of datafusion-postgres.
//!
//! `pg_catalog.pg_stat_activity` (the sessions, [`crate::activity`]).
//!
//! `pg_size_pretty`, `pg_table_size` and `obj_description`, which psql's
//! `\dt+` calls (the emulation has none of them). slicedb's pg_class keeps
//! no sizes, so `pg_table_size` is NULL (unknown; `slicedb_table_slices.bytes`
//! has them), and there is no COMMENT ON, so `obj_description` is NULL.
//!
//! `pg_catalog.pg_class` with slicedb's persistence: psql's `\d` and
//! `\dt+` read `relpersistence`, which datafusion-postgres always reports as
//! `p`. Here a mirrored table is `p` (permanent), an unmirrored one
//! (`WITH (mirrored = false)`) is `u`, which psql prints as "Unlogged
//! table" (like PostgreSQL's unlogged tables, its rows have no second copy),
//! and a temporary table is `t`.
//!
//! It wraps the `pg_catalog` schema that datafusion-postgres installs and
//! changes nothing but that column. Tables that list relations (`pg_class`,
//! `pg_attribute`, `pg_tables`) are read when the query is planned, on the
//! statement's task, where the session is known: so `\d` also describes the
//! session's temporary tables. It never touches nodes: it only reads the
//! coordinator's catalog, as the current session sees it.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::physical_plan::ExecutionPlan;
use slicedb_coordinator::Coordinator;

/// Replace the context's `pg_catalog` schema with one whose `pg_class`
/// reports persistence. Call after datafusion-postgres set it up.
pub fn install(
    ctx: &SessionContext,
    coord: Arc<Coordinator>,
    sessions: &Arc<crate::sessions::Sessions>,
) -> DfResult<()> {
    let catalog = ctx
        .catalog("datafusion")
        .ok_or_else(|| DataFusionError::Plan("no default catalog".into()))?;
    let inner = catalog
        .schema("pg_catalog")
        .ok_or_else(|| DataFusionError::Plan("pg_catalog is not installed".into()))?;
    catalog.register_schema(
        "pg_catalog",
        Arc::new(PgCatalog {
            inner,
            coord,
            sessions: sessions.clone(),
        }),
    )?;
    crate::activity::install(ctx, sessions)?;
    ctx.register_udf(ScalarUDF::new_from_impl(SizePretty::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(NullFn::new(
        "pg_table_size",
        DataType::Int64,
        &[1],
    )));
    ctx.register_udf(ScalarUDF::new_from_impl(NullFn::new(
        "obj_description",
        DataType::Utf8,
        &[1, 2],
    )));
    Ok(())
}

/// PostgreSQL's `pg_size_pretty(bigint)`: bytes, kB, MB, GB, TB or PB, the
/// unit chosen and the value rounded exactly as PostgreSQL 15 does.
pub fn size_pretty(mut size: i64) -> String {
    // (name, limit, half-rounded, bits)
    const UNITS: [(&str, i64, bool, u32); 6] = [
        ("bytes", 10 * 1024, false, 0),
        ("kB", 20 * 1024 - 1, true, 10),
        ("MB", 20 * 1024 - 1, true, 20),
        ("GB", 20 * 1024 - 1, true, 30),
        ("TB", 20 * 1024 - 1, true, 40),
        ("PB", 20 * 1024 - 1, true, 50),
    ];
    for (i, &(name, limit, round, bits)) in UNITS.iter().enumerate() {
        if i + 1 == UNITS.len() || size.abs() < limit {
            if round {
                size = (size + if size < 0 { -1 } else { 1 }) / 2;
            }
            return format!("{size} {name}");
        }
        let next = UNITS[i + 1];
        let shift = next.3 - bits - u32::from(next.2) + u32::from(round);
        size /= 1i64 << shift;
    }
    unreachable!("the last unit always matches")
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SizePretty {
    signature: Signature,
}

impl SizePretty {
    fn new() -> Self {
        SizePretty {
            signature: Signature::numeric(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for SizePretty {
    fn name(&self) -> &str {
        "pg_size_pretty"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let sizes = cast(&arrays[0], &DataType::Int64)?;
        let sizes = sizes.as_primitive::<Int64Type>();
        let out: StringArray = sizes.iter().map(|v| v.map(size_pretty)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// A catalog function slicedb has no value for: NULL, as PostgreSQL
/// answers for an object without one. `pg_table_size(regclass)`: sizes are
/// not known to the catalog; `obj_description(oid[, catalog])`: slicedb has
/// no COMMENT ON, so nothing has a description.
#[derive(Debug, PartialEq, Eq, Hash)]
struct NullFn {
    name: &'static str,
    ret: DataType,
    signature: Signature,
}

impl NullFn {
    fn new(name: &'static str, ret: DataType, arities: &[usize]) -> Self {
        let sigs = arities.iter().map(|n| TypeSignature::Any(*n)).collect();
        NullFn {
            name,
            ret,
            signature: Signature::one_of(sigs, Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for NullFn {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(self.ret.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Array(new_null_array(
            &self.ret,
            args.number_rows,
        )))
    }
}

struct PgCatalog {
    inner: Arc<dyn SchemaProvider>,
    coord: Arc<Coordinator>,
    sessions: Arc<crate::sessions::Sessions>,
}

impl std::fmt::Debug for PgCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCatalog").finish_non_exhaustive()
    }
}

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        names.push("pg_stat_activity".to_string());
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if name == "pg_stat_activity" {
            return Ok(Some(Arc::new(crate::activity::StatActivity::new(
                self.sessions.clone(),
            ))));
        }
        let t = self.inner.table(name).await?;
        Ok(match t {
            Some(inner) if matches!(name, "pg_class" | "pg_attribute" | "pg_tables") => {
                Some(Arc::new(PgClass {
                    inner,
                    coord: self.coord.clone(),
                }))
            }
            other => other,
        })
    }

    fn table_exist(&self, name: &str) -> bool {
        name == "pg_stat_activity" || self.inner.table_exist(name)
    }
}

/// A relation-listing table, read at planning time; pg_class rewritten.
struct PgClass {
    inner: Arc<dyn TableProvider>,
    coord: Arc<Coordinator>,
}

impl std::fmt::Debug for PgClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgClass").finish_non_exhaustive()
    }
}

impl PgClass {
    /// `relpersistence` of a relation named `relname`, if it is a slicedb
    /// table the current session sees.
    fn persistence(&self, relname: &str) -> Option<&'static str> {
        let t = self.coord.table(relname).ok()?;
        Some(if t.session.is_some() {
            "t"
        } else if t.mirrored {
            "p"
        } else {
            "u"
        })
    }

    /// pg_class: our `relpersistence`. Other tables pass unchanged.
    fn rewrite(&self, b: RecordBatch) -> DfResult<RecordBatch> {
        let schema = b.schema();
        let (Ok(name_idx), Ok(pers_idx), Ok(kind_idx)) = (
            schema.index_of("relname"),
            schema.index_of("relpersistence"),
            schema.index_of("relkind"),
        ) else {
            return Ok(b);
        };
        let names = b.column(name_idx).as_string_opt::<i32>();
        let pers = b.column(pers_idx).as_string_opt::<i32>();
        let kinds = b.column(kind_idx).as_string_opt::<i32>();
        let (Some(names), Some(pers), Some(kinds)) = (names, pers, kinds) else {
            return Ok(b);
        };
        let out: StringArray = (0..b.num_rows())
            .map(|i| {
                let ours = (kinds.is_valid(i) && kinds.value(i) == "r" && names.is_valid(i))
                    .then(|| self.persistence(names.value(i)))
                    .flatten();
                match ours {
                    Some(p) => Some(p),
                    None => pers.is_valid(i).then(|| pers.value(i)),
                }
            })
            .collect();
        let mut cols: Vec<ArrayRef> = b.columns().to_vec();
        cols[pers_idx] = Arc::new(out);
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

#[async_trait]
impl TableProvider for PgClass {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        // Small tables: read now, on this task, where the current session
        // (and so its temporary tables) is known.
        let plan = self.inner.scan(state, None, &[], None).await?;
        let batches = datafusion::physical_plan::collect(plan, state.task_ctx()).await?;
        let batches = batches
            .into_iter()
            .map(|b| self.rewrite(b))
            .collect::<DfResult<Vec<_>>>()?;
        let mem = MemTable::try_new(self.schema(), vec![batches])?;
        mem.scan(state, projection, &[], limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::size_pretty;

    #[test]
    fn sizes_print_like_postgres() {
        // Values and answers from PostgreSQL 15's pg_size_pretty.
        for (v, want) in [
            (0, "0 bytes"),
            (10239, "10239 bytes"),
            (10240, "10 kB"),
            (-10240, "-10 kB"),
            (20479 * 1024, "20 MB"),
            (20 * 1024 * 1024 - 1, "20 MB"),
            (20479 * 512, "10 MB"),
            (20480 * 1024, "20 MB"),
            (1_000_000_000, "954 MB"),
            (1_073_741_824, "1024 MB"),
            (10_000_000_000, "9537 MB"),
            (100_000_000_000, "93 GB"),
            (i64::MAX, "8192 PB"),
        ] {
            assert_eq!(size_pretty(v), want, "pg_size_pretty({v})");
        }
    }
}
