//! The whole of cdi-rs on the mini-cluster: the CRDs, the real `cdi-populator` (leader
//! elected, as a process) and one real `cdi-mover serve` per node, started from the mover
//! DaemonSet of `deploy/` as the DaemonSet controller would.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::wait::{await_condition, conditions};

use crate::{Cluster, ClusterConfig};

/// The namespace of the populator and the movers.
pub const NAMESPACE: &str = "cdi-rs";
/// The image name the mini-cluster's kubelets run as the mover binary.
pub const MOVER_IMAGE: &str = "cdi-rs/mover";
const MOVER_DAEMONSET: &str = include_str!("../../deploy/mover.yaml");
const WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct SystemConfig {
    pub dir: PathBuf,
    pub nodes: usize,
    pub mover_binary: PathBuf,
    pub populator_binary: PathBuf,
    /// Extra `cdi-populator run` flags (e.g. faster retries for tests).
    pub populator_args: Vec<String>,
    /// The populators' `RUST_LOG` (default: `$CDI_POPULATOR_LOG`, else `info,kube=warn`).
    pub populator_log: Option<String>,
    /// The movers' `RUST_LOG`, instead of the DaemonSet's.
    pub mover_log: Option<String>,
}

impl SystemConfig {
    /// Binaries next to the running executable (`target/<profile>/` for `cdi-e2e` itself,
    /// `target/<profile>/deps/..` for tests).
    pub fn new(dir: impl Into<PathBuf>) -> anyhow::Result<SystemConfig> {
        let exe = std::env::current_exe()?;
        let find = |name: &str| -> anyhow::Result<PathBuf> {
            let mut at = exe.parent();
            while let Some(dir) = at {
                let candidate = dir.join(name);
                if candidate.is_file() {
                    return Ok(candidate);
                }
                at = dir.parent().filter(|p| p.ends_with("debug") || p.ends_with("release") || dir.ends_with("deps"));
            }
            bail!("{name} not found next to {}: build the workspace first (cargo build --workspace)", exe.display())
        };
        Ok(SystemConfig {
            dir: dir.into(),
            nodes: 2,
            mover_binary: find("cdi-mover")?,
            populator_binary: find("cdi-populator")?,
            populator_args: Vec::new(),
            populator_log: None,
            mover_log: None,
        })
    }
}

/// A running cdi-rs on a mini-cluster.
pub struct System {
    pub cluster: Cluster,
    pub client: kube::Client,
    pub config: SystemConfig,
    populators: Vec<(String, tokio::process::Child)>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System").field("dir", &self.config.dir).field("populators", &self.populators.len()).finish()
    }
}

impl System {
    /// Starts the cluster, installs the CRDs, starts a populator and waits for its
    /// certificates, then starts a mover on every node and waits for them to run.
    pub async fn start(config: SystemConfig) -> anyhow::Result<System> {
        let mut cluster_config = ClusterConfig::new(&config.dir);
        cluster_config.nodes = config.nodes;
        cluster_config.mover_image = MOVER_IMAGE.into();
        cluster_config.mover_binary = Some(config.mover_binary.clone());
        let cluster = Cluster::start(cluster_config).await?;
        let client = cluster.client()?;
        let mut system = System { cluster, client, config, populators: Vec::new() };
        system.install().await?;
        system.start_populator("cdi-populator-1").await?;
        system.wait_for_certificates().await?;
        system.start_movers().await?;
        Ok(system)
    }

    async fn install(&self) -> anyhow::Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in cdi_populator::crds::all() {
            crds.create(&PostParams::default(), &crd).await.context("creating a CRD")?;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(NAMESPACE.into()), ..Default::default() },
            ..Default::default()
        };
        namespaces.create(&PostParams::default(), &ns).await.context("creating the namespace")?;
        Ok(())
    }

    /// Starts one more populator process (they elect a leader).
    pub async fn start_populator(&mut self, identity: &str) -> anyhow::Result<()> {
        // Appended to: a populator restarted under the same identity keeps its predecessor's
        // log for the post-mortem (and for the tests that search every log line).
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(identity))?;
        let child = tokio::process::Command::new(&self.config.populator_binary)
            .arg("run")
            .args(["--namespace", NAMESPACE, "--holder-image", MOVER_IMAGE, "--metrics-listen", "127.0.0.1:0"])
            .args(&self.config.populator_args)
            .env("KUBECONFIG", self.cluster.kubeconfig_path())
            .env("POD_NAME", identity)
            .env("RUST_LOG", self.populator_log_filter())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.config.populator_binary.display()))?;
        self.populators.push((identity.to_string(), child));
        Ok(())
    }

    fn populator_log_filter(&self) -> String {
        let from_env = || std::env::var("CDI_POPULATOR_LOG").ok();
        self.config.populator_log.clone().or_else(from_env).unwrap_or_else(|| "info,kube=warn".into())
    }

    /// Kills a populator at once (SIGKILL), as a crash would.
    pub async fn kill_populator(&mut self, identity: &str) -> anyhow::Result<()> {
        let at = self.populators.iter().position(|(id, _)| id == identity).context("no such populator")?;
        let (_, mut child) = self.populators.remove(at);
        child.kill().await?;
        Ok(())
    }

    /// The process id of a running populator.
    pub fn populator_pid(&self, identity: &str) -> Option<u32> {
        self.populators.iter().find(|(id, _)| id == identity)?.1.id()
    }

    /// Where a populator serves `/metrics` and `/healthz` (it binds an ephemeral port and
    /// logs it), once it has said so.
    pub fn populator_metrics_addr(&self, identity: &str) -> Option<std::net::SocketAddr> {
        let log = self.populator_log(identity);
        let line = log.lines().find(|l| l.contains("metrics on /metrics"))?;
        let value = line.split("addr=").nth(1)?;
        value.split(|c: char| c.is_whitespace() || c == '\u{1b}').next()?.parse().ok()
    }

    pub fn log_path(&self, identity: &str) -> PathBuf {
        self.config.dir.join(format!("{identity}.log"))
    }

    pub fn populator_log(&self, identity: &str) -> String {
        std::fs::read_to_string(self.log_path(identity)).unwrap_or_default()
    }

    /// Every process log of the system: the populators', and every container's on every
    /// node (the movers, the holders), as `(file, text)`.
    pub fn all_logs(&self) -> Vec<(PathBuf, String)> {
        let mut files: Vec<PathBuf> = self.populators.iter().map(|(id, _)| self.log_path(id)).collect();
        let nodes = std::fs::read_dir(self.config.dir.join("nodes")).into_iter().flatten().flatten();
        for node in nodes {
            files.extend(std::fs::read_dir(node.path().join("logs")).into_iter().flatten().flatten().map(|f| f.path()));
        }
        files.into_iter().map(|f| (f.clone(), std::fs::read_to_string(&f).unwrap_or_default())).collect()
    }

    async fn wait_for_certificates(&self) -> anyhow::Result<()> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), NAMESPACE);
        let appeared = await_condition(secrets, "cdi-mover-tls", |s: Option<&Secret>| s.is_some());
        tokio::time::timeout(WAIT, appeared).await.map_err(|_| {
            anyhow::anyhow!(
                "the populator made no certificates within {WAIT:?}: {}",
                self.populator_log("cdi-populator-1")
            )
        })??;
        Ok(())
    }

    /// One mover pod per node from the DaemonSet's template (the mini-cluster has no
    /// DaemonSet controller).
    async fn start_movers(&self) -> anyhow::Result<()> {
        let ds: DaemonSet = MOVER_DAEMONSET
            .split("\n---")
            .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
            .find(|v| v["kind"] == "DaemonSet")
            .map(serde_json::from_value)
            .context("deploy/mover.yaml has no DaemonSet")??;
        let template = ds.spec.context("DaemonSet without spec")?.template;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NAMESPACE);
        for node in self.cluster.node_names() {
            let mut spec = template.spec.clone().context("template without spec")?;
            spec.node_name = Some(node.clone());
            if let Some(filter) = &self.config.mover_log {
                for env in spec.containers.iter_mut().flat_map(|c| c.env.iter_mut().flatten()) {
                    if env.name == "RUST_LOG" {
                        env.value = Some(filter.clone());
                    }
                }
            }
            let pod = Pod {
                metadata: ObjectMeta {
                    name: Some(format!("cdi-mover-{node}")),
                    labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                    ..Default::default()
                },
                spec: Some(spec),
                status: None,
            };
            pods.create(&PostParams::default(), &pod).await.context("creating a mover pod")?;
        }
        for node in self.cluster.node_names() {
            let name = format!("cdi-mover-{node}");
            let running = await_condition(pods.clone(), &name, conditions::is_pod_running());
            tokio::time::timeout(WAIT, running).await.map_err(|_| anyhow::anyhow!("mover on {node} not running"))??;
        }
        Ok(())
    }

    /// Stops the populators (SIGTERM), then the cluster.
    pub async fn shutdown(mut self) {
        for (_, child) in &mut self.populators {
            if let Some(pid) = child.id() {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
        self.cluster.shutdown().await;
    }
}

/// Where a PV's data is on this host: the mounted directory of a filesystem volume, or the
/// loop device of a block volume.
pub fn pv_backing(pv: &k8s_openapi::api::core::v1::PersistentVolume) -> Option<PathBuf> {
    let spec = pv.spec.as_ref()?;
    let attrs = spec.csi.as_ref()?.volume_attributes.as_ref()?;
    // A filesystem volume may sit on a loop device too: its mount point is what holds data.
    let key = if spec.volume_mode.as_deref() == Some("Block") {
        crate::controllers::provisioner::ATTR_DEVICE
    } else {
        crate::controllers::provisioner::ATTR_PATH
    };
    attrs.get(key).map(PathBuf::from)
}
