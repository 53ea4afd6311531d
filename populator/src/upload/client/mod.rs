//! The upload client (`cdi-upload`): what `virtctl image-upload` does, with the same objects
//! and requests, so either works against either server.
//!
//! 1. Create the DataVolume (`source.upload`) or the PVC (annotation
//!    `cdi.kubevirt.io/storage.upload.target`), unless `--no-create`.
//! 2. Wait until it is ready: DataVolume phase `UploadReady`, PVC annotation
//!    `cdi.kubevirt.io/storage.pod.ready: "true"`.
//! 3. Ask for a token (`UploadTokenRequest`).
//! 4. Find the proxy: `--uploadproxy-url`, else CDIConfig `config`'s
//!    `spec.uploadProxyURLOverride`, else its `status.uploadProxyURL`.
//! 5. `HEAD /v1beta1/upload-async`: 200 chooses it, else `/v1beta1/upload`; POST the file,
//!    streamed, with its Content-Length; a 401 gets a new token (at most 3), a 503 or a
//!    broken connection is retried (at most 5 times, from the start: a cut upload commits
//!    nothing).
//! 6. Wait for the PVC's `cdi.kubevirt.io/storage.pod.phase: Succeeded`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use cdi_common::backoff::Backoff;
use clap::{ArgGroup, Parser, ValueEnum};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};

use crate::api::names::annotations as ann;

/// Tokens asked for after a 401 before giving up.
const MAX_TOKENS: u32 = 3;
/// Attempts after a 503 or a broken connection.
const MAX_RETRIES: u32 = 5;
/// Bytes per read of the file.
const READ_CHUNK: usize = 1024 * 1024;
/// Before retrying an interrupted upload (virtctl's interval).
const POLL: Duration = Duration::from_secs(2);
/// Between readiness and completion checks: soon at first, as both usually follow within
/// moments (the proxy answers once the image is committed), then virtctl's interval. With a
/// fixed 2 s the first completion check just missed, and every upload ended with a 2 s wait.
const CHECKS: Backoff = Backoff::new(Duration::from_millis(100), POLL);

/// Upload a disk image (or a tar archive) into a new or existing DataVolume or
/// PVC, as `virtctl image-upload` does.
#[derive(Debug, Parser)]
#[command(name = "cdi-upload", version)]
#[command(group(ArgGroup::new("source").required(true).args(["image_path", "archive_path"])))]
pub struct Args {
    /// What to upload into: a DataVolume (`dv`) or a PVC (`pvc`).
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// The disk image to upload (raw, qcow2, ... optionally gz/xz/zst compressed).
    #[arg(long, value_name = "FILE")]
    pub image_path: Option<PathBuf>,
    /// A tar archive to extract into the volume (content type `archive`) instead.
    #[arg(long, value_name = "TAR")]
    pub archive_path: Option<PathBuf>,
    /// The namespace (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The size of the volume to create, e.g. 10Gi (required unless --no-create).
    #[arg(long)]
    pub size: Option<String>,
    /// The storage class of the volume to create.
    #[arg(long)]
    pub storage_class: Option<String>,
    /// The volume mode of the volume to create.
    #[arg(long)]
    pub volume_mode: Option<VolumeMode>,
    /// The access mode of the volume to create (e.g. ReadWriteOnce).
    #[arg(long)]
    pub access_mode: Option<String>,
    /// Upload into an existing DataVolume or PVC instead of creating one.
    #[arg(long)]
    pub no_create: bool,
    /// Do not check the proxy's certificate.
    #[arg(long)]
    pub insecure: bool,
    /// The upload proxy's URL (default: from CDIConfig).
    #[arg(long, value_name = "URL")]
    pub uploadproxy_url: Option<String>,
    /// Populate now even if the storage class waits for a first consumer.
    #[arg(long)]
    pub force_bind: bool,
    /// Seconds to wait for the volume to become ready for the upload.
    #[arg(long, default_value_t = 300)]
    pub wait_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Dv,
    Pvc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VolumeMode {
    Block,
    Filesystem,
}

impl VolumeMode {
    fn as_k8s(self) -> &'static str {
        match self {
            VolumeMode::Block => "Block",
            VolumeMode::Filesystem => "Filesystem",
        }
    }
}

impl Args {
    /// The file and whether it is an archive.
    pub fn file(&self) -> (&Path, bool) {
        match (&self.image_path, &self.archive_path) {
            (Some(p), _) => (p, false),
            (None, Some(p)) => (p, true),
            // clap's group makes one of them required.
            (None, None) => (Path::new(""), false),
        }
    }

    /// Checks what clap cannot.
    ///
    /// # Errors
    /// A missing --size when creating.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.no_create && self.size.is_none() {
            bail!("--size is required to create the {} (or pass --no-create)", self.kind_name());
        }
        Ok(())
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Dv => "DataVolume",
            Kind::Pvc => "PVC",
        }
    }

    fn content_type(&self) -> &'static str {
        if self.file().1 { "archive" } else { "kubevirt" }
    }

    /// The DataVolume to create.
    pub fn data_volume(&self) -> serde_json::Value {
        let mut storage = serde_json::json!({"resources": {"requests": {"storage": self.size}}});
        self.fill_storage(&mut storage);
        let mut annotations = serde_json::Map::new();
        if self.force_bind {
            annotations.insert(ann::BIND_IMMEDIATE_REQUESTED.into(), "true".into());
        }
        serde_json::json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1",
            "kind": "DataVolume",
            "metadata": {"name": self.name, "annotations": annotations},
            "spec": {"source": {"upload": {}}, "contentType": self.content_type(), "storage": storage},
        })
    }

    /// The PVC to create: an upload target, sized and shaped as asked.
    pub fn pvc(&self) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "resources": {"requests": {"storage": self.size}},
            "accessModes": [self.access_mode.as_deref().unwrap_or("ReadWriteOnce")],
        });
        self.fill_storage(&mut spec);
        let mut annotations = serde_json::Map::new();
        annotations.insert(ann::reserved::UPLOAD_TARGET.into(), "".into());
        annotations.insert(ann::CONTENT_TYPE.into(), self.content_type().into());
        if self.force_bind {
            annotations.insert(ann::BIND_IMMEDIATE_REQUESTED.into(), "true".into());
        }
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": self.name, "annotations": annotations,
                         "labels": {"cdi.kubevirt.io/applyStorageProfile": "true"}},
            "spec": spec,
        })
    }

    fn fill_storage(&self, spec: &mut serde_json::Value) {
        if let Some(class) = &self.storage_class {
            spec["storageClassName"] = class.as_str().into();
        }
        if let Some(mode) = self.volume_mode {
            spec["volumeMode"] = mode.as_k8s().into();
        }
        if let Some(access) = &self.access_mode {
            spec["accessModes"] = serde_json::json!([access]);
        }
    }
}

/// Where tokens come from: an `UploadTokenRequest` each time (a fake in tests).
pub trait TokenSource {
    fn token(&mut self) -> impl Future<Output = anyhow::Result<String>> + Send;
}

/// Tokens from the cluster's aggregated upload API.
#[derive(Clone)]
pub struct ClusterTokens {
    pub client: kube::Client,
    pub namespace: String,
    pub pvc: String,
}

impl std::fmt::Debug for ClusterTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTokens").field("namespace", &self.namespace).field("pvc", &self.pvc).finish()
    }
}

impl TokenSource for ClusterTokens {
    async fn token(&mut self) -> anyhow::Result<String> {
        let gvk = GroupVersionKind::gvk("upload.cdi.kubevirt.io", "v1beta1", "UploadTokenRequest");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "uploadtokenrequests");
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.namespace, &resource);
        let request: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "upload.cdi.kubevirt.io/v1beta1",
            "kind": "UploadTokenRequest",
            "metadata": {"generateName": "token-for-cdi-upload-", "namespace": self.namespace},
            "spec": {"pvcName": self.pvc},
        }))?;
        let answer = api.create(&PostParams::default(), &request).await.with_context(|| {
            format!("requesting an upload token for PVC {}/{} (UploadTokenRequest)", self.namespace, self.pvc)
        })?;
        answer.data["status"]["token"].as_str().filter(|t| !t.is_empty()).map(str::to_string).ok_or_else(|| {
            anyhow::anyhow!("the UploadTokenRequest for PVC {}/{} returned no token", self.namespace, self.pvc)
        })
    }
}

/// The HTTP client: the proxy's CA when known, else the system's roots; `insecure` checks
/// nothing.
///
/// # Errors
/// An unusable CA.
pub fn http_client(ca_pem: Option<&[u8]>, insecure: bool) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(30));
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem).context("the upload proxy's CA is not PEM")?;
        builder = builder.tls_certs_merge(certs);
    }
    if insecure {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    builder.build().context("setting up the HTTP client")
}

/// `https://` added when the URL names no scheme, as virtctl does; no trailing slash.
pub fn proxy_base(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") { url.to_string() } else { format!("https://{url}") }
}

/// Uploads `file` to the proxy at `base`; returns the bytes sent.
///
/// # Errors
/// A refusal the retries do not cure, with the proxy's reason.
pub async fn upload_file<T: TokenSource>(
    http: &reqwest::Client,
    base: &str,
    file: &Path,
    tokens: &mut T,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    let len = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?.len();
    let mut token = tokens.token().await?;
    let probe =
        http.head(format!("{base}/v1beta1/upload-async")).header(AUTHORIZATION, format!("Bearer {token}")).send().await;
    let path = match probe {
        Ok(r) if r.status() == StatusCode::OK => "/v1beta1/upload-async",
        _ => "/v1beta1/upload",
    };
    let (mut tokens_used, mut retries) = (1, 0);
    loop {
        progress.set_length(len);
        progress.set_position(0);
        let body = reqwest::Body::wrap_stream(read_stream(file.to_path_buf(), progress.clone()));
        let sent = http
            .post(format!("{base}{path}"))
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) if retries < MAX_RETRIES => {
                retries += 1;
                progress.println(format!("upload interrupted ({e}); retrying ({retries}/{MAX_RETRIES})"));
                tokio::time::sleep(POLL).await;
                continue;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("uploading to {base}{path}"))),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(len);
        }
        let wait =
            response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let reason = response.text().await.unwrap_or_default();
        let reason = reason.trim();
        match status {
            StatusCode::UNAUTHORIZED if tokens_used < MAX_TOKENS => {
                tokens_used += 1;
                token = tokens.token().await?;
            }
            StatusCode::SERVICE_UNAVAILABLE if wait.is_some() && retries < MAX_RETRIES => {
                retries += 1;
                progress.println(format!("{reason}; retrying ({retries}/{MAX_RETRIES})"));
                tokio::time::sleep(Duration::from_secs(wait.unwrap_or(5).min(60))).await;
            }
            _ => bail!("the upload proxy refused the upload ({status}): {reason}"),
        }
    }
}

/// The file's bytes, read on a thread of their own (tokio's `fs` is not in this build) and
/// counted on `progress` as they are handed to the connection.
fn read_stream(
    file: PathBuf,
    progress: indicatif::ProgressBar,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut f = match std::fs::File::open(&file) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        loop {
            // `read_to_end` reads a File into spare capacity without zeroing it first, which
            // `vec![0; READ_CHUNK]` did for every megabyte sent.
            let mut buf = Vec::with_capacity(READ_CHUNK);
            match f.by_ref().take(READ_CHUNK as u64).read_to_end(&mut buf) {
                Ok(0) => return,
                Ok(_) => {
                    if tx.blocking_send(Ok(buf)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    futures_util::stream::unfold((rx, progress), |(mut rx, progress)| async move {
        let chunk = rx.recv().await?;
        if let Ok(c) = &chunk {
            progress.inc(c.len() as u64);
        }
        Some((chunk, (rx, progress)))
    })
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} [{wide_bar}] {binary_bytes_per_sec} ETA {eta}")
    {
        bar.set_style(style);
    }
    bar
}

fn annotation<'a>(pvc: &'a PersistentVolumeClaim, key: &str) -> Option<&'a str> {
    pvc.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

fn data_volumes(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("cdi.kubevirt.io", "v1beta1", "DataVolume");
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk_with_plural(&gvk, "datavolumes"))
}

/// Runs `cdi-upload`.
///
/// # Errors
/// Any step that fails, saying which.
pub async fn run(args: Args) -> anyhow::Result<()> {
    args.validate()?;
    let (file, _) = args.file();
    let len = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?.len();
    let client = kube::Client::try_default().await.context("connecting to the cluster (KUBECONFIG)")?;
    let namespace = args.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let what = format!("{} {namespace}/{}", args.kind_name(), args.name);

    if args.no_create {
        let pvc =
            pvcs.get_opt(&args.name).await?.with_context(|| format!("PVC {namespace}/{} not found", args.name))?;
        if annotation(&pvc, ann::POD_PHASE) == Some("Succeeded") {
            bail!("PVC {namespace}/{} already holds a completed upload", args.name);
        }
    } else {
        let made = match args.kind {
            Kind::Dv => {
                let dv: DynamicObject = serde_json::from_value(args.data_volume())?;
                data_volumes(&client, &namespace).create(&PostParams::default(), &dv).await.map(|_| ())
            }
            Kind::Pvc => {
                let pvc: PersistentVolumeClaim = serde_json::from_value(args.pvc())?;
                pvcs.create(&PostParams::default(), &pvc).await.map(|_| ())
            }
        };
        match made {
            Ok(()) => eprintln!("{what} created"),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                bail!("{what} already exists; pass --no-create to upload into it")
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("creating {what}"))),
        }
    }

    eprintln!("waiting for {what} to be ready for the upload...");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_secs);
    for check in 1.. {
        let ready = match args.kind {
            Kind::Dv => {
                let dv = data_volumes(&client, &namespace)
                    .get(&args.name)
                    .await
                    .with_context(|| format!("reading {what}"))?;
                let phase = dv.data["status"]["phase"].as_str().unwrap_or_default().to_string();
                if matches!(phase.as_str(), "WaitForFirstConsumer" | "PendingPopulation") && !args.force_bind {
                    bail!("{what} waits for a first consumer ({phase}); pass --force-bind to upload now");
                }
                if phase == "Failed" {
                    bail!("{what} failed");
                }
                phase == "UploadReady"
            }
            Kind::Pvc => {
                let pvc = pvcs.get(&args.name).await.with_context(|| format!("reading {what}"))?;
                annotation(&pvc, ann::POD_READY) == Some("true")
            }
        };
        if ready {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{what} was not ready for an upload within {} s", args.wait_secs);
        }
        tokio::time::sleep(CHECKS.delay(check)).await;
    }

    let (base, ca) = proxy_url(&client, args.uploadproxy_url.as_deref()).await?;
    let http = http_client(if args.insecure { None } else { ca.as_deref().map(str::as_bytes) }, args.insecure)?;
    let mut tokens = ClusterTokens { client: client.clone(), namespace: namespace.clone(), pvc: args.name.clone() };
    eprintln!("uploading {} ({len} bytes) to {base}", file.display());
    let bar = progress_bar();
    upload_file(&http, &base, file, &mut tokens, &bar).await?;
    bar.finish();

    eprintln!("waiting for {what} to be processed...");
    for check in 1.. {
        let pvc = pvcs.get(&args.name).await.with_context(|| format!("reading PVC {namespace}/{}", args.name))?;
        if annotation(&pvc, ann::POD_PHASE) == Some("Succeeded") {
            break;
        }
        tokio::time::sleep(CHECKS.delay(check)).await;
    }
    eprintln!("uploading {} to {what} completed successfully", file.display());
    Ok(())
}

/// The proxy's URL and CA (PEM) from CDIConfig `config` unless given.
async fn proxy_url(client: &kube::Client, flag: Option<&str>) -> anyhow::Result<(String, Option<String>)> {
    let gvk = GroupVersionKind::gvk("cdi.kubevirt.io", "v1beta1", "CDIConfig");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, "cdiconfigs"));
    let config = api.get_opt("config").await.ok().flatten();
    let field = |path: &[&str]| {
        let mut v = config.as_ref().map(|c| &c.data)?;
        for p in path {
            v = v.get(p)?;
        }
        v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
    };
    let ca = field(&["status", "uploadProxyCA"]);
    let url = match flag {
        Some(u) => u.to_string(),
        None => field(&["spec", "uploadProxyURLOverride"])
            .or_else(|| field(&["status", "uploadProxyURL"]))
            .context("no upload proxy URL: CDIConfig config has none; pass --uploadproxy-url")?,
    };
    Ok((proxy_base(&url), ca))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("cdi-upload").chain(args.iter().copied()))
    }

    #[tokio::test]
    async fn the_file_is_sent_whole_in_chunks_of_at_most_a_read() {
        use futures_util::StreamExt as _;
        let path = std::env::temp_dir().join(format!("cdi-upload-read-{}", std::process::id()));
        let bytes: Vec<u8> = (0..READ_CHUNK * 5 / 2 + 7).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let progress = indicatif::ProgressBar::hidden();
        let chunks: Vec<Vec<u8>> =
            read_stream(path.clone(), progress.clone()).map(Result::unwrap).collect::<Vec<_>>().await;
        std::fs::remove_file(&path).unwrap();
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [READ_CHUNK, READ_CHUNK, READ_CHUNK / 2 + 7]);
        assert_eq!(chunks.concat(), bytes);
        assert_eq!(progress.position(), bytes.len() as u64);
    }

    #[test]
    fn completion_is_checked_within_moments_then_at_virtctls_interval() {
        let delays: Vec<u64> = (1..=7).map(|n| CHECKS.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn virtctl_style_arguments_parse() {
        let a = parse(&["dv", "disk", "--image-path", "/tmp/d.qcow2", "--size", "10Gi", "-n", "vms", "--force-bind"])
            .unwrap();
        assert_eq!((a.kind, a.name.as_str(), a.namespace.as_deref()), (Kind::Dv, "disk", Some("vms")));
        assert_eq!(a.file(), (Path::new("/tmp/d.qcow2"), false));
        a.validate().unwrap();
        let dv = a.data_volume();
        assert_eq!(dv["spec"]["source"]["upload"], serde_json::json!({}));
        assert_eq!(dv["spec"]["contentType"], "kubevirt");
        assert_eq!(dv["spec"]["storage"]["resources"]["requests"]["storage"], "10Gi");
        assert_eq!(dv["metadata"]["annotations"][ann::BIND_IMMEDIATE_REQUESTED], "true");

        let a = parse(&[
            "pvc",
            "data",
            "--archive-path",
            "a.tar",
            "--size",
            "1Gi",
            "--volume-mode",
            "filesystem",
            "--storage-class",
            "fast",
            "--access-mode",
            "ReadWriteMany",
        ])
        .unwrap();
        let pvc = a.pvc();
        assert_eq!(pvc["metadata"]["annotations"][ann::reserved::UPLOAD_TARGET], "");
        assert_eq!(pvc["metadata"]["annotations"][ann::CONTENT_TYPE], "archive");
        assert_eq!(pvc["spec"]["volumeMode"], "Filesystem");
        assert_eq!(pvc["spec"]["storageClassName"], "fast");
        assert_eq!(pvc["spec"]["accessModes"], serde_json::json!(["ReadWriteMany"]));
        serde_json::from_value::<PersistentVolumeClaim>(pvc).unwrap();
    }

    #[test]
    fn bad_argument_combinations_are_refused() {
        assert!(parse(&["dv", "disk", "--size", "1Gi"]).is_err(), "no file");
        assert!(parse(&["dv", "disk", "--image-path", "a", "--archive-path", "b", "--size", "1Gi"]).is_err());
        assert!(parse(&["vm", "disk", "--image-path", "a"]).is_err(), "unknown kind");
        assert!(parse(&["pvc", "disk", "--image-path", "a", "--volume-mode", "tape"]).is_err());
        let err = parse(&["pvc", "disk", "--image-path", "a"]).unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("--size"), "{err}");
        parse(&["pvc", "disk", "--image-path", "a", "--no-create"]).unwrap().validate().unwrap();
    }

    #[test]
    fn proxy_urls_get_https_when_they_name_no_scheme() {
        assert_eq!(proxy_base("10.0.0.1:31001"), "https://10.0.0.1:31001");
        assert_eq!(proxy_base("https://proxy.example/"), "https://proxy.example");
        assert_eq!(proxy_base("http://127.0.0.1:8443"), "http://127.0.0.1:8443");
    }
}
