//! The golden PVC (a PVC imported in place from its `storage.import.*` annotations) and the
//! importer pod's log, end to end: cdi-rs installed from deploy/ on the mini-cluster, real
//! HTTP servers, qemu-img comparing what lands in the claim's own volume.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cdi_e2e::workload::{Mode, target_pvc};
use cdi_populator::api::names::annotations as key;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

use crate::common::within;
use crate::populate::{Env, qemu_same};

/// A PVC with no data source and these import annotations.
fn golden_pvc(name: &str, class: &str, mode: Mode, annotations: serde_json::Value) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": class, "volumeMode": mode.as_str(),
            "resources": {"requests": {"storage": "64Mi"}},
        },
    }))
    .expect("a well-formed PVC")
}

async fn create(env: &Env, pvc: &PersistentVolumeClaim) {
    let api: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    api.create(&PostParams::default(), pvc).await.unwrap();
}

/// Waits until the PVC's `storage.import.status` says `status`; returns its annotations.
async fn wait_status(env: &Env, name: &str, status: &str) -> BTreeMap<String, String> {
    let api: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    let reached = await_condition(api.clone(), name, |p: Option<&PersistentVolumeClaim>| {
        p.and_then(|p| p.metadata.annotations.as_ref()?.get(key::IMPORT_STATUS).cloned()).as_deref() == Some(status)
    });
    if tokio::time::timeout(Duration::from_secs(120), reached).await.is_err() {
        let pvc = api.get(name).await.unwrap();
        panic!(
            "PVC {name} never reached import status {status}: {:?}\nevents: {:?}\npopulator log:\n{}",
            pvc.metadata.annotations,
            env.events(name).await,
            env.system.as_ref().unwrap().populator_log("cdi-populator-1")
        );
    }
    api.get(name).await.unwrap().metadata.annotations.unwrap_or_default()
}

/// Waits until the pod `name` no longer exists (if it ever did).
async fn wait_pod_gone(env: &Env, name: &str) {
    let pods: Api<Pod> = Api::default_namespaced(env.client());
    let gone = await_condition(pods, name, |p: Option<&Pod>| p.is_none());
    within(&format!("pod {name} to be gone"), gone).await.unwrap();
}

fn count(events: &[String], reason: &str) -> usize {
    events.iter().filter(|e| e.starts_with(&format!("{reason}:"))).count()
}

/// `kubectl logs <pod>` against the system's cluster.
async fn kubectl_logs(env: &Env, pod: &str) -> String {
    let kubeconfig = env.system.as_ref().unwrap().cluster.kubeconfig_path();
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["logs", pod])
        .output()
        .await
        .expect("kubectl is installed");
    assert!(out.status.success(), "kubectl logs {pod}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `kubectl logs <pod>` shows `needle`; returns the log. Logs have no watch, so
/// this polls, as `kubectl logs` users do.
async fn wait_log(env: &Env, pod: &str, needle: &str) -> String {
    within(&format!("`kubectl logs {pod}` to show {needle:?}"), async {
        loop {
            let log = kubectl_logs(env, pod).await;
            if log.contains(needle) {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn golden_pvcs_are_imported_in_place_and_their_importer_pods_go() {
    let env = Env::start(16, &[]).await;
    let url = env.server.url("disk.qcow2");
    // WaitForFirstConsumer: the importer pod is the consumer that gets the claim bound.
    create(&env, &golden_pvc("golden", "local", Mode::Filesystem, json!({key::IMPORT_ENDPOINT: url}))).await;
    let block = json!({key::IMPORT_ENDPOINT: url, key::IMPORT_SOURCE: "http"});
    create(&env, &golden_pvc("golden-blk", "local-immediate", Mode::Block, block)).await;

    let ann = wait_status(&env, "golden", "Success").await;
    assert_eq!(ann.get(key::POD_PHASE).map(String::as_str), Some("Succeeded"), "{ann:?}");
    assert_eq!(ann.get(key::RUNNING_CONDITION).map(String::as_str), Some("false"));
    assert_eq!(ann.get(key::RUNNING_CONDITION_REASON).map(String::as_str), Some("Completed"));
    let api: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    let pvc = api.get("golden").await.unwrap();
    assert!(pvc.spec.as_ref().unwrap().data_source_ref.is_none());
    assert!(ann.contains_key(key::SELECTED_NODE), "the importer pod got the claim scheduled: {ann:?}");
    qemu_same(&env.raw, &env.backing(&pvc).await.join("disk.img"), None);
    let events = env.events("golden").await;
    for reason in ["ImportScheduled", "ImportSucceeded"] {
        assert_eq!(count(&events, reason), 1, "{reason}: {events:?}");
    }
    assert!(events.iter().all(|e| !e.starts_with("CreatedPVCPrime")), "no prime for a golden PVC: {events:?}");
    wait_pod_gone(&env, "importer-golden").await;

    wait_status(&env, "golden-blk", "Success").await;
    let blk = api.get("golden-blk").await.unwrap();
    qemu_same(&env.raw, &env.backing(&blk).await, Some(16 << 20));
    wait_pod_gone(&env, "importer-golden-blk").await;
    assert_eq!(env.server.knobs.gets(), 2, "one download per PVC");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_golden_pvc_whose_endpoint_is_not_found_fails_with_a_warning() {
    let env = Env::start(8, &["--retry-base", "1"]).await;
    let ann = json!({key::IMPORT_ENDPOINT: env.server.url("missing.qcow2")});
    create(&env, &golden_pvc("gone", "local-immediate", Mode::Filesystem, ann)).await;
    let ann = wait_status(&env, "gone", "Failed").await;
    assert_eq!(ann.get(key::POD_PHASE).map(String::as_str), Some("Failed"), "{ann:?}");
    assert_eq!(ann.get(key::RUNNING_CONDITION_REASON).map(String::as_str), Some("Error"));
    assert!(ann[key::RUNNING_CONDITION_MESSAGE].contains("404"), "{ann:?}");
    let events = env.events("gone").await;
    assert!(events.iter().any(|e| e.starts_with("ImportFailed") && e.contains("404")), "{events:?}");
    let types = env.event_types("gone").await;
    assert_eq!(types.get("ImportFailed").map(String::as_str), Some("Warning"), "{types:?}");
    wait_pod_gone(&env, "importer-gone").await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_fails_once_without_retries_until_the_annotations_change() {
    const USER: &str = "golden-user";
    const PASSWORD: &str = "golden-pw-71x";
    let env = Env::start(8, &["--retry-base", "1", "--retry-cap", "1"]).await;
    let users = env.dir.path().join("htpasswd");
    std::fs::write(&users, format!("{USER}:{{PLAIN}}{PASSWORD}\n")).unwrap();
    let conf = format!("auth_basic \"images\"; auth_basic_user_file {};", users.display());
    let nginx = crate::peers::Nginx::start(env.dir.path(), &env.dir.path().join("www"), &conf, "");
    let secrets: Api<Secret> = Api::default_namespaced(env.client());
    for (name, password) in [("right", PASSWORD), ("wrong", "not-the-password")] {
        let secret = json!({"metadata": {"name": name}, "stringData": {"accessKeyId": USER, "secretKey": password}});
        secrets.create(&PostParams::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
    }
    let url = nginx.url("http", "disk.qcow2");
    let refused = json!({key::IMPORT_ENDPOINT: url, key::IMPORT_SECRET_NAME: "wrong"});
    create(&env, &golden_pvc("refused", "local-immediate", Mode::Filesystem, refused)).await;
    let ann = wait_status(&env, "refused", "Failed").await;
    assert!(ann[key::RUNNING_CONDITION_MESSAGE].contains("401"), "{ann:?}");
    assert!(!ann.contains_key(key::POD_RESTARTS), "an authentication failure was retried: {ann:?}");
    wait_pod_gone(&env, "importer-refused").await;

    // Something else to await, longer than the retry base (1 s) several times over: a whole
    // import with the right secret. A retry storm on `refused` would show meanwhile.
    let witness = json!({key::IMPORT_ENDPOINT: url, key::IMPORT_SECRET_NAME: "right"});
    create(&env, &golden_pvc("witness", "local-immediate", Mode::Filesystem, witness)).await;
    wait_status(&env, "witness", "Success").await;
    let api: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    let later = api.get("refused").await.unwrap().metadata.annotations.unwrap_or_default();
    assert_eq!(later.get(key::IMPORT_STATUS).map(String::as_str), Some("Failed"));
    assert_eq!(
        later.get("cdi.kubevirt.io/storage.populator.attempt"),
        ann.get("cdi.kubevirt.io/storage.populator.attempt")
    );
    let events = env.events("refused").await;
    assert_eq!(count(&events, "ImportFailed"), 1, "{events:?}");
    assert_eq!(count(&events, "ImportScheduled"), 1, "{events:?}");

    // The admin fixes the annotation: the import runs again, and succeeds.
    let fix = json!({"metadata": {"annotations": {key::IMPORT_SECRET_NAME: "right"}}});
    api.patch("refused", &PatchParams::default(), &Patch::Merge(&fix)).await.unwrap();
    wait_status(&env, "refused", "Success").await;
    let pvc = api.get("refused").await.unwrap();
    qemu_same(&env.raw, &env.backing(&pvc).await.join("disk.img"), None);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_logs_of_the_importer_pod_tell_the_import_without_secrets() {
    let env = Env::start(16, &[]).await;
    // A query string may carry a presigned URL's credentials: never shown.
    let url = format!("{}?token=q-s3cr3t-77", env.server.url("disk.qcow2"));
    env.source("img", &url).await;
    let mut pvc = target_pvc("data", "local-immediate", Mode::Filesystem, "64Mi", "img");
    pvc.metadata.annotations = Some(BTreeMap::from([(key::POD_RETAIN_AFTER_COMPLETION.into(), "true".into())]));
    let api: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    let uid = api.create(&PostParams::default(), &pvc).await.unwrap().metadata.uid.unwrap();
    let bound = env.wait_bound("data").await;
    qemu_same(&env.raw, &env.backing(&bound).await.join("disk.img"), None);

    // Retained after completion: the importer pod, named as CDI names it, and its log.
    let pod = format!("importer-prime-{uid}");
    let log = wait_log(&env, &pod, "Import Complete").await;
    let shown_url = url.split('?').next().unwrap();
    assert!(log.contains(&format!("Importing {shown_url}?…")), "{log}");
    assert!(log.contains("Formats detected: qcow2"), "{log}");
    // A phase line (progress lines come at most every 5 s: this import is quicker).
    assert!(log.contains("Opening the source and detecting its format"), "{log}");
    assert!(!log.contains("q-s3cr3t-77"), "the query string leaked into the log: {log}");
    // The prime is kept too (Lost), as CDI keeps it for debugging.
    let prime = api.get(&format!("prime-{uid}")).await.unwrap();
    assert_eq!(prime.status.and_then(|s| s.phase).as_deref(), Some("Lost"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_golden_pvc_deleted_mid_import_leaves_no_importer_pod_and_unsupported_sources_start_nothing() {
    let env = Env::start(16, &[]).await;
    env.server.knobs.throttle.store(256 << 10, Ordering::SeqCst); // about 17 s
    let slow = json!({key::IMPORT_ENDPOINT: env.server.url("disk.qcow2")});
    create(&env, &golden_pvc("slow", "local-immediate", Mode::Filesystem, slow)).await;
    let vddk = json!({key::IMPORT_ENDPOINT: "https://vcenter.example/sdk", key::IMPORT_SOURCE: "vddk"});
    create(&env, &golden_pvc("vddk", "local-immediate", Mode::Filesystem, vddk)).await;
    env.wait_progress("slow").await;
    let pods: Api<Pod> = Api::default_namespaced(env.client());
    assert!(pods.get_opt("importer-slow").await.unwrap().is_some(), "the import runs through its importer pod");

    let api: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    api.delete("slow", &DeleteParams::default()).await.unwrap();
    let gone = await_condition(api.clone(), "slow", |p: Option<&PersistentVolumeClaim>| p.is_none());
    within("the golden PVC to be deleted (its finalizer released)", gone).await.unwrap();
    wait_pod_gone(&env, "importer-slow").await;
    // The mover's task is cancelled, not left to finish into a deleted volume. It ends
    // asynchronously after the cancel; the mover's log has no watch: polled.
    let system = env.system.as_ref().unwrap();
    let ended = within("the mover to log the task's end", async {
        loop {
            let logs: String = system.all_logs().into_iter().map(|(_, text)| text).collect();
            if logs.contains("task failed") || logs.contains("task succeeded") {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(ended.contains("reason=\"Cancelled\""), "the mover's task was not cancelled: {ended}");

    // Reported on the claim, with a Warning; no importer pod, no status of an import.
    let events = env.wait_event("vddk", "UnsupportedSource").await;
    assert_eq!(count(&events, "ImportScheduled"), 0, "{events:?}");
    let ann = api.get("vddk").await.unwrap().metadata.annotations.unwrap_or_default();
    assert_eq!(ann.get(key::RUNNING_CONDITION_REASON).map(String::as_str), Some("Unsupported"), "{ann:?}");
    assert!(ann[key::RUNNING_CONDITION_MESSAGE].contains("vddk"), "{ann:?}");
    assert!(!ann.contains_key(key::IMPORT_STATUS), "{ann:?}");
    assert!(pods.get_opt("importer-vddk").await.unwrap().is_none());
    env.stop().await;
}
