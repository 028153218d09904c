//! `COPY ... FROM STDIN` decoding and `COPY ... TO STDOUT` encoding, in
//! PostgreSQL's text, CSV and binary formats, and the pipeline that runs a
//! `COPY ... FROM STDIN` on many cores at once.
//!
//! The decoder is on the bulk-load path: it splits rows and fields without
//! allocating per field (fields without escapes are parsed in place, the rest
//! are unescaped into one reusable scratch buffer) and appends straight into
//! Arrow builders.
//!
//! It owns the COPY formats: which options are accepted, how a row and its
//! fields are found, how a field's text becomes a value (and the SQLSTATE
//! when it does not), and how a value is written back out. It must never
//! load, commit or reach a node itself: the codec files below do no I/O and
//! start no thread, and `from_stdin.rs` only hands batches to the
//! coordinator's `Loader`, which decides what is written and committed.
//! When it splits rows by slice, it must hash them exactly as the loader
//! hashes stored rows (`slicedb_coordinator::write::hash`), or rows land on the
//! wrong slice.
//!
//! - `options.rs`: `CopyOptions` read from a `COPY` statement and checked.
//! - `parse.rs`: one field's text to a typed value.
//! - `columns.rs`: the Arrow builder per column, and conversion errors.
//! - `fields.rs`: field spans, the text format's fast split and escapes.
//! - `binary.rs`: the binary format's framing (header, tuples, trailer),
//!   read and written, and which column types it carries.
//! - `binval.rs`: one value's binary form (also read by `crate::params`,
//!   with `parse.rs`, for the extended protocol's parameters).
//! - `slice_key.rs`: hashing a row's distribution key from its text.
//! - `decode.rs`: `CopyDecoder`, bytes to record batches.
//! - `encode.rs`: `encode_rows`, record batches to COPY TO output.
//! - `from_stdin.rs`: `CopyPipeline`, the threads that decode and load at
//!   once (the only file here that starts threads or talks to the loader).
//! - `to_stdout.rs`: `copy_out`, a query's batches as CopyData messages.
//! - `error.rs`: `CopyError` and the SQLSTATEs of the COPY path.
//! - `fuzz.rs` (tests): property tests of the decoder and the round trip.
//!
//! ```text
//! from_stdin ──> decode ──> options, fields, columns, slice_key, binary
//! to_stdout ──> encode, options, binary
//! encode ──> options, binary
//! binary ──> columns, fields, binval
//! columns, slice_key, encode, binval ──> parse
//! columns ──> binval
//! options, columns, decode, encode, binary ──> error
//! ```

mod binary;
pub(crate) mod binval;
mod columns;
mod decode;
mod encode;
mod error;
mod fields;
mod from_stdin;
#[cfg(test)]
mod fuzz;
mod options;
pub(crate) mod parse;
mod slice_key;
#[cfg(test)]
mod testing;
mod to_stdout;

pub use binary::check_binary_columns;
pub(crate) use columns::{pg_type_name, value_error};
pub use decode::{CopyDecoder, Decoded, MAX_SPLIT_SLICES};
pub use encode::{encode_each_row, encode_header, encode_rows};
pub(crate) use encode::{write_date, write_pg_float8, write_timestamp};
pub use error::CopyError;
pub use from_stdin::{CopyPipeline, Widen};
pub use options::{CopyFormat, CopyOptions};
pub use to_stdout::copy_out;
