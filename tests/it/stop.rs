//! Stopping statements through psycopg (tests/python/test_stop.py) against
//! `slicedb local`: a light query beside a runaway one, cancel, statement
//! timeout, a client gone; each time the server's processor use (the nodes
//! run in it) falls back to nearly nothing. SIGTERM under such a query.

use std::time::{Duration, Instant};

use crate::harness::{self, Slicedb};
use crate::python::run_script;

#[test]
fn a_runaway_query_is_stopped_by_cancel_timeout_or_its_client_leaving() {
    harness::run("stop", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let args = vec![db.url().to_string(), db.pid().to_string()];
        run_script("test_stop.py", args, "all stop checks passed").await?;
        db.stop().await
    });
}

/// SIGTERM while a runaway query runs: the server exits 0 within a few
/// seconds (its statement is stopped), and what was committed is there
/// after a restart on the same data.
#[test]
fn sigterm_stops_the_server_within_seconds_while_a_runaway_query_runs() {
    harness::run("sigterm", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local(&env, 2, &data).await?;
        let c = db.connect().await?;
        harness::exec(&c, "CREATE TABLE t (k bigint, v text) DISTRIBUTE ON (k)").await?;
        let values: Vec<String> = (0..2000).map(|i| format!("({i}, 'v{i}')")).collect();
        harness::exec(&c, &format!("INSERT INTO t VALUES {}", values.join(", "))).await?;
        let runaway = db.connect().await?;
        let running = tokio::spawn(async move {
            runaway
                .query("SELECT count(*) FROM t a, t b, t c, t d", &[])
                .await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        anyhow::ensure!(!running.is_finished(), "the runaway query ended by itself");
        let asked = Instant::now();
        db.stop().await?; // SIGTERM; must exit 0
        let took = asked.elapsed();
        println!("SIGTERM with a runaway query running: exited in {took:?}");
        anyhow::ensure!(took < Duration::from_secs(5), "exit took {took:?}");
        let outcome = tokio::time::timeout(Duration::from_secs(5), running).await??;
        anyhow::ensure!(outcome.is_err(), "the runaway query answered: {outcome:?}");

        let db = Slicedb::local(&env, 2, &data).await?;
        let c = db.connect().await?;
        let n = harness::scalar(&c, "SELECT count(*) FROM t").await?;
        anyhow::ensure!(n == "2000", "after the restart: {n} rows");
        db.stop().await
    });
}

/// A coordinator with a small memory limit: a query whose hash table would
/// pass it spills or fails with 53200 (never takes the server down), the
/// server answers on, a COPY TO of a table larger than the limit streams
/// every row, and the same query answers under the default limit.
#[test]
fn a_query_over_the_memory_limit_spills_or_fails_with_53200_and_the_server_stays_up() {
    harness::run("memlimit", |env| async move {
        let sql = "SELECT count(*) FROM (SELECT value % 1500000 AS g, count(*) AS n \
                   FROM generate_series(1, 3000000) GROUP BY value % 1500000) s";
        let data = env.path().join("small");
        let db = Slicedb::local_args(&env, 2, &data, &[], &["--memory-limit", "4MiB"]).await?;
        let c = db.connect().await?;
        match c.query(sql, &[]).await {
            Ok(rows) => {
                let n: i64 = rows[0].get(0);
                anyhow::ensure!(n == 1_500_000, "spilled, and answered {n}");
                let spilled = spill_count(&c, sql).await?;
                anyhow::ensure!(spilled > 0, "answered over the limit without spilling");
                println!("over the limit: the aggregate spilled {spilled} times and answered");
            }
            Err(e) => {
                let code = harness::sqlstate(&e);
                anyhow::ensure!(
                    code.as_deref() == Some("53200"),
                    "over the limit: {}",
                    harness::describe(&e)
                );
                println!("over the limit: {}", harness::describe(&e));
            }
        }
        harness::assert_alive(&c, "a query over the memory limit").await?;
        // COPY TO of a table several times the limit streams: every row
        // arrives, and the server stays up.
        c.batch_execute(
            "CREATE TABLE wide (k bigint, pad text) DISTRIBUTE ON (k); \
             INSERT INTO wide SELECT value, md5(value::text) || md5((value + 1)::text) \
             FROM generate_series(1, 300000)",
        )
        .await?;
        let out = c.copy_out("COPY wide TO STDOUT").await?;
        futures::pin_mut!(out);
        let (mut rows, mut bytes) = (0u64, 0usize);
        while let Some(chunk) = futures::StreamExt::next(&mut out).await {
            let chunk = chunk?;
            bytes += chunk.len();
            rows += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        anyhow::ensure!(rows == 300_000, "COPY TO over the limit: {rows} rows");
        anyhow::ensure!(
            bytes > 4 << 20,
            "the table ({bytes} bytes) is larger than the 4 MiB limit"
        );
        println!("COPY TO of {bytes} bytes under a 4 MiB memory limit: {rows} rows");
        harness::assert_alive(&c, "a COPY TO over the memory limit").await?;
        db.stop().await?;

        let db = Slicedb::local(&env, 2, &env.path().join("default")).await?;
        let c = db.connect().await?;
        let n = harness::scalar(&c, sql).await?;
        anyhow::ensure!(n == "1500000", "under the default limit: {n}");
        let spilled = spill_count(&c, sql).await?;
        anyhow::ensure!(
            spilled == 0,
            "spilled {spilled} times under the default limit"
        );
        db.stop().await
    });
}

/// The spills EXPLAIN ANALYZE counts over `sql`'s operators.
async fn spill_count(c: &tokio_postgres::Client, sql: &str) -> anyhow::Result<u64> {
    let rows = c.query(&format!("EXPLAIN ANALYZE {sql}"), &[]).await?;
    let text: String = rows
        .iter()
        .map(|r| r.get::<_, String>(1))
        .collect::<Vec<_>>()
        .join("\n");
    let mut total = 0;
    for part in text.split("spill_count=").skip(1) {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        total += digits.parse::<u64>().unwrap_or(0);
    }
    anyhow::ensure!(text.contains("spill_count="), "no spill counts in {text}");
    Ok(total)
}

/// `--max-connections 2`: a third session is refused with 53300 (FATAL,
/// connection closed); once one leaves, a new one gets in.
#[test]
fn a_session_past_max_connections_is_refused_with_53300() {
    harness::run("maxconn", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local_args(&env, 2, &data, &[], &["--max-connections", "2"]).await?;
        let (a, a_task) = harness::connect_with_handle(db.url()).await?;
        let b = db.connect().await?;
        let refused = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await;
        let e = match refused {
            Ok((_, conn)) => match conn.await {
                Err(e) => e,
                Ok(()) => anyhow::bail!("a third session got in"),
            },
            Err(e) => e,
        };
        anyhow::ensure!(
            harness::sqlstate(&e).as_deref() == Some("53300"),
            "the third session: {}",
            harness::describe(&e)
        );
        println!("third session: {}", harness::describe(&e));
        harness::assert_alive(&b, "a refused session").await?;
        drop(a);
        a_task.abort();
        let mut again = None;
        for _ in 0..50 {
            match tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    if c.simple_query("SELECT 1").await.is_ok() {
                        again = Some(c);
                        break;
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        anyhow::ensure!(again.is_some(), "no new session after one left");
        db.stop().await
    });
}
