//! The persistence seam: the one way the coordinator's durable state (the
//! catalog, the distribution map, the commit log) reaches storage.
//!
//! Callers own their formats (the catalog's and the map's JSON, specified in
//! docs/coordinator-state.md) and hand this seam whole documents; the commit
//! log is a sequence of committed xids. [`FileMeta`] (files in the data dir)
//! is today's one implementation; a replicated store (coordinator high
//! availability) replaces it without touching callers. Nothing else in the
//! coordinator opens a file of its data dir.

mod files;

use slicedb_engine::Xid;

use crate::Result;

pub use files::FileMeta;

/// A durable document of the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doc {
    /// The tables and the xid high-water mark (`catalog.json`).
    Catalog,
    /// The distribution map (`distmap.json`).
    Map,
}

/// Where the coordinator's state is made durable. An implementer must make
/// `write` atomic (a crash leaves the old or the new document, never a torn
/// one) and durable before it returns, and `append` durable before it
/// returns: a commit is acknowledged to a client right after.
pub trait MetaStore: Send + Sync {
    /// The document as last written, or `None` if it was never written.
    fn read(&self, doc: Doc) -> Result<Option<Vec<u8>>>;
    /// Replace the document.
    fn write(&self, doc: Doc, bytes: &[u8]) -> Result<()>;
    /// Open the commit log: the xids recorded committed so far (a torn last
    /// record was never acknowledged and is left out), and the log to append to.
    fn open_commit_log(&self) -> Result<(Vec<Xid>, Box<dyn CommitLog>)>;
    /// Where this store lives, for messages.
    fn describe(&self, doc: Doc) -> String;
}

/// The two-phase commit decision record.
pub trait CommitLog: Send {
    /// Record `xid` as committed, durably.
    fn append(&mut self, xid: Xid) -> Result<()>;
}
