//! The target's side of a slice copy: pull one copy of a slice from the
//! node holding another and write it into this node's copy, node to node,
//! with no data passing through the coordinator.
//!
//! A resync first reads which transactions' blocks the target holds and
//! sends that to the source, which then sends only the others; once the
//! source answered it reads them again and skips blocks of transactions
//! that reached the target meanwhile by forwarding.
//!
//! Everything it writes is pending under the copy's xid until the stream
//! ended complete (its `done` chunk, with totals that match what arrived);
//! then one commit makes the copy durable and visible at once. Any failure
//! aborts the copy's xid: what the target held before stays as it was.
//! Each block is verified on arrival (the store's `append_encoded`).
//!
//! It paces what it reads to the request's rate (`max_bytes_per_sec`)
//! while its node is busy with queries or writes, so that a copy in the
//! background leaves the disks and the network to them (and runs at full
//! speed on an idle node), and asks the source for the same pace, which
//! the source keeps by its own node's activity (so that it does not read
//! ahead in bursts as far as flow control lets it). Its writes run on a
//! thread below the queries' priority. Each copy in
//! flight is on a [`Meters`] board the node's `Status` answer carries
//! (bytes so far and the source's total), for the coordinator's progress.
//!
//! It never checks epochs or ownership (the node server does before it
//! calls in) and never decides what to copy (the coordinator does).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::background::Activity;
use crate::proto::pb;
use crate::store::{DiskStore, SegmentKind};
use crate::{EngineError, Result, Xid};

/// Blocks written per blocking call (unpaced copies).
const WRITE_BATCH: usize = 8;

/// Batches between the stream and the writer.
const WRITE_QUEUE: usize = 2;

/// What the stream hands the writer: blocks, and the copy's total bytes
/// once the source said (0 before).
struct Batch {
    blocks: Vec<bytes::Bytes>,
    total_bytes: u64,
}

/// Writes a copy's blocks on a background thread while the stream goes on
/// (through the store's [`crate::store::CopySink`]: direct I/O into runs of
/// the copy's own), each pending under the copy's xid, except blocks of
/// transactions the target holds already (`held`). Answers how many it
/// wrote, once all are on the disk.
struct Writer;

impl Writer {
    fn start(
        target: Arc<DiskStore>,
        plan: CopyPlan,
        held: Arc<Vec<Xid>>,
    ) -> (
        tokio::sync::mpsc::Sender<Batch>,
        tokio::sync::oneshot::Receiver<Result<usize>>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(WRITE_QUEUE);
        let (seg, table, slice, xid) = (plan.target_segment, plan.table, plan.slice, plan.xid);
        // Below queries' priority: a copy takes the processor they leave.
        let writer = crate::background::spawn("copy-writer", move || {
            let mut sink = target.copy_sink(seg, table, slice, xid, 0);
            let mut written = 0;
            while let Some(batch) = rx.blocking_recv() {
                if batch.total_bytes > 0 {
                    sink.expect(batch.total_bytes);
                }
                for b in &batch.blocks {
                    if sink.append_unless(b, &held)?.is_some() {
                        written += 1;
                    }
                }
            }
            sink.finish()?;
            Ok(written)
        });
        (tx, writer)
    }
}

/// What one copy pulled from `source` and wrote into `target`.
#[derive(Debug, Clone, Copy)]
pub struct CopyPlan {
    pub table: u64,
    pub slice: u32,
    pub source_segment: SegmentKind,
    pub target_segment: SegmentKind,
    pub xid: Xid,
    /// Send only the blocks the target lacks (a resync).
    pub incremental: bool,
    pub epoch: u64,
    /// The source node (for the progress board).
    pub source_node: crate::NodeId,
    /// Bytes per second at most (0: no limit).
    pub max_bytes_per_sec: u64,
}

/// The copies a node is pulling now, by xid: what its `Status` reports.
#[derive(Debug, Default)]
pub struct Meters {
    copies: Mutex<BTreeMap<Xid, pb::CopyStatus>>,
    /// Bytes of blocks received by every copy since the node started.
    bytes_total: AtomicU64,
    /// Copies finished since the node started: committed, failed.
    finished: [AtomicU64; 2],
}

/// What the metrics endpoint shows of a node's copies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyCounts {
    pub in_progress: u64,
    pub bytes_total: u64,
    pub committed: u64,
    pub failed: u64,
}

impl Meters {
    /// Every copy in flight.
    pub fn snapshot(&self) -> Vec<pb::CopyStatus> {
        self.copies.lock().values().cloned().collect()
    }

    /// The counters of the metrics endpoint.
    pub fn counts(&self) -> CopyCounts {
        CopyCounts {
            in_progress: self.copies.lock().len() as u64,
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            committed: self.finished[0].load(Ordering::Relaxed),
            failed: self.finished[1].load(Ordering::Relaxed),
        }
    }

    fn update(&self, xid: Xid, f: impl FnOnce(&mut pb::CopyStatus)) {
        if let Some(c) = self.copies.lock().get_mut(&xid) {
            f(c);
        }
    }
}

/// A copy's row on the board, removed when the copy ends however it ends.
struct Metered<'a> {
    meters: &'a Meters,
    xid: Xid,
}

impl<'a> Metered<'a> {
    fn start(meters: &'a Meters, plan: &CopyPlan) -> Self {
        meters.copies.lock().insert(
            plan.xid,
            pb::CopyStatus {
                xid: plan.xid,
                table: plan.table,
                slice: plan.slice,
                source_node: plan.source_node,
                ..Default::default()
            },
        );
        Metered {
            meters,
            xid: plan.xid,
        }
    }
}

impl Drop for Metered<'_> {
    fn drop(&mut self) {
        self.meters.copies.lock().remove(&self.xid);
    }
}

/// Keeps a stream at or below a rate while its node is busy with
/// foreground work: after `bytes` in all, wait until they are due. On an
/// idle node (no scan or write for [`crate::background::QUIET`]) it does
/// not wait, and the rate counts again from the moment work starts (no
/// catching up for the idle stretch, no long stop for the bytes it sent
/// meanwhile). The target paces what it takes in, the source (given the
/// same rate) what it reads, each by its own node's activity.
pub(crate) struct Pace {
    rate: u64,
    activity: Option<Arc<Activity>>,
    /// When the current busy stretch's count started, and the bytes then.
    since: Instant,
    base: u64,
}

impl Pace {
    /// A pace of `rate` bytes per second from now (0: no limit), kept
    /// while `activity` is busy (None: always).
    pub(crate) fn new(rate: u64, activity: Option<Arc<Activity>>) -> Self {
        Pace {
            rate,
            activity,
            since: Instant::now(),
            base: 0,
        }
    }

    /// How long until `bytes` in all are due.
    fn wait(&mut self, bytes: u64) -> Option<Duration> {
        if self.rate == 0 {
            return None;
        }
        if self.activity.as_ref().is_some_and(|a| !a.busy()) {
            self.since = Instant::now();
            self.base = bytes;
            return None;
        }
        self.due_after(bytes, self.since.elapsed())
    }

    /// How long until `bytes` in all are due, `elapsed` into the current
    /// stretch (the clock given, so that a test needs no real time).
    pub(crate) fn due_after(&self, bytes: u64, elapsed: Duration) -> Option<Duration> {
        if self.rate == 0 {
            return None;
        }
        let due =
            Duration::from_secs_f64(bytes.saturating_sub(self.base) as f64 / self.rate as f64);
        due.checked_sub(elapsed).filter(|d| !d.is_zero())
    }

    async fn after(&mut self, bytes: u64) {
        if let Some(d) = self.wait(bytes) {
            tokio::time::sleep(d).await;
        }
    }

    /// [`Pace::after`] on a blocking thread.
    pub(crate) fn after_blocking(&mut self, bytes: u64) {
        if let Some(d) = self.wait(bytes) {
            std::thread::sleep(d);
        }
    }
}

/// Pull and write the copy; on any failure abort it on `target`.
pub async fn pull(
    source: tonic::transport::Channel,
    target: Arc<DiskStore>,
    plan: CopyPlan,
    meters: &Meters,
    activity: Arc<Activity>,
) -> Result<pb::CopySliceResponse> {
    let res = {
        let _row = Metered::start(meters, &plan);
        pull_inner(source, &target, &plan, meters, activity).await
    };
    meters.finished[usize::from(res.is_err())].fetch_add(1, Ordering::Relaxed);
    if res.is_err() {
        let xid = plan.xid;
        let t = target.clone();
        let _ = tokio::task::spawn_blocking(move || t.abort(xid)).await;
    }
    res
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Internal(format!("blocking task failed: {e}")))?
}

async fn pull_inner(
    source: tonic::transport::Channel,
    target: &Arc<DiskStore>,
    plan: &CopyPlan,
    meters: &Meters,
    activity: Arc<Activity>,
) -> Result<pb::CopySliceResponse> {
    let (seg, table, slice, xid) = (plan.target_segment, plan.table, plan.slice, plan.xid);
    let t = target.clone();
    let mut have_xids = blocking(move || t.copy_xids(seg, table, slice)).await?;
    if !plan.incremental {
        if !have_xids.is_empty() {
            return Err(copy_failed(
                plan,
                "the target's copy is not empty: resync it (incremental) instead",
            ));
        }
        have_xids.clear();
    }
    let mut stream = super::export_stream::export_slice(
        source,
        pb::ExportSliceRequest {
            epoch: plan.epoch,
            table,
            slice,
            segment: pb::Segment::from(plan.source_segment) as i32,
            have_xids,
            max_bytes_per_sec: plan.max_bytes_per_sec,
        },
        crate::proto::MAX_MESSAGE_BYTES,
    )
    .await
    .map_err(|s| copy_failed(plan, s.message()))?;
    // The source answered, so its export is taken. A transaction it held
    // committed may have been prepared here since the xids above were read
    // (a mirror prepares before its primary commits): read them again and
    // skip such blocks as they arrive, or this copy would hold them twice.
    let held = if plan.incremental {
        let t = target.clone();
        Arc::new(blocking(move || t.copy_xids(seg, table, slice)).await?)
    } else {
        Arc::new(Vec::new())
    };
    let (mut blocks, mut bytes) = (0u64, 0u64);
    let mut pace = Pace::new(plan.max_bytes_per_sec, Some(activity));
    // A paced copy writes each block as it comes: short bursts of work
    // beside foreground queries instead of a batch at a time.
    let batch_len = if plan.max_bytes_per_sec > 0 {
        1
    } else {
        WRITE_BATCH
    };
    // The writer runs beside the stream: blocks go on arriving while the
    // ones before them are written (a couple of batches in between).
    let (tx, writer) = Writer::start(target.clone(), *plan, held);
    let mut batch: Vec<bytes::Bytes> = Vec::with_capacity(batch_len);
    let mut total_bytes = 0;
    let received = loop {
        let chunk = match stream.next().await {
            Some(Ok(c)) => c,
            Some(Err(s)) => break Err(copy_failed(plan, s.message())),
            None => break Err(copy_failed(plan, "the stream ended before its last chunk")),
        };
        if chunk.done {
            break Ok(chunk);
        }
        blocks += 1;
        bytes += chunk.block.len() as u64;
        meters
            .bytes_total
            .fetch_add(chunk.block.len() as u64, Ordering::Relaxed);
        meters.update(xid, |c| {
            c.blocks = blocks;
            c.bytes = bytes;
            if chunk.total_bytes > 0 {
                c.total_bytes = chunk.total_bytes;
            }
        });
        total_bytes = total_bytes.max(chunk.total_bytes);
        batch.push(chunk.block);
        if batch.len() >= batch_len
            && tx
                .send(Batch {
                    blocks: std::mem::replace(&mut batch, Vec::with_capacity(batch_len)),
                    total_bytes,
                })
                .await
                .is_err()
        {
            // The writer stopped: its error says why.
            break Err(copy_failed(plan, "the writer stopped"));
        }
        pace.after(bytes).await;
    };
    let last = if batch.is_empty() {
        Ok(())
    } else {
        tx.send(Batch {
            blocks: batch,
            total_bytes,
        })
        .await
    };
    drop(tx);
    let written = crate::background::join(writer).await?;
    let chunk = received?;
    if last.is_err() {
        return Err(copy_failed(plan, "the writer stopped"));
    }
    if chunk.blocks != blocks || chunk.bytes != bytes {
        return Err(copy_failed(
            plan,
            &format!(
                "{blocks} blocks ({bytes} bytes) arrived, the source sent {} ({})",
                chunk.blocks, chunk.bytes
            ),
        ));
    }
    if let Some(d) = crate::failpoint::delay("copy.before_commit") {
        tokio::time::sleep(d).await;
    }
    crate::failpoint::hit("copy.before_commit");
    let deletes: Vec<(i64, Xid)> = chunk.deletes.iter().map(|d| (d.rowid, d.xid)).collect();
    let n = deletes.len() as u64;
    let t = target.clone();
    let plan_ = *plan;
    blocking(move || {
        t.delete_copied(seg, table, slice, xid, &deletes)?;
        // Everything written must still be pending under the copy's
        // xid: if something aborted it meanwhile, part of the copy is
        // gone and committing the rest would lose rows.
        let pending = t.pending_blocks(xid);
        if pending != written {
            return Err(copy_failed(
                &plan_,
                &format!("{written} blocks written but {pending} still pending: the copy was aborted underneath"),
            ));
        }
        t.commit(xid)
    })
    .await?;
    Ok(pb::CopySliceResponse {
        blocks,
        bytes,
        deletes: n,
    })
}

fn copy_failed(plan: &CopyPlan, why: &str) -> EngineError {
    EngineError::Internal(format!(
        "copy of table {} slice {} failed: {why}",
        plan.table, plan.slice
    ))
}
