//! Generates the protobuf types from `proto/command.proto` with a pure-Rust
//! compiler (protox), so building sozu never needs a system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Canonical paths: protox matches the file against its include directory
    // textually, and a `..` or a symlink on one side only would not match.
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../proto")
        .canonicalize()?;
    let proto_file = proto_dir.join("command.proto");
    // Relative to the package: a target directory copied to another
    // checkout must still watch that checkout's file.
    println!("cargo:rerun-if-changed=../proto/command.proto");

    let file_descriptors = protox::compile([&proto_file], [&proto_dir])?;
    let mut config = prost_build::Config::new();
    config
        .btree_map(["."])
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .type_attribute(".", "#[serde(rename_all = \"snake_case\")]");
    config.compile_fds(file_descriptors)?;
    Ok(())
}
