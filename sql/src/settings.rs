//! Session settings slicedb itself keeps: `idle_session_timeout` and
//! `idle_in_transaction_session_timeout` (`SET`, `RESET`, `SET ... TO
//! DEFAULT`, `SHOW`), stored on the connection's [`Session`] whose idle
//! watcher enforces them (`crate::sessions`).
//!
//! Values read as PostgreSQL reads them: an integer is milliseconds; a
//! string may carry a unit (`ms`, `s`, `min`, `h`, `d`); 0 turns the
//! timeout off. Anything else is `22023`, naming the setting.
//!
//! It owns no state: the session does. It never touches the coordinator.

use std::sync::Arc;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{Expr, Reset, Set, Statement, UnaryOperator, Value};
use futures::stream;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::{ClientInfo, Type};

use crate::sessions::{IdleTimeout, Registered};
use crate::SqlError;

/// What a statement does to one of our settings.
enum Action {
    /// `SET`: the value, None for `DEFAULT`.
    Set(Option<Duration>),
    Reset,
    Show,
}

/// The setting `st` sets, resets or shows, if it is one of ours.
fn ours(st: &Statement) -> Option<(IdleTimeout, Action, Option<&Expr>)> {
    match st {
        Statement::Set(Set::SingleAssignment {
            variable, values, ..
        }) => {
            let which = IdleTimeout::from_name(&variable.to_string())?;
            Some((which, Action::Set(None), values.first()))
        }
        Statement::Reset(r) => match &r.reset {
            Reset::ConfigurationParameter(name) => Some((
                IdleTimeout::from_name(&name.to_string())?,
                Action::Reset,
                None,
            )),
            Reset::ALL => None,
        },
        Statement::ShowVariable { variable } if variable.len() == 1 => Some((
            IdleTimeout::from_name(&variable[0].value)?,
            Action::Show,
            None,
        )),
        _ => None,
    }
}

/// Whether slicedb handles `st` here.
pub fn owns(st: &Statement) -> bool {
    ours(st).is_some()
}

/// Run a statement [`owns`] answered true for, on `client`'s session.
pub fn run<C: ClientInfo>(client: &C, st: &Statement) -> Result<Response, SqlError> {
    let (which, action, value) =
        ours(st).ok_or_else(|| SqlError::not_supported(format!("statement {st}")))?;
    let action = match (action, value) {
        (Action::Set(_), Some(v)) => Action::Set(parse_value(which, v)?),
        (a, _) => a,
    };
    let session = client
        .session_extensions()
        .get::<Registered>()
        .map(|r| r.session.clone());
    let Some(session) = session else {
        return Err(SqlError::user(
            "0A000",
            format!("{} needs a PostgreSQL connection", which.name()),
        ));
    };
    match action {
        Action::Set(v) => {
            session.set_idle_timeout(which, v);
            Ok(Response::Execution(Tag::new("SET")))
        }
        Action::Reset => {
            session.set_idle_timeout(which, None);
            Ok(Response::Execution(Tag::new("RESET")))
        }
        Action::Show => show(which.name(), &format_ms(session.idle_timeout(which))),
    }
}

/// The value of `SET which = v`: None for `DEFAULT`.
fn parse_value(which: IdleTimeout, v: &Expr) -> Result<Option<Duration>, SqlError> {
    let text = match v {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.clone(),
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => format!("-{expr}"),
        Expr::Identifier(i) if i.value.eq_ignore_ascii_case("default") => return Ok(None),
        other => other.to_string(),
    };
    parse_duration_ms(&text)
        .map(|ms| Some(Duration::from_millis(ms)))
        .ok_or_else(|| {
            SqlError::user(
                "22023",
                format!(
                    "invalid value for parameter \"{}\": \"{text}\" (a duration such as 5000, '5s' or '1min', 0 for none)",
                    which.name()
                ),
            )
        })
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
fn format_ms(d: Option<Duration>) -> String {
    let Some(d) = d else {
        return "0".to_string();
    };
    let ms = d.as_millis() as u64;
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

fn show(name: &str, value: &str) -> Result<Response, SqlError> {
    let fields = Arc::new(vec![FieldInfo::new(
        name.to_string(),
        None,
        None,
        Type::TEXT,
        FieldFormat::Text,
    )]);
    let mut enc = DataRowEncoder::new(fields.clone());
    enc.encode_field(&Some(value))
        .map_err(|e| SqlError::user("XX000", e.to_string()))?;
    let row = enc.take_row();
    Ok(Response::Query(QueryResponse::new(
        fields,
        Box::pin(stream::once(async move { Ok(row) })),
    )))
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
    }
}
