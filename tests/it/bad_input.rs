//! Bad input gets a SQLSTATE and never breaks the connection; a client that
//! vanishes mid-COPY commits nothing and leaves the server serving.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::Client;

use crate::harness::{self, assert_alive, connect, exec, expect_error, query, scalar, Slicedb};

/// COPY `lines` into `table`; must fail with one of `codes`.
async fn copy_must_fail(client: &Client, table: &str, lines: &str, codes: &[&str]) -> Result<()> {
    let sink = client
        .copy_in::<_, Bytes>(&format!("COPY {table} FROM STDIN"))
        .await
        .map_err(|e| anyhow!("starting COPY: {}", harness::describe(&e)))?;
    futures::pin_mut!(sink);
    // The server may reject a line while we still send; a send error is fine
    // as long as finishing reports the right SQLSTATE.
    let sent = sink.send(Bytes::from(lines.to_string())).await;
    let res = tokio::time::timeout(Duration::from_secs(60), sink.as_mut().finish())
        .await
        .context("finishing a bad COPY timed out")?;
    let err = match (sent, res) {
        (_, Err(e)) => e,
        (Err(e), Ok(_)) => e,
        (Ok(()), Ok(n)) => {
            anyhow::bail!("COPY of bad data {lines:?} succeeded ({n} rows), expected {codes:?}")
        }
    };
    let code = harness::sqlstate(&err);
    ensure!(
        code.as_deref().is_some_and(|c| codes.contains(&c)),
        "bad COPY data {lines:?} should fail with {codes:?}, got {}",
        harness::describe(&err)
    );
    Ok(())
}

async fn count_and_sum(client: &Client) -> Result<Vec<Vec<Option<String>>>> {
    query(client, "SELECT count(*), sum(k) FROM bi").await
}

#[test]
fn bad_input_keeps_connection_and_data() {
    harness::run("bad_input", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let client = db.connect().await?;

        exec(
            &client,
            "CREATE TABLE bi (k bigint, g int, s text) DISTRIBUTE ON (k)",
        )
        .await?;
        let committed: Vec<String> = (1..=300)
            .map(|k| format!("({k}, {}, 'row {k}')", k % 10))
            .collect();
        exec(
            &client,
            &format!("INSERT INTO bi VALUES {}", committed.join(", ")),
        )
        .await?;
        let before = count_and_sum(&client).await?;
        ensure!(
            before == vec![vec![Some("300".into()), Some("45150".into())]],
            "after INSERT: {before:?}"
        );

        let cases: &[(&str, &str, &[&str])] = &[
            ("syntax error", "SELEC 1", &["42601"]),
            ("unknown table", "SELECT * FROM no_such_table", &["42P01"]),
            (
                "unknown column",
                "SELECT no_such_column FROM bi",
                &["42703"],
            ),
            (
                "text into int",
                "INSERT INTO bi VALUES (1, 'not a number', 'x')",
                &["22P02", "42804"],
            ),
            (
                "out of range",
                "INSERT INTO bi VALUES (1, 99999999999, 'x')",
                &["22003"],
            ),
            (
                "unknown table in DROP",
                "DROP TABLE no_such_table",
                &["42P01"],
            ),
        ];
        for (what, sql, codes) in cases {
            let msg = expect_error(&client, sql, codes)
                .await
                .with_context(|| what.to_string())?;
            eprintln!("{what}: {msg}");
            assert_alive(&client, what).await?;
        }

        // Extended protocol (Parse/Bind/Execute/Sync) error recovery.
        match client.query("SELECT * FROM no_such_table_ext", &[]).await {
            Ok(_) => anyhow::bail!("extended-protocol query of an unknown table succeeded"),
            Err(e) => ensure!(
                harness::sqlstate(&e).as_deref() == Some("42P01"),
                "extended-protocol unknown table: {}",
                harness::describe(&e)
            ),
        }
        let one: i64 = client
            .query_one("SELECT count(*) FROM bi", &[])
            .await
            .map_err(|e| anyhow!("extended query after an error: {}", harness::describe(&e)))?
            .get(0);
        ensure!(one == 300, "count(*) over the extended protocol: {one}");

        // Bad COPY data: rejected whole.
        copy_must_fail(
            &client,
            "bi",
            "1001\t1\tgood\nnot-a-number\t1\tbad\n",
            &["22P02", "22P04"],
        )
        .await
        .context("non-numeric bigint in COPY")?;
        assert_alive(&client, "bad COPY value").await?;
        copy_must_fail(&client, "bi", "1002\t1\n", &["22P02", "22P04"])
            .await
            .context("missing column in COPY")?;
        assert_alive(&client, "short COPY line").await?;
        let after = count_and_sum(&client).await?;
        ensure!(
            after == before,
            "a failed COPY changed the table: {before:?} -> {after:?}"
        );

        // A COPY abandoned by the client (sink dropped: CopyFail), then the
        // client dropped.
        abandoned_copy(db.url(), false).await?;
        // A COPY whose connection dies: the socket closes mid-COPY.
        abandoned_copy(db.url(), true).await?;

        tokio::time::sleep(Duration::from_secs(1)).await;
        let fresh = connect(db.url())
            .await
            .context("server should still accept connections")?;
        assert_alive(&fresh, "abandoned COPYs").await?;
        let after = count_and_sum(&fresh).await?;
        ensure!(
            after == before,
            "an abandoned COPY changed the committed rows: {before:?} -> {after:?}"
        );
        let distinct = scalar(&fresh, "SELECT count(DISTINCT s) FROM bi").await?;
        ensure!(
            distinct == "300",
            "committed rows lost: {distinct} distinct"
        );
        assert_alive(&client, "other connections' COPYs").await?;

        drop(client);
        drop(fresh);
        db.stop().await
    });
}

/// Start a COPY of 1000 rows on a new connection and walk away without
/// finishing it. `kill_socket`: abort the connection task first so the
/// server sees the socket close (no CopyFail).
async fn abandoned_copy(url: &str, kill_socket: bool) -> Result<()> {
    let (client, conn_task) = harness::connect_with_handle(url).await?;
    let mut sink = Box::pin(
        client
            .copy_in::<_, Bytes>("COPY bi FROM STDIN")
            .await
            .map_err(|e| anyhow!("starting COPY: {}", harness::describe(&e)))?,
    );
    let lines: String = (0..1000)
        .map(|i| format!("{}\t{}\tabandoned {i}\n", 100_000 + i, i % 10))
        .collect();
    sink.send(Bytes::from(lines)).await?;
    sink.flush().await?;
    // Let the server read and buffer (or stage) the rows.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let observer = connect(url).await?;
    let mid = scalar(&observer, "SELECT count(*) FROM bi WHERE k >= 100000").await?;
    ensure!(
        mid == "0",
        "rows of an unfinished COPY are visible to another connection: {mid}"
    );

    if kill_socket {
        conn_task.abort();
        let _ = conn_task.await;
        drop(sink);
        drop(client);
    } else {
        drop(sink);
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(10), conn_task).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = scalar(&observer, "SELECT count(*) FROM bi WHERE k >= 100000").await?;
    ensure!(
        after == "0",
        "an abandoned COPY (kill_socket={kill_socket}) committed {after} rows"
    );
    Ok(())
}

/// A COPY FROM STDIN refused before any data (unknown format, table or
/// column, a server file) through a driver's extended-protocol COPY
/// (tokio-postgres `copy_in`): refused with its SQLSTATE when the statement
/// is parsed, so the driver never starts the copy, and the connection keeps
/// answering in step. (Refused only at Execute, rust-postgres pipelines a
/// Sync after that Execute and another after its CopyFail, gets two
/// ReadyForQuery and drops the connection; found by the statement fuzzer.)
#[test]
fn a_copy_refused_over_the_extended_protocol_keeps_the_connection() {
    harness::run("copy_refused", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let client = db.connect().await?;
        exec(
            &client,
            "CREATE TABLE cr (k bigint, s text) DISTRIBUTE ON (k)",
        )
        .await?;
        let cases: &[(&str, &str)] = &[
            ("COPY cr FROM STDIN (FORMAT binarky)", "22023"),
            ("COPY no_such_table FROM STDIN", "42P01"),
            ("COPY cr (k, nope) FROM STDIN", "42703"),
            ("COPY cr FROM '/etc/passwd'", "0A000"),
        ];
        for round in 0..2 {
            for (sql, code) in cases {
                let err = match client.copy_in::<_, Bytes>(*sql).await {
                    Ok(_) => anyhow::bail!("{sql} started a copy"),
                    Err(e) => e,
                };
                ensure!(
                    err.code().map(|c| c.code()) == Some(*code),
                    "{sql}: {} (want {code})",
                    harness::describe(&err)
                );
                ensure!(!client.is_closed(), "{sql}: the connection was dropped");
                assert_alive(&client, sql).await?;
                let n = scalar(&client, "SELECT count(*) FROM cr").await?;
                ensure!(n == format!("{}", round * 2), "round {round}: {n} rows");
            }
            // A good COPY on the same connection still works.
            let sink = client.copy_in::<_, Bytes>("COPY cr FROM STDIN").await?;
            futures::pin_mut!(sink);
            sink.send(Bytes::from(format!(
                "{}\ta\n{}\tb\n",
                round * 2,
                round * 2 + 1
            )))
            .await?;
            ensure!(sink.as_mut().finish().await? == 2, "two rows copied");
        }
        // Inside a failed transaction block: 25P02, still in step.
        exec(&client, "BEGIN").await?;
        expect_error(&client, "SELECT * FROM no_such_table", &["42P01"]).await?;
        let err = match client.copy_in::<_, Bytes>("COPY cr FROM STDIN").await {
            Ok(_) => anyhow::bail!("a copy started in a failed transaction block"),
            Err(e) => e,
        };
        ensure!(
            err.code().map(|c| c.code()) == Some("25P02"),
            "in a failed block: {}",
            harness::describe(&err)
        );
        exec(&client, "ROLLBACK").await?;
        ensure!(
            scalar(&client, "SELECT count(*) FROM cr").await? == "4",
            "4 rows"
        );
        drop(client);
        db.kill();
        Ok(())
    });
}
