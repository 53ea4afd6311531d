//! API conformance through the real kubectl binary.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::api_kube::widget_crd;
use crate::common::{TestCluster, json_of, within};

const CM: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: demo
  labels:
    app: demo
data:
  a: \"1\"
";

#[tokio::test]
async fn kubectl_applies_gets_patches_waits_and_deletes() {
    let tc = TestCluster::start().await;
    assert!(tc.kubectl_stdin(&["apply", "-f", "-"], Some(CM)).await.contains("configmap/demo created"));
    assert!(tc.kubectl_stdin(&["apply", "-f", "-"], Some(CM)).await.contains("configmap/demo unchanged"));
    let changed = CM.replace("a: \"1\"", "b: \"2\"");
    assert!(tc.kubectl_stdin(&["apply", "-f", "-"], Some(&changed)).await.contains("configured"));
    let o = json_of(&tc.kubectl(&["get", "configmap", "demo", "-o", "json"]).await);
    assert_eq!(o["data"], json!({"b": "2"}), "client-side apply removed the dropped key");

    tc.kubectl(&["patch", "configmap", "demo", "-p", r#"{"metadata":{"finalizers":["example.com/x"]}}"#]).await;
    tc.kubectl(&["patch", "configmap", "demo", "--type=merge", "-p", r#"{"data":{"c":"3"}}"#]).await;
    tc.kubectl(&["patch", "configmap", "demo", "--type=json", "-p", r#"[{"op":"remove","path":"/data/b"}]"#]).await;
    tc.kubectl(&["wait", "--for=jsonpath={.data.c}=3", "configmap/demo", "--timeout=20s"]).await;
    tc.kubectl(&["label", "configmap", "demo", "stage=two"]).await;
    let o = json_of(&tc.kubectl(&["get", "cm", "-l", "stage=two", "-o", "json"]).await);
    assert_eq!(o["items"][0]["data"], json!({"c": "3"}));

    tc.kubectl(&["delete", "configmap", "demo", "--wait=false"]).await;
    let o = json_of(&tc.kubectl(&["get", "configmap", "demo", "-o", "json"]).await);
    assert!(o["metadata"]["deletionTimestamp"].is_string(), "a finalizer holds the deleted object");
    tc.kubectl(&[
        "patch",
        "configmap",
        "demo",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .await;
    tc.kubectl(&["wait", "--for=delete", "configmap/demo", "--timeout=20s"]).await;
    let out = tc.kubectl_output(&["get", "configmap", "demo"], None).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"), "{}", String::from_utf8_lossy(&out.stderr));
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn kubectl_server_dry_run_and_diff_store_nothing() {
    let tc = TestCluster::start().await;
    let version = || async {
        json_of(&tc.kubectl(&["get", "configmaps", "-A", "-o", "json"]).await)["metadata"]["resourceVersion"].clone()
    };

    let before = version().await;
    let out = tc.kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(CM)).await;
    assert!(out.contains("configmap/demo created (server dry run)"), "{out}");
    let out = tc.kubectl_stdin(&["create", "--dry-run=server", "-o", "json", "-f", "-"], Some(CM)).await;
    assert_eq!(json_of(&out)["data"], json!({"a": "1"}), "a dry run answers the object it would store");
    let missing = tc.kubectl_output(&["get", "configmap", "demo"], None).await;
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFound"), "a dry-run create stored the object");
    assert_eq!(version().await, before, "a dry run moved the resource version");

    tc.kubectl_stdin(&["apply", "-f", "-"], Some(CM)).await;
    let stored = version().await;
    let changed = CM.replace("a: \"1\"", "a: \"2\"");
    let diff = tc.kubectl_output(&["diff", "-f", "-"], Some(&changed)).await;
    let text = String::from_utf8_lossy(&diff.stdout);
    assert_eq!(
        diff.status.code(),
        Some(1),
        "kubectl diff exits 1 when it finds differences: {text}{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    assert!(text.contains("-  a: \"1\"") && text.contains("+  a: \"2\""), "{text}");
    let same = tc.kubectl_output(&["diff", "-f", "-"], Some(CM)).await;
    assert_eq!(same.status.code(), Some(0), "no differences: {}", String::from_utf8_lossy(&same.stdout));

    let out = tc.kubectl(&["delete", "configmap", "demo", "--dry-run=server"]).await;
    assert!(out.contains("deleted (server dry run)"), "{out}");
    let o = json_of(&tc.kubectl(&["get", "configmap", "demo", "-o", "json"]).await);
    assert_eq!(o["data"], json!({"a": "1"}), "the diff changed the stored object");
    assert!(o["metadata"]["deletionTimestamp"].is_null());
    assert_eq!(version().await, stored, "a dry run moved the resource version");

    let bad = tc
        .kubectl_output(
            &["create", "--raw", "/api/v1/namespaces/default/configmaps?dryRun=Some", "-f", "-"],
            Some(&json!({"metadata": {"name": "x"}}).to_string()),
        )
        .await;
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("supported values"), "{err}");
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn kubectl_server_side_apply_reports_conflicts_and_forces_them() {
    let tc = TestCluster::start().await;
    tc.kubectl_stdin(&["apply", "--server-side", "--field-manager=one", "-f", "-"], Some(CM)).await;
    let other = CM.replace("a: \"1\"", "a: \"9\"");
    let out = tc.kubectl_output(&["apply", "--server-side", "--field-manager=two", "-f", "-"], Some(&other)).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("conflict") && err.contains("one"), "{err}");
    tc.kubectl_stdin(&["apply", "--server-side", "--field-manager=two", "--force-conflicts", "-f", "-"], Some(&other))
        .await;
    let o = json_of(&tc.kubectl(&["get", "cm", "demo", "-o", "json", "--show-managed-fields"]).await);
    assert_eq!(o["data"]["a"], "9");
    assert!(
        o["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["manager"] == "two" && m["operation"] == "Apply")
    );
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn kubectl_registers_a_crd_and_manages_its_resources_and_status() {
    let tc = TestCluster::start().await;
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&widget_crd("Namespaced").to_string())).await;
    tc.kubectl(&["wait", "--for=condition=established", "crd/widgets.example.com", "--timeout=20s"]).await;
    let cr = r#"{"apiVersion":"example.com/v1","kind":"Widget","metadata":{"name":"w1"},"spec":{"size":7}}"#;
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(cr)).await;
    tc.kubectl(&[
        "patch",
        "widget",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Ready"}}"#,
    ])
    .await;
    let table = tc.kubectl(&["get", "widgets"]).await;
    let header = table.lines().next().unwrap();
    assert!(header.contains("SIZE") && header.contains("PHASE"), "printer columns: {table}");
    assert!(table.contains("w1") && table.contains('7') && table.contains("Ready"), "{table}");
    let list = json_of(&tc.kubectl(&["get", "wd", "-o", "json"]).await);
    assert_eq!(list["items"][0]["status"]["phase"], "Ready");
    tc.kubectl(&["delete", "widget", "w1"]).await;
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn kubectl_get_watch_streams_changes_as_they_happen() {
    let tc = TestCluster::start().await;
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(tc.kubeconfig())
        .args(["get", "configmaps", "-w", "-o", "name"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let api: Api<ConfigMap> = Api::default_namespaced(tc.client.clone());
    // kubectl prints nothing for an empty list; the first object proves the watch is open
    // only once it arrives, so create objects until one is seen, then one more.
    let o: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "first"}})).unwrap();
    api.create(&PostParams::default(), &o).await.unwrap();
    let line = within("kubectl get -w to print the first object", lines.next_line()).await.unwrap().unwrap();
    assert_eq!(line, "configmap/first");
    let o: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "second"}})).unwrap();
    api.create(&PostParams::default(), &o).await.unwrap();
    let line = within("kubectl get -w to print the watched object", lines.next_line()).await.unwrap().unwrap();
    assert_eq!(line, "configmap/second");
    child.kill().await.ok();
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn kubectl_discovery_lists_builtin_and_aggregated_resources() {
    let tc = TestCluster::start().await;
    let out = tc.kubectl(&["api-resources", "-o", "name"]).await;
    for r in [
        "pods",
        "persistentvolumeclaims",
        "storageclasses.storage.k8s.io",
        "leases.coordination.k8s.io",
        "events.events.k8s.io",
        "csidrivers.storage.k8s.io",
        "customresourcedefinitions.apiextensions.k8s.io",
    ] {
        assert!(out.lines().any(|l| l == r), "{r} missing from {out}");
    }
    let raw = json_of(&tc.kubectl(&["get", "--raw", "/version"]).await);
    assert_eq!(raw["minor"], "33");
    let table = tc.kubectl(&["get", "nodes"]).await;
    assert!(table.contains("node-1") && table.contains("Ready"), "{table}");
    tc.shutdown_and_check_leaks().await;
}
