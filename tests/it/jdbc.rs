//! The PostgreSQL JDBC driver (Debian's `libpostgresql-jdbc-java`, with the
//! machine's Java) against `slicedb local`: tests/jdbc/JdbcTest.java.

use std::process::Command;

use anyhow::{bail, ensure, Context};

use crate::harness::{self, Slicedb, REPO};

/// Where Debian's package puts the driver.
pub const DRIVER: &str = "/usr/share/java/postgresql.jar";

/// Run `program` with `args`; it must exit 0. Answers its stdout.
pub fn run(program: &str, args: &[String]) -> anyhow::Result<String> {
    let output = match Command::new(program).args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("`{program}` is not installed or not on PATH (apt-get install default-jdk-headless)")
        }
        Err(e) => return Err(e).with_context(|| format!("running {program}")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("----- {program} stdout -----\n{stdout}\n----- {program} stderr -----\n{stderr}");
    ensure!(
        output.status.success(),
        "{program} exited with {}",
        output.status
    );
    Ok(stdout)
}

/// Compile `tests/jdbc/<file>` (needs the driver installed); answers the
/// class path to run it with.
pub async fn compile(env: &harness::TestEnv, file: &str) -> anyhow::Result<String> {
    ensure!(
        std::path::Path::new(DRIVER).exists(),
        "the PostgreSQL JDBC driver is not installed: apt-get install libpostgresql-jdbc-java"
    );
    let classes = env.path().join("classes");
    std::fs::create_dir_all(&classes)?;
    let classes = classes.display().to_string();
    let javac_args = vec![
        "-d".to_string(),
        classes.clone(),
        "-cp".to_string(),
        DRIVER.to_string(),
        format!("{REPO}/tests/jdbc/{file}"),
    ];
    tokio::task::spawn_blocking(move || run("javac", &javac_args)).await??;
    Ok(format!("{classes}:{DRIVER}"))
}

/// DatabaseMetaData (getSchemas, getTables, getColumns), a prepared batch
/// of 1,000 INSERTs, setFetchSize with autocommit off, errors' SQLSTATEs and
/// Statement.cancel(): each compared with the answer PostgreSQL gives.
#[test]
fn jdbc_driver_script_passes() {
    harness::run("jdbc", |env| async move {
        let classpath = compile(&env, "JdbcTest.java").await?;
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        // postgres://slicedb@HOST:PORT/slicedb -> jdbc:postgresql://HOST:PORT/slicedb
        let rest = db
            .url()
            .strip_prefix("postgres://slicedb@")
            .context("the harness's URL form changed")?;
        let url = format!("jdbc:postgresql://{rest}");
        let java_args = vec![
            "-cp".to_string(),
            classpath,
            "JdbcTest".to_string(),
            url,
            "slicedb".to_string(),
        ];
        let stdout = tokio::task::spawn_blocking(move || run("java", &java_args)).await??;
        ensure!(
            stdout.contains("all jdbc checks passed"),
            "JdbcTest did not finish"
        );
        db.stop().await
    });
}
