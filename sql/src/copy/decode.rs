//! The decoder: COPY FROM STDIN bytes (chunks cut anywhere) to record
//! batches of the table's columns, in text, CSV or binary format.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use slicedb_coordinator::write::hash;

use super::binary::{BinaryFramer, Frame};
use super::columns::{bad_utf8_bytes, binary_conv_error, conv_error, Col};
use super::error::{
    CopyError, BAD_COPY_FILE_FORMAT, CHARACTER_NOT_IN_REPERTOIRE, NOT_NULL_VIOLATION,
    PROGRAM_LIMIT_EXCEEDED,
};
use super::fields::{split_plain, unescape_text, Span};
use super::options::{CopyFormat, CopyOptions};
use super::slice_key::{chain_key, key_hashable, KeySplit};

/// Row-end scanner state, carried across chunk boundaries.
#[derive(Default, Clone, Copy)]
struct ScanState {
    in_quote: bool,
    /// the previous byte was an escape; skip this one
    skip: bool,
}

/// Column builders of the rows bound for one output (one slice, or all
/// rows when the decoder does not split by slice).
struct Builders {
    cols: Vec<Col>,
    rows: usize,
}
/// A batch of decoded rows; `slice` is set when the decoder splits by slice
/// ([`CopyDecoder::split_by_slice`]) and then every row belongs to it.
pub struct Decoded {
    pub slice: Option<u32>,
    pub batch: RecordBatch,
}

/// The longest line (row) COPY FROM takes: a longer one fails the COPY
/// with 54000 (the decoder holds at most this much of an unfinished row).
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// Most slices a decoder splits rows into; above this, builders for every
/// slice would hold too much, and the loader hashes rows itself.
pub const MAX_SPLIT_SLICES: u32 = 64;

/// Decodes COPY FROM STDIN data (text, CSV or binary) into record batches.
pub struct CopyDecoder {
    schema: SchemaRef,
    opts: CopyOptions,
    batch_rows: usize,
    /// One per slice when splitting by slice, else one.
    outs: Vec<Builders>,
    split: Option<KeySplit>,
    names: Vec<String>,
    nullable: Vec<bool>,
    /// bytes of an incomplete row
    buf: Vec<u8>,
    scan: ScanState,
    scratch: Vec<u8>,
    spans: Vec<Span>,
    /// input lines consumed (header included), for error messages
    line: u64,
    rows: u64,
    header_pending: bool,
    /// Set in binary format: where the frames are.
    binary: Option<BinaryFramer>,
    ended: bool,
    failed: bool,
}

/// A binary frame: used up (this many bytes), or unfinished (at least
/// this many bytes long).
enum Step {
    Done(usize),
    Need(usize),
}

impl CopyDecoder {
    pub fn new(schema: SchemaRef, options: CopyOptions, batch_rows: usize) -> Self {
        let batch_rows = batch_rows.max(1);
        let cap = batch_rows.min(1 << 16);
        let outs = vec![Builders::new(&schema, cap)];
        let names = schema.fields().iter().map(|f| f.name().clone()).collect();
        let nullable = schema.fields().iter().map(|f| f.is_nullable()).collect();
        let header_pending = options.header;
        let n = schema.fields().len();
        let binary = (options.format == CopyFormat::Binary).then(|| BinaryFramer::new(n));
        Self {
            schema,
            opts: options,
            batch_rows,
            outs,
            split: None,
            names,
            nullable,
            buf: Vec::new(),
            scan: ScanState::default(),
            scratch: Vec::with_capacity(256),
            spans: Vec::with_capacity(n + 1),
            line: 0,
            rows: 0,
            header_pending,
            binary,
            ended: false,
            failed: false,
        }
    }

    /// A decoder for the same table and options that starts past the header:
    /// for decoding other parts of the same input in parallel.
    pub fn fork(&self) -> CopyDecoder {
        let mut d = CopyDecoder::new(self.schema.clone(), self.opts.clone(), self.batch_rows);
        d.header_pending = false;
        if let Some(k) = &self.split {
            d.split_by_slice(k.cols.clone(), k.slices);
        }
        d
    }

    /// Hand out rows split by slice: `key` are the decoded columns of the
    /// distribution key, in key order, hashed as
    /// `slicedb_coordinator::write::hash::slices_for_batch` does. Saves the loader
    /// hashing and regathering every row. Returns false, and changes nothing,
    /// if a key column's type has no direct parser here, there are no key
    /// columns or more than [`MAX_SPLIT_SLICES`] slices, or the input is
    /// in binary format (its rows go to the loader whole, which hashes
    /// them). Call before input.
    pub fn split_by_slice(&mut self, key: Vec<usize>, slices: u32) -> bool {
        let ok = self.binary.is_none()
            && !key.is_empty()
            && (1..=MAX_SPLIT_SLICES).contains(&slices)
            && key.iter().all(|&c| {
                c < self.schema.fields().len() && key_hashable(self.schema.field(c).data_type())
            });
        if ok {
            // Per slice, start smaller: slices fill at about the same pace.
            let cap = (self.batch_rows / slices as usize).clamp(1, 1 << 16);
            self.outs = (0..slices)
                .map(|_| Builders::new(&self.schema, cap))
                .collect();
            self.split = Some(KeySplit { cols: key, slices });
        }
        ok
    }

    /// Whether the input can be cut at any unescaped newline into parts that
    /// decode independently: text format (a CSV quoted field may hold a
    /// newline, so CSV is decoded in one piece).
    pub fn splits_at_newlines(&self) -> bool {
        self.opts.format == CopyFormat::Text
    }

    /// The next row starts on input line `line + 1` (for error messages of
    /// a part of the input decoded on its own).
    pub fn set_line(&mut self, line: u64) {
        self.line = line;
    }

    /// Input lines read so far (the line of the last error, after one).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Data rows decoded so far (header and end marker excluded).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Feed raw CopyData bytes (chunks may split anywhere). Returns the
    /// batches of `batch_rows` rows that filled up.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<RecordBatch>, CopyError> {
        Ok(untag(self.push_sliced(data)?))
    }

    /// End of input: decodes a last row without newline and returns the last
    /// partial batch, if any.
    pub fn finish(&mut self) -> Result<Vec<RecordBatch>, CopyError> {
        Ok(untag(self.finish_sliced()?))
    }

    /// [`push`](Self::push), with each batch's slice when splitting by slice.
    pub fn push_sliced(&mut self, data: &[u8]) -> Result<Vec<Decoded>, CopyError> {
        self.guard()?;
        let r = self.push_inner(data);
        self.failed = r.is_err();
        r
    }

    /// [`finish`](Self::finish), with each batch's slice when splitting by
    /// slice (then one partial batch per slice that has rows left).
    pub fn finish_sliced(&mut self) -> Result<Vec<Decoded>, CopyError> {
        self.guard()?;
        let r = self.finish_inner();
        self.failed = r.is_err();
        r
    }

    fn guard(&self) -> Result<(), CopyError> {
        if self.failed {
            Err(CopyError::new(
                BAD_COPY_FILE_FORMAT,
                "COPY decoder used after an error",
            ))
        } else {
            Ok(())
        }
    }

    fn push_inner(&mut self, data: &[u8]) -> Result<Vec<Decoded>, CopyError> {
        if let Some(framer) = self.binary {
            return self.push_binary(framer, data);
        }
        let mut out = Vec::new();
        if self.ended {
            return Ok(out);
        }
        let mut pos = 0;
        if !self.buf.is_empty() {
            match self.find_row_end(data, 0) {
                None => {
                    self.buf.extend_from_slice(data);
                    self.check_line_len()?;
                    return Ok(out);
                }
                Some(e) => {
                    let mut row = std::mem::take(&mut self.buf);
                    row.extend_from_slice(&data[..e]);
                    let r = self.line_in(&row, &mut out);
                    row.clear();
                    self.buf = row;
                    r?;
                    pos = e + 1;
                }
            }
        }
        // Check the chunk's UTF-8 once; rows inside the valid prefix skip
        // their own check (a chunk may end inside a character).
        let valid = match std::str::from_utf8(&data[pos..]) {
            Ok(_) => data.len(),
            Err(e) => pos + e.valid_up_to(),
        };
        while !self.ended {
            match self.find_row_end(data, pos) {
                None => {
                    self.buf.extend_from_slice(&data[pos..]);
                    self.check_line_len()?;
                    break;
                }
                Some(e) => {
                    self.line_checked(&data[pos..e], e <= valid, &mut out)?;
                    pos = e + 1;
                }
            }
        }
        Ok(out)
    }

    /// Binary input: frames whole in `data` are decoded in place; an
    /// unfinished one is kept, and completed from the next chunks with
    /// exactly the bytes it still lacks.
    fn push_binary(
        &mut self,
        mut framer: BinaryFramer,
        data: &[u8],
    ) -> Result<Vec<Decoded>, CopyError> {
        let mut out = Vec::new();
        let mut pos = 0;
        while !self.buf.is_empty() {
            let mut frame = std::mem::take(&mut self.buf);
            let step = self.binary_frame(&mut framer, &frame, &mut out)?;
            match step {
                Step::Done(_) => {
                    // keep the allocation for the next unfinished frame
                    frame.clear();
                    self.buf = frame;
                }
                Step::Need(n) => {
                    self.buf = frame;
                    let take = (n - self.buf.len()).min(data.len() - pos);
                    self.buf.extend_from_slice(&data[pos..pos + take]);
                    pos += take;
                    if self.buf.len() < n {
                        break;
                    }
                }
            }
        }
        while pos < data.len() && self.buf.is_empty() {
            match self.binary_frame(&mut framer, &data[pos..], &mut out)? {
                Step::Done(n) => pos += n,
                Step::Need(_) => self.buf.extend_from_slice(&data[pos..]),
            }
        }
        self.binary = Some(framer);
        Ok(out)
    }

    /// The binary frame `b` starts with: decoded if whole.
    fn binary_frame(
        &mut self,
        framer: &mut BinaryFramer,
        b: &[u8],
        out: &mut Vec<Decoded>,
    ) -> Result<Step, CopyError> {
        if self.ended {
            return Err(CopyError::new(
                BAD_COPY_FILE_FORMAT,
                "received copy data after EOF marker",
            ));
        }
        match framer.scan(b, &mut self.spans, self.line + 1)? {
            Frame::Need(n) if n > MAX_LINE_BYTES => Err(self.line_too_long()),
            Frame::Need(n) => Ok(Step::Need(n)),
            Frame::Header(n) => Ok(Step::Done(n)),
            Frame::Trailer(n) => {
                self.ended = true;
                Ok(Step::Done(n))
            }
            Frame::Tuple(n) => {
                self.line += 1;
                let o = self.append_row(&b[..n])?;
                self.row_done(o, out)?;
                Ok(Step::Done(n))
            }
        }
    }

    /// An unfinished row past [`MAX_LINE_BYTES`] fails the COPY.
    fn check_line_len(&mut self) -> Result<(), CopyError> {
        if self.buf.len() <= MAX_LINE_BYTES {
            return Ok(());
        }
        Err(self.line_too_long())
    }

    fn line_too_long(&mut self) -> CopyError {
        self.buf = Vec::new();
        CopyError::new(
            PROGRAM_LIMIT_EXCEEDED,
            format!(
                "COPY line {} is longer than {} MiB, the most a line may hold",
                self.line + 1,
                MAX_LINE_BYTES >> 20
            ),
        )
    }

    fn finish_inner(&mut self) -> Result<Vec<Decoded>, CopyError> {
        let mut out = Vec::new();
        if let Some(framer) = &self.binary {
            // Like PostgreSQL, input may end without the trailer, but not
            // inside a frame or before the header.
            if !self.ended && !framer.header_done() && self.buf.is_empty() {
                return Err(CopyError::new(
                    BAD_COPY_FILE_FORMAT,
                    "COPY file signature not recognized",
                ));
            }
            if !self.buf.is_empty() {
                return Err(CopyError::new(
                    BAD_COPY_FILE_FORMAT,
                    format!("unexpected EOF in COPY data, line {}", self.line + 1),
                ));
            }
        } else if !self.ended && !self.buf.is_empty() {
            if self.scan.in_quote {
                return Err(CopyError::new(
                    BAD_COPY_FILE_FORMAT,
                    format!("unterminated CSV quoted field, line {}", self.line + 1),
                ));
            }
            let row = std::mem::take(&mut self.buf);
            self.line_in(&row, &mut out)?;
        }
        self.ended = true;
        for o in 0..self.outs.len() {
            if self.outs[o].rows > 0 {
                out.push(self.flush(o)?);
            }
        }
        Ok(out)
    }

    /// Find the '\n' ending the row that continues at `data[from..]`.
    #[inline]
    fn find_row_end(&mut self, data: &[u8], from: usize) -> Option<usize> {
        let mut st = self.scan;
        let mut i = from;
        let n = data.len();
        match self.opts.format {
            CopyFormat::Text => {
                if st.skip && i < n {
                    st.skip = false;
                    i += 1;
                }
                // Jump from one newline or backslash to the next (SIMD).
                while i < n {
                    let Some(k) = memchr::memchr2(b'\n', b'\\', &data[i..]) else {
                        break;
                    };
                    let j = i + k;
                    if data[j] == b'\n' {
                        self.scan = ScanState::default();
                        return Some(j);
                    }
                    if j + 1 < n {
                        i = j + 2;
                    } else {
                        st.skip = true;
                        break;
                    }
                }
            }
            CopyFormat::Csv | CopyFormat::Binary => {
                let (q, e) = (self.opts.quote, self.opts.escape);
                while i < n {
                    let b = data[i];
                    if st.skip {
                        st.skip = false;
                    } else if st.in_quote {
                        if b == e && e != q {
                            st.skip = true;
                        } else if b == q {
                            st.in_quote = false;
                        }
                    } else if b == b'\n' {
                        self.scan = ScanState::default();
                        return Some(i);
                    } else if b == q {
                        st.in_quote = true;
                    }
                    i += 1;
                }
            }
        }
        self.scan = st;
        None
    }

    /// One input line (without its '\n').
    fn line_in(&mut self, line: &[u8], out: &mut Vec<Decoded>) -> Result<(), CopyError> {
        self.line_checked(line, false, out)
    }

    /// One input line; `utf8_ok`: already known to be valid UTF-8.
    #[inline]
    fn line_checked(
        &mut self,
        line: &[u8],
        utf8_ok: bool,
        out: &mut Vec<Decoded>,
    ) -> Result<(), CopyError> {
        let line = match line {
            [rest @ .., b'\r'] => rest,
            l => l,
        };
        self.line += 1;
        if self.header_pending {
            self.header_pending = false;
            return Ok(());
        }
        if line == b"\\." {
            self.ended = true;
            return Ok(());
        }
        if !utf8_ok && std::str::from_utf8(line).is_err() {
            return Err(CopyError::new(
                CHARACTER_NOT_IN_REPERTOIRE,
                format!(
                    "invalid byte sequence for encoding \"UTF8\": {}, line {}",
                    bad_utf8_bytes(line),
                    self.line
                ),
            ));
        }
        match self.opts.format {
            CopyFormat::Csv => self.split_csv(line)?,
            CopyFormat::Text | CopyFormat::Binary => self.split_text(line)?,
        }
        let o = self.append_row(line)?;
        self.row_done(o, out)
    }

    /// A row was appended to output `o`: hand its batch on when full.
    fn row_done(&mut self, o: usize, out: &mut Vec<Decoded>) -> Result<(), CopyError> {
        self.rows += 1;
        self.outs[o].rows += 1;
        if self.outs[o].rows >= self.batch_rows {
            out.push(self.flush(o)?);
        }
        Ok(())
    }

    fn split_text(&mut self, row: &[u8]) -> Result<(), CopyError> {
        let delim = self.opts.delimiter;
        let null = self.opts.null.as_bytes();
        self.scratch.clear();
        self.spans.clear();
        if split_plain(row, delim, null, &mut self.spans) {
            return Ok(());
        }
        self.spans.clear();
        let n = row.len();
        let mut start = 0;
        loop {
            let mut i = start;
            let mut has_bs = false;
            while i < n {
                let b = row[i];
                if b == delim {
                    break;
                }
                if b == b'\\' {
                    has_bs = true;
                    i += 2;
                    continue;
                }
                i += 1;
            }
            let end = i.min(n);
            let raw = &row[start..end];
            let span = if raw == null {
                Span::Null
            } else if !has_bs {
                Span::Row(start, end)
            } else {
                let s0 = self.scratch.len();
                if unescape_text(raw, &mut self.scratch)
                    && std::str::from_utf8(&self.scratch[s0..]).is_err()
                {
                    return Err(CopyError::new(
                        CHARACTER_NOT_IN_REPERTOIRE,
                        format!(
                            "invalid byte sequence for encoding \"UTF8\": {}, line {}",
                            bad_utf8_bytes(&self.scratch[s0..]),
                            self.line
                        ),
                    ));
                }
                Span::Scratch(s0, self.scratch.len())
            };
            self.spans.push(span);
            if end >= n {
                break;
            }
            start = end + 1;
        }
        Ok(())
    }

    fn split_csv(&mut self, row: &[u8]) -> Result<(), CopyError> {
        let delim = self.opts.delimiter;
        let (q, e) = (self.opts.quote, self.opts.escape);
        let null = self.opts.null.as_bytes();
        self.scratch.clear();
        self.spans.clear();
        let n = row.len();
        let mut i = 0;
        loop {
            let start = i;
            let mut seg = i;
            let mut saw_quote = false;
            let s0 = self.scratch.len();
            loop {
                while i < n && row[i] != delim && row[i] != q {
                    i += 1;
                }
                if i < n && row[i] == q {
                    saw_quote = true;
                    self.scratch.extend_from_slice(&row[seg..i]);
                    i += 1;
                    loop {
                        if i >= n {
                            return Err(CopyError::new(
                                BAD_COPY_FILE_FORMAT,
                                format!("unterminated CSV quoted field, line {}", self.line),
                            ));
                        }
                        let c = row[i];
                        if c == e && i + 1 < n && (row[i + 1] == q || row[i + 1] == e) {
                            self.scratch.push(row[i + 1]);
                            i += 2;
                            continue;
                        }
                        if c == q {
                            i += 1;
                            break;
                        }
                        self.scratch.push(c);
                        i += 1;
                    }
                    seg = i;
                    continue;
                }
                break;
            }
            let span = if saw_quote {
                self.scratch.extend_from_slice(&row[seg..i]);
                Span::Scratch(s0, self.scratch.len())
            } else if &row[start..i] == null {
                Span::Null
            } else {
                Span::Row(start, i)
            };
            self.spans.push(span);
            if i >= n {
                break;
            }
            i += 1; // delimiter
        }
        Ok(())
    }

    /// The output a split row goes to: its slice, or 0 when not splitting.
    /// A key value that does not parse picks output 0: `append_row` then
    /// reports the row's first bad field, in column order.
    #[inline]
    fn output_of(&self, row: &[u8]) -> usize {
        let Some(k) = &self.split else { return 0 };
        let mut h = hash::SEED;
        for &c in &k.cols {
            let v = match self.spans.get(c) {
                None => return 0,
                Some(Span::Null) => {
                    hash::chain_null(&mut h);
                    continue;
                }
                Some(&Span::Row(a, b)) => &row[a..b],
                Some(&Span::Scratch(a, b)) => &self.scratch[a..b],
            };
            if chain_key(self.schema.field(c).data_type(), v, &mut h).is_err() {
                return 0;
            }
        }
        hash::slice_of(h, k.slices) as usize
    }

    /// Append the split row to its output's builders; returns the output.
    fn append_row(&mut self, row: &[u8]) -> Result<usize, CopyError> {
        let ncols = self.schema.fields().len();
        if self.spans.len() > ncols {
            return Err(CopyError::new(
                BAD_COPY_FILE_FORMAT,
                format!("extra data after last expected column, line {}", self.line),
            ));
        }
        if self.spans.len() < ncols {
            return Err(CopyError::new(
                BAD_COPY_FILE_FORMAT,
                format!(
                    "missing data for column \"{}\", line {}",
                    self.names[self.spans.len()],
                    self.line
                ),
            ));
        }
        let o = self.output_of(row);
        let cols = &mut self.outs[o].cols;
        for (c, span) in self.spans.iter().enumerate() {
            let v = match *span {
                Span::Null => {
                    if !self.nullable[c] {
                        return Err(CopyError::new(
                            NOT_NULL_VIOLATION,
                            format!(
                                "null value in column \"{}\" violates not-null constraint, line {}",
                                self.names[c], self.line
                            ),
                        ));
                    }
                    cols[c].append_null();
                    continue;
                }
                Span::Row(a, b) => &row[a..b],
                Span::Scratch(a, b) => &self.scratch[a..b],
            };
            if self.binary.is_some() {
                if let Err(k) = cols[c].append_binary(v) {
                    return Err(binary_conv_error(
                        k,
                        self.schema.field(c).data_type(),
                        v,
                        self.line,
                        &self.names[c],
                    ));
                }
                continue;
            }
            if let Err(k) = cols[c].append(v) {
                return Err(conv_error(
                    k,
                    self.schema.field(c).data_type(),
                    v,
                    self.line,
                    &self.names[c],
                ));
            }
        }
        Ok(o)
    }

    /// Finish output `o`'s batch and start its next one.
    fn flush(&mut self, o: usize) -> Result<Decoded, CopyError> {
        let cap = self.batch_rows.min(1 << 16);
        let out = &mut self.outs[o];
        out.rows = 0;
        let mut arrays = Vec::with_capacity(out.cols.len());
        for (i, col) in out.cols.iter_mut().enumerate() {
            let f = self.schema.field(i);
            let a = col.finish(f.data_type(), f.name())?;
            // finish() leaves empty builders that would grow by doubling, a
            // copy each time: start the next batch at this one's size.
            let text_bytes = match a.data_type() {
                DataType::Utf8 => a.as_string::<i32>().value_data().len(),
                DataType::LargeUtf8 => a.as_string::<i64>().value_data().len(),
                _ => 0,
            };
            *col = Col::sized(f.data_type(), cap, text_bytes + text_bytes / 8);
            arrays.push(a);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)
            .map_err(|e| CopyError::new("XX000", format!("COPY: cannot build batch: {e}")))?;
        Ok(Decoded {
            slice: self.split.as_ref().map(|_| o as u32),
            batch,
        })
    }
}

impl Builders {
    fn new(schema: &SchemaRef, cap: usize) -> Builders {
        Builders {
            cols: schema
                .fields()
                .iter()
                .map(|f| Col::new(f.data_type(), cap))
                .collect(),
            rows: 0,
        }
    }
}

fn untag(out: Vec<Decoded>) -> Vec<RecordBatch> {
    out.into_iter().map(|d| d.batch).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::encode::encode_rows;
    use crate::copy::testing::{col_of, concat, decode, decode_chunks, err, schema};
    use datafusion::arrow::datatypes::{Int64Type, TimeUnit};

    #[test]
    fn chunk_boundaries_at_every_byte() {
        let s = schema(vec![
            ("a", DataType::Int32, true),
            ("b", DataType::Utf8, true),
            ("c", DataType::Float64, true),
        ]);
        let text = "1\tä\\tö\\\\\\n€\t1.5\r\n\\N\t\\x41\\101\\N\t-2\n3\t\\N\t\\N\n\\.\n";
        let mut csv_opts = CopyOptions::csv();
        csv_opts.header = true;
        let csv = "a,b,c\r\n1,\"multi\nline, \"\"q\"\" €\",1.5\r\n,,\n3,\"\",2e3\n4,x\"y\"z,5";
        for (opts, input) in [(CopyOptions::text(), text), (csv_opts, csv)] {
            let whole = concat(&decode(&s, &opts, input).unwrap());
            let bytes = input.as_bytes();
            for cut in 0..=bytes.len() {
                let (x, y) = bytes.split_at(cut);
                for rows in [1, 2, 1000] {
                    let got = concat(&decode_chunks(&s, &opts, &[x, y], rows).unwrap());
                    assert_eq!(got, whole, "cut at {cut}, batch {rows}");
                }
            }
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(
                concat(&decode_chunks(&s, &opts, &singles, 2).unwrap()),
                whole
            );
        }
        let t = concat(&decode(&s, &CopyOptions::text(), text).unwrap());
        assert_eq!(t.num_rows(), 3);
        assert_eq!(t.column(1).as_string::<i32>().value(0), "ä\tö\\\n€");
        assert_eq!(t.column(1).as_string::<i32>().value(1), "AAN");
        let mut o = CopyOptions::csv();
        o.header = true;
        let c = concat(&decode(&s, &o, csv).unwrap());
        assert_eq!(c.num_rows(), 4);
        assert_eq!(
            c.column(1).as_string::<i32>().value(0),
            "multi\nline, \"q\" €"
        );
        assert!(c.column(0).is_null(1) && c.column(1).is_null(1) && c.column(2).is_null(1));
        assert_eq!(c.column(1).as_string::<i32>().value(2), "");
        assert!(!c.column(1).is_null(2));
        assert_eq!(c.column(1).as_string::<i32>().value(3), "xyz");
    }

    /// A line longer than the cap fails with 54000 naming the line, in
    /// whatever chunks it comes; memory stays at the cap.
    #[test]
    fn a_line_past_the_cap_fails_the_copy() {
        let kv = schema(vec![
            ("k", DataType::Int64, true),
            ("v", DataType::Utf8, true),
        ]);
        let mut d = CopyDecoder::new(kv, CopyOptions::text(), 1024);
        d.push(b"1\tshort\n2\t").unwrap();
        let chunk = vec![b'x'; 1 << 20];
        let mut failed = None;
        for _ in 0..=(MAX_LINE_BYTES >> 20) {
            if let Err(e) = d.push(&chunk) {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("a line past the cap must fail");
        assert_eq!(e.sqlstate, "54000");
        assert!(
            e.message.contains("COPY line 2 is longer than 64 MiB"),
            "{e}"
        );
    }

    #[test]
    fn batches_fill_as_pushed() {
        let s = schema(vec![("a", DataType::Int64, false)]);
        let mut d = CopyDecoder::new(s, CopyOptions::text(), 2);
        assert_eq!(d.push(b"1\n2\n3").unwrap().len(), 1);
        assert_eq!(d.rows(), 2);
        let b = d.push(b"\n4\n5\n").unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].column(0).as_primitive::<Int64Type>().values(), &[3, 4]);
        let last = d.finish().unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].num_rows(), 1);
        assert_eq!(d.rows(), 5);
        // nothing pending: no empty batch
        let mut d = CopyDecoder::new(
            schema(vec![("a", DataType::Int64, true)]),
            CopyOptions::text(),
            2,
        );
        assert_eq!(d.push(b"1\n2\n").unwrap().len(), 1);
        assert!(d.finish().unwrap().is_empty());
    }

    #[test]
    fn end_marker_is_accepted() {
        let s = schema(vec![("a", DataType::Int32, true)]);
        for input in [
            "1\n2\n\\.\n",
            "1\n2\n\\.",
            "1\n2\n\\.\r\n",
            "1\n2\n\\.\nignored\n",
        ] {
            let b = concat(&decode(&s, &CopyOptions::text(), input).unwrap());
            assert_eq!(b.num_rows(), 2, "{input:?}");
        }
        let b = concat(&decode(&s, &CopyOptions::csv(), "1\n2\n\\.\n").unwrap());
        assert_eq!(b.num_rows(), 2);
    }

    #[test]
    fn header_is_skipped_and_counted_as_line_1() {
        let s = schema(vec![
            ("a", DataType::Int32, true),
            ("b", DataType::Utf8, true),
        ]);
        let mut o = CopyOptions::text();
        o.header = true;
        let b = concat(&decode(&s, &o, "a\tb\n1\tx\n").unwrap());
        assert_eq!(b.num_rows(), 1);
        let e = err(&s, &o, "a\tb\n1\tx\nbad\ty\n");
        assert_eq!(e.sqlstate, "22P02");
        assert!(e.message.ends_with("line 3, column a"), "{}", e.message);
        let out = encode_rows(&[b], &o).unwrap();
        assert_eq!(out, b"a\tb\n1\tx\n");
    }

    #[test]
    fn errors_carry_sqlstate_and_line() {
        let s = schema(vec![
            ("a", DataType::Int32, true),
            ("b", DataType::Utf8, true),
            ("n", DataType::Int64, false),
        ]);
        let t = CopyOptions::text();
        let cases: Vec<(&[u8], &str, &str)> =
            vec![
            (
                b"1\tx\t1\nabc\tx\t1\n",
                "22P02",
                "invalid input syntax for type integer: \"abc\", line 2, column a",
            ),
            (
                b"99999999999\tx\t1\n",
                "22003",
                "value \"99999999999\" is out of range for type integer, line 1, column a",
            ),
            (
                b"1\tx\t99999999999999999999\n",
                "22003",
                "value \"99999999999999999999\" is out of range for type bigint, line 1, column n",
            ),
            (b"1\tx\t1\n1\n", "22P04", "missing data for column \"b\", line 2"),
            (b"1\tx\n", "22P04", "missing data for column \"n\", line 1"),
            (
                b"1\tx\t1\t2\n",
                "22P04",
                "extra data after last expected column, line 1",
            ),
            (
                b"1\tx\t1\n1\t\xff\t1\n",
                "22021",
                "invalid byte sequence for encoding \"UTF8\": 0xff, line 2",
            ),
            (
                b"1\t\\xff\t1\n",
                "22021",
                "invalid byte sequence for encoding \"UTF8\": 0xff, line 1",
            ),
            (
                b"1\tx\t\\N\n",
                "23502",
                "null value in column \"n\" violates not-null constraint, line 1",
            ),
        ];
        for (input, state, msg) in cases {
            let e = decode_chunks(&s, &t, &[input], 10).expect_err(&String::from_utf8_lossy(input));
            assert_eq!((e.sqlstate, e.message.as_str()), (state, msg));
        }
        let c = CopyOptions::csv();
        let e = err(&s, &c, "1,x,1\n1,\"unterminated,1\n");
        assert_eq!(e.sqlstate, "22P04");
        assert!(
            e.message.contains("unterminated CSV quoted field"),
            "{}",
            e.message
        );
        let e = err(&s, &c, "1,x,\n");
        assert_eq!(e.sqlstate, "23502");
        // typed errors
        let typed = |dt: DataType, v: &str| {
            let s = schema(vec![("c", dt, true)]);
            err(&s, &CopyOptions::text(), &format!("{v}\n"))
        };
        assert_eq!(typed(DataType::Boolean, "maybe").sqlstate, "22P02");
        assert_eq!(
            typed(DataType::Boolean, "maybe").message,
            "invalid input syntax for type boolean: \"maybe\", line 1, column c"
        );
        assert_eq!(typed(DataType::Float64, "1.2.3").sqlstate, "22P02");
        assert_eq!(typed(DataType::Float64, "1e400").sqlstate, "22003");
        assert_eq!(typed(DataType::Float32, "1e40").sqlstate, "22003");
        assert_eq!(typed(DataType::Int16, "40000").sqlstate, "22003");
        assert_eq!(typed(DataType::UInt8, "-1").sqlstate, "22003");
        assert_eq!(typed(DataType::Int8, "1x").sqlstate, "22P02");
        assert_eq!(typed(DataType::Int32, "").sqlstate, "22P02");
        assert_eq!(
            typed(DataType::Decimal128(5, 2), "1234.5").sqlstate,
            "22003"
        );
        assert_eq!(typed(DataType::Decimal128(5, 2), "1e3").sqlstate, "22003");
        assert_eq!(typed(DataType::Decimal128(5, 2), "abc").sqlstate, "22P02");
        assert_eq!(typed(DataType::Decimal128(5, 2), "1.2.3").sqlstate, "22P02");
        // dates: PostgreSQL uses 22007 (syntax) and 22008 (field out of range)
        assert_eq!(typed(DataType::Date32, "2024-13-01").sqlstate, "22008");
        assert_eq!(typed(DataType::Date32, "2023-02-29").sqlstate, "22008");
        assert_eq!(typed(DataType::Date32, "yesterday").sqlstate, "22007");
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        assert_eq!(typed(ts.clone(), "2024-01-01 25:00:00").sqlstate, "22008");
        assert_eq!(typed(ts, "2024-01-01 x").sqlstate, "22007");
        // decoder refuses further input after an error
        let mut d = CopyDecoder::new(s.clone(), t.clone(), 10);
        assert!(d.push(b"x\tx\t1\n").is_err());
        assert!(d.push(b"1\tx\t1\n").is_err());
    }

    #[test]
    fn line_numbers_count_csv_rows_and_chunks() {
        let s = schema(vec![
            ("a", DataType::Int32, true),
            ("b", DataType::Utf8, true),
        ]);
        let input = b"1,\"two\nlines\"\n2,x\n3,y\nz,w\n";
        for cut in 0..input.len() {
            let (x, y) = input.split_at(cut);
            let e = decode_chunks(&s, &CopyOptions::csv(), &[x, y], 2).unwrap_err();
            assert_eq!(e.sqlstate, "22P02");
            assert!(e.message.ends_with(", line 4, column a"), "{}", e.message);
        }
    }

    #[test]
    fn csv_quoting_edge_cases() {
        let s = schema(vec![
            ("a", DataType::Utf8, true),
            ("b", DataType::Utf8, true),
        ]);
        let c = CopyOptions::csv();
        let b = concat(
            &decode(
                &s,
                &c,
                "\"\",\n\"a,b\",\"x\"\"y\"\n ab ,\"\"\"\"\nab\"c,d\"e,\"\r\n\"\n\"\\\",\"\\.\"\n",
            )
            .unwrap(),
        );
        let col = |c: usize, r: usize| {
            let a = b.column(c).as_string::<i32>();
            (!a.is_null(r)).then(|| a.value(r).to_string())
        };
        assert_eq!(col(0, 0).as_deref(), Some(""));
        assert_eq!(col(1, 0), None);
        assert_eq!(col(0, 1).as_deref(), Some("a,b"));
        assert_eq!(col(1, 1).as_deref(), Some("x\"y"));
        assert_eq!(col(0, 2).as_deref(), Some(" ab "));
        assert_eq!(col(1, 2).as_deref(), Some("\""));
        assert_eq!(col(0, 3).as_deref(), Some("abc,de"));
        assert_eq!(col(1, 3).as_deref(), Some("\r\n"));
        assert_eq!(col(0, 4).as_deref(), Some("\\"));
        assert_eq!(col(1, 4).as_deref(), Some("\\."));
        // encode back: empty string quoted, NULL empty, specials quoted
        let out = String::from_utf8(encode_rows(std::slice::from_ref(&b), &c).unwrap()).unwrap();
        assert_eq!(
            out,
            "\"\",\n\"a,b\",\"x\"\"y\"\n ab ,\"\"\"\"\n\"abc,de\",\"\r\n\"\n\\,\"\\.\"\n"
        );
        assert_eq!(concat(&decode(&s, &c, &out).unwrap()), b);

        // custom quote / escape / delimiter / null
        let o = CopyOptions {
            format: CopyFormat::Csv,
            delimiter: b';',
            null: "NULL".into(),
            header: false,
            quote: b'\'',
            escape: b'\\',
        };
        let b = concat(&decode(&s, &o, "'it\\'s;\\\\';NULL\n'NULL';\n").unwrap());
        assert_eq!(col_of(&b, 0, 0).as_deref(), Some("it's;\\"));
        assert_eq!(col_of(&b, 1, 0), None);
        assert_eq!(col_of(&b, 0, 1).as_deref(), Some("NULL"));
        assert_eq!(col_of(&b, 1, 1).as_deref(), Some(""));
        let out = String::from_utf8(encode_rows(std::slice::from_ref(&b), &o).unwrap()).unwrap();
        assert_eq!(out, "'it\\'s;\\\\';NULL\n'NULL';\n");
    }
}
