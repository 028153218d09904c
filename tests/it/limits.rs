//! One session never takes the database down: idle sessions are closed
//! with PostgreSQL's SQLSTATEs (an abandoned transaction block rolled
//! back), against `slicedb local` through tokio-postgres.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use tokio_postgres::{Client, NoTls};

use crate::harness::{self, Slicedb};

/// A client whose connection task's end (and its error) the test awaits.
async fn connect_watched(
    url: &str,
) -> Result<(
    Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
)> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| anyhow!("connecting to {url}: {}", harness::describe(&e)))?;
    Ok((client, tokio::spawn(conn)))
}

/// Wait for the server to close `conn`; the SQLSTATE it closed it with.
async fn closed_with(
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    limit: Duration,
) -> Result<String> {
    let end = tokio::time::timeout(limit, conn)
        .await
        .with_context(|| format!("the connection was still open after {limit:?}"))??;
    let e = end
        .err()
        .ok_or_else(|| anyhow!("the connection ended without an error"))?;
    let db = e
        .as_db_error()
        .ok_or_else(|| anyhow!("not a server error: {e}"))?;
    ensure!(db.severity() == "FATAL", "{}", harness::describe(&e));
    Ok(db.code().code().to_string())
}

#[test]
fn idle_sessions_are_closed_with_postgres_sqlstates_and_their_transactions_rolled_back() {
    harness::run("idle", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local_args(
            &env,
            2,
            &data,
            &[],
            &["--idle-in-transaction-session-timeout", "2s"],
        )
        .await?;
        let c = db.connect().await?;
        harness::exec(&c, "CREATE TABLE t (k bigint, v text) DISTRIBUTE ON (k)").await?;
        harness::exec(&c, "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')").await?;
        let shown = harness::scalar(&c, "SHOW idle_in_transaction_session_timeout").await?;
        ensure!(shown == "2s", "the server default shows as {shown}");
        harness::expect_error(&c, "SET idle_session_timeout = 'soon'", &["22023"]).await?;

        // An open transaction block left idle: closed with 25P03 after
        // the server's default, its insert and its delete rolled back.
        let (a, a_conn) = connect_watched(db.url()).await?;
        a.batch_execute("BEGIN; INSERT INTO t VALUES (100, 'x'); DELETE FROM t WHERE k = 1")
            .await?;
        let idle_since = Instant::now();
        let state = harness::scalar(
            &c,
            "SELECT state FROM pg_stat_activity WHERE state <> 'active' \
             AND query LIKE 'BEGIN%'",
        )
        .await?;
        ensure!(
            state == "idle in transaction",
            "pg_stat_activity says {state}"
        );
        let code = closed_with(a_conn, Duration::from_secs(20)).await?;
        let took = idle_since.elapsed();
        println!("idle in transaction: closed with {code} after {took:?}");
        ensure!(code == "25P03", "idle in transaction: closed with {code}");
        ensure!(took >= Duration::from_millis(1900), "closed after {took:?}");
        ensure!(a.is_closed());
        // Rolled back: its row is not there, and the row it deleted can be
        // deleted by another transaction (its lock is gone) without 40001.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = c.simple_query("DELETE FROM t WHERE k = 1").await;
            match r {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    println!("the abandoned block is not rolled back yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(anyhow!("{}", harness::describe(&e))),
            }
        }
        let n = harness::scalar(&c, "SELECT count(*) FROM t").await?;
        ensure!(n == "2", "after the rollback and the delete: {n} rows");

        // A session's own idle_session_timeout: closed with 57P05.
        let (b, b_conn) = connect_watched(db.url()).await?;
        b.batch_execute("SET idle_session_timeout = '1s'").await?;
        let shown = b.simple_query("SHOW idle_session_timeout").await?;
        let since = Instant::now();
        let shown = shown.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        ensure!(shown.as_deref() == Some("1s"), "SHOW says {shown:?}");
        let code = closed_with(b_conn, Duration::from_secs(20)).await?;
        println!(
            "idle session: closed with {code} after {:?}",
            since.elapsed()
        );
        ensure!(code == "57P05", "idle session: closed with {code}");

        // Busy sessions are not idle: statements every 300 ms for 3 s
        // under a 1 s timeout keep it; RESET goes back to the default
        // (none), and a 1.5 s pause is fine then.
        let (d, d_conn) = connect_watched(db.url()).await?;
        d.batch_execute("SET idle_session_timeout = 1000").await?;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            d.simple_query("SELECT count(*) FROM t").await?;
        }
        d.batch_execute("RESET idle_session_timeout").await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        d.simple_query("SELECT 1").await?;
        ensure!(!d_conn.is_finished(), "the busy session was closed");

        // The server serves on.
        harness::assert_alive(&c, "idle sessions closed").await?;
        db.stop().await
    });
}
