//! Generates the Rust code of `cdi.mover.v1` with protox: no `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "cdi/mover/v1/mover.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    // Secrets travel in these; their Debug (in lib.rs) redacts them, so a `?request` in a
    // log line cannot leak a password.
    tonic_prost_build::configure()
        .skip_debug(["cdi.mover.v1.BasicAuth", "cdi.mover.v1.Header"])
        .compile_fds(descriptors)?;
    Ok(())
}
