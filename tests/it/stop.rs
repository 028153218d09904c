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
