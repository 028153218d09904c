//! Three `slicedb node` processes and a `slicedb coordinator` from one
//! cluster file: COPY, answers computed in Rust, `slicedb_nodes`, pid stop.

use std::collections::BTreeMap;

use anyhow::ensure;
use bytes::Bytes;
use futures::SinkExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::data;
use crate::harness::{self, assert_rows_match, exec, query, Rows, Slicedb};

const NODES: u32 = 3;
const ROWS: usize = 20_000;

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

#[test]
fn coordinator_and_three_node_processes() {
    harness::run("multiprocess", |env| async move {
        let seed = data::seed("multiprocess");
        let mut rng = StdRng::seed_from_u64(seed);
        // (k, g, v): k distinct.
        let rows: Vec<(i64, i32, i64)> = (0..ROWS as i64)
            .map(|i| {
                (
                    i * 7919 - 50_000_000,
                    rng.random_range(0..25),
                    rng.random_range(-1_000_000..1_000_000),
                )
            })
            .collect();

        let db = Slicedb::multiprocess(&env, NODES).await?;
        eprintln!(
            "cluster file {:?}, pids {:?}, serving SQL: pid {}",
            db.config,
            db.pids(),
            db.pid()
        );
        let client = db.connect().await?;

        exec(
            &client,
            "CREATE TABLE mp (k bigint, g int, v bigint) DISTRIBUTE ON (k)",
        )
        .await?;
        let sink = client
            .copy_in::<_, Bytes>("COPY mp FROM STDIN")
            .await
            .map_err(|e| anyhow::anyhow!("COPY mp FROM STDIN: {}", harness::describe(&e)))?;
        futures::pin_mut!(sink);
        for chunk in rows.chunks(2000) {
            let text: String = chunk
                .iter()
                .map(|(k, g, v)| format!("{k}\t{g}\t{v}\n"))
                .collect();
            sink.send(Bytes::from(text)).await?;
        }
        let n = sink
            .as_mut()
            .finish()
            .await
            .map_err(|e| anyhow::anyhow!("finishing COPY: {}", harness::describe(&e)))?;
        ensure!(n == ROWS as u64, "COPY reported {n} rows, sent {ROWS}");

        let totals = query(&client, "SELECT count(*), sum(k), sum(v) FROM mp").await?;
        let want: Rows = vec![vec![
            text(rows.len()),
            text(rows.iter().map(|r| r.0 as i128).sum::<i128>()),
            text(rows.iter().map(|r| r.2 as i128).sum::<i128>()),
        ]];
        assert_rows_match("count/sum", &totals, &want, 0.0)?;

        let mut groups: BTreeMap<i32, (i64, i128)> = BTreeMap::new();
        for (_, g, v) in &rows {
            let e = groups.entry(*g).or_default();
            e.0 += 1;
            e.1 += *v as i128;
        }
        let want: Rows = groups
            .iter()
            .map(|(g, (c, s))| vec![text(g), text(c), text(s)])
            .collect();
        let got = query(
            &client,
            "SELECT g, count(*), sum(v) FROM mp GROUP BY g ORDER BY g",
        )
        .await?;
        assert_rows_match("group by g", &got, &want, 0.0)?;

        let got = query(
            &client,
            "SELECT count(*) FROM mp WHERE k BETWEEN 0 AND 50000000",
        )
        .await?;
        let want = rows
            .iter()
            .filter(|r| (0..=50_000_000).contains(&r.0))
            .count();
        assert_rows_match("range on k", &got, &vec![vec![text(want)]], 0.0)?;

        let nodes = query(
            &client,
            "SELECT node, address, state FROM slicedb_nodes ORDER BY node",
        )
        .await?;
        let want: Rows = db
            .node_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| vec![text(i), text(a), text("up")])
            .collect();
        assert_rows_match("slicedb_nodes", &nodes, &want, 0.0)?;

        let slices = query(
            &client,
            "SELECT slice, primary_node, mirror_node FROM slicedb_slices ORDER BY slice",
        )
        .await?;
        ensure!(
            slices.len() == NODES as usize * 4,
            "3 nodes x 1 disk x 4 slices_per_disk = 12 slices, got {slices:?}"
        );
        for s in &slices {
            ensure!(s[1] != s[2], "mirror on the primary's node: {s:?}");
        }

        drop(client);
        db.stop().await
    });
}
