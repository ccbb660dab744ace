//! Generates Rust code for every `.proto` under `proto/` with the vendored `protoc`,
//! so building Conifer never needs a system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .compile_protos(
            &[
                "proto/conifer/internal/v1/internal.proto",
                "proto/vector_service.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
