//! A kubelet per simulated node: it runs the pods bound to its node. This file is the pod
//! lifecycle — start (volumes, identity, containers), watch the processes and restart them
//! under `restartPolicy` with back-off (or end `Succeeded`/`Failed`), and on delete SIGTERM,
//! SIGKILL after the grace period (capped), tear down, confirm with a zero-grace delete.
//! The pieces it uses:
//! - `volumes`: where each volume appears under the node's kubelet root;
//! - `identity`: the service-account token, CA and namespace files, and the mount namespace
//!   that puts them at `/var/run/secrets/kubernetes.io/serviceaccount`;
//! - `images`: which images run as the project's local binaries (others pretend to run);
//! - `container`: a container's command line and environment on this machine;
//! - `probes`: readiness and liveness;
//! - `status`: what the pod's status says.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::process::Child;
use tokio::sync::Mutex;

use super::{is_deleting, record_event};
use crate::addresses::AddressBlock;
use crate::api::auth::Authority;
use crate::api::store::{DeleteOptions, Store};
use crate::api::util::{meta_str, now, str_at};
use crate::cluster::{ClusterConfig, node_name};
use crate::host::{self, Children};

mod container;
mod hosts;
mod identity;
pub mod images;
mod probes;
mod status;
mod volumes;

use identity::Identity;
pub use images::ProjectImages;
use probes::Prober;
use volumes::{lay_out, teardown_paths};

const NAME: &str = "kubelet";
/// The longest a deleted pod's processes get between SIGTERM and SIGKILL here.
const MAX_GRACE: Duration = Duration::from_secs(10);
/// The container path of the kubelet root in node-agent pods.
const HOST_KUBELET_ROOT: &str = "/var/lib/kubelet";

#[derive(Debug)]
struct ContainerRt {
    name: String,
    image: String,
    child: Option<Child>,
    pgid: Option<i32>,
    started_at: String,
    restarts: u32,
    /// Exit code and time of the last run, when it has ended.
    exited: Option<(i32, String)>,
    /// When an ended container may start again (restart back-off).
    restart_after: Option<tokio::time::Instant>,
    /// Its probes, while a process runs.
    prober: Option<Prober>,
}

#[derive(Debug)]
struct PodRt {
    uid: String,
    ip: String,
    started: String,
    containers: Vec<ContainerRt>,
    /// Mount points and device nodes this pod's volumes made.
    volume_paths: Vec<PathBuf>,
    /// Container path → host path, for the processes' arguments and environment.
    path_map: Vec<(String, PathBuf)>,
    /// The service-account files, unless the pod opts out.
    identity: Option<Identity>,
    /// What the pod's `/etc/hosts` holds now.
    hosts: String,
}

#[derive(Debug)]
pub struct Kubelet {
    store: Arc<Store>,
    node: String,
    index: usize,
    root: PathBuf,
    node_dir: PathBuf,
    images: ProjectImages,
    /// The API server, as pods reach it (`KUBERNETES_SERVICE_HOST`/`PORT`).
    api: std::net::SocketAddr,
    /// Issues the pods' service-account tokens.
    authority: Arc<Authority>,
    children: Children,
    pods: Mutex<HashMap<String, PodRt>>,
    next_ip: AtomicU32,
    /// Each node and pod has its own loopback address, so node agents on different nodes
    /// (and clusters) can listen on the same port.
    addresses: Arc<AddressBlock>,
}

impl Kubelet {
    /// The kubelet of node `index` (0-based).
    pub fn new(
        store: Arc<Store>,
        config: &ClusterConfig,
        index: usize,
        children: Children,
        addresses: Arc<AddressBlock>,
        api: std::net::SocketAddr,
        authority: Arc<Authority>,
    ) -> Self {
        let node = node_name(index + 1);
        let node_dir = config.dir.join("nodes").join(&node);
        Kubelet {
            store,
            root: node_dir.join("kubelet"),
            node_dir,
            node,
            index: index + 1,
            images: config.images.clone(),
            api,
            authority,
            children,
            pods: Mutex::new(HashMap::new()),
            next_ip: AtomicU32::new(0),
            addresses,
        }
    }

    pub async fn sweep(&self) -> anyhow::Result<()> {
        let store = &self.store;
        let pods = store.all_where(&store.rt("", "pods"), |p| str_at(p, "spec.nodeName") == self.node);
        let mut state = self.pods.lock().await;
        let live: Vec<&str> = pods.iter().map(|p| meta_str(p, "uid")).collect();
        let gone: Vec<String> = state.keys().filter(|u| !live.contains(&u.as_str())).cloned().collect();
        for uid in gone {
            if let Some(rt) = state.remove(&uid) {
                self.stop_pod(rt, Duration::ZERO).await;
            }
        }
        // Listed once per sweep, for the pods' hosts files.
        let mut services = None;
        for pod in &pods {
            let uid = meta_str(pod, "uid").to_string();
            if is_deleting(pod) {
                let grace = Duration::from_secs(pod["metadata"]["deletionGracePeriodSeconds"].as_u64().unwrap_or(0))
                    .min(MAX_GRACE);
                if let Some(rt) = state.remove(&uid) {
                    self.stop_pod(rt, grace).await;
                } else {
                    self.teardown_dir(&uid);
                }
                let opts = DeleteOptions { grace_seconds: Some(0), uid: Some(uid.clone()), ..Default::default() };
                let _ = store.delete(&store.rt("", "pods"), meta_str(pod, "namespace"), meta_str(pod, "name"), &opts);
                continue;
            }
            if matches!(str_at(pod, "status.phase"), "Succeeded" | "Failed") && !state.contains_key(&uid) {
                continue;
            }
            match state.get_mut(&uid) {
                None => match self.start_pod(pod).await {
                    Ok(Some(rt)) => {
                        self.write_status(pod, &rt)?;
                        state.insert(uid, rt);
                    }
                    Ok(None) => self.waiting(pod, "ContainerCreating", "")?,
                    Err(e) => {
                        tracing::warn!(pod = meta_str(pod, "name"), error = %e, "starting pod");
                        self.waiting(pod, "CreateContainerError", &e.to_string())?;
                    }
                },
                Some(rt) => {
                    if let Some(identity) = rt.identity.as_mut() {
                        identity.refresh(&self.authority, store);
                    }
                    let content = hosts::render(pod, &rt.ip, services.get_or_insert_with(|| hosts::services(store)));
                    if let Err(e) = hosts::write(&self.pod_dir(&uid), content, &mut rt.hosts) {
                        tracing::warn!(pod = meta_str(pod, "name"), error = %e, "refreshing the pod's hosts file");
                    }
                    self.poll(pod, rt).await;
                    self.write_status(pod, rt)?;
                }
            }
        }
        Ok(())
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Signals the process group of a running container of pod `uid`; its pid, if one runs.
    pub async fn signal_container(&self, uid: &str, container: &str, signal: Signal) -> Option<i32> {
        let state = self.pods.lock().await;
        let pgid = state.get(uid)?.containers.iter().find(|c| c.name == container && c.child.is_some())?.pgid?;
        self.children.signal(pgid, signal);
        Some(pgid)
    }

    /// The pid of a running container's process.
    pub async fn container_pid(&self, uid: &str, container: &str) -> Option<i32> {
        let state = self.pods.lock().await;
        state.get(uid)?.containers.iter().find(|c| c.name == container && c.child.is_some())?.pgid
    }

    /// Stops every pod of this node (cluster shutdown).
    pub async fn stop_all(&self) {
        let mut state = self.pods.lock().await;
        for (_, rt) in state.drain() {
            self.stop_pod(rt, Duration::from_secs(2)).await;
        }
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root.join("pods").join(uid)
    }

    /// Lays out volumes and starts containers; `None` while a volume is not ready yet.
    async fn start_pod(&self, pod: &Value) -> anyhow::Result<Option<PodRt>> {
        let store = &self.store;
        let uid = meta_str(pod, "uid");
        let ns = meta_str(pod, "namespace");
        let dir = self.pod_dir(uid);
        let Some(plan) = self.plan_volumes(pod, &dir)? else { return Ok(None) };
        let (volume_paths, host_of) = lay_out(&dir, &plan)?;
        let identity = match identity::service_account(pod, store) {
            Some(sa) => match Identity::write(&dir, &self.authority, store, ns, &sa) {
                Ok(i) => Some(i),
                Err(e) => {
                    teardown_paths(&volume_paths);
                    return Err(e);
                }
            },
            None => None,
        };
        let ip = if pod["spec"]["hostNetwork"] == true {
            self.addresses.node_ip(self.index)
        } else {
            self.addresses.pod_ip(self.index, self.next_ip.fetch_add(1, Ordering::Relaxed))
        };
        let mut hosts_file = String::new();
        if let Err(e) = hosts::write(&dir, hosts::render(pod, &ip, &hosts::services(store)), &mut hosts_file) {
            teardown_paths(&volume_paths);
            return Err(e);
        }
        let mut rt = PodRt {
            uid: uid.to_string(),
            ip,
            started: now(),
            containers: Vec::new(),
            volume_paths,
            path_map: Vec::new(),
            identity,
            hosts: hosts_file,
        };
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let mut map: Vec<(String, PathBuf)> = Vec::new();
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                if let (Some(mp), Some(h)) = (m["mountPath"].as_str(), m["name"].as_str().and_then(|n| host_of.get(n)))
                {
                    let sub = m["subPath"].as_str().unwrap_or_default();
                    map.push((mp.to_string(), if sub.is_empty() { h.clone() } else { h.join(sub) }));
                }
            }
            if let Some(identity) = &rt.identity
                && !map.iter().any(|(p, _)| p == identity::MOUNT_PATH)
            {
                map.push((identity::MOUNT_PATH.to_string(), identity.dir.clone()));
            }
            for d in c["volumeDevices"].as_array().into_iter().flatten() {
                if let (Some(dp), Some(h)) = (d["devicePath"].as_str(), d["name"].as_str().and_then(|n| host_of.get(n)))
                {
                    map.push((dp.to_string(), h.clone()));
                }
            }
            map.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
            rt.path_map.extend(map.iter().cloned());
            let mut crt = ContainerRt {
                name: c["name"].as_str().unwrap_or_default().into(),
                image: c["image"].as_str().unwrap_or_default().into(),
                child: None,
                pgid: None,
                started_at: now(),
                restarts: 0,
                exited: None,
                restart_after: None,
                prober: None,
            };
            if self.images.binary_for(&crt.image).is_some() {
                self.spawn(pod, c, &rt.ip, &map, &mut crt)?;
            }
            rt.containers.push(crt);
        }
        record_event(store, pod, "Normal", "Started", "Started pod containers", NAME);
        Ok(Some(rt))
    }

    /// Notes exited processes and restarts them per restartPolicy.
    async fn poll(&self, pod: &Value, rt: &mut PodRt) {
        let policy = str_at(pod, "spec.restartPolicy").to_string();
        let containers: Vec<Value> = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
        for crt in &mut rt.containers {
            if crt.prober.as_ref().is_some_and(Prober::unhealthy)
                && let Some(pgid) = crt.pgid
            {
                // As the kubelet does on a failed liveness probe: stop it; the restart
                // policy decides what follows (below, once it has exited).
                let message = format!("Container {} failed liveness probe, will be restarted", crt.name);
                record_event(&self.store, pod, "Warning", "Unhealthy", &message, NAME);
                self.children.signal(pgid, Signal::SIGKILL);
                crt.prober = None;
            }
            if let Some(child) = crt.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                if let Some(p) = crt.pgid.take() {
                    self.children.remove(p);
                }
                crt.child = None;
                crt.prober = None;
                let code =
                    status.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0));
                crt.exited = Some((code, now()));
                let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
                if restart {
                    // Back-off doubling from 1 s, capped at 10 s (Kubernetes caps at 5 min).
                    let secs = (1u64 << crt.restarts.min(3)).min(10);
                    crt.restart_after = Some(tokio::time::Instant::now() + Duration::from_secs(secs));
                }
            }
            if crt.child.is_none()
                && let Some(at) = crt.restart_after
                && tokio::time::Instant::now() >= at
            {
                crt.restart_after = None;
                crt.restarts += 1;
                if let Some(c) = containers.iter().find(|c| c["name"] == crt.name.as_str()) {
                    let map = rt.path_map.clone();
                    if let Err(e) = self.spawn(pod, c, &rt.ip.clone(), &map, crt) {
                        tracing::warn!(error = %e, "restarting container");
                    }
                }
            }
        }
    }

    async fn stop_pod(&self, mut rt: PodRt, grace: Duration) {
        for c in &rt.containers {
            if let Some(p) = c.pgid {
                self.children.signal(p, Signal::SIGTERM);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        for c in &mut rt.containers {
            if let Some(child) = c.child.as_mut() {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                if tokio::time::timeout(remaining, child.wait()).await.is_err() {
                    if let Some(p) = c.pgid {
                        self.children.signal(p, Signal::SIGKILL);
                    }
                    let _ = child.wait().await;
                }
            }
            if let Some(p) = c.pgid.take() {
                // The group may hold grandchildren that outlived the leader.
                self.children.signal(p, Signal::SIGKILL);
                self.children.remove(p);
            }
        }
        teardown_paths(&rt.volume_paths);
        self.teardown_dir(&rt.uid);
    }

    /// Removes `pods/<uid>` once nothing is mounted under it (never deletes through a mount).
    fn teardown_dir(&self, uid: &str) {
        let dir = self.pod_dir(uid);
        for m in host::mounts_under(&dir) {
            let _ = host::unmount(&m);
        }
        if host::mounts_under(&dir).is_empty() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
