//! `cdi-e2e bench`: what the control plane costs, measured on the embedded default. Never
//! run by CI; the figures go into notes and the README.
//!
//! - `bound`: time from creating a Block PVC with `dataSourceRef` to it being Bound, against
//!   `cdi-mover import` of the same URL into a loop device of the same size alone, in
//!   alternating runs on one machine. The difference is the control plane's overhead.
//!   A DataVolume of the same URL, created until Succeeded, is timed in the same rounds:
//!   its difference to the PVC is what the DataVolume layer costs.
//! - `scale`: many PVCs (or DataVolumes) populated at once; samples the populator's
//!   resident memory and how many mover tasks it follows at a time.
//! - `upload`: an upload through the upload proxy vs an HTTP import and CDI's way
//!   ([`upload`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{conditions, wait::await_condition};

use cdi_populator::api::DataVolume;

use crate::cluster::CLASS_IMMEDIATE;
use crate::host;
use crate::system::{System, SystemConfig};
use crate::workload::{self, ImageServer, Mode, human, secs};

mod nginx;
mod upload;
pub use upload::{UploadArgs, upload};

const NAMESPACE: &str = "default";
const POPULATOR: &str = "cdi-populator-1";

#[derive(Debug, Clone)]
pub struct BoundArgs {
    pub image: PathBuf,
    pub runs: usize,
    pub dir: Option<PathBuf>,
}

/// What `scale` creates many of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleKind {
    /// Block PVCs with a `dataSourceRef`, until Bound.
    Pvc,
    /// Block DataVolumes, until Succeeded.
    DataVolume,
}

#[derive(Debug, Clone)]
pub struct ScaleArgs {
    pub kind: ScaleKind,
    pub count: usize,
    /// Serve each download at this many bytes per second (0: unthrottled), so that more
    /// imports are in flight at once.
    pub throttle: usize,
    pub dir: Option<PathBuf>,
}

/// A working directory: the one asked for, or a temporary one removed afterwards.
fn workdir(dir: Option<PathBuf>) -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    Ok(match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            (d, None)
        }
        None => {
            let t = tempfile::Builder::new().prefix("cdi-bench-").tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    })
}

fn virtual_size(image: &Path) -> anyhow::Result<u64> {
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output", "json"])
        .arg(image)
        .output()
        .context("running qemu-img info (is qemu-utils installed?)")?;
    if !out.status.success() {
        bail!("qemu-img info {}: {}", image.display(), String::from_utf8_lossy(&out.stderr));
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    info["virtual-size"].as_u64().context("qemu-img info without a virtual size")
}

/// Serves `image` (by a symlink in `dir/www`) and returns the server and the URL.
async fn serve(dir: &Path, image: &Path) -> anyhow::Result<(ImageServer, String)> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    let name = image.file_name().context("an image file name")?;
    let link = www.join(name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(std::fs::canonicalize(image)?, &link)?;
    let server = ImageServer::start(www).await?;
    let url = server.url(&name.to_string_lossy());
    Ok((server, url))
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

pub async fn bound(args: BoundArgs) -> anyhow::Result<()> {
    let (dir, _temp) = workdir(args.dir)?;
    let size = virtual_size(&args.image)?;
    let system = System::start(SystemConfig::new(dir.join("cluster"))?).await?;
    let outcome = workload::interruptible(bound_runs(&system, &dir, &args.image, size, args.runs.max(1))).await;
    system.shutdown().await;
    outcome
}

/// The three ways of filling a volume from one URL that `bound` compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// `cdi-mover import` alone.
    Alone,
    /// A PVC whose `dataSourceRef` names a VolumeImportSource, until Bound.
    Pvc,
    /// A DataVolume, until phase Succeeded.
    DataVolume,
}

/// The DataVolume path may cost at most this much more than the PVC path it builds on.
const DV_OVERHEAD_TARGET: Duration = Duration::from_millis(500);

async fn bound_runs(system: &System, dir: &Path, image: &Path, size: u64, runs: usize) -> anyhow::Result<()> {
    let (_server, url) = serve(dir, image).await?;
    let client = &system.client;
    workload::create_http_source(client, NAMESPACE, "bench", &url).await?;
    let request = format!("{}Mi", size.div_ceil(1 << 20));
    println!("image {} ({} virtual), served at {url}", image.display(), human(size));
    println!(
        "{:>4}  {:>12}  {:>13}  {:>16}  {:>13}  {:>8}",
        "run", "mover alone", "PVC to Bound", "DV to Succeeded", "DV overhead", "DV/mover"
    );
    let (mut alone, mut populated, mut dvs, mut overheads) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // One unmeasured round first: page cache and the populator's connections warm, as
    // they are on a cluster that has been up for a while.
    for run in 0..=runs {
        // Rotate which goes first, and start each from written-back caches, so none
        // always inherits another's writeback.
        let mut order = [Way::Alone, Way::Pvc, Way::DataVolume];
        order.rotate_left(run % 3);
        let (mut a, mut p, mut d) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for way in order {
            sync().await;
            match way {
                Way::Alone => a = import_alone(&system.config.mover_binary, dir, &url, size).await?,
                Way::Pvc => p = populate_block(client, &format!("bench-{run}"), &request).await?,
                Way::DataVolume => d = datavolume_block(client, &format!("bench-dv-{run}"), &url, &request).await?,
            }
        }
        let overhead = d.as_secs_f64() - p.as_secs_f64();
        let ratio = d.as_secs_f64() / a.as_secs_f64();
        let label = if run == 0 { "warm".to_string() } else { run.to_string() };
        println!("{label:>4}  {:>12}  {:>13}  {:>16}  {overhead:>+12.2}s  {ratio:>8.3}", secs(a), secs(p), secs(d));
        if run == 0 {
            continue;
        }
        alone.push(a);
        populated.push(p);
        dvs.push(d);
        overheads.push(overhead);
    }
    overheads.sort_by(f64::total_cmp);
    let overhead = overheads[overheads.len() / 2];
    let (a, p, d) = (median(alone), median(populated), median(dvs));
    println!(
        "median of {runs}: cdi-mover import alone {}, PVC creation to Bound {}, DataVolume creation to Succeeded {}",
        secs(a),
        secs(p),
        secs(d)
    );
    println!(
        "PVC path over the mover alone: {:+.2} s ({:.3}x); DataVolume over the mover alone: {:.3}x",
        p.as_secs_f64() - a.as_secs_f64(),
        p.as_secs_f64() / a.as_secs_f64(),
        d.as_secs_f64() / a.as_secs_f64()
    );
    let met = if overhead <= DV_OVERHEAD_TARGET.as_secs_f64() { "met" } else { "MISSED" };
    println!(
        "DataVolume overhead (DV to Succeeded - PVC to Bound, per run): median {overhead:+.2} s; target <= {:.1} s median: {met}",
        DV_OVERHEAD_TARGET.as_secs_f64()
    );
    Ok(())
}

/// `sync(2)` on a blocking thread: on a slow disk it takes seconds (minutes under load), and
/// on a runtime worker it would hold off everything else, Ctrl-C's handling included.
async fn sync() {
    let _ = tokio::task::spawn_blocking(nix::unistd::sync).await;
}

/// Installs Debian's `package` when `binary` is not on this machine: the benchmarks bring
/// their own peers, as the tests do.
fn ensure_package(binary: &str, package: &str) -> anyhow::Result<()> {
    let found = std::process::Command::new("sh").args(["-c", &format!("command -v {binary} >/dev/null")]).status()?;
    if found.success() {
        return Ok(());
    }
    let install =
        format!("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package} >/dev/null");
    if !std::process::Command::new("sh").args(["-c", &install]).status()?.success() {
        bail!("cannot install {package} (apt-get install {package})");
    }
    Ok(())
}

/// `cdi-mover import URL /dev/loopN` into a fresh loop device of `size` bytes, as the
/// provisioner makes them.
async fn import_alone(mover: &Path, dir: &Path, url: &str, size: u64) -> anyhow::Result<Duration> {
    let device = LoopDevice::new(dir.join("alone.img"), size)?;
    let started = Instant::now();
    let status = tokio::process::Command::new(mover)
        .args(["import", url])
        .arg(&device.path)
        .args(["--progress", "none"])
        .kill_on_drop(true)
        .status()
        .await;
    let took = started.elapsed();
    let path = device.path.clone();
    device.release()?;
    if !status?.success() {
        bail!("cdi-mover import {url} {} failed", path.display());
    }
    Ok(took)
}

/// A loop device over a fresh sparse file, as the provisioner makes them. Detached and its
/// file removed by [`LoopDevice::release`], or when dropped: an interrupted run drops it
/// mid-way, and nothing of it should stay attached.
struct LoopDevice {
    path: PathBuf,
    backing: PathBuf,
    released: bool,
}

impl LoopDevice {
    fn new(backing: PathBuf, size: u64) -> anyhow::Result<LoopDevice> {
        host::sparse_file(&backing, size)?;
        let path = host::loop_attach(&backing)?;
        Ok(LoopDevice { path, backing, released: false })
    }

    /// Detaches the device and removes its file, saying what failed.
    fn release(mut self) -> anyhow::Result<()> {
        self.released = true;
        host::loop_detach(&self.path)?;
        std::fs::remove_file(&self.backing)?;
        Ok(())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if !self.released {
            // Best effort: a device still held goes at its last close.
            let _ = host::loop_detach(&self.path);
            let _ = std::fs::remove_file(&self.backing);
        }
    }
}

/// Creates a Block PVC populated from the `bench` source, waits until it is Bound, then
/// deletes it and waits for its PV (and loop device) to go.
async fn populate_block(client: &kube::Client, name: &str, request: &str) -> anyhow::Result<Duration> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NAMESPACE);
    let pvc = workload::target_pvc(name, CLASS_IMMEDIATE, Mode::Block, request, "bench");
    let started = Instant::now();
    pvcs.create(&PostParams::default(), &pvc).await?;
    workload::until_bound(client, NAMESPACE, &[name], |_| {}).await?;
    let took = started.elapsed();
    let pv_name = pvcs.get(name).await?.spec.and_then(|s| s.volume_name).context("bound without a volume")?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv_uid = pvs.get(&pv_name).await?.metadata.uid.unwrap_or_default();
    pvcs.delete(name, &DeleteParams::default()).await?;
    await_condition(pvs, &pv_name, conditions::is_deleted(&pv_uid)).await?;
    Ok(took)
}

/// Creates a Block DataVolume importing `url`, waits until it is Succeeded, then deletes it
/// and waits for its PV (and loop device) to go with its PVC.
async fn datavolume_block(client: &kube::Client, name: &str, url: &str, request: &str) -> anyhow::Result<Duration> {
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), NAMESPACE);
    let dv = workload::http_datavolume(name, url, CLASS_IMMEDIATE, Mode::Block, request);
    let started = Instant::now();
    dvs.create(&PostParams::default(), &dv).await.with_context(|| format!("creating DataVolume {name}"))?;
    workload::until_succeeded(client, NAMESPACE, &[name], |_| {}).await?;
    let took = started.elapsed();
    delete_datavolume(client, name).await?;
    Ok(took)
}

/// Deletes a Succeeded DataVolume and waits for its PV (and loop device) to go with its PVC:
/// a volume still being torn down would write to the disk under the next measurement.
async fn delete_datavolume(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), NAMESPACE);
    let claim = dvs.get(name).await?.status.and_then(|s| s.claim_name).unwrap_or_else(|| name.to_string());
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NAMESPACE);
    let pv_name = pvcs.get(&claim).await?.spec.and_then(|s| s.volume_name).context("Succeeded without a volume")?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv_uid = pvs.get(&pv_name).await?.metadata.uid.unwrap_or_default();
    dvs.delete(name, &DeleteParams::default()).await?;
    let gone = await_condition(pvs, &pv_name, conditions::is_deleted(&pv_uid));
    tokio::time::timeout(Duration::from_secs(120), gone)
        .await
        .with_context(|| format!("the volume {pv_name} of DataVolume {name} was not deleted within 2 minutes"))??;
    Ok(())
}

pub async fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    let (dir, _temp) = workdir(args.dir.clone())?;
    let (_, qcow2) = small_image(&dir)?;
    let system = System::start(SystemConfig::new(dir.join("cluster"))?).await?;
    let outcome = workload::interruptible(scale_run(&system, &dir, &qcow2, &args)).await;
    system.shutdown().await;
    outcome
}

/// 64 MiB virtual with 8 MiB of random data: small enough for hundreds of copies.
fn small_image(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    use std::os::unix::fs::FileExt as _;
    let raw = dir.join("small.raw");
    let file = std::fs::File::create(&raw)?;
    file.set_len(64 << 20)?;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut block = vec![0u8; 1 << 20];
    for i in 0..8u64 {
        for b in block.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        file.write_all_at(&block, i * (8 << 20))?;
    }
    let qcow2 = dir.join("small.qcow2");
    let st = std::process::Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&qcow2).status()?;
    if !st.success() {
        bail!("qemu-img convert failed");
    }
    Ok((raw, qcow2))
}

#[derive(Debug, Default)]
struct Peaks {
    rss_kib: u64,
    followed: u64,
}

/// The populator's resident memory may peak at this much with 200 DataVolumes at once.
const RSS_TARGET_MIB: u64 = 100;

async fn scale_run(system: &System, dir: &Path, image: &Path, args: &ScaleArgs) -> anyhow::Result<()> {
    let (server, url) = serve(dir, image).await?;
    server.knobs.throttle.store(args.throttle, std::sync::atomic::Ordering::SeqCst);
    let client = &system.client;
    let count = args.count;
    workload::create_http_source(client, NAMESPACE, "small", &url).await?;
    let pid = system.populator_pid(POPULATOR).await.context("the populator is not running")?;
    let metrics = system.populator_metrics_addr(POPULATOR).context("the populator did not log its metrics address")?;
    let idle_kib = crate::procs::status_kib(pid, "VmRSS:")?;
    println!("populator pid {pid}: {} resident before any volume", human(idle_kib << 10));

    let names: Vec<String> = (0..count).map(|i| format!("vm-{i:03}")).collect();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NAMESPACE);
    let dvs: Api<DataVolume> = Api::namespaced(client.clone(), NAMESPACE);
    let started = Instant::now();
    let (mut webhook_retries, mut slowest_create) = (0, Duration::ZERO);
    for name in &names {
        let one = Instant::now();
        match args.kind {
            ScaleKind::Pvc => {
                let pvc = workload::target_pvc(name, CLASS_IMMEDIATE, Mode::Block, "64Mi", "small");
                pvcs.create(&PostParams::default(), &pvc).await?;
            }
            ScaleKind::DataVolume => {
                let dv = workload::http_datavolume(name, &url, CLASS_IMMEDIATE, Mode::Block, "64Mi");
                webhook_retries += create_retrying_webhook_timeouts(&dvs, &dv).await?;
            }
        }
        slowest_create = slowest_create.max(one.elapsed());
    }
    let (what, done) = match args.kind {
        ScaleKind::Pvc => ("Block PVCs", "Bound"),
        ScaleKind::DataVolume => ("Block DataVolumes", "Succeeded"),
    };
    println!(
        "{count} {what} created in {} (slowest create {}; {webhook_retries} retried after the admission webhook timed out)",
        secs(started.elapsed()),
        secs(slowest_create)
    );

    // Sample while they populate: resident memory and the followed-task gauge.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut peaks = Peaks::default();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = &mut stopped => return peaks,
                _ = tick.tick() => {}
            }
            if let Ok(kib) = crate::procs::status_kib(pid, "VmRSS:") {
                peaks.rss_kib = peaks.rss_kib.max(kib);
            }
            if let Some(n) = scrape_gauge(metrics, "cdi_populator_populations_running").await {
                peaks.followed = peaks.followed.max(n);
            }
        }
    });
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let waited = match args.kind {
        ScaleKind::Pvc => workload::until_bound(client, NAMESPACE, &refs, |_| {}).await,
        ScaleKind::DataVolume => workload::until_succeeded(client, NAMESPACE, &refs, |_| {}).await,
    };
    let took = started.elapsed();
    let _ = stop.send(());
    let peaks = sampler.await?;
    waited?;
    let hwm = crate::procs::status_kib(pid, "VmHWM:")?;
    println!("all {count} {done} {} after the first was created", secs(took));
    println!(
        "populator resident memory: peak {} (VmHWM {}), {} before; at most {} mover tasks followed at once",
        human(peaks.rss_kib << 10),
        human(hwm << 10),
        human(idle_kib << 10),
        peaks.followed
    );
    if args.kind == ScaleKind::DataVolume {
        let met = if hwm <= RSS_TARGET_MIB << 10 { "met" } else { "MISSED" };
        println!("target: populator peak resident <= {RSS_TARGET_MIB} MiB with {count} DataVolumes: {met}");
    }

    println!("deleting them");
    for name in &names {
        let deleted = match args.kind {
            ScaleKind::Pvc => pvcs.delete(name, &DeleteParams::default()).await.map(drop),
            ScaleKind::DataVolume => dvs.delete(name, &DeleteParams::default()).await.map(drop),
        };
        deleted?;
    }
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for pv in pvs.list(&Default::default()).await?.items {
        let (name, uid) = (pv.metadata.name.unwrap_or_default(), pv.metadata.uid.unwrap_or_default());
        await_condition(pvs.clone(), &name, conditions::is_deleted(&uid)).await?;
    }
    Ok(())
}

/// Creates a DataVolume; when the API server gives up on the admission webhook (500, "failed
/// calling webhook"), tries again as a controller would, up to 5 times. Returns the retries.
async fn create_retrying_webhook_timeouts(dvs: &Api<DataVolume>, dv: &DataVolume) -> anyhow::Result<usize> {
    let name = dv.metadata.name.as_deref().unwrap_or_default();
    let mut retries = 0;
    loop {
        match dvs.create(&PostParams::default(), dv).await {
            Ok(_) => return Ok(retries),
            Err(kube::Error::Api(s))
                if s.code == 500 && s.message.contains("failed calling webhook") && retries < 5 =>
            {
                println!("  creating DataVolume {name}: {}; retrying", s.message);
                retries += 1;
            }
            Err(e) => return Err(e).with_context(|| format!("creating DataVolume {name}")),
        }
    }
}

/// One gauge's value from a Prometheus text endpoint.
async fn scrape_gauge(addr: std::net::SocketAddr, name: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?;
    line[name.len()..].trim().parse::<f64>().ok().map(|v| v as u64)
}
