//! VolumeSnapshots (the external-snapshotter CRDs, the snapshot controller and the local
//! driver's snapshotter), restores from them and CSI clones, driven with kubectl and kube-rs.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use cdi_e2e::workload::volume_data;
use futures_util::TryStreamExt as _;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim};
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};

use crate::common::{TestCluster, json_of, within};

const MIB: usize = 1 << 20;

fn claim_yaml(name: &str, mode: &str, size: &str, source: Option<(&str, &str)>) -> String {
    let source = match source {
        Some(("VolumeSnapshot", from)) => {
            format!("  dataSource: {{apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: {from}}}\n")
        }
        Some((kind, from)) => format!("  dataSource: {{kind: {kind}, name: {from}}}\n"),
        None => String::new(),
    };
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n  storageClassName: \
         local-immediate\n  volumeMode: {mode}\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: \
         {size}}}}}\n{source}"
    )
}

fn snapshot_yaml(name: &str, pvc: &str, class: Option<&str>) -> String {
    let class = class.map(|c| format!("  volumeSnapshotClassName: {c}\n")).unwrap_or_default();
    format!(
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {{name: {name}}}\nspec:\n{class}  \
         source: {{persistentVolumeClaimName: {pvc}}}\n"
    )
}

async fn bound(tc: &TestCluster, name: &str) -> PathBuf {
    let pvc_ref = format!("pvc/{name}");
    tc.kubectl(&["wait", "--for=jsonpath={.status.phase}=Bound", &pvc_ref, "--timeout=80s"]).await;
    let pvc = Api::<PersistentVolumeClaim>::default_namespaced(tc.client.clone()).get(name).await.unwrap();
    volume_data(&tc.client, &pvc).await.unwrap()
}

async fn ready(tc: &TestCluster, name: &str) -> serde_json::Value {
    let vs = format!("volumesnapshot/{name}");
    tc.kubectl(&["wait", "--for=jsonpath={.status.readyToUse}=true", &vs, "--timeout=80s"]).await;
    json_of(&tc.kubectl(&["get", &vs, "-o", "json"]).await)
}

/// Writes `len` bytes of a pattern seeded by `seed` at the start of `path` (a file in a
/// mounted volume, created if missing, or a Block volume's device) and flushes them.
fn write_pattern(path: &Path, seed: u8, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    let mut f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    data
}

fn read_prefix(path: &Path, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    std::fs::File::open(path).unwrap().read_exact(&mut buf).unwrap();
    buf
}

/// The message of the first event with `reason` about the object named `name`.
async fn event(tc: &TestCluster, name: &str, reason: &str) -> String {
    let events: Api<Event> = Api::default_namespaced(tc.client.clone());
    let config = watcher::Config::default().fields(&format!("involvedObject.name={name}"));
    let found = async {
        let stream = watcher(events, config).applied_objects();
        futures_util::pin_mut!(stream);
        while let Some(e) = stream.try_next().await.unwrap() {
            if e.reason.as_deref() == Some(reason) {
                return e.message.unwrap_or_default();
            }
        }
        panic!("the event watch ended")
    };
    within(&format!("a {reason} event about {name}"), found).await
}

fn snapshots_dir(tc: &TestCluster) -> PathBuf {
    tc.cluster().dir().join("snapshots")
}

async fn restore_and_clone(mode: &str) {
    let tc = TestCluster::start().await;
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&claim_yaml("src", mode, "16Mi", None))).await;
    let src = bound(&tc, "src").await;
    let first = write_pattern(&src, 1, MIB);

    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&snapshot_yaml("snap", "src", None))).await;
    let vs = ready(&tc, "snap").await;
    assert_eq!(vs["spec"]["volumeSnapshotClassName"], "local-snapshots", "the default class: {vs}");
    assert_eq!(vs["status"]["restoreSize"], "16Mi");
    let content_name = vs["status"]["boundVolumeSnapshotContentName"].as_str().unwrap().to_string();
    assert_eq!(content_name, format!("snapcontent-{}", vs["metadata"]["uid"].as_str().unwrap()));
    let content = json_of(&tc.kubectl(&["get", "volumesnapshotcontent", &content_name, "-o", "json"]).await);
    assert_eq!(content["spec"]["volumeSnapshotRef"]["uid"], vs["metadata"]["uid"]);
    assert_eq!(content["spec"]["deletionPolicy"], "Delete");
    assert_eq!(content["spec"]["sourceVolumeMode"], mode);
    assert_eq!(content["status"]["readyToUse"], true);
    let file = snapshots_dir(&tc).join(format!("{content_name}.img"));
    assert!(file.is_file(), "no snapshot file {}", file.display());
    // The printer columns come with the vendored CRD …
    let table = tc.kubectl(&["get", "vs"]).await;
    assert!(table.contains("READYTOUSE") && table.contains("SNAPSHOTCONTENT"), "{table}");

    // So do their schemas (OpenAPI from the CRD).
    let explained = tc.kubectl(&["explain", "volumesnapshot.spec.source"]).await;
    assert!(explained.contains("persistentVolumeClaimName"), "{explained}");

    // The snapshot is of that moment: later writes to the source are not in it.
    let second = write_pattern(&src, 2, MIB);

    // A restore to a larger volume holds the snapshot's bytes.
    let restore = claim_yaml("restored", mode, "32Mi", Some(("VolumeSnapshot", "snap")));
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&restore)).await;
    let restored = bound(&tc, "restored").await;
    assert!(read_prefix(&restored, MIB) == first, "the restored volume does not hold the snapshot's bytes");
    let pv = json_of(&tc.kubectl(&["get", "pv", "-o", "json"]).await);
    let restored_pv = pv["items"].as_array().unwrap().iter().find(|p| p["spec"]["claimRef"]["name"] == "restored");
    assert_eq!(restored_pv.unwrap()["spec"]["capacity"]["storage"], "32Mi");
    if mode == "Filesystem" {
        // The filesystem grew with the volume.
        let st = nix::sys::statvfs::statvfs(restored.parent().unwrap()).unwrap();
        let size = st.blocks() as u64 * st.fragment_size() as u64;
        assert!(size > 24 << 20, "the restored filesystem was not grown: {size} bytes");
    } else {
        let len = std::fs::OpenOptions::new().read(true).open(&restored).unwrap().seek(SeekFrom::End(0)).unwrap();
        assert_eq!(len, 32 << 20);
    }

    // A CSI clone of the source holds its bytes as they are now.
    tc.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&claim_yaml("clone", mode, "16Mi", Some(("PersistentVolumeClaim", "src")))),
    )
    .await;
    let clone = bound(&tc, "clone").await;
    assert!(read_prefix(&clone, MIB) == second, "the clone does not hold the source's bytes");

    // A change of volume mode and a smaller size are refused, with a clear event.
    let other = if mode == "Block" { "Filesystem" } else { "Block" };
    tc.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&claim_yaml("cross", other, "16Mi", Some(("VolumeSnapshot", "snap")))),
    )
    .await;
    let msg = event(&tc, "cross", "ProvisioningFailed").await;
    assert!(msg.contains("changing the volume mode is not supported"), "{msg}");
    tc.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&claim_yaml("small", mode, "8Mi", Some(("PersistentVolumeClaim", "src")))),
    )
    .await;
    let msg = event(&tc, "small", "ProvisioningFailed").await;
    assert!(msg.contains("is less than the size"), "{msg}");
    let phase = tc.kubectl(&["get", "pvc", "cross", "small", "-o", "jsonpath={.items[*].status.phase}"]).await;
    assert_eq!(phase, "Pending Pending");

    // A claim still waiting to be restored from the snapshot protects it, as upstream does.
    let finalizers = tc.kubectl(&["get", "vs", "snap", "-o", "jsonpath={.metadata.finalizers}"]).await;
    assert!(finalizers.contains("volumesnapshot-as-source-protection"), "{finalizers}");
    assert!(finalizers.contains("volumesnapshot-bound-protection"), "{finalizers}");
    tc.kubectl(&["delete", "pvc", "cross", "small", "--wait=true", "--timeout=60s"]).await;

    // Deleting the snapshot (class deletionPolicy Delete) removes its content and file.
    tc.kubectl(&["delete", "volumesnapshot", "snap", "--wait=true", "--timeout=60s"]).await;
    let content_ref = format!("volumesnapshotcontent/{content_name}");
    tc.kubectl(&["wait", "--for=delete", &content_ref, "--timeout=60s"]).await;
    assert!(!file.exists(), "the snapshot file outlived its content");

    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn snapshot_restore_and_clone_keep_the_bytes_filesystem() {
    restore_and_clone("Filesystem").await;
}

#[tokio::test]
async fn snapshot_restore_and_clone_keep_the_bytes_block() {
    restore_and_clone("Block").await;
}

#[tokio::test]
async fn retained_snapshots_keep_content_and_file_and_can_be_pre_provisioned() {
    let tc = TestCluster::start().await;
    let class = "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: {name: retain}\n\
                 driver: local.e2e.cdi.kubevirt.io\ndeletionPolicy: Retain\n";
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(class)).await;
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&claim_yaml("src", "Block", "8Mi", None))).await;
    let src = bound(&tc, "src").await;
    let bytes = write_pattern(&src, 7, MIB);
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&snapshot_yaml("kept", "src", Some("retain")))).await;
    let vs = ready(&tc, "kept").await;
    let content_name = vs["status"]["boundVolumeSnapshotContentName"].as_str().unwrap().to_string();
    let file = snapshots_dir(&tc).join(format!("{content_name}.img"));

    tc.kubectl(&["delete", "volumesnapshot", "kept", "--wait=true", "--timeout=60s"]).await;
    let content = json_of(&tc.kubectl(&["get", "volumesnapshotcontent", &content_name, "-o", "json"]).await);
    assert_eq!(content["spec"]["deletionPolicy"], "Retain");
    assert!(content["metadata"]["deletionTimestamp"].is_null(), "{content}");
    assert!(file.is_file(), "a retained snapshot's file was removed");

    // A snapshot of a claim that does not exist says so, in its status and an event.
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&snapshot_yaml("orphan", "nope", None))).await;
    let msg = event(&tc, "orphan", "SnapshotCreationFailed").await;
    assert!(msg.contains("PersistentVolumeClaim default/nope not found"), "{msg}");
    tc.kubectl(&["wait", "--for=jsonpath={.status.readyToUse}=false", "vs/orphan", "--timeout=30s"]).await;
    let error = tc.kubectl(&["get", "vs", "orphan", "-o", "jsonpath={.status.error.message}"]).await;
    assert_eq!(error, msg);

    // The retained handle, pre-provisioned for a new snapshot, restores the same bytes.
    let handle = content["status"]["snapshotHandle"].as_str().unwrap();
    let pre = format!(
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotContent\nmetadata: {{name: pre-content}}\n\
         spec:\n  deletionPolicy: Delete\n  driver: local.e2e.cdi.kubevirt.io\n  sourceVolumeMode: Block\n  \
         source: {{snapshotHandle: {handle}}}\n  volumeSnapshotRef: {{name: pre, namespace: default}}\n---\n\
         apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {{name: pre}}\n\
         spec:\n  source: {{volumeSnapshotContentName: pre-content}}\n"
    );
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&pre)).await;
    let vs = ready(&tc, "pre").await;
    assert_eq!(vs["status"]["boundVolumeSnapshotContentName"], "pre-content");
    tc.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&claim_yaml("restored", "Block", "8Mi", Some(("VolumeSnapshot", "pre")))),
    )
    .await;
    let restored = bound(&tc, "restored").await;
    assert!(read_prefix(&restored, MIB) == bytes, "the pre-provisioned snapshot restored other bytes");

    // Its Delete policy removes the content and the (shared) file with the snapshot.
    tc.kubectl(&["delete", "volumesnapshot", "pre", "--wait=true", "--timeout=60s"]).await;
    tc.kubectl(&["wait", "--for=delete", "volumesnapshotcontent/pre-content", "--timeout=60s"]).await;
    assert!(!file.exists(), "the Delete policy left the snapshot file");
    tc.shutdown_and_check_leaks().await;
}
