//! The query threads: a runtime of their own that runs query execution,
//! apart from the runtime that accepts connections, answers cancel
//! requests, and runs the failure detector, heartbeats and node RPCs.
//!
//! DataFusion runs operators inside tokio tasks, and a heavy one holds its
//! thread for as long as it computes between two yields. On the runtime
//! that also serves the network, two such queries on two cores would starve
//! everything else: no new connection, no cancel request, no heartbeat (so
//! a busy machine could make the detector fail healthy nodes). So every
//! plan's output is produced here ([`OnQueryThreadsExec`], put on top of
//! each plan by [`RunOnQueryThreads`]; node fragments through
//! [`run_on_query_threads`]) and reaches its caller through a small
//! channel; the operating system shares the processors between these
//! threads and the service threads. Dropping the caller's stream aborts
//! the work at its next yield. DataFusion yields only where a leaf or an
//! exchange spends the task's budget, so an operator that loops over an
//! input producing batches on its own (an aggregate over a cross join)
//! would never yield: [`cooperative`] puts a budget check on every edge of
//! a plan (coordinator plans and node fragments), so every operator yields
//! at least once per tokio budget of batches. The statement's transaction
//! block and session (task-locals) go along.
//!
//! It must never run anything but query execution: work that waits here
//! for the network or a timer would queue behind queries.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{Stream, StreamExt};

use crate::txn::{current_session, current_txn, CURRENT_SESSION, CURRENT_TXN};

/// Items in flight between the query threads and the caller, per stream.
const CHANNEL: usize = 2;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("slicedb-query")
        .enable_all()
        .build()
        .expect("the query threads cannot start")
});

/// A stream made by `make` and polled on the query threads, its items
/// handed over one by one. Dropping what this returns stops the work.
pub fn run_on_query_threads<T, S, F>(make: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
where
    T: Send + 'static,
    S: Stream<Item = T> + Send + 'static,
    F: FnOnce() -> S + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<T>(CHANNEL);
    let (txn, session) = (current_txn(), current_session());
    let role = crate::privileges::current_role();
    let work = async move {
        let mut s = std::pin::pin!(make());
        while let Some(item) = s.next().await {
            if tx.send(item).await.is_err() {
                return; // the caller went away
            }
        }
    };
    // Plans made on the query threads check privileges as the caller's role.
    let work = async move {
        match role {
            Some(r) => crate::privileges::CURRENT_ROLE.scope(r, work).await,
            None => work.await,
        }
    };
    let task = RUNTIME.spawn(async move {
        match (txn, session) {
            (Some(t), Some(s)) => CURRENT_TXN.scope(t, CURRENT_SESSION.scope(s, work)).await,
            (Some(t), None) => CURRENT_TXN.scope(t, work).await,
            (None, Some(s)) => CURRENT_SESSION.scope(s, work).await,
            (None, None) => work.await,
        }
    });
    // The task lives as long as the receiving end: dropped, it aborts.
    Box::pin(futures::stream::unfold(
        (rx, AbortOnDrop(task)),
        |(mut rx, abort)| async move { rx.recv().await.map(|item| (item, (rx, abort))) },
    ))
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs its input on the query threads (see the module docs).
#[derive(Debug)]
pub struct OnQueryThreadsExec {
    input: Arc<dyn ExecutionPlan>,
}

impl OnQueryThreadsExec {
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        OnQueryThreadsExec { input }
    }
}

impl DisplayAs for OnQueryThreadsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "OnQueryThreadsExec")
    }
}

impl ExecutionPlan for OnQueryThreadsExec {
    fn name(&self) -> &str {
        "OnQueryThreadsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match children.pop() {
            Some(input) if children.is_empty() => Ok(Arc::new(OnQueryThreadsExec { input })),
            _ => Err(datafusion::error::DataFusionError::Internal(
                "OnQueryThreadsExec takes one child".into(),
            )),
        }
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> DfResult<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> DfResult<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.clone();
        let schema = input.schema();
        let stream = run_on_query_threads(move || match input.execute(partition, context) {
            Ok(s) => s.left_stream(),
            Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// `plan` with a [`CooperativeExec`] (a budget check) on every edge that
/// has none: whatever loops over its input yields to the scheduler, and so
/// can be stopped.
pub fn cooperative(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    let is_coop = |p: &Arc<dyn ExecutionPlan>| p.downcast_ref::<CooperativeExec>().is_some();
    plan.transform_up(|node| {
        if is_coop(&node) || node.children().iter().all(|c| is_coop(c)) {
            return Ok(Transformed::no(node));
        }
        let children = node
            .children()
            .into_iter()
            .map(|c| match is_coop(c) {
                true => c.clone(),
                false => Arc::new(CooperativeExec::new(c.clone())) as Arc<dyn ExecutionPlan>,
            })
            .collect();
        // A budget check keeps its input's properties.
        let keep = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep);
        Ok(Transformed::yes(node.replace_children(children, keep)?))
    })
    .map(|t| t.data)
}

/// Puts budget checks on every edge ([`cooperative`]) and
/// [`OnQueryThreadsExec`] on top of every plan; the last rule.
#[derive(Debug, Default)]
pub struct RunOnQueryThreads;

impl PhysicalOptimizerRule for RunOnQueryThreads {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if plan.downcast_ref::<OnQueryThreadsExec>().is_some() {
            return Ok(plan);
        }
        Ok(Arc::new(OnQueryThreadsExec::new(cooperative(plan)?)))
    }

    fn name(&self) -> &str {
        "RunOnQueryThreads"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The work runs on a query thread, not the caller's; dropping the
    /// stream stops it.
    #[tokio::test]
    async fn work_runs_on_the_query_threads_and_stops_when_dropped() {
        let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = counted.clone();
        let mut s = run_on_query_threads(move || {
            futures::stream::iter(0u64..).then(move |i| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    (i, std::thread::current().name().map(str::to_string))
                }
            })
        });
        let (_, thread) = s.next().await.unwrap();
        assert_eq!(thread.as_deref(), Some("slicedb-query"));
        drop(s);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let then = counted.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            counted.load(std::sync::atomic::Ordering::Relaxed),
            then,
            "no more work after the drop"
        );
    }
}
