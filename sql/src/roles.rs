//! Roles and privileges as PostgreSQL users write them:
//!
//! - `CREATE ROLE | USER name [WITH] [SUPERUSER | NOSUPERUSER] [LOGIN |
//!   NOLOGIN] [[ENCRYPTED] PASSWORD 'secret' | PASSWORD NULL]` (USER implies
//!   LOGIN), `ALTER ROLE | USER name [WITH] ...` (the same options),
//!   `DROP ROLE | USER [IF EXISTS] name [, ...]`;
//! - `GRANT | REVOKE { ALL [PRIVILEGES] | SELECT, INSERT, UPDATE, DELETE,
//!   TRUNCATE } ON [TABLE] t [, ...] TO | FROM { role | PUBLIC } [, ...]`.
//!
//! Only a superuser changes roles, except that a role may change its own
//! password; only a table's owner (or a superuser) grants on it. A
//! password becomes a SCRAM verifier here, before anything else sees the
//! statement: the coordinator, its catalog file and the logs only ever
//! hold the verifier, and [`redact`] is the text `pg_stat_activity` shows.
//! A password written as a SCRAM verifier already (psql's `\password`
//! sends one) is stored as it is.
//!
//! The statements are read here (a small tokenizer, so that no parser
//! error ever echoes a password); the catalog holds the result. It never
//! authenticates anyone (`crate::auth`).

use std::borrow::Cow;

use pgwire::api::results::{Response, Tag};
use slicedb_coordinator::roles::{Privilege, RoleDef, PUBLIC};
use slicedb_coordinator::{Coordinator, CoordinatorError};
use tracing::info;

use crate::dialect::normalize;
use crate::errors::SqlError;
use crate::scram::Verifier;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A word: (as folded, quoted).
    Word(String, bool),
    Str(String),
    Comma,
    Dot,
}

fn tokenize(sql: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut chars = sql.trim().trim_end_matches(';').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            ',' => out.push(Tok::Comma),
            '.' => out.push(Tok::Dot),
            '\'' | '"' => {
                let mut s = String::new();
                loop {
                    match chars.next()? {
                        q if q == c && chars.peek() == Some(&c) => {
                            chars.next();
                            s.push(c);
                        }
                        q if q == c => break,
                        other => s.push(other),
                    }
                }
                out.push(if c == '\'' {
                    Tok::Str(s)
                } else {
                    Tok::Word(s, true)
                });
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if !(n.is_alphanumeric() || n == '_' || n == '$') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                out.push(Tok::Word(normalize(&s, false), false));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A role option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opt {
    Superuser(bool),
    Login(bool),
    /// None: PASSWORD NULL.
    Password(Option<String>),
}

/// A statement of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleStatement {
    Create {
        name: String,
        user: bool,
        opts: Vec<Opt>,
    },
    Alter {
        name: String,
        opts: Vec<Opt>,
    },
    Drop {
        names: Vec<String>,
        if_exists: bool,
    },
    Grant {
        revoke: bool,
        privileges: Vec<Privilege>,
        tables: Vec<String>,
        roles: Vec<String>,
    },
}

fn kw(t: Option<&Tok>, word: &str) -> bool {
    matches!(t, Some(Tok::Word(w, false)) if w == word)
}

fn syntax(what: &str) -> SqlError {
    SqlError::user("42601", format!("syntax error in {what}"))
}

/// The statement `sql` is, if it is one of this module's (Some(Err) for
/// one of ours that is malformed).
pub fn parse(sql: &str) -> Option<Result<RoleStatement, SqlError>> {
    let head: Vec<String> = sql
        .split_whitespace()
        .take(2)
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let ours = matches!(
        head.iter().map(String::as_str).collect::<Vec<_>>()[..],
        ["create" | "alter" | "drop", "role" | "user"] | ["grant" | "revoke", _]
    );
    if !ours {
        return None;
    }
    let Some(toks) = tokenize(sql) else {
        return Some(Err(syntax("a role or privilege statement")));
    };
    Some(parse_tokens(&toks))
}

fn name_at(toks: &[Tok], i: usize) -> Result<String, SqlError> {
    match toks.get(i) {
        Some(Tok::Word(w, _)) => Ok(w.clone()),
        _ => Err(syntax("a role name")),
    }
}

fn parse_tokens(toks: &[Tok]) -> Result<RoleStatement, SqlError> {
    let Some(Tok::Word(first, false)) = toks.first() else {
        return Err(syntax("a role statement"));
    };
    match first.as_str() {
        "create" | "alter" => {
            let user = kw(toks.get(1), "user");
            let name = name_at(toks, 2)?;
            let opts = parse_options(&toks[3..])?;
            Ok(if first == "create" {
                RoleStatement::Create { name, user, opts }
            } else {
                RoleStatement::Alter { name, opts }
            })
        }
        "drop" => {
            let mut i = 2;
            let if_exists = kw(toks.get(2), "if") && kw(toks.get(3), "exists");
            if if_exists {
                i = 4;
            }
            let names = list(&toks[i..], "DROP ROLE")?;
            Ok(RoleStatement::Drop { names, if_exists })
        }
        _ => parse_grant(toks, first == "revoke"),
    }
}

/// `a, b, c` (each a single word) to the end.
fn list(toks: &[Tok], what: &str) -> Result<Vec<String>, SqlError> {
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        match (i % 2, t) {
            (0, Tok::Word(w, _)) => out.push(w.clone()),
            (1, Tok::Comma) => {}
            _ => return Err(syntax(what)),
        }
    }
    if out.is_empty() || toks.len().is_multiple_of(2) {
        return Err(syntax(what));
    }
    Ok(out)
}

fn parse_options(toks: &[Tok]) -> Result<Vec<Opt>, SqlError> {
    let mut opts = Vec::new();
    let mut i = usize::from(kw(toks.first(), "with"));
    while i < toks.len() {
        let Tok::Word(w, false) = &toks[i] else {
            return Err(syntax("role options"));
        };
        i += 1;
        match w.as_str() {
            "superuser" => opts.push(Opt::Superuser(true)),
            "nosuperuser" => opts.push(Opt::Superuser(false)),
            "login" => opts.push(Opt::Login(true)),
            "nologin" => opts.push(Opt::Login(false)),
            // What slicedb's roles are anyway.
            "inherit" | "nocreatedb" | "nocreaterole" | "noreplication" | "nobypassrls" => {}
            "encrypted" if kw(toks.get(i), "password") => {}
            "password" => {
                match toks.get(i) {
                    Some(Tok::Str(s)) => opts.push(Opt::Password(Some(s.clone()))),
                    Some(Tok::Word(n, false)) if n == "null" => opts.push(Opt::Password(None)),
                    _ => return Err(syntax("PASSWORD (a quoted string or NULL)")),
                }
                i += 1;
            }
            other => {
                return Err(SqlError::not_supported(format!(
                    "role option {}",
                    other.to_uppercase()
                )))
            }
        }
    }
    Ok(opts)
}

fn parse_grant(toks: &[Tok], revoke: bool) -> Result<RoleStatement, SqlError> {
    let what = if revoke { "REVOKE" } else { "GRANT" };
    let on = toks.iter().position(|t| kw(Some(t), "on")).ok_or_else(|| {
        SqlError::not_supported(format!("{what} of a role (only privileges ON tables)"))
    })?;
    let mut privileges = Vec::new();
    match &toks[1..on] {
        [Tok::Word(a, false)] | [Tok::Word(a, false), Tok::Word(_, false)] if a == "all" => {
            privileges.extend(Privilege::ALL)
        }
        words => {
            for w in list(words, what)? {
                privileges.push(Privilege::parse(&w).ok_or_else(|| {
                    SqlError::not_supported(format!("privilege {} on a table", w.to_uppercase()))
                })?);
            }
        }
    }
    let to = if revoke { "from" } else { "to" };
    let mut i = on + 1;
    if kw(toks.get(i), "table") {
        i += 1;
    }
    let end = toks[i..]
        .iter()
        .position(|t| kw(Some(t), to))
        .map(|p| p + i)
        .ok_or_else(|| syntax(what))?;
    let mut tables = Vec::new();
    let mut j = i;
    while j < end {
        let mut parts = vec![name_at(toks, j)?];
        j += 1;
        while j < end && toks[j] == Tok::Dot {
            parts.push(name_at(toks, j + 1)?);
            j += 2;
        }
        tables.push(match parts.as_slice() {
            [t] => t.clone(),
            [s, t] if s == "public" => t.clone(),
            [s, t] => format!("{s}.{t}"),
            _ => return Err(syntax("a table name")),
        });
        if j < end {
            if toks[j] != Tok::Comma {
                return Err(syntax(what));
            }
            j += 1;
        }
    }
    if tables.is_empty() {
        return Err(syntax(what));
    }
    let roles = list(&toks[end + 1..], what)?;
    Ok(RoleStatement::Grant {
        revoke,
        privileges,
        tables,
        roles,
    })
}

/// `sql` as `pg_stat_activity` may show it: a role statement's string
/// literals (its password) replaced.
pub fn redact(sql: &str) -> Cow<'_, str> {
    if parse(sql).is_none() || !sql.contains('\'') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut in_str = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, in_str) {
            ('\'', false) => {
                in_str = true;
                out.push_str("'********");
            }
            ('\'', true) if chars.peek() == Some(&'\'') => {
                chars.next();
            }
            ('\'', true) => {
                in_str = false;
                out.push('\'');
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The verifier a PASSWORD option stores (None: no password).
fn verifier(password: Option<&str>) -> Result<Option<String>, SqlError> {
    match password {
        None | Some("") => Ok(None),
        Some(p) if p.starts_with("SCRAM-SHA-256$") => match Verifier::parse(p) {
            Some(v) => Ok(Some(v.to_string())),
            None => Err(SqlError::user("22023", "malformed SCRAM-SHA-256 verifier")),
        },
        Some(p) if p.len() == 35 && p.starts_with("md5") => Err(SqlError::not_supported(
            "MD5 password hashes; give the password, or a SCRAM-SHA-256 verifier",
        )),
        Some(p) => Verifier::new(p)
            .map(|v| Some(v.to_string()))
            .ok_or_else(|| SqlError::user("58000", "no random source for a password salt")),
    }
}

fn apply(role: &mut RoleDef, opts: &[Opt]) -> Result<(), SqlError> {
    for o in opts {
        match o {
            Opt::Superuser(b) => role.superuser = *b,
            Opt::Login(b) => role.login = *b,
            Opt::Password(p) => role.verifier = verifier(p.as_deref())?,
        }
    }
    Ok(())
}

fn denied(what: &str) -> SqlError {
    CoordinatorError::PermissionDenied(format!("permission denied to {what}")).into()
}

/// Run it as the current role.
pub fn run(coord: &Coordinator, st: RoleStatement) -> Result<Response, SqlError> {
    let me = slicedb_coordinator::privileges::current_role();
    match st {
        RoleStatement::Create { name, user, opts } => {
            coord.require_superuser("create roles")?;
            if name == PUBLIC || name.is_empty() {
                return Err(SqlError::user(
                    "42939",
                    format!("role name \"{name}\" is reserved"),
                ));
            }
            let mut role = RoleDef {
                name: name.clone(),
                superuser: false,
                login: user,
                verifier: None,
            };
            apply(&mut role, &opts)?;
            coord
                .cluster()
                .catalog()
                .lock()
                .put_role(role.clone(), true)?;
            info!(role = %name, superuser = role.superuser, login = role.login, password = role.verifier.is_some(), "role created");
            Ok(Response::Execution(Tag::new("CREATE ROLE")))
        }
        RoleStatement::Alter { name, opts } => {
            let own_password_only = me.as_deref() == Some(name.as_str())
                && opts.iter().all(|o| matches!(o, Opt::Password(_)));
            if !own_password_only {
                coord.require_superuser("alter roles")?;
            }
            let mut cat = coord.cluster().catalog().lock();
            let mut role = cat
                .role(&name)
                .ok_or_else(|| CoordinatorError::RoleNotFound(name.clone()))?;
            apply(&mut role, &opts)?;
            let others = cat
                .roles()
                .iter()
                .filter(|r| r.superuser && r.name != name)
                .count();
            if !role.superuser && others == 0 {
                return Err(denied(
                    "remove the superuser attribute of the last superuser",
                ));
            }
            cat.put_role(role.clone(), false)?;
            info!(role = %name, superuser = role.superuser, login = role.login, password = role.verifier.is_some(), "role altered");
            Ok(Response::Execution(Tag::new("ALTER ROLE")))
        }
        RoleStatement::Drop { names, if_exists } => {
            coord.require_superuser("drop roles")?;
            let mut cat = coord.cluster().catalog().lock();
            for n in &names {
                if me.as_deref() == Some(n.as_str()) {
                    return Err(SqlError::user("55006", "current user cannot be dropped"));
                }
                let last = cat.roles().iter().all(|r| !r.superuser || &r.name == n);
                if cat.role(n).is_some_and(|r| r.superuser) && last {
                    return Err(denied("drop the last superuser"));
                }
                if !cat.drop_role(n)? && !if_exists {
                    return Err(CoordinatorError::RoleNotFound(n.clone()).into());
                }
                info!(role = %n, "role dropped");
            }
            Ok(Response::Execution(Tag::new("DROP ROLE")))
        }
        RoleStatement::Grant {
            revoke,
            privileges,
            tables,
            roles,
        } => {
            let metas = tables
                .iter()
                .map(|t| coord.check_owner(t))
                .collect::<Result<Vec<_>, _>>()?;
            let mut cat = coord.cluster().catalog().lock();
            for r in &roles {
                if r != PUBLIC && cat.role(r).is_none() {
                    return Err(CoordinatorError::RoleNotFound(r.clone()).into());
                }
            }
            for m in &metas {
                for r in &roles {
                    cat.grant(m.id, r, &privileges, revoke)?;
                }
            }
            Ok(Response::Execution(Tag::new(if revoke {
                "REVOKE"
            } else {
                "GRANT"
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_role_and_grant_statements() {
        let p = |s: &str| parse(s).expect("ours").expect("valid");
        assert_eq!(
            p("CREATE USER Alice WITH PASSWORD 'it''s' NOSUPERUSER;"),
            RoleStatement::Create {
                name: "alice".into(),
                user: true,
                opts: vec![Opt::Password(Some("it's".into())), Opt::Superuser(false)],
            }
        );
        assert_eq!(
            p("alter role \"Bob\" superuser nologin password null"),
            RoleStatement::Alter {
                name: "Bob".into(),
                opts: vec![Opt::Superuser(true), Opt::Login(false), Opt::Password(None)],
            }
        );
        assert_eq!(
            p("DROP ROLE IF EXISTS a, b"),
            RoleStatement::Drop {
                names: vec!["a".into(), "b".into()],
                if_exists: true
            }
        );
        assert_eq!(
            p("GRANT SELECT, insert ON TABLE t, public.u, s.v TO bob, PUBLIC"),
            RoleStatement::Grant {
                revoke: false,
                privileges: vec![Privilege::Select, Privilege::Insert],
                tables: vec!["t".into(), "u".into(), "s.v".into()],
                roles: vec!["bob".into(), "public".into()],
            }
        );
        assert_eq!(
            p("revoke all privileges on t from bob"),
            RoleStatement::Grant {
                revoke: true,
                privileges: Privilege::ALL.to_vec(),
                tables: vec!["t".into()],
                roles: vec!["bob".into()],
            }
        );
        assert!(parse("SELECT 1").is_none());
        assert!(parse("CREATE TABLE t (a int)").is_none());
        for bad in [
            "CREATE ROLE a PASSWORD",
            "CREATE ROLE a CREATEDB",
            "GRANT admins TO bob",
            "GRANT USAGE ON t TO bob",
            "GRANT SELECT ON t bob",
            "CREATE ROLE a PASSWORD 'unterminated",
        ] {
            let e = parse(bad).expect("ours").unwrap_err().to_string();
            assert!(!e.contains("unterminated"), "no literal echoed: {e}");
        }
    }

    #[test]
    fn passwords_are_redacted_and_become_verifiers() {
        assert_eq!(
            redact("ALTER ROLE a PASSWORD 'se''cret'"),
            "ALTER ROLE a PASSWORD '********'"
        );
        assert_eq!(redact("SELECT 'x'"), "SELECT 'x'");
        let v = verifier(Some("hunter2")).unwrap().unwrap();
        assert!(v.starts_with("SCRAM-SHA-256$4096:") && !v.contains("hunter2"));
        assert_eq!(verifier(Some(&v)).unwrap().as_deref(), Some(v.as_str()));
        assert_eq!(verifier(Some("")).unwrap(), None);
        assert!(verifier(Some("md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")).is_err());
    }
}
