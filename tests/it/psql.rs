//! The real `psql` client against `slicedb local`: catalog queries behind
//! `\dt`, `\d t` and `\l`, a query's value, and an error that does not stop the
//! script (tests/psql/basic.sql); the meta-commands and tab completion
//! (tests/psql/meta.sql).

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

/// Run `tests/psql/<script>` with the real `psql` against `url` (no psqlrc,
/// no pager, errors do not stop it). Answers stdout, stderr and the exit
/// status, having printed both streams.
async fn run_psql(
    url: &str,
    script: &str,
) -> anyhow::Result<(String, String, std::process::ExitStatus)> {
    let script = format!("{REPO}/tests/psql/{script}");
    let url = url.to_string();
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
    Ok((stdout, stderr, output.status))
}

#[test]
fn psql_client_runs_a_script() {
    harness::run("psql", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let (stdout, stderr, status) = run_psql(db.url(), "basic.sql").await?;
        let both = format!("{stdout}\n{stderr}");
        ensure!(
            status.success(),
            "psql exited with {status} (ON_ERROR_STOP=0 should give 0)"
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

/// Whether some line of `lines` has exactly the leading cells `want`.
fn has_row(lines: &[&str], want: &[&str]) -> bool {
    lines.iter().any(|l| {
        let c = cells(l);
        c.len() >= want.len() && c[..want.len()] == *want
    })
}

/// psql's meta-commands (`\d`, `\d+`, `\dt+`, `\di`, `\dv`, `\dn`, `\du`,
/// `\df`, `\x`, `\timing`) and the catalog queries of its tab completion
/// show what PostgreSQL 15 shows for the same objects, plus the table's
/// distribution and mirroring in `\d+` (tests/psql/meta.sql).
#[test]
fn psql_meta_commands_show_types_distribution_and_persistence() {
    harness::run("psql_meta", |env| async move {
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let (out, err, status) = run_psql(db.url(), "meta.sql").await?;
        ensure!(status.success(), "psql exited with {status}");
        ensure!(out.contains("marker: end"), "psql did not reach the end");
        ensure!(
            !out.contains("ERROR") && !err.contains("ERROR"),
            "no statement or meta-command of the script may fail:\n{err}"
        );
        let check = |name: &str, ok: bool| -> anyhow::Result<()> {
            ensure!(ok, "{name}:\n{}", section(&out, name).join("\n"));
            Ok(())
        };
        let d = section(&out, "d");
        check(
            "d",
            has_row(&d, &["n", "numeric(12,2)"])
                && has_row(&d, &["k", "bigint"])
                && has_row(&d, &["v", "character varying(20)"]),
        )?;
        let dplus = section(&out, "dplus");
        check(
            "dplus",
            dplus.iter().any(|l| l.contains("Table \"public.mt\""))
                && dplus.contains(&"Options: distribute_on=(k), mirrored=true"),
        )?;
        let scratch = section(&out, "dplus_scratch");
        check(
            "dplus_scratch",
            scratch
                .iter()
                .any(|l| l.contains("Unlogged table \"public.scratch\""))
                && scratch.contains(&"Options: distribute_on=random, mirrored=false"),
        )?;
        let dt = section(&out, "dtplus");
        check(
            "dtplus",
            has_row(&dt, &["public", "mt", "table"])
                && dt.iter().any(|l| {
                    let c = cells(l);
                    c.len() >= 5 && c[1] == "scratch" && c[4] == "unlogged"
                })
                && dt.iter().any(|l| {
                    let c = cells(l);
                    c.len() >= 5 && c[1] == "mt" && c[4] == "permanent"
                })
                && has_row(&dt, &["sales", "orders", "table"]),
        )?;
        ensure!(
            err.contains("Did not find any relations."),
            "\\di: slicedb has no indexes, psql says so:\n{err}"
        );
        check(
            "dv",
            has_row(&section(&out, "dv"), &["public", "mv", "view"]),
        )?;
        let dn = section(&out, "dn");
        check("dn", has_row(&dn, &["public"]) && has_row(&dn, &["sales"]))?;
        let du = section(&out, "du");
        check(
            "du",
            du.iter().any(|l| {
                let c = cells(l);
                c.len() >= 2 && c[0] == "slicedb" && c[1].contains("Superuser")
            }),
        )?;
        check("df", section(&out, "df").contains(&"(0 rows)"))?;
        let q = section(&out, "d_qualified");
        check(
            "d_qualified",
            q.iter().any(|l| l.contains("Table \"sales.orders\""))
                && has_row(&q, &["amount", "numeric(10,3)"]),
        )?;
        // Completion candidates, sorted (psql sorts them itself).
        let names = |name: &str| -> Vec<String> {
            let mut v: Vec<String> = section(&out, name)
                .iter()
                .map(|l| cells(l))
                .filter(|c| !c[0].is_empty() && !c[0].starts_with('-') && !c[0].starts_with('('))
                .map(|c| c.join("|"))
                .skip(1) // the header
                .collect();
            v.sort();
            v
        };
        ensure!(
            names("complete_tables") == ["mt|", "mv|"],
            "tab completion of m: {:?}",
            names("complete_tables")
        );
        ensure!(
            names("complete_qualified") == ["orders|sales"],
            "tab completion of sales.o: {:?}",
            names("complete_qualified")
        );
        ensure!(
            names("complete_columns") == ["n"],
            "tab completion of mt's columns: {:?}",
            names("complete_columns")
        );
        ensure!(
            names("complete_settings") == ["statement_timeout"],
            "tab completion of settings: {:?}",
            names("complete_settings")
        );
        check(
            "typeof",
            has_row(
                &section(&out, "typeof"),
                &["bigint", "numeric", "text", "date"],
            ),
        )?;
        let x = section(&out, "x");
        check(
            "x",
            x.contains(&"-[ RECORD 1 ]") && has_row(&x, &["k", "2"]) && has_row(&x, &["s", "two"]),
        )?;
        let timing = section(&out, "timing");
        check(
            "timing",
            timing
                .iter()
                .any(|l| l.starts_with("Time: ") && l.ends_with(" ms"))
                && timing.iter().any(|l| l.trim() == "2"),
        )?;
        db.stop().await
    });
}
