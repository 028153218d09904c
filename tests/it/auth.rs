//! Who gets in on the SQL port, and what they may do there (docs/security.md):
//! SCRAM-SHA-256 passwords against roles in the catalog, host-based rules
//! (first match wins, none: 28000), TLS required by `hostssl` rules, table
//! privileges (42501 without a grant), administrative statements for
//! superusers only, and passwords never stored, logged or shown in clear.
//! Real clients: tokio-postgres, psql and psycopg.

use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, ensure, Context, Result};
use tokio_postgres::NoTls;

use crate::harness::{self, exec, query, scalar, Slicedb};
use crate::python::run_script;

const ALICE_PW: &str = "alice-Pw-7f3kq";
const BOB_PW: &str = "bob-Pw-m2x9z";
const BOB_PW2: &str = "bob-Pw2-rt55w";

/// `127.0.0.1:PORT` of a `postgres://slicedb@127.0.0.1:PORT/slicedb` URL.
fn host_port(url: &str) -> String {
    url.trim_start_matches("postgres://slicedb@")
        .trim_end_matches("/slicedb")
        .to_string()
}

/// Connect as `user` with `password` to `db`; the SQLSTATE of a refusal.
async fn login(
    hp: &str,
    user: &str,
    password: &str,
    db: &str,
) -> std::result::Result<tokio_postgres::Client, (Option<String>, String)> {
    let url = format!("postgres://{user}:{password}@{hp}/{db}");
    match tokio_postgres::connect(&url, NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            Ok(client)
        }
        Err(e) => Err((harness::sqlstate(&e), harness::describe(&e))),
    }
}

async fn refused_with(hp: &str, user: &str, password: &str, db: &str, code: &str) -> Result<()> {
    match login(hp, user, password, db).await {
        Ok(_) => bail!("{user}@{db} connected, but should be refused with {code}"),
        Err((got, text)) => {
            ensure!(
                got.as_deref() == Some(code),
                "{user}@{db}: expected {code}, got {text}"
            );
            Ok(())
        }
    }
}

/// The SQLSTATE `sql` fails with (an error if it succeeds).
async fn fails_with(client: &tokio_postgres::Client, sql: &str) -> Result<String> {
    match client.simple_query(sql).await {
        Ok(_) => Err(anyhow!("{sql} succeeded, but should be refused")),
        Err(e) => harness::sqlstate(&e).ok_or_else(|| anyhow!("{sql}: {e}")),
    }
}

/// `sql` must be refused with 42501.
async fn denied(client: &tokio_postgres::Client, sql: &str) -> Result<()> {
    let code = fails_with(client, sql).await?;
    ensure!(code == "42501", "{sql}: expected 42501, got {code}");
    Ok(())
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "img") {
                // Disk images hold table rows only, and are large.
                continue;
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    out
}

/// `slicedb local` arguments: small disks and these `--hba` rules.
fn rules(extra: &[&str]) -> Vec<String> {
    let mut v = vec!["--disk-size".to_string(), "256MiB".to_string()];
    for r in extra {
        v.extend(["--hba".to_string(), r.to_string()]);
    }
    v
}

async fn start(env: &harness::TestEnv, data: &Path, args: &[String]) -> Result<Slicedb> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Slicedb::local_args(env, 2, data, &[], &args).await
}

#[test]
fn passwords_rules_and_privileges() {
    harness::run("auth", |env| async move {
        let data = env.path().join("data");
        // The superuser on loopback without a password; everyone else with
        // SCRAM, and only to database slicedb: any other database matches
        // no rule.
        let args = rules(&[
            "host all slicedb 127.0.0.1/32 trust",
            "host slicedb all 127.0.0.1/32 scram-sha-256",
        ]);
        let db = start(&env, &data, &args).await?;
        let hp = host_port(db.url());
        let admin = db.connect().await?;
        exec(
            &admin,
            &format!("CREATE ROLE alice LOGIN PASSWORD '{ALICE_PW}'"),
        )
        .await?;
        exec(&admin, &format!("CREATE USER bob WITH PASSWORD '{BOB_PW}'")).await?;
        exec(&admin, "CREATE ROLE nologin_role PASSWORD 'x-unused-9'").await?;
        exec(
            &admin,
            "CREATE TABLE t (k bigint, v text) DISTRIBUTE ON (k)",
        )
        .await?;
        exec(&admin, "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')").await?;
        ensure!(
            fails_with(&admin, "CREATE ROLE alice").await? == "42710",
            "a role that exists"
        );
        ensure!(fails_with(&admin, "DROP ROLE nobody").await? == "42704");
        exec(&admin, "DROP ROLE IF EXISTS nobody").await?;
        // What psql's \password asks before it sends a verifier.
        ensure!(scalar(&admin, "SHOW password_encryption").await? == "scram-sha-256");

        // Passwords: right in, wrong 28P01 (a role that does not exist
        // looks the same), no rule 28000, a NOLOGIN role 28000.
        let alice = login(&hp, "alice", ALICE_PW, "slicedb")
            .await
            .map_err(|e| anyhow!("alice with her password: {e:?}"))?;
        ensure!(scalar(&alice, "SELECT 40 + 2").await? == "42");
        refused_with(&hp, "alice", "not-her-password", "slicedb", "28P01").await?;
        refused_with(&hp, "mallory", "anything", "slicedb", "28P01").await?;
        refused_with(&hp, "alice", ALICE_PW, "otherdb", "28000").await?;
        refused_with(&hp, "nologin_role", "x-unused-9", "slicedb", "28000").await?;

        // pg_roles shows the real roles, never a password.
        let roles = query(
            &alice,
            "SELECT rolname, rolsuper, rolcanlogin, rolpassword FROM pg_roles ORDER BY rolname",
        )
        .await?;
        let row = |n: &str| roles.iter().find(|r| r[0].as_deref() == Some(n)).cloned();
        ensure!(
            row("slicedb").map(|r| (r[1].clone(), r[2].clone()))
                == Some((Some("t".into()), Some("t".into()))),
            "slicedb is a superuser: {roles:?}"
        );
        ensure!(
            row("alice").map(|r| (r[1].clone(), r[2].clone()))
                == Some((Some("f".into()), Some("t".into()))),
            "alice is not: {roles:?}"
        );
        ensure!(
            row("nologin_role").map(|r| r[2].clone()) == Some(Some("f".into())),
            "{roles:?}"
        );
        ensure!(
            roles.iter().all(|r| r[3].as_deref() == Some("********")),
            "{roles:?}"
        );

        // Privileges: nothing without a grant, SELECT with one, refused
        // again after REVOKE; only the owner or a superuser drops or grants.
        for sql in [
            "SELECT count(*) FROM t",
            "INSERT INTO t VALUES (9, 'z')",
            "DELETE FROM t",
            "UPDATE t SET v = 'x'",
            "TRUNCATE t",
            "DROP TABLE t",
            "ALTER TABLE t ADD COLUMN w int",
            "GRANT SELECT ON t TO alice",
        ] {
            denied(&alice, sql).await?;
        }
        // COPY both ways through psql.
        for (sql, needs) in [
            ("COPY t FROM STDIN", "INSERT"),
            ("COPY t TO STDOUT", "SELECT"),
        ] {
            let url = format!("postgres://alice@{hp}/slicedb?sslmode=disable");
            let e = psql(url, ALICE_PW, sql).await.expect_err("refused");
            ensure!(
                e.to_string().contains("permission denied for table t"),
                "{sql} without {needs}: {e}"
            );
        }
        exec(&admin, "GRANT SELECT ON TABLE t TO alice").await?;
        ensure!(scalar(&alice, "SELECT count(*) FROM t").await? == "3");
        ensure!(
            scalar(&alice, "SELECT v FROM t WHERE k = 2").await? == "b",
            "with the grant alice reads the rows"
        );
        ensure!(
            fails_with(&alice, "INSERT INTO t VALUES (9, 'z')").await? == "42501",
            "SELECT is not INSERT"
        );
        exec(&admin, "REVOKE SELECT ON t FROM alice").await?;
        ensure!(fails_with(&alice, "SELECT count(*) FROM t").await? == "42501");
        // Extended protocol too (psycopg's and JDBC's way).
        let e = alice
            .query("SELECT k FROM t WHERE k = $1", &[&1i64])
            .await
            .expect_err("refused without a grant");
        ensure!(harness::sqlstate(&e).as_deref() == Some("42501"), "{e}");

        // Administrative statements are a superuser's.
        for sql in [
            "CREATE ROLE eve",
            "ALTER ROLE alice SUPERUSER",
            "DROP ROLE bob",
            "REGENERATE",
            "GROOM TABLE t",
            "SET datafusion.runtime.memory_limit = '1M'",
        ] {
            denied(&alice, sql).await?;
        }

        // Her own table is hers; system views stay readable.
        exec(&alice, "CREATE TABLE mine (k bigint) DISTRIBUTE ON (k)").await?;
        exec(&alice, "INSERT INTO mine VALUES (1), (2)").await?;
        ensure!(scalar(&alice, "SELECT count(*) FROM mine").await? == "2");
        ensure!(scalar(&alice, "SELECT count(*) FROM slicedb_nodes").await? == "2");
        exec(&alice, "GRANT SELECT ON mine TO bob").await?;

        // bob changes his own password; pg_stat_activity shows the
        // statement without it.
        let bob = login(&hp, "bob", BOB_PW, "slicedb")
            .await
            .map_err(|e| anyhow!("bob: {e:?}"))?;
        exec(&bob, &format!("ALTER ROLE bob PASSWORD '{BOB_PW2}'")).await?;
        let shown = query(&admin, "SELECT query FROM pg_stat_activity").await?;
        let shown = format!("{shown:?}");
        ensure!(!shown.contains(BOB_PW2), "pg_stat_activity: {shown}");
        ensure!(shown.contains("PASSWORD '********'"), "{shown}");
        ensure!(scalar(&bob, "SELECT count(*) FROM mine").await? == "2");
        refused_with(&hp, "bob", BOB_PW, "slicedb", "28P01").await?;
        exec(&admin, "GRANT ALL PRIVILEGES ON t TO bob").await?;

        // The same with the real psql and psycopg.
        psql_login(&hp, "alice", ALICE_PW, true).await?;
        psql_login(&hp, "alice", "wrong-one", false).await?;
        let port = hp.rsplit(':').next().unwrap_or_default().to_string();
        let args = vec![port.clone(), "bob".into(), BOB_PW2.into()];
        run_script("test_auth.py", args, "all auth checks passed").await?;
        jdbc(&env, &hp, "bob", BOB_PW2, None).await?;

        // Roles, passwords and grants survive a restart.
        drop((alice, bob, admin));
        db.stop().await?;
        let db = start(&env, &data, &args_again()).await?;
        let hp = host_port(db.url());
        let bob = login(&hp, "bob", BOB_PW2, "slicedb")
            .await
            .map_err(|e| anyhow!("bob after restart: {e:?}"))?;
        ensure!(scalar(&bob, "SELECT count(*) FROM t").await? == "3");
        let alice = login(&hp, "alice", ALICE_PW, "slicedb")
            .await
            .map_err(|e| anyhow!("alice after restart: {e:?}"))?;
        ensure!(fails_with(&alice, "SELECT count(*) FROM t").await? == "42501");
        ensure!(scalar(&alice, "SELECT count(*) FROM mine").await? == "2");
        let admin = db.connect().await?;
        ensure!(
            fails_with(&admin, "DROP ROLE alice").await? == "2BP01",
            "alice owns a table"
        );
        exec(&admin, "DROP TABLE mine").await?;
        drop(alice);
        exec(&admin, "DROP ROLE alice").await?;
        refused_with(&hp, "alice", ALICE_PW, "slicedb", "28P01").await?;
        drop((bob, admin));
        db.stop().await?;

        // No password anywhere in clear: catalog, logs.
        for pw in [ALICE_PW, BOB_PW, BOB_PW2] {
            let found = files_holding(env.path(), pw);
            ensure!(found.is_empty(), "password {pw} in clear in {found:?}");
        }
        let catalog = std::fs::read_to_string(data.join("coordinator/catalog.json"))?;
        ensure!(catalog.contains("SCRAM-SHA-256$4096:"), "{catalog}");
        Ok(())
    });
}

fn args_again() -> Vec<String> {
    rules(&[
        "host all slicedb 127.0.0.1/32 trust",
        "host slicedb all 127.0.0.1/32 scram-sha-256",
    ])
}

/// psql as `user` with `password` (PGPASSWORD): in and answering, or
/// refused with "password authentication failed".
async fn psql_login(hp: &str, user: &str, password: &str, ok: bool) -> Result<()> {
    let url = format!("postgres://{user}@{hp}/slicedb?sslmode=disable");
    match (ok, psql(url, password, "SELECT 'in-' || 'psql'").await) {
        (true, Ok(out)) => ensure!(out == "in-psql", "psql as {user}: {out}"),
        (false, Err(e)) => ensure!(
            e.to_string().contains("password authentication failed"),
            "psql as {user} with a wrong password: {e}"
        ),
        (true, Err(e)) => bail!("psql as {user}: {e}"),
        (false, Ok(out)) => bail!("psql as {user} with a wrong password got in: {out}"),
    }
    Ok(())
}

/// A CA and a server certificate for localhost / 127.0.0.1, made with the
/// openssl command: (ca.pem, server.pem, server.key).
fn make_certs(dir: &Path) -> Result<(String, String, String)> {
    let d = |f: &str| dir.join(f).display().to_string();
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    let steps: Vec<Vec<String>> = vec![
        vec![
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ]
        .into_iter()
        .map(String::from)
        .chain([
            "-keyout".into(),
            d("ca.key"),
            "-out".into(),
            d("ca.pem"),
            "-subj".into(),
            "/CN=slicedb test CA".into(),
        ])
        .collect(),
        vec!["req", "-newkey", "rsa:2048", "-nodes"]
            .into_iter()
            .map(String::from)
            .chain([
                "-keyout".into(),
                d("server.key"),
                "-out".into(),
                d("server.csr"),
                "-subj".into(),
                "/CN=localhost".into(),
            ])
            .collect(),
        vec!["x509", "-req", "-days", "2", "-CAcreateserial"]
            .into_iter()
            .map(String::from)
            .chain([
                "-in".into(),
                d("server.csr"),
                "-CA".into(),
                d("ca.pem"),
                "-CAkey".into(),
                d("ca.key"),
                "-out".into(),
                d("server.pem"),
                "-extfile".into(),
                d("san.ext"),
            ])
            .collect(),
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .context("running openssl (install it: apt-get install openssl)")?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((d("ca.pem"), d("server.pem"), d("server.key")))
}

/// psql with `conninfo` and PGPASSWORD: its stdout, or its stderr as the
/// error.
async fn psql(conninfo: String, password: &str, sql: &str) -> Result<String> {
    let (pw, sql) = (password.to_string(), sql.to_string());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .args([conninfo.as_str(), "-X", "-At", "-c", sql.as_str()])
            .env("PGPASSWORD", pw)
            .env("PGCONNECT_TIMEOUT", "20")
            .output()
    })
    .await?
    .context("running psql")?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(anyhow!("psql failed: {stderr}"))
    }
}

#[test]
fn tls_is_used_and_required_by_hostssl_rules() {
    harness::run("auth_tls", |env| async move {
        let (ca, cert, key) = make_certs(env.path())?;
        let mut args = rules(&[
            "hostssl all slicedb 127.0.0.1/32 trust",
            "hostssl slicedb all 127.0.0.1/32 scram-sha-256",
        ]);
        args.extend(["--tls-cert".into(), cert, "--tls-key".into(), key]);
        let db = start(&env, &env.path().join("data"), &args).await?;
        let hp = host_port(db.url());
        let port = hp.rsplit(':').next().unwrap_or_default().to_string();
        let admin =
            format!("host=127.0.0.1 port={port} dbname=slicedb user=slicedb sslmode=require");
        for sql in [
            "CREATE TABLE t (k bigint) DISTRIBUTE ON (k)",
            "INSERT INTO t VALUES (1), (2), (3)",
            "CREATE ROLE carol LOGIN PASSWORD 'carol-Pw-44tq'",
            "GRANT SELECT ON t TO carol",
        ] {
            psql(admin.clone(), "", sql).await?;
        }
        // A plain connection matches no rule, whoever it is.
        let plain =
            format!("host=127.0.0.1 port={port} dbname=slicedb user=slicedb sslmode=disable");
        let e = psql(plain, "", "SELECT 1").await.expect_err("refused");
        ensure!(
            e.to_string().contains("no pg_hba.conf entry")
                && e.to_string().contains("no encryption"),
            "{e}"
        );
        refused_with(&hp, "slicedb", "", "slicedb", "28000").await?;
        // verify-full: the certificate checks out against the test CA.
        let full = format!(
            "host=localhost port={port} dbname=slicedb user=carol sslmode=verify-full sslrootcert={ca}"
        );
        ensure!(psql(full.clone(), "carol-Pw-44tq", "SELECT count(*) FROM t").await? == "3");
        let e = psql(full, "wrong", "SELECT 1")
            .await
            .expect_err("wrong password");
        ensure!(
            e.to_string().contains("password authentication failed"),
            "{e}"
        );
        // psycopg over TLS (verify-full), and its plain connection refused.
        let args = vec![
            port.clone(),
            "carol".into(),
            "carol-Pw-44tq".into(),
            ca.clone(),
        ];
        run_script("test_auth.py", args, "all auth checks passed").await?;
        // JDBC too, verifying the certificate.
        let params = format!("sslmode=verify-full&sslrootcert={ca}");
        let hp = format!("localhost:{port}");
        jdbc(&env, &hp, "carol", "carol-Pw-44tq", Some(params)).await?;
        db.stop().await
    });
}

/// tests/jdbc/JdbcAuth.java as `user` against `hp` (HOST:PORT), with URL
/// `params` (None: no TLS).
async fn jdbc(
    env: &harness::TestEnv,
    hp: &str,
    user: &str,
    password: &str,
    params: Option<String>,
) -> Result<()> {
    let classpath = crate::jdbc::compile(env, "JdbcAuth.java").await?;
    let mut java = vec![
        "-cp".to_string(),
        classpath,
        "JdbcAuth".to_string(),
        hp.to_string(),
        user.to_string(),
        password.to_string(),
    ];
    java.extend(params);
    let out = tokio::task::spawn_blocking(move || crate::jdbc::run("java", &java)).await??;
    ensure!(out.contains("all jdbc auth checks passed"), "{out}");
    Ok(())
}

#[test]
fn local_refuses_a_wide_listen_address_without_rules() {
    let out = Command::new(env!("CARGO_BIN_EXE_slicedb"))
        .args([
            "local",
            "--nodes",
            "1",
            "--listen",
            "0.0.0.0:0",
            "--disk-size",
            "64MiB",
        ])
        .arg("--data")
        .arg(std::env::temp_dir().join(format!("slicedb-auth-wide-{}", std::process::id())))
        .output()
        .expect("running slicedb");
    let _ = std::fs::remove_dir_all(
        std::env::temp_dir().join(format!("slicedb-auth-wide-{}", std::process::id())),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains("not a loopback address"),
        "the reason is given: {stderr}"
    );
}
