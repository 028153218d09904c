//! The COPY FROM STDIN pipeline: three stages that run at once, so that
//! decoding text and shipping rows to nodes overlap instead of taking turns.
//!
//! ```text
//! connection task --raw CopyData--> splitter --parts--> decode workers --batches--> load task --gRPC--> primaries
//! ```
//!
//! - The connection task only hands each CopyData message on ([`CopyPipeline::send`]).
//! - The splitter (a blocking-pool thread) deals text-format input out to
//!   the decode workers (one thread per core) in parts cut at row ends,
//!   without copying it; the workers turn bytes into batches of the table's
//!   columns. CSV, whose quoted fields may hold newlines, goes to one worker.
//! - When the table is hash-distributed, the workers also hash each row's
//!   key as they parse it and build each slice's batches apart
//!   ([`CopyDecoder::split_by_slice`]), so the load task only ships them.
//!   Otherwise the load task hashes rows to slices itself ([`Loader`]).
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

use bytes::{Bytes, BytesMut};
use datafusion::arrow::array::{new_null_array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use slicedb_coordinator::write::load::Loader;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::copy::{CopyDecoder, Decoded};
use crate::errors::SqlError;

/// Chunks of input queued for the decode thread.
const RAW_QUEUE: usize = 16;
/// CopyData messages (psql sends about 8 KiB each) are gathered into chunks
/// of this size before they are handed on: one wakeup of the splitter and
/// of a worker per chunk instead of per message. Thread switches cost more
/// than the copy (measured with perf: a tenth of a COPY's CPU went to them).
const CHUNK_BYTES: usize = 256 << 10;
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
    /// Input not yet handed on, less than [`CHUNK_BYTES`].
    pending: BytesMut,
    load: Option<JoinHandle<Result<u64, SqlError>>>,
    /// When the COPY began (its latency in the metrics).
    started: std::time::Instant,
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
        let (batch_tx, batch_rx) = mpsc::channel::<Decoded>(BATCH_QUEUE);
        let decode = tokio::task::spawn_blocking(move || decode(decoder, raw_rx, batch_tx));
        let load = tokio::spawn(load(loader, widen, batch_rx, decode));
        CopyPipeline {
            raw: Some(raw_tx),
            pending: BytesMut::new(),
            load: Some(load),
            started: std::time::Instant::now(),
        }
    }

    /// When the COPY began.
    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    /// Hand on one CopyData message. Waits while the pipeline is full; once
    /// it has stopped on an error, the data is dropped (the error waits for
    /// [`finish`](Self::finish)).
    pub async fn send(&mut self, data: Bytes) {
        if self.raw.is_none() {
            return;
        }
        if self.pending.is_empty() && data.len() >= CHUNK_BYTES {
            return self.hand_on(data).await;
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve(CHUNK_BYTES + data.len());
        }
        self.pending.extend_from_slice(&data);
        if self.pending.len() >= CHUNK_BYTES {
            let chunk = self.pending.split().freeze();
            self.hand_on(chunk).await;
        }
    }

    async fn hand_on(&mut self, data: Bytes) {
        if let Some(tx) = &self.raw {
            if tx.send(Raw::Data(data)).await.is_err() {
                self.raw = None;
            }
        }
    }

    /// CopyDone: decode the rest, ship it and (in autocommit) commit.
    /// Returns the rows loaded, or the pipeline's first error.
    pub async fn finish(mut self) -> Result<u64, SqlError> {
        if !self.pending.is_empty() {
            let rest = self.pending.split().freeze();
            self.hand_on(rest).await;
        }
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

/// Bytes of text-format input per part handed to a decode worker.
const PART_BYTES: usize = 1 << 20;

/// Input chunks queued per decode worker: about two parts.
const PART_QUEUE: usize = 2 * PART_BYTES / CHUNK_BYTES + 2;

/// What a decode worker is given.
enum Part {
    /// Input bytes as they came (CSV: all of it, to worker 0). With
    /// `first_line`: the first bytes of a text-format part, whose first row
    /// is input line `first_line + 1`; a part ends at a row end.
    Rows {
        bytes: Bytes,
        first_line: Option<u64>,
    },
    Done,
}

/// The decode stage: a splitter (this blocking thread) and decode workers
/// (scoped threads, one per core). Text-format input is cut at row ends into
/// parts of about [`PART_BYTES`] that the workers decode at once; CSV goes
/// to one worker whole. Ok(()) only after Done was received and every
/// worker handed on its last partial batch.
fn decode(
    decoder: CopyDecoder,
    mut raw: mpsc::Receiver<Raw>,
    batches: mpsc::Sender<Decoded>,
) -> Result<(), SqlError> {
    let parallel = decoder.splits_at_newlines();
    let workers = if parallel {
        std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
    } else {
        1
    };
    let mut decoders = vec![decoder];
    while decoders.len() < workers {
        let d = decoders[0].fork();
        decoders.push(d);
    }
    std::thread::scope(|scope| {
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for d in decoders {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Part>(PART_QUEUE);
            let out = batches.clone();
            senders.push(tx);
            handles.push(scope.spawn(move || decode_worker(d, rx, out)));
        }
        let split = split_input(&mut raw, &senders, parallel);
        drop(senders);
        // A worker's own error explains a splitter that could not send, and
        // the other workers that were cut off. Of several, the earliest in
        // the input is reported, as PostgreSQL does.
        let mut first: Option<(u64, SqlError)> = None;
        let mut cut = false;
        for h in handles {
            let (line, e) = match h.join() {
                Ok(Ok(())) => continue,
                Ok(Err(Stop::Cut)) => {
                    cut = true;
                    continue;
                }
                Ok(Err(Stop::Failed(line, e))) => (line, e),
                Err(_) => (0, SqlError::user("XX000", "COPY decoder panicked")),
            };
            if first.as_ref().is_none_or(|(l, _)| line < *l) {
                first = Some((line, e));
            }
        }
        let first = first.map(|(_, e)| e);
        match (first, split) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(e),
            // Cut off with nothing to say: the load task stopped, on an
            // error it reports itself.
            (None, Ok(())) if cut => Err(SqlError::user("XX000", "COPY load stopped")),
            (None, Ok(())) => Ok(()),
        }
    })
}

/// The splitter: hand the input to the workers in parts, then Done. The
/// CopyData messages are passed on as they are (no copy); a part ends inside
/// the first message after [`PART_BYTES`] that holds a row end, which is cut
/// there.
fn split_input(
    raw: &mut mpsc::Receiver<Raw>,
    workers: &[std::sync::mpsc::SyncSender<Part>],
    parallel: bool,
) -> Result<(), SqlError> {
    let stopped = || SqlError::user("XX000", "COPY decoder stopped");
    // Input lines handed on so far; the worker of the current part, its
    // size, and whether nothing of it was sent yet.
    struct Cursor {
        lines: u64,
        w: usize,
        part_bytes: usize,
        part_start: bool,
    }
    let mut at = Cursor {
        lines: 0,
        w: 0,
        part_bytes: 0,
        part_start: true,
    };
    // Once an end marker ("\.") may have been seen, the current worker
    // decodes the rest in order, so nothing after the marker is loaded.
    let mut in_order = !parallel;
    let mut last_was_backslash = false;
    let send = |at: &mut Cursor, bytes: Bytes| -> Result<(), SqlError> {
        let first_line = std::mem::take(&mut at.part_start).then_some(at.lines);
        at.lines += memchr::memchr_iter(b'\n', &bytes).count() as u64;
        at.part_bytes += bytes.len();
        workers[at.w]
            .send(Part::Rows { bytes, first_line })
            .map_err(|_| stopped())
    };
    while let Some(msg) = raw.blocking_recv() {
        match msg {
            Raw::Data(d) => {
                if !in_order
                    && (memchr::memmem::find(&d, b"\\.").is_some()
                        || (last_was_backslash && d.first() == Some(&b'.')))
                {
                    in_order = true;
                }
                last_was_backslash = d.last() == Some(&b'\\');
                if in_order || at.part_bytes < PART_BYTES {
                    send(&mut at, d)?;
                    continue;
                }
                match last_row_end(&d) {
                    None => send(&mut at, d)?,
                    Some(end) => {
                        send(&mut at, d.slice(..end + 1))?;
                        at.w = (at.w + 1) % workers.len();
                        at.part_bytes = 0;
                        at.part_start = true;
                        if end + 1 < d.len() {
                            send(&mut at, d.slice(end + 1..))?;
                        }
                    }
                }
            }
            Raw::Done => {
                for w in workers {
                    w.send(Part::Done).map_err(|_| stopped())?;
                }
                return Ok(());
            }
        }
    }
    Err(SqlError::user(
        "57014",
        "COPY from stdin ended without CopyDone",
    ))
}

/// The position of the last newline in `b` that surely ends a text-format
/// row: one not escaped by an odd run of backslashes, and not preceded by a
/// run that reaches the start of `b` (it may go on in the bytes before).
fn last_row_end(b: &[u8]) -> Option<usize> {
    let mut end = b.len();
    while let Some(i) = memchr::memrchr(b'\n', &b[..end]) {
        let backslashes = b[..i].iter().rev().take_while(|&&c| c == b'\\').count();
        if backslashes == i {
            return None;
        }
        if backslashes % 2 == 0 {
            return Some(i);
        }
        end = i;
    }
    None
}

/// Why a decode worker stopped early.
enum Stop {
    /// Its part of the input is bad, at about this input line.
    Failed(u64, SqlError),
    /// Cut off: the splitter or the load task went away first, and the one
    /// that did reports why.
    Cut,
}

/// One decode worker: decode the parts it is given, hand on the batches.
fn decode_worker(
    mut decoder: CopyDecoder,
    parts: std::sync::mpsc::Receiver<Part>,
    batches: mpsc::Sender<Decoded>,
) -> Result<(), Stop> {
    let send = |out: Vec<Decoded>| -> Result<(), Stop> {
        for b in out {
            batches.blocking_send(b).map_err(|_| Stop::Cut)?;
        }
        Ok(())
    };
    // After a worker fails, the others still decode the parts already
    // queued for them (a closed channel hands out what it holds first):
    // every part before the failing one was dealt before it, so the first
    // bad row of the input is always found.
    while let Ok(part) = parts.recv() {
        let done = matches!(part, Part::Done);
        let out = match part {
            Part::Rows { bytes, first_line } => {
                if let Some(l) = first_line {
                    decoder.set_line(l);
                }
                decoder.push_sliced(&bytes)
            }
            Part::Done => decoder.finish_sliced(),
        };
        let out = out.map_err(|e| Stop::Failed(decoder.line(), e.into()))?;
        send(out)?;
        if done {
            return Ok(());
        }
    }
    Err(Stop::Cut)
}

/// The load task: push batches until the decode thread ends, then commit
/// (or only write, inside a transaction block) if it ended cleanly, or abort.
async fn load(
    mut loader: Loader,
    widen: Widen,
    mut batches: mpsc::Receiver<Decoded>,
    decode: JoinHandle<Result<(), SqlError>>,
) -> Result<u64, SqlError> {
    let mut failed: Option<SqlError> = None;
    while let Some(d) = batches.recv().await {
        let r = match (widen.apply(d.batch), d.slice) {
            (Ok(b), None) => loader.push(b).await.map_err(SqlError::from),
            (Ok(b), Some(slice)) => loader.push_slice(slice, b).await.map_err(SqlError::from),
            (Err(e), _) => Err(e),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::CopyOptions;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]))
    }

    /// Run the decode stage on `input` sent in 8 KiB messages (plus Done
    /// unless `cut`); returns the rows decoded, or the stage's error.
    fn run(opts: CopyOptions, input: &[u8], cut: bool) -> Result<u64, SqlError> {
        let mut decoder = CopyDecoder::new(schema(), opts, 4096);
        // Split by slice, as COPY into a table distributed on `id` does.
        assert!(decoder.split_by_slice(vec![0], 8));
        let (raw_tx, raw_rx) = mpsc::channel::<Raw>(RAW_QUEUE);
        let (batch_tx, mut batch_rx) = mpsc::channel::<Decoded>(BATCH_QUEUE);
        let stage = std::thread::spawn(move || decode(decoder, raw_rx, batch_tx));
        let owned = input.to_vec();
        let feeder = std::thread::spawn(move || {
            for c in owned.chunks(8192) {
                if raw_tx
                    .blocking_send(Raw::Data(Bytes::copy_from_slice(c)))
                    .is_err()
                {
                    return;
                }
            }
            if !cut {
                let _ = raw_tx.blocking_send(Raw::Done);
            }
        });
        let mut rows = 0u64;
        while let Some(d) = batch_rx.blocking_recv() {
            assert!(d.slice.is_some_and(|s| s < 8));
            rows += d.batch.num_rows() as u64;
        }
        feeder.join().unwrap();
        stage.join().unwrap().map(|()| rows)
    }

    /// `n` text rows "i\tvalue i\n", i from 1; row `bad` (if any) has a
    /// non-number id.
    fn rows(n: u64, bad: Option<u64>) -> Vec<u8> {
        let mut s = String::new();
        for i in 1..=n {
            if Some(i) == bad {
                s.push_str("oops\tx\n");
            } else {
                s.push_str(&format!("{i}\tvalue {i}\n"));
            }
        }
        s.into_bytes()
    }

    fn message(e: SqlError) -> String {
        match e {
            SqlError::User { message, .. } => message,
            other => panic!("not a user error: {other}"),
        }
    }

    #[test]
    fn a_row_ends_at_a_newline_not_escaped_by_an_odd_backslash_run() {
        assert_eq!(last_row_end(b"a\nb"), Some(1));
        assert_eq!(last_row_end(b"a\nb\n"), Some(3));
        assert_eq!(last_row_end(b"a\nb\\\n"), Some(1));
        assert_eq!(last_row_end(b"a\nb\\\\\n"), Some(5));
        assert_eq!(last_row_end(b"a\nb\\\\\\\nc"), Some(1));
        assert_eq!(last_row_end(b"\\\n"), None);
        // A newline whose backslash run reaches the start may be escaped by
        // bytes before it.
        assert_eq!(last_row_end(b"\nabc"), None);
        assert_eq!(last_row_end(b"\\\\\nabc"), None);
        assert_eq!(last_row_end(b"abc"), None);
        assert_eq!(last_row_end(b""), None);
    }

    #[test]
    fn parallel_text_decoding_keeps_every_row() {
        // About 5 parts of PART_BYTES.
        let n = 300_000;
        let input = rows(n, None);
        assert!(input.len() > 4 * PART_BYTES);
        assert_eq!(run(CopyOptions::text(), &input, false).unwrap(), n);
        // A last row without newline still counts.
        let mut input = input;
        input.extend_from_slice(b"0\tlast");
        assert_eq!(run(CopyOptions::text(), &input, false).unwrap(), n + 1);
    }

    #[test]
    fn parts_are_never_cut_at_an_escaped_newline() {
        // Every row holds an escaped newline and an escaped backslash, so
        // many 8 KiB messages end or start inside an escape.
        let n = 200_000u64;
        let mut input = Vec::new();
        for i in 1..=n {
            input.extend_from_slice(format!("{i}\tx\\\ny\\\\\n").as_bytes());
        }
        assert!(input.len() > 2 * PART_BYTES);
        assert_eq!(run(CopyOptions::text(), &input, false).unwrap(), n);
    }

    #[test]
    fn an_error_in_a_later_part_names_its_input_line() {
        let input = rows(300_000, Some(250_001));
        let e = run(CopyOptions::text(), &input, false).expect_err("bad row");
        let m = message(e);
        assert!(m.contains("line 250001"), "{m}");
    }

    #[test]
    fn of_bad_rows_on_two_workers_the_first_in_the_input_is_reported() {
        // Rows at about 1.5 MiB (part 1, worker 1) and 2.5 MiB (part 2,
        // worker 0, which is joined first) are bad: the error names the first.
        let good = rows(300_000, None);
        let line_at =
            |offset: usize| memchr::memchr_iter(b'\n', &good[..offset]).count() as u64 + 1;
        let (early, late) = (line_at(3 * PART_BYTES / 2), line_at(5 * PART_BYTES / 2));
        let mut input = Vec::new();
        for (i, l) in good.split_inclusive(|&b| b == b'\n').enumerate() {
            let line = i as u64 + 1;
            if line == early || line == late {
                input.extend_from_slice(b"oops\tx\n");
            } else {
                input.extend_from_slice(l);
            }
        }
        let m = message(run(CopyOptions::text(), &input, false).expect_err("bad rows"));
        assert!(
            m.contains(&format!("line {early},")),
            "{m} (bad lines {early}, {late})"
        );
    }

    #[test]
    fn nothing_after_the_end_marker_is_loaded_and_lines_stay_right() {
        let mut input = rows(200_000, None);
        input.extend_from_slice(b"\\.\n");
        input.extend_from_slice(&rows(50_000, None));
        assert_eq!(run(CopyOptions::text(), &input, false).unwrap(), 200_000);
        // An error after the switch to in-order decoding still names its line.
        let mut input = rows(200_000, Some(199_999));
        input.extend_from_slice(b"\\.\n");
        let m = message(run(CopyOptions::text(), &input, false).expect_err("bad row"));
        assert!(m.contains("line 199999"), "{m}");
    }

    #[test]
    fn csv_decodes_whole_and_input_without_done_is_an_error() {
        let input: Vec<u8> = rows(100_000, None)
            .into_iter()
            .map(|b| if b == b'\t' { b',' } else { b })
            .collect();
        assert_eq!(run(CopyOptions::csv(), &input, false).unwrap(), 100_000);
        let e = run(CopyOptions::text(), &rows(300_000, None), true).expect_err("cut");
        assert!(message(e).contains("without CopyDone"));
    }
}
