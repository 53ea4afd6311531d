//! The fixture every test uses: its own cluster in its own temp dir on an ephemeral port,
//! kube-rs and kubectl pointed at it, and awaits that say what hung.

use std::future::Future;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use cdi_e2e::{Cluster, ClusterConfig};
use kube::Client;

// Generous: CI runs on 2 cores with other suites competing; a real hang
// still fails well inside nextest's limit.
pub const WAIT: Duration = Duration::from_secs(90);

pub struct TestCluster {
    pub cluster: Option<Cluster>,
    pub client: Client,
    /// Kept for its Drop: the directory goes when the test ends.
    pub _dir: tempfile::TempDir,
}

impl TestCluster {
    pub async fn start() -> TestCluster {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ClusterConfig)) -> TestCluster {
        let dir = tempfile::Builder::new().prefix("cdi-e2e-test-").tempdir().expect("temp dir");
        let mut config = ClusterConfig::new(dir.path());
        tweak(&mut config);
        let cluster = within("the cluster to start", Cluster::start(config)).await.expect("cluster start");
        let client = cluster.client().expect("kube client");
        TestCluster { cluster: Some(cluster), client, _dir: dir }
    }

    pub fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("running")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.cluster().kubeconfig_path()
    }

    /// Runs kubectl against this cluster and returns its output, whatever the exit status.
    pub async fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use tokio::io::AsyncWriteExt;
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(self.kubeconfig()).args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().expect("kubectl is installed");
        let mut input = child.stdin.take().expect("stdin");
        let text = stdin.unwrap_or_default().to_string();
        let what = format!("kubectl {}", args.join(" "));
        within(&what, async move {
            input.write_all(text.as_bytes()).await.expect("writing kubectl stdin");
            drop(input);
            child.wait_with_output().await.expect("kubectl ran")
        })
        .await
    }

    /// Runs kubectl and insists on success; returns stdout.
    pub async fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_stdin(args, None).await
    }

    pub async fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_output(args, stdin).await;
        assert!(
            out.status.success(),
            "kubectl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Runs `python3 -c script` with `KUBECONFIG` set to this cluster's admin kubeconfig
    /// (the official `kubernetes` client is installed with pip first if it is missing), and
    /// returns its output, whatever the exit status. Async: the cluster serves from this
    /// test's runtime, so the script must not block it.
    pub async fn python(&self, script: &str) -> Output {
        let run = |args: Vec<String>| {
            let mut cmd = tokio::process::Command::new("python3");
            cmd.args(args).env("KUBECONFIG", self.kubeconfig()).kill_on_drop(true);
            cmd.stdin(std::process::Stdio::null());
            async move { cmd.output().await.expect("python3 is installed") }
        };
        let probe = run(vec!["-c".into(), "import kubernetes".into()]).await;
        if !probe.status.success() {
            let pip = within(
                "pip to install the kubernetes client",
                run(["-m", "pip", "install", "--quiet", "kubernetes"].map(String::from).to_vec()),
            )
            .await;
            assert!(pip.status.success(), "pip install kubernetes failed: {}", String::from_utf8_lossy(&pip.stderr));
        }
        within("the python script", run(vec!["-c".into(), script.into()])).await
    }

    /// Stops the cluster and checks that no mount, loop device or process of it is left.
    pub async fn shutdown_and_check_leaks(mut self) {
        let cluster = self.cluster.take().expect("running");
        let dir = cluster.dir().to_path_buf();
        within("the cluster to shut down", cluster.shutdown()).await;
        assert_nothing_left(&dir);
    }
}

pub fn assert_nothing_left(dir: &std::path::Path) {
    let mounts = cdi_e2e::host::mounts_under(dir);
    assert!(mounts.is_empty(), "mounts left behind: {mounts:?}");
    let loops = cdi_e2e::host::loops_under(dir);
    assert!(loops.is_empty(), "loop devices left behind: {loops:?}");
}

/// Awaits `fut`, failing with a message naming what probably hung.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// A shell script at `dir/name` the kubelets can run as a project image's binary (an image
/// `…/name` or `…/cdi-name`, once the cluster maps it with `ClusterConfig::images`).
pub fn shell_script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("writing the script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("making it executable");
    path
}

pub fn json_of(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}
