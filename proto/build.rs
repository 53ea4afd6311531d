//! Generates the Rust code of `cdi.mover.v1` with protox: no `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "cdi/mover/v1/mover.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    // Secrets travel in these; their Debug (in lib.rs) redacts them, so a `?request` in a
    // log line cannot leak a password.
    // Volume and upload data as `Bytes`: a received message's data is then a view into the
    // buffer it arrived in, not a copy of it.
    tonic_prost_build::configure()
        .skip_debug(["cdi.mover.v1.BasicAuth", "cdi.mover.v1.Header", "cdi.mover.v1.ImportProxy"])
        .bytes(".cdi.mover.v1.DataExtent.data")
        .bytes(".cdi.mover.v1.UploadRequest.data")
        .compile_fds(descriptors)?;
    Ok(())
}
