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
//! - claims whose data source is a VolumeSnapshot of this driver (restore) or a Bound PVC of
//!   the same class and namespace (CSI clone) get a copy of its backing file: the same
//!   bytes, grown to a larger request (Block: a longer device; Filesystem: `resize2fs`);
//!   smaller requests, a change of volume mode and (WaitForFirstConsumer) a clone for a node
//!   other than its source's are refused with an event;
//! - a Released PV with reclaim policy `Delete` has its backing store removed and is
//!   deleted; `Retain` keeps both.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};

use super::binder::{PROVISIONED_BY, STORAGE_PROVISIONER};
use super::scheduler::SELECTED_NODE;
use super::{has_finalizer, is_deleting, record_event, snapshotter};
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
    snapshots_dir: PathBuf,
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
        // Snapshot files are the snapshotter's, beside the nodes in the cluster directory.
        let snapshots_dir = nodes_dir.parent().unwrap_or(&nodes_dir).join("snapshots");
        Provisioner { store, nodes_dir, snapshots_dir, ext4: host::have_mkfs_ext4() }
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
            let mut source = None;
            if ds.is_object() {
                let (group, kind) = (str_at(ds, "apiGroup"), str_at(ds, "kind"));
                let clone_or_snapshot = (group.is_empty() && kind == "PersistentVolumeClaim")
                    || (group == snapshotter::GROUP && kind == "VolumeSnapshot");
                if !clone_or_snapshot {
                    record_event(
                        store,
                        claim,
                        "Normal",
                        "Provisioning",
                        "Assuming an external populator will provision the volume",
                        NAME,
                    );
                    continue;
                }
                match self.source_of(claim, &pvs) {
                    Ok(s) => source = Some(s),
                    Err(message) => {
                        record_event(store, claim, "Warning", "ProvisioningFailed", &message, NAME);
                        continue;
                    }
                }
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
            // A local volume is cloned where it lives: a consumer scheduled elsewhere gets a
            // refusal, as from a driver that cannot clone across nodes, zones or pools.
            if let Some(from) = source.as_ref().and_then(|s| s.node.as_deref())
                && wffc
                && from != node
            {
                let message =
                    format!("cannot clone across nodes: the source volume is on {from} and the claim is for {node}");
                record_event(store, claim, "Warning", "ProvisioningFailed", &message, NAME);
                continue;
            }
            self.provision(claim, class, &pv_name, &node, source).await?;
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

    async fn provision(
        &self,
        claim: &Value,
        class: &Value,
        pv_name: &str,
        node: &str,
        source: Option<Source>,
    ) -> anyhow::Result<()> {
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
        let backing = match source {
            None => tokio::task::spawn_blocking(move || create_backing(&dir, &name, size, block, ext4)).await??,
            Some(src) => {
                // A copy is never smaller than its source (source_of refused smaller requests).
                let size = size.max(src.size);
                match tokio::task::spawn_blocking(move || copy_backing(&dir, &name, size, block, &src)).await? {
                    Ok(b) => b,
                    Err(e) => {
                        let msg = format!("copying the data source failed: {e}");
                        record_event(store, claim, "Warning", "ProvisioningFailed", &msg, NAME);
                        return Err(e.into());
                    }
                }
            }
        };
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

    /// The data a clone or restore starts from, or why there is none (yet).
    fn source_of(&self, claim: &Value, pvs: &[Arc<Value>]) -> Result<Source, String> {
        let store = &self.store;
        let ds = &claim["spec"]["dataSourceRef"];
        let (ns, src_name) = (meta_str(claim, "namespace"), str_at(ds, "name"));
        if ds["namespace"].as_str().is_some_and(|n| n != ns) {
            return Err("cross-namespace data sources are not supported by this provisioner".into());
        }
        let block = str_at(claim, "spec.volumeMode") == "Block";
        let mode = |b: bool| if b { "Block" } else { "Filesystem" };
        let requested = quantity_bytes(str_at(claim, "spec.resources.requests.storage")).unwrap_or(0);
        let (file, src_block, size, node) = if ds["kind"] == "VolumeSnapshot" {
            let vs_rt = store.registry().preferred(snapshotter::GROUP, "volumesnapshots").cloned();
            let vs = vs_rt.and_then(|rt| store.get(&rt, ns, src_name).ok());
            let Some(vs) = vs else { return Err(format!("VolumeSnapshot {ns}/{src_name} not found")) };
            if vs["status"]["readyToUse"] != true || is_deleting(&vs) {
                return Err(format!("VolumeSnapshot {ns}/{src_name} is not ready to use"));
            }
            let vsc_rt = store.registry().preferred(snapshotter::GROUP, "volumesnapshotcontents").cloned();
            let content_name = str_at(&vs, "status.boundVolumeSnapshotContentName");
            let content = vsc_rt.and_then(|rt| store.get(&rt, "", content_name).ok());
            let Some(content) = content else {
                return Err(format!("VolumeSnapshotContent {content_name} not found"));
            };
            if content["spec"]["driver"] != PROVISIONER {
                return Err(format!("VolumeSnapshot {ns}/{src_name} was not taken by driver {PROVISIONER}"));
            }
            let file = snapshotter::snapshot_file(&self.snapshots_dir, str_at(&content, "status.snapshotHandle"))
                .ok_or_else(|| format!("VolumeSnapshotContent {content_name} has no usable snapshotHandle"))?;
            let src_block = str_at(&content, "spec.sourceVolumeMode") == "Block";
            (file, src_block, content["status"]["restoreSize"].as_u64().unwrap_or(0), None)
        } else {
            let Ok(src) = store.get(&store.rt("", "persistentvolumeclaims"), ns, src_name) else {
                return Err(format!("source PVC {ns}/{src_name} not found"));
            };
            if str_at(&src, "status.phase") != "Bound" {
                return Err(format!("source PVC {ns}/{src_name} is not Bound"));
            }
            let (class, src_class) = (str_at(claim, "spec.storageClassName"), str_at(&src, "spec.storageClassName"));
            if class != src_class {
                return Err(format!(
                    "source PVC {ns}/{src_name} is of storage class \"{src_class}\", not \"{class}\": \
                     a CSI clone stays within one class"
                ));
            }
            let Some(pv) = pvs.iter().find(|p| meta_str(p, "name") == str_at(&src, "spec.volumeName")) else {
                return Err(format!("the volume of source PVC {ns}/{src_name} not found"));
            };
            let Some(file) = pv["spec"]["csi"]["volumeAttributes"][ATTR_FILE].as_str() else {
                return Err(format!(
                    "the volume of source PVC {ns}/{src_name} is a plain directory and cannot be cloned"
                ));
            };
            let src_block = str_at(pv, "spec.volumeMode") == "Block";
            let node = pv["spec"]["csi"]["volumeAttributes"][ATTR_NODE].as_str().map(str::to_string);
            (PathBuf::from(file), src_block, quantity_bytes(str_at(pv, "spec.capacity.storage")).unwrap_or(0), node)
        };
        if src_block != block {
            return Err(format!(
                "the data source is a {} volume and the claim asks for {}: changing the volume mode is not supported",
                mode(src_block),
                mode(block)
            ));
        }
        if requested < size {
            return Err(format!(
                "requested volume size {requested} is less than the size {size} of the data source {src_name}"
            ));
        }
        Ok(Source { file, size, node })
    }

    async fn destroy(&self, pv: &Value) -> anyhow::Result<()> {
        let attrs = &pv["spec"]["csi"]["volumeAttributes"];
        let get = |k: &str| attrs[k].as_str().map(PathBuf::from);
        let backing = Backing { path: get(ATTR_PATH), device: get(ATTR_DEVICE), file: get(ATTR_FILE) };
        tokio::task::spawn_blocking(move || destroy_backing(&backing)).await?;
        Ok(())
    }
}

/// The data a new volume is copied from.
struct Source {
    file: PathBuf,
    size: u64,
    /// The node a cloned volume lives on (`None`: a snapshot, which any node can restore).
    node: Option<String>,
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

/// A volume that starts as a copy of `src` (a snapshot file or another volume's backing
/// file), `size` bytes long (at least the source's).
fn copy_backing(dir: &Path, name: &str, size: u64, block: bool, src: &Source) -> Result<Backing, host::HostError> {
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| host::HostError::Io { what, path, source }
    };
    std::fs::create_dir_all(dir).map_err(io("mkdir", dir))?;
    let path = dir.join(name);
    let file = dir.join(format!("{name}.img"));
    // A clone's source may be in use: what its writers wrote must reach the file first.
    snapshotter::flush_all();
    host::sparse_copy(&src.file, &file)?;
    let grown = std::fs::OpenOptions::new().write(true).open(&file).and_then(|f| f.set_len(size));
    grown.map_err(io("truncate", &file))?;
    if !block && size > src.size {
        // The filesystem grows with the volume, as a CSI driver's NodeExpandVolume does.
        if let Err(e) = host::grow_ext4_image(&file) {
            let _ = std::fs::remove_file(&file);
            return Err(e);
        }
    }
    let device = host::loop_attach(&file)?;
    let backing = Backing { path: (!block).then(|| path.clone()), device: Some(device.clone()), file: Some(file) };
    if !block && let Err(e) = host::mount_ext4(&device, &path) {
        destroy_backing(&backing);
        return Err(e);
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
