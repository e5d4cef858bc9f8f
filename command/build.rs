//! Generates the protobuf types from `proto/command.proto` with a pure-Rust
//! compiler (protox), so building sozu never needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto");
    let proto_file = format!("{proto_dir}/command.proto");
    println!("cargo:rerun-if-changed={proto_file}");

    let file_descriptors = protox::compile([&proto_file], [proto_dir])?;
    let mut config = prost_build::Config::new();
    config
        .btree_map(["."])
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .type_attribute(".", "#[serde(rename_all = \"snake_case\")]");
    config.compile_fds(file_descriptors)?;
    Ok(())
}
