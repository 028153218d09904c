//! The metadata area: two alternating slots, each holding the whole committed
//! state (tables, extents, block index) of the disk. A commit writes the next
//! generation into slot `generation % 2` and syncs; open takes the valid slot
//! with the highest generation, so a crash at any byte leaves the old or the
//! new state, never a mix. This module owns the slot header and the payload
//! encoding; it knows nothing of Arrow (schemas and zone maps are opaque bytes).

use std::sync::Arc;

use super::device::BlockDevice;
use super::le_bytes::{ByteReader, ByteWriter, Truncated};
use super::superblock::Superblock;
use super::SegmentKind;
use crate::{EngineError, Result, SliceId, TableId};

pub const SLOT_MAGIC: [u8; 8] = *b"SLCDBMET";
pub const SLOT_HEADER_LEN: usize = 64;
/// Bytes of the slot header covered by the CRC (together with the payload).
const SLOT_HEADER_CRC_LEN: usize = 32;

/// (segment, table, slice): the unit that owns extents and blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey {
    pub segment: SegmentKind,
    pub table: TableId,
    pub slice: SliceId,
}

/// A run of whole extents: `offset` and `length` are multiples of the extent size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentRun {
    pub offset: u64,
    pub length: u64,
}

impl ExtentRun {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// One committed block in the index.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockMeta {
    pub offset: u64,
    pub length: u64,
    pub seq: u64,
    pub rows: u64,
    pub rowid_min: i64,
    pub rowid_max: i64,
    pub createxid_min: u64,
    pub createxid_max: u64,
    /// The block's zone map section, byte for byte as in its header.
    pub zones: Arc<[u8]>,
}

impl BlockMeta {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableMeta {
    pub id: TableId,
    /// The table's user schema as an Arrow IPC stream with no batches.
    pub schema_ipc: Vec<u8>,
}

/// A run of delete records (rowid, xid) written in a stream's extents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteRunMeta {
    pub offset: u64,
    pub length: u64,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamMeta {
    pub key: StreamKey,
    /// In allocation order; appends go into the last one.
    pub extents: Vec<ExtentRun>,
    /// In append order.
    pub blocks: Vec<BlockMeta>,
    /// Committed delete runs, in commit order.
    pub deletes: Vec<DeleteRunMeta>,
}

/// A prepared (in-doubt) transaction: durable, not visible, waiting for the
/// coordinator's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedMeta {
    pub xid: u64,
    pub blocks: Vec<(StreamKey, BlockMeta)>,
    pub deletes: Vec<(StreamKey, DeleteRunMeta)>,
}

/// Everything a slot holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetaState {
    pub tables: Vec<TableMeta>,
    pub streams: Vec<StreamMeta>,
    pub prepared: Vec<PreparedMeta>,
}

fn put_key(w: &mut ByteWriter, k: &StreamKey) {
    w.u8(k.segment.code() as u8);
    w.u64(k.table);
    w.u32(k.slice);
}

fn put_block(w: &mut ByteWriter, b: &BlockMeta) {
    w.u64(b.offset);
    w.u64(b.length);
    w.u64(b.seq);
    w.u64(b.rows);
    w.i64(b.rowid_min);
    w.i64(b.rowid_max);
    w.u64(b.createxid_min);
    w.u64(b.createxid_max);
    w.blob(&b.zones);
}

fn put_run(w: &mut ByteWriter, d: &DeleteRunMeta) {
    w.u64(d.offset);
    w.u64(d.length);
    w.u64(d.count);
}

fn get_key(r: &mut ByteReader) -> std::result::Result<StreamKey, DecodeErr> {
    let code = r.u8()?;
    let segment = SegmentKind::from_code(code as u32)
        .ok_or_else(|| DecodeErr::Bad(format!("unknown segment code {code}")))?;
    Ok(StreamKey {
        segment,
        table: r.u64()?,
        slice: r.u32()?,
    })
}

/// `offset + length` of something on the disk, which must not pass the end
/// of the address space (everything after decoding adds them freely).
fn span(what: &str, offset: u64, length: u64) -> std::result::Result<(), DecodeErr> {
    match offset.checked_add(length) {
        Some(_) => Ok(()),
        None => Err(DecodeErr::Bad(format!(
            "{what} at {offset} of {length} bytes passes the end of any disk"
        ))),
    }
}

fn get_block(r: &mut ByteReader) -> std::result::Result<BlockMeta, DecodeErr> {
    let b = BlockMeta {
        offset: r.u64()?,
        length: r.u64()?,
        seq: r.u64()?,
        rows: r.u64()?,
        rowid_min: r.i64()?,
        rowid_max: r.i64()?,
        createxid_min: r.u64()?,
        createxid_max: r.u64()?,
        zones: Arc::from(r.blob()?),
    };
    span("block", b.offset, b.length)?;
    Ok(b)
}

fn get_run(r: &mut ByteReader) -> std::result::Result<DeleteRunMeta, DecodeErr> {
    let d = DeleteRunMeta {
        offset: r.u64()?,
        length: r.u64()?,
        count: r.u64()?,
    };
    span("delete run", d.offset, d.length)?;
    Ok(d)
}

impl MetaState {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = ByteWriter::with_capacity(4096);
        w.u32(self.tables.len() as u32);
        for t in &self.tables {
            w.u64(t.id);
            w.blob(&t.schema_ipc);
        }
        w.u32(self.streams.len() as u32);
        for s in &self.streams {
            put_key(&mut w, &s.key);
            w.u32(s.extents.len() as u32);
            for e in &s.extents {
                w.u64(e.offset);
                w.u64(e.length);
            }
            w.u32(s.blocks.len() as u32);
            for b in &s.blocks {
                put_block(&mut w, b);
            }
            w.u32(s.deletes.len() as u32);
            for d in &s.deletes {
                put_run(&mut w, d);
            }
        }
        w.u32(self.prepared.len() as u32);
        for p in &self.prepared {
            w.u64(p.xid);
            w.u32(p.blocks.len() as u32);
            for (k, b) in &p.blocks {
                put_key(&mut w, k);
                put_block(&mut w, b);
            }
            w.u32(p.deletes.len() as u32);
            for (k, d) in &p.deletes {
                put_key(&mut w, k);
                put_run(&mut w, d);
            }
        }
        w.buf
    }

    pub fn decode(buf: &[u8]) -> Result<MetaState> {
        Self::decode_inner(buf).map_err(|e| match e {
            DecodeErr::Truncated => {
                EngineError::CorruptMetadata("metadata payload truncated".into())
            }
            DecodeErr::Bad(m) => EngineError::CorruptMetadata(m),
        })
    }

    fn decode_inner(buf: &[u8]) -> std::result::Result<MetaState, DecodeErr> {
        let mut r = ByteReader::new(buf);
        let ntables = r.u32()? as usize;
        let mut tables = Vec::with_capacity(ntables.min(4096));
        for _ in 0..ntables {
            let id = r.u64()?;
            let schema_ipc = r.blob()?.to_vec();
            tables.push(TableMeta { id, schema_ipc });
        }
        let nstreams = r.u32()? as usize;
        let mut streams = Vec::with_capacity(nstreams.min(4096));
        for _ in 0..nstreams {
            let key = get_key(&mut r)?;
            let next = r.u32()? as usize;
            let mut extents = Vec::with_capacity(next.min(4096));
            for _ in 0..next {
                let e = ExtentRun {
                    offset: r.u64()?,
                    length: r.u64()?,
                };
                span("extent run", e.offset, e.length)?;
                extents.push(e);
            }
            let nblocks = r.u32()? as usize;
            let mut blocks = Vec::with_capacity(nblocks.min(65536));
            for _ in 0..nblocks {
                blocks.push(get_block(&mut r)?);
            }
            let nruns = r.u32()? as usize;
            let mut deletes = Vec::with_capacity(nruns.min(65536));
            for _ in 0..nruns {
                deletes.push(get_run(&mut r)?);
            }
            streams.push(StreamMeta {
                key,
                extents,
                blocks,
                deletes,
            });
        }
        let nprepared = r.u32()? as usize;
        let mut prepared = Vec::with_capacity(nprepared.min(4096));
        for _ in 0..nprepared {
            let xid = r.u64()?;
            let nb = r.u32()? as usize;
            let mut blocks = Vec::with_capacity(nb.min(65536));
            for _ in 0..nb {
                let k = get_key(&mut r)?;
                blocks.push((k, get_block(&mut r)?));
            }
            let nd = r.u32()? as usize;
            let mut deletes = Vec::with_capacity(nd.min(65536));
            for _ in 0..nd {
                let k = get_key(&mut r)?;
                deletes.push((k, get_run(&mut r)?));
            }
            prepared.push(PreparedMeta {
                xid,
                blocks,
                deletes,
            });
        }
        if r.remaining() != 0 {
            return Err(DecodeErr::Bad(format!(
                "{} trailing bytes after metadata payload",
                r.remaining()
            )));
        }
        Ok(MetaState {
            tables,
            streams,
            prepared,
        })
    }
}

enum DecodeErr {
    Truncated,
    Bad(String),
}

impl From<Truncated> for DecodeErr {
    fn from(_: Truncated) -> Self {
        DecodeErr::Truncated
    }
}

/// Build the bytes of a slot (header + payload) for `generation`.
pub fn encode_slot(sb: &Superblock, generation: u64, payload: &[u8]) -> Result<Vec<u8>> {
    let capacity = sb.meta_slot_size - SLOT_HEADER_LEN as u64;
    if payload.len() as u64 > capacity {
        return Err(EngineError::MetadataFull {
            needed: payload.len() as u64 + SLOT_HEADER_LEN as u64,
            capacity: sb.meta_slot_size,
        });
    }
    let mut w = ByteWriter::with_capacity(SLOT_HEADER_LEN + payload.len());
    w.bytes(&SLOT_MAGIC); // 0
    w.u32(sb.version); // 8: the image's version (a version 3 image stays one)
    w.u32(SLOT_HEADER_LEN as u32); // 12
    w.u64(generation); // 16
    w.u64(payload.len() as u64); // 24
    let mut h = crc32c::crc32c(&w.buf[..SLOT_HEADER_CRC_LEN]);
    h = crc32c::crc32c_append(h, payload);
    w.u32(h); // 32
    w.buf.resize(SLOT_HEADER_LEN, 0);
    w.bytes(payload);
    Ok(w.buf)
}

/// Write `payload` as `generation` into slot `generation % 2`, then sync.
/// The caller must have synced the data the payload refers to.
pub fn write_slot(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    generation: u64,
    payload: &[u8],
) -> Result<()> {
    let bytes = encode_slot(sb, generation, payload)?;
    dev.write_at(sb.slot_offset(generation % 2), &bytes)?;
    dev.sync()
}

/// Why a slot was not usable (kept for `disk inspect` and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotStatus {
    Valid { generation: u64, payload_len: u64 },
    Invalid(String),
}

/// Read one slot: `Ok(Ok((generation, payload)))` if valid, `Ok(Err(reason))`
/// if torn or never written, `Err` only for I/O errors.
pub fn read_slot(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    slot: u64,
) -> Result<std::result::Result<(u64, Vec<u8>), String>> {
    let off = sb.slot_offset(slot);
    let mut header = [0u8; SLOT_HEADER_LEN];
    dev.read_at(off, &mut header)?;
    if header[..8] != SLOT_MAGIC {
        return Ok(Err("no slot magic (never written or torn)".into()));
    }
    let mut r = ByteReader::new(&header[8..]);
    let parse = (|| -> std::result::Result<_, Truncated> {
        Ok((r.u32()?, r.u32()?, r.u64()?, r.u64()?, r.u32()?))
    })();
    let Ok((version, hlen, generation, payload_len, crc)) = parse else {
        return Ok(Err("slot header truncated".into()));
    };
    if version != sb.version || hlen as usize != SLOT_HEADER_LEN {
        return Ok(Err(format!("slot header version {version}, length {hlen}")));
    }
    if generation % 2 != slot {
        return Ok(Err(format!("generation {generation} in slot {slot}")));
    }
    if payload_len > sb.meta_slot_size - SLOT_HEADER_LEN as u64 {
        return Ok(Err(format!(
            "payload length {payload_len} exceeds the slot"
        )));
    }
    let mut payload = vec![0u8; payload_len as usize];
    dev.read_at(off + SLOT_HEADER_LEN as u64, &mut payload)?;
    let mut h = crc32c::crc32c(&header[..SLOT_HEADER_CRC_LEN]);
    h = crc32c::crc32c_append(h, &payload);
    if h != crc {
        return Ok(Err(format!(
            "CRC mismatch (stored {crc:#010x}, computed {h:#010x}): torn write"
        )));
    }
    Ok(Ok((generation, payload)))
}

/// Read both slots and return the valid one with the highest generation,
/// with the status of each slot.
pub fn read_latest(
    dev: &dyn BlockDevice,
    sb: &Superblock,
) -> Result<(u64, MetaState, [SlotStatus; 2])> {
    let mut best: Option<(u64, Vec<u8>)> = None;
    let mut status = [
        SlotStatus::Invalid(String::new()),
        SlotStatus::Invalid(String::new()),
    ];
    for slot in 0..2u64 {
        match read_slot(dev, sb, slot)? {
            Ok((generation, payload)) => {
                status[slot as usize] = SlotStatus::Valid {
                    generation,
                    payload_len: payload.len() as u64,
                };
                if best.as_ref().is_none_or(|(g, _)| generation > *g) {
                    best = Some((generation, payload));
                }
            }
            Err(reason) => status[slot as usize] = SlotStatus::Invalid(reason),
        }
    }
    let Some((generation, payload)) = best else {
        return Err(EngineError::CorruptMetadata(format!(
            "{}: no valid metadata slot ({:?})",
            dev.name(),
            status
        )));
    };
    // A slot whose CRC matches but whose payload does not parse was written by
    // a buggy or foreign writer, not torn: refuse it loudly.
    let state = MetaState::decode(&payload)?;
    Ok((generation, state, status))
}
