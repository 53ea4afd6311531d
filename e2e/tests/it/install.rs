//! cdi-rs installed as a user installs it on any cluster, `kubectl apply -k deploy/`, with
//! nothing from the test harness in between: the kubelets run the populator and the movers
//! from their images, the populator uses its service account's in-cluster identity, and the
//! RBAC of `deploy/` is what it may do.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, PostParams};
use kube::runtime::wait::await_condition;
use sha2::Digest as _;

use cdi_e2e::cluster::CLASS_IMMEDIATE;
use cdi_e2e::controllers::kubelet::ProjectImages;
use cdi_e2e::system::{DEPLOY_DIR, binaries_dir};
use cdi_e2e::workload::{ImageServer, Mode, create_http_source, target_pvc, until_bound, volume_data};

use crate::common::{TestCluster, within};

const NS: &str = "cdi-rs";

/// What `kubectl get pods -l app.kubernetes.io/name=<app> -o jsonpath=<path>` prints.
async fn pods_of_app(tc: &TestCluster, app: &str, path: &str) -> String {
    let selector = format!("app.kubernetes.io/name={app}");
    let output = format!("jsonpath={path}");
    tc.kubectl(&["-n", NS, "get", "pods", "-l", &selector, "-o", &output]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_apply_k_deploy_runs_cdi_rs_and_enforces_its_rbac() {
    let binaries = binaries_dir().expect("the workspace is built");
    let tc = TestCluster::start_with(|c| c.images = ProjectImages::from_dir(&binaries)).await;
    tc.kubectl(&["apply", "-k", DEPLOY_DIR]).await;
    for what in ["deployment/cdi-populator", "daemonset/cdi-mover"] {
        let out = tc.kubectl(&["-n", NS, "rollout", "status", what, "--timeout=90s"]).await;
        assert!(out.contains("successfully rolled out"), "{what}: {out}");
    }
    tc.kubectl(&["-n", NS, "wait", "--for=condition=Available", "deployment/cdi-populator", "--timeout=10s"]).await;
    let movers = pods_of_app(&tc, "cdi-mover", "{range .items[*]}{.spec.nodeName}{\" \"}{end}").await;
    let mut nodes: Vec<&str> = movers.split_whitespace().collect();
    nodes.sort();
    assert_eq!(nodes, ["node-1", "node-2"], "a mover on every node");
    let populator = pods_of_app(&tc, "cdi-populator", "{.items[0].metadata.name}").await;
    let leases: Api<Lease> = Api::namespaced(tc.client.clone(), NS);
    let pod = populator.clone();
    let led = await_condition(leases, "cdi-populator", move |l: Option<&Lease>| {
        l.and_then(|l| l.spec.as_ref()?.holder_identity.as_deref()) == Some(pod.as_str())
    });
    within("the populator pod to lead", led).await.unwrap();

    // A claim filled end to end.
    let www = tempfile::tempdir().unwrap();
    let image: Vec<u8> = (0..8u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    std::fs::write(www.path().join("disk.img"), &image).unwrap();
    let server = ImageServer::start(www.path().to_path_buf()).await.unwrap();
    create_http_source(&tc.client, "default", "disk", &server.url("disk.img")).await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(tc.client.clone());
    let create = |name: &str| target_pvc(name, CLASS_IMMEDIATE, Mode::Filesystem, "64Mi", "disk");
    pvcs.create(&PostParams::default(), &create("data")).await.unwrap();
    within("the claim to be populated", until_bound(&tc.client, "default", &["data"], |_| {})).await.unwrap();
    let bound = pvcs.get("data").await.unwrap();
    let file = volume_data(&tc.client, &bound).await.unwrap();
    let held = std::fs::read(&file).unwrap();
    assert_eq!(sha2::Sha256::digest(&held[..image.len()]), sha2::Sha256::digest(&image), "the volume holds the image");

    // Without `create` on pods the populator cannot make its holder pods: a 403, as on a
    // cluster whose RBAC lacks the verb.
    let rules = tc.kubectl(&["get", "clusterrole", "cdi-populator", "-o", "jsonpath={.rules[3].resources}"]).await;
    assert_eq!(rules, r#"["pods"]"#, "rule 3 of the ClusterRole is the pods rule");
    let no_create = r#"[{"op":"replace","path":"/rules/3/verbs","value":["get","list","watch","delete"]}]"#;
    tc.kubectl(&["patch", "clusterrole", "cdi-populator", "--type=json", "-p", no_create]).await;
    pvcs.create(&PostParams::default(), &create("denied")).await.unwrap();
    let log = tc.cluster().container_log_path(NS, &populator, "populator");
    let refused = async {
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("cannot create resource \\\"pods\\\"")) {
                return line.to_string();
            }
            // The log is a file the process appends to: nothing to watch but the file.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let line = within("the populator to be refused the holder pod", refused).await;
    assert!(line.contains("forbidden") && line.contains("system:serviceaccount:cdi-rs:cdi-populator"), "{line}");
    let denied = pvcs.get("denied").await.unwrap();
    assert_ne!(denied.status.and_then(|s| s.phase).as_deref(), Some("Bound"));

    // Restored by applying deploy/ again; a touch of the claim has it reconciled at once.
    tc.kubectl(&["apply", "-k", DEPLOY_DIR]).await;
    tc.kubectl(&["annotate", "pvc", "denied", "retry=now"]).await;
    within("the claim to be populated once the verb is back", until_bound(&tc.client, "default", &["denied"], |_| {}))
        .await
        .unwrap();
    tc.shutdown_and_check_leaks().await;
}
