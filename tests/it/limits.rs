//! One session never takes the database down: idle sessions are closed
//! with PostgreSQL's SQLSTATEs (an abandoned transaction block rolled
//! back), against `slicedb local` through tokio-postgres.

use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use tokio_postgres::{Client, NoTls};

use crate::harness::{self, Slicedb};

/// A client whose connection task's end (and its error) the test awaits.
async fn connect_watched(
    url: &str,
) -> Result<(
    Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
)> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| anyhow!("connecting to {url}: {}", harness::describe(&e)))?;
    Ok((client, tokio::spawn(conn)))
}

/// Wait for the server to close `conn`; the SQLSTATE it closed it with.
async fn closed_with(
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    limit: Duration,
) -> Result<String> {
    let end = tokio::time::timeout(limit, conn)
        .await
        .with_context(|| format!("the connection was still open after {limit:?}"))??;
    let e = end
        .err()
        .ok_or_else(|| anyhow!("the connection ended without an error"))?;
    let db = e
        .as_db_error()
        .ok_or_else(|| anyhow!("not a server error: {e}"))?;
    ensure!(db.severity() == "FATAL", "{}", harness::describe(&e));
    Ok(db.code().code().to_string())
}

#[test]
fn idle_sessions_are_closed_with_postgres_sqlstates_and_their_transactions_rolled_back() {
    harness::run("idle", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local_args(
            &env,
            2,
            &data,
            &[],
            &["--idle-in-transaction-session-timeout", "2s"],
        )
        .await?;
        let c = db.connect().await?;
        harness::exec(&c, "CREATE TABLE t (k bigint, v text) DISTRIBUTE ON (k)").await?;
        harness::exec(&c, "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')").await?;
        let shown = harness::scalar(&c, "SHOW idle_in_transaction_session_timeout").await?;
        ensure!(shown == "2s", "the server default shows as {shown}");
        harness::expect_error(&c, "SET idle_session_timeout = 'soon'", &["22023"]).await?;

        // An open transaction block left idle: closed with 25P03 after
        // the server's default, its insert and its delete rolled back.
        let (a, a_conn) = connect_watched(db.url()).await?;
        a.batch_execute("BEGIN; INSERT INTO t VALUES (100, 'x'); DELETE FROM t WHERE k = 1")
            .await?;
        let idle_since = Instant::now();
        let state = harness::scalar(
            &c,
            "SELECT state FROM pg_stat_activity WHERE state <> 'active' \
             AND query LIKE 'BEGIN%'",
        )
        .await?;
        ensure!(
            state == "idle in transaction",
            "pg_stat_activity says {state}"
        );
        let code = closed_with(a_conn, Duration::from_secs(20)).await?;
        let took = idle_since.elapsed();
        println!("idle in transaction: closed with {code} after {took:?}");
        ensure!(code == "25P03", "idle in transaction: closed with {code}");
        ensure!(took >= Duration::from_millis(1900), "closed after {took:?}");
        ensure!(a.is_closed());
        // Rolled back: its row is not there, and the row it deleted can be
        // deleted by another transaction (its lock is gone) without 40001.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = c.simple_query("DELETE FROM t WHERE k = 1").await;
            match r {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    println!("the abandoned block is not rolled back yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(anyhow!("{}", harness::describe(&e))),
            }
        }
        let n = harness::scalar(&c, "SELECT count(*) FROM t").await?;
        ensure!(n == "2", "after the rollback and the delete: {n} rows");

        // A session's own idle_session_timeout: closed with 57P05.
        let (b, b_conn) = connect_watched(db.url()).await?;
        b.batch_execute("SET idle_session_timeout = '1s'").await?;
        let shown = b.simple_query("SHOW idle_session_timeout").await?;
        let since = Instant::now();
        let shown = shown.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        ensure!(shown.as_deref() == Some("1s"), "SHOW says {shown:?}");
        let code = closed_with(b_conn, Duration::from_secs(20)).await?;
        println!(
            "idle session: closed with {code} after {:?}",
            since.elapsed()
        );
        ensure!(code == "57P05", "idle session: closed with {code}");

        // Busy sessions are not idle: statements every 300 ms for 3 s
        // under a 1 s timeout keep it; RESET goes back to the default
        // (none), and a 1.5 s pause is fine then.
        let (d, d_conn) = connect_watched(db.url()).await?;
        d.batch_execute("SET idle_session_timeout = 1000").await?;
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            d.simple_query("SELECT count(*) FROM t").await?;
        }
        d.batch_execute("RESET idle_session_timeout").await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        d.simple_query("SELECT 1").await?;
        ensure!(!d_conn.is_finished(), "the busy session was closed");

        // The server serves on.
        harness::assert_alive(&c, "idle sessions closed").await?;
        db.stop().await
    });
}

/// `n` rows `(k, 96 hex characters)` from `from` on, as INSERT's source:
/// text that barely compresses, so a few statements fill a small segment.
fn hex_rows(from: u64, n: u64) -> String {
    format!(
        "SELECT value AS k, md5(CAST(value AS VARCHAR)) || md5(CAST(value * 7 AS VARCHAR)) \
         || md5(CAST(value * 13 AS VARCHAR)) AS v FROM generate_series({from}, {})",
        from + n - 1
    )
}

/// What must not change when a statement finds the disk full: no slice
/// leaves `in_sync`, no map change, every node up.
async fn no_failover(c: &Client, epochs_before: &str) -> Result<()> {
    let bad = harness::query(
        c,
        "SELECT slice, state, copies FROM slicedb_slices WHERE state <> 'in_sync'",
    )
    .await?;
    ensure!(bad.is_empty(), "slices not in sync: {bad:?}");
    let down = harness::query(
        c,
        "SELECT node, state FROM slicedb_nodes WHERE state <> 'up'",
    )
    .await?;
    ensure!(down.is_empty(), "nodes not up: {down:?}");
    let epochs = harness::scalar(c, "SELECT count(*) FROM slicedb_map_history").await?;
    ensure!(
        epochs == epochs_before,
        "the map changed: {epochs_before} -> {epochs} entries"
    );
    Ok(())
}

/// INSERTs of `batch` rows into `table` until one fails: how many rows
/// went in, and the error's SQLSTATE.
async fn insert_until_full(c: &Client, table: &str, batch: u64) -> Result<(u64, String)> {
    let mut done = 0;
    loop {
        let sql = format!("INSERT INTO {table} {}", hex_rows(done + 1, batch));
        match c.simple_query(&sql).await {
            Ok(_) => done += batch,
            Err(e) => {
                println!("after {done} rows: {}", harness::describe(&e));
                return Ok((done, harness::sqlstate(&e).unwrap_or_default()));
            }
        }
        ensure!(done < 5_000_000, "{done} rows and the segment is not full");
    }
}

/// A segment fills up (64 MiB images): the INSERT or COPY that finds it
/// full fails with 53100, everything committed before is there, nothing
/// failed over; once a table is dropped, writes go in again.
#[test]
fn a_full_segment_fails_the_statement_with_53100_and_fails_nothing_over() {
    harness::run("segfull", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local_args(
            &env,
            2,
            &data,
            &[],
            &["--disk-size", "64MiB", "--slices-per-disk", "1"],
        )
        .await?;
        let c = db.connect().await?;
        let epochs = harness::scalar(&c, "SELECT count(*) FROM slicedb_map_history").await?;
        harness::exec(&c, "CREATE TABLE keep (k bigint, v text) DISTRIBUTE ON (k)").await?;
        harness::exec(&c, &format!("INSERT INTO keep {}", hex_rows(1, 1000))).await?;
        harness::exec(&c, "CREATE TABLE fill (k bigint, v text) DISTRIBUTE ON (k)").await?;

        let (rows, code) = insert_until_full(&c, "fill", 40_000).await?;
        ensure!(
            code == "53100",
            "the INSERT that found the segment full: {code}"
        );
        ensure!(rows > 0, "not one batch went in");
        let n = harness::scalar(&c, "SELECT count(*) FROM fill").await?;
        ensure!(
            n == rows.to_string(),
            "fill holds {n} rows, {rows} were committed"
        );
        let n = harness::scalar(&c, "SELECT count(*) FROM keep").await?;
        ensure!(n == "1000", "keep holds {n} rows");
        no_failover(&c, &epochs).await?;
        let used = harness::query(
            &c,
            "SELECT node, segment, bytes, used FROM slicedb_disks ORDER BY 1, 2",
        )
        .await?;
        println!("slicedb_disks when full: {used:?}");

        // COPY FROM STDIN finds it full too.
        let copy = async {
            use futures::SinkExt;
            let sink = c.copy_in("COPY fill FROM STDIN").await?;
            futures::pin_mut!(sink);
            let line = format!("{}\n", "0123456789abcdef".repeat(6));
            for i in 0..200_000u64 {
                let row = format!("{}\t{line}", 10_000_000 + i);
                sink.send(bytes::Bytes::from(row)).await?;
            }
            sink.finish().await
        };
        match copy.await {
            Ok(n) => anyhow::bail!("COPY into a full segment loaded {n} rows"),
            Err(e) => {
                let code = harness::sqlstate(&e);
                println!("COPY into a full segment: {}", harness::describe(&e));
                ensure!(
                    code.as_deref() == Some("53100"),
                    "COPY: {}",
                    harness::describe(&e)
                );
            }
        }
        let n = harness::scalar(&c, "SELECT count(*) FROM fill").await?;
        ensure!(
            n == rows.to_string(),
            "after the COPY fill holds {n} rows, not {rows}"
        );
        no_failover(&c, &epochs).await?;

        // Dropping the table frees its space: the same load goes in again.
        harness::exec(&c, "DROP TABLE fill").await?;
        harness::exec(
            &c,
            "CREATE TABLE fill2 (k bigint, v text) DISTRIBUTE ON (k)",
        )
        .await?;
        let mut done = 0;
        while done + 40_000 <= rows {
            harness::exec(
                &c,
                &format!("INSERT INTO fill2 {}", hex_rows(done + 1, 40_000)),
            )
            .await?;
            done += 40_000;
        }
        let n = harness::scalar(&c, "SELECT count(*) FROM keep").await?;
        ensure!(n == "1000", "keep holds {n} rows at the end");
        no_failover(&c, &epochs).await?;
        harness::ensure_verified(&c).await?;
        db.stop().await
    });
}

/// A tmpfs mounted for one test (unmounted, lazily, when dropped).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `size` (e.g. "100m") at `dir`, or None with the
    /// reason printed: mounting needs root (CI runs as root).
    fn mount(dir: &std::path::Path, size: &str) -> Result<Option<Tmpfs>> {
        std::fs::create_dir_all(dir)?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Ok(Some(Tmpfs(dir.to_path_buf()))),
            Ok(o) => {
                println!(
                    "SKIPPED: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                Ok(None)
            }
            Err(e) => {
                println!("SKIPPED: cannot run mount: {e}");
                Ok(None)
            }
        }
    }

    fn resize(&self, size: &str) -> Result<()> {
        let o = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()?;
        ensure!(
            o.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(())
    }

    /// Fill the file system with one file until it is full; its path.
    fn fill(&self) -> Result<std::path::PathBuf> {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0xa5u8; 1 << 20];
        loop {
            if let Err(e) = f.write_all(&chunk) {
                ensure!(e.raw_os_error() == Some(28), "filling: {e}");
                break;
            }
        }
        let mut small = vec![0xa5u8; 4096];
        while f.write_all(&small).is_ok() {}
        small.truncate(1);
        while f.write_all(&small).is_ok() {}
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The host file system full. Images that do not fit are refused when
/// they are made (they are allocated up front), naming the sizes. Once
/// they exist, a full file system (the coordinator's commit log, the spill
/// directory) fails statements with 53100, or not at all, never the
/// server or a disk: committed rows stay, nothing fails over, and once
/// there is room again everything works.
#[test]
fn a_full_host_file_system_fails_statements_with_53100_and_the_server_stays_up() {
    harness::run("hostfull", |env| async move {
        let Some(fs) = Tmpfs::mount(&env.path().join("tmpfs"), "100m")? else {
            return Ok(());
        };
        let big = fs.0.join("big");
        let e = Slicedb::local_args(&env, 2, &big, &[], &["--disk-size", "64MiB"])
            .await
            .err()
            .ok_or_else(|| anyhow!("two 64 MiB images started in a 100 MiB file system"))?;
        let msg = format!("{e:#}");
        println!(
            "start refused: {}",
            msg.lines()
                .filter(|l| l.contains("up front"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        ensure!(
            msg.contains("up front") && msg.contains("No space left on device"),
            "the refusal does not say why: {msg}"
        );
        std::fs::remove_dir_all(&big)?;

        fs.resize("150m")?;
        let data = fs.0.join("data");
        let db = Slicedb::local_args(
            &env,
            2,
            &data,
            &[],
            &["--disk-size", "64MiB", "--memory-limit", "4MiB"],
        )
        .await?;
        let c = db.connect().await?;
        let epochs = harness::scalar(&c, "SELECT count(*) FROM slicedb_map_history").await?;
        harness::exec(&c, "CREATE TABLE t (k bigint, v text) DISTRIBUTE ON (k)").await?;
        harness::exec(&c, &format!("INSERT INTO t {}", hex_rows(1, 10_000))).await?;
        let filler = fs.fill()?;

        let mut rows = 10_000;
        match c
            .simple_query(&format!("INSERT INTO t {}", hex_rows(20_000, 1000)))
            .await
        {
            Ok(_) => {
                println!("INSERT with the host file system full: committed (images are allocated)");
                rows += 1000;
            }
            Err(e) => {
                println!(
                    "INSERT with the host file system full: {}",
                    harness::describe(&e)
                );
                ensure!(
                    harness::sqlstate(&e).as_deref() == Some("53100"),
                    "{}",
                    harness::describe(&e)
                );
            }
        }
        let spill = "SELECT count(*) FROM (SELECT value % 1500000 AS g, count(*) AS n \
                     FROM generate_series(1, 3000000) GROUP BY value % 1500000) s";
        match c.simple_query(spill).await {
            Ok(_) => anyhow::bail!("a query that must spill answered with no room to spill"),
            Err(e) => {
                println!(
                    "a spilling query with the host file system full: {}",
                    harness::describe(&e)
                );
                ensure!(
                    harness::sqlstate(&e).as_deref() == Some("53100"),
                    "{}",
                    harness::describe(&e)
                );
            }
        }
        let n = harness::scalar(&c, "SELECT count(*) FROM t").await?;
        ensure!(
            n == rows.to_string(),
            "t holds {n} rows, {rows} were committed"
        );
        no_failover(&c, &epochs).await?;

        std::fs::remove_file(filler)?;
        harness::exec(&c, &format!("INSERT INTO t {}", hex_rows(30_000, 1000))).await?;
        let n = harness::scalar(&c, "SELECT count(*) FROM t").await?;
        ensure!(n == (rows + 1000).to_string(), "t holds {n} rows");
        no_failover(&c, &epochs).await?;
        db.stop().await?;
        drop(fs);
        Ok(())
    });
}

/// Read one backend message: (type, body).
async fn read_message(s: &mut tokio::net::TcpStream) -> Result<Option<(u8, Vec<u8>)>> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 5];
    match s.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    ensure!(
        (4..1 << 20).contains(&len),
        "a backend message of {len} bytes"
    );
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await?;
    Ok(Some((head[0], body)))
}

/// A started connection, by hand (protocol 3.0), ready for a query.
async fn raw_session(url: &str) -> Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let addr = url
        .trim_start_matches("postgres://slicedb@")
        .trim_end_matches("/slicedb");
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let params = b"user\0slicedb\0database\0slicedb\0\0";
    let mut m = Vec::new();
    m.extend_from_slice(&((8 + params.len()) as u32).to_be_bytes());
    m.extend_from_slice(&196608u32.to_be_bytes());
    m.extend_from_slice(params);
    s.write_all(&m).await?;
    loop {
        match read_message(&mut s).await? {
            Some((b'Z', _)) => return Ok(s),
            Some((b'E', body)) => {
                anyhow::bail!("startup refused: {}", String::from_utf8_lossy(&body))
            }
            Some(_) => {}
            None => anyhow::bail!("closed during startup"),
        }
    }
}

/// A client announcing a message past the wire's cap (PostgreSQL's 1 GiB;
/// here up to 4 GiB) is refused from the length alone: its connection is
/// closed at once, nothing of that size awaited or allocated, and other
/// sessions go on. (pgwire 0.41 closes it without an ErrorResponse; were
/// one sent, it must be 08P01.)
#[test]
fn an_oversized_wire_message_is_refused_and_the_server_serves_on() {
    harness::run("wirecap", |env| async move {
        use tokio::io::AsyncWriteExt;
        let db = Slicedb::local(&env, 2, &env.path().join("data")).await?;
        let c = db.connect().await?;
        let lengths = [
            ("2 GiB", 0x7fff_fff0u32),
            ("1 GiB + 1", (1 << 30) + 1),
            ("4 GiB", u32::MAX),
        ];
        for (what, len) in lengths {
            let mut s = raw_session(db.url()).await?;
            let mut m = vec![b'Q'];
            m.extend_from_slice(&len.to_be_bytes());
            m.extend_from_slice(b"SELECT 1");
            s.write_all(&m).await?;
            let answer = tokio::time::timeout(Duration::from_secs(10), read_message(&mut s))
                .await
                .with_context(|| format!("a {what} Query message: still waiting after 10 s"))??;
            match answer {
                None => println!("a {what} Query message: connection closed"),
                Some((kind, body)) => {
                    let text = String::from_utf8_lossy(&body).replace('\0', " ");
                    println!("a {what} Query message: {text}");
                    ensure!(
                        kind == b'E' && text.contains("08P01"),
                        "a {what} Query message: {text}"
                    );
                    let end = tokio::time::timeout(Duration::from_secs(10), read_message(&mut s))
                        .await??;
                    ensure!(end.is_none(), "the connection stayed open: {end:?}");
                }
            }
            harness::assert_alive(&c, "an oversized message").await?;
        }
        // A large message under the cap is fine: an 8 MiB statement.
        let big = format!("SELECT length('{}')", "x".repeat(8 << 20));
        let n = harness::scalar(&c, &big).await?;
        ensure!(n == (8 << 20).to_string(), "{n}");
        db.stop().await
    });
}
