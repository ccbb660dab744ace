//! Generates Rust code for every `.proto` under `proto/` with the vendored `protoc`,
//! so building Conifer never needs a system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    // The node-to-node API keeps prost's codec (a peer's undecodable message is an internal
    // fault); the Pinecone data plane answers a client's undecodable request with
    // INVALID_ARGUMENT (`codec`).
    tonic_prost_build::configure()
        .compile_protos(&["proto/conifer/internal/v1/internal.proto"], &["proto"])?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .compile_protos(&["proto/vector_service.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
