//! What the demo and the benchmarks put on a running [`System`](crate::system::System): a
//! local HTTP server for images, a VolumeImportSource, target PVCs with `dataSourceRef`,
//! DataVolumes, and ways to wait for and check their contents.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use sha2::Digest as _;

use cdi_populator::api::{DataVolume, DataVolumePhase};

use crate::system::pv_backing;

/// Serves the files of a directory over HTTP on 127.0.0.1 with a `Content-Length` and no
/// `Range` support, like a plain web server (the mover converts while it streams). Tests
/// steer it through its [`ServerKnobs`].
#[derive(Debug)]
pub struct ImageServer {
    addr: SocketAddr,
    pub knobs: Arc<ServerKnobs>,
    task: tokio::task::JoinHandle<()>,
}

/// What a test can see of and do to an [`ImageServer`].
#[derive(Debug, Default)]
pub struct ServerKnobs {
    /// GET requests answered so far (HEADs are not counted).
    pub gets: AtomicUsize,
    /// Answer this many GETs with 503 before serving again.
    pub fail_first: AtomicUsize,
    /// Bytes per second to serve at; 0 is as fast as possible.
    pub throttle: AtomicUsize,
}

impl ServerKnobs {
    pub fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

/// Throttled bodies go out in pieces of this size.
const THROTTLE_PIECE: usize = 64 << 10;

impl ImageServer {
    pub async fn start(root: PathBuf) -> anyhow::Result<ImageServer> {
        use axum::body::Body;
        use axum::extract::{Path as UrlPath, State};
        use axum::http::{Method, StatusCode, header};
        use axum::response::IntoResponse;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the image server")?;
        let addr = listener.local_addr()?;
        let knobs = Arc::new(ServerKnobs::default());
        let handler = |method: Method,
                       State((root, knobs)): State<(PathBuf, Arc<ServerKnobs>)>,
                       UrlPath(name): UrlPath<String>| async move {
            // One flat directory: a name with a separator is not one of its files.
            if name.contains('/') || name.starts_with('.') {
                return StatusCode::NOT_FOUND.into_response();
            }
            let Ok(file) = tokio::fs::File::open(root.join(&name)).await else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let Ok(meta) = file.metadata().await else { return StatusCode::NOT_FOUND.into_response() };
            let length = [(header::CONTENT_LENGTH, meta.len().to_string())];
            if method == Method::HEAD {
                return (StatusCode::OK, length, Body::empty()).into_response();
            }
            knobs.gets.fetch_add(1, Ordering::SeqCst);
            if knobs.fail_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response();
            }
            let rate = knobs.throttle.load(Ordering::SeqCst);
            let (piece, delay) = match rate {
                0 => (1 << 20, Duration::ZERO),
                rate => (THROTTLE_PIECE, Duration::from_secs_f64(THROTTLE_PIECE as f64 / rate as f64)),
            };
            let chunks = futures_util::stream::unfold(file, move |mut file| async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = bytes::BytesMut::with_capacity(piece);
                let read = (&mut file).take(piece as u64).read_buf(&mut buf).await;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                match read {
                    Ok(0) => None,
                    Ok(_) => Some((Ok::<_, std::io::Error>(buf.freeze()), file)),
                    Err(e) => Some((Err(e), file)),
                }
            });
            (StatusCode::OK, length, Body::from_stream(chunks)).into_response()
        };
        let app = axum::Router::new()
            .route("/{name}", axum::routing::get(handler).head(handler))
            .with_state((root, knobs.clone()));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(ImageServer { addr, knobs, task })
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Creates a VolumeImportSource for an HTTP URL.
pub async fn create_http_source(client: &kube::Client, namespace: &str, name: &str, url: &str) -> anyhow::Result<()> {
    let api: Api<cdi_populator::api::VolumeImportSource> = Api::namespaced(client.clone(), namespace);
    let source = serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "VolumeImportSource",
        "metadata": {"name": name},
        "spec": {"source": {"http": {"url": url}}},
    }))?;
    api.create(&PostParams::default(), &source).await.with_context(|| format!("creating VolumeImportSource {name}"))?;
    Ok(())
}

/// Filesystem or Block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Filesystem,
    Block,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Filesystem => "Filesystem",
            Mode::Block => "Block",
        }
    }
}

/// A target PVC populated from a VolumeImportSource.
pub fn target_pvc(name: &str, class: &str, mode: Mode, size: &str, source: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": class, "volumeMode": mode.as_str(),
            "resources": {"requests": {"storage": size}},
            "dataSourceRef": {"apiGroup": "cdi.kubevirt.io", "kind": "VolumeImportSource", "name": source},
        },
    }))
    .expect("a well-formed PVC")
}

pub fn is_bound(pvc: &PersistentVolumeClaim) -> bool {
    pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

pub fn annotation<'a>(pvc: &'a PersistentVolumeClaim, key: &str) -> Option<&'a str> {
    pvc.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

/// Watches the PVCs of a namespace until every named one is Bound, calling `on_change` with
/// each new version of them. Fails early when one of them fails terminally.
pub async fn until_bound(
    client: &kube::Client,
    namespace: &str,
    names: &[&str],
    mut on_change: impl FnMut(&PersistentVolumeClaim),
) -> anyhow::Result<()> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let mut bound = std::collections::HashSet::new();
    let mut events = std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = events.next().await {
        let pvc = match event.context("watching PVCs")? {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => p,
            _ => continue,
        };
        let name = pvc.metadata.name.clone().unwrap_or_default();
        if !names.contains(&name.as_str()) {
            continue;
        }
        on_change(&pvc);
        if annotation(&pvc, "cdi.kubevirt.io/storage.pod.phase") == Some("Failed") {
            let message = annotation(&pvc, "cdi.kubevirt.io/storage.condition.running.message").unwrap_or("");
            bail!("PVC {namespace}/{name} failed: {message}");
        }
        if is_bound(&pvc) {
            bound.insert(name);
            if bound.len() == names.len() {
                return Ok(());
            }
        }
    }
    bail!("the PVC watch ended")
}

/// The spec of a DataVolume importing `url` into a volume of `size` from `class`, in the
/// `storage` form (CDI completes access modes and overhead from the StorageProfile).
pub fn http_datavolume_spec(url: &str, class: &str, mode: Mode, size: &str) -> serde_json::Value {
    json!({
        "source": {"http": {"url": url}},
        "storage": {"storageClassName": class, "volumeMode": mode.as_str(), "resources": {"requests": {"storage": size}}},
    })
}

/// A DataVolume importing `url` (see [`http_datavolume_spec`]).
pub fn http_datavolume(name: &str, url: &str, class: &str, mode: Mode, size: &str) -> DataVolume {
    serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": name},
        "spec": http_datavolume_spec(url, class, mode, size),
    }))
    .expect("a well-formed DataVolume")
}

pub fn dv_phase(dv: &DataVolume) -> DataVolumePhase {
    dv.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or(DataVolumePhase::Unset)
}

/// Watches the DataVolumes of a namespace until every named one is Succeeded, calling
/// `on_change` with each new version of them. Fails early when one of them fails.
pub async fn until_succeeded(
    client: &kube::Client,
    namespace: &str,
    names: &[&str],
    mut on_change: impl FnMut(&DataVolume),
) -> anyhow::Result<()> {
    let api: Api<DataVolume> = Api::namespaced(client.clone(), namespace);
    let mut done = std::collections::HashSet::new();
    let mut events = std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = events.next().await {
        let dv = match event.context("watching DataVolumes")? {
            watcher::Event::Apply(d) | watcher::Event::InitApply(d) => d,
            _ => continue,
        };
        let name = dv.metadata.name.clone().unwrap_or_default();
        if !names.contains(&name.as_str()) {
            continue;
        }
        on_change(&dv);
        match dv_phase(&dv) {
            DataVolumePhase::Failed => {
                let conditions = dv.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
                let message = conditions.iter().find_map(|c| c.message.clone().filter(|m| !m.is_empty()));
                bail!("DataVolume {namespace}/{name} failed: {}", message.unwrap_or_default());
            }
            DataVolumePhase::Succeeded => {
                done.insert(name);
                if done.len() == names.len() {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
    bail!("the DataVolume watch ended")
}

/// Where a bound PVC's data is on this host: `disk.img` of a filesystem volume, the loop
/// device of a block one.
pub async fn volume_data(client: &kube::Client, pvc: &PersistentVolumeClaim) -> anyhow::Result<PathBuf> {
    let pv_name = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).context("PVC without a volume")?;
    let pv = Api::<PersistentVolume>::all(client.clone()).get(&pv_name).await?;
    let backing = pv_backing(&pv).context("not a mini-cluster PV")?;
    let block = pv.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block");
    Ok(if block { backing } else { backing.join("disk.img") })
}

/// SHA-256 of the first `len` bytes of a file or device, and whether every byte after them
/// is zero.
pub fn digest_prefix(path: &Path, len: u64) -> anyhow::Result<(String, bool)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            bail!("{} is shorter than {len} bytes", path.display());
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut rest_zero = true;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        rest_zero &= buf[..n].iter().all(|&b| b == 0);
    }
    Ok((hex(&hasher.finalize()), rest_zero))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a sample VM disk: `size` bytes virtual, with extents of random and of text-like
/// data and holes between them, as `disk.raw`, and its qcow2 (made by qemu-img) in `www/`.
pub fn sample_disk(dir: &Path, size: u64) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::FileExt as _;
    const MIB: u64 = 1 << 20;
    let raw = dir.join("disk.raw");
    let file = std::fs::File::create(&raw)?;
    file.set_len(size)?;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let text = b"cdi-rs fills PersistentVolumeClaims with VM disks. ";
    let mut at = 0;
    let mut chunk = vec![0u8; MIB as usize];
    // Every 96 MiB: 24 MiB of random bytes, then 16 MiB of text, then a hole.
    while at + 40 * MIB <= size {
        for i in 0..24 {
            for b in chunk.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            file.write_all_at(&chunk, at + i * MIB)?;
        }
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = text[i % text.len()];
        }
        for i in 24..40 {
            file.write_all_at(&chunk, at + i * MIB)?;
        }
        at += 96 * MIB;
    }
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    let qcow2 = www.join("disk.qcow2");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .context("running qemu-img (apt-get install qemu-utils)")?;
    if !status.success() {
        bail!("qemu-img convert failed: {status}");
    }
    Ok((raw, qcow2))
}

/// A human size: `2.0 GiB`.
pub use cdi_common::human_bytes as human;

/// Seconds as `1.23s`.
pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Runs `work` until it ends or Ctrl-C/SIGTERM comes, whichever is first, so the caller
/// can always clean up (loop devices, mounts, processes) afterwards.
pub async fn interruptible<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}
