//! The OpenAPI documents, through what kubectl does with them: `explain` (v3 and v2),
//! CRD schemas coming and going, and client-side apply computing strategic merge patches
//! from the published patch metadata.

use std::path::PathBuf;

use serde_json::Value;

use crate::common::{TestCluster, json_of};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

fn crd_file(plural: &str) -> String {
    repo_root().join(format!("deploy/crds/cdi.kubevirt.io_{plural}.yaml")).display().to_string()
}

/// `explain` wraps descriptions at 80 columns: compare text with whitespace collapsed.
fn flat(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn explain(tc: &TestCluster, args: &[&str]) -> String {
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    tc.kubectl(&all).await
}

#[tokio::test]
async fn kubectl_explain_reads_builtin_schemas_from_openapi_v3_and_v2() {
    let tc = TestCluster::start().await;

    let out = explain(&tc, &["pvc.spec.dataSourceRef"]).await;
    assert!(out.contains("FIELD: dataSourceRef <TypedObjectReference>"), "{out}");
    assert!(
        flat(&out).contains("dataSourceRef specifies the object from which to populate the volume with data"),
        "the field's description: {out}"
    );
    for field in ["apiGroup\t<string>", "kind\t<string> -required-", "name\t<string> -required-", "namespace\t<string>"]
    {
        assert!(out.contains(field), "sub-field {field:?} in {out}");
    }

    // Deep references resolve: Container → EnvVar → EnvVarSource → ConfigMapKeySelector, and
    // SecurityContext → SELinuxOptions.
    let out = explain(&tc, &["pods.spec.containers", "--recursive"]).await;
    let flat_out = flat(&out);
    for path in [
        "env <[]EnvVar> name <string> -required- value <string> valueFrom <EnvVarSource> configMapKeyRef <ConfigMapKeySelector> key <string> -required-",
        "seLinuxOptions <SELinuxOptions> level <string>",
        "ports <[]ContainerPort> containerPort <integer> -required-",
    ] {
        assert!(flat_out.contains(path), "{path:?} in {out}");
    }

    // Kubernetes' extensions ride along: int-or-string and the patch metadata.
    let doc = json_of(&tc.kubectl(&["get", "--raw", "/openapi/v3/apis/apps/v1"]).await);
    let schemas = &doc["components"]["schemas"];
    let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
    assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(containers["x-kubernetes-list-type"], "map");
    assert_eq!(schemas["io.k8s.apimachinery.pkg.util.intstr.IntOrString"]["x-kubernetes-int-or-string"], true);
    assert_eq!(
        schemas["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"],
        serde_json::json!([{"group": "apps", "version": "v1", "kind": "Deployment"}])
    );
    assert!(schemas.get("io.k8s.api.core.v1.PersistentVolumeClaim").is_none(), "only apps/v1's closure: {doc}");

    // OpenAPI v2: kubectl asks for the gnostic protobuf.
    let out = explain(&tc, &["--output=plaintext-openapiv2", "pvc.spec"]).await;
    assert!(out.contains("RESOURCE: spec <Object>"), "{out}");
    assert!(flat(&out).contains("PersistentVolumeClaimSpec describes the common attributes"), "{out}");
    assert!(out.contains("dataSourceRef\t<Object>"), "{out}");
    // … and JSON to a client that takes JSON.
    let v2 = json_of(&tc.kubectl(&["get", "--raw", "/openapi/v2"]).await);
    assert_eq!(v2["swagger"], "2.0");
    let spec = &v2["definitions"]["io.k8s.api.core.v1.PersistentVolumeClaimSpec"];
    assert_eq!(spec["properties"]["dataSourceRef"]["$ref"], "#/definitions/io.k8s.api.core.v1.TypedObjectReference");
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn openapi_v2_answers_406_to_a_client_taking_neither_json_nor_protobuf() {
    let tc = TestCluster::start().await;
    let req = http::Request::get("/openapi/v2").header("accept", "text/html").body(Vec::new()).unwrap();
    let err = tc.client.request_text(req).await.expect_err("406");
    let text = format!("{err:?}");
    assert!(text.contains("406") && text.contains("NotAcceptable"), "{text}");
    tc.shutdown_and_check_leaks().await;
}

fn index_hash(index: &Value, gv: &str) -> Option<String> {
    let url = index["paths"][gv]["serverRelativeURL"].as_str()?;
    Some(url.split("hash=").nth(1)?.to_string())
}

#[tokio::test]
async fn kubectl_explain_follows_crds_as_they_come_and_go() {
    let tc = TestCluster::start().await;
    let gv = "apis/cdi.kubevirt.io/v1beta1";
    let out = tc.kubectl_output(&["explain", "volumeimportsources.spec.source"], None).await;
    assert!(!out.status.success(), "no such resource yet");

    for plural in ["volumeimportsources", "volumeuploadsources"] {
        tc.kubectl(&["apply", "-f", &crd_file(plural)]).await;
    }
    tc.kubectl(&["wait", "--for=condition=established", "crd/volumeimportsources.cdi.kubevirt.io", "--timeout=20s"])
        .await;
    let index = json_of(&tc.kubectl(&["get", "--raw", "/openapi/v3"]).await);
    let hash_both = index_hash(&index, gv).expect("the CRDs' group/version is listed");

    let crd = json_of(&tc.kubectl(&["get", "crd", "volumeimportsources.cdi.kubevirt.io", "-o", "json"]).await);
    let source = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["source"];
    let want = source["description"].as_str().expect("the CRD describes spec.source");
    let out = explain(&tc, &["volumeimportsources.spec.source"]).await;
    assert!(out.contains("KIND:       VolumeImportSource") && out.contains("GROUP:      cdi.kubevirt.io"), "{out}");
    assert!(flat(&out).contains(&flat(want)), "the CRD's description {want:?} in {out}");
    for field in source["properties"].as_object().expect("variants").keys() {
        assert!(out.contains(&format!("  {field}\t<")), "{field} in {out}");
    }
    // metadata is ObjectMeta, as Kubernetes publishes it for every custom resource.
    let out = explain(&tc, &["volumeimportsources.metadata"]).await;
    assert!(out.contains("<ObjectMeta>") && out.contains("ownerReferences\t<[]OwnerReference>"), "{out}");
    let out = explain(&tc, &["--output=plaintext-openapiv2", "volumeimportsources.spec"]).await;
    assert!(out.contains("source\t<Object>"), "v2: {out}");

    tc.kubectl(&["delete", "-f", &crd_file("volumeimportsources")]).await;
    let out = tc.kubectl_output(&["explain", "volumeimportsources.spec.source"], None).await;
    assert!(!out.status.success(), "explain of a deleted CRD: {}", String::from_utf8_lossy(&out.stdout));
    // The group/version's document changed (and with it its hash): the other CRD stays.
    let index = json_of(&tc.kubectl(&["get", "--raw", "/openapi/v3"]).await);
    let hash_one = index_hash(&index, gv).expect("still listed for VolumeUploadSource");
    assert_ne!(hash_one, hash_both);
    let doc = json_of(&tc.kubectl(&["get", "--raw", &format!("/openapi/v3/{gv}")]).await);
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    assert!(schemas.contains_key("io.kubevirt.cdi.v1beta1.VolumeUploadSource"));
    assert!(!schemas.contains_key("io.kubevirt.cdi.v1beta1.VolumeImportSource"));
    explain(&tc, &["volumeuploadsources.spec"]).await;

    tc.kubectl(&["delete", "-f", &crd_file("volumeuploadsources")]).await;
    let index = json_of(&tc.kubectl(&["get", "--raw", "/openapi/v3"]).await);
    assert!(index_hash(&index, gv).is_none(), "no CRD serves {gv} any more: {index}");
    tc.shutdown_and_check_leaks().await;
}

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: main
        image: example/web
        env:
        - name: A
          value: \"1\"
        - name: B
          value: \"2\"
      - name: side
        image: example/side
";

#[tokio::test]
async fn client_side_apply_computes_strategic_patches_from_the_v3_schema() {
    let tc = TestCluster::start().await;
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(DEPLOY)).await;
    // Someone else adds a container; apply of the edited manifest must merge by name, not
    // replace the list (which is what a patch without the schema's merge keys would do).
    tc.kubectl(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"extra","image":"example/extra"}]}}}}"#,
    ])
    .await;
    let edited =
        DEPLOY.replace("        - name: B\n", "        - name: Z\n          value: \"0\"\n        - name: B\n");
    let out = tc.kubectl_output(&["apply", "-v=5", "-f", "-"], Some(&edited)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // kubectl says so when it cannot use the v3 schema for a patch and falls back.
    assert!(!stderr.contains("does not support strategic merge patch"), "{stderr}");
    assert!(!stderr.contains("error calculating patch"), "{stderr}");
    let d = json_of(&tc.kubectl(&["get", "deployment", "web", "-o", "json"]).await);
    let containers = d["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    let names: Vec<&str> = containers.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["main", "side", "extra"], "{d}");
    let env: Vec<&str> =
        containers[0]["env"].as_array().expect("env").iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(env, ["A", "Z", "B"]);
    let out = tc.kubectl_output(&["diff", "-f", "-"], Some(&edited)).await;
    assert_eq!(out.status.code(), Some(0), "no difference left: {}", String::from_utf8_lossy(&out.stdout));

    // The project's own manifests, as a user installs them.
    let root = repo_root();
    let kustomization = root.join("deploy").display().to_string();
    let out = tc.kubectl(&["apply", "-k", &kustomization]).await;
    assert!(out.contains("deployment.apps/cdi-populator created"), "{out}");
    let out = tc.kubectl(&["apply", "-k", &kustomization]).await;
    assert!(out.lines().all(|l| l.ends_with(" unchanged")), "a second apply changes nothing: {out}");
    let out = tc.kubectl_output(&["diff", "-k", &kustomization], None).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    tc.shutdown_and_check_leaks().await;
}
