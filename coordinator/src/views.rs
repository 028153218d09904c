//! System views: `slicedb_nodes`, `slicedb_slices`, `slicedb_disks`,
//! `slicedb_tables` (distribution, persistence), `slicedb_table_slices`,
//! `slicedb_verify` (primary vs mirror, online), `slicedb_repairs` (the
//! damaged blocks the nodes met and repaired from the other copy),
//! `slicedb_scrub` (each disk's last complete background scrub pass),
//! `slicedb_damaged` (blocks no good copy could repair, marked until they
//! read well again or are gone). Each is computed fresh at scan time from the map,
//! the catalog and the nodes' Status answers, like Greenplum's
//! `gp_segment_configuration` or Netezza's `_v_dslice`.
//!
//! Views only read; they never change the map or the catalog.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result as DfResult;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use slicedb_engine::proto::pb;

use crate::cluster::Cluster;
use crate::Result;

/// Times in system views: points in time (timestamptz), in milliseconds.
fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into()))
}

#[derive(Debug, Clone, Copy)]
enum View {
    Nodes,
    Slices,
    Disks,
    TableSlices,
    Verify,
    History,
    Resync,
    Tables,
    Repairs,
    Scrub,
    Damaged,
}

impl View {
    fn name(&self) -> &'static str {
        match self {
            View::Nodes => "slicedb_nodes",
            View::Slices => "slicedb_slices",
            View::Disks => "slicedb_disks",
            View::TableSlices => "slicedb_table_slices",
            View::Verify => "slicedb_verify",
            View::History => "slicedb_map_history",
            View::Resync => "slicedb_resync",
            View::Tables => "slicedb_tables",
            View::Repairs => "slicedb_repairs",
            View::Scrub => "slicedb_scrub",
            View::Damaged => "slicedb_damaged",
        }
    }

    fn schema(&self) -> SchemaRef {
        let i = |n: &str| Field::new(n, DataType::Int32, true);
        let b = |n: &str| Field::new(n, DataType::Int64, true);
        let s = |n: &str| Field::new(n, DataType::Utf8, true);
        Arc::new(Schema::new(match self {
            View::Nodes => vec![i("node"), s("address"), s("state")],
            View::Slices => vec![
                i("slice"),
                i("primary_node"),
                i("primary_disk"),
                i("mirror_node"),
                i("mirror_disk"),
                s("state"),
                s("copies"),
            ],
            View::Disks => vec![
                i("node"),
                i("disk"),
                s("segment"),
                b("bytes"),
                b("used"),
                s("state"),
                s("failed"),
            ],
            View::TableSlices => vec![
                s("table_name"),
                i("slice"),
                s("segment"),
                i("node"),
                i("disk"),
                b("rows"),
                b("bytes"),
                s("persistence"),
            ],
            View::History => vec![b("epoch"), b("at_unix_ms"), s("cause")],
            View::Repairs => vec![
                b("at_unix_ms"),
                i("node"),
                i("disk"),
                s("segment"),
                s("table_name"),
                b("table_id"),
                i("slice"),
                b("block_seq"),
                b("block_offset"),
                b("block_bytes"),
                i("source_node"),
                s("outcome"),
                s("error"),
            ],
            View::Damaged => vec![
                Field::new("since", ts(), true),
                i("node"),
                i("disk"),
                s("segment"),
                s("table_name"),
                b("table_id"),
                i("slice"),
                b("block_seq"),
                b("rows"),
                b("rowid_min"),
                b("rowid_max"),
                s("error"),
            ],
            View::Scrub => vec![
                i("node"),
                i("disk"),
                Field::new("last_pass_started", ts(), true),
                Field::new("last_pass_finished", ts(), true),
                b("blocks"),
                b("bytes"),
                b("damaged"),
                b("repaired"),
                Field::new("current_pass_progress", DataType::Float64, true),
            ],
            View::Tables => vec![
                s("table_name"),
                s("distribution"),
                s("distribution_key"),
                s("persistence"),
                i("columns"),
            ],
            View::Resync => vec![
                i("slice"),
                i("source_node"),
                i("target_node"),
                s("segment"),
                s("phase"),
                i("tables_done"),
                i("tables_total"),
                b("blocks"),
                b("bytes"),
                b("total_bytes"),
                Field::new("seconds", DataType::Float64, true),
                Field::new("mb_per_s", DataType::Float64, true),
                Field::new("eta_seconds", DataType::Float64, true),
            ],
            View::Verify => vec![
                s("table_name"),
                i("slice"),
                b("primary_rows"),
                b("mirror_rows"),
                s("status"),
            ],
        }))
    }
}

pub struct SystemView {
    view: View,
    cluster: Arc<Cluster>,
}

impl fmt::Debug for SystemView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SystemView({})", self.view.name())
    }
}

/// Register every system view in `ctx`.
pub fn register(ctx: &SessionContext, cluster: &Arc<Cluster>) -> Result<()> {
    for view in [
        View::Nodes,
        View::Slices,
        View::Disks,
        View::TableSlices,
        View::Verify,
        View::History,
        View::Resync,
        View::Tables,
        View::Repairs,
        View::Scrub,
        View::Damaged,
    ] {
        ctx.register_table(
            view.name(),
            Arc::new(SystemView {
                view,
                cluster: cluster.clone(),
            }),
        )?;
    }
    Ok(())
}

/// How a table is kept: `mirrored` (two copies), `unmirrored` (WITH
/// (mirrored = false): the temp segment, one copy) or `temporary` (CREATE
/// TEMP TABLE: the temp segment, gone with its session).
fn persistence(t: &crate::catalog::TableMeta) -> &'static str {
    match (t.session, t.mirrored) {
        (Some(_), _) => "temporary",
        (None, true) => "mirrored",
        (None, false) => "unmirrored",
    }
}

fn segment_name(v: i32) -> &'static str {
    match pb::Segment::try_from(v) {
        Ok(pb::Segment::Primary) => "primary",
        Ok(pb::Segment::Mirror) => "mirror",
        Ok(pb::Segment::Temp) => "temp",
        Err(_) => "unknown",
    }
}

impl SystemView {
    /// The permanent tables' names by id (a dropped table has none).
    fn table_names(&self) -> std::collections::HashMap<u64, String> {
        let cat = self.cluster.catalog().lock();
        cat.tables()
            .iter()
            .map(|t| (t.id, t.name.clone()))
            .collect()
    }

    /// `slicedb_repairs`: every node's repair records, oldest first per
    /// node (a dropped table's name is NULL).
    async fn repairs(&self) -> Vec<ArrayRef> {
        let names = self.table_names();
        let mut recs: Vec<(u32, pb::RepairRecord)> = Vec::new();
        for st in self.statuses().await {
            recs.extend(st.repairs.into_iter().map(|r| (st.node, r)));
        }
        recs.sort_by_key(|(n, r)| (r.at_unix_ms, *n));
        let col64 = |f: &dyn Fn(&pb::RepairRecord) -> u64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(
                recs.iter().map(|(_, r)| f(r) as i64),
            ))
        };
        vec![
            col64(&|r| r.at_unix_ms),
            Arc::new(Int32Array::from_iter_values(
                recs.iter().map(|(n, _)| *n as i32),
            )),
            Arc::new(Int32Array::from_iter_values(
                recs.iter().map(|(_, r)| r.disk as i32),
            )),
            Arc::new(StringArray::from_iter_values(
                recs.iter().map(|(_, r)| segment_name(r.segment)),
            )),
            Arc::new(StringArray::from_iter(
                recs.iter().map(|(_, r)| names.get(&r.table).cloned()),
            )),
            col64(&|r| r.table),
            Arc::new(Int32Array::from_iter_values(
                recs.iter().map(|(_, r)| r.slice as i32),
            )),
            col64(&|r| r.seq),
            col64(&|r| r.offset),
            col64(&|r| r.length),
            Arc::new(Int32Array::from_iter(
                recs.iter()
                    .map(|(_, r)| r.has_source.then_some(r.source_node as i32)),
            )),
            Arc::new(StringArray::from_iter_values(
                recs.iter().map(|(_, r)| r.outcome.clone()),
            )),
            Arc::new(StringArray::from_iter_values(
                recs.iter().map(|(_, r)| r.error.clone()),
            )),
        ]
    }

    /// `slicedb_disks`: every configured disk of every node, one row per
    /// segment, with its state: `in_service`, `failed` (the node's reason
    /// in `failed`: an I/O error, the image gone or cut short, damaged
    /// blocks past the limit) or, for a node that does not answer, one row
    /// per disk with state `unreachable` and no segment.
    async fn disks(&self) -> Vec<ArrayRef> {
        let answers: std::collections::HashMap<u32, pb::StatusResponse> = self
            .statuses()
            .await
            .into_iter()
            .map(|st| (st.node, st))
            .collect();
        let (mut node, mut disk, mut seg, mut bytes, mut used) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut state, mut failed) = (vec![], vec![]);
        for n in self.cluster.nodes().values() {
            let Some(st) = answers.get(&n.id) else {
                for d in 0..n.disks {
                    node.push(n.id as i32);
                    disk.push(d as i32);
                    seg.push(None);
                    bytes.push(None);
                    used.push(None);
                    state.push("unreachable");
                    failed.push(None);
                }
                continue;
            };
            for d in &st.disks {
                for sg in &d.segments {
                    node.push(st.node as i32);
                    disk.push(d.disk as i32);
                    seg.push(Some(segment_name(sg.segment)));
                    bytes.push(Some(sg.bytes as i64));
                    used.push(Some(sg.used as i64));
                    if d.failed.is_empty() {
                        state.push("in_service");
                        failed.push(None);
                    } else {
                        state.push("failed");
                        failed.push(Some(d.failed.clone()));
                    }
                }
            }
        }
        vec![
            Arc::new(Int32Array::from(node)),
            Arc::new(Int32Array::from(disk)),
            Arc::new(StringArray::from(seg)),
            Arc::new(Int64Array::from(bytes)),
            Arc::new(Int64Array::from(used)),
            Arc::new(StringArray::from(state)),
            Arc::new(StringArray::from(failed)),
        ]
    }

    /// `slicedb_damaged`: the blocks the nodes could not repair (both
    /// copies damaged, or no good copy to be had), each until its node
    /// finds it readable again or gone; by node, disk, table, slice.
    async fn damaged(&self) -> Vec<ArrayRef> {
        let names = self.table_names();
        let mut recs: Vec<(u32, pb::DamagedBlock)> = Vec::new();
        for st in self.statuses().await {
            recs.extend(st.damaged.into_iter().map(|d| (st.node, d)));
        }
        recs.sort_by_key(|(n, d)| (*n, d.disk, d.table, d.slice, d.seq));
        let col64 = |f: &dyn Fn(&pb::DamagedBlock) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(recs.iter().map(|(_, d)| f(d))))
        };
        let col32 = |f: &dyn Fn(u32, &pb::DamagedBlock) -> u32| -> ArrayRef {
            Arc::new(Int32Array::from_iter_values(
                recs.iter().map(|(n, d)| f(*n, d) as i32),
            ))
        };
        vec![
            Arc::new(
                TimestampMillisecondArray::from_iter_values(
                    recs.iter().map(|(_, d)| d.since_unix_ms as i64),
                )
                .with_timezone("+00:00"),
            ),
            col32(&|n, _| n),
            col32(&|_, d| d.disk),
            Arc::new(StringArray::from_iter_values(
                recs.iter().map(|(_, d)| segment_name(d.segment)),
            )),
            Arc::new(StringArray::from_iter(
                recs.iter().map(|(_, d)| names.get(&d.table).cloned()),
            )),
            col64(&|d| d.table as i64),
            col32(&|_, d| d.slice),
            col64(&|d| d.seq as i64),
            col64(&|d| d.rows as i64),
            col64(&|d| d.rowid_min),
            col64(&|d| d.rowid_max),
            Arc::new(StringArray::from_iter_values(
                recs.iter().map(|(_, d)| d.error.clone()),
            )),
        ]
    }

    /// `slicedb_scrub`: each disk's last complete background scrub pass
    /// (NULL times and counts until one completed) and the running pass's
    /// progress (0 to 1; NULL between passes).
    async fn scrub(&self) -> Vec<ArrayRef> {
        let mut recs: Vec<(u32, pb::ScrubStatus)> = Vec::new();
        for st in self.statuses().await {
            recs.extend(st.scrubs.into_iter().map(|r| (st.node, r)));
        }
        recs.sort_by_key(|(n, r)| (*n, r.disk));
        let last = |f: &dyn Fn(&pb::ScrubStatus) -> u64| -> ArrayRef {
            Arc::new(Int64Array::from_iter(
                recs.iter().map(|(_, r)| r.has_last.then_some(f(r) as i64)),
            ))
        };
        let at = |f: &dyn Fn(&pb::ScrubStatus) -> u64| -> ArrayRef {
            Arc::new(
                TimestampMillisecondArray::from_iter(
                    recs.iter().map(|(_, r)| r.has_last.then_some(f(r) as i64)),
                )
                .with_timezone("+00:00"),
            )
        };
        vec![
            Arc::new(Int32Array::from_iter_values(
                recs.iter().map(|(n, _)| *n as i32),
            )),
            Arc::new(Int32Array::from_iter_values(
                recs.iter().map(|(_, r)| r.disk as i32),
            )),
            at(&|r| r.last_started_unix_ms),
            at(&|r| r.last_finished_unix_ms),
            last(&|r| r.blocks),
            last(&|r| r.bytes),
            last(&|r| r.damaged),
            last(&|r| r.repaired),
            Arc::new(Float64Array::from_iter(
                recs.iter().map(|(_, r)| r.running.then_some(r.progress)),
            )),
        ]
    }

    /// Ask every node for its status; a node that does not answer is marked
    /// down and simply contributes no rows.
    async fn statuses(&self) -> Vec<pb::StatusResponse> {
        let calls = self.cluster.nodes().values().map(|n| {
            let mut c = n.grpc.clone();
            let req = crate::nodes::deadline(pb::StatusRequest {}, crate::nodes::CONTROL_DEADLINE);
            async move { (n.id, c.status(req).await) }
        });
        let mut out = Vec::new();
        for (id, r) in futures::future::join_all(calls).await {
            match r {
                Ok(s) => {
                    self.cluster.mark(id, true);
                    out.push(s.into_inner());
                }
                Err(_) => self.cluster.mark(id, false),
            }
        }
        out
    }

    async fn batch(&self) -> DfResult<RecordBatch> {
        let schema = self.view.schema();
        let cols: Vec<ArrayRef> = match self.view {
            View::Tables => {
                // The permanent tables, and the current session's own.
                let tables = {
                    let cat = self.cluster.catalog().lock();
                    let mut t = cat.tables();
                    if let Some(s) = crate::session::current_session() {
                        t.extend(cat.temps(Some(s)));
                    }
                    t
                };
                let key = |t: &crate::catalog::TableMeta| match &t.distribution {
                    crate::Distribution::Hash(k) => Some(k.join(", ")),
                    crate::Distribution::Random => None,
                };
                vec![
                    Arc::new(StringArray::from_iter_values(
                        tables.iter().map(|t| t.name.clone()),
                    )),
                    Arc::new(StringArray::from_iter_values(tables.iter().map(|t| {
                        match &t.distribution {
                            crate::Distribution::Hash(_) => "hash",
                            crate::Distribution::Random => "random",
                        }
                    }))),
                    Arc::new(StringArray::from_iter(tables.iter().map(|t| key(t)))),
                    Arc::new(StringArray::from_iter_values(
                        tables.iter().map(|t| persistence(t)),
                    )),
                    Arc::new(Int32Array::from_iter_values(
                        tables.iter().map(|t| t.schema.fields().len() as i32),
                    )),
                ]
            }
            View::Nodes => {
                let _ = self.statuses().await;
                let states = self.cluster.health().states();
                let nodes: Vec<_> = self.cluster.nodes().values().collect();
                let map = self.cluster.map();
                let holding: std::collections::BTreeSet<u32> = map
                    .slices()
                    .iter()
                    .flat_map(|e| e.copies.iter().map(|c| c.at.node))
                    .collect();
                vec![
                    Arc::new(Int32Array::from_iter_values(
                        nodes.iter().map(|n| n.id as i32),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        nodes.iter().map(|n| n.address.clone()),
                    )),
                    Arc::new(StringArray::from_iter_values(nodes.iter().map(|n| {
                        let state = states
                            .get(&n.id)
                            .cloned()
                            .unwrap_or_else(|| "unknown".into());
                        // A spare (or a node whose copies were regenerated
                        // elsewhere) that answers and holds no copy.
                        if (n.spare || map.is_emptied(n.id))
                            && state == "up"
                            && !holding.contains(&n.id)
                        {
                            "spare".to_string()
                        } else {
                            state
                        }
                    }))),
                ]
            }
            View::Slices => {
                let map = self.cluster.map();
                let e = map.slices();
                vec![
                    Arc::new(Int32Array::from_iter_values(
                        e.iter().map(|s| s.slice as i32),
                    )),
                    Arc::new(Int32Array::from_iter_values(
                        e.iter().map(|s| s.primary().at.node as i32),
                    )),
                    Arc::new(Int32Array::from_iter_values(
                        e.iter().map(|s| s.primary().at.disk as i32),
                    )),
                    Arc::new(Int32Array::from_iter(
                        e.iter().map(|s| s.mirror().map(|m| m.at.node as i32)),
                    )),
                    Arc::new(Int32Array::from_iter(
                        e.iter().map(|s| s.mirror().map(|m| m.at.disk as i32)),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        e.iter().map(|s| s.state().as_str()),
                    )),
                    // Every copy: "node:disk role state", e.g.
                    // "0:0 primary in_sync, 1:0 mirror rebuilding".
                    Arc::new(StringArray::from_iter_values(e.iter().map(|s| {
                        s.copies
                            .iter()
                            .map(|c| {
                                format!(
                                    "{}:{} {} {}",
                                    c.at.node,
                                    c.at.disk,
                                    c.role.as_str(),
                                    c.state.as_str()
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    }))),
                ]
            }
            View::Disks => self.disks().await,
            View::Repairs => self.repairs().await,
            View::Scrub => self.scrub().await,
            View::Damaged => self.damaged().await,
            View::TableSlices => {
                // Permanent tables, and the current session's temporary ones.
                let names: std::collections::HashMap<u64, (String, &'static str)> = {
                    let cat = self.cluster.catalog().lock();
                    let temps = match crate::session::current_session() {
                        Some(sid) => cat.temps(Some(sid)),
                        None => Vec::new(),
                    };
                    cat.tables()
                        .iter()
                        .chain(temps.iter())
                        .map(|t| (t.id, (t.name.clone(), persistence(t))))
                        .collect()
                };
                let (mut tn, mut slice, mut seg, mut node, mut disk, mut rows, mut bytes) =
                    (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
                let mut pers = vec![];
                for st in self.statuses().await {
                    for s in &st.slices {
                        // Blocks of dropped tables are not shown.
                        let Some((name, p)) = names.get(&s.table) else {
                            continue;
                        };
                        tn.push(name.clone());
                        pers.push(*p);
                        slice.push(s.slice as i32);
                        seg.push(segment_name(s.segment));
                        node.push(st.node as i32);
                        disk.push(s.disk as i32);
                        rows.push(s.rows as i64);
                        bytes.push(s.bytes as i64);
                    }
                }
                vec![
                    Arc::new(StringArray::from(tn)),
                    Arc::new(Int32Array::from(slice)),
                    Arc::new(StringArray::from(seg)),
                    Arc::new(Int32Array::from(node)),
                    Arc::new(Int32Array::from(disk)),
                    Arc::new(Int64Array::from(rows)),
                    Arc::new(Int64Array::from(bytes)),
                    Arc::new(StringArray::from(pers)),
                ]
            }
            View::History => {
                let map = self.cluster.map();
                let h = map.history();
                vec![
                    Arc::new(Int64Array::from_iter_values(
                        h.iter().map(|c| c.epoch as i64),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        h.iter().map(|c| c.at_ms as i64),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        h.iter().map(|c| c.cause.clone()),
                    )),
                ]
            }
            View::Resync => {
                let p = self.cluster.resync_progress();
                let secs: Vec<f64> = p
                    .iter()
                    .map(|c| {
                        c.finished
                            .unwrap_or_else(std::time::Instant::now)
                            .duration_since(c.started)
                            .as_secs_f64()
                    })
                    .collect();
                let i32s = |f: &dyn Fn(&crate::system::CopyProgress) -> i32| {
                    Arc::new(Int32Array::from_iter_values(p.iter().map(f))) as ArrayRef
                };
                vec![
                    i32s(&|c| c.slice as i32),
                    i32s(&|c| c.source_node as i32),
                    i32s(&|c| c.target_node as i32),
                    Arc::new(StringArray::from_iter_values(p.iter().map(|c| c.segment))),
                    Arc::new(StringArray::from_iter_values(
                        p.iter().map(|c| c.phase.clone()),
                    )),
                    i32s(&|c| c.tables_done as i32),
                    i32s(&|c| c.tables_total as i32),
                    Arc::new(Int64Array::from_iter_values(
                        p.iter().map(|c| c.blocks as i64),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        p.iter().map(|c| c.bytes as i64),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        p.iter().map(|c| c.total_bytes.max(c.bytes) as i64),
                    )),
                    Arc::new(Float64Array::from(secs.clone())),
                    Arc::new(Float64Array::from_iter_values(
                        p.iter().zip(&secs).map(|(c, s)| rate(c.bytes, *s) / 1e6),
                    )),
                    // Time left at the rate so far; unknown before any
                    // byte arrived, 0 once finished.
                    Arc::new(Float64Array::from_iter(p.iter().zip(&secs).map(
                        |(c, s)| match (c.finished, rate(c.bytes, *s)) {
                            (Some(_), _) => Some(0.0),
                            (None, r) if r > 0.0 => {
                                Some(c.total_bytes.saturating_sub(c.bytes) as f64 / r)
                            }
                            _ => None,
                        },
                    ))),
                ]
            }
            View::Verify => {
                let rows = crate::write::maintenance::verify(&self.cluster).await?;
                vec![
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| r.table.clone()),
                    )),
                    Arc::new(Int32Array::from_iter_values(
                        rows.iter().map(|r| r.slice as i32),
                    )),
                    Arc::new(Int64Array::from_iter(
                        rows.iter().map(|r| r.primary_rows.map(|v| v as i64)),
                    )),
                    Arc::new(Int64Array::from_iter(
                        rows.iter().map(|r| r.mirror_rows.map(|v| v as i64)),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| r.status.clone()),
                    )),
                ]
            }
        };
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

#[async_trait]
impl TableProvider for SystemView {
    fn schema(&self) -> SchemaRef {
        self.view.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let batch = self.batch().await?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.view.schema(),
            projection.cloned(),
        )?)
    }
}

/// Bytes per second, 0 before any time passed.
fn rate(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs
    } else {
        0.0
    }
}
