//! COPY ... WITH (FORMAT csv, HEADER) in and out over the wire: quoting,
//! embedded delimiters and newlines, NULL versus the empty string, and a
//! column list that leaves the other columns NULL.

use anyhow::{ensure, Result};
use futures::{SinkExt, TryStreamExt};

use crate::harness::{self, exec, scalar, Slicedb};

const INPUT: &str = "id,name,note\n\
1,plain,\n\
2,\"with, comma\",\"\"\n\
3,\"two\nlines\",\"quote \"\" inside\"\n\
4,,x\n";

async fn copy_out(client: &tokio_postgres::Client, sql: &str) -> Result<String> {
    let stream = client.copy_out(sql).await?;
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await?;
    Ok(chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).to_string())
        .collect())
}

#[test]
fn csv_copy_round_trips_quoting_and_nulls() {
    harness::run("copy_csv", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let client = db.connect().await?;
        exec(
            &client,
            "CREATE TABLE c (id int, name text, note text, extra bigint) DISTRIBUTE ON (id)",
        )
        .await?;
        let sink = client
            .copy_in("COPY c (id, name, note) FROM STDIN WITH (FORMAT csv, HEADER true)")
            .await?;
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from_static(INPUT.as_bytes()))
            .await?;
        let n = sink.finish().await?;
        ensure!(n == 4, "COPY reported {n} rows, expected 4");

        // NULL (unquoted empty) versus '' (quoted empty), per PostgreSQL CSV rules.
        ensure!(scalar(&client, "SELECT count(*) FROM c WHERE note IS NULL").await? == "1");
        ensure!(scalar(&client, "SELECT count(*) FROM c WHERE note = ''").await? == "1");
        ensure!(scalar(&client, "SELECT count(*) FROM c WHERE name IS NULL").await? == "1");
        ensure!(scalar(&client, "SELECT count(*) FROM c WHERE extra IS NULL").await? == "4");
        ensure!(scalar(&client, "SELECT name FROM c WHERE id = 3").await? == "two\nlines");
        ensure!(scalar(&client, "SELECT note FROM c WHERE id = 3").await? == "quote \" inside");

        let out = copy_out(
            &client,
            "COPY (SELECT id, name, note FROM c ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER true)",
        )
        .await?;
        ensure!(
            out == INPUT,
            "CSV out differs from CSV in:\n{out:?}\nvs\n{INPUT:?}"
        );
        Ok(())
    });
}
