//! DataVolumes end to end, with cdi-rs installed from `deploy/`: CDI's example manifests
//! applied with kubectl (changed only in URL and storage class), what `kubectl get dv` and
//! `kubectl describe dv` show, the content checked with qemu-img; a WaitForFirstConsumer
//! default class; and (in `kubevirt`) a stand-in for KubeVirt's virt-controller.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cdi_e2e::system::{System, SystemConfig, pv_backing};
use cdi_e2e::workload::ImageServer;
use cdi_populator::api::{DataVolume, DataVolumePhase};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::Api;
use kube::runtime::wait::await_condition;

use crate::blank::{MIB, cdi_usable, read_all};
use crate::populate::{make_image, qemu_same};

mod clone;
mod kubevirt;

/// An import of a few MiB, on 2 busy cores.
const IMPORT_WAIT: Duration = Duration::from_secs(120);

/// cdi-rs on a mini-cluster, an HTTP server with a qcow2 (and its raw original), kubectl.
struct Env {
    system: Option<System>,
    server: ImageServer,
    raw: PathBuf,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start(image_mib: u64) -> Env {
        let dir = tempfile::Builder::new().prefix("cdi-dv-").tempdir().unwrap();
        let (raw, _qcow2) = make_image(dir.path(), image_mib);
        let server = ImageServer::start(dir.path().join("www")).await.expect("image server");
        let config = SystemConfig::new(dir.path().join("cluster")).expect("binaries built");
        let system = crate::common::within("cdi-rs to start", System::start(config)).await.expect("system");
        Env { system: Some(system), server, raw, dir }
    }

    fn system(&self) -> &System {
        self.system.as_ref().unwrap()
    }

    fn client(&self) -> kube::Client {
        self.system().client.clone()
    }

    fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// kubectl against the cluster; insists on success, returns stdout.
    async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        use tokio::io::AsyncWriteExt as _;
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(self.system().cluster.kubeconfig_path()).args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().expect("kubectl is installed");
        let mut input = child.stdin.take().unwrap();
        let text = stdin.unwrap_or_default().to_string();
        let out = crate::common::within(&format!("kubectl {}", args.join(" ")), async move {
            input.write_all(text.as_bytes()).await.unwrap();
            drop(input);
            child.wait_with_output().await.unwrap()
        })
        .await;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "kubectl {}: {stdout}{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        stdout
    }

    async fn apply(&self, manifest: &str) {
        self.kubectl(&["apply", "-f", "-"], Some(manifest)).await;
    }

    /// Waits until the DataVolume matches `test`; on timeout, panics with what it shows.
    async fn wait_dv(&self, name: &str, what: &str, test: impl Fn(&DataVolume) -> bool) -> DataVolume {
        self.wait_dv_in("default", name, what, test).await
    }

    /// [`Self::wait_dv`] for a DataVolume of `namespace`.
    async fn wait_dv_in(
        &self,
        namespace: &str,
        name: &str,
        what: &str,
        test: impl Fn(&DataVolume) -> bool,
    ) -> DataVolume {
        let api: Api<DataVolume> = Api::namespaced(self.client(), namespace);
        let reached = await_condition(api.clone(), name, move |dv: Option<&DataVolume>| dv.is_some_and(&test));
        if tokio::time::timeout(IMPORT_WAIT, reached).await.is_err() {
            let dv = api.get_opt(name).await.unwrap();
            panic!(
                "DataVolume {namespace}/{name} not {what} within {IMPORT_WAIT:?}: {:?}\npopulator log:\n{}",
                dv.and_then(|d| d.status),
                self.system().populator_log("cdi-populator-1")
            );
        }
        api.get(name).await.unwrap()
    }

    async fn wait_phase(&self, name: &str, phase: DataVolumePhase) -> DataVolume {
        let what = format!("{phase}");
        self.wait_dv(name, &what, move |dv| phase_of(dv) == Some(phase.clone())).await
    }

    async fn pvc_opt(&self, name: &str) -> Option<PersistentVolumeClaim> {
        Api::<PersistentVolumeClaim>::default_namespaced(self.client()).get_opt(name).await.unwrap()
    }

    async fn pvc(&self, name: &str) -> PersistentVolumeClaim {
        Api::<PersistentVolumeClaim>::default_namespaced(self.client()).get(name).await.unwrap()
    }

    /// Where the PVC's bound volume keeps its data on this host.
    async fn backing(&self, pvc: &PersistentVolumeClaim) -> PathBuf {
        let pv_name = pvc.spec.as_ref().unwrap().volume_name.clone().expect("a bound PVC");
        let pv = Api::<PersistentVolume>::all(self.client()).get(&pv_name).await.unwrap();
        pv_backing(&pv).expect("a provisioned PV")
    }

    async fn stop(mut self) {
        if let Some(s) = self.system.take() {
            s.shutdown().await;
        }
    }
}

fn phase_of(dv: &DataVolume) -> Option<DataVolumePhase> {
    dv.status.as_ref()?.phase.clone()
}

/// `(status, reason)` of the DataVolume's condition `type_`.
fn condition(dv: &DataVolume, type_: &str) -> (String, String) {
    let c = dv.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
    c.map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default())).unwrap_or_default()
}

/// The `kubectl get dv` row of `name`, split on whitespace.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default()
}

/// The `(type, reason)` of each event in `kubectl describe` output, in the order shown.
fn described_events(described: &str) -> Vec<(String, String)> {
    let events = described.lines().skip_while(|l| !l.starts_with("Events:")).skip(1);
    events
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let (type_, reason) = (words.next()?, words.next()?);
            matches!(type_, "Normal" | "Warning").then(|| (type_.to_string(), reason.to_string()))
        })
        .collect()
}

/// The events shown are all Normal, each a step of `story` told once, in its order, and
/// every step of `required` is among them. (A step in between may be missing when the
/// DataVolume moved past it before a reconcile saw it.)
fn assert_story(described: &str, story: &[&str], required: &[&str]) {
    let events = described_events(described);
    // kubectl shows an event recorded again as `(xN over …)` in its Age column.
    let told_again = described.lines().skip_while(|l| !l.starts_with("Events:")).any(|l| l.contains("(x"));
    assert!(!told_again, "a step told more than once:\n{described}");
    let reasons: Vec<&str> = events.iter().map(|(_, r)| r.as_str()).collect();
    assert!(events.iter().all(|(t, _)| t == "Normal"), "a warning in a successful import:\n{described}");
    let positions: Vec<usize> = reasons
        .iter()
        .map(|r| story.iter().position(|s| s == r).unwrap_or_else(|| panic!("unexpected event {r}:\n{described}")))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "events out of order {reasons:?}:\n{described}");
    for step in required {
        assert!(reasons.contains(step), "no {step} event:\n{described}");
    }
}

/// A tar of two small files, and the files.
fn make_archive(dir: &Path, www: &Path) -> Vec<(String, Vec<u8>)> {
    let src = dir.join("archive-src");
    std::fs::create_dir_all(&src).unwrap();
    let files = vec![
        ("hello.txt".to_string(), b"hello from a CDI archive import\n".to_vec()),
        ("data.bin".to_string(), (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()),
    ];
    for (name, bytes) in &files {
        std::fs::write(src.join(name), bytes).unwrap();
    }
    let status = std::process::Command::new("tar")
        .arg("-cf")
        .arg(www.join("archive.tar"))
        .arg("-C")
        .arg(&src)
        .args(files.iter().map(|(n, _)| n.as_str()))
        .status()
        .unwrap();
    assert!(status.success());
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn cdi_example_data_volumes_applied_with_kubectl_succeed_and_hold_the_image() {
    use base64::Engine as _;
    let env = Env::start(16).await;
    // Basic auth in front of the same image, as CDI's endpoint-secret example expects.
    let users = env.dir.path().join("htpasswd");
    std::fs::write(&users, "cdi-user:{PLAIN}cdi-password\n").unwrap();
    let conf = format!("auth_basic \"images\"; auth_basic_user_file {};", users.display());
    let nginx = crate::peers::Nginx::start(env.dir.path(), &env.www(), &conf, "");
    let files = make_archive(env.dir.path(), &env.www());
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);

    // CDI's manifests/example/import-kubevirt-datavolume.yaml, its Block variant, the
    // endpoint-secret example with an import that names it, the archive example, and the
    // blank example with its Block variant (sizes cut to 64Mi to keep the test frugal).
    let manifests = format!(
        r#"
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: "example-import-dv"
spec:
  source:
      http:
         url: "{url}" # S3 or GCS
         secretRef: "" # Optional
         certConfigMap: "" # Optional
  pvc:
    storageClassName: local-immediate
    accessModes:
      - ReadWriteOnce
    resources:
      requests:
        storage: "64Mi"
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: example-import-dv-block
spec:
  source:
    http:
      url: "{url}"
  pvc:
    volumeMode: Block
    storageClassName: local-immediate
    accessModes:
      - ReadWriteOnce
    resources:
      requests:
        storage: "64Mi"
---
apiVersion: v1
kind: Secret
metadata:
  name: endpoint-secret
  labels:
    app: containerized-data-importer
type: Opaque
data:
  accessKeyId: "{user}"  # <optional: your key or user name, base64 encoded>
  secretKey:    "{password}" # <optional: your secret or password, base64 encoded>
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: example-import-dv-auth
spec:
  source:
      http:
         url: "{auth_url}"
         secretRef: "endpoint-secret"
  pvc:
    storageClassName: local-immediate
    accessModes:
      - ReadWriteOnce
    resources:
      requests:
        storage: "64Mi"
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: example-archive-dv
spec:
  contentType: "archive"
  source:
      http:
         url: "{archive_url}"
  pvc:
    storageClassName: local-immediate
    accessModes:
      - ReadWriteOnce
    resources:
      requests:
        storage: "64Mi"
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: example-blank-dv
spec:
  source:
      blank: {{}}
  pvc:
    storageClassName: local-immediate
    accessModes:
      - ReadWriteOnce
    resources:
      requests:
        storage: 64Mi
---
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: example-blank-dv-block
spec:
  source:
      blank: {{}}
  pvc:
    volumeMode: Block
    storageClassName: local-immediate
    accessModes:
      - ReadWriteOnce
    resources:
      requests:
        storage: 64Mi
"#,
        url = env.server.url("disk.qcow2"),
        auth_url = nginx.url("http", "disk.qcow2"),
        archive_url = env.server.url("archive.tar"),
        user = b64("cdi-user"),
        password = b64("cdi-password"),
    );
    env.apply(&manifests).await;

    let names = [
        "example-import-dv",
        "example-import-dv-block",
        "example-import-dv-auth",
        "example-archive-dv",
        "example-blank-dv",
        "example-blank-dv-block",
    ];
    for name in names {
        env.wait_phase(name, DataVolumePhase::Succeeded).await;
    }
    // kubectl sees it the same way.
    env.kubectl(&["wait", "--for=condition=Ready", "dv/example-import-dv", "--timeout=30s"], None).await;

    let table = env.kubectl(&["get", "dv"], None).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"], "{table}");
    for name in names {
        let row = row(&table, name);
        assert_eq!(row.get(1..3), Some(&["Succeeded", "100.0%"][..]), "{table}");
    }
    // The short names work as with CDI.
    assert!(env.kubectl(&["get", "dvs", "example-import-dv", "-o", "name"], None).await.contains("example-import-dv"));

    // Content, with qemu-img as the oracle.
    for name in ["example-import-dv", "example-import-dv-auth"] {
        let pvc = env.pvc(name).await;
        qemu_same(&env.raw, &env.backing(&pvc).await.join("disk.img"), None);
    }
    let block = env.pvc("example-import-dv-block").await;
    qemu_same(&env.raw, &env.backing(&block).await, Some(16 << 20));
    let archive = env.backing(&env.pvc("example-archive-dv").await).await;
    for (name, bytes) in &files {
        assert_eq!(&std::fs::read(archive.join(name)).unwrap(), bytes, "{name} extracted");
    }
    assert!(nginx.detail_log().contains(&b64("cdi-user:cdi-password")), "the secret's credentials were sent");
    // Blank: an empty sparse disk.img of CDI's usable size, and a block volume of zeros.
    let disk = env.backing(&env.pvc("example-blank-dv").await).await.join("disk.img");
    let meta = std::fs::metadata(&disk).unwrap();
    let (size, usable) = (meta.len(), cdi_usable(&disk, 64 * MIB));
    // The file's own metadata blocks blur the free space by a little: one MiB of tolerance.
    assert!(size % MIB == 0 && size <= usable && size + MIB >= usable, "disk.img of {size} bytes; CDI makes {usable}");
    assert!(meta.blocks() * 512 <= 256 << 10, "the blank disk.img holds {} allocated bytes", meta.blocks() * 512);
    assert_eq!(read_all(&disk), (size, true), "the blank disk.img does not read as {size} zero bytes");
    let device = env.backing(&env.pvc("example-blank-dv-block").await).await;
    assert_eq!(read_all(&device), (64 * MIB, true), "the blank block volume does not read as 64 MiB of zeros");

    // The PVC is the DataVolume's: same name, controlled by it, filled through a
    // VolumeImportSource it owns.
    let dv: DataVolume = Api::default_namespaced(env.client()).get("example-import-dv").await.unwrap();
    let pvc = env.pvc("example-import-dv").await;
    let owner = &pvc.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("DataVolume", dv.metadata.uid.as_deref().unwrap(), Some(true))
    );
    let source_ref = pvc.spec.as_ref().unwrap().data_source_ref.as_ref().unwrap();
    assert_eq!(source_ref.name, format!("volume-import-source-{}", dv.metadata.uid.as_deref().unwrap()));
    let status = dv.status.as_ref().unwrap();
    assert_eq!(status.claim_name.as_deref(), Some("example-import-dv"));
    assert_eq!(condition(&dv, "Bound"), ("True".into(), "Bound".into()));
    assert_eq!(condition(&dv, "Ready").0, "True");
    assert_eq!(condition(&dv, "Running"), ("False".into(), "Completed".into()));

    // `kubectl describe dv` tells the story, in order, with CDI's reasons.
    let story = ["Pending", "ImportScheduled", "ImportInProgress", "Bound", "ImportSucceeded"];
    let described = env.kubectl(&["describe", "dv", "example-import-dv"], None).await;
    assert_story(&described, &story, &["Pending", "ImportInProgress", "Bound", "ImportSucceeded"]);
    // A blank disk may be made before a reconcile sees it in progress.
    let described = env.kubectl(&["describe", "dv", "example-blank-dv-block"], None).await;
    assert_story(&described, &story, &["Pending", "Bound", "ImportSucceeded"]);

    // CDI's upload example: made ready for an upload (upload.rs uploads into such DVs).
    env.apply(
        r#"
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: upload-datavolume
spec:
  source:
      upload: {}
  pvc:
    storageClassName: local-immediate
    accessModes:
      - ReadWriteOnce
    resources:
      requests:
        storage: 64Mi
"#,
    )
    .await;
    let upload =
        env.wait_dv("upload-datavolume", "UploadReady", |dv| phase_of(dv) == Some(DataVolumePhase::UploadReady)).await;
    assert_eq!(condition(&upload, "Running").0, "True", "{:?}", upload.status);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_wait_for_first_consumer_default_class_a_data_volume_waits_for_its_consumer() {
    let env = Env::start(8).await;
    // No class named: the default one, `local`, binds on first consumer.
    let manifest = format!(
        r#"
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: wffc-dv
spec:
  source:
    http:
      url: "{}"
  storage:
    resources:
      requests:
        storage: 64Mi
"#,
        env.server.url("disk.qcow2")
    );
    env.apply(&manifest).await;
    let dv = env.wait_phase("wffc-dv", DataVolumePhase::PendingPopulation).await;
    // VM-ready for KubeVirt in that phase; Ready itself stays False.
    assert_eq!(condition(&dv, "Ready").0, "False");
    let pvc = env.pvc("wffc-dv").await;
    let spec = pvc.spec.as_ref().unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some(cdi_e2e::cluster::CLASS_WFFC));
    assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
    assert_eq!(spec.access_modes.as_deref(), Some(&["ReadWriteOnce".to_string()][..]));
    let request = &spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0;
    let inflated: u64 = request.parse().expect("a byte count");
    assert_eq!(inflated, ((64u64 << 20) as f64 * 1.06).ceil() as u64, "the request is raised for filesystem overhead");
    assert_eq!(env.server.knobs.gets(), 0, "nothing is downloaded before a consumer exists");

    // The DataVolume's import source, deleted by mistake while the claim waits, comes back.
    let source = format!("volume-import-source-{}", dv.metadata.uid.as_deref().unwrap());
    let sources: Api<cdi_populator::api::VolumeImportSource> = Api::default_namespaced(env.client());
    let old_uid = sources.get(&source).await.unwrap().metadata.uid.unwrap();
    env.kubectl(&["delete", "volumeimportsource", &source], None).await;
    let back = await_condition(sources, &source, move |s: Option<&cdi_populator::api::VolumeImportSource>| {
        s.is_some_and(|s| s.metadata.uid.as_deref() != Some(old_uid.as_str()))
    });
    crate::common::within("the import source to be created again", back).await.unwrap();

    let consumer = r#"
apiVersion: v1
kind: Pod
metadata:
  name: vm
spec:
  containers:
  - name: vm
    image: busybox
    volumeMounts: [{name: disk, mountPath: /disk}]
  volumes:
  - name: disk
    persistentVolumeClaim: {claimName: wffc-dv}
"#;
    env.apply(consumer).await;
    env.wait_phase("wffc-dv", DataVolumePhase::Succeeded).await;
    let pvc = env.pvc("wffc-dv").await;
    let node = pvc.metadata.annotations.as_ref().unwrap()["volume.kubernetes.io/selected-node"].clone();
    qemu_same(&env.raw, &env.backing(&pvc).await.join("disk.img"), None);
    env.kubectl(&["wait", "--for=condition=Ready", "pod/vm", "--timeout=60s"], None).await;
    let ran_on = env.kubectl(&["get", "pod", "vm", "-o", "jsonpath={.spec.nodeName}"], None).await;
    assert_eq!(ran_on, node, "the consumer runs where the volume was filled");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_webhook_gone_an_invalid_data_volume_is_failed_with_the_webhooks_message_and_others_still_succeed() {
    let env = Env::start(8).await;
    let populator = env.system().populator_pid("cdi-populator-1").await.expect("the populator runs");
    // Without its configuration the API server asks no webhook and admits anything.
    env.kubectl(&["delete", "validatingwebhookconfiguration", "cdi-populator-webhook"], None).await;

    // Both spec.pvc and spec.storage: the webhook refuses it with this message.
    let message = "Duplicate storage definition, both target storage and target pvc defined";
    env.apply(
        r#"
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: two-targets
spec:
  source:
    blank: {}
  pvc:
    storageClassName: local-immediate
    accessModes: [ReadWriteOnce]
    resources: {requests: {storage: 64Mi}}
  storage:
    storageClassName: local-immediate
    resources: {requests: {storage: 64Mi}}
"#,
    )
    .await;
    let dv = env.wait_phase("two-targets", DataVolumePhase::Failed).await;
    let running = dv.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Running").unwrap();
    assert_eq!(
        (running.status.as_str(), running.reason.as_deref(), running.message.as_deref()),
        ("False", Some("Error"), Some(message)),
        "{running:?}"
    );
    let events = env.kubectl(&["get", "events", "--field-selector", "involvedObject.name=two-targets"], None).await;
    assert!(
        events.lines().any(|l| l.contains("Warning") && l.contains("ErrClaimNotValid") && l.contains(message)),
        "{events}"
    );
    assert!(env.pvc_opt("two-targets").await.is_none(), "no claim is made for an invalid DataVolume");

    // The populator did not fall over: same process, and a valid DataVolume still succeeds.
    let manifest = format!(
        r#"
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: valid
spec:
  source:
    http:
      url: "{}"
  storage:
    storageClassName: local-immediate
    resources:
      requests:
        storage: 64Mi
"#,
        env.server.url("disk.qcow2")
    );
    env.apply(&manifest).await;
    env.wait_phase("valid", DataVolumePhase::Succeeded).await;
    qemu_same(&env.raw, &env.backing(&env.pvc("valid").await).await.join("disk.img"), None);
    assert_eq!(env.system().populator_pid("cdi-populator-1").await, Some(populator), "the populator restarted");
    let failed = Api::<DataVolume>::default_namespaced(env.client()).get("two-targets").await.unwrap();
    assert_eq!(phase_of(&failed), Some(DataVolumePhase::Failed), "the invalid one stays Failed");
    env.stop().await;
}
