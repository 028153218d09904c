//! Server-side cursors and portal streaming: psycopg named cursors
//! (tests/python/test_cursors.py), and a cursor, a suspended portal and an
//! unlimited Execute over a table larger than the coordinator's memory
//! limit.

use anyhow::ensure;
use futures::StreamExt;
use tokio_postgres::types::ToSql;

use crate::harness::{self, Slicedb};
use crate::python::run_script;

/// psycopg 3 named cursors over 100,000 rows (itersize 1,000), FETCH /
/// MOVE / CLOSE with known answers, WITH HOLD across COMMIT, SQLSTATEs.
#[test]
fn psycopg_named_cursors_script_passes() {
    harness::run("cursors", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let url = db.url().to_string();
        run_script("test_cursors.py", vec![url], "all cursor checks passed").await?;
        db.stop().await
    });
}

fn no_params() -> impl ExactSizeIterator<Item = &'static dyn ToSql> {
    std::iter::empty()
}

/// Under a 4 MiB memory limit, a table several times larger is read whole
/// through a cursor (FETCH 7000 at a time), through a portal Executed with
/// a row limit (PortalSuspended, resumed), and through an Execute without
/// one: every row arrives once, and the server answers on. An Execute
/// without a row limit sends rows as they are produced: a query that
/// fails at its last row has sent the rows before it.
#[test]
fn cursors_and_portals_stream_over_the_memory_limit() {
    harness::run("cursor_memlimit", |env| async move {
        let data = env.path().join("small");
        let db = Slicedb::local_args(&env, 2, &data, &[], &["--memory-limit", "4MiB"]).await?;
        let mut c = db.connect().await?;
        const N: i64 = 300_000;
        c.batch_execute(&format!(
            "CREATE TABLE wide (k bigint, pad text) DISTRIBUTE ON (k); \
             INSERT INTO wide SELECT value, md5(value::text) || md5((value + 1)::text) \
             FROM generate_series(1, {N})"
        ))
        .await?;
        let want_sum = N * (N + 1) / 2;

        // A cursor, FETCH over the extended protocol.
        c.batch_execute("BEGIN; DECLARE w CURSOR FOR SELECT k, pad FROM wide")
            .await?;
        let (mut rows, mut sum, mut bytes, mut fetches) = (0i64, 0i64, 0usize, 0);
        loop {
            let got = c.query("FETCH FORWARD 7000 FROM w", &[]).await?;
            ensure!(got.len() <= 7000, "FETCH 7000 returned {}", got.len());
            if got.is_empty() {
                break;
            }
            fetches += 1;
            for r in &got {
                rows += 1;
                sum += r.get::<_, i64>(0);
                bytes += r.get::<_, String>(1).len() + 8;
            }
        }
        c.batch_execute("COMMIT").await?;
        ensure!(
            rows == N && sum == want_sum,
            "cursor: {rows} rows, sum {sum}"
        );
        ensure!(fetches == 43, "cursor: {fetches} non-empty FETCHes of 7000");
        ensure!(
            bytes > 4 << 20,
            "the table ({bytes} bytes) is larger than 4 MiB"
        );
        println!("cursor: {rows} rows ({bytes} bytes) in {fetches} FETCHes under a 4 MiB limit");

        // psql's FETCH_COUNT: DECLARE _psql_cursor NO SCROLL CURSOR, FETCH
        // FORWARD 1000 until none is left, CLOSE, in a block of its own.
        let url = db.url().to_string();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("psql")
                .args([url.as_str(), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .args(["-v", "FETCH_COUNT=1000", "-c", "SELECT k FROM wide"])
                .env("PGCONNECT_TIMEOUT", "20")
                .output()
        })
        .await??;
        ensure!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ks: Vec<i64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().parse::<i64>())
            .collect::<Result<_, _>>()?;
        ensure!(
            ks.len() as i64 == N && ks.iter().sum::<i64>() == want_sum,
            "psql FETCH_COUNT: {} rows",
            ks.len()
        );

        // A portal Executed 7000 rows at a time: suspended and resumed.
        let t = c.transaction().await?;
        let portal = t.bind("SELECT k FROM wide", &[]).await?;
        let (mut rows, mut sum, mut executes) = (0i64, 0i64, 0);
        loop {
            let got = t.query_portal(&portal, 7000).await?;
            ensure!(got.len() <= 7000, "Execute of 7000 returned {}", got.len());
            if got.is_empty() {
                break;
            }
            executes += 1;
            rows += got.len() as i64;
            sum += got.iter().map(|r| r.get::<_, i64>(0)).sum::<i64>();
        }
        t.commit().await?;
        ensure!(
            rows == N && sum == want_sum,
            "portal: {rows} rows, sum {sum}"
        );
        ensure!(executes == 43, "portal: {executes} non-empty Executes");
        println!("portal: {rows} rows in {executes} Executes of 7000");

        // An Execute without a row limit.
        let stream = c.query_raw("SELECT k, pad FROM wide", no_params()).await?;
        futures::pin_mut!(stream);
        let (mut rows, mut sum) = (0i64, 0i64);
        while let Some(r) = stream.next().await {
            rows += 1;
            sum += r?.get::<_, i64>(0);
        }
        ensure!(
            rows == N && sum == want_sum,
            "unlimited Execute: {rows} rows, sum {sum}"
        );

        // ... sends its rows before the error at the last one (collected
        // first, none would arrive).
        let sql = "SELECT value, 10 / (value - 200000) FROM generate_series(1, 200000)";
        let stream = c.query_raw(sql, no_params()).await?;
        futures::pin_mut!(stream);
        let mut before = 0;
        let err = loop {
            match stream.next().await {
                Some(Ok(_)) => before += 1,
                Some(Err(e)) => break e,
                None => anyhow::bail!("no error after {before} rows"),
            }
        };
        ensure!(
            harness::sqlstate(&err).as_deref() == Some("22012"),
            "{}",
            harness::describe(&err)
        );
        ensure!(
            before > 0,
            "no row arrived before the error: the result was collected"
        );
        println!("unlimited Execute: {before} rows arrived before the error at the last row");

        harness::assert_alive(&c, "cursors and portals over the memory limit").await?;
        db.stop().await
    });
}
