//! A slice copy's appends, fast: the blocks a copy takes in go into extent
//! runs of the copy's own, gathered in memory and written in large aligned
//! pieces past the page cache ([`BlockDevice::write_direct`]), so that a
//! copy of gigabytes costs the target one copy of each byte less and does
//! not push the queries' pages out of the cache.
//!
//! What it owns: the runs it took for one (segment, table, slice) under one
//! xid, and the bytes of them not yet written. No other writer appends into
//! its runs (forwarded transactions of a resync write the same stream
//! beside it, into the stream's own open run), so no page is written by
//! two writers. Each block it takes is pending under the copy's xid at
//! once, but on the disk only after [`CopySink::finish`], which the copy
//! must call before it commits: finish also hands the runs to the stream,
//! so the commit's metadata lists them. A sink dropped unfinished gives its
//! runs back (the copy's xid is then aborted, and its pending blocks never
//! read).
//!
//! The writes themselves run on a thread of the sink's own, up to
//! [`IN_FLIGHT`] pieces at a time, while the copy's thread goes on verifying
//! and gathering the next blocks: a direct write waits for the device, and
//! with one write at a time the copy's thread spent most of a copy waiting
//! (and the device saw one request at a time).
//!
//! It must never write outside its runs, nor once its table is dropped
//! (each write checks under the I/O gate that the table still exists;
//! `drop_copy` refuses while the copy has blocks pending), and never give
//! its runs back while a write into them may still be in flight.
//!
//! [`BlockDevice::write_direct`]: crate::disk::BlockDevice::write_direct

use std::sync::Arc;

use super::{DiskStore, Stream, StreamKey};
use crate::disk::meta::ExtentRun;
use crate::disk::{AlignedBuf, SegmentKind, DIRECT_ALIGN};
use crate::{EngineError, Result, SliceId, TableId, Xid};

/// Bytes gathered before a write, at most (and at most this many extents).
const WRITE_AT: u64 = 4 << 20;
const WRITE_AT_EXTENTS: u64 = 4;

/// Pieces written at once, beside the one being gathered.
const IN_FLIGHT: usize = 2;

/// Extents in the largest run a sink takes at once.
const MAX_RUN_EXTENTS: u64 = 16;

/// A copy smaller than this many extents is appended the ordinary way,
/// into the stream's open run: runs of its own would waste more than the
/// cache copy costs (and a resync sends little).
const DIRECT_MIN_EXTENTS: u64 = 8;

const ALIGN: u64 = DIRECT_ALIGN as u64;

/// Appends one copy's blocks; see the module docs.
pub struct CopySink {
    store: Arc<DiskStore>,
    key: StreamKey,
    xid: Xid,
    /// Runs taken, the last being filled.
    runs: Vec<ExtentRun>,
    /// Next free byte in the last run.
    cursor: u64,
    /// The bytes from `buf_start` (aligned, in the last run) to `cursor`,
    /// not yet written.
    buf: AlignedBuf,
    buf_start: u64,
    /// Bytes the copy expects in all (sizes the next run; 0: unknown),
    /// and the bytes taken so far.
    expect: u64,
    taken: u64,
    /// Whether the blocks go the direct way (decided at the first block).
    direct: Option<bool>,
    /// The writes in flight (started with the first one).
    io: Option<Writes>,
    finished: bool,
}

/// A piece of a sink's gathered bytes on its way to the device.
struct Piece {
    offset: u64,
    buf: AlignedBuf,
    len: usize,
}

/// The thread that writes a sink's pieces, in the order given, and hands
/// each buffer back (or the first error) once written.
struct Writes {
    to_write: Option<std::sync::mpsc::SyncSender<Piece>>,
    written: std::sync::mpsc::Receiver<Result<AlignedBuf>>,
    thread: Option<std::thread::JoinHandle<()>>,
    in_flight: usize,
    /// Written buffers, to fill again.
    spare: Vec<AlignedBuf>,
}

impl Writes {
    fn start(store: Arc<DiskStore>, table: TableId) -> Result<Writes> {
        let (to_write, pieces) = std::sync::mpsc::sync_channel::<Piece>(IN_FLIGHT);
        let (done, written) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("copy-io".into())
            .spawn(move || {
                crate::background::lower_priority();
                for p in pieces {
                    let r = Self::write(&store, table, &p).map(|()| p.buf);
                    let failed = r.is_err();
                    if done.send(r).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| EngineError::Internal(format!("cannot start a copy's writer: {e}")))?;
        Ok(Writes {
            to_write: Some(to_write),
            written,
            thread: Some(thread),
            in_flight: 0,
            spare: Vec::new(),
        })
    }

    fn write(store: &DiskStore, table: TableId, p: &Piece) -> Result<()> {
        // A dropped table's runs may be someone else's by now: check
        // under the gate (drop_table waits for it).
        let _gate = store.io_gate.read();
        if !store.inner.lock().tables.contains_key(&table) {
            return Err(EngineError::TableNotFound(table));
        }
        store.dev.write_direct(p.offset, &p.buf.as_slice()[..p.len])
    }

    /// Hand a piece over; once more than `IN_FLIGHT` are, wait for the
    /// oldest (its buffer is kept to fill again).
    fn send(&mut self, piece: Piece) -> Result<()> {
        let gone = || EngineError::Internal("a copy's writer stopped".into());
        let tx = self.to_write.as_ref().ok_or_else(gone)?;
        tx.send(piece).map_err(|_| self.failure())?;
        self.in_flight += 1;
        if self.in_flight > IN_FLIGHT {
            self.wait_one()?;
        }
        Ok(())
    }

    fn wait_one(&mut self) -> Result<()> {
        let r = self.written.recv().map_err(|_| {
            EngineError::Internal("a copy's writer stopped without an answer".into())
        })?;
        self.in_flight -= 1;
        self.spare.push(r?);
        Ok(())
    }

    /// The error that stopped the thread (it sends one before it stops).
    fn failure(&mut self) -> EngineError {
        loop {
            match self.written.recv() {
                Ok(Ok(_)) => self.in_flight = self.in_flight.saturating_sub(1),
                Ok(Err(e)) => return e,
                Err(_) => return EngineError::Internal("a copy's writer stopped".into()),
            }
        }
    }

    /// Wait until every piece handed over is written.
    fn drain(&mut self) -> Result<()> {
        while self.in_flight > 0 {
            self.wait_one()?;
        }
        Ok(())
    }
}

impl Drop for Writes {
    /// Returns once no write is in flight (the thread ended).
    fn drop(&mut self) {
        self.to_write.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl DiskStore {
    /// A sink for a copy into `segment`'s copy of `table`'s `slice`, pending
    /// under `xid`, of about `expect` bytes (0: unknown).
    pub fn copy_sink(
        self: &Arc<Self>,
        segment: SegmentKind,
        table: TableId,
        slice: SliceId,
        xid: Xid,
        expect: u64,
    ) -> CopySink {
        CopySink {
            store: self.clone(),
            key: StreamKey {
                segment,
                table,
                slice,
            },
            xid,
            runs: Vec::new(),
            cursor: 0,
            buf: AlignedBuf::with_capacity(0),
            buf_start: 0,
            expect,
            taken: 0,
            direct: None,
            io: None,
            finished: false,
        }
    }
}

impl CopySink {
    /// [`DiskStore::append_encoded_unless`] into the sink: the block
    /// verified and pending under the copy's xid, unless an xid in `held`
    /// wrote it (then `None`). Its bytes reach the disk by
    /// [`CopySink::finish`] at the latest.
    pub fn append_unless(&mut self, bytes: &[u8], held: &[Xid]) -> Result<Option<u64>> {
        let k = self.key;
        let extent = self.store.sb.extent_size;
        let direct = *self
            .direct
            .get_or_insert(self.expect >= DIRECT_MIN_EXTENTS * extent);
        if !direct {
            return self
                .store
                .append_encoded_unless(k.segment, k.table, k.slice, self.xid, bytes, held);
        }
        let Some(b) = self
            .store
            .accept_encoded(k.segment, k.table, k.slice, self.xid, bytes, held)?
        else {
            return Ok(None);
        };
        let len = bytes.len() as u64;
        let offset = self.place(len)?;
        self.buf.extend_from_slice(bytes);
        self.cursor = offset + len;
        self.taken += len;
        self.store
            .add_pending(k, self.xid, offset, len, &b.header, b.zone_bytes, b.zones);
        if self.buf.len() as u64 >= WRITE_AT.min(WRITE_AT_EXTENTS * extent) {
            self.write(false)?;
        }
        Ok(Some(b.header.rows))
    }

    /// The copy expects `bytes` in all (once the source said).
    pub fn expect(&mut self, bytes: u64) {
        self.expect = bytes;
    }

    /// Where the next `len` bytes go: the last run if they fit, else a new
    /// run (what the last one holds is written first).
    fn place(&mut self, len: u64) -> Result<u64> {
        if let Some(run) = self.runs.last() {
            if run.end() - self.cursor >= len {
                return Ok(self.cursor);
            }
            self.write(true)?;
        }
        let left = self.expect.saturating_sub(self.taken);
        let want = len.max(left.min(MAX_RUN_EXTENTS * self.store.sb.extent_size));
        let run = {
            let mut inner = self.store.inner.lock();
            let (alloc, kind) = (&mut inner.alloc, self.key.segment);
            // A segment too fragmented for a large run may still hold
            // this block.
            match alloc.alloc(kind, want) {
                Err(EngineError::SegmentFull { .. }) if want > len => alloc.alloc(kind, len)?,
                r => r?,
            }
        };
        self.runs.push(run);
        self.buf.consume(self.buf.len());
        self.buf_start = run.offset;
        self.cursor = run.offset;
        Ok(run.offset)
    }

    /// Write what is gathered: every whole page (`all`: the last partial
    /// page too, zero-padded; the run is whole pages, so it stays inside).
    fn write(&mut self, all: bool) -> Result<()> {
        let len = self.buf.len() as u64;
        let upto = if all {
            len.div_ceil(ALIGN) * ALIGN
        } else {
            len / ALIGN * ALIGN
        };
        if upto == 0 {
            return Ok(());
        }
        let upto = upto as usize;
        self.buf.pad_to(upto);
        if self.io.is_none() {
            self.io = Some(Writes::start(self.store.clone(), self.key.table)?);
        }
        let io = self.io.as_mut().expect("started above");
        // The next buffer: a written one back, or a new one.
        let mut next = io
            .spare
            .pop()
            .unwrap_or_else(|| AlignedBuf::with_capacity(WRITE_AT as usize * 2));
        next.consume(next.len());
        // The partial page stays, to be written whole with what follows.
        if !all {
            next.extend_from_slice(&self.buf.as_slice()[upto..]);
        }
        io.send(Piece {
            offset: self.buf_start,
            buf: std::mem::replace(&mut self.buf, next),
            len: upto,
        })?;
        self.buf_start += upto as u64;
        Ok(())
    }

    /// Write everything gathered and hand the runs to the stream: after
    /// this the copy may commit.
    pub fn finish(mut self) -> Result<()> {
        self.write(true)?;
        if let Some(io) = self.io.as_mut() {
            io.drain()?;
        }
        let store = self.store.clone();
        let mut inner = store.inner.lock();
        if !inner.tables.contains_key(&self.key.table) {
            return Err(EngineError::TableNotFound(self.key.table));
        }
        let s = inner.streams.entry(self.key).or_insert_with(Stream::empty);
        let runs = std::mem::take(&mut self.runs);
        // Appends go on into whichever open run has more room left: the
        // stream's, or the sink's last (after the page of its last byte).
        let end = self.cursor.div_ceil(ALIGN) * ALIGN;
        let room = |run: Option<&ExtentRun>, fill: u64| run.map_or(0, |r| r.end() - fill);
        if room(runs.last(), end) > room(s.extents.last(), s.fill) || s.extents.is_empty() {
            s.extents.extend(runs);
            s.fill = end;
        } else {
            let at = s.extents.len() - 1;
            s.extents.splice(at..at, runs);
        }
        self.finished = true;
        Ok(())
    }
}

impl Drop for CopySink {
    fn drop(&mut self) {
        // No write may land in a run once it is given back.
        self.io.take();
        if !self.finished && !self.runs.is_empty() {
            let mut inner = self.store.inner.lock();
            for run in self.runs.drain(..) {
                inner.alloc.release(self.key.segment, run);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::*;
    use crate::store::{SliceExport, Snapshot};

    const P: SegmentKind = SegmentKind::Primary;
    const M: SegmentKind = SegmentKind::Mirror;

    fn mirror_used(s: &DiskStore) -> u64 {
        s.report()
            .segments
            .iter()
            .find(|g| g.kind == M)
            .map(|g| g.used)
            .unwrap()
    }

    /// A source with two transactions, 5 (many blocks) and 6 (7 blocks),
    /// an empty target, and what the source exports (with its bytes).
    fn source(dir: &std::path::Path) -> (DiskStore, Arc<DiskStore>, SliceExport, Vec<Vec<u8>>) {
        let src = DiskStore::create(&dir.join("a.img"), IDS, small_init(), opts(100)).unwrap();
        let dst = DiskStore::create(&dir.join("b.img"), IDS, small_init(), opts(100)).unwrap();
        for s in [&src, &dst] {
            s.create_table(1, schema()).unwrap();
        }
        src.append(P, 1, 0, 5, &rows(0, 100_000)).unwrap();
        src.commit(5).unwrap();
        src.append(P, 1, 0, 6, &rows(100_000, 700)).unwrap();
        src.commit(6).unwrap();
        let export = src.export_slice(P, 1, 0, &[]).unwrap();
        let bytes = export
            .blocks
            .iter()
            .map(|b| src.read_exported(b).unwrap())
            .collect();
        (src, Arc::new(dst), export, bytes)
    }

    /// The copy goes through the sink (real direct I/O on a file, runs of
    /// 16 extents, so several) while another transaction appends to
    /// the same stream between its blocks, the way a resync's forwards do:
    /// the copy equals the source, no block overwrote another (every block
    /// verifies), and it all survives a reopen.
    #[test]
    fn a_sinks_copy_beside_other_appends_equals_the_source_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst, export, bytes) = source(dir.path());
        // Xid 6's blocks are the last 7: they arrive "forwarded" under 200.
        let (copied, forwarded) = bytes.split_at(bytes.len() - 7);
        // More than two runs of 16 extents of 64 KiB.
        let total: usize = copied.iter().map(|b| b.len()).sum();
        assert!(total > 2 * 16 * (64 << 10), "{total} bytes");
        let mut sink = dst.copy_sink(M, 1, 0, 100, export.bytes);
        let mut fwd = forwarded.iter();
        for (i, b) in copied.iter().enumerate() {
            assert!(sink.append_unless(b, &[]).unwrap().is_some());
            if i % 25 == 3 {
                if let Some(f) = fwd.next() {
                    dst.append_encoded(M, 1, 0, 200, f).unwrap();
                }
            }
        }
        for f in fwd {
            dst.append_encoded(M, 1, 0, 200, f).unwrap();
        }
        dst.commit(200).unwrap();
        sink.finish().unwrap();
        assert_eq!(dst.pending_blocks(100), copied.len());
        dst.commit(100).unwrap();
        let now = Snapshot::latest();
        let want = src.checksum(P, 1, 0, &now).unwrap();
        assert_eq!(dst.checksum(M, 1, 0, &now).unwrap(), want);
        assert_eq!(want.rows, 100_700);
        // Appends after the copy go on into the stream's own run.
        dst.append(M, 1, 0, 300, &rows(200_000, 10)).unwrap();
        dst.commit(300).unwrap();
        drop(dst);
        let dst = DiskStore::open(&dir.path().join("b.img"), opts(100)).unwrap();
        let back = dst.checksum(M, 1, 0, &now).unwrap();
        assert_eq!(back.rows, 100_710);
        let scanned = scan_all(&dst, &spec(M, 1, 0)).unwrap();
        assert_eq!(
            scanned.num_rows(),
            100_710,
            "every block reads and verifies"
        );
    }

    /// A sink into an empty stream whose copy ends mid-run: the stream goes
    /// on appending after the copy's last page; a sink dropped unfinished
    /// gives its runs back; a sink whose table was dropped cannot write.
    #[test]
    fn a_sink_hands_its_runs_over_or_gives_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let (_src, dst, export, bytes) = source(dir.path());
        let before = mirror_used(&dst);
        let mut sink = dst.copy_sink(M, 1, 0, 100, export.bytes);
        for b in &bytes[..50] {
            sink.append_unless(b, &[]).unwrap();
        }
        assert!(mirror_used(&dst) > before, "the sink took a run");
        drop(sink);
        assert_eq!(
            mirror_used(&dst),
            before,
            "an unfinished sink gives it back"
        );
        dst.abort(100).unwrap();

        // A small copy goes the ordinary way, into the stream's open run.
        let mut small = dst.copy_sink(M, 1, 0, 99, 1000);
        small.append_unless(&bytes[0], &[]).unwrap();
        small.finish().unwrap();
        let after_small = mirror_used(&dst);
        assert!(after_small - before <= 64 << 10, "one extent at most");
        dst.abort(99).unwrap();

        // Blocks of an xid the target holds are skipped.
        let mut sink = dst.copy_sink(M, 1, 0, 101, export.bytes);
        let mut taken = 0;
        for b in &bytes {
            if sink.append_unless(b, &[6]).unwrap().is_some() {
                taken += 1;
            }
        }
        assert_eq!(taken, bytes.len() - 7);
        sink.finish().unwrap();
        dst.commit(101).unwrap();
        dst.append(M, 1, 0, 102, &rows(200_000, 10)).unwrap();
        dst.commit(102).unwrap();
        assert_eq!(scan_all(&dst, &spec(M, 1, 0)).unwrap().num_rows(), 100_010);

        // The table goes while a copy into it is gathering.
        let mut sink = dst.copy_sink(M, 1, 0, 103, 1 << 30);
        sink.append_unless(&bytes[0], &[]).unwrap();
        dst.drop_table(1).unwrap();
        assert!(sink.finish().is_err());
    }
}
