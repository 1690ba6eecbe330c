//! Compiles the .proto files with protox (pure Rust, no system `protoc`) and
//! generates prost messages and tonic clients and servers from them. The
//! encoded descriptor set is kept too, for gRPC server reflection.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/stocks.proto", "proto/mesh.proto"];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }

    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // One descriptor set per API, so each server reflects only its own.
    for (file, out) in [
        ("stocks.proto", "stockdata_descriptor.bin"),
        ("mesh.proto", "mesh_descriptor.bin"),
    ] {
        let mut set = descriptors.clone();
        set.file.retain(|f| f.name() == file);
        std::fs::write(out_dir.join(out), set.encode_to_vec())?;
    }

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
