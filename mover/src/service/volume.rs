//! ReadVolume / WriteVolume: the gRPC glue around [`crate::volume`].
//!
//! ```text
//!  ReadVolume:  VolumeReader::run ─(spawn_blocking)─▶ bounded channel ─▶ response stream
//!  WriteVolume: request stream ─▶ pump (async) ─▶ bounded channel ─(spawn_blocking)─▶ write_volume
//! ```
//!
//! Memory per stream is bounded by configuration, whatever the volume's size: the HTTP/2
//! receive window (4 MiB, `server.rs`), [`QUEUE`] chunks in the channel (1 MiB each from a
//! mover, at most gRPC's 4 MiB message limit from another client), and the reader's
//! read buffers (6 × 4 MiB) or the copy engine's pooled buffers (7 × 2 MiB).

use std::path::PathBuf;
use std::time::Instant;

use cdi_proto::v1 as pb;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::claims::Claim;
use crate::ImportError;
use crate::archive::ArchiveError;
use crate::disk::{TargetError, TargetOptions};
use crate::error::one_line;
use crate::volume::write::TarInto;
use crate::volume::{self, Chunk, Extent, Format, Header, VolumeError, VolumeReader};

/// Chunks buffered between the network and the disk, per stream.
pub const QUEUE: usize = 4;

/// Starts streaming the volume at `path`; chunks arrive on the returned channel. What cannot
/// be opened fails the call itself; a failure while streaming ends the stream with its status.
pub fn serve_read(
    path: PathBuf,
    format: pb::VolumeFormat,
    claim: Claim,
) -> Result<mpsc::Receiver<Result<pb::VolumeChunk, Status>>, Status> {
    let reader = VolumeReader::open(&path, format_from_pb(format)).map_err(|e| status(&e))?;
    let header = reader.header();
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::task::spawn_blocking(move || {
        // Held while the volume is read, whether or not the client stays; released before
        // the end goes out, so a client that saw the end finds the target free.
        let mut claim = Some(claim);
        let started = Instant::now();
        let shown = reader.path().display().to_string();
        let sent = reader.run(|chunk| {
            if matches!(chunk, Chunk::End { .. }) {
                claim.take();
            }
            tx.blocking_send(Ok(chunk_to_pb(chunk))).map_err(|_| VolumeError::Closed)
        });
        match sent {
            Ok(stats) => tracing::info!(
                path = shown,
                format = %header.format,
                data_bytes = stats.data_bytes,
                zero_bytes = stats.zero_bytes,
                seconds = started.elapsed().as_secs_f64(),
                "volume read"
            ),
            Err(VolumeError::Closed) => tracing::info!(path = shown, "volume read stopped: the client went away"),
            Err(e) => {
                tracing::warn!(path = shown, error = one_line(&e), "volume read failed");
                let _ = tx.blocking_send(Err(status(&e)));
            }
        }
        cdi_common::heap::release_free();
    });
    Ok(rx)
}

/// Writes the volume stream (after its target message) to `path`.
pub async fn serve_write(
    path: PathBuf,
    options: TargetOptions,
    stream: Streaming<pb::WriteVolumeRequest>,
    claim: Claim,
) -> Result<pb::WriteVolumeResponse, Status> {
    let chunks = stream.map(|msg| match msg?.request {
        Some(pb::write_volume_request::Request::Chunk(c)) => Ok(c),
        Some(pb::write_volume_request::Request::Target(_)) => {
            Err(Status::invalid_argument("target: only the first message names the target; the rest are chunks"))
        }
        None => Err(Status::invalid_argument("request: a message carries neither target nor chunk")),
    });
    let written = write_stream(path, options, TarInto::Directory, chunks, Some(claim)).await?;
    Ok(pb::WriteVolumeResponse {
        bytes_written: written.data_bytes,
        zero_bytes: written.zero_bytes,
        target_path: written.path.display().to_string(),
    })
}

/// Writes a stream of volume chunks to `path`: a client's WriteVolume, or (in a client)
/// another mover's ReadVolume. Only the stream's end chunk commits the volume; an error
/// item, a malformed chunk or a dropped future leaves nothing that looks complete. Returns
/// once the writer is done, its cleanup included; `claim` (the service's hold on the
/// target) is released only then.
pub async fn write_stream(
    path: PathBuf,
    options: TargetOptions,
    tar_into: TarInto,
    mut chunks: impl Stream<Item = Result<pb::VolumeChunk, Status>> + Unpin,
    claim: Option<Claim>,
) -> Result<volume::Written, Status> {
    let (tx, mut rx) = mpsc::channel(QUEUE);
    // If this future is dropped (the client went away), the sender goes with it and the
    // writer, stopped short of the stream's end, aborts. It reports on its own for that
    // reason: hyper drops a handler whose client reset the stream.
    let writer = tokio::task::spawn_blocking(move || {
        // Held until the writer is done, its cleanup included, even if the call was dropped.
        let _claim = claim;
        let started = Instant::now();
        let written = volume::write_volume(&path, options, tar_into, || rx.blocking_recv());
        match &written {
            Ok(w) => tracing::info!(
                path = %w.path.display(),
                format = %w.format,
                data_bytes = w.data_bytes,
                zero_bytes = w.zero_bytes,
                seconds = started.elapsed().as_secs_f64(),
                "volume written"
            ),
            Err(e) => tracing::warn!(path = %path.display(), error = one_line(e), "volume write failed"),
        }
        cdi_common::heap::release_free();
        written
    });
    let pumped = async {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk_from_pb(chunk?)?;
            if tx.send(chunk).await.is_err() {
                // The writer stopped: its result says why.
                return Ok(());
            }
        }
        Ok::<(), Status>(())
    }
    .await;
    drop(tx);
    // Wait for the writer even when the stream failed, so that its cleanup is done when
    // the call returns.
    let written = writer.await.map_err(|e| Status::internal(format!("the volume writer crashed: {e}")))?;
    match (pumped, written) {
        // What broke the stream, rather than the writer's "it stopped short".
        (Err(s), _) => Err(s),
        (Ok(()), Err(e)) => Err(status(&e)),
        (Ok(()), Ok(w)) => Ok(w),
    }
}

/// `UNSPECIFIED` lets the reader decide from what the path holds.
pub fn format_from_pb(format: pb::VolumeFormat) -> Option<Format> {
    match format {
        pb::VolumeFormat::Unspecified => None,
        pb::VolumeFormat::Raw => Some(Format::Raw),
        pb::VolumeFormat::Tar => Some(Format::Tar),
    }
}

pub fn format_to_pb(format: Format) -> pb::VolumeFormat {
    match format {
        Format::Raw => pb::VolumeFormat::Raw,
        Format::Tar => pb::VolumeFormat::Tar,
    }
}

pub fn chunk_to_pb(chunk: Chunk) -> pb::VolumeChunk {
    use pb::volume_chunk::Chunk as C;
    let chunk = match chunk {
        Chunk::Header(h) => C::Header(pb::VolumeHeader { format: format_to_pb(h.format) as i32, size: h.size }),
        Chunk::Extent(Extent::Data { offset, data }) => C::Data(pb::DataExtent { offset, data }),
        Chunk::Extent(Extent::Zero { offset, len }) => C::Zero(pb::ZeroExtent { offset, length: len }),
        Chunk::End { length } => C::End(pb::VolumeEnd { length }),
    };
    pb::VolumeChunk { chunk: Some(chunk) }
}

/// Decodes one message of a volume stream; its place in the stream is checked by the writer.
pub fn chunk_from_pb(chunk: pb::VolumeChunk) -> Result<Chunk, Status> {
    use pb::volume_chunk::Chunk as C;
    Ok(match chunk.chunk {
        None => return Err(Status::invalid_argument("chunk: carries neither header, data, zero nor end")),
        Some(C::Header(h)) => {
            let format = match pb::VolumeFormat::try_from(h.format) {
                Ok(pb::VolumeFormat::Raw) => Format::Raw,
                Ok(pb::VolumeFormat::Tar) => Format::Tar,
                Ok(pb::VolumeFormat::Unspecified) | Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "chunk.header.format: must be RAW or TAR, not {}",
                        h.format
                    )));
                }
            };
            Chunk::Header(Header { format, size: h.size })
        }
        Some(C::Data(d)) => Chunk::Extent(Extent::Data { offset: d.offset, data: d.data }),
        Some(C::Zero(z)) => Chunk::Extent(Extent::Zero { offset: z.offset, len: z.length }),
        Some(C::End(e)) => Chunk::End { length: e.length },
    })
}

/// The status a volume error is reported with: INVALID_ARGUMENT for what the stream got
/// wrong, NOT_FOUND / FAILED_PRECONDITION for what the target cannot take, INTERNAL for I/O.
pub fn status(e: &VolumeError) -> Status {
    let message = one_line(e);
    match e {
        VolumeError::Stream(_) => Status::invalid_argument(message),
        VolumeError::NotFound { .. } => Status::not_found(message),
        VolumeError::WrongFormat { .. } | VolumeError::Unsupported { .. } | VolumeError::Changed { .. } => {
            Status::failed_precondition(message)
        }
        VolumeError::Io { .. } => Status::internal(message),
        VolumeError::Target(t) => match t {
            TargetError::NoParent { .. } => Status::not_found(message),
            TargetError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Status::not_found(message)
            }
            TargetError::Unsupported { .. } | TargetError::NoSpace { .. } => Status::failed_precondition(message),
            TargetError::Open { .. } | TargetError::Io { .. } | TargetError::Finish { .. } => Status::internal(message),
        },
        VolumeError::Import(i) => match i.as_ref() {
            ImportError::TooLarge { .. } => Status::failed_precondition(message),
            ImportError::Archive(ArchiveError::Io { .. }) => Status::internal(message),
            // A refused archive: its content is what is wrong.
            ImportError::Archive(_) | ImportError::InvalidRequest(_) => Status::invalid_argument(message),
            _ => Status::internal(message),
        },
        VolumeError::Closed => Status::cancelled(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_survive_the_wire_both_ways() {
        let chunks = [
            Chunk::Header(Header { format: Format::Raw, size: 1 << 40 }),
            Chunk::Header(Header { format: Format::Tar, size: 0 }),
            Chunk::Extent(Extent::Data { offset: 4096, data: vec![1, 2, 3].into() }),
            Chunk::Extent(Extent::Zero { offset: 8192, len: u64::MAX }),
            Chunk::End { length: 1 << 40 },
        ];
        for c in chunks {
            let wire = prost::Message::encode_to_vec(&chunk_to_pb(c.clone()));
            let back: pb::VolumeChunk = prost::Message::decode(&wire[..]).unwrap();
            assert_eq!(chunk_from_pb(back).unwrap(), c);
        }
    }

    #[test]
    fn a_zero_extent_costs_a_few_bytes_on_the_wire() {
        let wire =
            prost::Message::encode_to_vec(&chunk_to_pb(Chunk::Extent(Extent::Zero { offset: 1 << 30, len: 3 << 30 })));
        assert!(wire.len() < 16, "{} bytes", wire.len());
    }

    #[test]
    fn undecodable_chunks_are_invalid_arguments() {
        let empty = chunk_from_pb(pb::VolumeChunk { chunk: None }).unwrap_err();
        assert_eq!(empty.code(), tonic::Code::InvalidArgument);
        let unspecified =
            pb::VolumeChunk { chunk: Some(pb::volume_chunk::Chunk::Header(pb::VolumeHeader { format: 0, size: 1 })) };
        let s = chunk_from_pb(unspecified).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("chunk.header.format"), "{}", s.message());
        let unknown =
            pb::VolumeChunk { chunk: Some(pb::volume_chunk::Chunk::Header(pb::VolumeHeader { format: 9, size: 1 })) };
        assert_eq!(chunk_from_pb(unknown).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn errors_map_to_codes_by_whose_fault_they_are() {
        let code = |e: VolumeError| status(&e).code();
        assert_eq!(code(volume::StreamError::Empty.into()), tonic::Code::InvalidArgument);
        assert_eq!(code(VolumeError::NotFound { path: "/x".into() }), tonic::Code::NotFound);
        assert_eq!(
            code(VolumeError::WrongFormat { path: "/x".into(), format: Format::Tar, why: "w" }),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code(ImportError::TooLarge { virtual_size: 2, available: 1 }.into()),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code(ImportError::Archive(ArchiveError::EscapingPath { path: "../x".into() }).into()),
            tonic::Code::InvalidArgument
        );
        let io = std::io::Error::other("disk on fire");
        assert_eq!(code(VolumeError::Io { op: "read", path: "/x".into(), source: io }), tonic::Code::Internal);
    }
}
