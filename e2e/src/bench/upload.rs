//! `cdi-e2e bench upload`: the reference image uploaded through the upload proxy into a
//! Block DataVolume, by this project's `cdi-upload` and by curl, against `cdi-mover import`
//! of the same file from nginx on loopback (same bytes, one hop fewer) and against CDI's way
//! (curl's upload through a TLS proxy to a server writing a scratch file, fsync'ed as CDI's
//! upload server does, then `qemu-img info` and `qemu-img convert` into the device with CDI's
//! arguments), in alternating runs. CDI's way without its upload (a local `cp`
//! to the scratch file, then the convert) is timed too, as a lower bound of it, and so is the
//! convert of the local image straight into a device: writing it once, about the floor of
//! every way on this disk. Reports the upload proxy's and the node mover's peak resident memory.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::wait::await_condition;

use cdi_populator::api::{CDIConfig, DataVolume, DataVolumePhase};

use super::nginx::{FileServer, ScratchUpload};
use super::{
    LoopDevice, NAMESPACE, delete_datavolume, ensure_package, import_alone, median, sync, virtual_size, workdir,
};
use crate::cluster::CLASS_IMMEDIATE;
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

/// What sends the upload. Every run times both: on loopback the client shares the machine's
/// cores with the proxy and the mover, so what its own TLS costs shows in the upload's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UploadClient {
    /// This project's `cdi-upload`, which asks for its own token as a user's run of it does.
    CdiUpload,
    /// `curl`, with a token asked for beforehand; CDI's way is timed with it too.
    Curl,
}

/// Targets of the issue this measures.
const VS_HTTP_TARGET: f64 = 1.3;
const VS_CDI_TARGET: f64 = 0.5;
const RSS_TARGET_MIB: u64 = 64;

pub async fn upload(args: UploadArgs) -> anyhow::Result<()> {
    let (dir, _temp) = workdir(args.dir.clone())?;
    let size = virtual_size(&args.image)?;
    // The NodePort is routed in the kernel, as kube-proxy does, only where `nft` is here.
    if let Err(e) = ensure_package("nft", "nftables") {
        tracing::warn!(error = %e, "the NodePort will be relayed in userspace");
    }
    let system = System::start(SystemConfig::new(dir.join("cluster"))?).await?;
    let outcome = interruptible(runs(&system, &dir, &args, size)).await;
    system.shutdown().await;
    outcome
}

#[derive(Debug, Clone, Copy)]
enum Way {
    Upload(UploadClient),
    Http,
    Cdi,
    /// CDI's way with a local copy in place of its upload.
    CdiLocal,
    /// `qemu-img convert` of the local image straight into a device: the image written once,
    /// with no network, about as fast as any way can put it on this disk.
    Convert,
}

/// One client's uploads over the measured runs.
#[derive(Default)]
struct Uploads {
    times: Vec<Duration>,
    costs: Vec<Cost>,
    /// curl: from the proxy's answer to Succeeded. cdi-upload, which checks for Succeeded
    /// itself: from Succeeded to its exit, what its user waits for past the upload.
    settles: Vec<Duration>,
}

async fn runs(system: &System, dir: &Path, args: &UploadArgs, size: u64) -> anyhow::Result<()> {
    let (image, runs) = (args.image.as_path(), args.runs.max(1));
    let nginx = FileServer::start(dir, image)?;
    let url = format!("http://127.0.0.1:{}/{}", nginx.port, file_name(image));
    let scratch = ScratchUpload::start(dir)?;
    let proxy = if args.direct { endpoint_url(&system.client).await? } else { proxy_url(&system.client).await? };
    let request = format!("{}Mi", size.div_ceil(1 << 20) + 64);
    let via = match (args.direct, system.cluster.services_in_kernel()) {
        (true, _) => "its endpoint, not the NodePort",
        (false, true) => "the published NodePort, routed by the kernel",
        (false, false) => "the published NodePort, relayed in userspace: nftables is not usable here",
    };
    println!(
        "image {} ({} virtual, {} file), proxy {proxy} ({via})",
        image.display(),
        human(size),
        human(image.metadata()?.len())
    );
    println!(
        "{:>4}  {:>10}  {:>10}  {:>11}  {:>10}  {:>10}  {:>8}  {:>9}  {:>9}  {:>9}  {:>9}",
        "run",
        "cdi-upload",
        "curl",
        "HTTP import",
        "CDI's way",
        "cp+convert",
        "convert",
        "ours/http",
        "curl/http",
        "ours/cdi",
        "curl/cdi"
    );
    let (mut ours, mut curl) = (Uploads::default(), Uploads::default());
    let (mut https, mut cdis, mut locals, mut converts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut peaks = Peaks::default();
    for run in 0..=runs {
        let mut order = [
            Way::Upload(UploadClient::CdiUpload),
            Way::Upload(UploadClient::Curl),
            Way::Http,
            Way::Cdi,
            Way::CdiLocal,
            Way::Convert,
        ];
        let ways = order.len();
        order.rotate_left(run % ways);
        // Every other run backwards: rotation alone keeps each way behind the same one, and
        // whatever that one leaves on the disk would weigh on it in every run.
        if run % 2 == 1 {
            order.reverse();
        }
        let (mut by_ours, mut by_curl, mut h, mut c, mut l, mut v) = Default::default();
        for way in order {
            sync().await;
            match way {
                Way::Upload(with) => {
                    let name = format!("up-{run}-{}", with.name());
                    let (took, settle, cost) =
                        upload_once(system, with, &proxy, image, &name, &request, &mut peaks).await?;
                    let (time, into) =
                        if with == UploadClient::Curl { (&mut by_curl, &mut curl) } else { (&mut by_ours, &mut ours) };
                    *time = took;
                    if run > 0 {
                        into.costs.push(cost);
                        into.settles.push(settle);
                    }
                }
                Way::Http => h = import_alone(&system.config.mover_binary, dir, &url, size).await?,
                Way::Cdi => c = cdi_way(dir, Scratch::Uploaded(&scratch), image, size).await?,
                Way::CdiLocal => l = cdi_way(dir, Scratch::Copied, image, size).await?,
                Way::Convert => v = convert_alone(dir, image, size).await?,
            }
        }
        let label = if run == 0 { "warm".to_string() } else { run.to_string() };
        let ratio = |up: Duration, base: Duration| up.as_secs_f64() / base.as_secs_f64();
        println!(
            "{label:>4}  {:>10}  {:>10}  {:>11}  {:>10}  {:>10}  {:>8}  {:>9.3}  {:>9.3}  {:>9.3}  {:>9.3}",
            secs(by_ours),
            secs(by_curl),
            secs(h),
            secs(c),
            secs(l),
            secs(v),
            ratio(by_ours, h),
            ratio(by_curl, h),
            ratio(by_ours, c),
            ratio(by_curl, c)
        );
        if run > 0 {
            ours.times.push(by_ours);
            curl.times.push(by_curl);
            https.push(h);
            cdis.push(c);
            locals.push(l);
            converts.push(v);
        }
    }
    let (h, c, l, v) = (median(https), median(cdis), median(locals), median(converts));
    println!(
        "median of {runs}: upload with cdi-upload {}, with curl {}, HTTP import {}, CDI's way {}, cp+convert {}, convert {}",
        secs(median(ours.times.clone())),
        secs(median(curl.times.clone())),
        secs(h),
        secs(c),
        secs(l),
        secs(v)
    );
    // Every way writes the image's data at least once, so writing it once from a local file
    // is about as fast as any can be here: how far below CDI's way an upload could get.
    println!(
        "convert (the image written once, locally) {}: the HTTP import takes {:.2}x that, CDI's way {:.2}x; \
         an upload as fast as it would score {:.3}x of CDI's way",
        secs(v),
        h.as_secs_f64() / v.as_secs_f64(),
        c.as_secs_f64() / v.as_secs_f64(),
        v.as_secs_f64() / c.as_secs_f64()
    );
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    for (with, uploads) in [(UploadClient::CdiUpload, &ours), (UploadClient::Curl, &curl)] {
        let u = median(uploads.times.clone());
        let ratio = |base: Duration| u.as_secs_f64() / base.as_secs_f64();
        let (rh, rc) = (ratio(h), ratio(c));
        println!("{}:", with.name());
        println!("  upload / HTTP import: {rh:.3}x (target <= {VS_HTTP_TARGET}: {})", met(rh <= VS_HTTP_TARGET));
        println!("  upload / CDI's way:   {rc:.3}x (target <= {VS_CDI_TARGET}: {})", met(rc <= VS_CDI_TARGET));
        println!("  upload / cp+convert:  {:.3}x (CDI's way without its upload; a lower bound of it)", ratio(l));
        let cost = Cost::median(&uploads.costs);
        println!(
            "  CPU per upload: the client {:.2}s, upload proxy {:.2}s, node mover {:.2}s; the machine was {:.0}% busy on {} cores",
            cost.client,
            cost.proxy,
            cost.mover,
            cost.busy * 100.0,
            std::thread::available_parallelism().map_or(1, usize::from)
        );
        let settle = secs(median(uploads.settles.clone()));
        match with {
            UploadClient::Curl => println!("  from the proxy's answer to the DataVolume's Succeeded: {settle}"),
            UploadClient::CdiUpload => println!("  from the DataVolume's Succeeded to cdi-upload's exit: {settle}"),
        }
    }
    println!("scratch bytes: upload 0, CDI's way {} per run", human(image.metadata()?.len()));
    let (p, m) = (peaks.proxy_kib >> 10, peaks.mover_kib >> 10);
    println!(
        "peak RSS: upload proxy {p} MiB, node mover {m} MiB (target <= {RSS_TARGET_MIB} MiB each: {})",
        met(p <= RSS_TARGET_MIB && m <= RSS_TARGET_MIB)
    );
    Ok(())
}

impl UploadClient {
    fn name(self) -> &'static str {
        match self {
            UploadClient::CdiUpload => "cdi-upload",
            UploadClient::Curl => "curl",
        }
    }
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

    /// From these clocks to `done` (taken when the DataVolume succeeded); the client's from
    /// these to now, as a child's CPU time is known only once it is reaped.
    fn until(&self, done: &CpuClocks) -> Cost {
        let (busy, all) = (done.machine.0 - self.machine.0, done.machine.1 - self.machine.1);
        Cost {
            client: children_cpu_seconds() - self.children,
            proxy: done.roles.proxy - self.roles.proxy,
            mover: done.roles.mover - self.roles.mover,
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

/// An upload DataVolume until UploadReady; the client uploads the image to the proxy; until
/// Succeeded; then the DataVolume is deleted. Timed from the client's start (curl: after the
/// token) to Succeeded, and between Succeeded and the client's exit (see [`Uploads::settles`]).
async fn upload_once(
    system: &System,
    with: UploadClient,
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
    let mut command = match with {
        UploadClient::Curl => {
            let token = token(client, name).await?;
            let mut curl = tokio::process::Command::new("curl");
            curl.args(["-sS", "-k", "--fail-with-body", "-o", "/dev/null", "-X", "POST", "-T"])
                .arg(image)
                .args(["-H", "Content-Type: application/octet-stream", "-H"])
                .arg(format!("Authorization: Bearer {token}"))
                .arg(format!("{proxy}/v1beta1/upload"));
            curl
        }
        UploadClient::CdiUpload => {
            let mut ours = tokio::process::Command::new(crate::system::binaries_dir()?.join("cdi-upload"));
            ours.args(["dv", name, "--no-create", "--insecure", "-n", NAMESPACE, "--uploadproxy-url", proxy])
                .arg("--image-path")
                .arg(image)
                .env("KUBECONFIG", system.cluster.kubeconfig_path())
                .stderr(Stdio::null());
            ours
        }
    };
    let clocks = CpuClocks::now();
    let started = Instant::now();
    let mut child =
        command.stdin(Stdio::null()).kill_on_drop(true).spawn().with_context(|| format!("running {}", with.name()))?;
    // cdi-upload checks for completion itself, on an interval: the time is taken when the
    // DataVolume turns Succeeded, not when the client exits.
    let succeeded = await_condition(dvs.clone(), name, |d: Option<&DataVolume>| {
        d.and_then(|d| d.status.as_ref()?.phase.clone()) == Some(DataVolumePhase::Succeeded)
    });
    let mut succeeded = std::pin::pin!(tokio::time::timeout(Duration::from_secs(300), succeeded));
    let (mut answered, mut took, mut done_clocks) = (None, None, None);
    while answered.is_none() || took.is_none() {
        tokio::select! {
            status = child.wait(), if answered.is_none() => {
                let status = status?;
                if !status.success() {
                    bail!("{} upload of {} to {proxy} failed ({status})", with.name(), image.display());
                }
                answered = Some(started.elapsed());
            }
            done = &mut succeeded, if took.is_none() => {
                done.with_context(|| format!("{name} never Succeeded"))??;
                took = Some(started.elapsed());
                done_clocks = Some(CpuClocks::now());
            }
            // Sample memory while the bytes flow.
            () = tokio::time::sleep(Duration::from_millis(200)) => peaks.sample(None),
        }
    }
    let (answered, took) = (answered.unwrap_or_default(), took.unwrap_or_default());
    let cost = clocks.until(&done_clocks.unwrap_or_else(CpuClocks::now));
    peaks.sample(None);
    delete_datavolume(client, name).await?;
    let settle = match with {
        UploadClient::Curl => took.saturating_sub(answered),
        UploadClient::CdiUpload => answered.saturating_sub(took),
    };
    Ok((took, settle, cost))
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

/// How CDI's way gets the image into its scratch file.
enum Scratch<'a> {
    /// `curl -T` through the stand-ins for CDI's upload proxy and upload server.
    Uploaded(&'a ScratchUpload),
    /// `cp`: no network at all, so a lower bound of CDI's way.
    Copied,
}

/// CDI's upload of an image qemu-img must convert, step by step as its upload server takes
/// it: the body to a scratch file, which it fsyncs; `qemu-img info` of the file (its
/// validation); `qemu-img convert` of it into the device (and `sync`, as the mover's fsync).
async fn cdi_way(dir: &Path, how: Scratch<'_>, image: &Path, size: u64) -> anyhow::Result<Duration> {
    let device = LoopDevice::new(dir.join("cdi-way.img"), size)?;
    let name = "scratch.upload";
    let (mut fill, scratch) = match how {
        Scratch::Uploaded(server) => {
            let mut curl = tokio::process::Command::new("curl");
            curl.args(["-sS", "-k", "--fail-with-body", "-o", "/dev/null", "-T"])
                .arg(image)
                .arg(format!("{}{name}", server.url));
            (curl, server.scratch.join(name))
        }
        Scratch::Copied => {
            let mut cp = tokio::process::Command::new("cp");
            cp.arg(image).arg(dir.join(name));
            (cp, dir.join(name))
        }
    };
    let started = Instant::now();
    let outcome = async {
        let filled = fill.stdin(Stdio::null()).kill_on_drop(true).status().await?;
        if !filled.success() {
            bail!("CDI's way: filling the scratch file {} failed ({filled})", scratch.display());
        }
        let synced = scratch.clone();
        tokio::task::spawn_blocking(move || std::fs::File::open(&synced)?.sync_all())
            .await?
            .with_context(|| format!("CDI's way: fsync of the scratch file {}", scratch.display()))?;
        qemu_img(&["info", "--output=json"], &scratch, None).await.context("CDI's way")?;
        qemu_img(&CDI_CONVERT, &scratch, Some(&device.path)).await.context("CDI's way")?;
        sync().await;
        Ok(started.elapsed())
    }
    .await;
    device.release()?;
    let _ = std::fs::remove_file(&scratch);
    outcome
}

/// CDI's conversion into a block device that takes `O_DIRECT`: the page cache bypassed, the
/// data written in order, progress printed for it to parse (`-p`).
const CDI_CONVERT: [&str; 6] = ["convert", "-t", "none", "-p", "-O", "raw"];
/// The fastest conversion into a device qemu-img offers: the page cache bypassed, the data
/// written out of order (`-W`, which CDI does not ask for), the device taken as it is.
const FASTEST_CONVERT: [&str; 7] = ["convert", "-t", "none", "-n", "-W", "-O", "raw"];

/// `qemu-img <args> <image> [<device>]`, its output dropped; an error unless it succeeded.
async fn qemu_img(args: &[&str], image: &Path, device: Option<&Path>) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("qemu-img")
        .args(args)
        .arg(image)
        .args(device)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await?;
    if !status.success() {
        bail!("qemu-img {} of {} failed ({status})", args.first().unwrap_or(&""), image.display());
    }
    Ok(())
}

/// The local image converted straight into a fresh device as fast as qemu-img can (and `sync`):
/// the time to write it once, with nothing in the way.
async fn convert_alone(dir: &Path, image: &Path, size: u64) -> anyhow::Result<Duration> {
    let device = LoopDevice::new(dir.join("convert.img"), size)?;
    let started = Instant::now();
    // A failed convert leaves the device to `LoopDevice`'s drop.
    qemu_img(&FASTEST_CONVERT, image, Some(&device.path)).await?;
    sync().await;
    let took = started.elapsed();
    device.release()?;
    Ok(took)
}
