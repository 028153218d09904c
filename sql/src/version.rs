//! What release slicedb answers as: PostgreSQL's, with its own beside it,
//! as drivers parse it (`server_version`, `server_version_num`,
//! `version()`). It owns these strings and nothing else.

/// The PostgreSQL release slicedb answers as: drivers pick their SQL by
/// it (psql's catalog queries, SQLAlchemy's dialect).
pub const PG_VERSION: &str = "15.0";
/// [`PG_VERSION`] as `server_version_num`.
pub const PG_VERSION_NUM: &str = "150000";

/// `server_version`: PostgreSQL's release, then ours in parentheses, as
/// distributions print theirs (`15.4 (Debian 15.4-1)`): libpq, JDBC and
/// psycopg read the leading number.
pub fn server_version() -> String {
    format!("{PG_VERSION} (slicedb {})", env!("CARGO_PKG_VERSION"))
}

/// `version()`: the form SQLAlchemy and other drivers parse
/// (`PostgreSQL X.Y ...`), naming slicedb as Greenplum names itself.
pub fn version() -> String {
    format!(
        "PostgreSQL {PG_VERSION} (slicedb {}) on {}-{}, compiled by rustc, 64-bit",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_read_as_postgres_15() {
        assert!(super::server_version().starts_with("15.0 (slicedb "));
        assert!(super::version().starts_with("PostgreSQL 15.0 (slicedb "));
        assert_eq!(super::PG_VERSION_NUM, "150000");
    }
}
