//! Manifests written for CDI deserialise into our types and serialise back unchanged, and
//! every field they use is in our CRD schemas.

use kube::CustomResourceExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::*;

/// Every import source variant with every field CDI defines, spelled as CDI spells them.
const IMPORT_SOURCES: &str = r#"
apiVersion: cdi.kubevirt.io/v1beta1
kind: VolumeImportSource
metadata: {name: http, namespace: vms}
spec:
  source:
    http:
      url: https://images.example.com/fedora.qcow2.xz
      secretRef: basic-auth
      certConfigMap: extra-ca
      extraHeaders: ["X-Trace: 1", "Accept: */*"]
      secretExtraHeaders: [token-header]
      checksum: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
      insecureSkipVerify: false
  contentType: kubevirt
  preallocation: true
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: VolumeImportSource
metadata: {name: s3}
spec:
  source:
    s3: {url: "https://s3.us-east-1.amazonaws.com/bucket/disk.img", secretRef: s3-creds, certConfigMap: s3-ca}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: VolumeImportSource
metadata: {name: gcs}
spec:
  source:
    gcs: {url: "gs://bucket/disk.img", secretRef: gcs-creds}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: VolumeImportSource
metadata: {name: registry}
spec:
  source:
    registry:
      url: docker://quay.io/containerdisks/fedora:40
      pullMethod: pod
      secretRef: registry-creds
      certConfigMap: registry-ca
      platform: {architecture: arm64}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: VolumeImportSource
metadata: {name: image-stream}
spec:
  source:
    registry: {imageStream: fedora, pullMethod: node}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: VolumeImportSource
metadata: {name: blank}
spec:
  source:
    blank: {}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: VolumeImportSource
metadata: {name: imageio}
spec:
  source:
    imageio:
      url: https://engine.example.com/ovirt-engine/api
      diskId: 1f2e3d4c-0000-0000-0000-000000000000
      secretRef: engine-creds
      certConfigMap: engine-ca
      insecureSkipVerify: true
  targetClaim: vm-disk
  checkpoints:
  - {previous: "", current: snap-1}
  - {previous: snap-1, current: snap-2}
  finalCheckpoint: false
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: VolumeImportSource
metadata: {name: vddk}
spec:
  source:
    vddk:
      url: https://vcenter.example.com
      uuid: 42030a0b-0000-0000-0000-000000000000
      backingFile: "[datastore1] vm/vm.vmdk"
      thumbprint: "AA:BB:CC"
      secretRef: vcenter-creds
      certConfigMap: vcenter-ca
      initImageURL: registry.example.com/vddk:8
      extraArgs: vddk-args
  contentType: kubevirt
  preallocation: false
"#;

const UPLOAD_SOURCE: &str = "
apiVersion: cdi.kubevirt.io/v1beta1
kind: VolumeUploadSource
metadata: {name: upload, namespace: vms}
spec: {contentType: archive, preallocation: false}
";

const CLONE_SOURCES: &str = "
apiVersion: cdi.kubevirt.io/v1beta1
kind: VolumeCloneSource
metadata: {name: from-pvc}
spec:
  source: {kind: PersistentVolumeClaim, name: golden}
  preallocation: true
  priorityClassName: low
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: VolumeCloneSource
metadata: {name: from-snapshot}
spec:
  source: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: golden-snap}
";

fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_str_multiple(yaml).expect("test YAML parses")
}

/// `value` → K → JSON equals `value`: no field lost, renamed or invented.
fn assert_round_trips<K: Serialize + DeserializeOwned>(value: &Value) {
    let typed: K = serde_json::from_value(value.clone()).expect("manifest deserialises");
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(&back, value, "round trip changed the manifest");
}

/// Every key of `value` is a property of `schema`, recursively: the CRD would keep (not
/// prune, not refuse) every field of the manifest.
fn assert_fields_in_schema(value: &Value, schema: &Value, path: &str) {
    match value {
        // A free-form object (kept whole) or a map: anything goes, or every value alike.
        _ if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) => {}
        Value::Object(map) if schema.get("additionalProperties").is_some_and(Value::is_object) => {
            for (key, child) in map {
                assert_fields_in_schema(child, &schema["additionalProperties"], &format!("{path}.{key}"));
            }
        }
        Value::Object(map) => {
            let properties = schema.get("properties");
            for (key, child) in map {
                if path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_schema = properties
                    .and_then(|p| p.get(key))
                    .unwrap_or_else(|| panic!("{path}.{key} is not in the CRD schema"));
                assert_fields_in_schema(child, child_schema, &format!("{path}.{key}"));
            }
        }
        Value::Array(items) => {
            let item_schema = schema.get("items").expect("array schema has items");
            for item in items {
                assert_fields_in_schema(item, item_schema, &format!("{path}[]"));
            }
        }
        _ => {}
    }
}

fn schema_of<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    let validation = crd.spec.versions[0].schema.clone().expect("schema");
    serde_json::to_value(validation.open_api_v3_schema.expect("openAPIV3Schema")).unwrap()
}

#[test]
fn cdi_import_sources_of_every_variant_round_trip_unchanged() {
    let docs = documents(IMPORT_SOURCES);
    assert_eq!(docs.len(), 8);
    for doc in &docs {
        assert_round_trips::<VolumeImportSource>(doc);
    }
}

#[test]
fn cdi_upload_and_clone_sources_round_trip_unchanged() {
    for doc in &documents(UPLOAD_SOURCE) {
        assert_round_trips::<VolumeUploadSource>(doc);
    }
    for doc in &documents(CLONE_SOURCES) {
        assert_round_trips::<VolumeCloneSource>(doc);
    }
}

#[test]
fn every_field_of_cdi_manifests_is_in_our_crd_schemas() {
    let import = schema_of::<VolumeImportSource>();
    for doc in &documents(IMPORT_SOURCES) {
        assert_fields_in_schema(doc, &import, "");
    }
    let upload = schema_of::<VolumeUploadSource>();
    for doc in &documents(UPLOAD_SOURCE) {
        assert_fields_in_schema(doc, &upload, "");
    }
    let clone = schema_of::<VolumeCloneSource>();
    for doc in &documents(CLONE_SOURCES) {
        assert_fields_in_schema(doc, &clone, "");
    }
}

#[test]
fn the_empty_status_cdi_clients_send_is_accepted_on_import_and_upload_sources() {
    // CDI's Go types always serialise `status: {}` for these two kinds.
    let import = schema_of::<VolumeImportSource>();
    let upload = schema_of::<VolumeUploadSource>();
    assert_eq!(import["properties"]["status"]["type"], "object");
    assert_eq!(upload["properties"]["status"]["type"], "object");
    assert!(schema_of::<VolumeCloneSource>()["properties"].get("status").is_none());

    let mut doc = documents(UPLOAD_SOURCE).remove(0);
    doc["status"] = serde_json::json!({});
    let typed: VolumeUploadSource = serde_json::from_value(doc).expect("status: {} accepted");
    assert_eq!(typed.spec.content_type.as_deref(), Some("archive"));
}

#[test]
fn crds_have_no_subresources_like_cdi() {
    for crd in [VolumeImportSource::crd(), VolumeUploadSource::crd(), VolumeCloneSource::crd()] {
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, names::api::VERSION);
        assert!(version.served && version.storage);
        assert!(version.subresources.is_none(), "{:?}", crd.metadata.name);
    }
}

#[test]
fn required_fields_match_cdi() {
    let import = schema_of::<VolumeImportSource>();
    let source = &import["properties"]["spec"]["properties"]["source"]["properties"];
    let required = |v: &Value| v.get("required").cloned().unwrap_or(Value::Array(vec![]));
    assert_eq!(import["required"], serde_json::json!(["spec"]));
    assert_eq!(required(&source["http"]), serde_json::json!(["url"]));
    assert_eq!(required(&source["s3"]), serde_json::json!(["url"]));
    assert_eq!(required(&source["gcs"]), serde_json::json!(["url"]));
    assert_eq!(required(&source["imageio"]), serde_json::json!(["diskId", "url"]));
    assert_eq!(required(&source["registry"]), serde_json::json!([]));
    assert_eq!(required(&source["vddk"]), serde_json::json!([]));
    let clone = schema_of::<VolumeCloneSource>();
    assert_eq!(clone["properties"]["spec"]["required"], serde_json::json!(["source"]));
}

/// The configuration kinds with every field CDI defines, spelled as CDI spells them.
const CONFIG_KINDS: &str = r#"
apiVersion: cdi.kubevirt.io/v1beta1
kind: CDI
metadata: {name: cdi}
spec:
  imagePullPolicy: IfNotPresent
  uninstallStrategy: BlockUninstallIfWorkloadsExist
  infra:
    nodeSelector: {kubernetes.io/os: linux}
    tolerations: [{key: CriticalAddonsOnly, operator: Exists}]
    apiServerReplicas: 2
  workload:
    nodeSelector: {kubernetes.io/os: linux}
  customizeComponents:
    patches: [{resourceName: cdi-deployment, resourceType: Deployment, patch: '{}', type: strategic}]
    flags: {controller: {v: "5"}}
  cloneStrategyOverride: copy
  config:
    featureGates: [HonorWaitForFirstConsumer]
    filesystemOverhead: {global: "0.055"}
  certConfig:
    ca: {duration: 48h, renewBefore: 24h}
  priorityClass: system-cluster-critical
status:
  phase: Deployed
  conditions:
  - {type: Available, status: "True", reason: DeployCompleted, message: Deployment Completed,
     lastHeartbeatTime: "2025-01-01T00:00:00Z", lastTransitionTime: "2025-01-01T00:00:00Z"}
  operatorVersion: v1.60.0
  targetVersion: v1.60.0
  observedVersion: v1.60.0
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: CDIConfig
metadata: {name: config}
spec:
  uploadProxyURLOverride: upload.example.com
  importProxy: {HTTPProxy: "http://proxy:3128", HTTPSProxy: "http://proxy:3128", noProxy: ".svc", trustedCAProxy: proxy-ca}
  scratchSpaceStorageClass: local
  podResourceRequirements:
    limits: {cpu: "1", memory: 1Gi}
  featureGates: [DataVolumeClaimAdoption]
  filesystemOverhead:
    global: "0.06"
    storageClass: {local: "0.1"}
  preallocation: true
  insecureRegistries: ["registry.local:5000"]
  dataVolumeTTLSeconds: -1
  tlsSecurityProfile: {type: Custom, custom: {ciphers: [ECDHE-RSA-AES128-GCM-SHA256], minTLSVersion: VersionTLS12}}
  imagePullSecrets: [{name: pull}]
  logVerbosity: 3
  webhookPvcRendering: Disabled
status:
  uploadProxyURL: upload.example.com
  uploadProxyCA: "-----BEGIN CERTIFICATE-----"
  importProxy: {HTTPProxy: "http://proxy:3128"}
  scratchSpaceStorageClass: local
  defaultPodResourceRequirements:
    limits: {cpu: 750m, memory: 600M}
    requests: {cpu: 100m, memory: 60M}
  filesystemOverhead: {global: "0.06", storageClass: {local: "0.1"}}
  preallocation: true
  imagePullSecrets: [{name: pull}]
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: StorageProfile
metadata: {name: ceph}
spec:
  cloneStrategy: csi-clone
  claimPropertySets:
  - {accessModes: [ReadWriteMany], volumeMode: Block}
  dataImportCronSourceFormat: snapshot
  snapshotClass: ceph-snapshots
status:
  storageClass: ceph
  provisioner: rbd.csi.ceph.com
  cloneStrategy: csi-clone
  claimPropertySets:
  - {accessModes: [ReadWriteMany], volumeMode: Block}
  - {accessModes: [ReadWriteOnce], volumeMode: Filesystem}
  dataImportCronSourceFormat: snapshot
  snapshotClass: ceph-snapshots
"#;

#[test]
fn cdi_configuration_kinds_round_trip_unchanged_and_fit_the_schemas() {
    let docs = documents(CONFIG_KINDS);
    assert_eq!(docs.len(), 3);
    assert_round_trips::<CDI>(&docs[0]);
    assert_round_trips::<CDIConfig>(&docs[1]);
    assert_round_trips::<StorageProfile>(&docs[2]);
    assert_fields_in_schema(&docs[0], &schema_of::<CDI>(), "");
    assert_fields_in_schema(&docs[1], &schema_of::<CDIConfig>(), "");
    assert_fields_in_schema(&docs[2], &schema_of::<StorageProfile>(), "");
    // An empty object, as a user writes one, is complete.
    let cdi: CDI = serde_json::from_value(serde_json::json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "CDI", "metadata": {"name": "cdi"}, "spec": {}
    }))
    .unwrap();
    assert_eq!(cdi.spec, CDISpec::default());
}

#[test]
fn configuration_kinds_are_cluster_scoped_with_a_status_subresource() {
    for crd in [CDI::crd(), CDIConfig::crd(), StorageProfile::crd()] {
        assert_eq!(crd.spec.scope, "Cluster", "{:?}", crd.metadata.name);
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{:?}", crd.metadata.name);
    }
    let cdi = CDI::crd();
    assert_eq!(cdi.spec.names.plural, "cdis");
    assert_eq!(cdi.spec.names.short_names, Some(vec!["cdi".to_string(), "cdis".to_string()]));
    let columns: Vec<String> = cdi.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| format!("{}={}", c.name, c.json_path))
        .collect();
    assert_eq!(columns, ["Age=.metadata.creationTimestamp", "Phase=.status.phase"]);
    assert_eq!(CDIConfig::crd().spec.names.plural, "cdiconfigs");
    assert_eq!(StorageProfile::crd().spec.names.plural, "storageprofiles");
}
