//! A distribution map written by an older build (version 1: one primary,
//! one optional mirror and one state per slice) is converted at start, the
//! cluster serves on it, and the file is written back as version 2 (copies
//! as a list). Then the cluster still fails over (a node kill -9) and keeps
//! answering every row.

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};

use crate::harness::{self, exec, scalar, Slicedb};

/// Rewrite a version 2 map as version 1 wrote it (every slice in sync).
fn downgrade_to_v1(v2: &Value) -> Result<Value> {
    let slices = v2["slices"]
        .as_array()
        .context("slices")?
        .iter()
        .map(|e| {
            let copies = e["copies"].as_array().context("copies")?;
            let at = |role: &str| {
                copies
                    .iter()
                    .find(|c| c["role"] == role)
                    .map(|c| json!({"node": c["node"], "disk": c["disk"]}))
            };
            Ok(json!({
                "slice": e["slice"],
                "primary": at("primary").context("a primary copy")?,
                "mirror": at("mirror"),
                "state": "in_sync",
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({"version": 1, "epoch": v2["epoch"], "slices": slices,
              "down": [], "down_disks": [], "history": []}))
}

#[test]
fn a_version_1_map_is_converted_and_the_cluster_starts_on_it() {
    harness::run("map_upgrade", |env| async move {
        let db = Slicedb::multiprocess_in(&env, 3, "c").await?;
        let c = db.connect().await?;
        exec(&c, "CREATE TABLE t (k bigint, v text) DISTRIBUTE ON (k)").await?;
        exec(
            &c,
            "INSERT INTO t SELECT x, 'v' || x FROM generate_series(1, 1000) AS s(x)",
        )
        .await?;
        db.stop().await?;

        let path = env.path().join("c").join("coord").join("distmap.json");
        let v2: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        ensure!(v2["version"] == 2, "a new cluster writes version 2: {v2}");
        std::fs::write(&path, serde_json::to_vec_pretty(&downgrade_to_v1(&v2)?)?)?;

        let mut db = Slicedb::multiprocess_in(&env, 3, "c").await?;
        let c = db.connect().await?;
        ensure!(
            scalar(&c, "SELECT count(*) FROM t").await? == "1000",
            "rows on a converted map"
        );
        let stored: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        ensure!(
            stored["version"] == 2,
            "the converted map is written back as version 2"
        );
        ensure!(
            stored["slices"] == v2["slices"],
            "the same copies as before the downgrade"
        );
        ensure!(
            scalar(
                &c,
                "SELECT count(*) FROM slicedb_slices WHERE state <> 'in_sync'"
            )
            .await?
                == "0",
            "every slice in sync after the conversion"
        );

        // The converted map still fails over: kill a node, the rows stay.
        db.kill_proc(1);
        let mut answered = false;
        for _ in 0..100 {
            if let Ok(n) = scalar(&c, "SELECT count(*) FROM t").await {
                if n == "1000"
                    && scalar(
                        &c,
                        "SELECT count(*) FROM slicedb_slices WHERE state = 'failed_over'",
                    )
                    .await?
                        != "0"
                {
                    answered = true;
                    break;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        ensure!(
            answered,
            "after a node failed, the converted map failed over and answers"
        );
        db.stop().await
    });
}
