//! Session settings: `SET`, `SET LOCAL`, `RESET`, `SHOW` (and `SHOW ALL`,
//! `current_setting()`, `pg_settings`), each session's own.
//!
//! The parameters slicedb knows ([`PARAMS`]) are of three kinds, as in
//! PostgreSQL: *internal* ones describe the server and cannot be set
//! (`server_version`, `server_version_num`, `server_encoding`, ...);
//! *server* ones come from the server's configuration only
//! (`max_connections`); *session* ones a session sets for itself
//! (`statement_timeout`, `idle_session_timeout`, `DateStyle`,
//! `application_name`, ...), starting from the server's value. DataFusion's
//! options (`datafusion.*`, and slicedb's own `slicedb.*`) are session
//! settings too: each connection plans in its own copy of the coordinator's
//! DataFusion context (`crate::conn`), so a `SET` there changes that
//! connection only. A name with a dot outside those namespaces is a custom
//! setting (PostgreSQL's `myapp.flag`): stored, shown, nothing more.
//!
//! Inside a transaction block a `SET` is undone by ROLLBACK, and a `SET
//! LOCAL` lasts until the block ends (COMMIT or ROLLBACK), as in
//! PostgreSQL. Outside a block `SET LOCAL` changes nothing (PostgreSQL
//! warns; slicedb answers `SET`).
//!
//! Values are checked and normalized when set: a bad value is `22023`, an
//! unknown parameter `42704`, one that cannot be set `55P02`.
//!
//! It owns the session's values (held in its connection's state) and the
//! server's defaults ([`ServerSettings`], from the configuration); it never
//! touches the coordinator beyond reading its DataFusion options.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{
    ContextModifier, Expr, ObjectName, Reset, Set, Statement, UnaryOperator, Value,
};
use futures::stream;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::Type;

use crate::conn::ConnState;
use crate::sessions::IdleTimeout;
use crate::version::{server_version, PG_VERSION_NUM};
use crate::SqlError;

/// Who may change a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// Describes the server; never set (`pg_settings.context` `internal`).
    Internal,
    /// From the server's configuration only (`postmaster`).
    Server,
    /// Each session's own (`user`).
    Session,
}

impl Context {
    fn name(self) -> &'static str {
        match self {
            Context::Internal => "internal",
            Context::Server => "postmaster",
            Context::Session => "user",
        }
    }
}

/// How a parameter's value is checked and where it takes effect.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A fixed value.
    Fixed(fn() -> String),
    /// `max_connections`.
    MaxConnections,
    /// `statement_timeout`: read by each statement's stopper.
    StatementTimeout,
    /// An idle timeout, enforced by the session's watcher.
    Idle(IdleTimeout),
    /// One of the values, compared without case; stored as spelled here.
    Enum(&'static [&'static str], &'static str),
    /// An integer in a range, with its default.
    Int(i64, i64, i64),
    /// Free text, with its default.
    Text(&'static str),
    /// `DateStyle`: an output style and a field order.
    DateStyle,
    /// `client_encoding`: UTF8 is the only one.
    Encoding,
    /// A boolean that has one value here (its default).
    OnlyBool(bool),
}

/// One parameter slicedb knows.
#[derive(Debug)]
struct Param {
    /// As PostgreSQL spells it (`SHOW` matches without case).
    name: &'static str,
    kind: Kind,
    context: Context,
    vartype: &'static str,
    unit: Option<&'static str>,
    category: &'static str,
    short_desc: &'static str,
    /// The client metadata key pgwire's value encoders read, if any.
    meta: Option<&'static str>,
    /// Sent to the client as a ParameterStatus when it changes.
    report: bool,
}

const CONN: &str = "Connections and Authentication";
const CLIENT: &str = "Client Connection Defaults / Statement Behavior";
const LOCALE: &str = "Client Connection Defaults / Locale and Formatting";
const PRESET: &str = "Preset Options";

fn p(
    name: &'static str,
    kind: Kind,
    context: Context,
    vartype: &'static str,
    category: &'static str,
    short_desc: &'static str,
) -> Param {
    Param {
        name,
        kind,
        context,
        vartype,
        unit: None,
        category,
        short_desc,
        meta: None,
        report: false,
    }
}

/// Every parameter slicedb knows besides DataFusion's options.
static PARAMS: std::sync::LazyLock<Vec<Param>> = std::sync::LazyLock::new(|| {
    use Context::*;
    let ms = |mut p: Param| {
        p.unit = Some("ms");
        p
    };
    let meta = |mut p: Param, key: &'static str| {
        p.meta = Some(key);
        p
    };
    let report = |mut p: Param| {
        p.report = true;
        p
    };
    vec![
        report(p("application_name", Kind::Text(""), Session, "string", "Reporting and Logging / What to Log", "Sets the application name to be reported in statistics and logs.")),
        p("bytea_output", Kind::Enum(&["hex", "escape"], "hex"), Session, "enum", CLIENT, "Sets the output format for bytea.").with_meta("bytea_output"),
        report(p("client_encoding", Kind::Encoding, Session, "string", LOCALE, "Sets the client's character set encoding.")),
        p("client_min_messages", Kind::Enum(&["debug5", "debug4", "debug3", "debug2", "debug1", "log", "notice", "warning", "error"], "notice"), Session, "enum", CLIENT, "Sets the message levels that are sent to the client."),
        report(meta(p("DateStyle", Kind::DateStyle, Session, "string", LOCALE, "Sets the display format for date and time values."), "datestyle")),
        p("default_transaction_isolation", Kind::Enum(&["repeatable read"], "repeatable read"), Session, "enum", CLIENT, "Sets the transaction isolation level of each new transaction (slicedb: snapshot isolation)."),
        p("extra_float_digits", Kind::Int(-15, 3, 1), Session, "integer", LOCALE, "Sets the number of digits displayed for floating-point values.").with_meta("extra_float_digits"),
        ms(p("idle_in_transaction_session_timeout", Kind::Idle(IdleTimeout::InTransaction), Session, "integer", CLIENT, "Sets the maximum allowed idle time between queries, when in a transaction.")),
        ms(p("idle_session_timeout", Kind::Idle(IdleTimeout::Session), Session, "integer", CLIENT, "Sets the maximum allowed idle time between queries, when not in a transaction.")),
        report(p("integer_datetimes", Kind::Fixed(|| "on".into()), Internal, "bool", PRESET, "Shows whether datetimes are integer based.")),
        report(meta(p("IntervalStyle", Kind::Enum(&["postgres", "postgres_verbose", "sql_standard", "iso_8601"], "postgres"), Session, "enum", LOCALE, "Sets the display format for interval values."), "intervalstyle")),
        p("max_connections", Kind::MaxConnections, Server, "integer", CONN, "Sets the maximum number of concurrent connections."),
        p("max_identifier_length", Kind::Fixed(|| "63".into()), Internal, "integer", PRESET, "Shows the maximum identifier length."),
        p("password_encryption", Kind::Enum(&["scram-sha-256"], "scram-sha-256"), Session, "enum", CONN, "Chooses the algorithm for encrypting passwords (psql's \\password asks for it)."),
        report(p("search_path", Kind::Text("\"$user\", public"), Session, "string", CLIENT, "Sets the schema search order for names that are not schema-qualified.")),
        report(p("server_encoding", Kind::Fixed(|| "UTF8".into()), Internal, "string", PRESET, "Shows the server (database) character set encoding.")),
        report(p("server_version", Kind::Fixed(server_version), Internal, "string", PRESET, "Shows the server version.")),
        report(p("server_version_num", Kind::Fixed(|| PG_VERSION_NUM.into()), Internal, "integer", PRESET, "Shows the server version as an integer.")),
        report(p("standard_conforming_strings", Kind::OnlyBool(true), Session, "bool", "Version and Platform Compatibility", "Causes '...' strings to treat backslashes literally.")),
        ms(p("statement_timeout", Kind::StatementTimeout, Session, "integer", CLIENT, "Sets the maximum allowed duration of any statement.")),
        report(p("TimeZone", Kind::Text("UTC"), Session, "string", LOCALE, "Sets the time zone for displaying and interpreting time stamps.")),
        p("transaction_isolation", Kind::Enum(&["repeatable read"], "repeatable read"), Session, "enum", CLIENT, "Sets the current transaction's isolation level (slicedb: snapshot isolation)."),
    ]
});

impl Param {
    fn with_meta(mut self, key: &'static str) -> Param {
        self.meta = Some(key);
        self
    }
}

fn find(name: &str) -> Option<&'static Param> {
    PARAMS.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// Whether `name` is one of DataFusion's options (or slicedb's, which live
/// beside them in the same configuration).
fn is_datafusion(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("datafusion.") || n.starts_with("slicedb.")
}

/// A change the statement made that the client must hear of.
pub type Reported = Vec<(String, String)>;

/// The value of `name` in the session `conn` (None: no such parameter).
pub(crate) fn value(conn: &ConnState, name: &str) -> Option<String> {
    if is_datafusion(name) {
        let state = conn.ctx.state();
        let key = name.to_ascii_lowercase();
        return state
            .config_options()
            .entries()
            .into_iter()
            .find(|e| e.key == key)
            .map(|e| e.value.unwrap_or_default());
    }
    let Some(p) = find(name) else {
        return conn.settings.get(name);
    };
    Some(match conn.settings.get(p.name) {
        Some(v) => v,
        None => default(conn, p),
    })
}

/// The value a session starts with (and `RESET` goes back to).
fn default(conn: &ConnState, p: &Param) -> String {
    let server = &conn.server;
    match p.kind {
        Kind::Fixed(f) => f(),
        Kind::MaxConnections => server.max_connections.load(Ordering::Relaxed).to_string(),
        Kind::StatementTimeout => format_ms(server.statement_timeout()),
        Kind::Idle(which) => format_ms(server.sessions.idle_default(which)),
        Kind::Enum(_, d) | Kind::Text(d) => {
            // What the client sent at startup counts as the session's own
            // reset value, as in PostgreSQL.
            match conn.startup.get(&p.name.to_ascii_lowercase()) {
                Some(v) => check(p, v).unwrap_or_else(|_| d.to_string()),
                None => d.to_string(),
            }
        }
        Kind::Int(_, _, d) => d.to_string(),
        Kind::DateStyle => "ISO, MDY".to_string(),
        Kind::Encoding => "UTF8".to_string(),
        Kind::OnlyBool(b) => on_off(b).to_string(),
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn bad_value(name: &str, value: &str, hint: &str) -> SqlError {
    SqlError::user(
        "22023",
        format!("invalid value for parameter \"{name}\": \"{value}\" ({hint})"),
    )
}

/// `value` checked and normalized for `p`.
fn check(p: &Param, value: &str) -> Result<String, SqlError> {
    let v = value.trim();
    match p.kind {
        Kind::Fixed(_) | Kind::MaxConnections => Err(SqlError::user(
            "55P02",
            format!(
                "parameter \"{}\" cannot be changed{}",
                p.name,
                if p.context == Context::Server {
                    " without restarting the server (it comes from the server's configuration)"
                } else {
                    ""
                }
            ),
        )),
        Kind::StatementTimeout | Kind::Idle(_) => parse_duration_ms(v)
            .map(|ms| format_ms(Some(Duration::from_millis(ms))))
            .ok_or_else(|| {
                bad_value(
                    p.name,
                    v,
                    "a duration such as 5000, '5s' or '1min', 0 for none",
                )
            }),
        Kind::Enum(values, _) => values
            .iter()
            .find(|e| e.eq_ignore_ascii_case(v))
            .map(|e| e.to_string())
            .ok_or_else(|| bad_value(p.name, v, &format!("one of: {}", values.join(", ")))),
        Kind::Int(lo, hi, _) => match v.parse::<i64>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(n.to_string()),
            _ => Err(bad_value(
                p.name,
                v,
                &format!("an integer from {lo} to {hi}"),
            )),
        },
        Kind::Text(_) => Ok(v.to_string()),
        Kind::DateStyle => date_style(v).ok_or_else(|| {
            bad_value(
                p.name,
                v,
                "ISO, Postgres, SQL or German, and DMY, MDY or YMD",
            )
        }),
        Kind::Encoding => match v.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "utf8" | "unicode" => Ok("UTF8".to_string()),
            _ => Err(SqlError::not_supported(format!(
                "client_encoding \"{v}\": slicedb speaks UTF8 only"
            ))),
        },
        Kind::OnlyBool(b) => match parse_bool(v) {
            Some(x) if x == b => Ok(on_off(b).to_string()),
            Some(_) => Err(SqlError::not_supported(format!(
                "{} = {}: slicedb supports {} only",
                p.name,
                on_off(!b),
                on_off(b)
            ))),
            None => Err(bad_value(p.name, v, "a boolean")),
        },
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" | "t" | "y" => Some(true),
        "off" | "false" | "no" | "0" | "f" | "n" => Some(false),
        _ => None,
    }
}

/// PostgreSQL's `DateStyle`: a style and an order, either or both given;
/// printed as `ISO, MDY`.
fn date_style(v: &str) -> Option<String> {
    let (mut style, mut order) = ("ISO", "MDY");
    for word in v.split([',', ' ']).filter(|w| !w.is_empty()) {
        match word.to_ascii_lowercase().as_str() {
            "iso" => style = "ISO",
            "postgres" => style = "Postgres",
            "sql" => style = "SQL",
            "german" => style = "German",
            "dmy" | "euro" | "european" => order = "DMY",
            "mdy" | "us" | "noneuropean" | "non-european" => order = "MDY",
            "ymd" => order = "YMD",
            _ => return None,
        }
    }
    Some(format!("{style}, {order}"))
}

/// Set `name` to `value` (None: back to the server's value) in `conn`:
/// checked, stored, and put into effect. Answers the ParameterStatus to
/// send, if the client must hear of it.
fn apply(
    conn: &ConnState,
    meta: &mut std::collections::HashMap<String, String>,
    name: &str,
    value: Option<&str>,
) -> Result<Option<(String, String)>, SqlError> {
    let key = name.to_ascii_lowercase();
    if key.starts_with("datafusion.runtime.") {
        // The memory pool and spill directory are the server's, shared by
        // every session.
        conn.session
            .coordinator()
            .require_superuser(&format!("set {key}"))?;
    }
    if is_datafusion(name) {
        let v = match value {
            Some(v) => v.to_string(),
            None => server_datafusion_value(conn, &key).ok_or_else(|| unknown(name))?,
        };
        let state = conn.ctx.state_ref();
        let mut state = state.write();
        state
            .config_mut()
            .options_mut()
            .set(&key, &v)
            .map_err(|e| match e {
                datafusion::error::DataFusionError::Configuration(m) if m.contains("not") => {
                    SqlError::user(
                        "42704",
                        format!("unrecognized configuration parameter \"{name}\": {m}"),
                    )
                }
                other => bad_value(name, &v, &other.to_string()),
            })?;
        drop(state);
        store(conn, &key, value.map(|_| v));
        return Ok(None);
    }
    let Some(p) = find(name) else {
        if !name.contains('.') {
            return Err(unknown(name));
        }
        store(conn, &key, value.map(str::to_string));
        return Ok(None);
    };
    let normalized = match value {
        Some(v) => Some(check(p, v)?),
        None if matches!(p.kind, Kind::Fixed(_) | Kind::MaxConnections) => {
            return Err(check(p, "").expect_err("fixed parameters refuse every value"))
        }
        None => None,
    };
    store(conn, &key, normalized.clone());
    let effective = normalized.clone().unwrap_or_else(|| default(conn, p));
    match p.kind {
        Kind::StatementTimeout => {
            let ms = normalized.as_deref().and_then(parse_duration_ms);
            match ms {
                Some(ms) => meta.insert(STATEMENT_TIMEOUT_KEY.to_string(), ms.to_string()),
                None => meta.remove(STATEMENT_TIMEOUT_KEY),
            };
        }
        Kind::Idle(which) => {
            if let Some(s) = &conn.registered {
                s.set_idle_timeout(
                    which,
                    normalized
                        .as_deref()
                        .and_then(parse_duration_ms)
                        .map(Duration::from_millis),
                );
            }
        }
        _ => {}
    }
    if let Some(m) = p.meta {
        meta.insert(m.to_string(), effective.clone());
    }
    if p.name == "TimeZone" {
        meta.insert("timezone".to_string(), effective.clone());
    }
    Ok(p.report.then(|| (p.name.to_string(), effective)))
}

/// Where the statement stopper reads a session's `statement_timeout` (ms;
/// 0: none, whatever the server's). Not datafusion-postgres's key: its
/// timeout would take 0 for an immediate one, and the stopper covers more.
pub const STATEMENT_TIMEOUT_KEY: &str = "slicedb.statement_timeout_ms";

fn unknown(name: &str) -> SqlError {
    SqlError::user(
        "42704",
        format!("unrecognized configuration parameter \"{name}\""),
    )
}

/// The coordinator's (the server's) value of a DataFusion option.
fn server_datafusion_value(conn: &ConnState, key: &str) -> Option<String> {
    conn.session
        .coordinator()
        .session()
        .state()
        .config_options()
        .entries()
        .into_iter()
        .find(|e| e.key == key)
        .map(|e| e.value.unwrap_or_default())
}

/// Record a session value, noting what the open block must undo.
fn store(conn: &ConnState, key: &str, value: Option<String>) {
    let mut g = conn.settings.lock();
    let before = g.values.get(key).cloned();
    if let Some(block) = &mut g.block {
        block.entry(key.to_string()).or_insert((before, None));
    }
    match value {
        Some(v) => g.values.insert(key.to_string(), v),
        None => g.values.remove(key),
    };
}

/// Mark, in the open block, the value a plain `SET` leaves after COMMIT.
fn keep_on_commit(conn: &ConnState, key: &str) {
    let mut g = conn.settings.lock();
    let now = g.values.get(key).cloned();
    if let Some(block) = &mut g.block {
        if let Some(entry) = block.get_mut(key) {
            entry.1 = Some(now);
        }
    }
}

/// A transaction block began: changes from now on are undone as
/// PostgreSQL undoes them.
pub(crate) fn begin_block(conn: &ConnState) {
    conn.settings.lock().block.get_or_insert_with(BTreeMap::new);
}

/// The block ended (`committed`: by COMMIT): `SET LOCAL`s are undone, and
/// on a rollback every change made in it. Answers the ParameterStatus
/// messages to send.
pub(crate) fn end_block(
    conn: &ConnState,
    meta: &mut std::collections::HashMap<String, String>,
    committed: bool,
) -> Reported {
    let Some(block) = conn.settings.lock().block.take() else {
        return Vec::new();
    };
    let mut reported = Vec::new();
    for (key, (at_begin, kept)) in block {
        let target = match (committed, kept) {
            (true, Some(kept)) => kept,
            _ => at_begin,
        };
        if conn.settings.get(&key) == target {
            continue;
        }
        // The value was valid when it was set, so it applies again.
        match apply(conn, meta, &key, target.as_deref()) {
            Ok(Some(r)) => reported.push(r),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(setting = %key, error = %e, "could not restore a setting at the end of a block")
            }
        }
    }
    reported
}

/// Whether this module runs `st`.
pub fn owns(st: &Statement) -> bool {
    matches!(
        st,
        Statement::Set(_) | Statement::Reset(_) | Statement::ShowVariable { .. }
    )
}

/// The text of a `SET` value.
fn value_text(v: &Expr) -> String {
    match v {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.clone(),
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            Value::Boolean(b) => b.to_string(),
            other => other.to_string(),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => format!("-{}", value_text(expr)),
        Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

fn object_name(n: &ObjectName) -> String {
    n.0.iter()
        .map(|p| match p.as_ident() {
            Some(i) => i.value.clone(),
            None => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// What a statement this module owns asks.
enum Action {
    /// `SET` (`local`: `SET LOCAL`) a name to values (None: `DEFAULT`).
    Set(String, Option<String>, bool),
    Reset(String),
    ResetAll,
    Show(String),
    ShowAll,
}

fn action(st: &Statement) -> Result<Action, SqlError> {
    let set = |name: String, values: &[Expr], local: bool| {
        let is_default = matches!(values, [Expr::Identifier(i)] if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"));
        let value =
            (!is_default).then(|| values.iter().map(value_text).collect::<Vec<_>>().join(", "));
        Action::Set(name, value, local)
    };
    Ok(match st {
        Statement::Set(Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        }) => set(
            object_name(variable),
            values,
            matches!(scope, Some(ContextModifier::Local)),
        ),
        Statement::Set(Set::SetTimeZone { local, value }) => {
            set("TimeZone".to_string(), std::slice::from_ref(value), *local)
        }
        Statement::Set(Set::SetNames { charset_name, .. }) => Action::Set(
            "client_encoding".to_string(),
            Some(charset_name.value.clone()),
            false,
        ),
        Statement::Set(Set::SetNamesDefault {}) => {
            Action::Set("client_encoding".to_string(), None, false)
        }
        Statement::Reset(r) => match &r.reset {
            Reset::ALL => Action::ResetAll,
            Reset::ConfigurationParameter(n) => Action::Reset(object_name(n)),
        },
        Statement::ShowVariable { variable } => {
            let words: Vec<String> = variable.iter().map(|i| i.value.clone()).collect();
            let joined = words.join(" ").to_ascii_lowercase();
            match joined.as_str() {
                "all" => Action::ShowAll,
                "time zone" => Action::Show("TimeZone".to_string()),
                "transaction isolation level" => Action::Show("transaction_isolation".to_string()),
                _ => Action::Show(words.join(".")),
            }
        }
        other => {
            return Err(SqlError::not_supported(format!("statement {other}")));
        }
    })
}

/// Run a statement [`owns`] answered true for, in the session `conn`.
/// `meta` is the connection's metadata (what pgwire's encoders read);
/// `in_block`: whether a transaction block is open. Answers the response
/// and the ParameterStatus messages to send first.
pub(crate) fn run(
    conn: &ConnState,
    meta: &mut std::collections::HashMap<String, String>,
    st: &Statement,
    in_block: bool,
) -> Result<(Response, Reported), SqlError> {
    let mut reported = Vec::new();
    match action(st)? {
        Action::Set(_, _, true) if !in_block => Ok((set_tag(), reported)),
        Action::Set(name, value, local) => {
            let key = name.to_ascii_lowercase();
            reported.extend(apply(conn, meta, &name, value.as_deref())?);
            if !local {
                keep_on_commit(conn, &key);
            }
            Ok((set_tag(), reported))
        }
        Action::Reset(name) => {
            reported.extend(apply(conn, meta, &name, None)?);
            keep_on_commit(conn, &name.to_ascii_lowercase());
            Ok((Response::Execution(Tag::new("RESET")), reported))
        }
        Action::ResetAll => {
            let names: Vec<String> = conn.settings.lock().values.keys().cloned().collect();
            for n in names {
                if let Some(r) = apply(conn, meta, &n, None)? {
                    reported.push(r);
                }
                keep_on_commit(conn, &n);
            }
            Ok((Response::Execution(Tag::new("RESET")), reported))
        }
        Action::Show(name) => {
            let v = value(conn, &name).ok_or_else(|| unknown(&name))?;
            let column = find(&name).map_or(name.to_ascii_lowercase(), |p| p.name.to_string());
            Ok((rows(&[&column], vec![vec![v]])?, reported))
        }
        Action::ShowAll => {
            let rows_ = all(conn)
                .into_iter()
                .map(|s| vec![s.name, s.setting, s.short_desc])
                .collect();
            Ok((rows(&["name", "setting", "description"], rows_)?, reported))
        }
    }
}

fn set_tag() -> Response {
    Response::Execution(Tag::new("SET"))
}

/// One row of `SHOW ALL` and `pg_settings`.
#[derive(Debug, Clone)]
pub struct Setting {
    pub name: String,
    pub setting: String,
    pub unit: Option<String>,
    pub category: String,
    pub short_desc: String,
    pub context: String,
    pub vartype: String,
    /// `default`, `configuration file` (the server's), `session` or
    /// `client` (sent at startup).
    pub source: String,
    pub enumvals: Option<String>,
    pub boot_val: String,
    pub reset_val: String,
}

/// Every setting of the session `conn`, sorted by name as PostgreSQL
/// sorts them (without case).
pub(crate) fn all(conn: &ConnState) -> Vec<Setting> {
    let mut out: Vec<Setting> = PARAMS
        .iter()
        .map(|p| {
            let own = conn.settings.get(p.name);
            let reset = default(conn, p);
            let source = if own.is_some() {
                "session"
            } else if conn.startup.contains_key(&p.name.to_ascii_lowercase()) {
                "client"
            } else if matches!(
                p.kind,
                Kind::MaxConnections | Kind::StatementTimeout | Kind::Idle(_)
            ) {
                "configuration file"
            } else {
                "default"
            };
            Setting {
                name: p.name.to_string(),
                setting: own.unwrap_or_else(|| reset.clone()),
                unit: p.unit.map(str::to_string),
                category: p.category.to_string(),
                short_desc: p.short_desc.to_string(),
                context: p.context.name().to_string(),
                vartype: p.vartype.to_string(),
                source: source.to_string(),
                enumvals: match p.kind {
                    Kind::Enum(v, _) => Some(format!("{{{}}}", v.join(","))),
                    _ => None,
                },
                boot_val: reset.clone(),
                reset_val: reset,
            }
        })
        .collect();
    let server = conn.session.coordinator().session().state();
    let server_values: BTreeMap<String, Option<String>> = server
        .config_options()
        .entries()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    for e in conn.ctx.state().config_options().entries() {
        let reset = server_values
            .get(&e.key)
            .cloned()
            .flatten()
            .unwrap_or_default();
        out.push(Setting {
            source: if conn.settings.get(&e.key).is_some() {
                "session".into()
            } else {
                "default".into()
            },
            setting: e.value.unwrap_or_default(),
            unit: None,
            category: "DataFusion".into(),
            short_desc: e.description.to_string(),
            context: "user".into(),
            vartype: "string".into(),
            enumvals: None,
            boot_val: reset.clone(),
            reset_val: reset,
            name: e.key,
        });
    }
    out.sort_by_key(|s| s.name.to_ascii_lowercase());
    out
}

/// A text result: one column per name, the rows given.
fn rows(columns: &[&str], rows: Vec<Vec<String>>) -> Result<Response, SqlError> {
    let fields = Arc::new(
        columns
            .iter()
            .map(|c| FieldInfo::new(c.to_string(), None, None, Type::TEXT, FieldFormat::Text))
            .collect::<Vec<_>>(),
    );
    let mut encoded = Vec::with_capacity(rows.len());
    for r in rows {
        let mut enc = DataRowEncoder::new(fields.clone());
        for v in r {
            enc.encode_field(&Some(v))
                .map_err(|e| SqlError::user("XX000", e.to_string()))?;
        }
        encoded.push(Ok(enc.take_row()));
    }
    Ok(Response::Query(QueryResponse::new(
        fields,
        Box::pin(stream::iter(encoded)),
    )))
}

/// PostgreSQL's reading of a time setting whose unit is milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let per = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1e3,
        "min" => 60e3,
        "h" => 3600e3,
        "d" => 86400e3,
        _ => return None,
    };
    let ms = (num * per).round();
    // PostgreSQL's range for these: 0 .. INT_MAX ms.
    (num.is_finite() && (0.0..=i32::MAX as f64).contains(&ms)).then_some(ms as u64)
}

/// How `SHOW` prints a timeout: PostgreSQL's largest whole unit.
pub fn format_ms(d: Option<Duration>) -> String {
    let Some(d) = d else {
        return "0".to_string();
    };
    let ms = d.as_millis() as u64;
    if ms == 0 {
        return "0".to_string();
    }
    for (unit, per) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("min", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(per) {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_print_like_postgres() {
        assert_eq!(parse_duration_ms("1500"), Some(1500));
        assert_eq!(parse_duration_ms("2s"), Some(2000));
        assert_eq!(parse_duration_ms(" 1 min "), Some(60_000));
        assert_eq!(parse_duration_ms("0"), Some(0));
        assert_eq!(parse_duration_ms("-1"), None);
        assert_eq!(parse_duration_ms("5 weeks"), None);
        assert_eq!(parse_duration_ms("3000000000"), None, "past INT_MAX ms");
        assert_eq!(format_ms(Some(Duration::from_millis(60_000))), "1min");
        assert_eq!(format_ms(Some(Duration::from_millis(1500))), "1500ms");
        assert_eq!(format_ms(None), "0");
        assert_eq!(format_ms(Some(Duration::ZERO)), "0");
    }

    #[test]
    fn values_are_checked_and_normalized() {
        let ds = find("datestyle").unwrap();
        assert_eq!(check(ds, "iso, dmy").unwrap(), "ISO, DMY");
        assert_eq!(check(ds, "German").unwrap(), "German, MDY");
        assert!(check(ds, "klingon").is_err());
        let enc = find("CLIENT_ENCODING").unwrap();
        assert_eq!(check(enc, "utf-8").unwrap(), "UTF8");
        assert!(check(enc, "latin1").is_err());
        let efd = find("extra_float_digits").unwrap();
        assert_eq!(check(efd, "3").unwrap(), "3");
        assert!(check(efd, "4").is_err());
        let st = find("statement_timeout").unwrap();
        assert_eq!(check(st, "90000").unwrap(), "90s");
        let sv = find("server_version").unwrap();
        assert!(matches!(
            check(sv, "1"),
            Err(SqlError::User {
                sqlstate: "55P02",
                ..
            })
        ));
    }
}
