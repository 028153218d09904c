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
//! `pg_catalog.pg_database` shows the database the client named when it
//! connected (slicedb has one database, which answers to every name), and
//! `pg_catalog.pg_settings` the session's settings (`crate::settings`);
//! `current_database()` and `current_setting()` answer the same, and
//! `version()` names PostgreSQL's release and slicedb's
//! (`crate::version::version`), as drivers parse it.
//!
//! It wraps the `pg_catalog` schema that datafusion-postgres installs and
//! changes nothing but those. Tables that list relations (`pg_class`,
//! `pg_attribute`, `pg_tables`) are read when the query is planned, on the
//! statement's task, where the session is known: so `\d` also describes the
//! session's temporary tables. It never touches nodes: it only reads the
//! coordinator's catalog, as the current session sees it.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, Int32Array, ListBuilder, RecordBatch, StringArray,
    StringBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef};
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
    ctx.register_udf(ScalarUDF::new_from_impl(ConnFn::new(
        "version",
        &[0],
        |_, _| Ok(Some(crate::version::version())),
    )));
    ctx.register_udf(ScalarUDF::new_from_impl(ConnFn::new(
        "current_database",
        &[0],
        |conn, _| {
            Ok(Some(
                conn.map_or(crate::conn::DEFAULT_DATABASE.to_string(), |c| {
                    c.database.clone()
                }),
            ))
        },
    )));
    ctx.register_udf(ScalarUDF::new_from_impl(ConnFn::new(
        "session_user",
        &[0],
        |conn, _| Ok(conn.map(|c| c.user.clone())),
    )));
    ctx.register_udf(ScalarUDF::new_from_impl(ConnFn::new(
        "current_setting",
        &[1, 2],
        current_setting,
    )));
    ctx.register_udf(ScalarUDF::new_from_impl(SizePretty::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(ToRegtype::new()));
    ctx.register_udf(ScalarUDF::new_from_impl(JsonBuildObject::new()));
    // Every collation and function lives in pg_catalog, which is always
    // searched. slicedb has no user functions, so psql's \df lists none
    // and the two function describers below are never asked about one.
    for name in ["pg_collation_is_visible", "pg_function_is_visible"] {
        ctx.register_udf(datafusion::logical_expr::create_udf(
            name,
            vec![DataType::Int32],
            DataType::Boolean,
            Volatility::Stable,
            Arc::new(|args: &[ColumnarValue]| {
                let n = ColumnarValue::values_to_arrays(args)?[0].len();
                Ok(ColumnarValue::Array(Arc::new(
                    datafusion::arrow::array::BooleanArray::from(vec![true; n]),
                )))
            }),
        ));
    }
    ctx.register_udf(ScalarUDF::new_from_impl(NullFn::new(
        "pg_table_size",
        DataType::Int64,
        &[1],
    )));
    ctx.register_udf(ScalarUDF::new_from_impl(NullFn::new(
        "pg_get_serial_sequence",
        DataType::Utf8,
        &[2],
    )));
    ctx.register_udf(ScalarUDF::new_from_impl(NullFn::new(
        "col_description",
        DataType::Utf8,
        &[2],
    )));
    for name in ["pg_get_function_result", "pg_get_function_arguments"] {
        ctx.register_udf(ScalarUDF::new_from_impl(NullFn::new(
            name,
            DataType::Utf8,
            &[1],
        )));
    }
    crate::catalog_sql::install(ctx);
    crate::pgtypeof::install(ctx);
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

/// PostgreSQL's `to_regtype(text)`: the oid of the type named (its
/// internal or SQL name, optionally `pg_catalog.`-qualified, `[]` for an
/// array), NULL if there is no such type. psycopg looks types up with it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ToRegtype {
    signature: Signature,
}

impl ToRegtype {
    fn new() -> Self {
        ToRegtype {
            signature: Signature::any(1, Volatility::Stable),
        }
    }
}

/// The oid of the type `name` names, if PostgreSQL has it built in.
pub fn type_oid(name: &str) -> Option<i32> {
    static BY_NAME: std::sync::LazyLock<std::collections::HashMap<String, u32>> =
        std::sync::LazyLock::new(|| {
            (0..=20_000u32)
                .filter_map(pgwire::api::Type::from_oid)
                .map(|t| (t.name().to_string(), t.oid()))
                .collect()
        });
    let n = name.trim().trim_matches('"').to_ascii_lowercase();
    let n = n.strip_prefix("pg_catalog.").unwrap_or(&n);
    if let Some(elem) = n.strip_suffix("[]") {
        return type_oid(elem)
            .and_then(|o| pgwire::api::Type::from_oid(o as u32))
            .and_then(|t| BY_NAME.get(&format!("_{}", t.name())).map(|o| *o as i32));
    }
    let internal = match n {
        "integer" | "int" => "int4",
        "bigint" => "int8",
        "smallint" => "int2",
        "double precision" | "float" => "float8",
        "real" => "float4",
        "boolean" => "bool",
        "character varying" => "varchar",
        "character" | "char" => "bpchar",
        "decimal" => "numeric",
        "timestamp without time zone" => "timestamp",
        "timestamp with time zone" => "timestamptz",
        "time without time zone" => "time",
        "time with time zone" => "timetz",
        other => other,
    };
    BY_NAME.get(internal).map(|o| *o as i32)
}

impl ScalarUDFImpl for ToRegtype {
    fn name(&self) -> &str {
        "to_regtype"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let names = cast(&arrays[0], &DataType::Utf8)?;
        let names = names.as_string::<i32>();
        let out: datafusion::arrow::array::Int32Array =
            names.iter().map(|n| n.and_then(type_oid)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// PostgreSQL's `json_build_object(key, value, ...)`: a JSON object as
/// text (SQLAlchemy's column inspection builds one for identity columns).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl JsonBuildObject {
    fn new() -> Self {
        JsonBuildObject {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return Err(DataFusionError::Plan(
                "json_build_object: argument list must have even number of elements".into(),
            ));
        }
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let texts = arrays
            .iter()
            .map(|a| cast(a, &DataType::Utf8))
            .collect::<Result<Vec<_>, _>>()?;
        let out: StringArray = (0..args.number_rows)
            .map(|row| {
                let mut parts = Vec::new();
                for (i, pair) in texts.chunks(2).enumerate() {
                    let (k, v) = (pair[0].as_string::<i32>(), pair[1].as_string::<i32>());
                    let key = if k.is_valid(row) { k.value(row) } else { "" };
                    let value = if !v.is_valid(row) {
                        "null".to_string()
                    } else {
                        match arrays[2 * i + 1].data_type() {
                            t if t.is_numeric() => v.value(row).to_string(),
                            DataType::Boolean => v.value(row).to_string(),
                            _ => json_string(v.value(row)),
                        }
                    };
                    parts.push(format!("{} : {value}", json_string(key)));
                }
                Some(format!("{{{}}}", parts.join(", ")))
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// A catalog function slicedb has no value for: NULL, as PostgreSQL
/// answers for an object without one. `pg_table_size(regclass)`: sizes are
/// not known to the catalog; `obj_description(oid[, catalog])` and
/// `col_description(table, column)`: slicedb has no COMMENT ON, so nothing
/// has a description;
/// `pg_get_serial_sequence(table, column)`: slicedb has no sequences.
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

/// `current_setting(name [, missing_ok])`: the session's value of a
/// setting; an unknown one is 42704 unless `missing_ok` (then NULL).
fn current_setting(
    conn: Option<&crate::conn::ConnState>,
    args: &[Option<String>],
) -> DfResult<Option<String>> {
    let Some(name) = args.first().cloned().flatten() else {
        return Ok(None);
    };
    let missing_ok = args.get(1).cloned().flatten().as_deref() == Some("true");
    let value = conn.and_then(|c| crate::settings::value(c, &name));
    match value {
        Some(v) => Ok(Some(v)),
        None if missing_ok => Ok(None),
        None => Err(DataFusionError::External(Box::new(crate::SqlError::user(
            "42704",
            format!("unrecognized configuration parameter \"{name}\""),
        )))),
    }
}

/// A function of the connection (and of constant text arguments): stable
/// within a statement, so DataFusion folds it into a constant while the
/// statement is planned, on the statement's task, where the connection is
/// known (`crate::conn::CURRENT_CONN`).
type ConnFnImpl =
    fn(Option<&crate::conn::ConnState>, &[Option<String>]) -> DfResult<Option<String>>;

#[derive(Debug)]
struct ConnFn {
    name: &'static str,
    signature: Signature,
    f: ConnFnImpl,
}

// One function per name: the name identifies it.
impl PartialEq for ConnFn {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for ConnFn {}

impl std::hash::Hash for ConnFn {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl ConnFn {
    fn new(name: &'static str, arities: &[usize], f: ConnFnImpl) -> Self {
        let sigs = arities
            .iter()
            .map(|n| match n {
                0 => TypeSignature::Nullary,
                n => TypeSignature::Any(*n),
            })
            .collect();
        ConnFn {
            name,
            signature: Signature::one_of(sigs, Volatility::Stable),
            f,
        }
    }
}

impl ScalarUDFImpl for ConnFn {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let conn = crate::conn::current_conn();
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let texts = arrays
            .iter()
            .map(|a| cast(a, &DataType::Utf8))
            .collect::<Result<Vec<_>, _>>()?;
        let out: StringArray = (0..args.number_rows)
            .map(|row| {
                let argv: Vec<Option<String>> = texts
                    .iter()
                    .map(|a| {
                        let a = a.as_string::<i32>();
                        a.is_valid(row).then(|| a.value(row).to_string())
                    })
                    .collect();
                (self.f)(conn.as_deref(), &argv)
            })
            .collect::<DfResult<_>>()?;
        Ok(ColumnarValue::Array(Arc::new(out)))
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
        names.push("pg_user".to_string());
        names.sort();
        names.dedup();
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        match name {
            "pg_stat_activity" => {
                return Ok(Some(Arc::new(crate::activity::StatActivity::new(
                    self.sessions.clone(),
                ))))
            }
            "pg_settings" => return Ok(Some(Arc::new(PgSettings))),
            "pg_roles" | "pg_user" => {
                let view = if name == "pg_roles" {
                    crate::pgroles::RoleView::Roles
                } else {
                    crate::pgroles::RoleView::User
                };
                return Ok(Some(Arc::new(crate::pgroles::Roles::new(
                    view,
                    self.sessions.clone(),
                ))));
            }
            _ => {}
        }
        let t = self.inner.table(name).await?;
        Ok(match t {
            Some(inner)
                if matches!(
                    name,
                    "pg_class" | "pg_attribute" | "pg_tables" | "pg_database" | "pg_index"
                ) =>
            {
                // pg_attribute finds its tables' names in pg_class.
                let relnames = match name {
                    "pg_attribute" => self.inner.table("pg_class").await?,
                    _ => None,
                };
                // Tables of a schema other than public are `s.t` in the
                // coordinator's catalog.
                let namespaces = match name {
                    "pg_attribute" | "pg_class" => self.inner.table("pg_namespace").await?,
                    _ => None,
                };
                Some(Arc::new(PgClass {
                    inner,
                    coord: self.coord.clone(),
                    relnames,
                    namespaces,
                    reloptions: name == "pg_class",
                }))
            }
            other => other,
        })
    }

    fn table_exist(&self, name: &str) -> bool {
        matches!(name, "pg_stat_activity" | "pg_settings" | "pg_user")
            || self.inner.table_exist(name)
    }
}

/// PostgreSQL's oid of `varchar` (`character varying`).
const VARCHAR_OID: i32 = 1043;

/// `relname` as the coordinator's catalog names it: `t` in public (and
/// pg_catalog), `s.t` in schema `s` (`nsp`: the batch's relnamespace).
fn qualified(
    relname: &str,
    nsp: Option<&datafusion::arrow::array::Int32Array>,
    row: usize,
    namespaces: &HashMap<i32, String>,
) -> String {
    let schema = nsp
        .filter(|n| n.is_valid(row))
        .and_then(|n| namespaces.get(&n.value(row)));
    match schema.map(String::as_str) {
        None | Some("public") | Some("pg_catalog") => relname.to_string(),
        Some(s) => format!("{s}.{relname}"),
    }
}

/// A pg_class batch's `relnamespace` column, if it has one.
fn relnamespaces(b: &RecordBatch) -> Option<&datafusion::arrow::array::Int32Array> {
    let i = b.schema().index_of("relnamespace").ok()?;
    b.column(i).as_primitive_opt::<Int32Type>()
}

/// A catalog table's `oid` -> `name_col`, read now; `name` makes the
/// answer of a row from the batch, the row and its `name_col`.
async fn id_names(
    state: &dyn Session,
    table: &Arc<dyn TableProvider>,
    name_col: &str,
    name: impl Fn(&RecordBatch, usize, &str) -> String,
) -> DfResult<HashMap<i32, String>> {
    let mut out = HashMap::new();
    let plan = table.scan(state, None, &[], None).await?;
    for b in datafusion::physical_plan::collect(plan, state.task_ctx()).await? {
        let schema = b.schema();
        let (Ok(o), Ok(n)) = (schema.index_of("oid"), schema.index_of(name_col)) else {
            continue;
        };
        let (Some(oids), Some(names)) = (
            b.column(o).as_primitive_opt::<Int32Type>(),
            b.column(n).as_string_opt::<i32>(),
        ) else {
            continue;
        };
        for i in 0..b.num_rows() {
            if oids.is_valid(i) && names.is_valid(i) {
                out.insert(oids.value(i), name(&b, i, names.value(i)));
            }
        }
    }
    Ok(out)
}

/// A relation-listing table, read at planning time; pg_class rewritten.
struct PgClass {
    inner: Arc<dyn TableProvider>,
    coord: Arc<Coordinator>,
    /// pg_attribute's: the pg_class that names its `attrelid`s.
    relnames: Option<Arc<dyn TableProvider>>,
    /// pg_class's and pg_attribute's: pg_namespace, to name a table of a
    /// schema as the catalog does (`s.t`).
    namespaces: Option<Arc<dyn TableProvider>>,
    /// pg_class's: add the `reloptions` column.
    reloptions: bool,
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

    /// pg_database: the one database, named as the client named it. Its
    /// row is the default catalog's (whose oid the other tables use).
    fn database(&self, b: RecordBatch) -> DfResult<RecordBatch> {
        let schema = b.schema();
        let Ok(idx) = schema.index_of("datname") else {
            return Ok(b);
        };
        let Some(names) = b.column(idx).as_string_opt::<i32>() else {
            return Ok(b);
        };
        let Some(row) =
            (0..b.num_rows()).find(|&i| names.is_valid(i) && names.value(i) == "datafusion")
        else {
            return Ok(b);
        };
        let name = crate::conn::current_conn()
            .map_or(crate::conn::DEFAULT_DATABASE.to_string(), |c| {
                c.database.clone()
            });
        let one = b.slice(row, 1);
        let mut cols: Vec<ArrayRef> = one.columns().to_vec();
        cols[idx] = Arc::new(StringArray::from(vec![name]));
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    /// `reloptions` of a slicedb table: its distribution and whether it is
    /// mirrored, which psql's `\d+` prints as its "Options:" footer
    /// (`distribute_on=(k), mirrored=true`).
    fn options(&self, relname: &str) -> Option<Vec<String>> {
        let t = self.coord.table(relname).ok()?;
        let dist = match &t.distribution {
            slicedb_coordinator::Distribution::Hash(cols) => {
                format!("distribute_on=({})", cols.join(", "))
            }
            slicedb_coordinator::Distribution::Random => "distribute_on=random".to_string(),
        };
        Some(vec![dist, format!("mirrored={}", t.mirrored)])
    }

    /// pg_attribute: `atttypmod` of numeric columns (precision and scale,
    /// as PostgreSQL encodes them) and of `varchar(n)` columns (whose
    /// `atttypid` becomes varchar's), so `format_type` and psql's `\d` show
    /// `numeric(12,2)` and `character varying(20)`. `relnames`: pg_class's oid -> relname.
    fn typmods(&self, b: RecordBatch, relnames: &HashMap<i32, String>) -> DfResult<RecordBatch> {
        let schema = b.schema();
        let (Ok(rel_idx), Ok(name_idx), Ok(mod_idx)) = (
            schema.index_of("attrelid"),
            schema.index_of("attname"),
            schema.index_of("atttypmod"),
        ) else {
            return Ok(b);
        };
        let (Some(rels), Some(names), Some(mods)) = (
            b.column(rel_idx).as_primitive_opt::<Int32Type>(),
            b.column(name_idx).as_string_opt::<i32>(),
            b.column(mod_idx).as_primitive_opt::<Int32Type>(),
        ) else {
            return Ok(b);
        };
        let typids = schema
            .index_of("atttypid")
            .ok()
            .and_then(|i| Some((i, b.column(i).as_primitive_opt::<Int32Type>()?)));
        let mut tables = HashMap::new();
        // (typmod, varchar's type oid) of each of our columns.
        let ours: Vec<Option<(i32, Option<i32>)>> = (0..b.num_rows())
            .map(|i| {
                let rel = relnames.get(&rels.value(i))?;
                let t = tables
                    .entry(rel.clone())
                    .or_insert_with(|| self.coord.table(rel).ok());
                let t = t.as_ref()?;
                let at = t.schema.index_of(names.value(i)).ok()?;
                if let Some(n) = t.max_lengths().get(at).copied().flatten() {
                    return Some((n as i32 + 4, Some(VARCHAR_OID)));
                }
                match t.schema.field(at).data_type() {
                    DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
                        Some((((i32::from(*p) << 16) | i32::from(*s)) + 4, None))
                    }
                    _ => None,
                }
            })
            .collect();
        let out: Int32Array = (0..b.num_rows())
            .map(|i| match ours[i] {
                Some((m, _)) => Some(m),
                None => mods.is_valid(i).then(|| mods.value(i)),
            })
            .collect();
        let mut cols: Vec<ArrayRef> = b.columns().to_vec();
        cols[mod_idx] = Arc::new(out);
        if let Some((idx, ids)) = typids {
            let out: Int32Array = (0..b.num_rows())
                .map(|i| match ours[i] {
                    Some((_, Some(oid))) => Some(oid),
                    _ => ids.is_valid(i).then(|| ids.value(i)),
                })
                .collect();
            cols[idx] = Arc::new(out);
        }
        Ok(RecordBatch::try_new(schema, cols)?)
    }

    /// pg_index: `indkey` (an `int2vector`, text `1 2` upstream) as the
    /// array of column numbers it is, so `unnest(indkey)` (SQLAlchemy's
    /// primary key query) plans.
    fn index_keys(&self, b: RecordBatch) -> DfResult<RecordBatch> {
        let schema = b.schema();
        let idx = schema.index_of("indkey")?;
        let Some(keys) = b.column(idx).as_string_opt::<i32>() else {
            return Ok(b);
        };
        let mut out = ListBuilder::new(datafusion::arrow::array::Int16Builder::new());
        for i in 0..b.num_rows() {
            if keys.is_valid(i) {
                for k in keys.value(i).split_whitespace() {
                    out.values().append_option(k.parse::<i16>().ok());
                }
                out.append(true);
            } else {
                out.append(false);
            }
        }
        let mut cols: Vec<ArrayRef> = b.columns().to_vec();
        cols[idx] = Arc::new(out.finish());
        Ok(RecordBatch::try_new(self.schema(), cols)?)
    }

    /// pg_class: our `relpersistence` and `reloptions`; pg_database:
    /// [`PgClass::database`]; pg_attribute: [`PgClass::typmods`]. Other
    /// tables pass unchanged.
    fn rewrite(
        &self,
        b: RecordBatch,
        relnames: &HashMap<i32, String>,
        namespaces: &HashMap<i32, String>,
    ) -> DfResult<RecordBatch> {
        let schema = b.schema();
        if schema.index_of("datname").is_ok() {
            return self.database(b);
        }
        if schema.index_of("attrelid").is_ok() {
            return self.typmods(b, relnames);
        }
        if schema.index_of("indkey").is_ok() {
            return self.index_keys(b);
        }
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
        let nsp = relnamespaces(&b);
        let table = |i: usize| {
            (kinds.is_valid(i) && kinds.value(i) == "r" && names.is_valid(i))
                .then(|| qualified(names.value(i), nsp, i, namespaces))
        };
        let out: StringArray = (0..b.num_rows())
            .map(|i| {
                let ours = table(i).and_then(|n| self.persistence(&n));
                match ours {
                    Some(p) => Some(p),
                    None => pers.is_valid(i).then(|| pers.value(i)),
                }
            })
            .collect();
        let mut cols: Vec<ArrayRef> = b.columns().to_vec();
        cols[pers_idx] = Arc::new(out);
        if self.reloptions {
            let mut options = ListBuilder::new(StringBuilder::new());
            for i in 0..b.num_rows() {
                match table(i).and_then(|n| self.options(&n)) {
                    Some(opts) => {
                        for o in opts {
                            options.values().append_value(o);
                        }
                        options.append(true);
                    }
                    None => options.append(false),
                }
            }
            cols.push(Arc::new(options.finish()));
        }
        Ok(RecordBatch::try_new(self.schema(), cols)?)
    }
}

#[async_trait]
impl TableProvider for PgClass {
    fn schema(&self) -> SchemaRef {
        let inner = self.inner.schema();
        let list = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
        let mut fields: Vec<Field> = inner
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "indkey" => Field::new("indkey", list(DataType::Int16), true),
                _ => f.as_ref().clone(),
            })
            .collect();
        if self.reloptions {
            fields.push(Field::new("reloptions", list(DataType::Utf8), true));
        }
        Arc::new(Schema::new(fields))
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
        let namespaces = match &self.namespaces {
            Some(n) => id_names(state, n, "nspname", |_, _, n| n.to_string()).await?,
            None => HashMap::new(),
        };
        let relnames = match &self.relnames {
            Some(pg_class) => {
                id_names(state, pg_class, "relname", |b, i, n| {
                    qualified(n, relnamespaces(b), i, &namespaces)
                })
                .await?
            }
            None => HashMap::new(),
        };
        let plan = self.inner.scan(state, None, &[], None).await?;
        let batches = datafusion::physical_plan::collect(plan, state.task_ctx()).await?;
        let batches = batches
            .into_iter()
            .map(|b| self.rewrite(b, &relnames, &namespaces))
            .collect::<DfResult<Vec<_>>>()?;
        let mem = MemTable::try_new(self.schema(), vec![batches])?;
        mem.scan(state, projection, &[], limit).await
    }
}

/// `pg_settings`: the session's settings (`crate::settings::all`), read
/// when the query is planned.
#[derive(Debug)]
struct PgSettings;

impl PgSettings {
    fn batch() -> DfResult<RecordBatch> {
        let rows = crate::conn::current_conn()
            .map(|c| crate::settings::all(&c))
            .unwrap_or_default();
        let text = |f: fn(&crate::settings::Setting) -> Option<String>| -> ArrayRef {
            Arc::new(rows.iter().map(f).collect::<StringArray>())
        };
        let cols: Vec<ArrayRef> = vec![
            text(|s| Some(s.name.clone())),
            text(|s| Some(s.setting.clone())),
            text(|s| s.unit.clone()),
            text(|s| Some(s.category.clone())),
            text(|s| Some(s.short_desc.clone())),
            text(|_| None),
            text(|s| Some(s.context.clone())),
            text(|s| Some(s.vartype.clone())),
            text(|s| Some(s.source.clone())),
            text(|_| None),
            text(|_| None),
            text(|s| s.enumvals.clone()),
            text(|s| Some(s.boot_val.clone())),
            text(|s| Some(s.reset_val.clone())),
            text(|_| None),
            Arc::new(datafusion::arrow::array::Int32Array::from(vec![
                None;
                rows.len()
            ])),
            Arc::new(datafusion::arrow::array::BooleanArray::from(vec![
                Some(
                    false
                );
                rows.len()
            ])),
        ];
        Ok(RecordBatch::try_new(Self::schema_ref(), cols)?)
    }

    fn schema_ref() -> SchemaRef {
        use datafusion::arrow::datatypes::{Field, Schema};
        let text = |n: &str| Field::new(n, DataType::Utf8, true);
        Arc::new(Schema::new(vec![
            text("name"),
            text("setting"),
            text("unit"),
            text("category"),
            text("short_desc"),
            text("extra_desc"),
            text("context"),
            text("vartype"),
            text("source"),
            text("min_val"),
            text("max_val"),
            text("enumvals"),
            text("boot_val"),
            text("reset_val"),
            text("sourcefile"),
            Field::new("sourceline", DataType::Int32, true),
            Field::new("pending_restart", DataType::Boolean, true),
        ]))
    }
}

#[async_trait]
impl TableProvider for PgSettings {
    fn schema(&self) -> SchemaRef {
        Self::schema_ref()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let mem = MemTable::try_new(self.schema(), vec![vec![Self::batch()?]])?;
        mem.scan(state, projection, &[], limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::{json_string, size_pretty, type_oid};

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }

    #[test]
    fn type_names_resolve_to_postgres_oids() {
        assert_eq!(type_oid("int4"), Some(23));
        assert_eq!(type_oid("integer"), Some(23));
        assert_eq!(type_oid("pg_catalog.text"), Some(25));
        assert_eq!(type_oid("numeric"), Some(1700));
        assert_eq!(type_oid("int4[]"), Some(1007));
        assert_eq!(type_oid("hstore"), None);
    }

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
