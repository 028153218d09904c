//! End to end over the PostgreSQL wire: 100 000 rows loaded with COPY into a
//! 4-node `slicedb local`, answers compared with DataFusion over the same
//! rows in memory, data spread over all 16 slices, and the same answers after
//! a SIGTERM and restart on the same data dir.

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use datafusion::prelude::SessionContext;
use futures::{SinkExt, TryStreamExt};
use tokio_postgres::Client;

use crate::data::{self, Row};
use crate::harness::{self, assert_rows_match, exec, expect_error, query, scalar, Slicedb};

const ROWS: usize = 100_000;
/// t2 = these columns of these rows of t, distributed on k like t.
const T2_COLUMNS: &str = "k, s, n";
const T2_FILTER: &str = "g % 3 = 0";
const NODES: u32 = 4;
const SLICES: usize = 16;

/// (name, SQL run on both sides, relative tolerance)
const QUERIES: &[(&str, &str, f64)] = &[
    ("count", "SELECT count(*) FROM t", 0.0),
    (
        "sums and ranges",
        "SELECT sum(k), sum(g), min(d), max(d), count(s), count(v) FROM t",
        0.0,
    ),
    (
        "group by g",
        "SELECT g, count(*), sum(k) FROM t GROUP BY g ORDER BY g",
        0.0,
    ),
    (
        "join with dim",
        "SELECT dim.name, count(*), sum(t.k), min(t.g), max(t.g) \
         FROM t JOIN dim ON t.g = dim.g GROUP BY dim.name ORDER BY dim.name",
        0.0,
    ),
    // Joins with the small dim as build side run on the nodes, dim's rows
    // sent whole (broadcast joins): probe-preserving outer, semi, anti and
    // null-aware anti joins, one under a co-located join and a final
    // aggregate; a join preserving dim's rows stays at the coordinator.
    (
        "broadcast join, filtered build side",
        "SELECT dim.name, count(*), sum(t.k), sum(t.n) FROM t JOIN dim ON t.g = dim.g \
         WHERE dim.name < 'name 30' AND t.s LIKE 'a%' GROUP BY dim.name ORDER BY dim.name",
        1e-9,
    ),
    (
        "broadcast left join keeping t",
        "SELECT count(*), count(dim.name), sum(t.k) FROM t LEFT JOIN dim \
         ON t.g = dim.g AND dim.name < 'name 20'",
        0.0,
    ),
    (
        "dim left join t keeps dim's rows once",
        "SELECT dim.g, dim.name, count(t.k), sum(t.k) FROM dim LEFT JOIN t \
         ON t.g = dim.g AND t.k > 0 GROUP BY dim.g, dim.name ORDER BY dim.g",
        0.0,
    ),
    (
        "broadcast semi and anti joins",
        "SELECT (SELECT count(*) FROM t WHERE EXISTS \
         (SELECT 1 FROM dim WHERE dim.g = t.g AND dim.name < 'name 20')) AS semi, \
         (SELECT count(*) FROM t WHERE NOT EXISTS \
         (SELECT 1 FROM dim WHERE dim.g = t.g AND dim.name < 'name 20')) AS anti, \
         (SELECT count(*) FROM t WHERE t.g NOT IN \
         (SELECT g FROM dim WHERE name < 'name 20')) AS not_in",
        0.0,
    ),
    (
        "broadcast join under a co-located join, grouped by the key",
        "SELECT t.k, dim.name, t2.s, t2.n FROM t JOIN dim ON t.g = dim.g \
         JOIN t2 ON t.k = t2.k WHERE dim.name < 'name 12' ORDER BY t.k LIMIT 40",
        1e-9,
    ),
    (
        "co-located semi and anti joins over a broadcast join",
        "SELECT dim.name, count(*), sum(t2.n) FROM t JOIN t2 ON t.k = t2.k JOIN dim ON t.g = dim.g \
         WHERE dim.name < 'name 20' AND NOT EXISTS (SELECT 1 FROM t x WHERE x.k = t.k AND x.g <> t.g) \
         AND EXISTS (SELECT 1 FROM t2 y WHERE y.k = t.k AND y.n <> t.n) \
         GROUP BY dim.name ORDER BY dim.name",
        1e-9,
    ),
    (
        "broadcast join grouped by the distribution key",
        "SELECT t.k, count(*), max(dim.name) FROM t JOIN dim ON t.g = dim.g \
         WHERE dim.name > 'name 30' GROUP BY t.k HAVING count(*) > 0 ORDER BY t.k DESC LIMIT 30",
        0.0,
    ),
    (
        "range filter on k",
        "SELECT count(*), sum(k), min(k), max(k), sum(g) FROM t \
         WHERE k >= -250000000000 AND k < 400000000000",
        0.0,
    ),
    (
        "avg(v)",
        "SELECT avg(v), sum(v), min(v), max(v) FROM t",
        1e-9,
    ),
    (
        "numeric",
        "SELECT sum(n), avg(n), min(n), max(n) FROM t",
        1e-6,
    ),
    (
        "filter on text and date",
        "SELECT count(*), sum(g) FROM t WHERE s LIKE 'alpha%' AND d >= DATE '2015-01-01'",
        0.0,
    ),
    (
        "lowest rows by k",
        "SELECT k, g, v, s, d, n FROM t ORDER BY k LIMIT 50",
        1e-12,
    ),
    (
        "highest rows by k",
        "SELECT k, g, v, s, d, n FROM t ORDER BY k DESC LIMIT 50",
        1e-12,
    ),
    (
        "nulls",
        "SELECT count(*) FROM t WHERE v IS NULL OR s IS NULL",
        0.0,
    ),
    // Partial aggregates the nodes run (fragments): expressions, CASE,
    // functions, DISTINCT, a grouping expression, a filter on a computed
    // value.
    (
        "aggregates of expressions on the nodes",
        "SELECT g % 7, count(DISTINCT s), sum(k * 2 + g), avg(n * 2), max(upper(s)), \
         sum(CASE WHEN v > 0 THEN 1 ELSE 0 END), min(extract(year FROM d)), count(v) \
         FROM t WHERE length(s) > 3 OR g < 10 GROUP BY g % 7 ORDER BY 1",
        1e-9,
    ),
    // Joins of t and t2 on their distribution key run on the nodes, slice
    // by slice (co-located), partial aggregates on top.
    (
        "co-located inner join",
        "SELECT count(*), sum(t.g), sum(t2.n), min(t2.s), max(t.d) FROM t JOIN t2 ON t.k = t2.k \
         WHERE t.g < 700",
        1e-9,
    ),
    (
        "co-located left join, grouped",
        "SELECT t.g % 5, count(*), count(t2.k), sum(t2.n) FROM t LEFT JOIN t2 ON t.k = t2.k \
         GROUP BY t.g % 5 ORDER BY 1",
        1e-9,
    ),
    (
        "co-located semi join",
        "SELECT count(*), sum(g) FROM t WHERE EXISTS (SELECT 1 FROM t2 WHERE t2.k = t.k AND t2.n > 0)",
        0.0,
    ),
    (
        "co-located anti join",
        "SELECT count(*), sum(g) FROM t WHERE NOT EXISTS (SELECT 1 FROM t2 WHERE t2.k = t.k)",
        0.0,
    ),
    // Grouped by the distribution key: finished on the nodes, HAVING there.
    (
        "group by the distribution key, having",
        "SELECT k, count(*), sum(n), max(s) FROM t2 GROUP BY k HAVING sum(n) > 100 \
         ORDER BY k LIMIT 30",
        1e-9,
    ),
    (
        "join with an aggregate grouped by the distribution key",
        "SELECT count(*), sum(g) FROM t WHERE k IN (SELECT k FROM t2 GROUP BY k HAVING sum(n) > 100)",
        0.0,
    ),
    // Scalar subqueries in the SELECT list (datafusion-postgres used to turn
    // the first into NULL and add LIMIT 1 to the second).
    (
        "scalar subqueries in the select list",
        "SELECT (SELECT count(*) FROM t WHERE EXISTS (SELECT 1 FROM t2 WHERE t2.k = t.k)) AS semi, \
         (SELECT max(k) FROM t2) AS top",
        0.0,
    ),
    // A co-located pair (t and t2 on k) that the FROM list does not put
    // next to each other: made adjacent, it joins on the nodes.
    (
        "co-located pair apart in the FROM list",
        "SELECT dim.name, count(*), sum(t2.n) FROM dim JOIN t ON dim.g = t.g \
         JOIN t2 ON t.k = t2.k WHERE dim.name < 'name 50' GROUP BY dim.name ORDER BY 1",
        1e-9,
    ),
    // A semi join over joins that multiply rows moves below them.
    (
        "semi join below inner joins",
        "SELECT count(*), sum(t2.n), max(dim.name) FROM t JOIN t2 ON t.k = t2.k \
         JOIN dim ON dim.g = t.g \
         WHERE t.k IN (SELECT k FROM t2 GROUP BY k HAVING sum(n) > 100)",
        1e-9,
    ),
    (
        "group by text",
        "SELECT s, count(*), min(k), max(n) FROM t WHERE g BETWEEN 100 AND 200 \
         GROUP BY s ORDER BY s NULLS FIRST LIMIT 40",
        0.0,
    ),
];

#[test]
fn wire_matches_datafusion_and_survives_restart() {
    harness::run("wire", |env| async move {
        let seed = data::seed("wire");
        let rows = data::gen_rows(seed, ROWS);
        let dim = data::dim_rows();

        let ctx = SessionContext::new();
        data::register(&ctx, "t", data::t_batch(&rows)?)?;
        data::register(&ctx, "dim", data::dim_batch(&dim)?)?;

        let data_dir = env.path().join("data");
        let db = Slicedb::local(&env, NODES, &data_dir).await?;
        let client = db.connect().await?;

        exec(
            &client,
            &format!("CREATE TABLE t ({}) DISTRIBUTE ON (k)", data::T_COLUMNS),
        )
        .await?;
        let copied = copy_rows(&client, &rows).await?;
        ensure!(
            copied == ROWS as u64,
            "COPY reported {copied} rows, sent {ROWS}"
        );

        exec(
            &client,
            "CREATE TABLE dim (g int, name text) DISTRIBUTE ON (g)",
        )
        .await?;
        for chunk in dim.chunks(50) {
            let values: Vec<String> = chunk
                .iter()
                .map(|(g, name)| format!("({g}, '{name}')"))
                .collect();
            exec(
                &client,
                &format!("INSERT INTO dim VALUES {}", values.join(", ")),
            )
            .await?;
        }

        // t2: a third of t's rows, distributed like t (co-located joins).
        exec(
            &client,
            "CREATE TABLE t2 (k bigint, s text, n numeric(12,2)) DISTRIBUTE ON (k)",
        )
        .await?;
        exec(
            &client,
            &format!("INSERT INTO t2 SELECT {T2_COLUMNS} FROM t WHERE {T2_FILTER}"),
        )
        .await?;
        ctx.sql(&format!(
            "CREATE VIEW t2 AS SELECT {T2_COLUMNS} FROM t WHERE {T2_FILTER}"
        ))
        .await?;

        check_answers(&client, &ctx, &rows)
            .await
            .context("before restart")?;
        ddl_variants(&client).await?;

        drop(client);
        db.stop().await.context("stopping with SIGTERM")?;

        let db = Slicedb::local(&env, NODES, &data_dir)
            .await
            .context("restarting on the same data dir")?;
        let client = db.connect().await?;
        check_answers(&client, &ctx, &rows)
            .await
            .context("after restart")?;
        let n = scalar(&client, "SELECT count(*) FROM t_rand").await?;
        ensure!(
            n == scalar(&client, "SELECT count(*) FROM t WHERE g < 10").await?,
            "t_rand lost rows across the restart"
        );
        drop(client);
        db.stop().await
    });
}

/// COPY the rows in text format with tokio-postgres `copy_in`, 64 KiB chunks.
async fn copy_rows(client: &Client, rows: &[Row]) -> Result<u64> {
    let sink = client
        .copy_in::<_, Bytes>("COPY t FROM STDIN")
        .await
        .map_err(|e| anyhow::anyhow!("COPY t FROM STDIN: {}", harness::describe(&e)))?;
    futures::pin_mut!(sink);
    let mut buf = String::with_capacity(1 << 17);
    for r in rows {
        buf.push_str(&r.copy_line());
        if buf.len() >= 1 << 16 {
            sink.send(Bytes::from(std::mem::take(&mut buf))).await?;
        }
    }
    if !buf.is_empty() {
        sink.send(Bytes::from(buf)).await?;
    }
    sink.as_mut()
        .finish()
        .await
        .map_err(|e| anyhow::anyhow!("finishing COPY: {}", harness::describe(&e)))
}

async fn check_answers(client: &Client, ctx: &SessionContext, rows: &[Row]) -> Result<()> {
    for (name, sql, tol) in QUERIES {
        let want = data::reference(ctx, sql)
            .await
            .with_context(|| format!("reference for {name}"))?;
        let got = query(client, sql).await?;
        assert_rows_match(name, &got, &want, *tol)?;
    }

    // COPY (SELECT ...) TO STDOUT gives the exact text encoding back.
    let mut sorted: Vec<&Row> = rows.iter().collect();
    sorted.sort_by_key(|r| r.k);
    let want: String = sorted[..1000]
        .iter()
        .map(|r| {
            format!(
                "{}\t{}\n",
                r.k,
                r.s.as_deref()
                    .map(data::copy_escape)
                    .unwrap_or_else(|| "\\N".into())
            )
        })
        .collect();
    let stream = client
        .copy_out("COPY (SELECT k, s FROM t ORDER BY k LIMIT 1000) TO STDOUT")
        .await
        .map_err(|e| anyhow::anyhow!("COPY (SELECT ...) TO STDOUT: {}", harness::describe(&e)))?;
    let chunks: Vec<Bytes> = stream.try_collect().await?;
    let got = String::from_utf8(chunks.concat())?;
    if got != want {
        let first = got
            .lines()
            .zip(want.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(got.lines().count().min(want.lines().count()));
        anyhow::bail!(
            "COPY (SELECT k, s ...) TO STDOUT differs at line {first}: got {:?}, want {:?} ({} vs {} bytes)",
            got.lines().nth(first),
            want.lines().nth(first),
            got.len(),
            want.len()
        );
    }

    check_fragments(client).await?;
    check_system_views(client).await
}

/// Partial aggregates and co-located joins run on the nodes, and a
/// fragment's error reaches the client with the statement's SQLSTATE.
async fn check_fragments(client: &Client) -> Result<()> {
    for (sql, want, what) in [
        (
            "EXPLAIN SELECT g, count(*), sum(k) FROM t GROUP BY g",
            "fragment=[AggregateExec: mode=Partial",
            "the partial aggregate",
        ),
        (
            "EXPLAIN SELECT count(*) FROM t JOIN t2 ON t.k = t2.k WHERE t.g < 700",
            "SliceInputExec: input=1",
            "the join of t and t2 on their distribution key",
        ),
        (
            "EXPLAIN SELECT k, sum(n) FROM t2 GROUP BY k HAVING sum(n) > 100",
            // The fragment's chain (`<-`): the projection naming `sum` as
            // PostgreSQL does, over the filter, over the final aggregate.
            "<- FilterExec: sum(t2.n)@1 > 100.00 <- AggregateExec: mode=FinalPartitioned",
            "the HAVING of an aggregate grouped by the distribution key",
        ),
    ] {
        let text = format!("{:?}", query(client, sql).await?);
        ensure!(
            text.contains(want),
            "{what} does not run on the nodes: {text}"
        );
    }
    check_broadcast_join(client).await?;
    // Broadcast joins off: the join is then left where runtime filters
    // apply. (SET is this session's own.)
    exec(client, "SET slicedb.broadcast_joins = false").await?;
    let checked = check_runtime_filter(client).await;
    let colocated = check_colocated_apart(client).await;
    exec(client, "SET slicedb.broadcast_joins = true").await?;
    checked?;
    colocated?;
    let msg = expect_error(client, "SELECT sum(k / (g - g)) FROM t", &["22012"]).await?;
    ensure!(
        msg.contains("Divide by zero"),
        "division by zero on a node reported as: {msg}"
    );
    Ok(())
}

/// A join of t with a filtered dim runs on the nodes: dim's rows are sent
/// to them whole, and what leaves the nodes is the aggregate's partial
/// states. `SET slicedb.broadcast_joins = false` leaves the join at the
/// coordinator, with the same answer.
async fn check_broadcast_join(client: &Client) -> Result<()> {
    let sql = "SELECT dim.name, count(*), sum(t.k) FROM t JOIN dim ON t.g = dim.g \
               WHERE dim.name IN ('name 03', 'name 05') GROUP BY dim.name ORDER BY 1";
    let (plan, line) = scan_of_t(client, &format!("EXPLAIN ANALYZE {sql}")).await?;
    ensure!(
        line.contains("broadcast=1")
            && line.contains("HashJoinExec")
            && line.contains("AggregateExec: mode=Partial"),
        "the join with dim does not run on the nodes: {plan}"
    );
    // dim's rows whose name matches (a few of its 100), sent once.
    let sent: u64 = line
        .split("broadcast_rows=")
        .nth(1)
        .and_then(|r| r.split([',', ']']).next()?.trim().parse().ok())
        .with_context(|| format!("no broadcast_rows on the scan of t: {line}"))?;
    let want: u64 = scalar(
        client,
        "SELECT count(*) FROM dim WHERE name IN ('name 03', 'name 05')",
    )
    .await?
    .parse()?;
    ensure!(
        sent == want && want > 0,
        "the nodes got {sent} rows of dim, {want} match"
    );
    let on = query(client, sql).await?;
    exec(client, "SET slicedb.broadcast_joins = false").await?;
    let off_plan = format!("{:?}", query(client, &format!("EXPLAIN {sql}")).await);
    let off = query(client, sql).await;
    exec(client, "SET slicedb.broadcast_joins = true").await?;
    ensure!(
        !off_plan.contains("broadcast="),
        "SET slicedb.broadcast_joins = false still sends dim: {off_plan}"
    );
    ensure!(
        on == off? && !on.is_empty(),
        "the join answers differently on the nodes: {on:?}"
    );
    Ok(())
}

/// `dim JOIN t JOIN t2`: DataFusion joins dim and t first, then t2 at the
/// coordinator; t and t2 are co-located on k, so the joins are reordered
/// and t JOIN t2 runs on the nodes (broadcast joins are off here, so dim
/// cannot carry t's scan onto the nodes by itself).
async fn check_colocated_apart(client: &Client) -> Result<()> {
    let sql = "EXPLAIN SELECT count(*) FROM dim JOIN t ON dim.g = t.g JOIN t2 ON t.k = t2.k \
               WHERE dim.name < 'name 50'";
    let text = format!("{:?}", query(client, sql).await?);
    ensure!(
        text.contains("SliceInputExec: input=1") && text.contains("HashJoinExec"),
        "the join of t and t2 does not run on the nodes: {text}"
    );
    Ok(())
}

/// A join whose build side is small sends its keys to the probe side's
/// scan: the nodes return only t's rows whose g is among the nine the
/// filtered dim holds, not all of t. Also when t's scan carries a fragment
/// (a filter the nodes run with DataFusion): the keys filter its leaf.
async fn check_runtime_filter(client: &Client) -> Result<()> {
    const KEYS: &str = "g IN (3, 40, 77, 5, 42, 79, 7, 44, 81)";
    for (t_filter, fragment) in [("", false), (" AND upper(t.s) IS DISTINCT FROM 'zz'", true)] {
        let sql = format!(
            "SELECT count(*), sum(t.k) FROM t JOIN dim ON t.g = dim.g \
             WHERE dim.name IN ('name 03', 'name 05', 'name 07'){t_filter}"
        );
        let (_, line) = scan_of_t(client, &format!("EXPLAIN ANALYZE {sql}")).await?;
        ensure!(
            line.contains("runtime_filters=1") && line.contains("fragment=") == fragment,
            "the scan of t (fragment: {fragment}) did not get the join's runtime filter: {line}"
        );
        // EXPLAIN ANALYZE rounds counts ("4.92 K").
        let shipped: f64 = line
            .split("output_rows=")
            .nth(1)
            .and_then(|r| {
                let mut it = r.split([',', ']']);
                let text = it.next()?.trim();
                let (num, unit) = text.split_once(' ').unwrap_or((text, ""));
                let scale = match unit {
                    "" => 1.0,
                    "K" => 1e3,
                    "M" => 1e6,
                    _ => return None,
                };
                num.parse::<f64>().ok().map(|n| n * scale)
            })
            .with_context(|| format!("no output_rows on the scan of t: {line}"))?;
        let t_where = t_filter.replace("t.s", "s");
        let matching: f64 = scalar(
            client,
            &format!("SELECT count(*) FROM t WHERE {KEYS}{t_where}"),
        )
        .await?
        .parse()?;
        ensure!(
            (shipped - matching).abs() <= matching * 0.01,
            "the nodes shipped {shipped} rows of t for a join that needs {matching}"
        );
        ensure!(
            query(client, &sql).await?
                == query(
                    client,
                    &format!("SELECT count(*), sum(k) FROM t WHERE {KEYS}{t_where}")
                )
                .await?,
            "the join with a runtime filter answers differently from the plain filter: {sql}"
        );
    }
    // A build side that is a join's output would give bounds at most: t's
    // scan does not wait for it.
    let sql = "EXPLAIN SELECT count(*) FROM t JOIN \
               (SELECT a.g FROM dim a JOIN dim b ON a.g = b.g WHERE a.name = 'name 03') x \
               ON t.g = x.g";
    let (plan, line) = scan_of_t(client, sql).await?;
    ensure!(
        !line.contains("runtime_filters"),
        "t's scan waits for a join's output: {plan}"
    );
    Ok(())
}

/// The plan `explain` (an EXPLAIN statement) prints, and its line of the
/// scan of t.
async fn scan_of_t(client: &Client, explain: &str) -> Result<(String, String)> {
    let plan = format!("{:?}", query(client, explain).await?);
    let line = plan
        .split("\\n")
        .flat_map(|l| l.split('\n'))
        .find(|l| l.contains("table=t,") && l.contains("BroadcastScanExec"))
        .with_context(|| format!("no scan of t in the plan: {plan}"))?
        .to_string();
    Ok((plan, line))
}

async fn check_system_views(client: &Client) -> Result<()> {
    // Every primary slice holds part of t, evenly enough.
    let per_slice = query(
        client,
        "SELECT slice, sum(rows) FROM slicedb_table_slices \
         WHERE table_name = 't' AND segment = 'primary' GROUP BY slice ORDER BY slice",
    )
    .await?;
    ensure!(
        per_slice.len() == SLICES,
        "t should be on all {SLICES} slices, slicedb_table_slices shows {}: {per_slice:?}",
        per_slice.len()
    );
    let counts: Vec<u64> = per_slice
        .iter()
        .map(|r| {
            r[1].as_deref()
                .unwrap_or("NULL")
                .parse::<u64>()
                .with_context(|| format!("rows in {r:?}"))
        })
        .collect::<Result<_>>()?;
    let total: u64 = counts.iter().sum();
    let (min, max) = (
        *counts.iter().min().expect("16 slices"),
        *counts.iter().max().expect("16 slices"),
    );
    ensure!(min > 0, "a slice of t is empty: {per_slice:?}");
    ensure!(
        total == ROWS as u64,
        "slices of t hold {total} rows, expected {ROWS}: {per_slice:?}"
    );
    ensure!(
        max as f64 / min as f64 <= 1.5,
        "t is skewed over slices (max {max}, min {min}): {per_slice:?}"
    );

    // 16 slices, mirror never on the primary's node.
    let slices = query(
        client,
        "SELECT slice, primary_node, primary_disk, mirror_node, mirror_disk, state \
         FROM slicedb_slices ORDER BY slice",
    )
    .await?;
    ensure!(
        slices.len() == SLICES,
        "slicedb_slices should list {SLICES} slices: {slices:?}"
    );
    for s in &slices {
        ensure!(
            s[1].is_some() && s[3].is_some() && s[1] != s[3],
            "slice with its mirror on the primary's node: {s:?}"
        );
    }

    let nodes = query(
        client,
        "SELECT node, address, state FROM slicedb_nodes ORDER BY node",
    )
    .await?;
    ensure!(
        nodes.len() == NODES as usize,
        "slicedb_nodes should list {NODES} nodes: {nodes:?}"
    );
    for (i, n) in nodes.iter().enumerate() {
        ensure!(
            n[0].as_deref() == Some(i.to_string().as_str()) && n[2].as_deref() == Some("up"),
            "node {i} should be 'up': {nodes:?}"
        );
    }

    let disks = query(
        client,
        "SELECT node, disk, segment, bytes, used FROM slicedb_disks ORDER BY node, disk, segment",
    )
    .await?;
    for node in 0..NODES {
        let mut segs: Vec<&str> = disks
            .iter()
            .filter(|d| d[0].as_deref() == Some(node.to_string().as_str()))
            .filter_map(|d| d[2].as_deref())
            .collect();
        segs.sort_unstable();
        ensure!(
            segs == ["mirror", "primary", "temp"],
            "node {node} should show primary/mirror/temp segments in slicedb_disks: {disks:?}"
        );
    }
    for d in &disks {
        let bytes: u64 = d[3].as_deref().unwrap_or("x").parse()?;
        let used: u64 = d[4].as_deref().unwrap_or("x").parse()?;
        ensure!(used <= bytes, "slicedb_disks row with used > bytes: {d:?}");
        if d[2].as_deref() == Some("primary") {
            ensure!(used > 0, "primary segment unused after loading t: {d:?}");
        }
    }
    Ok(())
}

/// The other DISTRIBUTE spellings, INSERT ... SELECT, and DROP TABLE.
async fn ddl_variants(client: &Client) -> Result<()> {
    exec(
        client,
        "CREATE TABLE t_rand (k bigint, g int, v double precision) DISTRIBUTE ON RANDOM",
    )
    .await?;
    exec(
        client,
        "INSERT INTO t_rand SELECT k, g, v FROM t WHERE g < 10",
    )
    .await?;
    let want = query(
        client,
        "SELECT count(*), sum(k), sum(g) FROM t WHERE g < 10",
    )
    .await?;
    let got = query(client, "SELECT count(*), sum(k), sum(g) FROM t_rand").await?;
    assert_rows_match("INSERT ... SELECT into t_rand", &got, &want, 0.0)?;

    for (table, clause) in [
        ("t_gp_by", "DISTRIBUTED BY (k)"),
        ("t_gp_rand", "DISTRIBUTED RANDOMLY"),
        ("t_default", ""),
    ] {
        exec(
            client,
            &format!("CREATE TABLE {table} (k bigint, s text) {clause}"),
        )
        .await?;
        exec(
            client,
            &format!("INSERT INTO {table} VALUES (1, 'a'), (2, 'b'), (3, NULL)"),
        )
        .await?;
        let got = query(
            client,
            &format!("SELECT count(*), sum(k), count(s) FROM {table}"),
        )
        .await?;
        let want = vec![vec![
            Some("3".to_string()),
            Some("6".to_string()),
            Some("2".to_string()),
        ]];
        assert_rows_match(table, &got, &want, 0.0)?;
        exec(client, &format!("DROP TABLE {table}")).await?;
        expect_error(client, &format!("SELECT * FROM {table}"), &["42P01"]).await?;
    }

    // sum(bigint) is a numeric, as in PostgreSQL: it never wraps around,
    // also when the nodes sum their slices first (partial aggregates).
    exec(
        client,
        "CREATE TABLE t_big (k bigint, g int) DISTRIBUTE ON (k)",
    )
    .await?;
    exec(
        client,
        "INSERT INTO t_big VALUES (9223372036854775807, 1), (9223372036854775806, 1), \
         (3, 1), (-5, 2), (2147483647, 3), (2147483647, 3)",
    )
    .await?;
    let got = query(
        client,
        "SELECT g, sum(k), sum(g) FROM t_big GROUP BY g ORDER BY g",
    )
    .await?;
    let want: Vec<Vec<Option<String>>> = [
        ["1", "18446744073709551616", "3"],
        ["2", "-5", "2"],
        ["3", "4294967294", "6"],
    ]
    .iter()
    .map(|r| r.iter().map(|c| Some(c.to_string())).collect())
    .collect();
    assert_rows_match("sum(bigint) past i64::MAX", &got, &want, 0.0)?;
    exec(client, "DROP TABLE t_big").await?;
    Ok(())
}
