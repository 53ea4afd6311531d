//! Volume snapshots for the local CSI driver ([`PROVISIONER`]): the
//! `snapshot.storage.k8s.io/v1` CRDs (`e2e/crds/snapshot.storage.k8s.io.json`: the API of
//! external-snapshotter v8.6.0), a default VolumeSnapshotClass, and one loop standing in
//! for both the snapshot controller and the driver's csi-snapshotter sidecar:
//! - a VolumeSnapshot with `source.persistentVolumeClaimName` gets a VolumeSnapshotContent
//!   `snapcontent-<snapshot uid>`, bound both ways, with its class's `deletionPolicy`;
//! - a VolumeSnapshot with `source.volumeSnapshotContentName` binds to that (pre-provisioned)
//!   content when the content's `volumeSnapshotRef` names it;
//! - the "driver" cuts a snapshot by copying the volume's backing file (the ext4 image or the
//!   Block volume's file) to `<cluster dir>/snapshots/<content name>.img`; its name is the
//!   `snapshotHandle`;
//! - finalizers as upstream names them, so deletion works in the usual order: a deleted
//!   snapshot deletes its content (and the file) under `Delete`, keeps both under `Retain`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::{Value, json};

use super::provisioner::ATTR_FILE;
use super::{has_finalizer, is_deleting, merge, opts, record_event};
use crate::api::registry::ResourceType;
use crate::api::store::{DeleteOptions, Store, Sub};
use crate::api::util::{meta_str, now, quantity_bytes, str_at};
use crate::cluster::PROVISIONER;

const NAME: &str = "snapshot-controller";
pub const GROUP: &str = "snapshot.storage.k8s.io";
/// On a VolumeSnapshot while a volume is being restored from it.
pub const AS_SOURCE: &str = "snapshot.storage.kubernetes.io/volumesnapshot-as-source-protection";
/// On a VolumeSnapshot bound to a content.
pub const SNAPSHOT_BOUND: &str = "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection";
/// On a VolumeSnapshotContent bound to a snapshot.
pub const CONTENT_BOUND: &str = "snapshot.storage.kubernetes.io/volumesnapshotcontent-bound-protection";
pub const DEFAULT_CLASS_ANNOTATION: &str = "snapshot.storage.kubernetes.io/is-default-class";
/// The VolumeSnapshotClass every cluster starts with.
pub const DEFAULT_CLASS: &str = "local-snapshots";

/// The three CRDs of the `snapshot.storage.k8s.io/v1` API as external-snapshotter v8.6.0
/// defines them (names, scope, versions, printer columns, status subresource, the schema's
/// fields and types), written down here without descriptions or CEL rules.
const CRDS: &str = include_str!("../../crds/snapshot.storage.k8s.io.json");

/// Creates the snapshot CRDs and the default VolumeSnapshotClass of the local driver.
pub fn seed(store: &Store) -> anyhow::Result<()> {
    let o = opts("cdi-e2e");
    let crds = store.rt("apiextensions.k8s.io", "customresourcedefinitions");
    let list: Vec<Value> = serde_json::from_str(CRDS).context("parsing the snapshot CRDs")?;
    for crd in list {
        store.create(&crds, "", crd, &o)?;
    }
    let class = json!({
        "apiVersion": format!("{GROUP}/v1"), "kind": "VolumeSnapshotClass",
        "metadata": {"name": DEFAULT_CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "driver": PROVISIONER, "deletionPolicy": "Delete",
    });
    store.create(&store.rt(GROUP, "volumesnapshotclasses"), "", class, &o)?;
    Ok(())
}

/// Where the snapshot with `handle` keeps its data, for a handle this driver could have made
/// (a plain file name: a handle is user input for pre-provisioned contents).
pub fn snapshot_file(snapshots_dir: &Path, handle: &str) -> Option<PathBuf> {
    let plain = !handle.is_empty() && handle != "." && handle != ".." && !handle.contains('/');
    plain.then(|| snapshots_dir.join(format!("{handle}.img")))
}

/// Flushes every dirty page (a mounted ext4 volume's, a loop device's) to the backing files,
/// so a copy of a backing file holds what was written.
pub(crate) fn flush_all() {
    nix::unistd::sync();
}

#[derive(Debug)]
pub struct Snapshotter {
    store: Arc<Store>,
    dir: PathBuf,
}

impl Snapshotter {
    /// `dir`: where snapshot files go (`<cluster dir>/snapshots`).
    pub fn new(store: Arc<Store>, dir: PathBuf) -> Self {
        Snapshotter { store, dir }
    }

    pub async fn sweep(&self) -> anyhow::Result<()> {
        let registry = self.store.registry();
        // The CRDs can be deleted like any other: then there is nothing to do.
        let (Some(vs_rt), Some(vsc_rt), Some(class_rt)) = (
            registry.preferred(GROUP, "volumesnapshots").cloned(),
            registry.preferred(GROUP, "volumesnapshotcontents").cloned(),
            registry.preferred(GROUP, "volumesnapshotclasses").cloned(),
        ) else {
            return Ok(());
        };
        let rts = Rts { vs: vs_rt, vsc: vsc_rt, class: class_rt };
        for c in self.store.all(&rts.vsc) {
            if c["spec"]["driver"] == PROVISIONER {
                self.content(&rts, &c).await?;
            }
        }
        for s in self.store.all(&rts.vs) {
            self.snapshot(&rts, &s)?;
        }
        Ok(())
    }

    /// The snapshot controller's side of one VolumeSnapshot.
    fn snapshot(&self, rts: &Rts, s: &Value) -> anyhow::Result<()> {
        let store = &self.store;
        let (ns, name) = (meta_str(s, "namespace"), meta_str(s, "name"));
        let restoring = store
            .all_where(&store.rt("", "persistentvolumeclaims"), |p| {
                meta_str(p, "namespace") == ns
                    && p["spec"]["dataSourceRef"]["kind"] == "VolumeSnapshot"
                    && p["spec"]["dataSourceRef"]["apiGroup"] == GROUP
                    && p["spec"]["dataSourceRef"]["name"] == name
                    && str_at(p, "status.phase") == "Pending"
                    && !is_deleting(p)
            })
            .into_iter()
            .next()
            .is_some();
        let bound_name = str_at(s, "status.boundVolumeSnapshotContentName").to_string();
        let content = (!bound_name.is_empty()).then(|| store.get(&rts.vsc, "", &bound_name).ok()).flatten();

        if is_deleting(s) {
            let mut keep_bound = false;
            if let Some(c) = &content
                && refers_to(c, s)
                && c["spec"]["deletionPolicy"] == "Delete"
            {
                // The content (and its file) go first; the snapshot follows once it is gone.
                keep_bound = true;
                if !is_deleting(c) {
                    store.delete(&rts.vsc, "", meta_str(c, "name"), &DeleteOptions::default())?;
                }
            }
            let wanted: Vec<&str> = [(SNAPSHOT_BOUND, keep_bound), (AS_SOURCE, restoring)]
                .into_iter()
                .filter(|(f, keep)| *keep && has_finalizer(s, f))
                .map(|(f, _)| f)
                .collect();
            return self.set_finalizers(rts, s, &wanted);
        }

        // Bound: mirror the content's status.
        if let Some(c) = &content {
            let mut wanted = vec![SNAPSHOT_BOUND];
            if restoring {
                wanted.push(AS_SOURCE);
            }
            self.set_finalizers(rts, s, &wanted)?;
            let cs = &c["status"];
            let ready = cs["readyToUse"].as_bool().unwrap_or(false);
            let mut status = json!({"boundVolumeSnapshotContentName": bound_name, "readyToUse": ready});
            if let Some(n) = cs["creationTime"].as_i64() {
                status["creationTime"] = json!(rfc3339_of_nanos(n));
            }
            if let Some(n) = cs["restoreSize"].as_u64() {
                status["restoreSize"] = json!(quantity_of(n));
            }
            // Null when the content has none: the merge patch then clears an earlier error.
            status["error"] = cs["error"].clone();
            let changed =
                ["readyToUse", "creationTime", "restoreSize", "error"].iter().any(|k| s["status"][k] != status[k]);
            if changed {
                merge(store, (GROUP, "volumesnapshots"), s, Sub::Status, json!({"status": status}), NAME)?;
                if ready && s["status"]["readyToUse"] != true {
                    let msg = format!("Snapshot {ns}/{name} is ready to use.");
                    record_event(store, s, "Normal", "SnapshotReady", &msg, NAME);
                }
            }
            return Ok(());
        }

        // Unbound: find or make its content.
        let pvc_name = str_at(s, "spec.source.persistentVolumeClaimName");
        let pre = str_at(s, "spec.source.volumeSnapshotContentName");
        let content_name = if !pre.is_empty() {
            let Ok(c) = store.get(&rts.vsc, "", pre) else {
                return self.fail(s, "SnapshotContentMissing", &format!("VolumeSnapshotContent {pre} not found"));
            };
            let r = &c["spec"]["volumeSnapshotRef"];
            if r["name"] != name || r["namespace"] != ns {
                return self.fail(
                    s,
                    "SnapshotContentMismatch",
                    &format!("VolumeSnapshotContent {pre} is bound to another snapshot"),
                );
            }
            if r["uid"].as_str().is_none_or(str::is_empty) {
                let patch = json!({"spec": {"volumeSnapshotRef": {"uid": meta_str(s, "uid")}},
                                   "metadata": {"finalizers": with(&c, CONTENT_BOUND)}});
                merge(store, (GROUP, "volumesnapshotcontents"), &c, Sub::Main, patch, NAME)?;
            }
            pre.to_string()
        } else if !pvc_name.is_empty() {
            match self.create_content(rts, s, pvc_name)? {
                Some(n) => n,
                None => return Ok(()),
            }
        } else {
            return self.fail(s, "SnapshotSourceMissing", "spec.source names neither a PVC nor a content");
        };
        self.set_finalizers(rts, s, &[SNAPSHOT_BOUND])?;
        let status = json!({"status": {"boundVolumeSnapshotContentName": content_name, "readyToUse": false}});
        merge(store, (GROUP, "volumesnapshots"), s, Sub::Status, status, NAME)?;
        Ok(())
    }

    /// A dynamic snapshot's content. `None` while the source cannot be snapshotted yet.
    fn create_content(&self, rts: &Rts, s: &Value, pvc_name: &str) -> anyhow::Result<Option<String>> {
        let store = &self.store;
        let ns = meta_str(s, "namespace");
        let Ok(pvc) = store.get(&store.rt("", "persistentvolumeclaims"), ns, pvc_name) else {
            self.fail(s, "SnapshotCreationFailed", &format!("PersistentVolumeClaim {ns}/{pvc_name} not found"))?;
            return Ok(None);
        };
        if str_at(&pvc, "status.phase") != "Bound" {
            // Upstream waits for the claim to bind, quietly.
            return Ok(None);
        }
        let pv = store.get(&store.rt("", "persistentvolumes"), "", str_at(&pvc, "spec.volumeName"))?;
        let driver = str_at(&pv, "spec.csi.driver");
        let classes = store.all(&rts.class);
        let class_name = str_at(s, "spec.volumeSnapshotClassName");
        let class = if class_name.is_empty() {
            classes
                .iter()
                .find(|c| c["driver"] == driver && c["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION] == "true")
        } else {
            classes.iter().find(|c| meta_str(c, "name") == class_name)
        };
        let Some(class) = class else {
            let msg = if class_name.is_empty() {
                format!("no default VolumeSnapshotClass for driver \"{driver}\"")
            } else {
                format!("VolumeSnapshotClass \"{class_name}\" not found")
            };
            self.fail(s, "SnapshotCreationFailed", &msg)?;
            return Ok(None);
        };
        if class["driver"] != driver {
            let msg = format!("VolumeSnapshotClass \"{}\" is not for driver \"{driver}\"", meta_str(class, "name"));
            self.fail(s, "SnapshotCreationFailed", &msg)?;
            return Ok(None);
        }
        if class_name.is_empty() {
            let patch = json!({"spec": {"volumeSnapshotClassName": meta_str(class, "name")}});
            merge(store, (GROUP, "volumesnapshots"), s, Sub::Main, patch, NAME)?;
        }
        let content_name = format!("snapcontent-{}", meta_str(s, "uid"));
        let content = json!({
            "apiVersion": format!("{GROUP}/v1"), "kind": "VolumeSnapshotContent",
            "metadata": {"name": content_name, "finalizers": [CONTENT_BOUND]},
            "spec": {
                "deletionPolicy": class["deletionPolicy"],
                "driver": driver,
                "source": {"volumeHandle": str_at(&pv, "spec.csi.volumeHandle")},
                "sourceVolumeMode": pv["spec"]["volumeMode"].as_str().unwrap_or("Filesystem"),
                "volumeSnapshotClassName": meta_str(class, "name"),
                "volumeSnapshotRef": {"kind": "VolumeSnapshot", "apiVersion": format!("{GROUP}/v1"),
                    "namespace": ns, "name": meta_str(s, "name"), "uid": meta_str(s, "uid"),
                    "resourceVersion": meta_str(s, "resourceVersion")},
            },
        });
        match store.create(&rts.vsc, "", content, &opts(NAME)) {
            Ok(_) => {
                let msg =
                    format!("Waiting for a snapshot {ns}/{} to be created by the CSI driver.", meta_str(s, "name"));
                record_event(store, s, "Normal", "CreatingSnapshot", &msg, NAME);
            }
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Some(content_name))
    }

    /// The csi-snapshotter sidecar's side of one of the driver's contents.
    async fn content(&self, rts: &Rts, c: &Value) -> anyhow::Result<()> {
        let store = &self.store;
        let handle = str_at(c, "status.snapshotHandle");
        let handle = if handle.is_empty() { str_at(c, "spec.source.snapshotHandle") } else { handle };
        let file = snapshot_file(&self.dir, handle);
        let r = &c["spec"]["volumeSnapshotRef"];
        let snapshot = store
            .get(&rts.vs, r["namespace"].as_str().unwrap_or_default(), r["name"].as_str().unwrap_or_default())
            .ok()
            .filter(|s| r["uid"].as_str().is_none_or(|u| u.is_empty() || u == meta_str(s, "uid")));
        if is_deleting(c) {
            // Bound protection: a content goes only once its snapshot is gone or going.
            if has_finalizer(c, CONTENT_BOUND) && snapshot.as_ref().is_none_or(is_deleting) {
                if c["spec"]["deletionPolicy"] == "Delete"
                    && let Some(f) = file
                {
                    let _ = std::fs::remove_file(f);
                }
                store.remove_finalizer(&rts.vsc, c, CONTENT_BOUND, NAME)?;
            }
            return Ok(());
        }
        // A content whose snapshot went away: deleted with it under `Delete`, kept under `Retain`.
        let was_bound = r["uid"].as_str().is_some_and(|u| !u.is_empty());
        if was_bound && snapshot.is_none() && c["spec"]["deletionPolicy"] == "Delete" {
            store.delete(&rts.vsc, "", meta_str(c, "name"), &DeleteOptions::default())?;
            return Ok(());
        }
        if c["status"]["readyToUse"] == true {
            return Ok(());
        }
        let volume = str_at(c, "spec.source.volumeHandle");
        let status = if !volume.is_empty() {
            self.cut(c, volume).await?
        } else {
            // Pre-provisioned: the handle must name a snapshot this driver holds.
            match file.as_deref().map(std::fs::metadata) {
                Some(Ok(m)) => json!({"snapshotHandle": handle, "readyToUse": true, "restoreSize": m.len(),
                                      "creationTime": nanos_of(m.modified().ok())}),
                _ => json!({"readyToUse": false, "error": {"time": now(),
                    "message": format!("the driver has no snapshot with handle \"{handle}\"")}}),
            }
        };
        // A failure is written once, not with a new time at every sweep (each write wakes
        // every loop).
        let same_failure = status["readyToUse"] == false
            && !c["status"]["error"].is_null()
            && c["status"]["error"]["message"] == status["error"]["message"];
        if !same_failure {
            merge(store, (GROUP, "volumesnapshotcontents"), c, Sub::Status, json!({"status": status}), NAME)?;
        }
        Ok(())
    }

    /// Takes the snapshot of volume `volume` for content `c`; returns the content's status.
    async fn cut(&self, c: &Value, volume: &str) -> anyhow::Result<Value> {
        let store = &self.store;
        let pv = store.all_where(&store.rt("", "persistentvolumes"), |p| {
            p["spec"]["csi"]["driver"] == PROVISIONER && p["spec"]["csi"]["volumeHandle"] == volume
        });
        let Some(pv) = pv.first() else {
            return Ok(json!({"readyToUse": false, "error": {"time": now(),
                "message": format!("volume \"{volume}\" not found")}}));
        };
        let Some(src) = pv["spec"]["csi"]["volumeAttributes"][ATTR_FILE].as_str().map(PathBuf::from) else {
            return Ok(json!({"readyToUse": false, "error": {"time": now(),
                "message": "the volume is a plain directory (no mkfs.ext4 on this host): it cannot be snapshotted"}}));
        };
        let name = meta_str(c, "name").to_string();
        let dst = snapshot_file(&self.dir, &name).context("content name")?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            std::fs::create_dir_all(&dir)?;
            flush_all();
            Ok(crate::host::sparse_copy(&src, &dst)?)
        })
        .await??;
        let size = quantity_bytes(str_at(pv, "spec.capacity.storage")).unwrap_or(0);
        Ok(json!({"snapshotHandle": name, "readyToUse": true, "restoreSize": size,
                  "creationTime": nanos_of(Some(std::time::SystemTime::now()))}))
    }

    /// Records why a snapshot is stuck, in its status and as an event.
    fn fail(&self, s: &Value, reason: &str, message: &str) -> anyhow::Result<()> {
        record_event(&self.store, s, "Warning", reason, message, NAME);
        if s["status"]["error"]["message"] != message {
            let status = json!({"status": {"readyToUse": false, "error": {"time": now(), "message": message}}});
            merge(&self.store, (GROUP, "volumesnapshots"), s, Sub::Status, status, NAME)?;
        }
        Ok(())
    }

    /// Makes the snapshot controller's finalizers on `s` exactly `wanted`, leaving others'.
    fn set_finalizers(&self, _rts: &Rts, s: &Value, wanted: &[&str]) -> anyhow::Result<()> {
        let ours = [SNAPSHOT_BOUND, AS_SOURCE];
        let current: Vec<&str> =
            s["metadata"]["finalizers"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let mut next: Vec<&str> = current.iter().copied().filter(|f| !ours.contains(f) || wanted.contains(f)).collect();
        for w in wanted {
            if !next.contains(w) {
                next.push(w);
            }
        }
        if next != current {
            merge(
                &self.store,
                (GROUP, "volumesnapshots"),
                s,
                Sub::Main,
                json!({"metadata": {"finalizers": next}}),
                NAME,
            )?;
        }
        Ok(())
    }
}

struct Rts {
    vs: ResourceType,
    vsc: ResourceType,
    class: ResourceType,
}

/// Whether content `c` is bound to snapshot `s` (by uid once known, else by name).
fn refers_to(c: &Value, s: &Value) -> bool {
    let r = &c["spec"]["volumeSnapshotRef"];
    match r["uid"].as_str().filter(|u| !u.is_empty()) {
        Some(uid) => uid == meta_str(s, "uid"),
        None => r["name"] == s["metadata"]["name"] && r["namespace"] == s["metadata"]["namespace"],
    }
}

/// `o`'s finalizers plus `f`.
fn with(o: &Value, f: &str) -> Vec<String> {
    let mut list: Vec<String> = o["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    if !list.iter().any(|x| x == f) {
        list.push(f.to_string());
    }
    list
}

/// Content `creationTime` is nanoseconds since the epoch (an int64 in the v1 API).
fn nanos_of(t: Option<std::time::SystemTime>) -> i64 {
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

fn rfc3339_of_nanos(n: i64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(n))
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|_| now())
}

/// A byte count as the API writes a quantity: `Mi`/`Gi` when exact, else plain bytes.
fn quantity_of(bytes: u64) -> String {
    const MI: u64 = 1 << 20;
    const GI: u64 = 1 << 30;
    if bytes != 0 && bytes.is_multiple_of(GI) {
        format!("{}Gi", bytes / GI)
    } else if bytes != 0 && bytes.is_multiple_of(MI) {
        format!("{}Mi", bytes / MI)
    } else {
        bytes.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_parse() {
        let list: Vec<Value> = serde_json::from_str(CRDS).expect("json");
        assert_eq!(list.len(), 3);
        for crd in list {
            assert_eq!(crd["spec"]["group"], GROUP);
            assert!(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].is_object());
        }
    }

    #[test]
    fn copies_keep_bytes_and_holes() {
        use std::io::{Seek as _, SeekFrom, Write as _};
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let mut f = std::fs::File::create(&src).expect("create");
        f.seek(SeekFrom::Start(3 << 20)).expect("seek");
        f.write_all(b"data after a hole").expect("write");
        f.set_len(8 << 20).expect("set_len");
        crate::host::sparse_copy(&src, &dst).expect("copy");
        assert_eq!(std::fs::read(&src).expect("src"), std::fs::read(&dst).expect("dst"));
        // One written MiB at most, not eight.
        assert!(std::fs::metadata(&dst).expect("meta").blocks() * 512 <= 1 << 20);
    }

    #[test]
    fn handles_are_plain_names() {
        let d = Path::new("/x");
        assert_eq!(snapshot_file(d, "snapcontent-1"), Some(PathBuf::from("/x/snapcontent-1.img")));
        assert_eq!(snapshot_file(d, "../etc/passwd"), None);
        assert_eq!(snapshot_file(d, ""), None);
        assert_eq!(quantity_of(64 << 20), "64Mi");
        assert_eq!(quantity_of(1 << 30), "1Gi");
        assert_eq!(quantity_of(1000), "1000");
    }
}
