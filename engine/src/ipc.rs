//! Arrow IPC streams read from bytes this process did not write: a request
//! from the network (rows to write, a schema, a relation sent whole), a
//! block's payload or a table's schema read from a disk.
//!
//! Arrow's `StreamReader` trusts the lengths inside the stream: it
//! allocates a message's body length before reading it, slices each buffer
//! at the offset and length its message names (and panics when that is past
//! the body), and allocates whatever a compressed buffer says it
//! decompresses to; and it panics on some malformed metadata. So every
//! reader of such bytes goes through [`read_stream`], which walks the stream's framing first and refuses any
//! length that points past the bytes at hand, or a compressed buffer larger
//! than [`MAX_DECODED_BUFFER`] once decompressed, before Arrow sees it, and
//! turns a panic of Arrow's reader into an error.
//! Found by the engine's fuzz tests (`fuzz/`).
//!
//! This module returns reasons as text; each caller makes them the error of
//! its own kind (a corrupt block, an invalid request, corrupt metadata). It
//! must never read anything but the bytes it is handed.

use std::io::Cursor;
use std::panic::AssertUnwindSafe;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::{root_as_message, MessageHeader};

/// The most one buffer of one column may take decompressed (1 GiB): a
/// block holds at most `block_rows` rows, a write request at most
/// [`crate::proto::MAX_MESSAGE_BYTES`].
pub const MAX_DECODED_BUFFER: i64 = 1 << 30;

const CONTINUATION: [u8; 4] = [0xff; 4];

fn i32_at(bytes: &[u8], at: usize) -> Option<i32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn i64_at(bytes: &[u8], at: usize) -> Option<i64> {
    let b = bytes.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(i64::from_le_bytes(a))
}

/// Check that every message of the stream, its body and each buffer of a
/// record or dictionary batch lie inside `bytes`. Framing Arrow would refuse
/// by itself (a short length word, a negative length) is left to it.
pub fn check_stream(bytes: &[u8]) -> Result<(), String> {
    let mut at = 0usize;
    let mut index = 0;
    while at < bytes.len() {
        let mut len_at = at;
        if bytes.get(at..at + 4) == Some(&CONTINUATION[..]) {
            len_at += 4;
        }
        let Some(meta_len) = i32_at(bytes, len_at) else {
            return Ok(());
        };
        if meta_len <= 0 {
            return Ok(());
        }
        let meta_start = len_at + 4;
        let meta_end = meta_start + meta_len as usize;
        let left = bytes.len() - meta_start.min(bytes.len());
        if meta_end > bytes.len() {
            return Err(format!(
                "IPC message {index} says its metadata is {meta_len} bytes, {left} are left"
            ));
        }
        let message = root_as_message(&bytes[meta_start..meta_end])
            .map_err(|e| format!("IPC message {index}: {e}"))?;
        let body_len = message.bodyLength();
        let left = (bytes.len() - meta_end) as u64;
        if body_len < 0 || body_len as u64 > left {
            return Err(format!(
                "IPC message {index} says its body is {body_len} bytes, {left} are left"
            ));
        }
        let batch = match message.header_type() {
            MessageHeader::RecordBatch => message.header_as_record_batch(),
            MessageHeader::DictionaryBatch => {
                message.header_as_dictionary_batch().and_then(|d| d.data())
            }
            _ => None,
        };
        if let Some(batch) = batch {
            let compressed = batch.compression().is_some();
            for (i, b) in batch.buffers().iter().flatten().enumerate() {
                let (offset, length) = (b.offset(), b.length());
                let end = offset.checked_add(length);
                if offset < 0 || length < 0 || end.is_none_or(|e| e > body_len) {
                    return Err(format!(
                        "IPC message {index}: buffer {i} at {offset} of {length} bytes \
                         is outside its body of {body_len} bytes"
                    ));
                }
                if compressed && length >= 8 {
                    let size = i64_at(bytes, meta_end + offset as usize).unwrap_or(0);
                    if size > MAX_DECODED_BUFFER {
                        return Err(format!(
                            "IPC message {index}: buffer {i} says it decompresses to \
                             {size} bytes, more than {MAX_DECODED_BUFFER}"
                        ));
                    }
                }
            }
        }
        at = meta_end + body_len as usize;
        index += 1;
    }
    Ok(())
}

/// The schema and batches of the stream in `bytes` (only the `projection`
/// columns, if given), once [`check_stream`] found it sound; a reason in
/// text if it is not, or Arrow refuses it.
///
/// Arrow's reader also panics on some malformed metadata it would have to
/// refuse (an unknown type, a list without its child, a decimal precision
/// out of range: `unimplemented!`, `panic!` and `unwrap` in arrow-ipc's
/// `convert.rs`). Those checks would copy Arrow's whole schema conversion,
/// so instead a panic of the reader, and only of the reader, is caught here
/// and becomes the reason. Nothing the reader touches outlives the call,
/// so no state is left half changed.
pub fn read_stream(
    bytes: &[u8],
    projection: Option<Vec<usize>>,
) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    check_stream(bytes)?;
    let read = move || -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
        let reader = StreamReader::try_new(Cursor::new(bytes), projection)?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        Ok((schema, batches))
    };
    match std::panic::catch_unwind(AssertUnwindSafe(read)) {
        Ok(res) => res.map_err(|e| e.to_string()),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("malformed Arrow IPC stream ({why})"))
        }
    }
}
