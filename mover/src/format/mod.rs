//! Image formats: each turns an image into [`crate::copy::Job`]s.
//!
//! * [`raw`]: the bytes are the disk (also ISO and anything unrecognised).
//! * [`qcow2`]: our own bounds-checked reader, random-access or streaming.
//!
//! vmdk, vhd, vhdx and vdi are detected and refused for now.

pub mod qcow2;
pub mod raw;

use crate::error::Reason;

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "unsupported format: {format} images cannot be imported yet; convert the image to qcow2 or raw \
         (qemu-img convert -O qcow2) and import that"
    )]
    Unsupported { format: &'static str },
    #[error("content type archive expects a tar archive (optionally gz/xz/zst compressed), but the source is {found}")]
    NotAnArchive { found: &'static str },
    #[error("qcow2 header is truncated: {available} bytes, {needed} needed")]
    HeaderTruncated { available: usize, needed: usize },
    #[error("invalid qcow2 header: {field} is {value}: {reason}")]
    BadHeader { field: &'static str, value: u64, reason: &'static str },
    #[error(
        "qcow2 image names a backing file{name}; images with backing files are refused because the \
         file would be read from the importer's host: flatten it first (qemu-img convert -O qcow2)"
    )]
    BackingFile { name: String },
    #[error(
        "qcow2 image keeps its data in an external data file{name}; such images are refused because the \
         file would be read from the importer's host: convert it first (qemu-img convert -O qcow2)"
    )]
    ExternalDataFile { name: String },
    #[error("qcow2 image is encrypted ({method}); encrypted images cannot be imported: decrypt it first")]
    Encrypted { method: &'static str },
    #[error("qcow2 image uses incompatible features this reader does not know ({names}); refusing to guess")]
    UnknownIncompatible { bits: u64, names: String },
    #[error(
        "qcow2 {what} at host offset {offset} (+{len} bytes) lies beyond the end of the image \
         ({file_len} bytes): the file is truncated or corrupt"
    )]
    OutOfBounds { what: &'static str, offset: u64, len: u64, file_len: u64 },
    #[error(
        "qcow2 {what} at host offset {offset} is not aligned to the cluster size {cluster_size}: the image is corrupt"
    )]
    Misaligned { what: &'static str, offset: u64, cluster_size: u64 },
    #[error(
        "qcow2 image ends at byte {received} but its {what} at host offset {offset} lies beyond: the file is \
         truncated or the download was cut short"
    )]
    Truncated { what: &'static str, offset: u64, received: u64 },
    #[error("qcow2 compressed cluster for guest offset {guest} cannot be decompressed: {reason}")]
    BadCompressedCluster { guest: u64, reason: String },
    #[error("qcow2 image is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "this qcow2 image's layout cannot be converted in one pass: {reason}; serve it from a file or an \
         HTTP server with range support, without outer compression, or raise --spool-limit"
    )]
    NeedsRandomAccess { reason: String },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl FormatError {
    pub fn reason(&self) -> Reason {
        match self {
            FormatError::Unsupported { .. }
            | FormatError::BackingFile { .. }
            | FormatError::ExternalDataFile { .. }
            | FormatError::Encrypted { .. }
            | FormatError::UnknownIncompatible { .. }
            | FormatError::NeedsRandomAccess { .. } => Reason::UnsupportedImage,
            _ => Reason::InvalidImage,
        }
    }
}
