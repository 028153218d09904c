//! SQL sessions as the coordinator sees them: which session a statement
//! runs for, and the name lookup that lets a session see its temporary
//! tables (CREATE TEMP TABLE) before the permanent ones, like PostgreSQL's
//! `pg_temp` at the head of the search path.
//!
//! All connections plan in one DataFusion [`SessionContext`]; the session is
//! a task-local the SQL front end sets around each statement. The
//! [`SessionSchema`] wraps the context's `public` schema and resolves names
//! through it. Nothing here talks to nodes or owns table data; creating and
//! dropping temporary tables is the [`crate::Coordinator`]'s.
//!
//! [`SessionContext`]: datafusion::execution::context::SessionContext

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::Result as DfResult;

use crate::catalog::TableMeta;
use crate::cluster::Cluster;
use crate::query::SliceTable;
use crate::write::TableSinks;

/// The session a statement runs for: a task-local kept beside the
/// statement's transaction block (in `txn`, which the query threads carry
/// both from, without depending on this module).
pub use crate::txn::{current_session, CURRENT_SESSION};

/// A session number unique in this process. Numbers start above those a
/// previous process may have recorded only by chance; that is harmless,
/// because the coordinator drops every recorded temporary table at startup,
/// before it serves a session.
pub fn new_session_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The context's `public` schema as the current session sees it: its
/// temporary tables first, then everything registered in `inner`.
pub struct SessionSchema {
    inner: Arc<dyn SchemaProvider>,
    cluster: Arc<Cluster>,
}

impl std::fmt::Debug for SessionSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSchema")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl SessionSchema {
    pub fn new(inner: Arc<dyn SchemaProvider>, cluster: Arc<Cluster>) -> Self {
        SessionSchema { inner, cluster }
    }

    fn temp(&self, name: &str) -> Option<Arc<TableMeta>> {
        let session = current_session()?;
        self.cluster.catalog().lock().get_temp(session, name)
    }
}

#[async_trait]
impl SchemaProvider for SessionSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        if let Some(session) = current_session() {
            for t in self.cluster.catalog().lock().temps(Some(session)) {
                if !names.contains(&t.name) {
                    names.push(t.name.clone());
                }
            }
        }
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(meta) = self.temp(name) {
            return Ok(Some(Arc::new(SliceTable::new(
                self.cluster.clone(),
                meta,
                TableSinks::new(self.cluster.clone()),
            ))));
        }
        self.inner.table(name).await
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.inner.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.inner.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.temp(name).is_some() || self.inner.table_exist(name)
    }
}
