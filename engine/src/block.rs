//! The block: one encoded, checksummed batch of rows of one table of one slice.
//!
//! ```text
//! header (88 bytes) | zone maps (zones_len) | Arrow IPC stream, one batch (payload_len) | CRC32C (4)
//! ```
//!
//! The CRC covers everything before it, so a flipped byte anywhere is caught
//! on read as [`EngineError::ChecksumMismatch`]. Nothing read from disk is
//! trusted before the CRC matches, and nothing is unwrapped after. Blocks are
//! immutable once written. This module owns the byte format and the zone maps;
//! where blocks live is the slice store's business. Byte-level spec:
//! docs/disk-format.md.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, RecordBatchOptions};
use arrow::compute::kernels::aggregate;
use arrow::datatypes::*;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow::ipc::CompressionType;

use crate::disk::le_bytes::{ByteReader, ByteWriter, Truncated};
use crate::{DiskId, EngineError, Result, SliceId, TableId};

pub const BLOCK_MAGIC: [u8; 4] = *b"SLBK";
/// Version of the block encoding (header, zone maps, payload framing).
/// Version 2 (disk format 3) added [`FLAG_IMPLICIT_HIDDEN`].
pub const BLOCK_VERSION: u16 = 2;
/// Header flag: the payload holds only the user columns; the hidden ones
/// follow from the header (`_rowid` = rowid min + row, `_createxid` =
/// createxid min = max, `_deletexid` = 0). Rows appended by one write are
/// stored so; rewritten rows (GROOM) carry their hidden columns.
pub const FLAG_IMPLICIT_HIDDEN: u8 = 1;
pub const BLOCK_HEADER_LEN: usize = 88;
/// The most rows one block holds (`block_rows` may not be set higher). A
/// header, or an index entry, that says more is corrupt: decoding builds
/// the implicit hidden columns from the row count alone.
pub const MAX_BLOCK_ROWS: u64 = 1 << 24;
/// The most stored columns (user and hidden) one block holds; a header
/// that says more is corrupt (a projection of every column is built from it).
pub const MAX_BLOCK_COLUMNS: u32 = 1 << 16;
/// Longest string kept as a zone map bound; longer ones mark the zone absent.
pub const MAX_ZONE_STRING: usize = 64;

/// Payload compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// No compression (tests, incompressible data).
    None,
    /// LZ4 frame (Arrow IPC `LZ4_FRAME`): fast, the default.
    #[default]
    Lz4,
    /// Zstandard (Arrow IPC `ZSTD`): smaller, slower.
    Zstd,
}

impl Compression {
    pub fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Zstd => 2,
        }
    }
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            2 => Some(Compression::Zstd),
            _ => None,
        }
    }
    fn ipc(self) -> Option<CompressionType> {
        match self {
            Compression::None => None,
            Compression::Lz4 => Some(CompressionType::LZ4_FRAME),
            Compression::Zstd => Some(CompressionType::ZSTD),
        }
    }
}

/// A zone map bound. The variant follows the column type: `Int` for signed
/// integers, dates and timestamps (in the column's own unit), `UInt` for
/// unsigned integers, `Float` for floats, `Decimal` for Decimal128 (unscaled,
/// in the column's scale), `Utf8` for strings, `Bool` for booleans.
#[derive(Debug, Clone, PartialEq)]
pub enum ZoneValue {
    Int(i64),
    UInt(u64),
    Float(f64),
    Decimal(i128),
    Utf8(String),
    Bool(bool),
}

/// Min/max and null count of one column of one block.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneMap {
    /// The column's type (not stored: taken from the table schema).
    pub data_type: DataType,
    pub rows: u64,
    pub null_count: u64,
    /// `None` when unknown (unsupported type, long strings) or all rows null.
    /// Floats are ordered by IEEE total order, as Arrow's comparison kernels do.
    pub min_max: Option<(ZoneValue, ZoneValue)>,
}

impl ZoneMap {
    /// Compute the zone map of one column.
    pub fn compute(array: &dyn Array) -> ZoneMap {
        ZoneMap {
            data_type: array.data_type().clone(),
            rows: array.len() as u64,
            null_count: array.null_count() as u64,
            min_max: if array.null_count() == array.len() {
                None
            } else {
                min_max(array)
            },
        }
    }
}

macro_rules! prim_minmax {
    ($array:expr, $t:ty, $variant:ident, $conv:ty) => {{
        let a = $array.as_primitive::<$t>();
        match (aggregate::min(a), aggregate::max(a)) {
            (Some(lo), Some(hi)) => Some((
                ZoneValue::$variant(lo as $conv),
                ZoneValue::$variant(hi as $conv),
            )),
            _ => None,
        }
    }};
}

fn float_minmax<T: ArrowPrimitiveType>(
    array: &dyn Array,
    to_f64: impl Fn(T::Native) -> f64,
) -> Option<(ZoneValue, ZoneValue)> {
    let a = array.as_primitive::<T>();
    let mut it = a.iter().flatten().map(to_f64);
    let first = it.next()?;
    let (lo, hi) = it.fold((first, first), |(lo, hi), v| {
        (
            if v.total_cmp(&lo).is_lt() { v } else { lo },
            if v.total_cmp(&hi).is_gt() { v } else { hi },
        )
    });
    Some((ZoneValue::Float(lo), ZoneValue::Float(hi)))
}

fn string_zone(lo: Option<&str>, hi: Option<&str>) -> Option<(ZoneValue, ZoneValue)> {
    let (lo, hi) = (lo?, hi?);
    if lo.len() > MAX_ZONE_STRING || hi.len() > MAX_ZONE_STRING {
        return None;
    }
    Some((
        ZoneValue::Utf8(lo.to_string()),
        ZoneValue::Utf8(hi.to_string()),
    ))
}

fn min_max(array: &dyn Array) -> Option<(ZoneValue, ZoneValue)> {
    match array.data_type() {
        DataType::Int8 => prim_minmax!(array, Int8Type, Int, i64),
        DataType::Int16 => prim_minmax!(array, Int16Type, Int, i64),
        DataType::Int32 => prim_minmax!(array, Int32Type, Int, i64),
        DataType::Int64 => prim_minmax!(array, Int64Type, Int, i64),
        DataType::UInt8 => prim_minmax!(array, UInt8Type, UInt, u64),
        DataType::UInt16 => prim_minmax!(array, UInt16Type, UInt, u64),
        DataType::UInt32 => prim_minmax!(array, UInt32Type, UInt, u64),
        DataType::UInt64 => prim_minmax!(array, UInt64Type, UInt, u64),
        DataType::Date32 => prim_minmax!(array, Date32Type, Int, i64),
        DataType::Date64 => prim_minmax!(array, Date64Type, Int, i64),
        DataType::Timestamp(TimeUnit::Second, _) => {
            prim_minmax!(array, TimestampSecondType, Int, i64)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            prim_minmax!(array, TimestampMillisecondType, Int, i64)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            prim_minmax!(array, TimestampMicrosecondType, Int, i64)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            prim_minmax!(array, TimestampNanosecondType, Int, i64)
        }
        DataType::Decimal128(_, _) => prim_minmax!(array, Decimal128Type, Decimal, i128),
        DataType::Float32 => float_minmax::<Float32Type>(array, |v| v as f64),
        DataType::Float64 => float_minmax::<Float64Type>(array, |v| v),
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            string_zone(aggregate::min_string(a), aggregate::max_string(a))
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            string_zone(aggregate::min_string(a), aggregate::max_string(a))
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            string_zone(aggregate::min_string_view(a), aggregate::max_string_view(a))
        }
        DataType::Boolean => {
            let a = array.as_boolean();
            match (aggregate::min_boolean(a), aggregate::max_boolean(a)) {
                (Some(lo), Some(hi)) => Some((ZoneValue::Bool(lo), ZoneValue::Bool(hi))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The zone tag a column type is stored with (0 = never has min/max).
fn zone_tag_for(dt: &DataType) -> u8 {
    match dt {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => 1,
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _) => 1,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => 2,
        DataType::Float32 | DataType::Float64 => 3,
        DataType::Decimal128(_, _) => 4,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => 5,
        DataType::Boolean => 6,
        _ => 0,
    }
}

/// Encode zone maps: per column `u8 tag, u64 null_count`, then min and max
/// in the tag's encoding (nothing for tag 0).
pub fn encode_zones(zones: &[ZoneMap]) -> Vec<u8> {
    let mut w = ByteWriter::with_capacity(zones.len() * 32);
    for z in zones {
        let Some((lo, hi)) = &z.min_max else {
            w.u8(0);
            w.u64(z.null_count);
            continue;
        };
        let tag = match lo {
            ZoneValue::Int(_) => 1,
            ZoneValue::UInt(_) => 2,
            ZoneValue::Float(_) => 3,
            ZoneValue::Decimal(_) => 4,
            ZoneValue::Utf8(_) => 5,
            ZoneValue::Bool(_) => 6,
        };
        w.u8(tag);
        w.u64(z.null_count);
        for v in [lo, hi] {
            match v {
                ZoneValue::Int(x) => w.i64(*x),
                ZoneValue::UInt(x) => w.u64(*x),
                ZoneValue::Float(x) => w.f64(*x),
                ZoneValue::Decimal(x) => w.i128(*x),
                ZoneValue::Utf8(s) => {
                    w.u16(s.len() as u16);
                    w.bytes(s.as_bytes());
                }
                ZoneValue::Bool(b) => w.u8(*b as u8),
            }
        }
    }
    w.buf
}

/// How many columns' zone maps a zone section written by [`encode_zones`]
/// holds: a block written before its table gained columns holds fewer than
/// the table stores now (`crate::store::evolve`).
pub fn count_zones(bytes: &[u8]) -> Result<usize> {
    let bad = |m: &str| EngineError::CorruptMetadata(format!("zone map: {m}"));
    let t = |_: Truncated| bad("truncated");
    let mut r = ByteReader::new(bytes);
    let mut n = 0;
    while r.remaining() > 0 {
        let tag = r.u8().map_err(t)?;
        r.u64().map_err(t)?;
        for _ in 0..2 {
            match tag {
                0 => {}
                1..=3 => {
                    r.take(8).map_err(t)?;
                }
                4 => {
                    r.take(16).map_err(t)?;
                }
                5 => {
                    let len = r.u16().map_err(t)? as usize;
                    r.take(len).map_err(t)?;
                }
                6 => {
                    r.take(1).map_err(t)?;
                }
                _ => return Err(bad("unknown tag")),
            }
        }
        n += 1;
    }
    Ok(n)
}

/// Decode zone maps written by [`encode_zones`] for the columns of `schema`
/// (the stored schema: user columns, then hidden columns).
pub fn decode_zones(bytes: &[u8], schema: &Schema, rows: u64) -> Result<Vec<ZoneMap>> {
    let bad = |m: String| EngineError::CorruptMetadata(format!("zone map: {m}"));
    let mut r = ByteReader::new(bytes);
    let mut out = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let t = |_: Truncated| bad("truncated".into());
        let tag = r.u8().map_err(t)?;
        let null_count = r.u64().map_err(t)?;
        let expect = zone_tag_for(f.data_type());
        if tag != 0 && tag != expect {
            return Err(bad(format!(
                "tag {tag} for column {} of type {}",
                f.name(),
                f.data_type()
            )));
        }
        let mut read = || -> std::result::Result<ZoneValue, EngineError> {
            Ok(match tag {
                1 => ZoneValue::Int(r.i64().map_err(t)?),
                2 => ZoneValue::UInt(r.u64().map_err(t)?),
                3 => ZoneValue::Float(r.f64().map_err(t)?),
                4 => ZoneValue::Decimal(r.i128().map_err(t)?),
                5 => {
                    let n = r.u16().map_err(t)? as usize;
                    let s = std::str::from_utf8(r.take(n).map_err(t)?)
                        .map_err(|_| bad("string bound is not UTF-8".into()))?;
                    ZoneValue::Utf8(s.to_string())
                }
                6 => ZoneValue::Bool(r.u8().map_err(t)? != 0),
                _ => return Err(bad(format!("unknown tag {tag}"))),
            })
        };
        let min_max = if tag == 0 {
            None
        } else {
            let lo = read()?;
            let hi = read()?;
            Some((lo, hi))
        };
        out.push(ZoneMap {
            data_type: f.data_type().clone(),
            rows,
            null_count,
            min_max,
        });
    }
    if r.remaining() != 0 {
        return Err(bad(format!("{} trailing bytes", r.remaining())));
    }
    Ok(out)
}

/// The fixed header fields of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    pub version: u16,
    pub codec: Compression,
    /// [`FLAG_IMPLICIT_HIDDEN`] or 0.
    pub flags: u8,
    pub table: TableId,
    pub slice: SliceId,
    pub columns: u32,
    pub seq: u64,
    pub rows: u64,
    pub rowid_min: i64,
    pub rowid_max: i64,
    pub createxid_min: u64,
    pub createxid_max: u64,
    pub zones_len: u32,
    pub payload_len: u64,
}

/// An encoded block ready to be written, with what the index needs to know.
pub struct EncodedBlock {
    pub bytes: Vec<u8>,
    pub header: BlockHeader,
    pub zones: Vec<ZoneMap>,
    /// The zone map section as stored in the header.
    pub zone_bytes: Vec<u8>,
}

fn hidden_range(batch: &RecordBatch, idx: usize) -> Result<(i64, i64)> {
    let col = batch
        .column(idx)
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| EngineError::Internal(format!("hidden column {idx} is not Int64")))?;
    match (aggregate::min(col), aggregate::max(col)) {
        (Some(lo), Some(hi)) => Ok((lo, hi)),
        _ => Ok((0, 0)),
    }
}

/// Encode one stored batch (user columns, then `_rowid`, `_createxid`,
/// `_deletexid`) as a block that carries its hidden columns.
pub fn encode_block(
    table: TableId,
    slice: SliceId,
    seq: u64,
    batch: &RecordBatch,
    compression: Compression,
) -> Result<EncodedBlock> {
    let ncols = batch.num_columns();
    if ncols < 3 {
        return Err(EngineError::Internal(
            "stored batch lacks hidden columns".into(),
        ));
    }
    let (rowid_min, rowid_max) = hidden_range(batch, ncols - 3)?;
    let (xmin, xmax) = hidden_range(batch, ncols - 2)?;
    let zones: Vec<ZoneMap> = batch
        .columns()
        .iter()
        .map(|c| ZoneMap::compute(c.as_ref()))
        .collect();
    let header = BlockHeader {
        version: BLOCK_VERSION,
        codec: compression,
        flags: 0,
        table,
        slice,
        columns: ncols as u32,
        seq,
        rows: batch.num_rows() as u64,
        rowid_min,
        rowid_max,
        createxid_min: xmin as u64,
        createxid_max: xmax as u64,
        zones_len: 0,
        payload_len: 0,
    };
    encode(header, zones, batch)
}

/// Encode rows appended by transaction `xid` (user columns only; they get
/// rowids `rowid0..`) as a block whose hidden columns are implicit
/// ([`FLAG_IMPLICIT_HIDDEN`]): nothing of them is built, compressed or
/// stored.
pub fn encode_new_rows(
    table: TableId,
    slice: SliceId,
    seq: u64,
    user: &RecordBatch,
    rowid0: i64,
    xid: i64,
    compression: Compression,
) -> Result<EncodedBlock> {
    let rows = user.num_rows();
    if rows == 0 || xid <= 0 || rowid0.checked_add(rows as i64).is_none() {
        return Err(EngineError::Internal(format!(
            "cannot encode {rows} new rows from rowid {rowid0} for xid {xid}"
        )));
    }
    let rowid_max = rowid0 + rows as i64 - 1;
    let mut zones: Vec<ZoneMap> = user
        .columns()
        .iter()
        .map(|c| ZoneMap::compute(c.as_ref()))
        .collect();
    for (lo, hi) in [(rowid0, rowid_max), (xid, xid), (0, 0)] {
        zones.push(ZoneMap {
            data_type: DataType::Int64,
            rows: rows as u64,
            null_count: 0,
            min_max: Some((ZoneValue::Int(lo), ZoneValue::Int(hi))),
        });
    }
    let header = BlockHeader {
        version: BLOCK_VERSION,
        codec: compression,
        flags: FLAG_IMPLICIT_HIDDEN,
        table,
        slice,
        columns: user.num_columns() as u32 + 3,
        seq,
        rows: rows as u64,
        rowid_min: rowid0,
        rowid_max,
        createxid_min: xid as u64,
        createxid_max: xid as u64,
        zones_len: 0,
        payload_len: 0,
    };
    encode(header, zones, user)
}

/// Header, zone maps, `payload` as an Arrow IPC stream, CRC.
fn encode(
    mut header: BlockHeader,
    zones: Vec<ZoneMap>,
    payload: &RecordBatch,
) -> Result<EncodedBlock> {
    if header.rows > MAX_BLOCK_ROWS || header.columns > MAX_BLOCK_COLUMNS {
        return Err(EngineError::Internal(format!(
            "a block of {} rows and {} columns, more than {MAX_BLOCK_ROWS} or {MAX_BLOCK_COLUMNS}",
            header.rows, header.columns
        )));
    }
    let zone_bytes = encode_zones(&zones);
    header.zones_len = zone_bytes.len() as u32;
    let mut buf = Vec::with_capacity(
        BLOCK_HEADER_LEN + zone_bytes.len() + payload.get_array_memory_size() / 2 + 4,
    );
    buf.resize(BLOCK_HEADER_LEN, 0);
    buf.extend_from_slice(&zone_bytes);
    let payload_start = buf.len();
    let opts = IpcWriteOptions::default().try_with_compression(header.codec.ipc())?;
    {
        let mut w = StreamWriter::try_new_with_options(&mut buf, &payload.schema(), opts)?;
        w.write(payload)?;
        w.finish()?;
    }
    header.payload_len = (buf.len() - payload_start) as u64;
    buf[..BLOCK_HEADER_LEN].copy_from_slice(&encode_header(&header));
    let crc = crc32c::crc32c(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    Ok(EncodedBlock {
        bytes: buf,
        header,
        zones,
        zone_bytes,
    })
}

fn encode_header(h: &BlockHeader) -> Vec<u8> {
    let mut w = ByteWriter::with_capacity(BLOCK_HEADER_LEN);
    w.bytes(&BLOCK_MAGIC); // 0
    w.u16(h.version); // 4
    w.u8(h.codec.code()); // 6
    w.u8(h.flags); // 7
    w.u64(h.table); // 8
    w.u32(h.slice); // 16
    w.u32(h.columns); // 20
    w.u64(h.seq); // 24
    w.u64(h.rows); // 32
    w.i64(h.rowid_min); // 40
    w.i64(h.rowid_max); // 48
    w.u64(h.createxid_min); // 56
    w.u64(h.createxid_max); // 64
    w.u32(h.zones_len); // 72
    w.u32(0); // 76: reserved
    w.u64(h.payload_len); // 80
    debug_assert_eq!(w.len(), BLOCK_HEADER_LEN);
    w.buf
}

/// Where a block was read from and what the index says it is; a block whose
/// header disagrees is corrupt even if its CRC matches.
#[derive(Debug, Clone, Copy)]
pub struct BlockLocation {
    pub disk: DiskId,
    pub offset: u64,
    pub table: TableId,
    pub slice: SliceId,
    pub seq: u64,
    pub rows: u64,
}

/// Verify the CRC of a whole block and parse its header.
pub fn verify_block(bytes: &[u8], loc: &BlockLocation) -> Result<BlockHeader> {
    let h = verify_bytes(bytes, loc.disk, loc.offset, loc.table, loc.slice)?;
    if h.table != loc.table || h.slice != loc.slice || h.seq != loc.seq || h.rows != loc.rows {
        return Err(EngineError::CorruptBlock {
            offset: loc.offset,
            reason: format!(
            "header says table {} slice {} seq {} rows {}, index says table {} slice {} seq {} rows {}",
            h.table, h.slice, h.seq, h.rows, loc.table, loc.slice, loc.seq, loc.rows
        ),
        });
    }
    Ok(h)
}

/// Verify an encoded block that arrived over the network (a mirror forward):
/// CRC, header, sizes, and that it belongs to `table` and `slice`. Returns
/// the header and the zone map section.
pub fn inspect_block(
    bytes: &[u8],
    table: TableId,
    slice: SliceId,
) -> Result<(BlockHeader, Vec<u8>)> {
    let h = verify_bytes(bytes, 0, 0, table, slice)?;
    if h.table != table || h.slice != slice {
        return Err(EngineError::CorruptBlock {
            offset: 0,
            reason: format!(
                "forwarded block is for table {} slice {}, expected table {table} slice {slice}",
                h.table, h.slice
            ),
        });
    }
    let zones = bytes[BLOCK_HEADER_LEN..BLOCK_HEADER_LEN + h.zones_len as usize].to_vec();
    Ok((h, zones))
}

/// The header of a block encoded elsewhere, read without verifying the
/// block (`None` if it does not parse): for bookkeeping that must not wait
/// for the checksum, never for reading rows.
pub fn peek_header(bytes: &[u8]) -> Option<BlockHeader> {
    parse_header(bytes).ok()?.ok()
}

fn verify_bytes(
    bytes: &[u8],
    disk: DiskId,
    offset: u64,
    table: TableId,
    slice: SliceId,
) -> Result<BlockHeader> {
    let corrupt = |reason: String| EngineError::CorruptBlock { offset, reason };
    if bytes.len() < BLOCK_HEADER_LEN + 4 {
        return Err(corrupt(format!(
            "block of {} bytes is too short",
            bytes.len()
        )));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(tail);
    let expected = u32::from_le_bytes(crc);
    let found = crc32c::crc32c(body);
    if expected != found {
        return Err(EngineError::ChecksumMismatch {
            disk,
            offset,
            table,
            slice,
            expected,
            found,
        });
    }
    let h = parse_header(body).map_err(|_| corrupt("header truncated".into()))?;
    let h = h.map_err(corrupt)?;
    let want = (BLOCK_HEADER_LEN as u64 + h.zones_len as u64).checked_add(h.payload_len);
    if want != Some(body.len() as u64) {
        return Err(corrupt(format!(
            "header sizes add up to {}, block holds {}",
            BLOCK_HEADER_LEN as u128 + h.zones_len as u128 + h.payload_len as u128,
            body.len()
        )));
    }
    Ok(h)
}

type ParsedHeader = std::result::Result<BlockHeader, String>;

fn parse_header(body: &[u8]) -> std::result::Result<ParsedHeader, Truncated> {
    let mut r = ByteReader::new(body);
    if r.take(4)? != BLOCK_MAGIC {
        return Ok(Err("bad block magic".into()));
    }
    let version = r.u16()?;
    if version != BLOCK_VERSION {
        return Ok(Err(format!("unsupported block version {version}")));
    }
    let code = r.u8()?;
    let Some(codec) = Compression::from_code(code) else {
        return Ok(Err(format!("unknown codec {code}")));
    };
    let flags = r.u8()?;
    if flags & !FLAG_IMPLICIT_HIDDEN != 0 {
        return Ok(Err(format!("unknown block flags {flags:#x}")));
    }
    let table = r.u64()?;
    let slice = r.u32()?;
    let columns = r.u32()?;
    let seq = r.u64()?;
    let rows = r.u64()?;
    let rowid_min = r.i64()?;
    let rowid_max = r.i64()?;
    let createxid_min = r.u64()?;
    let createxid_max = r.u64()?;
    let zones_len = r.u32()?;
    let _ = r.u32()?;
    let payload_len = r.u64()?;
    if columns < 3 {
        return Ok(Err(format!(
            "{columns} stored columns, fewer than the hidden 3"
        )));
    }
    if columns > MAX_BLOCK_COLUMNS {
        return Ok(Err(format!(
            "{columns} stored columns, more than a block holds ({MAX_BLOCK_COLUMNS})"
        )));
    }
    if rows > MAX_BLOCK_ROWS {
        return Ok(Err(format!(
            "{rows} rows, more than a block holds ({MAX_BLOCK_ROWS})"
        )));
    }
    let implicit = flags & FLAG_IMPLICIT_HIDDEN != 0;
    if implicit
        && (rows == 0
            || createxid_min != createxid_max
            || rowid_max.checked_sub(rowid_min) != Some(rows as i64 - 1))
    {
        return Ok(Err(format!(
            "implicit hidden columns, but rows {rows}, rowids {rowid_min}..={rowid_max}, createxids {createxid_min}..={createxid_max}"
        )));
    }
    Ok(Ok(BlockHeader {
        version,
        codec,
        flags,
        table,
        slice,
        columns,
        seq,
        rows,
        rowid_min,
        rowid_max,
        createxid_min,
        createxid_max,
        zones_len,
        payload_len,
    }))
}

/// Verify and decode a block, reading only the `projection` columns (indices
/// into the stored schema). The result always has the block's row count,
/// even with an empty projection.
pub fn decode_block(
    bytes: &[u8],
    loc: &BlockLocation,
    projection: Option<Vec<usize>>,
) -> Result<RecordBatch> {
    let h = verify_block(bytes, loc)?;
    let corrupt = |reason: String| EngineError::CorruptBlock {
        offset: loc.offset,
        reason,
    };
    let start = BLOCK_HEADER_LEN + h.zones_len as usize;
    let payload = bytes
        .get(start..start + h.payload_len as usize)
        .ok_or_else(|| corrupt("payload out of range".into()))?;
    if h.flags & FLAG_IMPLICIT_HIDDEN != 0 {
        return decode_implicit(&h, payload, projection, &corrupt);
    }
    let empty_projection = projection.as_ref().is_some_and(|p| p.is_empty());
    // An empty projection still needs the batch's row count; read one cheap column.
    let projection = if empty_projection {
        Some(vec![h.columns as usize - 3])
    } else {
        projection
    };
    let batch = read_payload(payload, projection, &corrupt)?;
    if batch.num_rows() as u64 != h.rows {
        return Err(corrupt(format!(
            "batch has {} rows, header says {}",
            batch.num_rows(),
            h.rows
        )));
    }
    if empty_projection {
        return only_rows(batch.num_rows());
    }
    Ok(batch)
}

fn read_payload(
    payload: &[u8],
    projection: Option<Vec<usize>>,
    corrupt: &dyn Fn(String) -> EngineError,
) -> Result<RecordBatch> {
    let (_, batches) = crate::ipc::read_stream(payload, projection)
        .map_err(|e| corrupt(format!("IPC stream: {e}")))?;
    batches
        .into_iter()
        .next()
        .ok_or_else(|| corrupt("IPC stream holds no batch".into()))
}

fn only_rows(rows: usize) -> Result<RecordBatch> {
    let opts = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &opts,
    )?)
}

/// [`decode_block`] of a block with implicit hidden columns: the user
/// columns asked for come from the payload, the hidden ones from the header.
fn decode_implicit(
    h: &BlockHeader,
    payload: &[u8],
    projection: Option<Vec<usize>>,
    corrupt: &dyn Fn(String) -> EngineError,
) -> Result<RecordBatch> {
    let nuser = h.columns as usize - 3;
    let rows = h.rows as usize;
    let wanted: Vec<usize> = projection.unwrap_or_else(|| (0..nuser + 3).collect());
    if let Some(&bad) = wanted.iter().find(|&&c| c >= nuser + 3) {
        return Err(corrupt(format!(
            "column {bad} asked of a block of {} columns",
            h.columns
        )));
    }
    if wanted.is_empty() {
        return only_rows(rows);
    }
    let user: Vec<usize> = wanted.iter().copied().filter(|&c| c < nuser).collect();
    let from_payload = if user.is_empty() {
        None
    } else {
        let b = read_payload(payload, Some(user.clone()), corrupt)?;
        if b.num_rows() != rows {
            return Err(corrupt(format!(
                "batch has {} rows, header says {rows}",
                b.num_rows()
            )));
        }
        Some(b)
    };
    let hidden = hidden_fields();
    let mut fields = Vec::with_capacity(wanted.len());
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(wanted.len());
    for &c in &wanted {
        if c < nuser {
            let b = from_payload.as_ref().expect("user columns were read");
            let i = user.iter().position(|&u| u == c).expect("asked for");
            fields.push(b.schema().fields()[i].clone());
            cols.push(b.column(i).clone());
            continue;
        }
        fields.push(hidden[c - nuser].clone());
        cols.push(match c - nuser {
            // parse_header checked the range holds `rows` rowids.
            0 => Arc::new(Int64Array::from_iter_values(h.rowid_min..=h.rowid_max)),
            1 => Arc::new(Int64Array::from_value(h.createxid_min as i64, rows)),
            _ => Arc::new(Int64Array::from_value(0, rows)),
        });
    }
    let metadata = from_payload
        .map(|b| b.schema().metadata().clone())
        .unwrap_or_default();
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new_with_metadata(fields, metadata)),
        cols,
    )?)
}

/// The stored column to read for each hidden column, given the user column count.
pub fn hidden_columns(user_columns: usize) -> [usize; 3] {
    [user_columns, user_columns + 1, user_columns + 2]
}

/// Arrow fields of the hidden columns, in stored order.
pub fn hidden_fields() -> [FieldRef; 3] {
    [
        Arc::new(Field::new(crate::HIDDEN_ROWID, DataType::Int64, false)),
        Arc::new(Field::new(crate::HIDDEN_CREATEXID, DataType::Int64, false)),
        Arc::new(Field::new(crate::HIDDEN_DELETEXID, DataType::Int64, false)),
    ]
}

/// The stored schema of a table: user columns, then the hidden columns.
pub fn stored_schema(user: &Schema) -> SchemaRef {
    let mut fields: Vec<FieldRef> = user.fields().iter().cloned().collect();
    fields.extend(hidden_fields());
    Arc::new(Schema::new_with_metadata(fields, user.metadata().clone()))
}

/// Magic of a delete run: delete records (rowid, xid) of one stream.
pub const DELETE_RUN_MAGIC: [u8; 4] = *b"SLDR";
const DELETE_RUN_HEADER_LEN: usize = 32;

/// Encode delete records of one (table, slice) as a delete run (docs/disk-format.md).
pub fn encode_delete_run(table: TableId, slice: SliceId, records: &[(i64, u64)]) -> Vec<u8> {
    let mut w = ByteWriter::with_capacity(DELETE_RUN_HEADER_LEN + records.len() * 16 + 4);
    w.bytes(&DELETE_RUN_MAGIC);
    w.u16(1);
    w.u16(0);
    w.u64(records.len() as u64);
    w.u64(table);
    w.u32(slice);
    w.u32(0);
    for (rowid, xid) in records {
        w.i64(*rowid);
        w.u64(*xid);
    }
    let crc = crc32c::crc32c(&w.buf);
    w.u32(crc);
    w.buf
}

/// Length in bytes of a delete run of `count` records; `None` when no run
/// can be that long (a count read from a corrupt disk).
pub fn delete_run_len(count: u64) -> Option<u64> {
    count
        .checked_mul(16)?
        .checked_add(DELETE_RUN_HEADER_LEN as u64 + 4)
}

/// Verify and decode a delete run read from `offset` of `disk`.
pub fn decode_delete_run(
    bytes: &[u8],
    disk: DiskId,
    offset: u64,
    table: TableId,
    slice: SliceId,
) -> Result<Vec<(i64, u64)>> {
    let corrupt = |reason: String| EngineError::CorruptBlock { offset, reason };
    if bytes.len() < DELETE_RUN_HEADER_LEN + 4 {
        return Err(corrupt("delete run too short".into()));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let expected = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let found = crc32c::crc32c(body);
    if expected != found {
        return Err(EngineError::ChecksumMismatch {
            disk,
            offset,
            table,
            slice,
            expected,
            found,
        });
    }
    let mut r = ByteReader::new(body);
    let parse = (|| -> std::result::Result<_, Truncated> {
        let magic = r.take(4)?.to_vec();
        let version = r.u16()?;
        let _ = r.u16()?;
        let count = r.u64()?;
        let t = r.u64()?;
        let sl = r.u32()?;
        let _ = r.u32()?;
        Ok((magic, version, count, t, sl))
    })();
    let (magic, version, count, t, sl) =
        parse.map_err(|_| corrupt("delete run header truncated".into()))?;
    if magic != DELETE_RUN_MAGIC || version != 1 {
        return Err(corrupt("bad delete run magic or version".into()));
    }
    if t != table || sl != slice || delete_run_len(count) != Some(bytes.len() as u64) {
        return Err(corrupt(format!(
            "delete run says table {t} slice {sl} count {count}, expected table {table} slice {slice} in {} bytes",
            bytes.len()
        )));
    }
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let rec = (|| -> std::result::Result<_, Truncated> { Ok((r.i64()?, r.u64()?)) })()
            .map_err(|_| corrupt("delete run truncated".into()))?;
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};

    fn stored_batch(n: i64) -> RecordBatch {
        let user = Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("f", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
        ]);
        let schema = stored_schema(&user);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(0..n)),
            Arc::new(Float64Array::from_iter((0..n).map(|i| {
                if i % 3 == 0 {
                    None
                } else {
                    Some(i as f64 / 2.0)
                }
            }))),
            Arc::new(StringArray::from_iter(
                (0..n).map(|i| Some(format!("v{i:04}"))),
            )),
            Arc::new(Int64Array::from_iter_values(100..100 + n)),
            Arc::new(Int64Array::from_iter_values((0..n).map(|_| 7))),
            Arc::new(Int64Array::from_iter_values((0..n).map(|_| 0))),
        ];
        RecordBatch::try_new(schema, cols).unwrap()
    }

    fn loc(rows: u64) -> BlockLocation {
        BlockLocation {
            disk: 0,
            offset: 0,
            table: 5,
            slice: 2,
            seq: 9,
            rows,
        }
    }

    #[test]
    fn block_round_trip_all_codecs() {
        let b = stored_batch(1000);
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let enc = encode_block(5, 2, 9, &b, c).unwrap();
            assert_eq!(enc.header.rowid_min, 100);
            assert_eq!(enc.header.rowid_max, 1099);
            assert_eq!(enc.header.createxid_max, 7);
            let out = decode_block(&enc.bytes, &loc(1000), None).unwrap();
            assert_eq!(out, b);
            let proj = decode_block(&enc.bytes, &loc(1000), Some(vec![2, 3])).unwrap();
            assert_eq!(proj.num_columns(), 2);
            assert_eq!(proj.column(0), b.column(2));
            let none = decode_block(&enc.bytes, &loc(1000), Some(vec![])).unwrap();
            assert_eq!((none.num_columns(), none.num_rows()), (0, 1000));
            let schema = b.schema();
            let zones = decode_zones(&enc.zone_bytes, &schema, 1000).unwrap();
            assert_eq!(zones, enc.zones);
        }
    }

    /// `bytes` with header byte range `at` replaced and the CRC redone.
    fn patched(bytes: &[u8], at: usize, with: &[u8]) -> Vec<u8> {
        let mut b = bytes[..bytes.len() - 4].to_vec();
        b[at..at + with.len()].copy_from_slice(with);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn new_rows_store_no_hidden_columns_and_read_back_the_same() {
        let b = stored_batch(1000);
        let user = b.project(&[0, 1, 2]).unwrap();
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let exp = encode_block(5, 2, 9, &b, c).unwrap();
            let imp = encode_new_rows(5, 2, 9, &user, 100, 7, c).unwrap();
            assert_eq!(
                (exp.header.flags, imp.header.flags),
                (0, FLAG_IMPLICIT_HIDDEN)
            );
            assert!(
                imp.bytes.len() < exp.bytes.len(),
                "{c:?}: {} bytes, not fewer than {}",
                imp.bytes.len(),
                exp.bytes.len()
            );
            assert_eq!(imp.zones, exp.zones);
            assert_eq!(imp.zone_bytes, exp.zone_bytes);
            let same = |h: &BlockHeader| {
                (
                    h.columns,
                    h.rows,
                    h.rowid_min,
                    h.rowid_max,
                    h.createxid_min,
                    h.createxid_max,
                )
            };
            assert_eq!(same(&imp.header), same(&exp.header));
            for proj in [
                None,
                Some(vec![]),
                Some(vec![2, 3]),
                Some(vec![4]),
                Some(vec![5, 0]),
                Some(vec![0, 1, 2, 3, 4, 5]),
            ] {
                let want = decode_block(&exp.bytes, &loc(1000), proj.clone()).unwrap();
                let got = decode_block(&imp.bytes, &loc(1000), proj.clone()).unwrap();
                assert_eq!(got, want, "{c:?} {proj:?}");
            }
            assert!(matches!(
                decode_block(&imp.bytes, &loc(1000), Some(vec![6])),
                Err(EngineError::CorruptBlock { .. })
            ));
        }
        assert!(encode_new_rows(5, 2, 9, &user.slice(0, 0), 100, 7, Compression::Lz4).is_err());
        assert!(encode_new_rows(5, 2, 9, &user, i64::MAX - 5, 7, Compression::Lz4).is_err());
    }

    #[test]
    fn other_block_versions_and_bad_flags_are_corrupt() {
        let b = stored_batch(100);
        let user = b.project(&[0, 1, 2]).unwrap();
        let exp = encode_block(5, 2, 9, &b, Compression::Lz4).unwrap();
        assert_eq!(decode_block(&exp.bytes, &loc(100), None).unwrap(), b);
        let corrupt = |bytes: &[u8]| {
            matches!(
                decode_block(bytes, &loc(100), None),
                Err(EngineError::CorruptBlock { .. })
            )
        };
        assert!(corrupt(&patched(&exp.bytes, 4, &1u16.to_le_bytes())));
        assert!(corrupt(&patched(&exp.bytes, 4, &3u16.to_le_bytes())));
        assert!(corrupt(&patched(&exp.bytes, 7, &[0x80])));
        // Implicit hidden columns need contiguous rowids and one createxid.
        let imp = encode_new_rows(5, 2, 9, &user, 100, 7, Compression::Lz4).unwrap();
        assert!(!corrupt(&imp.bytes));
        assert!(corrupt(&patched(&imp.bytes, 48, &500i64.to_le_bytes())));
        assert!(corrupt(&patched(&imp.bytes, 64, &8u64.to_le_bytes())));
    }

    #[test]
    fn zone_maps_per_type() {
        let b = stored_batch(10);
        let enc = encode_block(5, 2, 9, &b, Compression::Lz4).unwrap();
        let z = &enc.zones;
        assert_eq!(z[0].min_max, Some((ZoneValue::Int(0), ZoneValue::Int(9))));
        assert_eq!(z[1].null_count, 4);
        assert_eq!(
            z[1].min_max,
            Some((ZoneValue::Float(0.5), ZoneValue::Float(4.0)))
        );
        assert_eq!(
            z[2].min_max,
            Some((
                ZoneValue::Utf8("v0000".into()),
                ZoneValue::Utf8("v0009".into())
            ))
        );
        let long = StringArray::from(vec!["a".repeat(65), "b".into()]);
        assert_eq!(
            ZoneMap::compute(&long).min_max,
            None,
            "long strings mark the zone absent"
        );
        let nan = Float64Array::from(vec![1.0, f64::NAN, -2.0]);
        let zn = ZoneMap::compute(&nan).min_max.unwrap();
        assert_eq!(zn.0, ZoneValue::Float(-2.0));
        assert!(
            matches!(zn.1, ZoneValue::Float(x) if x.is_nan()),
            "NaN sorts last in total order"
        );
        let dec = arrow::array::Decimal128Array::from(vec![Some(5), None, Some(-3)])
            .with_precision_and_scale(10, 2)
            .unwrap();
        assert_eq!(
            ZoneMap::compute(&dec).min_max,
            Some((ZoneValue::Decimal(-3), ZoneValue::Decimal(5)))
        );
        let list = arrow::array::new_null_array(&DataType::Binary, 3);
        assert_eq!(ZoneMap::compute(list.as_ref()).min_max, None);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let b = stored_batch(50);
        let enc = encode_block(5, 2, 9, &b, Compression::Lz4).unwrap();
        let user = b.project(&[0, 1, 2]).unwrap();
        let imp = encode_new_rows(5, 2, 9, &user, 100, 7, Compression::Lz4).unwrap();
        for i in 0..imp.bytes.len() {
            let mut bad = imp.bytes.clone();
            bad[i] ^= 0x40;
            assert!(
                matches!(
                    decode_block(&bad, &loc(50), None),
                    Err(EngineError::ChecksumMismatch { .. })
                ),
                "implicit block, flip at {i}"
            );
        }
        for i in 0..enc.bytes.len() {
            let mut bad = enc.bytes.clone();
            bad[i] ^= 0x40;
            match decode_block(&bad, &loc(50), None) {
                Err(EngineError::ChecksumMismatch { .. }) => {}
                other => panic!("flip at {i}: {:?}", other.map(|b| b.num_rows())),
            }
        }
        // A valid block where the index expects another is corrupt, not data.
        let wrong = BlockLocation { seq: 10, ..loc(50) };
        assert!(matches!(
            decode_block(&enc.bytes, &wrong, None),
            Err(EngineError::CorruptBlock { .. })
        ));
        assert!(matches!(
            decode_block(&enc.bytes[..10], &loc(50), None),
            Err(EngineError::CorruptBlock { .. })
        ));
    }
}
