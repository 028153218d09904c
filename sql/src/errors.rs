//! The SQL front end's error type, and the one place where any error from
//! the layers below becomes a PostgreSQL error with a SQLSTATE.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;
use pgwire::error::{ErrorInfo, PgWireError};
use slicedb_coordinator::CoordinatorError;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{message}")]
    User {
        sqlstate: &'static str,
        message: String,
    },
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Parser(#[from] ParserError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl SqlError {
    pub fn user(sqlstate: &'static str, message: impl Into<String>) -> Self {
        SqlError::User {
            sqlstate,
            message: message.into(),
        }
    }

    pub fn not_supported(what: impl Into<String>) -> Self {
        SqlError::user("0A000", what)
    }
}

impl From<SqlError> for PgWireError {
    fn from(e: SqlError) -> Self {
        let (code, message) = classify(&e);
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".to_string(),
            code.to_string(),
            message,
        )))
    }
}

/// Give any PgWireError a proper SQLSTATE (datafusion-postgres hands us
/// planner and execution errors as opaque `ApiError`s).
pub fn to_pg(e: PgWireError) -> PgWireError {
    match e {
        PgWireError::ApiError(inner) => {
            let (code, message) = classify(inner.as_ref());
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".to_string(),
                code.to_string(),
                message,
            )))
        }
        PgWireError::UserError(mut info) => {
            reclassify(&mut info);
            PgWireError::UserError(info)
        }
        other => other,
    }
}

/// Fix the SQLSTATE of errors datafusion-postgres returns inside `Ok`.
pub fn fix_responses(
    r: pgwire::error::PgWireResult<Vec<pgwire::api::results::Response>>,
) -> pgwire::error::PgWireResult<Vec<pgwire::api::results::Response>> {
    let mut out = r.map_err(to_pg)?;
    for resp in out.iter_mut() {
        fix_one(resp);
    }
    Ok(out)
}

/// [`fix_responses`] for the extended protocol's single response.
pub fn fix_response(
    r: pgwire::error::PgWireResult<pgwire::api::results::Response>,
) -> pgwire::error::PgWireResult<pgwire::api::results::Response> {
    let mut resp = r.map_err(to_pg)?;
    fix_one(&mut resp);
    Ok(resp)
}

/// An error response gets its SQLSTATE; so does an error raised while a
/// result's rows stream (a division by zero met at the millionth row),
/// which would otherwise reach the client as XX000.
fn fix_one(resp: &mut pgwire::api::results::Response) {
    use futures::StreamExt;
    use pgwire::api::results::Response;
    match resp {
        Response::Error(info) => reclassify(info),
        Response::Query(q) => {
            // Every DataFusion result passes here: its column names lose
            // the suffixes that made repeated names unique (crate::names).
            crate::names::restore(q);
            let rows = std::mem::replace(&mut q.data_rows, Box::pin(futures::stream::empty()));
            q.data_rows = Box::pin(rows.map(|r| r.map_err(to_pg)));
        }
        _ => {}
    }
}

/// Replace an internal-error code by the one the message implies.
fn reclassify(info: &mut ErrorInfo) {
    if info.code == "XX000" {
        if let Some(code) = classify_message(&info.message) {
            info.code = code.to_string();
        }
    }
}

/// datafusion-postgres reports planner and execution failures as XX000 with
/// DataFusion's message; recover the SQLSTATE a PostgreSQL client expects.
fn classify_message(m: &str) -> Option<&'static str> {
    Some(if m.contains("is unreachable") {
        // Errors raised while a result streams reach us only as text. A node
        // died under the statement: the cluster fails it over; retry.
        "40001"
    } else if m.contains("is unavailable: both copies") {
        "58000"
    } else if m.contains("checksum mismatch") || m.contains("corrupt block") {
        "XX001"
    } else if m.contains("stale map epoch") {
        "40001"
    } else if m.contains("No space left on device") || m.contains("Disk quota exceeded") {
        // A spill file or a log the host file system had no room for.
        "53100"
    } else if m.contains("violates not-null constraint") {
        "23502"
    } else if m.contains("No field named") {
        "42703"
    } else if m.contains("table") && m.contains("not found") {
        "42P01"
    } else if m.contains("sql parser error") {
        "42601"
    } else if m.contains("Cast error") || m.contains("Cannot cast") {
        if is_out_of_range(m) {
            "22003"
        } else {
            "22P02"
        }
    } else if m.contains("Divide by zero") {
        "22012"
    } else if m.contains("Invalid function") || m.contains("function") && m.contains("not found") {
        "42883"
    } else if m.contains("Cannot infer common")
        || m.contains("Cannot coerce")
        || m.contains("type") && m.contains("mismatch")
    {
        "42804"
    } else if m.contains("Overflow") || m.contains("overflow") {
        "22003"
    } else if m.contains("Error during planning") {
        "42000"
    } else {
        return None;
    })
}

/// No space on the host file system (a spill file, a log): 53100.
fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// SQLSTATE and message for any error, walking wrapped causes.
pub fn classify(e: &(dyn std::error::Error + 'static)) -> (&'static str, String) {
    if let Some(s) = e.downcast_ref::<SqlError>() {
        return match s {
            SqlError::User { sqlstate, message } => (sqlstate, message.clone()),
            SqlError::Coordinator(c) => classify(c),
            SqlError::DataFusion(d) => classify(d),
            SqlError::Parser(p) => ("42601", p.to_string()),
            SqlError::Io(io) if is_out_of_space(io) => ("53100", io.to_string()),
            SqlError::Io(io) => ("58030", io.to_string()),
        };
    }
    if let Some(c) = e.downcast_ref::<CoordinatorError>() {
        if let CoordinatorError::DataFusion(d) = c {
            return classify(d);
        }
        if let CoordinatorError::Arrow(a) = c {
            return arrow_state(a);
        }
        return (c.sqlstate(), c.to_string());
    }
    if let Some(p) = e.downcast_ref::<ParserError>() {
        return ("42601", p.to_string());
    }
    if let Some(a) = e.downcast_ref::<ArrowError>() {
        return arrow_state(a);
    }
    if let Some(d) = e.downcast_ref::<DataFusionError>() {
        return datafusion_state(d);
    }
    if let Some(PgWireError::UserError(info)) = e.downcast_ref::<PgWireError>() {
        return (leak_code(&info.code), info.message.clone());
    }
    ("XX000", e.to_string())
}

fn leak_code(code: &str) -> &'static str {
    // SQLSTATEs are a closed set of 5-character codes; map the common ones
    // back to statics and fall back to internal_error for the rest.
    const KNOWN: &[&str] = &[
        "42601", "42P01", "42703", "42804", "42883", "22P02", "22003", "22012", "0A000", "57014",
        "25P02", "42P07", "23502", "XX000", "08P01", "22P04", "22021",
    ];
    KNOWN
        .iter()
        .find(|k| **k == code)
        .copied()
        .unwrap_or("XX000")
}

fn arrow_state(a: &ArrowError) -> (&'static str, String) {
    let msg = a.to_string();
    let code = match a {
        ArrowError::CastError(m) | ArrowError::ParseError(m) => {
            if is_out_of_range(m) {
                "22003"
            } else {
                "22P02"
            }
        }
        ArrowError::ArithmeticOverflow(_) => "22003",
        ArrowError::DivideByZero => "22012",
        ArrowError::ComputeError(m) if m.contains("Overflow") || m.contains("overflow") => "22003",
        ArrowError::ExternalError(inner) => return classify(inner.as_ref()),
        ArrowError::IoError(_, io) if is_out_of_space(io) => "53100",
        _ => classify_message(&msg).unwrap_or("XX000"),
    };
    (code, msg)
}

fn is_out_of_range(m: &str) -> bool {
    // arrow: "Can't cast value 99999999999 to type Int32" / "... overflow"
    m.contains("Can't cast value")
        || m.contains("overflow")
        || m.contains("Overflow")
        || m.contains("out of range")
        || m.contains("too large")
}

fn datafusion_state(d: &DataFusionError) -> (&'static str, String) {
    use DataFusionError as D;
    match d {
        D::SQL(p, _) => ("42601", p.to_string()),
        D::ArrowError(a, _) => arrow_state(a),
        D::External(inner) => classify(inner.as_ref()),
        D::Context(_, inner) => datafusion_state(inner),
        D::Shared(inner) => datafusion_state(inner),
        D::Diagnostic(_, inner) => datafusion_state(inner),
        D::SchemaError(s, _) => {
            let m = s.to_string();
            let code = if m.contains("No field named") || m.contains("not found") {
                "42703"
            } else if m.contains("ambiguous") || m.contains("Ambiguous") {
                "42702"
            } else {
                "42000"
            };
            (code, m)
        }
        // Plan and execution errors are told apart only by their text; one
        // rule set (classify_message) serves them and the wire-side errors.
        D::Plan(_) => {
            let m = d.to_string();
            (classify_message(&m).unwrap_or("42000"), m)
        }
        D::NotImplemented(m) => ("0A000", m.clone()),
        D::ResourcesExhausted(m) => ("53200", m.clone()),
        D::IoError(io) if is_out_of_space(io) => ("53100", d.to_string()),
        _ => {
            let m = d.to_string();
            (classify_message(&m).unwrap_or("XX000"), m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_for_common_failures() {
        // No space on the host file system (a spill file): 53100.
        let enospc = || std::io::Error::from_raw_os_error(28);
        assert_eq!(classify(&DataFusionError::IoError(enospc())).0, "53100");
        let spill = ArrowError::IoError("spill".into(), enospc());
        assert_eq!(classify(&spill).0, "53100");
        let text =
            DataFusionError::Execution("IO error: No space left on device (os error 28)".into());
        assert_eq!(classify(&text).0, "53100");
        assert_eq!(classify(&SqlError::Io(enospc())).0, "53100");
        let nf = DataFusionError::Plan("table 'datafusion.public.nope' not found".into());
        assert_eq!(classify(&nf).0, "42P01");
        let cast = DataFusionError::ArrowError(
            Box::new(ArrowError::CastError(
                "Cannot cast string 'abc' to value of Int32 type".into(),
            )),
            None,
        );
        assert_eq!(classify(&cast).0, "22P02");
        let big = DataFusionError::ArrowError(
            Box::new(ArrowError::CastError(
                "Can't cast value 99999999999 to type Int32".into(),
            )),
            None,
        );
        assert_eq!(classify(&big).0, "22003");
        let wrapped =
            DataFusionError::External(Box::new(CoordinatorError::TableNotFound("t".into())));
        assert_eq!(classify(&wrapped).0, "42P01");
        assert_eq!(classify(&ParserError::ParserError("x".into())).0, "42601");
        let wrapped = to_pg(PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            "XX000".into(),
            "Schema error: No field named nope.".into(),
        ))));
        match wrapped {
            PgWireError::UserError(i) => assert_eq!(i.code, "42703"),
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod api_error_tests {
    use super::*;

    #[test]
    fn diagnostic_wrapped_errors_keep_their_sqlstate() {
        let inner = DataFusionError::Plan("table 'datafusion.public.x' not found".into());
        let e = DataFusionError::Diagnostic(
            Box::new(datafusion::common::Diagnostic::new_error("x", None)),
            Box::new(inner),
        );
        assert_eq!(classify(&e).0, "42P01");
    }

    #[test]
    fn api_errors_from_datafusion_postgres_get_sqlstates() {
        let e = PgWireError::ApiError(Box::new(DataFusionError::Plan(
            "table 'datafusion.public.nosuch' not found".into(),
        )));
        match to_pg(e) {
            PgWireError::UserError(i) => assert_eq!(i.code, "42P01", "{}", i.message),
            other => panic!("{other:?}"),
        }
    }
}
