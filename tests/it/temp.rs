//! Temporary tables (CREATE TEMP TABLE) over the wire: seen only by their
//! session, shadowing a permanent table of the same name, in the temp
//! segment and never forwarded to a mirror, dropped when the session ends,
//! and dropped at the next start after a kill -9. Also how psql's `\d` and
//! `\dt+` tell mirrored, unmirrored and temporary tables apart.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::Client;

use crate::harness::{self, exec, expect_error, query, scalar, Slicedb};

/// Temporary tables recorded in the coordinator's catalog file.
fn temps_in_catalog(data: &Path) -> Result<usize> {
    let path = data.join("coordinator/catalog.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let tables = v["tables"]
        .as_array()
        .context("catalog.json has no tables")?;
    Ok(tables.iter().filter(|t| t.get("session").is_some()).count())
}

async fn copy_text(client: &Client, sql: &str, rows: impl Iterator<Item = String>) -> Result<u64> {
    let sink = client
        .copy_in::<_, Bytes>(sql)
        .await
        .map_err(|e| anyhow::anyhow!("{sql}: {}", harness::describe(&e)))?;
    futures::pin_mut!(sink);
    let mut buf = String::new();
    for r in rows {
        buf.push_str(&r);
        buf.push('\n');
    }
    sink.send(Bytes::from(buf)).await?;
    Ok(sink.finish().await?)
}

/// (segment, rows) of `table` in slicedb_table_slices, as `client` sees it.
async fn segments(client: &Client, table: &str) -> Result<Vec<(String, String, i64)>> {
    let rows = query(
        client,
        &format!(
            "SELECT segment, persistence, sum(rows) FROM slicedb_table_slices \
             WHERE table_name = '{table}' GROUP BY segment, persistence ORDER BY segment"
        ),
    )
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok((
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
                r[2].as_deref().unwrap_or("0").parse()?,
            ))
        })
        .collect()
}

#[test]
fn temp_tables_belong_to_their_session_and_go_with_it() {
    harness::run("temp_tables", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local(&env, 2, &data).await?;
        let a = db.connect().await?;
        let (b, b_conn) = harness::connect_with_handle(db.url()).await?;

        // A permanent table p, then a temporary p in session B that shadows it.
        exec(&a, "CREATE TABLE p (k bigint, v text) DISTRIBUTE ON (k)").await?;
        exec(
            &a,
            "INSERT INTO p VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e')",
        )
        .await?;
        exec(&b, "CREATE TEMP TABLE p (k bigint)").await?;
        exec(&b, "INSERT INTO p VALUES (10), (20)").await?;
        ensure!(
            scalar(&b, "SELECT count(*) FROM p").await? == "2",
            "B sees its temp p"
        );
        ensure!(
            scalar(&a, "SELECT count(*) FROM p").await? == "5",
            "A sees the permanent p"
        );

        // A temporary table only B has: COPY, UPDATE, DELETE work; A cannot see it.
        exec(
            &b,
            "CREATE TEMPORARY TABLE scratch (k bigint, g int) DISTRIBUTE ON (k)",
        )
        .await?;
        let n = copy_text(
            &b,
            "COPY scratch FROM STDIN",
            (0..1000).map(|i| format!("{i}\t{}", i % 7)),
        )
        .await?;
        ensure!(n == 1000, "COPY into a temp table loaded {n} rows");
        exec(&b, "UPDATE scratch SET g = 100 WHERE k < 10").await?;
        exec(&b, "DELETE FROM scratch WHERE k >= 990").await?;
        ensure!(
            scalar(&b, "SELECT count(*) || ' ' || sum(g) FROM scratch").await?
                == format!("990 {}", (10..990).map(|i| i % 7).sum::<i64>() + 10 * 100),
            "temp table contents after COPY, UPDATE and DELETE"
        );
        expect_error(&a, "SELECT count(*) FROM scratch", &["42P01"]).await?;

        // Its rows are in the temp segment only: nothing was forwarded.
        let segs = segments(&b, "scratch").await?;
        ensure!(
            segs.len() == 1 && segs[0].0 == "temp" && segs[0].1 == "temporary" && segs[0].2 >= 990,
            "scratch's rows should all be in the temp segment, none in a mirror \
             segment, got {segs:?}"
        );
        ensure!(
            segments(&a, "scratch").await?.is_empty(),
            "A must not see scratch"
        );
        let p_segs = segments(&a, "p").await?;
        ensure!(
            p_segs.iter().any(|s| s.0 == "mirror") && p_segs.iter().all(|s| s.1 == "mirrored"),
            "the permanent p is mirrored: {p_segs:?}"
        );

        // Refused: a mirrored temp table, ON COMMIT DROP.
        expect_error(
            &b,
            "CREATE TEMP TABLE x (a int) WITH (mirrored = true)",
            &["0A000"],
        )
        .await?;
        expect_error(&b, "CREATE TEMP TABLE y (a int) ON COMMIT DROP", &["0A000"]).await?;

        // DROP TABLE p in B drops B's temp p, not the permanent one.
        exec(&b, "DROP TABLE p").await?;
        ensure!(
            scalar(&b, "SELECT count(*) FROM p").await? == "5",
            "B sees permanent p again"
        );
        exec(&b, "CREATE TEMP TABLE p (k bigint)").await?;
        ensure!(
            temps_in_catalog(&data)? == 2,
            "catalog records B's two temp tables"
        );

        // B disconnects: its temp tables are dropped.
        drop(b);
        b_conn.abort();
        let deadline = Instant::now() + Duration::from_secs(20);
        while temps_in_catalog(&data)? != 0 {
            if Instant::now() > deadline {
                bail!("B's temp tables are still in the catalog 20 s after it disconnected");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ensure!(
            scalar(&a, "SELECT count(*) FROM p").await? == "5",
            "permanent p survives"
        );

        // A temp table at a kill -9 is dropped at the next start.
        let c = db.connect().await?;
        exec(&c, "CREATE TEMP TABLE doomed (k bigint)").await?;
        exec(&c, "INSERT INTO doomed VALUES (1)").await?;
        ensure!(temps_in_catalog(&data)? == 1, "catalog records doomed");
        db.kill();
        let db = Slicedb::local(&env, 2, &data).await?;
        ensure!(
            temps_in_catalog(&data)? == 0,
            "a restart drops the temp tables of the sessions that died"
        );
        let a = db.connect().await?;
        ensure!(
            scalar(&a, "SELECT count(*) FROM p").await? == "5",
            "p after restart"
        );
        expect_error(&a, "SELECT * FROM doomed", &["42P01"]).await?;
        db.stop().await
    });
}

#[test]
fn psql_describe_shows_how_a_table_is_kept() {
    harness::run("psql_describe", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let url = db.url().to_string();
        let script = "CREATE TABLE keep2 (a int, b text);\n\
                      CREATE TABLE keep1 (a int) WITH (mirrored = false);\n\
                      CREATE TEMP TABLE mine (a int, note text);\n\
                      \\d keep2\n\\d keep1\n\\d mine\n\\dt+\n";
        let output = tokio::task::spawn_blocking(move || {
            let mut child = Command::new("psql")
                .args([url.as_str(), "-X", "-v", "ON_ERROR_STOP=1"])
                .env("PAGER", "")
                .env("PSQL_PAGER", "")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(script.as_bytes())?;
            child.wait_with_output()
        })
        .await??;
        let out = String::from_utf8_lossy(&output.stdout).to_string();
        let err = String::from_utf8_lossy(&output.stderr).to_string();
        ensure!(output.status.success(), "psql failed: {err}\n{out}");
        ensure!(out.contains("Table \"public.keep2\""), "\\d keep2:\n{out}");
        ensure!(
            out.contains("Unlogged table \"public.keep1\""),
            "\\d of an unmirrored table says Unlogged:\n{out}"
        );
        ensure!(
            !out.contains("Unlogged table \"public.keep2\""),
            "a mirrored table is not Unlogged:\n{out}"
        );
        // The temp table's columns are described in its own session.
        ensure!(
            out.lines()
                .any(|l| l.split('|').map(str::trim).collect::<Vec<_>>()
                    == ["note", "text", "", "", ""]),
            "\\d mine shows its columns:\n{out}"
        );
        for (table, persistence) in [
            ("keep2", "permanent"),
            ("keep1", "unlogged"),
            ("mine", "temporary"),
        ] {
            ensure!(
                out.lines().any(|l| {
                    let c: Vec<&str> = l.split('|').map(str::trim).collect();
                    c.len() > 4 && c[1] == table && c[4] == persistence
                }),
                "\\dt+ should show {table} as {persistence}:\n{out}"
            );
        }
        db.stop().await
    });
}
