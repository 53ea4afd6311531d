//! What the populator creates for a target PVC, built from it alone: the prime PVC and the
//! holder pod. Pure functions, tested in memory.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, EmptyDirVolumeSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, Pod, PodAffinity, PodAffinityTerm, PodSpec, Volume, VolumeDevice, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::ResourceExt;

use super::vocab::{ann, label};
use crate::api::names::importer;
use crate::api::quantity;

/// The volume's name inside the holder pod (what the mover addresses).
pub const HOLDER_VOLUME: &str = "target";
pub const HOLDER_MOUNT: &str = "/data";
pub const HOLDER_DEVICE: &str = "/dev/cdi-block-volume";

pub fn prime_name(target_uid: &str) -> String {
    format!("prime-{target_uid}")
}

/// The holder pod of `claim` (the claim it mounts: the prime in the populate flow, the
/// golden PVC itself) is named as CDI names its importer pod: `importer-<claim>`.
pub fn holder_name(claim: &str) -> String {
    importer::pod_name(claim)
}

/// The populate flow's holder: it mounts the prime.
pub fn prime_holder_name(target_uid: &str) -> String {
    holder_name(&prime_name(target_uid))
}

/// The pod that holds a clone's source claim: named as CDI names its clone source pod.
pub fn source_holder_name(target_uid: &str) -> String {
    format!("{target_uid}-source-pod")
}

/// The VolumeSnapshot a snapshot clone restores (CDI names its own `cdi-tmp-<uid>`).
pub fn clone_snapshot_name(target_uid: &str) -> String {
    format!("cdi-tmp-{target_uid}")
}

/// The VolumeSnapshotContent kind, for untyped access.
pub fn volume_snapshot_content_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshotContent",
    ))
}

/// The claim a snapshot source is restored into to be copied from (CDI's name).
pub fn restored_source_name(target_uid: &str) -> String {
    format!("tmp-source-pvc-{target_uid}")
}

/// The VolumeSnapshot kind, for untyped access (k8s-openapi has no snapshot types).
pub fn volume_snapshot_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
    ))
}

/// A VolumeSnapshot of `claim` (in `namespace`, the source's), taken with `class` for the
/// clone `target`.
pub fn clone_snapshot(
    target: &PersistentVolumeClaim,
    namespace: &str,
    claim: &str,
    class: Option<&str>,
) -> kube::api::DynamicObject {
    let name = clone_snapshot_name(&target.uid().unwrap_or_default());
    let mut snapshot = kube::api::DynamicObject::new(&name, &volume_snapshot_resource()).data(serde_json::json!({
        "spec": {"source": {"persistentVolumeClaimName": claim}, "volumeSnapshotClassName": class},
    }));
    snapshot.metadata = child_meta(name, namespace, label::SNAPSHOT, target);
    snapshot
}

/// The prime of a smart clone: the driver fills it from `kind` `name` (a claim, a
/// VolumeSnapshot) in `namespace`, the source's: a driver clones and restores only within
/// one namespace, so a clone across namespaces is made there and its volume handed over.
pub fn smart_prime_pvc(
    target: &PersistentVolumeClaim,
    namespace: &str,
    kind: &str,
    name: &str,
) -> PersistentVolumeClaim {
    let mut prime = prime_pvc(target);
    prime.metadata.namespace = Some(namespace.to_string());
    prime.metadata.owner_references = None;
    tie(&mut prime.metadata, target);
    let group = (kind == crate::api::names::kinds::VOLUME_SNAPSHOT).then(|| "snapshot.storage.k8s.io".to_string());
    let spec = prime.spec.get_or_insert_default();
    spec.data_source = Some(k8s_openapi::api::core::v1::TypedLocalObjectReference {
        api_group: group.clone(),
        kind: kind.to_string(),
        name: name.to_string(),
    });
    // Both, as the API server would fill in: the provisioner reads the newer field.
    spec.data_source_ref = Some(k8s_openapi::api::core::v1::TypedObjectReference {
        api_group: group,
        kind: kind.to_string(),
        name: name.to_string(),
        namespace: None,
    });
    prime
}

/// A claim of `class` (one of the snapshot's driver) in `namespace` (the snapshot's),
/// restored from VolumeSnapshot `snapshot` with its mode and `size`, for the clone `target`
/// to copy from.
pub fn restored_source_pvc(
    target: &PersistentVolumeClaim,
    namespace: &str,
    snapshot: &str,
    class: &str,
    block: bool,
    size: u64,
) -> PersistentVolumeClaim {
    let metadata =
        child_meta(restored_source_name(&target.uid().unwrap_or_default()), namespace, label::RESTORED_SOURCE, target);
    let from = k8s_openapi::api::core::v1::TypedObjectReference {
        api_group: Some("snapshot.storage.k8s.io".into()),
        kind: crate::api::names::kinds::VOLUME_SNAPSHOT.into(),
        name: snapshot.to_string(),
        namespace: None,
    };
    PersistentVolumeClaim {
        metadata,
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some(class.to_string()),
            volume_mode: Some(if block { "Block" } else { "Filesystem" }.into()),
            resources: Some(k8s_openapi::api::core::v1::VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity(size.to_string()),
                )])),
                ..Default::default()
            }),
            data_source: Some(k8s_openapi::api::core::v1::TypedLocalObjectReference {
                api_group: from.api_group.clone(),
                kind: from.kind.clone(),
                name: from.name.clone(),
            }),
            data_source_ref: Some(from),
            ..Default::default()
        }),
        status: None,
    }
}

/// The volume's name inside a clone's source holder.
pub const SOURCE_VOLUME: &str = "source";

pub fn is_block(pvc: &PersistentVolumeClaim) -> bool {
    pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block")
}

/// What a clone's child `name` of `role` in `namespace` carries: its labels, tied to `target`.
fn child_meta(name: String, namespace: &str, role: &str, target: &PersistentVolumeClaim) -> ObjectMeta {
    let mut metadata = ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_string()),
        labels: Some(labels(role, target)),
        ..Default::default()
    };
    tie(&mut metadata, target);
    metadata
}

/// Ties `child` (its namespace set) to the clone `target`: annotated with it
/// ([`ann::CLONE_TARGET`], which the controller's watches map back), and owned by it within
/// one namespace; across namespaces, where no owner reference reaches, the populator
/// deletes it itself.
fn tie(child: &mut ObjectMeta, target: &PersistentVolumeClaim) {
    let target_ref = format!("{}/{}", target.namespace().unwrap_or_default(), target.name_any());
    child.annotations.get_or_insert_default().insert(ann::CLONE_TARGET.to_string(), target_ref);
    if child.namespace == target.namespace() {
        child.owner_references = Some(vec![owned_by(target)]);
    }
}

/// The owner reference that ties what we create to the target PVC (garbage-collected with
/// it).
pub fn owned_by(target: &PersistentVolumeClaim) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "PersistentVolumeClaim".into(),
        name: target.name_any(),
        uid: target.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn labels(role: &str, target: &PersistentVolumeClaim) -> BTreeMap<String, String> {
    BTreeMap::from([
        (label::NAME.to_string(), role.to_string()),
        (label::FOR.to_string(), target.uid().unwrap_or_default()),
        (label::MANAGED_BY.to_string(), label::MANAGER.to_string()),
    ])
}

/// PVC′: same class, access modes, volume mode and request as the target; the selected node
/// copied so the volume is provisioned where the consumer will run.
pub fn prime_pvc(target: &PersistentVolumeClaim) -> PersistentVolumeClaim {
    let spec = target.spec.clone().unwrap_or_default();
    let mut annotations = BTreeMap::new();
    if let Some(node) = target.annotations().get(ann::SELECTED_NODE) {
        annotations.insert(ann::SELECTED_NODE.to_string(), node.clone());
    }
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(prime_name(&target.uid().unwrap_or_default())),
            namespace: target.namespace(),
            labels: Some(labels(label::PRIME, target)),
            annotations: Some(annotations),
            owner_references: Some(vec![owned_by(target)]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: spec.access_modes,
            storage_class_name: spec.storage_class_name,
            volume_mode: spec.volume_mode,
            resources: spec.resources,
            ..Default::default()
        }),
        status: None,
    }
}

/// The holder pod: it keeps `claim` (PVC′, or a golden PVC itself) attached and mounted on
/// a node while the node's mover fills it, and prints the import's log, which the mover
/// appends to a file in the pod's emptyDir ([`importer::LOG_VOLUME`]): `kubectl logs` of the
/// pod tells the story, as with CDI's importer pod. `target` owns it and says the volume
/// mode.
pub fn holder_pod(target: &PersistentVolumeClaim, claim: &str, node: Option<&str>, image: &str) -> Pod {
    let block = is_block(target);
    let log_mount = VolumeMount {
        name: importer::LOG_VOLUME.into(),
        mount_path: importer::LOG_MOUNT.into(),
        read_only: Some(true),
        ..Default::default()
    };
    let log_file = format!("{}/{}", importer::LOG_MOUNT, importer::LOG_FILE);
    let mut mounts = vec![log_mount];
    if !block {
        mounts.push(VolumeMount { name: HOLDER_VOLUME.into(), mount_path: HOLDER_MOUNT.into(), ..Default::default() });
    }
    let container = Container {
        name: "importer".into(),
        image: Some(image.to_string()),
        command: Some(vec!["cdi-mover".into(), "hold".into(), "--log".into(), log_file]),
        volume_mounts: Some(mounts),
        volume_devices: block
            .then(|| vec![VolumeDevice { name: HOLDER_VOLUME.into(), device_path: HOLDER_DEVICE.into() }]),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(holder_name(claim)),
            namespace: target.namespace(),
            labels: Some(labels(label::HOLDER, target)),
            owner_references: Some(vec![owned_by(target)]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![
                Volume {
                    name: HOLDER_VOLUME.into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.to_string(),
                        read_only: Some(false),
                    }),
                    ..Default::default()
                },
                Volume {
                    name: importer::LOG_VOLUME.into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                },
            ]),
            node_name: node.map(str::to_string),
            restart_policy: Some("Always".into()),
            termination_grace_period_seconds: Some(5),
            ..Default::default()
        }),
        status: None,
    }
}

/// The pod that keeps a clone's source claim `claim` (in `namespace`) attached, read-only,
/// while its node's mover streams it to the target's; tied to the target as [`tie`] says.
///
/// `co_locate`: the source's UID, when every pod holding it must share one node (a
/// ReadWriteOnce volume attaches to one node at a time): the pod is labelled with it and
/// requires the node of any other pod so labelled, as CDI places its clone source pods.
pub fn source_holder_pod(
    target: &PersistentVolumeClaim,
    namespace: &str,
    claim: &str,
    block: bool,
    co_locate: Option<&str>,
    image: &str,
) -> Pod {
    let container = Container {
        name: "clone-source".into(),
        image: Some(image.to_string()),
        command: Some(vec!["cdi-mover".into(), "hold".into()]),
        volume_mounts: (!block).then(|| {
            vec![VolumeMount {
                name: SOURCE_VOLUME.into(),
                mount_path: HOLDER_MOUNT.into(),
                read_only: Some(true),
                ..Default::default()
            }]
        }),
        volume_devices: block
            .then(|| vec![VolumeDevice { name: SOURCE_VOLUME.into(), device_path: HOLDER_DEVICE.into() }]),
        ..Default::default()
    };
    let mut metadata =
        child_meta(source_holder_name(&target.uid().unwrap_or_default()), namespace, label::SOURCE_HOLDER, target);
    let affinity = co_locate.map(|uid| {
        let labels = metadata.labels.get_or_insert_default();
        labels.insert(label::CLONE_SOURCE.to_string(), uid.to_string());
        Affinity {
            pod_affinity: Some(PodAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(BTreeMap::from([(label::CLONE_SOURCE.to_string(), uid.to_string())])),
                        ..Default::default()
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    });
    Pod {
        metadata,
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(vec![Volume {
                name: SOURCE_VOLUME.into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.to_string(),
                    read_only: Some(true),
                }),
                ..Default::default()
            }]),
            restart_policy: Some("Always".into()),
            termination_grace_period_seconds: Some(5),
            affinity,
            ..Default::default()
        }),
        status: None,
    }
}

/// Whether `pvc` asks to keep its importer pod (and prime) after success, for debugging.
pub fn retain_after_completion(pvc: &PersistentVolumeClaim) -> bool {
    pvc.annotations().get(crate::api::names::annotations::POD_RETAIN_AFTER_COMPLETION).map(String::as_str)
        == Some("true")
}

/// The storage a PVC requests, in bytes (rounded up, as Kubernetes reads quantities).
pub fn requested_bytes(pvc: &PersistentVolumeClaim) -> Option<u64> {
    let q = pvc.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage")?;
    quantity::parse_bytes(&q.0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(block: bool) -> PersistentVolumeClaim {
        let mut pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "disk", "namespace": "vms", "uid": "u-1",
                         "annotations": {"volume.kubernetes.io/selected-node": "node-2", "other": "x"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                     "resources": {"requests": {"storage": "2Gi"}},
                     "dataSourceRef": {"apiGroup": "cdi.kubevirt.io", "kind": "VolumeImportSource", "name": "src"}}
        }))
        .unwrap();
        if block {
            pvc.spec.as_mut().unwrap().volume_mode = Some("Block".into());
        }
        pvc
    }

    #[test]
    fn the_prime_copies_what_provisioning_needs_and_nothing_else() {
        let prime = prime_pvc(&target(true));
        assert_eq!(prime.metadata.name.as_deref(), Some("prime-u-1"));
        assert_eq!(prime.metadata.namespace.as_deref(), Some("vms"));
        let spec = prime.spec.unwrap();
        assert!(spec.data_source_ref.is_none(), "the prime must not point at the source: nothing else may populate it");
        assert_eq!(spec.volume_mode.as_deref(), Some("Block"));
        assert_eq!(spec.storage_class_name.as_deref(), Some("local"));
        let ann = prime.metadata.annotations.unwrap();
        assert_eq!(ann.get(ann::SELECTED_NODE).map(String::as_str), Some("node-2"));
        assert!(!ann.contains_key("other"));
        let owner = &prime.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.uid.as_str(), owner.controller), ("u-1", Some(true)));
    }

    #[test]
    fn the_holder_is_named_for_its_claim_and_mounts_or_maps_it_with_a_log_volume() {
        let fs = holder_pod(&target(false), "prime-u-1", Some("node-2"), "cdi-rs/mover");
        assert_eq!(fs.metadata.name.as_deref(), Some("importer-prime-u-1"));
        assert_eq!(prime_holder_name("u-1"), "importer-prime-u-1");
        let spec = fs.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node-2"));
        let c = &spec.containers[0];
        assert!(c.volume_devices.is_none());
        let mounts: Vec<_> = c.volume_mounts.as_ref().unwrap().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(mounts, ["cdi-log", HOLDER_VOLUME]);
        assert_eq!(c.command.as_ref().unwrap(), &["cdi-mover", "hold", "--log", "/var/log/cdi/import.log"]);
        let volumes = spec.volumes.unwrap();
        assert_eq!(volumes[0].persistent_volume_claim.as_ref().unwrap().claim_name, "prime-u-1");
        assert!(volumes[1].empty_dir.is_some());
        let blk = holder_pod(&target(true), "disk", None, "cdi-rs/mover");
        assert_eq!(blk.metadata.name.as_deref(), Some("importer-disk"));
        let c = &blk.spec.unwrap().containers[0];
        assert!(c.volume_devices.is_some());
        let mounts: Vec<_> = c.volume_mounts.as_ref().unwrap().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(mounts, ["cdi-log"], "a block volume is mapped, not mounted");
    }

    #[test]
    fn a_clone_source_holder_maps_its_claim_read_only_and_is_owned_only_within_one_namespace() {
        let fs = source_holder_pod(&target(false), "vms", "golden", false, None, "cdi-rs/mover");
        assert_eq!(fs.metadata.name.as_deref(), Some("u-1-source-pod"));
        assert_eq!(fs.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
        assert_eq!(fs.metadata.annotations.as_ref().unwrap()[ann::CLONE_TARGET], "vms/disk");
        let spec = fs.spec.unwrap();
        let claim = spec.volumes.as_ref().unwrap()[0].persistent_volume_claim.clone().unwrap();
        assert_eq!((claim.claim_name.as_str(), claim.read_only), ("golden", Some(true)));
        assert_eq!(spec.containers[0].volume_mounts.as_ref().unwrap()[0].read_only, Some(true));
        assert!(spec.affinity.is_none(), "a shared source has no node to share");
        let other = source_holder_pod(&target(false), "golden-images", "golden", true, None, "cdi-rs/mover");
        assert_eq!(other.metadata.namespace.as_deref(), Some("golden-images"));
        assert!(other.metadata.owner_references.is_none(), "owner references cannot cross namespaces");
        let c = &other.spec.unwrap().containers[0];
        assert!(c.volume_devices.is_some() && c.volume_mounts.is_none());
    }

    #[test]
    fn the_holders_of_a_read_write_once_source_share_its_node() {
        let pod = source_holder_pod(&target(true), "vms", "golden", true, Some("src-uid"), "cdi-rs/mover");
        assert_eq!(pod.metadata.labels.as_ref().unwrap()[label::CLONE_SOURCE], "src-uid");
        let affinity = pod.spec.unwrap().affinity.unwrap().pod_affinity.unwrap();
        let term = &affinity.required_during_scheduling_ignored_during_execution.unwrap()[0];
        assert_eq!(term.topology_key, "kubernetes.io/hostname");
        let wanted = term.label_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
        assert_eq!(wanted[label::CLONE_SOURCE], "src-uid", "the first holder matches its own term");
    }

    #[test]
    fn a_smart_clone_across_namespaces_is_made_in_the_source_namespace_and_annotated_with_its_target() {
        let prime = smart_prime_pvc(&target(true), "golden-images", "PersistentVolumeClaim", "golden");
        assert_eq!(prime.metadata.namespace.as_deref(), Some("golden-images"));
        assert!(prime.metadata.owner_references.is_none(), "owner references cannot cross namespaces");
        let annotations = prime.metadata.annotations.unwrap();
        assert_eq!(annotations[ann::CLONE_TARGET], "vms/disk");
        assert_eq!(annotations[ann::SELECTED_NODE], "node-2", "provisioned where the target's consumer runs");
        assert_eq!(prime.spec.unwrap().data_source.unwrap().name, "golden");
        let snapshot = clone_snapshot(&target(true), "golden-images", "golden", Some("snaps"));
        assert_eq!(snapshot.metadata.namespace.as_deref(), Some("golden-images"));
        assert!(snapshot.metadata.owner_references.is_none());
        let within = smart_prime_pvc(&target(true), "vms", "VolumeSnapshot", "cdi-tmp-u-1");
        assert_eq!(within.metadata.owner_references.unwrap()[0].uid, "u-1");
    }

    #[test]
    fn the_request_is_read_as_a_kubernetes_quantity() {
        assert_eq!(requested_bytes(&target(false)), Some(2 << 30));
        let mut pvc = target(false);
        let requests = pvc.spec.as_mut().unwrap().resources.as_mut().unwrap().requests.as_mut().unwrap();
        requests.insert("storage".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Ei".into()));
        assert_eq!(requested_bytes(&pvc), Some(1 << 60));
    }
}
