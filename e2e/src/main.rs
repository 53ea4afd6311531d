//! `cdi-e2e up`: runs the mini-cluster in the foreground until Ctrl-C or SIGTERM.
//! `cdi-e2e demo`: the whole of cdi-rs on it, populating two PVCs from a local image.
//! `cdi-e2e bench`: what the control plane costs in time and memory.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

use std::path::PathBuf;

use anyhow::Context as _;
use cdi_e2e::controllers::kubelet::ProjectImages;
use cdi_e2e::{Cluster, ClusterConfig};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cdi-e2e", about = "An embedded Kubernetes mini-cluster for cdi-rs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the cluster and run until interrupted.
    Up(UpArgs),
    /// Populate a Filesystem and a Block PVC from a generated qcow2 served over local HTTP,
    /// through the populator and the movers, check them, and clean up.
    Demo(DemoArgs),
    /// Measure the control plane: PVC-to-Bound and DataVolume-to-Succeeded against the mover
    /// alone, and the populator's memory with many PVCs or DataVolumes at once (prints
    /// figures; never run by CI).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Time from PVC creation to Bound and from DataVolume creation to Succeeded vs
    /// `cdi-mover import` of the same image alone.
    Bound {
        /// The image to serve (e.g. the reference 4 GiB disk.qcow2).
        #[arg(long)]
        image: PathBuf,
        /// Measured runs (after one warm-up).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Upload an image through the upload proxy into a Block DataVolume vs `cdi-mover
    /// import` of it from nginx and vs CDI's way (scratch file + qemu-img convert).
    Upload {
        /// The image to upload (e.g. the reference 4 GiB disk.qcow2).
        #[arg(long)]
        image: PathBuf,
        /// Measured runs (after one warm-up).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Post straight to the upload proxy's endpoint, not to its NodePort (which the
        /// embedded cluster routes in the kernel as kube-proxy does where nftables works,
        /// and relays in userspace, one more hop, where it does not).
        #[arg(long)]
        direct: bool,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Populate many Block PVCs (or DataVolumes) at once; report the populator's peak
    /// resident memory.
    Scale {
        /// How many volumes.
        #[arg(long, alias = "pvcs", default_value_t = 200)]
        count: usize,
        /// Create PVCs with a dataSourceRef, or DataVolumes.
        #[arg(long, value_enum, default_value_t = Kind::Pvc)]
        kind: Kind,
        /// Serve each download at this many MiB/s (0: unthrottled), to keep more in flight.
        #[arg(long, default_value_t = 0)]
        throttle_mib: usize,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    Pvc,
    #[value(alias = "dv")]
    Datavolume,
}

#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Working directory (default: a temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Virtual size of the generated disk, in GiB.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    disk_gib: u64,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Number of simulated nodes.
    #[arg(long, default_value_t = 2)]
    nodes: usize,
    /// Working directory (kubeconfig, node roots, volumes, pod logs).
    #[arg(long, default_value = "./cdi-e2e")]
    dir: PathBuf,
    /// Loopback port for the API server (0: any free port).
    #[arg(long, default_value_t = 0, env = "CDI_E2E_PORT")]
    port: u16,
    /// Where the project's binaries are (`cdi-mover`, `cdi-populator`, …): containers of the
    /// image `…/mover` or `…/cdi-mover` run `cdi-mover`, and so on. Default: next to cdi-e2e.
    #[arg(long, env = "CDI_E2E_BINARIES")]
    binaries: Option<PathBuf>,
    /// Install cdi-rs from these manifests once the cluster is up (`kubectl apply -k`), and
    /// wait for its rollout. Without a value: the source tree's `deploy/`.
    #[arg(long, num_args = 0..=1, default_missing_value = cdi_e2e::system::DEPLOY_DIR)]
    install: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "cdi_e2e=info".into()),
        )
        .init();
    let args = match Cli::parse().command {
        Command::Up(args) => args,
        Command::Demo(args) => {
            return cdi_e2e::demo::run(cdi_e2e::demo::DemoArgs { dir: args.dir, disk_size: args.disk_gib << 30 }).await;
        }
        Command::Bench(BenchCommand::Bound { image, runs, dir }) => {
            return cdi_e2e::bench::bound(cdi_e2e::bench::BoundArgs { image, runs, dir }).await;
        }
        Command::Bench(BenchCommand::Upload { image, runs, direct, dir }) => {
            return cdi_e2e::bench::upload(cdi_e2e::bench::UploadArgs { image, runs, direct, dir }).await;
        }
        Command::Bench(BenchCommand::Scale { count, kind, throttle_mib, dir }) => {
            let kind = match kind {
                Kind::Pvc => cdi_e2e::bench::ScaleKind::Pvc,
                Kind::Datavolume => cdi_e2e::bench::ScaleKind::DataVolume,
            };
            let args = cdi_e2e::bench::ScaleArgs { kind, count, throttle: throttle_mib << 20, dir };
            return cdi_e2e::bench::scale(args).await;
        }
    };
    let mut config = ClusterConfig::new(&args.dir);
    config.nodes = args.nodes;
    config.port = args.port;
    let binaries = match args.binaries {
        Some(dir) => dir,
        None => cdi_e2e::system::binaries_dir().unwrap_or_default(),
    };
    config.images = ProjectImages::from_dir(&binaries);
    if args.install.is_some() && config_images_missing(&binaries) {
        anyhow::bail!(
            "--install needs cdi-mover and cdi-populator in {}: build the workspace first",
            binaries.display()
        );
    }
    let cluster = Cluster::start(config).await.context("starting the cluster")?;
    let kc = cluster.kubeconfig_path();
    println!("cdi-e2e cluster up at {} with nodes {}", cluster.url(), cluster.node_names().join(", "));
    println!("  export KUBECONFIG={}", kc.display());
    println!("  kubectl get nodes,storageclasses");
    if let Some(deploy) = &args.install {
        let deploy = deploy.canonicalize().unwrap_or_else(|_| deploy.clone());
        println!("installing cdi-rs: kubectl apply -k {}", deploy.display());
        cdi_e2e::system::install(&cluster, &deploy, &Default::default()).await?;
        cdi_e2e::system::wait_for_rollout(&cluster.client()?, args.nodes).await?;
        println!("cdi-rs is up: the populator Deployment is available, a mover runs on every node");
        println!("  kubectl -n cdi-rs get deployments,daemonsets,pods");
    }
    println!("Ctrl-C stops it and removes every loop device, mount and process it made.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("stopping…");
    cluster.shutdown().await;
    println!("stopped; nothing left behind");
    Ok(())
}

fn config_images_missing(dir: &std::path::Path) -> bool {
    let images = ProjectImages::from_dir(dir);
    images.binary_for("cdi-rs/mover").is_none() || images.binary_for("cdi-rs/populator").is_none()
}
