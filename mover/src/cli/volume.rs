//! `cdi-mover client read-volume | write-volume | copy-volume`: volume streams between a
//! mover and this machine, or between two movers (a host-assisted clone by hand).
//!
//! A stream that fails on one side never looks finished on the other: a failed read sends no
//! end chunk, and a mover commits nothing without one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures_util::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use cdi_mover::detect::{self, Detected, ImageFormat};
use cdi_mover::disk::{TargetOptions, sizing};
use cdi_mover::error::one_line;
use cdi_mover::service::volume::{QUEUE, chunk_to_pb, format_to_pb, write_stream};
use cdi_mover::volume::write::TarInto;
use cdi_mover::volume::{Format, VolumeError, VolumeReader};
use cdi_proto::v1 as pb;
use cdi_proto::v1::mover_client::MoverClient;

use super::client::target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// RAW for block devices and files (TAR for a file holding a tar archive); for a
    /// directory, RAW of its disk.img when it has one, TAR of the tree otherwise.
    Auto,
    Raw,
    Tar,
}

impl FormatArg {
    fn format(self) -> Option<Format> {
        match self {
            FormatArg::Auto => None,
            FormatArg::Raw => Some(Format::Raw),
            FormatArg::Tar => Some(Format::Tar),
        }
    }

    fn to_pb(self) -> pb::VolumeFormat {
        self.format().map_or(pb::VolumeFormat::Unspecified, format_to_pb)
    }
}

/// How a RAW stream into a directory sizes its disk.img, as for an import.
#[derive(Debug, Args)]
pub struct SizingArgs {
    /// The volume's requested size in bytes (default: the target's capacity).
    #[arg(long, value_name = "BYTES")]
    pub size: Option<u64>,
    /// Fraction of a filesystem volume kept free for filesystem overhead.
    #[arg(long, default_value_t = sizing::DEFAULT_OVERHEAD, env = "FILESYSTEM_OVERHEAD")]
    pub filesystem_overhead: f64,
}

impl SizingArgs {
    fn options(&self) -> anyhow::Result<TargetOptions> {
        let filesystem_overhead = sizing::validate_overhead(self.filesystem_overhead).map_err(anyhow::Error::msg)?;
        Ok(TargetOptions { requested_size: self.size, filesystem_overhead, preallocate: false })
    }

    fn write_target(&self, target: pb::Target) -> anyhow::Result<pb::WriteVolumeRequest> {
        let options = self.options()?;
        Ok(pb::WriteVolumeRequest {
            request: Some(pb::write_volume_request::Request::Target(pb::WriteVolumeTarget {
                target: Some(target),
                requested_size: options.requested_size.unwrap_or(0),
                filesystem_overhead: Some(options.filesystem_overhead),
            })),
        })
    }
}

#[derive(Debug, Args)]
pub struct ReadVolumeArgs {
    /// The volume on the mover's node: a path, or `pod:UID/NAME` / `pod-block:UID/NAME`.
    pub target: PathBuf,
    /// Where it goes here: a block device, a directory (RAW: its disk.img; TAR: extracted
    /// into it) or a file (a sparse raw image, or the tar archive).
    pub file: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    pub format: FormatArg,
    #[command(flatten)]
    pub sizing: SizingArgs,
}

#[derive(Debug, Args)]
pub struct WriteVolumeArgs {
    /// What to send from here: a block device, a file (a raw image, or a tar archive), or a
    /// directory (its disk.img, or its tree as TAR).
    pub file: PathBuf,
    /// The volume on the mover's node: a path, or `pod:UID/NAME` / `pod-block:UID/NAME`.
    pub target: PathBuf,
    #[arg(long, value_enum, default_value = "auto")]
    pub format: FormatArg,
    #[command(flatten)]
    pub sizing: SizingArgs,
}

#[derive(Debug, Args)]
pub struct CopyVolumeArgs {
    /// The volume on the node of the mover at --address.
    pub source: PathBuf,
    /// The volume on the node of the mover at --to.
    pub target: PathBuf,
    /// The mover that writes TARGET (same TLS settings as --address).
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    #[arg(long, value_enum, default_value = "auto")]
    pub format: FormatArg,
    #[command(flatten)]
    pub sizing: SizingArgs,
}

/// What a transfer reports, as one JSON line.
struct Report {
    format: Format,
    data_bytes: u64,
    zero_bytes: u64,
    /// Encoded size of the chunk messages that crossed this client.
    message_bytes: u64,
    target: String,
    started: Instant,
}

impl Report {
    /// What a target mover's WriteVolume answer says it wrote.
    fn written(format: Format, response: pb::WriteVolumeResponse, message_bytes: u64, started: Instant) -> Report {
        Report {
            format,
            data_bytes: response.bytes_written,
            zero_bytes: response.zero_bytes,
            message_bytes,
            target: response.target_path,
            started,
        }
    }

    fn print(&self) {
        let seconds = self.started.elapsed().as_secs_f64();
        let volume = self.data_bytes + self.zero_bytes;
        println!(
            "{}",
            serde_json::json!({
                "format": self.format.to_string().to_ascii_lowercase(),
                "data_bytes": self.data_bytes,
                "zero_bytes": self.zero_bytes,
                "message_bytes": self.message_bytes,
                "target": self.target,
                "seconds": (seconds * 1000.0).round() / 1000.0,
                "bytes_per_second": (volume as f64 / seconds.max(1e-9)).round(),
                "data_bytes_per_second": (self.data_bytes as f64 / seconds.max(1e-9)).round(),
            })
        );
    }
}

/// Counts the encoded size of the chunks passing by.
fn counted<E, S: Stream<Item = Result<pb::VolumeChunk, E>>>(
    stream: S,
    bytes: Arc<AtomicU64>,
) -> impl Stream<Item = Result<pb::VolumeChunk, E>> {
    stream.inspect(move |c| {
        if let Ok(c) = c {
            bytes.fetch_add(c.encoded_len() as u64, Ordering::Relaxed);
        }
    })
}

pub async fn read_volume(client: &mut MoverClient<Channel>, args: &ReadVolumeArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let request = pb::ReadVolumeRequest { target: Some(target(&args.target)?), format: args.format.to_pb() as i32 };
    let options = args.sizing.options()?;
    let file = std::path::absolute(&args.file).with_context(|| format!("invalid path {}", args.file.display()))?;
    let stream = client.read_volume(request).await?.into_inner();
    let message_bytes = Arc::new(AtomicU64::new(0));
    let written =
        write_stream(file, options, TarInto::DirectoryOrFile, counted(stream, message_bytes.clone()), None).await?;
    Report {
        format: written.format,
        data_bytes: written.data_bytes,
        zero_bytes: written.zero_bytes,
        message_bytes: message_bytes.load(Ordering::Relaxed),
        target: written.path.display().to_string(),
        started,
    }
    .print();
    Ok(0)
}

pub async fn write_volume(client: &mut MoverClient<Channel>, args: &WriteVolumeArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let reader = open_local(&args.file, args.format)?;
    let format = reader.header().format;
    let first = args.sizing.write_target(target(&args.target)?)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    // A failed read sends no end chunk: the mover then commits nothing.
    let reading = tokio::task::spawn_blocking(move || {
        reader.run(|chunk| tx.blocking_send(chunk_to_pb(chunk)).map_err(|_| VolumeError::Closed))
    });
    let message_bytes = Arc::new(AtomicU64::new(0));
    let counter = message_bytes.clone();
    let chunks = ReceiverStream::new(rx).inspect(move |c| {
        counter.fetch_add(c.encoded_len() as u64, Ordering::Relaxed);
    });
    let response = client.write_volume(requests(first, chunks)).await;
    match reading.await.context("the local reader crashed")? {
        // Closed: the mover stopped listening; its answer says why.
        Ok(_) | Err(VolumeError::Closed) => {}
        Err(e) => bail!("cannot read {}: {}; nothing was committed", args.file.display(), one_line(&e)),
    }
    let response = response?.into_inner();
    Report::written(format, response, message_bytes.load(Ordering::Relaxed), started).print();
    Ok(0)
}

pub async fn copy_volume(
    from: &mut MoverClient<Channel>,
    to: &mut MoverClient<Channel>,
    args: &CopyVolumeArgs,
) -> anyhow::Result<i32> {
    let started = Instant::now();
    let request = pb::ReadVolumeRequest { target: Some(target(&args.source)?), format: args.format.to_pb() as i32 };
    let first = args.sizing.write_target(target(&args.target)?)?;
    let source = from.read_volume(request).await.context("the source mover refused to read")?.into_inner();
    let message_bytes = Arc::new(AtomicU64::new(0));
    let format = Arc::new(Mutex::new(Format::Raw));
    let seen = format.clone();
    // The source's failure ends the forwarded stream without an end chunk, so the target
    // commits nothing; the failure itself is reported here.
    let failure = Arc::new(Mutex::new(None));
    let failed = failure.clone();
    let chunks = counted(source, message_bytes.clone())
        .take_while(move |c| {
            if let Err(status) = c {
                *failed.lock().expect("failure lock") = Some(status.message().to_string());
            }
            std::future::ready(c.is_ok())
        })
        .filter_map(|c| std::future::ready(c.ok()))
        .inspect(move |c| {
            if let Some(pb::volume_chunk::Chunk::Header(h)) = &c.chunk
                && h.format == pb::VolumeFormat::Tar as i32
            {
                *seen.lock().expect("format lock") = Format::Tar;
            }
        });
    let response = to.write_volume(requests(first, chunks)).await;
    if let Some(message) = failure.lock().expect("failure lock").take() {
        bail!("the source mover failed to read {}: {message}; nothing was committed", args.source.display());
    }
    let response = response.context("the target mover failed to write")?.into_inner();
    let format = *format.lock().expect("format lock");
    Report::written(format, response, message_bytes.load(Ordering::Relaxed), started).print();
    Ok(0)
}

/// A WriteVolume request stream: the target, then the chunks.
fn requests(
    first: pb::WriteVolumeRequest,
    chunks: impl Stream<Item = pb::VolumeChunk> + Send + 'static,
) -> impl Stream<Item = pb::WriteVolumeRequest> + Send + 'static {
    futures_util::stream::once(async move { first })
        .chain(chunks.map(|c| pb::WriteVolumeRequest { request: Some(pb::write_volume_request::Request::Chunk(c)) }))
}

/// Opens a local path for `write-volume`: a file holding a tar archive is sent as TAR.
fn open_local(path: &Path, format: FormatArg) -> anyhow::Result<VolumeReader> {
    let is_file = std::fs::metadata(path).is_ok_and(|m| m.is_file());
    let as_tar = match format {
        FormatArg::Tar => is_file,
        FormatArg::Raw => false,
        FormatArg::Auto => is_file && holds_tar(path),
    };
    let reader = if as_tar { VolumeReader::open_tar_file(path) } else { VolumeReader::open(path, format.format()) };
    reader.map_err(|e| anyhow::anyhow!(one_line(&e)))
}

fn holds_tar(path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::with_capacity(detect::SNIFF_LEN);
    std::fs::File::open(path).and_then(|f| f.take(detect::SNIFF_LEN as u64).read_to_end(&mut head)).is_ok()
        && detect::sniff(&head) == Detected::Image(ImageFormat::Tar)
}
