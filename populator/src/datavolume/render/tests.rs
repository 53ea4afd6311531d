use serde_json::json;

use super::*;
use crate::datavolume::defaults::{ClaimProperties, ConfigDefaults};

fn dv(spec: serde_json::Value) -> DataVolume {
    serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": "disk", "namespace": "vms", "uid": "dv-uid",
                     "labels": {"kubevirt.io/created-by": "vm-uid"},
                     "annotations": {"cdi.kubevirt.io/storage.bind.immediate.requested": "",
                                     "cdi.kubevirt.io/allowClaimAdoption": "true"}},
        "spec": spec,
    }))
    .unwrap()
}

const DEFAULTS: ConfigDefaults = ConfigDefaults { filesystem_overhead: 0.06 };

/// A profile that says Block + RWX for every class.
struct BlockProfile;

impl StorageDefaults for BlockProfile {
    fn claim_properties(&self, _: &str) -> Option<ClaimProperties> {
        Some(ClaimProperties { access_modes: vec!["ReadWriteMany".into()], volume_mode: VolumeMode::Block })
    }
    fn filesystem_overhead(&self, _: &str) -> f64 {
        0.5
    }
    fn default_preallocation(&self) -> bool {
        true
    }
}

/// No profile at all.
struct NoProfile;

impl StorageDefaults for NoProfile {
    fn claim_properties(&self, _: &str) -> Option<ClaimProperties> {
        None
    }
    fn filesystem_overhead(&self, _: &str) -> f64 {
        0.0
    }
    fn default_preallocation(&self) -> bool {
        false
    }
}

fn http() -> serde_json::Value {
    json!({"http": {"url": "http://example.com/disk.img"}})
}

#[test]
fn import_sources_are_planned_and_the_rest_is_named() {
    let storage = json!({"resources": {"requests": {"storage": "1Gi"}}});
    let plan_of = |source: serde_json::Value| plan(&dv(json!({"source": source, "storage": storage})));
    let Plan::Import(source) = plan_of(http()) else { panic!("http is an import") };
    assert_eq!(source.http.unwrap().url, "http://example.com/disk.img");
    assert!(matches!(plan_of(json!({"blank": {}})), Plan::Import(s) if s.blank.is_some()));
    assert!(matches!(plan_of(json!({"registry": {"url": "docker://x"}})), Plan::Import(_)));
    assert_eq!(
        plan_of(json!({"snapshot": {"name": "s"}})),
        Plan::Restore { namespace: "vms".into(), name: "s".into() }
    );
    let clone = |pvc: serde_json::Value| plan_of(json!({"pvc": pvc}));
    let (namespace, name) = ("vms".to_string(), "golden".to_string());
    assert_eq!(
        clone(json!({"name": "golden"})),
        Plan::Clone { namespace, name: name.clone() },
        "the DataVolume's namespace"
    );
    let other = clone(json!({"namespace": "golden-images", "name": "golden"}));
    assert_eq!(other, Plan::Clone { namespace: "golden-images".into(), name });
    assert_eq!(plan_of(json!({"upload": {}})), Plan::Upload);
    let by_ref = plan(&dv(json!({"sourceRef": {"kind": "DataSource", "name": "f"}, "storage": storage})));
    assert_eq!(by_ref, Plan::CloneFromDataSource { namespace: "vms".into(), name: "f".into() });
    let external = plan(&dv(json!({"storage": {"dataSourceRef": {"apiGroup": "x.io", "kind": "X", "name": "x"},
                                               "resources": {"requests": {"storage": "1Gi"}}}})));
    assert!(matches!(external, Plan::Unsupported(m) if m.contains("external population")));
}

/// One set of rules: what the admission webhook refuses, the controller reports as
/// invalid with the webhook's own message (for objects stored while it was down).
#[test]
fn what_the_webhook_denies_is_invalid_with_the_webhooks_message() {
    let size = json!({"resources": {"requests": {"storage": "64Mi"}}});
    let pvc = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}});
    let denied = [
        json!({"source": http(), "pvc": pvc, "storage": size}),
        json!({"source": http()}),
        json!({"storage": size}),
        json!({"source": {}, "storage": size}),
        json!({"source": {"http": {"url": "http://x/d.img"}, "blank": {}}, "storage": size}),
        json!({"source": http(), "sourceRef": {"kind": "DataSource", "name": "f"}, "storage": size}),
        json!({"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "512Ki"}}}}),
        json!({"source": {"http": {"url": "ftp://x/d.img"}}, "storage": size}),
        json!({"source": {"http": {"url": "http://x/d.img", "checksum": "md5:abc"}}, "storage": size}),
        json!({"source": {"blank": {}}, "contentType": "archive", "storage": size}),
        json!({"source": {"registry": {"url": "https://quay.io/i"}}, "storage": size}),
    ];
    for spec in denied {
        let d = dv(spec.clone());
        let webhook = crate::webhook::datavolume::validate_spec(&d).expect_err("the webhook denies it");
        assert_eq!(plan(&d), Plan::Invalid(webhook.message.clone()), "{spec}");

        // Reported as CDI reports a claim it cannot make: Failed, Running False `Error`
        // with that message (KubeVirt's DataVolumeError), a Warning `ErrClaimNotValid`.
        let observed = crate::datavolume::status::observe(
            "disk",
            &crate::datavolume::status::Situation::Invalid(webhook.message.clone()),
        );
        assert_eq!(observed.phase, crate::api::DataVolumePhase::Failed);
        let running = &observed.conditions[2];
        assert_eq!((running.type_, running.reason.as_str()), ("Running", "Error"));
        assert_eq!(running.message, webhook.message);
        let (event, note) = &observed.event;
        assert_eq!((event.as_str(), event.is_warning()), ("ErrClaimNotValid", true));
        assert!(note.contains(&webhook.message), "{note}");
    }
}

#[test]
fn storage_is_completed_from_the_profile_and_inflated_for_filesystem() {
    let d = dv(json!({"source": http(), "storage": {"resources": {"requests": {"storage": "64Mi"}}}}));
    let pvc = claim(&d, Some("local"), &DEFAULTS).unwrap();
    let spec = pvc.spec.unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("local"));
    assert_eq!(spec.access_modes.as_deref(), Some(&["ReadWriteOnce".to_string()][..]));
    assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
    let request = &spec.resources.unwrap().requests.unwrap()["storage"];
    assert_eq!(request.0, ((64u64 << 20) as f64 * 1.06).ceil().to_string());
    let source_ref = spec.data_source_ref.unwrap();
    assert_eq!(
        (source_ref.api_group.as_deref(), source_ref.kind.as_str(), source_ref.name.as_str()),
        (Some("cdi.kubevirt.io"), "VolumeImportSource", "volume-import-source-dv-uid")
    );

    // Block is not inflated; FromStorageProfile takes the profile's mode; explicit access
    // modes win.
    let d = dv(json!({"source": http(), "storage": {
        "volumeMode": "FromStorageProfile", "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "1Gi"}}}}));
    let spec = claim(&d, Some("ceph"), &BlockProfile).unwrap().spec.unwrap();
    assert_eq!(spec.volume_mode.as_deref(), Some("Block"));
    assert_eq!(spec.access_modes.as_deref(), Some(&["ReadWriteOnce".to_string()][..]));
    assert_eq!(spec.resources.unwrap().requests.unwrap()["storage"].0, "1Gi");

    // A named Filesystem mode is inflated by that class's overhead, with no profile needed
    // when access modes are given too.
    let d = dv(json!({"source": http(), "storage": {
        "volumeMode": "Filesystem", "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "1000000"}}}}));
    let spec = claim(&d, Some("x"), &BlockProfile).unwrap().spec.unwrap();
    assert_eq!(spec.resources.unwrap().requests.unwrap()["storage"].0, (3u64 << 19).to_string());
    assert!(claim(&d, Some("x"), &NoProfile).is_ok());
}

#[test]
fn storage_errors_say_which_field() {
    let d = dv(json!({"source": http(), "storage": {}}));
    assert_eq!(claim(&d, Some("c"), &DEFAULTS), Err(RenderError::MissingSize));
    let d =
        dv(json!({"source": http(), "storage": {"volumeMode": "Tape", "resources": {"requests": {"storage": "1Gi"}}}}));
    assert_eq!(claim(&d, Some("c"), &DEFAULTS), Err(RenderError::VolumeMode("Tape".into())));
    let d = dv(json!({"source": http(), "storage": {"resources": {"requests": {"storage": "1Gi"}}}}));
    let err = claim(&d, Some("c"), &NoProfile).unwrap_err();
    assert!(err.to_string().contains("accessModes"), "{err}");
    let d = dv(json!({"source": http(), "storage": {"resources": {"requests": {"storage": "lots"}}}}));
    assert!(matches!(claim(&d, Some("c"), &DEFAULTS), Err(RenderError::Size(_))));
}

#[test]
fn pvc_spec_is_copied_verbatim_and_only_its_data_source_ref_is_set() {
    let pvc_spec = json!({"accessModes": ["ReadWriteOnce"], "volumeMode": "Block",
                          "resources": {"requests": {"storage": "64Mi"}}, "storageClassName": "local"});
    let d = dv(json!({"source": http(), "pvc": pvc_spec}));
    let pvc = claim(&d, None, &DEFAULTS).unwrap();
    let mut spec = serde_json::to_value(pvc.spec.as_ref().unwrap()).unwrap();
    spec.as_object_mut().unwrap().remove("dataSourceRef");
    assert_eq!(spec, pvc_spec);

    // Ownership, labels and the annotations the populate flow reads.
    let owner = &pvc.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("DataVolume", "disk", "dv-uid"));
    assert_eq!((owner.controller, owner.block_owner_deletion), (Some(true), Some(true)));
    assert_eq!(pvc.metadata.name.as_deref(), Some("disk"));
    assert_eq!(pvc.metadata.namespace.as_deref(), Some("vms"));
    let labels = pvc.metadata.labels.unwrap();
    assert_eq!(labels["app"], "containerized-data-importer");
    assert_eq!(labels["kubevirt.io/created-by"], "vm-uid");
    let annotations = pvc.metadata.annotations.unwrap();
    assert_eq!(annotations["cdi.kubevirt.io/storage.bind.immediate.requested"], "");
    assert_eq!(annotations["cdi.kubevirt.io/createdForDataVolume"], "dv-uid");
    assert!(!annotations.contains_key("cdi.kubevirt.io/allowClaimAdoption"));
}

#[test]
fn the_import_source_carries_the_data_volume_settings_and_is_owned_by_it() {
    let d = dv(json!({"source": http(), "contentType": "archive",
                      "storage": {"resources": {"requests": {"storage": "1Gi"}}}}));
    let Plan::Import(source) = plan(&d) else { panic!() };
    let vis = import_source(&d, (*source).clone(), &DEFAULTS);
    assert_eq!(vis.metadata.name.as_deref(), Some("volume-import-source-dv-uid"));
    assert_eq!(vis.metadata.owner_references.as_ref().unwrap()[0].uid, "dv-uid");
    assert_eq!(vis.spec.content_type.as_deref(), Some("archive"));
    assert_eq!(vis.spec.preallocation, None, "the cluster default is off: left unset");
    assert_eq!(vis.spec.target_claim, None);
    assert_eq!(import_source(&d, (*source).clone(), &BlockProfile).spec.preallocation, Some(true));

    let d = dv(json!({"source": http(), "preallocation": false, "storage": {},
                      "checkpoints": [{"previous": "", "current": "s1"}], "finalCheckpoint": true}));
    let vis = import_source(&d, *source, &BlockProfile);
    assert_eq!(vis.spec.preallocation, Some(false), "the DataVolume's choice wins");
    assert_eq!(vis.spec.target_claim.as_deref(), Some("disk"));
    assert_eq!(vis.spec.checkpoints.len(), 1);
    assert_eq!(vis.spec.final_checkpoint, Some(true));
}

#[test]
fn required_space_follows_cdi() {
    // Rounded up to a MiB first, then the overhead, then up to a byte.
    assert_eq!(required_space(0.0, 1), Some(MIB));
    assert_eq!(required_space(0.0, MIB), Some(MIB));
    assert_eq!(required_space(0.5, MIB + 1), Some(3 * MIB));
    assert_eq!(required_space(0.06, 1 << 30), Some(((1u64 << 30) as f64 * 1.06).ceil() as u64));
    assert_eq!(required_space(f64::NAN, MIB), Some(MIB));
    assert_eq!(required_space(0.06, u64::MAX), None);
}

#[test]
fn content_type_and_class_helpers() {
    assert!(kubevirt_content(&dv(json!({}))));
    assert!(kubevirt_content(&dv(json!({"contentType": "kubevirt"}))));
    assert!(!kubevirt_content(&dv(json!({"contentType": "archive"}))));
    assert_eq!(named_class(&dv(json!({"storage": {"storageClassName": ""}}))), None);
    assert_eq!(named_class(&dv(json!({"storage": {"storageClassName": "fast"}}))), Some("fast"));
}

/// Every field of the registry, s3 and gcs forms reaches the VolumeImportSource, and the
/// plan the populate flow makes of it.
#[test]
fn registry_s3_and_gcs_sources_reach_the_import_source_whole() {
    use crate::plan::{ImportPlan, ImportSource, PullMethod};
    let storage = json!({"resources": {"requests": {"storage": "1Gi"}}});
    let registry = json!({"registry": {
        "url": "docker://registry.local:5000/disks/fedora:40", "pullMethod": "node",
        "secretRef": "pull", "certConfigMap": "ca", "platform": {"architecture": "arm64"}}});
    let s3 = json!({"s3": {"url": "http://127.0.0.1:9000/disks/a.qcow2", "secretRef": "keys", "certConfigMap": "ca"}});
    let gcs = json!({"gcs": {"url": "gs://disks/a.img", "secretRef": "sa"}});
    for source in [registry, s3, gcs] {
        let d = dv(json!({"source": source.clone(), "storage": storage}));
        let Plan::Import(import) = plan(&d) else { panic!("{source} is an import") };
        let vis = import_source(&d, *import, &DEFAULTS);
        assert_eq!(serde_json::to_value(vis.spec.source.as_ref().unwrap()).unwrap(), source);
        assert!(ImportPlan::try_from(&vis).is_ok(), "{source}");
    }
    let d = dv(json!({"source": {"registry": {"url": "docker://r/d:1", "pullMethod": "node"}}, "storage": storage}));
    let Plan::Import(import) = plan(&d) else { panic!() };
    assert!(node_pull_fallback(&import).is_some(), "a node pull is announced");
    let ImportSource::Registry(r) = ImportPlan::try_from(&import_source(&d, *import, &DEFAULTS)).unwrap().source else {
        panic!()
    };
    assert_eq!(r.pull_method, PullMethod::Node);
    let d = dv(json!({"source": {"registry": {"url": "docker://r/d:1"}}, "storage": storage}));
    let Plan::Import(import) = plan(&d) else { panic!() };
    assert_eq!(node_pull_fallback(&import), None);
}

#[test]
fn an_upload_data_volume_gets_an_upload_source_and_a_claim_naming_it() {
    let d = dv(json!({"source": {"upload": {}}, "contentType": "archive",
                      "storage": {"resources": {"requests": {"storage": "1Gi"}}}}));
    let vus = upload_source(&d, &DEFAULTS);
    assert_eq!(vus.metadata.name.as_deref(), Some("volume-upload-source-dv-uid"));
    assert_eq!(vus.metadata.namespace.as_deref(), Some("vms"));
    assert_eq!(vus.metadata.owner_references.as_ref().unwrap()[0].uid, "dv-uid");
    assert_eq!(vus.spec.content_type.as_deref(), Some("archive"));
    assert_eq!(vus.spec.preallocation, None, "the cluster default is off: left unset");
    assert_eq!(upload_source(&d, &BlockProfile).spec.preallocation, Some(true));

    let pvc = claim(&d, Some("local"), &BlockProfile).unwrap();
    let r = pvc.spec.as_ref().unwrap().data_source_ref.clone().unwrap();
    assert_eq!(
        (r.api_group.as_deref(), r.kind.as_str(), r.name.as_str()),
        (Some("cdi.kubevirt.io"), "VolumeUploadSource", "volume-upload-source-dv-uid")
    );
    let annotations = pvc.metadata.annotations.unwrap();
    assert_eq!(annotations["cdi.kubevirt.io/storage.upload.target"], "");
    assert_eq!(annotations["cdi.kubevirt.io/storage.contentType"], "archive");
    assert_eq!(annotations["cdi.kubevirt.io/storage.bind.immediate.requested"], "");

    // An import's claim is no upload target.
    let import = claim(
        &dv(json!({"source": http(), "storage": {"resources": {"requests": {"storage": "1Gi"}}}})),
        Some("local"),
        &BlockProfile,
    )
    .unwrap();
    assert_eq!(import.spec.unwrap().data_source_ref.unwrap().kind, "VolumeImportSource");
    assert!(!import.metadata.annotations.unwrap().contains_key("cdi.kubevirt.io/storage.upload.target"));
}

#[test]
fn a_clone_names_its_clone_source_and_takes_a_missing_size_from_the_source_claim() {
    let d = dv(json!({"source": {"pvc": {"namespace": "golden-images", "name": "golden"}},
                      "contentType": "kubevirt", "storage": {"volumeMode": "Filesystem", "accessModes": ["ReadWriteOnce"]}}));
    let size = |pvc: &PersistentVolumeClaim| {
        pvc.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0.clone()
    };
    let fs = CloneOrigin { size: 1 << 30, mode: VolumeMode::Filesystem };
    let golden = CloneFrom { kind: CloneKind::Pvc, namespace: "golden-images".into(), name: "golden".into() };
    let from = Some(&golden);
    let pvc = clone_claim(&d, Some("local"), &DEFAULTS, from, Some(fs)).unwrap();
    assert_eq!(size(&pvc), (1u64 << 30).to_string(), "a Filesystem source's request has the overhead already");
    let r = pvc.spec.as_ref().unwrap().data_source_ref.as_ref().unwrap();
    assert_eq!((r.kind.as_str(), r.name.as_str()), ("VolumeCloneSource", "volume-clone-source-dv-uid"));
    let ann = pvc.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann[ann::reserved::DATA_SOURCE_NAMESPACE], "golden-images");
    assert_eq!(ann[ann::CONTENT_TYPE], "kubevirt");
    let block = CloneOrigin { size: 1 << 30, mode: VolumeMode::Block };
    let pvc = clone_claim(&d, Some("local"), &DEFAULTS, from, Some(block)).unwrap();
    assert_eq!(size(&pvc), required_space(0.06, 1 << 30).unwrap().to_string(), "Block into Filesystem needs room");
    assert_eq!(
        clone_claim(&d, Some("local"), &DEFAULTS, from, None),
        Err(RenderError::NoCloneSource("golden-images/golden".into()))
    );
    let source = clone_source(&d, &golden, &DEFAULTS);
    assert_eq!(
        (source.spec.source.kind.as_str(), source.spec.source.name.as_str()),
        ("PersistentVolumeClaim", "golden")
    );
    assert_eq!(source.metadata.owner_references.unwrap()[0].uid, "dv-uid");
    let same =
        dv(json!({"source": {"pvc": {"name": "golden"}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}}));
    let here = CloneFrom { kind: CloneKind::Pvc, namespace: "vms".into(), name: "golden".into() };
    let pvc = clone_claim(&same, Some("local"), &BlockProfile, Some(&here), None).unwrap();
    assert!(!pvc.metadata.annotations.unwrap().contains_key(ann::reserved::DATA_SOURCE_NAMESPACE));
}
