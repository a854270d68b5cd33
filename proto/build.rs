//! Compiles the .proto files with protox (pure Rust), so no system `protoc` is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        ["dsm/v1/trajectory.proto", "dsm/v1/coordinator.proto", "dsm/v1/replay.proto", "dsm/v1/checkpoint.proto"],
        ["proto"],
    )?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
