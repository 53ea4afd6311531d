//! Image formats: each turns an image into [`crate::copy::Job`]s.
//!
//! * [`raw`]: the bytes are the disk (also ISO and anything unrecognised).
//! * [`qcow2`]: our own bounds-checked reader, random-access or streaming.
//! * [`vhd`], [`vhdx`], [`vdi`], [`vmdk`]: block-mapped images, read into a
//!   [`mapped::Mapped`] (where each block is) and converted by [`mapped`], from random access
//!   or a stream alike; vmdk's streamOptimized grains have their own one-pass decoder.
//!
//! Every reader treats its input as hostile: fields are checked against named limits, table
//! entries against the file, and anything that would read another file (backing files,
//! parents, extents) is refused.

pub(crate) mod bytes;
pub mod mapped;
pub mod qcow2;
pub mod raw;
pub mod vdi;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;

use std::io::{self, Read};

use crate::copy::{Codec, CompressedCluster, Input, Job, JobSink, PooledBuf};
use crate::error::{ImportError, Reason};

/// Why an image could not be read. `format` names the layer that refused ("qcow2", "vhdx", ...).
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "unsupported format: {format} images cannot be imported; convert the image to qcow2 or raw \
         (qemu-img convert -O qcow2) and import that"
    )]
    Unsupported { format: &'static str },
    #[error("content type archive expects a tar archive (optionally gz/xz/zst compressed), but the source is {found}")]
    NotAnArchive { found: &'static str },
    #[error("more than {max} nested compression layers: the source is hostile or corrupt")]
    TooManyLayers { max: usize },
    #[error("{format} header is truncated: {available} bytes, {needed} needed")]
    HeaderTruncated { format: &'static str, available: usize, needed: usize },
    #[error("invalid {format} header: {field} is {value}: {reason}")]
    BadHeader { format: &'static str, field: &'static str, value: u64, reason: &'static str },
    #[error(
        "qcow2 image names a backing file{name}; images with backing files are refused because the \
         file would be read from the importer's host: flatten it first (qemu-img convert -O qcow2)"
    )]
    BackingFile { name: String },
    #[error(
        "{format} image is a differencing image whose parent is {parent}; differencing images are refused \
         because the parent would be read from the importer's host: merge it first (qemu-img convert -O qcow2; \
         for vhdx, Hyper-V's Merge-VHD)"
    )]
    Differencing { format: &'static str, parent: String },
    #[error(
        "{format} image of type {kind} keeps its data in several files, which one source cannot carry: \
         convert it to a single file first (qemu-img convert -O qcow2, or -O vmdk -o subformat=streamOptimized)"
    )]
    MultiFile { format: &'static str, kind: String },
    #[error(
        "{format} image needs a {what} this reader does not know ({id}, marked required), so its data cannot be \
         read safely: convert it to a plain dynamic or fixed image with the tool that made it (Hyper-V's \
         Convert-VHD), then import that"
    )]
    UnknownRequired { format: &'static str, what: &'static str, id: String },
    #[error(
        "{format} image has a log that was never replayed (it was not closed cleanly), so its tables may be \
         stale: open it once in Hyper-V, or repair it with qemu-img check -r all, then import it"
    )]
    DirtyLog { format: &'static str },
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
        "{format} {what} at host offset {offset} (+{len} bytes) lies beyond the end of the image \
         ({file_len} bytes): the file is truncated or corrupt"
    )]
    OutOfBounds { format: &'static str, what: &'static str, offset: u64, len: u64, file_len: u64 },
    #[error("{format} {what} at host offset {offset} is not aligned to {unit} bytes: the image is corrupt")]
    Misaligned { format: &'static str, what: &'static str, offset: u64, unit: u64 },
    #[error(
        "{format} image ends at byte {received} but its {what} at host offset {offset} lies beyond: the file is \
         truncated or the download was cut short"
    )]
    Truncated { format: &'static str, what: &'static str, offset: u64, received: u64 },
    #[error("compressed data for guest offset {guest} cannot be decompressed: {reason}")]
    BadCompressedCluster { guest: u64, reason: String },
    #[error("{format} image is corrupt: {detail}")]
    Corrupt { format: &'static str, detail: String },
    #[error(
        "this {format} image's layout cannot be converted in one pass: {reason}; serve it from a file or an \
         HTTP server with range support, without outer compression, or raise --spool-limit"
    )]
    NeedsRandomAccess { format: &'static str, reason: String },
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl FormatError {
    pub fn corrupt(format: &'static str, detail: impl Into<String>) -> FormatError {
        FormatError::Corrupt { format, detail: detail.into() }
    }

    pub fn reason(&self) -> Reason {
        match self {
            FormatError::Unsupported { .. }
            | FormatError::BackingFile { .. }
            | FormatError::ExternalDataFile { .. }
            | FormatError::Encrypted { .. }
            | FormatError::UnknownIncompatible { .. }
            | FormatError::Differencing { .. }
            | FormatError::MultiFile { .. }
            | FormatError::DirtyLog { .. }
            | FormatError::UnknownRequired { .. }
            | FormatError::NeedsRandomAccess { .. } => Reason::UnsupportedImage,
            _ => Reason::InvalidImage,
        }
    }
}

/// Coalesces zero ranges arriving in guest order into few jobs.
pub(crate) struct ZeroRuns {
    enabled: bool,
    run: Option<(u64, u64)>,
}

impl ZeroRuns {
    pub(crate) fn new(enabled: bool) -> ZeroRuns {
        ZeroRuns { enabled, run: None }
    }

    pub(crate) fn add(&mut self, offset: u64, len: u64, sink: &JobSink<'_>) -> Result<(), ImportError> {
        if !self.enabled || len == 0 {
            return Ok(());
        }
        match &mut self.run {
            Some((start, run_len)) if *start + *run_len == offset => *run_len += len,
            _ => {
                self.flush(sink)?;
                self.run = Some((offset, len));
            }
        }
        Ok(())
    }

    pub(crate) fn flush(&mut self, sink: &JobSink<'_>) -> Result<(), ImportError> {
        if let Some((offset, len)) = self.run.take() {
            sink.submit(Job::Zero { offset, len })?;
        }
        Ok(())
    }
}

/// Compressed clusters (or grains) gathered into one [`Job::Compressed`] whose input is held
/// in a pooled buffer: a one-pass decoder hands the workers inflation a chunk at a time.
pub(crate) struct CompressedBatch {
    format: &'static str,
    codec: Codec,
    /// Bytes one cluster decompresses to.
    unit: usize,
    pending: Option<(PooledBuf, Vec<CompressedCluster>)>,
}

impl CompressedBatch {
    pub(crate) fn new(format: &'static str, codec: Codec, unit: usize) -> CompressedBatch {
        CompressedBatch { format, codec, unit, pending: None }
    }

    /// The batch's input buffer and clusters, with room for `len` more compressed bytes and
    /// one more cluster of output (a job's input and output must each fit in a chunk); a
    /// full batch is submitted first. Fails when `len` alone is more than a chunk.
    pub(crate) fn room(
        &mut self,
        sink: &JobSink<'_>,
        len: usize,
    ) -> Result<(&mut PooledBuf, &mut Vec<CompressedCluster>), ImportError> {
        let (unit, chunk) = (self.unit, sink.chunk());
        if len > chunk || unit > chunk {
            let detail =
                format!("a compressed cluster of {len} bytes ({unit} decompressed) is larger than a copy chunk");
            return Err(FormatError::corrupt(self.format, detail).into());
        }
        let full = self.pending.as_ref().is_some_and(|(buf, clusters)| {
            buf.len() + len > buf.capacity() || (clusters.len() + 1) * unit > buf.capacity()
        });
        if full {
            self.flush(sink)?;
        }
        if self.pending.is_none() {
            let mut buf = sink.buffer()?;
            buf.set_len(0);
            self.pending = Some((buf, Vec::new()));
        }
        let (buf, clusters) = self.pending.as_mut().expect("just set");
        Ok((buf, clusters))
    }

    /// Adds one cluster's compressed bytes; `out_len` of its decompressed bytes are kept at
    /// guest offset `guest`.
    pub(crate) fn push(
        &mut self,
        sink: &JobSink<'_>,
        compressed: &[u8],
        guest: u64,
        out_len: usize,
    ) -> Result<(), ImportError> {
        let cluster_size = self.unit;
        let (buf, clusters) = self.room(sink, compressed.len())?;
        let start = buf.len();
        buf.set_len(start + compressed.len());
        buf[start..].copy_from_slice(compressed);
        clusters.push(CompressedCluster { guest, start, len: compressed.len(), out_len, cluster_size });
        Ok(())
    }

    /// Submits what is gathered.
    pub(crate) fn flush(&mut self, sink: &JobSink<'_>) -> Result<(), ImportError> {
        if let Some((buf, clusters)) = self.pending.take() {
            sink.submit(Job::Compressed { input: Input::Inline(buf), clusters, codec: self.codec })?;
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
pub(crate) fn read_full(stream: &mut dyn Read, buf: &mut [u8]) -> Result<usize, ImportError> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(crate::import::read_error(e)),
        }
    }
    Ok(filled)
}

/// Reads a stream to its end, discarding: what follows an image maps nothing, but a
/// checksum covers it, and a transfer that breaks there must not pass for a complete one.
pub fn drain(stream: &mut dyn Read) -> Result<(), ImportError> {
    let mut scratch = vec![0u8; 256 << 10];
    while read_full(stream, &mut scratch)? == scratch.len() {}
    Ok(())
}
