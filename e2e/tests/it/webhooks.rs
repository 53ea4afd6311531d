//! Admission webhooks: a webhook server running as a pod of the cluster (Python's
//! `http.server` over TLS, its certificate from a CA the test makes), behind a Service,
//! registered with Validating/MutatingWebhookConfigurations, driven with kubectl.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::{Value, json};

use crate::common::{TestCluster, json_of};

/// The webhook server: `/validate` denies objects labelled `deny=true` (403 and a message),
/// `/slow` answers after 5 s, `/mutate` adds the label `mutated-by=<the requester's user name>` with a JSON patch.
const SERVER: &str = r#"#!/usr/bin/env python3
import base64, http.server, json, os, ssl, sys, time

certs = sys.argv[1]

class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        req = review["request"]
        meta = (req.get("object") or {}).get("metadata") or {}
        labels = meta.get("labels") or {}
        resp = {"uid": req["uid"], "allowed": True}
        if self.path == "/slow":
            time.sleep(5)
        if self.path == "/validate" and labels.get("deny") == "true":
            resp = {"uid": req["uid"], "allowed": False,
                    "status": {"code": 403, "message": "configmaps labelled deny=true are not welcome"}}
        if self.path == "/mutate":
            ops = [] if meta.get("labels") else [{"op": "add", "path": "/metadata/labels", "value": {}}]
            ops.append({"op": "add", "path": "/metadata/labels/mutated-by", "value": req["userInfo"]["username"]})
            resp["patchType"] = "JSONPatch"
            resp["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer((os.environ["POD_IP"], 8443), Hook)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(os.path.join(certs, "tls.crt"), os.path.join(certs, "tls.key"))
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

fn server_binary(dir: &Path) -> PathBuf {
    let path = dir.join("cdi-hook");
    std::fs::write(&path, SERVER).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A fresh CA and a serving certificate it signed for `host`: (CA PEM, cert PEM, key PEM).
fn certificates(host: &str) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "webhook-ca");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![host.to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A cluster whose `default/hook` Service is backed by a ready webhook pod; returns the
/// cluster and the `caBundle` that verifies the pod's certificate.
async fn cluster_with_webhook_server(bin: &Path) -> (TestCluster, String) {
    let binary = server_binary(bin);
    let tc = TestCluster::start_with(|c| c.images.insert("hook", binary.clone())).await;
    let (ca, cert, key) = certificates("hook.default.svc");
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook-tls", "namespace": "default"},
            "type": "kubernetes.io/tls", "data": {"tls.crt": b64(&cert), "tls.key": b64(&key)}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hook", "namespace": "default"},
            "spec": {"selector": {"app": "hook"}, "ports": [{"port": 443, "targetPort": "https"}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hook", "namespace": "default", "labels": {"app": "hook"}},
            "spec": {"containers": [{"name": "hook", "image": "example.org/cdi-hook:1", "args": ["/certs"],
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "ports": [{"name": "https", "containerPort": 8443}],
                "readinessProbe": {"tcpSocket": {"port": "https"}, "periodSeconds": 1},
                "volumeMounts": [{"name": "tls", "mountPath": "/certs"}]}],
                "volumes": [{"name": "tls", "secret": {"secretName": "hook-tls"}}]}},
    ]});
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&objects.to_string())).await;
    tc.kubectl(&["wait", "--for=condition=Ready", "pod/hook", "--timeout=90s"]).await;
    (tc, b64(&ca))
}

/// A webhook configuration with one webhook on ConfigMap creates and updates.
fn configuration(kind: &str, name: &str, path: &str, ca_bundle: &str, extra: Value) -> String {
    let mut hook = json!({"name": name, "sideEffects": "None", "admissionReviewVersions": ["v1"],
        "clientConfig": {"service": {"namespace": "default", "name": "hook", "path": path}, "caBundle": ca_bundle},
        "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["configmaps"]}]});
    for (k, v) in extra.as_object().into_iter().flatten() {
        hook[k] = v.clone();
    }
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name.split('.').next().unwrap()},
        "webhooks": [hook]})
    .to_string()
}

fn configmap(name: &str, labels: Value) -> String {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default", "labels": labels},
        "data": {"k": "v"}})
    .to_string()
}

async fn apply(tc: &TestCluster, yaml: &str, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["apply", "-f", "-"];
    args.extend_from_slice(extra);
    let out = tc.kubectl_output(&args, Some(yaml)).await;
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

async fn exists(tc: &TestCluster, name: &str) -> bool {
    tc.kubectl_output(&["get", "configmap", name], None).await.status.success()
}

#[tokio::test]
async fn a_validating_webhook_denies_what_it_refuses_and_lets_the_rest_be_stored() {
    let bin = tempfile::tempdir().unwrap();
    let (tc, ca) = cluster_with_webhook_server(bin.path()).await;
    let config = configuration("ValidatingWebhookConfiguration", "deny.example.com", "/validate", &ca, json!({}));
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&config)).await;
    let stored = json_of(&tc.kubectl(&["get", "validatingwebhookconfiguration", "deny", "-o", "json"]).await);
    assert_eq!(stored["webhooks"][0]["failurePolicy"], "Fail", "defaulted: {stored}");
    assert_eq!(stored["webhooks"][0]["timeoutSeconds"], 10);
    let table = tc.kubectl(&["get", "validatingwebhookconfigurations"]).await;
    let row: Vec<&str> = table.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert!(table.starts_with("NAME") && table.contains("WEBHOOKS") && row[..2] == ["deny", "1"], "{table}");

    let (ok, err) = apply(&tc, &configmap("welcome", json!({"deny": "false"})), &[]).await;
    assert!(ok, "{err}");
    assert!(exists(&tc, "welcome").await);

    let (ok, err) = apply(&tc, &configmap("refused", json!({"deny": "true"})), &[]).await;
    assert!(!ok);
    assert!(
        err.contains(
            "admission webhook \"deny.example.com\" denied the request: configmaps labelled deny=true are not welcome"
        ),
        "{err}"
    );
    assert!(!exists(&tc, "refused").await, "a denied object is not stored");

    // A dry run is admitted too (the webhook has no side effects), and an update is.
    let (ok, err) = apply(&tc, &configmap("refused", json!({"deny": "true"})), &["--dry-run=server"]).await;
    assert!(!ok && err.contains("denied the request"), "{err}");
    let out = tc.kubectl_output(&["label", "configmap", "welcome", "deny=true", "--overwrite"], None).await;
    assert!(!out.status.success(), "the update is denied");
    let cm = json_of(&tc.kubectl(&["get", "configmap", "welcome", "-o", "json"]).await);
    assert_eq!(cm["metadata"]["labels"]["deny"], "false", "{cm}");

    // The Python client meets the same denial (and the same admission of the rest).
    let script = r#"
from kubernetes import client, config
from kubernetes.client.rest import ApiException
config.load_kube_config()
core = client.CoreV1Api()
def cm(name, deny):
    return {"metadata": {"name": name, "labels": {"deny": deny}}, "data": {"k": "v"}}
try:
    core.create_namespaced_config_map("default", cm("py-refused", "true"))
    print("stored")
except ApiException as e:
    print(e.status, "denied" if "denied the request: configmaps labelled deny=true" in e.body else e.body)
core.create_namespaced_config_map("default", cm("py-welcome", "false"))
print("welcome stored")
"#;
    let out = tc.python(script).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // The webhook answers its denial with code 403, which the API server passes on.
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["403 denied", "welcome stored"], "{stdout}");
    assert!(!exists(&tc, "py-refused").await && exists(&tc, "py-welcome").await);
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn failure_policy_decides_when_the_webhook_cannot_be_called() {
    let bin = tempfile::tempdir().unwrap();
    let (tc, ca) = cluster_with_webhook_server(bin.path()).await;

    // A caBundle that did not sign the server's certificate: the call fails (TLS).
    let (other_ca, _, _) = certificates("elsewhere");
    let untrusted =
        configuration("ValidatingWebhookConfiguration", "deny.example.com", "/validate", &b64(&other_ca), json!({}));
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&untrusted)).await;
    let (ok, err) = apply(&tc, &configmap("a", json!({})), &[]).await;
    assert!(!ok && err.contains("failed calling webhook \"deny.example.com\""), "{err}");

    let trusted = configuration("ValidatingWebhookConfiguration", "deny.example.com", "/validate", &ca, json!({}));
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&trusted)).await;
    let (ok, err) = apply(&tc, &configmap("a", json!({})), &[]).await;
    assert!(ok, "{err}");

    // A webhook slower than its timeout has failed.
    let slow =
        configuration("ValidatingWebhookConfiguration", "slow.example.com", "/slow", &ca, json!({"timeoutSeconds": 1}));
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&slow)).await;
    let started = std::time::Instant::now();
    let (ok, err) = apply(&tc, &configmap("c", json!({})), &[]).await;
    assert!(!ok && err.contains("failed calling webhook \"slow.example.com\"") && err.contains("deadline"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "the call was cut at its timeout");
    tc.kubectl(&["delete", "validatingwebhookconfiguration", "slow"]).await;

    // The webhook's pod goes: Fail refuses with an internal error, Ignore lets writes on.
    tc.kubectl(&["delete", "pod", "hook"]).await;
    let (ok, err) = apply(&tc, &configmap("b", json!({})), &[]).await;
    assert!(!ok, "Fail refuses");
    assert!(err.contains("Internal error occurred: failed calling webhook \"deny.example.com\""), "{err}");
    assert!(!exists(&tc, "b").await);
    let ignore = configuration(
        "ValidatingWebhookConfiguration",
        "deny.example.com",
        "/validate",
        &ca,
        json!({"failurePolicy": "Ignore", "timeoutSeconds": 2}),
    );
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&ignore)).await;
    let (ok, err) = apply(&tc, &configmap("b", json!({"deny": "true"})), &[]).await;
    assert!(ok, "Ignore lets the write on: {err}");
    assert!(exists(&tc, "b").await);
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn a_mutating_webhooks_patch_is_stored_and_seen_by_kubectl() {
    let bin = tempfile::tempdir().unwrap();
    let (tc, ca) = cluster_with_webhook_server(bin.path()).await;
    let config = configuration(
        "MutatingWebhookConfiguration",
        "label.example.com",
        "/mutate",
        &ca,
        json!({"objectSelector": {"matchLabels": {"mutate": "yes"}}}),
    );
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&config)).await;

    let (ok, err) = apply(&tc, &configmap("chosen", json!({"mutate": "yes"})), &[]).await;
    assert!(ok, "{err}");
    let cm = json_of(&tc.kubectl(&["get", "configmap", "chosen", "-o", "json"]).await);
    assert_eq!(cm["metadata"]["labels"]["mutated-by"], "kubernetes-admin", "the webhook saw the requester: {cm}");
    assert_eq!(cm["metadata"]["labels"]["mutate"], "yes");

    // Updates are mutated too: a patch (kubectl label), server-side apply creating and
    // then changing an object.
    tc.kubectl(&["label", "configmap", "chosen", "other=x"]).await;
    let cm = json_of(&tc.kubectl(&["get", "configmap", "chosen", "-o", "json"]).await);
    assert_eq!(
        (&cm["metadata"]["labels"]["other"], &cm["metadata"]["labels"]["mutated-by"]),
        (&json!("x"), &json!("kubernetes-admin"))
    );
    for value in ["one", "two"] {
        let mut applied = json_of(&configmap("applied", json!({"mutate": "yes"})));
        applied["data"]["k"] = json!(value);
        let (ok, err) = apply(&tc, &applied.to_string(), &["--server-side", "--field-manager=test"]).await;
        assert!(ok, "{err}");
        let cm = json_of(&tc.kubectl(&["get", "configmap", "applied", "-o", "json"]).await);
        assert_eq!(
            (&cm["data"]["k"], &cm["metadata"]["labels"]["mutated-by"]),
            (&json!(value), &json!("kubernetes-admin")),
            "{cm}"
        );
    }

    // The object selector leaves other objects alone.
    let (ok, err) = apply(&tc, &configmap("passed-over", json!({"mutate": "no"})), &[]).await;
    assert!(ok, "{err}");
    let cm = json_of(&tc.kubectl(&["get", "configmap", "passed-over", "-o", "json"]).await);
    assert!(cm["metadata"]["labels"].get("mutated-by").is_none(), "{cm}");
    tc.shutdown_and_check_leaks().await;
}
