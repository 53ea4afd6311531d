//! Services: EndpointSlices that follow pod readiness, the proxy stand-in on ClusterIPs and
//! node ports, and Service names in pods' `/etc/hosts`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{TestCluster, json_of, within};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(format!("cdi-{name}"));
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Waits until the slices of Service `svc` have an endpoint whose `ready` is `ready`, and
/// returns that slice.
async fn slice_with_ready(tc: &TestCluster, svc: &str, ready: bool) -> EndpointSlice {
    let api: Api<EndpointSlice> = Api::default_namespaced(tc.client.clone());
    let config = watcher::Config::default().labels(&format!("kubernetes.io/service-name={svc}"));
    let mut stream = watcher(api, config).applied_objects().boxed();
    let what = format!("an endpoint of {svc} with ready={ready}");
    within(&what, async {
        loop {
            let s = stream.next().await.expect("the watch goes on").expect("watch event");
            if s.endpoints.iter().any(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(ready)) {
                return s;
            }
        }
    })
    .await
}

/// `GET /` over plain HTTP/1.0 from this process, as a user on the host would.
async fn http_get(addr: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connecting {addr}: {e}"));
    conn.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn services_reach_ready_pods_by_cluster_ip_name_and_node_port() {
    let bin = tempfile::tempdir().unwrap();
    // Serves its emptyDir over HTTP on the pod's address; ready while /ready exists.
    let web = script(
        bin.path(),
        "web",
        r#"cd "$1" || exit 1
echo "hello from $POD_NAME" > index.html
exec python3 -m http.server 8080 --bind "$POD_IP""#,
    );
    // Fetches each URL (retrying until the Service answers) and prints what it got.
    let fetch = script(
        bin.path(),
        "fetch",
        r#"for url in "$@"; do
  i=0
  until body=$(curl -sf --noproxy '*' --max-time 3 "$url"); do
    i=$((i+1)); [ $i -gt 100 ] && { echo "$url failed"; exit 1; }; sleep 0.3
  done
  echo "$url => $body"
done"#,
    );
    let tc = TestCluster::start_with(|c| {
        c.images.insert("web", web.clone());
        c.images.insert("fetch", fetch.clone());
    })
    .await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "labels": {"app": "web"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "example.org/cdi-web:1",
            "args": ["/work"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "ports": [{"name": "http", "containerPort": 8080}],
            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1}}],
            "volumes": [{"name": "work", "emptyDir": {}}]}});
    let services = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-np}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 8081, targetPort: 8080}]
"#;
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(services)).await;
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&pod.to_string())).await;

    // The slice lists the pod, not ready yet, with the named targetPort resolved.
    let slice = slice_with_ready(&tc, "web", false).await;
    let slice_name = slice.metadata.name.clone().unwrap();
    assert!(slice_name.starts_with("web-"), "{slice_name}");
    assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(8080), "{slice:?}");
    let out = tc.kubectl(&["get", "endpointslices", "-l", "kubernetes.io/service-name=web"]).await;
    assert!(out.contains(&slice_name) && out.contains("8080"), "{out}");

    // Ready follows the pod's readiness both ways.
    let uid = json_of(&tc.kubectl(&["get", "pod", "web-1", "-o", "json"]).await)["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let work = tc.cluster().kubelet_root("node-1").join(format!("pods/{uid}/volumes/kubernetes.io~empty-dir/work"));
    std::fs::write(work.join("ready"), "ok").unwrap();
    slice_with_ready(&tc, "web", true).await;
    std::fs::remove_file(work.join("ready")).unwrap();
    slice_with_ready(&tc, "web", false).await;
    std::fs::write(work.join("ready"), "ok").unwrap();
    slice_with_ready(&tc, "web-np", true).await;

    // ClusterIP from this cluster's loopback block, shown by kubectl with the node port.
    let svc = json_of(&tc.kubectl(&["get", "svc", "web", "-o", "json"]).await);
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(cluster_ip.starts_with("127."), "{cluster_ip}");
    let np = json_of(&tc.kubectl(&["get", "svc", "web-np", "-o", "json"]).await);
    let node_port = np["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&node_port), "{np}");
    let table = tc.kubectl(&["get", "svc", "web-np"]).await;
    assert!(table.contains(&format!("8081:{node_port}/TCP")) && table.contains("NodePort"), "{table}");

    // A pod reaches the Service by ClusterIP and by each of its names.
    let urls = [
        format!("http://{cluster_ip}:80/"),
        "http://web/".to_string(),
        "http://web.default/".to_string(),
        "http://web.default.svc:80/".to_string(),
        "http://web.default.svc.cluster.local/".to_string(),
    ];
    let client = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {"restartPolicy": "Never", "nodeName": "node-2",
            "containers": [{"name": "fetch", "image": "example.org/cdi-fetch:1", "args": urls}]}});
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&client.to_string())).await;
    tc.kubectl(&["wait", "pod/client", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=60s"]).await;
    let logs = tc.kubectl(&["logs", "client"]).await;
    for url in &urls {
        assert!(logs.contains(&format!("{url} => hello from web-1")), "{url} not reached: {logs}");
    }

    // A user on the host reaches the NodePort Service.
    let got = within("the node port", http_get(&format!("127.0.0.1:{node_port}"))).await;
    assert!(got.starts_with("HTTP/1.0 200") && got.contains("hello from web-1"), "{got}");

    // A deleted Service stops listening and its slices go with it.
    tc.kubectl(&["delete", "svc", "web-np"]).await;
    tc.kubectl(&["wait", "--for=delete", "endpointslices", "-l", "kubernetes.io/service-name=web-np", "--timeout=30s"])
        .await;
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn bad_node_ports_are_refused_like_kubernetes_does() {
    let tc = TestCluster::start().await;
    let api: Api<Service> = Api::default_namespaced(tc.client.clone());
    let svc = |name: &str, port: u32| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": port}]}}))
        .unwrap()
    };
    let refused = |r: Result<Service, kube::Error>| match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("not refused: {other:?}"),
    };
    let (code, msg) = refused(api.create(&PostParams::default(), &svc("low", 80)).await);
    assert_eq!(code, 422);
    assert!(
        msg.contains("spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range"),
        "{msg}"
    );
    api.create(&PostParams::default(), &svc("a", 31234)).await.unwrap();
    let (code, msg) = refused(api.create(&PostParams::default(), &svc("b", 31234)).await);
    assert_eq!(code, 422);
    assert!(msg.contains("provided port is already allocated"), "{msg}");
    let ip = api.get("a").await.unwrap().spec.unwrap().cluster_ip.unwrap();
    let table = tc.kubectl(&["get", "svc", "a"]).await;
    assert!(table.contains(&ip) && table.contains("80:31234/TCP"), "{table}");
    tc.shutdown_and_check_leaks().await;
}
