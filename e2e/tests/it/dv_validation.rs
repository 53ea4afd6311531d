//! CDI's DataVolume validation as an admission webhook of the installed cdi-rs
//! (`kubectl apply -k deploy/`): the populator serves `/datavolume-validate` over TLS with
//! the certificate it makes, behind the `cdi-populator-webhook` Service, and fills in the
//! `caBundle` of the `ValidatingWebhookConfiguration`. Every rule is refused with CDI's
//! message, through kubectl and through kube-rs; with no populator to answer, DataVolume
//! writes fail closed.

use cdi_e2e::cluster::CLASS_IMMEDIATE;
use cdi_e2e::controllers::kubelet::ProjectImages;
use cdi_e2e::system::{DEPLOY_DIR, binaries_dir};
use cdi_populator::api::DataVolume;
use cdi_populator::api::names::webhooks::DATAVOLUME_VALIDATE;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{Value, json};

use crate::common::{TestCluster, json_of, within};

const NS: &str = "cdi-rs";
const CONFIGURATION: &str = "cdi-populator-webhook";
const SHA256: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// A cluster with cdi-rs installed from `deploy/`, its webhook ready to answer: the
/// populator is ready (it listens only with its certificate) and the configuration trusts
/// its CA.
async fn installed() -> TestCluster {
    let binaries = binaries_dir().expect("the workspace is built");
    let tc = TestCluster::start_with(|c| c.images = ProjectImages::from_dir(&binaries)).await;
    tc.kubectl(&["apply", "-k", DEPLOY_DIR]).await;
    let out = tc.kubectl(&["-n", NS, "rollout", "status", "deployment/cdi-populator", "--timeout=90s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(tc.client.clone());
    let trusted = await_condition(configs, CONFIGURATION, |c: Option<&ValidatingWebhookConfiguration>| {
        c.and_then(|c| c.webhooks.as_ref()?.first()?.client_config.ca_bundle.as_ref()).is_some_and(|b| !b.0.is_empty())
    });
    within("the populator to set the webhook's caBundle", trusted).await.unwrap();
    tc
}

fn manifest(name: &str, annotations: Value, spec: Value) -> Value {
    json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations}, "spec": spec})
}

fn storage(size: &str) -> Value {
    json!({"storageClassName": CLASS_IMMEDIATE, "resources": {"requests": {"storage": size}}})
}

fn import(url: &str) -> Value {
    json!({"source": {"http": {"url": url}}, "storage": storage("64Mi")})
}

/// Each rule, broken once: (DataVolume name, spec, CDI's message).
fn broken() -> Vec<(&'static str, Value, String)> {
    let long_class = "c".repeat(254);
    let pvc = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}});
    vec![
        ("no-target", json!({"source": {"blank": {}}}), "Missing Data volume PVC".into()),
        (
            "two-targets",
            json!({"source": {"blank": {}}, "pvc": pvc, "storage": storage("64Mi")}),
            "Duplicate storage definition, both target storage and target pvc defined".into(),
        ),
        (
            "no-source",
            json!({"storage": storage("64Mi")}),
            "Data volume should have either Source or SourceRef, or be externally populated".into(),
        ),
        (
            "two-sources",
            json!({"source": {"blank": {}}, "sourceRef": {"kind": "DataSource", "name": "x"}, "storage": storage("64Mi")}),
            "Data volume should have either Source or SourceRef, or be externally populated".into(),
        ),
        (
            "two-variants",
            json!({"source": {"blank": {}, "upload": {}}, "storage": storage("64Mi")}),
            "Multiple Data volume sources".into(),
        ),
        (
            "tiny",
            json!({"source": {"blank": {}}, "storage": storage("512Ki")}),
            "Storage size should be at least 1MiB".into(),
        ),
        (
            "zero",
            json!({"source": {"blank": {}}, "storage": storage("0")}),
            "Storage size can't be equal or less than zero".into(),
        ),
        ("sizeless", json!({"source": {"blank": {}}, "storage": {}}), "Storage size is missing".into()),
        (
            "bad-checksum",
            json!({"source": {"http": {"url": "https://example.com/d.img", "checksum": "md5:abc"}}, "storage": storage("64Mi")}),
            "Invalid checksum format: invalid md5 hash length: expected 32 hex characters, got 3".into(),
        ),
        (
            "ftp",
            import("ftp://example.com/d.img"),
            "spec.source Invalid source URL scheme: ftp://example.com/d.img".into(),
        ),
        (
            "gcs-elsewhere",
            json!({"source": {"gcs": {"url": "https://example.com/b/o"}}, "storage": storage("64Mi")}),
            "spec.source Invalid source URL scheme: https://example.com/b/o".into(),
        ),
        (
            "registry-https",
            json!({"source": {"registry": {"url": "https://quay.io/i"}}, "storage": storage("64Mi")}),
            "Illegal registry source URL scheme https://quay.io/i".into(),
        ),
        (
            "registry-stream",
            json!({"source": {"registry": {"imageStream": "fedora"}}, "storage": storage("64Mi")}),
            "Source registry ImageStream is supported only with node pull import method".into(),
        ),
        (
            "content-iso",
            json!({"source": {"blank": {}}, "contentType": "iso", "storage": storage("64Mi")}),
            "ContentType not one of: kubevirt, archive".into(),
        ),
        (
            "blank-archive",
            json!({"source": {"blank": {}}, "contentType": "archive", "storage": storage("64Mi")}),
            "SourceType cannot be blank and the contentType be archive".into(),
        ),
        (
            "archive-block",
            json!({"source": {"http": {"url": "https://example.com/a.tar"}}, "contentType": "archive",
                "storage": {"volumeMode": "Block", "resources": {"requests": {"storage": "64Mi"}}}}),
            "ContentType archive needs volumeMode Filesystem: an archive is extracted into a filesystem".into(),
        ),
        (
            "ref-pvc",
            json!({"sourceRef": {"kind": "PersistentVolumeClaim", "name": "x"}, "storage": {}}),
            "Unsupported sourceRef kind PersistentVolumeClaim, currently only DataSource is supported".into(),
        ),
        (
            "imageio-unverified",
            json!({"source": {"imageio": {"url": "https://engine/ovirt-engine/api", "secretRef": "s", "diskId": "d"}},
                "storage": storage("64Mi")}),
            "spec.source.Imageio source Imageio requires CertConfigMap or InsecureSkipVerify".into(),
        ),
        (
            "long-class",
            json!({"source": {"blank": {}}, "storage": {"storageClassName": long_class,
                "resources": {"requests": {"storage": "64Mi"}}}}),
            "Name cannot be longer than 253 characters".into(),
        ),
    ]
}

fn denial(message: &str) -> String {
    format!("admission webhook \"{DATAVOLUME_VALIDATE}\" denied the request: {message}")
}

/// `kubectl create` of `dv`: `Err(stderr)` when refused.
async fn kubectl_create(tc: &TestCluster, dv: &Value) -> Result<(), String> {
    let out = tc.kubectl_output(&["create", "-f", "-"], Some(&dv.to_string())).await;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

async fn stored(tc: &TestCluster, name: &str) -> bool {
    tc.kubectl_output(&["get", "datavolume", name], None).await.status.success()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_datavolume_rule_is_refused_with_cdis_message_through_kubectl_and_kube_rs() {
    let tc = installed().await;
    let dvs: Api<DataVolume> = Api::namespaced(tc.client.clone(), "default");

    // A valid DataVolume, as CDI's examples write one, is admitted and stored.
    let valid = manifest(
        "valid",
        json!({}),
        json!({"source": {"http": {"url": "https://example.com/disk.qcow2", "checksum": SHA256}},
            "storage": storage("64Mi")}),
    );
    kubectl_create(&tc, &valid).await.expect("a valid DataVolume is admitted");
    assert!(stored(&tc, "valid").await);

    for (name, spec, message) in broken() {
        let dv = manifest(name, json!({}), spec);
        let stderr = kubectl_create(&tc, &dv).await.expect_err(name);
        assert!(stderr.contains(&denial(&message)), "{name}: kubectl says {stderr}");
        assert!(!stored(&tc, name).await, "{name}: a refused DataVolume is not stored");

        let typed: DataVolume = serde_json::from_value(dv).unwrap();
        match dvs.create(&PostParams::default(), &typed).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{name}: {status:?}");
                assert_eq!(status.message, denial(&message), "{name}");
            }
            other => panic!("{name}: kube-rs create gave {other:?}"),
        }
    }

    // The spec is immutable; metadata is not.
    let patch = r#"{"spec":{"storage":{"resources":{"requests":{"storage":"128Mi"}}}}}"#;
    let out = tc.kubectl_output(&["patch", "datavolume", "valid", "--type=merge", "-p", patch], None).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&denial("Cannot update DataVolume Spec")), "{stderr}");
    let resize = json!({"spec": {"storage": {"resources": {"requests": {"storage": "128Mi"}}}}});
    match dvs.patch("valid", &PatchParams::default(), &Patch::Merge(&resize)).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.message, denial("Cannot update DataVolume Spec")),
        other => panic!("kube-rs patch of the spec gave {other:?}"),
    }
    tc.kubectl(&["label", "datavolume", "valid", "app=vm"]).await;
    let dv = json_of(&tc.kubectl(&["get", "datavolume", "valid", "-o", "json"]).await);
    assert_eq!(dv["spec"]["storage"]["resources"]["requests"]["storage"], "64Mi", "{dv}");
    assert_eq!(dv["metadata"]["labels"]["app"], "vm", "{dv}");

    // A claim of the DataVolume's name that is not the DataVolume's: refused, unless the
    // DataVolume asks to adopt it.
    let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "taken", "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": CLASS_IMMEDIATE,
            "resources": {"requests": {"storage": "64Mi"}}}});
    tc.kubectl_stdin(&["create", "-f", "-"], Some(&claim.to_string())).await;
    let taken = manifest("taken", json!({}), json!({"source": {"blank": {}}, "storage": storage("64Mi")}));
    let stderr = kubectl_create(&tc, &taken).await.expect_err("the claim exists");
    assert!(stderr.contains(&denial("Destination PVC default/taken already exists")), "{stderr}");
    let typed: DataVolume = serde_json::from_value(taken).unwrap();
    match dvs.create(&PostParams::default(), &typed).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.message, denial("Destination PVC default/taken already exists"))
        }
        other => panic!("kube-rs create over an existing claim gave {other:?}"),
    }
    let adopting = manifest(
        "taken",
        json!({"cdi.kubevirt.io/allowClaimAdoption": "true"}),
        json!({"source": {"blank": {}}, "storage": storage("64Mi")}),
    );
    kubectl_create(&tc, &adopting).await.expect("adoption is admitted");
    assert!(stored(&tc, "taken").await);
    tc.shutdown_and_check_leaks().await;
}

/// Sets the populator Deployment's replicas (a patch: the mini-cluster has no `scale`
/// subresource).
async fn scale(tc: &TestCluster, replicas: u32) {
    let patch = format!("{{\"spec\":{{\"replicas\":{replicas}}}}}");
    tc.kubectl(&["-n", NS, "patch", "deployment/cdi-populator", "--type=merge", "-p", &patch]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_replica_serves_and_with_none_datavolume_writes_fail_closed() {
    let tc = installed().await;
    let blank = |name: &str| manifest(name, json!({}), json!({"source": {"blank": {}}, "storage": storage("64Mi")}));

    // A second replica stands by as leader but is ready only once it serves the webhook
    // with the certificate the leader made.
    scale(&tc, 2).await;
    tc.kubectl(&["-n", NS, "rollout", "status", "deployment/cdi-populator", "--timeout=90s"]).await;
    let ready =
        tc.kubectl(&["-n", NS, "get", "deployment/cdi-populator", "-o", "jsonpath={.status.readyReplicas}"]).await;
    assert_eq!(ready, "2");
    kubectl_create(&tc, &blank("two-replicas")).await.expect("admitted");

    // No replica: the API server cannot call the webhook, and failurePolicy Fail refuses.
    let pods: Api<Pod> = Api::namespaced(tc.client.clone(), NS);
    let populators = pods.list(&ListParams::default().labels("app.kubernetes.io/name=cdi-populator")).await.unwrap();
    scale(&tc, 0).await;
    for pod in populators.items {
        let (name, uid) = (pod.metadata.name.unwrap(), pod.metadata.uid.unwrap());
        within("the populator pods to go", await_condition(pods.clone(), &name, conditions::is_deleted(&uid)))
            .await
            .unwrap();
    }
    let stderr = kubectl_create(&tc, &blank("unchecked")).await.expect_err("no webhook to ask");
    assert!(
        stderr.contains(&format!("failed calling webhook \"{DATAVOLUME_VALIDATE}\"")),
        "the refusal says which webhook could not be called: {stderr}"
    );
    assert!(!stored(&tc, "unchecked").await);
    let dvs: Api<DataVolume> = Api::namespaced(tc.client.clone(), "default");
    let typed: DataVolume = serde_json::from_value(blank("unchecked")).unwrap();
    match dvs.create(&PostParams::default(), &typed).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 500, "{status:?}");
            assert!(status.message.contains("failed calling webhook"), "{status:?}");
        }
        other => panic!("kube-rs create without a webhook gave {other:?}"),
    }

    // Back up: admitted again.
    scale(&tc, 1).await;
    tc.kubectl(&["-n", NS, "rollout", "status", "deployment/cdi-populator", "--timeout=90s"]).await;
    kubectl_create(&tc, &blank("checked-again")).await.expect("admitted once a replica serves");
    tc.shutdown_and_check_leaks().await;
}
