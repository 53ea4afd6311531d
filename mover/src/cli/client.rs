//! `cdi-mover client`: drive a running mover over its gRPC API, for scripts, debugging and
//! tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tonic::transport::Channel;

use cdi_mover::progress::{Phase, Snapshot};
use cdi_mover::source::{SourceSpec, peer};
use cdi_proto::v1 as pb;
use cdi_proto::v1::mover_client::MoverClient;

use super::EXIT_RETRYABLE;
use super::import::TransferArgs;
use super::output::{ProgressArg, Reporter, error_line, human};
use super::volume;

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The mover's gRPC address.
    #[arg(long, default_value = "127.0.0.1:7443", env = "MOVER_ADDRESS")]
    pub address: String,
    /// Connect without TLS (a mover started with --insecure-plaintext).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "ca"])]
    pub insecure_plaintext: bool,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, env = "MOVER_CLIENT_CERT", required_unless_present = "insecure_plaintext")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "MOVER_CLIENT_KEY", required_unless_present = "insecure_plaintext")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) the mover's certificate is signed by.
    #[arg(long, env = "MOVER_CA", required_unless_present = "insecure_plaintext")]
    pub ca: Option<PathBuf>,
    /// Name expected in the mover's certificate.
    #[arg(long, default_value = "cdi-mover")]
    pub tls_server_name: String,
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Start (or re-attach to) an import and follow it. TARGET: a path on the mover's node,
    /// or `pod:UID/NAME` / `pod-block:UID/NAME` for a pod's volume. SOURCE may also be
    /// `volume://HOST:PORT/VOLUME`: VOLUME (a path, `pod:UID/NAME` or `pod-block:UID/NAME`)
    /// on the node of the mover at HOST:PORT, copied by this one (a host-assisted clone).
    // Boxed: the transfer flags make it much larger than the other commands.
    Populate(Box<PopulateArgs>),
    /// Show one task.
    Get { task_id: String },
    /// List the mover's tasks.
    List,
    /// Cancel a task.
    Cancel { task_id: String },
    /// What the mover can do.
    Capabilities,
    /// Stream a volume of the mover's node (TARGET) into FILE here.
    ReadVolume(volume::ReadVolumeArgs),
    /// Stream FILE from here into a volume of the mover's node (TARGET).
    WriteVolume(volume::WriteVolumeArgs),
    /// Stream a volume of this mover's node into one of the mover at --to: a host-assisted
    /// clone, by hand.
    CopyVolume(volume::CopyVolumeArgs),
    /// Feed FILE to an upload task (one started by `populate upload: TARGET`).
    Upload(super::upload::UploadArgs),
}

#[derive(Debug, Args)]
pub struct PopulateArgs {
    /// The task's id (default: one made from the time and this process).
    #[arg(long)]
    pub task_id: Option<String>,
    #[command(flatten)]
    pub transfer: TransferArgs,
    /// For a volume:// source: the name the peer mover's certificate must carry (default:
    /// the movers' shared name).
    #[arg(long, value_name = "NAME")]
    pub volume_server_name: Option<String>,
    /// The mover's proxy for http:// sources (the request's import_proxy, as the populator
    /// sends CDIConfig's importProxy); with none of the three, the mover's environment's.
    #[arg(long, value_name = "URL")]
    pub import_http_proxy: Option<String>,
    /// The mover's proxy for https:// sources.
    #[arg(long, value_name = "URL")]
    pub import_https_proxy: Option<String>,
    /// Hosts, domains and CIDRs the mover reaches directly (comma-separated).
    #[arg(long, value_name = "LIST")]
    pub import_no_proxy: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressArg,
}

/// Runs `cdi-mover client ...`; returns the process exit status.
pub fn run(args: &ClientArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error_line(&format!("cannot start the runtime: {e}"));
            return 1;
        }
    };
    match rt.block_on(dispatch(args)) {
        Ok(code) => code,
        Err(e) => {
            error_line(&format!("{e:#}"));
            1
        }
    }
}

async fn dispatch(args: &ClientArgs) -> anyhow::Result<i32> {
    let mut client = connect(args).await?;
    match &args.command {
        ClientCommand::ReadVolume(a) => volume::read_volume(&mut client, a).await,
        ClientCommand::WriteVolume(a) => volume::write_volume(&mut client, a).await,
        ClientCommand::CopyVolume(a) => {
            let mut to = connect_to(args, &a.to).await?;
            volume::copy_volume(&mut client, &mut to, a).await
        }
        ClientCommand::Populate(p) => populate(&mut client, p).await,
        ClientCommand::Upload(a) => super::upload::upload(&mut client, a).await,
        ClientCommand::Get { task_id } => {
            let task = client.get_task(pb::GetTaskRequest { task_id: task_id.clone() }).await?.into_inner();
            println!("{}", task_json(&task));
            Ok(0)
        }
        ClientCommand::List => {
            let tasks = client.list_tasks(pb::ListTasksRequest {}).await?.into_inner().tasks;
            println!("{}", serde_json::Value::Array(tasks.iter().map(task_json).collect()));
            Ok(0)
        }
        ClientCommand::Cancel { task_id } => {
            let task = client.cancel_task(pb::CancelTaskRequest { task_id: task_id.clone() }).await?.into_inner();
            println!("{}", task_json(&task));
            Ok(0)
        }
        ClientCommand::Capabilities => {
            let c = client.capabilities(pb::CapabilitiesRequest {}).await?.into_inner();
            println!(
                "{}",
                serde_json::json!({
                    "version": c.version, "api": c.api, "formats": c.formats, "sources": c.sources,
                    "content_types": c.content_types, "node_name": c.node_name,
                })
            );
            Ok(0)
        }
    }
}

/// Connects to the mover, with mutual TLS unless told otherwise.
pub async fn connect(args: &ClientArgs) -> anyhow::Result<MoverClient<Channel>> {
    connect_to(args, &args.address).await
}

/// Connects to the mover at `address` with the TLS settings of `args`.
pub async fn connect_to(args: &ClientArgs, address: &str) -> anyhow::Result<MoverClient<Channel>> {
    cdi_mover::tls::install_crypto_provider();
    let tls = match (&args.tls_cert, &args.tls_key, &args.ca) {
        (Some(cert), Some(key), Some(ca)) => {
            let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
            Some((read(cert)?, read(key)?, read(ca)?))
        }
        _ => None,
    };
    let endpoint = peer::PeerEndpoint::new(address, tls, &args.tls_server_name).map_err(anyhow::Error::msg)?;
    let channel = endpoint.connect().await.with_context(|| format!("cannot connect to the mover at {address}"))?;
    // Volume streams carry chunks of a few MiB.
    Ok(peer::client(channel))
}

/// `pod:UID/NAME`, `pod-block:UID/NAME`, or a path (made absolute).
pub fn target(spec: &Path) -> anyhow::Result<pb::Target> {
    let text = spec.to_string_lossy();
    let pod = |rest: &str, mode: pb::VolumeMode| -> anyhow::Result<pb::Target> {
        let (uid, name) = rest.split_once('/').context("a pod volume is pod:UID/NAME")?;
        Ok(pb::Target {
            kind: Some(pb::target::Kind::PodVolume(pb::PodVolume {
                pod_uid: uid.to_string(),
                volume_name: String::new(),
                pv_name: name.to_string(),
                mode: mode as i32,
            })),
        })
    };
    if let Some(rest) = text.strip_prefix("pod:") {
        return pod(rest, pb::VolumeMode::Filesystem);
    }
    if let Some(rest) = text.strip_prefix("pod-block:") {
        return pod(rest, pb::VolumeMode::Block);
    }
    let path = std::path::absolute(spec).with_context(|| format!("invalid path {}", spec.display()))?;
    Ok(pb::Target { kind: Some(pb::target::Kind::HostPath(pb::HostPath { path: path.display().to_string() })) })
}

/// How a peer mover's volume is named on the command line.
const VOLUME_SCHEME: &str = "volume://";

/// `HOST:PORT/VOLUME` (after `volume://`), VOLUME as the peer's node knows it.
fn volume_source(rest: &str, server_name: Option<&str>) -> anyhow::Result<pb::source::Kind> {
    let usage = "a volume source is volume://HOST:PORT/VOLUME, VOLUME a path, pod:UID/NAME or pod-block:UID/NAME";
    let (address, volume) = rest.find('/').map(|i| rest.split_at(i)).context(usage)?;
    // The path keeps its leading '/'; a pod volume does not have one.
    let pod = volume.strip_prefix('/').filter(|v| v.starts_with("pod:") || v.starts_with("pod-block:"));
    if address.is_empty() || volume.len() < 2 {
        bail!("{usage}");
    }
    Ok(pb::source::Kind::Volume(pb::VolumeSource {
        address: address.to_string(),
        volume: Some(target(Path::new(pod.unwrap_or(volume)))?),
        server_name: server_name.unwrap_or_default().to_string(),
    }))
}

fn request(p: &PopulateArgs) -> anyhow::Result<pb::PopulateRequest> {
    let t = &p.transfer;
    // An upload task: it waits for `client upload`.
    let upload = t.source.eq_ignore_ascii_case("upload:");
    let volume = t.source.strip_prefix(VOLUME_SCHEME);
    if p.volume_server_name.is_some() && volume.is_none() {
        bail!("--volume-server-name applies to a volume:// source");
    }
    let source = match volume {
        Some(rest) => volume_source(rest, p.volume_server_name.as_deref())?,
        None => source_kind(t, upload)?,
    };
    let options = t.target_options()?;
    let content_type = match t.content_type() {
        cdi_mover::ContentType::Kubevirt => pb::ContentType::Kubevirt,
        cdi_mover::ContentType::Archive => pb::ContentType::Archive,
    };
    let task_id = p.task_id.clone().unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("cli-{}-{}", now.as_millis(), std::process::id())
    });
    Ok(pb::PopulateRequest {
        task_id,
        source: Some(pb::Source { kind: Some(source) }),
        target: Some(target(&t.target)?),
        content_type: content_type as i32,
        preallocate: options.preallocate,
        requested_size: options.requested_size.unwrap_or(0),
        filesystem_overhead: Some(options.filesystem_overhead),
        checksum: t.checksum.as_ref().map(|c| c.to_string()).unwrap_or_default(),
        log: None,
        import_proxy: import_proxy(p),
    })
}

fn import_proxy(p: &PopulateArgs) -> Option<pb::ImportProxy> {
    let given = [&p.import_http_proxy, &p.import_https_proxy, &p.import_no_proxy];
    given.iter().any(|v| v.is_some()).then(|| pb::ImportProxy {
        http_proxy: p.import_http_proxy.clone().unwrap_or_default(),
        https_proxy: p.import_https_proxy.clone().unwrap_or_default(),
        no_proxy: p.import_no_proxy.clone().unwrap_or_default(),
        ca_pem: Vec::new(),
    })
}

/// The request's source for everything the import CLI parses too (and `upload:`).
fn source_kind(t: &TransferArgs, upload: bool) -> anyhow::Result<pb::source::Kind> {
    let spec = if upload { SourceSpec::Upload(Default::default()) } else { t.source_spec()? };
    Ok(match spec {
        SourceSpec::File(path) => {
            let path = std::path::absolute(&path).with_context(|| format!("invalid path {}", path.display()))?;
            pb::source::Kind::File(pb::FileSource { path: path.display().to_string() })
        }
        SourceSpec::Blank => pb::source::Kind::Blank(pb::BlankSource {}),
        SourceSpec::Registry(_) => {
            let r = t.registry_options()?;
            pb::source::Kind::Registry(pb::RegistrySource {
                url: t.source.clone(),
                credentials: r.credentials.map(|c| pb::BasicAuth { username: c.username, password: c.password }),
                ca_pem: r.ca.map(|c| c.pem).unwrap_or_default(),
                insecure: r.insecure,
                // The full platform string: the mover parses ARCH or OS/ARCH[/VARIANT].
                architecture: t.platform.clone().unwrap_or_default(),
            })
        }
        SourceSpec::Http(_) => {
            let http = t.http_options()?;
            pb::source::Kind::Http(pb::HttpSource {
                url: t.source.clone(),
                ca_pem: http.ca.map(|c| c.pem).unwrap_or_default(),
                insecure_skip_verify: http.insecure_skip_verify,
                headers: http.headers.into_iter().map(|(name, value)| pb::Header { name, value }).collect(),
                basic_auth: http.credentials.map(|c| pb::BasicAuth { username: c.username, password: c.password }),
            })
        }
        SourceSpec::S3(_) => {
            let keys = t.s3_keys()?;
            pb::source::Kind::S3(pb::S3Source {
                url: t.source.clone(),
                access_key_id: keys.as_ref().map(|k| k.access_key_id.clone()).unwrap_or_default(),
                secret_key: keys.map(|k| k.secret_key).unwrap_or_default(),
                ca_pem: t.http_options()?.ca.map(|c| c.pem).unwrap_or_default(),
            })
        }
        // Never parsed from a string; an upload task is started by the caller of Upload.
        SourceSpec::Upload(_) => pb::source::Kind::Upload(pb::UploadSource {}),
        SourceSpec::Gcs(_) => {
            let gcs = t.gcs_options()?;
            pb::source::Kind::Gcs(pb::GcsSource {
                url: t.source.clone(),
                credentials_json: gcs.credentials_json.unwrap_or_default(),
                endpoint: gcs.endpoint.unwrap_or_default(),
            })
        }
        // Never parsed from a string: volume://… is recognised before.
        SourceSpec::Volume(_) => bail!("a volume source is given as volume://HOST:PORT/VOLUME"),
    })
}

async fn populate(client: &mut MoverClient<Channel>, p: &PopulateArgs) -> anyhow::Result<i32> {
    let request = request(p)?;
    let mode = p.progress.resolve();
    let mut events = client.populate(request).await?.into_inner();
    let latest = Arc::new(Mutex::new(Snapshot { phase: Phase::Probing, bytes_done: 0, bytes_total: None }));
    let sampled = latest.clone();
    // JSON lines come straight from the events; the bar samples the latest one.
    let reporter = Reporter::start(if mode == ProgressArg::Bar { mode } else { ProgressArg::None }, move || {
        *sampled.lock().expect("progress lock")
    });
    let outcome = loop {
        let Some(event) = events.message().await? else {
            reporter.stop();
            bail!("the mover ended the event stream without a result");
        };
        use pb::populate_event::Event;
        match event.event {
            Some(Event::Accepted(a)) if mode == ProgressArg::Json => {
                println!(
                    "{}",
                    serde_json::json!({ "task_id": event.task_id, "accepted": true, "reattached": a.reattached })
                );
            }
            Some(Event::Progress(pr)) => {
                let phase = match pb::Phase::try_from(pr.phase) {
                    Ok(pb::Phase::Transferring) => Phase::Transferring,
                    Ok(pb::Phase::Finishing) => Phase::Finishing,
                    Ok(pb::Phase::AwaitingUpload) => Phase::AwaitingUpload,
                    _ => Phase::Probing,
                };
                let total = (pr.bytes_total > 0).then_some(pr.bytes_total);
                *latest.lock().expect("progress lock") =
                    Snapshot { phase, bytes_done: pr.bytes_done, bytes_total: total };
                if mode == ProgressArg::Json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "phase": phase, "bytes_done": pr.bytes_done, "bytes_total": total,
                            "bytes_per_second": pr.bytes_per_second.round(),
                        })
                    );
                }
            }
            Some(Event::Completed(c)) => break Ok(c),
            Some(Event::Failed(f)) => break Err(f),
            _ => {}
        }
    };
    reporter.stop();
    match outcome {
        Ok(c) => {
            if mode == ProgressArg::Json {
                println!(
                    "{}",
                    serde_json::json!({
                        "phase": "complete", "virtual_size": c.virtual_size, "bytes_written": c.bytes_written,
                        "formats": c.formats, "source_digest": (!c.source_digest.is_empty()).then_some(&c.source_digest),
                        "target": c.target_path, "target_size": c.target_size,
                    })
                );
            } else if mode == ProgressArg::Bar {
                eprintln!(
                    "imported {} ({}) into {}: {} of data",
                    human(c.virtual_size),
                    c.formats.join(" → "),
                    c.target_path,
                    human(c.bytes_written)
                );
            }
            Ok(0)
        }
        Err(f) => {
            if mode == ProgressArg::Json {
                println!(
                    "{}",
                    serde_json::json!({ "phase": "failed", "error": f.message, "reason": f.reason, "retryable": f.retryable })
                );
            }
            error_line(&f.message);
            Ok(if f.retryable { EXIT_RETRYABLE } else { 1 })
        }
    }
}

fn task_json(t: &pb::Task) -> serde_json::Value {
    let state = pb::TaskState::try_from(t.state).map(|s| s.as_str_name()).unwrap_or("TASK_STATE_UNSPECIFIED");
    let progress = t.progress.as_ref().map(|p| {
        serde_json::json!({ "bytes_done": p.bytes_done, "bytes_total": p.bytes_total, "bytes_per_second": p.bytes_per_second })
    });
    serde_json::json!({
        "task_id": t.task_id,
        "state": state.trim_start_matches("TASK_STATE_").to_ascii_lowercase(),
        "source": t.source,
        "target": t.target,
        "progress": progress,
        "completed": t.completed.as_ref().map(|c| serde_json::json!({
            "virtual_size": c.virtual_size, "bytes_written": c.bytes_written, "formats": c.formats,
            "target": c.target_path, "target_size": c.target_size,
        })),
        "failed": t.failed.as_ref().map(|f| serde_json::json!({
            "reason": f.reason, "message": f.message, "retryable": f.retryable,
        })),
        "created_unix_ms": t.created_unix_ms,
        "finished_unix_ms": t.finished_unix_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(rest: &str) -> anyhow::Result<(String, pb::target::Kind)> {
        let pb::source::Kind::Volume(v) = volume_source(rest, None)? else { panic!("not a volume source") };
        Ok((v.address, v.volume.and_then(|t| t.kind).expect("a volume")))
    }

    #[test]
    fn a_volume_source_names_the_peer_and_its_volume() {
        let (address, kind) = volume("10.0.0.7:7443/dev/loop3").expect("a path");
        assert_eq!(address, "10.0.0.7:7443");
        assert_eq!(kind, pb::target::Kind::HostPath(pb::HostPath { path: "/dev/loop3".into() }));
        let (_, kind) = volume("node-b:7443/pod-block:uid-1/pv-1").expect("a pod volume");
        let pb::target::Kind::PodVolume(p) = kind else { panic!("{kind:?}") };
        assert_eq!((p.pod_uid.as_str(), p.pv_name.as_str()), ("uid-1", "pv-1"));
        assert_eq!(p.mode, pb::VolumeMode::Block as i32);
        for bad in ["10.0.0.7:7443", "/dev/loop3", "h:1/"] {
            assert!(volume(bad).expect_err("refused").to_string().contains("volume://HOST:PORT/VOLUME"), "{bad:?}");
        }
    }
}
