//! The rules one by one, each with CDI's message, on DataVolumes written as manifests.

use serde_json::{Value, json};

use super::*;

const SHA256: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn dv(spec: Value) -> DataVolume {
    dv_named("disk", json!({}), spec)
}

fn dv_named(name: &str, annotations: Value, spec: Value) -> DataVolume {
    serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": spec,
    }))
    .expect("a DataVolume")
}

fn storage(size: &str) -> Value {
    json!({"resources": {"requests": {"storage": size}}})
}

fn http(url: &str) -> Value {
    json!({"http": {"url": url}})
}

/// A valid import DataVolume with `patch` merged into its spec.
fn import_with(patch: Value) -> DataVolume {
    let mut spec = json!({"source": http("https://example.com/disk.qcow2"), "storage": storage("1Gi")});
    merge(&mut spec, patch);
    dv(spec)
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(&k);
                } else {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p,
    }
}

#[track_caller]
fn refused(dv: &DataVolume, message: &str) {
    match validate(dv, None, None) {
        Err(d) => assert_eq!(d.message, message, "field {}", d.field),
        Ok(()) => panic!("admitted, expected {message:?}"),
    }
}

#[track_caller]
fn admitted(dv: &DataVolume) {
    if let Err(d) = validate(dv, None, None) {
        panic!("refused: {} ({})", d.message, d.field);
    }
}

#[test]
fn cdis_example_manifests_are_admitted() {
    admitted(&import_with(json!({})));
    admitted(&dv(json!({"source": {"blank": {}}, "pvc": {"accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "500Mi"}}}})));
    admitted(&dv(json!({"source": {"upload": {}}, "contentType": "archive", "storage": storage("1Gi")})));
    admitted(&import_with(json!({"contentType": "archive", "source": {"http": {"url": "http://x/a.tar"}}})));
    admitted(&import_with(
        json!({"source": {"http": {"url": "https://x/d.img", "secretRef": "creds", "checksum": SHA256}}}),
    ));
    admitted(&dv(json!({"source": {"registry": {"url": "docker://quay.io/kubevirt/cirros-container-disk-demo"}},
        "storage": storage("1Gi")})));
    admitted(&dv(json!({"source": {"s3": {"url": "s3://bucket/disk.img"}}, "storage": storage("1Gi")})));
    admitted(&dv(json!({"source": {"gcs": {"url": "gs://bucket/disk.img"}}, "storage": storage("1Gi")})));
    admitted(&dv(json!({"source": {"pvc": {"namespace": "golden", "name": "fedora"}}, "storage": {}})));
    admitted(&dv(json!({"sourceRef": {"kind": "DataSource", "name": "fedora"}, "storage": {}})));
}

#[test]
fn exactly_one_of_pvc_and_storage() {
    refused(&import_with(json!({"storage": null})), "Missing Data volume PVC");
    refused(
        &import_with(json!({"pvc": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})),
        "Duplicate storage definition, both target storage and target pvc defined",
    );
}

#[test]
fn the_size_is_at_least_one_mebibyte_and_only_a_clone_through_storage_may_omit_it() {
    refused(&import_with(json!({"storage": storage("0")})), "Storage size can't be equal or less than zero");
    refused(&import_with(json!({"storage": storage("-1Gi")})), "Storage size can't be equal or less than zero");
    refused(&import_with(json!({"storage": storage("1023Ki")})), "Storage size should be at least 1MiB");
    admitted(&import_with(json!({"storage": storage("1Mi")})));
    refused(&dv(json!({"source": http("http://x/d"), "storage": {}})), "Storage size is missing");
    let pvc = json!({"accessModes": ["ReadWriteOnce"]});
    refused(&dv(json!({"source": {"pvc": {"namespace": "a", "name": "b"}}, "pvc": pvc})), "PVC size is missing");
    admitted(&dv(json!({"source": {"snapshot": {"namespace": "a", "name": "b"}}, "storage": {}})));
    let e = validate(&import_with(json!({"storage": storage("lots")})), None, None).unwrap_err();
    assert!(e.message.starts_with("Storage size is not valid: \"lots\" is not a quantity"), "{e}");
}

#[test]
fn a_pvc_target_has_one_known_access_mode_and_storage_only_known_ones() {
    let pvc = |modes: Value| {
        dv(
            json!({"source": http("http://x/d"), "pvc": {"accessModes": modes, "resources": {"requests": {"storage": "1Gi"}}}}),
        )
    };
    refused(&pvc(json!([])), "Required value: at least 1 access mode is required");
    refused(&pvc(json!(["ReadWriteOnce", "ReadOnlyMany"])), "PVC multiple accessModes");
    let unsupported = "Unsupported value: \"ReadWriteSometimes\": supported values: \"ReadOnlyMany\", \"ReadWriteMany\", \
                       \"ReadWriteOnce\", \"ReadWriteOncePod\"";
    refused(&pvc(json!(["ReadWriteSometimes"])), unsupported);
    admitted(&import_with(json!({"storage": {"accessModes": ["ReadWriteOnce", "ReadWriteMany"]}})));
    refused(&import_with(json!({"storage": {"accessModes": ["ReadWriteOnce", "ReadWriteSometimes"]}})), unsupported);
}

#[test]
fn exactly_one_of_source_and_source_ref_unless_externally_populated() {
    let either = "Data volume should have either Source or SourceRef, or be externally populated";
    refused(&import_with(json!({"source": null})), either);
    refused(&import_with(json!({"sourceRef": {"kind": "DataSource", "name": "x"}})), either);
    // External population: another populator fills the claim.
    let external = json!({"apiGroup": "hello.example.com", "kind": "Hello", "name": "h"});
    admitted(&import_with(json!({"source": null, "storage": {"dataSourceRef": external}})));
    refused(
        &import_with(json!({"storage": {"dataSourceRef": external}})),
        "External population is incompatible with Source and SourceRef",
    );
    refused(
        &import_with(json!({"source": null, "storage": {"dataSourceRef": {"kind": "Hello", "name": "h"}}})),
        "Required value: DataSourceRef apiGroup when kind is not 'PersistentVolumeClaim'",
    );
    refused(
        &import_with(json!({"source": null, "storage": {"dataSourceRef": {"apiGroup": "a.b", "kind": "Hello",
            "name": "h", "namespace": "elsewhere"}}})),
        "Invalid value: DataSourceRef namespace not supported",
    );
    refused(
        &import_with(json!({"source": null, "storage": {"dataSourceRef": external,
            "dataSource": {"apiGroup": "hello.example.com", "kind": "Hello", "name": "other"}}})),
        "DataSourceRef and DataSource must match",
    );
    admitted(&import_with(
        json!({"source": null, "storage": {"dataSource": {"kind": "PersistentVolumeClaim", "name": "p"}}}),
    ));
}

#[test]
fn source_ref_names_a_data_source() {
    let with = |r: Value| dv(json!({"sourceRef": r, "storage": {}}));
    refused(&with(json!({"kind": "", "name": "x"})), "Missing sourceRef kind");
    refused(
        &with(json!({"kind": "PersistentVolumeClaim", "name": "x"})),
        "Unsupported sourceRef kind PersistentVolumeClaim, currently only DataSource is supported",
    );
    refused(&with(json!({"kind": "DataSource", "name": ""})), "Missing sourceRef name");
}

#[test]
fn exactly_one_source_variant() {
    refused(&dv(json!({"source": {}, "storage": storage("1Gi")})), "Missing Data volume source");
    refused(&import_with(json!({"source": {"blank": {}}})), "Multiple Data volume sources");
}

#[test]
fn content_type_is_kubevirt_or_archive_and_archive_only_for_http_and_upload_on_a_filesystem() {
    refused(&import_with(json!({"contentType": "iso"})), "ContentType not one of: kubevirt, archive");
    admitted(&import_with(json!({"contentType": "kubevirt"})));
    let archive = |source: Value| dv(json!({"source": source, "contentType": "archive", "storage": storage("1Gi")}));
    refused(&archive(json!({"blank": {}})), "SourceType cannot be blank and the contentType be archive");
    refused(
        &archive(json!({"registry": {"url": "docker://r/i"}})),
        "ContentType must be kubevirt when Source is Registry",
    );
    refused(
        &archive(json!({"s3": {"url": "s3://b/o.tar"}})),
        "ContentType archive is supported only with the http and upload sources, not s3",
    );
    refused(
        &import_with(json!({"contentType": "archive", "storage": {"volumeMode": "Block"}})),
        "ContentType archive needs volumeMode Filesystem: an archive is extracted into a filesystem",
    );
}

#[test]
fn urls_have_their_sources_schemes() {
    let source = |s: Value| dv(json!({"source": s, "storage": storage("1Gi")}));
    refused(&source(http("")), "spec.source source URL is empty");
    refused(&source(http("not a url")), "spec.source Invalid source URL: not a url");
    refused(&source(http("ftp://x/disk.img")), "spec.source Invalid source URL scheme: ftp://x/disk.img");
    refused(&source(http("s3://b/disk.img")), "spec.source Invalid source URL scheme: s3://b/disk.img");
    admitted(&source(json!({"s3": {"url": "https://s3.example.com/b/disk.img"}})));
    refused(&source(json!({"s3": {"url": "gs://b/o"}})), "spec.source Invalid source URL scheme: gs://b/o");
    admitted(&source(json!({"gcs": {"url": "https://storage.cloud.google.com/b/o"}})));
    refused(
        &source(json!({"gcs": {"url": "https://example.com/b/o"}})),
        "spec.source Invalid source URL scheme: https://example.com/b/o",
    );
    refused(&source(json!({"gcs": {"url": "s3://b/o"}})), "spec.source Invalid source URL scheme: s3://b/o");
}

#[test]
fn checksums_name_a_known_algorithm_and_its_digest_length() {
    let sum = |c: &str| import_with(json!({"source": {"http": {"url": "http://x/d", "checksum": c}}}));
    admitted(&sum(SHA256));
    admitted(&sum(&SHA256.to_uppercase()));
    refused(
        &sum("9f86d08"),
        "Invalid checksum format: invalid checksum format: expected 'algorithm:hash', got '9f86d08'",
    );
    refused(
        &sum("crc32:abcd"),
        "Invalid checksum format: unsupported hash algorithm 'crc32': supported algorithms are: md5, sha1, sha256, sha512",
    );
    refused(&sum("md5:abc"), "Invalid checksum format: invalid md5 hash length: expected 32 hex characters, got 3");
    refused(&sum("sha1:"), "Invalid checksum format: checksum hash value cannot be empty");
    refused(
        &sum("md5:0123456789abcdef0123456789abcdeg"),
        "Invalid checksum format: checksum hash is not valid hexadecimal: invalid character 'g'",
    );
}

#[test]
fn registry_sources_have_a_url_or_an_image_stream_pulled_by_the_node() {
    let reg = |r: Value| dv(json!({"source": {"registry": r}, "storage": storage("1Gi")}));
    refused(&reg(json!({})), "Source registry should have either URL or ImageStream");
    refused(
        &reg(json!({"url": "docker://r/i", "imageStream": "is"})),
        "Source registry should have either URL or ImageStream",
    );
    refused(&reg(json!({"url": "quay.io/i"})), "Illegal registry source URL scheme quay.io/i");
    refused(&reg(json!({"url": "https://quay.io/i"})), "Illegal registry source URL scheme https://quay.io/i");
    admitted(&reg(json!({"url": "oci-archive:///images/i.tar"})));
    refused(
        &reg(json!({"url": "docker://r/i", "pullMethod": "magic"})),
        "ImportMethod magic is neither pod, node or \"\"",
    );
    refused(
        &reg(json!({"imageStream": "fedora"})),
        "Source registry ImageStream is supported only with node pull import method",
    );
    refused(&reg(json!({"imageStream": "", "pullMethod": "node"})), "Source registry ImageStream is not valid");
    admitted(&reg(json!({"imageStream": "fedora", "pullMethod": "node"})));
}

#[test]
fn imageio_needs_a_ca_or_insecure_skip_verify_and_vddk_its_fields() {
    let src = |s: Value| dv(json!({"source": s, "storage": storage("1Gi")}));
    let imageio = json!({"url": "https://engine/ovirt-engine/api", "secretRef": "s", "diskId": "d"});
    refused(
        &src(json!({"imageio": imageio})),
        "spec.source.Imageio source Imageio requires CertConfigMap or InsecureSkipVerify",
    );
    let mut with_ca = imageio.clone();
    with_ca["certConfigMap"] = json!("ca");
    admitted(&src(json!({"imageio": with_ca})));
    let mut insecure = imageio.clone();
    insecure["insecureSkipVerify"] = json!(true);
    admitted(&src(json!({"imageio": insecure})));
    let mut no_disk = with_ca.clone();
    no_disk["diskId"] = json!("");
    refused(&src(json!({"imageio": no_disk})), "spec.source.Imageio source Imageio is not valid");
    refused(
        &src(json!({"vddk": {"url": "https://vcenter", "uuid": "u"}})),
        "spec.source.VDDK source VDDK is not valid",
    );
}

#[test]
fn clone_sources_name_their_claim_or_snapshot() {
    let src = |s: Value| dv(json!({"source": s, "storage": {}}));
    refused(&src(json!({"pvc": {"namespace": "a", "name": ""}})), "spec.source.PVC source PVC is not valid");
    refused(&src(json!({"pvc": {"namespace": "", "name": "b"}})), "spec.source.PVC source PVC is not valid");
    refused(
        &src(json!({"snapshot": {"namespace": "a", "name": ""}})),
        "spec.source.Snapshot source snapshot is not valid",
    );
    // The namespace left out means the DataVolume's own.
    admitted(&src(json!({"pvc": {"name": "b"}})));
}

#[test]
fn names_and_storage_class_names_have_at_most_253_characters() {
    let long = "a".repeat(254);
    let spec = json!({"source": http("http://x/d"), "storage": storage("1Gi")});
    refused(&dv_named(&long, json!({}), spec.clone()), "Name cannot be longer than 253 characters");
    admitted(&dv_named(&long[..253], json!({}), spec));
    refused(&import_with(json!({"storage": {"storageClassName": long}})), "Name cannot be longer than 253 characters");
}

#[test]
fn the_spec_cannot_change_after_creation_but_the_rest_can() {
    let old = import_with(json!({}));
    let resized = import_with(json!({"storage": storage("2Gi")}));
    let e = validate(&resized, Some(&old), None).unwrap_err();
    assert_eq!((e.message.as_str(), e.field.as_str()), ("Cannot update DataVolume Spec", "DataVolume.Spec"));
    let mut labelled = old.clone();
    labelled.metadata.labels = Some([("app".to_string(), "vm".to_string())].into());
    assert_eq!(validate(&labelled, Some(&old), None), Ok(()));
    // Stored while the webhook was away: metadata changes still go through.
    let invalid = dv(json!({"source": {}, "storage": storage("1Gi")}));
    assert_eq!(validate(&invalid, Some(&invalid), None), Ok(()));
}

#[test]
fn a_multi_stage_import_may_add_checkpoints() {
    let vddk = json!({"vddk": {"url": "https://vcenter", "uuid": "u", "backingFile": "[ds] vm.vmdk",
        "thumbprint": "t", "secretRef": "s"}});
    let stage = |checkpoints: Value, last: bool| {
        dv(json!({"source": vddk, "storage": storage("1Gi"), "checkpoints": checkpoints, "finalCheckpoint": last}))
    };
    let one = stage(json!([{"previous": "", "current": "c1"}]), false);
    let two = stage(json!([{"previous": "", "current": "c1"}, {"previous": "c1", "current": "c2"}]), true);
    assert_eq!(validate(&two, Some(&one), None), Ok(()));
    // Anything else still may not change.
    let mut moved = two.clone();
    moved.spec.source.as_mut().unwrap().vddk.as_mut().unwrap().uuid = Some("other".into());
    assert!(validate(&moved, Some(&one), None).is_err());
    // Without a multi-stage source, checkpoints are spec like the rest.
    let http_one = import_with(json!({"checkpoints": [{"previous": "", "current": "c1"}]}));
    let http_two =
        import_with(json!({"checkpoints": [{"previous": "", "current": "c1"}, {"previous": "c1", "current": "c2"}]}));
    assert!(validate(&http_two, Some(&http_one), None).is_err());
}

fn pvc(annotations: Value, owner_kind: Option<&str>) -> PersistentVolumeClaim {
    let mut p = json!({"metadata": {"name": "disk", "namespace": "default", "annotations": annotations}});
    if let Some(kind) = owner_kind {
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "x/v1", "kind": kind, "name": "o", "uid": "u",
            "controller": true}]);
    }
    serde_json::from_value(p).unwrap()
}

#[test]
fn an_existing_claim_of_the_same_name_is_refused_unless_adopted_populated_for_it_or_a_data_volumes() {
    let spec = json!({"source": http("http://x/d"), "storage": storage("1Gi")});
    let plain = dv_named("disk", json!({}), spec.clone());
    let e = validate(&plain, None, Some(&pvc(json!({}), None))).unwrap_err();
    assert_eq!(
        (e.message.as_str(), e.field.as_str()),
        ("Destination PVC default/disk already exists", "DataVolume.Name")
    );
    assert!(validate(&plain, None, Some(&pvc(json!({}), Some("StatefulSet")))).is_err());
    assert_eq!(validate(&plain, None, Some(&pvc(json!({}), Some("DataVolume")))), Ok(()));
    let populated = pvc(json!({"cdi.kubevirt.io/storage.populatedFor": "disk"}), None);
    assert_eq!(validate(&plain, None, Some(&populated)), Ok(()));

    let adopt = |v: &str| dv_named("disk", json!({"cdi.kubevirt.io/allowClaimAdoption": v}), spec.clone());
    assert_eq!(validate(&adopt("true"), None, Some(&pvc(json!({}), None))), Ok(()));
    assert!(validate(&adopt("false"), None, Some(&pvc(json!({}), None))).is_err());
    // A claim made for this very DataVolume is not "adopted" (it would be its own).
    let mut own = adopt("true");
    own.metadata.uid = Some("dv-uid".into());
    let made_for = pvc(json!({"cdi.kubevirt.io/createdForDataVolume": "dv-uid"}), None);
    assert!(validate(&own, None, Some(&made_for)).is_err());
}

#[test]
fn validate_spec_is_the_rules_without_lookups() {
    assert_eq!(validate_spec(&import_with(json!({}))), Ok(()));
    assert_eq!(validate_spec(&import_with(json!({"storage": null}))).unwrap_err().message, "Missing Data volume PVC");
}
