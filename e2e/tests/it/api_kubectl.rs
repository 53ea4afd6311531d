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

// ---- protobuf bodies (kubectl's typed clients send built-in kinds as protobuf) ----

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// One raw request: (status, content type, body).
async fn raw(
    tc: &TestCluster,
    method: &str,
    path: &str,
    accept: &str,
    body: Option<(&str, Vec<u8>)>,
) -> (u16, String, Vec<u8>) {
    let url = format!("{}{path}", tc.cluster().url());
    // reqwest is built without a default crypto provider: ring, as everywhere here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem_bundle(tc.cluster().ca_pem().as_bytes()).unwrap();
    let client = reqwest::Client::builder().tls_certs_merge(ca).build().unwrap();
    let mut req = client
        .request(method.parse().unwrap(), url)
        .bearer_auth(tc.cluster().authority().admin_token())
        .header("Accept", accept);
    if let Some((ct, b)) = body {
        req = req.header("Content-Type", ct).body(b);
    }
    within(&format!("{method} {path}"), async {
        let resp = req.send().await.unwrap();
        let code = resp.status().as_u16();
        let ct = resp.headers().get("content-type").map(|c| c.to_str().unwrap().to_string()).unwrap_or_default();
        (code, ct, resp.bytes().await.unwrap().to_vec())
    })
    .await
}

fn pb_decode(body: &[u8]) -> serde_json::Value {
    assert!(body.starts_with(b"k8s\0"), "a protobuf body: {}", String::from_utf8_lossy(body));
    cdi_e2e::api::protobuf::decode(body, ("", "")).unwrap()
}

fn pb_encode(v: &serde_json::Value) -> Vec<u8> {
    cdi_e2e::api::protobuf::encode(v).unwrap()
}

#[tokio::test]
async fn kubectl_creates_configmaps_secrets_and_services_in_protobuf() {
    let tc = TestCluster::start().await;
    // kubectl create sends these as protobuf and asks for protobuf back.
    let out = tc.kubectl_output(&["create", "configmap", "x", "--from-literal=a=1", "-v=7"], None).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("Content-Type: application/vnd.kubernetes.protobuf"), "kubectl sent protobuf: {log}");
    let cm = json_of(&tc.kubectl(&["get", "configmap", "x", "-o", "json"]).await);
    assert_eq!(cm["data"], json!({"a": "1"}));
    assert_eq!(cm["metadata"]["generateName"], json!(null), "empty strings on the wire stay absent");

    tc.kubectl(&["create", "secret", "generic", "s", "--from-literal=k=v"]).await;
    let s = json_of(&tc.kubectl(&["get", "secret", "s", "-o", "json"]).await);
    assert_eq!(s["data"], json!({"k": "dg=="}));
    assert_eq!(s["type"], "Opaque");

    // kubectl prints what it decoded from the protobuf answer: the same as the JSON read.
    let created = json_of(
        &tc.kubectl(&["create", "configmap", "y", "--from-literal=b=2", "-o", "json", "--show-managed-fields"]).await,
    );
    let read = json_of(&tc.kubectl(&["get", "configmap", "y", "-o", "json", "--show-managed-fields"]).await);
    assert_eq!(created, read);
    assert!(created["metadata"]["managedFields"][0]["fieldsV1"]["f:data"]["f:b"].is_object(), "{created}");

    tc.kubectl(&["create", "service", "clusterip", "svc", "--tcp=80:8080"]).await;
    let svc = json_of(&tc.kubectl(&["get", "service", "svc", "-o", "json"]).await);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], json!(8080), "IntOrString as an int");
    // A Go pointer set to zero is kept (replicas 0 is not "unset").
    tc.kubectl(&["create", "deployment", "d", "--image=busybox", "--replicas=0"]).await;
    let d = json_of(&tc.kubectl(&["get", "deployment", "d", "-o", "json"]).await);
    assert_eq!(d["spec"]["replicas"], json!(0));
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn protobuf_pods_pvcs_and_events_round_trip_quantities_times_and_int_or_strings() {
    let tc = TestCluster::start().await;
    let resources = json!({"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "1Gi"}});
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pb", "namespace": "default"},
        "spec": {"automountServiceAccountToken": false, "containers": [{"name": "c", "image": "busybox",
            "resources": resources, "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"path": "/", "port": "http"}},
            "readinessProbe": {"tcpSocket": {"port": 8080}}}]}});
    let (code, ct, body) =
        raw(&tc, "POST", "/api/v1/namespaces/default/pods", PROTOBUF, Some((PROTOBUF, pb_encode(&pod)))).await;
    assert_eq!((code, ct.as_str()), (201, PROTOBUF), "{}", String::from_utf8_lossy(&body));
    let created = pb_decode(&body);
    assert_eq!(created["kind"], "Pod");
    assert!(created["metadata"]["creationTimestamp"].as_str().unwrap().ends_with('Z'), "{created}");
    let stored = json_of(&tc.kubectl(&["get", "pod", "pb", "-o", "json"]).await);
    let c = &stored["spec"]["containers"][0];
    assert_eq!(c["resources"], resources);
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], json!("http"));
    assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], json!(8080));
    assert_eq!(stored["spec"]["automountServiceAccountToken"], json!(false));
    assert_eq!(stored["metadata"]["creationTimestamp"], created["metadata"]["creationTimestamp"]);
    // kubectl describe reads the pod through protobuf (Go's decoder of our encoding).
    let described = tc.kubectl(&["describe", "pod", "pb"]).await;
    assert!(described.contains("cpu:") && described.contains("250m"), "{described}");
    assert!(described.contains("http-get") && described.contains(":http/"), "{described}");

    // storageClassName "" (no class) is a Go pointer to "": it must not vanish.
    let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "claim"},
        "spec": {"storageClassName": "", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    let (code, _, body) = raw(
        &tc,
        "POST",
        "/api/v1/namespaces/default/persistentvolumeclaims",
        "application/json",
        Some((PROTOBUF, pb_encode(&pvc))),
    )
    .await;
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let stored = json_of(&tc.kubectl(&["get", "pvc", "claim", "-o", "json"]).await);
    assert_eq!(stored["spec"]["storageClassName"], json!(""));
    assert_eq!(stored["spec"]["resources"]["requests"]["storage"], json!("1Gi"));

    // Time and MicroTime in a request body.
    let event = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "pb.1"},
        "involvedObject": {"kind": "Pod", "name": "pb", "namespace": "default"}, "reason": "Tested",
        "message": "hello", "type": "Normal", "count": 2, "firstTimestamp": "2024-01-02T03:04:05Z",
        "lastTimestamp": "2024-01-02T03:05:06Z", "eventTime": "2024-01-02T03:04:05.123456Z",
        "reportingComponent": "test", "reportingInstance": "i", "action": "Test"});
    let (code, _, body) =
        raw(&tc, "POST", "/api/v1/namespaces/default/events", PROTOBUF, Some((PROTOBUF, pb_encode(&event)))).await;
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    let stored = json_of(&tc.kubectl(&["get", "event", "pb.1", "-o", "json"]).await);
    for f in ["firstTimestamp", "lastTimestamp", "eventTime", "count", "involvedObject", "message"] {
        assert_eq!(stored[f], event[f], "{f}");
    }
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn protobuf_answers_are_negotiated_like_kubernetes() {
    let tc = TestCluster::start().await;
    tc.kubectl(&["create", "configmap", "x", "--from-literal=a=1"]).await;
    let path = "/api/v1/namespaces/default/configmaps/x";
    let (code, ct, body) = raw(&tc, "GET", path, PROTOBUF, None).await;
    assert_eq!((code, ct.as_str()), (200, PROTOBUF));
    let (_, ct, json_body) = raw(&tc, "GET", path, "application/json", None).await;
    assert_eq!(ct, "application/json");
    assert_eq!(pb_decode(&body), serde_json::from_slice::<serde_json::Value>(&json_body).unwrap());
    // kubectl's and client-go's Accept: protobuf first, JSON as the fallback.
    let (_, ct, _) = raw(&tc, "GET", path, "application/vnd.kubernetes.protobuf, */*", None).await;
    assert_eq!(ct, PROTOBUF);
    let (_, ct, _) = raw(&tc, "GET", path, "application/json, application/vnd.kubernetes.protobuf", None).await;
    assert_eq!(ct, "application/json", "the client's first choice wins");

    let list = "/api/v1/namespaces/default/configmaps";
    let (_, ct, body) = raw(&tc, "GET", list, PROTOBUF, None).await;
    assert_eq!(ct, PROTOBUF);
    let (_, _, json_body) = raw(&tc, "GET", list, "application/json", None).await;
    let (pb_list, json_list) = (pb_decode(&body), serde_json::from_slice::<serde_json::Value>(&json_body).unwrap());
    assert_eq!(pb_list["kind"], "ConfigMapList");
    // Protobuf list items carry no type meta (their kind is the list's).
    let mut items = json_list["items"].clone();
    for i in items.as_array_mut().unwrap() {
        let i = i.as_object_mut().unwrap();
        i.remove("kind");
        i.remove("apiVersion");
    }
    assert_eq!(pb_list["items"], items);
    assert_eq!(pb_list["metadata"], json_list["metadata"]);

    // Errors are Status objects in the negotiated encoding.
    let (code, ct, body) = raw(&tc, "GET", "/api/v1/namespaces/default/configmaps/nope", PROTOBUF, None).await;
    assert_eq!((code, ct.as_str()), (404, PROTOBUF));
    let status = pb_decode(&body);
    assert_eq!(
        (status["kind"].as_str(), status["reason"].as_str(), status["code"].as_i64()),
        (Some("Status"), Some("NotFound"), Some(404))
    );

    // Watches stream JSON here: a client that takes JSON too gets it, a protobuf-only one 406.
    let watch = "/api/v1/namespaces/default/configmaps?watch=true&timeoutSeconds=1";
    let (code, ct, _) = raw(&tc, "GET", watch, "application/vnd.kubernetes.protobuf, application/json", None).await;
    assert_eq!((code, ct.as_str()), (200, "application/json"));
    let (code, _, body) = raw(&tc, "GET", watch, PROTOBUF, None).await;
    assert_eq!(code, 406, "{}", String::from_utf8_lossy(&body));

    // A CRD in protobuf (schema unions, renamed fields); its custom resources are JSON only.
    let crd = widget_crd("Namespaced");
    let (code, _, body) = raw(
        &tc,
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        PROTOBUF,
        Some((PROTOBUF, pb_encode(&crd))),
    )
    .await;
    assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(pb_decode(&body)["spec"]["versions"], crd["spec"]["versions"]);
    tc.kubectl(&["wait", "--for=condition=established", "crd/widgets.example.com", "--timeout=20s"]).await;
    let stored = json_of(&tc.kubectl(&["get", "crd", "widgets.example.com", "-o", "json"]).await);
    assert_eq!(stored["spec"]["versions"], crd["spec"]["versions"]);
    let widgets = "/apis/example.com/v1/namespaces/default/widgets";
    let w = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
    let (code, ct, _) = raw(&tc, "GET", widgets, "application/vnd.kubernetes.protobuf, */*", None).await;
    assert_eq!((code, ct.as_str()), (200, "application/json"));
    let (code, _, body) = raw(&tc, "GET", widgets, PROTOBUF, None).await;
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((code, status["reason"].as_str()), (406, Some("NotAcceptable")), "{status}");
    let (code, _, body) =
        raw(&tc, "POST", widgets, "application/json", Some((PROTOBUF, w.to_string().into_bytes()))).await;
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((code, status["reason"].as_str()), (415, Some("UnsupportedMediaType")), "{status}");
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn malformed_protobuf_bodies_are_bad_requests_and_delete_options_are_read() {
    let tc = TestCluster::start().await;
    let path = "/api/v1/namespaces/default/configmaps";
    for (body, says) in [
        (b"k8s\0\x0a\xff\xff".to_vec(), "is not a runtime.Unknown"),
        (b"{\"kind\":\"ConfigMap\"}".to_vec(), "magic prefix"),
        // A valid wrapper (type meta v1 ConfigMap) whose object bytes are cut short.
        ([b"k8s\0\x0a\x0f\x0a\x02v1\x12\x09ConfigMap".as_slice(), b"\x12\x03\x0a\x05a"].concat(), "does not decode"),
    ] {
        let (code, ct, resp) = raw(&tc, "POST", path, "application/json", Some((PROTOBUF, body))).await;
        let status: serde_json::Value = serde_json::from_slice(&resp).unwrap();
        assert_eq!(
            (code, ct.as_str(), status["reason"].as_str()),
            (400, "application/json", Some("BadRequest")),
            "{status}"
        );
        let msg = status["message"].as_str().unwrap();
        assert!(msg.contains(says) && msg.contains("v1 ConfigMap"), "{msg}");
    }
    // The JSON path is unchanged, and nothing was stored.
    let (code, _, _) = raw(&tc, "GET", "/api/v1/namespaces/default/configmaps/cut", "application/json", None).await;
    assert_eq!(code, 404);

    // DeleteOptions in protobuf (client-go's typed Delete) are honoured.
    tc.kubectl(&["create", "configmap", "x", "--from-literal=a=1"]).await;
    let x = "/api/v1/namespaces/default/configmaps/x";
    let opts = |o: serde_json::Value| {
        let mut o = o;
        o["kind"] = json!("DeleteOptions");
        o["apiVersion"] = json!("v1");
        Some((PROTOBUF, pb_encode(&o)))
    };
    let (code, _, body) = raw(&tc, "DELETE", x, PROTOBUF, opts(json!({"preconditions": {"uid": "not-its-uid"}}))).await;
    assert_eq!((code, pb_decode(&body)["reason"].as_str()), (409, Some("Conflict")));
    let (code, _, _) = raw(&tc, "DELETE", x, PROTOBUF, opts(json!({"dryRun": ["All"], "gracePeriodSeconds": 0}))).await;
    assert_eq!(code, 200);
    assert_eq!(raw(&tc, "GET", x, "application/json", None).await.0, 200, "a dry run deletes nothing");
    let (code, _, _) = raw(&tc, "DELETE", x, PROTOBUF, opts(json!({"propagationPolicy": "Background"}))).await;
    assert_eq!(code, 200);
    assert_eq!(raw(&tc, "GET", x, "application/json", None).await.0, 404);
    // A protobuf body to a path that does not exist is still a 404.
    let (code, _, _) = raw(&tc, "POST", "/api/v1/namespaces/default/nothings", PROTOBUF, opts(json!({}))).await;
    assert_eq!(code, 404);
    tc.shutdown_and_check_leaks().await;
}
