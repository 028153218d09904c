//! The COPY FROM STDIN pipeline: three stages that run at once, so that
//! decoding text and shipping rows to nodes overlap instead of taking turns.
//!
//! ```text
//! connection task --raw CopyData--> decode thread --RecordBatch--> load task --gRPC--> primaries
//! ```
//!
//! - The connection task only hands each CopyData message on ([`CopyPipeline::send`]).
//! - The decode thread (a blocking-pool thread) turns bytes into batches of
//!   the table's columns.
//! - The load task hashes rows to slices and ships them ([`Loader`]).
//!
//! Both channels are bounded, so a slow stage holds the client back (TCP
//! backpressure) instead of buffering the whole input. The first error stops
//! the pipeline; it is reported at CopyDone, like PostgreSQL, and the rest
//! of the input is swallowed. Input that ends without CopyDone (CopyFail, a
//! dropped connection) aborts the load: nothing is committed unless
//! [`CopyPipeline::finish`] was called.
//!
//! It owns no transaction decision of its own: the [`Loader`] commits (in
//! autocommit) or only writes (inside a transaction block).

use bytes::Bytes;
use datafusion::arrow::array::{new_null_array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use slicedb_coordinator::load::Loader;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::copy::CopyDecoder;
use crate::errors::SqlError;

/// CopyData messages queued for the decode thread (psql sends about 8 KiB each).
const RAW_QUEUE: usize = 256;
/// Decoded batches queued for the load task.
const BATCH_QUEUE: usize = 4;

enum Raw {
    Data(Bytes),
    /// CopyDone: the input is complete.
    Done,
}

/// An unfinished COPY FROM STDIN of one connection.
pub struct CopyPipeline {
    raw: Option<mpsc::Sender<Raw>>,
    load: Option<JoinHandle<Result<u64, SqlError>>>,
}

/// How decoded columns map onto the table's columns.
#[derive(Clone)]
pub struct Widen {
    pub table: SchemaRef,
    /// For each decoded column, its index in the table.
    pub targets: Vec<usize>,
}

impl Widen {
    /// Widen decoded rows to the table's columns (unlisted columns are NULL).
    fn apply(&self, b: RecordBatch) -> Result<RecordBatch, SqlError> {
        let identity = self.targets.len() == self.table.fields().len()
            && self.targets.iter().enumerate().all(|(i, t)| i == *t);
        let cols: Vec<ArrayRef> = if identity {
            b.columns().to_vec()
        } else {
            let mut cols: Vec<ArrayRef> = self
                .table
                .fields()
                .iter()
                .map(|f| new_null_array(f.data_type(), b.num_rows()))
                .collect();
            for (i, t) in self.targets.iter().enumerate() {
                cols[*t] = b.column(i).clone();
            }
            cols
        };
        Ok(RecordBatch::try_new(self.table.clone(), cols)
            .map_err(datafusion::error::DataFusionError::from)?)
    }
}

impl CopyPipeline {
    /// Start the decode thread and the load task. Needs a tokio runtime.
    pub fn start(decoder: CopyDecoder, loader: Loader, widen: Widen) -> CopyPipeline {
        let (raw_tx, raw_rx) = mpsc::channel::<Raw>(RAW_QUEUE);
        let (batch_tx, batch_rx) = mpsc::channel::<RecordBatch>(BATCH_QUEUE);
        let decode = tokio::task::spawn_blocking(move || decode(decoder, raw_rx, batch_tx));
        let load = tokio::spawn(load(loader, widen, batch_rx, decode));
        CopyPipeline {
            raw: Some(raw_tx),
            load: Some(load),
        }
    }

    /// Hand on one CopyData message. Waits while the pipeline is full; once
    /// it has stopped on an error, the data is dropped (the error waits for
    /// [`finish`](Self::finish)).
    pub async fn send(&mut self, data: Bytes) {
        if let Some(tx) = &self.raw {
            if tx.send(Raw::Data(data)).await.is_err() {
                self.raw = None;
            }
        }
    }

    /// CopyDone: decode the rest, ship it and (in autocommit) commit.
    /// Returns the rows loaded, or the pipeline's first error.
    pub async fn finish(mut self) -> Result<u64, SqlError> {
        if let Some(tx) = self.raw.take() {
            // A closed channel means the pipeline stopped; its error follows.
            let _ = tx.send(Raw::Done).await;
        }
        let load = self.load.take().expect("finish consumes the pipeline");
        match load.await {
            Ok(r) => r,
            Err(e) => Err(SqlError::user(
                "XX000",
                format!("COPY load task failed: {e}"),
            )),
        }
    }

    /// CopyFail: stop and abort; waits until the load is discarded.
    pub async fn abort(mut self) {
        // Closing the input without Done makes the decode thread report an
        // abort, and the load task abort the load.
        self.raw = None;
        if let Some(load) = self.load.take() {
            let _ = load.await;
        }
    }
}

// Dropped without finish or abort (the connection went away): closing the
// input channel without Done aborts the load in the background.

/// The decode thread. Ok(()) only after Done was received and the last
/// partial batch was handed on.
fn decode(
    mut decoder: CopyDecoder,
    mut raw: mpsc::Receiver<Raw>,
    batches: mpsc::Sender<RecordBatch>,
) -> Result<(), SqlError> {
    let send = |out: Vec<RecordBatch>| -> Result<(), SqlError> {
        for b in out {
            // The load task is gone: it stopped on an error it reports itself.
            batches
                .blocking_send(b)
                .map_err(|_| SqlError::user("XX000", "COPY load stopped"))?;
        }
        Ok(())
    };
    while let Some(msg) = raw.blocking_recv() {
        match msg {
            Raw::Data(d) => send(decoder.push(&d)?)?,
            Raw::Done => return send(decoder.finish()?),
        }
    }
    Err(SqlError::user(
        "57014",
        "COPY from stdin ended without CopyDone",
    ))
}

/// The load task: push batches until the decode thread ends, then commit
/// (or only write, inside a transaction block) if it ended cleanly, or abort.
async fn load(
    mut loader: Loader,
    widen: Widen,
    mut batches: mpsc::Receiver<RecordBatch>,
    decode: JoinHandle<Result<(), SqlError>>,
) -> Result<u64, SqlError> {
    let mut failed: Option<SqlError> = None;
    while let Some(b) = batches.recv().await {
        let r = match widen.apply(b) {
            Ok(b) => loader.push(b).await.map_err(SqlError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            failed = Some(e);
            break;
        }
    }
    // Unblock the decode thread if it is waiting to send.
    drop(batches);
    let decoded = match decode.await {
        Ok(r) => r,
        Err(e) => Err(SqlError::user("XX000", format!("COPY decoder failed: {e}"))),
    };
    // A load error comes first: the decoder then only saw a closed channel.
    let err = match (failed, decoded) {
        (Some(e), _) => Some(e),
        (None, Err(e)) => Some(e),
        (None, Ok(())) => None,
    };
    match err {
        Some(e) => {
            loader.abort().await;
            Err(e)
        }
        None => Ok(loader.finish().await?),
    }
}
