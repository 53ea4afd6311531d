//! ReadVolume / WriteVolume: the gRPC glue around `crate::volume`.

use std::path::PathBuf;

use cdi_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::target::TargetOptions;

/// Starts streaming the volume at `path`; chunks arrive on the returned channel.
pub fn serve_read(
    path: PathBuf,
    format: pb::VolumeFormat,
) -> Result<mpsc::Receiver<Result<pb::VolumeChunk, Status>>, Status> {
    let _ = (path, format);
    Err(Status::unimplemented("ReadVolume is not implemented yet"))
}

/// Writes the volume stream (after its target message) to `path`.
pub async fn serve_write(
    path: PathBuf,
    options: TargetOptions,
    stream: Streaming<pb::WriteVolumeRequest>,
) -> Result<pb::WriteVolumeResponse, Status> {
    let _ = (path, options, stream);
    Err(Status::unimplemented("WriteVolume is not implemented yet"))
}
