//! CDI's configuration kinds on an installed cdi-rs (`kubectl apply -k deploy/`): the CDI
//! object reported Deployed, CDIConfig `config` with its effective settings, one
//! StorageProfile per StorageClass — read and watched the way KubeVirt's virt-controller
//! does — and the per-class filesystem overhead sizing the next populated claim.

use std::collections::BTreeMap;
use std::path::Path;

use cdi_e2e::cluster::{CLASS_IMMEDIATE, CLASS_WFFC};
use cdi_e2e::controllers::kubelet::ProjectImages;
use cdi_e2e::controllers::snapshotter::DEFAULT_CLASS as SNAPSHOT_CLASS;
use cdi_e2e::system::{DEPLOY_DIR, Overlay, binaries_dir, install, wait_for_rollout};
use cdi_e2e::workload::{ImageServer, Mode, create_http_source, target_pvc, until_bound, volume_data};
use cdi_populator::api::{CDIConfig, StorageProfile};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;

use crate::common::{TestCluster, json_of, within};

/// A cluster with cdi-rs installed from `deploy/`, its populator leading.
async fn installed() -> TestCluster {
    let binaries = binaries_dir().expect("the workspace is built");
    let tc = TestCluster::start_with(|c| c.images = ProjectImages::from_dir(&binaries)).await;
    within("kubectl apply -k deploy/", install(tc.cluster(), Path::new(DEPLOY_DIR), &Overlay::default()))
        .await
        .expect("install");
    within("the rollout", wait_for_rollout(&tc.client, 2)).await.expect("rollout");
    tc
}

/// Waits until `config`'s status satisfies `ok`; returns it.
async fn config_until(tc: &TestCluster, what: &str, ok: impl Fn(&CDIConfig) -> bool) -> CDIConfig {
    let api: Api<CDIConfig> = Api::all(tc.client.clone());
    let reached = await_condition(api, "config", move |c: Option<&CDIConfig>| c.is_some_and(&ok));
    within(what, reached).await.unwrap().expect("config exists")
}

fn per_class_overhead(c: &CDIConfig) -> BTreeMap<String, String> {
    c.status.as_ref().and_then(|s| s.filesystem_overhead.as_ref()).map(|o| o.storage_class.clone()).unwrap_or_default()
}

/// Waits until the profile of `class` has a resolved status; returns it.
async fn profile(tc: &TestCluster, class: &str) -> StorageProfile {
    let api: Api<StorageProfile> = Api::all(tc.client.clone());
    let resolved = await_condition(api, class, |p: Option<&StorageProfile>| {
        p.and_then(|p| p.status.as_ref()).is_some_and(|s| s.provisioner.is_some())
    });
    within(&format!("StorageProfile {class}"), resolved).await.unwrap().expect("profile exists")
}

/// What KubeVirt's informers do for a CDI resource: a list, then a watch from the list's
/// resourceVersion; the watch's events go to a channel as `TYPE name`.
async fn list_and_watch(
    client: &kube::Client,
    plural: &str,
    kind: &str,
) -> (Vec<String>, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let gvk = GroupVersionKind::gvk("cdi.kubevirt.io", "v1beta1", kind);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, plural));
    let list = api.list(&ListParams::default()).await.unwrap_or_else(|e| panic!("listing {plural}: {e}"));
    let names = list.items.iter().filter_map(|o| o.metadata.name.clone()).collect();
    let version = list.metadata.resource_version.expect("a list has a resourceVersion");
    let stream =
        api.watch(&WatchParams::default(), &version).await.unwrap_or_else(|e| panic!("watching {plural}: {e}"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(event)) = stream.next().await {
            let line = match event {
                WatchEvent::Added(o) => format!("ADDED {}", o.metadata.name.unwrap_or_default()),
                WatchEvent::Modified(o) => format!("MODIFIED {}", o.metadata.name.unwrap_or_default()),
                WatchEvent::Deleted(o) => format!("DELETED {}", o.metadata.name.unwrap_or_default()),
                _ => continue,
            };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (names, rx)
}

/// Waits for the event `line` on a watch.
async fn saw(events: &mut tokio::sync::mpsc::UnboundedReceiver<String>, line: &str) {
    within(&format!("the watch to report {line}"), async {
        while let Some(got) = events.recv().await {
            if got == line {
                return;
            }
        }
        panic!("the watch ended before {line}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cdi_config_and_storage_profiles_are_kept_as_kubevirt_reads_them() {
    let tc = installed().await;

    // The CDI object, Deployed and Available, as `kubectl get cdi` shows it.
    tc.kubectl(&["wait", "--for=jsonpath={.status.phase}=Deployed", "cdi/cdi", "--timeout=90s"]).await;
    let table = tc.kubectl(&["get", "cdi"]).await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "AGE", "PHASE"], "{table}");
    let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!((row[0], row[2]), ("cdi", "Deployed"), "{table}");
    let available = tc
        .kubectl(&["get", "cdis", "cdi", "-o", r#"jsonpath={.status.conditions[?(@.type=="Available")].status}"#])
        .await;
    assert_eq!(available, "True");

    // CDIConfig: the global default and one entry per class.
    let config = config_until(&tc, "config's overhead for both classes", |c| per_class_overhead(c).len() == 2).await;
    let global =
        tc.kubectl(&["get", "cdiconfig", "config", "-o", "jsonpath={.status.filesystemOverhead.global}"]).await;
    assert_eq!(global, "0.06");
    let per_class =
        tc.kubectl(&["get", "cdiconfig", "config", "-o", "jsonpath={.status.filesystemOverhead.storageClass}"]).await;
    assert_eq!(json_of(&per_class), json!({CLASS_WFFC: "0.06", CLASS_IMMEDIATE: "0.06"}));
    let status = config.status.unwrap();
    assert!(!status.preallocation);
    let resources = serde_json::to_value(status.default_pod_resource_requirements).unwrap();
    assert_eq!(
        resources,
        json!({"limits": {"cpu": "750m", "memory": "600M"}, "requests": {"cpu": "100m", "memory": "60M"}})
    );

    // A StorageProfile per class, from the provisioner table; the driver has a snapshot class.
    for class in [CLASS_WFFC, CLASS_IMMEDIATE] {
        let status = profile(&tc, class).await.status.unwrap();
        assert_eq!(status.storage_class.as_deref(), Some(class));
        assert_eq!(status.provisioner.as_deref(), Some(cdi_e2e::cluster::PROVISIONER));
        assert_eq!(
            serde_json::to_value(&status.claim_property_sets).unwrap(),
            json!([{"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"},
                   {"accessModes": ["ReadWriteOnce"], "volumeMode": "Block"}])
        );
        assert_eq!(status.clone_strategy.as_deref(), Some("snapshot"));
        assert_eq!(status.snapshot_class.as_deref(), Some(SNAPSHOT_CLASS));
        assert_eq!(status.data_import_cron_source_format.as_deref(), Some("pvc"));
    }

    // KubeVirt lists and watches all three before its controllers start.
    let (cdis, mut cdi_events) = list_and_watch(&tc.client, "cdis", "CDI").await;
    let (configs, mut config_events) = list_and_watch(&tc.client, "cdiconfigs", "CDIConfig").await;
    let (profiles, mut profile_events) = list_and_watch(&tc.client, "storageprofiles", "StorageProfile").await;
    assert_eq!(cdis, ["cdi"]);
    assert_eq!(configs, ["config"]);
    let mut sorted = profiles.clone();
    sorted.sort();
    assert_eq!(sorted, [CLASS_WFFC, CLASS_IMMEDIATE]);

    // A new class gets a profile (the table's properties, no snapshot class: copy) and an
    // overhead entry; deleting it takes both away.
    tc.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"{"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "extra"},
                "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"}"#,
        ),
    )
    .await;
    let extra = profile(&tc, "extra").await.status.unwrap();
    assert_eq!(
        serde_json::to_value(&extra.claim_property_sets).unwrap(),
        json!([{"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}])
    );
    assert_eq!(extra.clone_strategy.as_deref(), Some("copy"));
    assert_eq!(extra.snapshot_class, None);
    config_until(&tc, "an overhead entry for the new class", |c| per_class_overhead(c).contains_key("extra")).await;
    saw(&mut profile_events, "ADDED extra").await;
    saw(&mut config_events, "MODIFIED config").await;

    // The admin's spec wins over the table.
    let spec = r#"{"spec": {"claimPropertySets": [{"accessModes": ["ReadWriteMany"], "volumeMode": "Block"}], "cloneStrategy": "csi-clone"}}"#;
    tc.kubectl(&["patch", "storageprofile", "extra", "--type=merge", "-p", spec]).await;
    let api: Api<StorageProfile> = Api::all(tc.client.clone());
    let overridden = await_condition(api.clone(), "extra", |p: Option<&StorageProfile>| {
        p.and_then(|p| p.status.as_ref()).is_some_and(|s| s.clone_strategy.as_deref() == Some("csi-clone"))
    });
    let status = within("the profile to follow its spec", overridden).await.unwrap().unwrap().status.unwrap();
    assert_eq!(status.claim_property_sets[0].access_modes, ["ReadWriteMany"]);
    assert_eq!(status.claim_property_sets[0].volume_mode.as_deref(), Some("Block"));

    tc.kubectl(&["delete", "storageclass", "extra"]).await;
    within("the profile to go with its class", await_condition(api, "extra", |p: Option<&StorageProfile>| p.is_none()))
        .await
        .unwrap();
    config_until(&tc, "the overhead entry to go", |c| !per_class_overhead(c).contains_key("extra")).await;
    saw(&mut profile_events, "DELETED extra").await;

    // The CDI object is watched too; deleting `config` brings it back.
    tc.kubectl(&["annotate", "cdi", "cdi", "example.com/touched=yes"]).await;
    saw(&mut cdi_events, "MODIFIED cdi").await;
    tc.kubectl(&["delete", "cdiconfig", "config"]).await;
    saw(&mut config_events, "DELETED config").await;
    saw(&mut config_events, "ADDED config").await;
    config_until(&tc, "the new config's status", |c| per_class_overhead(c).len() == 2).await;
    tc.shutdown_and_check_leaks().await;
}

/// `disk.img` sized as CDI sizes it with `overhead`: round_down(ceil(min(request, free) /
/// (1 + overhead)), 1 MiB), free being what the volume had before the import (now: free plus
/// what disk.img holds, give or take its metadata blocks, hence one MiB of tolerance).
fn assert_sized_with(disk: &Path, request: u64, overhead: f64) {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(disk).unwrap();
    let stat = nix::sys::statvfs::statvfs(disk.parent().unwrap()).unwrap();
    let free = stat.blocks_available() as u64 * stat.fragment_size() as u64 + meta.blocks() * 512;
    let usable = ((request.min(free) as f64 / (1.0 + overhead)).ceil() as u64) / (1 << 20) * (1 << 20);
    let size = meta.len();
    assert!(
        size <= usable && size + (1 << 20) >= usable,
        "disk.img of {size} bytes; CDI with {overhead} makes {usable}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_per_class_overhead_sizes_the_next_filesystem_claim_of_that_class() {
    let tc = installed().await;
    config_until(&tc, "config's status", |c| per_class_overhead(c).len() == 2).await;

    // One valid value for the immediate class; an invalid one for the other is ignored and
    // reported, never fatal.
    let patch = json!({"spec": {"filesystemOverhead": {"storageClass": {CLASS_IMMEDIATE: "0.2", CLASS_WFFC: "1.5"}}}});
    tc.kubectl(&["patch", "cdiconfig", "config", "--type=merge", "-p", &patch.to_string()]).await;
    let config = config_until(&tc, "the new overhead in the status", |c| {
        per_class_overhead(c).get(CLASS_IMMEDIATE).map(String::as_str) == Some("0.2")
    })
    .await;
    assert_eq!(per_class_overhead(&config)[CLASS_WFFC], "0.06", "the invalid value is ignored");
    let events: Api<Event> = Api::all(tc.client.clone());
    let mut stream = std::pin::pin!(watcher(events, watcher::Config::default()).applied_objects());
    let warned = async {
        while let Some(e) = stream.next().await {
            let e = e.unwrap();
            if e.involved_object.kind.as_deref() == Some("CDIConfig")
                && e.reason.as_deref() == Some("InvalidFilesystemOverhead")
            {
                return e;
            }
        }
        panic!("the event watch ended");
    };
    let event = within("a warning about the invalid overhead", warned).await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.message.unwrap_or_default();
    assert!(note.contains(&format!("storageClass[{CLASS_WFFC}]")) && note.contains("\"1.5\""), "{note}");

    // The next filesystem claim of the class is sized with 0.2, not the default 0.06.
    let www = tempfile::tempdir().unwrap();
    let image: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    std::fs::write(www.path().join("disk.img"), &image).unwrap();
    let server = ImageServer::start(www.path().to_path_buf()).await.unwrap();
    create_http_source(&tc.client, "default", "disk", &server.url("disk.img")).await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::default_namespaced(tc.client.clone());
    pvcs.create(&PostParams::default(), &target_pvc("sized", CLASS_IMMEDIATE, Mode::Filesystem, "64Mi", "disk"))
        .await
        .unwrap();
    within("the claim to be populated", until_bound(&tc.client, "default", &["sized"], |_| {})).await.unwrap();
    let disk = volume_data(&tc.client, &pvcs.get("sized").await.unwrap()).await.unwrap();
    assert_sized_with(&disk, 64 << 20, 0.2);
    let held = std::fs::read(&disk).unwrap();
    assert_eq!(&held[..image.len()], &image[..], "the volume holds the image");
    drop(held);
    tc.shutdown_and_check_leaks().await;
}
