//! The populate flow end to end: the real `cdi-populator` and `cdi-mover` binaries on the
//! mini-cluster, PVCs with `dataSourceRef` to a VolumeImportSource, an HTTP server serving
//! a qcow2 made by qemu-img, and qemu-img comparing what lands in the volume.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use cdi_e2e::system::{System, SystemConfig, pv_backing};
use cdi_e2e::workload::{ImageServer, Mode, target_pvc};
use cdi_populator::api::names::annotations as key;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;
use std::collections::BTreeMap;

use crate::common::within;

mod faults;
mod proxy;

/// The populator's own record of attempts (not one of CDI's annotations).
const ATTEMPT: &str = "cdi.kubevirt.io/storage.populator.attempt";

const IMPORT_WAIT: Duration = Duration::from_secs(120);

/// A raw disk with data, zeros and holes, and its qcow2.
pub(crate) fn make_image(dir: &Path, mib: u64) -> (PathBuf, PathBuf) {
    let raw = dir.join("disk.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(mib << 20).unwrap();
    let mut seed = 0x1234_5678_u64;
    for i in 0..mib / 4 {
        let mut block = vec![0u8; 1 << 20];
        for b in block.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        std::os::unix::fs::FileExt::write_all_at(&f, &block, (i * 4) << 20).unwrap();
    }
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let qcow2 = www.join("disk.qcow2");
    let st =
        std::process::Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&qcow2).status().unwrap();
    assert!(st.success());
    (raw, qcow2)
}

/// Shared with the golden PVC's tests (golden.rs).
pub(crate) struct Env {
    pub(crate) system: Option<System>,
    pub(crate) server: ImageServer,
    pub(crate) raw: PathBuf,
    pub(crate) qcow2: PathBuf,
    pub(crate) dir: tempfile::TempDir,
}

impl Env {
    pub(crate) async fn start(image_mib: u64, populator_args: &[&str]) -> Env {
        Env::start_with(image_mib, populator_args, |_| {}).await
    }

    pub(crate) async fn start_with(
        image_mib: u64,
        populator_args: &[&str],
        tweak: impl FnOnce(&mut SystemConfig),
    ) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("cdi-populate-")
            .disable_cleanup(std::env::var_os("CDI_KEEP_TEST_FILES").is_some())
            .tempdir()
            .unwrap();
        let (raw, qcow2) = make_image(dir.path(), image_mib);
        let server = ImageServer::start(dir.path().join("www")).await.expect("image server");
        let mut config = SystemConfig::new(dir.path().join("cluster")).expect("binaries built");
        config.populator_args = populator_args.iter().map(|s| s.to_string()).collect();
        tweak(&mut config);
        // Installing cdi-rs starts more than one test's worth of processes (populator, upload
        // proxy, a mover per node); with the whole suite on 2 cores it can take past WAIT.
        let system = tokio::time::timeout(Duration::from_secs(180), System::start(config))
            .await
            .expect("cdi-rs to start on the mini-cluster within 180 s")
            .expect("system");
        Env { system: Some(system), server, raw, qcow2, dir }
    }

    fn system(&mut self) -> &mut System {
        self.system.as_mut().unwrap()
    }

    pub(crate) fn client(&self) -> kube::Client {
        self.system.as_ref().unwrap().client.clone()
    }

    pub(crate) async fn source(&self, name: &str, url: &str) {
        self.source_spec(name, json!({"source": {"http": {"url": url}}})).await;
    }

    pub(crate) async fn source_spec(&self, name: &str, spec: serde_json::Value) {
        let api: Api<cdi_populator::api::VolumeImportSource> = Api::default_namespaced(self.client());
        let src = serde_json::from_value(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "VolumeImportSource",
            "metadata": {"name": name},
            "spec": spec,
        }))
        .unwrap();
        api.create(&PostParams::default(), &src).await.unwrap();
    }

    async fn pvc(&self, name: &str, class: &str, mode: Mode, source: &str) {
        let api: Api<PersistentVolumeClaim> = Api::default_namespaced(self.client());
        api.create(&PostParams::default(), &target_pvc(name, class, mode, "64Mi", source)).await.unwrap();
    }

    /// Waits until the PVC's import shows progress past zero.
    pub(crate) async fn wait_progress(&self, name: &str) {
        let api: Api<PersistentVolumeClaim> = Api::default_namespaced(self.client());
        let running = await_condition(api, name, |p: Option<&PersistentVolumeClaim>| {
            p.and_then(|p| p.metadata.annotations.as_ref()?.get(key::POPULATOR_PROGRESS).cloned())
                .is_some_and(|v| v != "0.00%")
        });
        within("progress to show", running).await.unwrap();
    }

    /// Waits until the PVC's `storage.pod.phase` annotation says `phase`.
    pub(crate) async fn wait_pod_phase(&self, name: &str, phase: &str) -> BTreeMap<String, String> {
        let api: Api<PersistentVolumeClaim> = Api::default_namespaced(self.client());
        let reached = await_condition(api.clone(), name, |p: Option<&PersistentVolumeClaim>| {
            p.and_then(|p| p.metadata.annotations.as_ref()?.get(key::POD_PHASE).cloned()).as_deref() == Some(phase)
        });
        within(&format!("PVC {name} to reach pod phase {phase}"), reached).await.unwrap();
        api.get(name).await.unwrap().metadata.annotations.unwrap_or_default()
    }

    pub(crate) async fn wait_bound(&self, name: &str) -> PersistentVolumeClaim {
        let api: Api<PersistentVolumeClaim> = Api::default_namespaced(self.client());
        let bound = await_condition(api.clone(), name, |p: Option<&PersistentVolumeClaim>| {
            p.and_then(|p| p.status.as_ref()?.phase.as_deref()) == Some("Bound")
        });
        if tokio::time::timeout(IMPORT_WAIT, bound).await.is_err() {
            let pvc = api.get(name).await.unwrap();
            panic!(
                "PVC {name} not bound within {IMPORT_WAIT:?}: {:?}\nevents: {:?}\npopulator log:\n{}",
                pvc.metadata.annotations,
                self.events(name).await,
                self.system.as_ref().unwrap().populator_log("cdi-populator-1")
            );
        }
        api.get(name).await.unwrap()
    }

    pub(crate) async fn events(&self, pvc: &str) -> Vec<String> {
        let api: Api<Event> = Api::default_namespaced(self.client());
        let list = api.list(&ListParams::default()).await.unwrap();
        list.items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(pvc))
            .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect()
    }

    /// The type (Normal, Warning) of each event reason recorded about the PVC.
    pub(crate) async fn event_types(&self, pvc: &str) -> BTreeMap<String, String> {
        let api: Api<Event> = Api::default_namespaced(self.client());
        let list = api.list(&ListParams::default()).await.unwrap();
        list.items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(pvc))
            .map(|e| (e.reason.unwrap_or_default(), e.type_.unwrap_or_default()))
            .collect()
    }

    /// Waits for an event with `reason` about the PVC; returns all of its events then.
    pub(crate) async fn wait_event(&self, pvc: &str, reason: &str) -> Vec<String> {
        use futures_util::TryStreamExt as _;
        use kube::runtime::{WatchStreamExt as _, watcher};
        let api: Api<Event> = Api::default_namespaced(self.client());
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).applied_objects());
        within(&format!("a {reason} event about {pvc}"), async {
            while let Some(e) = events.try_next().await.unwrap() {
                if e.involved_object.name.as_deref() == Some(pvc) && e.reason.as_deref() == Some(reason) {
                    return;
                }
            }
        })
        .await;
        self.events(pvc).await
    }

    /// Where the bound PV's data is on this host.
    pub(crate) async fn backing(&self, pvc: &PersistentVolumeClaim) -> PathBuf {
        let pv_name = pvc.spec.as_ref().unwrap().volume_name.clone().unwrap();
        let pv = Api::<PersistentVolume>::all(self.client()).get(&pv_name).await.unwrap();
        pv_backing(&pv).expect("a provisioned PV")
    }

    async fn leftovers(&self) -> (usize, usize) {
        let pods: Api<Pod> = Api::default_namespaced(self.client());
        let holders =
            pods.list(&ListParams::default().labels("app.kubernetes.io/name=cdi-populator-holder")).await.unwrap();
        let claims: Api<PersistentVolumeClaim> = Api::default_namespaced(self.client());
        let primes =
            claims.list(&ListParams::default().labels("app.kubernetes.io/name=cdi-populator-prime")).await.unwrap();
        (holders.items.len(), primes.items.len())
    }

    /// Waits until every prime PVC and holder pod there is now has gone.
    async fn wait_no_leftovers(&self) {
        let pods: Api<Pod> = Api::default_namespaced(self.client());
        let holders = ListParams::default().labels("app.kubernetes.io/name=cdi-populator-holder");
        for pod in pods.list(&holders).await.unwrap().items {
            let (name, uid) = (pod.metadata.name.unwrap(), pod.metadata.uid.unwrap());
            let gone = await_condition(pods.clone(), &name, kube::runtime::conditions::is_deleted(&uid));
            within(&format!("holder pod {name} to go"), gone).await.unwrap();
        }
        let claims: Api<PersistentVolumeClaim> = Api::default_namespaced(self.client());
        let primes = ListParams::default().labels("app.kubernetes.io/name=cdi-populator-prime");
        for pvc in claims.list(&primes).await.unwrap().items {
            let (name, uid) = (pvc.metadata.name.unwrap(), pvc.metadata.uid.unwrap());
            let gone = await_condition(claims.clone(), &name, kube::runtime::conditions::is_deleted(&uid));
            within(&format!("prime PVC {name} to go"), gone).await.unwrap();
        }
        assert_eq!(self.leftovers().await, (0, 0));
    }

    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.system.take() {
            s.shutdown().await;
        }
        drop(self.dir);
    }
}

pub(crate) fn qemu_same(raw: &Path, target: &Path, size: Option<u64>) {
    let args: Vec<String> = match size {
        None => vec![
            "compare".into(),
            "-f".into(),
            "raw".into(),
            "-F".into(),
            "raw".into(),
            raw.display().to_string(),
            target.display().to_string(),
        ],
        Some(size) => vec![
            "compare".into(),
            "--image-opts".into(),
            format!("driver=raw,file.filename={}", raw.display()),
            format!("driver=raw,size={size},file.filename={}", target.display()),
        ],
    };
    let out = std::process::Command::new("qemu-img").args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `disk.img` is sized as CDI sizes it: round_down(ceil(min(request, free) / 1.06), 1 MiB),
/// where free is what the volume had before the import (now: free + what disk.img holds,
/// give or take the file's own metadata blocks, hence the one-MiB tolerance).
fn assert_cdi_sized(disk: &Path, request: u64) {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(disk).unwrap();
    let stat = nix::sys::statvfs::statvfs(disk.parent().unwrap()).unwrap();
    let free = stat.blocks_available() as u64 * stat.fragment_size() as u64 + meta.blocks() * 512;
    let usable = ((request.min(free) as f64 / 1.06).ceil() as u64) / (1 << 20) * (1 << 20);
    let size = meta.len();
    assert_eq!(size % (1 << 20), 0, "disk.img of {size} bytes is not a whole number of MiB");
    assert!(size <= usable && size + (1 << 20) >= usable, "disk.img of {size} bytes; CDI would make {usable}");
}

/// One plain HTTP/1.0 GET; returns the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    within(&format!("GET {path}"), stream.read_to_string(&mut response)).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn filesystem_and_block_pvcs_on_an_immediate_class_are_populated() {
    let env = Env::start(32, &[]).await;
    env.source("img", &env.server.url("disk.qcow2")).await;
    env.pvc("fs", "local-immediate", Mode::Filesystem, "img").await;
    env.pvc("blk", "local-immediate", Mode::Block, "img").await;

    let fs = env.wait_bound("fs").await;
    let ann = fs.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(ann.get(key::POPULATOR_PROGRESS).map(String::as_str), Some("100.0%"));
    assert_eq!(ann.get(key::POD_PHASE).map(String::as_str), Some("Succeeded"));
    let disk = env.backing(&fs).await.join("disk.img");
    qemu_same(&env.raw, &disk, None);
    assert_cdi_sized(&disk, 64 << 20);

    let blk = env.wait_bound("blk").await;
    let device = env.backing(&blk).await;
    qemu_same(&env.raw, &device, Some(32 << 20));

    let events = env.events("fs").await;
    for reason in ["CreatedPVCPrimeSuccessfully", "ImportScheduled", "ImportSucceeded"] {
        assert!(events.iter().any(|e| e.starts_with(reason)), "no {reason} event: {events:?}");
    }
    // The populator's own endpoint counts both, as Prometheus would scrape it.
    let system = env.system.as_ref().unwrap();
    let addr = system.populator_metrics_addr("cdi-populator-1").expect("the populator logs its metrics address");
    assert_eq!(http_get(addr, "/healthz").await, "ok\n");
    let metrics = http_get(addr, "/metrics").await;
    assert!(metrics.contains("cdi_populator_populations_total{result=\"succeeded\"} 2"), "{metrics}");
    env.wait_no_leftovers().await;
    assert_eq!(env.server.knobs.gets(), 2, "one download per PVC");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wait_for_first_consumer_pvc_is_populated_on_its_consumer_node() {
    let env = Env::start(16, &[]).await;
    env.source("img", &env.server.url("disk.qcow2")).await;
    env.pvc("data", "local", Mode::Filesystem, "img").await;
    // The populator sees the claim and waits for a consumer; nothing more happens.
    env.wait_event("data", "PendingPopulation").await;
    assert_eq!(env.leftovers().await, (0, 0), "a prime PVC or holder pod before any consumer");
    let api: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    let pending = api.get("data").await.unwrap();
    assert_ne!(pending.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Bound"));
    let pods: Api<Pod> = Api::default_namespaced(env.client());
    let consumer = serde_json::from_value(json!({
        "metadata": {"name": "vm"},
        "spec": {"containers": [{"name": "vm", "image": "busybox", "volumeMounts": [{"name": "disk", "mountPath": "/disk"}]}],
                 "volumes": [{"name": "disk", "persistentVolumeClaim": {"claimName": "data"}}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &consumer).await.unwrap();
    let bound = env.wait_bound("data").await;
    let node = bound.metadata.annotations.as_ref().unwrap().get("volume.kubernetes.io/selected-node").cloned().unwrap();
    qemu_same(&env.raw, &env.backing(&bound).await.join("disk.img"), None);
    let vm = await_condition(pods.clone(), "vm", kube::runtime::conditions::is_pod_running());
    within("the consumer to run", vm).await.unwrap();
    assert_eq!(pods.get("vm").await.unwrap().spec.unwrap().node_name.as_deref(), Some(node.as_str()));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn not_found_is_a_terminal_failure_and_is_not_retried() {
    let env = Env::start(8, &["--retry-base", "1"]).await;
    env.source("gone", &env.server.url("missing.qcow2")).await;
    env.pvc("data", "local-immediate", Mode::Filesystem, "gone").await;
    let ann = env.wait_pod_phase("data", "Failed").await;
    assert_eq!(ann.get(key::RUNNING_CONDITION).map(String::as_str), Some("false"));
    assert_eq!(ann.get(key::RUNNING_CONDITION_REASON).map(String::as_str), Some("Error"));
    assert!(ann[key::RUNNING_CONDITION_MESSAGE].contains("404"), "{ann:?}");
    let events = env.events("data").await;
    assert!(events.iter().any(|e| e.starts_with("ImportFailed") && e.contains("404")), "{events:?}");
    // The typed reason reaches the event type and the metric label.
    let types = env.event_types("data").await;
    assert_eq!(types.get("ImportFailed").map(String::as_str), Some("Warning"), "{types:?}");
    assert_eq!(types.get("ImportScheduled").map(String::as_str), Some("Normal"), "{types:?}");
    let system = env.system.as_ref().unwrap();
    let addr = system.populator_metrics_addr("cdi-populator-1").expect("the populator logs its metrics address");
    let metrics = http_get(addr, "/metrics").await;
    assert!(metrics.contains("cdi_populator_population_failures_total{reason=\"NotFound\"} 1"), "{metrics}");
    // No retry loop: the number of failed attempts stays put.
    let attempts = ann.get(ATTEMPT).cloned();
    tokio::time::sleep(Duration::from_secs(3)).await; // deliberately idle: proving nothing happens
    let api: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    let later = api.get("data").await.unwrap().metadata.annotations.unwrap();
    assert_eq!(later.get(ATTEMPT).cloned(), attempts);
    assert!(!later.contains_key(key::POD_RESTARTS));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_fails_twice_then_works_succeeds_with_two_restarts() {
    let env = Env::start(8, &["--retry-base", "1", "--retry-cap", "2"]).await;
    env.server.knobs.fail_first.store(2, Ordering::SeqCst);
    env.source("flaky", &env.server.url("disk.qcow2")).await;
    let created = std::time::Instant::now();
    env.pvc("data", "local-immediate", Mode::Filesystem, "flaky").await;
    let pvc = env.wait_bound("data").await;
    // The retries waited out their backoff (1 s, then 2 s), although the annotations that
    // record each retry wake the populator at once.
    let took = created.elapsed();
    assert!(took >= Duration::from_secs(3), "two retries within {took:?}: the backoff was not kept");
    let ann = pvc.metadata.annotations.clone().unwrap();
    assert_eq!(ann.get(key::POD_RESTARTS).map(String::as_str), Some("2"));
    assert!(ann.contains_key("cdi.kubevirt.io/storage.populator.retryAfter"), "{ann:?}");
    qemu_same(&env.raw, &env.backing(&pvc).await.join("disk.img"), None);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_target_mid_import_leaves_nothing_behind() {
    let env = Env::start(16, &[]).await;
    env.server.knobs.throttle.store(256 << 10, Ordering::SeqCst); // about 17 s
    env.source("img", &env.server.url("disk.qcow2")).await;
    env.pvc("data", "local-immediate", Mode::Filesystem, "img").await;
    env.wait_progress("data").await;
    let api: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    // The prime's PV, provisioned by now since the import runs.
    let pvs = Api::<PersistentVolume>::all(env.client());
    let volumes = pvs.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    api.delete("data", &DeleteParams::default()).await.unwrap();
    let gone = await_condition(api.clone(), "data", |p: Option<&PersistentVolumeClaim>| p.is_none());
    within("the target PVC to be deleted", gone).await.unwrap();
    env.wait_no_leftovers().await;
    for pv in volumes {
        let (name, uid) = (pv.metadata.name.unwrap(), pv.metadata.uid.unwrap());
        let gone = await_condition(pvs.clone(), &name, kube::runtime::conditions::is_deleted(&uid));
        within(&format!("the prime's PV {name} to be deleted"), gone).await.unwrap();
    }
    assert!(pvs.list(&ListParams::default()).await.unwrap().items.is_empty());
    // The mover's task is cancelled, not finished in the background. The
    // task ends asynchronously after the cancel, so wait for its last word.
    let nodes = env.dir.path().join("cluster/nodes");
    let mover_log = move || {
        std::fs::read_dir(&nodes)
            .into_iter()
            .flatten()
            .flat_map(|n| std::fs::read_dir(n.unwrap().path().join("logs")).into_iter().flatten())
            .filter_map(|f| std::fs::read_to_string(f.unwrap().path()).ok())
            .collect::<String>()
    };
    let cancelled = within("the mover to report the task cancelled", {
        let mover_log = mover_log.clone();
        async move {
            loop {
                let log = mover_log();
                if log.contains("task failed") {
                    return log;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
    .await;
    assert!(cancelled.contains("reason=\"Cancelled\""), "the mover's task was not cancelled: {cancelled}");
    assert!(!cancelled.contains("task succeeded"), "{cancelled}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_two_populators_only_the_leader_acts() {
    let mut env = Env::start(8, &[]).await;
    env.system().start_populator("cdi-populator-2").await.unwrap();
    env.source("img", &env.server.url("disk.qcow2")).await;
    env.pvc("data", "local-immediate", Mode::Filesystem, "img").await;
    env.wait_bound("data").await;
    let one = env.system().populator_log("cdi-populator-1");
    let two = env.system().populator_log("cdi-populator-2");
    assert!(one.contains("acquired leadership"), "{one}");
    assert!(!two.contains("acquired leadership"), "both populators lead: {two}");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(env.client(), "cdi-rs");
    let lease = leases.get("cdi-populator").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), env.system().populator_pod("cdi-populator-1"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checksum_mismatch_is_terminal_until_the_source_is_corrected() {
    let env = Env::start(8, &["--retry-base", "1"]).await;
    let url = env.server.url("disk.qcow2");
    let wrong = format!("sha256:{}", "0".repeat(64));
    env.source_spec("img", json!({"source": {"http": {"url": url, "checksum": wrong}}})).await;
    env.pvc("data", "local-immediate", Mode::Filesystem, "img").await;
    let ann = env.wait_pod_phase("data", "Failed").await;
    assert_eq!(ann.get(key::RUNNING_CONDITION_REASON).map(String::as_str), Some("ChecksumError"), "{ann:?}");
    assert!(!ann.contains_key(key::POD_RESTARTS), "a checksum mismatch was retried: {ann:?}");
    let events = env.events("data").await;
    assert!(events.iter().any(|e| e.starts_with("ImportFailed") && e.contains("checksum")), "{events:?}");
    let api: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    assert_ne!(api.get("data").await.unwrap().status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    assert_eq!(env.server.knobs.gets(), 1);

    // The admin corrects the checksum: a new generation of the source is tried afresh.
    let digest = {
        use sha2::Digest as _;
        let bytes = std::fs::read(&env.qcow2).unwrap();
        sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let sources: Api<cdi_populator::api::VolumeImportSource> = Api::default_namespaced(env.client());
    let patch = json!({"spec": {"source": {"http": {"checksum": format!("sha256:{digest}")}}}});
    sources.patch("img", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    let pvc = env.wait_bound("data").await;
    qemu_same(&env.raw, &env.backing(&pvc).await.join("disk.img"), None);
    assert_eq!(env.server.knobs.gets(), 2);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unsupported_source_is_reported_on_the_pvc_and_nothing_is_started() {
    let env = Env::start(8, &[]).await;
    let vddk = json!({"url": "https://vcenter.example/sdk", "uuid": "42", "backingFile": "[ds] vm/vm.vmdk"});
    env.source_spec("vm", json!({"source": {"vddk": vddk}})).await;
    env.pvc("data", "local-immediate", Mode::Block, "vm").await;
    let api: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    let reported = await_condition(api.clone(), "data", |p: Option<&PersistentVolumeClaim>| {
        p.and_then(|p| p.metadata.annotations.as_ref()?.get(key::RUNNING_CONDITION_REASON).cloned()).as_deref()
            == Some("Unsupported")
    });
    within("the PVC to be marked unsupported", reported).await.unwrap();
    let pvc = api.get("data").await.unwrap();
    let ann = pvc.metadata.annotations.unwrap();
    assert_eq!(ann.get(key::RUNNING_CONDITION).map(String::as_str), Some("false"));
    assert!(ann[key::RUNNING_CONDITION_MESSAGE].contains("vddk"), "{ann:?}");
    let events = env.wait_event("data", "UnsupportedSource").await;
    assert!(events.iter().all(|e| !e.starts_with("CreatedPVCPrime")), "{events:?}");
    assert_eq!(env.leftovers().await, (0, 0), "a prime PVC or holder pod for an unsupported source");
    assert_ne!(pvc.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    env.stop().await;
}

/// Everything a leak could land in that the system shows: every process log, the populator's
/// and each mover's `/metrics`, and the Events, PVCs, PVs, pods and import sources of every
/// namespace (annotations, condition messages and event notes among them), as
/// `(where, text)`.
async fn everything_shown(env: &Env) -> Vec<(String, String)> {
    let system = env.system.as_ref().unwrap();
    let mut shown: Vec<(String, String)> =
        system.all_logs().into_iter().map(|(f, text)| (f.display().to_string(), text)).collect();
    let addr = system.populator_metrics_addr("cdi-populator-1").expect("the populator logs its metrics address");
    shown.push(("populator /metrics".into(), http_get(addr, "/metrics").await));
    let movers: Api<Pod> = Api::namespaced(env.client(), cdi_e2e::system::NAMESPACE);
    for pod in movers.list(&ListParams::default().labels("app.kubernetes.io/name=cdi-mover")).await.unwrap() {
        let ip = pod.status.and_then(|s| s.pod_ip).expect("a running mover has an IP");
        let addr = format!("{ip}:9102").parse().unwrap();
        shown.push((format!("mover {ip} /metrics"), http_get(addr, "/metrics").await));
    }
    let client = env.client();
    let dump = |what: &str, list: serde_json::Value| (what.to_string(), list.to_string());
    shown.push(dump("events", json!(Api::<Event>::all(client.clone()).list(&Default::default()).await.unwrap().items)));
    shown.push(dump(
        "pvcs",
        json!(Api::<PersistentVolumeClaim>::all(client.clone()).list(&Default::default()).await.unwrap().items),
    ));
    shown.push(dump(
        "pvs",
        json!(Api::<PersistentVolume>::all(client.clone()).list(&Default::default()).await.unwrap().items),
    ));
    shown.push(dump("pods", json!(Api::<Pod>::all(client.clone()).list(&Default::default()).await.unwrap().items)));
    let sources = Api::<cdi_populator::api::VolumeImportSource>::all(client.clone());
    shown.push(dump("import sources", json!(sources.list(&Default::default()).await.unwrap().items)));
    shown
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_credentials_never_leak_into_logs_events_annotations_metrics_or_errors() {
    use base64::Engine as _;
    const USER: &str = "e2e-user-w4k";
    const PASSWORD: &str = "pw-Rb61-e2e-s3cr3t";
    const WRONG: &str = "pw-Lz09-wrong-guess";
    let env = Env::start_with(8, &["--retry-base", "1"], |c| {
        c.populator_log = Some("trace".into());
        c.mover_log = Some("trace".into());
    })
    .await;
    let users = env.dir.path().join("htpasswd");
    std::fs::write(&users, format!("{USER}:{{PLAIN}}{PASSWORD}\n")).unwrap();
    let conf = format!("auth_basic \"images\"; auth_basic_user_file {};", users.display());
    let nginx = crate::peers::Nginx::start(env.dir.path(), &env.dir.path().join("www"), &conf, "");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::default_namespaced(env.client());
    for (name, password) in [("right", PASSWORD), ("wrong", WRONG)] {
        let secret = serde_json::from_value(json!({
            "metadata": {"name": name},
            "stringData": {"accessKeyId": USER, "secretKey": password},
        }))
        .unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
        let http = json!({"url": nginx.url("http", "disk.qcow2"), "secretRef": name});
        env.source_spec(name, json!({"source": {"http": http}})).await;
    }
    env.pvc("ok", "local-immediate", Mode::Filesystem, "right").await;
    env.pvc("refused", "local-immediate", Mode::Filesystem, "wrong").await;

    let ann = env.wait_pod_phase("refused", "Failed").await;
    let message = &ann[key::RUNNING_CONDITION_MESSAGE];
    assert!(message.contains("401"), "{ann:?}");
    let pvc = env.wait_bound("ok").await;
    qemu_same(&env.raw, &env.backing(&pvc).await.join("disk.img"), None);
    // Meaningful only if the credentials did travel and everything traced.
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert!(nginx.detail_log().contains(&b64(&format!("{USER}:{PASSWORD}"))), "{}", nginx.detail_log());
    let system = env.system.as_ref().unwrap();
    assert!(system.populator_log("cdi-populator-1").contains("TRACE"), "the populator does not trace");

    let mut needles = vec![USER.to_string(), b64(USER)];
    for pw in [PASSWORD, WRONG] {
        needles.extend([pw.to_string(), b64(pw), b64(&format!("{USER}:{pw}"))]);
    }
    let shown = everything_shown(&env).await;
    assert!(
        shown.iter().any(|(what, text)| what.contains("cdi-mover") && text.contains("TRACE")),
        "the movers do not trace"
    );
    // The scan sees the populator reading the Secrets (it would see what it read, logged).
    assert!(
        shown.iter().any(|(_, text)| text.contains("secrets/right")),
        "the Secret reads are not in the logs scanned"
    );
    for (what, text) in &shown {
        for needle in &needles {
            if let Some(i) = text.find(needle.as_str()) {
                let around = &text[text.floor_char_boundary(i.saturating_sub(400))
                    ..text.ceil_char_boundary((i + 200).min(text.len()))];
                panic!("{needle:?} appears in {what}: ...{around}...");
            }
        }
    }
    env.stop().await;
}
