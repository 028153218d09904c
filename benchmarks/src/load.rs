//! Loading the generated tables into slicedb over the PostgreSQL wire.
//!
//! Owns the client side of the load, done exactly as a user would: `DROP
//! TABLE IF EXISTS` / `CREATE TABLE ... DISTRIBUTE ON (key)` as SQL, then one
//! `COPY table FROM STDIN` (text format, tokio-postgres `copy_in`) per
//! table. A formatter thread turns record batches into ~1 MiB COPY chunks
//! while the async side streams the previous ones. Reports rows, seconds and
//! rows/s per table and in total.

use std::pin::pin;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::SinkExt;
use indicatif::ProgressBar;
use serde::Serialize;
use tokio_postgres::Client;

use crate::gen::{bar_style, multi_progress, Table, TableData, TpchData};
use crate::text::encode_copy_rows;

/// Bytes per COPY data message.
const CHUNK_BYTES: usize = 1 << 20;

/// The load of one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableLoad {
    pub table: String,
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_sec: f64,
}

/// The load of all tables.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub tables: Vec<TableLoad>,
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_sec: f64,
}

/// Drop (if present) and create the eight tables.
pub async fn create_tables(client: &Client) -> Result<()> {
    // Largest first, so a half-dropped schema never leaves a dangling view
    // of the data (there are no foreign keys either way).
    for t in Table::ALL.iter().rev() {
        client
            .simple_query(&format!("drop table if exists {}", t.name()))
            .await
            .with_context(|| format!("dropping {}", t.name()))?;
    }
    for t in Table::ALL {
        let sql = t.create_sql();
        client
            .simple_query(&sql)
            .await
            .with_context(|| format!("creating {}:\n{sql}", t.name()))?;
    }
    Ok(())
}

/// COPY one table's batches into the server; returns the row count the
/// server reported.
async fn copy_table(
    client: &Client,
    data: &TableData,
    pb: &ProgressBar,
    stall: Duration,
) -> Result<u64> {
    let name = data.table.name();
    let sink = client
        .copy_in::<_, Bytes>(&format!("copy {name} from stdin"))
        .await
        .with_context(|| format!("starting COPY {name} FROM STDIN"))?;
    let mut sink = pin!(sink);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(Bytes, u64)>>(4);
    let batches = data.batches.clone();
    let formatter = std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(CHUNK_BYTES + (64 << 10));
        let mut rows = 0u64;
        for b in &batches {
            // Encode in slices of rows so a chunk stays near CHUNK_BYTES.
            let mut start = 0;
            while start < b.num_rows() {
                let end = (start + 1024).min(b.num_rows());
                if let Err(e) = encode_copy_rows(b, start..end, &mut buf) {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
                rows += (end - start) as u64;
                start = end;
                if buf.len() >= CHUNK_BYTES {
                    let chunk = Bytes::from(std::mem::replace(
                        &mut buf,
                        Vec::with_capacity(CHUNK_BYTES + (64 << 10)),
                    ));
                    if tx.blocking_send(Ok((chunk, rows))).is_err() {
                        return;
                    }
                    rows = 0;
                }
            }
        }
        if !buf.is_empty() {
            let _ = tx.blocking_send(Ok((Bytes::from(buf), rows)));
        }
    });
    let mut result = Ok(());
    while let Some(msg) = rx.recv().await {
        match msg {
            Ok((chunk, rows)) => {
                match tokio::time::timeout(stall, sink.send(chunk)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        result = Err(anyhow!(e).context(format!("sending COPY data for {name}")));
                        break;
                    }
                    Err(_) => {
                        result = Err(anyhow!(
                            "COPY {name} FROM STDIN: the server took no data for {stall:?}"
                        ));
                        break;
                    }
                }
                pb.inc(rows);
            }
            Err(e) => {
                result = Err(e.context(format!("encoding {name} as COPY text")));
                break;
            }
        }
    }
    drop(rx);
    let _ = formatter.join();
    result?;
    let n = tokio::time::timeout(stall, sink.finish())
        .await
        .map_err(|_| anyhow!("COPY {name} FROM STDIN: no CommandComplete within {stall:?} of the end of the data"))?
        .with_context(|| format!("finishing COPY {name}"))?;
    Ok(n)
}

/// Create the tables and COPY every generated table into them. A COPY
/// whose server takes no data (or does not finish) for `stall` fails.
/// Prints one line per table to stderr when not drawing progress bars.
pub async fn load(
    client: &Client,
    data: &TpchData,
    progress: bool,
    stall: Duration,
) -> Result<LoadReport> {
    create_tables(client).await?;
    let mp = multi_progress(progress);
    let start = Instant::now();
    let mut tables = Vec::new();
    for t in &data.tables {
        let rows = t.rows();
        let pb = mp.add(ProgressBar::new(rows));
        pb.set_style(bar_style());
        pb.set_prefix(t.table.name());
        pb.set_message("loading");
        let t0 = Instant::now();
        let n = copy_table(client, t, &pb, stall).await?;
        let secs = t0.elapsed().as_secs_f64();
        if n != rows {
            bail!(
                "COPY {} reported {n} rows, {rows} were sent",
                t.table.name()
            );
        }
        pb.finish_with_message("loaded");
        if !progress {
            eprintln!(
                "loaded {:<8} {rows:>10} rows in {secs:>7.2} s ({:.0} rows/s)",
                t.table.name(),
                rows as f64 / secs.max(1e-9)
            );
        }
        tables.push(TableLoad {
            table: t.table.name().to_string(),
            rows,
            seconds: secs,
            rows_per_sec: rows as f64 / secs.max(1e-9),
        });
    }
    let seconds = start.elapsed().as_secs_f64();
    let rows = tables.iter().map(|t| t.rows).sum();
    Ok(LoadReport {
        tables,
        rows,
        seconds,
        rows_per_sec: rows as f64 / seconds.max(1e-9),
    })
}
