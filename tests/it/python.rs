//! psycopg 3 (tests/python/test_psycopg.py) against `slicedb local`.

use std::process::Command;

use anyhow::{bail, ensure, Context};

use crate::harness::{self, Slicedb, REPO};

#[test]
fn psycopg_script_passes() {
    harness::run("python", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let script = format!("{REPO}/tests/python/test_psycopg.py");
        let url = db.url().to_string();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("python3").arg(&script).arg(&url).output()
        })
        .await?;
        let output: std::process::Output = match output {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("`python3` is not installed or not on PATH")
            }
            Err(e) => return Err(e).context("running python3"),
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("----- python stdout -----\n{stdout}\n----- python stderr -----\n{stderr}");
        ensure!(
            output.status.success(),
            "test_psycopg.py exited with {}\n{stdout}\n{stderr}",
            output.status
        );
        ensure!(
            stdout.contains("all psycopg checks passed"),
            "test_psycopg.py did not finish:\n{stdout}"
        );
        db.stop().await
    });
}
