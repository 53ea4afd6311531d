//! The stand-in node components: scheduler, binder, provisioner, kubelet.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{Value, json};

use crate::common::{TestCluster, assert_nothing_left, within};

fn claim(name: &str, class: &str, mode: &str, size: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"storageClassName": class,
        "accessModes": ["ReadWriteOnce"], "volumeMode": mode, "resources": {"requests": {"storage": size}}}}))
    .unwrap()
}

fn pod_using(name: &str, claim: &str, block: bool) -> Pod {
    let mut c = json!({"name": "main", "image": "registry.example/holder:1", "command": ["sleep", "inf"]});
    if block {
        c["volumeDevices"] = json!([{"name": "vol", "devicePath": "/dev/xvda"}]);
    } else {
        c["volumeMounts"] = json!([{"name": "vol", "mountPath": "/data"}]);
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"containers": [c],
        "volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": claim}}]}}))
    .unwrap()
}

fn phase_is(phase: &'static str) -> impl Fn(Option<&PersistentVolumeClaim>) -> bool {
    move |c| c.and_then(|c| c.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some(phase)
}

fn pv_phase_is(phase: &'static str) -> impl Fn(Option<&PersistentVolume>) -> bool {
    move |c| c.and_then(|c| c.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some(phase)
}

fn running(p: Option<&Pod>) -> bool {
    p.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Running")
}

async fn event_seen(api: &Api<Event>, object: &str, reason: &'static str) {
    let obj = object.to_string();
    within(&format!("event {reason} on {object}"), async {
        let stream = kube::runtime::watcher(api.clone(), kube::runtime::watcher::Config::default());
        use futures_util::StreamExt;
        let mut s = Box::pin(kube::runtime::WatchStreamExt::applied_objects(stream));
        while let Some(e) = s.next().await {
            let e = e.unwrap();
            if e.reason.as_deref() == Some(reason) && e.involved_object.name.as_deref() == Some(obj.as_str()) {
                return;
            }
        }
    })
    .await;
}

fn attr(pv: &PersistentVolume, key: &str) -> Option<String> {
    pv.spec.as_ref()?.csi.as_ref()?.volume_attributes.as_ref()?.get(key).cloned()
}

#[tokio::test]
async fn a_wffc_claim_binds_only_after_a_consumer_pod_is_scheduled() {
    let tc = TestCluster::start().await;
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(tc.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(tc.client.clone());
    let events: Api<Event> = Api::default_namespaced(tc.client.clone());
    pvcs.create(&PostParams::default(), &claim("data", "local", "Filesystem", "32Mi")).await.unwrap();
    event_seen(&events, "data", "WaitForFirstConsumer").await;
    let c = pvcs.get("data").await.unwrap();
    assert_eq!(c.status.unwrap().phase.as_deref(), Some("Pending"));
    assert!(!c.metadata.annotations.unwrap_or_default().contains_key("volume.kubernetes.io/selected-node"));
    assert!(
        Api::<PersistentVolume>::all(tc.client.clone()).list(&ListParams::default()).await.unwrap().items.is_empty()
    );

    pods.create(&PostParams::default(), &pod_using("consumer", "data", false)).await.unwrap();
    within("the claim to bind", await_condition(pvcs.clone(), "data", phase_is("Bound"))).await.unwrap();
    let pod = within("the pod to run", await_condition(pods.clone(), "consumer", running)).await.unwrap().unwrap();
    let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
    let c = pvcs.get("data").await.unwrap();
    assert_eq!(c.metadata.annotations.unwrap()["volume.kubernetes.io/selected-node"], node);
    let pv_name = c.spec.unwrap().volume_name.unwrap();
    let pv = Api::<PersistentVolume>::all(tc.client.clone()).get(&pv_name).await.unwrap();
    let affinity = serde_json::to_value(&pv.spec.as_ref().unwrap().node_affinity).unwrap();
    assert_eq!(affinity["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0], node.as_str());
    assert!(pod.status.as_ref().unwrap().pod_ip.is_some());

    // The volume is where the kubelet puts it, and is a filesystem of the claim's size.
    let uid = pod.metadata.uid.unwrap();
    let mount = tc.cluster().kubelet_root(&node).join(format!("pods/{uid}/volumes/kubernetes.io~csi/{pv_name}/mount"));
    std::fs::write(mount.join("hello"), b"hi").unwrap();
    let st = nix::sys::statvfs::statvfs(&mount).unwrap();
    let total = st.blocks() * st.fragment_size();
    assert!(total > 16 << 20 && total <= 32 << 20, "statvfs reports the volume's own size: {total}");
    pods.delete("consumer", &DeleteParams::default()).await.unwrap();
    within("the pod to go", await_condition(pods.clone(), "consumer", conditions::is_deleted(&uid))).await.unwrap();
    assert!(!mount.exists(), "the pod's volume path is torn down");
    let backing = PathBuf::from(attr(&pv, "e2e.cdi.kubevirt.io/path").unwrap());
    assert_eq!(std::fs::read(backing.join("hello")).unwrap(), b"hi", "data lives on in the volume");
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn a_pre_bound_pv_binds_the_named_claim_and_the_previous_claim_goes_lost() {
    let tc = TestCluster::start().await;
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(tc.client.clone());
    let pvs: Api<PersistentVolume> = Api::all(tc.client.clone());
    let events: Api<Event> = Api::default_namespaced(tc.client.clone());
    // The populator's prime claim gets a volume; the target waits on an external populator.
    pvcs.create(&PostParams::default(), &claim("prime", "local-immediate", "Filesystem", "16Mi")).await.unwrap();
    let mut target = claim("target", "local-immediate", "Filesystem", "16Mi");
    target.spec.as_mut().unwrap().data_source_ref = Some(
        serde_json::from_value(json!({"apiGroup": "cdi.kubevirt.io",
        "kind": "VolumeImportSource", "name": "src"}))
        .unwrap(),
    );
    let target = pvcs.create(&PostParams::default(), &target).await.unwrap();
    let prime = within("the prime claim to bind", await_condition(pvcs.clone(), "prime", phase_is("Bound")))
        .await
        .unwrap()
        .unwrap();
    event_seen(&events, "target", "Provisioning").await;
    assert_eq!(pvcs.get("target").await.unwrap().status.unwrap().phase.as_deref(), Some("Pending"));

    let pv_name = prime.spec.unwrap().volume_name.unwrap();
    let rebind = json!({"spec": {"claimRef": {"namespace": "default", "name": "target",
        "uid": target.metadata.uid, "resourceVersion": target.metadata.resource_version}}});
    pvs.patch(&pv_name, &PatchParams::default(), &Patch::Strategic(rebind)).await.unwrap();
    let t = within("the target to bind the pre-bound PV", await_condition(pvcs.clone(), "target", phase_is("Bound")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.spec.unwrap().volume_name.as_deref(), Some(pv_name.as_str()));
    within("the prime claim to go Lost", await_condition(pvcs.clone(), "prime", phase_is("Lost"))).await.unwrap();
    event_seen(&events, "prime", "ClaimMisbound").await;

    pvcs.delete("prime", &DeleteParams::default()).await.unwrap();
    within(
        "the prime claim to go",
        await_condition(pvcs.clone(), "prime", conditions::is_deleted(&prime.metadata.uid.unwrap())),
    )
    .await
    .unwrap();
    let pv = pvs.get(&pv_name).await.expect("the rebound PV survives its first claim");
    assert_eq!(pv.status.unwrap().phase.as_deref(), Some("Bound"));
    assert_eq!(pv.spec.unwrap().claim_ref.unwrap().name.as_deref(), Some("target"));
    tc.shutdown_and_check_leaks().await;
}

async fn delete_reclaim_removes_backing(mode: &str) {
    let tc = TestCluster::start().await;
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(tc.client.clone());
    let pvs: Api<PersistentVolume> = Api::all(tc.client.clone());
    pvcs.create(&PostParams::default(), &claim("c", "local-immediate", mode, "8Mi")).await.unwrap();
    let c = within("the claim to bind", await_condition(pvcs.clone(), "c", phase_is("Bound"))).await.unwrap().unwrap();
    let pv_name = c.spec.unwrap().volume_name.unwrap();
    let pv = pvs.get(&pv_name).await.unwrap();
    assert_eq!(pv.spec.as_ref().unwrap().persistent_volume_reclaim_policy.as_deref(), Some("Delete"));
    let file = PathBuf::from(attr(&pv, "e2e.cdi.kubevirt.io/backing-file").expect("loop-backed"));
    let device = PathBuf::from(attr(&pv, "e2e.cdi.kubevirt.io/device").unwrap());
    assert!(cdi_e2e::host::loops_under(&file).contains(&device));
    let dir = attr(&pv, "e2e.cdi.kubevirt.io/path").map(PathBuf::from);
    pvcs.delete("c", &DeleteParams::default()).await.unwrap();
    within("the PV to be deleted", await_condition(pvs.clone(), &pv_name, |p: Option<&PersistentVolume>| p.is_none()))
        .await
        .unwrap();
    assert!(cdi_e2e::host::loops_under(&file).is_empty(), "the loop device is detached");
    assert!(!file.exists(), "the backing file is removed");
    if let Some(d) = dir {
        assert!(!d.exists(), "the backing directory is removed");
    }
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn delete_reclaim_removes_a_filesystem_volumes_directory_and_loop_device() {
    delete_reclaim_removes_backing("Filesystem").await;
}

#[tokio::test]
async fn delete_reclaim_removes_a_block_volumes_loop_device() {
    delete_reclaim_removes_backing("Block").await;
}

#[tokio::test]
async fn a_block_pvs_device_is_at_the_kubelet_path_of_its_pod() {
    let tc = TestCluster::start().await;
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(tc.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(tc.client.clone());
    pvcs.create(&PostParams::default(), &claim("raw", "local", "Block", "4Mi")).await.unwrap();
    pods.create(&PostParams::default(), &pod_using("user", "raw", true)).await.unwrap();
    let pod = within("the pod to run", await_condition(pods.clone(), "user", running)).await.unwrap().unwrap();
    let pv_name = pvcs.get("raw").await.unwrap().spec.unwrap().volume_name.unwrap();
    let node = pod.spec.unwrap().node_name.unwrap();
    let uid = pod.metadata.uid.unwrap();
    let path = tc.cluster().kubelet_root(&node).join(format!("pods/{uid}/volumeDevices/kubernetes.io~csi/{pv_name}"));
    let meta = std::fs::metadata(&path).unwrap();
    assert!(meta.file_type().is_block_device());
    use std::os::unix::fs::FileExt;
    let dev = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    dev.write_all_at(b"through the kubelet path", 4096).unwrap();
    dev.sync_all().unwrap();
    drop(dev);
    let pv = Api::<PersistentVolume>::all(tc.client.clone()).get(&pv_name).await.unwrap();
    let loopdev = attr(&pv, "e2e.cdi.kubevirt.io/device").unwrap();
    let mut buf = [0u8; 24];
    std::fs::File::open(&loopdev).unwrap().read_exact_at(&mut buf, 4096).unwrap();
    assert_eq!(&buf, b"through the kubelet path");
    pods.delete("user", &DeleteParams::default()).await.unwrap();
    within("the pod to go", await_condition(pods.clone(), "user", conditions::is_deleted(&uid))).await.unwrap();
    assert!(!path.exists());
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn pvc_protection_keeps_a_claim_until_no_pod_uses_it() {
    let tc = TestCluster::start().await;
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(tc.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(tc.client.clone());
    pvcs.create(&PostParams::default(), &claim("kept", "local", "Filesystem", "8Mi")).await.unwrap();
    pods.create(&PostParams::default(), &pod_using("user", "kept", false)).await.unwrap();
    let pod = within("the pod to run", await_condition(pods.clone(), "user", running)).await.unwrap().unwrap();
    pvcs.delete("kept", &DeleteParams::default()).await.unwrap();
    let c = pvcs.get("kept").await.expect("still there while a pod uses it");
    assert!(c.metadata.deletion_timestamp.is_some());
    pods.delete("user", &DeleteParams::default()).await.unwrap();
    within("the pod to go", await_condition(pods.clone(), "user", conditions::is_deleted(&pod.metadata.uid.unwrap())))
        .await
        .unwrap();
    within("the claim to go", await_condition(pvcs.clone(), "kept", conditions::is_deleted(&c.metadata.uid.unwrap())))
        .await
        .unwrap();
    tc.shutdown_and_check_leaks().await;
}

/// A stand-in for the mover binary: records how it was started, then waits.
fn fake_mover(dir: &Path, body: &str) -> PathBuf {
    crate::common::shell_script(dir, "fake-mover.sh", body)
}

async fn file_appears(path: &Path) -> String {
    within(&format!("{} to be written by the process", path.display()), async {
        loop {
            if let Ok(s) = std::fs::read_to_string(path)
                && s.ends_with('\n')
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test]
async fn mover_image_containers_run_the_binary_with_the_nodes_kubelet_root() {
    let bin_dir = tempfile::tempdir().unwrap();
    let script = fake_mover(
        bin_dir.path(),
        r#"for a in "$@"; do case "$a" in --kubelet-root=*) root="${a#--kubelet-root=}";; esac; done
echo "$$ $NODE_NAME $MODE $*" > "$root/started"
exec sleep 600"#,
    );
    let tc = TestCluster::start_with(|c| c.images.insert("mover", script.clone())).await;
    let pods: Api<Pod> = Api::namespaced(tc.client.clone(), "kube-system");
    let agent: Pod = serde_json::from_value(json!({"metadata": {"name": "mover-node-2"}, "spec": {
        "nodeName": "node-2", "hostNetwork": true,
        "containers": [{"name": "mover", "image": "ghcr.io/cdi-rs/cdi-mover:0.1",
            "command": ["cdi-mover", "serve"], "args": ["--kubelet-root=/var/lib/kubelet"],
            "env": [{"name": "MODE", "value": "node-agent"}],
            "volumeMounts": [{"name": "kubelet", "mountPath": "/var/lib/kubelet"}]}],
        "volumes": [{"name": "kubelet", "hostPath": {"path": "/var/lib/kubelet"}}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &agent).await.unwrap();
    let pod =
        within("the agent to run", await_condition(pods.clone(), "mover-node-2", running)).await.unwrap().unwrap();
    assert_eq!(
        pod.status.unwrap().pod_ip.as_deref(),
        Some(tc.cluster().addresses().node_ip(2).as_str()),
        "host network pods get the node IP"
    );
    let root = tc.cluster().kubelet_root("node-2");
    let line = file_appears(&root.join("started")).await;
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1..4], ["node-2", "node-agent", "serve"]);
    assert_eq!(fields[4], format!("--kubelet-root={}", root.display()));
    let pid: i32 = fields[0].parse().unwrap();
    pods.delete("mover-node-2", &DeleteParams::default()).await.unwrap();
    within(
        "the agent pod to go",
        await_condition(pods.clone(), "mover-node-2", conditions::is_deleted(&pod.metadata.uid.unwrap())),
    )
    .await
    .unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the process ends with its pod");
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn run_to_completion_pods_end_succeeded_or_failed_by_exit_code() {
    let bin_dir = tempfile::tempdir().unwrap();
    let script = fake_mover(bin_dir.path(), r#"echo "exiting with $1"; exit "$1""#);
    let tc = TestCluster::start_with(|c| c.images.insert("mover", script.clone())).await;
    let pods: Api<Pod> = Api::default_namespaced(tc.client.clone());
    for (name, code) in [("ok", "0"), ("bad", "3")] {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"restartPolicy": "Never",
            "containers": [{"name": "c", "image": "cdi-mover", "args": [code]}]}}))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let phase = |want: &'static str| {
        move |p: Option<&Pod>| p.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some(want)
    };
    within("ok to succeed", await_condition(pods.clone(), "ok", phase("Succeeded"))).await.unwrap();
    let bad = within("bad to fail", await_condition(pods.clone(), "bad", phase("Failed"))).await.unwrap().unwrap();
    let st: Value = serde_json::to_value(&bad.status.unwrap().container_statuses.unwrap()[0]).unwrap();
    assert_eq!(st["state"]["terminated"]["exitCode"], 3);
    let logs = pods.logs("bad", &kube::api::LogParams::default()).await.unwrap();
    assert_eq!(logs, "exiting with 3\n", "pods/log serves the process output");
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn stopping_the_cluster_leaves_no_mount_loop_device_or_process() {
    let bin_dir = tempfile::tempdir().unwrap();
    let pidfile = bin_dir.path().join("pid");
    let script = fake_mover(bin_dir.path(), &format!("echo $$ > {}\nexec sleep 600", pidfile.display()));
    let tc = TestCluster::start_with(|c| c.images.insert("mover", script.clone())).await;
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(tc.client.clone());
    let pods: Api<Pod> = Api::default_namespaced(tc.client.clone());
    pvcs.create(&PostParams::default(), &claim("fs", "local", "Filesystem", "8Mi")).await.unwrap();
    pvcs.create(&PostParams::default(), &claim("blk", "local", "Block", "8Mi")).await.unwrap();
    pods.create(&PostParams::default(), &pod_using("fs-user", "fs", false)).await.unwrap();
    pods.create(&PostParams::default(), &pod_using("blk-user", "blk", true)).await.unwrap();
    let mover: Pod = serde_json::from_value(json!({"metadata": {"name": "mover"},
        "spec": {"containers": [{"name": "m", "image": "cdi-mover"}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &mover).await.unwrap();
    for p in ["fs-user", "blk-user", "mover"] {
        within("pods to run", await_condition(pods.clone(), p, running)).await.unwrap();
    }
    let pid: i32 = file_appears(&pidfile).await.trim().parse().unwrap();
    let dir = tc.cluster().dir().to_path_buf();
    assert!(!cdi_e2e::host::mounts_under(&dir).is_empty() && !cdi_e2e::host::loops_under(&dir).is_empty());
    tc.shutdown_and_check_leaks().await;
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the mover process is gone");
}

#[tokio::test]
async fn dropping_a_running_cluster_also_cleans_up() {
    let mut tc = TestCluster::start().await;
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(tc.client.clone());
    pvcs.create(&PostParams::default(), &claim("c", "local-immediate", "Filesystem", "8Mi")).await.unwrap();
    within("the claim to bind", await_condition(pvcs.clone(), "c", phase_is("Bound"))).await.unwrap();
    let pvs: Api<PersistentVolume> = Api::all(tc.client.clone());
    let pv = pvs.list(&ListParams::default()).await.unwrap().items.remove(0);
    within(
        "the PV to be bound",
        await_condition(pvs.clone(), pv.metadata.name.as_deref().unwrap(), pv_phase_is("Bound")),
    )
    .await
    .unwrap();
    let dir = tc.cluster().dir().to_path_buf();
    drop(tc.cluster.take());
    assert_nothing_left(&dir);
}
