//! `cdi-e2e bench upload`: the reference image uploaded through the upload proxy into a
//! Block DataVolume, against `cdi-mover import` of the same file from nginx on loopback
//! (same bytes, one hop fewer) and against CDI's way (the upload written to a scratch
//! file, then `qemu-img convert` into the device), in alternating runs. Reports the upload
//! proxy's and the node mover's peak resident memory over the runs.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::wait::await_condition;

use cdi_populator::api::{CDIConfig, DataVolume, DataVolumePhase};

use super::{NAMESPACE, import_alone, median, sync, virtual_size, workdir};
use crate::cluster::CLASS_IMMEDIATE;
use crate::host;
use crate::procs::{self, Peaks, RoleSeconds};
use crate::system::{System, SystemConfig};
use crate::workload::{human, interruptible, secs};

#[derive(Debug, Clone)]
pub struct UploadArgs {
    pub image: std::path::PathBuf,
    pub runs: usize,
    /// To the proxy's endpoint, not through the NodePort.
    pub direct: bool,
    pub dir: Option<std::path::PathBuf>,
}

/// Targets of the issue this measures.
const VS_HTTP_TARGET: f64 = 1.3;
const VS_CDI_TARGET: f64 = 0.5;
const RSS_TARGET_MIB: u64 = 64;

pub async fn upload(args: UploadArgs) -> anyhow::Result<()> {
    let (dir, _temp) = workdir(args.dir.clone())?;
    let size = virtual_size(&args.image)?;
    let system = System::start(SystemConfig::new(dir.join("cluster"))?).await?;
    let outcome = interruptible(runs(&system, &dir, &args, size)).await;
    system.shutdown().await;
    outcome
}

#[derive(Debug, Clone, Copy)]
enum Way {
    Upload,
    Http,
    Cdi,
}

async fn runs(system: &System, dir: &Path, args: &UploadArgs, size: u64) -> anyhow::Result<()> {
    let (image, runs) = (args.image.as_path(), args.runs.max(1));
    let nginx = Nginx::start(dir, image)?;
    let url = format!("http://127.0.0.1:{}/{}", nginx.port, file_name(image));
    let proxy = if args.direct { endpoint_url(&system.client).await? } else { proxy_url(&system.client).await? };
    let request = format!("{}Mi", size.div_ceil(1 << 20) + 64);
    let via = if args.direct { "its endpoint, not the NodePort" } else { "the published NodePort" };
    println!(
        "image {} ({} virtual, {} file), proxy {proxy} ({via})",
        image.display(),
        human(size),
        human(image.metadata()?.len())
    );
    println!(
        "{:>4}  {:>12}  {:>12}  {:>12}  {:>9}  {:>9}",
        "run", "upload", "HTTP import", "CDI's way", "up/http", "up/cdi"
    );
    let (mut ups, mut https, mut cdis) = (Vec::new(), Vec::new(), Vec::new());
    let mut peaks = Peaks::default();
    let (mut costs, mut settles) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let mut order = [Way::Upload, Way::Http, Way::Cdi];
        order.rotate_left(run % 3);
        let (mut u, mut h, mut c) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for way in order {
            sync();
            match way {
                Way::Upload => {
                    let (settle, cost);
                    (u, settle, cost) =
                        upload_once(system, &proxy, image, &format!("up-{run}"), &request, &mut peaks).await?;
                    if run > 0 {
                        costs.push(cost);
                        settles.push(settle);
                    }
                }
                Way::Http => h = import_alone(&system.config.mover_binary, dir, &url, size).await?,
                Way::Cdi => c = cdi_way(dir, image, size).await?,
            }
        }
        let label = if run == 0 { "warm".to_string() } else { run.to_string() };
        let (rh, rc) = (u.as_secs_f64() / h.as_secs_f64(), u.as_secs_f64() / c.as_secs_f64());
        println!("{label:>4}  {:>12}  {:>12}  {:>12}  {rh:>9.3}  {rc:>9.3}", secs(u), secs(h), secs(c));
        if run > 0 {
            ups.push(u);
            https.push(h);
            cdis.push(c);
        }
    }
    let (u, h, c) = (median(ups), median(https), median(cdis));
    let (rh, rc) = (u.as_secs_f64() / h.as_secs_f64(), u.as_secs_f64() / c.as_secs_f64());
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("median of {runs}: upload {}, HTTP import {}, CDI's way {}", secs(u), secs(h), secs(c));
    println!("upload / HTTP import: {rh:.3}x (target <= {VS_HTTP_TARGET}: {})", met(rh <= VS_HTTP_TARGET));
    println!("upload / CDI's way:   {rc:.3}x (target <= {VS_CDI_TARGET}: {})", met(rc <= VS_CDI_TARGET));
    println!("scratch bytes: upload 0, CDI's way {} per run", human(image.metadata()?.len()));
    let cost = Cost::median(&costs);
    println!(
        "CPU per upload: client (curl) {:.2}s, upload proxy {:.2}s, node mover {:.2}s; the machine was {:.0}% busy on {} cores",
        cost.client,
        cost.proxy,
        cost.mover,
        cost.busy * 100.0,
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!("from the proxy's answer to the DataVolume's Succeeded: {}", secs(median(settles)));
    let (p, m) = (peaks.proxy_kib >> 10, peaks.mover_kib >> 10);
    println!(
        "peak RSS: upload proxy {p} MiB, node mover {m} MiB (target <= {RSS_TARGET_MIB} MiB each: {})",
        met(p <= RSS_TARGET_MIB && m <= RSS_TARGET_MIB)
    );
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

async fn proxy_url(client: &kube::Client) -> anyhow::Result<String> {
    let api: Api<CDIConfig> = Api::all(client.clone());
    let published = await_condition(api.clone(), "config", |c: Option<&CDIConfig>| {
        c.and_then(|c| c.status.as_ref()?.upload_proxy_url.clone()).is_some()
    });
    tokio::time::timeout(Duration::from_secs(60), published)
        .await
        .context("CDIConfig never published uploadProxyURL")??;
    let url = api.get("config").await?.status.and_then(|s| s.upload_proxy_url).unwrap_or_default();
    Ok(if url.contains("://") { url } else { format!("https://{url}") })
}

/// The upload proxy's first ready endpoint (`https://ip:port`), as its EndpointSlice lists it,
/// waiting for one to become ready.
async fn endpoint_url(client: &kube::Client) -> anyhow::Result<String> {
    use futures_util::StreamExt as _;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::runtime::{WatchStreamExt as _, watcher};
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "cdi-rs");
    let config = watcher::Config::default().labels("kubernetes.io/service-name=cdi-uploadproxy");
    let mut slices = std::pin::pin!(watcher::watcher(slices, config).default_backoff().applied_objects());
    let ready = async {
        while let Some(slice) = slices.next().await {
            let slice = slice?;
            let port = slice.ports.iter().flatten().find_map(|p| p.port);
            let ready = slice.endpoints.iter().find(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false));
            if let (Some(port), Some(address)) = (port, ready.and_then(|e| e.addresses.first())) {
                return Ok(format!("https://{address}:{port}"));
            }
        }
        bail!("the watch on cdi-uploadproxy's EndpointSlices ended")
    };
    tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .context("the cdi-uploadproxy Service got no ready endpoint within a minute")?
}

/// CPU seconds one upload cost each process on its path, and how busy the whole machine was
/// meanwhile (kernel threads writing back the volume included).
#[derive(Debug, Default, Clone, Copy)]
struct Cost {
    client: f64,
    proxy: f64,
    mover: f64,
    busy: f64,
}

impl Cost {
    fn median(costs: &[Cost]) -> Cost {
        let mid = |f: fn(&Cost) -> f64| median(costs.iter().map(f).collect());
        Cost { client: mid(|c| c.client), proxy: mid(|c| c.proxy), mover: mid(|c| c.mover), busy: mid(|c| c.busy) }
    }
}

/// The CPU clocks a [`Cost`] is the difference of.
struct CpuClocks {
    children: f64,
    roles: RoleSeconds,
    machine: (u64, u64),
}

impl CpuClocks {
    fn now() -> CpuClocks {
        CpuClocks { children: children_cpu_seconds(), roles: RoleSeconds::now(), machine: procs::machine_ticks() }
    }

    fn since(&self) -> Cost {
        let now = CpuClocks::now();
        let (busy, all) = (now.machine.0 - self.machine.0, now.machine.1 - self.machine.1);
        Cost {
            client: now.children - self.children,
            proxy: now.roles.proxy - self.roles.proxy,
            mover: now.roles.mover - self.roles.mover,
            busy: busy as f64 / all.max(1) as f64,
        }
    }
}

/// CPU seconds this process's reaped children have used (curl, once waited for).
fn children_cpu_seconds() -> f64 {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeValLike as _;
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .map_or(0.0, |u| (u.user_time().num_microseconds() + u.system_time().num_microseconds()) as f64 / 1e6)
}

/// An upload DataVolume until UploadReady, a token, `curl -T` of the image to the proxy,
/// until Succeeded; then the DataVolume is deleted. Timed from the POST to Succeeded, and from
/// the proxy's answer to Succeeded (the control plane's share).
async fn upload_once(
    system: &System,
    proxy: &str,
    image: &Path,
    name: &str,
    request: &str,
    peaks: &mut Peaks,
) -> anyhow::Result<(Duration, Duration, Cost)> {
    let client = &system.client;
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), NAMESPACE);
    let dv: DataVolume = serde_json::from_value(serde_json::json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": {"name": name},
        "spec": {"source": {"upload": {}}, "storage": {"storageClassName": CLASS_IMMEDIATE, "volumeMode": "Block",
            "resources": {"requests": {"storage": request}}}},
    }))?;
    dvs.create(&PostParams::default(), &dv).await.with_context(|| format!("creating DataVolume {name}"))?;
    let ready = await_condition(dvs.clone(), name, |d: Option<&DataVolume>| {
        d.and_then(|d| d.status.as_ref()?.phase.clone()) == Some(DataVolumePhase::UploadReady)
    });
    tokio::time::timeout(Duration::from_secs(120), ready)
        .await
        .with_context(|| format!("{name} never UploadReady"))??;
    let token = token(client, name).await?;
    let clocks = CpuClocks::now();
    let started = Instant::now();
    let mut curl = tokio::process::Command::new("curl")
        .args(["-sS", "-k", "--fail-with-body", "-o", "/dev/null", "-X", "POST", "-T"])
        .arg(image)
        .args(["-H", "Content-Type: application/octet-stream", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{proxy}/v1beta1/upload"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("running curl")?;
    // Sample memory while the bytes flow.
    let status = loop {
        tokio::select! {
            s = curl.wait() => break s?,
            () = tokio::time::sleep(Duration::from_millis(200)) => peaks.sample(None),
        }
    };
    if !status.success() {
        bail!("curl upload of {} to {proxy} failed ({status})", image.display());
    }
    let answered = started.elapsed();
    let done = await_condition(dvs.clone(), name, |d: Option<&DataVolume>| {
        d.and_then(|d| d.status.as_ref()?.phase.clone()) == Some(DataVolumePhase::Succeeded)
    });
    tokio::time::timeout(Duration::from_secs(120), done).await.with_context(|| format!("{name} never Succeeded"))??;
    let took = started.elapsed();
    let cost = clocks.since();
    peaks.sample(None);
    dvs.delete(name, &DeleteParams::default()).await?;
    let gone = await_condition(dvs, name, |d: Option<&DataVolume>| d.is_none());
    tokio::time::timeout(Duration::from_secs(120), gone).await.ok();
    Ok((took, took - answered, cost))
}

async fn token(client: &kube::Client, pvc: &str) -> anyhow::Result<String> {
    let gvk = GroupVersionKind::gvk("upload.cdi.kubevirt.io", "v1beta1", "UploadTokenRequest");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "uploadtokenrequests");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &resource);
    let mut req = DynamicObject::new("", &resource);
    req.metadata.name = None;
    req.metadata.generate_name = Some("token-for-bench-".into());
    req.data = serde_json::json!({"spec": {"pvcName": pvc}});
    let made = api.create(&PostParams::default(), &req).await.context("UploadTokenRequest")?;
    made.data["status"]["token"].as_str().map(str::to_string).context("UploadTokenRequest answered without a token")
}

/// CDI's upload: the body to a scratch file, then `qemu-img convert` into the device.
async fn cdi_way(dir: &Path, image: &Path, size: u64) -> anyhow::Result<Duration> {
    let backing = dir.join("cdi-way.img");
    host::sparse_file(&backing, size)?;
    let device = host::loop_attach(&backing)?;
    let scratch = dir.join("scratch.upload");
    let started = Instant::now();
    let copied = tokio::process::Command::new("cp").arg(image).arg(&scratch).status().await?;
    let converted = tokio::process::Command::new("qemu-img")
        .args(["convert", "-t", "none", "-n", "-W", "-O", "raw"])
        .arg(&scratch)
        .arg(&device)
        .status()
        .await?;
    sync();
    let took = started.elapsed();
    host::loop_detach(&device)?;
    std::fs::remove_file(&backing)?;
    std::fs::remove_file(&scratch)?;
    if !copied.success() || !converted.success() {
        bail!("CDI's way (cp + qemu-img convert) failed");
    }
    Ok(took)
}

/// nginx serving one file on a free loopback port (installed with apt when missing).
struct Nginx {
    port: u16,
    child: std::process::Child,
}

impl Nginx {
    fn start(dir: &Path, image: &Path) -> anyhow::Result<Nginx> {
        if std::process::Command::new("nginx").arg("-v").output().is_err() {
            let st = std::process::Command::new("sh")
                .args(["-c", "apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null"])
                .status()?;
            if !st.success() {
                bail!("cannot install nginx");
            }
        }
        let root = dir.join("nginx");
        std::fs::create_dir_all(root.join("www"))?;
        let link = root.join("www").join(file_name(image));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(image.canonicalize()?, &link)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = root.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off; master_process off; worker_processes 1; pid {root}/nginx.pid; error_log {root}/error.log;\n\
                 events {{}}\nhttp {{ access_log off; sendfile on; server {{ listen 127.0.0.1:{port}; root {root}/www; }} }}\n",
                root = root.display()
            ),
        )?;
        let child = std::process::Command::new("nginx").arg("-c").arg(&conf).arg("-p").arg(&root).spawn()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Nginx { port, child });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nginx did not listen on 127.0.0.1:{port}")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
