//! The `cdi-e2e up` binary, driven the way a user drives it.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{assert_nothing_left, within};

const DEMO: &str = "apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
spec:
  storageClassName: local
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 16Mi
---
apiVersion: v1
kind: Pod
metadata:
  name: app
spec:
  containers:
  - name: app
    image: busybox:1.36
    command: [sleep, infinity]
    volumeMounts:
    - name: data
      mountPath: /data
  volumes:
  - name: data
    persistentVolumeClaim:
      claimName: data
";

async fn kubectl(kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default().as_bytes()).await.unwrap();
    drop(input);
    let out = within(&format!("kubectl {}", args.join(" ")), child.wait_with_output()).await.unwrap();
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn up_installs_cdi_rs_serves_kubectl_runs_a_wffc_claim_and_pod_and_cleans_up_on_sigint() {
    let dir = tempfile::Builder::new().prefix("cdi-e2e-up-").tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cdi-e2e"))
        .args(["up", "--nodes", "2", "--install", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = within("cdi-e2e up to print its address", lines.next_line()).await.unwrap().unwrap();
    assert!(first.contains("https://127.0.0.1:"), "{first}");
    let kc = dir.path().join("kubeconfig");
    let installed = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("cdi-rs is up") {
                return;
            }
        }
        panic!("cdi-e2e up ended before cdi-rs was up");
    };
    within("cdi-e2e up --install to report cdi-rs up", installed).await;
    let running = kubectl(&kc, &["-n", "cdi-rs", "get", "pods", "-o", "jsonpath={.items[*].status.phase}"], None).await;
    assert_eq!(running, "Running Running Running Running", "the populator, the upload proxy and a mover per node run");
    kubectl(&kc, &["apply", "-f", "-"], Some(DEMO)).await;
    kubectl(&kc, &["wait", "--for=jsonpath={.status.phase}=Running", "pod/app", "--timeout=30s"], None).await;
    kubectl(&kc, &["wait", "--for=jsonpath={.status.phase}=Bound", "pvc/data", "--timeout=30s"], None).await;
    let table = kubectl(&kc, &["get", "pvc,pv,pods"], None).await;
    assert!(
        table.contains("persistentvolumeclaim/data") && table.contains("Bound") && table.contains("pod/app"),
        "{table}"
    );

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().unwrap() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    let status = within("cdi-e2e up to stop on SIGINT", child.wait()).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert_nothing_left(&dir.path().canonicalize().unwrap());
}
