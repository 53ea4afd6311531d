//! A kubelet per simulated node. It runs the pods bound to its node:
//! - volumes are laid out where the real kubelet puts them under the node's kubelet root:
//!   a Filesystem PV is bind-mounted at `pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`, a
//!   Block PV appears as a device node (same major/minor as its loop device) at
//!   `pods/<uid>/volumeDevices/kubernetes.io~csi/<pv>`; emptyDir, configMap and secret
//!   volumes get their usual directories; hostPath `/var/lib/kubelet` is the node's kubelet
//!   root, other host paths live under the node's directory;
//! - containers whose image is the configured mover image run the mover binary as a
//!   process (argv = the binary, then `command[1..]` and `args`), with the pod's env plus
//!   `NODE_NAME`, and with container paths of its mounts rewritten to where they are on this
//!   machine (so `--kubelet-root=/var/lib/kubelet` becomes the node's kubelet root); other
//!   containers only pretend to run;
//! - pod status follows: `Pending` (ContainerCreating while volumes are not ready),
//!   `Running` with podIP, conditions and container statuses, `Succeeded`/`Failed` when
//!   processes exit under `restartPolicy` Never/OnFailure, restarts with back-off otherwise;
//! - a deleted pod's processes get SIGTERM, then SIGKILL after the grace period (capped),
//!   its volume paths are torn down, and the kubelet confirms with a zero-grace delete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::process::Child;
use tokio::sync::Mutex;

use super::provisioner::{ATTR_DEVICE, ATTR_PATH};
use super::{is_deleting, merge, record_event};
use crate::addresses::AddressBlock;
use crate::api::auth::Authority;
use crate::api::store::{DeleteOptions, Store, Sub};
use crate::api::util::{meta_str, now, str_at};
use crate::cluster::{ClusterConfig, node_name};
use crate::host::{self, Children};

mod container;
mod identity;
pub mod images;
mod probes;

use container::{decode_b64, expand_vars, own_address, rewrite};
use identity::Identity;
pub use images::ProjectImages;
use probes::Prober;

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
        let pods: Vec<Value> = store.all_where(&store.rt("", "pods"), |p| str_at(p, "spec.nodeName") == self.node);
        let mut state = self.pods.lock().await;
        let live: Vec<&str> = pods.iter().map(|p| meta_str(p, "uid")).collect();
        let gone: Vec<String> = state.keys().filter(|u| !live.contains(&u.as_str())).cloned().collect();
        for uid in gone {
            if let Some(rt) = state.remove(&uid) {
                self.stop_pod(rt, Duration::ZERO).await;
            }
        }
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

    fn waiting(&self, pod: &Value, reason: &str, message: &str) -> anyhow::Result<()> {
        let statuses: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let mut w = json!({"reason": reason});
                if !message.is_empty() {
                    w["message"] = json!(message);
                }
                json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": false, "started": false,
                       "restartCount": 0, "state": {"waiting": w}})
            })
            .collect();
        if pod["status"]["containerStatuses"] != json!(statuses) {
            let status =
                json!({"status": {"hostIP": self.addresses.node_ip(self.index), "containerStatuses": statuses}});
            merge(&self.store, ("", "pods"), pod, Sub::Status, status, NAME)?;
        }
        Ok(())
    }

    /// Lays out volumes and starts containers; `None` while a volume is not ready yet.
    async fn start_pod(&self, pod: &Value) -> anyhow::Result<Option<PodRt>> {
        let store = &self.store;
        let uid = meta_str(pod, "uid");
        let ns = meta_str(pod, "namespace");
        let dir = self.pod_dir(uid);
        let mut plan: Vec<(String, VolumeSource)> = Vec::new();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or_default().to_string();
            let src = if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
                let Ok(c) = store.get(&store.rt("", "persistentvolumeclaims"), ns, claim) else { return Ok(None) };
                if str_at(&c, "status.phase") != "Bound" {
                    return Ok(None);
                }
                let Ok(pv) = store.get(&store.rt("", "persistentvolumes"), "", str_at(&c, "spec.volumeName")) else {
                    return Ok(None);
                };
                let attrs = &pv["spec"]["csi"]["volumeAttributes"];
                let pv_name = meta_str(&pv, "name").to_string();
                if str_at(&pv, "spec.volumeMode") == "Block" {
                    let Some(dev) = attrs[ATTR_DEVICE].as_str() else { return Ok(None) };
                    VolumeSource::Block { pv: pv_name, device: dev.into() }
                } else if let Some(p) = attrs[ATTR_PATH].as_str() {
                    VolumeSource::Filesystem { pv: pv_name, path: p.into() }
                } else if let Some(p) = pv["spec"]["hostPath"]["path"].as_str().or(pv["spec"]["local"]["path"].as_str())
                {
                    VolumeSource::Filesystem { pv: pv_name, path: p.into() }
                } else {
                    anyhow::bail!("persistent volume {pv_name} has no source this kubelet can mount");
                }
            } else if let Some(p) = v["hostPath"]["path"].as_str() {
                VolumeSource::Host(self.host_path(p))
            } else if v.get("configMap").is_some() || v.get("secret").is_some() {
                let (kind, rt, obj_name) = if let Some(n) = v["configMap"]["name"].as_str() {
                    ("kubernetes.io~configmap", store.rt("", "configmaps"), n)
                } else {
                    (
                        "kubernetes.io~secret",
                        store.rt("", "secrets"),
                        v["secret"]["secretName"].as_str().unwrap_or_default(),
                    )
                };
                let Ok(obj) = store.get(&rt, ns, obj_name) else { return Ok(None) };
                VolumeSource::Files { dir: dir.join("volumes").join(kind).join(&name), data: files_of(&obj) }
            } else {
                VolumeSource::Empty(dir.join("volumes/kubernetes.io~empty-dir").join(&name))
            };
            plan.push((name, src));
        }

        let mut volume_paths = Vec::new();
        let mut host_of: HashMap<String, PathBuf> = HashMap::new();
        let laid_out = (|| -> anyhow::Result<()> {
            for (name, src) in &plan {
                let host = match src {
                    VolumeSource::Filesystem { pv, path } => {
                        let target = dir.join("volumes/kubernetes.io~csi").join(pv).join("mount");
                        host::bind_mount(path, &target)?;
                        volume_paths.push(target.clone());
                        target
                    }
                    VolumeSource::Block { pv, device } => {
                        let target = dir.join("volumeDevices/kubernetes.io~csi").join(pv);
                        host::device_node_like(device, &target)?;
                        volume_paths.push(target.clone());
                        target
                    }
                    VolumeSource::Host(p) => {
                        std::fs::create_dir_all(p)?;
                        p.clone()
                    }
                    VolumeSource::Files { dir, data } => {
                        std::fs::create_dir_all(dir)?;
                        for (k, v) in data {
                            std::fs::write(dir.join(k), v)?;
                        }
                        dir.clone()
                    }
                    VolumeSource::Empty(d) => {
                        std::fs::create_dir_all(d)?;
                        d.clone()
                    }
                };
                host_of.insert(name.clone(), host);
            }
            Ok(())
        })();
        if let Err(e) = laid_out {
            teardown_paths(&volume_paths);
            return Err(e);
        }

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
        let mut rt = PodRt {
            uid: uid.to_string(),
            ip,
            started: now(),
            containers: Vec::new(),
            volume_paths,
            path_map: Vec::new(),
            identity,
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

    fn host_path(&self, p: &str) -> PathBuf {
        if let Ok(rest) = Path::new(p).strip_prefix(HOST_KUBELET_ROOT) {
            return if rest.as_os_str().is_empty() { self.root.clone() } else { self.root.join(rest) };
        }
        if p.starts_with("/dev") {
            return PathBuf::from(p);
        }
        self.node_dir.join("host").join(p.trim_start_matches('/'))
    }

    fn spawn(
        &self,
        pod: &Value,
        c: &Value,
        ip: &str,
        map: &[(String, PathBuf)],
        crt: &mut ContainerRt,
    ) -> anyhow::Result<()> {
        let binary = self
            .images
            .binary_for(&crt.image)
            .ok_or_else(|| anyhow::anyhow!("image {} is not one of the project's", crt.image))?
            .to_path_buf();
        let strs = |v: &Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
        };
        let command = strs(&c["command"]);
        let mut argv: Vec<String> = command.into_iter().skip(1).collect();
        argv.extend(strs(&c["args"]));
        let env: Vec<(String, String)> =
            self.env(pod, c, ip).into_iter().map(|(k, v)| (k, rewrite(&own_address(&v, ip), map))).collect();
        // `$(VAR)` in command and args expands from the container's environment, as the
        // kubelet does (e.g. `--listen $(POD_IP):7443`).
        let argv: Vec<String> = argv.iter().map(|a| rewrite(&own_address(&expand_vars(a, &env), ip), map)).collect();
        let logs = self.node_dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let log_path = logs.join(format!("{}_{}_{}.log", meta_str(pod, "namespace"), meta_str(pod, "name"), crt.name));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = match map.iter().find(|(p, _)| p == identity::MOUNT_PATH) {
            Some((_, dir)) => identity::wrapped(dir, &binary, &argv)?,
            None => {
                let mut cmd = tokio::process::Command::new(&binary);
                cmd.args(&argv);
                cmd
            }
        };
        cmd.envs(env.iter().cloned())
            // The process finds the API server as a pod does, never through the machine's.
            .env_remove("KUBECONFIG")
            .current_dir(&self.node_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| anyhow::anyhow!("running {}: {e}", binary.display()))?;
        let pgid = child.id().map(|p| p as i32);
        if let Some(p) = pgid {
            self.children.add(p);
        }
        crt.child = Some(child);
        crt.pgid = pgid;
        crt.prober = Some(Prober::start(c, ip, env, |a| rewrite(a, map)));
        crt.started_at = now();
        crt.exited = None;
        Ok(())
    }

    /// The container's environment: the machine's (PATH and friends), then the pod spec's
    /// `env`/`envFrom` with field, ConfigMap and Secret references resolved, then NODE_NAME.
    fn env(&self, pod: &Value, c: &Value, ip: &str) -> Vec<(String, String)> {
        let store = &self.store;
        let ns = meta_str(pod, "namespace");
        let mut out = Vec::new();
        let lookup = |kind: &str, name: &str, key: &str| -> Option<String> {
            let (rt, field) =
                if kind == "secret" { (store.rt("", "secrets"), "data") } else { (store.rt("", "configmaps"), "data") };
            let o = store.get(&rt, ns, name).ok()?;
            let v = o[field][key].as_str()?.to_string();
            if kind == "secret" { decode_b64(&v) } else { Some(v) }
        };
        for ef in c["envFrom"].as_array().into_iter().flatten() {
            let prefix = ef["prefix"].as_str().unwrap_or_default();
            let (kind, name) = if let Some(n) = ef["configMapRef"]["name"].as_str() {
                ("configmap", n)
            } else {
                ("secret", ef["secretRef"]["name"].as_str().unwrap_or_default())
            };
            let rt = if kind == "secret" { store.rt("", "secrets") } else { store.rt("", "configmaps") };
            if let Ok(o) = store.get(&rt, ns, name) {
                for (k, _) in o["data"].as_object().into_iter().flatten() {
                    if let Some(v) = lookup(kind, name, k) {
                        out.push((format!("{prefix}{k}"), v));
                    }
                }
            }
        }
        for e in c["env"].as_array().into_iter().flatten() {
            let Some(name) = e["name"].as_str() else { continue };
            let vf = &e["valueFrom"];
            let value = if let Some(path) = vf["fieldRef"]["fieldPath"].as_str() {
                Some(match path {
                    "status.podIP" => ip.to_string(),
                    "status.hostIP" => self.addresses.node_ip(self.index),
                    "spec.nodeName" => self.node.clone(),
                    p => str_at(pod, p).to_string(),
                })
            } else if vf["secretKeyRef"].is_object() {
                lookup("secret", str_at(vf, "secretKeyRef.name"), str_at(vf, "secretKeyRef.key"))
            } else if vf["configMapKeyRef"].is_object() {
                lookup("configmap", str_at(vf, "configMapKeyRef.name"), str_at(vf, "configMapKeyRef.key"))
            } else {
                Some(e["value"].as_str().unwrap_or_default().to_string())
            };
            if let Some(v) = value {
                out.push((name.to_string(), v));
            }
        }
        out.push(("NODE_NAME".into(), self.node.clone()));
        // What Kubernetes puts in every container for the `kubernetes` Service.
        out.push(("KUBERNETES_SERVICE_HOST".into(), self.api.ip().to_string()));
        out.push(("KUBERNETES_SERVICE_PORT".into(), self.api.port().to_string()));
        out.push(("KUBERNETES_SERVICE_PORT_HTTPS".into(), self.api.port().to_string()));
        out
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

    fn write_status(&self, pod: &Value, rt: &PodRt) -> anyhow::Result<()> {
        let mut statuses = Vec::new();
        let mut all_done = true;
        let mut all_ok = true;
        for c in &rt.containers {
            let running = c.child.is_some() || (c.exited.is_none() && c.pgid.is_none());
            let state = match (&c.exited, running) {
                (_, true) => json!({"running": {"startedAt": c.started_at}}),
                (Some((code, at)), false) if c.restart_after.is_some() => {
                    json!({"waiting": {"reason": "CrashLoopBackOff",
                    "message": format!("back-off restarting failed container {} (last exit {code} at {at})", c.name)}})
                }
                (Some((code, at)), false) => json!({"terminated": {"exitCode": code,
                    "reason": if *code == 0 { "Completed" } else { "Error" }, "startedAt": c.started_at, "finishedAt": at}}),
                (None, false) => json!({"running": {"startedAt": c.started_at}}),
            };
            let done = state.get("terminated").is_some();
            all_done &= done;
            all_ok &= !done || state["terminated"]["exitCode"] == 0;
            statuses.push(json!({"name": c.name, "image": c.image, "imageID": format!("cdi-e2e://{}", c.image),
                "containerID": format!("cdi-e2e://{}-{}", meta_str(pod, "uid"), c.name),
                "ready": running && c.prober.as_ref().is_none_or(Prober::ready), "started": running, "restartCount": c.restarts, "state": state}));
        }
        let phase =
            if all_done && !rt.containers.is_empty() { if all_ok { "Succeeded" } else { "Failed" } } else { "Running" };
        let ready = if statuses.iter().all(|s| s["ready"] == true) { "True" } else { "False" };
        let old_conds = pod["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let cond = |ty: &str, status: &str| {
            let since = old_conds
                .iter()
                .find(|c| c["type"] == ty && c["status"] == status)
                .and_then(|c| c["lastTransitionTime"].as_str().map(str::to_string))
                .unwrap_or_else(now);
            json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": since})
        };
        let status = json!({
            "phase": phase,
            "hostIP": self.addresses.node_ip(self.index),
            "hostIPs": [{"ip": self.addresses.node_ip(self.index)}],
            "podIP": rt.ip,
            "podIPs": [{"ip": rt.ip}],
            "startTime": rt.started,
            "qosClass": pod["status"]["qosClass"],
            "conditions": [cond("PodReadyToStartContainers", "True"), cond("Initialized", "True"), cond("Ready", ready),
                           cond("ContainersReady", ready), cond("PodScheduled", "True")],
            "containerStatuses": statuses,
        });
        let mut desired = pod["status"].clone();
        for (k, v) in status.as_object().into_iter().flatten() {
            desired[k] = v.clone();
        }
        if desired != pod["status"] {
            merge(&self.store, ("", "pods"), pod, Sub::Status, json!({"status": status}), NAME)?;
        }
        Ok(())
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

#[derive(Debug)]
enum VolumeSource {
    Filesystem { pv: String, path: PathBuf },
    Block { pv: String, device: PathBuf },
    Host(PathBuf),
    Files { dir: PathBuf, data: Vec<(String, Vec<u8>)> },
    Empty(PathBuf),
}

fn files_of(obj: &Value) -> Vec<(String, Vec<u8>)> {
    let secret = obj["kind"] == "Secret";
    obj["data"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let s = v.as_str()?;
            let bytes = if secret { decode_b64(s)?.into_bytes() } else { s.as_bytes().to_vec() };
            Some((k.clone(), bytes))
        })
        .collect()
}

fn teardown_paths(paths: &[PathBuf]) {
    for p in paths {
        let _ = host::unmount(p);
        let _ = std::fs::remove_file(p);
    }
}
