//! The Prometheus endpoints (docs/metrics.md): the coordinator's and every
//! node's answer `GET /metrics` over real HTTP with text that a strict
//! parser accepts, and their counters move by what the statements did; the
//! slice-state gauges follow a node's failure and its healing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use futures::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{self, exec, query, scalar, wait_fully_protected, Slicedb, TestEnv};

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition.
#[derive(Debug)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The sum of the samples of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// `sum`, but the family must exist.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        ensure!(
            self.samples.iter().any(|s| s.name == name),
            "no samples of {name}"
        );
        Ok(self.sum(name, labels))
    }
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|x| x.is_ascii_alphabetic() || x == '_' || x == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

fn parse_value(v: &str) -> Result<f64> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|_| anyhow!("bad value {v:?}")),
    }
}

/// `{k="v",...}` at the start of `s`: the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = s.strip_prefix('{') else {
        return Ok((labels, s));
    };
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest
            .find('=')
            .ok_or_else(|| anyhow!("label without = in {s:?}"))?;
        let key = &rest[..eq];
        ensure!(
            valid_name(key) && !key.contains(':'),
            "bad label name {key:?}"
        );
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| anyhow!("unquoted label value in {s:?}"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => bail!("unterminated label value in {s:?}"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => bail!("bad escape {other:?} in {s:?}"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        ensure!(
            labels.insert(key.to_string(), value).is_none(),
            "label {key} twice in {s:?}"
        );
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else {
            ensure!(rest.starts_with('}'), "expected , or }} in {s:?}");
        }
    }
}

/// Parse the text format strictly: every sample `name{labels} value` of a
/// family whose `# TYPE` came before it (once), no sample twice, counters
/// named `_total`, histograms with `le` buckets ascending, monotone and
/// ending at `+Inf` = `_count`, and a `_sum`.
fn parse(text: &str) -> Result<Scrape> {
    ensure!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut samples = Vec::new();
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (what, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            ensure!(valid_name(name), "bad family name in {line:?}");
            match what {
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    ensure!(
                        ["counter", "gauge", "histogram"].contains(&t),
                        "bad type in {line:?}"
                    );
                    ensure!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "# TYPE {name} twice"
                    );
                }
                "HELP" => ensure!(helps.insert(name.to_string()), "# HELP {name} twice"),
                _ => bail!("unknown comment {line:?}"),
            }
            continue;
        }
        ensure!(!line.is_empty(), "empty line in the exposition");
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| anyhow!("no value in {line:?}"))?;
        let name = &line[..name_end];
        ensure!(valid_name(name), "bad metric name in {line:?}");
        let (labels, rest) = parse_labels(&line[name_end..])?;
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| anyhow!("no space before the value in {line:?}"))?;
        ensure!(!value.contains(' '), "extra fields in {line:?}");
        let value = parse_value(value)?;
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        let ty = types
            .get(family)
            .ok_or_else(|| anyhow!("sample {name} before (or without) its # TYPE"))?;
        if ty == "counter" {
            ensure!(
                name.ends_with("_total"),
                "counter {name} is not named _total"
            );
            ensure!(value >= 0.0, "counter {name} is negative");
        }
        if ty == "histogram" {
            ensure!(family != name, "histogram {name} sample without a suffix");
        }
        ensure!(
            seen.insert((name.to_string(), labels.clone())),
            "{name}{labels:?} twice"
        );
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for (family, ty) in &types {
        if ty != "histogram" {
            continue;
        }
        // Per label set (without le): the buckets in order.
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let mut labels = s.labels.clone();
            let le = labels
                .remove("le")
                .ok_or_else(|| anyhow!("{family}_bucket without le"))?;
            series
                .entry(labels)
                .or_default()
                .push((parse_value(&le)?, s.value));
        }
        ensure!(!series.is_empty(), "histogram {family} has no buckets");
        for (labels, buckets) in series {
            ensure!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{family}{labels:?}: buckets must rise in le and count: {buckets:?}"
            );
            let last = buckets.last().expect("not empty");
            ensure!(last.0.is_infinite(), "{family}{labels:?}: no +Inf bucket");
            let find = |suffix: &str| {
                samples
                    .iter()
                    .find(|s| s.name == format!("{family}{suffix}") && s.labels == labels)
                    .map(|s| s.value)
            };
            let count = find("_count").ok_or_else(|| anyhow!("{family}{labels:?}: no _count"))?;
            ensure!(find("_sum").is_some(), "{family}{labels:?}: no _sum");
            ensure!(
                last.1 == count,
                "{family}{labels:?}: +Inf bucket {} != _count {count}",
                last.1
            );
        }
    }
    Ok(Scrape { types, samples })
}

/// `GET /metrics` over HTTP/1.1: status 200, the 0.0.4 content type, a
/// body of Content-Length bytes, parsed.
async fn scrape(addr: &str) -> Result<Scrape> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .with_context(|| format!("connecting to {addr}: timed out"))??;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .with_context(|| format!("reading from {addr}: timed out"))??;
    let text = String::from_utf8(raw).context("the answer is UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of the head in {text:?}"))?;
    ensure!(head.starts_with("HTTP/1.1 200 OK\r\n"), "status: {head}");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_string)
    };
    ensure!(
        header("Content-Type").is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "content type: {head}"
    );
    ensure!(
        header("Content-Length").and_then(|l| l.parse::<usize>().ok()) == Some(body.len()),
        "content length of a {}-byte body: {head}",
        body.len()
    );
    parse(body).with_context(|| format!("parsing the scrape of {addr}:\n{body}"))
}

/// The address the log line "`what` metrics at http://ADDR/metrics" names.
fn logged_address(env: &TestEnv, what: &str) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let needle = format!("{what} metrics at http://");
    for entry in std::fs::read_dir(env.path().join("logs"))? {
        let path = entry?.path();
        if !path.to_string_lossy().ends_with(".stderr.log") {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            if let Some(i) = line.find(&needle) {
                let rest = &line[i + needle.len()..];
                let end = rest.find('/').unwrap_or(rest.len());
                found.push(rest[..end].to_string());
            }
        }
    }
    Ok(found)
}

/// The nodes' endpoints, as the coordinator's lists them.
fn node_endpoints(coord: &Scrape) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for s in coord
        .samples
        .iter()
        .filter(|s| s.name == "slicedb_node_metrics_endpoint")
    {
        let node = s.labels.get("node").cloned().unwrap_or_default();
        let addr = s.labels.get("address").cloned().unwrap_or_default();
        addr.parse::<SocketAddr>()
            .with_context(|| format!("node {node}'s endpoint {addr:?}"))?;
        out.insert(node, addr);
    }
    Ok(out)
}

/// The difference of one metric between two scrapes of several endpoints.
fn moved(before: &[Scrape], after: &[Scrape], name: &str, labels: &[(&str, &str)]) -> f64 {
    let total = |s: &[Scrape]| s.iter().map(|x| x.sum(name, labels)).sum::<f64>();
    total(after) - total(before)
}

async fn scrape_all(addrs: &[String]) -> Result<Vec<Scrape>> {
    let mut out = Vec::new();
    for a in addrs {
        out.push(scrape(a).await?);
    }
    Ok(out)
}

#[test]
fn every_endpoint_parses_and_its_counters_move_by_what_the_statements_did() {
    harness::run("metrics_local", |env| async move {
        let data = env.path().join("data");
        let db = Slicedb::local(&env, 2, &data).await?;
        let coord_addr = logged_address(&env, "coordinator")?;
        ensure!(
            coord_addr.len() == 1,
            "one coordinator endpoint logged: {coord_addr:?}"
        );
        let coord_addr = coord_addr[0].clone();
        let first = scrape(&coord_addr).await?;
        let nodes = node_endpoints(&first)?;
        ensure!(
            nodes.keys().cloned().collect::<Vec<_>>() == ["0", "1"],
            "the coordinator lists both nodes' endpoints: {nodes:?}"
        );
        let mut logged = logged_address(&env, "node")?;
        logged.sort();
        let mut listed: Vec<String> = nodes.values().cloned().collect();
        listed.sort();
        ensure!(
            logged == listed,
            "the log names the endpoints the coordinator lists"
        );
        let node_addrs: Vec<String> = nodes.values().cloned().collect();
        for (n, s) in scrape_all(&node_addrs).await?.iter().enumerate() {
            ensure!(s.get("slicedb_node_info", &[])? == 1.0, "node info is 1");
            for seg in ["primary", "mirror", "temp"] {
                let total = s.get("slicedb_node_segment_bytes", &[("segment", seg)])?;
                let used = s.get("slicedb_node_segment_used_bytes", &[("segment", seg)])?;
                ensure!(
                    total > 0.0 && used <= total,
                    "node {n} {seg}: used {used} of {total}"
                );
            }
            ensure!(
                s.types
                    .get("slicedb_node_cache_hits_total")
                    .map(String::as_str)
                    == Some("counter")
            );
        }
        ensure!(
            first.get("slicedb_slices", &[("state", "in_sync")])? == 8.0
                && first.get("slicedb_slices_to_heal", &[])? == 0.0,
            "8 slices in sync"
        );
        ensure!(
            first.get("slicedb_nodes", &[("state", "up")])? == 2.0,
            "two nodes up"
        );

        let c = db.connect().await?;
        exec(&c, "CREATE TABLE m (k bigint, v text) DISTRIBUTE ON (k)").await?;
        exec(
            &c,
            "INSERT INTO m SELECT i, 'x' FROM generate_series(1, 10) AS g(i)",
        )
        .await?;
        let c0 = scrape(&coord_addr).await?;
        let n0 = scrape_all(&node_addrs).await?;
        ensure!(
            c0.get("slicedb_sessions", &[])? >= 1.0,
            "our session is counted"
        );

        let rows = query(&c, "SELECT k FROM m").await?;
        ensure!(rows.len() == 10, "10 rows: {rows:?}");
        exec(
            &c,
            "INSERT INTO m SELECT i, 'y' FROM generate_series(11, 15) AS g(i)",
        )
        .await?;
        harness::expect_error(&c, "SELECT * FROM no_such_table", &["42P01"]).await?;
        let lines = "100\ta\n101\tb\n102\tc\n";
        let sink = c
            .copy_in::<_, Bytes>("COPY m FROM STDIN")
            .await
            .map_err(|e| anyhow!("COPY: {}", harness::describe(&e)))?;
        futures::pin_mut!(sink);
        sink.send(Bytes::from(lines)).await?;
        let copied = sink.as_mut().finish().await?;
        ensure!(copied == 3, "COPY says 3 rows, said {copied}");

        let c1 = scrape(&coord_addr).await?;
        let n1 = scrape_all(&node_addrs).await?;
        let st = "slicedb_statements_total";
        for (kind, outcome, want) in [
            ("select", "ok", 1.0),
            ("select", "error", 1.0),
            ("insert", "ok", 1.0),
            ("insert", "error", 0.0),
            ("copy", "ok", 1.0),
            ("ddl", "ok", 0.0),
        ] {
            let got = c1.get(st, &[("kind", kind), ("outcome", outcome)])?
                - c0.get(st, &[("kind", kind), ("outcome", outcome)])?;
            ensure!(
                got == want,
                "{kind} {outcome}: moved by {got}, expected {want}"
            );
        }
        let lat = |s: &Scrape, kind| {
            s.get(
                "slicedb_statement_duration_seconds_count",
                &[("kind", kind)],
            )
        };
        ensure!(
            lat(&c1, "select")? - lat(&c0, "select")? == 2.0,
            "both SELECTs (the failed one too) have a latency"
        );
        ensure!(
            lat(&c1, "copy")? - lat(&c0, "copy")? == 1.0,
            "the COPY has a latency"
        );
        let d = |name, labels: &[(&str, &str)]| -> Result<f64> {
            Ok(c1.get(name, labels)? - c0.get(name, labels)?)
        };
        ensure!(
            d("slicedb_rows_returned_total", &[])? == 10.0,
            "10 rows returned"
        );
        ensure!(
            d("slicedb_rows_written_total", &[("kind", "insert")])? == 5.0,
            "5 rows inserted"
        );
        ensure!(
            d("slicedb_rows_written_total", &[("kind", "copy")])? == 3.0,
            "3 rows copied in"
        );
        ensure!(
            d("slicedb_copy_bytes_total", &[("direction", "from")])? == lines.len() as f64,
            "COPY's bytes"
        );

        // The nodes: the SELECT read the 10 rows once, from the primaries;
        // the INSERT and the COPY wrote 8 rows to the primaries.
        let scanned = moved(&n0, &n1, "slicedb_node_scan_rows_total", &[]);
        ensure!(scanned == 10.0, "nodes scanned {scanned} rows, expected 10");
        let blocks = moved(&n0, &n1, "slicedb_node_scan_blocks_total", &[]);
        let lookups = moved(&n0, &n1, "slicedb_node_cache_hits_total", &[])
            + moved(&n0, &n1, "slicedb_node_cache_misses_total", &[]);
        ensure!(
            blocks > 0.0 && lookups == blocks,
            "every block read asked the cache: {blocks} blocks, {lookups} lookups"
        );
        let written = moved(
            &n0,
            &n1,
            "slicedb_node_written_rows_total",
            &[("segment", "primary")],
        );
        ensure!(written == 8.0, "primaries wrote {written} rows, expected 8");
        ensure!(
            moved(
                &n0,
                &n1,
                "slicedb_node_written_bytes_total",
                &[("segment", "primary")]
            ) > 0.0,
            "bytes written"
        );
        // The mirrors take the same rows (applied at commit or soon after).
        let t0 = Instant::now();
        loop {
            let n2 = scrape_all(&node_addrs).await?;
            let m = moved(
                &n0,
                &n2,
                "slicedb_node_written_rows_total",
                &[("segment", "mirror")],
            );
            if m == 8.0 {
                break;
            }
            ensure!(
                m < 8.0 && t0.elapsed() < Duration::from_secs(30),
                "mirrors wrote {m} rows, expected 8"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The same SELECT again: its blocks come from the cache now.
        let rows = query(&c, "SELECT k FROM m").await?;
        ensure!(rows.len() == 18, "18 rows: {}", rows.len());
        let n3 = scrape_all(&node_addrs).await?;
        ensure!(
            moved(&n1, &n3, "slicedb_node_cache_hits_total", &[]) > 0.0,
            "a second read of the same blocks hits the cache"
        );
        ensure!(
            n3.iter()
                .map(|s| s.sum("slicedb_node_checksum_failures_total", &[]))
                .sum::<f64>()
                == 0.0,
            "no checksum failures"
        );
        drop(c);
        db.stop().await
    });
}

/// The coordinator's metrics address of a multi-process cluster (its file).
fn configured_metrics(db: &Slicedb) -> Result<String> {
    let path = db
        .config
        .as_ref()
        .ok_or_else(|| anyhow!("no cluster file"))?;
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("metrics_listen = \""))
        .map(|l| l.trim_end_matches('"').to_string())
        .ok_or_else(|| anyhow!("no metrics_listen in {text}"))
}

/// Scrape the coordinator until `ok` holds of it (or fail after 60 s).
async fn wait_scrape(addr: &str, what: &str, ok: impl Fn(&Scrape) -> bool) -> Result<Scrape> {
    let t0 = Instant::now();
    loop {
        let s = scrape(addr).await?;
        if ok(&s) {
            return Ok(s);
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let states: Vec<_> = s
                .samples
                .iter()
                .filter(|x| x.name == "slicedb_slices")
                .collect();
            bail!("{what}: not seen within 60 s; slices {states:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn slice_state_gauges_follow_a_node_failure_and_its_healing() {
    harness::run("metrics_heal", |env| async move {
        let mut db = Slicedb::multiprocess(&env, 3).await?;
        let coord = configured_metrics(&db)?;
        let c = db.connect().await?;
        exec(&c, "CREATE TABLE h (k bigint, v bigint) DISTRIBUTE ON (k)").await?;
        exec(
            &c,
            "INSERT INTO h SELECT i, i FROM generate_series(1, 20000) AS g(i)",
        )
        .await?;
        let total: f64 = scalar(&c, "SELECT count(*) FROM slicedb_slices")
            .await?
            .parse()?;
        let s = scrape(&coord).await?;
        ensure!(
            s.get("slicedb_slices", &[("state", "in_sync")])? == total
                && s.get("slicedb_slices_to_heal", &[])? == 0.0,
            "all {total} slices in sync before the fault"
        );
        let nodes = node_endpoints(&s)?;
        ensure!(nodes.len() == 3, "three node endpoints: {nodes:?}");

        db.kill_proc(0);
        let hurt = wait_scrape(&coord, "slices degraded after the kill", |s| {
            s.sum("slicedb_slices_to_heal", &[]) > 0.0
                && s.sum("slicedb_node_up", &[("node", "0")]) == 0.0
        })
        .await?;
        let unhealthy: f64 = [
            "degraded",
            "failed_over",
            "unprotected",
            "rebuilding",
            "unavailable",
        ]
        .iter()
        .map(|st| hurt.sum("slicedb_slices", &[("state", st)]))
        .sum();
        let to_heal = hurt.get("slicedb_slices_to_heal", &[])?;
        let view: f64 = scalar(
            &c,
            "SELECT count(*) FROM slicedb_slices WHERE state <> 'in_sync'",
        )
        .await?
        .parse()?;
        ensure!(
            unhealthy == to_heal && to_heal > 0.0 && hurt.sum("slicedb_slices", &[]) == total,
            "the state gauges add up: {unhealthy} unhealthy, {to_heal} to heal of {total}"
        );
        ensure!(
            hurt.get("slicedb_nodes", &[("state", "down")])? == 1.0,
            "one node down"
        );
        eprintln!("[metrics_heal] after the kill: {to_heal} slices to heal (the view says {view})");
        // Writes node 0 misses: its copies are resynced with them.
        exec(
            &c,
            "INSERT INTO h SELECT i, i FROM generate_series(20001, 30000) AS g(i)",
        )
        .await?;
        db.restart_node(&env, 0).await?;
        wait_fully_protected(&c, Duration::from_secs(90)).await?;
        let healed = wait_scrape(&coord, "healed", |s| {
            s.sum("slicedb_slices_to_heal", &[]) == 0.0
        })
        .await?;
        ensure!(
            healed.get("slicedb_slices", &[("state", "in_sync")])? == total
                && healed.get("slicedb_nodes", &[("state", "up")])? == 3.0,
            "every slice in sync and every node up after healing"
        );
        ensure!(
            healed.get("slicedb_resync_copies", &[("phase", "done")])? > 0.0
                && healed.get("slicedb_resync_copies", &[("phase", "copying")])? == 0.0
                && healed.get("slicedb_resync_bytes_copied", &[])? > 0.0,
            "the round is done and moved bytes"
        );
        let n0 = scrape(&nodes["0"]).await?;
        ensure!(
            n0.get("slicedb_node_copy_bytes_total", &[])? > 0.0
                && n0.get("slicedb_node_copies_finished_total", &[("outcome", "ok")])? > 0.0
                && n0.get("slicedb_node_copies_in_progress", &[])? == 0.0,
            "node 0 pulled what it missed"
        );
        drop(c);
        db.stop().await
    });
}

#[test]
fn the_strict_parser_refuses_what_prometheus_would() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
    assert!(parse(ok).is_ok());
    for bad in [
        "a_total 1\n",                                    // no TYPE
        "# TYPE a_total counter\na_total{x=\"1} 2\n",     // unterminated
        "# TYPE a_total counter\na_total 1\na_total 2\n", // twice
        "# TYPE a counter\na 1\n",                        // counter without _total
        "# TYPE a_total counter\na_total 1",              // no final newline
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 0\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0\nh_count 3\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 0\nh_count 1\n", // no +Inf
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}
