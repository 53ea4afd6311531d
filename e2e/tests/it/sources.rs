//! Registry, S3 and GCS sources end to end, cdi-rs installed from deploy/: real peers on
//! loopback (Debian's docker-registry with TLS and htpasswd, moto, a GCS emulator), one
//! DataVolume per source, the golden PVC's registry form, the content checked with qemu-img.
//!
//! The node movers reach the peers on 127.0.0.1 (pods share the machine's network here).
//! The GCS emulator is the movers' `STORAGE_EMULATOR_HOST`, set on the DaemonSet with
//! `kubectl set env` as an admin would: the populator leaves a GCS source's endpoint to
//! the mover.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cdi_e2e::system::NAMESPACE;
use cdi_populator::api::names::annotations as key;
use cdi_populator::api::{DataVolume, DataVolumePhase};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use kube::api::{Api, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

use crate::peers_gcs::GcsEmulator;
use crate::peers_registry::Registry;
use crate::peers_s3::Moto;
use crate::populate::{Env, qemu_same};

/// An import of a few MiB, on 2 busy cores.
const IMPORT_WAIT: Duration = Duration::from_secs(150);

/// kubectl against the system's cluster; insists on success, returns stdout.
async fn kubectl(env: &Env, args: &[&str]) -> String {
    let kubeconfig = env.system.as_ref().unwrap().cluster.kubeconfig_path();
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(&kubeconfig).args(args).kill_on_drop(true);
    let out = crate::common::within(&format!("kubectl {}", args.join(" ")), cmd.output()).await.expect("kubectl runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "kubectl {}: {stdout}{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    stdout
}

async fn secret(env: &Env, name: &str, pairs: &[(&str, &str)]) {
    let data: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
    Api::<Secret>::default_namespaced(env.client()).create(&PostParams::default(), &secret).await.unwrap();
}

async fn ca_config_map(env: &Env, name: &str, pem: &Path) {
    let pem = std::fs::read_to_string(pem).unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}, "data": {"ca.pem": pem}})).unwrap();
    Api::<ConfigMap>::default_namespaced(env.client()).create(&PostParams::default(), &cm).await.unwrap();
}

/// A DataVolume of 64Mi on the Immediate class, importing from `source`.
async fn data_volume(env: &Env, name: &str, mode: &str, source: serde_json::Value) {
    let dv: DataVolume = serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": name},
        "spec": {"source": source, "storage": {
            "storageClassName": "local-immediate", "volumeMode": mode,
            "resources": {"requests": {"storage": "64Mi"}}}},
    }))
    .unwrap();
    Api::<DataVolume>::default_namespaced(env.client()).create(&PostParams::default(), &dv).await.unwrap();
}

/// Waits until DataVolume `name` has Succeeded; on timeout or failure, panics with what it
/// and its PVC show.
async fn wait_succeeded(env: &Env, name: &str) {
    let api: Api<DataVolume> = Api::default_namespaced(env.client());
    let ended = await_condition(api.clone(), name, |dv: Option<&DataVolume>| {
        let phase = dv.and_then(|d| d.status.as_ref()?.phase.clone());
        matches!(phase, Some(DataVolumePhase::Succeeded | DataVolumePhase::Failed))
    });
    let timed_out = tokio::time::timeout(IMPORT_WAIT, ended).await.is_err();
    let dv = api.get(name).await.unwrap();
    let phase = dv.status.as_ref().and_then(|s| s.phase.clone());
    if timed_out || phase != Some(DataVolumePhase::Succeeded) {
        let pvc = Api::<PersistentVolumeClaim>::default_namespaced(env.client()).get_opt(name).await.unwrap();
        panic!(
            "DataVolume {name} did not succeed (timed out: {timed_out}): {:?}\nPVC annotations: {:?}\nevents: {:?}\n\
             populator log:\n{}",
            dv.status,
            pvc.and_then(|p| p.metadata.annotations),
            env.events(name).await,
            env.system.as_ref().unwrap().populator_log("cdi-populator-1")
        );
    }
}

/// The DataVolume's volume holds the image (`raw`): `disk.img` of a Filesystem volume, the
/// device's first bytes of a Block one.
pub(crate) async fn assert_holds(env: &Env, name: &str, raw: &Path) {
    let pvc = env.wait_bound(name).await;
    let backing = env.backing(&pvc).await;
    if pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block") {
        qemu_same(raw, &backing, Some(std::fs::metadata(raw).unwrap().len()));
    } else {
        qemu_same(raw, &backing.join("disk.img"), None);
    }
}

/// Sets `STORAGE_EMULATOR_HOST` on the mover DaemonSet and waits for the movers to run with it.
async fn movers_use_gcs_emulator(env: &Env, endpoint: &str) {
    let daemonset = "daemonset/cdi-mover";
    kubectl(env, &["set", "env", "-n", NAMESPACE, daemonset, &format!("STORAGE_EMULATOR_HOST={endpoint}")]).await;
    let status = kubectl(env, &["rollout", "status", "-n", NAMESPACE, daemonset, "--timeout=90s"]).await;
    assert!(status.contains("successfully rolled out"), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_data_volumes_and_a_golden_pvc_succeed_and_hold_the_image() {
    let env = Env::start(16, &[]).await;
    let dir = env.dir.path();
    let registry = Registry::start(dir);
    // A containerDisk of the qcow2, pulled with the registry's user and its CA; the same
    // registry listed in CDIConfig insecureRegistries, for a pull without the CA.
    let image = registry.push_disk(dir, "disks/test:1", &env.qcow2);
    secret(&env, "registry-creds", &[("accessKeyId", &registry.user), ("secretKey", &registry.password)]).await;
    ca_config_map(&env, "registry-ca", &registry.ca_pem_path).await;
    let insecure = json!({"spec": {"insecureRegistries": [registry.host()]}});
    kubectl(&env, &["patch", "cdiconfig", "config", "--type", "merge", "-p", &insecure.to_string()]).await;

    let source = |extra: serde_json::Value| {
        let mut r = json!({"url": image, "secretRef": "registry-creds"});
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"registry": r})
    };
    data_volume(&env, "from-registry", "Filesystem", source(json!({"certConfigMap": "registry-ca"}))).await;
    // pullMethod node: served as a pod pull, and said so.
    data_volume(&env, "from-registry-node", "Block", source(json!({"pullMethod": "node"}))).await;
    // The golden PVC: no storage.import.source, the docker:// endpoint selects the registry.
    let golden: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "golden-registry", "annotations": {
            key::IMPORT_ENDPOINT: image,
            key::IMPORT_SECRET_NAME: "registry-creds",
            key::IMPORT_CERT_CONFIG_MAP: "registry-ca",
        }},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-immediate", "volumeMode": "Block",
                 "resources": {"requests": {"storage": "64Mi"}}},
    }))
    .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    claims.create(&PostParams::default(), &golden).await.unwrap();

    for name in ["from-registry", "from-registry-node"] {
        wait_succeeded(&env, name).await;
        assert_holds(&env, name, &env.raw).await;
    }
    wait_golden_success(&env, "golden-registry").await;
    assert_holds(&env, "golden-registry", &env.raw).await;

    // The fallback is told, as a Normal event, on the DataVolume and on its PVC.
    let described = kubectl(&env, &["describe", "dv", "from-registry-node"]).await;
    assert!(described.lines().any(|l| l.contains("Normal") && l.contains("NodePullFallback")), "{described}");
    let types = env.event_types("from-registry-node").await;
    assert_eq!(types.get("NodePullFallback").map(String::as_str), Some("Normal"), "{types:?}");
    assert!(!env.event_types("from-registry").await.contains_key("NodePullFallback"));
    for name in ["from-registry", "from-registry-node", "golden-registry"] {
        for event in env.events(name).await {
            assert!(!event.contains(&registry.password), "a credential in an event: {event}");
        }
    }
    drop(registry);
    env.stop().await;
}

/// Waits until golden PVC `name` says `storage.import.status: Success`; on timeout or
/// failure, panics with what it shows.
async fn wait_golden_success(env: &Env, name: &str) {
    let api: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    let done = await_condition(api.clone(), name, |p: Option<&PersistentVolumeClaim>| {
        let status = p.and_then(|p| p.metadata.annotations.as_ref()?.get(key::IMPORT_STATUS).cloned());
        matches!(status.as_deref(), Some("Success" | "Failed"))
    });
    let timed_out = tokio::time::timeout(IMPORT_WAIT, done).await.is_err();
    let ann = api.get(name).await.unwrap().metadata.annotations.unwrap_or_default();
    if timed_out || ann.get(key::IMPORT_STATUS).map(String::as_str) != Some("Success") {
        panic!(
            "golden PVC {name} was not imported (timed out: {timed_out}): {ann:?}\nevents: {:?}\npopulator log:\n{}",
            env.events(name).await,
            env.system.as_ref().unwrap().populator_log("cdi-populator-1")
        );
    }
    assert_eq!(ann.get(key::POD_PHASE).map(String::as_str), Some("Succeeded"), "{ann:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_and_gcs_data_volumes_succeed_and_hold_the_image() {
    let env = Env::start(16, &[]).await;
    let dir = env.dir.path();
    let (moto, gcs) = (Moto::start(dir), GcsEmulator::start(dir));
    movers_use_gcs_emulator(&env, &gcs.endpoint()).await;
    // The qcow2 in moto (checking signatures, keys in a Secret) and in the emulator
    // (anonymous).
    moto.put_object("disks", "disk.qcow2", &env.qcow2);
    let (key_id, secret_key) = moto.keys.clone().expect("moto with keys");
    secret(&env, "s3-keys", &[("accessKeyId", &key_id), ("secretKey", &secret_key)]).await;
    gcs.put_object("disks", "images/disk.qcow2", &env.qcow2);

    let s3 = json!({"s3": {"url": moto.url("disks", "disk.qcow2"), "secretRef": "s3-keys"}});
    data_volume(&env, "from-s3", "Filesystem", s3).await;
    data_volume(&env, "from-gcs", "Block", json!({"gcs": {"url": "gs://disks/images/disk.qcow2"}})).await;
    for name in ["from-s3", "from-gcs"] {
        wait_succeeded(&env, name).await;
        assert_holds(&env, name, &env.raw).await;
    }
    for event in env.events("from-s3").await {
        assert!(!event.contains(&secret_key), "a credential in an event: {event}");
    }
    drop((moto, gcs));
    env.stop().await;
}
