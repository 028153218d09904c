//! COPY TO STDOUT: a query's record batches as the CopyData messages the
//! client is sent, one per row, in the COPY's format.
//!
//! It owns the messages only (where the header goes, one per row); the
//! bytes are `encode.rs`'s, the query is the front end's, and pgwire sends
//! the messages, the binary trailer and the `COPY n` tag.

use std::sync::{Arc, Mutex};

use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use pgwire::api::results::CopyResponse;
use pgwire::error::PgWireResult;
use pgwire::messages::copy::CopyData;

use super::binary::check_binary_columns;
use super::encode::{encode_each_row, encode_header};
use super::options::CopyOptions;
use crate::errors::SqlError;

/// The CopyOutResponse of `stream` in the format of `opts`: streamed, one
/// batch at a time encoded, so memory does not grow with the result.
/// Refused (0A000) before anything is sent if binary COPY cannot carry a
/// column.
pub fn copy_out(
    stream: SendableRecordBatchStream,
    opts: CopyOptions,
) -> Result<CopyResponse, SqlError> {
    let schema = stream.schema();
    let ncols = schema.fields().len();
    let format = opts.format_code();
    if format == 1 {
        check_binary_columns(&schema, true)?;
    }
    // pgwire counts the CopyData messages for the "COPY n" tag (all but
    // the binary trailer, which it appends itself). The header goes in the
    // first row's message so it is not counted; with no rows it goes
    // alone, and the tag says one row too many.
    let header = Some(encode_header(&schema, &opts)).filter(|h| !h.is_empty());
    let header = Arc::new(Mutex::new(header));
    let first = header.clone();
    let rows = stream
        .flat_map(move |batch| {
            let mut messages: Vec<PgWireResult<CopyData>> = Vec::new();
            let mut header = first.lock().unwrap_or_else(|e| e.into_inner());
            let encoded = batch.map_err(SqlError::from).and_then(|b| {
                Ok(encode_each_row(&b, &opts, |row| {
                    let bytes = match header.take() {
                        Some(mut h) => {
                            h.extend_from_slice(row);
                            h
                        }
                        None => row.to_vec(),
                    };
                    messages.push(Ok(CopyData::new(bytes.into())));
                })?)
            });
            if let Err(e) = encoded {
                messages.push(Err(e.into()));
            }
            futures::stream::iter(messages)
        })
        .chain(
            futures::stream::once(async move {
                let h = header.lock().unwrap_or_else(|e| e.into_inner()).take();
                h.map(|h| Ok(CopyData::new(h.into())))
            })
            .filter_map(futures::future::ready),
        );
    Ok(CopyResponse::new(format, ncols, rows))
}
