//! The workload controllers (Deployment → ReplicaSet → Pod, DaemonSet) and the kubelet's
//! probes, driven with kubectl as a user would.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams};
use kube::runtime::wait::await_condition;
use serde_json::{Value, json};

use crate::common::{TestCluster, json_of, shell_script, within};

fn deployment(name: &str, image: &str, replicas: i64) -> String {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]}}}})
    .to_string()
}

async fn pods_of(tc: &TestCluster, selector: &str) -> Vec<Value> {
    let out = tc.kubectl(&["get", "pods", "-l", selector, "-o", "json"]).await;
    let list = json_of(&out);
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

#[tokio::test]
async fn a_deployment_rolls_out_then_rolls_to_a_new_template_and_goes_with_its_pods() {
    let tc = TestCluster::start().await;
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&deployment("web", "registry.example/app:1", 2))).await;
    let status = tc.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    assert!(status.contains("successfully rolled out"), "{status}");
    tc.kubectl(&["wait", "--for=condition=Available", "deployment/web", "--timeout=60s"]).await;
    let rs = json_of(&tc.kubectl(&["get", "replicasets", "-l", "app=web", "-o", "json"]).await);
    assert_eq!(rs["items"].as_array().unwrap().len(), 1, "one ReplicaSet per template: {rs}");
    let first_hash = rs["items"][0]["metadata"]["labels"]["pod-template-hash"].as_str().unwrap().to_string();
    let pods = pods_of(&tc, "app=web").await;
    assert_eq!(pods.len(), 2);
    for p in &pods {
        assert_eq!(p["metadata"]["labels"]["pod-template-hash"], first_hash.as_str());
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(p["status"]["phase"], "Running");
    }

    // A new template: a second ReplicaSet takes over, the first is scaled to zero.
    tc.kubectl(&["set", "image", "deployment/web", "app=registry.example/app:2"]).await;
    let status = tc.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    assert!(status.contains("successfully rolled out"), "{status}");
    let d = json_of(&tc.kubectl(&["get", "deployment", "web", "-o", "json"]).await);
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2");
    assert_eq!(d["status"]["updatedReplicas"], 2);
    assert_eq!(d["status"]["availableReplicas"], 2);
    let conditions = d["status"]["conditions"].as_array().unwrap();
    assert!(conditions.iter().any(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable"), "{d}");
    let rs = json_of(&tc.kubectl(&["get", "replicasets", "-l", "app=web", "-o", "json"]).await);
    let replicas: Vec<(String, i64)> = rs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metadata"]["labels"]["pod-template-hash"].as_str().unwrap().to_string(),
                r["spec"]["replicas"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(replicas.len(), 2, "{replicas:?}");
    assert!(replicas.contains(&(first_hash.clone(), 0)), "the old ReplicaSet is scaled to zero: {replicas:?}");
    let pods = pods_of(&tc, "app=web").await;
    assert_eq!(pods.len(), 2, "old pods are gone");
    assert!(pods.iter().all(|p| p["spec"]["containers"][0]["image"] == "registry.example/app:2"));

    // Scaling follows spec.replicas.
    tc.kubectl(&["patch", "deployment", "web", "-p", r#"{"spec":{"replicas":3}}"#]).await;
    tc.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    assert_eq!(pods_of(&tc, "app=web").await.len(), 3);

    // Deleting the Deployment takes its ReplicaSets and pods with it (in the background).
    tc.kubectl(&["delete", "deployment", "web"]).await;
    tc.kubectl(&["wait", "--for=delete", "pod", "-l", "app=web", "--timeout=60s"]).await;
    tc.kubectl(&["wait", "--for=delete", "replicaset", "-l", "app=web", "--timeout=60s"]).await;
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn a_daemonset_runs_one_pod_per_fitting_node_and_rolls_node_by_node() {
    let tc = TestCluster::start().await;
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "agent", "image": "registry.example/agent:1"}]}}}});
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&ds.to_string())).await;
    let status = tc.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=60s"]).await;
    assert!(status.contains("successfully rolled out"), "{status}");
    let nodes = |pods: &[Value]| {
        let mut n: Vec<String> =
            pods.iter().map(|p| p["spec"]["nodeName"].as_str().unwrap_or_default().to_string()).collect();
        n.sort();
        n
    };
    assert_eq!(nodes(&pods_of(&tc, "app=agent").await), ["node-1", "node-2"]);

    tc.kubectl(&["set", "image", "daemonset/agent", "agent=registry.example/agent:2"]).await;
    let status = tc.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=60s"]).await;
    assert!(status.contains("successfully rolled out"), "{status}");
    let pods = pods_of(&tc, "app=agent").await;
    assert_eq!(nodes(&pods), ["node-1", "node-2"]);
    assert!(pods.iter().all(|p| p["spec"]["containers"][0]["image"] == "registry.example/agent:2"), "{pods:?}");

    // A node selector only node-1 matches: the pod on node-2 goes.
    let on_node_2 = pods.iter().find(|p| p["spec"]["nodeName"] == "node-2").unwrap();
    let on_node_2 = format!("pod/{}", on_node_2["metadata"]["name"].as_str().unwrap());
    let only_node_1 = r#"{"spec":{"template":{"spec":{"nodeSelector":{"kubernetes.io/hostname":"node-1"}}}}}"#;
    tc.kubectl(&["patch", "daemonset", "agent", "-p", only_node_1]).await;
    tc.kubectl(&["wait", "--for=delete", &on_node_2, "--timeout=60s"]).await;
    tc.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=60s"]).await;
    let d = json_of(&tc.kubectl(&["get", "daemonset", "agent", "-o", "json"]).await);
    assert_eq!(d["status"]["desiredNumberScheduled"], 1, "{d}");
    assert_eq!(nodes(&pods_of(&tc, "app=agent").await), ["node-1"]);
    tc.shutdown_and_check_leaks().await;
}

fn script(dir: &Path, body: &str) -> PathBuf {
    shell_script(dir, "cdi-probed", body)
}

#[tokio::test]
async fn probes_decide_readiness_and_a_failing_liveness_probe_restarts_the_container() {
    let bin = tempfile::tempdir().unwrap();
    // Serves its working directory (an emptyDir) over HTTP on the pod's address; is alive
    // only from its second start on.
    let binary = script(
        bin.path(),
        r#"cd "$1" || exit 1
echo start >> starts
[ "$(wc -l < starts)" -gt 1 ] && touch alive
exec python3 -m http.server 8080 --bind "$POD_IP""#,
    );
    let tc = TestCluster::start_with(|c| c.images.insert("probed", binary.clone())).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "example.org/cdi-probed:1",
            "args": ["/work"],
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "ports": [{"name": "http", "containerPort": 8080}],
            "volumeMounts": [{"name": "work", "mountPath": "/work"}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
            "livenessProbe": {"exec": {"command": ["cat", "/work/alive"]}, "periodSeconds": 1, "failureThreshold": 2}}],
            "volumes": [{"name": "work", "emptyDir": {}}]}});
    tc.kubectl_stdin(&["apply", "-f", "-"], Some(&pod.to_string())).await;
    let pods: Api<Pod> = Api::default_namespaced(tc.client.clone());

    // Not alive at first: restarted once, then it stays.
    let restarted = await_condition(pods.clone(), "web", |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref()?.container_statuses.as_ref()?.first().map(|c| c.restart_count)) == Some(1)
    });
    within("the liveness probe to restart the container", restarted).await.unwrap();
    let events: Api<Event> = Api::default_namespaced(tc.client.clone());
    let unhealthy = events.list(&ListParams::default()).await.unwrap();
    assert!(unhealthy.items.iter().any(|e| e.reason.as_deref() == Some("Unhealthy")), "an Unhealthy event is recorded");

    // Ready only while /ready answers 200.
    let uid = pods.get("web").await.unwrap().metadata.uid.unwrap();
    let work = tc.cluster().kubelet_root("node-1").join(format!("pods/{uid}/volumes/kubernetes.io~empty-dir/work"));
    let ready_is = |want: bool| {
        await_condition(pods.clone(), "web", move |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref()?.container_statuses.as_ref()?.first().map(|c| c.ready)) == Some(want)
        })
    };
    let status = pods.get("web").await.unwrap().status.unwrap();
    assert!(!status.container_statuses.unwrap()[0].ready, "no /ready yet, so not ready");
    std::fs::write(work.join("ready"), "ok").unwrap();
    within("the pod to get ready", ready_is(true)).await.unwrap();
    std::fs::remove_file(work.join("ready")).unwrap();
    within("the pod to be unready again", ready_is(false)).await.unwrap();
    let restarts = pods.get("web").await.unwrap().status.unwrap().container_statuses.unwrap()[0].restart_count;
    assert_eq!(restarts, 1, "a healthy container is not restarted again");
    tc.shutdown_and_check_leaks().await;
}

#[tokio::test]
async fn the_python_client_watches_a_deployment_roll_out() {
    let tc = TestCluster::start().await;
    // Creates a Deployment, then follows its watch until every replica is updated and
    // available, as a client-go or Python operator waiting on a rollout would.
    let script = r#"
from kubernetes import client, config, watch
config.load_kube_config()
apps = client.AppsV1Api()
body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "py"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "py"}},
                 "template": {"metadata": {"labels": {"app": "py"}},
                              "spec": {"containers": [{"name": "c", "image": "registry.example/py:1"}]}}}}
created = apps.create_namespaced_deployment("default", body)
seen = []
# From the creation on: a rollout finished before the watch started is still seen step by step.
for event in watch.Watch().stream(apps.list_namespaced_deployment, "default", field_selector="metadata.name=py",
                                  resource_version=created.metadata.resource_version, timeout_seconds=60):
    s = event["object"].status
    seen.append((event["type"], s.available_replicas))
    if s.updated_replicas == 2 and s.available_replicas == 2 and s.observed_generation == event["object"].metadata.generation:
        conditions = {c.type: c.status for c in s.conditions}
        print("rolled-out", conditions.get("Available"), len(seen))
        break
else:
    raise SystemExit("watch ended before the rollout: %r" % seen)
"#;
    let out = tc.python(script).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(fields[..2], ["rolled-out", "True"], "{stdout}");
    assert!(fields[2].parse::<u32>().unwrap() > 1, "the watch saw the rollout progress: {stdout}");
    tc.shutdown_and_check_leaks().await;
}
