//! The cluster harness: real `slicedb` processes with their own data dirs, free
//! ports, readiness checks on the `ready: ` stdout line, and pid-based stop
//! (neon `control_plane/src/background_process.rs`).
//!
//! Every process writes stderr (and its stdout) to a log file under the test's
//! temp dir. [`run`] wraps a test body: when the body fails or panics, the
//! panic message carries the last lines of every process log and the temp dir
//! is kept for a post-mortem. This module must never leave a process behind:
//! [`Proc`] kills its child on drop.

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use futures::FutureExt;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The binary under test, built by cargo for this integration test.
pub const BIN: &str = env!("CARGO_BIN_EXE_slicedb");
/// The repository root (for `tests/psql`, `tests/python`).
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// How long a process may take to print its `ready: ` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound for any single statement, so a hang fails instead of blocking.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(180);
/// Lines of each log attached to a failure.
const LOG_TAIL_LINES: usize = 100;

// ---------------------------------------------------------------------------
// Test environment and the failure wrapper
// ---------------------------------------------------------------------------

/// One test's temp dir and the list of process logs written under it.
#[derive(Clone)]
pub struct TestEnv {
    inner: Arc<EnvInner>,
}

struct EnvInner {
    name: String,
    path: PathBuf,
    dir: Mutex<Option<tempfile::TempDir>>,
    logs: Mutex<Vec<PathBuf>>,
}

impl TestEnv {
    fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("slicedb-it-{name}-"))
            .tempdir()
            .expect("creating the test's temp dir");
        TestEnv {
            inner: Arc::new(EnvInner {
                name: name.to_string(),
                path: dir.path().to_path_buf(),
                dir: Mutex::new(Some(dir)),
                logs: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The test's private temp dir.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A fresh log file path under `logs/`, registered for failure reports.
    pub fn new_log(&self, what: &str) -> PathBuf {
        let dir = self.path().join("logs");
        fs::create_dir_all(&dir).expect("creating the log dir");
        let mut logs = self.inner.logs.lock().expect("log list lock");
        let path = dir.join(format!("{:02}-{what}.log", logs.len()));
        logs.push(path.clone());
        path
    }

    /// The last lines of every process log, for a failure message.
    pub fn log_tails(&self) -> String {
        let logs = self.inner.logs.lock().expect("log list lock").clone();
        let mut out = String::new();
        for log in logs {
            out.push_str(&format!(
                "\n----- last {LOG_TAIL_LINES} lines of {} -----\n",
                log.display()
            ));
            out.push_str(&tail(&log, LOG_TAIL_LINES));
        }
        out
    }

    /// Keep the temp dir on disk (after a failure) and return its path.
    fn keep(&self) -> PathBuf {
        if let Some(dir) = self.inner.dir.lock().expect("dir lock").take() {
            return dir.keep();
        }
        self.inner.path.clone()
    }
}

/// The last `n` lines of a file (or why it could not be read).
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            let mut s = lines[from..].join("\n");
            s.push('\n');
            s
        }
        Err(e) => format!("<cannot read {}: {e}>\n", path.display()),
    }
}

/// Run one test body on its own runtime. A returned error or a panic becomes a
/// panic whose message includes the tail of every process log; processes are
/// killed (their [`Proc`]s dropped) before the logs are read.
pub fn run<F, Fut>(name: &str, body: F)
where
    F: FnOnce(TestEnv) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let env = TestEnv::new(name);
    eprintln!("[{name}] test dir {}", env.path().display());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the test runtime");
    let outcome = rt.block_on(AssertUnwindSafe(body(env.clone())).catch_unwind());
    rt.shutdown_timeout(Duration::from_secs(5));
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:?}")),
        Err(panic) => Some(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "<non-string panic>".to_string()),
        ),
    };
    if let Some(msg) = failure {
        let tails = env.log_tails();
        let kept = env.keep();
        panic!(
            "test {} failed: {msg}\n\n(test dir kept at {})\n{tails}",
            env.inner.name,
            kept.display()
        );
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// One running `slicedb` process. Killed (SIGKILL) on drop unless stopped.
pub struct Proc {
    name: String,
    pid: u32,
    child: Option<Child>,
    stderr_log: PathBuf,
    stdout_log: PathBuf,
    stdout_reader: Option<JoinHandle<()>>,
}

impl Proc {
    /// Spawn `slicedb args...` with extra environment variables, stderr to a
    /// log file, and wait for the first stdout line starting with `ready: `.
    /// Returns the process and that line.
    pub async fn spawn_ready_with(
        env: &TestEnv,
        name: &str,
        args: &[String],
        vars: &[(&str, &str)],
    ) -> Result<(Proc, String)> {
        let stderr_log = env.new_log(&format!("{name}.stderr"));
        let stdout_log = env.new_log(&format!("{name}.stdout"));
        let stderr = File::create(&stderr_log).context("creating the stderr log")?;
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("spawning {BIN} {args:?}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let out_path = stdout_log.clone();
        // A thread drains stdout for the whole life of the process (so it never
        // blocks on a full pipe), copies it to the log and reports `ready: `.
        let reader = std::thread::spawn(move || {
            let mut log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&out_path)
                .expect("opening the stdout log");
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if line.starts_with("ready: ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let mut proc = Proc {
            name: name.to_string(),
            pid,
            child: Some(child),
            stderr_log,
            stdout_log,
            stdout_reader: Some(reader),
        };
        eprintln!("[{name}] started pid {pid}: slicedb {}", args.join(" "));
        match tokio::time::timeout(READY_TIMEOUT, rx).await {
            Ok(Ok(line)) => {
                eprintln!("[{name}] {line}");
                Ok((proc, line))
            }
            Ok(Err(_)) => {
                // stdout closed without a ready line: the process is exiting.
                let status = proc.wait_exit(Duration::from_secs(10)).await;
                bail!(
                    "{name} (pid {pid}) closed stdout before printing `ready: ` (exit: {status:?})\n\
                     ----- {} -----\n{}",
                    proc.stderr_log.display(),
                    tail(&proc.stderr_log, LOG_TAIL_LINES)
                )
            }
            Err(_) => {
                proc.kill();
                bail!(
                    "{name} (pid {pid}) printed no `ready: ` line within {READY_TIMEOUT:?}\n\
                     ----- {} -----\n{}",
                    proc.stderr_log.display(),
                    tail(&proc.stderr_log, LOG_TAIL_LINES)
                )
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The stdout lines printed so far (complete once the process exited).
    pub fn stdout_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.stdout_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with our own child's pid; the child is not reaped
        // yet (we hold it), so the pid cannot have been reused.
        unsafe {
            libc::kill(self.pid as libc::pid_t, sig);
        }
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.child.as_mut()?;
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    if let Some(r) = self.stdout_reader.take() {
                        let _ = r.join();
                    }
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                _ => return None,
            }
        }
    }

    /// SIGTERM, wait up to [`STOP_TIMEOUT`], then SIGKILL. Errors unless the
    /// process exited by itself with status 0.
    pub async fn stop(&mut self) -> Result<()> {
        let Some(_) = self.child else { return Ok(()) };
        self.signal(libc::SIGTERM);
        match self.wait_exit(STOP_TIMEOUT).await {
            Some(status) if status.success() => {
                eprintln!("[{}] pid {} stopped cleanly", self.name, self.pid);
                Ok(())
            }
            Some(status) => bail!(
                "{} (pid {}) exited with {status} after SIGTERM (expected 0)\n----- {} -----\n{}",
                self.name,
                self.pid,
                self.stderr_log.display(),
                tail(&self.stderr_log, LOG_TAIL_LINES)
            ),
            None => {
                self.kill();
                bail!(
                    "{} (pid {}) did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed",
                    self.name,
                    self.pid
                )
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(r) = self.stdout_reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            eprintln!("[{}] killing pid {} (dropped)", self.name, self.pid);
            self.kill();
        }
    }
}

/// The "node id" of the coordinator in [`Slicedb::multiprocess_with`].
pub const COORDINATOR: u32 = u32::MAX;

/// A free TCP port on loopback; only the multi-process cluster needs fixed
/// ports in its config file. Racy by nature, so it keeps out of the way of
/// the likely racers: ports come from below the kernel's ephemeral range
/// (32768 and up by default), where outgoing connections never take them,
/// and each test process starts at its own place in that range.
/// The arguments that start node `id` of the cluster file `config`.
fn node_args(config: &Path, id: usize) -> Vec<String> {
    vec![
        "node".to_string(),
        "--config".to_string(),
        config.display().to_string(),
        "--id".to_string(),
        id.to_string(),
    ]
}

pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id().wrapping_mul(7919)) % SPAN;
    for _ in 0..SPAN {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + k) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

// ---------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------

/// A running cluster: one `slicedb local` process, or nodes + coordinator.
pub struct Slicedb {
    /// Started in order; the last one serves SQL. Stopped in reverse order.
    procs: Vec<Proc>,
    url: String,
    local: bool,
    /// Multi-process only: the cluster file and the node addresses.
    pub config: Option<PathBuf>,
    pub node_addrs: Vec<String>,
}

fn parse_ready_url(line: &str) -> Result<String> {
    let url = line
        .strip_prefix("ready: ")
        .ok_or_else(|| anyhow!("not a ready line: {line:?}"))?
        .trim()
        .to_string();
    ensure!(
        url.starts_with("postgres://slicedb@") && url.ends_with("/slicedb"),
        "ready line should carry postgres://slicedb@HOST:PORT/slicedb, got {line:?}"
    );
    Ok(url)
}

impl Slicedb {
    /// `slicedb local --nodes N --data DIR --listen 127.0.0.1:0`.
    pub async fn local(env: &TestEnv, nodes: u32, data_dir: &Path) -> Result<Slicedb> {
        Self::local_with(env, nodes, data_dir, &[]).await
    }

    /// [`Slicedb::local`] with extra environment variables (failpoints).
    pub async fn local_with(
        env: &TestEnv,
        nodes: u32,
        data_dir: &Path,
        vars: &[(&str, &str)],
    ) -> Result<Slicedb> {
        Self::local_args(env, nodes, data_dir, vars, &[]).await
    }

    /// [`Slicedb::local_with`] with extra arguments (`--spares 1`).
    pub async fn local_args(
        env: &TestEnv,
        nodes: u32,
        data_dir: &Path,
        vars: &[(&str, &str)],
        extra: &[&str],
    ) -> Result<Slicedb> {
        let mut args = vec![
            "local".to_string(),
            "--nodes".to_string(),
            nodes.to_string(),
            "--data".to_string(),
            data_dir.display().to_string(),
            "--listen".to_string(),
            "127.0.0.1:0".to_string(),
            // Test tables are small: give every join's probe side its
            // runtime filter, so that every test runs through them.
            "--runtime-filter-min-rows".to_string(),
            "0".to_string(),
            // Likewise every join with a small side may run on the nodes.
            "--broadcast-join-min-rows".to_string(),
            "0".to_string(),
        ];
        if !extra.contains(&"--disk-size") {
            // Small images: test data is small, and copies stay cheap.
            args.extend(["--disk-size".to_string(), "512MiB".to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let (proc, line) = Proc::spawn_ready_with(env, "local", &args, vars).await?;
        let url = parse_ready_url(&line)?;
        ensure!(
            !url.ends_with(":0/slicedb"),
            "ready line must carry the real port, not 0: {line}"
        );
        Ok(Slicedb {
            procs: vec![proc],
            url,
            local: true,
            config: None,
            node_addrs: Vec::new(),
        })
    }

    /// `nodes` `slicedb node` processes (one disk each) then `slicedb
    /// coordinator`, from a cluster file written under the test dir.
    pub async fn multiprocess(env: &TestEnv, nodes: u32) -> Result<Slicedb> {
        Self::multiprocess_in(env, nodes, "cluster").await
    }

    /// [`Slicedb::multiprocess`] under `env/<dir>` (several clusters per test).
    pub async fn multiprocess_in(env: &TestEnv, nodes: u32, dir: &str) -> Result<Slicedb> {
        Self::multiprocess_with(env, nodes, dir, &[]).await
    }

    /// [`Slicedb::multiprocess_in`] with environment variables for some
    /// node processes: `(node id, name, value)` (failpoints); node id
    /// [`COORDINATOR`] means the coordinator process.
    pub async fn multiprocess_with(
        env: &TestEnv,
        nodes: u32,
        dir: &str,
        node_vars: &[(u32, &str, &str)],
    ) -> Result<Slicedb> {
        Self::multiprocess_configured(env, nodes, dir, node_vars, "").await
    }

    /// [`Slicedb::multiprocess_with`] with `node_toml` (lines such as
    /// `cache_size = "0"`) added to every node's section of the cluster file.
    pub async fn multiprocess_configured(
        env: &TestEnv,
        nodes: u32,
        dir: &str,
        node_vars: &[(u32, &str, &str)],
        node_toml: &str,
    ) -> Result<Slicedb> {
        Self::multiprocess_full(env, nodes, 0, dir, node_vars, node_toml, "").await
    }

    /// [`Slicedb::multiprocess_configured`] with `spares` spare nodes (ids
    /// after the others) and `coord_toml` lines (such as `regen_delay =
    /// "1s"`) in the coordinator's section.
    pub async fn multiprocess_full(
        env: &TestEnv,
        nodes: u32,
        spares: u32,
        dir: &str,
        node_vars: &[(u32, &str, &str)],
        node_toml: &str,
        coord_toml: &str,
    ) -> Result<Slicedb> {
        let root = env.path().join(dir);
        fs::create_dir_all(&root)?;
        let pg_port = free_port()?;
        // Metrics on ports of their own: the default (port + 1000) could
        // be another test's.
        let metrics = |toml: &str, key: &str| -> Result<String> {
            Ok(if toml.contains(key) {
                String::new()
            } else {
                format!("{key} = \"127.0.0.1:{}\"\n", free_port()?)
            })
        };
        // The coordinator of a multi-process cluster needs rules: loopback
        // trusted unless the test gives its own.
        let hba = if coord_toml.contains("hba = ") {
            ""
        } else {
            "hba = [\"host all all 127.0.0.1/32 trust\"]\n"
        };
        let mut toml = format!(
            "cluster_id = \"test-cluster\"\nslices_per_disk = 4\n\n[coordinator]\n\
             listen = \"127.0.0.1:{pg_port}\"\ndata_dir = \"{}\"\n{hba}{}{coord_toml}",
            root.join("coord").display(),
            metrics(coord_toml, "metrics_listen")?,
        );
        let mut node_addrs = Vec::new();
        for id in 0..nodes + spares {
            let addr = format!("127.0.0.1:{}", free_port()?);
            let spare = if id >= nodes { "spare = true\n" } else { "" };
            // One disk unless `node_toml` says how many.
            let disks = if node_toml.contains("disks = ") {
                ""
            } else {
                "disks = 1\n"
            };
            toml.push_str(&format!(
                "\n[[nodes]]\nid = {id}\naddress = \"{addr}\"\ndata_dir = \"{}\"\n\
                 {disks}disk_size = \"256MiB\"\n{spare}{}{node_toml}",
                root.join(format!("node{id}")).display(),
                metrics(node_toml, "metrics_address")?,
            ));
            node_addrs.push(addr);
        }
        let config = root.join("cluster.toml");
        fs::write(&config, &toml)?;
        eprintln!("cluster file:\n{toml}");
        // The cluster's CA and every process's certificate (certs/ next
        // to the cluster file).
        let certs = std::process::Command::new(BIN)
            .args(["certs", "--config"])
            .arg(&config)
            .output()?;
        ensure!(
            certs.status.success(),
            "slicedb certs failed: {}",
            String::from_utf8_lossy(&certs.stderr)
        );

        let mut procs = Vec::new();
        for (id, addr) in node_addrs.iter().enumerate() {
            let args = node_args(&config, id);
            let vars: Vec<(&str, &str)> = node_vars
                .iter()
                .filter(|v| v.0 == id as u32)
                .map(|v| (v.1, v.2))
                .collect();
            let (proc, line) =
                Proc::spawn_ready_with(env, &format!("node{id}"), &args, &vars).await?;
            let want = format!("ready: node {id} at ");
            ensure!(
                line.starts_with(&want),
                "node {id} ready line should start with {want:?}, got {line:?}"
            );
            ensure!(
                line.trim_end().ends_with(addr.as_str()),
                "node {id} should listen on {addr} from the cluster file, ready line {line:?}"
            );
            procs.push(proc);
        }
        let args = vec![
            "coordinator".to_string(),
            "--config".to_string(),
            config.display().to_string(),
        ];
        let vars: Vec<(&str, &str)> = node_vars
            .iter()
            .filter(|v| v.0 == COORDINATOR)
            .map(|v| (v.1, v.2))
            .collect();
        let (proc, line) = Proc::spawn_ready_with(env, "coordinator", &args, &vars).await?;
        let url = parse_ready_url(&line)?;
        ensure!(
            url.contains(&format!(":{pg_port}/")),
            "coordinator should listen on port {pg_port} from the cluster file: {line}"
        );
        procs.push(proc);
        Ok(Slicedb {
            procs,
            url,
            local: false,
            config: Some(config),
            node_addrs,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pid of the process serving SQL (`local` or `coordinator`).
    pub fn pid(&self) -> u32 {
        self.procs.last().expect("a cluster has processes").pid()
    }

    /// Every pid, in start order.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    /// SIGTERM every process (coordinator first), each must exit 0. For
    /// `local`, also checks that stdout held exactly the one ready line.
    pub async fn stop(mut self) -> Result<()> {
        let mut first_err = None;
        while let Some(mut p) = self.procs.pop() {
            if let Err(e) = p.stop().await {
                first_err.get_or_insert(e);
            } else if self.local {
                let lines = p.stdout_lines();
                if lines.len() != 1 {
                    first_err.get_or_insert(anyhow!(
                        "slicedb local must print exactly one stdout line, printed {lines:?}"
                    ));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub async fn connect(&self) -> Result<Client> {
        connect(&self.url).await
    }

    /// Wait for the SQL-serving process to exit on its own (a failpoint).
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.procs.last_mut()?.wait_exit(limit).await
    }

    /// kill -9 every process.
    pub fn kill(mut self) {
        for p in &mut self.procs {
            p.kill();
        }
    }

    /// kill -9 the process at `index` (start order: nodes, then coordinator).
    pub fn kill_proc(&mut self, index: usize) {
        if let Some(p) = self.procs.get_mut(index) {
            p.kill();
        }
    }

    /// Start node `id` of a multi-process cluster again (after
    /// [`Slicedb::kill_proc`]), with the same cluster file and data dir.
    pub async fn restart_node(&mut self, env: &TestEnv, id: usize) -> Result<()> {
        self.restart_node_with(env, id, &[]).await
    }

    /// [`Slicedb::restart_node`] with environment variables (failpoints).
    pub async fn restart_node_with(
        &mut self,
        env: &TestEnv,
        id: usize,
        vars: &[(&str, &str)],
    ) -> Result<()> {
        let config = self
            .config
            .clone()
            .ok_or_else(|| anyhow!("only a multi-process cluster restarts a node"))?;
        let args = node_args(&config, id);
        let (proc, line) =
            Proc::spawn_ready_with(env, &format!("node{id}-again"), &args, vars).await?;
        ensure!(
            line.starts_with(&format!("ready: node {id} at ")),
            "node {id} restarted: ready line {line:?}"
        );
        self.procs[id].kill();
        self.procs[id] = proc;
        Ok(())
    }

    /// Wait for node `id`'s process to exit on its own (a failpoint).
    pub async fn wait_node_exit(&mut self, id: usize, limit: Duration) -> Option<ExitStatus> {
        self.procs.get_mut(id)?.wait_exit(limit).await
    }

    /// kill -9 the coordinator of a multi-process cluster and start it
    /// again on its data dir; answers once it serves SQL.
    pub async fn restart_coordinator(&mut self, env: &TestEnv) -> Result<()> {
        let config = self
            .config
            .clone()
            .ok_or_else(|| anyhow!("only a multi-process cluster restarts its coordinator"))?;
        let last = self.procs.len() - 1;
        self.procs[last].kill();
        let args = vec![
            "coordinator".to_string(),
            "--config".to_string(),
            config.display().to_string(),
        ];
        let (proc, line) = Proc::spawn_ready_with(env, "coordinator-again", &args, &[]).await?;
        self.url = parse_ready_url(&line)?;
        self.procs[last] = proc;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------

/// Wait until every slice is in sync again (all copies), or fail with what
/// the map says.
pub async fn wait_fully_protected(c: &tokio_postgres::Client, limit: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let left = scalar(
            c,
            "SELECT count(*) FROM slicedb_slices WHERE state <> 'in_sync'",
        )
        .await?;
        if left == "0" {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            let states = query(c, "SELECT slice, state, copies FROM slicedb_slices WHERE state <> 'in_sync' ORDER BY slice").await?;
            let history = query(
                c,
                "SELECT epoch, cause FROM slicedb_map_history ORDER BY epoch",
            )
            .await?;
            bail!("not fully protected after {limit:?}: {states:?}; history {history:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Both copies of every slice agree (`slicedb_verify`), or fail naming those
/// that do not.
pub async fn ensure_verified(c: &Client) -> Result<()> {
    let bad = query(
        c,
        "SELECT table_name, slice, status FROM slicedb_verify WHERE status <> 'in_sync'",
    )
    .await?;
    ensure!(bad.is_empty(), "every slice verifies in sync: {bad:?}");
    Ok(())
}

/// Rows of a simple query, as text; `None` is SQL NULL.
pub type Rows = Vec<Vec<Option<String>>>;

/// Connect with tokio-postgres and drive the connection on a task.
pub async fn connect(url: &str) -> Result<Client> {
    Ok(connect_with_handle(url).await?.0)
}

/// Like [`connect`], also returning the connection task (abort it to drop
/// the socket abruptly).
pub async fn connect_with_handle(url: &str) -> Result<(Client, tokio::task::JoinHandle<()>)> {
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(30), tokio_postgres::connect(url, NoTls))
            .await
            .with_context(|| format!("connecting to {url}: timed out"))?
            .map_err(|e| anyhow!("connecting to {url}: {}", describe(&e)))?;
    let handle = tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("connection task ended: {e}");
        }
    });
    Ok((client, handle))
}

/// An error with its SQLSTATE and server message, when there is one.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} {}: {}{}",
            db.severity(),
            db.code().code(),
            db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
        ),
        None => format!("{e} ({e:?})"),
    }
}

/// The SQLSTATE of a server error, if the error came from the server.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_string())
}

/// Run `sql` with the simple query protocol; rows as text.
pub async fn query(client: &Client, sql: &str) -> Result<Rows> {
    let msgs = tokio::time::timeout(QUERY_TIMEOUT, client.simple_query(sql))
        .await
        .with_context(|| format!("query timed out after {QUERY_TIMEOUT:?}: {sql}"))?
        .map_err(|e| anyhow!("query failed: {sql}\n  {}", describe(&e)))?;
    let mut rows = Vec::new();
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
        }
    }
    Ok(rows)
}

/// Run a statement, ignoring any rows.
pub async fn exec(client: &Client, sql: &str) -> Result<()> {
    query(client, sql).await.map(|_| ())
}

/// The single value of a one-row, one-column query (NULL is an error).
pub async fn scalar(client: &Client, sql: &str) -> Result<String> {
    let rows = query(client, sql).await?;
    ensure!(
        rows.len() == 1 && rows[0].len() == 1,
        "expected one value from {sql}, got {rows:?}"
    );
    rows[0][0]
        .clone()
        .ok_or_else(|| anyhow!("{sql} returned NULL"))
}

/// `sql` must fail with one of `codes`; returns the server's message.
pub async fn expect_error(client: &Client, sql: &str, codes: &[&str]) -> Result<String> {
    let res = tokio::time::timeout(QUERY_TIMEOUT, client.simple_query(sql))
        .await
        .with_context(|| format!("timed out: {sql}"))?;
    match res {
        Ok(_) => bail!("expected {sql:?} to fail with SQLSTATE {codes:?}, but it succeeded"),
        Err(e) => {
            let code = sqlstate(&e);
            ensure!(
                code.as_deref().is_some_and(|c| codes.contains(&c)),
                "{sql:?} should fail with SQLSTATE {codes:?}, got {}",
                describe(&e)
            );
            Ok(describe(&e))
        }
    }
}

/// The connection still works: `SELECT 1` answers 1.
pub async fn assert_alive(client: &Client, after: &str) -> Result<()> {
    let v = scalar(client, "SELECT 1")
        .await
        .with_context(|| format!("connection unusable after {after}"))?;
    ensure!(v == "1", "SELECT 1 returned {v:?} after {after}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Comparing result sets
// ---------------------------------------------------------------------------

/// Compare two result sets cell by cell: integers exactly, other numbers
/// with relative tolerance `rel_tol`, everything else as text.
pub fn assert_rows_match(what: &str, got: &Rows, want: &Rows, rel_tol: f64) -> Result<()> {
    ensure!(
        got.len() == want.len(),
        "{what}: {} rows from slicedb, {} expected\n got (first 10): {:?}\nwant (first 10): {:?}",
        got.len(),
        want.len(),
        &got[..got.len().min(10)],
        &want[..want.len().min(10)]
    );
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        ensure!(
            g.len() == w.len(),
            "{what}: row {i} has {} columns, expected {}: {g:?} vs {w:?}",
            g.len(),
            w.len()
        );
        for (j, (a, b)) in g.iter().zip(w).enumerate() {
            ensure!(
                cell_matches(a.as_deref(), b.as_deref(), rel_tol),
                "{what}: row {i} column {j}: slicedb {a:?}, expected {b:?} (rel tol {rel_tol})\n got row: {g:?}\nwant row: {w:?}"
            );
        }
    }
    Ok(())
}

fn cell_matches(a: Option<&str>, b: Option<&str>, rel_tol: f64) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            if a == b {
                return true;
            }
            if let (Ok(x), Ok(y)) = (a.parse::<i128>(), b.parse::<i128>()) {
                return x == y;
            }
            match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(x), Ok(y)) => (x - y).abs() <= rel_tol * x.abs().max(y.abs()).max(1.0),
                _ => false,
            }
        }
        _ => false,
    }
}
