//! The real `cdi-populator` binary (this test also makes cargo build it for the end-to-end
//! tests of `cdi-e2e`, which run it on the mini-cluster).

use std::process::Command;

#[test]
fn crds_prints_what_deploy_holds() {
    let out = Command::new(env!("CARGO_BIN_EXE_cdi-populator")).arg("crds").output().expect("run cdi-populator");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    for entry in std::fs::read_dir(&deploy).unwrap() {
        let file = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(
            printed.contains(file.trim()),
            "deploy/crds drifted: run `cargo run -p cdi-populator -- crds --out-dir deploy/crds`"
        );
    }
}

#[test]
fn run_without_a_cluster_fails_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_cdi-populator"))
        .args(["run", "--metrics-listen", "127.0.0.1:0"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run cdi-populator");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.to_lowercase().contains("kubeconfig") || err.contains("Error"), "{err}");
}
