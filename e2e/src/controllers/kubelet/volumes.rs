//! A pod's volumes, laid out where the real kubelet puts them under the node's kubelet root:
//! a Filesystem PV bind-mounted at `pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`, a
//! Block PV as a device node at `pods/<uid>/volumeDevices/kubernetes.io~csi/<pv>`, emptyDir,
//! ConfigMap and Secret volumes as directories, hostPath `/var/lib/kubelet` as the node's
//! kubelet root and other host paths under the node's directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{HOST_KUBELET_ROOT, Kubelet};
use crate::api::util::{meta_str, str_at};
use crate::controllers::provisioner::{ATTR_DEVICE, ATTR_PATH};
use crate::host;

impl Kubelet {
    /// What each volume of `pod` is, or `None` while one is not ready (a claim not bound, a
    /// ConfigMap or Secret not there yet).
    pub(super) fn plan_volumes(&self, pod: &Value, dir: &Path) -> anyhow::Result<Option<Vec<(String, VolumeSource)>>> {
        let store = &self.store;
        let ns = meta_str(pod, "namespace");
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

        Ok(Some(plan))
    }

    pub(super) fn host_path(&self, p: &str) -> PathBuf {
        if let Ok(rest) = Path::new(p).strip_prefix(HOST_KUBELET_ROOT) {
            return if rest.as_os_str().is_empty() { self.root.clone() } else { self.root.join(rest) };
        }
        if p.starts_with("/dev") {
            return PathBuf::from(p);
        }
        self.node_dir.join("host").join(p.trim_start_matches('/'))
    }
}

/// Makes every volume of `plan` appear under the pod's directory: bind mounts, device nodes,
/// files, directories. Returns what was mounted (to undo) and where each volume is. On error
/// nothing stays mounted.
pub(super) fn lay_out(
    dir: &Path,
    plan: &[(String, VolumeSource)],
) -> anyhow::Result<(Vec<PathBuf>, HashMap<String, PathBuf>)> {
    let mut volume_paths = Vec::new();
    let mut host_of: HashMap<String, PathBuf> = HashMap::new();
    let laid_out = (|| -> anyhow::Result<()> {
        for (name, src) in plan {
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
    Ok((volume_paths, host_of))
}

#[derive(Debug)]
pub(super) enum VolumeSource {
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
            // Secret files hold bytes, not text (keys, DER): decode without a UTF-8 check.
            let bytes = if secret {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.decode(s).ok()?
            } else {
                s.as_bytes().to_vec()
            };
            Some((k.clone(), bytes))
        })
        .collect()
}

pub(super) fn teardown_paths(paths: &[PathBuf]) {
    for p in paths {
        let _ = host::unmount(p);
        let _ = std::fs::remove_file(p);
    }
}
