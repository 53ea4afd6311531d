//! A dynamic provisioner for the local storage classes (provisioner
//! [`PROVISIONER`](crate::cluster::PROVISIONER)), standing in for a CSI driver plus
//! external-provisioner:
//! - one PV `pvc-<claim uid>` per claim, with node affinity to the chosen node (the claim's
//!   `selected-node` under WaitForFirstConsumer);
//! - Filesystem volumes are an ext4 filesystem of the requested size on a loop device,
//!   mounted at `nodes/<node>/volumes/<pv>` (so `statvfs` reports the volume's own size, as a
//!   real CSI volume does), or a plain directory when `mkfs.ext4` is missing;
//! - Block volumes are a loop device over a sparse file;
//! - claims whose `dataSourceRef` names a populator are left alone ("an external populator
//!   will provision the volume"), as external-provisioner does;
//! - a Released PV with reclaim policy `Delete` has its backing store removed and is
//!   deleted; `Retain` keeps both.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use super::binder::{PROVISIONED_BY, STORAGE_PROVISIONER};
use super::scheduler::SELECTED_NODE;
use super::{has_finalizer, is_deleting, record_event};
use crate::api::store::{DeleteOptions, Store, WriteOptions};
use crate::api::util::{meta_str, quantity_bytes, str_at};
use crate::cluster::PROVISIONER;
use crate::host;

const NAME: &str = "local-provisioner";
pub const FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";
/// PV `spec.csi.volumeAttributes` keys that say where the volume lives on its node.
pub const ATTR_NODE: &str = "e2e.cdi.kubevirt.io/node";
pub const ATTR_PATH: &str = "e2e.cdi.kubevirt.io/path";
pub const ATTR_DEVICE: &str = "e2e.cdi.kubevirt.io/device";
pub const ATTR_FILE: &str = "e2e.cdi.kubevirt.io/backing-file";

#[derive(Debug)]
pub struct Provisioner {
    store: Arc<Store>,
    nodes_dir: PathBuf,
    ext4: bool,
}

/// Where a new volume's data lives.
struct Backing {
    path: Option<PathBuf>,
    device: Option<PathBuf>,
    file: Option<PathBuf>,
}

impl Provisioner {
    pub fn new(store: Arc<Store>, nodes_dir: PathBuf) -> Self {
        Provisioner { store, nodes_dir, ext4: host::have_mkfs_ext4() }
    }

    pub async fn sweep(&self) -> anyhow::Result<()> {
        let store = &self.store;
        let pvcs = store.all(&store.rt("", "persistentvolumeclaims"));
        let pvs = store.all(&store.rt("", "persistentvolumes"));
        let classes = store.all(&store.rt("storage.k8s.io", "storageclasses"));
        let nodes = store.all(&store.rt("", "nodes"));

        for claim in &pvcs {
            if is_deleting(claim)
                || !str_at(claim, "spec.volumeName").is_empty()
                || str_at(claim, "status.phase") != "Pending"
            {
                continue;
            }
            if claim["metadata"]["annotations"][STORAGE_PROVISIONER] != PROVISIONER {
                continue;
            }
            let class_name = str_at(claim, "spec.storageClassName");
            let Some(class) = classes.iter().find(|c| meta_str(c, "name") == class_name) else { continue };
            let pv_name = format!("pvc-{}", meta_str(claim, "uid"));
            if pvs.iter().any(|p| meta_str(p, "name") == pv_name || claim_ref_is(p, claim)) {
                continue;
            }
            let ds = &claim["spec"]["dataSourceRef"];
            if ds.is_object() {
                let (group, kind) = (str_at(ds, "apiGroup"), str_at(ds, "kind"));
                let clone_or_snapshot = (group.is_empty() && kind == "PersistentVolumeClaim")
                    || (group == "snapshot.storage.k8s.io" && kind == "VolumeSnapshot");
                if clone_or_snapshot {
                    record_event(
                        store,
                        claim,
                        "Warning",
                        "ProvisioningFailed",
                        "this provisioner cannot clone volumes or restore snapshots",
                        NAME,
                    );
                } else {
                    record_event(
                        store,
                        claim,
                        "Normal",
                        "Provisioning",
                        "Assuming an external populator will provision the volume",
                        NAME,
                    );
                }
                continue;
            }
            let wffc = class["volumeBindingMode"] == "WaitForFirstConsumer";
            let node = match claim["metadata"]["annotations"][SELECTED_NODE].as_str() {
                Some(n) => n.to_string(),
                None if wffc => continue,
                None => {
                    // Immediate binding: the node with the fewest local volumes.
                    let count =
                        |n: &str| pvs.iter().filter(|p| p["spec"]["csi"]["volumeAttributes"][ATTR_NODE] == n).count();
                    let Some(n) = nodes.iter().map(|n| meta_str(n, "name")).min_by_key(|n| (count(n), n.to_string()))
                    else {
                        continue;
                    };
                    n.to_string()
                }
            };
            self.provision(claim, class, &pv_name, &node).await?;
        }

        for pv in &pvs {
            if pv["metadata"]["annotations"][PROVISIONED_BY] != PROVISIONER {
                continue;
            }
            let delete_policy = str_at(pv, "spec.persistentVolumeReclaimPolicy") == "Delete";
            if !is_deleting(pv) && delete_policy && str_at(pv, "status.phase") == "Released" {
                self.destroy(pv).await?;
                let rt = store.rt("", "persistentvolumes");
                store.delete(&rt, "", meta_str(pv, "name"), &DeleteOptions::default())?;
                record_event(store, pv, "Normal", "VolumeDeleted", "the backing store was removed", NAME);
            } else if is_deleting(pv) && has_finalizer(pv, FINALIZER) && str_at(pv, "status.phase") != "Bound" {
                if delete_policy {
                    self.destroy(pv).await?;
                }
                store.remove_finalizer(&store.rt("", "persistentvolumes"), pv, FINALIZER, NAME)?;
            }
        }
        Ok(())
    }

    async fn provision(&self, claim: &Value, class: &Value, pv_name: &str, node: &str) -> anyhow::Result<()> {
        let store = &self.store;
        record_event(
            store,
            claim,
            "Normal",
            "Provisioning",
            &format!(
                "External provisioner is provisioning volume for claim \"{}/{}\"",
                meta_str(claim, "namespace"),
                meta_str(claim, "name")
            ),
            NAME,
        );
        let bytes = quantity_bytes(str_at(claim, "spec.resources.requests.storage")).unwrap_or(0);
        // Whole MiB, as most CSI drivers round up.
        let size = bytes.div_ceil(1 << 20).max(1) << 20;
        let block = str_at(claim, "spec.volumeMode") == "Block";
        let dir = self.nodes_dir.join(node).join("volumes");
        let ext4 = self.ext4;
        let name = pv_name.to_string();
        let backing = tokio::task::spawn_blocking(move || create_backing(&dir, &name, size, block, ext4)).await??;
        let mut attrs = json!({ATTR_NODE: node});
        if let Some(p) = &backing.path {
            attrs[ATTR_PATH] = json!(p);
        }
        if let Some(d) = &backing.device {
            attrs[ATTR_DEVICE] = json!(d);
        }
        if let Some(f) = &backing.file {
            attrs[ATTR_FILE] = json!(f);
        }
        let mut csi = json!({"driver": PROVISIONER, "volumeHandle": pv_name, "volumeAttributes": attrs});
        if !block {
            csi["fsType"] = json!("ext4");
        }
        let pv = json!({
            "metadata": {"name": pv_name, "annotations": {PROVISIONED_BY: PROVISIONER}, "finalizers": [FINALIZER]},
            "spec": {
                "capacity": {"storage": format!("{}Mi", size >> 20)},
                "accessModes": claim["spec"]["accessModes"],
                "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
                "storageClassName": meta_str(class, "name"),
                "volumeMode": if block { "Block" } else { "Filesystem" },
                "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                    "namespace": meta_str(claim, "namespace"), "name": meta_str(claim, "name"),
                    "uid": meta_str(claim, "uid"), "resourceVersion": meta_str(claim, "resourceVersion")},
                "csi": csi,
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
            },
        });
        let rt = store.rt("", "persistentvolumes");
        let opts = WriteOptions { field_manager: NAME.into(), ..Default::default() };
        if let Err(e) = store.create(&rt, "", pv, &opts) {
            destroy_backing(&backing);
            return Err(e.into());
        }
        record_event(
            store,
            claim,
            "Normal",
            "ProvisioningSucceeded",
            &format!("Successfully provisioned volume {pv_name}"),
            NAME,
        );
        Ok(())
    }

    async fn destroy(&self, pv: &Value) -> anyhow::Result<()> {
        let attrs = &pv["spec"]["csi"]["volumeAttributes"];
        let get = |k: &str| attrs[k].as_str().map(PathBuf::from);
        let backing = Backing { path: get(ATTR_PATH), device: get(ATTR_DEVICE), file: get(ATTR_FILE) };
        tokio::task::spawn_blocking(move || destroy_backing(&backing)).await?;
        Ok(())
    }
}

fn claim_ref_is(pv: &Value, claim: &Value) -> bool {
    let r = &pv["spec"]["claimRef"];
    r["name"] == claim["metadata"]["name"] && r["namespace"] == claim["metadata"]["namespace"]
}

fn create_backing(dir: &Path, name: &str, size: u64, block: bool, ext4: bool) -> Result<Backing, host::HostError> {
    std::fs::create_dir_all(dir).map_err(|source| host::HostError::Io { what: "mkdir", path: dir.into(), source })?;
    let path = dir.join(name);
    if !block && !ext4 {
        std::fs::create_dir_all(&path).map_err(|source| host::HostError::Io {
            what: "mkdir",
            path: path.clone(),
            source,
        })?;
        return Ok(Backing { path: Some(path), device: None, file: None });
    }
    let file = dir.join(format!("{name}.img"));
    host::sparse_file(&file, size)?;
    let device = host::loop_attach(&file)?;
    let backing = Backing { path: (!block).then(|| path.clone()), device: Some(device.clone()), file: Some(file) };
    if !block {
        let made = host::mkfs_ext4(&device).and_then(|_| host::mount_ext4(&device, &path));
        if let Err(e) = made {
            destroy_backing(&backing);
            return Err(e);
        }
    }
    Ok(backing)
}

/// Removes a volume's backing store. Idempotent; a device is detached only while its backing
/// file is still the volume's (loop numbers are reused).
fn destroy_backing(b: &Backing) {
    if let Some(p) = &b.path {
        for m in host::mounts_under(p) {
            let _ = host::unmount(&m);
        }
        if host::mounts_under(p).is_empty() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    if let Some(f) = &b.file {
        for dev in host::loops_under(f) {
            if let Err(e) = host::loop_detach(&dev) {
                tracing::warn!(error = %e, "detaching a volume's loop device");
            }
        }
        let _ = std::fs::remove_file(f);
    }
}
