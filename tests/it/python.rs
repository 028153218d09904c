//! psycopg 3 scripts (tests/python/) against `slicedb local`.

use std::process::Command;

use anyhow::{bail, ensure, Context};

use crate::harness::{self, Slicedb, REPO};

/// Run `tests/python/<script>` with `args`; it must exit 0 and print
/// `done` (its last line). Answers what it printed.
pub async fn run_script(script: &str, args: Vec<String>, done: &str) -> anyhow::Result<String> {
    let path = format!("{REPO}/tests/python/{script}");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3").arg(&path).args(&args).output()
    })
    .await?;
    let output: std::process::Output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("`python3` is not installed or not on PATH")
        }
        Err(e) => return Err(e).context("running python3"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("----- python stdout -----\n{stdout}\n----- python stderr -----\n{stderr}");
    ensure!(
        output.status.success(),
        "{script} exited with {}\n{stdout}\n{stderr}",
        output.status
    );
    ensure!(stdout.contains(done), "{script} did not finish:\n{stdout}");
    Ok(stdout)
}

#[test]
fn psycopg_script_passes() {
    harness::run("python", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let url = db.url().to_string();
        run_script("test_psycopg.py", vec![url], "all psycopg checks passed").await?;
        db.stop().await
    });
}

/// Every column type through parameters (text and binary, with
/// PostgreSQL's casts) and binary COPY both ways (100k rows), checked
/// value by value; malformed binary COPY fails with its SQLSTATE.
#[test]
fn psycopg_types_and_binary_copy() {
    harness::run("python_types", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let url = db.url().to_string();
        run_script("test_types.py", vec![url], "all type checks passed").await?;
        db.stop().await
    });
}

#[test]
fn sqlalchemy_and_pandas_script_passes() {
    harness::run("python-sqlalchemy", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let url = db.url().to_string();
        run_script(
            "test_sqlalchemy.py",
            vec![url],
            "all sqlalchemy checks passed",
        )
        .await?;
        db.stop().await
    });
}

#[test]
fn session_settings_and_names_script_passes() {
    harness::run("python-session", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        // A database name of the client's own: the server answers to it.
        let url = format!("{}/analytics", db.url().trim_end_matches("/slicedb"));
        run_script("test_session.py", vec![url], "all session checks passed").await?;
        db.stop().await
    });
}

/// UPDATE ... FROM and DELETE ... USING across slices (duplicate matches,
/// unmatched rows, in blocks that roll back or commit), RETURNING of
/// INSERT, UPDATE and DELETE in both protocols, Describe of their
/// parameters, and the mirrors in sync afterwards.
#[test]
fn psycopg_dml_joins_and_returning() {
    harness::run("python-dml", |env| async move {
        let db = Slicedb::local(&env, 3, &env.path().join("data")).await?;
        let url = db.url().to_string();
        run_script("test_dml.py", vec![url], "all dml checks passed").await?;
        db.stop().await
    });
}
