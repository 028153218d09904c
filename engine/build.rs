//! Compiles engine/proto/node.proto with protox (pure Rust, no protoc needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/node.proto");
    let fds = protox::compile(["proto/node.proto"], ["proto"])?;
    // The bulk payloads decode as `bytes::Bytes`: a view of the received
    // buffer instead of a copy into a new Vec.
    // Messages are encoded with `crate::grpc_codec::SizedCodec` (one buffer
    // growth per message instead of a doubling series).
    tonic_prost_build::configure()
        .codec_path("crate::grpc_codec::SizedCodec")
        .bytes(".slicedb.node.v9.WriteRequest.batches")
        .bytes(".slicedb.node.v9.MirrorWriteRequest.blocks")
        .bytes(".slicedb.node.v9.ScanRequest.broadcast")
        .bytes(".slicedb.node.v9.SliceCopyChunk.block")
        .compile_fds(fds)?;
    Ok(())
}
