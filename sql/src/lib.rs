//! slicedb-sql: the PostgreSQL front end (dialect, COPY, pgwire server, system views).
pub mod activity;
pub mod admin;
mod block;
pub mod catalog_sql;
mod conn;
pub mod copy;
mod cursor;
pub mod ddl;
mod describe;
pub mod dialect;
pub mod dml;
pub mod errors;
pub mod frontend;
pub mod guard;
pub mod metrics;
pub mod names;
pub mod params;
pub mod pgcatalog;
pub mod pgroles;
pub mod pgtypeof;
mod portal;
pub mod server;
pub mod sessions;
pub mod settings;
pub mod shield;
pub mod version;

pub use errors::SqlError;
