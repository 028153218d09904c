//! slicedb-sql: the PostgreSQL front end (dialect, COPY, pgwire server, system views).
pub mod copy;
pub mod dialect;
pub mod errors;
pub mod frontend;
pub mod server;

pub use errors::SqlError;
