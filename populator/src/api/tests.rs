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
                // A map (e.g. resources.requests) has one schema for all its values.
                let child_schema = properties
                    .and_then(|p| p.get(key))
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
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

/// DataVolumes as CDI's documentation and example manifests write them: every source kind,
/// `pvc` and `storage`, `sourceRef`, and a status as CDI's controller writes it.
const DATA_VOLUMES: &str = r#"
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: example-import-dv}
spec:
  source:
    http:
      url: "https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img"
      secretRef: ""
      certConfigMap: ""
  pvc:
    accessModes: [ReadWriteOnce]
    resources:
      requests: {storage: 64Mi}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: example-block-dv}
spec:
  source:
    http: {url: "https://example.com/disk.qcow2", secretRef: endpoint-secret}
  pvc:
    volumeMode: Block
    storageClassName: local-block
    accessModes: [ReadWriteOnce]
    resources:
      requests: {storage: 1Gi}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: example-archive-dv}
spec:
  contentType: archive
  source:
    http: {url: "https://example.com/files.tar"}
  storage:
    resources:
      requests: {storage: 100Mi}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: example-blank-dv}
spec:
  source:
    blank: {}
  pvc:
    accessModes: [ReadWriteOnce]
    resources:
      requests: {storage: 500Mi}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: registry-image-datavolume}
spec:
  source:
    registry:
      url: "docker://quay.io/kubevirt/fedora-cloud-registry-disk-demo"
      pullMethod: node
  storage:
    resources:
      requests: {storage: 5Gi}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: cloned-datavolume}
spec:
  source:
    pvc: {namespace: source-ns, name: source-pvc}
  pvc:
    accessModes: [ReadWriteOnce]
    resources:
      requests: {storage: 500Mi}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: snapshot-restore}
spec:
  source:
    snapshot: {namespace: golden-ns, name: golden-snap}
  storage: {}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: upload-datavolume}
spec:
  source:
    upload: {}
  pvc:
    accessModes: [ReadWriteOnce]
    resources:
      requests: {storage: 500Mi}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: fedora-from-datasource}
spec:
  sourceRef: {kind: DataSource, namespace: golden-images, name: fedora}
  storage:
    resources:
      requests: {storage: 10Gi}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: everything
  namespace: vms
  labels: {kubevirt.io/created-by: 0b5b6d5e-0000-0000-0000-000000000000}
  annotations:
    cdi.kubevirt.io/allowClaimAdoption: "true"
    cdi.kubevirt.io/storage.bind.immediate.requested: ""
spec:
  source:
    imageio:
      url: https://engine.example.com/ovirt-engine/api
      diskId: 1f2e3d4c-0000-0000-0000-000000000000
      secretRef: engine-creds
      certConfigMap: engine-ca
  storage:
    accessModes: [ReadWriteMany]
    selector:
      matchLabels: {tier: fast}
    resources:
      requests: {storage: "2147483648"}
    volumeName: pv-0001
    storageClassName: ceph-rbd
    volumeMode: FromStorageProfile
    dataSource: {kind: PersistentVolumeClaim, name: golden}
    dataSourceRef: {apiGroup: example.io, kind: Populator, name: p, namespace: other}
  contentType: kubevirt
  preallocation: true
  priorityClassName: low
  serviceAccountName: importer
  checkpoints:
  - {previous: "", current: snap-1}
  finalCheckpoint: true
status:
  claimName: everything
  phase: ImportInProgress
  progress: "45.68%"
  restartCount: 2
  conditions:
  - type: Bound
    status: "True"
    lastTransitionTime: "2026-01-02T03:04:05Z"
    lastHeartbeatTime: "2026-01-02T03:04:05Z"
    reason: Bound
    message: PVC everything Bound
  - {type: Ready, status: "False", reason: TransferRunning}
  - {type: Running, status: "True", reason: Pod is running}
"#;

const DATA_SOURCES: &str = "
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataSource
metadata: {name: fedora, namespace: golden-images}
spec:
  source:
    pvc: {namespace: golden-images, name: fedora-40}
status:
  source:
    pvc: {namespace: golden-images, name: fedora-40}
  conditions:
  - {type: Ready, status: \"True\", reason: Ready, message: DataSource is ready to be consumed}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataSource
metadata: {name: fedora-snap}
spec:
  source:
    snapshot: {namespace: golden-images, name: fedora-40-snap}
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataSource
metadata: {name: alias}
spec:
  source:
    dataSource: {namespace: golden-images, name: fedora}
";

#[test]
fn cdi_data_volumes_and_data_sources_round_trip_unchanged() {
    let dvs = documents(DATA_VOLUMES);
    assert_eq!(dvs.len(), 10);
    for doc in &dvs {
        assert_round_trips::<DataVolume>(doc);
    }
    let sources = documents(DATA_SOURCES);
    assert_eq!(sources.len(), 3);
    for doc in &sources {
        assert_round_trips::<DataSource>(doc);
    }
}

#[test]
fn every_field_of_cdi_data_volumes_and_data_sources_is_in_our_crd_schemas() {
    let dv = schema_of::<DataVolume>();
    for doc in &documents(DATA_VOLUMES) {
        assert_fields_in_schema(doc, &dv, "");
    }
    let das = schema_of::<DataSource>();
    for doc in &documents(DATA_SOURCES) {
        assert_fields_in_schema(doc, &das, "");
    }
}

#[test]
fn data_volume_fields_land_where_the_controller_reads_them() {
    let dvs: Vec<DataVolume> =
        documents(DATA_VOLUMES).into_iter().map(|doc| serde_json::from_value(doc).unwrap()).collect();
    let http = dvs[0].spec.source.as_ref().unwrap().import_source().unwrap();
    assert!(http.http.as_ref().unwrap().url.ends_with("cirros-0.4.0-x86_64-disk.img"));
    assert!(dvs[5].spec.source.as_ref().unwrap().import_source().is_none(), "pvc clone is not an import");
    assert!(dvs[7].spec.source.as_ref().unwrap().upload.is_some());
    assert_eq!(dvs[8].spec.source_ref.as_ref().unwrap().kind, "DataSource");
    let everything = &dvs[9];
    let storage = everything.spec.storage.as_ref().unwrap();
    assert_eq!(storage.volume_mode.as_deref(), Some("FromStorageProfile"));
    let status = everything.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(DataVolumePhase::ImportInProgress));
    assert_eq!(status.restart_count, Some(2));
    assert_eq!(status.conditions[2].reason.as_deref(), Some("Pod is running"));
}

#[test]
fn every_cdi_phase_keeps_its_spelling_and_unknown_phases_are_kept() {
    let spellings = [
        "",
        "Pending",
        "PVCBound",
        "ImportScheduled",
        "ImportInProgress",
        "CloneScheduled",
        "CloneInProgress",
        "SnapshotForSmartCloneInProgress",
        "CloneFromSnapshotSourceInProgress",
        "SmartClonePVCInProgress",
        "CSICloneInProgress",
        "ExpansionInProgress",
        "NamespaceTransferInProgress",
        "UploadScheduled",
        "UploadReady",
        "WaitForFirstConsumer",
        "PendingPopulation",
        "Succeeded",
        "Failed",
        "Unknown",
        "Paused",
        "PrepClaimInProgress",
        "RebindInProgress",
    ];
    for (phase, spelling) in DataVolumePhase::ALL.iter().zip(spellings) {
        assert_eq!(serde_json::to_value(phase).unwrap(), spelling);
        assert_eq!(&serde_json::from_value::<DataVolumePhase>(spelling.into()).unwrap(), phase);
    }
    let future: DataVolumePhase = serde_json::from_value("SomethingNew".into()).unwrap();
    assert_eq!(future, DataVolumePhase::Other("SomethingNew".into()));
    assert_eq!(serde_json::to_value(&future).unwrap(), "SomethingNew");
}

#[test]
fn data_volume_crd_matches_cdi_names_columns_and_subresources() {
    let crd = DataVolume::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("datavolumes.cdi.kubevirt.io"));
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["dv".to_owned(), "dvs".to_owned()]));
    let version = &crd.spec.versions[0];
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<(String, String, String)> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| (c.name.clone(), c.type_.clone(), c.json_path.clone()))
        .collect();
    let expected = [
        ("Phase", "string", ".status.phase"),
        ("Progress", "string", ".status.progress"),
        ("Restarts", "integer", ".status.restartCount"),
        ("Age", "date", ".metadata.creationTimestamp"),
    ];
    let expected: Vec<(String, String, String)> =
        expected.iter().map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned())).collect();
    assert_eq!(columns, expected);

    let das = DataSource::crd();
    assert_eq!(das.metadata.name.as_deref(), Some("datasources.cdi.kubevirt.io"));
    assert_eq!(das.spec.names.short_names, Some(vec!["das".to_owned()]));
    assert!(das.spec.versions[0].subresources.as_ref().unwrap().status.is_some());
}

#[test]
fn storage_sizes_may_be_integers_as_for_any_pvc() {
    // The API server accepts `storage: 1073741824` (int-or-string) in a DataVolume.
    let dv = schema_of::<DataVolume>();
    let storage = &dv["properties"]["spec"]["properties"]["storage"]["properties"]["resources"]["properties"]["requests"]
        ["additionalProperties"];
    assert_eq!(storage["x-kubernetes-int-or-string"], true, "{storage}");
    let typed: DataVolume = serde_json::from_value(serde_json::json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": "n"},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": 1073741824}}}},
    }))
    .unwrap();
    let requests = typed.spec.storage.unwrap().resources.unwrap().requests.unwrap();
    assert_eq!(requests["storage"].0, "1073741824");
}
