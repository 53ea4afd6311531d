//! Services: EndpointSlices that follow pod readiness, the proxy stand-in on ClusterIPs and
//! node ports, and Service names in pods' `/etc/hosts`.

use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{TestCluster, json_of, shell_script, within};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    shell_script(dir, &format!("cdi-{name}"), body)
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
    // Node IPs and ClusterIPs are rewritten in the kernel, as kube-proxy does, with nftables.
    crate::peers::ensure_tool("nft", "nftables");
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
    // And on a node's address, as kube-proxy opens a node port on every node.
    let node = json_of(&tc.kubectl(&["get", "node", "node-2", "-o", "json"]).await);
    let node_ip = node["status"]["addresses"][0]["address"].as_str().unwrap().to_string();
    let got = within("the node port on a node IP", http_get(&format!("{node_ip}:{node_port}"))).await;
    assert!(got.starts_with("HTTP/1.0 200") && got.contains("hello from web-1"), "{node_ip}: {got}");
    // That one through the kernel's rewriting (127.0.0.1, shared by every cluster on the
    // host, through this process's relay, reached above).
    let table = format!("cdi_e2e_block_{}", tc.cluster().addresses().index());
    let nft_table = || std::process::Command::new("nft").args(["list", "table", "ip", &table]).output().unwrap();
    let rules = String::from_utf8(nft_table().stdout).unwrap();
    assert!(rules.contains(&format!("ip daddr {node_ip} tcp dport {node_port} dnat to ")), "{rules}");
    assert!(rules.contains(&format!("ip daddr {cluster_ip} tcp dport 80 dnat to ")), "{rules}");

    // A deleted Service stops listening and its slices go with it.
    tc.kubectl(&["delete", "svc", "web-np"]).await;
    tc.kubectl(&["wait", "--for=delete", "endpointslices", "-l", "kubernetes.io/service-name=web-np", "--timeout=30s"])
        .await;
    tc.shutdown_and_check_leaks().await;
    assert!(!nft_table().status.success(), "the cluster's table outlived it");
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

/// An extension API server: HTTPS on the pod's address with a serving certificate for
/// `demo-api.default.svc`, requiring a client certificate of the front-proxy CA; it serves
/// its discovery document and echoes who the API server says the caller is.
const EXTENSION_SERVER: &str = r#"
import http.server, json, os, ssl, sys
cert, key, front_proxy_ca = sys.argv[1:4]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        gv = "/apis/demo.example.com/v1alpha1"
        if self.path.split("?")[0].rstrip("/") == gv:
            body = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "demo.example.com/v1alpha1",
                    "resources": [{"name": "greetings", "singularName": "greeting", "namespaced": True,
                                   "kind": "Greeting", "verbs": ["get", "list"]}]}
        else:
            subject = dict(x[0] for x in self.connection.getpeercert()["subject"])
            body = {"path": self.path, "user": self.headers.get("X-Remote-User"),
                    "groups": self.headers.get_all("X-Remote-Group") or [],
                    "extra": {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-remote-extra-")},
                    "authorization": self.headers.get("Authorization"), "client": subject.get("commonName")}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(front_proxy_ca)
ctx.verify_mode = ssl.CERT_REQUIRED
srv = http.server.ThreadingHTTPServer((os.environ["POD_IP"], 8443), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

#[tokio::test]
async fn an_apiservice_proxies_its_group_with_the_callers_identity_and_joins_discovery() {
    let bin = tempfile::tempdir().unwrap();
    std::fs::write(bin.path().join("server.py"), EXTENSION_SERVER).unwrap();
    let server = script(bin.path(), "demo-api", r#"exec python3 "$(dirname "$0")/server.py" "$@""#);
    // The backend's own CA and serving certificate (what `caBundle` carries).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["demo-api.default.svc".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(bin.path().join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(bin.path().join("tls.key"), key.serialize_pem()).unwrap();
    let tc = TestCluster::start_with(|c| c.images.insert("demo-api", server.clone())).await;

    // The front-proxy CA, as an extension API server finds it.
    let cm = json_of(
        &tc.kubectl(&["get", "cm", "-n", "kube-system", "extension-apiserver-authentication", "-o", "json"]).await,
    );
    assert_eq!(cm["data"]["requestheader-allowed-names"], r#"["front-proxy-client"]"#, "{cm}");
    assert_eq!(cm["data"]["requestheader-username-headers"], r#"["X-Remote-User"]"#, "{cm}");
    let front_proxy_ca = bin.path().join("front-proxy-ca.crt");
    std::fs::write(&front_proxy_ca, cm["data"]["requestheader-client-ca-file"].as_str().unwrap()).unwrap();

    let args = [bin.path().join("tls.crt"), bin.path().join("tls.key"), front_proxy_ca];
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "demo-api", "labels": {"app": "demo-api"}},
         "spec": {"containers": [{"name": "api", "image": "example.org/cdi-demo-api:1", "args": args,
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [{"name": "https", "containerPort": 8443}],
            "readinessProbe": {"tcpSocket": {"port": "https"}, "periodSeconds": 1}}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "demo-api"},
         "spec": {"selector": {"app": "demo-api"}, "ports": [{"port": 443, "targetPort": "https"}]}},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1alpha1.demo.example.com"},
         "spec": {"group": "demo.example.com", "version": "v1alpha1", "groupPriorityMinimum": 1000, "versionPriority": 15,
            "service": {"namespace": "default", "name": "demo-api", "port": 443},
            "caBundle": cdi_e2e::api::util::base64(ca.pem().as_bytes())}},
    ]});
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&objects.to_string())).await;
    tc.kubectl(&["wait", "apiservice/v1alpha1.demo.example.com", "--for=condition=Available", "--timeout=60s"]).await;

    // Through the API server, with the caller's identity and the front-proxy certificate.
    let got = json_of(
        &tc.kubectl(&["get", "--raw", "/apis/demo.example.com/v1alpha1/namespaces/default/greetings/hi"]).await,
    );
    assert_eq!(got["user"], "kubernetes-admin", "{got}");
    assert!(got["groups"].as_array().unwrap().iter().any(|g| g == "system:masters"), "{got}");
    assert_eq!(got["client"], "front-proxy-client", "{got}");
    assert!(got["authorization"].is_null(), "the caller's token must not reach the backend: {got}");

    // Discovery lists the group and its resources.
    let apis = json_of(&tc.kubectl(&["get", "--raw", "/apis"]).await);
    assert!(apis["groups"].as_array().unwrap().iter().any(|g| g["name"] == "demo.example.com"), "{apis}");
    let group = json_of(&tc.kubectl(&["get", "--raw", "/apis/demo.example.com"]).await);
    assert_eq!(group["preferredVersion"]["groupVersion"], "demo.example.com/v1alpha1", "{group}");
    let resources = tc.kubectl(&["api-resources", "--api-group=demo.example.com"]).await;
    assert!(resources.contains("greetings") && resources.contains("Greeting"), "{resources}");

    // RBAC applies at the aggregator: alice only once granted the group.
    let as_alice = ["get", "--raw", "/apis/demo.example.com/v1alpha1/namespaces/default/greetings/hi", "--as=alice"];
    let out = tc.kubectl_output(&as_alice, None).await;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Forbidden"), "{out:?}");
    tc.kubectl(&["create", "role", "greeter", "--verb=get", "--resource=greetings.demo.example.com"]).await;
    tc.kubectl(&["create", "rolebinding", "greeter", "--role=greeter", "--user=alice"]).await;
    let got = json_of(&tc.kubectl(&as_alice).await);
    assert_eq!(got["user"], "alice", "{got}");

    // A service account's token carries extra fields; they travel as X-Remote-Extra-*.
    tc.kubectl(&["create", "rolebinding", "greeter-sa", "--role=greeter", "--serviceaccount=default:default"]).await;
    let token = tc.kubectl(&["create", "token", "default"]).await;
    let as_sa =
        ["get", "--raw", "/apis/demo.example.com/v1alpha1/namespaces/default/greetings/hi", "--token", token.trim()];
    let got = json_of(&tc.kubectl(&as_sa).await);
    assert_eq!(got["user"], "system:serviceaccount:default:default", "{got}");
    let credential = &got["extra"]["x-remote-extra-authentication.kubernetes.io%2fcredential-id"];
    assert!(credential.as_str().is_some_and(|c| c.starts_with("JTI=")), "{got}");

    // A backend that goes away makes the APIService unavailable and requests 503.
    tc.kubectl(&["delete", "pod", "demo-api", "--wait=false"]).await;
    tc.kubectl(&["wait", "apiservice/v1alpha1.demo.example.com", "--for=condition=Available=False", "--timeout=60s"])
        .await;
    let out = tc
        .kubectl_output(&["get", "--raw", "/apis/demo.example.com/v1alpha1/namespaces/default/greetings/hi"], None)
        .await;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("ServiceUnavailable"), "{out:?}");
    tc.shutdown_and_check_leaks().await;
}
