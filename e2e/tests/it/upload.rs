//! Uploads end to end, cdi-rs installed from deploy/: a Python stand-in for `virtctl
//! image-upload` (written from its documented protocol) and our own `cdi-upload` client,
//! through the aggregated UploadTokenRequest API and the upload proxy's NodePort, into
//! DataVolumes and a PVC annotated `storage.upload.target`; Filesystem and Block; contents
//! checked with qemu-img. Then what must be refused: tokens for another claim, forged or
//! expired ones, a service account without the verb, and an upload cut short; and a 4 GiB
//! virtual upload with the proxy's and mover's peak memory measured.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use cdi_populator::api::names::annotations as key;
use cdi_populator::api::{DataVolume, DataVolumePhase};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{Api, PostParams};
use kube::runtime::wait::await_condition;
use serde_json::json;

use crate::common::within;
use crate::populate::Env;
use crate::sources::assert_holds;

const VIRTCTL: &str = include_str!("upload/virtctl.py");
const UPLOAD_WAIT: Duration = Duration::from_secs(240);

/// Runs the virtctl stand-in; insists on success and returns its stdout.
async fn virtctl(env: &Env, args: &[&str]) -> String {
    let out = python(env, VIRTCTL, args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        panic!(
            "virtctl stand-in {args:?} failed: {stdout}{}\npopulator log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            env.system.as_ref().unwrap().populator_log("cdi-populator-1")
        );
    }
    stdout
}

async fn python(env: &Env, script: &str, args: &[&str]) -> Output {
    let kubeconfig = env.system.as_ref().unwrap().cluster.kubeconfig_path();
    let run = |argv: Vec<String>| {
        let mut cmd = tokio::process::Command::new("python3");
        cmd.args(argv).env("KUBECONFIG", &kubeconfig).kill_on_drop(true).stdin(std::process::Stdio::null());
        async move { cmd.output().await.expect("python3 is installed") }
    };
    if !run(vec!["-c".into(), "import kubernetes".into()]).await.status.success() {
        let pip = run(["-m", "pip", "install", "--quiet", "kubernetes"].map(String::from).to_vec()).await;
        assert!(pip.status.success(), "pip install kubernetes: {}", String::from_utf8_lossy(&pip.stderr));
    }
    let mut argv = vec!["-c".to_string(), script.to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    within("the python script", run(argv)).await
}

fn sh(cmd: &str) {
    let st = std::process::Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(st.success(), "{cmd}");
}

async fn dv_phase(env: &Env, name: &str) -> Option<DataVolumePhase> {
    let dv = Api::<DataVolume>::default_namespaced(env.client()).get(name).await.unwrap();
    dv.status.and_then(|s| s.phase)
}

async fn wait_dv_phase(env: &Env, name: &str, phase: DataVolumePhase) {
    let api: Api<DataVolume> = Api::default_namespaced(env.client());
    let want = phase.clone();
    let reached = await_condition(api, name, move |dv: Option<&DataVolume>| {
        dv.and_then(|d| d.status.as_ref()?.phase.clone()) == Some(want.clone())
    });
    if tokio::time::timeout(UPLOAD_WAIT, reached).await.is_err() {
        panic!(
            "DataVolume {name} never reached {phase:?} (now {:?}); events {:?}\npopulator log:\n{}",
            dv_phase(env, name).await,
            env.events(name).await,
            env.system.as_ref().unwrap().populator_log("cdi-populator-1")
        );
    }
}

fn upload_dv(name: &str, mode: &str) -> DataVolume {
    serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name},
        "spec": {"source": {"upload": {}}, "storage": {"storageClassName": "local-immediate", "volumeMode": mode,
            "resources": {"requests": {"storage": "64Mi"}}}},
    }))
    .unwrap()
}

/// The upload proxy's URL as CDIConfig publishes it.
async fn proxy_url(env: &Env) -> String {
    let api: Api<cdi_populator::api::CDIConfig> = Api::all(env.client());
    let ready = await_condition(api.clone(), "config", |c: Option<&cdi_populator::api::CDIConfig>| {
        c.and_then(|c| c.status.as_ref()?.upload_proxy_url.clone()).is_some()
    });
    within("CDIConfig to publish the upload proxy URL", ready).await.unwrap();
    let url = api.get("config").await.unwrap().status.unwrap().upload_proxy_url.unwrap();
    if url.contains("://") { url } else { format!("https://{url}") }
}

fn insecure_client() -> reqwest::Client {
    reqwest::Client::builder().tls_danger_accept_invalid_certs(true).build().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn virtctl_uploads_qcow2_gz_xz_and_archives_into_data_volumes_and_a_pvc() {
    let env = Env::start(16, &[]).await;
    let dir = env.dir.path();
    let qcow2 = env.qcow2.display().to_string();
    let (gz, xz) = (dir.join("disk.qcow2.gz"), dir.join("disk.raw.xz"));
    sh(&format!("gzip -1 -c {qcow2} > {}", gz.display()));
    sh(&format!("xz -0 -T2 -c {} > {}", env.raw.display(), xz.display()));
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("hello.txt"), "hello upload\n").unwrap();
    std::fs::write(tree.join("sub/data.bin"), vec![7u8; 100_000]).unwrap();
    let tar = dir.join("tree.tar");
    sh(&format!("tar -C {} -cf {} .", tree.display(), tar.display()));

    let path = |p: &PathBuf| p.display().to_string();
    let out = virtctl(&env, &["dv", "up-qcow2", &qcow2, "64Mi", "Filesystem", "kubevirt"]).await;
    assert!(out.contains("uploaded async 200"), "virtctl takes the async path when HEAD says 200: {out}");
    virtctl(&env, &["dv", "up-gz", &path(&gz), "64Mi", "Block", "kubevirt"]).await;
    virtctl(&env, &["pvc", "up-xz", &path(&xz), "64Mi", "Filesystem", "kubevirt"]).await;
    virtctl(&env, &["dv", "up-tar", &path(&tar), "64Mi", "Filesystem", "archive"]).await;

    for name in ["up-qcow2", "up-gz"] {
        wait_dv_phase(&env, name, DataVolumePhase::Succeeded).await;
        assert_holds(&env, name, &env.raw).await;
    }
    assert_holds(&env, "up-xz", &env.raw).await;
    wait_dv_phase(&env, "up-tar", DataVolumePhase::Succeeded).await;
    let pvc = env.wait_bound("up-tar").await;
    let root = env.backing(&pvc).await;
    assert_eq!(std::fs::read_to_string(root.join("hello.txt")).unwrap(), "hello upload\n");
    assert_eq!(std::fs::read(root.join("sub/data.bin")).unwrap(), vec![7u8; 100_000]);
    // virtctl's completion check, on the claims themselves.
    let claims: Api<PersistentVolumeClaim> = Api::default_namespaced(env.client());
    for name in ["up-qcow2", "up-gz", "up-xz", "up-tar"] {
        let ann = claims.get(name).await.unwrap().metadata.annotations.unwrap_or_default();
        assert_eq!(ann.get(key::POD_PHASE).map(String::as_str), Some("Succeeded"), "{name}: {ann:?}");
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn our_client_uploads_into_block_and_filesystem_data_volumes() {
    let env = Env::start(16, &[]).await;
    let client = cdi_e2e::system::binaries_dir().unwrap().join("cdi-upload");
    let kubeconfig = env.system.as_ref().unwrap().cluster.kubeconfig_path();
    for (name, mode) in [("ours-fs", "filesystem"), ("ours-block", "block")] {
        let mut cmd = tokio::process::Command::new(&client);
        cmd.args(["dv", name, "--size", "64Mi", "--storage-class", "local-immediate", "--volume-mode", mode])
            .arg("--image-path")
            .arg(&env.qcow2)
            .arg("--insecure")
            .env("KUBECONFIG", &kubeconfig)
            .kill_on_drop(true);
        let out = within("cdi-upload", cmd.output()).await.unwrap();
        assert!(
            out.status.success(),
            "cdi-upload {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        wait_dv_phase(&env, name, DataVolumePhase::Succeeded).await;
        assert_holds(&env, name, &env.raw).await;
    }
    env.stop().await;
}

/// A token for `pvc` from the aggregated API, as `user` (None: the admin).
async fn token_for(env: &Env, pvc: &str) -> String {
    let body = json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
        "metadata": {"generateName": "token-"}, "spec": {"pvcName": pvc}});
    let out = kubectl_stdin(env, &["create", "-o", "json", "-f", "-"], &body.to_string()).await;
    assert!(out.status.success(), "token for {pvc}: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["status"]["token"].as_str().unwrap().to_string()
}

async fn kubectl_stdin(env: &Env, args: &[&str], stdin: &str) -> Output {
    use tokio::io::AsyncWriteExt as _;
    let kubeconfig = env.system.as_ref().unwrap().cluster.kubeconfig_path();
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(&kubeconfig).args(args).kill_on_drop(true);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).await.unwrap();
    within("kubectl", child.wait_with_output()).await.unwrap()
}

async fn post(url: &str, token: Option<&str>, body: Vec<u8>) -> (u16, String) {
    let mut req = insecure_client().post(format!("{url}/v1beta1/upload")).body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = within("the upload proxy to answer", req.send()).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_scoped_to_their_claim_and_short_lived_and_need_rbac() {
    let env = Env::start(16, &[]).await;
    let dvs: Api<DataVolume> = Api::default_namespaced(env.client());
    for name in ["alpha", "beta"] {
        dvs.create(&PostParams::default(), &upload_dv(name, "Filesystem")).await.unwrap();
    }
    for name in ["alpha", "beta"] {
        wait_dv_phase(&env, name, DataVolumePhase::UploadReady).await;
    }
    let url = proxy_url(&env).await;
    let image = std::fs::read(&env.qcow2).unwrap();

    // Another claim's token, a token from another key, an expired one, none at all.
    let alpha = token_for(&env, "alpha").await;
    let claims = |t: &str| {
        use base64::Engine as _;
        let part = t.split('.').nth(1).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap();
        serde_json::from_slice::<serde_json::Value>(&json).unwrap()
    };
    assert_eq!(claims(&alpha)["name"], "alpha");
    let beta = token_for(&env, "beta").await;
    use cdi_populator::upload::token::{Claims, SigningKey};
    let now = jiff::Timestamp::now().as_second();
    let foreign = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let forged = foreign.sign(&Claims::upload("default", "beta", now)).unwrap();
    // Refused before the body is read: a small body, so the client sees the answer.
    let small = vec![0u8; 4096];
    assert_eq!(post(&url, Some(&forged), small.clone()).await.0, 401, "a token signed by another key");
    let key: Secret =
        Api::namespaced(env.client(), cdi_e2e::system::NAMESPACE).get("cdi-upload-token-key").await.unwrap();
    let der = key.data.unwrap().remove("signing.key").unwrap().0;
    let cluster_key = SigningKey::from_pkcs8(&der).unwrap();
    let expired = cluster_key.sign(&Claims::upload("default", "beta", now - 3600)).unwrap();
    let (status, text) = post(&url, Some(&expired), small.clone()).await;
    assert_eq!(status, 401, "an expired token: {text}");
    assert!(text.contains("expired"), "{text}");
    assert!(matches!(post(&url, None, small.clone()).await.0, 400 | 401), "no token at all");
    // A good token, for another PVC: one that takes no upload.
    let plain = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "plain"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-immediate",
                 "resources": {"requests": {"storage": "64Mi"}}}});
    let out = kubectl_stdin(&env, &["apply", "-f", "-"], &plain.to_string()).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let request = json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
        "metadata": {"name": "t"}, "spec": {"pvcName": "plain"}});
    let out = kubectl_stdin(&env, &["create", "-f", "-"], &request.to_string()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("not an upload target"), "a token for plain: {stderr}");
    // Signed with the cluster's key all the same (as one issued before the claim changed).
    let other = cluster_key.sign(&Claims::upload("default", "plain", now)).unwrap();
    let (status, text) = post(&url, Some(&other), small).await;
    assert_eq!(status, 403, "another PVC's token, for one that takes no upload: {text}");
    assert_eq!(dv_phase(&env, "beta").await, Some(DataVolumePhase::UploadReady), "nothing refused changed beta");

    // An upload cut short leaves the claim ready for another try, then one that finishes.
    cut_short(&url, &beta, &image).await;
    wait_dv_phase(&env, "beta", DataVolumePhase::UploadReady).await;
    let (status, text) = post(&url, Some(&beta), image.clone()).await;
    assert_eq!(status, 200, "{text}");
    wait_dv_phase(&env, "beta", DataVolumePhase::Succeeded).await;
    assert_holds(&env, "beta", &env.raw).await;

    // A service account with rights on DataVolumes only may not ask for tokens.
    let rbac = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tenant"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "dv-only"},
         "rules": [{"apiGroups": ["cdi.kubevirt.io"], "resources": ["datavolumes"], "verbs": ["*"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "tenant-dv-only"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "dv-only"},
         "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": "default"}]}]});
    let out = kubectl_stdin(&env, &["apply", "-f", "-"], &rbac.to_string()).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let request = json!({"apiVersion": "upload.cdi.kubevirt.io/v1beta1", "kind": "UploadTokenRequest",
        "metadata": {"name": "t"}, "spec": {"pvcName": "alpha"}});
    let out =
        kubectl_stdin(&env, &["--as=system:serviceaccount:default:tenant", "create", "-f", "-"], &request.to_string())
            .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("forbidden"), "{stderr}");
    assert!(stderr.contains("uploadtokenrequests"), "{stderr}");
    env.stop().await;
}

/// Sends headers announcing the whole image and only half of it, then hangs up.
async fn cut_short(url: &str, token: &str, image: &[u8]) {
    let half = bytes::Bytes::copy_from_slice(&image[..image.len() / 2]);
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        vec![Ok(half), Err(std::io::Error::other("the uploader gave up"))];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let resp = insecure_client()
        .post(format!("{url}/v1beta1/upload"))
        .bearer_auth(token)
        .header("content-length", image.len())
        .body(body)
        .send()
        .await;
    assert!(resp.is_err() || !resp.unwrap().status().is_success(), "a cut upload is not a success");
}

/// 4 GiB virtual, 128 MiB of random data in four places; the rest holes.
fn four_gib_image(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    use std::io::{Seek as _, SeekFrom, Write as _};
    const MIB: u64 = 1 << 20;
    let raw = dir.join("big.raw");
    let mut f = std::fs::File::create(&raw).unwrap();
    f.set_len(4096 * MIB).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 32 * MIB as usize];
    for at in [0, 1024 * MIB, 2560 * MIB, 4064 * MIB] {
        for word in chunk.chunks_exact_mut(8) {
            // xorshift: incompressible enough that the qcow2 carries all 32 MiB.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    let qcow2 = dir.join("big.qcow2");
    sh(&format!("qemu-img convert -q -f raw -O qcow2 {} {}", raw.display(), qcow2.display()));
    (raw, qcow2)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_4_gib_virtual_upload_streams_through_proxy_and_mover_in_bounded_memory() {
    let env = Env::start(16, &[]).await;
    let (raw, qcow2) = four_gib_image(env.dir.path());
    let file_mib = std::fs::metadata(&qcow2).unwrap().len() >> 20;
    let client = cdi_e2e::system::binaries_dir().unwrap().join("cdi-upload");
    let kubeconfig = env.system.as_ref().unwrap().cluster.kubeconfig_path();
    let mut cmd = tokio::process::Command::new(&client);
    cmd.args(["dv", "big", "--size", "5Gi", "--storage-class", "local-immediate", "--insecure", "--image-path"])
        .arg(&qcow2)
        .env("KUBECONFIG", &kubeconfig)
        .kill_on_drop(true);
    let out = within("cdi-upload", cmd.output()).await.unwrap();
    assert!(out.status.success(), "cdi-upload: {}", String::from_utf8_lossy(&out.stderr));
    wait_dv_phase(&env, "big", DataVolumePhase::Succeeded).await;
    // Read while they run: the proxy and movers of this test's cluster only.
    let mut peaks = cdi_e2e::procs::Peaks::default();
    peaks.sample(Some(std::process::id()));
    let (proxy, mover) = (peaks.proxy_kib >> 10, peaks.mover_kib >> 10);
    eprintln!("4 GiB virtual ({file_mib} MiB qcow2) upload: peak RSS upload proxy {proxy} MiB, node mover {mover} MiB");
    assert!(proxy > 0 && mover > 0, "no upload proxy or mover found under this test: {peaks:?}");
    // Half the file (64 MiB, the bound): what holding the upload in memory would
    // cross even in this debug build (~31 and ~43 MiB when written).
    assert!(proxy < file_mib / 2 && mover < file_mib / 2, "{peaks:?} for a {file_mib} MiB upload");
    assert_holds(&env, "big", &raw).await;
    env.stop().await;
}
