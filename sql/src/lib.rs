//! slicedb-sql: the PostgreSQL front end (dialect, COPY, pgwire server, system views).
pub mod activity;
pub mod admin;
mod conn;
pub mod copy;
pub mod dialect;
pub mod errors;
pub mod frontend;
pub mod guard;
pub mod params;
pub mod pgcatalog;
pub mod server;
pub mod sessions;
pub mod settings;
pub mod shield;

pub use errors::SqlError;
