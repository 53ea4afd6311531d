//! Compiles the vendored Kubernetes protobuf schemas (e2e/proto/k8s) into one descriptor set
//! with protox, so the API server can read and write protobuf bodies without `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const FILES: &[&str] = &[
        "k8s.io/api/core/v1/generated.proto",
        "k8s.io/api/apps/v1/generated.proto",
        "k8s.io/api/coordination/v1/generated.proto",
        "k8s.io/api/storage/v1/generated.proto",
        "k8s.io/api/rbac/v1/generated.proto",
        "k8s.io/api/events/v1/generated.proto",
        "k8s.io/api/authentication/v1/generated.proto",
        "k8s.io/api/authorization/v1/generated.proto",
        "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1/generated.proto",
    ];
    println!("cargo:rerun-if-changed=proto/k8s");
    let mut compiler = protox::Compiler::new(["proto/k8s"])?;
    compiler.include_imports(true).open_files(FILES)?;
    let fds = compiler.encode_file_descriptor_set();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("k8s.fds");
    std::fs::write(out, fds)?;
    Ok(())
}
