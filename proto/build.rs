//! Generates the Rust code of `cdi.mover.v1` with protox: no `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "cdi/mover/v1/mover.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
