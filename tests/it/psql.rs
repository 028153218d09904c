//! The real `psql` client against `slicedb local`: catalog queries behind
//! `\dt`, `\d t` and `\l`, a query's value, and an error that does not stop the
//! script (tests/psql/basic.sql).

use std::process::Command;

use anyhow::{bail, ensure, Context};

use crate::harness::{self, Slicedb, REPO};

/// Lines of `out` between `marker: from` and the next `marker:` line.
fn section<'a>(out: &'a str, from: &str) -> Vec<&'a str> {
    out.lines()
        .skip_while(|l| l.trim() != format!("marker: {from}"))
        .skip(1)
        .take_while(|l| !l.trim().starts_with("marker: "))
        .collect()
}

/// psql table cells of a line: `a | b | c` -> ["a", "b", "c"].
fn cells(line: &str) -> Vec<&str> {
    line.split('|').map(str::trim).collect()
}

#[test]
fn psql_client_runs_a_script() {
    harness::run("psql", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let script = format!("{REPO}/tests/psql/basic.sql");
        let url = db.url().to_string();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("psql")
                .args([url.as_str(), "-X", "-v", "ON_ERROR_STOP=0", "-f", &script])
                .env("PGCONNECT_TIMEOUT", "20")
                .env("PAGER", "")
                .env("PSQL_PAGER", "")
                .env_remove("PGOPTIONS")
                .output()
        })
        .await?;
        let output = match output {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("`psql` is not installed or not on PATH: install the PostgreSQL client (e.g. apt-get install postgresql-client)")
            }
            Err(e) => return Err(e).context("running psql"),
        };
        // psql writes errors to stderr and results to stdout; interleave is
        // not preserved, so check each stream for its own part.
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        println!("----- psql stdout -----\n{stdout}\n----- psql stderr -----\n{stderr}");
        let both = format!("{stdout}\n{stderr}");
        ensure!(
            output.status.success(),
            "psql exited with {} (ON_ERROR_STOP=0 should give 0)",
            output.status
        );
        ensure!(
            stdout.contains("marker: end"),
            "psql did not reach the end of the script"
        );

        // \dt lists table t.
        let dt = section(&stdout, "dt");
        ensure!(
            dt.iter().any(|l| {
                let c = cells(l);
                c.len() >= 3 && c[1] == "t" && c[2] == "table"
            }),
            "\\dt should list table t, got:\n{}",
            dt.join("\n")
        );

        // \d t shows every column with its PostgreSQL type name.
        let d = section(&stdout, "d");
        for (col, ty) in [
            ("k", "bigint"),
            ("g", "integer"),
            ("v", "double precision"),
            ("s", "text"),
            ("d", "date"),
            ("n", "numeric"),
        ] {
            ensure!(
                d.iter().any(|l| {
                    let c = cells(l);
                    c.len() >= 2 && c[0] == col && c[1].starts_with(ty)
                }),
                "\\d t should show column {col} of type {ty}, got:\n{}",
                d.join("\n")
            );
        }

        // \l lists the database the client named (the URL's), only it.
        let l = section(&stdout, "l");
        let dbs: Vec<&str> = l
            .iter()
            .map(|line| cells(line))
            .filter(|c| c.len() >= 3 && c[2] == "UTF-8")
            .map(|c| c[0])
            .collect();
        ensure!(
            dbs == ["slicedb"],
            "\\l should list the database named at connect, got:\n{}",
            l.join("\n")
        );

        // The query's values.
        let q = section(&stdout, "query");
        ensure!(
            q.iter().any(|l| {
                let c = cells(l);
                c.len() == 2 && c[0] == "psql-marker-two" && c[1] == "2000006"
            }),
            "query result missing from psql output:\n{}",
            q.join("\n")
        );
        ensure!(
            q.iter().any(|l| {
                let c = cells(l);
                c.len() == 2 && c[0] == "3" && c[1].parse::<f64>().ok() == Some(61.5)
            }),
            "count/sum result missing from psql output:\n{}",
            q.join("\n")
        );

        // Exactly one ERROR (the bad statement, with its SQLSTATE under
        // VERBOSITY verbose), and the script went on after it.
        let errors: Vec<&str> = both.lines().filter(|l| l.contains("ERROR:")).collect();
        ensure!(
            errors.len() == 1,
            "expected exactly one ERROR line (for the bad statement), got {errors:?}"
        );
        ensure!(
            errors[0].contains("42P01"),
            "the unknown table's ERROR should carry SQLSTATE 42P01: {}",
            errors[0]
        );
        ensure!(
            section(&stdout, "after")
                .iter()
                .any(|l| l.trim() == "still-running-3"),
            "statement after the error did not run:\n{stdout}"
        );
        db.stop().await
    });
}
