//! PostgreSQL's binary COPY format: the header (an 11-byte signature,
//! 32-bit flags, a header extension skipped), one tuple per row (a 16-bit
//! field count, then each field as a 32-bit length, -1 for NULL, and that
//! many bytes of the value in its type's binary form, `binval.rs`), and
//! the trailer (a field count of -1). All integers are big-endian.
//!
//! It owns the framing, read ([`BinaryFramer`], driven by `decode.rs`) and
//! written ([`write_header`], [`row_writer`], [`TRAILER`], used by
//! `encode.rs`), and which column types binary COPY can carry. It never
//! buffers input itself: the decoder keeps an unfinished frame, and the
//! framer only says how long the frame is, so the decoder holds at most
//! one row (up to its cap) whatever the field lengths claim.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Float16Type, Float32Type, Float64Type,
    Int16Type, Int32Type, Int64Type, Int8Type, Schema, Time32MillisecondType, Time32SecondType,
    Time64MicrosecondType, Time64NanosecondType, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use datafusion::arrow::record_batch::RecordBatch;

use super::binval::{send_date, send_numeric, send_timestamp, unit_to_micros};
use super::columns::Col;
use super::error::{CopyError, BAD_COPY_FILE_FORMAT, FEATURE_NOT_SUPPORTED};
use super::fields::Span;

/// The signature every binary COPY stream starts with.
pub(super) const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags and header extension length.
const HEADER_LEN: usize = 19;
/// The field count that ends the data.
pub(super) const TRAILER: [u8; 2] = [0xff, 0xff];
/// Flag bit 16: each tuple carries an OID (refused, as PostgreSQL 12+ does).
const FLAG_OIDS: u32 = 1 << 16;
/// Flag bits 17-31 are critical: a reader must refuse what it does not know.
const CRITICAL_FLAGS: u32 = 0xfffe_0000;
/// The longest header extension taken (PostgreSQL defines none).
const MAX_EXTENSION: usize = 1 << 20;

/// What the input at hand starts with.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame {
    /// An unfinished frame that is at least this many bytes long.
    Need(usize),
    /// The header, this many bytes.
    Header(usize),
    /// A tuple of this many bytes; its fields are in the spans.
    Tuple(usize),
    /// The trailer, this many bytes.
    Trailer(usize),
}

/// Finds the frames of a binary COPY stream, one at a time.
#[derive(Debug, Clone, Copy)]
pub(super) struct BinaryFramer {
    header_done: bool,
    ncols: usize,
}

fn bad(message: String) -> CopyError {
    CopyError::new(BAD_COPY_FILE_FORMAT, message)
}

impl BinaryFramer {
    pub(super) fn new(ncols: usize) -> BinaryFramer {
        BinaryFramer {
            header_done: false,
            ncols,
        }
    }

    pub(super) fn header_done(&self) -> bool {
        self.header_done
    }

    /// The frame `b` starts with (the header first, then tuples); `line`
    /// is the row a tuple would be, for error messages. Fills `spans` with
    /// a tuple's fields, as ranges of `b`.
    pub(super) fn scan(
        &mut self,
        b: &[u8],
        spans: &mut Vec<Span>,
        line: u64,
    ) -> Result<Frame, CopyError> {
        if !self.header_done {
            return self.scan_header(b);
        }
        if b.len() < 2 {
            return Ok(Frame::Need(2));
        }
        let count = i16::from_be_bytes([b[0], b[1]]);
        if count == -1 {
            return Ok(Frame::Trailer(2));
        }
        if count < 0 || count as usize != self.ncols {
            return Err(bad(format!(
                "row field count is {count}, expected {}, line {line}",
                self.ncols
            )));
        }
        spans.clear();
        let mut at = 2;
        for _ in 0..self.ncols {
            let Some(len) = b.get(at..at + 4) else {
                return Ok(Frame::Need(at + 4));
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            at += 4;
            if len == -1 {
                spans.push(Span::Null);
                continue;
            }
            let len = usize::try_from(len)
                .map_err(|_| bad(format!("invalid field size {len}, line {line}")))?;
            if b.len() < at + len {
                return Ok(Frame::Need(at + len));
            }
            spans.push(Span::Row(at, at + len));
            at += len;
        }
        Ok(Frame::Tuple(at))
    }

    fn scan_header(&mut self, b: &[u8]) -> Result<Frame, CopyError> {
        let n = b.len().min(SIGNATURE.len());
        if b[..n] != SIGNATURE[..n] {
            return Err(bad("COPY file signature not recognized".into()));
        }
        if b.len() < HEADER_LEN {
            return Ok(Frame::Need(HEADER_LEN));
        }
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let flags = word(11);
        if flags & FLAG_OIDS != 0 {
            return Err(bad("invalid COPY file header (WITH OIDS)".into()));
        }
        if flags & CRITICAL_FLAGS != 0 {
            return Err(bad("unrecognized critical flags in COPY file header".into()));
        }
        let ext = word(15) as usize;
        if ext > MAX_EXTENSION {
            return Err(bad(format!(
                "COPY file header extension of {ext} bytes is longer than the {MAX_EXTENSION} bytes slicedb reads"
            )));
        }
        if b.len() < HEADER_LEN + ext {
            return Ok(Frame::Need(HEADER_LEN + ext));
        }
        self.header_done = true;
        Ok(Frame::Header(HEADER_LEN + ext))
    }
}

/// Write the header: signature, no flags, no extension.
pub(super) fn write_header(out: &mut Vec<u8>) {
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
}

/// Whether binary COPY can carry the columns of `schema`, in (`to`: COPY
/// TO, else COPY FROM); 0A000 naming the first that it cannot.
pub fn check_binary_columns(schema: &Schema, to: bool) -> Result<(), CopyError> {
    for f in schema.fields() {
        let ok = if to {
            sendable(f.data_type())
        } else {
            Col::reads_binary(f.data_type())
        };
        if !ok {
            return Err(CopyError::new(
                FEATURE_NOT_SUPPORTED,
                format!(
                    "COPY {} (FORMAT binary) of column \"{}\" of type {} is not supported",
                    if to { "TO" } else { "FROM" },
                    f.name(),
                    f.data_type()
                ),
            ));
        }
    }
    Ok(())
}

fn sendable(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(..)
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::Boolean
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(..)
            | DataType::Time32(TimeUnit::Second | TimeUnit::Millisecond)
            | DataType::Time64(..)
            | DataType::Null
    )
}

type SendValue<'a> = Box<dyn Fn(usize, &mut Vec<u8>) + 'a>;

/// A writer of one column's values in binary form, as the PostgreSQL type
/// a query's column of that type is described as (arrow-pg's
/// `into_pg_type`): Int8 as int2, UInt8/16/32 widened to int2/int4/int8,
/// UInt64 as numeric, timestamps in microseconds (nanoseconds rounded).
fn send_value(array: &dyn Array) -> Result<SendValue<'_>, CopyError> {
    macro_rules! int {
        ($t:ty, $as:ty) => {{
            let a = array.as_primitive::<$t>();
            Box::new(move |i, out: &mut Vec<u8>| {
                out.extend_from_slice(&(a.value(i) as $as).to_be_bytes())
            })
        }};
    }
    macro_rules! time {
        ($t:ty, $micros:expr) => {{
            let a = array.as_primitive::<$t>();
            let micros = $micros;
            Box::new(move |i, out: &mut Vec<u8>| {
                out.extend_from_slice(&micros(a.value(i) as i64).to_be_bytes())
            })
        }};
    }
    Ok(match array.data_type() {
        DataType::Int8 => int!(Int8Type, i16),
        DataType::Int16 => int!(Int16Type, i16),
        DataType::Int32 => int!(Int32Type, i32),
        DataType::Int64 => int!(Int64Type, i64),
        DataType::UInt8 => int!(UInt8Type, i16),
        DataType::UInt16 => int!(UInt16Type, i32),
        DataType::UInt32 => int!(UInt32Type, i64),
        DataType::UInt64 => {
            let a = array.as_primitive::<UInt64Type>();
            Box::new(move |i, out: &mut Vec<u8>| send_numeric(a.value(i) as i128, 0, out))
        }
        DataType::Float16 => {
            let a = array.as_primitive::<Float16Type>();
            Box::new(move |i, out: &mut Vec<u8>| {
                out.extend_from_slice(&a.value(i).to_f32().to_be_bytes())
            })
        }
        DataType::Float32 => int!(Float32Type, f32),
        DataType::Float64 => int!(Float64Type, f64),
        DataType::Decimal128(_, s) => {
            let a = array.as_primitive::<Decimal128Type>();
            let s = *s;
            Box::new(move |i, out: &mut Vec<u8>| send_numeric(a.value(i), s, out))
        }
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            Box::new(move |i, out: &mut Vec<u8>| out.extend_from_slice(a.value(i).as_bytes()))
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            Box::new(move |i, out: &mut Vec<u8>| out.extend_from_slice(a.value(i).as_bytes()))
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            Box::new(move |i, out: &mut Vec<u8>| out.extend_from_slice(a.value(i).as_bytes()))
        }
        DataType::Binary => {
            let a = array.as_binary::<i32>();
            Box::new(move |i, out: &mut Vec<u8>| out.extend_from_slice(a.value(i)))
        }
        DataType::LargeBinary => {
            let a = array.as_binary::<i64>();
            Box::new(move |i, out: &mut Vec<u8>| out.extend_from_slice(a.value(i)))
        }
        DataType::BinaryView => {
            let a = array.as_binary_view();
            Box::new(move |i, out: &mut Vec<u8>| out.extend_from_slice(a.value(i)))
        }
        DataType::Boolean => {
            let a = array.as_boolean();
            Box::new(move |i, out: &mut Vec<u8>| out.push(a.value(i) as u8))
        }
        DataType::Date32 => {
            let a = array.as_primitive::<Date32Type>();
            Box::new(move |i, out: &mut Vec<u8>| send_date(a.value(i), out))
        }
        DataType::Date64 => {
            let a = array.as_primitive::<Date64Type>();
            Box::new(move |i, out: &mut Vec<u8>| {
                let days = a.value(i).div_euclid(86_400_000);
                send_date(i32::try_from(days).unwrap_or(i32::MAX), out)
            })
        }
        DataType::Timestamp(unit, _) => {
            let unit = *unit;
            let values = match unit {
                TimeUnit::Second => array.as_primitive::<TimestampSecondType>().values(),
                TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().values(),
                TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().values(),
                TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().values(),
            };
            Box::new(move |i, out: &mut Vec<u8>| {
                // Past PostgreSQL's range (only seconds and milliseconds
                // can be): its infinity.
                let micros = unit_to_micros(values[i], unit).unwrap_or(if values[i] < 0 {
                    i64::MIN
                } else {
                    i64::MAX
                });
                send_timestamp(micros, out)
            })
        }
        DataType::Time32(TimeUnit::Second) => time!(Time32SecondType, |v: i64| v * 1_000_000),
        DataType::Time32(TimeUnit::Millisecond) => {
            time!(Time32MillisecondType, |v: i64| v * 1_000)
        }
        DataType::Time64(TimeUnit::Microsecond) => time!(Time64MicrosecondType, |v: i64| v),
        DataType::Time64(TimeUnit::Nanosecond) => {
            time!(Time64NanosecondType, |v: i64| (v + 500).div_euclid(1_000))
        }
        // every value is NULL; nothing is ever written
        DataType::Null => Box::new(|_, _: &mut Vec<u8>| {}),
        other => {
            return Err(CopyError::new(
                FEATURE_NOT_SUPPORTED,
                format!("COPY TO (FORMAT binary) of type {other} is not supported"),
            ))
        }
    })
}

/// Writes the tuples of one batch.
pub(super) struct RowWriter<'a> {
    batch: &'a RecordBatch,
    values: Vec<SendValue<'a>>,
}

/// A writer of `batch`'s rows as binary tuples.
pub(super) fn row_writer(batch: &RecordBatch) -> Result<RowWriter<'_>, CopyError> {
    let values = batch
        .columns()
        .iter()
        .map(|c| send_value(c.as_ref()))
        .collect::<Result<_, _>>()?;
    Ok(RowWriter { batch, values })
}

impl RowWriter<'_> {
    /// Append row `row` as one tuple.
    pub(super) fn write(&self, row: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.values.len() as i16).to_be_bytes());
        for (c, value) in self.values.iter().enumerate() {
            if self.batch.column(c).is_null(row) {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            }
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            value(row, out);
            let len = (out.len() - at - 4) as i32;
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut h = Vec::new();
        write_header(&mut h);
        h
    }

    #[test]
    fn header_frames() {
        let mut f = BinaryFramer::new(1);
        let mut spans = Vec::new();
        let h = header();
        assert_eq!(h.len(), HEADER_LEN);
        for cut in 0..h.len() {
            assert_eq!(
                f.scan(&h[..cut], &mut spans, 1).unwrap(),
                Frame::Need(HEADER_LEN)
            );
        }
        // An extension is skipped.
        let mut x = h.clone();
        x[15..19].copy_from_slice(&3u32.to_be_bytes());
        x.extend_from_slice(b"abc");
        assert_eq!(
            f.clone().scan(&x[..20], &mut spans, 1).unwrap(),
            Frame::Need(22)
        );
        assert_eq!(
            f.clone().scan(&x, &mut spans, 1).unwrap(),
            Frame::Header(22)
        );
        assert_eq!(f.scan(&h, &mut spans, 1).unwrap(), Frame::Header(19));
        assert!(f.header_done());

        let err = |b: &[u8]| {
            BinaryFramer::new(1)
                .scan(b, &mut Vec::new(), 1)
                .unwrap_err()
        };
        let e = err(b"PGCOPZ");
        assert_eq!(
            (e.sqlstate, e.message.as_str()),
            ("22P04", "COPY file signature not recognized")
        );
        let e = err(b"1\t2\n");
        assert_eq!(e.sqlstate, "22P04");
        let mut oids = h.clone();
        oids[12] = 1;
        assert!(err(&oids).message.contains("WITH OIDS"));
        let mut critical = h.clone();
        critical[11] = 0x80;
        assert!(err(&critical).message.contains("critical flags"));
        let mut huge = h.clone();
        huge[15..19].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(err(&huge).sqlstate, "22P04");
        // Flag bits 0-15 are not critical.
        let mut low = h;
        low[14] = 1;
        assert_eq!(
            BinaryFramer::new(1).scan(&low, &mut spans, 1).unwrap(),
            Frame::Header(19)
        );
    }

    #[test]
    fn tuple_frames() {
        let mut f = BinaryFramer::new(2);
        let mut spans = Vec::new();
        f.scan(&header(), &mut spans, 1).unwrap();
        // (NULL, "abc")
        let mut t = vec![0, 2];
        t.extend_from_slice(&(-1i32).to_be_bytes());
        t.extend_from_slice(&3i32.to_be_bytes());
        t.extend_from_slice(b"abc");
        let wants = [2, 2, 6, 6, 6, 6, 10, 10, 10, 10, 13, 13, 13];
        for (cut, want) in wants.iter().enumerate() {
            assert_eq!(
                f.scan(&t[..cut], &mut spans, 1).unwrap(),
                Frame::Need(*want),
                "cut {cut}"
            );
        }
        assert_eq!(f.scan(&t, &mut spans, 1).unwrap(), Frame::Tuple(13));
        assert!(matches!(spans[..], [Span::Null, Span::Row(10, 13)]));
        assert_eq!(f.scan(&TRAILER, &mut spans, 1).unwrap(), Frame::Trailer(2));

        let e = f.scan(&[0, 3], &mut spans, 7).unwrap_err();
        assert_eq!(
            (e.sqlstate, e.message.as_str()),
            ("22P04", "row field count is 3, expected 2, line 7")
        );
        let e = f.scan(&[0xff, 0xfe], &mut spans, 1).unwrap_err();
        assert_eq!(e.sqlstate, "22P04");
        let mut t = vec![0, 2];
        t.extend_from_slice(&(-2i32).to_be_bytes());
        let e = f.scan(&t, &mut spans, 4).unwrap_err();
        assert_eq!(
            (e.sqlstate, e.message.as_str()),
            ("22P04", "invalid field size -2, line 4")
        );
        // A field that claims 2 GiB only asks for the bytes.
        let mut t = vec![0, 2];
        t.extend_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(
            f.scan(&t, &mut spans, 1).unwrap(),
            Frame::Need(6 + i32::MAX as usize)
        );
    }

    use crate::copy::decode::CopyDecoder;
    use crate::copy::encode::encode_rows;
    use crate::copy::options::CopyOptions;
    use crate::copy::testing::{all_types, concat, decode, decode_chunks, schema};
    use datafusion::arrow::array::{ArrayRef, BinaryArray, TimestampNanosecondArray};
    use datafusion::arrow::datatypes::{DataType, Field};
    use std::sync::Arc;

    /// Every type of `all_types()` plus bytea, with NULLs, written by COPY
    /// TO in binary and read back by COPY FROM, in chunks cut anywhere.
    #[test]
    fn every_type_round_trips_through_binary() {
        let text = concat(
            &decode(
                &all_types(),
                &CopyOptions::text(),
                super::super::testing::TEXT_ROWS,
            )
            .unwrap(),
        );
        let mut fields: Vec<Field> = all_types()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("bin", DataType::Binary, true));
        let s = Arc::new(Schema::new(fields));
        let mut cols: Vec<ArrayRef> = text.columns().to_vec();
        // Binary carries microseconds: nanosecond values rounded.
        let tsn = s.index_of("tsn").unwrap();
        let ns = text.column(tsn).as_primitive::<TimestampNanosecondType>();
        let rounded: TimestampNanosecondArray = ns
            .iter()
            .map(|v| v.map(|v| unit_to_micros(v, TimeUnit::Nanosecond).unwrap() * 1000))
            .collect();
        let bin = BinaryArray::from(vec![
            Some(&b"\x00\xff"[..]),
            Some(b""),
            None,
            Some(b"\\x41"),
            Some(&[7u8; 300][..]),
        ]);
        cols.push(Arc::new(bin));
        let batch = RecordBatch::try_new(s.clone(), cols).unwrap();
        let opts = CopyOptions::binary();
        let out = encode_rows(std::slice::from_ref(&batch), &opts).unwrap();
        assert!(out.starts_with(SIGNATURE));
        assert!(out.ends_with(&TRAILER));
        let whole = concat(&decode_chunks(&s, &opts, &[&out], 2).unwrap());
        for c in 0..s.fields().len() {
            if c == tsn {
                assert_eq!(
                    whole.column(c).as_primitive::<TimestampNanosecondType>(),
                    &rounded
                );
            } else {
                assert_eq!(
                    whole.column(c),
                    batch.column(c),
                    "column {}",
                    s.field(c).name()
                );
            }
        }
        for cut in 0..out.len() {
            let (x, y) = out.split_at(cut);
            let got = concat(&decode_chunks(&s, &opts, &[x, y], 3).unwrap());
            assert_eq!(got, whole, "cut at {cut}");
        }
        let singles: Vec<&[u8]> = out.chunks(1).collect();
        assert_eq!(
            concat(&decode_chunks(&s, &opts, &singles, 1000).unwrap()),
            whole
        );
        // The trailer may be left out, as PostgreSQL allows.
        let no_trailer = &out[..out.len() - 2];
        assert_eq!(
            concat(&decode_chunks(&s, &opts, &[no_trailer], 1000).unwrap()),
            whole
        );
        // No rows: header and trailer.
        let empty = encode_rows(&[], &opts).unwrap();
        assert_eq!(empty.len(), HEADER_LEN + 2);
        assert!(decode_chunks(&s, &opts, &[&empty], 10).unwrap().is_empty());
    }

    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut t = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => t.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    t.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    t.extend_from_slice(v);
                }
            }
        }
        t
    }

    fn stream(tuples: &[Vec<u8>], trailer: bool) -> Vec<u8> {
        let mut out = header();
        for t in tuples {
            out.extend_from_slice(t);
        }
        if trailer {
            out.extend_from_slice(&TRAILER);
        }
        out
    }

    #[test]
    fn bad_binary_input_fails_with_its_sqlstate() {
        let s = schema(vec![
            ("i", DataType::Int32, true),
            ("t", DataType::Utf8, true),
            ("n", DataType::Int64, false),
        ]);
        let opts = CopyOptions::binary();
        let good = tuple(&[
            Some(&5i32.to_be_bytes()),
            Some(b"x"),
            Some(&1i64.to_be_bytes()),
        ]);
        let err = |input: &[u8]| decode_chunks(&s, &opts, &[input], 10).unwrap_err();
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (vec![], "22P04", "COPY file signature not recognized"),
            (
                b"1\tx\t1\n".to_vec(),
                "22P04",
                "COPY file signature not recognized",
            ),
            (
                header()[..10].to_vec(),
                "22P04",
                "unexpected EOF in COPY data, line 1",
            ),
            (
                stream(&[good.clone(), good[..7].to_vec()], false),
                "22P04",
                "unexpected EOF in COPY data, line 2",
            ),
            (
                stream(&[good.clone(), tuple(&[None, None])], true),
                "22P04",
                "row field count is 2, expected 3, line 2",
            ),
            (
                {
                    let mut x = stream(std::slice::from_ref(&good), true);
                    x.extend_from_slice(&good);
                    x
                },
                "22P04",
                "received copy data after EOF marker",
            ),
            (
                stream(&[tuple(&[Some(&[1, 2, 3]), None, Some(&[0; 8])])], true),
                "22P03",
                "incorrect binary data format for type integer (3 bytes), line 1, column i",
            ),
            (
                stream(
                    &[tuple(&[
                        Some(&(1i64 << 40).to_be_bytes()),
                        None,
                        Some(&[0; 8]),
                    ])],
                    true,
                ),
                "22003",
                "value out of range for type integer, line 1, column i",
            ),
            (
                stream(&[tuple(&[None, Some(b"a\xffb"), Some(&[0; 8])])], true),
                "22021",
                "invalid byte sequence for encoding \"UTF8\": 0xff, line 1, column t",
            ),
            (
                stream(&[good.clone(), tuple(&[None, None, None])], true),
                "23502",
                "null value in column \"n\" violates not-null constraint, line 2",
            ),
        ];
        for (input, state, msg) in cases {
            let e = err(&input);
            assert_eq!((e.sqlstate, e.message.as_str()), (state, msg), "{input:?}");
        }
        // A row past the cap fails at once, before its bytes arrive.
        let mut huge = header();
        huge.extend_from_slice(&3i16.to_be_bytes());
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        let mut d = CopyDecoder::new(s.clone(), opts.clone(), 10);
        let e = d.push(&huge).unwrap_err();
        assert_eq!(e.sqlstate, "54000");
        // Integers of another width are taken, in range.
        let widths = tuple(&[Some(&7i16.to_be_bytes()), None, Some(&9i32.to_be_bytes())]);
        let b = concat(&decode_chunks(&s, &opts, &[&stream(&[widths], true)], 10).unwrap());
        assert_eq!(b.column(0).as_primitive::<Int32Type>().value(0), 7);
        assert_eq!(b.column(2).as_primitive::<Int64Type>().value(0), 9);
    }
}
