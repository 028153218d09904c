//! Spare nodes: `slicedb local --spares N` starts N more nodes that get no
//! slices when the cluster is created; `slicedb_nodes` shows them as
//! `spare`, tables are created on them (ready for regeneration), and the
//! stored map keeps them spare across restarts.

use anyhow::{ensure, Result};

use crate::harness::{self, exec, query, scalar, Slicedb};

async fn node_states(db: &Slicedb) -> Result<Vec<(String, String)>> {
    let client = db.connect().await?;
    let rows = query(
        &client,
        "SELECT node, state FROM slicedb_nodes ORDER BY node",
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect())
}

fn states(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn spare_nodes_hold_no_slices_and_stay_spare_across_restarts() {
    harness::run("spares", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local_args(&env, 3, &data, &[], &["--spares", "1"]).await?;
        let want = states(&[("0", "up"), ("1", "up"), ("2", "up"), ("3", "spare")]);
        let got = node_states(&db).await?;
        ensure!(got == want, "slicedb_nodes: {got:?}");
        let client = db.connect().await?;
        let on_spare = scalar(
            &client,
            "SELECT count(*) FROM slicedb_slices WHERE primary_node = 3 OR mirror_node = 3",
        )
        .await?;
        ensure!(on_spare == "0", "{on_spare} slices on the spare");
        let slices = scalar(&client, "SELECT count(*) FROM slicedb_slices").await?;
        ensure!(slices == "12", "3 nodes x 4 slices, got {slices}");
        exec(
            &client,
            "CREATE TABLE t (k bigint, v text) DISTRIBUTE ON (k)",
        )
        .await?;
        exec(
            &client,
            "INSERT INTO t SELECT value, 'v' || value FROM generate_series(1, 1000)",
        )
        .await?;
        let n = scalar(&client, "SELECT count(*) FROM t").await?;
        ensure!(n == "1000", "count {n}");
        // The spare has the table too, empty: a copy can be regenerated onto it.
        let on_spare = scalar(
            &client,
            "SELECT count(*) FROM slicedb_table_slices WHERE node = 3 AND rows > 0",
        )
        .await?;
        ensure!(on_spare == "0", "{on_spare} slices with rows on the spare");
        drop(client);
        db.stop().await?;

        // Restarted alike: the stored map is reused, the spare stays spare.
        let db = Slicedb::local_args(&env, 3, &data, &[], &["--spares", "1"]).await?;
        let got = node_states(&db).await?;
        ensure!(got == want, "after restart, slicedb_nodes: {got:?}");
        let client = db.connect().await?;
        let n = scalar(&client, "SELECT count(*) FROM t").await?;
        ensure!(n == "1000", "after restart, count {n}");
        drop(client);
        db.stop().await?;

        // Node 3 as a regular node would be a topology change: refused.
        let refused = Slicedb::local(&env, 4, &data).await;
        ensure!(
            refused.is_err(),
            "a node the map does not use started as a regular node"
        );
        // Without the spare, the cluster starts as it was.
        let db = Slicedb::local(&env, 3, &data).await?;
        let client = db.connect().await?;
        let n = scalar(&client, "SELECT count(*) FROM t").await?;
        ensure!(n == "1000", "without the spare, count {n}");
        drop(client);
        db.stop().await?;
        Ok(())
    })
}
