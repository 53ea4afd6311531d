//! The whole of cdi-rs on the mini-cluster, installed as on any cluster: `kubectl apply -k`
//! of `deploy/` (through a small overlay when a test wants other flags or log levels), then
//! the populator Deployment's rollout, the mover DaemonSet's and the leader election awaited.
//! The kubelets run the `cdi-rs/populator` and `cdi-rs/mover` images as the local binaries,
//! with the service-account identity and RBAC of `deploy/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::TryStreamExt as _;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;

use crate::controllers::kubelet::ProjectImages;
use crate::{Cluster, ClusterConfig};

/// The namespace of the populator and the movers.
pub const NAMESPACE: &str = "cdi-rs";
/// The image the holder pods run (the mover's, as `deploy/` leaves the populator's default).
pub const MOVER_IMAGE: &str = "cdi-rs/mover";
const POPULATOR: &str = "cdi-populator";
const POPULATOR_CONTAINER: &str = "populator";
const UPLOAD_PROXY: &str = "cdi-uploadproxy";
const MOVER: &str = "cdi-mover";
/// Where the project's manifests are in this source tree.
pub const DEPLOY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
const WAIT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone)]
pub struct SystemConfig {
    pub dir: PathBuf,
    pub nodes: usize,
    pub mover_binary: PathBuf,
    pub populator_binary: PathBuf,
    /// The manifests to apply (`deploy/`).
    pub deploy_dir: PathBuf,
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
        let bin_dir = binaries_dir()?;
        Ok(SystemConfig {
            dir: dir.into(),
            nodes: 2,
            mover_binary: bin_dir.join("cdi-mover"),
            populator_binary: bin_dir.join("cdi-populator"),
            deploy_dir: PathBuf::from(DEPLOY_DIR),
            populator_args: Vec::new(),
            populator_log: None,
            mover_log: None,
        })
    }

    pub fn images(&self) -> ProjectImages {
        let mut images = ProjectImages::default();
        images.insert("mover", self.mover_binary.clone());
        images.insert("populator", self.populator_binary.clone());
        images
    }

    fn populator_log_filter(&self) -> String {
        let from_env = || std::env::var("CDI_POPULATOR_LOG").ok();
        self.populator_log.clone().or_else(from_env).unwrap_or_else(|| "info,kube=warn".into())
    }
}

/// The directory holding the project's binaries: the running executable's, or its parent
/// for a test binary in `deps/`.
pub fn binaries_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut at = exe.parent();
    while let Some(dir) = at {
        if dir.join("cdi-mover").is_file() && dir.join("cdi-populator").is_file() {
            return Ok(dir.to_path_buf());
        }
        at = dir.parent().filter(|_| dir.ends_with("deps"));
    }
    bail!(
        "cdi-mover and cdi-populator not found next to {}: build the workspace first (cargo build --workspace)",
        exe.display()
    )
}

/// A running cdi-rs on a mini-cluster.
pub struct System {
    pub cluster: Cluster,
    pub client: kube::Client,
    pub config: SystemConfig,
    /// Test names of populator replicas (`cdi-populator-1`, …) → their pods.
    populators: Vec<(String, String)>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System").field("dir", &self.config.dir).field("populators", &self.populators).finish()
    }
}

impl System {
    /// Starts the cluster, installs cdi-rs from `deploy/` with kubectl and waits until the
    /// populator leads and a mover runs on every node.
    pub async fn start(config: SystemConfig) -> anyhow::Result<System> {
        let mut cluster_config = ClusterConfig::new(&config.dir);
        cluster_config.nodes = config.nodes;
        cluster_config.images = config.images();
        let cluster = Cluster::start(cluster_config).await?;
        let client = cluster.client()?;
        let overlay = Overlay {
            populator_args: config.populator_args.clone(),
            populator_log: Some(config.populator_log_filter()),
            mover_log: config.mover_log.clone(),
        };
        install(&cluster, &config.deploy_dir, &overlay).await?;
        let mut system = System { cluster, client, config, populators: Vec::new() };
        let leader = system.wait_until_up().await?;
        system.populators.push(("cdi-populator-1".into(), leader));
        Ok(system)
    }

    /// Waits for both rollouts and a leader; returns the leader's pod name.
    async fn wait_until_up(&self) -> anyhow::Result<String> {
        wait_for_rollout(&self.client, self.config.nodes).await.map_err(|e| self.explain(e))?;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), NAMESPACE);
        let led = await_condition(leases, POPULATOR, |l: Option<&Lease>| {
            l.and_then(|l| l.spec.as_ref()?.holder_identity.as_ref()).is_some_and(|h| !h.is_empty())
        });
        let lease = tokio::time::timeout(WAIT, led)
            .await
            .map_err(|_| self.explain(anyhow::anyhow!("no populator became leader within {WAIT:?}")))??;
        lease.and_then(|l| l.spec?.holder_identity).context("the lease lost its holder")
    }

    /// An error with what the populator logged, for a failed start.
    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        let logs: Vec<String> = self
            .all_logs()
            .into_iter()
            .filter(|(f, _)| f.to_string_lossy().contains(POPULATOR))
            .map(|(f, text)| format!("--- {}\n{text}", f.display()))
            .collect();
        e.context(format!("cdi-rs did not come up; populator logs:\n{}", logs.join("\n")))
    }

    /// The pod of a populator replica by its test name (`cdi-populator-1` is the first).
    pub fn populator_pod(&self, identity: &str) -> Option<&str> {
        self.populators.iter().find(|(id, _)| id == identity).map(|(_, pod)| pod.as_str())
    }

    /// The mover DaemonSet's pod on `node`.
    pub fn mover_pod(&self, node: &str) -> Option<String> {
        let store = self.cluster.store();
        let pods = store.all_where(&store.rt("", "pods"), |p| {
            crate::api::util::meta_str(p, "namespace") == NAMESPACE
                && p["metadata"]["labels"]["app.kubernetes.io/name"] == MOVER
                && crate::api::util::str_at(p, "spec.nodeName") == node
                && p["metadata"]["deletionTimestamp"].is_null()
        });
        pods.first().map(|p| crate::api::util::meta_str(p, "name").to_string())
    }

    /// One more populator replica under the test name `identity` (the Deployment scales up;
    /// they elect a leader). A replica already known is left to its pod's restart policy.
    pub async fn start_populator(&mut self, identity: &str) -> anyhow::Result<()> {
        if self.populator_pod(identity).is_some() {
            return Ok(());
        }
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), NAMESPACE);
        let replicas = self.populators.len() + 1;
        let patch = json!({"spec": {"replicas": replicas}});
        deployments.patch(POPULATOR, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NAMESPACE);
        let known: Vec<String> = self.populators.iter().map(|(_, p)| p.clone()).collect();
        let config = watcher::Config::default().labels("app.kubernetes.io/name=cdi-populator");
        let found = async {
            let pods = watcher(pods, config).applied_objects();
            futures_util::pin_mut!(pods);
            while let Some(p) = pods.try_next().await? {
                let name = p.metadata.name.clone().unwrap_or_default();
                if !known.contains(&name) && p.metadata.deletion_timestamp.is_none() && is_ready(&p) {
                    return anyhow::Ok(name);
                }
            }
            bail!("the watch of populator pods ended")
        };
        let pod = tokio::time::timeout(WAIT, found).await.context("the new populator replica did not get ready")??;
        self.populators.push((identity.to_string(), pod));
        Ok(())
    }

    /// Kills a populator's process at once (SIGKILL), as a crash would; its pod restarts it
    /// after the kubelet's back-off, under the same identity.
    pub async fn kill_populator(&mut self, identity: &str) -> anyhow::Result<()> {
        let pod = self.populator_pod(identity).context("no such populator")?.to_string();
        self.cluster.signal_container(NAMESPACE, &pod, POPULATOR_CONTAINER, nix::sys::signal::Signal::SIGKILL).await?;
        Ok(())
    }

    /// The process id of a running populator.
    pub async fn populator_pid(&self, identity: &str) -> Option<u32> {
        let pod = self.populator_pod(identity)?;
        self.cluster.container_pid(NAMESPACE, pod, POPULATOR_CONTAINER).await.and_then(|p| u32::try_from(p).ok())
    }

    /// Where a populator serves `/metrics` and `/healthz`, once it has logged it.
    pub fn populator_metrics_addr(&self, identity: &str) -> Option<std::net::SocketAddr> {
        let log = self.populator_log(identity);
        let line = log.lines().rev().find(|l| l.contains("metrics on /metrics"))?;
        let value = line.split("addr=").nth(1)?;
        value.split(|c: char| c.is_whitespace() || c == '\u{1b}').next()?.parse().ok()
    }

    /// Everything a populator replica's container has logged, restarts included.
    pub fn populator_log(&self, identity: &str) -> String {
        let Some(pod) = self.populator_pod(identity) else { return String::new() };
        std::fs::read_to_string(self.cluster.container_log_path(NAMESPACE, pod, POPULATOR_CONTAINER))
            .unwrap_or_default()
    }

    /// Every container log on every node (populators, movers, holders), as `(file, text)`.
    pub fn all_logs(&self) -> Vec<(PathBuf, String)> {
        let mut files = Vec::new();
        let nodes = std::fs::read_dir(self.config.dir.join("nodes")).into_iter().flatten().flatten();
        for node in nodes {
            files.extend(std::fs::read_dir(node.path().join("logs")).into_iter().flatten().flatten().map(|f| f.path()));
        }
        files.into_iter().map(|f| (f.clone(), std::fs::read_to_string(&f).unwrap_or_default())).collect()
    }

    /// Stops everything: the pods (SIGTERM, then SIGKILL after a short grace), then the cluster.
    pub async fn shutdown(self) {
        self.cluster.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn relative_paths_climb_to_the_common_ancestor() {
        use std::path::Path;
        assert_eq!(
            super::relative(Path::new("/work/deploy"), Path::new("/tmp/x/install")),
            Path::new("../../../work/deploy")
        );
        assert_eq!(super::relative(Path::new("/a/b/deploy"), Path::new("/a/b/c")), Path::new("../deploy"));
    }
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What an install changes from `deploy/`, the way a user would: a kustomize overlay.
#[derive(Debug, Clone, Default)]
pub struct Overlay {
    pub populator_args: Vec<String>,
    pub populator_log: Option<String>,
    pub mover_log: Option<String>,
}

/// `kubectl apply -k` of `deploy/` (through an overlay in the cluster's directory when
/// `overlay` changes anything).
pub async fn install(cluster: &Cluster, deploy_dir: &Path, overlay: &Overlay) -> anyhow::Result<()> {
    let deploy_dir = deploy_dir.canonicalize().with_context(|| format!("no manifests at {}", deploy_dir.display()))?;
    let target = if overlay.populator_args.is_empty() && overlay.populator_log.is_none() && overlay.mover_log.is_none()
    {
        deploy_dir
    } else {
        write_overlay(&cluster.dir().join("install"), &deploy_dir, overlay)?
    };
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .arg("apply")
        .arg("-k")
        .arg(&target)
        .output()
        .await
        .context("running kubectl (installing cdi-rs needs it on the PATH)")?;
    if !out.status.success() {
        bail!("kubectl apply -k {} failed: {}", target.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn write_overlay(dir: &Path, base: &Path, overlay: &Overlay) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut patches = Vec::new();
    let env_patch = |kind: &str, name: &str, container: &str, value: &str| {
        json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": NAMESPACE},
               "spec": {"template": {"spec": {"containers": [
                   {"name": container, "env": [{"name": "RUST_LOG", "value": value}]}]}}}})
    };
    if let Some(filter) = &overlay.populator_log {
        std::fs::write(
            dir.join("populator-log.json"),
            env_patch("Deployment", POPULATOR, POPULATOR_CONTAINER, filter).to_string(),
        )?;
        patches.push(json!({"path": "populator-log.json"}));
    }
    if let Some(filter) = &overlay.mover_log {
        std::fs::write(dir.join("mover-log.json"), env_patch("DaemonSet", MOVER, "mover", filter).to_string())?;
        patches.push(json!({"path": "mover-log.json"}));
    }
    if !overlay.populator_args.is_empty() {
        let ops: Vec<_> = overlay
            .populator_args
            .iter()
            .map(|a| json!({"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": a}))
            .collect();
        std::fs::write(dir.join("populator-args.json"), serde_json::to_string(&ops)?)?;
        patches.push(json!({"path": "populator-args.json",
            "target": {"group": "apps", "version": "v1", "kind": "Deployment", "name": POPULATOR}}));
    }
    // JSON is YAML: kustomize reads this as it would a hand-written kustomization.yaml.
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [relative(base, &dir.canonicalize()?).display().to_string()],
        "patches": patches,
    });
    std::fs::write(dir.join("kustomization.yaml"), serde_json::to_string_pretty(&kustomization)?)?;
    Ok(dir.to_path_buf())
}

/// `to` as seen from `from` (both absolute): kustomize takes only relative bases.
fn relative(to: &Path, from: &Path) -> PathBuf {
    let (to, from): (Vec<_>, Vec<_>) = (to.components().collect(), from.components().collect());
    let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
    let mut out: PathBuf = from[common..].iter().map(|_| "..").collect();
    out.extend(&to[common..]);
    out
}

/// Waits until the populator and upload proxy Deployments are Available with every replica
/// updated and the mover DaemonSet has an available, updated pod on each of `nodes` nodes
/// (what `kubectl rollout status` checks). The upload proxy counts: a client that finds the
/// published upload URL would otherwise meet a Service with no ready endpoint.
pub async fn wait_for_rollout(client: &kube::Client, nodes: usize) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    for name in [POPULATOR, UPLOAD_PROXY] {
        let available = await_condition(deployments.clone(), name, |d: Option<&Deployment>| {
            d.is_some_and(|d| {
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let Some(s) = d.status.as_ref() else { return false };
                let generation_seen = s.observed_generation >= d.metadata.generation;
                let available = s.conditions.iter().flatten().any(|c| c.type_ == "Available" && c.status == "True");
                generation_seen
                    && available
                    && s.updated_replicas == Some(want)
                    && s.available_replicas == Some(want)
                    && s.replicas == Some(want)
            })
        });
        tokio::time::timeout(WAIT, available)
            .await
            .map_err(|_| anyhow::anyhow!("the {name} Deployment was not available within {WAIT:?}"))??;
    }
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), NAMESPACE);
    let rolled_out = await_condition(sets, MOVER, move |d: Option<&DaemonSet>| {
        d.and_then(|d| d.status.as_ref()).is_some_and(|s| {
            s.desired_number_scheduled == nodes as i32
                && s.number_available == Some(nodes as i32)
                && s.updated_number_scheduled == Some(nodes as i32)
        })
    });
    tokio::time::timeout(WAIT, rolled_out)
        .await
        .map_err(|_| anyhow::anyhow!("the {MOVER} DaemonSet did not roll out on {nodes} nodes within {WAIT:?}"))??;
    Ok(())
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
