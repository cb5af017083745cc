//! Compiles `proto/` into Rust with protox (pure Rust, so no system `protoc` is needed)
//! and tonic-prost-build, and writes the descriptor set that server reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(
        ["proto/streamscore.proto", "proto/grpc_predict_v2.proto"],
        ["proto"],
    )?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("streamscore_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .btree_map(".")
        // V2 tensors: the BYTES elements and raw contents as `bytes::Bytes`, which
        // decoding slices out of the request buffer instead of copying.
        .bytes(".inference")
        .skip_protoc_run()
        .compile_fds(descriptors.clone())?;
    encoded_ingest_server(descriptors, &out_dir)
}

/// A second `Ingest` server whose requests arrive still encoded
/// (`crate::api::encoded::EncodedIngest`), so a 10,000-event batch is decoded off the
/// request runtime rather than inside it. Every message keeps its one generated type.
fn encoded_ingest_server(
    mut descriptors: prost_types::FileDescriptorSet,
    out_dir: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    descriptors
        .file
        .retain(|file| file.package() == "streamscore.v1");
    for file in &mut descriptors.file {
        file.service.retain(|service| service.name() == "Ingest");
    }
    let encoded_dir = out_dir.join("encoded_ingest");
    std::fs::create_dir_all(&encoded_dir)?;
    tonic_prost_build::configure()
        .out_dir(&encoded_dir)
        .build_client(false)
        .codec_path("crate::api::encoded::EncodedCodec")
        .extern_path(".streamscore.v1", "crate::wire::pb")
        .extern_path(
            ".streamscore.v1.IngestRequest",
            "crate::api::encoded::EncodedIngest",
        )
        .skip_protoc_run()
        .compile_fds(descriptors)?;
    Ok(())
}
