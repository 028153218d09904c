//! The target's end of a slice copy's stream (`PeerNode/ExportSlice`), read
//! straight off HTTP/2: each block is handed on as a view of the frame it
//! arrived in. tonic's `Streaming` first copies every received byte into one
//! decode buffer (a fresh one per message, since the blocks before it are
//! still held by the writer): for a copy of gigabytes that was the largest
//! single cost on the target after the kernel's. The bytes on the wire are
//! gRPC's as before (docs/node-protocol.md); only this reader differs.
//!
//! What it owns: the request's framing, the messages' length-prefixed
//! framing (uncompressed; a compressed message is refused), and the call's
//! status in the response headers or trailers. A message split over frames
//! is joined (one copy of that message only). It must never interpret a
//! chunk (the copy does, `copy.rs`) nor serve anything.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::ServiceExt;

use crate::proto::pb;

/// The method's path (the package's version is part of it).
const PATH: &str = "/slicedb.node.v9.PeerNode/ExportSlice";

/// The gRPC message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;

/// Start an export on `channel` (a connection to the source node).
pub(crate) async fn export_slice(
    channel: Channel,
    req: pb::ExportSliceRequest,
    max_message: usize,
) -> Result<ExportStream, Status> {
    let len = req.encoded_len();
    let mut body = BytesMut::with_capacity(PREFIX + len);
    body.put_u8(0);
    body.put_u32(u32::try_from(len).map_err(|_| Status::internal("export request too large"))?);
    req.encode(&mut body)
        .map_err(|e| Status::internal(format!("encoding the export request: {e}")))?;
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(PATH)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(tonic::body::Body::new(http_body_util::Full::new(
            body.freeze(),
        )))
        .map_err(|e| Status::internal(format!("building the export request: {e}")))?;
    let response = channel
        .oneshot(request)
        .await
        .map_err(|e| Status::unavailable(format!("export request: {e}")))?;
    if response.status() != http::StatusCode::OK {
        return Err(Status::unknown(format!(
            "export answered HTTP {}",
            response.status()
        )));
    }
    // An error before the first message comes as headers only.
    if let Some(s) = Status::from_header_map(response.headers()) {
        if s.code() != Code::Ok {
            return Err(s);
        }
    }
    Ok(ExportStream {
        body: response.into_body(),
        frames: VecDeque::new(),
        buffered: 0,
        max_message,
        ended: false,
    })
}

/// The messages of one export, in order.
pub(crate) struct ExportStream {
    body: tonic::body::Body,
    /// Data frames received and not yet taken, and their bytes in all.
    frames: VecDeque<Bytes>,
    buffered: usize,
    max_message: usize,
    /// The trailers came with an OK status.
    ended: bool,
}

impl ExportStream {
    /// The next message, `None` once the source ended the call with OK.
    pub(crate) async fn next(&mut self) -> Option<Result<pb::SliceCopyChunk, Status>> {
        loop {
            match self.take_message() {
                Err(s) => return Some(Err(s)),
                Ok(Some(m)) => {
                    return Some(
                        pb::SliceCopyChunk::decode(m).map_err(|e| {
                            Status::internal(format!("decoding an export chunk: {e}"))
                        }),
                    )
                }
                Ok(None) => {}
            }
            if self.ended {
                return if self.buffered == 0 {
                    None
                } else {
                    Some(Err(Status::internal("the export ended inside a message")))
                };
            }
            match self.body.frame().await {
                None => return Some(Err(Status::internal("the export ended without a status"))),
                Some(Err(e)) => return Some(Err(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if !data.is_empty() {
                            self.buffered += data.len();
                            self.frames.push_back(data);
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            match Status::from_header_map(&trailers) {
                                Some(s) if s.code() == Code::Ok => self.ended = true,
                                Some(s) => return Some(Err(s)),
                                None => {
                                    return Some(Err(Status::internal(
                                        "the export's trailers carry no status",
                                    )))
                                }
                            }
                        }
                    }
                },
            }
        }
    }

    /// One whole message if the frames hold it: a view of its frame when
    /// it lies in one, else the pieces joined.
    fn take_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buffered < PREFIX {
            return Ok(None);
        }
        let mut prefix = [0u8; PREFIX];
        self.peek(&mut prefix);
        if prefix[0] != 0 {
            return Err(Status::internal(
                "a compressed export message (none was asked for)",
            ));
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.max_message {
            return Err(Status::out_of_range(format!(
                "an export message of {len} bytes, more than {}",
                self.max_message
            )));
        }
        if self.buffered < PREFIX + len {
            return Ok(None);
        }
        self.advance(PREFIX);
        self.buffered -= PREFIX + len;
        let front = self
            .frames
            .front_mut()
            .expect("buffered bytes are in frames");
        if front.len() >= len {
            let m = front.split_to(len);
            if front.is_empty() {
                self.frames.pop_front();
            }
            return Ok(Some(m));
        }
        let mut joined = BytesMut::with_capacity(len);
        while joined.len() < len {
            let f = self
                .frames
                .front_mut()
                .expect("buffered bytes are in frames");
            let n = f.len().min(len - joined.len());
            joined.extend_from_slice(&f[..n]);
            f.advance(n);
            if f.is_empty() {
                self.frames.pop_front();
            }
        }
        Ok(Some(joined.freeze()))
    }

    /// The first `out.len()` buffered bytes, left in place.
    fn peek(&self, out: &mut [u8]) {
        let mut at = 0;
        for f in &self.frames {
            let n = f.len().min(out.len() - at);
            out[at..at + n].copy_from_slice(&f[..n]);
            at += n;
            if at == out.len() {
                return;
            }
        }
    }

    /// Drop `n` buffered bytes from the front (not counted off `buffered`).
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let f = self
                .frames
                .front_mut()
                .expect("buffered bytes are in frames");
            let k = f.len().min(n);
            f.advance(k);
            n -= k;
            if f.is_empty() {
                self.frames.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(frames: Vec<Bytes>) -> ExportStream {
        ExportStream {
            body: tonic::body::Body::empty(),
            buffered: frames.iter().map(|f| f.len()).sum(),
            frames: frames.into(),
            max_message: 1 << 20,
            ended: false,
        }
    }

    fn framed(chunks: &[pb::SliceCopyChunk]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            out.push(0);
            out.extend_from_slice(&(c.encoded_len() as u32).to_be_bytes());
            c.encode(&mut out).unwrap();
        }
        out
    }

    fn chunk(i: u8, len: usize) -> pb::SliceCopyChunk {
        pb::SliceCopyChunk {
            block: Bytes::from(vec![i; len]),
            total_bytes: i as u64,
            ..Default::default()
        }
    }

    /// Messages come out whole and in order however the bytes were cut
    /// into frames: at every cut point, and one byte per frame.
    #[test]
    fn messages_survive_any_framing() {
        let sent = vec![chunk(1, 300), chunk(2, 0), chunk(3, 1000)];
        let wire = framed(&sent);
        let mut cuts: Vec<Vec<Bytes>> = (1..wire.len())
            .map(|at| {
                vec![
                    Bytes::copy_from_slice(&wire[..at]),
                    Bytes::copy_from_slice(&wire[at..]),
                ]
            })
            .collect();
        cuts.push(wire.iter().map(|&b| Bytes::from(vec![b])).collect());
        for frames in cuts {
            let mut s = stream(frames);
            let mut got = Vec::new();
            while let Some(m) = s.take_message().unwrap() {
                got.push(pb::SliceCopyChunk::decode(m).unwrap());
            }
            assert_eq!(got, sent);
            assert_eq!(s.buffered, 0);
            assert!(s.frames.is_empty());
        }
    }

    /// A message in one frame is handed on as a view of that frame.
    #[test]
    fn a_message_in_one_frame_is_not_copied() {
        let wire = Bytes::from(framed(&[chunk(7, 4096)]));
        let mut s = stream(vec![wire.clone()]);
        let m = s.take_message().unwrap().unwrap();
        assert_eq!(m.as_ptr(), wire[PREFIX..].as_ptr());
    }

    /// A partial message waits; a compressed one, or one over the limit,
    /// is refused.
    #[test]
    fn partial_compressed_and_oversized_messages() {
        let wire = framed(&[chunk(1, 100)]);
        let mut s = stream(vec![Bytes::copy_from_slice(&wire[..wire.len() - 1])]);
        assert!(s.take_message().unwrap().is_none());
        let mut compressed = wire.clone();
        compressed[0] = 1;
        assert!(stream(vec![compressed.into()]).take_message().is_err());
        let mut big = wire.clone();
        big[1..5].copy_from_slice(&(2u32 << 20).to_be_bytes());
        assert_eq!(
            stream(vec![big.into()]).take_message().unwrap_err().code(),
            Code::OutOfRange
        );
    }
}
