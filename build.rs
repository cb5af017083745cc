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
        .compile_fds(descriptors)?;
    Ok(())
}
