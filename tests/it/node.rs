//! node-postgres (`pg` from npm, pinned in tests/node/package.json)
//! against `slicedb local`: tests/node/test_pg.js.

use std::process::Command;

use anyhow::{bail, ensure, Context};

use crate::harness::{self, Slicedb, REPO};

/// Parameters of several types, the types read back, errors' SQLSTATEs
/// (`err.code`), transactions, a pool.
#[test]
fn node_postgres_script_passes() {
    harness::run("node", |env| async move {
        let dir = format!("{REPO}/tests/node");
        ensure!(
            std::path::Path::new(&format!("{dir}/node_modules/pg")).exists(),
            "node-postgres is not installed: run `npm ci` in tests/node"
        );
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let url = db.url().to_string();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("node")
                .arg(format!("{dir}/test_pg.js"))
                .arg(url)
                .env("TZ", "UTC")
                .output()
        })
        .await?;
        let output = match output {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("`node` is not installed or not on PATH")
            }
            Err(e) => return Err(e).context("running node"),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("----- node stdout -----\n{stdout}\n----- node stderr -----\n{stderr}");
        ensure!(
            output.status.success(),
            "test_pg.js exited with {}",
            output.status
        );
        ensure!(
            stdout.contains("all node-postgres checks passed"),
            "test_pg.js did not finish"
        );
        db.stop().await
    });
}
