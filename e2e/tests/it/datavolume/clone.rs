//! Clones end to end. Host-assisted (the profile asks for `copy`): a golden DataVolume
//! imported in one namespace and copied into another (Filesystem→Filesystem with the size left out, Filesystem→Block,
//! Block→Filesystem), a bare PVC naming a VolumeCloneSource in the golden namespace, and a
//! bare PVC that tries to reach across namespaces by annotation alone (refused). Every copy is
//! checked against the image with qemu-img; the golden volumes are checked untouched.

use std::path::{Path, PathBuf};

use cdi_populator::api::{DataSource, DataVolume, DataVolumePhase, StorageProfile};
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;

use super::{Env, phase_of};
use crate::populate::qemu_same;

const GOLDEN_NS: &str = "golden-images";

/// Waits until DataVolume `namespace/name` is in `phase`, or panics with what it shows.
async fn wait_phase(env: &Env, namespace: &str, name: &str, phase: DataVolumePhase) -> DataVolume {
    let what = phase.to_string();
    env.wait_dv_in(namespace, name, &what, move |dv| phase_of(dv) == Some(phase.clone())).await
}

/// Where claim `namespace/name`'s data lies on this host: the device, or the disk.img.
async fn data_of(env: &Env, namespace: &str, name: &str) -> PathBuf {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(env.client(), namespace).get(name).await.unwrap();
    let pv_name = pvc.spec.as_ref().unwrap().volume_name.clone().expect("a bound PVC");
    let pv = Api::<PersistentVolume>::all(env.client()).get(&pv_name).await.unwrap();
    let backing = cdi_e2e::system::pv_backing(&pv).expect("a provisioned PV");
    if pv.spec.unwrap().volume_mode.as_deref() == Some("Block") { backing } else { backing.join("disk.img") }
}

/// The node a bound claim's local volume lives on (its PV's node affinity).
async fn node_of(env: &Env, namespace: &str, name: &str) -> String {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(env.client(), namespace).get(name).await.unwrap();
    let pv_name = pvc.spec.and_then(|s| s.volume_name).expect("a bound PVC");
    let pv = Api::<PersistentVolume>::all(env.client()).get(&pv_name).await.unwrap();
    let terms = pv.spec.and_then(|s| s.node_affinity?.required).map(|r| r.node_selector_terms).unwrap_or_default();
    let values = terms.first().and_then(|t| t.match_expressions.as_ref()?.first()?.values.clone()).unwrap_or_default();
    values.into_iter().next().expect("a local PV names its node")
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(path).output().expect("sha256sum");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// The reasons of the events recorded on `kind` `namespace/name`.
async fn event_reasons(env: &Env, namespace: &str, kind: &str, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(env.client(), namespace);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some(kind) && e.involved_object.name.as_deref() == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

fn data_volume(namespace: &str, name: &str, source: serde_json::Value, storage: serde_json::Value) -> String {
    serde_json::to_string(&json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"source": source, "storage": storage},
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn golden_volumes_are_cloned_across_namespaces_and_volume_modes_and_stay_untouched() {
    let env = Env::start(16).await;
    // The host-assisted copy, whatever the driver could do (the smart ways are the next test's).
    profile_strategy(&env, "local-immediate", "copy").await;
    env.kubectl(&["create", "namespace", GOLDEN_NS], None).await;
    let url = env.server.url("disk.qcow2");
    let http = json!({"http": {"url": url}});
    let fs = |size: Option<&str>| {
        let mut s = json!({"storageClassName": "local-immediate", "volumeMode": "Filesystem"});
        if let Some(size) = size {
            s["resources"] = json!({"requests": {"storage": size}});
        }
        s
    };
    let block = json!({"storageClassName": "local-immediate", "volumeMode": "Block",
                       "resources": {"requests": {"storage": "80Mi"}}});
    env.apply(&data_volume(GOLDEN_NS, "golden", http.clone(), fs(Some("64Mi")))).await;
    env.apply(&data_volume(GOLDEN_NS, "golden-block", http, block.clone())).await;
    wait_phase(&env, GOLDEN_NS, "golden", DataVolumePhase::Succeeded).await;
    wait_phase(&env, GOLDEN_NS, "golden-block", DataVolumePhase::Succeeded).await;
    let golden = data_of(&env, GOLDEN_NS, "golden").await;
    let golden_block = data_of(&env, GOLDEN_NS, "golden-block").await;
    let before = (sha256(&golden), sha256(&golden_block));

    // Into the default namespace: the size taken from the source, into Block, out of Block.
    let from = |name: &str| json!({"pvc": {"namespace": GOLDEN_NS, "name": name}});
    env.apply(&data_volume("default", "fs-to-fs", from("golden"), fs(None))).await;
    env.apply(&data_volume("default", "fs-to-block", from("golden"), block.clone())).await;
    // Room for the whole 80 MiB device in ext4 (whose own metadata takes more than the 6%
    // overhead on so small a volume).
    env.apply(&data_volume("default", "block-to-fs", from("golden-block"), fs(Some("128Mi")))).await;
    // Through a DataSource in the golden namespace, as KubeVirt's boot sources are used.
    env.apply(&format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataSource\nmetadata: {{name: fedora, namespace: {GOLDEN_NS}}}\n\
         spec:\n  source:\n    pvc: {{name: golden}}\n---\napiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\n\
         metadata: {{name: by-ref}}\nspec:\n  sourceRef: {{kind: DataSource, namespace: {GOLDEN_NS}, name: \
         fedora}}\n  storage: {{storageClassName: local-immediate}}\n"
    ))
    .await;
    // A bare claim naming a VolumeCloneSource, in the golden namespace itself.
    env.apply(&format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: VolumeCloneSource\nmetadata: {{name: copy-golden, namespace: \
         {GOLDEN_NS}}}\nspec:\n  source: {{kind: PersistentVolumeClaim, name: golden}}\n---\napiVersion: v1\nkind: \
         PersistentVolumeClaim\nmetadata: {{name: bare-copy, namespace: {GOLDEN_NS}}}\nspec:\n  storageClassName: \
         local-immediate\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: 80Mi}}}}\n  \
         dataSourceRef: {{apiGroup: cdi.kubevirt.io, kind: VolumeCloneSource, name: copy-golden}}\n"
    ))
    .await;

    for name in ["fs-to-fs", "fs-to-block", "block-to-fs", "by-ref"] {
        let dv = wait_phase(&env, "default", name, DataVolumePhase::Succeeded).await;
        assert_eq!(dv.status.as_ref().unwrap().progress.as_deref(), Some("100.0%"), "{name}");
        qemu_same(&env.raw, &data_of(&env, "default", name).await, None);
        let reasons = event_reasons(&env, "default", "DataVolume", name).await;
        // The steps before the end may pass between two looks of the controller; the end may not.
        assert!(reasons.iter().any(|r| r == "CloneSucceeded"), "{name}: no CloneSucceeded in {reasons:?}");
        assert!(reasons.iter().any(|r| r == "CloneScheduled" || r == "CloneInProgress"), "{name}: {reasons:?}");
        let pvc = env.pvc(name).await;
        assert_eq!(pvc.metadata.annotations.as_ref().unwrap()["cdi.kubevirt.io/cloneType"], "copy", "{name}");
    }
    let sources: Api<DataSource> = Api::namespaced(env.client(), GOLDEN_NS);
    let ready = await_condition(sources, "fedora", |ds: Option<&DataSource>| {
        ds.and_then(|d| d.status.as_ref()).is_some_and(|s| {
            s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                && s.source.as_ref().and_then(|src| src.pvc.as_ref()).is_some_and(|p| p.name == "golden")
        })
    });
    crate::common::within("DataSource fedora to be Ready", ready).await.unwrap();
    let sized = env.pvc("fs-to-fs").await;
    let requests = |pvc: &PersistentVolumeClaim| {
        pvc.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0.clone()
    };
    let golden_claim = Api::<PersistentVolumeClaim>::namespaced(env.client(), GOLDEN_NS).get("golden").await.unwrap();
    assert_eq!(requests(&sized), requests(&golden_claim), "a clone without a size takes its source's");

    let bare = Api::<PersistentVolumeClaim>::namespaced(env.client(), GOLDEN_NS);
    let bound = await_condition(bare.clone(), "bare-copy", |p: Option<&PersistentVolumeClaim>| {
        p.is_some_and(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
                && p.metadata.annotations.as_ref().and_then(|a| a.get("cdi.kubevirt.io/storage.pod.phase"))
                    == Some(&"Succeeded".to_string())
        })
    });
    crate::common::within("the bare clone to be bound and populated", bound).await.unwrap();
    qemu_same(&env.raw, &data_of(&env, GOLDEN_NS, "bare-copy").await, None);

    // Nothing of the clones is left in the golden namespace, and the sources are as they were.
    let pods = Api::<Pod>::namespaced(env.client(), GOLDEN_NS);
    let holders = ListParams::default().labels("app.kubernetes.io/name=cdi-populator-clone-source");
    for pod in pods.list(&holders).await.unwrap().items {
        let (name, uid) = (pod.name_any(), pod.uid().unwrap());
        let deleted = await_condition(pods.clone(), &name, conditions::is_deleted(&uid));
        crate::common::within(&format!("clone source pod {name} to go"), deleted).await.unwrap();
    }
    assert_eq!((sha256(&golden), sha256(&golden_block)), before, "a clone source was written");

    // A claim may not reach into another namespace by annotation alone: only a DataVolume,
    // whose creator the webhook authorises, may.
    env.apply(&format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: VolumeCloneSource\nmetadata: {{name: sneaky}}\nspec:\n  source: \
         {{kind: PersistentVolumeClaim, name: golden}}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  \
         name: sneaky\n  annotations: {{cdi.kubevirt.io/dataSourceNamespace: {GOLDEN_NS}}}\nspec:\n  \
         storageClassName: local-immediate\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: \
         80Mi}}}}\n  dataSourceRef: {{apiGroup: cdi.kubevirt.io, kind: VolumeCloneSource, name: sneaky}}\n"
    ))
    .await;
    let message = refused_claim(&env, "sneaky").await;
    assert!(message.contains("must be asked for by a DataVolume"), "{message}");
    // Nor through a DataSource of a third namespace, whose owners could point it elsewhere
    // after the webhook judged the DataVolume.
    env.apply(&format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataSource\nmetadata: {{name: elsewhere}}\nspec:\n  source:\n    \
         pvc: {{namespace: {GOLDEN_NS}, name: golden}}\n---\napiVersion: cdi.kubevirt.io/v1beta1\nkind: \
         DataVolume\nmetadata: {{name: far-ref}}\nspec:\n  sourceRef: {{kind: DataSource, name: elsewhere}}\n  \
         storage: {{storageClassName: local-immediate}}\n"
    ))
    .await;
    let message = refused_claim(&env, "far-ref").await;
    assert!(message.contains("DataSource default/elsewhere names golden-images/golden"), "{message}");

    // A claim written out (spec.pvc) smaller than its source is refused at create.
    let small = serde_json::to_string(&json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "too-small"},
        "spec": {"source": from("golden"), "pvc": {"storageClassName": "local-immediate",
                 "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}},
    }))
    .unwrap();
    let refused = kubectl_as(&env, None, &small).await;
    assert!(!refused.0 && refused.1.contains("smaller than the source"), "{refused:?}");

    // A tenant with rights in its own namespace only is refused a clone from the golden
    // namespace at create, with CDI's message; granted datavolumes/source there, it clones.
    let tenant = "system:serviceaccount:tenant:tenant";
    env.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: tenant}\n---\napiVersion: v1\nkind: ServiceAccount\n\
         metadata: {name: tenant, namespace: tenant}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: \
         RoleBinding\nmetadata: {name: tenant-edit, namespace: tenant}\nsubjects: [{kind: ServiceAccount, name: \
         tenant, namespace: tenant}]\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: \
         cdi.kubevirt.io:edit}\n",
    )
    .await;
    let clone = data_volume("tenant", "tenant-copy", from("golden"), fs(None));
    let refused = kubectl_as(&env, Some(tenant), &clone).await;
    assert!(
        !refused.0 && refused.1.contains("insufficient permissions in clone source namespace golden-images"),
        "{refused:?}"
    );
    env.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: datavolume-cloner}}\nrules:\n\
         - apiGroups: [cdi.kubevirt.io]\n  resources: [datavolumes/source]\n  verbs: [create]\n---\napiVersion: \
         rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: tenant-cloner, namespace: \
         {GOLDEN_NS}}}\nsubjects: [{{kind: ServiceAccount, name: tenant, namespace: tenant}}]\nroleRef: {{apiGroup: \
         rbac.authorization.k8s.io, kind: ClusterRole, name: datavolume-cloner}}\n"
    ))
    .await;
    let granted = kubectl_as(&env, Some(tenant), &clone).await;
    assert!(granted.0, "{granted:?}");
    wait_phase(&env, "tenant", "tenant-copy", DataVolumePhase::Succeeded).await;
    qemu_same(&env.raw, &data_of(&env, "tenant", "tenant-copy").await, None);
    env.stop().await;
}

/// Waits for claim `default/name` to fail, with a `CloneFailed` event; returns why.
async fn refused_claim(env: &Env, name: &str) -> String {
    let claims = Api::<PersistentVolumeClaim>::default_namespaced(env.client());
    let failed = await_condition(claims, name, |p: Option<&PersistentVolumeClaim>| {
        p.and_then(|p| p.metadata.annotations.as_ref()?.get("cdi.kubevirt.io/storage.pod.phase").cloned())
            == Some("Failed".into())
    });
    crate::common::within(&format!("clone {name} to fail"), failed).await.unwrap();
    assert!(event_reasons(env, "default", "PersistentVolumeClaim", name).await.contains(&"CloneFailed".into()));
    let claim = env.pvc(name).await;
    claim
        .metadata
        .annotations
        .unwrap_or_default()
        .remove("cdi.kubevirt.io/storage.condition.running.message")
        .unwrap_or_default()
}

/// `kubectl apply` of `manifest` as `user` (`None`: the cluster admin): whether it
/// succeeded, and what it printed.
async fn kubectl_as(env: &Env, user: Option<&str>, manifest: &str) -> (bool, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env.system().cluster.kubeconfig_path())
        .args(user.map(|u| format!("--as={u}")))
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl is installed");
    let mut input = child.stdin.take().unwrap();
    input.write_all(manifest.as_bytes()).await.unwrap();
    drop(input);
    let out = crate::common::within("kubectl apply", child.wait_with_output()).await.unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The strategy a clone took, and why not the one asked for.
async fn clone_type(env: &Env, namespace: &str, name: &str) -> (String, Option<String>) {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(env.client(), namespace).get(name).await.unwrap();
    let ann = pvc.metadata.annotations.unwrap_or_default();
    (
        ann.get("cdi.kubevirt.io/cloneType").cloned().unwrap_or_default(),
        ann.get("cdi.kubevirt.io/cloneFallbackReason").cloned(),
    )
}

/// Waits for DataVolume `namespace/name` to succeed, then checks that it was copied
/// host-assisted for `reason` (annotation and event) and holds the image.
async fn copied_instead(env: &Env, namespace: &str, name: &str, reason: &str) {
    wait_phase(env, namespace, name, DataVolumePhase::Succeeded).await;
    let (way, fallback) = clone_type(env, namespace, name).await;
    assert_eq!((way.as_str(), fallback.as_deref()), ("copy", Some(reason)));
    qemu_same(&env.raw, &data_of(env, namespace, name).await, None);
    let reasons = event_reasons(env, namespace, "PersistentVolumeClaim", name).await;
    assert!(reasons.iter().any(|r| r == reason), "{reasons:?}");
}

/// Waits for DataVolume `vms/name`, cloned from the default namespace, to succeed, then checks
/// that the driver made it `way` (no copy; `None`: a snapshot source, restored with no
/// choice) and that its prime, made in the source's namespace, is gone.
async fn made_elsewhere(env: &Env, name: &str, way: Option<&str>) {
    wait_phase(env, "vms", name, DataVolumePhase::Succeeded).await;
    qemu_same(&env.raw, &data_of(env, "vms", name).await, None);
    if let Some(way) = way {
        assert_eq!(clone_type(env, "vms", name).await, (way.to_string(), None));
        let reasons = event_reasons(env, "vms", "PersistentVolumeClaim", name).await;
        assert!(reasons.iter().any(|r| r == "CloneStrategy"), "{reasons:?}");
    }
    child_gone(env, "default", "prime", "vms", name).await;
}

/// Waits until claim `<kind>-<uid>` of claim `target_namespace/name` (its prime, its
/// restored source) is gone from `namespace`.
async fn child_gone(env: &Env, namespace: &str, kind: &str, target_namespace: &str, name: &str) {
    let target = Api::<PersistentVolumeClaim>::namespaced(env.client(), target_namespace).get(name).await.unwrap();
    let child = format!("{kind}-{}", target.uid().unwrap());
    let claims = Api::<PersistentVolumeClaim>::namespaced(env.client(), namespace);
    let gone = await_condition(claims, &child, |p: Option<&PersistentVolumeClaim>| p.is_none());
    crate::common::within(&format!("claim {namespace}/{child} to go"), gone).await.unwrap();
}

/// Sets the clone strategy of `class`'s StorageProfile and waits until its status says so.
async fn profile_strategy(env: &Env, class: &str, strategy: &str) {
    let patch = format!("{{\"spec\":{{\"cloneStrategy\":\"{strategy}\"}}}}");
    env.kubectl(&["patch", "storageprofile", class, "--type", "merge", "-p", &patch], None).await;
    let profiles: Api<StorageProfile> = Api::all(env.client());
    let wanted = strategy.to_string();
    let applied = await_condition(profiles, class, move |p: Option<&StorageProfile>| {
        p.and_then(|p| p.status.as_ref()?.clone_strategy.clone()) == Some(wanted.clone())
    });
    crate::common::within(&format!("StorageProfile {class} to say {strategy}"), applied).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn clone_strategies_follow_the_storage_profile_and_fall_back_to_a_copy_when_the_driver_cannot() {
    let env = Env::start(16).await;
    let block = |class: &str| {
        json!({"storageClassName": class, "volumeMode": "Block", "accessModes": ["ReadWriteOnce"],
               "resources": {"requests": {"storage": "80Mi"}}})
    };
    env.apply(&data_volume(
        "default",
        "golden",
        json!({"http": {"url": env.server.url("disk.qcow2")}}),
        block("local-immediate"),
    ))
    .await;
    wait_phase(&env, "default", "golden", DataVolumePhase::Succeeded).await;
    let golden = data_of(&env, "default", "golden").await;
    let before = sha256(&golden);
    let from_golden = json!({"pvc": {"name": "golden"}});

    // The embedded class's profile says snapshot (its driver has a VolumeSnapshotClass).
    env.apply(&data_volume("default", "by-snapshot", from_golden.clone(), block("local-immediate"))).await;
    wait_phase(&env, "default", "by-snapshot", DataVolumePhase::Succeeded).await;
    assert_eq!(clone_type(&env, "default", "by-snapshot").await, ("snapshot".into(), None));
    qemu_same(&env.raw, &data_of(&env, "default", "by-snapshot").await, None);

    // Into another namespace: the driver snapshots and restores in the source's namespace,
    // and the restored volume is handed over to the target.
    env.kubectl(&["create", "namespace", "vms"], None).await;
    let from_default = json!({"pvc": {"namespace": "default", "name": "golden"}});
    env.apply(&data_volume("vms", "snapshot-elsewhere", from_default.clone(), block("local-immediate"))).await;
    made_elsewhere(&env, "snapshot-elsewhere", Some("snapshot")).await;

    // The profile asks for the driver's own clone.
    profile_strategy(&env, "local-immediate", "csi-clone").await;
    env.apply(&data_volume("default", "by-csi-clone", from_golden.clone(), block("local-immediate"))).await;
    wait_phase(&env, "default", "by-csi-clone", DataVolumePhase::Succeeded).await;
    assert_eq!(clone_type(&env, "default", "by-csi-clone").await, ("csi-clone".into(), None));
    qemu_same(&env.raw, &data_of(&env, "default", "by-csi-clone").await, None);
    let reasons = event_reasons(&env, "default", "PersistentVolumeClaim", "by-csi-clone").await;
    assert!(reasons.contains(&"CloneStrategy".to_string()), "{reasons:?}");
    env.apply(&data_volume("vms", "csi-clone-elsewhere", from_default, block("local-immediate"))).await;
    made_elsewhere(&env, "csi-clone-elsewhere", Some("csi-clone")).await;

    // A CSI clone forced into another class of the same driver: the driver cannot, the
    // clone is copied instead, with a warning saying why.
    env.apply(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: other-immediate}\nprovisioner: \
         local.e2e.cdi.kubevirt.io\nvolumeBindingMode: Immediate\nreclaimPolicy: Delete\n",
    )
    .await;
    let profiles: Api<StorageProfile> = Api::all(env.client());
    let made = await_condition(profiles, "other-immediate", |p: Option<&StorageProfile>| p.is_some());
    crate::common::within("the new class's StorageProfile", made).await.unwrap();
    profile_strategy(&env, "other-immediate", "csi-clone").await;
    env.apply(&data_volume("default", "across-classes", from_golden.clone(), block("other-immediate"))).await;
    copied_instead(&env, "default", "across-classes", "IncompatibleStorageClasses").await;

    // A DataVolume restoring a VolumeSnapshot of the golden volume, its size left to the
    // snapshot's.
    env.apply(
        "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: golden-snap}\nspec:\n  \
         source: {persistentVolumeClaimName: golden}\n",
    )
    .await;
    env.apply(&data_volume(
        "default",
        "from-snapshot",
        json!({"snapshot": {"name": "golden-snap"}}),
        json!({"storageClassName": "local-immediate", "volumeMode": "Block"}),
    ))
    .await;
    wait_phase(&env, "default", "from-snapshot", DataVolumePhase::Succeeded).await;
    qemu_same(&env.raw, &data_of(&env, "default", "from-snapshot").await, None);
    // The same snapshot, restored into another namespace.
    env.apply(&data_volume(
        "vms",
        "snapshot-restored-elsewhere",
        json!({"snapshot": {"namespace": "default", "name": "golden-snap"}}),
        json!({"storageClassName": "local-immediate", "volumeMode": "Block"}),
    ))
    .await;
    made_elsewhere(&env, "snapshot-restored-elsewhere", None).await;
    // CDI's rule for restoring another namespace's snapshot without `datavolumes/source`:
    // creating pods there is not enough (it is for a claim), creating claims too is.
    let user = "system:serviceaccount:vms:restorer";
    env.apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: restorer, namespace: vms}\n---\napiVersion: \
         rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: restorer-edit, namespace: vms}\nsubjects: \
         [{kind: ServiceAccount, name: restorer, namespace: vms}]\nroleRef: {apiGroup: rbac.authorization.k8s.io, \
         kind: ClusterRole, name: cdi.kubevirt.io:edit}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: \
         Role\nmetadata: {name: pod-maker, namespace: default}\nrules:\n- apiGroups: ['']\n  resources: [pods]\n  \
         verbs: [create]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: \
         restorer-pods, namespace: default}\nsubjects: [{kind: ServiceAccount, name: restorer, namespace: \
         vms}]\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-maker}\n",
    )
    .await;
    let restore = data_volume(
        "vms",
        "restored-by-tenant",
        json!({"snapshot": {"namespace": "default", "name": "golden-snap"}}),
        json!({"storageClassName": "local-immediate", "volumeMode": "Block"}),
    );
    let refused = kubectl_as(&env, Some(user), &restore).await;
    assert!(
        !refused.0 && refused.1.contains("insufficient permissions in clone source namespace default"),
        "{refused:?}"
    );
    env.kubectl(&["patch", "role", "pod-maker", "--type", "json", "-p",
        r#"[{"op": "add", "path": "/rules/-", "value": {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["create"]}}]"#], None).await;
    let granted = kubectl_as(&env, Some(user), &restore).await;
    assert!(granted.0, "{granted:?}");
    made_elsewhere(&env, "restored-by-tenant", None).await;
    // Into a Filesystem claim: the driver cannot change a volume's mode, so the snapshot is
    // restored aside, in its own mode and namespace, and copied from there.
    let into_fs = json!({"storageClassName": "local-immediate", "volumeMode": "Filesystem",
                         "resources": {"requests": {"storage": "128Mi"}}});
    let from_snapshot = json!({"snapshot": {"namespace": "default", "name": "golden-snap"}});
    env.apply(&data_volume("vms", "snapshot-into-fs", from_snapshot, into_fs)).await;
    copied_instead(&env, "vms", "snapshot-into-fs", "IncompatibleVolumeModes").await;
    child_gone(&env, "default", "tmp-source-pvc", "vms", "snapshot-into-fs").await;
    env.kubectl(&["delete", "volumesnapshot", "golden-snap", "--wait=true"], None).await;

    // A local driver clones a volume only on the node it lives on: a CSI clone for a consumer
    // scheduled to the other node is refused at provisioning, after the strategy was chosen,
    // and copied instead. Into another namespace: the refused prime is removed from the
    // source's.
    let consumer = |name: &str, node: &str, claim: &str| {
        let namespace = if claim == "golden-local" { "default" } else { "vms" };
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                     "containers": [{"name": "vm", "image": "busybox",
                                     "volumeDevices": [{"name": "disk", "devicePath": "/dev/vda"}]}],
                     "volumes": [{"name": "disk", "persistentVolumeClaim": {"claimName": claim}}]},
        })
        .to_string()
    };
    let from_http = json!({"http": {"url": env.server.url("disk.qcow2")}});
    env.apply(&data_volume("default", "golden-local", from_http, block("local"))).await;
    env.apply(&consumer("first-user", "node-1", "golden-local")).await;
    wait_phase(&env, "default", "golden-local", DataVolumePhase::Succeeded).await;
    // Released, so that it may be cloned.
    env.kubectl(&["delete", "pod", "first-user", "--wait=true"], None).await;
    let source_node = node_of(&env, "default", "golden-local").await;
    let other_node = if source_node == "node-1" { "node-2" } else { "node-1" };
    profile_strategy(&env, "local", "csi-clone").await;
    let from_local = json!({"pvc": {"namespace": "default", "name": "golden-local"}});
    env.apply(&data_volume("vms", "across-nodes", from_local, block("local"))).await;
    env.apply(&consumer("vm-elsewhere", other_node, "across-nodes")).await;
    copied_instead(&env, "vms", "across-nodes", "CSICloneFailed").await;
    assert_eq!(node_of(&env, "vms", "across-nodes").await, other_node, "the copy is where its consumer runs");
    for namespace in ["default", "vms"] {
        child_gone(&env, namespace, "prime", "vms", "across-nodes").await;
    }

    // The CDI object's override wins over every profile (local-immediate's says csi-clone).
    env.kubectl(
        &["patch", "cdi", "cdi", "--type", "merge", "-p", r#"{"spec":{"cloneStrategyOverride":"copy"}}"#],
        None,
    )
    .await;
    env.apply(&data_volume("default", "by-override", from_golden.clone(), block("local-immediate"))).await;
    wait_phase(&env, "default", "by-override", DataVolumePhase::Succeeded).await;
    assert_eq!(clone_type(&env, "default", "by-override").await, ("copy".into(), None));
    qemu_same(&env.raw, &data_of(&env, "default", "by-override").await, None);

    assert_eq!(sha256(&golden), before, "the clone source was written");
    // No temporary snapshot is left behind.
    let snapshots = env.kubectl(&["get", "volumesnapshots", "-A", "-o", "name"], None).await;
    assert!(snapshots.trim().is_empty(), "{snapshots}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_mover_killed_mid_clone_is_retried_and_the_copy_ends_identical_with_the_source_untouched() {
    use nix::sys::signal::Signal;
    // 64 MiB of data in 256 MiB: long enough a copy for the kill to land in it.
    let env = Env::start(256).await;
    let fs = json!({"storageClassName": "local-immediate", "volumeMode": "Filesystem",
                    "resources": {"requests": {"storage": "400Mi"}}});
    env.apply(&data_volume("default", "golden", json!({"http": {"url": env.server.url("disk.qcow2")}}), fs)).await;
    wait_phase(&env, "default", "golden", DataVolumePhase::Succeeded).await;
    let golden = data_of(&env, "default", "golden").await;
    let before = sha256(&golden);

    // Into another namespace and volume mode: a host-assisted copy whatever the profile says.
    env.kubectl(&["create", "namespace", "copies"], None).await;
    let storage = json!({"storageClassName": "local-immediate", "volumeMode": "Block"});
    env.apply(&data_volume("copies", "copy", json!({"pvc": {"namespace": "default", "name": "golden"}}), storage))
        .await;
    // The moment the task is handed to the target's mover, stop that mover, then kill it.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client(), "copies");
    let started = await_condition(claims, "copy", |p: Option<&PersistentVolumeClaim>| {
        p.and_then(|p| p.metadata.annotations.as_ref()?.get("cdi.kubevirt.io/storage.pod.phase").cloned())
            == Some("Running".into())
    });
    crate::common::within("the clone to start", started).await.unwrap();
    let holders = ListParams::default().labels("app.kubernetes.io/name=cdi-populator-holder");
    let holder = Api::<Pod>::namespaced(env.client(), "copies").list(&holders).await.unwrap().items.remove(0);
    let node = holder.spec.and_then(|s| s.node_name).expect("a running holder has a node");
    let mover = env.system().mover_pod(&node).expect("a mover on the node");
    let cluster = &env.system().cluster;
    cluster.signal_container(cdi_e2e::system::NAMESPACE, &mover, "mover", Signal::SIGSTOP).await.unwrap();
    cluster.signal_container(cdi_e2e::system::NAMESPACE, &mover, "mover", Signal::SIGKILL).await.unwrap();

    wait_phase(&env, "copies", "copy", DataVolumePhase::Succeeded).await;
    qemu_same(&env.raw, &data_of(&env, "copies", "copy").await, None);
    assert_eq!(sha256(&golden), before, "the clone source was written");
    let pods: Api<Pod> = Api::namespaced(env.client(), cdi_e2e::system::NAMESPACE);
    let restarts =
        pods.get(&mover).await.unwrap().status.and_then(|s| s.container_statuses).map_or(0, |c| c[0].restart_count);
    assert!(restarts >= 1, "the kubelet did not restart the killed mover");
    env.stop().await;
}
