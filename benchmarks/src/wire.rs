//! The slicedb side: a PostgreSQL client session.
//!
//! Owns connecting with tokio-postgres (no TLS) and running a query with the
//! simple query protocol, collecting its rows as text exactly as the server
//! sent them, which is what [`crate::verify`] compares.

use anyhow::{anyhow, Context, Result};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::verify::ResultSet;

/// Connect to `url`; the connection task runs on the current runtime.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// Render a server error with its SQLSTATE, message, detail and hint.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}", db.code().code(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" (detail: {d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!(" (hint: {h})"));
            }
            s
        }
        None => e.to_string(),
    }
}

/// Run `sql` (one statement) and collect its rows as text.
pub async fn query(client: &Client, sql: &str) -> Result<ResultSet> {
    let msgs = client
        .simple_query(sql)
        .await
        .map_err(|e| anyhow!(describe(&e)))?;
    let mut set = ResultSet::default();
    let mut described = false;
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) if !described => {
                set.columns = cols.iter().map(|c| c.name().to_string()).collect();
                described = true;
            }
            SimpleQueryMessage::Row(r) => {
                if !described {
                    set.columns = r.columns().iter().map(|c| c.name().to_string()).collect();
                    described = true;
                }
                set.rows
                    .push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
            }
            _ => {}
        }
    }
    Ok(set)
}
